//! End to end: `generate`, `run`, then `query`; every table must equal an independent
//! computation of the same contract written as DataFusion SQL over the raw CSV lines.

mod common;

use std::sync::Arc;

use common::{manifest, ok, query_csv, run};
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{CsvReadOptions, SessionContext};
use storepulse::query::{render, Format};

/// Lines split naively (no quoting in generated data): 8 raw text columns and the line
/// number. Lines that are not UTF-8, hold a quote or have another field count are
/// returned as the malformed count instead.
fn raw_lines(bytes: &[u8]) -> (RecordBatch, u64) {
    let mut cols: Vec<Vec<String>> = vec![Vec::new(); 8];
    let mut line_no = Vec::new();
    let mut malformed = 0;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate().skip(1) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            malformed += 1;
            continue;
        };
        let fields: Vec<&str> = text.split(',').collect();
        if text.contains('"') || fields.len() != 8 {
            malformed += 1;
            continue;
        }
        for (c, f) in cols.iter_mut().zip(fields) {
            c.push(f.to_string());
        }
        line_no.push(i as i64 + 1);
    }
    let names = storepulse::replay::validate::COLUMNS;
    let mut fields = vec![Field::new("line_no", DataType::Int64, false)];
    fields.extend(names.iter().map(|n| Field::new(*n, DataType::Utf8, false)));
    let mut arrays: Vec<Arc<dyn datafusion::arrow::array::Array>> =
        vec![Arc::new(Int64Array::from(line_no))];
    arrays.extend(
        cols.into_iter()
            .map(|c| Arc::new(StringArray::from(c)) as _),
    );
    (
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap(),
        malformed,
    )
}

/// The contract, as SQL: repair, parse, classify, then keep accepted lines as `ev`.
const CONTRACT: &str = r#"
CREATE VIEW fixed AS
SELECT line_no, event_time, order_id, product_id,
       CASE WHEN shifted THEN '' ELSE category_code END AS category_code,
       CASE WHEN shifted THEN '' ELSE brand END AS brand,
       CASE WHEN shifted THEN category_code ELSE price END AS price,
       CASE WHEN shifted THEN brand ELSE user_id END AS user_id
FROM (SELECT *, (category_id = '' AND price = '' AND user_id = ''
                 AND regexp_like(category_code, '^[0-9]+(\.[0-9]+)?$')) AS shifted
      FROM raw_lines);

CREATE VIEW typed AS
SELECT *,
  TRY_CAST(regexp_replace(event_time, ' UTC$', '') AS TIMESTAMP) AS ts,
  CASE WHEN regexp_like(order_id, '^[0-9]+$') THEN TRY_CAST(order_id AS BIGINT UNSIGNED)
       ELSE TRY_CAST(TRY_CAST(order_id AS DOUBLE) AS BIGINT UNSIGNED) END AS oid,
  CASE WHEN regexp_like(product_id, '^[0-9]+$') THEN TRY_CAST(product_id AS BIGINT UNSIGNED)
       ELSE TRY_CAST(TRY_CAST(product_id AS DOUBLE) AS BIGINT UNSIGNED) END AS pid,
  CASE WHEN regexp_like(user_id, '^[0-9]+$') THEN TRY_CAST(user_id AS BIGINT UNSIGNED)
       ELSE TRY_CAST(TRY_CAST(user_id AS DOUBLE) AS BIGINT UNSIGNED) END AS uid
FROM fixed;

CREATE VIEW classified AS
SELECT *, CASE
  WHEN ts IS NULL THEN 'invalid_event_time'
  WHEN ts < TIMESTAMP '2000-01-01 00:00:00' THEN 'event_time_out_of_range'
  WHEN oid IS NULL THEN 'invalid_order_id'
  WHEN pid IS NULL THEN 'invalid_product_id'
  WHEN price = '' THEN 'missing_price'
  WHEN NOT regexp_like(price, '^[0-9]+(\.[0-9]+)?$') THEN 'invalid_price'
  WHEN user_id <> '' AND uid IS NULL THEN 'invalid_user_id'
END AS reason
FROM typed;

CREATE VIEW ev AS
SELECT ts, CAST(ts AS DATE) AS day, oid, uid,
       NULLIF(category_code, '') AS category_code, NULLIF(brand, '') AS brand,
       CAST(price AS DECIMAL(18, 2)) AS price
FROM classified WHERE reason IS NULL;
"#;

const SEGMENT_SQL: &str = r#"
WITH c AS (
  SELECT uid AS user_id, MIN(ts) AS first_purchase, MAX(ts) AS last_purchase,
         COUNT(DISTINCT oid) AS frequency, SUM(price) AS monetary, COUNT(*) AS items
  FROM ev WHERE uid IS NOT NULL GROUP BY uid),
asof AS (SELECT CAST(MAX(ts) AS DATE) AS d FROM ev),
r AS (
  SELECT c.*, CAST(asof.d - CAST(c.last_purchase AS DATE) AS BIGINT) AS recency_days
  FROM c CROSS JOIN asof),
p AS (
  SELECT r.*,
    PERCENT_RANK() OVER (ORDER BY recency_days DESC) AS pr_r,
    PERCENT_RANK() OVER (ORDER BY frequency) AS pr_f,
    PERCENT_RANK() OVER (ORDER BY monetary) AS pr_m
  FROM r),
s AS (
  SELECT p.*,
    CASE WHEN pr_r >= 0.8 THEN 5 WHEN pr_r >= 0.6 THEN 4 WHEN pr_r >= 0.4 THEN 3 WHEN pr_r >= 0.2 THEN 2 ELSE 1 END AS r_score,
    CASE WHEN pr_f >= 0.8 THEN 5 WHEN pr_f >= 0.6 THEN 4 WHEN pr_f >= 0.4 THEN 3 WHEN pr_f >= 0.2 THEN 2 ELSE 1 END AS f_score,
    CASE WHEN pr_m >= 0.8 THEN 5 WHEN pr_m >= 0.6 THEN 4 WHEN pr_m >= 0.4 THEN 3 WHEN pr_m >= 0.2 THEN 2 ELSE 1 END AS m_score
  FROM p)
SELECT s.user_id, to_char(first_purchase, '%Y-%m-%d %H:%M:%S') AS first_purchase,
       to_char(last_purchase, '%Y-%m-%d %H:%M:%S') AS last_purchase, frequency, monetary,
       items, recency_days, r_score, f_score, m_score,
       concat(r_score, f_score, m_score) AS rfm_cell, seg.segment
FROM s JOIN seg ON seg.rfm_cell = concat(r_score, f_score, m_score)
ORDER BY s.user_id
"#;

async fn independent(ctx: &SessionContext, sql: &str) -> String {
    let df = ctx.sql(sql).await.unwrap();
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.unwrap();
    render(schema, &batches, Format::Csv).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_then_query_equals_an_independent_sql_computation() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("gen.csv");
    let snaps = dir.path().join("snaps");
    ok(&[
        "generate",
        "--rows",
        "40000",
        "--seed",
        "11",
        "--out",
        input.to_str().unwrap(),
    ]);
    run(&input, &snaps, &[]);

    let bytes = std::fs::read(&input).unwrap();
    let (raw, malformed) = raw_lines(&bytes);
    let ctx = SessionContext::new();
    ctx.register_table(
        "raw_lines",
        Arc::new(MemTable::try_new(raw.schema(), vec![vec![raw]]).unwrap()),
    )
    .unwrap();
    for stmt in CONTRACT.split(';').filter(|s| !s.trim().is_empty()) {
        ctx.sql(stmt).await.unwrap().collect().await.unwrap();
    }
    let segments = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/rfm_segments.csv");
    ctx.register_csv(
        "seg",
        segments,
        CsvReadOptions::new().schema(&Schema::new(vec![
            Field::new("rfm_cell", DataType::Utf8, false),
            Field::new("segment", DataType::Utf8, false),
        ])),
    )
    .await
    .unwrap();

    // Reject reasons agree, and every line is accounted for.
    let m = manifest(&snaps);
    let reasons = independent(&ctx, "SELECT reason, COUNT(*) AS n FROM classified WHERE reason IS NOT NULL GROUP BY reason ORDER BY reason").await;
    let mut want: Vec<String> = reasons.lines().skip(1).map(str::to_string).collect();
    want.push(format!("malformed_row,{malformed}"));
    want.sort();
    let mut got: Vec<String> = m["counts"]["rejected"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k},{v}"))
        .collect();
    got.sort();
    assert_eq!(got, want);
    assert!(malformed > 0);
    let accepted = m["counts"]["accepted"].as_u64().unwrap();
    let rejected: u64 = m["counts"]["rejected"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        accepted + rejected,
        m["counts"]["records"].as_u64().unwrap()
    );
    assert_eq!(m["counts"]["records"], 40_000);

    let daily = "SELECT day, revenue, items, orders, customers FROM daily_sales ORDER BY day";
    let want = independent(
        &ctx,
        "SELECT day, SUM(price) AS revenue, COUNT(*) AS items, COUNT(DISTINCT oid) AS orders, \
         COUNT(DISTINCT uid) AS customers FROM ev GROUP BY day ORDER BY day",
    )
    .await;
    assert!(want.lines().count() > 250, "a year of days");
    assert_eq!(query_csv(&snaps, daily), want);

    for (table, col) in [
        ("daily_category_sales", "category_code"),
        ("daily_brand_sales", "brand"),
    ] {
        let got = query_csv(&snaps, &format!("SELECT day, {col}, revenue, items, orders FROM {table} ORDER BY day, {col} NULLS FIRST"));
        let want = independent(
            &ctx,
            &format!(
                "SELECT day, {col}, SUM(price) AS revenue, COUNT(*) AS items, COUNT(DISTINCT oid) AS orders \
                 FROM ev GROUP BY day, {col} ORDER BY day, {col} NULLS FIRST"
            ),
        )
        .await;
        assert_eq!(got, want, "{table}");
    }

    let got = query_csv(
        &snaps,
        "SELECT user_id, to_char(first_purchase, '%Y-%m-%d %H:%M:%S') AS first_purchase, \
         to_char(last_purchase, '%Y-%m-%d %H:%M:%S') AS last_purchase, frequency, monetary, items, \
         recency_days, r_score, f_score, m_score, rfm_cell, segment FROM rfm ORDER BY user_id",
    );
    let want = independent(&ctx, SEGMENT_SQL).await;
    assert!(want.lines().count() > 3000, "thousands of customers");
    assert_eq!(got, want);
}

/// An event-time replay larger than `--memory-limit` is sorted in runs spilled to disk and
/// merged: the tables, the counts and the dead letters are those of the in-memory sort,
/// and the temporary runs are gone afterwards.
#[test]
fn an_event_time_replay_beyond_the_memory_limit_spills_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input.csv");
    ok(&[
        "generate",
        "--rows",
        "200000",
        "--seed",
        "12",
        "--out",
        input.to_str().unwrap(),
    ]);
    let (memory, spilled) = (tmp.path().join("memory"), tmp.path().join("spilled"));
    run(&input, &memory, &[]);
    // The run's temporary folder is this test's: what it leaves there is its own. A sort
    // folder of a process that is gone (killed while sorting) is removed by the next sort.
    let temp = tmp.path().join("temp");
    // A sort's folder as a killed sort leaves it: its lock file held by no one.
    let orphan = temp.join("storepulse-sort-4194399-7f00");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join(".lock"), b"").unwrap();
    std::fs::write(orphan.join("run-0"), b"runs of a killed sort").unwrap();
    // 1 MiB holds about 10,900 events, less than one 8 MiB read block: each block
    // (about 23 MB of input in all) becomes a run of its own.
    let out = common::spawn::storepulse_command(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--snapshot-dir",
        spilled.to_str().unwrap(),
        "--no-progress",
        "--metrics-addr",
        "127.0.0.1:0",
        "--memory-limit",
        "1MiB",
    ])
    .env("TMPDIR", &temp)
    .output()
    .unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    let runs: u32 = said
        .lines()
        .find(|l| l.contains("sorted by event time in runs on disk"))
        .and_then(|l| l.split_once(" runs="))
        .and_then(|(_, r)| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no spill reported: {said}"));
    assert!(runs >= 3, "{said}");
    assert_eq!(
        common::query_tables(&memory),
        common::query_tables(&spilled)
    );
    assert_eq!(manifest(&memory)["counts"], manifest(&spilled)["counts"]);
    assert_eq!(
        std::fs::read(memory.join("rejected.csv")).unwrap(),
        std::fs::read(spilled.join("rejected.csv")).unwrap()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&temp)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("storepulse-sort-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let out = common::storepulse(&["run", "--memory-limit", "12x", "--input", "x.csv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown size unit"));
}
