//! The metrics endpoint of `run`, scraped over HTTP while a paced replay runs: the text
//! passes `promtool check metrics` (Debian's `prometheus` package; `.ci/run` installs it),
//! `/healthz` and `/readyz` answer, and the line counters equal the run's own summary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ok;
use common::prometheus::{get, promtool};

/// The value of the sample `name` (with its labels, if any) in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

fn promtool_check(text: &str) {
    let (ok, said) = promtool(&["check", "metrics"], text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}");
}

#[test]
fn run_serves_metrics_that_promtool_accepts_and_that_match_its_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input.csv");
    let input = input.to_str().unwrap();
    ok(&["generate", "--rows", "6000", "--seed", "41", "--out", input]);
    let snaps = tmp.path().join("snaps");
    let mut child = Command::new(env!("CARGO_BIN_EXE_storepulse"))
        .args([
            "run",
            "--no-progress",
            "--rate",
            "2000",
            "--snapshot-interval",
            "200ms",
        ])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--input",
            input,
            "--snapshot-dir",
        ])
        .arg(&snaps)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("storepulse run: metrics on http://")
        .and_then(|l| l.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
        .to_string();

    assert_eq!(get(&addr, "/healthz").0, 200);
    // Event-time order reads the whole file before the first event is due: once events
    // flow, the line counters are final.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (status, content_type, text) = get(&addr, "/metrics");
        assert_eq!(status, 200);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        if sample(&text, "storepulse_events_applied_total").unwrap_or(0.0) > 0.0
            && sample(&text, "storepulse_snapshots_total").unwrap_or(0.0) > 0.0
        {
            break text;
        }
        assert!(Instant::now() < deadline, "no events applied: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(get(&addr, "/readyz").0, 200);
    promtool_check(&text);

    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let summary = String::from_utf8(out.stdout).unwrap();
    let count = |label: &str| -> f64 {
        summary
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {label} in {summary}"))
    };
    assert_eq!(
        sample(&text, "storepulse_lines_read_total"),
        Some(count("lines"))
    );
    assert_eq!(
        sample(&text, "storepulse_lines_accepted_total"),
        Some(count("accepted"))
    );
    let mut rejected = 0.0;
    for reason in [
        "malformed_row",
        "event_time_out_of_range",
        "invalid_price",
        "missing_price",
    ] {
        let metric = format!("storepulse_lines_rejected_total{{reason=\"{reason}\"}}");
        let n = sample(&text, &metric).unwrap();
        let in_summary = summary
            .lines()
            .find_map(|l| l.trim().strip_prefix(reason))
            .map_or(0.0, |rest| rest.trim().parse().unwrap());
        assert_eq!(n, in_summary, "{reason}");
        rejected += n;
    }
    assert!(rejected > 0.0, "the generated file has rejects");
    assert_eq!(
        sample(&text, "storepulse_build_info{version=\"0.1.0\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "storepulse_replay_target_rate_events_per_second"),
        Some(2000.0)
    );
    assert!(sample(&text, "storepulse_process_resident_memory_bytes").unwrap() > 0.0);
}
