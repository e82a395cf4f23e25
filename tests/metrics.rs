//! The metrics endpoint of `run`, scraped over HTTP while a paced replay runs: the text
//! passes `promtool check metrics` (Debian's `prometheus` package; `.ci/run` installs it),
//! `/healthz` and `/readyz` answer, and the line counters equal the run's own summary.

mod common;

use std::process::Command;
use std::time::Duration;

use common::http::{get, header};
use common::prometheus::promtool;
use common::spawn::Proc;
use common::wait::{wait_until, wait_until_ok};

const LIMIT: Duration = Duration::from_secs(60);

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
    let input = common::generate(tmp.path(), 6000, 41);
    let child = common::spawn_run(
        &input,
        &tmp.path().join("snaps"),
        &[
            "--rate",
            "2000",
            "--snapshot-interval",
            "200ms",
            "--summary",
            "json",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let addr = child.metrics_addr(LIMIT);

    assert_eq!(get(&addr, "/healthz").0, 200);
    // Event-time order reads the whole file before the first event is due: once events
    // flow, the line counters are final.
    let text = wait_until_ok(LIMIT, "events applied and a snapshot", || {
        let (status, head, text) = get(&addr, "/metrics");
        assert_eq!(status, 200);
        assert_eq!(
            header(&head, "content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        if sample(&text, "storepulse_events_applied_total").unwrap_or(0.0) > 0.0
            && sample(&text, "storepulse_snapshots_total").unwrap_or(0.0) > 0.0
        {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert_eq!(get(&addr, "/readyz").0, 200);
    promtool_check(&text);

    let summary = common::summary(&child.wait_ok(LIMIT));
    let count = |key: &str| common::count(&summary, key) as f64;
    assert_eq!(
        sample(&text, "storepulse_lines_read_total"),
        Some(count("records"))
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
        let in_summary = summary["counts"]["rejected_by_reason"][reason].as_u64();
        assert_eq!(Some(n), in_summary.map(|c| c as f64), "{reason}");
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
    // Process metrics under their standard names, for stock dashboards.
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(!text.contains("storepulse_process_"));
}

#[test]
fn a_resumed_run_counts_from_zero_and_reports_what_it_restored_as_gauges() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 6000, 43);
    let snaps = tmp.path().join("snaps");
    let run = |rate: &str, extra: &[&str]| {
        let mut args = vec![
            "--rate",
            rate,
            "--snapshot-interval",
            "100ms",
            "--summary",
            "json",
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        common::spawn_run(&input, &snaps, &args)
    };
    // Stopped about a sixth in: 10 s of input still ahead at 500 lines/s. A loaded machine
    // can hold a snapshot back for seconds (a slow fsync), and the feed then catches up in
    // one batch: with 4 s ahead (1000 lines/s, a third in), a CI run read the whole file
    // before the stop.
    let first = run("500", &[]);
    common::wait_for_manifest(&snaps, LIMIT, |m| {
        m["counts"]["accepted"].as_u64().unwrap_or(0) >= 1000
    });
    first.terminate(LIMIT);
    let stopped = common::manifest(&snaps);
    let restored_lines = stopped["counts"]["records"].as_f64().unwrap();
    let pending = stopped["counts"]["pending"].as_u64().unwrap_or(0);
    assert!(pending > 0, "the first run was stopped too late: {stopped}");
    let cents = |sql: &str| -> f64 {
        let csv = common::query_csv(&snaps, sql);
        let v: f64 = csv.lines().nth(1).unwrap().parse().unwrap();
        (v * 100.0).round()
    };
    let restored_revenue = cents("SELECT SUM(revenue) AS r FROM daily_sales");
    assert!(restored_revenue > 0.0);

    let resumed = run("1500", &["--resume"]);
    let addr = resumed.metrics_addr(LIMIT);
    let text = wait_until_ok(LIMIT, "events applied", || {
        let (_, _, text) = get(&addr, "/metrics");
        if sample(&text, "storepulse_events_applied_total").unwrap_or(0.0) > 0.0 {
            Ok(text)
        } else {
            Err(text)
        }
    });
    promtool_check(&text);
    assert_eq!(
        sample(&text, "storepulse_resumed_lines_read"),
        Some(restored_lines)
    );
    assert_eq!(
        sample(&text, "storepulse_resumed_revenue_cents"),
        Some(restored_revenue)
    );
    let out = resumed.wait_ok(LIMIT);
    let total_revenue = cents("SELECT SUM(revenue) AS r FROM daily_sales");
    let summary = common::summary(&out);
    let lines = common::count(&summary, "records") as f64;
    let read_here = summary["records_read_this_run"].as_u64().unwrap() as f64;
    // The counters hold only what this process did: the rest of the file.
    assert_eq!(read_here, lines - restored_lines, "{summary}");
    assert_eq!(
        sample(&text, "storepulse_lines_read_total"),
        Some(read_here)
    );
    let revenue = sample(&text, "storepulse_revenue_cents_total").unwrap();
    assert!(
        revenue <= total_revenue - restored_revenue,
        "the revenue counter ({revenue}) started above 0 (restored {restored_revenue}, total {total_revenue})"
    );
}

#[test]
fn out_of_file_descriptors_the_metrics_endpoint_waits_and_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 6000, 47);
    let snaps = tmp.path().join("snaps");
    // A few descriptors beyond what the run itself needs: connections use up the rest.
    let child = Proc::start(
        "run",
        Command::new("sh").arg("-c").arg(format!(
            "ulimit -n 40 && exec {} run --no-progress --rate 1000 --metrics-addr 127.0.0.1:0 \
             --input {} --snapshot-dir {}",
            env!("CARGO_BIN_EXE_storepulse"),
            input.display(),
            snaps.display()
        )),
    );
    let addr = child.metrics_addr(LIMIT);
    assert_eq!(get(&addr, "/healthz").0, 200);
    // The endpoint is up before the input is open: wait until lines are read, or the
    // connections below may take the descriptor the input needs.
    wait_until(Duration::from_secs(20), "the run to read a line", || {
        sample(&get(&addr, "/metrics").2, "storepulse_lines_read_total").unwrap_or(0.0) > 0.0
    });
    let held: Vec<_> = (0..80)
        .filter_map(|_| common::http::connect(&addr).ok())
        .collect();
    // The server accepts until it has no descriptor left, then waits; it must still be
    // there once they are given back.
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    wait_until(
        Duration::from_secs(20),
        "the metrics endpoint to come back",
        || common::http::connect(&addr).is_ok() && get(&addr, "/metrics").0 == 200,
    );
    child.terminate(LIMIT);
}
