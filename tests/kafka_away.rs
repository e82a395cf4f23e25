//! The Kafka path while what it talks to is away, against a real broker (tansu on
//! loopback): a dead-letter topic that cannot be written, a broker that starts late, is
//! paused past the session timeout or is away at SIGTERM, and readiness while it is away.
//! In every case nothing is lost: the tables equal the embedded `run` on the same file.

mod common;

use std::time::{Duration, Instant};

use common::kafka::{partition_manifests, serial, total, wait_for, Broker};
use common::kafka_cases::{
    accepted_in, assert_same_tables, generate, paced_replay, process_args, replay, Case, LIMIT,
};
use common::spawn::{free_addr, Proc};
use common::wait::wait_until;

#[test]
fn a_dead_letter_that_cannot_be_written_holds_its_partition_snapshot_back() {
    let _serial = serial();
    let c = Case::generated(2_000, 42, 2);
    let accepted = accepted_in(&replay(&c.broker, &c.input, &[]));
    // The processor's producer refuses messages over 2,000 bytes: a dead letter of a
    // bigger message cannot be written.
    let small = [
        "--snapshot-interval",
        "100ms",
        "--kafka-option",
        "message.max.bytes=2000",
    ];
    let proc = Proc::spawn("process", &process_args(&c.broker, &c.got, &small));
    wait_for(&c.got, LIMIT, "every event applied", |m| {
        m.len() == 2 && total(m, "accepted") == accepted
    });
    let records = |p: i64| {
        let m = partition_manifests(&c.got);
        let part = m.iter().find(|x| x["input"]["partition"] == p).cloned();
        part.map_or(0, |x| x["counts"]["records"].as_u64().unwrap())
    };
    let (before0, before1) = (records(0), records(1));
    let big = vec![b'x'; 3_000];
    c.broker.produce("purchases", 0, &[&big]);
    c.broker.produce("purchases", 1, &[b"small junk"]);
    proc.wait_said(&["dead letters not delivered yet", "partitions=[0]"], LIMIT);
    // Partition 1's dead letter went out and its snapshot followed; partition 0 applied
    // its message but publishes no snapshot that covers it, and the process goes on: a
    // second message of partition 1, published after, is in a later snapshot of it while
    // partition 0's stays back.
    wait_for(&c.got, LIMIT, "partition 1's snapshot", |_| {
        records(1) == before1 + 1
    });
    c.broker.produce("purchases", 1, &[b"more junk"]);
    wait_for(&c.got, LIMIT, "partition 1's next snapshot", |_| {
        records(1) == before1 + 2
    });
    assert_eq!(records(0), before0);
    let (status, out, err) = {
        let pid = proc.child.id() as i32;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        proc.wait_exit(LIMIT)
    };
    assert!(status.success(), "{out}{err}");
    assert!(
        common::said(&err, &["keep their previous snapshot", "partitions=[0]"]),
        "{err}"
    );
    assert_eq!(records(0), before0);

    // Without the limit, a new run reads the message again and its dead letter goes out.
    let args = process_args(&c.broker, &c.got, &["--snapshot-interval", "100ms"]);
    let proc = Proc::spawn("process", &args);
    wait_for(&c.got, LIMIT, "partition 0's snapshot", |_| {
        records(0) == before0 + 1
    });
    proc.terminate(LIMIT);
    let dead: Vec<serde_json::Value> = c
        .broker
        .read_all("purchases.rejected")
        .iter()
        .map(|v| serde_json::from_slice(v).unwrap())
        .filter(|d: &serde_json::Value| d["stage"] == "process")
        .collect();
    assert!(
        dead.iter()
            .any(|d| d["partition"] == 0 && d["reason"] == "invalid_message"),
        "{dead:?}"
    );
    assert_eq!(
        dead.iter().filter(|d| d["partition"] == 1).count(),
        2,
        "{dead:?}"
    );
    assert_same_tables(&c.want, &c.got);
}

#[test]
fn a_processor_started_before_its_broker_waits_for_it() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let input = generate(tmp.path(), 3_000, 43);
    let want = tmp.path().join("run");
    common::run(&input, &want, &[]);
    let got = tmp.path().join("process");
    let addr = free_addr();
    let args = [
        "process",
        "--brokers",
        addr.as_str(),
        "--snapshot-dir",
        got.to_str().unwrap(),
        "--snapshot-interval",
        "200ms",
        "--stop-at-end",
    ];
    let proc = Proc::spawn("process", &args);
    proc.wait_stderr("waiting for the brokers", LIMIT);
    let broker = Broker::start_on(&addr);
    broker.create_topic("purchases", 2);
    replay(&broker, &input, &[]);
    proc.wait_ok(LIMIT);
    assert_same_tables(&want, &got);
}

#[test]
fn a_broker_paused_beyond_the_session_timeout_mid_stream_loses_nothing() {
    let _serial = serial();
    let c = Case::generated(9_000, 44, 2);
    // A static assignment: tansu's group coordinator never lets a member whose session
    // expired join again (docs/kafka.md), so this runs without the group's rebalancing.
    let flags = [
        "--stop-at-end",
        "--snapshot-interval",
        "100ms",
        "--assign",
        "all",
    ];
    let proc = Proc::spawn("process", &process_args(&c.broker, &c.got, &flags));
    let replayer = paced_replay(&c.broker, &c.input, "2000");
    wait_for(&c.got, LIMIT, "events applied", |m| {
        total(m, "accepted") > 1_500
    });
    c.broker.pause();
    // Longer than the processor's session timeout (10 s).
    std::thread::sleep(Duration::from_secs(13));
    c.broker.resume();
    let summary = common::summary(&replayer.wait_ok(LIMIT));
    proc.wait_ok(LIMIT);
    let m = partition_manifests(&c.got);
    assert_eq!(total(&m, "accepted"), accepted_in(&summary));
    assert_same_tables(&c.want, &c.got);
}

/// The `records` count of partition `p`'s latest snapshot in `dir` (0 without one).
fn records_of(dir: &std::path::Path, p: i64) -> u64 {
    let m = partition_manifests(dir);
    let part = m.iter().find(|x| x["input"]["partition"] == p).cloned();
    part.map_or(0, |x| x["counts"]["records"].as_u64().unwrap())
}

#[test]
fn sigterm_while_the_broker_is_away_keeps_a_pending_dead_letter_and_exits_promptly() {
    let _serial = serial();
    let c = Case::generated(3_000, 45, 2);
    let accepted = accepted_in(&replay(&c.broker, &c.input, &[]));
    // The processor's producer refuses messages over 2,000 bytes: the dead letter of a
    // bigger message stays pending.
    let limited = [
        "--snapshot-interval",
        "100ms",
        "--kafka-option",
        "message.max.bytes=2000",
    ];
    let proc = Proc::spawn("process", &process_args(&c.broker, &c.got, &limited));
    wait_for(&c.got, LIMIT, "every event applied", |m| {
        m.len() == 2 && total(m, "accepted") == accepted
    });
    let before0 = records_of(&c.got, 0);
    let big = vec![b'x'; 3_000];
    c.broker.produce("purchases", 0, &[&big]);
    let pending = ["dead letters not delivered yet", "partitions=[0]"];
    proc.wait_said(&pending, LIMIT);

    // 1. One signal with the broker away: the dead letter waits its 10 s, leaving the
    //    group its 10 s more; partition 0 keeps its previous snapshot; exit 0.
    c.broker.pause();
    let asked = Instant::now();
    proc.signal(libc::SIGTERM);
    let (status, out, err) = proc.wait_exit(LIMIT);
    let took = asked.elapsed();
    c.broker.resume();
    assert!(status.success(), "{out}{err}");
    assert!(
        took < Duration::from_secs(30),
        "a slow stop: {took:?}\n{err}"
    );
    assert!(
        common::said(&err, &["keep their previous snapshot", "partitions=[0]"]),
        "{err}"
    );
    assert_eq!(records_of(&c.got, 0), before0);
    assert_eq!(total(&partition_manifests(&c.got), "accepted"), accepted);

    // 2. Two signals: the second ends it at once, with 130, whatever is pending. The
    //    partitions assigned from here on: tansu's group coordinator does not take a
    //    member back after one left while it was paused (docs/kafka.md).
    let assigned = [&limited[..], &["--assign", "all"]].concat();
    let proc = Proc::spawn("process", &process_args(&c.broker, &c.got, &assigned));
    proc.wait_said(&pending, LIMIT);
    c.broker.pause();
    proc.signal(libc::SIGTERM);
    proc.wait_stderr("stopping: draining", LIMIT);
    let asked = Instant::now();
    proc.signal(libc::SIGTERM);
    let (status, out, err) = proc.wait_exit(LIMIT);
    let took = asked.elapsed();
    c.broker.resume();
    assert_eq!(status.code(), Some(130), "{out}{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(err.contains("exiting at once"), "{err}");
    assert_eq!(records_of(&c.got, 0), before0);

    // 3. Without the limit the message is read again, its dead letter goes out and
    //    partition 0's snapshot covers it.
    let plain = ["--snapshot-interval", "100ms", "--assign", "all"];
    let proc = Proc::spawn("process", &process_args(&c.broker, &c.got, &plain));
    wait_for(&c.got, LIMIT, "partition 0's snapshot", |_| {
        records_of(&c.got, 0) == before0 + 1
    });
    proc.terminate(LIMIT);
    let letters = c
        .broker
        .read_all("purchases.rejected")
        .iter()
        .map(|v| serde_json::from_slice::<serde_json::Value>(v).unwrap())
        .filter(|d| d["stage"] == "process" && d["partition"] == 0)
        .count();
    assert_eq!(letters, 1, "the pending letter, delivered once");
    assert_same_tables(&c.want, &c.got);
}

/// `/readyz` drops once no broker was reachable for `--broker-timeout`, says why, and is
/// ready again when the broker is back; `/healthz` stays 200 meanwhile (the pipeline is not
/// stuck, its input is away).
#[test]
fn readiness_drops_after_the_broker_timeout_and_comes_back_with_the_broker() {
    let _serial = serial();
    let c = Case::generated(2_000, 47, 2);
    let accepted = accepted_in(&replay(&c.broker, &c.input, &[]));
    let metrics = free_addr();
    let flags = [
        "--assign",
        "all",
        "--broker-timeout",
        "3s",
        "--metrics-addr",
        metrics.as_str(),
    ];
    let proc = Proc::spawn("process", &process_args(&c.broker, &c.got, &flags));
    let status = |path: &str| common::http::get(&metrics, path);
    wait_for(&c.got, LIMIT, "every event applied", |m| {
        total(m, "accepted") == accepted
    });
    wait_until(LIMIT, "ready", || status("/readyz").0 == 200);
    c.broker.pause();
    let paused = Instant::now();
    wait_until(LIMIT, "not ready with the broker away", || {
        status("/readyz").0 == 503
    });
    let took = paused.elapsed();
    let (_, _, why) = status("/readyz");
    assert!(why.contains("broker unreachable for"), "{why}");
    assert!(why.contains("--broker-timeout 3.0s"), "{why}");
    assert!(
        took >= Duration::from_secs(3),
        "before the timeout: {took:?}"
    );
    // A frozen broker is taken as unreachable once it has left requests unanswered for
    // 10 s, not only when they time out a minute later.
    assert!(
        took < Duration::from_secs(45),
        "a frozen broker noticed only after {took:?}"
    );
    assert_eq!(status("/healthz").0, 200, "not a stall");
    c.broker.resume();
    wait_until(LIMIT, "ready again with the broker back", || {
        status("/readyz").0 == 200
    });
    proc.terminate(LIMIT);
}
