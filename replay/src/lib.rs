//! The replayer's library: reads `kz.csv`-format purchase lines, validates and repairs
//! each one (or rejects it with exactly one reason), orders events by event time and paces
//! them, and hands them in batches to a sink (`feed`: the loop `run` and `replay` share,
//! with `spill` for event-time order beyond memory). It owns the input contract and the
//! wire format; it keeps no aggregate state and writes no pipeline files (only the
//! spill's temporary runs).

pub mod csv_line;
pub mod feed;
pub mod fields;
pub mod identity;
pub mod pace;
pub mod reader;
pub mod reject;
pub mod spill;
pub mod validate;
pub mod wire;

pub use event::{Dictionary, PurchaseEvent, Sym};
pub use identity::{identify, InputIdentity};
pub use pace::{Pace, Pacer};
pub use reader::{
    read_all, sort_by_event_time, Block, CsvReader, ReadAll, ReadError, ReadStats, ReaderConfig,
};
pub use reject::{RejectCounts, RejectReason, Rejected};
/// The event type the core works on lives with the core; the reader produces it.
pub use storepulse_aggregate::event;
pub use validate::{Header, HeaderError, LineValidator, DEFAULT_MIN_EVENT_TIME_US};
