//! What a processor (`storepulse process`) is configured with, how it fails, and what it
//! did: shared by its poll thread ([`super::consume`], [`super::rebalance`]) and its
//! pipeline ([`super::lanes`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError as ClientError;

use super::{Connection, KafkaError};
use crate::aggregate::CoreConfig;
use crate::snapshot::{Manifest, SnapshotError, WindowConfig};

#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub connection: Connection,
    pub topic: String,
    pub group: String,
    /// `group.instance.id`, for static membership.
    pub instance_id: Option<String>,
    pub snapshot_dir: PathBuf,
    /// A bucket prefix the partitions' snapshots are published to (after `snapshot_dir`,
    /// then this processor's working folder) and taken from.
    pub remote: Option<crate::snapshot::Bucket>,
    pub snapshot_interval: Duration,
    pub keep_snapshots: usize,
    /// Incremental snapshots of a partition between two whole ones at most (0: every
    /// snapshot whole), in its folder and in a bucket. See `SnapshotStore::with_deltas`.
    pub incremental: u32,
    /// The merged view is published at most this often (see `snapshot::view`).
    pub view_interval: Duration,
    pub core: CoreConfig,
    pub window: WindowConfig,
    /// Stop once every owned partition has applied an `end_of_input` as its last message
    /// and has nothing more to read.
    pub stop_at_end: bool,
    /// Take these partitions (all of them when empty) without group rebalancing, instead
    /// of subscribing with the group.
    pub assignment: Option<Vec<i32>>,
    /// Publish the four result tables as Delta tables here: after each merged view this
    /// processor writes, and the last view at the end (`process --tables`).
    pub tables: Option<crate::lake::Lake>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("Kafka client: {0}")]
    Client(#[from] ClientError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("the pipeline driver stopped")]
    Stopped,
    #[error(transparent)]
    Tables(#[from] crate::lake::LakeError),
    #[error("the snapshot {0} is not a snapshot of this partition")]
    Foreign(PathBuf),
    #[error(
        "the topic {topic} has {now} partitions, but the snapshots in {dir} were taken when it \
         had {was}: messages are keyed by order id, and another partition count sends an \
         order's later lines to another partition, so the partitions' states no longer add \
         up. To recover, replay the input into a new topic (or one created again with {was} \
         partitions) and start `process` with a new --snapshot-dir"
    )]
    PartitionsChanged {
        topic: String,
        was: i32,
        now: i32,
        dir: PathBuf,
    },
    #[error("the topic {topic} has {partitions} partitions: there is no partition {partition}")]
    NoPartition {
        topic: String,
        partition: i32,
        partitions: i32,
    },
    #[error(
        "the snapshots in {dir} are of the topic {found}, not {topic}: give each topic a \
         --snapshot-dir of its own"
    )]
    OtherTopic {
        dir: PathBuf,
        found: String,
        topic: String,
    },
    #[error(
        "partition {partition} of {topic} ends at offset {end}, but the snapshot in {dir} covers \
         offsets up to {covered}: the topic was deleted and created again (or truncated), and \
         its offsets now name other messages. To recover, move the partition folders of \
         {topic} out of {dir} (or use a new --snapshot-dir) and replay the input"
    )]
    TopicChanged {
        topic: String,
        partition: i32,
        covered: i64,
        end: i64,
        dir: PathBuf,
    },
}

/// What a processor did, for its summary.
#[derive(Debug, Clone, Default)]
pub struct ProcessOutcome {
    pub messages: u64,
    /// When the first and the last message were applied.
    pub first_message: Option<Instant>,
    pub last_message: Option<Instant>,
    pub snapshots: u64,
    /// The longest the poll loop stopped for a periodic snapshot: copying the changed
    /// partitions' states (they are written beside the stream).
    pub longest_snapshot: Duration,
    /// Manifests of the last snapshot of each partition this process wrote.
    pub last: BTreeMap<i32, Manifest>,
    /// Partitions whose final snapshot could not be written because some of their dead
    /// letters were not delivered (their previous snapshot stands).
    pub not_final: Vec<i32>,
    /// Merged views of the topic this process published (see `snapshot::view`).
    pub views: u64,
    /// Partitions dropped because another processor had published them since (fenced).
    pub fenced: Vec<i32>,
}
