//! `storepulse process`: flags, validation into a [`ProcessConfig`], the consuming run and
//! its summary.

use std::path::PathBuf;

use clap::Args;

use super::flags::{core, stall, KafkaArgs, PageArgs, WindowArgs};
use super::{parse_duration, serve_metrics};
use crate::kafka::consume::{self, ProcessConfig};
use crate::snapshot::WindowConfig;

#[derive(Debug, Args)]
pub struct ProcessArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group; processors of one group share the partitions.
    #[arg(long, env = "STOREPULSE_GROUP", default_value = "storepulse")]
    pub group: String,
    /// Static group membership (`group.instance.id`): a processor restarted with the same
    /// id gets its partitions back at once instead of after the session timeout.
    #[arg(long, env = "STOREPULSE_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Folder for the partitions' snapshots (one topic per folder; not the folder of
    /// `run`'s snapshots: the two cannot be merged).
    #[arg(
        long,
        env = "STOREPULSE_SNAPSHOT_DIR",
        default_value = "snapshots-kafka"
    )]
    pub snapshot_dir: PathBuf,
    /// How many snapshots to keep per partition.
    #[arg(long, env = "STOREPULSE_KEEP_SNAPSHOTS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_snapshots: u64,
    /// Incremental snapshots of a partition between two whole ones at most: each holds
    /// only the customers, days and events that changed since the one before (a whole
    /// one comes sooner once they add up to half of it). 0: every snapshot whole.
    #[arg(long, env = "STOREPULSE_INCREMENTAL_SNAPSHOTS", default_value_t = 15)]
    pub incremental_snapshots: u32,
    /// Publish the merged view of all partitions (what `query` and `serve` read) at most
    /// this often while consuming, beside the stream; one more at the end.
    #[arg(long, env = "STOREPULSE_VIEW_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub view_interval: std::time::Duration,
    /// `--tables`: one commit per table per merged view (whichever processor wrote it), and
    /// the last view's at the end.
    #[command(flatten)]
    pub tables: super::flags::TablesArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Take these partitions of the topic without the group's rebalancing: `all`, or a
    /// list such as `0,2,5` (a static assignment, as Flink and Arroyo use: no rebalance
    /// pauses, and a broker outage is only a pause). Processes must not overlap; the group
    /// still receives the committed offsets, for lag monitoring.
    #[arg(long, env = "STOREPULSE_ASSIGN", value_name = "all|P,P,...", value_parser = parse_assignment)]
    pub assign: Option<Assignment>,
    /// Exit once every partition this process owns has reached the replayer's end of input.
    #[arg(long, env = "STOREPULSE_STOP_AT_END")]
    pub stop_at_end: bool,
    /// Serve /metrics, /healthz and /readyz here (port 0: any free port).
    #[arg(
        long,
        env = "STOREPULSE_METRICS_ADDR",
        default_value = "127.0.0.1:9466"
    )]
    pub metrics_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub metrics_hosts: super::flags::MetricsHostArgs,
    #[command(flatten)]
    pub page: PageArgs,
    /// /healthz fails when the processor has made no progress for this long while its
    /// consumer lag is above 0 (0s: never).
    #[arg(long, env = "STOREPULSE_STALL_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub stall_timeout: std::time::Duration,
    /// /readyz fails once the broker has been unreachable this long.
    #[arg(long, env = "STOREPULSE_BROKER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub broker_timeout: std::time::Duration,
    #[command(flatten)]
    pub summary: super::summary::SummaryArgs,
}

/// `--assign`: the partitions, none meaning all.
#[derive(Debug, Clone)]
pub struct Assignment(pub Vec<i32>);

/// `--assign`: `all` (an empty list) or partition numbers.
fn parse_assignment(text: &str) -> Result<Assignment, String> {
    if text.trim() == "all" {
        return Ok(Assignment(Vec::new()));
    }
    let mut v: Vec<i32> = text
        .split(',')
        .map(|p| match p.trim().parse::<i32>() {
            Ok(n) if n >= 0 => Ok(n),
            _ => Err(format!(
                "`{p}` is not a partition number (use `all` or e.g. `0,2,5`)"
            )),
        })
        .collect::<Result<_, _>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(Assignment(v))
}

pub fn process(args: ProcessArgs) -> anyhow::Result<()> {
    let location = crate::snapshot::Location::parse(&args.snapshot_dir)?;
    let tables = match args.tables.policy() {
        Some(policy) => Some(crate::lake::Lake::at(&location)?.with_policy(policy)),
        None => None,
    };
    let (snapshot_dir, remote) = match location {
        crate::snapshot::Location::Dir(dir) => (dir, None),
        crate::snapshot::Location::Bucket(bucket) => (bucket.work_dir(), Some(bucket)),
    };
    let core = core(&args.window);
    let config = ProcessConfig {
        connection: args.kafka.connection()?,
        topic: args.kafka.topic.clone(),
        group: args.group.clone(),
        instance_id: args.instance_id.clone(),
        snapshot_dir,
        remote,
        snapshot_interval: args.window.snapshot_interval(),
        keep_snapshots: args.keep_snapshots as usize,
        incremental: args.incremental_snapshots,
        view_interval: args.view_interval,
        core,
        window: WindowConfig::of(&core, "set by the replayer".into()),
        stop_at_end: args.stop_at_end,
        assignment: args.assign.clone().map(|a| a.0),
        tables,
    };
    crate::metrics::health::get().configure(crate::metrics::health::HealthConfig {
        stall_timeout: stall(args.stall_timeout),
        broker_timeout: args.broker_timeout,
        needs_partitions: true,
    });
    let _metrics = serve_metrics("process", args.metrics_addr, &args.metrics_hosts);
    let _page = args.page.start("process", &args.snapshot_dir);
    let shutdown = crate::shutdown::install(crate::shutdown::DRAIN);
    let start = std::time::Instant::now();
    tracing::info!(
        group = %config.group,
        topic = %config.topic,
        brokers = %config.connection.brokers,
        snapshot_dir = %config.snapshot_dir.display(),
        "processing"
    );
    let outcome = consume::process(config.clone(), shutdown)?;
    let wall = start.elapsed();
    let json = super::summary::process(&outcome, wall, &args.snapshot_dir);
    super::summary::keep(&json, &config.snapshot_dir, config.remote.as_ref())?;
    if config.remote.is_some() {
        // The partitions' snapshots are in the bucket; this folder only staged them.
        let _ = std::fs::remove_dir_all(&config.snapshot_dir);
    }
    if args.summary.json() {
        print!("{}", super::summary::line(&json));
    } else {
        print!("{}", super::text::process(&config, &outcome, wall));
    }
    Ok(())
}
