//! Command-line interface: clap definitions (every flag also reads a `STOREPULSE_…`
//! environment variable), validated once into typed configs, and the commands' output.

mod duration;
mod flags;
mod generate;
mod process;
mod query;
mod replay;
mod run;
mod serve;
mod summary;
mod text;

use clap::{Parser, Subcommand};

pub use duration::parse_duration;
pub use flags::{
    parse_size, KafkaArgs, OrderArg, PaceArgs, PageArgs, PageLimitArgs, SnapshotArgs, WindowArgs,
};
pub use generate::GenerateArgs;
pub use process::{Assignment, ProcessArgs};
pub use query::QueryArgs;
pub use replay::ReplayArgs;
pub use run::RunArgs;
pub use serve::ServeArgs;

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
    Replay(ReplayArgs),
    /// Consume purchase events from Kafka in a consumer group and write snapshots per
    /// partition (resumes exactly from them after a crash or a rebalance).
    Process(ProcessArgs),
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
        Command::Replay(args) => replay::replay(args),
        Command::Process(args) => process::process(args),
        Command::Query(args) => query::query(args),
        Command::Serve(args) => serve::serve(args),
        Command::ServeWorker(args) => crate::serve::worker::main(args),
        Command::Generate(args) => generate::generate(args),
    }
}

/// Starts the metrics endpoint, answering to the host names `hosts` allows; a busy address
/// is a warning, not a failure.
fn serve_metrics(
    command: &str,
    addr: std::net::SocketAddr,
    hosts: &flags::MetricsHostArgs,
) -> Option<std::net::SocketAddr> {
    let what = ("metrics", "/metrics", "metrics endpoint");
    let hosts = crate::http::Hosts::new(&hosts.metrics_allow_host);
    crate::http::start_logged(command, what, addr, |a| crate::metrics::serve(a, hosts))
}
