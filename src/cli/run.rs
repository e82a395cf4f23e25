//! `storepulse run`: validates the flags into a [`RunConfig`], runs the embedded pipeline
//! and prints the summary.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::flags::{
    core, order, pace, reader, stall, PaceArgs, PageArgs, SnapshotArgs, WindowArgs,
};
use super::{parse_duration, serve_metrics};
use crate::ingest::embedded::{self, RunConfig};
use crate::snapshot::Location;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Input CSV (kz.csv format; columns found by header name).
    #[arg(long, env = "STOREPULSE_INPUT", default_value = "data/sample.csv")]
    pub input: PathBuf,
    #[command(flatten)]
    pub snapshots: SnapshotArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    /// No progress bar, even on a terminal.
    #[arg(long, env = "STOREPULSE_NO_PROGRESS")]
    pub no_progress: bool,
    /// Serve /metrics, /healthz and /readyz here (port 0: any free port).
    #[arg(
        long,
        env = "STOREPULSE_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub metrics_hosts: super::flags::MetricsHostArgs,
    #[command(flatten)]
    pub page: PageArgs,
    /// Continue an interrupted run from its latest complete snapshot in --snapshot-dir
    /// (same --input, --order and window flags); rejected.csv is continued, not replaced.
    #[arg(long)]
    pub resume: bool,
    /// Incremental snapshots between two whole ones at most: each holds only the
    /// customers and days that changed since the one before (a whole one comes sooner once
    /// they add up to half of it; the run's last snapshot is always whole). 0: every
    /// snapshot whole.
    #[arg(long, env = "STOREPULSE_INCREMENTAL_SNAPSHOTS", default_value_t = 15)]
    pub incremental_snapshots: u32,
    /// `--tables`: one commit per table per snapshot (at most one per interval).
    #[command(flatten)]
    pub tables: super::flags::TablesArgs,
    /// /healthz fails when the pipeline has made no progress for this long while input is
    /// waiting (0s: never).
    #[arg(long, env = "STOREPULSE_STALL_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub stall_timeout: std::time::Duration,
    #[command(flatten)]
    pub summary: super::summary::SummaryArgs,
}

pub fn config(args: &RunArgs) -> anyhow::Result<RunConfig> {
    let (snapshot_dir, remote) = match Location::parse(&args.snapshots.snapshot_dir)? {
        Location::Dir(dir) => (dir, None),
        Location::Bucket(bucket) => (bucket.work_dir(), Some(bucket)),
    };
    Ok(RunConfig {
        input: args.input.clone(),
        snapshot_dir,
        snapshot_interval: args.window.snapshot_interval(),
        keep_snapshots: args.snapshots.keep_snapshots as usize,
        incremental: args.incremental_snapshots,
        pace: pace(&args.pace)?,
        order: order(&args.pace),
        reader: reader(&args.pace)?,
        core: core(&args.window),
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        resume: args.resume,
        memory_limit: args.pace.memory_limit,
        remote,
        tables: args.tables.policy(),
    })
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = config(&args)?;
    let health = crate::metrics::health::get();
    health.configure(crate::metrics::health::HealthConfig {
        stall_timeout: stall(args.stall_timeout),
        broker_timeout: std::time::Duration::MAX,
        needs_partitions: false,
    });
    // The input is waiting until the run ends: the driver snapshots every interval even
    // when nothing is due, so a healthy run reports progress at least that often.
    health.input_waiting(true);
    if config.resume {
        crate::metrics::events::RunResumed.emit();
    }
    let _metrics = serve_metrics("run", args.metrics_addr, &args.metrics_hosts);
    let _page = args.page.start("run", &config.snapshot_dir);
    let shutdown = crate::shutdown::install(crate::shutdown::DRAIN);
    let start = Instant::now();
    crate::metrics::set_ready(true);
    let outcome = embedded::run(&config, shutdown)?;
    let wall = start.elapsed();
    let json = super::summary::run(&outcome, wall, &config.snapshot_dir);
    super::summary::keep(&json, &config.snapshot_dir, config.remote.as_ref())?;
    if config.remote.is_some() {
        let _ = std::fs::remove_dir_all(&config.snapshot_dir);
    }
    if args.summary.json() {
        print!("{}", super::summary::line(&json));
        return Ok(());
    }
    print!("{}", super::text::run(&outcome, wall.as_secs_f64()));
    let (dir, rejected) = match &config.remote {
        Some(bucket) => (
            bucket.url.clone(),
            format!(
                "{}/rejected/, in the pieces each manifest lists",
                bucket.url
            ),
        ),
        None => {
            let dir = config.snapshot_dir.display().to_string();
            (dir.clone(), format!("{dir}/rejected.csv"))
        }
    };
    println!("snapshots in {dir}/ (rejected lines in {rejected}); try:");
    let flag = if args.snapshots.snapshot_dir == std::path::Path::new("snapshots") {
        String::new()
    } else {
        format!("--snapshot-dir {dir} ")
    };
    println!("  storepulse query {flag}\"SELECT segment, COUNT(*) AS customers FROM rfm GROUP BY segment ORDER BY customers DESC\"");
    Ok(())
}
