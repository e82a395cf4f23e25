//! The `storepulse` binary as a user meets it: read-only queries with clear errors,
//! output formats, periodic snapshots with retention, and a designed shutdown.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::spawn::Proc;
use common::{manifest, ok, query_csv, run, storepulse, wait_for_manifest};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/input.csv")
}

fn snapshot_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run(&golden(), dir.path(), &[]);
    dir
}

fn query(dir: &Path, sql: &str) -> (bool, String, String) {
    let out = storepulse(&["query", "--snapshot-dir", dir.to_str().unwrap(), sql]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn writes_are_refused_with_a_clear_error() {
    let dir = snapshot_dir();
    let target = dir.path().join("stolen.csv");
    let statements = [
        "CREATE TABLE t AS SELECT * FROM rfm".to_string(),
        format!(
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{}'",
            target.display()
        ),
        "INSERT INTO daily_sales SELECT * FROM daily_sales".to_string(),
        format!("COPY (SELECT * FROM rfm) TO '{}'", target.display()),
        "DROP TABLE rfm".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
    ];
    for sql in &statements {
        let (success, stdout, stderr) = query(dir.path(), sql);
        assert!(!success, "{sql} was allowed");
        assert!(stdout.is_empty(), "{sql}: {stdout}");
        assert!(stderr.contains("read-only"), "{sql}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!target.exists());
    // The tables are intact.
    assert_eq!(
        query_csv(dir.path(), "SELECT COUNT(*) AS n FROM rfm"),
        "n\n4\n"
    );
}

#[test]
fn bad_sql_gives_a_message_and_a_non_zero_exit() {
    let dir = snapshot_dir();
    for (sql, says) in [
        ("SELEC 1", "SELEC"),
        ("SELECT nope FROM rfm", "nope"),
        ("SELECT * FROM no_such_table", "no_such_table"),
    ] {
        let (success, _, stderr) = query(dir.path(), sql);
        assert!(!success, "{sql}");
        assert!(stderr.starts_with("storepulse: error:"), "{stderr}");
        assert!(stderr.contains(says), "{sql}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let empty = tempfile::tempdir().unwrap();
    let (success, _, stderr) = query(empty.path(), "SELECT 1");
    assert!(!success);
    assert!(stderr.contains("no snapshot"), "{stderr}");
}

#[test]
fn output_formats() {
    let dir = snapshot_dir();
    let d = dir.path().to_str().unwrap();
    let sql = "SELECT rfm_cell, segment, monetary FROM rfm WHERE rfm_cell = '445'";
    let json = ok(&["query", "--snapshot-dir", d, "--format", "json", sql]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"rfm_cell": "445", "segment": "Champion", "monetary": 1012.34}])
    );
    let table = ok(&["query", "--snapshot-dir", d, sql]);
    assert_eq!(
        table,
        "+----------+----------+----------+\n\
         | rfm_cell | segment  | monetary |\n\
         +----------+----------+----------+\n\
         | 445      | Champion | 1012.34  |\n\
         +----------+----------+----------+\n"
    );
    // An empty result still shows its columns.
    let none = ok(&[
        "query",
        "--snapshot-dir",
        d,
        "--format",
        "csv",
        "SELECT segment FROM rfm WHERE false",
    ]);
    assert_eq!(none, "segment\n");
    // The segment reference table is there to join with.
    assert_eq!(
        query_csv(
            dir.path(),
            "SELECT COUNT(*) AS cells, COUNT(DISTINCT segment) AS segments FROM rfm_segments"
        ),
        "cells,segments\n125,11\n"
    );
}

fn spawn_run(dir: &Path, extra: &[&str]) -> Proc {
    common::spawn_run(&golden(), dir, extra)
}

#[test]
fn snapshots_are_written_periodically_and_only_the_newest_kept() {
    let dir = tempfile::tempdir().unwrap();
    // 19 lines at 4 events/s: some 2.5 s of replay, a snapshot every 100 ms. The third
    // periodic snapshot is awaited, not assumed from a sleep.
    let child = spawn_run(
        dir.path(),
        &[
            "--rate",
            "4",
            "--snapshot-interval",
            "100ms",
            "--keep-snapshots",
            "2",
        ],
    );
    wait_for_manifest(dir.path(), Duration::from_secs(60), |m| {
        m["id"].as_u64().unwrap_or(0) >= 3
    });
    child.wait_ok(Duration::from_secs(60));
    let m = manifest(dir.path());
    assert!(
        m["id"].as_u64().unwrap() >= 4,
        "final snapshot after the third: {m}"
    );
    let snaps: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snap-"))
        .collect();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert_eq!(m["counts"]["accepted"], 10);
}

#[test]
fn sigterm_drains_writes_a_final_snapshot_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    // 10 events at 2 events/s, a periodic snapshot every second: SIGTERM once one shows
    // the first events. The snapshot the signal writes must be newer than any seen
    // before it (a periodic one standing in for it would not be).
    let child = spawn_run(
        dir.path(),
        &[
            "--rate",
            "2",
            "--snapshot-interval",
            "1s",
            "--summary",
            "json",
        ],
    );
    wait_for_manifest(dir.path(), Duration::from_secs(60), |m| {
        m["counts"]["accepted"].as_u64().unwrap_or(0) >= 1
    });
    let seen = manifest(dir.path());
    child.signal(libc::SIGTERM);
    let started = Instant::now();
    let (status, out, err) = child.wait_exit(Duration::from_secs(60));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        started.elapsed()
    );
    assert!(status.success(), "{err}\n{out}");
    let summary = common::summary(&out);
    assert_eq!(summary["state"], "stopped_early", "{summary}");
    let m = manifest(dir.path());
    assert!(
        m["id"].as_u64() > seen["id"].as_u64(),
        "no snapshot written at the signal: {m}"
    );
    assert!(m["counts"]["accepted"].as_u64() >= seen["counts"]["accepted"].as_u64());
    assert_eq!(summary["snapshot"]["id"], m["id"], "{summary}");
    assert_eq!(m["input"]["complete"], false);
    // The snapshot holds exactly what the summary printed at the signal reports.
    let counts = &m["counts"];
    for key in ["records", "accepted", "pending", "duplicates"] {
        assert_eq!(summary["counts"][key], counts[key], "{key}: {summary}");
    }
    let rejected = counts["rejected"].as_object().unwrap();
    for (reason, n) in summary["counts"]["rejected_by_reason"].as_object().unwrap() {
        let on_disk = rejected.get(reason).cloned().unwrap_or(0.into());
        assert_eq!(*n, on_disk, "{reason}: {summary}");
    }
    let total: u64 = rejected.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(summary["counts"]["rejected"], total);
    // summary.json beside the snapshots is the same object.
    let file = std::fs::read_to_string(dir.path().join("summary.json")).unwrap();
    assert_eq!(common::summary(&file), summary);
    let accepted = counts["accepted"].as_u64().unwrap();
    let pending = counts["pending"].as_u64().unwrap();
    assert!(accepted > 0 && accepted < 10, "accepted {accepted}");
    assert_eq!(accepted + pending, 10);
    // Event-time order reads the whole file first: every line is counted.
    assert_eq!(counts["records"], 19);
}

#[test]
fn an_overflowing_duration_flag_exits_2_with_a_message_not_a_panic() {
    // `Duration::from_secs_f64` used to panic on this (exit 101 and a backtrace).
    let out = storepulse(&["run", "--snapshot-interval", "99999999999999999999999d"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--snapshot-interval") && err.contains("not a duration"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let out = storepulse(&["run", "--allowed-lateness", "40000d"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("100 years"));
}

#[test]
fn query_falls_back_past_a_damaged_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snaps");
    // The older snapshot covers the fixture's first 12 lines, the newer one all of it:
    // every table differs between the two, so tables mixed from both would show.
    let bytes = std::fs::read(golden()).unwrap();
    let part = tmp.path().join("part.csv");
    let head: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').take(13).collect();
    std::fs::write(&part, head.concat()).unwrap();
    run(&part, &dir, &[]);
    let older = common::query_tables(&dir);
    run(&golden(), &dir, &[]);
    let newer = common::query_tables(&dir);
    for (i, (a, b)) in older.iter().zip(&newer).enumerate() {
        assert_ne!(a, b, "table {i} is the same in both snapshots");
    }
    // The newest snapshot (the second run's) loses one table's bytes.
    let newest = dir.join("snap-000002");
    std::fs::write(newest.join("daily_category_sales.parquet"), b"truncated").unwrap();
    let sql = "SELECT SUM(revenue) AS revenue, SUM(orders) AS orders FROM daily_sales";
    let (ok, out, err) = query(&dir, sql);
    assert!(ok, "{err}");
    assert!(
        err.contains("skipping snapshot") && err.contains("daily_category_sales.parquet"),
        "{err}"
    );
    assert!(out.contains("revenue"), "{out}");
    // Every table, the undamaged ones included, is the older snapshot's.
    assert_eq!(common::query_tables(&dir), older);
    // With the older one damaged too, the error names the newest file; no panic.
    std::fs::write(dir.join("snap-000001/rfm.parquet"), b"x").unwrap();
    let (ok, _, err) = query(&dir, sql);
    assert!(!ok);
    assert!(
        err.contains("snap-000002/daily_category_sales.parquet") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn run_reports_input_and_flag_errors_plainly() {
    let out = storepulse(&["run", "--input", "/nonexistent/x.csv", "--no-progress"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the input /nonexistent/x.csv"),
        "{err}"
    );
    let out = storepulse(&["run", "--speed", "10", "--rate", "5"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    let out = storepulse(&["run", "--snapshot-interval", "10x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown time unit"));
}

#[test]
fn speed_paces_by_event_time() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture spans 2020-04-24 11:50:39 to 2020-04-26 21:00:00: 205,761 s of event
    // time, so about 1.03 s at 200,000x. Pacing only ever waits, so this bound is safe.
    let started = Instant::now();
    run(&golden(), dir.path(), &["--speed", "200000"]);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(950), "took only {took:?}");
    assert_eq!(manifest(dir.path())["counts"]["accepted"], 10);
}
