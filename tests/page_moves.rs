//! The page while newer snapshots land. Over a bucket it keeps showing the snapshot it
//! has, answered from its cache, until the newer one's overview is ready, then moves on
//! (the bucket is a real S3-protocol server linked into this test, whose request hook holds
//! the reads of the newer snapshot's tables). Over a folder, a request that finds the shown
//! snapshot pruned moves the page on by itself, and an overview that was slow meanwhile
//! never puts the older snapshot back (the page's worker is stopped to hold it).

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::get;
use common::procfs::workers;
use common::wait::{wait_until, wait_until_ok};

const LIMIT: Duration = Duration::from_secs(60);

fn run_into(server: &s3::Server, input: &std::path::Path, url: &str) {
    let input = input.to_str().unwrap();
    server.ok(&[
        "run",
        "--input",
        input,
        "--max",
        "--no-progress",
        "--snapshot-dir",
        url,
    ]);
}

/// `/api/snapshot`'s version and `/api/overview`'s body, once both answer 200.
fn shown(addr: &str) -> (String, String) {
    wait_until_ok(LIMIT, "the page's snapshot and overview", || {
        let (status, _, info) = get(addr, "/api/snapshot");
        if status != 200 {
            return Err(format!("{status} {info}"));
        }
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        let (status, _, overview) = get(addr, "/api/overview");
        match status {
            200 => Ok((info["version"].as_str().unwrap().to_string(), overview)),
            _ => Err(format!("{status} {overview}")),
        }
    })
}

#[test]
fn the_page_shows_its_snapshot_from_the_cache_until_the_next_ones_overview_is_ready() {
    let server = s3::Server::start("shop");
    let tmp = tempfile::tempdir().unwrap();
    let first = common::generate(tmp.path(), 4_000, 51);
    let second_dir = tmp.path().join("second");
    std::fs::create_dir_all(&second_dir).unwrap();
    let second = common::generate(&second_dir, 6_000, 52);
    let url = server.url("page");
    run_into(&server, &first, &url);

    let addr = common::spawn::free_addr();
    let mut cmd = server.command(&["serve", "--snapshot-dir", &url, "--http-addr", &addr]);
    let mut page = common::spawn::Proc::start("serve", &mut cmd);
    page.wait_listening(&addr, LIMIT);
    let (v1, overview1) = shown(&addr);
    assert!(v1.starts_with("snap-000001-"), "{v1}");

    // Reads of any other snapshot's tables wait at the gate.
    let gate = s3::gate();
    let held = Arc::new(AtomicBool::new(false));
    {
        let (gate, held, v1) = (gate.clone(), held.clone(), v1.clone());
        server.faults.hook(move |r| {
            let table = r.method == http::Method::GET && r.key.ends_with(".parquet");
            if table && !r.key.contains(&v1) {
                held.store(true, Ordering::SeqCst);
                s3::Action::Hold(gate.clone())
            } else {
                s3::Action::Pass
            }
        });
    }
    run_into(&server, &second, &url);
    wait_until(
        LIMIT,
        "the page to read the newer snapshot's tables",
        || held.load(Ordering::SeqCst),
    );

    // Meanwhile: the snapshot shown and its overview, from the cache, promptly.
    let until = Instant::now() + Duration::from_secs(2);
    let mut probes = 0;
    while Instant::now() < until {
        let asked = Instant::now();
        let (status, _, info) = get(&addr, "/api/snapshot");
        assert_eq!(status, 200, "{info}");
        assert!(info.contains(&v1), "{info}");
        let (status, _, overview) = get(&addr, "/api/overview");
        assert_eq!(status, 200, "{overview}");
        assert_eq!(overview, overview1);
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
        probes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(probes >= 5, "{probes}");

    // The reads go through: the page moves on to the newer snapshot and its numbers.
    server.faults.clear_hook();
    gate.add_permits(1 << 20);
    let (v2, overview2) = wait_until_ok(LIMIT, "the page to show the newer snapshot", || {
        let (v, o) = shown(&addr);
        if v == v1 {
            Err(v)
        } else {
            Ok((v, o))
        }
    });
    assert!(v2.starts_with("snap-000002-"), "{v2}");
    assert_ne!(overview2, overview1);
    // Each overview is its snapshot's.
    let of = |overview: &str| {
        let v: serde_json::Value = serde_json::from_str(overview).unwrap();
        v["snapshot"]["version"].as_str().unwrap().to_string()
    };
    assert_eq!(of(&overview1), v1);
    assert_eq!(of(&overview2), v2);
}

/// The newest snapshot's folder name in `dir`.
fn latest(dir: &std::path::Path) -> String {
    let latest = std::fs::read_to_string(dir.join("LATEST")).unwrap();
    latest.trim().to_string()
}

/// `/api/snapshot`'s version, answered 200.
fn version(addr: &str) -> String {
    let (status, _, info) = get(addr, "/api/snapshot");
    assert_eq!(status, 200, "{info}");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    info["version"].as_str().unwrap().to_string()
}

#[test]
fn a_slow_overview_never_puts_an_older_snapshot_back_over_the_one_a_request_moved_to() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snaps");
    let inputs: Vec<_> = (0..3)
        .map(|i| {
            let at = tmp.path().join(format!("input-{i}"));
            std::fs::create_dir_all(&at).unwrap();
            common::generate(&at, 2_000 + 1_000 * i, 61 + i)
        })
        .collect();
    common::run(&inputs[0], &dir, &["--max"]);
    let a = latest(&dir);
    let addr = common::spawn::free_addr();
    let page = common::serve(&dir, &addr, LIMIT);
    let (shown_a, _) = shown(&addr);
    assert_eq!(shown_a, a);

    // The page's worker stops: the overview of the next snapshot cannot be computed, and
    // the page goes on showing `a` while it waits for it.
    let worker = workers(page.child.id(), "page");
    assert_eq!(worker.len(), 1);
    // SAFETY: signalling a process this test started (a child of `serve`), by its id.
    unsafe { libc::kill(worker[0] as i32, libc::SIGSTOP) };
    common::run(&inputs[1], &dir, &["--max"]);
    let b = latest(&dir);
    // The page reads pointers every half second: let it find `b` and start on its overview.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(version(&addr), a);

    // A third snapshot lands and `a` is pruned: the next request moves the page to `c`.
    common::run(&inputs[2], &dir, &["--max"]);
    let c = latest(&dir);
    assert!(a < b && b < c, "{a} {b} {c}");
    std::fs::remove_dir_all(dir.join(&a)).unwrap();
    assert_eq!(version(&addr), c);

    // The worker resumes and finishes the overview it was asked for `b`: the page stays on
    // `c` (before, it put `b` back for at least half a second and dropped `c`'s overviews).
    // SAFETY: as above.
    unsafe { libc::kill(worker[0] as i32, libc::SIGCONT) };
    let until = Instant::now() + Duration::from_secs(3);
    let mut probes = 0;
    while Instant::now() < until {
        assert_eq!(version(&addr), c, "after {probes} probes");
        probes += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(probes >= 20, "{probes}");
    let (shown_c, overview) = shown(&addr);
    assert_eq!(shown_c, c);
    let overview: serde_json::Value = serde_json::from_str(&overview).unwrap();
    assert_eq!(overview["snapshot"]["version"], c.as_str());
    // Stopped, it says what it does (it writes no snapshot).
    page.signal(libc::SIGTERM);
    page.wait_stderr("stopping: closing the page", LIMIT);
}
