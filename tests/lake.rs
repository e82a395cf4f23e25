//! The result tables as Delta Lake tables (`run --tables`), read by readers nobody here
//! wrote: the Python `deltalake` package and Polars' `read_delta` (from PyPI, see
//! `common/python.rs`), from a local folder and from the S3 server linked into this test.
//! Every row of every table equals `query`'s answer, money as exact decimals. And
//! `process --tables`: two processors through a real broker (tansu) publishing each merged
//! view once.

mod common;
#[path = "common/python.rs"]
mod python;
#[path = "common/s3.rs"]
mod s3;

use std::path::Path;

use common::kafka_cases::{assert_same_tables, paced_replay, process_args, Case, LIMIT};
use common::spawn::Proc;

use storepulse::snapshot::tables::{schema, QUERY_TABLES};

/// `query`'s rows of `table` as the readers print them: every column as text, timestamps
/// as microseconds, sorted.
fn query_rows(table: &str, ask: impl Fn(&str) -> String) -> Vec<String> {
    let cols = schema(table)
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            datafusion::arrow::datatypes::DataType::Timestamp(..) => {
                format!("CAST(arrow_cast({0}, 'Int64') AS VARCHAR) AS {0}", f.name())
            }
            _ => format!("CAST({0} AS VARCHAR) AS {0}", f.name()),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let csv = ask(&format!("SELECT {cols} FROM {table}"));
    let mut rows: Vec<String> = csv.lines().skip(1).map(str::to_string).collect();
    rows.sort();
    rows
}

fn columns(table: &str) -> Vec<String> {
    schema(table)
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

fn assert_readers_agree(
    url_of: impl Fn(&str) -> String,
    env: &[(&str, String)],
    ask: impl Fn(&str) -> String,
) {
    for table in QUERY_TABLES {
        let want = query_rows(table, &ask);
        assert!(want.len() > 10, "{table}: {} rows", want.len());
        let cols = columns(table);
        let cols: Vec<&str> = cols.iter().map(String::as_str).collect();
        for reader in ["deltalake", "polars"] {
            let got = python::read_delta(reader, &url_of(table), &cols, &[], env);
            assert_eq!(got.len(), want.len(), "{reader} {table}");
            let differ: Vec<_> = got
                .iter()
                .zip(&want)
                .filter(|(g, w)| g != w)
                .take(3)
                .collect();
            assert!(differ.is_empty(), "{reader} {table}: {differ:?}");
        }
    }
}

#[test]
fn run_tables_in_a_folder_read_by_deltalake_and_polars_equal_query() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 20_000, 61);
    let dir = tmp.path().join("snaps");
    common::run(&input, &dir, &["--max", "--tables"]);
    let tables = std::fs::canonicalize(dir.join("tables")).unwrap();
    let url_of = |t: &str| tables.join(t).display().to_string();
    assert_readers_agree(url_of, &[], |sql| common::query_csv(&dir, sql));
    // Each table's log: the creation and one result, marked with its application transaction.
    let log =
        std::fs::read_to_string(tables.join("rfm/_delta_log/00000000000000000001.json")).unwrap();
    assert!(
        log.contains("\"txn\"") && log.contains("\"appId\":\"storepulse\""),
        "{log}"
    );
    assert!(!Path::new(&tables.join("rfm/_delta_log/00000000000000000002.json")).exists());
}

#[test]
fn run_tables_in_a_bucket_read_by_deltalake_and_polars_equal_query() {
    let server = s3::Server::start("lake");
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 20_000, 62);
    let url = server.url("shop/runs");
    server.ok(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--max",
        "--no-progress",
        "--tables",
        "--snapshot-dir",
        &url,
    ]);
    let env: Vec<(&str, String)> = server.env();
    let url_of = |t: &str| format!("{url}/tables/{t}");
    let ask = |sql: &str| server.ok(&["query", "--format", "csv", "--snapshot-dir", &url, sql]);
    assert_readers_agree(url_of, &env, ask);
}

/// `query --as-of` over the tables' history: two runs into one folder make versions 1 and
/// 2; a version or a time between the runs reads the first run's tables, exactly, as the
/// Python readers read that version.
#[test]
fn query_as_of_a_version_or_a_time_reads_the_tables_as_they_were() {
    let tmp = tempfile::tempdir().unwrap();
    let first = common::generate(tmp.path(), 6_000, 63);
    let second_dir = tmp.path().join("second");
    std::fs::create_dir_all(&second_dir).unwrap();
    let second = common::generate(&second_dir, 9_000, 64);
    let (only_first, dir) = (tmp.path().join("first-only"), tmp.path().join("snaps"));
    common::run(&first, &only_first, &["--max"]);
    common::run(&first, &dir, &["--max", "--tables"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    common::run(&second, &dir, &["--max", "--tables"]);

    let d = dir.to_str().unwrap();
    let as_of = |at: &str, sql: &str| {
        common::ok(&[
            "query",
            "--snapshot-dir",
            d,
            "--format",
            "csv",
            "--as-of",
            at,
            sql,
        ])
    };
    for sql in common::TABLE_QUERIES {
        let was = common::query_csv(&only_first, sql);
        assert_eq!(as_of("1", sql), was, "{sql}");
        assert_eq!(as_of(&between, sql), was, "{sql}");
        let now = common::query_csv(&dir, sql);
        assert_ne!(now, was, "{sql}");
        assert_eq!(as_of("2", sql), now, "{sql}");
    }
    // The Python readers' version 1 is the same.
    let tables = std::fs::canonicalize(dir.join("tables")).unwrap();
    let table = "daily_sales";
    let want = query_rows(table, |sql| common::query_csv(&only_first, sql));
    let cols = columns(table);
    let cols: Vec<&str> = cols.iter().map(String::as_str).collect();
    let url = tables.join(table).display().to_string();
    for reader in ["deltalake", "polars"] {
        assert_eq!(
            python::read_delta(reader, &url, &cols, &["--version", "1"], &[]),
            want,
            "{reader}"
        );
    }
    // Before the first commit, and a version not yet made: said plainly.
    let out = common::storepulse(&["query", "--snapshot-dir", d, "--as-of", "9", "SELECT 1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has versions up to 2; there is no version 9"),
        "{err}"
    );
    let out = common::storepulse(&[
        "query",
        "--snapshot-dir",
        tmp.path().join("first-only").to_str().unwrap(),
        "--as-of",
        "1",
        "SELECT 1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds no Delta tables") && err.contains("run --tables"),
        "{err}"
    );
}

/// The results (application transactions) of a local table's commits, in version order.
fn results_in_log(table: &Path) -> Vec<u64> {
    let mut logs: Vec<_> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    logs.sort();
    let mut results = Vec::new();
    for log in logs {
        for line in std::fs::read_to_string(&log).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(txn) = action.get("txn") {
                assert_eq!(txn["appId"], "storepulse", "{}", log.display());
                results.push(txn["version"].as_u64().unwrap());
            }
        }
    }
    results
}

/// `process --tables`: two processors, two partitions each (static assignment), write
/// merged views every 100 ms beside the stream and publish each one's tables, racing each
/// other. Each table's log holds results in increasing order, none twice; the last is the
/// last view; the tables equal `query` (which reads that view) and `run` on the file.
#[test]
fn two_processors_publish_each_merged_view_once_and_end_equal_to_query() {
    let _serial = common::kafka::serial();
    let c = Case::generated(12_000, 65, 4);
    let with = |assign| {
        process_args(
            &c.broker,
            &c.got,
            &[
                "--stop-at-end",
                "--assign",
                assign,
                "--tables",
                "--view-interval",
                "100ms",
            ],
        )
    };
    let a = Proc::spawn("processor a", &with("0,1"));
    let b = Proc::spawn("processor b", &with("2,3"));
    paced_replay(&c.broker, &c.input, "3000").wait_ok(LIMIT);
    a.wait_ok(LIMIT);
    b.wait_ok(LIMIT);
    assert_same_tables(&c.want, &c.got);
    let tables = std::fs::canonicalize(c.got.join("tables")).unwrap();
    let url_of = |t: &str| tables.join(t).display().to_string();
    assert_readers_agree(url_of, &[], |sql| common::query_csv(&c.got, sql));
    let last_view = common::manifest(&c.got.join("merged"))["id"]
        .as_u64()
        .unwrap();
    for table in QUERY_TABLES {
        let results = results_in_log(&tables.join(table));
        assert!(
            results.len() >= 3,
            "{table}: views published while streaming: {results:?}"
        );
        assert!(
            results.windows(2).all(|w| w[0] < w[1]),
            "{table}: {results:?}"
        );
        assert_eq!(results.last(), Some(&last_view), "{table}: {results:?}");
    }
}
