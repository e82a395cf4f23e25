//! The processor's consumer context: the partitions it owns, taken and given up inside the
//! rebalance callbacks (which run inside `poll`, on the poll thread, so no message is in
//! flight elsewhere when partitions change hands), their snapshots, and what the client's
//! statistics say about the topic.
//!
//! Taking a partition loads its latest snapshot and assigns it at the offset recorded
//! there (from the beginning when it has none); committed group offsets are never read.
//! It first checks that the snapshots in the folder are one set of this topic at today's
//! partition count. Giving partitions up snapshots them first. A partition's snapshot waits
//! until the dead letters of the messages it covers are delivered.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::consume::{ProcessConfig, ProcessError, ProcessOutcome};
use super::dead_letters::DeadLetters;
use super::observe::{self, Progress};
use super::partition::PartitionState;
use super::partition_count;
use crate::metrics::events::SnapshotPublished;
use crate::snapshot::{
    self, load_seen, load_state, partition_dir, Beside, InputPosition, SnapshotError, SnapshotMeta,
    SnapshotStore, Written,
};

/// How [`Ctx::snapshot_all`] writes: beside the stream (the poll loop stops only to copy
/// each partition's state), or now, on this thread, waiting for those being written
/// (before partitions are given up, and at the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    Beside,
    Now,
}

pub(super) struct Part {
    /// Periodic snapshots are written beside the stream; the others before going on.
    pub store: Beside,
    pub state: PartitionState,
    pub dirty: bool,
    /// The last message applied was an `end_of_input`.
    pub at_end: bool,
    /// The consumer reached the partition's end after its last message.
    pub eof: bool,
    pub progress: Progress,
}

#[derive(Default)]
pub(super) struct Owned {
    pub parts: BTreeMap<i32, Part>,
    pub error: Option<ProcessError>,
    pub outcome: ProcessOutcome,
}

pub(super) struct Ctx {
    pub config: ProcessConfig,
    pub owned: Mutex<Owned>,
    pub dead_letters: DeadLetters,
    /// The topic's partition count, read when partitions are taken.
    partitions: AtomicI32,
    /// (log start, log end) offset of each partition of the topic, from the client's
    /// statistics (`statistics.interval.ms`), for the lag metric.
    offsets: Mutex<BTreeMap<i32, (i64, i64)>>,
}

impl ClientContext for Ctx {
    /// The client's log lines go to the log (see [`super::client_log`]); its debug lines
    /// need both `--kafka-option debug=...` and `RUST_LOG=rdkafka=debug`.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        super::client_log(level, fac, message);
    }

    /// Said by the poll loop, rate-limited (see [`super::client_error`]).
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::client_error(error, reason);
    }

    fn stats(&self, stats: Statistics) {
        let up = stats.brokers.values().any(|b| b.state == "UP");
        crate::metrics::health::get().broker_reachable(up);
        let Some(topic) = stats.topics.get(&self.config.topic) else {
            return;
        };
        let mut offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        let mut owned = self.lock();
        // Partitions added to the live topic: keys now map to other partitions.
        let count = topic.partitions.keys().filter(|&&p| p >= 0).count() as i32;
        let was = self.partitions.load(Ordering::SeqCst);
        if was > 0 && count > was {
            owned.error.get_or_insert(ProcessError::PartitionsChanged {
                topic: self.config.topic.clone(),
                was,
                now: count,
                dir: self.config.snapshot_dir.clone(),
            });
        }
        for (&p, part) in &topic.partitions {
            if p < 0 || part.hi_offset < 0 {
                continue;
            }
            offsets.insert(p, (part.lo_offset.max(0), part.hi_offset));
            // The log ends before what the snapshot covers: the topic was deleted and
            // created again (or truncated). Its offsets now name other messages.
            let covered = owned.parts.get(&p).and_then(|o| o.state.next_offset);
            if part.fetch_state == "active" && covered.is_some_and(|n| n > part.hi_offset) {
                let e = ProcessError::TopicChanged {
                    topic: self.config.topic.clone(),
                    partition: p,
                    covered: covered.unwrap_or_default(),
                    end: part.hi_offset,
                    dir: self.config.snapshot_dir.clone(),
                };
                owned.error.get_or_insert(e);
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
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.take(&mut owned, consumer, tpl)
            }
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::warn!(error = ?err, "rebalance error; giving up partitions");
                }
                self.give_up(&mut owned, consumer);
                Ok(())
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
    pub fn new(config: ProcessConfig, dead_letters: DeadLetters) -> Self {
        Self {
            config,
            owned: Mutex::new(Owned::default()),
            dead_letters,
            partitions: AtomicI32::new(0),
            offsets: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads each assigned partition from its latest snapshot and sets the offset to
    /// start from in `tpl`, which is then assigned as it is.
    fn take(
        &self,
        owned: &mut Owned,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> Result<(), ProcessError> {
        let c = &self.config;
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&c.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let count = read_partition_count(consumer, &c.topic)?;
        if let Some(&p) = partitions.iter().find(|&&p| p >= count) {
            return Err(ProcessError::NoPartition {
                topic: c.topic.clone(),
                partition: p,
                partitions: count,
            });
        }
        self.partitions.store(count, Ordering::SeqCst);
        check_set(&c.snapshot_dir, &c.topic, count)?;
        for p in partitions {
            let part = self.open_part(p)?;
            let offset = part
                .state
                .next_offset
                .map_or(Offset::Beginning, Offset::Offset);
            tpl.set_partition_offset(&c.topic, p, offset)?;
            owned.parts.insert(p, part);
        }
        crate::metrics::set_ready(true);
        self.publish_metrics(owned);
        let partitions: Vec<i32> = owned.parts.keys().copied().collect();
        tracing::info!(?partitions, topic = %c.topic, of = count, "assigned");
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
                    inputs,
                    ..
                } = &published.manifest.input
                else {
                    return Err(ProcessError::Foreign(published.path));
                };
                if *topic != c.topic || *partition != p {
                    return Err(ProcessError::Foreign(published.path));
                }
                let mut state = PartitionState::restore(
                    c.core,
                    state,
                    seen,
                    &published.manifest.counts,
                    Some(*next_offset),
                );
                for (source, &lines) in inputs {
                    let Ok(source) = u64::from_str_radix(source, 16) else {
                        return Err(ProcessError::Foreign(published.path));
                    };
                    state.inputs.insert(source, lines);
                }
                (state, *end_of_input)
            }
            Err(SnapshotError::None(_)) => (PartitionState::new(c.core), false),
            Err(e) => return Err(e.into()),
        };
        Ok(Part {
            store: Beside::new(store),
            progress: Progress::new(&state),
            state,
            dirty: false,
            at_end,
            eof: false,
        })
    }

    /// Takes `assignment` (all partitions when empty) without a group rebalance, and
    /// assigns them at their snapshots' offsets: a static assignment.
    pub fn take_static(
        &self,
        consumer: &BaseConsumer<Self>,
        assignment: &[i32],
    ) -> Result<(), ProcessError> {
        let topic = &self.config.topic;
        let partitions = match assignment {
            [] => (0..read_partition_count(consumer, topic)?).collect(),
            some => some.to_vec(),
        };
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(topic, p);
        }
        let mut owned = self.lock();
        self.take(&mut owned, consumer, &mut tpl)?;
        consumer.assign(&tpl)?;
        Ok(())
    }

    /// Snapshots every owned partition whose dead letters are delivered (waiting for them
    /// a little), then lets them all go: a partition not snapshotted is read again by its
    /// next owner from its last snapshot, so nothing is lost.
    fn give_up(&self, owned: &mut Owned, consumer: &BaseConsumer<Self>) {
        let parts: Vec<i32> = owned.parts.keys().copied().collect();
        self.dead_letters
            .wait(&parts, self.config.snapshot_interval);
        if let Err(e) = self.snapshot_all(owned, consumer, Write::Now) {
            owned.error.get_or_insert(e);
        }
        self.publish_metrics(owned);
        for &p in owned.parts.keys() {
            observe::released(p);
            self.dead_letters.forget(p);
        }
        if !owned.parts.is_empty() {
            let partitions: Vec<i32> = owned.parts.keys().copied().collect();
            tracing::info!(?partitions, topic = %self.config.topic, "gave up");
        }
        owned.parts.clear();
    }

    /// Brings the metrics up to the owned partitions' state.
    pub fn publish_metrics(&self, owned: &mut Owned) {
        let offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        observe::publish(owned.parts.iter_mut().map(|(&p, part)| observe::Owned {
            partition: p,
            state: &part.state,
            progress: &mut part.progress,
            offsets: offsets.get(&p).copied(),
        }));
    }

    /// Publishes a snapshot of every partition that changed and whose dead letters are all
    /// delivered, beside the stream or now (`how`); then reports the offsets of the
    /// snapshots published to the group. Returns the partitions that wait for dead
    /// letters.
    pub fn snapshot_all(
        &self,
        owned: &mut Owned,
        consumer: &BaseConsumer<Self>,
        how: Write,
    ) -> Result<Vec<i32>, ProcessError> {
        self.dead_letters.retry();
        let mut published = Vec::new();
        for (&p, part) in owned.parts.iter_mut() {
            if let Some(w) = part.store.finished(how == Write::Now)? {
                published.push((p, w));
            }
        }
        let (mut ready, mut waiting) = (Vec::new(), Vec::new());
        for (&p, part) in &owned.parts {
            // A partition whose last snapshot is still being written waits for the next
            // tick (it stays dirty).
            if !part.dirty || part.store.busy() {
                continue;
            }
            if self.dead_letters.outstanding(p) == 0 {
                ready.push(p);
            } else {
                waiting.push(p);
            }
        }
        self.dead_letters.warn_waiting(&waiting);
        let partitions = self.partitions.load(Ordering::SeqCst);
        let started = Instant::now();
        for p in ready {
            let part = owned.parts.get_mut(&p).expect("listed above");
            let meta = self.meta(p, partitions, part);
            match how {
                Write::Beside => {
                    let (core, seen) = (part.state.core.clone(), part.state.seen.clone());
                    part.store.start(core, Some(seen), meta)?;
                }
                Write::Now => {
                    let w = part
                        .store
                        .write_now(&part.state.core, Some(&part.state.seen), meta)?;
                    published.push((p, w));
                }
            }
            part.dirty = false;
        }
        if how == Write::Beside {
            let paused = started.elapsed();
            owned.outcome.longest_snapshot = owned.outcome.longest_snapshot.max(paused);
        }
        if !published.is_empty() {
            self.published(owned, consumer, published)?;
        }
        Ok(waiting)
    }

    /// What partition `p`'s snapshot covers.
    fn meta(&self, p: i32, partitions: i32, part: &Part) -> SnapshotMeta {
        SnapshotMeta {
            input: InputPosition::Kafka {
                topic: self.config.topic.clone(),
                partition: p,
                partitions,
                next_offset: part.state.next_offset.unwrap_or(0),
                end_of_input: part.at_end,
                inputs: part
                    .state
                    .inputs
                    .iter()
                    .map(|(s, &lines)| (format!("{s:016x}"), lines))
                    .collect(),
            },
            counts: part.state.counts(),
            config: self.config.window.clone(),
        }
    }

    /// Counts and metrics of snapshots published, and their offsets to the group.
    fn published(
        &self,
        owned: &mut Owned,
        consumer: &BaseConsumer<Self>,
        published: Vec<(i32, Written)>,
    ) -> Result<(), ProcessError> {
        let mut offsets = TopicPartitionList::new();
        let (mut took, mut bytes) = (Duration::ZERO, 0);
        for (p, w) in published {
            let next_offset = match &w.manifest.input {
                InputPosition::Kafka { next_offset, .. } => *next_offset,
                _ => 0,
            };
            took = took.max(w.took);
            bytes += w.manifest.bytes();
            owned.outcome.snapshots += 1;
            owned.outcome.last.insert(p, w.manifest);
            offsets.add_partition_offset(&self.config.topic, p, Offset::Offset(next_offset))?;
        }
        SnapshotPublished { took, bytes }.emit();
        observe::state_bytes(owned.parts.values().map(|p| &p.state));
        observe::score_segments(owned.parts.values().map(|p| &p.state));
        // Progress only, and never waited for: the snapshot holds the offsets.
        if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!(error = %e, "committing offsets to the group failed");
        }
        Ok(())
    }
}

/// The topic's partition count, asked of the brokers (a few tries: this runs when the
/// group has just assigned partitions, so the brokers are there).
fn read_partition_count(consumer: &BaseConsumer<Ctx>, topic: &str) -> Result<i32, ProcessError> {
    let mut tries = 0;
    loop {
        match partition_count(consumer.client(), topic) {
            Ok(n) => return Ok(n),
            Err(e) if tries >= 3 => return Err(e.into()),
            Err(_) => tries += 1,
        }
    }
}

/// Refuses to go on when the snapshots in `dir` are not one set of `topic` at `partitions`
/// partitions (a `run` snapshot beside them, another topic's, or another partition count).
fn check_set(dir: &Path, topic: &str, partitions: i32) -> Result<(), ProcessError> {
    match snapshot::set_shape(dir)? {
        None => Ok(()),
        Some(shape) if shape.topic == topic && shape.partitions == partitions => Ok(()),
        Some(shape) if shape.topic != topic => Err(ProcessError::OtherTopic {
            dir: dir.to_path_buf(),
            found: shape.topic,
            topic: topic.to_string(),
        }),
        Some(shape) => Err(ProcessError::PartitionsChanged {
            topic: topic.to_string(),
            was: shape.partitions,
            now: partitions,
            dir: dir.to_path_buf(),
        }),
    }
}
