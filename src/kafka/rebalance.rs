//! The processor's consumer context, on the poll thread: the rebalance callbacks (which
//! run inside `poll`) hand partitions taken and given up to the driver in band and wait
//! for its answer, so no message is applied elsewhere while partitions change hands; the
//! client's statistics go to the driver as log offsets, and say when the topic changed.
//!
//! Taking a partition loads its latest snapshot (in the driver) and assigns it at the
//! offset recorded there (from the beginning when it has none); committed group offsets
//! are never read. It first checks that the snapshots in the folder are one set of this
//! topic at today's partition count. Giving partitions up snapshots them first.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::lanes::{drain, Asks, Commits, Input};
use super::partition_count;
use super::processor::{ProcessConfig, ProcessError};
use crate::snapshot;

pub(super) struct Ctx {
    pub config: ProcessConfig,
    /// Into the driver.
    tx: SyncSender<Input>,
    /// The first error of a callback, for the poll loop to stop on.
    error: Mutex<Option<ProcessError>>,
    /// Whether `error` holds one: looked at on every pass of the poll loop without a lock.
    failed: AtomicBool,
    /// The owned partitions and the offsets they were assigned at.
    assigned: Mutex<BTreeMap<i32, Option<i64>>>,
    /// The topic's partition count, read when partitions are taken.
    partitions: AtomicI32,
    /// Counts rebalances: messages polled before one are not handed to the driver.
    generation: AtomicU64,
    commits: Commits,
    /// What the driver asks of this thread.
    asks: Arc<Asks>,
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
        // A broker that stops answering without closing its connections (frozen, or cut
        // off without a reset) stays `UP` until a request times out (`socket.timeout.ms`,
        // a minute): one with requests waiting and nothing received for `SILENT_US` is
        // taken as unreachable already. An idle connection (nothing waiting) is not.
        const SILENT_US: i64 = 10_000_000;
        let up = stats
            .brokers
            .values()
            .any(|b| b.state == "UP" && !(b.waitresp_cnt > 0 && b.rxidle > SILENT_US));
        crate::metrics::health::get().broker_reachable(up);
        let Some(topic) = stats.topics.get(&self.config.topic) else {
            return;
        };
        // Partitions added to the live topic: keys now map to other partitions.
        let count = topic.partitions.keys().filter(|&&p| p >= 0).count() as i32;
        let was = self.partitions.load(Ordering::SeqCst);
        if was > 0 && count > was {
            self.fail(ProcessError::PartitionsChanged {
                topic: self.config.topic.clone(),
                was,
                now: count,
                dir: self.config.snapshot_dir.clone(),
            });
        }
        let offsets = topic
            .partitions
            .iter()
            .filter(|(&p, part)| p >= 0 && part.hi_offset >= 0)
            .map(|(&p, part)| {
                let fetching = part.fetch_state == "active";
                (p, (part.lo_offset.max(0), part.hi_offset, fetching))
            })
            .collect();
        let _ = self.tx.send(Input::Offsets(offsets));
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.take(consumer, tpl),
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::warn!(error = ?err, "rebalance error; giving up partitions");
                }
                // A lost assignment (this member's session ended: the group gave its
                // partitions to others) publishes nothing more for them.
                self.give_up(consumer, consumer.assignment_lost());
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
            self.fail(e);
        }
    }
}

impl Ctx {
    pub fn new(
        config: ProcessConfig,
        tx: SyncSender<Input>,
        commits: Commits,
        asks: Arc<Asks>,
    ) -> Self {
        Self {
            config,
            tx,
            error: Mutex::new(None),
            failed: AtomicBool::new(false),
            assigned: Mutex::new(BTreeMap::new()),
            partitions: AtomicI32::new(0),
            generation: AtomicU64::new(0),
            commits,
            asks,
        }
    }

    /// Answers what the driver asked: leaves the group and joins it again when it dropped
    /// a fenced partition (the group then assigns it to its owner; this processor's other
    /// partitions are snapshotted and given up first, as at any rebalance), and reads the
    /// log end of partitions whose statistics contradict their snapshots.
    pub fn answer_asks(&self, consumer: &BaseConsumer<Self>) -> Result<(), ProcessError> {
        if self.asks.rejoin.swap(false, Ordering::SeqCst) {
            tracing::info!(topic = %self.config.topic, "rejoining the group after a fenced partition");
            consumer.unsubscribe();
            consumer.subscribe(&[&self.config.topic])?;
        }
        // One partition per pass of the poll loop: each asks the brokers (up to
        // LOG_END_WAIT), and the loop must go on polling meanwhile.
        let asked = {
            let mut asked = lock(&self.asks.log_ends);
            asked.pop_first()
        };
        if let Some(p) = asked {
            match consumer.fetch_watermarks(&self.config.topic, p, LOG_END_WAIT) {
                Ok((_, end)) => {
                    let _ = self.tx.send(Input::LogEnd { partition: p, end });
                }
                Err(e) => tracing::warn!(
                    partition = p,
                    error = %e,
                    "the partition's log end could not be read; asked again at the next statistics"
                ),
            }
        }
        Ok(())
    }

    fn fail(&self, e: ProcessError) {
        lock(&self.error).get_or_insert(e);
        self.failed.store(true, Ordering::SeqCst);
    }

    /// The first error a callback met, if any.
    pub fn error(&self) -> Option<ProcessError> {
        match self.failed.load(Ordering::SeqCst) {
            true => lock(&self.error).take(),
            false => None,
        }
    }

    /// How many rebalances there were: a batch polled under another assignment is dropped
    /// unsent (its messages are read again from the snapshots' offsets, by whichever
    /// process owns their partitions now).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The owned partitions and the offsets they were assigned at.
    pub fn assigned(&self) -> BTreeMap<i32, Option<i64>> {
        lock(&self.assigned).clone()
    }

    pub fn send(&self, input: Input) -> bool {
        self.tx.send(input).is_ok()
    }

    /// Has the driver load each assigned partition from its latest snapshot and sets the
    /// offset to start from in `tpl`, which is then assigned as it is.
    fn take(
        &self,
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
        check_set(c, count)?;
        let (reply, answer) = sync_channel(1);
        let asked = Input::Assign {
            partitions,
            count,
            reply,
        };
        let from = match self.tx.send(asked).ok().and_then(|()| answer.recv().ok()) {
            Some(from) => from?,
            None => return Err(ProcessError::Stopped),
        };
        let mut assigned = lock(&self.assigned);
        for (p, next) in from {
            let offset = next.map_or(Offset::Beginning, Offset::Offset);
            tpl.set_partition_offset(&c.topic, p, offset)?;
            assigned.insert(p, next);
        }
        Ok(())
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
        self.take(consumer, &mut tpl)?;
        consumer.assign(&tpl)?;
        Ok(())
    }

    /// Has the driver snapshot and let go every owned partition, then reports the offsets
    /// published to the group; with `lost`, drop them unpublished. A driver that already
    /// ended has nothing to give up.
    fn give_up(&self, consumer: &BaseConsumer<Self>, lost: bool) {
        if std::mem::take(&mut *lock(&self.assigned)).is_empty() {
            return;
        }
        let (reply, answer) = sync_channel(1);
        if self.tx.send(Input::Revoke { lost, reply }).is_ok() {
            if let Ok(published) = answer.recv() {
                self.commit(consumer, published);
            }
        }
    }

    /// Reports the offsets of the snapshots published since the last report to the group.
    pub fn commit_published(&self, consumer: &BaseConsumer<Self>) {
        let published = drain(&self.commits);
        self.commit(consumer, published);
    }

    /// Progress only, and never waited for: the snapshots hold the offsets.
    fn commit(&self, consumer: &BaseConsumer<Self>, published: Vec<(i32, i64)>) {
        if published.is_empty() {
            return;
        }
        let mut offsets = TopicPartitionList::new();
        for (p, next) in published {
            if let Err(e) =
                offsets.add_partition_offset(&self.config.topic, p, Offset::Offset(next))
            {
                tracing::warn!(error = %e, "an offset to commit was refused");
            }
        }
        if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!(error = %e, "committing offsets to the group failed");
        }
    }
}

/// How long the brokers are given to answer a partition's log end.
const LOG_END_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// Refuses to go on when the snapshots of `config` (its folder, or its bucket prefix) are
/// not one set of its topic at `partitions` partitions (a `run` snapshot beside them,
/// another topic's, or another partition count).
fn check_set(config: &ProcessConfig, partitions: i32) -> Result<(), ProcessError> {
    let (shape, dir) = match &config.remote {
        Some(bucket) => (
            snapshot::remote::block_on(snapshot::remote::set_shape(bucket))??,
            std::path::PathBuf::from(&bucket.url),
        ),
        None => (
            snapshot::set_shape(&config.snapshot_dir)?,
            config.snapshot_dir.clone(),
        ),
    };
    let topic = &config.topic;
    match shape {
        None => Ok(()),
        Some(shape) if shape.topic == *topic && shape.partitions == partitions => Ok(()),
        Some(shape) if shape.topic != *topic => Err(ProcessError::OtherTopic {
            dir,
            found: shape.topic,
            topic: topic.to_string(),
        }),
        Some(shape) => Err(ProcessError::PartitionsChanged {
            topic: topic.to_string(),
            was: shape.partitions,
            now: partitions,
            dir,
        }),
    }
}
