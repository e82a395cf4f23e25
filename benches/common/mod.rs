//! Shared by the benches: the versioned full-size generated input and medians.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;

/// A generated file of `rows` lines (seed 2020), made once under `target/bench-data/`.
pub fn data_file(rows: u64) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let version = storepulse::generate::VERSION;
    let path = dir.join(format!("generated-v{version}-{rows}-seed2020.csv"));
    if !path.exists() {
        let t = Instant::now();
        let tmp = path.with_extension("tmp");
        storepulse::generate::write_file(&tmp, rows, 2020).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        eprintln!(
            "generated {} in {:.1}s",
            path.display(),
            t.elapsed().as_secs_f64()
        );
    }
    path
}

/// Rows from `STOREPULSE_BENCH_ROWS`, by default the real log's 2,633,521.
pub fn rows() -> u64 {
    rows_or(2_633_521)
}

/// Rows from `STOREPULSE_BENCH_ROWS`, by default `default`.
pub fn rows_or(default: u64) -> u64 {
    std::env::var("STOREPULSE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The `storepulse` a bench runs: `STOREPULSE_BIN` (e.g. `target/release/storepulse`, to
/// time a release build from a bench compiled by `cargo test --bench X --no-run`), else the
/// one built with the bench.
pub fn bin() -> String {
    std::env::var("STOREPULSE_BIN").unwrap_or(env!("CARGO_BIN_EXE_storepulse").into())
}

/// CPU seconds (user and system) of this process (`libc::RUSAGE_SELF`), or of its
/// waited-for children (`libc::RUSAGE_CHILDREN`).
pub fn cpu_seconds(who: i32) -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}
