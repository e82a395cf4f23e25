//! Reading a topic while it streams: two processors (`--assign 0,1` and `2,3`) consume a
//! replay of the file into a bucket (an S3-protocol server on loopback in this process,
//! tansu with memory storage), and meanwhile `storepulse query` runs every two seconds and
//! `serve` on the same bucket is asked for its overview: wall time of each, and what the
//! query read (a merged view behind the newest snapshots, the newest, or a merge of the
//! partitions). Target: under 200 ms while the processors stream, at 2.4 M customers (the
//! 10x file). At the end, the tables read from the bucket equal `run` on the same file.
//!
//! `cargo bench --bench streaming`; `STOREPULSE_BENCH_ROWS` sets another size (default
//! ten times the real log, 26,335,210 lines); `STOREPULSE_BIN` another `storepulse` binary
//! (e.g. a release build, with this bench built by `cargo test --bench streaming --no-run`).

mod common;
#[path = "../tests/common/mod.rs"]
mod harness;
#[path = "../tests/common/s3.rs"]
mod s3;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SQL: &str = "SELECT segment, COUNT(*) AS customers, SUM(monetary) AS monetary \
                   FROM rfm GROUP BY segment ORDER BY segment";
use harness::TABLE_QUERIES as TABLES;

/// Runs `cmd`, insisting on success.
fn ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn exe() -> Command {
    Command::new(common::bin())
}

/// What one query read, from what it said on stderr.
fn read_kind(stderr: &str) -> &'static str {
    if stderr.contains("read merged view") {
        "view behind"
    } else if stderr.contains("merged the newest snapshots") {
        "merge"
    } else {
        "view, newest"
    }
}

fn stats(name: &str, mut v: Vec<f64>) {
    if v.is_empty() {
        println!("{name}: none");
        return;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name}: {} queries, median {:.3} s, p90 {:.3} s, worst {:.3} s",
        v.len(),
        at(0.5),
        at(0.9),
        v[v.len() - 1]
    );
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let rows = common::rows_or(26_335_210);
    let input = common::data_file(rows);
    let broker = harness::kafka::Broker::start();
    broker.create_topic("purchases", 4);
    let server = s3::Server::start("bench");
    let url = server.url("stream");
    println!(
        "input: {} ({rows} lines); tansu on {}",
        input.display(),
        broker.addr
    );

    // Each command's stderr in a file of its own, said at the end.
    let logs = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = |name: &str| std::fs::File::create(logs.path().join(name)).unwrap();
    let processor = |parts: &str| -> Child {
        let mut cmd = exe();
        cmd.args(["process", "--brokers", &broker.addr, "--snapshot-dir", &url])
            .args([
                "--assign",
                parts,
                "--stop-at-end",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .envs(server.env())
            .stdout(Stdio::null())
            .stderr(log(&format!("process-{parts}.log")));
        cmd.spawn().unwrap()
    };
    let started = Instant::now();
    let mut processors = [processor("0,1"), processor("2,3")];
    let mut replay = exe()
        .args([
            "replay",
            "--input",
            input.to_str().unwrap(),
            "--brokers",
            &broker.addr,
        ])
        .args(["--max", "--no-progress", "--compression", "none"])
        .stdout(Stdio::null())
        .stderr(log("replay.log"))
        .spawn()
        .unwrap();
    let page = format!("127.0.0.1:{}", harness::spawn::free_port());
    let mut serve = exe()
        .args(["serve", "--snapshot-dir", &url, "--http-addr", &page])
        .envs(server.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut by_kind: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let mut overview = Vec::new();
    let mut replayed = None;
    let limit = Duration::from_secs(3600);
    while processors
        .iter_mut()
        .any(|p| p.try_wait().unwrap().is_none())
    {
        assert!(
            started.elapsed() < limit,
            "processors still running after an hour"
        );
        if replayed.is_none() && replay.try_wait().unwrap().is_some() {
            replayed = Some(started.elapsed());
        }
        let t = Instant::now();
        let out = exe()
            .args(["query", "--format", "csv", "--snapshot-dir", &url, SQL])
            .envs(server.env())
            .output()
            .unwrap();
        let wall = t.elapsed().as_secs_f64();
        if out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            by_kind.entry(read_kind(&said)).or_default().push(wall);
        }
        let t = Instant::now();
        let (status, _, _) = harness::http::get(&page, "/api/overview");
        if status == 200 {
            overview.push(t.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_secs(2).saturating_sub(t.elapsed()));
    }
    let streamed = started.elapsed();
    for p in &mut processors {
        assert!(p.wait().unwrap().success(), "a processor failed");
    }
    let _ = replay.wait();
    for name in ["replay.log", "process-0,1.log", "process-2,3.log"] {
        let text = std::fs::read_to_string(logs.path().join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        println!("{name}, last lines:");
        for l in &lines[lines.len().saturating_sub(4)..] {
            println!("  {l}");
        }
    }
    let _ = serve.kill();
    let _ = serve.wait();
    println!(
        "replayed in {:.0} s, processed in {:.0} s",
        replayed.unwrap_or(streamed).as_secs_f64(),
        streamed.as_secs_f64()
    );
    for (kind, v) in by_kind {
        stats(&format!("query while streaming, {kind}"), v);
    }
    // The first answer waits for the page's first snapshot to be opened and its overview
    // computed; later ones find an overview ready (a newer snapshot is shown only once its
    // overview is).
    match overview.split_first() {
        Some((first, rest)) => {
            println!("page overview while streaming, the first answer: {first:.3} s");
            stats(
                "page overview while streaming, after the first",
                rest.to_vec(),
            );
        }
        None => println!("page overview while streaming: none"),
    }
    // The same query once the processors are done (the final view, nothing else running).
    let idle: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            ok(exe()
                .args(["query", "--format", "csv", "--snapshot-dir", &url, SQL])
                .envs(server.env()));
            t.elapsed().as_secs_f64()
        })
        .collect();
    stats("query after the stream, idle", idle);

    // The end: the bucket's tables equal `run` on the same file.
    let local = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    ok(exe()
        .args([
            "run",
            "--input",
            input.to_str().unwrap(),
            "--max",
            "--no-progress",
        ])
        .arg("--snapshot-dir")
        .arg(local.path()));
    for sql in TABLES {
        let q = |dir: &str, env: bool| {
            let mut cmd = exe();
            cmd.args(["query", "--format", "csv", "--snapshot-dir", dir, sql]);
            if env {
                cmd.envs(server.env());
            }
            ok(&mut cmd).stdout
        };
        let want = q(local.path().to_str().unwrap(), false);
        assert!(want == q(&url, true), "{sql}: the bucket differs from run");
    }
    println!("final tables from the bucket equal run's: yes");
}
