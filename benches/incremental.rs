//! Incremental snapshots of `process`'s partitions against whole ones, on a generated file
//! replayed into a local tansu broker (4 partitions) and consumed at the broker's pace with
//! the default snapshot interval: snapshots written per partition, whole and incremental,
//! bytes per periodic snapshot and in all, the processor's CPU, and the time `query` takes
//! to restore the four partitions from their newest snapshots (base and chain, or whole)
//! and merge them. Then the same for `run` paced at `STOREPULSE_BENCH_RUN_RATE` events a
//! second (default 50,000: about a minute at full size) with a 2 s snapshot interval, and
//! the time `query` takes to read its last incremental snapshot (its chain restored)
//! against its last, whole one.
//!
//! `cargo bench --bench incremental`; `STOREPULSE_BENCH_ROWS=26335210` for 10x (2.37M
//! customers).

mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use std::path::Path;
use std::time::Instant;

const PARTITIONS: i32 = 4;

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

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// The folders holding snapshots in `dir`: its partitions' (`process`), else `dir` (`run`).
fn snapshot_folders(dir: &Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(dir.join("partitions")) {
        Ok(parts) => parts.flatten().map(|p| p.path()).collect(),
        Err(_) => vec![dir.to_path_buf()],
    }
}

/// Every snapshot manifest kept in `dir`'s snapshot folders, with its folder's name.
fn each_manifest(dir: &Path) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for part in snapshot_folders(dir) {
        for snap in std::fs::read_dir(&part).unwrap().flatten() {
            let Ok(text) = std::fs::read_to_string(snap.path().join("manifest.json")) else {
                continue;
            };
            let name = part.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, serde_json::from_str(&text).unwrap()));
        }
    }
    out
}

fn is_incremental(m: &serde_json::Value) -> bool {
    m.get("chain").is_some_and(|c| !c.is_null())
}

/// Every snapshot kept in `dir`: (folder, id, bytes, incremental).
fn manifests(dir: &Path) -> Vec<(String, u64, u64, bool)> {
    let mut out: Vec<_> = each_manifest(dir)
        .into_iter()
        .map(|(folder, m)| {
            let bytes = m["tables"]
                .as_object()
                .unwrap()
                .values()
                .map(|t| t["bytes"].as_u64().unwrap())
                .sum();
            (folder, m["id"].as_u64().unwrap(), bytes, is_incremental(&m))
        })
        .collect();
    out.sort();
    out
}

/// Bytes of the incremental snapshots' files in `dir`, by table.
fn by_table(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for (_, m) in each_manifest(dir).iter().filter(|(_, m)| is_incremental(m)) {
        for (table, t) in m["tables"].as_object().unwrap() {
            *out.entry(table.clone()).or_default() += t["bytes"].as_u64().unwrap();
        }
    }
    out
}

/// Seconds `query` takes to restore every partition's newest snapshot (its chain, for an
/// incremental one), merge and score them (`--max-behind 0s`: the merged view is not
/// read); median of 3. The release binary restores as `process` does, without the broker.
fn restore(dir: &Path) -> f64 {
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = storepulse(&[
            "query",
            "--snapshot-dir",
            dir.to_str().unwrap(),
            "--max-behind",
            "0s",
            "--format",
            "csv",
            "SELECT COUNT(*) AS customers FROM rfm",
        ]);
        times.push(t.elapsed().as_secs_f64());
        assert!(out.lines().nth(1).is_some_and(|n| n != "0"), "{out}");
    }
    common::median(times)
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
    storepulse(&[
        "replay",
        "--input",
        input,
        "--brokers",
        &broker.addr,
        "--max",
        "--no-progress",
        "--compression",
        "none",
    ]);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for (label, every) in [("whole", "0"), ("incremental", "15")] {
        let dir = tmp.path().join(label);
        let cpu = common::cpu_seconds(libc::RUSAGE_CHILDREN);
        let t = Instant::now();
        storepulse(&[
            "process",
            "--brokers",
            &broker.addr,
            "--snapshot-dir",
            dir.to_str().unwrap(),
            "--assign",
            "all",
            "--stop-at-end",
            "--keep-snapshots",
            "100000",
            "--incremental-snapshots",
            every,
            "--kafka-option",
            "compression.type=none",
        ]);
        let wall = t.elapsed().as_secs_f64();
        let cpu = common::cpu_seconds(libc::RUSAGE_CHILDREN) - cpu;
        // Without the merged view, `query` restores the partitions' newest snapshots.
        std::fs::remove_dir_all(dir.join("merged")).unwrap();
        let restored = restore(&dir);
        report(label, &dir, wall, cpu, restored);
    }
    run_paced(input, tmp.path());
}

/// `run` paced, with whole and with incremental snapshots every 2 s.
fn run_paced(input: &str, tmp: &Path) {
    let rate = std::env::var("STOREPULSE_BENCH_RUN_RATE").unwrap_or_else(|_| "50000".into());
    println!("run at {rate} events/s, a snapshot every 2 s:");
    for (label, every) in [("run whole", "0"), ("run incremental", "15")] {
        let dir = tmp.join(label.replace(' ', "-"));
        let cpu = common::cpu_seconds(libc::RUSAGE_CHILDREN);
        let t = Instant::now();
        storepulse(&[
            "run",
            "--input",
            input,
            "--snapshot-dir",
            dir.to_str().unwrap(),
            "--rate",
            &rate,
            "--snapshot-interval",
            "2s",
            "--keep-snapshots",
            "100000",
            "--incremental-snapshots",
            every,
            "--no-progress",
            "--metrics-addr",
            "127.0.0.1:0",
        ]);
        let wall = t.elapsed().as_secs_f64();
        let cpu = common::cpu_seconds(libc::RUSAGE_CHILDREN) - cpu;
        let last_whole = restore(&dir);
        // The last snapshot is whole: without it, `query` reads the last incremental one
        // through its chain (what a reader of a running or killed run does).
        let m = manifests(&dir);
        let newest = m.last().unwrap().1;
        let before = m.iter().rev().nth(1).unwrap();
        if before.3 {
            std::fs::remove_dir_all(dir.join(format!("snap-{newest:06}"))).unwrap();
            std::fs::write(dir.join("LATEST"), format!("snap-{:06}", before.1)).unwrap();
            let chain = restore(&dir);
            println!("  {label}: query on its last, whole snapshot {last_whole:.3} s; on the incremental one before it {chain:.3} s");
        }
        report(label, &dir, wall, cpu, last_whole);
    }
}

fn report(label: &str, dir: &Path, wall: f64, cpu: f64, restored: f64) {
    let tables = by_table(dir);
    let m = manifests(dir);
    let (deltas, wholes): (Vec<_>, Vec<_>) = m.iter().partition(|s| s.3);
    let sum = |v: &[&(String, u64, u64, bool)]| v.iter().map(|s| s.2).sum::<u64>();
    let per = |v: &[&(String, u64, u64, bool)]| mib(sum(v)) / v.len().max(1) as f64;
    // The largest whole snapshot: what every snapshot costs without chains.
    let largest = m.iter().filter(|s| !s.3).map(|s| s.2).max().unwrap_or(0);
    println!(
        "{label:<16} {wall:>6.1} s, {cpu:.1} CPU s; {} snapshots: {} whole ({:.2} MiB each \
         on average, largest {:.2} MiB), {} incremental ({:.3} MiB each on average); {:.1} \
         MiB written in all; restoring (and merging) the newest {restored:.3} s",
        m.len(),
        wholes.len(),
        per(&wholes),
        mib(largest),
        deltas.len(),
        per(&deltas),
        mib(sum(&m.iter().collect::<Vec<_>>())),
    );
    let tables: Vec<String> = tables
        .iter()
        .map(|(t, b)| format!("{t} {:.3}", mib(*b) / deltas.len().max(1) as f64))
        .collect();
    if !deltas.is_empty() {
        println!(
            "  an incremental snapshot's MiB by table: {}",
            tables.join(", ")
        );
    }
}
