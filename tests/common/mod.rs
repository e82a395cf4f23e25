//! Helpers for tests that drive the real `storepulse` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub fn storepulse(args: &[&str]) -> Output {
    spawn::storepulse_command(args)
        .output()
        .expect("run storepulse")
}

/// Whether one line of the log `log` contains every one of `parts` (a log line is a
/// message followed by its fields, `name=value`).
pub fn said(log: &str, parts: &[&str]) -> bool {
    log.lines().any(|l| parts.iter().all(|p| l.contains(p)))
}

/// The address in the first line of stderr, `... metrics on http://ADDR/metrics ...`.
pub fn metrics_address_in(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("metrics on http://")?;
    let (addr, _) = rest.split_once("/metrics")?;
    Some(addr.to_string())
}

/// Runs and insists on success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = storepulse(args);
    assert!(
        out.status.success(),
        "storepulse {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

pub fn query_csv(dir: &Path, sql: &str) -> String {
    ok(&[
        "query",
        "--snapshot-dir",
        dir.to_str().unwrap(),
        "--format",
        "csv",
        sql,
    ])
}

/// `run` of `input` into `dir` with `extra` flags; insists on success, returns stdout.
pub fn run(input: &Path, dir: &Path, extra: &[&str]) -> String {
    ok(&run_args(input, dir, extra))
}

/// The same `run` in the background (named `run` in messages).
pub fn spawn_run(input: &Path, dir: &Path, extra: &[&str]) -> spawn::Proc {
    spawn::Proc::spawn("run", &run_args(input, dir, extra))
}

/// `serve` of `dir` on `addr`, once it listens there (for at most `limit`).
pub fn serve(dir: &Path, addr: &str, limit: Duration) -> spawn::Proc {
    let args = [
        "serve",
        "--snapshot-dir",
        dir.to_str().unwrap(),
        "--http-addr",
        addr,
    ];
    spawn::Proc::serving("serve", &args, addr, limit)
}

fn run_args<'a>(input: &'a Path, dir: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--input",
        input.to_str().unwrap(),
        "--snapshot-dir",
        dir.to_str().unwrap(),
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    args
}

/// `run` with `--summary json`: its summary, checked against the schema.
pub fn run_json(input: &Path, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--summary", "json"];
    args.extend_from_slice(extra);
    summary(&run(input, dir, &args))
}

/// A `--summary json` stdout: exactly one JSON object, valid against
/// `schemas/summary.schema.json`.
pub fn summary(stdout: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stdout}"));
    let errors = summary_errors(&v);
    assert!(errors.is_empty(), "{v}: {errors:?}");
    v
}

/// What `schemas/summary.schema.json` finds wrong with `v`.
pub fn summary_errors(v: &serde_json::Value) -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/summary.schema.json"
    ))
    .unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    validator.iter_errors(v).map(|e| e.to_string()).collect()
}

/// A count of a summary (`counts.<key>`).
pub fn count(summary: &serde_json::Value, key: &str) -> u64 {
    summary["counts"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no counts.{key} in {summary}"))
}

pub fn manifest(dir: &Path) -> serde_json::Value {
    let latest = std::fs::read_to_string(dir.join("LATEST")).unwrap();
    let text = std::fs::read_to_string(dir.join(latest.trim()).join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The four query tables, fully ordered, as CSV.
pub fn query_tables(dir: &Path) -> Vec<String> {
    TABLE_QUERIES
        .iter()
        .map(|sql| query_csv(dir, sql))
        .collect()
}

/// The four tables of a topic's folder read from its partitions' newest snapshots
/// (`--max-behind 0s`: never through a merged view behind them).
pub fn newest_tables(dir: &Path) -> Vec<String> {
    TABLE_QUERIES
        .iter()
        .map(|sql| {
            let d = dir.to_str().unwrap();
            ok(&[
                "query",
                "--snapshot-dir",
                d,
                "--format",
                "csv",
                "--max-behind",
                "0s",
                sql,
            ])
        })
        .collect()
}

/// Every row of the four tables, in one order.
pub const TABLE_QUERIES: [&str; 4] = [
    "SELECT * FROM daily_sales ORDER BY day",
    "SELECT * FROM daily_category_sales ORDER BY day, category_code NULLS FIRST",
    "SELECT * FROM daily_brand_sales ORDER BY day, brand NULLS FIRST",
    "SELECT * FROM rfm ORDER BY user_id",
];

/// Feeds events read with `dict`'s symbols to `core`, mapping names to the core's own.
pub fn feed(
    core: &mut storepulse::aggregate::Core,
    dict: &storepulse::replay::Dictionary,
    events: impl IntoIterator<Item = storepulse::replay::PurchaseEvent>,
) {
    use storepulse::replay::{PurchaseEvent, Sym};
    let remap: Vec<Sym> = (0..dict.len())
        .map(|i| core.intern_name(dict.name(Sym(i as u32))))
        .collect();
    for e in events {
        core.record(&PurchaseEvent {
            category: e.category.map(|s| remap[s.0 as usize]),
            brand: e.brand.map(|s| remap[s.0 as usize]),
            ..e
        });
    }
}

/// Installs Debian packages (as `.ci/run` does), for a test whose tool is missing.
pub fn apt_install(packages: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {packages}"
        ))
        .status()
        .expect("apt-get");
    assert!(status.success(), "could not install {packages}");
}

pub mod browser;
pub mod http;
pub mod kafka;
pub mod kafka_cases;
pub mod procfs;
pub mod prometheus;
pub mod spawn;
pub mod wait;

/// A generated input of `rows` lines (`storepulse generate`) at `dir/input.csv`.
pub fn generate(dir: &Path, rows: u64, seed: u64) -> PathBuf {
    let input = dir.join("input.csv");
    ok(&[
        "generate",
        "--rows",
        &rows.to_string(),
        "--seed",
        &seed.to_string(),
        "--out",
        input.to_str().unwrap(),
    ]);
    input
}

/// Polls `dir`'s latest manifest until `done` holds, for at most `limit`.
pub fn wait_for_manifest(dir: &Path, limit: Duration, done: impl Fn(&serde_json::Value) -> bool) {
    wait::wait_until_ok(
        limit,
        format_args!("a manifest in {}", dir.display()),
        || {
            let m = std::fs::read_to_string(dir.join("LATEST"))
                .ok()
                .and_then(|name| std::fs::read(dir.join(name.trim()).join("manifest.json")).ok())
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
            match m {
                Some(m) if done(&m) => Ok(()),
                m => Err(format!("{m:?}")),
            }
        },
    );
}
