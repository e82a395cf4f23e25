//! The Delta tables (`--tables`) against the snapshots alone, on the full-size generated
//! file: `run --max` without and with `--tables` (the difference is the last result's
//! publish: four tables, `rfm` whole), the bytes of the tables and of a snapshot, `query`
//! latency on the latest snapshot, on the tables' latest version and on an older one
//! (`--as-of`), and a paced run committing every snapshot with a short retention: versions,
//! log entries and data files kept; and a customer's segment over time from 13 versions of
//! `rfm` (runs over 13 growing prefixes of the file) through the page's API, first look-up
//! and later ones. Answers are checked equal.
//!
//! `cargo bench --bench lake`; `STOREPULSE_BENCH_ROWS` sets another size.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

const REPEAT: usize = 3;
const SQL: &str = "SELECT segment, COUNT(*) AS customers, SUM(monetary) AS monetary \
                   FROM rfm GROUP BY segment ORDER BY segment";

fn storepulse(args: &[&str]) -> (f64, String) {
    let bin = common::bin();
    let t = Instant::now();
    let out = Command::new(bin).args(args).output().unwrap();
    let took = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (took, String::from_utf8(out.stdout).unwrap())
}

/// Bytes of the files below `dir`.
fn bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

fn count(dir: &Path, suffix: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.metadata().unwrap().is_dir() {
            n += count(&e.path(), suffix);
        } else if e.file_name().to_string_lossy().ends_with(suffix) {
            n += 1;
        }
    }
    n
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let rows = common::rows();
    let path = common::data_file(rows);
    let input = path.to_str().unwrap();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    println!("input: {} ({rows} lines)", path.display());
    let run = |dir: &Path, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--input",
            input,
            "--max",
            "--no-progress",
            "--snapshot-dir",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        storepulse(&args).0
    };
    let (mut plain, mut tables) = (Vec::new(), Vec::new());
    for i in 0..REPEAT {
        plain.push(run(&tmp.path().join(format!("plain-{i}")), &[]));
        tables.push(run(&tmp.path().join(format!("tables-{i}")), &["--tables"]));
    }
    let (p, t) = (
        common::median(plain.clone()),
        common::median(tables.clone()),
    );
    println!(
        "run --max {p:.2} s, with --tables {t:.2} s (medians of {REPEAT}; {plain:.2?} {tables:.2?}): \
         the last result's publish {:.2} s",
        t - p
    );
    let dir = tmp.path().join("tables-0");
    let latest = std::fs::read_to_string(dir.join("LATEST")).unwrap();
    let snapshot = bytes(&dir.join(latest.trim()));
    let tables_dir = dir.join("tables");
    println!(
        "bytes: one snapshot {:.1} MiB; the tables after one commit {:.1} MiB (rfm {:.1} MiB)",
        mib(snapshot),
        mib(bytes(&tables_dir)),
        mib(bytes(&tables_dir.join("rfm")))
    );

    // A second run into the same folder: version 2; version 1 is the older one.
    run(&dir, &["--tables"]);
    let d = dir.to_str().unwrap();
    let mut answers = Vec::new();
    for (name, extra) in [
        ("latest snapshot", vec![]),
        ("tables, latest version", vec!["--as-of", "2"]),
        ("tables, older version", vec!["--as-of", "1"]),
    ] {
        let mut times = Vec::new();
        let mut answer = String::new();
        for _ in 0..REPEAT {
            let mut args = vec!["query", "--format", "csv", "--snapshot-dir", d];
            args.extend_from_slice(&extra);
            args.push(SQL);
            let (took, out) = storepulse(&args);
            times.push(took);
            answer = out;
        }
        println!(
            "query {name:<24} {:.3} s (median; {times:.3?})",
            common::median(times.clone())
        );
        answers.push(answer);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "answers differ");

    // Commits at every snapshot of a paced run, a 10 s retention: what stays.
    let small = common::data_file(100_000);
    let paced = tmp.path().join("paced");
    let t = Instant::now();
    storepulse(&[
        "run",
        "--input",
        small.to_str().unwrap(),
        "--rate",
        "2000",
        "--snapshot-interval",
        "100ms",
        "--tables",
        "--tables-interval",
        "0s",
        "--tables-retention",
        "10s",
        "--no-progress",
        "--snapshot-dir",
        paced.to_str().unwrap(),
    ]);
    let rfm = paced.join("tables/rfm");
    let log = rfm.join("_delta_log");
    let mut versions: Vec<u64> = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".json")?.parse().ok()
        })
        .collect();
    versions.sort_unstable();
    println!(
        "paced run ({:.0} s): rfm at version {}, log entries kept {}, checkpoints {}, data files \
         {} ({:.1} MiB), the four tables {:.1} MiB",
        t.elapsed().as_secs_f64(),
        versions.last().unwrap_or(&0),
        versions.len(),
        count(&log, ".checkpoint.parquet"),
        count(&rfm, ".parquet") - count(&log, ".parquet"),
        mib(bytes(&rfm) - bytes(&log)),
        mib(bytes(&paced.join("tables")))
    );
    history_lookup(&path, rows, tmp.path());
}

/// 13 versions of `rfm` (runs over growing prefixes of the input, into one folder), then
/// `GET /api/customer/{id}/history` of the best customer through `serve`: the first look-up
/// (the worker reads the log) and the median of later ones.
fn history_lookup(input: &Path, rows: u64, tmp: &Path) {
    use std::io::{BufRead, Write};
    let dir = tmp.join("history");
    let prefix = tmp.join("prefix.csv");
    for k in 1..=13u64 {
        // Lines as bytes: the generated file has lines that are not UTF-8 on purpose.
        let lines = std::io::BufReader::new(std::fs::File::open(input).unwrap()).split(b'\n');
        let mut out = std::io::BufWriter::new(std::fs::File::create(&prefix).unwrap());
        for line in lines.take((1 + rows * k / 13) as usize) {
            out.write_all(&line.unwrap()).unwrap();
            out.write_all(b"\n").unwrap();
        }
        out.flush().unwrap();
        drop(out);
        storepulse(&[
            "run",
            "--input",
            prefix.to_str().unwrap(),
            "--max",
            "--no-progress",
            "--tables",
            "--snapshot-dir",
            dir.to_str().unwrap(),
        ]);
    }
    let d = dir.to_str().unwrap();
    let best = "SELECT CAST(user_id AS VARCHAR) AS id FROM rfm ORDER BY monetary DESC LIMIT 1";
    let id = storepulse(&["query", "--format", "csv", "--snapshot-dir", d, best]).1;
    let id = id.lines().nth(1).unwrap().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let bin = common::bin();
    let mut serve = Command::new(bin)
        .args(["serve", "--snapshot-dir", d, "--http-addr", &addr])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str| -> Option<(f64, String)> {
        let t = Instant::now();
        let mut reply = ureq::get(&format!("http://{addr}{path}")).call().ok()?;
        let body = reply.body_mut().read_to_string().ok()?;
        Some((t.elapsed().as_secs_f64(), body))
    };
    let mut ready = false;
    for _ in 0..600 {
        if get("/readyz").is_some() {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ready, "serve never became ready");
    let path = format!("/api/customer/{id}/history");
    let (first, body) = get(&path).expect("the history");
    let points: serde_json::Value = serde_json::from_str(&body).unwrap();
    let n = points["points"].as_array().map_or(0, Vec::len);
    let later: Vec<f64> = (0..5).map(|_| get(&path).expect("the history").0).collect();
    println!(
        "a customer's segment over time ({n} versions of rfm): first look-up {first:.3} s, later \
         {:.3} s (median; {later:.3?})",
        common::median(later.clone())
    );
    serve.kill().ok();
    serve.wait().ok();
}
