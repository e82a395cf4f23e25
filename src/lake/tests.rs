//! Publishing against a local folder, read back through deltalake's own DataFusion provider.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;

use super::*;
use crate::snapshot::tables::{DAILY_SALES, RFM};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

async fn rows(sql: &str) -> Vec<RecordBatch> {
    SessionContext::new()
        .sql(sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
}

/// Daily rows: (day, revenue) pairs, the other columns fixed.
async fn daily(days: &[(&str, &str)]) -> Vec<RecordBatch> {
    let values = days
        .iter()
        .map(|(d, r)| format!("(CAST('{d}' AS DATE), CAST({r} AS DECIMAL(18,2)), 1, 1, 1, false)"))
        .collect::<Vec<_>>()
        .join(", ");
    rows(&format!(
        "SELECT column1 AS day, column2 AS revenue, column3 AS items, column4 AS orders, \
         column5 AS customers, column6 AS is_final FROM (VALUES {values})"
    ))
    .await
}

async fn rfm(ids: &[u64]) -> Vec<RecordBatch> {
    let values = ids
        .iter()
        .map(|id| {
            format!(
                "(CAST({id} AS BIGINT UNSIGNED), CAST('2020-01-01T00:00:00Z' AS TIMESTAMP), \
                 CAST({} AS DECIMAL(18,2)))",
                id % 1000
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    rows(&format!(
        "SELECT column1 AS user_id, arrow_cast(column2, 'Timestamp(Microsecond, Some(\"UTC\"))') \
         AS first_purchase, arrow_cast(column2, 'Timestamp(Microsecond, Some(\"UTC\"))') AS \
         last_purchase, CAST(1 AS BIGINT) AS frequency, column3 AS monetary, CAST(1 AS BIGINT) \
         AS items, CAST(0 AS BIGINT) AS recency_days, CAST(5 AS TINYINT) AS r_score, \
         CAST(5 AS TINYINT) AS f_score, CAST(5 AS TINYINT) AS m_score, '555' AS rfm_cell, \
         'Champions' AS segment FROM (VALUES {values})"
    ))
    .await
}

/// The table's rows as text, at `at` (latest when `None`).
async fn read(lake: &Lake, table: &str, at: Option<AsOf>) -> String {
    let t = match at {
        Some(at) => lake.open_as_of(table, &at).await.unwrap(),
        None => lake.open(table).await.unwrap().unwrap(),
    };
    let ctx = SessionContext::new();
    ctx.register_table("t", t.table_provider().await.unwrap())
        .unwrap();
    let order = if table == RFM { "user_id" } else { "day" };
    let cols = if table == RFM {
        "user_id, monetary, segment"
    } else {
        "day, revenue"
    };
    let b = ctx
        .sql(&format!("SELECT {cols} FROM t ORDER BY {order}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    pretty_format_batches(&b).unwrap().to_string()
}

#[test]
fn each_result_is_committed_once_in_order_and_daily_tables_replace_only_changed_days() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::at(&Location::Dir(dir.path().to_path_buf())).unwrap();
    rt().block_on(async {
        let first = vec![
            (
                DAILY_SALES,
                daily(&[("2020-01-01", "10.00"), ("2020-01-02", "5.50")]).await,
            ),
            (RFM, rfm(&[7, 1_515_915_625_441_993_984]).await),
        ];
        let done = publish(&lake, 3, first.clone()).await.unwrap();
        // Created at version 0, the result at version 1: both days, and the whole of rfm.
        assert_eq!(
            done.committed,
            vec![
                (DAILY_SALES.to_string(), 1, Some(2)),
                (RFM.to_string(), 1, None)
            ]
        );
        let v1 = read(&lake, DAILY_SALES, None).await;
        assert!(
            v1.contains("2020-01-01 | 10.00") && v1.contains("2020-01-02 | 5.50"),
            "{v1}"
        );
        let customers = read(&lake, RFM, None).await;
        assert!(customers.contains("1515915625441993984"), "{customers}");

        // The same result again, or an older one: nothing committed.
        for seq in [3, 2] {
            let again = publish(&lake, seq, first.clone()).await.unwrap();
            assert!(again.committed.is_empty(), "{again:?}");
            assert_eq!(again.skipped, vec![DAILY_SALES, RFM]);
        }

        // A newer result: January 2 changed and January 3 is new; January 1 stays as it was.
        let second = vec![
            (
                DAILY_SALES,
                daily(&[
                    ("2020-01-01", "10.00"),
                    ("2020-01-02", "6.50"),
                    ("2020-01-03", "1.25"),
                ])
                .await,
            ),
            (RFM, rfm(&[7, 8]).await),
        ];
        let done = publish(&lake, 4, second.clone()).await.unwrap();
        assert_eq!(
            done.committed,
            vec![
                (DAILY_SALES.to_string(), 2, Some(2)),
                (RFM.to_string(), 2, None)
            ]
        );
        let v2 = read(&lake, DAILY_SALES, None).await;
        for want in [
            "2020-01-01 | 10.00",
            "2020-01-02 | 6.50",
            "2020-01-03 | 1.25",
        ] {
            assert!(v2.contains(want), "{v2}");
        }
        assert!(!v2.contains("5.50"), "{v2}");
        let customers = read(&lake, RFM, None).await;
        assert!(
            customers.contains("| 8 ") && !customers.contains("1515915625441993984"),
            "{customers}"
        );

        // History: version 1 reads as the first result did.
        assert_eq!(read(&lake, DAILY_SALES, Some(AsOf::Version(1))).await, v1);

        // A result that changes nothing still records itself (versions stay in step).
        let done = publish(&lake, 5, second).await.unwrap();
        assert_eq!(
            done.committed,
            vec![
                (DAILY_SALES.to_string(), 3, Some(0)),
                (RFM.to_string(), 3, None)
            ]
        );
        assert_eq!(read(&lake, DAILY_SALES, None).await, v2);
    });
}

#[test]
fn as_of_reads_versions_and_rfc3339_times() {
    assert_eq!("12".parse::<AsOf>(), Ok(AsOf::Version(12)));
    let t = "2020-11-01T10:00:00+02:00".parse::<AsOf>().unwrap();
    assert_eq!(t, AsOf::Time("2020-11-01T08:00:00Z".parse().unwrap()));
    let e = "last month".parse::<AsOf>().unwrap_err();
    assert!(e.contains("neither a table version"), "{e}");
}

#[test]
fn a_result_refused_for_its_content_commits_no_table() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::at(&Location::Dir(dir.path().to_path_buf())).unwrap();
    rt().block_on(async {
        let good = vec![
            (DAILY_SALES, daily(&[("2020-01-01", "10.00")]).await),
            (RFM, rfm(&[7]).await),
        ];
        publish(&lake, 1, good).await.unwrap();
        // A customer id Delta's `long` cannot hold: rfm is refused, and daily_sales, which
        // comes first, is not committed either.
        let bad = vec![
            (DAILY_SALES, daily(&[("2020-01-01", "12.00")]).await),
            (RFM, rfm(&[u64::MAX]).await),
        ];
        assert!(publish(&lake, 2, bad).await.is_err());
        for table in [DAILY_SALES, RFM] {
            let t = lake.open(table).await.unwrap().unwrap();
            assert_eq!(t.version(), Some(1), "{table}");
            assert_eq!(result_of(&t, table).await.unwrap(), Some(1), "{table}");
        }
    });
}

/// Rows of a daily table by category or brand (`column`): one per day.
async fn by(column: &str, days: &[&str]) -> Vec<RecordBatch> {
    let values = days
        .iter()
        .map(|d| format!("(CAST('{d}' AS DATE), 'x', CAST(1 AS DECIMAL(18,2)), 1, 1)"))
        .collect::<Vec<_>>()
        .join(", ");
    rows(&format!(
        "SELECT column1 AS day, column2 AS {column}, column3 AS revenue, column4 AS items, \
         column5 AS orders FROM (VALUES {values})"
    ))
    .await
}

/// Tables out of step (one got a later result, and skipped the next the others got): a
/// point where they hold different results is read at the newest result all of them hold.
#[test]
fn as_of_reads_one_result_from_tables_out_of_step() {
    use crate::snapshot::tables::{DAILY_BRAND_SALES, DAILY_CATEGORY_SALES};
    let dir = tempfile::tempdir().unwrap();
    let at = Location::Dir(dir.path().to_path_buf());
    let lake = Lake::at(&at).unwrap();
    rt().block_on(async {
        let result = |day: &'static str| async move {
            vec![
                (DAILY_SALES, daily(&[(day, "1.00")]).await),
                (DAILY_CATEGORY_SALES, by("category_code", &[day]).await),
                (DAILY_BRAND_SALES, by("brand", &[day]).await),
                (RFM, rfm(&[7]).await),
            ]
        };
        publish(&lake, 1, result("2020-01-01").await).await.unwrap();
        // daily_sales alone gets a later result (as a publish that failed after its first
        // table leaves it): at the next result it is skipped and the others move on.
        publish(
            &lake,
            5,
            vec![(DAILY_SALES, daily(&[("2020-01-05", "5.00")]).await)],
        )
        .await
        .unwrap();
        let done = publish(&lake, 2, result("2020-01-02").await).await.unwrap();
        assert_eq!(done.skipped, vec![DAILY_SALES]);
        let names = [DAILY_SALES, DAILY_CATEGORY_SALES, DAILY_BRAND_SALES, RFM];
        let (tables, held) = lake
            .open_one_result(&names, &AsOf::Version(1))
            .await
            .unwrap();
        assert_eq!(held, Some(1));
        assert!(tables.iter().all(|t| t.version() == Some(1)));
        // Version 2: daily_sales holds result 5, the others result 2, which daily_sales
        // never got: all four are read at result 1.
        let (tables, held) = lake
            .open_one_result(&names, &AsOf::Version(2))
            .await
            .unwrap();
        assert_eq!(held, Some(1));
        assert!(tables.iter().all(|t| t.version() == Some(1)));
        let session = crate::query::Session::open_as_of(&at, &AsOf::Version(2))
            .await
            .unwrap();
        let (_, b) = session
            .sql("SELECT CAST(day AS VARCHAR) AS d FROM daily_brand_sales")
            .await
            .unwrap();
        let shown = pretty_format_batches(&b).unwrap().to_string();
        assert!(
            shown.contains("2020-01-01") && !shown.contains("2020-01-02"),
            "{shown}"
        );
        // A third result reaches every table: version 3 of the others, 3 of daily_sales.
        publish(&lake, 6, result("2020-01-06").await).await.unwrap();
        let (tables, held) = lake
            .open_one_result(&names, &AsOf::Version(3))
            .await
            .unwrap();
        assert_eq!(held, Some(6));
        assert!(
            tables.iter().all(|t| t.version() == Some(3)),
            "{:?}",
            tables.iter().map(|t| t.version()).collect::<Vec<_>>()
        );
    });
}

/// Files in `dir` whose names end with `suffix`.
fn count(dir: &std::path::Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .count()
}

/// With a short retention, the history stays bounded: the log is checkpointed every 100
/// commits and entries past the retention go; replaced `rfm` files (one per commit) and an
/// orphan left by a publish that never committed are swept; the latest version still reads
/// the last result, and a version within the retention is still there.
#[test]
fn checkpoints_and_sweeps_keep_the_history_to_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy {
        every: std::time::Duration::ZERO,
        retention: std::time::Duration::from_secs(2),
    };
    let lake = Lake::at(&Location::Dir(dir.path().to_path_buf()))
        .unwrap()
        .with_policy(policy);
    let table = dir.path().join(TABLES_DIR).join(RFM);
    rt().block_on(async {
        publish(&lake, 1, vec![(RFM, rfm(&[1]).await)])
            .await
            .unwrap();
        // A data file no commit names (its publisher killed before the log entry).
        std::fs::write(table.join("part-orphan.parquet"), b"not committed").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let mut swept = 0;
        for seq in 2..=(CHECKPOINT_EVERY + 5) {
            let p = publish(&lake, seq, vec![(RFM, rfm(&[1, seq]).await)])
                .await
                .unwrap();
            assert_eq!(p.committed.len(), 1, "{seq}: {p:?}");
            swept += p.swept;
            if seq == CHECKPOINT_EVERY - 2 {
                // The files the sweep will find past the retention.
                std::thread::sleep(std::time::Duration::from_millis(2100));
            }
        }
        let log = table.join("_delta_log");
        assert_eq!(count(&log, ".checkpoint.parquet"), 1);
        let names: Vec<_> = std::fs::read_dir(&log)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            log.join("00000000000000000099.checkpoint.parquet").exists(),
            "{names:?}"
        );
        let entries = count(&log, ".json");
        assert!(entries < 20, "log entries kept: {entries}");
        assert!(swept >= 90, "swept {swept}");
        assert!(!table.join("part-orphan.parquet").exists());
        let files = count(&table, ".parquet");
        assert!(files < 15, "data files kept: {files}");
        let latest = read(&lake, RFM, None).await;
        assert!(
            latest.contains(&format!("| {} ", CHECKPOINT_EVERY + 5)),
            "{latest}"
        );
        let kept = read(&lake, RFM, Some(AsOf::Version(CHECKPOINT_EVERY + 1))).await;
        assert!(
            kept.contains(&format!("| {} ", CHECKPOINT_EVERY + 1)),
            "{kept}"
        );
    });
}
