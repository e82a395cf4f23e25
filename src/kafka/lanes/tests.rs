use super::*;
use crate::aggregate::CoreConfig;
use crate::kafka::Connection;
use crate::pipeline::Timings;
use crate::snapshot::WindowConfig;

fn config(dir: &std::path::Path) -> ProcessConfig {
    let core = CoreConfig::default();
    ProcessConfig {
        // Nothing is sent here: the dead-letter producer is only created.
        connection: Connection {
            brokers: "127.0.0.1:9".into(),
            options: Vec::new(),
        },
        topic: "purchases".into(),
        group: "storepulse".into(),
        instance_id: None,
        snapshot_dir: dir.to_path_buf(),
        remote: None,
        snapshot_interval: Duration::from_secs(10),
        keep_snapshots: 3,
        view_interval: Duration::from_secs(60),
        core,
        window: WindowConfig::of(&core, "set by the replayer".into()),
        stop_at_end: false,
        assignment: None,
    }
}

/// Partition 0 owned, its snapshot covering offsets up to 100.
fn owning_partition_0(dir: &std::path::Path) -> (Partitions, Snapshots<Part>, Arc<Asks>) {
    let c = config(dir);
    let dead_letters = DeadLetters::new(&c.connection, "purchases.rejected".into()).unwrap();
    let asks = Arc::new(Asks::default());
    let pipeline = Partitions::new(c.clone(), dead_letters, Commits::default(), asks.clone());
    let mut state = PartitionState::new(c.core);
    state.next_offset = Some(100);
    let part = Part {
        progress: Progress::new(&state),
        state,
        at_end: false,
        eof: false,
    };
    let store = SnapshotStore::open(&dir.join("p0"), 3).unwrap();
    let mut lanes = Lanes::new();
    lanes.insert(0, Slot::new(part, Beside::new(store)));
    let driver = Snapshots {
        lanes,
        timings: Timings::default(),
    };
    (pipeline, driver, asks)
}

/// The review's tenth finding: a statistics sample older than the snapshot (taken before a
/// rebalance gave the partition back) said the log ended before it, and the processor
/// stopped with "the topic was deleted and created again". Only the brokers' answer asked
/// at that moment may stop it.
#[test]
fn a_stale_statistics_sample_asks_the_brokers_and_stops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut pipeline, mut driver, asks) = owning_partition_0(dir.path());
    let sample = BTreeMap::from([(0, (0, 60, true)), (1, (0, 10, true))]);
    let flow = pipeline.apply(&mut driver, Input::Offsets(sample));
    assert!(matches!(flow, Ok(Flow::Continue)), "{:?}", flow.err());
    let asked = std::mem::take(&mut *asks.log_ends.lock().unwrap());
    assert_eq!(
        asked,
        BTreeSet::from([0]),
        "only the owned partition is asked"
    );
    // The brokers answer a log end at or past the snapshot: nothing happens.
    let flow = pipeline.apply(
        &mut driver,
        Input::LogEnd {
            partition: 0,
            end: 100,
        },
    );
    assert!(matches!(flow, Ok(Flow::Continue)));
    // They answer one before it: the topic changed under the snapshot.
    let flow = pipeline.apply(
        &mut driver,
        Input::LogEnd {
            partition: 0,
            end: 60,
        },
    );
    match flow {
        Err(ProcessError::TopicChanged {
            partition,
            covered,
            end,
            ..
        }) => assert_eq!((partition, covered, end), (0, 100, 60)),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// A partition being fetched whose sample agrees with its snapshot asks nothing.
#[test]
fn a_sample_past_the_snapshot_asks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut pipeline, mut driver, asks) = owning_partition_0(dir.path());
    let sample = BTreeMap::from([(0, (0, 100, true))]);
    assert!(pipeline.apply(&mut driver, Input::Offsets(sample)).is_ok());
    // Not being fetched (paused, or its leader away): its sample says nothing either.
    let sample = BTreeMap::from([(0, (0, 5, false))]);
    assert!(pipeline.apply(&mut driver, Input::Offsets(sample)).is_ok());
    assert!(asks.log_ends.lock().unwrap().is_empty());
}
