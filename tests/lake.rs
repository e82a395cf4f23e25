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
use std::sync::atomic::{AtomicBool, Ordering};

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
    // A folder that is not there is said to be empty, not to lack tables.
    let missing = tmp.path().join("not-there");
    let out = common::storepulse(&[
        "query",
        "--snapshot-dir",
        missing.to_str().unwrap(),
        "--as-of",
        "1",
        "SELECT 1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no snapshot in"), "{err}");
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
                "--tables-interval",
                "0s",
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

/// The four tables over a bucket prefix, through `query`, as `common::query_tables` has them.
fn bucket_tables(server: &s3::Server, url: &str) -> Vec<String> {
    common::TABLE_QUERIES
        .iter()
        .map(|sql| server.ok(&["query", "--format", "csv", "--snapshot-dir", url, sql]))
        .collect()
}

fn run_args<'a>(input: &'a str, url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--input",
        input,
        "--no-progress",
        "--tables",
        "--snapshot-dir",
        url,
    ];
    args.extend_from_slice(extra);
    args
}

/// The results committed to a table in a bucket, in version order (its log read from the
/// server's folder).
fn bucket_results(server: &s3::Server, prefix: &str, table: &str) -> Vec<u64> {
    let path = server
        .root
        .path()
        .join(&server.bucket)
        .join(prefix)
        .join("tables")
        .join(table);
    results_in_log(&path)
}

/// The id of the snapshot a bucket prefix's `LATEST` names (read from the server's folder).
fn latest_id(server: &s3::Server, prefix: &str) -> u64 {
    let at = server.root.path().join(&server.bucket).join(prefix);
    let latest = std::fs::read_to_string(at.join("LATEST")).unwrap();
    let name = latest.lines().next().unwrap().trim();
    let manifest = std::fs::read_to_string(at.join(name).join("manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    manifest["id"].as_u64().unwrap()
}

/// The commit of a table's result answered with an error although it landed: the
/// publisher finds it in the log, commits it nowhere twice, and the run ends well.
#[test]
fn a_commit_whose_answer_is_lost_is_found_in_the_log_and_not_made_again() {
    let server = s3::Server::start("lake");
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 6_000, 66);
    let url = server.url("lost");
    let first_commit = "lake/lost/tables/rfm/_delta_log/00000000000000000001.json";
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    {
        let lost = lost.clone();
        server.faults.hook(move |r| {
            if r.method == http::Method::PUT && r.key == first_commit {
                lost.fetch_add(1, Ordering::SeqCst);
                if lost.load(Ordering::SeqCst) == 1 {
                    return s3::Action::FailAfter(500);
                }
            }
            s3::Action::Pass
        });
    }
    server.ok(&run_args(input.to_str().unwrap(), &url, &["--max"]));
    assert!(lost.load(Ordering::SeqCst) >= 1);
    let id = bucket_results(&server, "lost", "daily_sales");
    assert_eq!(id, [latest_id(&server, "lost")]);
    for table in QUERY_TABLES {
        assert_eq!(bucket_results(&server, "lost", table), id, "{table}");
    }
    let env = server.env();
    assert_readers_agree(
        |t| format!("{url}/tables/{t}"),
        &env,
        |sql| server.ok(&["query", "--format", "csv", "--snapshot-dir", &url, sql]),
    );
}

/// `run --tables` killed (SIGKILL) while a commit is held: its table's new data files are
/// written, its log entry is not. `run --resume --tables` finishes the file; every table
/// holds each result at most once, in order, ends at the last snapshot, and equals `query`
/// and an uninterrupted run of the whole file.
#[test]
fn a_run_killed_between_data_files_and_commit_resumes_to_exact_tables() {
    let server = s3::Server::start("lake");
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 12_000, 67);
    let reference = tmp.path().join("reference");
    common::run(&input, &reference, &["--max"]);
    let url = server.url("killed");
    let input = input.to_str().unwrap();

    let held_commit = "lake/killed/tables/rfm/_delta_log/00000000000000000002.json";
    let gate = s3::gate();
    let held = std::sync::Arc::new(AtomicBool::new(false));
    {
        let (gate, held) = (gate.clone(), held.clone());
        server.faults.hook(move |r| {
            if r.method == http::Method::PUT && r.key == held_commit {
                held.store(true, Ordering::SeqCst);
                return s3::Action::Hold(gate.clone());
            }
            s3::Action::Pass
        });
    }
    let paced = [
        "--rate",
        "2000",
        "--snapshot-interval",
        "200ms",
        "--tables-interval",
        "0s",
    ];
    let mut cmd = server.command(&run_args(input, &url, &paced));
    let run = Proc::start("run", &mut cmd);
    common::wait::wait_until(LIMIT, "the second commit to rfm", || {
        held.load(Ordering::SeqCst)
    });
    let rfm = server
        .root
        .path()
        .join(&server.bucket)
        .join("killed/tables/rfm");
    let data_files = || {
        std::fs::read_dir(&rfm)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
            .count()
    };
    assert_eq!(
        data_files(),
        2,
        "the first result's file and the held one's"
    );
    run.kill9();
    server.faults.clear_hook();
    gate.add_permits(1 << 20);
    assert_eq!(bucket_results(&server, "killed", "rfm").len(), 1);

    server.ok(&run_args(input, &url, &["--max", "--resume"]));
    assert_eq!(
        bucket_tables(&server, &url),
        common::query_tables(&reference)
    );
    let last = latest_id(&server, "killed");
    for table in QUERY_TABLES {
        let results = bucket_results(&server, "killed", table);
        assert!(
            results.windows(2).all(|w| w[0] < w[1]),
            "{table}: {results:?}"
        );
        assert_eq!(results.last(), Some(&last), "{table}: {results:?}");
    }
    let env = server.env();
    assert_readers_agree(
        |t| format!("{url}/tables/{t}"),
        &env,
        |sql| server.ok(&["query", "--format", "csv", "--snapshot-dir", &url, sql]),
    );
}
