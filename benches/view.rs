//! A topic's merged view against merging at each query. A generated file split by order id
//! over 4 partitions (as the replayer keys its messages), each part's finished core written
//! as that partition's snapshot, as `process` leaves them; then `storepulse query` through
//! the merge of the partitions (no view yet) and through the view: wall time and peak RSS
//! of the whole command (`/usr/bin/time`), the view's publish time and bytes, and the two
//! answers checked equal. Target: a query through the view under 200 ms at 2.4 M customers.
//!
//! `cargo bench --bench view`; `STOREPULSE_BENCH_ROWS` sets another size (default ten
//! times the real log, 26,335,210 lines, about 2.4 M customers).

mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use std::process::Command;
use std::time::Instant;

use storepulse::aggregate::{Core, CoreConfig};
use storepulse::replay::{read_all, sort_by_event_time, ReaderConfig};
use storepulse::snapshot::{
    partition_dir, view, Counts, InputPosition, SnapshotMeta, SnapshotStore, WindowConfig,
};

const PARTITIONS: u64 = 4;
const REPEAT: usize = 3;
const SQL: &str = "SELECT segment, COUNT(*) AS customers, SUM(monetary) AS monetary \
                   FROM rfm GROUP BY segment ORDER BY segment";

/// `storepulse query` over `dir`: (wall seconds, peak RSS MiB, stdout).
fn query(dir: &std::path::Path) -> (f64, f64, String) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M", &common::bin()])
        .args(["query", "--format", "csv", "--snapshot-dir"])
        .arg(dir)
        .arg(SQL)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let last = err.lines().last().unwrap_or_default();
    let mut f = last.split(' ').map(|v| v.parse::<f64>().unwrap());
    let (wall, kib) = (f.next().unwrap(), f.next().unwrap());
    (wall, kib / 1024.0, String::from_utf8(out.stdout).unwrap())
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let rows = common::rows_or(26_335_210);
    let path = common::data_file(rows);
    let t = Instant::now();
    let mut all = read_all(
        std::fs::File::open(&path).unwrap(),
        &ReaderConfig::default(),
    )
    .unwrap();
    sort_by_event_time(&mut all.events);
    println!(
        "input: {} ({rows} lines), read and sorted in {:.1} s",
        path.display(),
        t.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let t = Instant::now();
    let (mut part_secs, mut part_bytes) = (Vec::new(), 0);
    for p in 0..PARTITIONS {
        let mut core = Core::new(CoreConfig {
            keep_day_customers: true,
            ..CoreConfig::default()
        });
        let mine = all
            .events
            .iter()
            .copied()
            .filter(|e| e.order_id % PARTITIONS == p);
        harness::feed(&mut core, &all.dict, mine);
        core.finish();
        let meta = SnapshotMeta {
            input: InputPosition::Kafka {
                topic: "purchases".into(),
                partition: p as i32,
                partitions: PARTITIONS as i32,
                next_offset: core.accepted() as i64,
                end_of_input: true,
                inputs: Default::default(),
            },
            counts: Counts {
                accepted: core.accepted(),
                ..Counts::default()
            },
            config: WindowConfig::of(&CoreConfig::default(), "2000-01-01T00:00:00Z".into()),
        };
        let w = Instant::now();
        let m = SnapshotStore::open(&partition_dir(dir.path(), "purchases", p as i32), 1)
            .unwrap()
            .write(&core, meta)
            .unwrap();
        part_secs.push(w.elapsed().as_secs_f64());
        part_bytes += m.bytes();
    }
    drop(all);
    println!(
        "partition snapshots: {PARTITIONS} in {:.1} s (writes {:.2} s at most), {:.0} MiB",
        t.elapsed().as_secs_f64(),
        part_secs.iter().cloned().fold(0.0, f64::max),
        part_bytes as f64 / 1048576.0
    );

    let mut merged = Vec::new();
    for _ in 0..REPEAT {
        merged.push(query(dir.path()));
    }
    let t = Instant::now();
    let v = view::publish(dir.path(), false)
        .unwrap()
        .expect("a complete set");
    let publish = t.elapsed().as_secs_f64();
    let mut through = Vec::new();
    for _ in 0..REPEAT {
        through.push(query(dir.path()));
    }
    assert_eq!(
        merged[0].2, through[0].2,
        "the view answers as the merge does"
    );
    println!(
        "merged view: {} customers, published in {publish:.2} s, {:.1} MiB ({} tables)",
        v.customers,
        v.bytes() as f64 / 1048576.0,
        v.tables.len()
    );
    for (name, runs) in [
        ("merge at each query", &merged),
        ("through the view", &through),
    ] {
        let wall: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let rss: Vec<f64> = runs.iter().map(|r| r.1).collect();
        println!(
            "query {name:<20} {:>6.3} s wall (median of {REPEAT}; {:?}), peak RSS {:>6.0} MiB",
            common::median(wall.clone()),
            wall,
            common::median(rss)
        );
    }
}
