//! The Kafka path on a full-size generated file against a local tansu broker (memory
//! storage, loopback): `replay --max` publish rate; a bare rdkafka consumer reading the
//! whole topic and decoding each event (the transport's and the decoder's limit) against
//! `process` consuming it: messages/s, and CPU seconds per message (targets: at most 1.3x
//! the bare consumer's, at least 800k messages per CPU second); pacing error of
//! `--speed 86400` and `--rate 20000` over about 10 s; the longest snapshot pause of
//! `process`.
//!
//! `cargo bench --bench kafka`; `STOREPULSE_BENCH_ROWS` sets another size.

mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use storepulse::replay::wire::WireEvent;

const PARTITIONS: i32 = 4;
/// About ten days of the generated file's start (some 2,600 events a day), ten seconds at 86400x.
const SPEED_EVENTS: usize = 25_000;
/// Turns of the bare consumer and `process` over the same topic.
const ROUNDS: usize = 2;

fn storepulse(args: &[&str]) -> String {
    let out = std::process::Command::new(common::bin())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A figure of a `--summary json` object, e.g. `events_sent`.
fn figure(summary: &str, key: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(summary)
        .unwrap_or_else(|e| panic!("not a JSON summary ({e}): {summary}"));
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no `{key}` in {summary}"))
}

/// Reads every partition from the beginning with a plain assigned consumer until
/// `expected` messages arrived (tansu 0.6 under-reports high watermarks, so they cannot
/// tell the end).
fn bare_consumer(brokers: &str, topic: &str, expected: u64) -> f64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-bare")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut seen = 0u64;
    let mut bytes = 0usize;
    let t = Instant::now();
    // Timed from the first message to the last, as `process` reports its own rate.
    let mut first: Option<Instant> = None;
    while seen < expected {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "bare consumer stalled at {seen}"
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            first.get_or_insert_with(Instant::now);
            let payload = m.payload().unwrap_or_default();
            bytes += payload.len();
            // The transport's cost and the decoding every consumer pays, nothing more.
            if m.headers().is_none() {
                let _: WireEvent = serde_json::from_slice(payload).unwrap();
            }
            seen += 1;
        }
    }
    assert!(bytes > 0);
    first.unwrap().elapsed().as_secs_f64()
}

/// Arrival times (wall) and Kafka timestamps (event time, ms) of the first `expected`
/// data messages of a one-partition topic, read as they are published.
fn watch(brokers: &str, topic: &str, expected: usize) -> Vec<(Instant, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-watch")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut seen = Vec::with_capacity(expected);
    let t = Instant::now();
    while seen.len() < expected {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "watcher stalled at {}",
            seen.len()
        );
        if let Some(m) = c.poll(Duration::from_millis(20)) {
            let m = m.unwrap();
            if m.headers().is_some() {
                continue; // the end-of-input marker
            }
            seen.push((Instant::now(), m.timestamp().to_millis().unwrap()));
        }
    }
    seen
}

/// Replays `limit` events at a pace while a consumer times their arrival; returns
/// (events/s, event-time speed) as the consumer saw them, over first to last arrival.
fn paced(
    brokers: &str,
    input: &str,
    topic: &str,
    flag: &str,
    value: &str,
    limit: usize,
) -> (f64, f64) {
    let watcher = {
        let (b, t) = (brokers.to_string(), topic.to_string());
        std::thread::spawn(move || watch(&b, &t, limit))
    };
    let limit = limit.to_string();
    storepulse(&[
        "replay",
        "--input",
        input,
        "--brokers",
        brokers,
        flag,
        value,
        "--limit",
        &limit,
        "--no-progress",
        "--compression",
        "none",
        "--topic",
        topic,
    ]);
    let seen = watcher.join().unwrap();
    let (t0, e0) = seen[0];
    let (t1, e1) = seen[seen.len() - 1];
    let wall = t1.duration_since(t0).as_secs_f64();
    (
        (seen.len() - 1) as f64 / wall,
        (e1 - e0) as f64 / 1000.0 / wall,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let rows = common::rows();
    let path = common::data_file(rows);
    let input = path.to_str().unwrap();
    let broker = harness::kafka::Broker::start();
    broker.create_topic("purchases", PARTITIONS);
    println!("input: {input} ({rows} lines); tansu on {}", broker.addr);

    let summary = storepulse(&[
        "replay",
        "--input",
        input,
        "--brokers",
        &broker.addr,
        "--max",
        "--no-progress",
        "--compression",
        "none",
        "--summary",
        "json",
    ]);
    // Read, sorted by event time, published and every delivery acknowledged.
    let sent = figure(&summary, "events_sent");
    let rate = figure(&summary, "events_per_second");
    println!("replay --max:     {sent:>10.0} events published, {rate:>9.0} events/s end to end");

    // Every event, plus each partition's input announcement, watermarks and end of input.
    let n = sent as u64 + PARTITIONS as u64 * (2 + figure(&summary, "watermarks") as u64);
    // The two are paced by the broker, and their CPU for the same messages varies by
    // about 10% from run to run: measured in turns, ROUNDS times, each ratio said.
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let cpu = common::cpu_seconds(libc::RUSAGE_SELF);
        let secs = bare_consumer(&broker.addr, "purchases", n);
        let bare_cpu = common::cpu_seconds(libc::RUSAGE_SELF) - cpu;
        let bare = n as f64 / secs;
        println!(
            "bare consumer:    {n:>10} messages in {secs:>6.2} s, {bare:>9.0} messages/s; \
             {bare_cpu:.2} CPU s, {:.0} messages per CPU second (decoding each event)",
            n as f64 / bare_cpu
        );

        let snaps = tempfile::tempdir().unwrap();
        let cpu = common::cpu_seconds(libc::RUSAGE_CHILDREN);
        let out = storepulse(&[
            "process",
            "--brokers",
            &broker.addr,
            "--group",
            &format!("bench-process-{round}"),
            "--snapshot-dir",
            snaps.path().to_str().unwrap(),
            "--stop-at-end",
            "--kafka-option",
            "compression.type=none",
            "--summary",
            "json",
        ]);
        let process_cpu = common::cpu_seconds(libc::RUSAGE_CHILDREN) - cpu;
        let processed = figure(&out, "messages_per_second");
        let longest = figure(&out, "longest_snapshot_seconds");
        println!(
            "process:          {processed:>9.0} messages/s ({:.0}% of the bare consumer), longest snapshot pause {longest:.3} s; \
             {process_cpu:.2} CPU s, {:.0} messages per CPU second ({:.2}x the bare consumer's CPU per message)",
            100.0 * processed / bare,
            n as f64 / process_cpu,
            process_cpu / bare_cpu
        );
        ratios.push(process_cpu / bare_cpu);
    }
    let said: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
    println!(
        "process against the bare consumer, CPU per message: {} (target at most 1.3x)",
        said.join(", ")
    );

    // About 10 s of replay at either pace, timed by a consumer reading along.
    for (flag, value, target, topic, limit) in [
        ("--rate", "20000", 20000.0, "pacing-rate", 200_000),
        ("--speed", "86400", 86400.0, "pacing-speed", SPEED_EVENTS),
    ] {
        broker.create_topic(topic, 1);
        let (rate, speed) = paced(&broker.addr, input, topic, flag, value, limit);
        let achieved = if flag == "--rate" { rate } else { speed };
        println!(
            "replay {flag} {value}: {achieved:.0} as received ({:+.2}% off), {rate:.0} events/s",
            100.0 * (achieved - target) / target,
        );
    }
}
