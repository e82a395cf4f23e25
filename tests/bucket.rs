//! Snapshots in a bucket, against a real S3-protocol server on loopback (s3s over a
//! temporary folder, linked into this test): `run` publishes to it and `query` reads from
//! it, and a second writer of one prefix is fenced by the conditional pointer put.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::path::Path;
use std::process::Output;

use common::spawn::storepulse_command;
use storepulse::aggregate::{Core, CoreConfig};
use storepulse::snapshot::{
    Counts, InputPosition, Publisher, SnapshotError, SnapshotMeta, SnapshotStore, WindowConfig,
};

fn with_env(server: &s3::Server, args: &[&str]) -> Output {
    server.command(args).output().unwrap()
}

fn ok_with_env(server: &s3::Server, args: &[&str]) -> String {
    let out = with_env(server, args);
    assert!(
        out.status.success(),
        "storepulse {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const TABLES: [&str; 4] = [
    "SELECT * FROM daily_sales ORDER BY day",
    "SELECT * FROM daily_category_sales ORDER BY day, category_code NULLS FIRST",
    "SELECT * FROM daily_brand_sales ORDER BY day, brand NULLS FIRST",
    "SELECT * FROM rfm ORDER BY user_id",
];

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
        ok_with_env(
            &server,
            &[
                "run",
                "--input",
                input_arg,
                "--max",
                "--no-progress",
                "--snapshot-dir",
                &url,
                "--keep-snapshots",
                "2",
            ],
        )
    };
    let printed = run();
    assert!(
        printed.contains(&format!("snapshots in {url}/")),
        "{printed}"
    );
    for sql in TABLES {
        let want = common::query_csv(&local, sql);
        assert!(want.lines().count() > 10, "{want}");
        let got = ok_with_env(
            &server,
            &["query", "--format", "csv", "--snapshot-dir", &url, sql],
        );
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
    for file in ["LATEST", "rejected.csv", "summary.json"] {
        assert!(objects.contains(&file.to_string()), "{objects:?}");
    }
    let local_rejected = std::fs::read(local.join("rejected.csv")).unwrap();
    assert_eq!(
        std::fs::read(server.file("runs/first/rejected.csv")).unwrap(),
        local_rejected
    );

    // Two more runs to the same prefix publish after the first (one writer at a time
    // continues from the pointer), and only the newest two snapshots are kept.
    for _ in 0..2 {
        run();
    }
    let folders: std::collections::BTreeSet<String> = s3::objects(&server.file("runs/first"))
        .iter()
        .filter_map(|o| o.split_once('/').map(|(d, _)| d.to_string()))
        .collect();
    assert_eq!(folders.len(), 2, "{folders:?}");
    assert!(!folders.iter().any(|f| f.as_str() == name), "{folders:?}");
    let newest = std::fs::read_to_string(server.file("runs/first/LATEST")).unwrap();
    let newest = newest.lines().next().unwrap();
    assert!(newest.starts_with("snap-000003-"), "{newest}");
    assert!(folders.contains(newest));

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
        let got = ok_with_env(
            &server,
            &["query", "--format", "csv", "--snapshot-dir", &url, sql],
        );
        assert_eq!(got, common::query_csv(&local, sql), "{sql}");
    }
}

#[test]
fn a_bucket_without_its_variables_is_refused_naming_them() {
    let server = s3::Server::start("shop");
    let url = server.url("x");
    let out = storepulse_command(&["query", "--snapshot-dir", &url, "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AWS_ACCESS_KEY_ID is not set"), "{err}");

    let mut cmd = storepulse_command(&["query", "--snapshot-dir", &url, "SELECT 1"]);
    for (k, v) in server
        .env()
        .into_iter()
        .filter(|(k, _)| *k != "AWS_ALLOW_HTTP")
    {
        cmd.env(k, v);
    }
    let err = String::from_utf8_lossy(&cmd.output().unwrap().stderr).into_owned();
    assert!(err.contains("set AWS_ALLOW_HTTP=true"), "{err}");

    // An empty prefix: no snapshot yet.
    let out = with_env(&server, &["query", "--snapshot-dir", &url, "SELECT 1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no snapshot in s3://shop/x yet"), "{err}");
}

fn snapshot_of(dir: &Path, publisher: Publisher, events: u64) -> Result<u64, SnapshotError> {
    let mut core = Core::new(CoreConfig::default());
    let mut data = Vec::new();
    storepulse::generate::generate(&mut data, events, 3).unwrap();
    let all = storepulse::replay::read_all(data.as_slice(), &Default::default()).unwrap();
    common::feed(&mut core, &all.dict, all.events);
    let meta = SnapshotMeta {
        input: InputPosition::File {
            path: "generated".into(),
            order: "file".into(),
            lines_read: events,
            events_applied: core.accepted(),
            complete: true,
            rejected_bytes: 0,
        },
        counts: Counts {
            accepted: core.accepted(),
            ..Counts::default()
        },
        config: WindowConfig::of(&CoreConfig::default(), "2000-01-01T00:00:00Z".into()),
    };
    SnapshotStore::open(dir, 3)?
        .with_remote(publisher)?
        .write(&core, meta)
        .map(|m| m.id)
}

#[test]
fn a_second_writer_of_one_prefix_is_fenced_and_never_replaces_the_pointer() {
    let server = s3::Server::start("shop");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bucket = server.prefix("shared");
    // Both open the prefix while it is empty; the first to publish wins it.
    let a = Publisher::open(bucket.clone(), 3).unwrap();
    let b = Publisher::open(bucket.clone(), 3).unwrap();
    let id = snapshot_of(a_dir.path(), a, 500).unwrap();
    let pointer = std::fs::read_to_string(server.file("shared/LATEST")).unwrap();
    assert!(pointer.starts_with(&format!("snap-{id:06}-")), "{pointer}");
    let pointed = pointer.lines().next().unwrap().to_string();
    let manifest = server.file(&format!("shared/{pointed}/manifest.json"));
    let first_manifest = std::fs::read(&manifest).unwrap();
    match snapshot_of(b_dir.path(), b, 800) {
        Err(SnapshotError::Fenced { url, .. }) => assert_eq!(url, "s3://shop/shared"),
        other => panic!("the second writer published: {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(server.file("shared/LATEST")).unwrap(),
        pointer,
        "the pointer is the first writer's"
    );
    // The fenced writer wrote into a folder of its own: the first's files are untouched.
    assert_eq!(std::fs::read(&manifest).unwrap(), first_manifest);
    // A writer that opens the prefix after a publish continues from its pointer.
    let c = Publisher::open(bucket, 3).unwrap();
    let next = snapshot_of(tempfile::tempdir().unwrap().path(), c, 900).unwrap();
    assert!(next > id);
    let pointer = std::fs::read_to_string(server.file("shared/LATEST")).unwrap();
    assert!(
        pointer.starts_with(&format!("snap-{next:06}-")),
        "{pointer}"
    );
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
    server.faults.before.store(5, Ordering::SeqCst);
    server.faults.after_pointer.store(1, Ordering::SeqCst);
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
        let got = ok_with_env(
            &server,
            &["query", "--format", "csv", "--snapshot-dir", &url, sql],
        );
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
        "a snapshot in the bucket",
        || pointed().is_some_and(|m| m["counts"]["accepted"].as_u64().unwrap_or(0) > 5_000),
    );
    first.kill9();
    let snap = pointed().unwrap();
    assert_eq!(snap["input"]["complete"], false, "killed too late: {snap}");

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
        let got = ok_with_env(
            &server,
            &["query", "--format", "csv", "--snapshot-dir", &url, sql],
        );
        assert_eq!(got, common::query_csv(&local, sql), "{sql}");
    }
    // (Rejected lines are kept byte for byte, not always UTF-8.)
    let local_rejected = std::fs::read(local.join("rejected.csv")).unwrap();
    assert!(local_rejected.iter().filter(|&&b| b == b'\n').count() > 10);
    assert!(
        std::fs::read(server.file("resumed/rejected.csv")).unwrap() == local_rejected,
        "the dead letters are the uninterrupted run's, none lost or twice"
    );
}
