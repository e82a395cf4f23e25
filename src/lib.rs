//! storepulse: a streaming processor for e-commerce purchase logs. See ARCHITECTURE.md
//! for the map; the replayer (reading, validating, ordering, pacing) is the
//! `storepulse-replay` crate under `replay/`.

// Diagnostics go through `tracing` (see `logs`); only the binary prints a fatal error.
#![deny(clippy::print_stderr)]

pub use storepulse_aggregate as aggregate;
pub mod cli;
pub mod generate;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod lake;
pub mod logs;
pub mod metrics;
pub mod pipeline;
pub mod query;
pub mod serve;
pub mod shutdown;
pub mod snapshot;

pub use storepulse_replay as replay;
