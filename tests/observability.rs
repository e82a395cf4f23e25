//! The observability stack end to end: `run`, `replay` and `process` (against a real
//! broker) scraped by a real Prometheus with the project's own scrape config
//! (`deploy/prometheus/prometheus.yml`, targets moved to loopback ports). Every PromQL
//! expression of every panel of the Grafana dashboard must return data through the HTTP
//! API, and the counters Prometheus holds must equal what the commands report themselves.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::http::get;
use common::kafka::{serial, Broker};
use common::ok;
use common::prometheus::{dashboard_exprs, promtool, Prometheus};
use common::spawn::{free_port, Proc};
use common::wait::wait_until;

fn project(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The compose stack's scrape config with its targets moved to loopback ports.
fn scrape_config(run: u16, replay: u16, process: u16) -> String {
    let mut text = std::fs::read_to_string(project("deploy/prometheus/prometheus.yml")).unwrap();
    for (target, port) in [
        ("host.docker.internal:9464", run),
        ("replay:9465", replay),
        ("process:9466", process),
    ] {
        assert!(text.contains(target), "{target} is not scraped");
        text = text.replace(target, &format!("127.0.0.1:{port}"));
    }
    text
}

/// A count of a JSON summary (`--summary json`), as a metric sample compares.
fn summary_count(summary: &serde_json::Value, key: &str) -> f64 {
    common::count(summary, key) as f64
}

const READER_REASONS: [&str; 8] = [
    "malformed_row",
    "invalid_event_time",
    "event_time_out_of_range",
    "invalid_order_id",
    "invalid_product_id",
    "missing_price",
    "invalid_price",
    "invalid_user_id",
];

#[test]
fn the_scrape_config_passes_promtool() {
    let path = project("deploy/prometheus/prometheus.yml");
    let (ok, said) = promtool(&["check", "config", path.to_str().unwrap()], "");
    assert!(ok, "{said}");
    let substituted = scrape_config(1, 2, 3);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, substituted).unwrap();
    let (ok, said) = promtool(&["check", "config", file.to_str().unwrap()], "");
    assert!(ok, "{said}");
}

#[test]
fn every_grafana_panel_query_returns_data_from_a_real_prometheus() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input.csv");
    let input_s = input.to_str().unwrap();
    ok(&[
        "generate", "--rows", "20000", "--seed", "7", "--out", input_s,
    ]);
    let broker = Broker::start();
    broker.create_topic("purchases", 4);
    let (p_run, p_replay, p_process) = (free_port(), free_port(), free_port());
    let p_page = free_port();
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let snaps = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();

    let prometheus = Prometheus::start(&scrape_config(p_run, p_replay, p_process));
    let (process_dir, run_dir) = (snaps("process"), snaps("run"));
    let process = Proc::spawn(
        "process",
        &[
            "process",
            "--brokers",
            &broker.addr,
            "--snapshot-dir",
            &process_dir,
            "--snapshot-interval",
            "1s",
            "--metrics-addr",
            &addr(p_process),
            "--http-addr",
            &addr(p_page),
            // The page merges the partitions' newest snapshots rather than read a view
            // behind them.
            "--max-behind",
            "0s",
        ],
    );
    // Paced so that both outlive several scrapes (5 s apart), one by rate and one by
    // speed: about 50 s each (the file spans about 320 days of event time).
    let replay = Proc::spawn(
        "replay",
        &[
            "replay",
            "--brokers",
            &broker.addr,
            "--input",
            input_s,
            "--rate",
            "400",
            "--compression",
            "none",
            "--no-progress",
            "--summary",
            "json",
            "--metrics-addr",
            &addr(p_replay),
        ],
    );
    let run = Proc::spawn(
        "run",
        &[
            "run",
            "--input",
            input_s,
            "--speed",
            "550000",
            "--summary",
            "json",
            "--snapshot-interval",
            "1s",
            "--snapshot-dir",
            &run_dir,
            "--no-progress",
            "--metrics-addr",
            &addr(p_run),
        ],
    );

    wait_until(Duration::from_secs(120), "four scrapes of each job", || {
        let scrapes = prometheus.query("count_over_time(up{job=~\"storepulse-.*\"}[5m]) >= 4");
        let up = prometheus.query("up{job=~\"storepulse-.*\"} == 1");
        scrapes.len() == 3 && up.len() == 3
    });

    let exprs = dashboard_exprs(&project("deploy/grafana/dashboards/storepulse.json"));
    assert!(exprs.len() >= 30, "{} expressions", exprs.len());
    let empty: Vec<String> = exprs
        .iter()
        .filter(|(_, e)| prometheus.query(e).is_empty())
        .map(|(title, e)| format!("{title}: {e}"))
        .collect();
    assert!(empty.is_empty(), "no data for:\n{}", empty.join("\n"));

    // The data is the right data: each command's own series move.
    let rate = |metric: &str, job: &str| {
        prometheus
            .value(&format!(
                "sum(rate({metric}{{job=\"storepulse-{job}\"}}[1m]))"
            ))
            .unwrap_or(0.0)
    };
    assert!(rate("storepulse_events_applied_total", "run") > 0.0);
    assert!(rate("storepulse_events_published_total", "replay") > 0.0);
    assert!(rate("storepulse_events_applied_total", "process") > 0.0);
    let partitions =
        prometheus.query("storepulse_messages_consumed_total{job=\"storepulse-process\"}");
    assert_eq!(partitions.len(), 4, "{partitions:?}");
    let lag = prometheus.query("storepulse_consumer_lag_messages{job=\"storepulse-process\"}");
    assert_eq!(lag.len(), 4, "{lag:?}");
    let target = |what: &str, job: &str| {
        let e = format!("storepulse_replay_target_{what}{{job=\"storepulse-{job}\"}}");
        prometheus.value(&e)
    };
    assert_eq!(target("rate_events_per_second", "replay"), Some(400.0));
    assert_eq!(target("speed_ratio", "run"), Some(550000.0));
    assert_eq!(target("speed_ratio", "replay"), Some(0.0));
    let segments = prometheus.query("storepulse_segment_customers{job=\"storepulse-process\"} > 0");
    assert!(segments.len() >= 5, "{segments:?}");

    // Counters against the commands' own summaries. Event-time order reads the whole
    // file before the first event is due, so the line counters are final from then on.
    let run_summary = common::summary(&run.wait_ok(Duration::from_secs(180)));
    let replay_summary = common::summary(&replay.wait_ok(Duration::from_secs(180)));
    let last = |metric: &str, job: &str, labels: &str| {
        prometheus
            .value(&format!(
                "sum(last_over_time({metric}{{job=\"storepulse-{job}\"{labels}}}[10m]))"
            ))
            .unwrap_or_else(|| panic!("no {metric} for {job}"))
    };
    for (job, summary) in [("run", &run_summary), ("replay", &replay_summary)] {
        assert_eq!(
            last("storepulse_lines_read_total", job, ""),
            summary_count(summary, "records"),
            "{job}"
        );
        assert_eq!(
            last("storepulse_lines_accepted_total", job, ""),
            summary_count(summary, "accepted"),
            "{job}"
        );
        let mut rejected = 0.0;
        for reason in READER_REASONS {
            let n = last(
                "storepulse_lines_rejected_total",
                job,
                &format!(",reason=\"{reason}\""),
            );
            let in_summary = summary["counts"]["rejected_by_reason"][reason].as_u64();
            assert_eq!(Some(n), in_summary.map(|c| c as f64), "{job} {reason}");
            rejected += n;
        }
        assert_eq!(rejected, summary_count(summary, "rejected"), "{job}");
        assert!(rejected > 0.0, "the generated file has rejects");
    }
    // What the replayer sent, the processor applied: every event, plus its control
    // messages, each to every partition: the input, every watermark and the end of input.
    let sent = replay_summary["events_sent"].as_u64().unwrap() as f64;
    assert!(sent > 19_000.0, "{replay_summary}");
    let watermarks = replay_summary["watermarks"].as_u64().unwrap() as f64;
    assert!(watermarks >= 1.0, "{replay_summary}");
    wait_until(Duration::from_secs(60), "the processor's counters", || {
        let q = |e: &str| prometheus.value(e).unwrap_or(0.0);
        q("sum(storepulse_events_applied_total{job=\"storepulse-process\"})") == sent
            && q("sum(storepulse_messages_consumed_total{job=\"storepulse-process\"})")
                == sent + 4.0 * (2.0 + watermarks)
    });
    assert_eq!(
        prometheus.value("sum(storepulse_duplicate_messages_total{job=\"storepulse-process\"})"),
        Some(0.0)
    );
    // The processor's store page answers from its partitions merged: the same customers
    // per segment as `query` over the same snapshots.
    let page = addr(p_page);
    let segments = |dir: &str| -> BTreeMap<String, u64> {
        let sql = "SELECT segment, COUNT(*) AS n FROM rfm GROUP BY segment";
        let args = ["query", "--snapshot-dir", dir, "--format", "csv"];
        let csv = common::ok(&[&args[..], &["--max-behind", "0s", sql]].concat());
        csv.lines()
            .skip(1)
            .map(|l| {
                let (s, n) = l.rsplit_once(',').unwrap();
                (s.to_string(), n.parse().unwrap())
            })
            .collect()
    };
    let mut body = String::new();
    wait_until(
        Duration::from_secs(60),
        "the page on the final snapshots",
        || {
            let (status, _, text) = get(&page, "/api/overview");
            body = text;
            status == 200
                && serde_json::from_str::<serde_json::Value>(&body).unwrap()["snapshot"]["accepted"]
                    == sent as u64
        },
    );
    let overview: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(overview["snapshot"]["parts"], 4, "{}", overview["snapshot"]);
    let shown: BTreeMap<String, u64> = overview["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            // Counts are 64-bit: strings, like every 64-bit number the page gets.
            (
                s["segment"].as_str().unwrap().to_string(),
                s["customers"].as_str().unwrap().parse::<u64>().unwrap(),
            )
        })
        .filter(|(_, n)| *n != 0)
        .collect();
    assert_eq!(shown, segments(&process_dir));
    assert_eq!(
        shown,
        segments(&run_dir),
        "the merged partitions equal the run"
    );
    process.terminate(Duration::from_secs(60));
}
