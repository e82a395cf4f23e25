//! The Kafka path against a real broker (tansu on loopback): `replay` into `process`
//! must give exactly the tables of the embedded `run` on the same file, through crashes,
//! restarts, a second processor, a second replay and malformed messages.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kafka::{serial, total, wait_for};
use common::kafka_cases::{
    accepted_in, accepted_total, assert_same_tables, paced_replay, process_args, replay,
    wait_until_shared, Case, LIMIT,
};
use common::query_csv;
use common::spawn::Proc;

#[test]
fn replay_through_kafka_into_one_processor_equals_run() {
    let _serial = serial();
    let c = Case::generated(12_000, 21, 4);
    let summary = replay(&c.broker, &c.input, &["--max"]);
    let accepted = accepted_in(&summary);
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["end_of_input"]["sent"], true, "{summary}");
    let out = common::summary(
        &Proc::spawn(
            "process",
            &process_args(&c.broker, &c.got, &["--stop-at-end"]),
        )
        .wait_ok(LIMIT),
    );
    assert_eq!(out["partitions"].as_array().unwrap().len(), 4, "{out}");
    assert_eq!(accepted_in(&out), accepted, "{out}");
    let file = std::fs::read_to_string(c.got.join("summary.json")).unwrap();
    assert_eq!(
        common::summary(&file),
        out,
        "summary.json is the printed object"
    );
    let m = common::kafka::partition_manifests(&c.got);
    assert_eq!(m.len(), 4, "one snapshot folder per partition");
    assert_eq!(total(&m, "accepted"), accepted);
    assert_eq!(total(&m, "duplicates"), 0);
    assert_same_tables(&c.want, &c.got);

    // Rejected lines are dead letters with their reason and line, as many as `run` counted.
    let run_rejected: u64 = common::manifest(&c.want)["counts"]["rejected"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let dead = c.broker.read_all("purchases.rejected");
    assert_eq!(dead.len() as u64, run_rejected);
    let first: serde_json::Value = serde_json::from_slice(&dead[0]).unwrap();
    assert_eq!(first["stage"], "replay");
    assert!(first["line"].as_u64().unwrap() >= 2);
}

/// SIGKILLs `victim` once the processors have applied more than `after` events, and
/// checks that events were still to come.
fn kill_mid_stream(victim: Proc, dir: &Path, after: u64) {
    wait_for(dir, LIMIT, "events applied", |m| {
        total(m, "accepted") > after
    });
    victim.kill9();
    let applied = total(&common::kafka::partition_manifests(dir), "accepted");
    assert!(applied < 11_000, "killed too late: {applied}");
}

#[test]
fn a_processor_killed_mid_stream_resumes_exactly() {
    let _serial = serial();
    let c = Case::generated(12_000, 22, 3);
    // Static assignment: the restarted processor owns every partition at once. (Through
    // the group, tansu may expire the killed member's session after the restarted one was
    // assigned, and never assigns the partitions again: see the test broker's gaps in
    // docs/kafka.md. The group path is covered by
    // `two_processors_with_one_killed_and_restarted_equal_one`.)
    let args = process_args(
        &c.broker,
        &c.got,
        &["--snapshot-interval", "100ms", "--assign", "all"],
    );
    let first = Proc::spawn("first processor", &args);
    first.wait_stderr("assigned partitions=[0, 1, 2]", LIMIT);
    let replayer = paced_replay(&c.broker, &c.input, "1500");
    kill_mid_stream(first, &c.got, 2_000);
    // Periodic snapshots are incremental (docs/operating.md): the restart below restores
    // partitions from a whole snapshot and the chain after it.
    let chained = (0..3)
        .map(|p| c.got.join(format!("partitions/purchases-{p}")))
        .find(|part| {
            let latest = std::fs::read_to_string(part.join("LATEST")).unwrap();
            let text = std::fs::read_to_string(part.join(latest.trim()).join("manifest.json"));
            let m: serde_json::Value = serde_json::from_str(&text.unwrap()).unwrap();
            m["chain"]["length"].as_u64().is_some_and(|n| n >= 1)
        });
    let chained = chained.expect("no partition's newest snapshot is incremental");
    // Its own tables hold only what changed: `query` pointed at that one folder reads it
    // restored through its chain (that partition's customers, every one scored), as it
    // reads a whole snapshot's files.
    let own = common::manifest(&chained)["tables"]["rfm"]["rows"]
        .as_u64()
        .unwrap();
    let n = |sql: &str| -> u64 {
        let out = common::query_csv(&chained, sql);
        out.lines().nth(1).unwrap().parse().unwrap()
    };
    let customers = n("SELECT COUNT(*) AS n FROM rfm");
    let scored = n("SELECT COUNT(*) AS n FROM rfm WHERE r_score BETWEEN 1 AND 5");
    assert!(
        customers == scored && customers > own,
        "{customers} customers, {scored} scored, {own} in the snapshot's own table"
    );
    let summary = common::summary(&replayer.wait_ok(LIMIT));
    let args = process_args(&c.broker, &c.got, &["--stop-at-end", "--assign", "all"]);
    Proc::spawn("restarted processor", &args).wait_ok(LIMIT);
    let m = common::kafka::partition_manifests(&c.got);
    assert_eq!(total(&m, "accepted"), accepted_in(&summary));
    assert_eq!(total(&m, "duplicates"), 0, "no message applied twice");
    assert_same_tables(&c.want, &c.got);
}

#[test]
fn two_processors_with_one_killed_and_restarted_equal_one() {
    let _serial = serial();
    let c = Case::generated(12_000, 23, 4);
    let with = |id| {
        process_args(
            &c.broker,
            &c.got,
            &[
                "--stop-at-end",
                "--snapshot-interval",
                "100ms",
                "--instance-id",
                id,
            ],
        )
    };
    let a = Proc::spawn("processor a", &with("a"));
    let b = Proc::spawn("processor b", &with("b"));
    let replayer = paced_replay(&c.broker, &c.input, "2000");
    // b owns partitions when it is killed (were a to own them all, the kill would test
    // nothing).
    wait_until_shared(&a, &b);
    kill_mid_stream(b, &c.got, 3_000);
    let b2 = Proc::spawn("processor b restarted", &with("b"));
    let summary = common::summary(&replayer.wait_ok(LIMIT));
    a.wait_ok(LIMIT);
    b2.wait_ok(LIMIT);
    let m = common::kafka::partition_manifests(&c.got);
    assert_eq!(m.len(), 4);
    assert_eq!(total(&m, "accepted"), accepted_in(&summary));
    assert_eq!(total(&m, "duplicates"), 0);
    assert_same_tables(&c.want, &c.got);
}

#[test]
fn the_same_file_replayed_twice_counts_once() {
    let _serial = serial();
    let c = Case::generated(6_000, 24, 2);
    let first = replay(&c.broker, &c.input, &[]);
    replay(&c.broker, &c.input, &["--order", "file"]);
    Proc::spawn(
        "process",
        &process_args(&c.broker, &c.got, &["--stop-at-end"]),
    )
    .wait_ok(LIMIT);
    let m = common::kafka::partition_manifests(&c.got);
    let accepted = accepted_in(&first);
    assert_eq!(total(&m, "accepted"), accepted);
    assert_eq!(total(&m, "duplicates"), accepted);
    assert_same_tables(&c.want, &c.got);
}

#[test]
fn malformed_messages_are_dead_lettered_and_change_nothing_else() {
    let _serial = serial();
    let c = Case::generated(6_000, 25, 2);
    let bad: [&[u8]; 4] = [
        b"not json at all",
        br#"{"schema_version":1}"#,
        br#"{"schema_version":9,"event_id":"x"}"#,
        b"\xff\xfe",
    ];
    c.broker.produce("purchases", 0, &bad);
    replay(&c.broker, &c.input, &[]);
    c.broker.produce("purchases", 1, &bad[..2]);
    let proc = Proc::spawn("process", &process_args(&c.broker, &c.got, &[]));
    wait_for(&c.got, LIMIT, "every message applied", |m| {
        m.len() == 2 && total(m, "records") == accepted_total(&c.want) + 6
    });
    proc.terminate(LIMIT);
    let m = common::kafka::partition_manifests(&c.got);
    let reason = |r: &str| -> u64 {
        m.iter()
            .map(|x| x["counts"]["rejected"][r].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(reason("invalid_message"), 5);
    assert_eq!(reason("unsupported_version"), 1);
    assert_same_tables(&c.want, &c.got);
    let dead: Vec<serde_json::Value> = c
        .broker
        .read_all("purchases.rejected")
        .iter()
        .map(|v| serde_json::from_slice(v).unwrap())
        .filter(|v: &serde_json::Value| v["stage"] == "process")
        .collect();
    assert_eq!(dead.len(), 6);
    assert!(dead
        .iter()
        .any(|d| d["original"] == "not json at all" && d["reason"] == "invalid_message"));
}

#[test]
fn split_orders_through_four_partitions_and_two_processors_equal_run() {
    let _serial = serial();
    let c = Case::split_orders(4);
    let args = process_args(&c.broker, &c.got, &["--stop-at-end"]);
    let a = Proc::spawn("processor a", &args);
    let b = Proc::spawn("processor b", &args);
    // Both members hold partitions before the events arrive.
    wait_until_shared(&a, &b);
    replay(&c.broker, &c.input, &[]);
    let (out_a, out_b) = (a.wait_ok(LIMIT), b.wait_ok(LIMIT));
    // Both members of the group owned partitions.
    for out in [&out_a, &out_b] {
        let out = common::summary(out);
        assert!(!out["partitions"].as_array().unwrap().is_empty(), "{out}");
    }
    let m = common::kafka::partition_manifests(&c.got);
    assert!(m.len() >= 3, "the orders spread over the partitions");
    // Customer 503's orders and the day's customers sit in several partitions.
    let parts_with_day1 = m
        .iter()
        .filter(|x| x["counts"]["accepted"].as_u64().unwrap() > 0)
        .count();
    assert!(parts_with_day1 >= 3);
    assert_same_tables(&c.want, &c.got);
    let daily = query_csv(
        &c.got,
        "SELECT day, orders, customers, is_final FROM daily_sales ORDER BY day",
    );
    assert_eq!(
        daily,
        query_csv(
            &c.want,
            "SELECT day, orders, customers, is_final FROM daily_sales ORDER BY day"
        )
    );
    assert!(
        daily.contains("true") && !daily.contains("false"),
        "{daily}"
    );
}

#[test]
fn loop_replays_the_file_again_shifted_by_whole_days() {
    let _serial = serial();
    let c = Case::split_orders(2);
    let summary = replay(&c.broker, &c.input, &["--loop", "2"]);
    assert_eq!(summary["events_sent"], 2 * accepted_total(&c.want));
    Proc::spawn(
        "process",
        &process_args(&c.broker, &c.got, &["--stop-at-end"]),
    )
    .wait_ok(LIMIT);
    // The fixture spans three days (May 1-3): the second pass is May 4-6, the same sales.
    let sql = "SELECT day, revenue, items, orders FROM daily_sales ORDER BY day";
    let once: Vec<String> = query_csv(&c.want, sql)
        .lines()
        .skip(1)
        .map(String::from)
        .collect();
    let twice: Vec<String> = query_csv(&c.got, sql)
        .lines()
        .skip(1)
        .map(String::from)
        .collect();
    assert_eq!(once.len(), 3);
    assert_eq!(twice.len(), 6);
    for (a, b) in once.iter().zip(&twice[3..]) {
        let (day_a, rest_a) = a.split_once(',').unwrap();
        let (day_b, rest_b) = b.split_once(',').unwrap();
        let shifted =
            chrono::NaiveDate::parse_from_str(day_a, "%Y-%m-%d").unwrap() + chrono::Days::new(3);
        assert_eq!(day_b, shifted.to_string());
        assert_eq!(rest_a, rest_b);
    }
    assert_eq!(once, twice[..3]);
    let m = common::kafka::partition_manifests(&c.got);
    assert_eq!(
        total(&m, "duplicates"),
        0,
        "another pass is not a duplicate"
    );
}

#[test]
fn a_processor_outlives_its_broker_and_still_stops_cleanly() {
    let _serial = serial();
    let mut c = Case::generated(3_000, 27, 2);
    let accepted = accepted_in(&replay(&c.broker, &c.input, &[]));
    let mut proc = Proc::spawn("process", &process_args(&c.broker, &c.got, &[]));
    wait_for(&c.got, LIMIT, "every event applied", |m| {
        total(m, "accepted") == accepted
    });
    c.broker.stop();
    // The client retries; the processor neither crashes nor gives up.
    proc.wait_stderr("All broker connections are down", Duration::from_secs(30));
    assert!(proc.running(), "{}", proc.stderr());
    let start = Instant::now();
    let out = proc.terminate(LIMIT);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "slow stop: {out}"
    );
    let out = common::summary(&out);
    assert_eq!(accepted_in(&out), accepted, "{out}");
    let m = common::kafka::partition_manifests(&c.got);
    assert_eq!(total(&m, "accepted"), accepted);
}

#[test]
fn a_processor_resumes_from_the_previous_snapshot_when_the_newest_is_damaged() {
    let _serial = serial();
    let c = Case::generated(6_000, 28, 1);
    let with = |extra: &[&'static str]| {
        let mut flags = vec!["--snapshot-interval", "100ms", "--instance-id", "p1"];
        flags.extend_from_slice(extra);
        flags
    };
    let first = Proc::spawn(
        "first processor",
        &process_args(&c.broker, &c.got, &with(&[])),
    );
    // Snapshots while the events flow in: the processor holds the partition first.
    first.wait_stderr("assigned partitions=[0]", LIMIT);
    let replayer = paced_replay(&c.broker, &c.input, "2000");
    wait_for(&c.got, LIMIT, "a few snapshots", |m| {
        m.len() == 1 && m[0]["id"].as_u64().unwrap_or(0) >= 3 && total(m, "accepted") > 1_000
    });
    first.kill9();
    let summary = common::summary(&replayer.wait_ok(LIMIT));
    // The newest snapshots lose a table, back to one that covers fewer offsets (snapshots
    // taken in a rebalance may repeat an offset), so the restart must read again from there.
    let part = c.got.join("partitions/purchases-0");
    let newest = std::fs::read_to_string(part.join("LATEST")).unwrap();
    let newest = part.join(newest.trim());
    let next_offset = |snap: &Path| -> u64 {
        let text = std::fs::read_to_string(snap.join("manifest.json")).unwrap();
        let m: serde_json::Value = serde_json::from_str(&text).unwrap();
        m["input"]["next_offset"].as_u64().unwrap()
    };
    // Folders up to the one LATEST names (a kill between publishing a folder and switching
    // LATEST may leave a newer one), newest first.
    let mut snaps: Vec<PathBuf> = std::fs::read_dir(&part)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap-")
                && *p <= newest
        })
        .collect();
    snaps.sort_by(|a, b| b.cmp(a));
    let top = next_offset(&newest);
    let damaged: Vec<&PathBuf> = snaps.iter().take_while(|s| next_offset(s) == top).collect();
    assert!(
        damaged.len() < snaps.len(),
        "no older offset kept: {snaps:?}"
    );
    // What `query` must read after the fallback: every table of the newest undamaged
    // snapshot, alone in a folder of its own (with the snapshots of its chain, when it is
    // incremental); they all differ from the newest's.
    let older = &snaps[damaged.len()];
    let alone = c.got.with_file_name("older-alone");
    let alone_part = alone.join("partitions/purchases-0");
    let text = std::fs::read_to_string(older.join("manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let base = m["chain"]["base"]
        .as_u64()
        .unwrap_or(m["id"].as_u64().unwrap());
    for snap in snaps.iter().filter(|s| {
        let id: u64 = s.file_name().unwrap().to_string_lossy()[5..]
            .parse()
            .unwrap();
        (base..=m["id"].as_u64().unwrap()).contains(&id)
    }) {
        let copy = alone_part.join(snap.file_name().unwrap());
        std::fs::create_dir_all(&copy).unwrap();
        for f in std::fs::read_dir(snap).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
        }
    }
    let name = older.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(alone_part.join("LATEST"), format!("{name}\n")).unwrap();
    let want = common::query_tables(&alone);
    for (i, (a, b)) in want.iter().zip(common::query_tables(&c.got)).enumerate() {
        assert_ne!(
            *a, b,
            "table {i} is the same in {name} and the newest snapshot"
        );
    }
    for snap in damaged {
        std::fs::write(snap.join("rfm.parquet"), b"damaged").unwrap();
    }
    // Read from the partitions' newest snapshots: the last merged view may merge an older
    // one (the processor was stopped between views), and readers take it, naming its cut.
    assert_eq!(
        common::newest_tables(&c.got),
        want,
        "query after the fallback reads every table of {name}"
    );
    let args = process_args(&c.broker, &c.got, &with(&["--stop-at-end"]));
    let restarted = Proc::spawn("restarted processor", &args);
    let log = restarted.stderr_log();
    restarted.wait_ok(LIMIT);
    let err = log.lock().unwrap().clone();
    assert!(
        err.contains("skipping snapshot") && err.contains("rfm.parquet"),
        "{err}"
    );
    let m = common::kafka::partition_manifests(&c.got);
    assert_eq!(total(&m, "accepted"), accepted_in(&summary));
    assert_eq!(total(&m, "duplicates"), 0, "no message applied twice");
    assert_same_tables(&c.want, &c.got);
}

/// Services started together start processors before the replayer creates the topic: a
/// static assignment waits for it, as group mode does, instead of exiting.
#[test]
fn a_static_processor_started_before_its_topic_waits_for_it() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 4_000, 44);
    let want = tmp.path().join("run");
    common::run(&input, &want, &[]);
    let broker = common::kafka::Broker::start();
    let got = tmp.path().join("process");
    let processor = Proc::spawn(
        "process",
        &process_args(&broker, &got, &["--assign", "all", "--stop-at-end"]),
    );
    processor.wait_stderr("waiting for the topic to be created", LIMIT);
    broker.create_topic("purchases", 2);
    let summary = replay(&broker, &input, &["--max"]);
    let out = common::summary(&processor.wait_ok(LIMIT));
    assert_eq!(out["partitions"].as_array().unwrap().len(), 2, "{out}");
    assert_eq!(accepted_in(&out), accepted_in(&summary), "{out}");
    assert_same_tables(&want, &got);
}
