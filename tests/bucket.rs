//! Snapshots in a bucket, against a real S3-protocol server on loopback (s3s over a
//! temporary folder, linked into this test), through the commands: `run` publishes to it,
//! `query` and `serve` read from it, through failing and absent stores, odd prefixes, a
//! resume on another machine, another machine's run claiming the prefix and snapshots
//! failing in a row. The protocol itself is tested in `bucket_protocol.rs`, the
//! credential sources in `bucket_credentials.rs`.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TABLE_QUERIES as TABLES;

#[test]
fn run_to_a_bucket_then_query_and_serve_from_it_equal_the_local_run() {
    let server = s3::Server::start("shop");
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 20_000, 19);
    let local = tmp.path().join("local");
    common::run(&input, &local, &["--max"]);

    let url = server.url("runs/first");
    let input_arg = input.to_str().unwrap();
    let run = || {
        server.ok(&[
            "run",
            "--input",
            input_arg,
            "--max",
            "--no-progress",
            "--snapshot-dir",
            &url,
            "--keep-snapshots",
            "2",
        ])
    };
    let printed = run();
    assert!(
        printed.contains(&format!("snapshots in {url}/")),
        "{printed}"
    );
    for sql in TABLES {
        let want = common::query_csv(&local, sql);
        assert!(want.lines().count() > 10, "{want}");
        let got = server.ok(&["query", "--format", "csv", "--snapshot-dir", &url, sql]);
        assert_eq!(got, want, "{sql}");
    }

    // What the bucket holds: the pointer names a snapshot whose tables and manifest are
    // there, with the dead letters and the summary beside them.
    let pointer = std::fs::read_to_string(server.file("runs/first/LATEST")).unwrap();
    let name = pointer.lines().next().unwrap();
    assert!(
        pointer.lines().nth(1).unwrap().starts_with("writer "),
        "{pointer}"
    );
    let objects = s3::objects(&server.file("runs/first"));
    for file in [
        "manifest.json",
        "rfm.parquet",
        "daily_sales.parquet",
        "state_customer_orders.parquet",
    ] {
        assert!(objects.contains(&format!("{name}/{file}")), "{objects:?}");
    }
    for file in ["LATEST", "summary.json"] {
        assert!(objects.contains(&file.to_string()), "{objects:?}");
    }
    let local_rejected = std::fs::read(local.join("rejected.csv")).unwrap();
    assert_eq!(s3::rejected_of(&server, "runs/first"), local_rejected);

    // Two more runs to the same prefix publish after the first (one writer at a time
    // continues from the pointer), and only the newest two snapshots are kept.
    for _ in 0..2 {
        run();
    }
    let folders: std::collections::BTreeSet<String> = s3::objects(&server.file("runs/first"))
        .iter()
        .filter(|o| o.starts_with("snap-"))
        .filter_map(|o| o.split_once('/').map(|(d, _)| d.to_string()))
        .collect();
    assert_eq!(folders.len(), 2, "{folders:?}");
    assert!(!folders.iter().any(|f| f.as_str() == name), "{folders:?}");
    let newest = std::fs::read_to_string(server.file("runs/first/LATEST")).unwrap();
    let newest = newest.lines().next().unwrap();
    assert!(newest.starts_with("snap-000003-"), "{newest}");
    assert!(folders.contains(newest));
    // Each fresh run's rejected lines are its own, not continued from the one before.
    assert_eq!(s3::rejected_of(&server, "runs/first"), local_rejected);

    // The store page from the bucket: its snapshot is the newest, its answers the run's.
    let addr = common::spawn::free_addr();
    let mut cmd = server.command(&["serve", "--snapshot-dir", &url, "--http-addr", &addr]);
    let mut page = common::spawn::Proc::start("serve", &mut cmd);
    page.wait_listening(&addr, std::time::Duration::from_secs(60));
    let info = common::wait::wait_until_ok(
        std::time::Duration::from_secs(60),
        "the page's snapshot",
        || {
            let (status, _, body) = common::http::get(&addr, "/api/snapshot");
            if status == 200 {
                Ok(body)
            } else {
                Err(format!("{status} {body}"))
            }
        },
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["version"], newest, "{info}");
    // (Integers beyond 2^53 would not survive JSON numbers: the page sends them as text.)
    let sql = "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(SUM(frequency) AS BIGINT) AS f FROM rfm";
    let (status, reply) = common::http::sql(&addr, sql);
    assert_eq!(status, 200, "{reply}");
    let local_csv = common::query_csv(&local, sql);
    let want: Vec<&str> = local_csv.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(reply["rows"][0]["n"].as_str(), Some(want[0]), "{reply}");
    assert_eq!(reply["rows"][0]["f"].as_str(), Some(want[1]), "{reply}");
    drop(page);
    for sql in TABLES {
        let got = server.ok(&["query", "--format", "csv", "--snapshot-dir", &url, sql]);
        assert_eq!(got, common::query_csv(&local, sql), "{sql}");
    }
}

#[test]
fn a_store_that_fails_requests_publishes_nothing_half_and_loses_nothing() {
    use std::sync::atomic::Ordering;
    let server = s3::Server::start("shop");
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 20_000, 23);
    let local = tmp.path().join("local");
    common::run(&input, &local, &["--max"]);
    // Each request is tried twice here: five 503s in a row fail at least two periodic
    // snapshots (tried again at the next interval), and the first pointer put that lands
    // is answered 500, so its retry finds the condition false and reads the pointer back.
    let url = server.url("faulty");
    let metrics = common::spawn::free_addr();
    let mut cmd = server.command(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--rate",
        "10000",
        "--no-progress",
        "--snapshot-interval",
        "100ms",
        "--snapshot-dir",
        &url,
        "--metrics-addr",
        &metrics,
    ]);
    cmd.env("STOREPULSE_STORE_RETRIES", "1");
    let mut run = common::spawn::Proc::start("run", &mut cmd);
    // Once the run has claimed the prefix (its pointer there names no snapshot yet).
    common::wait::wait_until(std::time::Duration::from_secs(30), "the claim", || {
        server.file("faulty/LATEST").exists()
    });
    server.faults.before.store(5, Ordering::SeqCst);
    server.faults.after_pointer.store(1, Ordering::SeqCst);
    // The counters, read while the run lasts (the faults come with its first snapshots).
    let counter = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let (mut store_errors, mut failed) = (0, 0);
    let started = std::time::Instant::now();
    while run.running() && started.elapsed() < std::time::Duration::from_secs(60) {
        if common::spawn::listening(&metrics) {
            let (_, _, text) = common::http::get(&metrics, "/metrics");
            store_errors = store_errors.max(counter(&text, "storepulse_store_errors_total"));
            failed = failed.max(counter(&text, "storepulse_snapshot_failures_total"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = run.stderr_log();
    run.wait_ok(std::time::Duration::from_secs(60));
    let err = log.lock().unwrap().clone();
    assert_eq!(server.faults.injected.load(Ordering::SeqCst), 6, "{err}");
    assert_eq!(store_errors, 6, "every 503 and the 500 counted: {err}");
    assert!(failed >= 2, "{failed} failed snapshots counted: {err}");
    assert!(
        err.matches("a snapshot could not be published; the next interval tries again")
            .count()
            >= 2,
        "{err}"
    );
    for sql in TABLES {
        let got = server.ok(&["query", "--format", "csv", "--snapshot-dir", &url, sql]);
        assert_eq!(got, common::query_csv(&local, sql), "{sql}");
    }
    // Nothing half: every snapshot folder with a manifest holds every file it lists, and
    // the pointer names one of them.
    let root = server.file("faulty");
    let objects = s3::objects(&root);
    let manifests: Vec<&String> = objects
        .iter()
        .filter(|o| o.ends_with("/manifest.json"))
        .collect();
    assert!(!manifests.is_empty());
    for m in &manifests {
        let folder = m.trim_end_matches("/manifest.json");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join(m)).unwrap()).unwrap();
        for t in manifest["tables"].as_object().unwrap().values() {
            let file = format!("{folder}/{}", t["file"].as_str().unwrap());
            assert!(objects.contains(&file), "{file} missing: {objects:?}");
        }
    }
    let pointer = std::fs::read_to_string(root.join("LATEST")).unwrap();
    let pointed = format!("{}/manifest.json", pointer.lines().next().unwrap());
    assert!(objects.contains(&pointed), "{pointer}");
}

#[test]
fn a_run_killed_mid_stream_resumes_from_the_bucket_exactly() {
    let server = s3::Server::start("shop");
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 30_000, 29);
    let input_arg = input.to_str().unwrap();
    let local = tmp.path().join("local");
    common::run(&input, &local, &["--max"]);
    let url = server.url("resumed");
    let home = |name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let mut cmd = server.command(&[
        "run",
        "--input",
        input_arg,
        "--rate",
        "10000",
        "--no-progress",
        "--snapshot-interval",
        "100ms",
        "--snapshot-dir",
        &url,
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    cmd.env("TMPDIR", home("first"));
    let first = common::spawn::Proc::start("run", &mut cmd);
    let pointed = || -> Option<serde_json::Value> {
        let pointer = std::fs::read_to_string(server.file("resumed/LATEST")).ok()?;
        let name = pointer.lines().next()?;
        let text = std::fs::read(server.file(&format!("resumed/{name}/manifest.json"))).ok()?;
        serde_json::from_slice(&text).ok()
    };
    common::wait::wait_until(
        std::time::Duration::from_secs(60),
        "an incremental snapshot in the bucket",
        || {
            pointed().is_some_and(|m| {
                m["counts"]["accepted"].as_u64().unwrap_or(0) > 5_000
                    && m["chain"]["length"].as_u64().unwrap_or(0) >= 2
            })
        },
    );
    first.kill9();
    let snap = pointed().unwrap();
    assert_eq!(snap["input"]["complete"], false, "killed too late: {snap}");
    assert_eq!(snap["format"], 5, "{snap}");

    // `query` fetches the incremental snapshot's chain from the bucket and restores it:
    // every customer it covers is there, scored (its own `rfm` holds those who bought
    // since the snapshot before, unscored).
    let count = |sql: &str| -> u64 {
        let out = server.ok(&["query", "--format", "csv", "--snapshot-dir", &url, sql]);
        out.lines().nth(1).unwrap().parse().unwrap()
    };
    let customers = count("SELECT COUNT(*) AS n FROM rfm");
    let scored =
        count("SELECT COUNT(*) AS n FROM rfm WHERE r_score BETWEEN 1 AND 5 AND segment <> ''");
    let own = snap["tables"]["rfm"]["rows"].as_u64().unwrap();
    assert!(
        customers == scored && customers > own,
        "{customers} customers, {scored} scored, {own} in the snapshot's own table"
    );

    // Another machine, as it were: a fresh working folder; everything comes from the bucket.
    let mut cmd = server.command(&[
        "run",
        "--input",
        input_arg,
        "--max",
        "--no-progress",
        "--snapshot-dir",
        &url,
        "--resume",
        "--summary",
        "json",
    ]);
    cmd.env("TMPDIR", home("second"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed = common::summary(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(resumed["state"], "complete", "{resumed}");
    let covered = snap["counts"]["records"].as_u64().unwrap();
    assert_eq!(
        resumed["records_read_this_run"].as_u64().unwrap(),
        30_000 - covered,
        "only the lines after the snapshot are read again: {resumed}"
    );
    for sql in TABLES {
        let got = server.ok(&["query", "--format", "csv", "--snapshot-dir", &url, sql]);
        assert_eq!(got, common::query_csv(&local, sql), "{sql}");
    }
    // (Rejected lines are kept byte for byte, not always UTF-8.)
    let local_rejected = std::fs::read(local.join("rejected.csv")).unwrap();
    assert!(local_rejected.iter().filter(|&&b| b == b'\n').count() > 10);
    assert!(
        s3::rejected_of(&server, "resumed") == local_rejected,
        "the dead letters are the uninterrupted run's, none lost or twice"
    );
}

/// A store that refuses connections for a while (a restart, a network cut) delays a
/// snapshot and stops nothing: requests are retried for a minute, not for a count.
#[test]
fn a_store_away_for_a_while_is_waited_for() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 5_000, 31);
    let local = tmp.path().join("local");
    common::run(&input, &local, &["--max"]);
    let addr = common::spawn::free_addr();
    let metrics = common::spawn::free_addr();
    let url = "s3://shop/away";
    let mut cmd = s3::command_for(
        &addr,
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--max",
            "--no-progress",
            "--snapshot-dir",
            url,
            "--metrics-addr",
            &metrics,
        ],
    );
    cmd.env("TMPDIR", tmp.path());
    let mut run = common::spawn::Proc::start("run", &mut cmd);
    // Nothing listens yet: the run's first request is refused, and refused again, more
    // times than a count of retries would allow.
    let refused = || -> u64 {
        if !common::spawn::listening(&metrics) {
            return 0;
        }
        let (_, _, text) = common::http::get(&metrics, "/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix("storepulse_store_errors_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    common::wait::wait_until(
        std::time::Duration::from_secs(40),
        "refused requests",
        || refused() >= 8 || !run.running(),
    );
    assert!(
        run.running(),
        "the run gave up on the store: {}",
        run.stderr()
    );
    let server = s3::Server::start_on("shop", &addr);
    run.wait_ok(std::time::Duration::from_secs(90));
    for sql in TABLES {
        let got = server.ok(&["query", "--format", "csv", "--snapshot-dir", url, sql]);
        assert_eq!(got, common::query_csv(&local, sql), "{sql}");
    }
}

/// A prefix with characters that need escaping in a URL is written and read back alike.
#[test]
fn a_prefix_with_characters_that_need_escaping_is_read_back() {
    let server = s3::Server::start("shop");
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 3_000, 38);
    let local = tmp.path().join("local");
    common::run(&input, &local, &["--max"]);
    let url = server.url("odd ~#%[]{}^|<>\"*?/x");
    server.ok(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--max",
        "--no-progress",
        "--snapshot-dir",
        &url,
    ]);
    for sql in TABLES {
        let got = server.ok(&["query", "--format", "csv", "--snapshot-dir", &url, sql]);
        assert_eq!(got, common::query_csv(&local, sql), "{sql}");
    }
}

/// A `run` paced at 2,000 events/s publishing to the prefix `url` every 100 ms.
fn paced_run(server: &s3::Server, input: &std::path::Path, url: &str) -> std::process::Child {
    let args = [
        "run",
        "--input",
        input.to_str().unwrap(),
        "--rate",
        "2000",
        "--snapshot-interval",
        "100ms",
        "--no-progress",
        "--snapshot-dir",
        url,
    ];
    server
        .command(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_run_whose_prefix_another_run_claims_stops_with_the_error_and_changes_nothing() {
    let server = s3::Server::start("shop");
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 20_000, 23);
    let url = server.url("shared");
    let slow = paced_run(&server, &input, &url);
    common::wait::wait_until(
        Duration::from_secs(60),
        "the slow run's first snapshot",
        || {
            std::fs::read_to_string(server.file("shared/LATEST"))
                .is_ok_and(|p| p.starts_with("snap-"))
        },
    );
    // Another machine runs the whole file into the same prefix: it claims it.
    let args = [
        "run",
        "--input",
        input.to_str().unwrap(),
        "--max",
        "--no-progress",
    ];
    server.ok(&[&args[..], &["--snapshot-dir", &url]].concat());
    let (pointer, name) = s3::pointer(&server, "shared");
    let out = slow.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the fenced run exits non-zero: {err}"
    );
    assert!(
        err.contains("another writer published to s3://shop/shared since this one did"),
        "{err}"
    );
    // The pointer is still the claiming run's, and the tables are the whole file's.
    assert_eq!(s3::pointer(&server, "shared"), (pointer, name));
    let local = tmp.path().join("local");
    common::run(&input, &local, &["--max"]);
    for sql in TABLES {
        assert_eq!(
            server.ok(&["query", "--format", "csv", "--snapshot-dir", &url, sql]),
            common::query_csv(&local, sql),
            "{sql}"
        );
    }
}

#[test]
fn a_run_whose_snapshots_fail_31_times_in_a_row_stops_with_the_error() {
    let server = s3::Server::start("shop");
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 40_000, 29);
    let url = server.url("failing");
    // Every file of a snapshot is refused (the claim of the prefix goes through).
    let refused = Arc::new(AtomicUsize::new(0));
    let counted = refused.clone();
    server.faults.hook(move |r| {
        if r.is_put(".parquet") {
            counted.fetch_add(1, Ordering::SeqCst);
            s3::Action::Fail(403)
        } else {
            s3::Action::Pass
        }
    });
    let run = paced_run(&server, &input, &url);
    let out = run.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let warned = err
        .lines()
        .filter(|l| l.contains("a snapshot could not be published; the next interval tries again"))
        .count();
    assert_eq!(warned, 30, "{err}");
    assert!(err.contains("in_a_row=30"), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("storepulse: error:") && last.contains("failing/snap-"),
        "{last}"
    );
    assert!(refused.load(Ordering::SeqCst) >= 31);
    // It stopped long before the end of the file (20 s at this pace).
    assert!(!std::fs::read_to_string(server.file("failing/LATEST"))
        .unwrap_or_default()
        .starts_with("snap-"));
}
