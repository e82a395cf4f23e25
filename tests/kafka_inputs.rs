//! What `replay` puts on the topic, checked from outside with a plain consumer against a
//! real broker (tansu on loopback): the schema and the keys of the messages, a rejected
//! line too long for a message, and the pace of `--rate` and `--speed` as a consumer
//! reading along sees it.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::kafka::{serial, Broker, Msg};
use common::kafka_cases::{generate, replay};
use common::wait::Deadline;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn events(messages: &[Msg]) -> Vec<(&Msg, serde_json::Value)> {
    messages
        .iter()
        .filter(|m| m.control.is_none())
        .map(|m| (m, serde_json::from_slice(&m.value).unwrap()))
        .collect()
}

#[test]
fn published_messages_follow_the_schema_and_are_keyed_by_order() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let input = generate(tmp.path(), 2_000, 3);
    let broker = Broker::start();
    broker.create_topic("purchases", 2);
    let summary = replay(&broker, &input, &["--limit", "500"]);
    assert_eq!(summary["events_sent"], 500, "{summary}");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/purchase_event.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let messages = broker.read_messages("purchases");
    // Every message that is not a control message is an event of the schema.
    let events = events(&messages);
    assert_eq!(events.len(), 500);
    let mut ids = HashSet::new();
    let mut partition_of: HashMap<String, HashSet<i32>> = HashMap::new();
    for (m, e) in &events {
        let errors: Vec<String> = validator.iter_errors(e).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{e}: {errors:?}");
        assert!(ids.insert(e["event_id"].as_str().unwrap().to_string()));
        // The key is the order id, as its decimal string.
        let order = e["order_id"].as_str().unwrap();
        assert_eq!(m.key.as_deref(), Some(order.as_bytes()), "{e}");
        partition_of
            .entry(order.to_string())
            .or_default()
            .insert(m.partition);
    }
    // Every order in one partition, and both partitions used.
    for (order, parts) in &partition_of {
        assert_eq!(parts.len(), 1, "order {order} in partitions {parts:?}");
    }
    let used: HashSet<i32> = events.iter().map(|(m, _)| m.partition).collect();
    assert_eq!(used.len(), 2);
    let multi_line = partition_of
        .keys()
        .filter(|o| events.iter().filter(|(_, e)| e["order_id"] == **o).count() > 1)
        .count();
    assert!(
        multi_line >= 20,
        "only {multi_line} orders of several lines"
    );
    // A broken event fails the schema.
    let mut bad = events[0].1.clone();
    bad["price"] = "12.5".into();
    assert!(!validator.is_valid(&bad));
}

#[test]
fn a_rejected_line_longer_than_a_message_is_dead_lettered_cut_and_the_replay_goes_on() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let generated = generate(tmp.path(), 2_000, 4);
    // (The generator writes some invalid UTF-8, as the real log has.)
    let bytes = std::fs::read(&generated).unwrap();
    // Line 1,001 (after the header and 999 lines): a 3 MB line with too few fields, its
    // start multi-byte so that the cut must find a character boundary.
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let mut long = String::from("2020-04-24 11:50:39 UTC,");
    while long.len() < 3_000_000 {
        long.push_str("é€x");
    }
    lines.insert(1_000, long.as_bytes());
    let input = tmp.path().join("with-long-line.csv");
    std::fs::write(&input, lines.join(&b'\n')).unwrap();

    let broker = Broker::start();
    broker.create_topic("purchases", 2);
    let summary = replay(&broker, &input, &[]);
    let accepted = common::count(&summary, "accepted");
    assert_eq!(summary["events_sent"], accepted, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(
        events(&broker.read_messages("purchases")).len() as u64,
        accepted
    );
    let dead: Vec<serde_json::Value> = broker
        .read_all("purchases.rejected")
        .iter()
        .map(|v| serde_json::from_slice(v).unwrap())
        .collect();
    let d = dead
        .iter()
        .find(|d| d["line"] == 1_001)
        .unwrap_or_else(|| panic!("no dead letter of line 1001 in {dead:?}"));
    assert_eq!(d["stage"], "replay");
    let original = d["original"].as_str().unwrap();
    assert!(
        (65_533..=65_536).contains(&original.len()),
        "{} bytes",
        original.len()
    );
    assert!(long.starts_with(original));
    assert_eq!(d["original_bytes"], long.len() as u64);
    assert_eq!(d["truncated"], true);
    // The other dead letters say nothing of the kind.
    assert!(dead
        .iter()
        .filter(|d| d["line"] != 1_001)
        .all(|d| d.get("truncated").is_none() && d.get("original_bytes").is_none()));
}

/// Arrival times of a one-partition topic's events at a plain consumer reading along, with
/// each event's time (the message timestamp, ms). Ready (`ready` sent) once its fetches
/// reach the broker; stops at `expected` events.
fn watch(
    brokers: String,
    topic: String,
    expected: usize,
    ready: mpsc::Sender<()>,
) -> Vec<(Instant, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "pace-watch")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    c.fetch_watermarks(&topic, 0, Duration::from_secs(10))
        .unwrap();
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        // Nothing is published yet; an error here is the topic still being set up.
        if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
            panic!("a message before the replay: {:?}", Msg::of(&m));
        }
    }
    ready.send(()).unwrap();
    let mut seen = Vec::with_capacity(expected);
    // The consumer's poll is the wait: a sleep here would delay the arrivals measured.
    let deadline = Deadline::after(Duration::from_secs(120));
    while seen.len() < expected {
        deadline.check(format_args!(
            "{expected} events (the watcher has {})",
            seen.len()
        ));
        if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
            let m = Msg::of(&m);
            if m.control.is_none() {
                seen.push((Instant::now(), m.timestamp_ms.unwrap()));
            }
        }
    }
    seen
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(sxy, sxx), (x, y)| {
        (sxy + (x - mx) * (y - my), sxx + (x - mx) * (x - mx))
    });
    sxy / sxx
}

/// Replays `limit` events of `input` to a topic of its own at a pace while a consumer
/// reads along; the arrivals between the first and the last `skip` (start-up and the
/// last batch) as (seconds since the first of them, event time in seconds), in order.
fn arrivals(
    broker: &Broker,
    input: &Path,
    topic: &str,
    pace: &[&str],
    limit: usize,
    skip: usize,
) -> Vec<(f64, f64)> {
    broker.create_topic(topic, 1);
    let (tx, rx) = mpsc::channel();
    let watcher = {
        let (b, t) = (broker.addr.clone(), topic.to_string());
        std::thread::spawn(move || watch(b, t, limit, tx))
    };
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the watcher is ready");
    let limit_flag = limit.to_string();
    let mut extra = vec!["--topic", topic, "--limit", &limit_flag];
    extra.extend_from_slice(pace);
    let summary = replay(broker, input, &extra);
    assert_eq!(summary["events_sent"], limit as u64, "{summary}");
    let seen = watcher.join().unwrap();
    let middle = &seen[skip..seen.len() - skip];
    let t0 = middle[0].0;
    middle
        .iter()
        .map(|(at, ms)| (at.duration_since(t0).as_secs_f64(), *ms as f64 / 1000.0))
        .collect()
}

/// Within 10% of the asked pace, as a consumer reading along sees it: events a second
/// for `--rate` (arrivals over their rank), event time per wall time for `--speed`
/// (arrival time over event time), both as least-squares slopes over the middle of a
/// stream of a few seconds, without the first and last few hundred events.
#[test]
fn rate_and_speed_hold_within_ten_percent_as_a_consumer_sees_them() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let input = generate(tmp.path(), 20_000, 26);
    let broker = Broker::start();

    let rate = 2_000.0;
    let got = arrivals(
        &broker,
        &input,
        "pace-rate",
        &["--rate", "2000"],
        7_000,
        500,
    );
    let by_rank: Vec<(f64, f64)> = got
        .iter()
        .enumerate()
        .map(|(i, (t, _))| (i as f64, *t))
        .collect();
    let achieved = 1.0 / slope(&by_rank);
    let span = got.last().unwrap().0;
    assert!(span > 2.0, "measured over {span:.2} s only");
    assert!(
        (achieved / rate - 1.0).abs() < 0.10,
        "--rate 2000: {achieved:.0} events/s over {span:.2} s"
    );

    let speed = 2_000_000.0;
    let got = arrivals(
        &broker,
        &input,
        "pace-speed",
        &["--speed", "2000000"],
        3_000,
        500,
    );
    let by_time: Vec<(f64, f64)> = got.iter().map(|(t, e)| (*e, *t)).collect();
    let achieved = 1.0 / slope(&by_time);
    let span = got.last().unwrap().0;
    assert!(span > 2.0, "measured over {span:.2} s only");
    assert!(
        (achieved / speed - 1.0).abs() < 0.10,
        "--speed 2000000: {achieved:.0}x over {span:.2} s"
    );
}
