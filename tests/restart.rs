//! Restart equivalence: a run cut at any point, snapshotted, restored from the files and
//! continued gives exactly the tables of an uninterrupted run, in both replay orders
//! (file order has late events, whose counts must survive the restart too).

mod common;

use common::feed;
use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use storepulse::aggregate::{Core, CoreConfig};
use storepulse::replay::{read_all, sort_by_event_time, Dictionary, PurchaseEvent, ReaderConfig};
use storepulse::snapshot::{
    self, tables::QUERY_TABLES, Counts, InputPosition, SnapshotMeta, SnapshotStore, WindowConfig,
};

fn meta(core: &Core) -> SnapshotMeta {
    SnapshotMeta {
        input: InputPosition::File {
            path: "generated".into(),
            order: "test".into(),
            lines_read: 0,
            events_applied: 0,
            complete: false,
            rejected_bytes: 0,
        },
        counts: Counts {
            accepted: core.accepted(),
            rejected: [("late_event".to_string(), core.late())]
                .into_iter()
                .collect(),
            ..Counts::default()
        },
        config: WindowConfig {
            max_out_of_orderness_us: 3_600_000_000,
            allowed_lateness_us: 0,
            min_event_time: "2000-01-01T00:00:00Z".into(),
        },
    }
}

/// The four query tables of the latest snapshot in `dir`.
fn tables(dir: &std::path::Path) -> Vec<Vec<RecordBatch>> {
    let snap = snapshot::latest(dir).unwrap();
    QUERY_TABLES
        .iter()
        .map(|t| {
            let f = std::fs::File::open(snap.table_path(t).unwrap()).unwrap();
            ParquetRecordBatchReaderBuilder::try_new(f)
                .unwrap()
                .build()
                .unwrap()
                .map(Result::unwrap)
                .collect()
        })
        .collect()
}

/// Returns the number of late events of the uninterrupted run.
fn check(events: &[PurchaseEvent], dict: &Dictionary, cuts: &[usize]) -> u64 {
    let config = CoreConfig::default();
    let whole_dir = tempfile::tempdir().unwrap();
    let mut whole = Core::new(config);
    feed(&mut whole, dict, events.iter().copied());
    whole.finish();
    SnapshotStore::open(whole_dir.path(), 1)
        .unwrap()
        .write(&whole, meta(&whole))
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path(), 2).unwrap();
    let mut core = Core::new(config);
    let mut at = 0;
    for &cut in cuts {
        feed(&mut core, dict, events[at..cut].iter().copied());
        at = cut;
        store.write(&core, meta(&core)).unwrap();
        let state = snapshot::load_state(&snapshot::latest(dir.path()).unwrap()).unwrap();
        core = Core::restore(config, state);
    }
    feed(&mut core, dict, events[at..].iter().copied());
    core.finish();
    assert_eq!(
        (core.accepted(), core.late()),
        (whole.accepted(), whole.late())
    );
    store.write(&core, meta(&core)).unwrap();
    let (a, b) = (tables(whole_dir.path()), tables(dir.path()));
    for (i, t) in QUERY_TABLES.iter().enumerate() {
        assert_eq!(a[i], b[i], "{t} differs after restarts at {cuts:?}");
    }
    whole.late()
}

fn generated() -> (Vec<PurchaseEvent>, Dictionary) {
    let mut data = Vec::new();
    storepulse::generate::generate(&mut data, 15_000, 5).unwrap();
    let all = read_all(data.as_slice(), &ReaderConfig::default()).unwrap();
    (all.events, all.dict)
}

#[test]
fn restarts_in_event_time_order_change_nothing() {
    let (mut events, dict) = generated();
    sort_by_event_time(&mut events);
    let n = events.len();
    assert_eq!(check(&events, &dict, &[n / 3]), 0);
    check(&events, &dict, &[1, n / 2, n - 1]);
}

#[test]
fn restarts_in_file_order_with_late_events_change_nothing() {
    let (events, dict) = generated();
    let n = events.len();
    let late = check(&events, &dict, &[n / 4, n / 4 + 1, 3 * n / 4]);
    assert!(late > 10, "only {late} late events");
}
