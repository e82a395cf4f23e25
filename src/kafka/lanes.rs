//! `process`'s pipeline: one lane per owned partition of the topic in the one
//! [`crate::pipeline`] driver, which runs on a thread of its own. The poll thread (see
//! [`super::consume`]) hands it batches of polled messages and, in band, what the group
//! and the client say: partitions assigned (loaded here from their latest snapshots, and
//! their offsets answered), partitions revoked (snapshotted here before the answer), a
//! partition's end, the log offsets from the client's statistics, shutdown.
//!
//! Each partition's messages are applied in offset order, the events between two control
//! messages recorded as one batch ([`PartitionState::apply_batch`]). A partition's snapshot
//! waits until the dead letters of the messages it covers are delivered; the offsets of
//! published snapshots go back to the poll thread, which reports them to the group.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::batch::Batch;
use super::dead_letters::DeadLetters;
use super::observe::{self, Progress};
use super::partition::{PartitionState, Verdict};
use super::processor::{ProcessConfig, ProcessError, ProcessOutcome};
use super::{DeadLetter, END_OF_INPUT};
use crate::aggregate::{Core, Seen};
use crate::metrics::events::SnapshotPublished;
use crate::pipeline::{Flow, Lane, Lanes, Pipeline, Slot, Snapshots};
use crate::snapshot::{view, InputPosition, Location, SnapshotError, SnapshotMeta, Written};

/// How long the end of a run waits for undelivered dead letters before it gives up the
/// final snapshot of their partitions.
const FINAL_DEAD_LETTER_WAIT: Duration = Duration::from_secs(10);

/// Offsets of published snapshots, for the poll thread to report to the group.
pub(super) type Commits = Arc<Mutex<Vec<(i32, i64)>>>;

/// What the driver asks of the poll thread, which owns the consumer.
#[derive(Default)]
pub(super) struct Asks {
    /// A partition was fenced in group mode: leave the group and join it again, so the
    /// group gives the partition to whoever owns it now instead of this processor keeping
    /// it assigned while it skips its messages.
    pub rejoin: AtomicBool,
    /// Partitions whose log end, as a statistics sample gave it, is before what their
    /// snapshot covers: their log end is asked of the brokers now ([`Input::LogEnd`]).
    pub log_ends: Mutex<BTreeSet<i32>>,
}

/// Takes the offsets published so far.
pub(super) fn drain(commits: &Commits) -> Vec<(i32, i64)> {
    std::mem::take(&mut *commits.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Where an assigned partition is read from: its snapshot's next offset, or the beginning.
pub(super) type StartAt = (i32, Option<i64>);

/// What the poll thread hands the driver.
pub(super) enum Input {
    Messages(Batch),
    /// The consumer reached the partition's end.
    Eof(i32),
    /// Nothing was polled for a while (the end of a run is checked then too).
    Idle,
    /// From the client's statistics: each partition's (log start, log end) offsets and
    /// whether it is being fetched.
    Offsets(BTreeMap<i32, (i64, i64, bool)>),
    /// A partition's log end as the brokers answered it just now.
    LogEnd {
        partition: i32,
        end: i64,
    },
    /// The group assigned these partitions of a topic of `count`: load them and answer
    /// the offsets to read from (`None`: from the beginning).
    Assign {
        partitions: Vec<i32>,
        count: i32,
        reply: SyncSender<Result<Vec<StartAt>, ProcessError>>,
    },
    /// Give every partition up: snapshot them, then answer the offsets published. With
    /// `lost` (the group gave them to others already: this member's session ended), they
    /// are dropped unpublished: they are not this processor's to publish any more.
    Revoke {
        lost: bool,
        reply: SyncSender<Vec<(i32, i64)>>,
    },
    /// Stop: the last snapshots, then end.
    Shutdown,
    /// Stop now, writing nothing more (the poll thread failed).
    Abort,
}

/// One owned partition.
pub(super) struct Part {
    pub state: PartitionState,
    /// The last message applied was an `end_of_input`.
    at_end: bool,
    /// The consumer reached the partition's end after its last message.
    eof: bool,
    progress: Progress,
}

impl Lane for Part {
    fn core(&self) -> &Core {
        &self.state.core
    }

    fn seen(&self) -> Option<&Seen> {
        Some(&self.state.seen)
    }

    fn state_mut(&mut self) -> (&mut Core, Option<&mut Seen>) {
        (&mut self.state.core, Some(&mut self.state.seen))
    }
}

pub(super) struct Partitions {
    config: ProcessConfig,
    dead_letters: DeadLetters,
    pub outcome: ProcessOutcome,
    /// The topic's partition count, as of the last assignment.
    partitions: i32,
    /// (log start, log end) offsets of each partition, for the lag metric.
    offsets: BTreeMap<i32, (i64, i64)>,
    commits: Commits,
    /// Reused per batch.
    verdicts: Vec<Verdict>,
    by_partition: BTreeMap<i32, Vec<usize>>,
    /// Publishes the merged view of the topic beside the stream.
    pub view: view::Periodic,
    /// Asks of the poll thread: rejoin the group, read a partition's log end.
    asks: Arc<Asks>,
    /// The segment gauges, scored at most every [`observe::SEGMENTS_EVERY`].
    segments: observe::Segments,
}

impl Partitions {
    pub fn new(
        config: ProcessConfig,
        dead_letters: DeadLetters,
        commits: Commits,
        asks: Arc<Asks>,
    ) -> Self {
        let view = view::Periodic::new(
            &config.snapshot_dir,
            config.remote.clone(),
            config.view_interval,
        );
        let view = match &config.tables {
            Some(lake) => view.with_after(tables_after(lake.clone(), views_of(&config))),
            None => view,
        };
        Self {
            view,
            config,
            dead_letters,
            outcome: ProcessOutcome::default(),
            partitions: 0,
            offsets: BTreeMap::new(),
            commits,
            verdicts: Vec::new(),
            by_partition: BTreeMap::new(),
            asks,
            segments: observe::Segments::default(),
        }
    }

    /// Where this processor's merged views are (what `process --tables` publishes).
    pub fn views(&self) -> Location {
        views_of(&self.config)
    }

    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    fn messages(&mut self, lanes: &mut Lanes<Part>, batch: &Batch) {
        let now = Instant::now();
        for list in self.by_partition.values_mut() {
            list.clear();
        }
        for (i, m) in batch.messages().iter().enumerate() {
            self.by_partition.entry(m.partition).or_default().push(i);
        }
        let mut verdicts = std::mem::take(&mut self.verdicts);
        for (&p, list) in &self.by_partition {
            // Messages of a partition given up since they were polled are skipped: its
            // new owner reads them from the snapshot's offset.
            let Some(slot) = lanes.get_mut(&p).filter(|_| !list.is_empty()) else {
                continue;
            };
            let part = &mut slot.lane;
            let messages = list.iter().map(|&i| {
                let m = &batch.messages()[i];
                (m.offset, batch.control(m), batch.payload(m))
            });
            part.state.apply_batch(messages, &mut verdicts);
            let mut applied = 0;
            for (&i, verdict) in list.iter().zip(verdicts.drain(..)) {
                if verdict == Verdict::AlreadyApplied {
                    continue;
                }
                applied += 1;
                let m = &batch.messages()[i];
                // Only an end of input ends it: a watermark or an input's announcement
                // read last, with more to come, does not.
                part.at_end = batch.control(m) == Some(END_OF_INPUT.as_bytes())
                    && verdict == Verdict::Control;
                if let Some(record) = dead_letter(p, m.offset, batch.payload(m), verdict) {
                    self.dead_letters.send(p, &record);
                }
            }
            if applied > 0 {
                part.eof = false;
                part.progress.consumed += applied;
                slot.touch();
                self.outcome.messages += applied;
                self.outcome.first_message.get_or_insert(now);
                self.outcome.last_message = Some(now);
            }
        }
        self.verdicts = verdicts;
    }

    /// With `stop_at_end`, once every owned partition applied an `end_of_input` as its
    /// last message and has nothing more to read: their snapshots now, then the end (once
    /// their dead letters are delivered).
    fn at_end(&mut self, driver: &mut Snapshots<Part>) -> Result<Flow, ProcessError> {
        let lanes = &driver.lanes;
        let done = self.config.stop_at_end
            && !lanes.is_empty()
            && lanes.values().all(|s| s.lane.at_end && s.lane.eof);
        if done && driver.snapshot_now(self)?.is_empty() {
            return Ok(Flow::End);
        }
        Ok(Flow::Continue)
    }

    /// Each partition's log offsets from a statistics sample. A log that ends before what
    /// a partition's snapshot covers means the topic was deleted and created again (or
    /// truncated), but a sample can be older than the snapshot (taken before a rebalance
    /// gave the partition to this processor again): the brokers are asked now, and only
    /// their answer ([`Partitions::log_end`]) can stop the processor.
    fn offsets(&mut self, lanes: &Lanes<Part>, offsets: BTreeMap<i32, (i64, i64, bool)>) {
        let mut ask = Vec::new();
        for (p, (start, end, fetching)) in offsets {
            self.offsets.insert(p, (start, end));
            let covered = lanes.get(&p).and_then(|s| s.lane.state.next_offset);
            if covered.is_some_and(|n| fetching && n > end) {
                ask.push(p);
            }
        }
        if !ask.is_empty() {
            let mut asked = self.asks.log_ends.lock().unwrap_or_else(|p| p.into_inner());
            asked.extend(ask);
        }
    }

    /// Partition `p`'s log end as the brokers answered it just now: before what its
    /// snapshot covers, the topic's offsets name other messages.
    fn log_end(&mut self, lanes: &Lanes<Part>, p: i32, end: i64) -> Result<(), ProcessError> {
        let covered = lanes.get(&p).and_then(|s| s.lane.state.next_offset);
        if let Some(covered) = covered.filter(|&n| n > end) {
            return Err(ProcessError::TopicChanged {
                topic: self.config.topic.clone(),
                partition: p,
                covered,
                end,
                dir: self.config.snapshot_dir.clone(),
            });
        }
        Ok(())
    }

    fn assign(
        &mut self,
        lanes: &mut Lanes<Part>,
        partitions: Vec<i32>,
    ) -> Result<Vec<StartAt>, ProcessError> {
        let mut from = Vec::new();
        for p in partitions {
            let (part, store, stale) = self.open_part(p)?;
            from.push((p, part.state.next_offset));
            let mut slot = Slot::new(part, store);
            if stale {
                // Taken from an older snapshot than the pointer names (that one is damaged):
                // published again at the next interval, so the pointer names a good one.
                slot.touch();
            }
            lanes.insert(p, slot);
        }
        crate::metrics::set_ready(true);
        self.publish_metrics(lanes);
        let partitions: Vec<i32> = lanes.keys().copied().collect();
        tracing::info!(?partitions, topic = %self.config.topic, of = self.partitions, "assigned");
        Ok(from)
    }

    /// Snapshots every owned partition whose dead letters are delivered (waiting for them
    /// a little), then lets them all go: a partition not snapshotted is read again by its
    /// next owner from its last snapshot, so nothing is lost.
    fn revoke(&mut self, driver: &mut Snapshots<Part>) -> Result<(), ProcessError> {
        let parts: Vec<i32> = driver.lanes.keys().copied().collect();
        if parts.is_empty() {
            return Ok(());
        }
        self.dead_letters
            .wait(&parts, self.config.snapshot_interval);
        driver.snapshot_giving_up(self)?;
        self.publish_metrics(&mut driver.lanes);
        for &p in &parts {
            observe::released(p);
            self.dead_letters.forget(p);
        }
        tracing::info!(partitions = ?parts, topic = %self.config.topic, "gave up");
        driver.lanes.clear();
        Ok(())
    }

    /// Drops every owned partition unpublished: the group gave them to others when this
    /// member's session ended (paused, cut off). A snapshot being written beside the stream
    /// is told to give up; one that still lands is either read by the new owner (before its
    /// claim) or refused (after it), never published over the new owner's.
    fn lose(&mut self, driver: &mut Snapshots<Part>) {
        let parts: Vec<i32> = driver.lanes.keys().copied().collect();
        for slot in driver.lanes.values() {
            slot.supersede();
        }
        for &p in &parts {
            observe::released(p);
            self.dead_letters.forget(p);
        }
        tracing::warn!(
            partitions = ?parts,
            topic = %self.config.topic,
            "lost: the group gave these partitions to others while this processor was away \
             (past its session timeout); nothing more is published for them, and their new \
             owners read on from their last snapshots"
        );
        driver.lanes.clear();
    }

    /// Brings the metrics up to the owned partitions' state.
    fn publish_metrics(&self, lanes: &mut Lanes<Part>) {
        observe::publish(lanes.iter_mut().map(|(&p, slot)| observe::Owned {
            partition: p,
            state: &slot.lane.state,
            progress: &mut slot.lane.progress,
            offsets: self.offsets.get(&p).copied(),
        }));
    }
}

impl Pipeline for Partitions {
    type Input = Input;
    type Lane = Part;
    type Error = ProcessError;

    fn apply(&mut self, driver: &mut Snapshots<Part>, input: Input) -> Result<Flow, ProcessError> {
        match input {
            Input::Messages(batch) => self.messages(&mut driver.lanes, &batch),
            Input::Eof(p) => {
                if let Some(slot) = driver.lanes.get_mut(&p) {
                    slot.lane.eof = true;
                }
            }
            Input::Idle => {}
            Input::Offsets(offsets) => self.offsets(&driver.lanes, offsets),
            Input::LogEnd { partition, end } => self.log_end(&driver.lanes, partition, end)?,
            Input::Assign {
                partitions,
                count,
                reply,
            } => {
                self.partitions = count;
                let answer = self.assign(&mut driver.lanes, partitions);
                // The poll thread stops on an error it is answered; so does this loop.
                let failed = answer.is_err();
                let _ = reply.send(answer);
                if failed {
                    return Ok(Flow::Abort);
                }
            }
            Input::Revoke { lost: false, reply } => {
                self.revoke(driver)?;
                let _ = reply.send(drain(&self.commits));
            }
            Input::Revoke { lost: true, reply } => {
                self.lose(driver);
                let _ = reply.send(Vec::new());
            }
            Input::Shutdown => return Ok(Flow::End),
            Input::Abort => return Ok(Flow::Abort),
        }
        self.at_end(driver)
    }

    fn ready(&self, p: i32) -> bool {
        self.dead_letters.outstanding(p) == 0
    }

    /// What partition `p`'s snapshot covers.
    fn meta(&mut self, p: i32, part: &Part) -> Result<SnapshotMeta, ProcessError> {
        Ok(SnapshotMeta {
            input: InputPosition::Kafka {
                topic: self.config.topic.clone(),
                partition: p,
                partitions: self.partitions,
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
        })
    }

    /// Counts and metrics of snapshots published, and their offsets for the group.
    fn published(
        &mut self,
        lanes: &Lanes<Part>,
        written: Vec<(i32, Written)>,
    ) -> Result<(), ProcessError> {
        let (mut took, mut bytes) = (Duration::ZERO, 0);
        let mut commits = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        for (p, w) in written {
            if let InputPosition::Kafka { next_offset, .. } = &w.manifest.input {
                commits.push((p, *next_offset));
            }
            took = took.max(w.took);
            bytes += w.manifest.bytes();
            self.outcome.snapshots += 1;
            self.outcome.last.insert(p, w.manifest);
        }
        SnapshotPublished { took, bytes }.emit();
        self.view.poke();
        observe::state_bytes(lanes.values().map(|s| &s.lane.state));
        self.segments
            .published(lanes.values().map(|s| &s.lane.state));
        Ok(())
    }

    fn tick(&mut self, lanes: &mut Lanes<Part>) {
        self.dead_letters.retry();
        // A view due is written even when nothing is published any more (an idle
        // processor's last snapshots get their view within an interval).
        self.view.poke();
        self.segments.tick(lanes.values().map(|s| &s.lane.state));
        let waiting: Vec<i32> = lanes.keys().copied().filter(|&p| !self.ready(p)).collect();
        self.dead_letters.warn_waiting(&waiting);
        self.publish_metrics(lanes);
    }

    fn finishing(&mut self, lanes: &Lanes<Part>) {
        let parts: Vec<i32> = lanes.keys().copied().collect();
        self.dead_letters.wait(&parts, FINAL_DEAD_LETTER_WAIT);
    }

    /// A partition another processor claimed since this one took it. In group mode the
    /// lane is dropped and the poll thread rejoins the group (the partition is given back,
    /// never kept assigned while its messages are skipped); with `--assign` there is no
    /// group to give it back to: the processor stops with the error.
    fn fenced(&mut self, p: i32, why: &SnapshotError) -> bool {
        if self.config.assignment.is_some() {
            tracing::error!(
                partition = p,
                topic = %self.config.topic,
                error = %why,
                "another processor claimed this partition (an --assign that overlaps this \
                 one's): stopping, as a static assignment cannot give it back"
            );
            return false;
        }
        tracing::warn!(
            partition = p,
            topic = %self.config.topic,
            error = %why,
            "gave up: another processor claimed this partition since this one took it \
             (its session ended while this one was paused or cut off); rejoining the group, \
             and its messages are read by the new owner"
        );
        observe::released(p);
        self.dead_letters.forget(p);
        self.outcome.fenced.push(p);
        self.asks.rejoin.store(true, Ordering::SeqCst);
        true
    }
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

/// Opening a partition from its snapshots.
mod open;

#[cfg(test)]
mod tests;

/// The merged views of the topic `config` processes: `<dir>/merged/`, in its folder or its
/// bucket.
fn views_of(config: &ProcessConfig) -> Location {
    match &config.remote {
        Some(bucket) => Location::Bucket(bucket.child(crate::snapshot::VIEW_DIR)),
        None => Location::Dir(crate::snapshot::view_dir(&config.snapshot_dir)),
    }
}

/// After a view: its tables, published to `lake` unless they were within the tables'
/// interval (a failure waits for the next view).
fn tables_after(lake: crate::lake::Lake, views: Location) -> view::AfterView {
    let last: Mutex<Option<Instant>> = Mutex::new(None);
    Arc::new(move || {
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < lake.policy.every) {
            return;
        }
        *last = Some(Instant::now());
        match crate::lake::publish_latest(&lake, &views) {
            Ok(p) => tracing::debug!(?p, "tables published"),
            Err(e) => tracing::warn!(
                error = %e,
                "the tables were not published; tried again after the next view"
            ),
        }
    })
}
