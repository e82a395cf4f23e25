//! The metrics endpoint of `run`, scraped over HTTP while a paced replay runs: the text
//! passes `promtool check metrics` (Debian's `prometheus` package; `.ci/run` installs it),
//! `/healthz` and `/readyz` answer, and the line counters equal the run's own summary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ok;

/// A plain HTTP/1.1 GET; returns (status, content type, body).
fn get(addr: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(String::from)
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// The value of the sample `name` (with its labels, if any) in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// Installs Debian's `prometheus` package when `promtool` is missing, as `.ci/run` does.
fn ensure_promtool() {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return;
    }
    let status = Command::new("sh")
        .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus"])
        .status()
        .expect("apt-get");
    assert!(status.success(), "could not install prometheus (promtool)");
}

fn promtool_check(text: &str) {
    ensure_promtool();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
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
