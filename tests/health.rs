//! `/healthz` end to end: a pipeline that stops making progress while its input waits
//! fails it after `--stall-timeout`, and one that is only slow does not. The stall is
//! made by a real S3-protocol server (linked into this test) that holds a snapshot's
//! upload: the stream goes on beside a periodic snapshot that hangs, and stops at the
//! end, where `run` waits for its snapshots before the last one.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::http::get;
use common::spawn::Proc;
use common::wait::wait_until;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn a_snapshot_upload_that_hangs_fails_healthz_only_once_the_pipeline_waits_for_it() {
    let server = s3::Server::start("shop");
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 20_000, 41);
    let local = tmp.path().join("local");
    common::run(&input, &local, &["--max"]);

    // The first table uploaded is held until the gate opens; everything else passes.
    let gate = s3::gate();
    let held = Arc::new(AtomicBool::new(false));
    {
        let (gate, held) = (gate.clone(), held.clone());
        server.faults.hook(move |r| {
            if r.is_put(".parquet") && !held.swap(true, Ordering::SeqCst) {
                s3::Action::Hold(gate.clone())
            } else {
                s3::Action::Pass
            }
        });
    }
    let url = server.url("stall");
    let args = [
        "run",
        "--input",
        input.to_str().unwrap(),
        // About 5 s of stream, so it goes on well after the first snapshot is held.
        "--rate",
        "4000",
        "--snapshot-interval",
        "100ms",
        "--stall-timeout",
        "1s",
        "--metrics-addr",
        "127.0.0.1:0",
        "--snapshot-dir",
        &url,
        "--no-progress",
        "--summary",
        "json",
    ];
    let run = Proc::start("run", &mut server.command(&args));
    let metrics = run.metrics_addr(LIMIT);
    wait_until(LIMIT, "the first snapshot's upload to be held", || {
        held.load(Ordering::SeqCst)
    });

    // The stream goes on beside the hung snapshot: healthy, and applying events.
    let applied = || {
        let (_, _, body) = get(&metrics, "/metrics");
        body.lines()
            .find(|l| l.starts_with("storepulse_events_applied_total "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let first = applied();
    let (status, _, body) = get(&metrics, "/healthz");
    assert_eq!(status, 200, "{body}");
    wait_until(LIMIT, "events applied beside the held snapshot", || {
        applied() > first
    });
    assert_eq!(get(&metrics, "/healthz").0, 200);

    // At the end `run` waits for that snapshot: no progress while its input is not done.
    let mut seen = String::new();
    wait_until(LIMIT, "/healthz to report the stall", || {
        let (status, _, body) = get(&metrics, "/healthz");
        seen = body;
        status == 503
    });
    assert!(
        seen.contains("stalled: no progress for") && seen.contains("--stall-timeout 1.0s"),
        "{seen}"
    );
    let (status, _, why) = get(&metrics, "/readyz");
    assert_eq!(status, 503, "a stalled pipeline is not ready: {why}");

    // The upload goes through: the run ends, exact.
    s3::open(&gate);
    let out = run.wait_ok(LIMIT);
    let summary = common::summary(&out);
    assert_eq!(summary["state"], "complete", "{summary}");
    for sql in common::TABLE_QUERIES {
        let got = server.ok(&["query", "--format", "csv", "--snapshot-dir", &url, sql]);
        assert_eq!(got, common::query_csv(&local, sql), "{sql}");
    }
}

#[test]
fn a_run_paced_slower_than_its_stall_timeout_stays_healthy() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 100, 42);
    let dir = tmp.path().join("snaps");
    // One event every 5 s against a 2.5 s stall timeout: the pipeline's loop reports
    // progress every second while it waits for the next event.
    let run = common::spawn_run(
        &input,
        &dir,
        &[
            "--rate",
            "0.2",
            "--stall-timeout",
            "2500ms",
            "--metrics-addr",
            "127.0.0.1:0",
            "--summary",
            "json",
        ],
    );
    let metrics = run.metrics_addr(LIMIT);
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let mut probes = 0;
    while std::time::Instant::now() < deadline {
        let (status, _, body) = get(&metrics, "/healthz");
        assert_eq!(status, 200, "probe {probes}: {body}");
        probes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(probes >= 20, "{probes} probes");
    let out = run.terminate(LIMIT);
    let summary = common::summary(&out);
    assert_eq!(summary["state"], "stopped_early", "{summary}");
}
