//! `query` over a `run` folder whose newest snapshot is incremental (the run is going on,
//! or was killed) answers exactly what the same state written whole answers: the chain is
//! restored and scored, not its last snapshot's own tables read; and the restored tables
//! are read within a page worker's memory pool as files are.

use datafusion::arrow::util::pretty::pretty_format_batches;
use storepulse_aggregate::testing::ev;

use super::Session;
use crate::aggregate::{Core, CoreConfig};
use crate::snapshot::tests::{meta, H, JUNE1};
use crate::snapshot::{Kind, Manifest, SnapshotStore};

/// `n` events from `from` in event-time order, 400 a day, of 2,000 customers (some lines
/// without one), two categories and a brand or none.
fn feed(core: &mut Core, from: u64, n: u64) {
    for line in from..from + n {
        let x = line.wrapping_mul(2_654_435_761) % 1_000_003;
        let t = JUNE1 + (line as i64 / 400) * 24 * H + (line as i64 % 400) * 60_000_000;
        let order = line / 2;
        let user = (order % 97 != 5).then_some(x % 2000);
        let brand = (x % 3 == 0).then_some(1);
        core.record(&ev(
            t,
            order,
            user,
            (x % 90_000) as i64 + 1,
            Some((x % 2) as u32),
            brand,
        ));
    }
}

/// `core` written whole into `store`, changes tracked from there (as a run's driver
/// starts tracking at its first whole snapshot).
fn write_base(core: &mut Core, store: &mut SnapshotStore) -> Manifest {
    core.track_changes();
    let mark = core.mark();
    let base = store.write_kind(core, None, meta(), Kind::Whole).unwrap();
    core.settle(mark);
    base
}

/// What changed in `core` since the last snapshot, written as an incremental one.
fn write_changes(core: &mut Core, store: &mut SnapshotStore) -> Manifest {
    let (part, mark) = core.changed();
    let written = store
        .write_kind(&part, None, meta(), Kind::Changes)
        .unwrap();
    core.settle(mark);
    written
}

/// Every row of every query table, in a fixed order.
async fn answers(session: &Session) -> Vec<String> {
    let queries = [
        "SELECT * FROM daily_sales ORDER BY day",
        "SELECT * FROM daily_category_sales ORDER BY day, category_code",
        "SELECT * FROM daily_brand_sales ORDER BY day, brand",
        "SELECT * FROM rfm ORDER BY user_id",
        "SELECT segment, COUNT(*) FROM rfm GROUP BY segment ORDER BY segment",
    ];
    let mut out = Vec::new();
    for q in queries {
        let (_, batches) = session.sql(q).await.unwrap();
        out.push(pretty_format_batches(&batches).unwrap().to_string());
    }
    out
}

#[tokio::test]
async fn a_runs_incremental_snapshot_is_read_through_its_chain() {
    let chained = tempfile::tempdir().unwrap();
    let whole = tempfile::tempdir().unwrap();
    let mut core = Core::new(CoreConfig::default());
    core.intern_name("electronics.tablet");
    core.intern_name("acme");
    core.intern_name("computers.notebook");
    feed(&mut core, 0, 4000);
    let mut store = SnapshotStore::open(chained.path(), 10)
        .unwrap()
        .with_deltas(5);
    let base = write_base(&mut core, &mut store);
    let mut newest = base.clone();
    for from in [4000, 4300] {
        feed(&mut core, from, 300);
        assert!(store.takes_changes());
        newest = write_changes(&mut core, &mut store);
    }
    let chain = newest.chain.expect("the newest snapshot is incremental");
    assert_eq!((chain.base, chain.length), (base.id, 2));
    let all = SnapshotStore::open(whole.path(), 1)
        .unwrap()
        .write(&core, meta())
        .unwrap();
    // Its own tables hold a part: read alone they would answer something else.
    assert!(newest.tables["rfm"].rows < all.tables["rfm"].rows / 2);
    assert!(newest.tables["daily_sales"].rows < all.tables["daily_sales"].rows);

    let a = Session::open(chained.path()).await.unwrap();
    let b = Session::open(whole.path()).await.unwrap();
    assert_eq!(a.parts[0].manifest.id, newest.id);
    assert_eq!(answers(&a).await, answers(&b).await);
    // Scored among all customers, as a whole snapshot's are.
    let (_, scored) = a
        .sql("SELECT COUNT(*) FROM rfm WHERE r_score BETWEEN 1 AND 5 AND segment <> ''")
        .await
        .unwrap();
    let scored = scored[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(scored as u64, all.tables["rfm"].rows);
}

/// A run's snapshot restored in memory is read under a page worker's limits (a small
/// memory pool, no spilling) like one read from its files: the tables are held in
/// slices, so no operator claims a whole table at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_snapshot_is_read_within_a_small_memory_pool() {
    let chained = tempfile::tempdir().unwrap();
    let mut core = Core::new(CoreConfig::default());
    core.intern_name("electronics.tablet");
    core.intern_name("acme");
    core.intern_name("computers.notebook");
    let mut store = SnapshotStore::open(chained.path(), 10)
        .unwrap()
        .with_deltas(5);
    // About 300,000 customers, as the page found them at 3M lines.
    for line in 0..600_000u64 {
        let t = JUNE1 + (line as i64 / 2000) * 24 * H + (line as i64 % 2000) * 30_000_000;
        let user = line.wrapping_mul(2_654_435_761) % 300_000;
        core.record(&ev(
            t,
            line,
            Some(user),
            1000 + (line % 7000) as i64,
            Some((line % 2) as u32),
            Some(1),
        ));
    }
    write_base(&mut core, &mut store);
    feed(&mut core, 10_000_000, 300);
    write_changes(&mut core, &mut store);
    let limits = super::limits::Limits {
        memory_pool: 32 << 20,
        spill: 0,
        partitions: 2,
        max_behind: std::time::Duration::from_secs(600),
    };
    let session = Session::open(chained.path())
        .await
        .unwrap()
        .limited(limits)
        .await
        .unwrap();
    for _ in 0..5 {
        for q in [
            "SELECT s.segment, COUNT(r.user_id) AS customers, CAST(COALESCE(SUM(r.monetary), 0) AS VARCHAR) AS revenue \
             FROM (SELECT DISTINCT segment FROM rfm_segments) s LEFT JOIN rfm r ON r.segment = s.segment \
             GROUP BY s.segment ORDER BY customers DESC, s.segment",
            "SELECT r_score AS r, f_score AS f, COUNT(*) AS customers FROM rfm GROUP BY 1, 2 ORDER BY 1, 2",
            "SELECT user_id, monetary FROM rfm ORDER BY monetary DESC, user_id LIMIT 10",
        ] {
            if let Err(e) = session.sql(q).await {
                panic!("{q}: {e}");
            }
        }
    }
}

/// A restored snapshot with no customer at all (every line anonymous) has an empty `rfm`
/// that answers like any table.
#[tokio::test]
async fn a_restored_snapshot_without_customers_answers_empty_tables() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = Core::new(CoreConfig::default());
    core.intern_name("electronics.tablet");
    core.intern_name("acme");
    let mut store = SnapshotStore::open(dir.path(), 10).unwrap().with_deltas(5);
    let anonymous = |core: &mut Core, from: u64| {
        for line in from..from + 50 {
            core.record(&ev(JUNE1 + line as i64 * H, line, None, 500, Some(0), None));
        }
    };
    anonymous(&mut core, 0);
    write_base(&mut core, &mut store);
    anonymous(&mut core, 50);
    let m = write_changes(&mut core, &mut store);
    assert!(m.chain.is_some());
    let session = Session::open(dir.path()).await.unwrap();
    let count = |batches: Vec<datafusion::arrow::array::RecordBatch>| {
        pretty_format_batches(&batches).unwrap().to_string()
    };
    let (_, rfm) = session.sql("SELECT COUNT(*) AS n FROM rfm").await.unwrap();
    assert!(count(rfm).contains("| 0 |"));
    let (_, orders) = session
        .sql("SELECT SUM(orders) AS n FROM daily_sales")
        .await
        .unwrap();
    assert!(count(orders).contains("| 100 |"));
}
