//! Command-line interface: clap definitions (every flag also reads a `STOREPULSE_…`
//! environment variable), validated once into typed configs, and the commands' output.

mod duration;
mod kafka;
mod run;
mod summary;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use duration::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "storepulse",
    version,
    about = "Streaming analytics for e-commerce purchase logs: exact daily sales and RFM segments"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines on stderr are written: `text` (level, message, fields) or `json` (one
    /// object per line). Which lines: `RUST_LOG` (default `warn,storepulse=info`).
    #[arg(
        long,
        global = true,
        env = "STOREPULSE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay a purchase CSV through the whole pipeline in one process (no broker) and
    /// write snapshots.
    Run(RunArgs),
    /// Publish a purchase CSV to Kafka as JSON purchase events, paced, keyed by order id.
    Replay(kafka::ReplayArgs),
    /// Consume purchase events from Kafka in a consumer group and write snapshots per
    /// partition (resumes exactly from them after a crash or a rebalance).
    Process(kafka::ProcessArgs),
    /// Run SQL over the latest snapshot (merged over partitions for `process`).
    Query(QueryArgs),
    /// Serve the store page (sales, top categories and brands, customers, RFM segments)
    /// and its JSON API from the latest snapshot, following new ones as they land.
    Serve(ServeArgs),
    /// Write a synthetic purchase log in the kz.csv format, calibrated to the real one.
    Generate(GenerateArgs),
    /// A query worker of the store page (started by the page server itself).
    #[command(hide = true)]
    ServeWorker(crate::serve::WorkerArgs),
}

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
    pub page: PageArgs,
    /// Continue an interrupted run from its latest complete snapshot in --snapshot-dir
    /// (same --input, --order and window flags); rejected.csv is continued, not replaced.
    #[arg(long)]
    pub resume: bool,
    /// /healthz fails when the pipeline has made no progress for this long while input is
    /// waiting (0s: never).
    #[arg(long, env = "STOREPULSE_STALL_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub stall_timeout: std::time::Duration,
    #[command(flatten)]
    pub summary: summary::SummaryArgs,
}

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

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Folder the snapshots are in.
    #[arg(long, env = "STOREPULSE_SNAPSHOT_DIR", default_value = "snapshots")]
    pub snapshot_dir: PathBuf,
    /// Output format.
    #[arg(long, env = "STOREPULSE_FORMAT", value_enum, default_value = "table")]
    pub format: crate::query::Format,
    /// The SQL statement (read-only).
    pub sql: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Folder the snapshots are in (of `run` or of `process`).
    #[arg(long, env = "STOREPULSE_SNAPSHOT_DIR", default_value = "snapshots")]
    pub snapshot_dir: PathBuf,
    /// Address of the page (port 0: any free port).
    #[arg(long, env = "STOREPULSE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub limits: PageLimitArgs,
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
    /// A client must send its request headers within this time (a keep-alive connection
    /// left idle this long is closed).
    #[arg(long, env = "STOREPULSE_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: std::time::Duration,
}

impl PageLimitArgs {
    pub fn config(&self) -> crate::serve::PageConfig {
        let defaults = crate::serve::PageConfig::default();
        crate::serve::PageConfig {
            sql_workers: self.sql_concurrency as usize,
            sql_timeout: self.sql_timeout.max(std::time::Duration::from_millis(100)),
            memory_limit: self.query_memory_limit as u64,
            answer_bytes: self.sql_max_bytes,
            allowed_hosts: self.allow_host.clone(),
            connections: crate::http::Limits {
                max_connections: self.http_max_connections as usize,
                header_timeout: self
                    .http_header_timeout
                    .max(std::time::Duration::from_millis(100)),
                ..defaults.connections
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of data lines to write (the real file has 2,633,521).
    #[arg(long, env = "STOREPULSE_ROWS", default_value_t = 50_000)]
    pub rows: u64,
    /// Seed: the same seed and rows give the same file.
    #[arg(long, env = "STOREPULSE_SEED", default_value_t = 2020)]
    pub seed: u64,
    /// Output file.
    #[arg(long, env = "STOREPULSE_OUT")]
    pub out: PathBuf,
}

/// Installs the log subscriber, runs the parsed command; once it ends, removes the
/// temporary folders of the page's query workers if it served the page.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    crate::logs::init(match cli.log_format {
        LogFormat::Text => crate::logs::Format::Text,
        LogFormat::Json => crate::logs::Format::Json,
    });
    let serving = matches!(&cli.command, Command::Serve(_))
        || matches!(&cli.command, Command::Run(a) if a.page.http_addr.is_some())
        || matches!(&cli.command, Command::Process(a) if a.page.http_addr.is_some());
    let result = command(cli);
    if serving {
        crate::serve::remove_own_folders();
    }
    result
}

fn command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Replay(args) => kafka::replay(args),
        Command::Process(args) => kafka::process(args),
        Command::Query(args) => query(args),
        Command::Serve(args) => serve(args),
        Command::ServeWorker(args) => crate::serve::worker::main(args),
        Command::Generate(args) => {
            let stats = crate::generate::write_file(&args.out, args.rows, args.seed)?;
            tracing::info!(
                lines = stats.lines,
                path = %args.out.display(),
                bytes = stats.bytes,
                "wrote the synthetic log"
            );
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let bound = crate::serve::start(
        args.snapshot_dir.clone(),
        args.http_addr,
        args.limits.config(),
    )
    .map_err(|e| anyhow::anyhow!("serving on {}: {e}", args.http_addr))?;
    tracing::info!(
        snapshot_dir = %args.snapshot_dir.display(),
        "store page on http://{bound}/; Ctrl-C stops"
    );
    let shutdown = crate::shutdown::install();
    while !shutdown.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

fn query(args: QueryArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let session = crate::query::Session::open(&args.snapshot_dir).await?;
        let (schema, batches) = session.sql(&args.sql).await?;
        Ok::<_, crate::query::QueryError>(crate::query::render(schema, &batches, args.format)?)
    })?;
    print!("{out}");
    Ok(())
}
