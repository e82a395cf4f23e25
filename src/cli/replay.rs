//! `storepulse replay`: flags, validation into a [`ReplayConfig`], the publishing run and
//! its summary.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use storepulse_replay::feed::FeedConfig;

use super::flags::{order, pace, reader, KafkaArgs, PaceArgs};
use super::{parse_duration, serve_metrics};
use crate::kafka::publish::{self, ReplayConfig};

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
    #[arg(long, env = "STOREPULSE_WATERMARK_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub watermark_interval: std::time::Duration,
    /// Partitions of the topic when it has to be created.
    #[arg(long, env = "STOREPULSE_PARTITIONS", default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Messages handed to the producer and not yet acknowledged by the brokers, at most:
    /// beyond it the replay waits for deliveries, so its pace, progress and end are what
    /// the brokers acknowledged (within this many messages).
    #[arg(long, env = "STOREPULSE_MAX_IN_FLIGHT", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
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
    pub metrics_hosts: super::flags::MetricsHostArgs,
    #[command(flatten)]
    pub summary: super::summary::SummaryArgs,
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
        max_in_flight: args.max_in_flight as usize,
    };
    let _metrics = serve_metrics("replay", args.metrics_addr, &args.metrics_hosts);
    let shutdown = crate::shutdown::install("delivering what was sent, with no end of input");
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
        print!("{}", super::text::replay(&config, &outcome));
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
