//! `storepulse process`: a consumer-group member that keeps one
//! [`PartitionState`](super::partition::PartitionState) per
//! assigned partition and snapshots each into its own folder with the offset it covers.
//!
//! Exactly-once comes from the snapshots, not from the group: see [`super::rebalance`] for
//! how partitions are taken and given up. Offsets are committed to the group only after a
//! snapshot is durable, as a progress report for lag monitoring.
//!
//! Messages are applied on the thread that polls them (rebalance callbacks run inside
//! `poll`), so no message is in flight elsewhere when partitions change hands. Nothing here
//! waits for the brokers: the processor starts without them (and says so), keeps its state
//! through an outage, and its dead letters are retried while the snapshots they hold back
//! wait.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as ClientError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;

use super::dead_letters::DeadLetters;
use super::partition::Verdict;
use super::rebalance::{Ctx, Write};
use super::{dead_letter_topic, Connection, DeadLetter, KafkaError, CONTROL_HEADER};
use crate::aggregate::CoreConfig;
use crate::logs::Repeats;
use crate::snapshot::{Manifest, SnapshotError, WindowConfig};

#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub connection: Connection,
    pub topic: String,
    pub group: String,
    /// `group.instance.id`, for static membership.
    pub instance_id: Option<String>,
    pub snapshot_dir: PathBuf,
    pub snapshot_interval: Duration,
    pub keep_snapshots: usize,
    pub core: CoreConfig,
    pub window: WindowConfig,
    /// Stop once every owned partition has applied an `end_of_input` as its last message
    /// and has nothing more to read.
    pub stop_at_end: bool,
    /// Take these partitions (all of them when empty) without group rebalancing, instead
    /// of subscribing with the group.
    pub assignment: Option<Vec<i32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("Kafka client: {0}")]
    Client(#[from] ClientError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
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
}

/// How long the end of a run waits for undelivered dead letters before it gives up the
/// final snapshot of their partitions.
const FINAL_DEAD_LETTER_WAIT: Duration = Duration::from_secs(10);

/// Runs a processor until `shutdown` is set (or, with `stop_at_end`, until every owned
/// partition is at its end of input), then writes a final snapshot of every partition.
pub fn process(
    config: ProcessConfig,
    shutdown: Arc<AtomicBool>,
) -> Result<ProcessOutcome, ProcessError> {
    let dlq = dead_letter_topic(&config.topic);
    if !wait_for_brokers(&config.connection, &dlq, &shutdown)? {
        return Ok(ProcessOutcome::default());
    }
    let dead_letters = DeadLetters::new(&config.connection, dlq)?;
    let mut cc = config.connection.client_config();
    cc.set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Offsets come from the snapshots; one beyond the log's end is an error to report
        // (the topic was created again), never a silent restart from the beginning.
        .set("auto.offset.reset", "error")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("enable.partition.eof", "true")
        .set("statistics.interval.ms", "1000")
        // A topic the replayer creates after the processor started is found in seconds,
        // not at the default five-minute metadata refresh.
        .set("topic.metadata.refresh.interval.ms", "5000");
    if let Some(id) = &config.instance_id {
        cc.set("group.instance.id", id);
    }
    for (k, v) in &config.connection.options {
        cc.set(k, v);
    }
    let topic = config.topic.clone();
    let interval = config.snapshot_interval;
    let stop_at_end = config.stop_at_end;
    let assignment = config.assignment.clone();
    let consumer: BaseConsumer<Ctx> = cc.create_with_context(Ctx::new(config, dead_letters))?;
    match &assignment {
        None => consumer.subscribe(&[&topic])?,
        Some(partitions) => consumer.context().take_static(&consumer, partitions)?,
    }

    let mut last_snapshot = Instant::now();
    let mut last_metrics = Instant::now();
    let mut errors = Repeats::new(Duration::from_secs(10));
    while !shutdown.load(Ordering::SeqCst) {
        let polled = consumer.poll(Duration::from_millis(100));
        let ctx = consumer.context();
        let mut guard = ctx.lock();
        let owned = &mut *guard;
        if let Some(e) = owned.error.take() {
            return Err(e);
        }
        match polled {
            Some(Ok(m)) => {
                let p = m.partition();
                let payload = m.payload().unwrap_or_default();
                let control = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == CONTROL_HEADER)
                        .and_then(|h| h.value)
                });
                // A message of a partition given up in this poll's rebalance is skipped:
                // its new owner reads it from the snapshot's offset.
                let part = owned.parts.get_mut(&p);
                let applied =
                    part.map(|part| (part.state.apply(m.offset(), control, payload), part));
                if let Some((verdict, part)) =
                    applied.filter(|(v, _)| *v != Verdict::AlreadyApplied)
                {
                    part.dirty = true;
                    part.at_end = control.is_some() && verdict == Verdict::Control;
                    part.eof = false;
                    part.progress.consumed += 1;
                    let o = &mut owned.outcome;
                    o.messages += 1;
                    let now = Instant::now();
                    o.first_message.get_or_insert(now);
                    o.last_message = Some(now);
                    if let Some(record) = dead_letter(p, m.offset(), payload, verdict) {
                        ctx.dead_letters.send(p, &record);
                    }
                }
            }
            Some(Err(ClientError::PartitionEOF(p))) => {
                if let Some(part) = owned.parts.get_mut(&p) {
                    part.eof = true;
                }
            }
            Some(Err(ClientError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                return Err(out_of_range(&consumer, owned));
            }
            // The client reconnects by itself; say so once in a while, not per poll.
            Some(Err(e)) => {
                let error = e.to_string();
                if let Some(unsaid) = errors.check(&error, Instant::now()) {
                    tracing::warn!(%error, unsaid, "the client reports an error; retrying");
                }
            }
            None => {}
        }
        if last_metrics.elapsed() >= Duration::from_secs(1) {
            ctx.dead_letters.retry();
            ctx.publish_metrics(owned);
            last_metrics = Instant::now();
        }
        let at_end = stop_at_end
            && !owned.parts.is_empty()
            && owned.parts.values().all(|p| p.at_end && p.eof);
        if last_snapshot.elapsed() >= interval || at_end {
            // At the end the snapshots are written now: the loop ends on them.
            let how = if at_end { Write::Now } else { Write::Beside };
            let waiting = ctx.snapshot_all(owned, &consumer, how)?;
            last_snapshot = Instant::now();
            if at_end && waiting.is_empty() {
                break;
            }
        }
    }
    let ctx = consumer.context();
    let mut owned = ctx.lock();
    let parts: Vec<i32> = owned.parts.keys().copied().collect();
    ctx.dead_letters.wait(&parts, FINAL_DEAD_LETTER_WAIT);
    let waiting = ctx.snapshot_all(&mut owned, &consumer, Write::Now)?;
    if !waiting.is_empty() {
        let last_error = ctx.dead_letters.counts().last_error();
        tracing::warn!(
            partitions = ?waiting,
            last_error = %last_error.as_deref().unwrap_or("no answer"),
            "these partitions keep their previous snapshot: some of their dead letters were \
             not delivered, so a later run reads their messages again from there"
        );
    }
    ctx.publish_metrics(&mut owned);
    let mut outcome = std::mem::take(&mut owned.outcome);
    outcome.not_final = waiting;
    drop(owned);
    consumer.unsubscribe();
    leave_group(consumer, FINAL_CLOSE_WAIT);
    Ok(outcome)
}

/// How long the end of a run waits to leave the group.
const FINAL_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Leaves the group (its rebalance callback gives the partitions up), boundedly. With the
/// brokers away the client's close waits for them without end (rdkafka's `Drop` polls
/// until closed): past `limit` the client is left to the process's exit. Everything that
/// matters is in the snapshots already; the group sees the member's session expire.
fn leave_group(consumer: BaseConsumer<Ctx>, limit: Duration) {
    if consumer.close_queue().is_err() {
        return;
    }
    let deadline = Instant::now() + limit;
    while !consumer.closed() && Instant::now() < deadline {
        consumer.poll(Duration::from_millis(100));
    }
    if !consumer.closed() {
        tracing::warn!(
            seconds = limit.as_secs(),
            "the group could not be left in time (brokers away?); exiting without it"
        );
        std::mem::forget(consumer);
    }
}

/// Makes sure the dead-letter topic exists, retrying while the brokers cannot be reached
/// (saying so every 30 s). False when a shutdown came first.
fn wait_for_brokers(
    connection: &Connection,
    dlq: &str,
    shutdown: &AtomicBool,
) -> Result<bool, ProcessError> {
    let mut said = Repeats::new(Duration::from_secs(30));
    let mut waited = false;
    loop {
        match connection.ensure_topics(&[dlq], 1) {
            Ok(()) => {
                if waited {
                    tracing::info!(brokers = %connection.brokers, "the brokers answer");
                }
                return Ok(true);
            }
            Err(e) => {
                crate::metrics::health::get().broker_reachable(false);
                waited = true;
                // Said every 30 s whatever the error, with the failed tries in between.
                if let Some(unsaid) = said.check("", Instant::now()) {
                    tracing::warn!(
                        brokers = %connection.brokers,
                        error = %e,
                        unsaid,
                        "waiting for the brokers; retrying"
                    );
                }
            }
        }
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if shutdown.load(Ordering::SeqCst) {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The brokers refused an offset from a snapshot: name the partition whose log now ends
/// before it.
fn out_of_range(consumer: &BaseConsumer<Ctx>, owned: &super::rebalance::Owned) -> ProcessError {
    let c = &consumer.context().config;
    for (&p, part) in &owned.parts {
        let Some(covered) = part.state.next_offset else {
            continue;
        };
        if let Ok((_, end)) = consumer.fetch_watermarks(&c.topic, p, Duration::from_secs(5)) {
            if end < covered {
                return ProcessError::TopicChanged {
                    topic: c.topic.clone(),
                    partition: p,
                    covered,
                    end,
                    dir: c.snapshot_dir.clone(),
                };
            }
        }
    }
    ProcessError::Client(ClientError::MessageConsumption(
        RDKafkaErrorCode::OffsetOutOfRange,
    ))
}

/// The dead letter of a rejected message.
fn dead_letter(p: i32, offset: i64, payload: &[u8], verdict: Verdict) -> Option<DeadLetter> {
    let Verdict::Rejected {
        reason,
        line,
        detail,
    } = verdict
    else {
        return None;
    };
    Some(DeadLetter {
        line,
        partition: Some(p),
        offset: Some(offset),
        detail,
        ..DeadLetter::new(reason, "process", payload)
    })
}
