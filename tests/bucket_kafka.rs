//! Processors with no shared disk, one bucket: each keeps its partitions' snapshots in a
//! working folder of its own (its own `TMPDIR`) and publishes them to an S3-protocol server
//! on loopback (s3s, linked into this test), through a real Kafka-protocol broker (tansu).
//! A processor killed with -9 and restarted, and a paused one that comes back after
//! another took its partitions over (fenced by the conditional pointer put): the tables
//! read back from the bucket equal `run` on the same file.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::path::Path;
use std::process::Command;

use common::kafka::serial;
use common::kafka_cases::{accepted_in, paced_replay, Case, LIMIT};
use common::spawn::Proc;
use common::wait::wait_until;

/// `process` of `case` into the bucket prefix `url`, with `tmp` as its `TMPDIR`.
fn processor(server: &s3::Server, c: &Case, url: &str, tmp: &Path, extra: &[&str]) -> Command {
    let mut args = vec![
        "process",
        "--brokers",
        &c.broker.addr,
        "--snapshot-dir",
        url,
        "--kafka-option",
        "compression.type=none",
        "--snapshot-interval",
        "100ms",
        "--summary",
        "json",
    ];
    args.extend_from_slice(extra);
    let mut cmd = server.command(&args);
    cmd.env("TMPDIR", tmp);
    cmd
}

/// The manifests of the snapshots the partitions' pointers name in the bucket.
fn pointed_manifests(server: &s3::Server, prefix: &str) -> Vec<serde_json::Value> {
    let parts = server.file(&format!("{prefix}/partitions"));
    let mut out = Vec::new();
    for dir in std::fs::read_dir(parts).into_iter().flatten().flatten() {
        let Ok(pointer) = std::fs::read_to_string(dir.path().join("LATEST")) else {
            continue;
        };
        let name = pointer.lines().next().unwrap_or_default();
        if let Ok(text) = std::fs::read_to_string(dir.path().join(name).join("manifest.json")) {
            out.push(serde_json::from_str(&text).unwrap());
        }
    }
    out
}

fn accepted(server: &s3::Server, prefix: &str) -> u64 {
    pointed_manifests(server, prefix)
        .iter()
        .map(|m| m["counts"]["accepted"].as_u64().unwrap_or(0))
        .sum()
}

/// The four tables through `query` from the bucket equal `run`'s, read through the merged
/// view the last processor published, which merges the partitions' latest snapshots.
fn assert_tables_equal_run(server: &s3::Server, c: &Case, url: &str) {
    let prefix = url.rsplit('/').next().unwrap();
    let pointer = std::fs::read_to_string(server.file(&format!("{prefix}/merged/LATEST")))
        .expect("a merged view in the bucket");
    let name = pointer.lines().next().unwrap();
    let view: serde_json::Value = serde_json::from_slice(
        &std::fs::read(server.file(&format!("{prefix}/merged/{name}/manifest.json"))).unwrap(),
    )
    .unwrap();
    let mut merged: Vec<(i64, u64)> = view["input"]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                p["snapshot"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut latest: Vec<(i64, u64)> = pointed_manifests(server, prefix)
        .iter()
        .map(|m| {
            (
                m["input"]["partition"].as_i64().unwrap(),
                m["id"].as_u64().unwrap(),
            )
        })
        .collect();
    merged.sort_unstable();
    latest.sort_unstable();
    assert_eq!(
        merged, latest,
        "the view merges every partition's latest snapshot"
    );
    // Through the view, then (its pointer removed) through the merge of the partitions.
    let tables = common::TABLE_QUERIES;
    let without_view = tables.iter().map(|_| false);
    let with_view = tables.iter().map(|_| true);
    for (sql, view) in tables
        .iter()
        .chain(&tables)
        .zip(with_view.chain(without_view))
    {
        if !view {
            let _ = std::fs::remove_file(server.file(&format!("{prefix}/merged/LATEST")));
        }
        let want = common::query_csv(&c.want, sql);
        assert!(want.lines().count() > 1, "{sql}: empty");
        let out = server
            .command(&["query", "--format", "csv", "--snapshot-dir", url, sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap(), want, "{sql}");
    }
}

#[test]
fn two_processors_without_shared_disk_one_killed_and_restarted_equal_run() {
    let _serial = serial();
    let server = s3::Server::start("shop");
    let c = Case::generated(12_000, 31, 4);
    let url = server.url("kafka");
    let homes: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let with = |id: &'static str, home: &Path| {
        let extra = ["--stop-at-end", "--instance-id", id];
        processor(&server, &c, &url, home, &extra)
    };
    let a = Proc::start("processor a", &mut with("a", homes[0].path()));
    let b = Proc::start("processor b", &mut with("b", homes[1].path()));
    let replayer = paced_replay(&c.broker, &c.input, "2000");
    // b owns partitions when it is killed (were a to own them all, the kill would test
    // nothing).
    common::kafka_cases::wait_until_shared(&a, &b);
    wait_until(LIMIT, "events published to the bucket", || {
        accepted(&server, "kafka") > 3_000
    });
    b.kill9();
    assert!(accepted(&server, "kafka") < 11_000, "killed too late");
    let b2 = Proc::start("processor b restarted", &mut with("b", homes[2].path()));
    let summary = common::summary(&replayer.wait_ok(LIMIT));
    let (out_a, out_b) = (a.wait_ok(LIMIT), b2.wait_ok(LIMIT));
    for out in [&out_a, &out_b] {
        let out = common::summary(out);
        assert_eq!(out["snapshot_dir"], url.as_str(), "{out}");
    }
    let m = pointed_manifests(&server, "kafka");
    assert_eq!(m.len(), 4, "every partition in the bucket");
    assert_eq!(accepted(&server, "kafka"), accepted_in(&summary));
    let duplicates: u64 = m
        .iter()
        .map(|m| m["counts"]["duplicates"].as_u64().unwrap())
        .sum();
    assert_eq!(duplicates, 0, "no message applied twice");
    // The working folders were only staging: the processors that ended left nothing
    // there (the killed one's folder stays; the restarted one did not need it).
    for home in [&homes[0], &homes[2]] {
        let left: Vec<_> = std::fs::read_dir(home.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "{left:?}");
    }
    assert_tables_equal_run(&server, &c, &url);
}

#[test]
fn a_paused_processor_whose_partitions_were_taken_over_is_fenced_and_changes_nothing() {
    let _serial = serial();
    let server = s3::Server::start("shop");
    let c = Case::generated(9_000, 32, 2);
    let url = server.url("zombie");
    let (home_a, home_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Static assignments that overlap, as after a paused owner's partitions were given to
    // another: only the conditional put keeps the older owner from publishing.
    let a = Proc::start(
        "processor a",
        &mut processor(&server, &c, &url, home_a.path(), &["--assign", "all"]),
    );
    let replayer = paced_replay(&c.broker, &c.input, "2000");
    wait_until(LIMIT, "events published by a", || {
        accepted(&server, "zombie") > 1_500
    });
    a.signal(libc::SIGSTOP);
    let before = accepted(&server, "zombie");
    let summary = common::summary(&replayer.wait_ok(LIMIT));
    assert!(before < accepted_in(&summary), "a was paused mid-stream");
    let b = Proc::start(
        "processor b",
        &mut processor(
            &server,
            &c,
            &url,
            home_b.path(),
            &["--assign", "all", "--stop-at-end"],
        ),
    );
    b.wait_ok(LIMIT);
    let pointers = |s: &s3::Server| {
        (0..2)
            .map(|p| {
                std::fs::read_to_string(s.file(&format!("zombie/partitions/purchases-{p}/LATEST")))
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let taken_over = pointers(&server);
    assert_eq!(accepted(&server, "zombie"), accepted_in(&summary));

    // Back from its pause, a reads on and tries to publish: refused. Its assignment is
    // static, so it cannot give the partitions back to a group: it stops, saying why.
    a.signal(libc::SIGCONT);
    let (status, _, err) = a.wait_exit(LIMIT);
    assert!(!status.success(), "{err}");
    assert!(
        common::said(
            &err,
            &["another processor claimed this partition", "--assign"]
        ),
        "{err}"
    );
    assert_eq!(pointers(&server), taken_over, "the pointers are still b's");
    assert_tables_equal_run(&server, &c, &url);
}

/// The review's first finding, through processes: the old owner comes back from its pause
/// while the new owner is still streaming, before or after the new owner's first
/// publish. The new owner claimed the partitions when it took them, so whatever the
/// order, the old owner is refused and the new one finishes every partition.
#[test]
fn a_zombie_back_while_the_new_owner_streams_never_stalls_its_partitions() {
    let _serial = serial();
    let server = s3::Server::start("shop");
    let c = Case::generated(9_000, 34, 2);
    let url = server.url("comeback");
    let (home_a, home_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Proc::start(
        "processor a",
        &mut processor(&server, &c, &url, home_a.path(), &["--assign", "all"]),
    );
    let replayer = paced_replay(&c.broker, &c.input, "1500");
    wait_until(LIMIT, "events published by a", || {
        accepted(&server, "comeback") > 1_000
    });
    a.signal(libc::SIGSTOP);
    // b takes both partitions over (claiming them) while the replay goes on.
    let b = Proc::start(
        "processor b",
        &mut processor(
            &server,
            &c,
            &url,
            home_b.path(),
            &["--assign", "all", "--stop-at-end"],
        ),
    );
    b.wait_stderr("assigned", LIMIT);
    // a comes back at once, with changed state to publish at its next interval.
    a.signal(libc::SIGCONT);
    let (status, _, err) = a.wait_exit(LIMIT);
    assert!(!status.success(), "a stopped, fenced: {err}");
    assert!(
        common::said(&err, &["another processor claimed this partition"]),
        "{err}"
    );
    let summary = common::summary(&replayer.wait_ok(LIMIT));
    let out = b.wait_ok(LIMIT);
    let b_summary = common::summary(&out);
    assert_eq!(b_summary["fenced"], serde_json::json!([]), "{out}");
    assert_eq!(accepted(&server, "comeback"), accepted_in(&summary));
    assert_tables_equal_run(&server, &c, &url);
}

#[test]
fn a_processor_falls_back_past_a_damaged_snapshot_in_the_bucket() {
    let _serial = serial();
    let server = s3::Server::start("shop");
    let c = Case::generated(6_000, 33, 1);
    let url = server.url("damaged");
    let home = tempfile::tempdir().unwrap();
    let replayer = paced_replay(&c.broker, &c.input, "3000");
    let first = Proc::start(
        "first processor",
        &mut processor(&server, &c, &url, home.path(), &["--assign", "all"]),
    );
    let summary = common::summary(&replayer.wait_ok(LIMIT));
    wait_until(LIMIT, "every event published", || {
        accepted(&server, "damaged") == accepted_in(&summary)
    });
    first.terminate(LIMIT);
    // The newest snapshot loses a table.
    let part = server.file("damaged/partitions/purchases-0");
    let pointer = std::fs::read_to_string(part.join("LATEST")).unwrap();
    let newest = pointer.lines().next().unwrap();
    let kept = s3::objects(&part)
        .iter()
        .filter(|o| o.ends_with("/manifest.json"))
        .count();
    assert!(kept >= 2, "an older snapshot is kept: {kept}");
    let offset_of = |folder: &str| -> i64 {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(part.join(folder).join("manifest.json")).unwrap(),
        )
        .unwrap();
        m["input"]["next_offset"].as_i64().unwrap()
    };
    // The newest older snapshot, which the restarted processor must resume from.
    let mut folders: Vec<String> = s3::objects(&part)
        .iter()
        .filter_map(|o| o.strip_suffix("/manifest.json").map(String::from))
        .filter(|f| f.as_str() < newest)
        .collect();
    folders.sort();
    let older = folders.last().expect("an older snapshot").clone();
    let (from, to) = (offset_of(&older), offset_of(newest));
    assert!(
        from < to,
        "the older snapshot covers less: {older} {from}, {newest} {to}"
    );
    std::fs::write(part.join(newest).join("rfm.parquet"), b"damaged").unwrap();

    let restarted = Proc::start(
        "restarted processor",
        &mut processor(
            &server,
            &c,
            &url,
            home.path(),
            &["--assign", "all", "--stop-at-end"],
        ),
    );
    let log = restarted.stderr_log();
    let out = restarted.wait_ok(LIMIT);
    let err = log.lock().unwrap().clone();
    assert!(
        common::said(
            &err,
            &["skipping snapshot", newest, "not readable as Parquet"]
        ),
        "{err}"
    );
    // It resumed from the older snapshot: it read again exactly the messages from there
    // to the end of the log (the damaged one's and any the first processor had not read
    // when it was stopped), and published past the damaged one.
    let said = common::summary(&out);
    let pointer_now = std::fs::read_to_string(part.join("LATEST")).unwrap();
    let now = pointer_now.lines().next().unwrap();
    assert!(now > newest, "{now} after {newest} ({pointer})");
    let end = offset_of(now);
    assert!(end >= to, "{end} < {to}");
    assert_eq!(said["messages"].as_i64(), Some(end - from), "{said}");
    assert_eq!(accepted(&server, "damaged"), accepted_in(&summary));
    assert_tables_equal_run(&server, &c, &url);
}

/// The review's third finding: in a bucket the "one set" checks of a folder were skipped.
/// `process` into the prefix of a `run`, `run` into a prefix with partitions, and another
/// topic into the same prefix are refused, and nothing is written.
#[test]
fn a_prefix_holds_one_set_as_a_folder_does() {
    let _serial = serial();
    let server = s3::Server::start("shop");
    let c = Case::generated(2_000, 35, 2);
    let home = tempfile::tempdir().unwrap();
    let run_url = server.url("a-run");
    let out = server
        .command(&[
            "run",
            "--input",
            c.input.to_str().unwrap(),
            "--max",
            "--no-progress",
            "--snapshot-dir",
            &run_url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = s3::objects(&server.file("a-run"));
    let refused = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    common::kafka_cases::replay(&c.broker, &c.input, &["--max"]);
    let err = refused(&mut processor(
        &server,
        &c,
        &run_url,
        home.path(),
        &["--assign", "all", "--stop-at-end"],
    ));
    assert!(err.contains("holds both a `run` snapshot"), "{err}");
    assert_eq!(
        s3::objects(&server.file("a-run")),
        before,
        "nothing written"
    );

    // A topic's prefix refuses a `run` and another topic.
    let topic_url = server.url("a-topic");
    processor(
        &server,
        &c,
        &topic_url,
        home.path(),
        &["--assign", "all", "--stop-at-end"],
    )
    .output()
    .unwrap();
    assert_eq!(pointed_manifests(&server, "a-topic").len(), 2);
    let err = refused(&mut server.command(&[
        "run",
        "--input",
        c.input.to_str().unwrap(),
        "--max",
        "--no-progress",
        "--snapshot-dir",
        &topic_url,
    ]));
    assert!(err.contains("holds both a `run` snapshot"), "{err}");
    assert!(!server.file("a-topic/LATEST").exists());
    c.broker.create_topic("other", 2);
    common::kafka_cases::replay(&c.broker, &c.input, &["--max", "--topic", "other"]);
    let err = refused(&mut processor(
        &server,
        &c,
        &topic_url,
        home.path(),
        &["--assign", "all", "--stop-at-end", "--topic", "other"],
    ));
    assert!(
        err.contains("are of the topic purchases, not other"),
        "{err}"
    );
    // And `query` of the topic's prefix still reads its partitions.
    assert_tables_equal_run(&server, &c, &topic_url);
}

/// While a processor streams into a bucket, merged views are published every
/// `--view-interval` and read: `query` answers from the newest view (naming its cut when it
/// is behind, never merging the partitions), the processor's own page (`--http-addr`, a
/// bucket) names the same cut; at the end the final view is the newest and equals `run`.
#[test]
fn views_published_while_streaming_are_read_with_their_cut_and_the_last_equals_run() {
    let _serial = serial();
    let server = s3::Server::start("shop");
    let c = Case::generated(18_000, 34, 4);
    let url = server.url("live");
    let home = tempfile::tempdir().unwrap();
    let page = format!("127.0.0.1:{}", common::spawn::free_port());
    let extra = [
        "--stop-at-end",
        "--assign",
        "all",
        "--view-interval",
        "1s",
        "--http-addr",
        &page,
    ];
    let proc = Proc::start(
        "processor",
        &mut processor(&server, &c, &url, home.path(), &extra),
    );
    let replayer = paced_replay(&c.broker, &c.input, "1500");
    let views = || {
        s3::objects(&server.file("live/merged"))
            .iter()
            .filter(|o| o.ends_with("/manifest.json"))
            .count()
    };
    let mut read = std::collections::BTreeSet::new();
    let (mut cuts, mut seen_at) = (0, None);
    let log = proc.stderr_log();
    let started = std::time::Instant::now();
    while seen_at.is_none() && started.elapsed() < LIMIT {
        let a_view_was_there = views() > 0;
        let out = server
            .command(&["query", "--snapshot-dir", &url, "SELECT COUNT(*) FROM rfm"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let merged = err.contains("merged the newest snapshots");
        assert!(
            !(merged && a_view_was_there),
            "merged while a view was there: {err}"
        );
        if let Some(at) = err.find("read merged view ") {
            read.insert(err[at..].split(':').next().unwrap().to_string());
        }
        let (status, _, body) = common::http::get(&page, "/api/snapshot");
        if status == 200 && body.contains("\"newest\":false") {
            cuts += 1;
        }
        if !read.is_empty() && cuts >= 1 {
            seen_at = Some(accepted(&server, "live"));
        }
    }
    let summary = common::summary(&replayer.wait_ok(LIMIT));
    let said = log.lock().unwrap().clone();
    let seen_at = seen_at.unwrap_or_else(|| {
        panic!(
            "views {} read {read:?} cuts {cuts}; the processor said:\n{said}",
            views()
        )
    });
    assert!(
        seen_at < accepted_in(&summary),
        "the views were read while the stream ran: {seen_at}"
    );
    proc.wait_ok(LIMIT);
    let published = log.lock().unwrap().matches("merged view published").count();
    assert!(
        published >= 2,
        "one view beside the stream and the last: {published}"
    );
    assert_tables_equal_run(&server, &c, &url);
}

/// Incremental snapshots in a bucket (docs/operating.md): a processor killed with -9 while
/// its partition's pointer names an incremental snapshot two or more links from its base
/// (with `--keep-snapshots 2`, older than the kept pointers' own folders: a prune that kept
/// only those removes it, unless the kill lands between that snapshot's commit and its
/// prune; at this test's size chains seldom reach three links, which would make it
/// certain), and restarted with an empty working folder, resumes from that chain read
/// from the bucket; pruning kept every folder of the chain and removed older ones; the
/// tables equal `run`.
#[test]
fn a_processor_restarts_from_an_incremental_chain_in_the_bucket() {
    let _serial = serial();
    let server = s3::Server::start("shop");
    let c = Case::generated(8_000, 35, 1);
    let url = server.url("chains");
    let homes: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let part = server.file("chains/partitions/purchases-0");
    let manifest_of = |folder: &str| -> Option<serde_json::Value> {
        let text = std::fs::read(part.join(folder).join("manifest.json")).ok()?;
        serde_json::from_slice(&text).ok()
    };
    let replayer = paced_replay(&c.broker, &c.input, "1500");
    let keep2 = ["--assign", "all", "--keep-snapshots", "2"];
    let first = Proc::start(
        "first processor",
        &mut processor(&server, &c, &url, homes[0].path(), &keep2),
    );
    // Paused, then killed, while the pointer names such a snapshot (bounded tries).
    let mut chained = None;
    let mut seen = Vec::new();
    for _ in 0..800 {
        first.signal(libc::SIGSTOP);
        let pointer = std::fs::read_to_string(part.join("LATEST")).unwrap_or_default();
        let name = pointer.lines().next().unwrap_or_default().to_string();
        let m = manifest_of(&name);
        let length = m.as_ref().and_then(|m| m["chain"]["length"].as_u64());
        if seen.last() != Some(&(name.clone(), length)) {
            seen.push((name.clone(), length));
        }
        if let Some(m) = m.filter(|_| length >= Some(2)) {
            chained = Some((name, m));
            break;
        }
        first.signal(libc::SIGCONT);
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let (name, m) =
        chained.unwrap_or_else(|| panic!("the pointer never named a chain of 2: {seen:?}"));
    first.kill9();
    let (id, base) = (
        m["id"].as_u64().unwrap(),
        m["chain"]["base"].as_u64().unwrap(),
    );
    let writer = name.splitn(3, '-').nth(2).unwrap();
    for link in base..id {
        let folder = format!("snap-{link:06}-{writer}");
        assert!(
            manifest_of(&folder).is_some(),
            "{folder} of {name}'s chain was pruned"
        );
    }
    let folders = s3::objects(&part)
        .iter()
        .filter(|o| o.ends_with("/manifest.json"))
        .count() as u64;
    assert!(
        folders < id,
        "nothing was pruned: {folders} folders, {id} published"
    );

    let restarted = Proc::start(
        "restarted processor",
        &mut processor(
            &server,
            &c,
            &url,
            homes[1].path(),
            &["--assign", "all", "--keep-snapshots", "2", "--stop-at-end"],
        ),
    );
    let log = restarted.stderr_log();
    let summary = common::summary(&replayer.wait_ok(LIMIT));
    restarted.wait_ok(LIMIT);
    let err = log.lock().unwrap().clone();
    let chain = m["chain"]["length"].to_string();
    assert!(
        common::said(
            &err,
            &[
                "resuming from a snapshot",
                &format!("snapshot={id}"),
                &format!("chain={chain}")
            ]
        ),
        "{err}"
    );
    assert_eq!(accepted(&server, "chains"), accepted_in(&summary));
    assert_tables_equal_run(&server, &c, &url);
}
