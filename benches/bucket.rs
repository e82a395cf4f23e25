//! Snapshots in a bucket against a local folder, on the full-size generated file: `run
//! --max` into a folder and into an S3-protocol server on loopback (s3s over a temporary
//! folder, in this process), wall time of the whole run (the difference is the publishing),
//! `query` latency on the latest snapshot from each (median of 3), and the bytes of one
//! snapshot. Both answers are checked equal.
//!
//! `cargo bench --bench bucket`; `STOREPULSE_BENCH_ROWS` sets another size.

mod common;
#[path = "../tests/common/s3.rs"]
mod s3;

use std::time::Instant;

const REPEAT: usize = 3;
const SQL: &str = "SELECT segment, COUNT(*) AS customers, SUM(monetary) AS monetary \
                   FROM rfm GROUP BY segment ORDER BY segment";

fn storepulse(server: &s3::Server, args: &[&str]) -> (f64, String) {
    let t = Instant::now();
    let out = server.command(args).output().unwrap();
    let took = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (took, String::from_utf8(out.stdout).unwrap())
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let rows = common::rows();
    let path = common::data_file(rows);
    let input = path.to_str().unwrap();
    let server = s3::Server::start("bench");
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let local = tmp.path().join("local");
    let local = local.to_str().unwrap();
    let url = server.url("run");
    println!("input: {} ({rows} lines)", path.display());
    let mut local_answer = None;
    for (name, dir) in [
        ("local folder", local),
        ("bucket (s3s, loopback)", url.as_str()),
    ] {
        let mut runs = Vec::new();
        for _ in 0..REPEAT {
            let args = [
                "run",
                "--input",
                input,
                "--max",
                "--no-progress",
                "--snapshot-dir",
                dir,
            ];
            runs.push(storepulse(&server, &args).0);
        }
        let mut queries = Vec::new();
        let mut answer = String::new();
        for _ in 0..REPEAT {
            let (t, out) = storepulse(
                &server,
                &["query", "--format", "csv", "--snapshot-dir", dir, SQL],
            );
            queries.push(t);
            answer = out;
        }
        println!(
            "{name:<24} run --max {:>6.2} s wall (median of {REPEAT}; {runs:.2?}), query {:>6.3} s (median; {queries:.3?})",
            common::median(runs.clone()),
            common::median(queries.clone()),
        );
        if dir == local {
            let m: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(std::path::Path::new(local).join(format!(
                        "{}/manifest.json",
                        std::fs::read_to_string(std::path::Path::new(local).join("LATEST"))
                            .unwrap()
                            .trim()
                    )))
                .unwrap(),
            )
            .unwrap();
            let bytes: u64 = m["tables"]
                .as_object()
                .unwrap()
                .values()
                .map(|t| t["bytes"].as_u64().unwrap())
                .sum();
            println!(
                "{:<24} one snapshot: {:.1} MiB of tables",
                "",
                bytes as f64 / 1048576.0
            );
            local_answer = Some(answer);
        } else {
            assert_eq!(Some(answer), local_answer, "same answer");
            let folder = server.file("run");
            let objects = s3::objects(&folder);
            let bytes: u64 = objects
                .iter()
                .map(|o| std::fs::metadata(folder.join(o)).unwrap().len())
                .sum();
            println!(
                "{:<24} in the bucket: {} objects, {:.1} MiB (the {} kept snapshots, rejected.csv, summary.json)",
                "",
                objects.len(),
                bytes as f64 / 1048576.0,
                objects.iter().filter(|o| o.ends_with("manifest.json")).count()
            );
        }
    }
}
