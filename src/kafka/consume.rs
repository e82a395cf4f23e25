//! `storepulse process`: a consumer-group member that keeps one [`PartitionState`] per
//! assigned partition and snapshots each into its own folder with the offset it covers.
//!
//! Exactly-once comes from the snapshots, not from the group: on assignment a partition's
//! state is loaded from its latest snapshot and the partition is assigned at the offset
//! recorded there (from the beginning when it has none); committed group offsets are never
//! read. On revocation every owned partition is snapshotted before it is given up, and
//! its folder lock is released. Offsets are committed to the group only after a snapshot
//! is durable, as a progress report for lag monitoring.
//!
//! Messages are applied on the thread that polls them (rebalance callbacks run inside
//! `poll`), so no message is in flight elsewhere when partitions change hands.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, Producer as _};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::observe::{self, Progress};
use super::partition::{PartitionState, Verdict};
use super::{
    dead_letter_topic, send, Connection, DeadLetter, KafkaError, Producer, CONTROL_HEADER,
};
use crate::aggregate::CoreConfig;
use crate::snapshot::{
    self, load_seen, load_state, partition_dir, InputPosition, Manifest, SnapshotError,
    SnapshotMeta, SnapshotStore, WindowConfig,
};

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
    /// A partition with no message for this long is idle (see `merge_watermarks`).
    pub idle_timeout: Duration,
    /// Stop once every owned partition has applied an `end_of_input` as its last message
    /// and has nothing more to read.
    pub stop_at_end: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("Kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("the snapshot {0} is not a snapshot of this partition")]
    Foreign(PathBuf),
    #[error("{0} dead letters could not be delivered: {1}")]
    DeadLetters(u64, String),
}

/// What a processor did, for its summary.
#[derive(Debug, Clone, Default)]
pub struct ProcessOutcome {
    pub messages: u64,
    /// When the first and the last message were applied.
    pub first_message: Option<Instant>,
    pub last_message: Option<Instant>,
    pub snapshots: u64,
    /// The longest pause for snapshots (all partitions of one tick).
    pub longest_snapshot: Duration,
    /// Manifests of the last snapshot of each partition this process wrote.
    pub last: BTreeMap<i32, Manifest>,
}

struct Part {
    store: SnapshotStore,
    state: PartitionState,
    dirty: bool,
    last_message: Instant,
    idle: bool,
    /// The last message applied was an `end_of_input`.
    at_end: bool,
    /// The consumer reached the partition's end after its last message.
    eof: bool,
    progress: Progress,
}

#[derive(Default)]
struct Owned {
    parts: BTreeMap<i32, Part>,
    error: Option<ProcessError>,
    outcome: ProcessOutcome,
}

struct Ctx {
    config: ProcessConfig,
    owned: Mutex<Owned>,
    dead_letters: Producer,
    dead_letter_topic: String,
    /// (log start, log end) offset of each partition of the topic, from the client's
    /// statistics (`statistics.interval.ms`), for the lag metric.
    offsets: Mutex<BTreeMap<i32, (i64, i64)>>,
}

impl ClientContext for Ctx {
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            return;
        };
        let Some(parts) = stats["topics"][&self.config.topic]["partitions"].as_object() else {
            return;
        };
        let mut offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        for part in parts.values() {
            let field = |k: &str| part[k].as_i64();
            if let (Some(p), Some(lo), Some(hi)) =
                (field("partition"), field("lo_offset"), field("hi_offset"))
            {
                if p >= 0 && hi >= 0 {
                    offsets.insert(p as i32, (lo.max(0), hi));
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut owned = self.lock();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.take(&mut owned, tpl),
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    eprintln!("storepulse process: rebalance error {err:?}; giving up partitions");
                }
                self.give_up(&mut owned, consumer)
            }
        };
        let assigned = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS if result.is_ok() => {
                consumer.assign(tpl)
            }
            _ => consumer.unassign(),
        };
        if let Err(e) = result.and(assigned.map_err(ProcessError::from)) {
            owned.error.get_or_insert(e);
        }
    }
}

impl Ctx {
    fn lock(&self) -> MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads each assigned partition from its latest snapshot and sets the offset to
    /// start from in `tpl`, which is then assigned as it is.
    fn take(&self, owned: &mut Owned, tpl: &mut TopicPartitionList) -> Result<(), ProcessError> {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.config.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        for p in partitions {
            let part = self.open_part(p)?;
            let offset = part
                .state
                .next_offset
                .map_or(Offset::Beginning, Offset::Offset);
            tpl.set_partition_offset(&self.config.topic, p, offset)?;
            owned.parts.insert(p, part);
        }
        crate::metrics::set_ready(true);
        self.publish_metrics(owned);
        let names: Vec<String> = owned.parts.keys().map(|p| p.to_string()).collect();
        eprintln!(
            "storepulse process: assigned partitions [{}] of {}",
            names.join(", "),
            self.config.topic
        );
        Ok(())
    }

    fn open_part(&self, p: i32) -> Result<Part, ProcessError> {
        let c = &self.config;
        let dir = partition_dir(&c.snapshot_dir, &c.topic, p);
        // Another process on this machine may still be publishing its last snapshot of
        // this partition: wait for its lock, boundedly.
        let deadline = Instant::now() + Duration::from_secs(30);
        let store = loop {
            match SnapshotStore::open(&dir, c.keep_snapshots) {
                Err(SnapshotError::Locked(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => break other?,
            }
        };
        // The newest snapshot that loads; damaged ones are skipped (the older one's offset
        // is where reading resumes, so nothing is lost).
        let found = snapshot::newest_good(&dir, |p| Ok((load_state(p)?, load_seen(p)?)));
        let (state, at_end) = match found {
            Ok((published, (state, seen))) => {
                let InputPosition::Kafka {
                    topic,
                    partition,
                    next_offset,
                    end_of_input,
                    ..
                } = &published.manifest.input
                else {
                    return Err(ProcessError::Foreign(published.path));
                };
                if *topic != c.topic || *partition != p {
                    return Err(ProcessError::Foreign(published.path));
                }
                let state = PartitionState::restore(
                    c.core,
                    state,
                    seen,
                    &published.manifest.counts,
                    Some(*next_offset),
                );
                (state, *end_of_input)
            }
            Err(SnapshotError::None(_)) => (PartitionState::new(c.core), false),
            Err(e) => return Err(e.into()),
        };
        Ok(Part {
            store,
            progress: Progress::new(&state),
            state,
            dirty: false,
            last_message: Instant::now(),
            idle: false,
            at_end,
            eof: false,
        })
    }

    /// Snapshots every owned partition, then lets them all go.
    fn give_up(
        &self,
        owned: &mut Owned,
        consumer: &BaseConsumer<Self>,
    ) -> Result<(), ProcessError> {
        let result = self.snapshot_all(owned, consumer, CommitMode::Sync);
        self.publish_metrics(owned);
        for &p in owned.parts.keys() {
            observe::released(p);
        }
        owned.parts.clear();
        result
    }

    /// Brings the metrics up to the owned partitions' state.
    fn publish_metrics(&self, owned: &mut Owned) {
        let offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        observe::publish(owned.parts.iter_mut().map(|(&p, part)| observe::Owned {
            partition: p,
            state: &part.state,
            progress: &mut part.progress,
            idle: part.idle,
            offsets: offsets.get(&p).copied(),
        }));
    }

    /// Publishes a snapshot of every partition that changed, after the dead letters of the
    /// messages it covers are delivered; then reports the offsets to the group.
    fn snapshot_all(
        &self,
        owned: &mut Owned,
        consumer: &BaseConsumer<Self>,
        mode: CommitMode,
    ) -> Result<(), ProcessError> {
        let dirty: Vec<i32> = owned
            .parts
            .iter()
            .filter(|(_, p)| p.dirty)
            .map(|(&k, _)| k)
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.flush_dead_letters()?;
        let mut offsets = TopicPartitionList::new();
        let mut bytes = 0;
        for p in dirty {
            let part = owned.parts.get_mut(&p).expect("listed above");
            let next_offset = part.state.next_offset.unwrap_or(0);
            let meta = SnapshotMeta {
                input: InputPosition::Kafka {
                    topic: self.config.topic.clone(),
                    partition: p,
                    next_offset,
                    idle: part.idle,
                    end_of_input: part.at_end,
                },
                counts: part.state.counts(),
                config: self.config.window.clone(),
            };
            let manifest = part
                .store
                .write_with(&part.state.core, Some(&part.state.seen), meta)?;
            part.dirty = false;
            bytes += manifest.bytes();
            owned.outcome.snapshots += 1;
            owned.outcome.last.insert(p, manifest);
            offsets.add_partition_offset(&self.config.topic, p, Offset::Offset(next_offset))?;
        }
        let took = started.elapsed();
        owned.outcome.longest_snapshot = owned.outcome.longest_snapshot.max(took);
        crate::metrics::get().snapshot_published(took, bytes);
        observe::score_segments(owned.parts.values().map(|p| &p.state));
        // Progress only: a failed commit loses nothing, the snapshot holds the offsets.
        if let Err(e) = consumer.commit(&offsets, mode) {
            eprintln!("storepulse process: committing offsets to the group failed: {e}");
        }
        Ok(())
    }

    fn flush_dead_letters(&self) -> Result<(), ProcessError> {
        let d = self.dead_letters.context();
        let before = d.failed.load(Ordering::Relaxed);
        // librdkafka retries until message.timeout.ms; flush waits for that outcome.
        if let Err(e) = self.dead_letters.flush(Duration::from_secs(600)) {
            eprintln!("storepulse process: dead letters not yet delivered: {e}");
        }
        let failed = d.failed.load(Ordering::Relaxed);
        if failed > before {
            let last = d.last_error.lock().ok().and_then(|l| l.clone());
            return Err(ProcessError::DeadLetters(
                failed - before,
                last.unwrap_or_default(),
            ));
        }
        Ok(())
    }

    fn dead_letter(&self, p: i32, offset: i64, payload: &[u8], verdict: Verdict) {
        let Verdict::Rejected {
            reason,
            line,
            detail,
        } = verdict
        else {
            return;
        };
        let record = DeadLetter {
            line,
            partition: Some(p),
            offset: Some(offset),
            detail,
            ..DeadLetter::new(reason, "process", payload)
        };
        let value = serde_json::to_vec(&record).expect("dead letter serializes");
        let r = BaseRecord::to(&self.dead_letter_topic)
            .key(reason.as_bytes())
            .payload(value.as_slice());
        if let Err(e) = send(&self.dead_letters, r) {
            eprintln!("storepulse process: dead letter not enqueued: {e}");
            self.dead_letters
                .context()
                .failed
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs a processor until `shutdown` is set (or, with `stop_at_end`, until every owned
/// partition is at its end of input), then writes a final snapshot of every partition.
pub fn process(
    config: ProcessConfig,
    shutdown: Arc<AtomicBool>,
) -> Result<ProcessOutcome, ProcessError> {
    let dlq = dead_letter_topic(&config.topic);
    config.connection.ensure_topics(&[&dlq], 1)?;
    let dead_letters: Producer = config
        .connection
        .client_config()
        .set("enable.idempotence", "true")
        .create_with_context(super::Deliveries::default())?;
    let mut cc = config.connection.client_config();
    cc.set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
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
    let idle_timeout = config.idle_timeout;
    let stop_at_end = config.stop_at_end;
    let ctx = Ctx {
        config,
        owned: Mutex::new(Owned::default()),
        dead_letters,
        dead_letter_topic: dlq,
        offsets: Mutex::new(BTreeMap::new()),
    };
    let consumer: BaseConsumer<Ctx> = cc.create_with_context(ctx)?;
    consumer.subscribe(&[&topic])?;

    let mut last_snapshot = Instant::now();
    let mut last_metrics = Instant::now();
    let mut last_error: Option<(String, Instant)> = None;
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
                    part.last_message = Instant::now();
                    part.idle = false;
                    part.at_end = control.is_some() && verdict == Verdict::Control;
                    part.eof = false;
                    part.progress.consumed += 1;
                    let o = &mut owned.outcome;
                    o.messages += 1;
                    let now = part.last_message;
                    o.first_message.get_or_insert(now);
                    o.last_message = Some(now);
                    ctx.dead_letter(p, m.offset(), payload, verdict);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                if let Some(part) = owned.parts.get_mut(&p) {
                    part.eof = true;
                }
            }
            Some(Err(e)) => {
                // The client reconnects by itself; say so once in a while, not per poll.
                let text = e.to_string();
                let repeat = last_error
                    .as_ref()
                    .is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(10));
                if !repeat {
                    eprintln!("storepulse process: {text} (retrying)");
                    last_error = Some((text, Instant::now()));
                }
            }
            None => {}
        }
        if last_metrics.elapsed() >= Duration::from_secs(1) {
            ctx.publish_metrics(owned);
            last_metrics = Instant::now();
        }
        let at_end = stop_at_end
            && !owned.parts.is_empty()
            && owned.parts.values().all(|p| p.at_end && p.eof);
        if last_snapshot.elapsed() >= interval || at_end {
            for part in owned.parts.values_mut() {
                let idle = part.last_message.elapsed() >= idle_timeout;
                part.dirty |= idle != part.idle;
                part.idle = idle;
            }
            ctx.snapshot_all(owned, &consumer, CommitMode::Async)?;
            last_snapshot = Instant::now();
        }
        if at_end {
            break;
        }
    }
    let ctx = consumer.context();
    let mut owned = ctx.lock();
    ctx.snapshot_all(&mut owned, &consumer, CommitMode::Sync)?;
    ctx.publish_metrics(&mut owned);
    let outcome = std::mem::take(&mut owned.outcome);
    drop(owned);
    consumer.unsubscribe();
    Ok(outcome)
}
