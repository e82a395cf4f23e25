use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use storepulse_replay::Sym;

use super::*;
use crate::aggregate::tests::ev;
use crate::aggregate::CoreConfig;

const JUNE1: i64 = 1_590_969_600_000_000;
const H: i64 = 3_600_000_000;

fn meta() -> SnapshotMeta {
    SnapshotMeta {
        input: InputPosition::File {
            path: "x.csv".into(),
            order: "event_time".into(),
            lines_read: 5,
            events_applied: 3,
            complete: false,
        },
        counts: Counts::default(),
        config: WindowConfig {
            max_out_of_orderness_us: H,
            allowed_lateness_us: 0,
            min_event_time: "2000-01-01T00:00:00Z".into(),
        },
    }
}

fn sample_core() -> Core {
    let mut c = Core::new(CoreConfig::default());
    assert_eq!(c.intern_name("electronics.tablet"), Sym(0));
    c.record(&ev(JUNE1 + H, 1, Some(42), 16_201, Some(0), None));
    c.record(&ev(JUNE1 + H, 1, Some(42), 99, None, None));
    c.record(&ev(JUNE1 + 30 * H, 2, None, 1_000, Some(0), None));
    c
}

async fn sql(path: &std::path::Path, table: &str, query: &str) -> String {
    let ctx = SessionContext::new();
    ctx.register_parquet(table, path.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    let batches = ctx.sql(query).await.unwrap().collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

#[tokio::test]
async fn tables_read_back_with_exact_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path(), 3).unwrap();
    let core = sample_core();
    let m = store.write(&core, meta()).unwrap();
    assert_eq!(m.id, 1);
    assert_eq!(m.as_of.as_deref(), Some("2020-06-02T06:00:00Z"));
    assert_eq!(m.watermark.as_deref(), Some("2020-06-02T05:00:00Z"));
    assert_eq!(m.tables["daily_sales"].rows, 2);
    let snap = latest(dir.path()).unwrap();
    assert_eq!(snap.manifest, m);

    let daily = sql(
        &snap.table_path("daily_sales").unwrap(),
        "daily_sales",
        "SELECT day, revenue, items, orders, customers, is_final FROM daily_sales ORDER BY day",
    )
    .await;
    let want = [
        "+------------+---------+-------+--------+-----------+----------+",
        "| day        | revenue | items | orders | customers | is_final |",
        "+------------+---------+-------+--------+-----------+----------+",
        "| 2020-06-01 | 163.00  | 2     | 1      | 1         | true     |",
        "| 2020-06-02 | 10.00   | 1     | 1      | 0         | false    |",
        "+------------+---------+-------+--------+-----------+----------+",
    ];
    assert_eq!(daily, want.join("\n"));
    let rfm = sql(
        &snap.table_path("rfm").unwrap(),
        "rfm",
        "SELECT user_id, first_purchase, frequency, monetary, items, recency_days, rfm_cell, segment FROM rfm",
    )
    .await;
    assert!(rfm.contains("| 42      | 2020-06-01T01:00:00Z | 1         | 163.00   | 2     | 1            | 111      | Lost Customers |"), "{rfm}");
    let types = sql(
        &snap.table_path("rfm").unwrap(),
        "rfm",
        "SELECT arrow_typeof(monetary) AS m, arrow_typeof(user_id) AS u FROM rfm",
    )
    .await;
    assert!(
        types.contains("Decimal128(18, 2)") && types.contains("UInt64"),
        "{types}"
    );
    // The open day still carries its distinct sets, so a processor could resume.
    let open = sql(
        &snap.table_path("state_open_sets").unwrap(),
        "s",
        "SELECT day, scope, key, value FROM s ORDER BY scope, key",
    )
    .await;
    assert!(
        open.contains("| 2020-06-02 | category_order | electronics.tablet | 2     |"),
        "{open}"
    );
    assert!(
        open.contains("| 2020-06-02 | order          |                    | 2     |"),
        "{open}"
    );
}

#[test]
fn keeps_the_newest_snapshots_and_clears_unfinished_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".tmp-snap-000009")).unwrap();
    let mut store = SnapshotStore::open(dir.path(), 2).unwrap();
    assert!(!dir.path().join(".tmp-snap-000009").exists());
    let core = sample_core();
    for _ in 0..4 {
        store.write(&core, meta()).unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec![".lock", "LATEST", "snap-000003", "snap-000004"]);
    assert_eq!(latest(dir.path()).unwrap().manifest.id, 4);
    // One writer at a time: a second store on the folder is refused while this one lives.
    let err = SnapshotStore::open(dir.path(), 2).unwrap_err();
    assert!(matches!(err, SnapshotError::Locked(_)), "{err}");
    drop(store);
    // Reopening continues the numbering.
    let mut again = SnapshotStore::open(dir.path(), 2).unwrap();
    assert_eq!(again.write(&core, meta()).unwrap().id, 5);
}

#[test]
fn no_snapshot_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = latest(dir.path()).unwrap_err();
    assert!(err.to_string().contains("no snapshot"), "{err}");
}
