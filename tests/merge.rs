//! Partitions merge exactly: a stream split by order id over several cores (as Kafka
//! partitions are), each snapshotted to its own folder, reads back through `query` as
//! the same four tables as one core fed everything.

mod common;

use common::{feed, query_tables};
use storepulse::aggregate::{Core, CoreConfig};
use storepulse::replay::{read_all, sort_by_event_time, ReaderConfig};
use storepulse::snapshot::{
    partition_dir, Counts, InputPosition, SnapshotMeta, SnapshotStore, WindowConfig,
};

fn meta(core: &Core, input: InputPosition) -> SnapshotMeta {
    SnapshotMeta {
        input,
        counts: Counts {
            accepted: core.accepted(),
            ..Counts::default()
        },
        config: WindowConfig {
            max_out_of_orderness_us: 3_600_000_000,
            allowed_lateness_us: 0,
            min_event_time: "2000-01-01T00:00:00Z".into(),
        },
    }
}

/// Splits by order id over `n` partitions; `finish` decides whether the days end final.
fn split_equals_whole(n: u64, finish: bool) {
    let mut data = Vec::new();
    storepulse::generate::generate(&mut data, 15_000, 9).unwrap();
    let all = read_all(data.as_slice(), &ReaderConfig::default()).unwrap();
    let mut events = all.events;
    sort_by_event_time(&mut events);

    let whole_dir = tempfile::tempdir().unwrap();
    let mut whole = Core::new(CoreConfig::default());
    feed(&mut whole, &all.dict, events.iter().copied());
    if finish {
        whole.finish();
    }
    let file = InputPosition::File {
        path: "generated".into(),
        order: "event_time".into(),
        lines_read: 0,
        events_applied: 0,
        complete: finish,
        rejected_bytes: 0,
    };
    SnapshotStore::open(whole_dir.path(), 1)
        .unwrap()
        .write(&whole, meta(&whole, file))
        .unwrap();

    let parts_dir = tempfile::tempdir().unwrap();
    let config = CoreConfig {
        keep_day_customers: true,
        ..CoreConfig::default()
    };
    let mut cores: Vec<Core> = (0..n).map(|_| Core::new(config)).collect();
    for (p, core) in cores.iter_mut().enumerate() {
        let mine = events
            .iter()
            .copied()
            .filter(|e| e.order_id % n == p as u64);
        feed(core, &all.dict, mine);
    }
    for (p, core) in cores.iter_mut().enumerate() {
        if finish {
            core.finish();
        }
        let position = InputPosition::Kafka {
            topic: "purchases".into(),
            partition: p as i32,
            next_offset: core.accepted() as i64,
            idle: false,
            end_of_input: finish,
        };
        let dir = partition_dir(parts_dir.path(), "purchases", p as i32);
        SnapshotStore::open(&dir, 1)
            .unwrap()
            .write(core, meta(core, position))
            .unwrap();
    }
    let (a, b) = (
        query_tables(whole_dir.path()),
        query_tables(parts_dir.path()),
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(x.lines().count() > 10);
        assert_eq!(x, y);
    }
}

#[test]
fn four_partitions_merge_to_the_whole() {
    split_equals_whole(4, true);
}

#[test]
fn merged_days_are_final_only_where_every_partition_passed_them() {
    // Without the end of input the last day stays open in the whole and in the merge
    // (the slowest partition's watermark decides).
    split_equals_whole(3, false);
}
