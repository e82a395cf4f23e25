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
    for file in ["LATEST", "summary.json"] {
        assert!(objects.contains(&file.to_string()), "{objects:?}");
    }
    let local_rejected = std::fs::read(local.join("rejected.csv")).unwrap();
    assert_eq!(rejected_of(&server, "runs/first"), local_rejected);

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
    assert_eq!(rejected_of(&server, "runs/first"), local_rejected);

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

/// A core fed `events` generated lines, and what its snapshot records beside it, with
/// `rejected_bytes` of the folder's `rejected.csv` covered.
fn state_of(events: u64, rejected_bytes: u64) -> (Core, SnapshotMeta) {
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
            rejected_bytes,
        },
        counts: Counts {
            accepted: core.accepted(),
            ..Counts::default()
        },
        config: WindowConfig::of(&CoreConfig::default(), "2000-01-01T00:00:00Z".into()),
    };
    (core, meta)
}

/// A writer's store: snapshots staged in `dir`, published through `publisher`.
fn store_of(dir: &Path, publisher: Publisher, keep: usize) -> SnapshotStore {
    SnapshotStore::open(dir, keep)
        .unwrap()
        .with_remote(publisher)
        .unwrap()
}

/// Writes a snapshot of `events` lines through `store`; its id.
fn write(store: &mut SnapshotStore, events: u64) -> Result<u64, SnapshotError> {
    let (core, meta) = state_of(events, 0);
    store.write(&core, meta).map(|m| m.id)
}

fn snapshot_of(dir: &Path, publisher: Publisher, events: u64) -> Result<u64, SnapshotError> {
    write(&mut store_of(dir, publisher, 3), events)
}

/// The text of `prefix`'s pointer in the server's folder, and the snapshot it names.
fn pointer(server: &s3::Server, prefix: &str) -> (String, String) {
    let text = std::fs::read_to_string(server.file(&format!("{prefix}/LATEST"))).unwrap();
    let name = text.lines().next().unwrap_or_default().to_string();
    (text, name)
}

/// The rejected lines the pointed snapshot of `prefix` covers: the pieces its manifest
/// lists, read from the server's folder and put together.
fn rejected_of(server: &s3::Server, prefix: &str) -> Vec<u8> {
    let (_, name) = pointer(server, prefix);
    let manifest = server.file(&format!("{prefix}/{name}/manifest.json"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    let mut out = Vec::new();
    for piece in manifest["rejected_pieces"].as_array().into_iter().flatten() {
        let piece = server.file(&format!("{prefix}/{}", piece.as_str().unwrap()));
        out.extend(std::fs::read(piece).unwrap());
    }
    out
}

#[test]
fn a_writer_that_claims_the_prefix_fences_every_earlier_writer() {
    let server = s3::Server::start("shop");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bucket = server.prefix("shared");
    // Both claim the prefix while it is empty; the later claim is the owner.
    let a = Publisher::claim(bucket.clone(), 3).unwrap();
    let b = Publisher::claim(bucket.clone(), 3).unwrap();
    match snapshot_of(a_dir.path(), a, 500) {
        Err(SnapshotError::Fenced { url, .. }) => assert_eq!(url, "s3://shop/shared"),
        other => panic!("the earlier writer published: {other:?}"),
    }
    let (claimed, name) = pointer(&server, "shared");
    assert_eq!(name, "", "the claim names no snapshot yet: {claimed}");
    let id = snapshot_of(b_dir.path(), b, 800).unwrap();
    let (text, name) = pointer(&server, "shared");
    assert!(name.starts_with(&format!("snap-{id:06}-")), "{text}");
    // Writers are 128 random bits; the pointer carries the claim's epoch.
    let writer = text
        .lines()
        .nth(1)
        .unwrap()
        .strip_prefix("writer ")
        .unwrap();
    assert_eq!(writer.len(), 32, "{text}");
    assert!(writer.chars().all(|c| c.is_ascii_hexdigit()), "{text}");
    assert_eq!(text.lines().nth(2), Some("epoch 2"), "{text}");
    assert!(
        name.ends_with(writer),
        "the folder is the writer's own: {text}"
    );
    // A writer that claims the prefix after a publish continues from its pointer.
    let c = Publisher::claim(bucket, 3).unwrap();
    let next = snapshot_of(tempfile::tempdir().unwrap().path(), c, 900).unwrap();
    assert!(next > id);
    let (text, name) = pointer(&server, "shared");
    assert!(name.starts_with(&format!("snap-{next:06}-")), "{text}");
    assert_eq!(text.lines().nth(2), Some("epoch 3"), "{text}");
}

/// The review's first finding: a processor paused past its session publishes after the
/// new owner took its partition but before the new owner's first publish. The new owner
/// claimed the partition when it took it, so the zombie is refused, never the owner.
#[test]
fn a_zombie_publishing_after_the_takeover_is_fenced_not_the_new_owner() {
    let server = s3::Server::start("shop");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bucket = server.prefix("partitions/purchases-0");
    let mut a = store_of(
        a_dir.path(),
        Publisher::claim(bucket.clone(), 3).unwrap(),
        3,
    );
    let first = write(&mut a, 300).unwrap();
    // b takes the partition over (a's session ended while it was paused).
    let mut b = store_of(
        b_dir.path(),
        Publisher::claim(bucket.clone(), 3).unwrap(),
        3,
    );
    let (claimed, name) = pointer(&server, "partitions/purchases-0");
    assert!(
        name.starts_with(&format!("snap-{first:06}-")),
        "b claims a's snapshot: {claimed}"
    );
    // a comes back and publishes its periodic snapshot: refused.
    let err = write(&mut a, 600).unwrap_err();
    assert!(matches!(err, SnapshotError::Fenced { .. }), "{err}");
    assert_eq!(pointer(&server, "partitions/purchases-0").0, claimed);
    // b's first publish goes through.
    let next = write(&mut b, 900).unwrap();
    let (text, name) = pointer(&server, "partitions/purchases-0");
    assert!(name.starts_with(&format!("snap-{next:06}-")), "{text}");
    let manifest = server.file(&format!("partitions/purchases-0/{name}/manifest.json"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    assert_eq!(
        manifest["counts"]["accepted"],
        state_of(900, 0).0.accepted(),
        "the pointer names b's state"
    );
}

/// A fenced writer's rejected lines never replace the owner's: they travel in pieces that
/// only the manifests their writer published list, and each byte is uploaded once.
#[test]
fn rejected_lines_travel_with_their_snapshot_once_and_a_fenced_writer_never_replaces_them() {
    let server = s3::Server::start("shop");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bucket = server.prefix("run");
    let mut a = store_of(
        a_dir.path(),
        Publisher::claim(bucket.clone(), 3).unwrap(),
        3,
    );
    let mut b = store_of(
        b_dir.path(),
        Publisher::claim(bucket.clone(), 3).unwrap(),
        3,
    );
    let header = "line,reason,original_line\n";
    let a_lines = format!("{header}7,malformed_row,\"a's line\"\n");
    std::fs::write(a_dir.path().join("rejected.csv"), &a_lines).unwrap();
    let (core, meta) = state_of(200, a_lines.len() as u64);
    assert!(matches!(
        a.write(&core, meta),
        Err(SnapshotError::Fenced { .. })
    ));
    let root = server.file("run");
    assert!(
        !s3::objects(&root).iter().any(|o| o == "rejected.csv"),
        "nothing of a's at the prefix's root"
    );
    // b's file grows over three snapshots.
    let mut b_lines = header.to_string();
    for i in 0..3 {
        b_lines.push_str(&format!("{i},negative_price,\"b's line {i}\"\n"));
        std::fs::write(b_dir.path().join("rejected.csv"), &b_lines).unwrap();
        let (core, meta) = state_of(300 + i, b_lines.len() as u64);
        b.write(&core, meta).unwrap();
        assert_eq!(
            String::from_utf8(rejected_of(&server, "run")).unwrap(),
            b_lines
        );
    }
    // Each byte of b's file was uploaded once; a's piece is listed by no manifest.
    let pieces: Vec<String> = s3::objects(&root)
        .into_iter()
        .filter(|o| o.starts_with("rejected/"))
        .collect();
    let size = |o: &String| std::fs::metadata(root.join(o)).unwrap().len();
    let b_writer = pointer(&server, "run").0.lines().nth(1).unwrap()[7..].to_string();
    let b_bytes: u64 = pieces
        .iter()
        .filter(|o| o.contains(&b_writer))
        .map(size)
        .sum();
    assert_eq!(b_bytes, b_lines.len() as u64, "{pieces:?}");
}

/// Pruning follows the pointers published, not ids: ids are taken before a publish, so
/// failed publishes leave gaps, and the previous pointer's folder must stay for a reader
/// that just followed it.
#[test]
fn pruning_keeps_the_previous_pointers_folder_across_failed_publishes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let server = s3::Server::start("shop");
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_of(
        dir.path(),
        Publisher::claim(server.prefix("gaps"), 2).unwrap(),
        2,
    );
    let first = write(&mut w, 100).unwrap();
    let (_, first_name) = pointer(&server, "gaps");
    // The next two publishes fail at their manifest (their tables are in the bucket).
    let refused = Arc::new(AtomicUsize::new(2));
    let left = refused.clone();
    server.faults.hook(move |r| {
        if r.is_put("/manifest.json") && left.load(Ordering::SeqCst) > 0 {
            left.fetch_sub(1, Ordering::SeqCst);
            return s3::Action::Fail(403);
        }
        s3::Action::Pass
    });
    assert!(write(&mut w, 200).is_err());
    assert!(write(&mut w, 300).is_err());
    assert_eq!(refused.load(Ordering::SeqCst), 0);
    let published = write(&mut w, 400).unwrap();
    assert_eq!(published, first + 3, "failed publishes left two ids unused");
    // The snapshot folders in the bucket, whole or not.
    let folders = |server: &s3::Server| {
        let mut v: Vec<String> = s3::objects(&server.file("gaps"))
            .into_iter()
            .filter(|o| o.starts_with("snap-"))
            .filter_map(|o| o.split('/').next().map(str::to_string))
            .collect();
        v.dedup();
        v
    };
    // The previous pointer's folder stays; the failed publishes' leftovers are gone.
    let (_, newest) = pointer(&server, "gaps");
    assert_eq!(folders(&server), [first_name, newest.clone()]);
    // One more: the oldest pointer's folder goes, the two newest stay.
    write(&mut w, 500).unwrap();
    let (_, last) = pointer(&server, "gaps");
    assert_eq!(folders(&server), [newest, last]);
}

/// A pointer put that landed is published, whatever came back: its answer lost and every
/// retry failed, or a prune after it refused.
#[test]
fn a_pointer_that_landed_is_published_whatever_its_answer() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let server = s3::Server::start("shop");
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_of(
        dir.path(),
        Publisher::claim(server.prefix("lost"), 2).unwrap(),
        2,
    );
    let puts = Arc::new(AtomicUsize::new(0));
    let seen = puts.clone();
    server.faults.hook(move |r| {
        if r.is_put("/LATEST") {
            // The first lands and its answer is lost; its retries find the store failing.
            return match seen.fetch_add(1, Ordering::SeqCst) {
                0 => s3::Action::FailAfter(500),
                _ => s3::Action::Fail(503),
            };
        }
        if r.is_delete() {
            return s3::Action::Fail(403);
        }
        s3::Action::Pass
    });
    let id = write(&mut w, 100).expect("published although no answer said so");
    assert!(puts.load(Ordering::SeqCst) >= 2, "the put was retried");
    let (text, name) = pointer(&server, "lost");
    assert!(name.starts_with(&format!("snap-{id:06}-")), "{text}");
    // Later publishes, whose prunes are refused, are published too.
    server.faults.hook(|r| match r.is_delete() {
        true => s3::Action::Fail(403),
        false => s3::Action::Pass,
    });
    for events in [200, 300, 400] {
        let id = write(&mut w, events).expect("a failed prune fails no publish");
        let (text, name) = pointer(&server, "lost");
        assert!(name.starts_with(&format!("snap-{id:06}-")), "{text}");
    }
    let kept = s3::objects(&server.file("lost"))
        .iter()
        .filter(|o| o.ends_with("/manifest.json"))
        .count();
    assert_eq!(
        kept,
        4,
        "nothing could be removed: {:?}",
        s3::objects(&server.file("lost"))
    );
    server.faults.clear_hook();
    write(&mut w, 500).unwrap();
    let kept = s3::objects(&server.file("lost"))
        .iter()
        .filter(|o| o.ends_with("/manifest.json"))
        .count();
    assert_eq!(kept, 2, "the next prune catches up");
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
        rejected_of(&server, "resumed") == local_rejected,
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
        let got = ok_with_env(
            &server,
            &["query", "--format", "csv", "--snapshot-dir", url, sql],
        );
        assert_eq!(got, common::query_csv(&local, sql), "{sql}");
    }
}

/// Large tables go up in parts streamed from the disk, not in one request held in memory.
#[test]
fn large_tables_are_uploaded_in_parts() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let server = s3::Server::start("shop");
    let dir = tempfile::tempdir().unwrap();
    // A snapshot written locally, its rfm table then made 21 MiB (past the 16 MiB part).
    let (core, meta) = state_of(300, 0);
    let manifest = SnapshotStore::open(dir.path(), 3)
        .unwrap()
        .write(&core, meta)
        .unwrap();
    let local = dir.path().join("snap-000001");
    let big: Vec<u8> = (0..21u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(local.join("rfm.parquet"), &big).unwrap();
    let parts = Arc::new(AtomicUsize::new(0));
    let seen = parts.clone();
    server.faults.hook(move |r| {
        if r.method == http::Method::PUT && r.query.contains("partNumber=") {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        s3::Action::Pass
    });
    let mut publisher = Publisher::claim(server.prefix("parts"), 3).unwrap();
    publisher
        .publish(&local, "snap-000001", &manifest, None)
        .unwrap();
    assert_eq!(parts.load(Ordering::SeqCst), 2, "16 MiB, then 5");
    let (_, name) = pointer(&server, "parts");
    let got = std::fs::read(server.file(&format!("parts/{name}/rfm.parquet"))).unwrap();
    assert!(got == big, "the object is the file, byte for byte");
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
    ok_with_env(
        &server,
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--max",
            "--no-progress",
            "--snapshot-dir",
            &url,
        ],
    );
    for sql in TABLES {
        let got = ok_with_env(
            &server,
            &["query", "--format", "csv", "--snapshot-dir", &url, sql],
        );
        assert_eq!(got, common::query_csv(&local, sql), "{sql}");
    }
}

/// A reader of a bucket falls back past a damaged partition snapshot to the newest older
/// one that is whole, as a reader of a folder does.
#[test]
fn a_reader_falls_back_past_a_damaged_partition_snapshot() {
    let server = s3::Server::start("shop");
    let dir = tempfile::tempdir().unwrap();
    let part = server.prefix("t/partitions/purchases-0");
    let mut store = store_of(dir.path(), Publisher::claim(part, 3).unwrap(), 3);
    let mut customers = Vec::new();
    for events in [400, 800] {
        let (core, meta) = state_of(events, 0);
        let meta = SnapshotMeta {
            input: InputPosition::Kafka {
                topic: "purchases".into(),
                partition: 0,
                partitions: 1,
                next_offset: events as i64,
                end_of_input: false,
                inputs: Default::default(),
            },
            ..meta
        };
        customers.push(store.write(&core, meta).unwrap().customers);
    }
    assert!(customers[0] < customers[1], "{customers:?}");
    let url = server.url("t");
    let count = |server: &s3::Server| {
        ok_with_env(
            server,
            &[
                "query",
                "--format",
                "csv",
                "--snapshot-dir",
                &url,
                "SELECT COUNT(*) AS n FROM rfm",
            ],
        )
    };
    assert_eq!(count(&server), format!("n\n{}\n", customers[1]));
    let (_, newest) = pointer(&server, "t/partitions/purchases-0");
    std::fs::write(
        server.file(&format!("t/partitions/purchases-0/{newest}/rfm.parquet")),
        b"damaged",
    )
    .unwrap();
    assert_eq!(count(&server), format!("n\n{}\n", customers[0]));
}
