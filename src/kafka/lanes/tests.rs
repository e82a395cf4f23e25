use super::*;
use crate::aggregate::CoreConfig;
use crate::kafka::Connection;
use crate::pipeline::Timings;
use crate::snapshot::{Beside, SnapshotStore, WindowConfig};

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
        incremental: 15,
        view_interval: Duration::from_secs(60),
        core,
        window: WindowConfig::of(&core, "set by the replayer".into()),
        stop_at_end: false,
        assignment: None,
        tables: None,
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

/// A batch of control messages of partition 0 from `offset` on: (kind, JSON value).
fn controls(offset: i64, messages: &[(&str, String)]) -> Batch {
    let mut batch = Batch::default();
    for (i, (kind, value)) in messages.iter().enumerate() {
        batch.push_parts(
            0,
            offset + i as i64,
            Some(kind.as_bytes()),
            value.as_bytes(),
        );
    }
    batch
}

/// With `--stop-at-end`, a processor caught up after a watermark (or an input's
/// announcement) goes on: only an end of input read last ends it. Seen in a replay of the
/// 10x file, whose first message (the input's announcement) went out while the rest was
/// still being sorted: both processors read it, reached the log's end and stopped; the same
/// after a watermark would leave the last days open with every number in.
#[test]
fn only_an_end_of_input_read_last_ends_a_stop_at_end_processor() {
    let dir = tempfile::tempdir().unwrap();
    let (mut pipeline, mut driver, _) = owning_partition_0(dir.path());
    pipeline.config.stop_at_end = true;
    let input = format!(r#"{{"source":"{:016x}","lines":10}}"#, 7u64);
    let watermark = r#"{"watermark_us":1600000000000000}"#.to_string();
    for batch in [
        controls(100, &[(crate::kafka::INPUT, input)]),
        controls(101, &[(crate::kafka::WATERMARK, watermark)]),
    ] {
        let flow = pipeline.apply(&mut driver, Input::Messages(batch));
        assert!(matches!(flow, Ok(Flow::Continue)), "{:?}", flow.err());
        let flow = pipeline.apply(&mut driver, Input::Eof(0));
        assert!(
            matches!(flow, Ok(Flow::Continue)),
            "stopped at a control that is no end"
        );
    }
    let end = r#"{"last_event_time_us":1600000000000000}"#.to_string();
    let flow = pipeline.apply(
        &mut driver,
        Input::Messages(controls(102, &[(END_OF_INPUT, end)])),
    );
    assert!(
        matches!(flow, Ok(Flow::Continue)),
        "not at the log's end yet"
    );
    let flow = pipeline.apply(&mut driver, Input::Eof(0));
    assert!(matches!(flow, Ok(Flow::End)), "{:?}", flow.err());
}
