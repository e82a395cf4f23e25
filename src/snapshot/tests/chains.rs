//! Incremental snapshots through real Parquet files: a chain restores exactly the state
//! each snapshot was taken from, a whole snapshot comes after `every` incremental ones or
//! once they add up to half of it, pruning keeps every snapshot a kept one needs, and a
//! damaged link makes readers fall back to the newest snapshot whose chain is whole.

use super::*;
use crate::aggregate::{CoreState, SeenId};

/// A partition's core (customers per day kept, watermark moved from outside) and its
/// event ids, tracking their changes.
fn partition() -> (Core, Seen) {
    let mut core = Core::new(CoreConfig {
        keep_day_customers: true,
        watermark_from_events: false,
        ..CoreConfig::default()
    });
    core.intern_name("electronics.tablet");
    core.intern_name("acme");
    core.track_changes();
    let mut seen = Seen::default();
    seen.track_changes();
    (core, seen)
}

/// `n` events from line `from` in event-time order, 500 a day, of 3,000 customers; the
/// watermark a day behind.
fn feed(core: &mut Core, seen: &mut Seen, from: u64, n: u64) {
    for line in from..from + n {
        let x = line.wrapping_mul(2_654_435_761) % 1_000_003;
        let t = JUNE1 + (line as i64 / 500) * 24 * H + (line as i64 % 500) * 60_000_000;
        let order = line / 3;
        let user = (order % 3000 != 7).then_some(x % 3000);
        core.record(&ev(
            t,
            order,
            user,
            (x % 50_000) as i64,
            Some((x % 2) as u32),
            None,
        ));
        seen.insert(SeenId {
            source: 9,
            pass: 0,
            line,
        });
    }
    core.advance_watermark(JUNE1 + ((from + n) as i64 / 500 - 1) * 24 * H);
}

/// Writes a snapshot as the driver does: what changed when the store takes it, settled
/// once published. Returns its kind.
fn snapshot(store: &mut SnapshotStore, core: &mut Core, seen: &mut Seen) -> Kind {
    let fresh = seen.changed();
    let kind = match store.takes_changes() {
        true => Kind::Changes,
        false => Kind::Whole,
    };
    let (mark, written) = match kind {
        Kind::Changes => {
            let (part, mark) = core.changed();
            (mark, store.write_kind(&part, Some(&fresh), meta(), kind))
        }
        Kind::Whole => {
            let mark = core.mark();
            (mark, store.write_kind(core, Some(seen), meta(), kind))
        }
    };
    written.unwrap();
    core.settle(mark);
    seen.settle(&fresh);
    kind
}

/// A state as a restore gives it (sets sorted), counts left out (a snapshot takes them
/// from its caller's meta, here none).
fn restored(state: CoreState) -> CoreState {
    let config = CoreConfig {
        keep_day_customers: true,
        watermark_from_events: false,
        ..CoreConfig::default()
    };
    let mut s = Core::restore(config, state).state();
    (s.accepted, s.late) = (0, 0);
    s
}

/// Whether snapshot `p` restores to `want` (compared as restored states; the difference
/// is not printed: it is thousands of lines).
fn restores_to(p: &Published, want: &CoreState) -> bool {
    restored(load_state(p).unwrap()) == restored(want.clone())
}

fn ids(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| parse_id(&e.ok()?.file_name().to_string_lossy()))
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn a_chain_restores_each_snapshots_state_and_pruning_keeps_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path(), 2).unwrap().with_deltas(3);
    let (mut core, mut seen) = partition();
    let mut kinds = Vec::new();
    let mut states: Vec<CoreState> = Vec::new();
    // A large first batch, then small ones: each incremental snapshot is far below half.
    feed(&mut core, &mut seen, 0, 3000);
    for i in 0..9u64 {
        kinds.push(snapshot(&mut store, &mut core, &mut seen));
        states.push(core.state());
        let newest = latest(dir.path()).unwrap();
        assert!(restores_to(&newest, &core.state()), "snapshot {}", i + 1);
        let back = load_with_seen(&newest).unwrap().1;
        assert_eq!(back.len(), seen.len());
        assert!((0..seen.len()).all(|l| back.contains(SeenId {
            source: 9,
            pass: 0,
            line: l
        })));
        // Every snapshot kept can be restored: its chain was kept with it.
        let kept = ids(dir.path());
        for id in kept.iter().rev().take(2) {
            let p = find::open(&dir.path().join(format!("snap-{id:06}"))).unwrap();
            assert!(restores_to(&p, &states[*id as usize - 1]), "{id}");
        }
        feed(&mut core, &mut seen, 3000 + i * 40, 40);
    }
    use Kind::{Changes as C, Whole as W};
    assert_eq!(kinds, vec![W, C, C, C, W, C, C, C, W]);
    // Snapshot 9 is whole and 8 needs 5 to 7; 1, the whole one before that chain, stays
    // for when its base is damaged; 2 to 4 are gone.
    assert_eq!(ids(dir.path()), vec![1, 5, 6, 7, 8, 9]);
    let eighth = find::open(&dir.path().join("snap-000008")).unwrap();
    let chain = eighth.manifest.chain.unwrap();
    assert_eq!((chain.base, chain.parent, chain.length), (5, 7, 3));
    assert_eq!(eighth.manifest.format, manifest::DELTA_FORMAT);
    // An incremental snapshot is small: the customers of 40 events and one day, not all
    // of them (its bytes are mostly the Parquet files' own overhead at this size).
    let base = find::open(&dir.path().join("snap-000005")).unwrap();
    let rows = |p: &Published, t: &str| p.manifest.tables[t].rows;
    assert!(
        rows(&eighth, tables::RFM) <= 40,
        "{}",
        rows(&eighth, tables::RFM)
    );
    assert!(
        rows(&base, tables::RFM) > 2000,
        "{}",
        rows(&base, tables::RFM)
    );
    assert_eq!(rows(&eighth, tables::DAILY_SALES), 1);
    assert!(rows(&eighth, tables::STATE_CUSTOMER_ORDERS) <= 40);
    assert!(eighth.manifest.bytes() * 4 < base.manifest.bytes());
    // Scores are global: an incremental snapshot's customers carry their state, not
    // scores among themselves (readers score the restored whole, as `restores_to` did).
    assert!(eighth.manifest.segments.is_empty() && !base.manifest.segments.is_empty());
    let scores = |p: &Published| {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::Int8Type;
        let file = std::fs::File::open(p.table_path(tables::RFM).unwrap()).unwrap();
        let reader =
            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                file,
            )
            .unwrap()
            .build()
            .unwrap();
        let mut found = std::collections::BTreeSet::new();
        for b in reader {
            let b = b.unwrap();
            let r = b.column(7).as_primitive::<Int8Type>();
            let segment = b.column(11).as_string::<i32>();
            found.extend((0..b.num_rows()).map(|i| (r.value(i), segment.value(i).to_string())));
        }
        found
    };
    assert_eq!(scores(&eighth), [(0, String::new())].into());
    assert!(scores(&base)
        .iter()
        .all(|(r, s)| (1..=5).contains(r) && !s.is_empty()));
    // The newest whole snapshot and the chain's base damaged: readers fall back to 1.
    for id in [9, 5] {
        std::fs::write(snap_file(dir.path(), id, "rfm.parquet"), b"damaged").unwrap();
    }
    let (found, state) = newest_good(dir.path(), load_state).unwrap();
    assert_eq!(found.manifest.id, 1);
    assert!(restored(state) == restored(states[0].clone()));
}

#[test]
fn a_whole_snapshot_comes_once_the_changes_add_up_to_half_of_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path(), 3).unwrap().with_deltas(100);
    let (mut core, mut seen) = partition();
    feed(&mut core, &mut seen, 0, 200);
    let mut kinds = vec![snapshot(&mut store, &mut core, &mut seen)];
    // A batch four times everything before: the first incremental snapshot passes half.
    for (from, n) in [(200, 800), (1000, 10)] {
        feed(&mut core, &mut seen, from, n);
        kinds.push(snapshot(&mut store, &mut core, &mut seen));
    }
    assert_eq!(kinds, vec![Kind::Whole, Kind::Changes, Kind::Whole]);
    assert!(restores_to(&latest(dir.path()).unwrap(), &core.state()));
}

#[test]
fn a_damaged_link_makes_readers_fall_back_to_the_newest_whole_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path(), 10).unwrap().with_deltas(5);
    let (mut core, mut seen) = partition();
    feed(&mut core, &mut seen, 0, 3000);
    let mut states = Vec::new();
    for i in 0..4 {
        snapshot(&mut store, &mut core, &mut seen);
        states.push(core.state());
        feed(&mut core, &mut seen, 3000 + i * 30, 30);
    }
    // Snapshot 3 (incremental, needed by 4) is damaged: 4 cannot be restored, 2 can.
    std::fs::write(snap_file(dir.path(), 3, "rfm.parquet"), b"not parquet").unwrap();
    let err = load_state(&latest(dir.path()).unwrap()).unwrap_err();
    assert!(err.to_string().contains("snap-000003"), "{err}");
    let (found, state) = newest_good(dir.path(), load_state).unwrap();
    assert_eq!(found.manifest.id, 2);
    assert!(restored(state) == restored(states[1].clone()));
    // A link removed: the same.
    std::fs::remove_dir_all(dir.path().join("snap-000002")).unwrap();
    let err = load_state(&latest(dir.path()).unwrap()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("snap-000004") && text.contains("chain is broken at snapshot 2"),
        "{text}"
    );
    let (found, state) = newest_good(dir.path(), load_state).unwrap();
    assert_eq!(found.manifest.id, 1);
    assert!(restored(state) == restored(states[0].clone()));
    assert!(latest_complete(dir.path()).is_ok_and(|p| p.manifest.id == 1));
}
