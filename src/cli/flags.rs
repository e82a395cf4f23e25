//! Flag groups that several commands share (pace and order, event-time windows, snapshots,
//! the store page and its limits, the Kafka connection) and what they mean as the
//! pipeline's configs.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use storepulse_replay::{Pace, ReaderConfig};

use super::parse_duration;
use crate::aggregate::CoreConfig;
use crate::ingest::embedded::Order;
use crate::kafka::Connection;

/// How the input is read and paced (`run` and `replay`).
#[derive(Debug, Args)]
pub struct PaceArgs {
    /// Replay N times faster than real (event) time (86400 = one day of history a second).
    #[arg(long, env = "STOREPULSE_SPEED", group = "pace")]
    pub speed: Option<f64>,
    /// Replay at a fixed number of events per second.
    #[arg(long, env = "STOREPULSE_RATE", group = "pace")]
    pub rate: Option<f64>,
    /// Replay as fast as possible (the default).
    #[arg(long, env = "STOREPULSE_MAX", group = "pace")]
    pub max: bool,
    /// Replay order: by event time (reads the whole file first) or in file order.
    #[arg(
        long,
        env = "STOREPULSE_ORDER",
        value_enum,
        default_value = "event-time"
    )]
    pub order: OrderArg,
    /// Lines with an earlier event time are rejected (`event_time_out_of_range`). RFC 3339.
    #[arg(
        long,
        env = "STOREPULSE_MIN_EVENT_TIME",
        default_value = "2000-01-01T00:00:00Z"
    )]
    pub min_event_time: String,
    /// Memory for the events of an event-time replay (e.g. 256MiB, 1GiB); a larger file
    /// is sorted in runs spilled to temporary files and merged, in the same order.
    #[arg(long, env = "STOREPULSE_MEMORY_LIMIT", default_value = "256MiB", value_parser = parse_size)]
    pub memory_limit: usize,
}

/// A size in bytes: a whole number with an optional unit (K, KiB, M, MiB, G, GiB, all
/// powers of 1024), at least 1 MiB.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 256MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        u => return Err(format!("unknown size unit `{u}` (use KiB, MiB or GiB)")),
    };
    let bytes = n
        .checked_mul(1usize << shift)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if bytes < 1 << 20 {
        return Err(format!("`{text}` is less than 1MiB"));
    }
    Ok(bytes)
}

/// `--query-memory-limit`: a size of at least 512 MiB (a worker's own code, threads and
/// allocator arenas take about 250 MiB of address space before any query).
fn parse_query_memory(text: &str) -> Result<usize, String> {
    let bytes = parse_size(text)?;
    if bytes < 512 << 20 {
        return Err(format!("`{text}` is less than 512MiB"));
    }
    Ok(bytes)
}

/// Event-time windows and snapshot timing (`run` and `process`).
#[derive(Debug, Args)]
pub struct WindowArgs {
    /// Write a snapshot this often (wall time), e.g. 10s, 500ms.
    #[arg(long, env = "STOREPULSE_SNAPSHOT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub snapshot_interval: std::time::Duration,
    /// Watermark = highest event time seen minus this.
    #[arg(long, env = "STOREPULSE_MAX_OUT_OF_ORDERNESS", default_value = "1h", value_parser = parse_duration)]
    pub max_out_of_orderness: std::time::Duration,
    /// A day is final (later events are `late_event`) once the watermark passes its end plus this.
    #[arg(long, env = "STOREPULSE_ALLOWED_LATENESS", default_value = "0s", value_parser = parse_duration)]
    pub allowed_lateness: std::time::Duration,
}

impl WindowArgs {
    /// `--snapshot-interval`, at least 10 ms.
    pub fn snapshot_interval(&self) -> std::time::Duration {
        self.snapshot_interval
            .max(std::time::Duration::from_millis(10))
    }
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Folder for snapshots and `rejected.csv`.
    #[arg(long, env = "STOREPULSE_SNAPSHOT_DIR", default_value = "snapshots")]
    pub snapshot_dir: PathBuf,
    /// How many snapshots to keep.
    #[arg(long, env = "STOREPULSE_KEEP_SNAPSHOTS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_snapshots: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OrderArg {
    EventTime,
    File,
}

/// `--http-addr` of `run` and `process`: the store page beside the pipeline.
#[derive(Debug, Args)]
pub struct PageArgs {
    /// Also serve the store page on this address (e.g. 127.0.0.1:8080; port 0: any free
    /// port), from this command's snapshots.
    #[arg(long, env = "STOREPULSE_HTTP_ADDR")]
    pub http_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub limits: PageLimitArgs,
}

impl PageArgs {
    pub fn start(&self, command: &str, dir: &std::path::Path) -> Option<std::net::SocketAddr> {
        let addr = self.http_addr?;
        crate::serve::start_logged(command, dir, addr, self.limits.config())
    }
}

/// Who may read the metrics endpoint.
#[derive(Debug, Args)]
pub struct MetricsHostArgs {
    /// Also answer /metrics, /healthz and /readyz requests that name the server this way
    /// (the `Host` header; IP addresses and `localhost` always work), e.g. the name
    /// Prometheus scrapes (`--metrics-allow-host process`); `*`: any name. Repeatable.
    #[arg(long, env = "STOREPULSE_METRICS_ALLOW_HOST", value_delimiter = ',')]
    pub metrics_allow_host: Vec<String>,
}

/// What the store page may cost and who may use it.
#[derive(Debug, Args)]
pub struct PageLimitArgs {
    /// SQL queries (`POST /api/sql`) running at once, each in a worker process of its own;
    /// more are refused with 429.
    #[arg(long, env = "STOREPULSE_SQL_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub sql_concurrency: u32,
    /// How long one SQL query may run; its worker is then killed and the answer is 504.
    #[arg(long, env = "STOREPULSE_SQL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub sql_timeout: std::time::Duration,
    /// Memory of each query worker process (its address space; DataFusion's pool is half
    /// of it): a query that needs more fails alone. At least 512MiB.
    #[arg(long, env = "STOREPULSE_QUERY_MEMORY_LIMIT", default_value = "2GiB", value_parser = parse_query_memory)]
    pub query_memory_limit: usize,
    /// Disk each SQL query may spill to (sorts, joins and aggregates beyond the memory
    /// pool) in the system's temporary folder, which may itself be memory (tmpfs); a query
    /// that needs more fails with 400. The page's own queries never spill.
    #[arg(long, env = "STOREPULSE_QUERY_SPILL_LIMIT", default_value = "256MiB", value_parser = parse_size)]
    pub query_spill_limit: usize,
    /// Bytes of one SQL answer at most (rows beyond are left out, `truncated`).
    #[arg(long, env = "STOREPULSE_SQL_MAX_BYTES", default_value = "4MiB", value_parser = parse_size)]
    pub sql_max_bytes: usize,
    /// Also answer requests that name the server this way (the `Host` header; IP addresses
    /// and `localhost` always work), e.g. `--allow-host shop.example.com`; `*`: any name
    /// (only behind a proxy that checks it). Repeatable.
    #[arg(long, env = "STOREPULSE_ALLOW_HOST", value_delimiter = ',')]
    pub allow_host: Vec<String>,
    /// Open connections to the page at most; more are answered 503 and closed.
    #[arg(long, env = "STOREPULSE_HTTP_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,
    /// Open connections to the page from one client address at most (raise it behind a
    /// proxy, whose connections all come from one address); more are answered 503.
    #[arg(long, env = "STOREPULSE_HTTP_MAX_CLIENT_CONNECTIONS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_client_connections: u32,
    /// A client must send its request headers within this time (a keep-alive connection
    /// left idle this long is closed).
    #[arg(long, env = "STOREPULSE_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: std::time::Duration,
    /// A topic's merged view is read while the partitions publish newer snapshots, when it
    /// is at most this far behind them (the page names the cut); further behind, or `0s`,
    /// the newest snapshots are merged at each change (seconds at millions of customers).
    #[arg(long, env = "STOREPULSE_MAX_BEHIND", default_value = "10m", value_parser = parse_duration)]
    pub max_behind: std::time::Duration,
}

impl PageLimitArgs {
    pub fn config(&self) -> crate::serve::PageConfig {
        let defaults = crate::serve::PageConfig::default();
        crate::serve::PageConfig {
            sql_workers: self.sql_concurrency as usize,
            sql_timeout: self.sql_timeout.max(std::time::Duration::from_millis(100)),
            memory_limit: self.query_memory_limit as u64,
            spill_limit: self.query_spill_limit as u64,
            answer_bytes: self.sql_max_bytes,
            allowed_hosts: self.allow_host.clone(),
            max_behind: self.max_behind,
            connections: crate::http::Limits {
                max_connections: self.http_max_connections as usize,
                per_client: self.http_max_client_connections as usize,
                header_timeout: self
                    .http_header_timeout
                    .max(std::time::Duration::from_millis(100)),
                ..defaults.connections
            },
        }
    }
}

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
    pub(super) fn connection(&self) -> anyhow::Result<Connection> {
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

/// The pace `--speed`, `--rate` or `--max` asks for.
pub fn pace(args: &PaceArgs) -> anyhow::Result<Pace> {
    Ok(match (args.speed, args.rate) {
        (Some(s), _) if !(s.is_finite() && s > 0.0) => bail!("--speed must be a positive number"),
        (_, Some(r)) if !(r.is_finite() && r > 0.0) => bail!("--rate must be a positive number"),
        (Some(s), _) => Pace::Speed(s),
        (_, Some(r)) => Pace::Rate(r),
        _ => Pace::Max,
    })
}

/// `--min-event-time` as the reader's config.
pub fn reader(args: &PaceArgs) -> anyhow::Result<ReaderConfig> {
    let min = chrono::DateTime::parse_from_rfc3339(&args.min_event_time)
        .with_context(|| format!("--min-event-time `{}` is not RFC 3339", args.min_event_time))?;
    Ok(ReaderConfig {
        min_event_time_us: min.timestamp_micros(),
        ..ReaderConfig::default()
    })
}

/// `--order` as the pipeline's replay order.
pub fn order(args: &PaceArgs) -> Order {
    match args.order {
        OrderArg::EventTime => Order::EventTime,
        OrderArg::File => Order::File,
    }
}

/// The window flags as the aggregate core's config (microseconds, saturating).
pub fn core(args: &WindowArgs) -> CoreConfig {
    let us = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    CoreConfig {
        max_out_of_orderness_us: us(args.max_out_of_orderness),
        allowed_lateness_us: us(args.allowed_lateness),
        ..CoreConfig::default()
    }
}

/// `--stall-timeout`: 0 means never.
pub fn stall(d: std::time::Duration) -> std::time::Duration {
    if d.is_zero() {
        std::time::Duration::MAX
    } else {
        d
    }
}

/// The Delta Lake tables beside the snapshots (`run` and `process`).
#[derive(Debug, Args)]
pub struct TablesArgs {
    /// Also publish the four result tables as Delta Lake tables in <snapshot-dir>/tables/
    /// (readable by Spark, Polars, pandas, DuckDB; `query --as-of` reads their history).
    #[arg(long, env = "STOREPULSE_TABLES")]
    pub tables: bool,
    /// Commit to the tables at most this often while streaming (the last result is always
    /// committed): each commit rewrites the whole `rfm` table.
    #[arg(long, env = "STOREPULSE_TABLES_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub tables_interval: std::time::Duration,
    /// Keep this much of the tables' history (log entries and replaced data files), set
    /// when a table is created.
    #[arg(long, env = "STOREPULSE_TABLES_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub tables_retention: std::time::Duration,
}

impl TablesArgs {
    /// The tables' policy, when `--tables` is on.
    pub fn policy(&self) -> Option<crate::lake::Policy> {
        self.tables.then_some(crate::lake::Policy {
            every: self.tables_interval,
            retention: self.tables_retention,
        })
    }
}
