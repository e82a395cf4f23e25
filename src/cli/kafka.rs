//! `storepulse replay` and `storepulse process`: flags, validation into the Kafka
//! configs, and their summaries.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use super::run::{core, day_string, order, pace, reader};
use super::{PaceArgs, WindowArgs};
use crate::aggregate::day_of;
use crate::kafka::consume::{self, ProcessConfig, ProcessOutcome};
use crate::kafka::publish::{self, ReplayConfig, ReplayOutcome};
use crate::kafka::Connection;
use crate::snapshot::manifest::rfc3339;
use crate::snapshot::WindowConfig;
use storepulse_replay::feed::FeedConfig;

/// Where the brokers are and which topic to use.
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "STOREPULSE_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic of the purchase events; dead letters go to `<topic>.rejected`.
    #[arg(long, env = "STOREPULSE_TOPIC", default_value = "purchases")]
    pub topic: String,
    /// Extra librdkafka client property, KEY=VALUE (repeatable), e.g.
    /// `--kafka-option security.protocol=ssl`.
    #[arg(
        long = "kafka-option",
        value_name = "KEY=VALUE",
        env = "STOREPULSE_KAFKA_OPTIONS",
        value_delimiter = ';'
    )]
    pub options: Vec<String>,
}

impl KafkaArgs {
    fn connection(&self) -> anyhow::Result<Connection> {
        let options = self
            .options
            .iter()
            .map(|o| match o.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().into(), v.trim().into())),
                _ => bail!("--kafka-option `{o}` is not KEY=VALUE"),
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Connection {
            brokers: self.brokers.clone(),
            options,
        })
    }
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Input CSV (kz.csv format; columns found by header name).
    #[arg(long, env = "STOREPULSE_INPUT", default_value = "data/sample.csv")]
    pub input: PathBuf,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
    /// Publish at most this many events.
    #[arg(long, env = "STOREPULSE_LIMIT")]
    pub limit: Option<u64>,
    /// Replay the file N times, each pass shifted forward by the file's span (whole days).
    #[arg(long = "loop", env = "STOREPULSE_LOOP", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub passes: u32,
    /// Wall time between two watermarks of an event-time replay (every partition gets one:
    /// the days before it become final, in partitions without events too).
    #[arg(long, env = "STOREPULSE_WATERMARK_INTERVAL", default_value = "1s", value_parser = super::parse_duration)]
    pub watermark_interval: std::time::Duration,
    /// Partitions of the topic when it has to be created.
    #[arg(long, env = "STOREPULSE_PARTITIONS", default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Producer compression: lz4, zstd, snappy, gzip or none.
    #[arg(long, env = "STOREPULSE_COMPRESSION", default_value = "lz4")]
    pub compression: String,
    /// No progress bar, even on a terminal.
    #[arg(long, env = "STOREPULSE_NO_PROGRESS")]
    pub no_progress: bool,
    /// Serve /metrics, /healthz and /readyz here (port 0: any free port).
    #[arg(
        long,
        env = "STOREPULSE_METRICS_ADDR",
        default_value = "127.0.0.1:9465"
    )]
    pub metrics_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub summary: super::summary::SummaryArgs,
}

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
    pub page: super::PageArgs,
    /// /healthz fails when the processor has made no progress for this long while its
    /// consumer lag is above 0 (0s: never).
    #[arg(long, env = "STOREPULSE_STALL_TIMEOUT", default_value = "60s", value_parser = super::parse_duration)]
    pub stall_timeout: std::time::Duration,
    /// /readyz fails once the broker has been unreachable this long.
    #[arg(long, env = "STOREPULSE_BROKER_TIMEOUT", default_value = "30s", value_parser = super::parse_duration)]
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

pub fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let config = ReplayConfig {
        connection: args.kafka.connection()?,
        topic: args.kafka.topic.clone(),
        partitions: args.partitions,
        compression: args.compression.clone(),
        feed: FeedConfig {
            input: args.input.clone(),
            pace: pace(&args.pace)?,
            order: order(&args.pace),
            reader: reader(&args.pace)?,
            passes: args.passes,
            limit: args.limit,
            progress: !args.no_progress && std::io::stderr().is_terminal(),
            skip: Default::default(),
            memory_limit: args.pace.memory_limit,
        },
        watermark_interval: args.watermark_interval,
    };
    let _metrics = super::run::serve_metrics("replay", args.metrics_addr);
    let shutdown = crate::shutdown::install();
    crate::metrics::set_ready(true);
    let outcome = publish::replay(&config, &shutdown).with_context(|| {
        format!(
            "replaying {} to {}",
            args.input.display(),
            args.kafka.brokers
        )
    })?;
    if args.summary.json() {
        let json = super::summary::replay(&config.feed.input, &config.topic, &outcome);
        print!("{}", super::summary::line(&json));
    } else {
        print!("{}", replay_summary(&config, &outcome));
    }
    if outcome.failed > 0 {
        bail!(
            "{} messages could not be delivered (last error: {})",
            outcome.failed,
            outcome.last_error.as_deref().unwrap_or("unknown")
        );
    }
    Ok(())
}

pub fn replay_summary(config: &ReplayConfig, o: &ReplayOutcome) -> String {
    let mut s = String::new();
    let state = match o.end {
        publish::End::Sent | publish::End::NoEvents => "complete",
        publish::End::Limited => "partial (--limit)",
        publish::End::Stopped => "stopped early",
        publish::End::Failed => "incomplete (deliveries failed)",
    };
    let wall = o.wall.as_secs_f64().max(1e-9);
    let _ = writeln!(
        s,
        "storepulse replay: {state}; {} -> {} ({} partitions), source {:016x}",
        config.feed.input.display(),
        config.topic,
        o.partitions,
        o.source
    );
    let _ = writeln!(
        s,
        "lines          {:>12}  (+{} blank)",
        o.read.records, o.read.blank
    );
    let _ = writeln!(
        s,
        "  accepted     {:>12}  ({} repaired column shifts)",
        o.read.accepted, o.read.repaired
    );
    let _ = writeln!(
        s,
        "  rejected     {:>12}  (dead letters on {})",
        o.read.rejected.total(),
        crate::kafka::dead_letter_topic(&config.topic)
    );
    for (reason, n) in o.read.rejected.iter() {
        let _ = writeln!(s, "    {:<26} {n:>8}", reason.as_str());
    }
    let _ = writeln!(
        s,
        "events sent    {:>12}  ({:.0} events/s over {:.2}s)",
        o.events_sent,
        o.events_sent as f64 / wall,
        wall
    );
    if let (Some(a), Some(b)) = (o.feed.first_event_us, o.feed.last_event_us) {
        let span = (b - a) as f64 / 1e6;
        let emit = o.feed.emit_wall.as_secs_f64().max(1e-9);
        let _ = writeln!(
            s,
            "event time     {} .. {}  ({:.0}x real time, {:.0} events/s while paced)",
            rfc3339(a),
            rfc3339(b),
            span / emit,
            o.events_sent as f64 / emit
        );
    }
    let _ = writeln!(
        s,
        "delivered      {:>12}  messages ({} failed)",
        o.delivered, o.failed
    );
    if let Some(w) = o.last_watermark_us {
        let _ = writeln!(
            s,
            "watermarks     {:>12}  (the last at {})",
            o.watermarks,
            rfc3339(w)
        );
    }
    let _ = writeln!(s, "end of input   {}", o.end.describe());
    s
}

pub fn process(args: ProcessArgs) -> anyhow::Result<()> {
    let core = core(&args.window);
    let config = ProcessConfig {
        connection: args.kafka.connection()?,
        topic: args.kafka.topic.clone(),
        group: args.group.clone(),
        instance_id: args.instance_id.clone(),
        snapshot_dir: args.snapshot_dir.clone(),
        snapshot_interval: args.window.snapshot_interval(),
        keep_snapshots: args.keep_snapshots as usize,
        core,
        window: WindowConfig::of(&core, "set by the replayer".into()),
        stop_at_end: args.stop_at_end,
        assignment: args.assign.clone().map(|a| a.0),
    };
    crate::metrics::health::get().configure(crate::metrics::health::HealthConfig {
        stall_timeout: super::run::stall(args.stall_timeout),
        broker_timeout: args.broker_timeout,
        needs_partitions: true,
    });
    let _metrics = super::run::serve_metrics("process", args.metrics_addr);
    let _page = args.page.start("process", &args.snapshot_dir);
    let shutdown = crate::shutdown::install();
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
    let json = super::summary::process(&outcome, wall, &config.snapshot_dir);
    crate::snapshot::write_summary(&config.snapshot_dir, super::summary::line(&json).as_bytes())
        .context("writing the summary")?;
    if args.summary.json() {
        print!("{}", super::summary::line(&json));
    } else {
        print!("{}", process_summary(&config, &outcome, wall));
    }
    Ok(())
}

fn process_summary(
    config: &ProcessConfig,
    o: &ProcessOutcome,
    wall: std::time::Duration,
) -> String {
    let mut s = String::new();
    let wall = wall.as_secs_f64().max(1e-9);
    let busy = match (o.first_message, o.last_message) {
        (Some(a), Some(b)) => (b - a).as_secs_f64().max(1e-9),
        _ => wall,
    };
    let _ = writeln!(
        s,
        "storepulse process: stopped after {wall:.2}s; {} messages in {busy:.2}s from first to last ({:.0}/s)",
        o.messages,
        o.messages as f64 / busy,
    );
    let _ = writeln!(
        s,
        "snapshots      {:>12}  (longest {:.3}s)",
        o.snapshots,
        o.longest_snapshot.as_secs_f64()
    );
    for (p, m) in &o.last {
        let c = &m.counts;
        let rejected: u64 = c.rejected.values().sum();
        let last_day = m
            .as_of_us
            .map(|t| day_string(day_of(t)))
            .unwrap_or_default();
        let offset = match &m.input {
            crate::snapshot::InputPosition::Kafka { next_offset, .. } => *next_offset,
            _ => 0,
        };
        let _ = writeln!(
            s,
            "  partition {p:>3}: next offset {offset:>9}, accepted {:>9}, duplicates {:>7}, rejected {:>6}, up to {last_day}",
            c.accepted, c.duplicates, rejected
        );
    }
    if !o.not_final.is_empty() {
        let _ = writeln!(
            s,
            "  partitions {:?}: no final snapshot (dead letters not delivered); the previous one stands",
            o.not_final
        );
    }
    let dir = config.snapshot_dir.display();
    let _ = writeln!(s, "snapshots in {dir}/partitions/; the merged tables:");
    let _ = writeln!(
        s,
        "  storepulse query --snapshot-dir {dir} \"SELECT day, revenue, orders FROM daily_sales ORDER BY day DESC LIMIT 7\""
    );
    s
}
