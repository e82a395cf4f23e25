//! The result tables as Delta Lake tables (`run --tables`), read by readers nobody here
//! wrote: the Python `deltalake` package and Polars' `read_delta` (from PyPI, see
//! `common/python.rs`), from a local folder and from the S3 server linked into this test.
//! Every row of every table equals `query`'s answer, money as exact decimals.

mod common;
#[path = "common/python.rs"]
mod python;
#[path = "common/s3.rs"]
mod s3;

use std::path::Path;

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
    let out = server
        .command(&[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--max",
            "--no-progress",
            "--tables",
            "--snapshot-dir",
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env: Vec<(&str, String)> = server.env();
    let url_of = |t: &str| format!("{url}/tables/{t}");
    let ask = |sql: &str| {
        let out = server
            .command(&["query", "--format", "csv", "--snapshot-dir", &url, sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_readers_agree(url_of, &env, ask);
}
