//! The manifest of one snapshot: what it covers (input position, times, counts) and which
//! files it holds. Written last inside the snapshot folder, as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const MANIFEST_FILE: &str = "manifest.json";
/// The format of a whole snapshot this build writes. Format 4 holds open days' orders in
/// `state_open_orders` (one row per order); this build still reads format 2, where they
/// are rows of `state_open_sets`, and its incremental form 3.
pub const FORMAT_VERSION: u32 = 4;
/// The format of an incremental snapshot: a build that reads only [`FORMAT_VERSION`]
/// refuses it (and falls back to an older whole snapshot) rather than take it for a whole
/// state.
pub const DELTA_FORMAT: u32 = 5;
/// Formats read besides the two above: the whole and the incremental snapshots of the
/// layout before `state_open_orders`.
pub const OLDER_FORMAT: u32 = 2;
pub const OLDER_DELTA_FORMAT: u32 = 3;

/// Whether snapshots of `format` hold `state_open_orders`.
pub fn has_open_orders(format: u32) -> bool {
    format != OLDER_FORMAT && format != OLDER_DELTA_FORMAT
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: u64,
    /// Wall time the snapshot was written (RFC 3339).
    pub created_at: String,
    /// Highest accepted event time (RFC 3339), the reference date for recency.
    pub as_of: Option<String>,
    /// The watermark; `end of input` once a bounded run has finished.
    pub watermark: Option<String>,
    /// The same two times in microseconds since the epoch, exactly, for resuming.
    pub as_of_us: Option<i64>,
    pub watermark_us: Option<i64>,
    /// Where in the input this snapshot stands; a resumed run starts right after it.
    pub input: InputPosition,
    pub counts: Counts,
    /// Customers in the `rfm` table, and how many fall in each segment.
    pub customers: u64,
    pub segments: BTreeMap<String, u64>,
    pub tables: BTreeMap<String, TableFile>,
    pub config: WindowConfig,
    /// In a bucket: the pieces of rejected lines (keys below the prefix, in order) that
    /// make the writer's `rejected.csv` up to this snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_pieces: Vec<String>,
    /// An incremental snapshot: what changed since `parent`, in a chain from the whole
    /// snapshot `base` (see [`Chain`]). Absent in a whole snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Chain>,
}

/// Where an incremental snapshot stands: its tables hold only the days and customers that
/// changed since its parent (whole), the (customer, order) pairs and event ids counted
/// since, and open days' sets; restoring reads `base` and every snapshot of the chain up to
/// this one, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The whole snapshot the chain starts from.
    pub base: u64,
    /// The snapshot this one follows (the base or the previous incremental one).
    pub parent: u64,
    /// Incremental snapshots since the base, this one included.
    pub length: u32,
    /// Bytes of the incremental snapshots since the base, this one included.
    pub bytes: u64,
    /// Bytes of the base.
    pub base_bytes: u64,
}

impl Manifest {
    /// Bytes of the snapshot's files.
    pub fn bytes(&self) -> u64 {
        self.tables.values().map(|t| t.bytes).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputPosition {
    /// A file replayed in the embedded pipeline.
    File {
        path: String,
        /// `event_time` or `file`.
        order: String,
        /// Lines read from the file so far (header included).
        lines_read: u64,
        /// Events handed to the core so far, in replay order.
        events_applied: u64,
        /// The whole input has been read and applied.
        complete: bool,
        /// Bytes of `rejected.csv` this snapshot covers: `run --resume` cuts the file
        /// back to them and appends, so no dead letter is lost or written twice.
        #[serde(default)]
        rejected_bytes: u64,
    },
    /// One partition of a Kafka topic, consumed by `storepulse process`.
    Kafka {
        topic: String,
        partition: i32,
        /// The topic's partition count when the snapshot was taken: the partitions of one
        /// count make a set (keys map to partitions by it); the merge needs all of them.
        partitions: i32,
        /// The offset of the first message this snapshot does not cover: a processor that
        /// takes the partition over starts reading there.
        next_offset: i64,
        /// The last message applied was the replayer's `end_of_input`.
        end_of_input: bool,
        /// The inputs announced on the partition: identity (16 hex digits) and line count.
        #[serde(default)]
        inputs: BTreeMap<String, u64>,
    },
    /// The merged view of one Kafka topic's partition snapshots (see `snapshot::view`):
    /// the query tables of every partition's snapshot merged and scored once.
    View {
        topic: String,
        partitions: i32,
        /// The snapshot of each partition merged here, by partition.
        parts: Vec<ViewPart>,
    },
}

/// One partition's snapshot merged into a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewPart {
    pub partition: i32,
    /// The snapshot's id in the partition's folder.
    pub snapshot: u64,
    /// When the snapshot was written: with the id, it tells a snapshot from one of a
    /// folder emptied and filled again.
    pub created_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Non-blank lines after the header.
    pub records: u64,
    /// Lines counted in the aggregates.
    pub accepted: u64,
    /// Lines read and valid but not yet applied (replay in event-time order reads the
    /// whole file first). `records = accepted + pending + sum(rejected)`.
    pub pending: u64,
    pub repaired: u64,
    pub blank: u64,
    /// Messages dropped because their event id was already counted (a redelivery, or the
    /// same file replayed again). `records = accepted + pending + duplicates + sum(rejected)`.
    #[serde(default)]
    pub duplicates: u64,
    /// Rejected lines per reason (`late_event` included).
    pub rejected: BTreeMap<String, u64>,
}

impl Counts {
    /// Adds the counts of another part of the input (a partition's).
    pub fn add(&mut self, o: &Counts) {
        self.records += o.records;
        self.accepted += o.accepted;
        self.pending += o.pending;
        self.repaired += o.repaired;
        self.blank += o.blank;
        self.duplicates += o.duplicates;
        for (reason, n) in &o.rejected {
            *self.rejected.entry(reason.clone()).or_default() += n;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFile {
    pub file: String,
    pub rows: u64,
    /// Size of the Parquet file.
    #[serde(default)]
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowConfig {
    pub max_out_of_orderness_us: i64,
    pub allowed_lateness_us: i64,
    pub min_event_time: String,
}

impl WindowConfig {
    /// The record of the core's window settings (the core's own config is the one source).
    pub fn of(core: &crate::aggregate::CoreConfig, min_event_time: String) -> Self {
        Self {
            max_out_of_orderness_us: core.max_out_of_orderness_us,
            allowed_lateness_us: core.allowed_lateness_us,
            min_event_time,
        }
    }

    /// The core settings this record describes, for a core that holds merged state.
    pub fn core(&self) -> crate::aggregate::CoreConfig {
        crate::aggregate::CoreConfig {
            max_out_of_orderness_us: self.max_out_of_orderness_us,
            allowed_lateness_us: self.allowed_lateness_us,
            ..Default::default()
        }
    }
}

/// An event time in microseconds as RFC 3339 UTC.
pub fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| us.to_string())
}
