//! The one pipeline driver, for `run` and `process` alike: a loop on a thread of its own
//! that owns the keyed lanes of state (one for `run`, one per owned partition for
//! `process`) and takes everything from its source through one channel: batches of input
//! and, in band, control (end of input, shutdown, partitions taken or given up). It
//! snapshots each lane that changed every snapshot interval from a copy written beside the
//! stream ([`Beside`]), and each lane's last snapshot on this thread before it ends.
//!
//! What differs between the commands (what a batch is, what a snapshot records beside the
//! core, when a lane may be snapshotted, what happens once one is published) is a
//! [`Pipeline`]: `run`'s is [`crate::ingest::File`], `process`'s is
//! `kafka::lanes::Partitions`. The driver is the only place that reads the wall
//! clock for snapshot timing; the pipeline's [`Pipeline::tick`] runs once a second.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::aggregate::{Core, Seen};
use crate::snapshot::{Beside, Kind, Settle, SnapshotError, SnapshotMeta, Written};

/// A lane's state as a snapshot writes it.
pub trait Lane {
    fn core(&self) -> &Core;
    /// The event ids counted, for lanes that drop duplicates.
    fn seen(&self) -> Option<&Seen> {
        None
    }
    /// The state, to copy what changed and to forget it once a snapshot is published.
    fn state_mut(&mut self) -> (&mut Core, Option<&mut Seen>);
}

/// A copy of a lane's state for a snapshot of `kind` (what changed, when the lane tracks
/// its changes and the store takes them; else the whole state), and where it was taken.
/// With `track`, a lane that does not track its changes yet starts at this whole copy
/// (`run`'s lane: tracking costs the stream nothing until the first snapshot, so a run
/// that ends before one pays nothing).
fn copy<L: Lane>(
    lane: &mut L,
    changes: bool,
    track: bool,
) -> ((Core, Option<Seen>), Kind, Option<Settle>) {
    if !(changes && lane.core().tracks_changes()) {
        let settle = mark(lane, track);
        let whole = (lane.core().clone(), lane.seen().cloned());
        return (whole, Kind::Whole, settle);
    }
    let (core, seen) = lane.state_mut();
    let fresh = seen.map(|s| s.changed());
    let (part, mark) = core.changed();
    let settle = Settle {
        core: mark,
        seen: fresh.clone(),
    };
    ((part, fresh), Kind::Changes, Some(settle))
}

/// Where a whole snapshot written from the lane's state in place is taken (see [`copy`]);
/// with `track`, the lane tracks its changes from here on.
fn mark<L: Lane>(lane: &mut L, track: bool) -> Option<Settle> {
    let (core, mut seen) = lane.state_mut();
    if track && !core.tracks_changes() {
        core.track_changes();
        if let Some(seen) = seen.as_deref_mut() {
            seen.track_changes();
        }
    }
    core.tracks_changes().then(|| Settle {
        core: core.mark(),
        seen: seen.map(|s| s.changed()),
    })
}

/// The snapshot `settle` marks was published: the lane forgets the changes it held.
fn settled<L: Lane>(lane: &mut L, settle: &Settle) {
    let (core, seen) = lane.state_mut();
    core.settle(settle.core);
    if let (Some(seen), Some(published)) = (seen, &settle.seen) {
        seen.settle(published);
    }
}

/// One lane: its state, its snapshot store, and whether it changed since its last snapshot.
pub struct Slot<L> {
    pub lane: L,
    store: Beside,
    dirty: bool,
    /// Periodic snapshots of this lane that could not be published, in a row.
    failed: u32,
}

/// A lane's periodic snapshots that may fail to be published in a row (a store that is
/// away) before the command stops with the error; each is tried again at the next
/// interval, and the stream goes on meanwhile.
pub const MAX_FAILED_SNAPSHOTS: u32 = 30;

impl<L> Slot<L> {
    pub fn new(lane: L, store: Beside) -> Self {
        Self {
            lane,
            store,
            dirty: false,
            failed: 0,
        }
    }

    /// A periodic snapshot of this lane could not be published: counted, said, and the
    /// lane is snapshotted again at the next interval; an error once too many failed in a
    /// row.
    fn failed(&mut self, key: i32, e: SnapshotError) -> Result<(), SnapshotError> {
        self.failed += 1;
        self.dirty = true;
        crate::metrics::events::SnapshotFailed.emit();
        if self.failed > MAX_FAILED_SNAPSHOTS {
            return Err(e);
        }
        tracing::warn!(
            lane = key,
            error = %e,
            in_a_row = self.failed,
            "a snapshot could not be published; the next interval tries again"
        );
        Ok(())
    }

    /// Tells the lane's snapshot being written beside the stream, if any, to publish
    /// nothing (the lane is being dropped).
    pub fn supersede(&self) {
        self.store.supersede();
    }

    /// The lane changed: its next snapshot is due at the next interval.
    pub fn touch(&mut self) {
        self.dirty = true;
    }
}

/// What became of a lane's snapshot: decided once, here, from what the store returned,
/// and settled once by the driver ([`Snapshots::settle`]).
#[derive(Debug)]
pub enum Outcome {
    /// Published: its pointer names it.
    Published(Box<Written>),
    /// Another writer claimed the lane's state since this one took it: not this
    /// process's to publish any more.
    Fenced(SnapshotError),
    /// The store failed (after its own retries): nothing half-published; tried again.
    Failed(SnapshotError),
    /// Anything else (a local disk error, a bug): the driver stops.
    Broken(SnapshotError),
}

impl Outcome {
    /// The outcome of a snapshot the store returned; none when there was none to collect
    /// or it was given up for a newer one.
    pub fn of(result: Result<Option<Written>, SnapshotError>) -> Option<Outcome> {
        match result {
            Ok(Some(w)) => Some(Outcome::Published(Box::new(w))),
            Ok(None) | Err(SnapshotError::Superseded) => None,
            Err(e @ SnapshotError::Fenced { .. }) => Some(Outcome::Fenced(e)),
            Err(e @ SnapshotError::Store { .. }) => Some(Outcome::Failed(e)),
            Err(e) => Some(Outcome::Broken(e)),
        }
    }
}

/// What a snapshot written now that the store failed does.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// Stops the driver with the error (the last snapshot of a run).
    Stops,
    /// Is said and skipped (a lane being given up).
    Skipped,
}

/// The lanes a driver owns, by key.
pub type Lanes<L> = BTreeMap<i32, Slot<L>>;

/// What the source asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Write every changed lane's last snapshot, then end.
    End,
    /// End now, writing nothing more (the source failed).
    Abort,
}

/// What a command's pipeline adds to the driver.
pub trait Pipeline {
    type Input: Send;
    type Lane: Lane;
    type Error: From<SnapshotError>;

    /// Applies one input from the source to the lanes.
    fn apply(
        &mut self,
        driver: &mut Snapshots<Self::Lane>,
        input: Self::Input,
    ) -> Result<Flow, Self::Error>;

    /// Whether lane `key` may be snapshotted now; a lane that may not waits (its dead
    /// letters are not delivered yet).
    fn ready(&self, _key: i32) -> bool {
        true
    }

    /// What lane `key`'s snapshot records besides its state, taken now.
    fn meta(&mut self, key: i32, lane: &Self::Lane) -> Result<SnapshotMeta, Self::Error>;

    /// Snapshots were published (key and what was written).
    fn published(
        &mut self,
        lanes: &Lanes<Self::Lane>,
        written: Vec<(i32, Written)>,
    ) -> Result<(), Self::Error>;

    /// Once a second: metrics, retries.
    fn tick(&mut self, lanes: &mut Lanes<Self::Lane>);

    /// Before the last snapshots: a last chance for what they wait for.
    fn finishing(&mut self, _lanes: &Lanes<Self::Lane>) {}

    /// Whether the lanes' last snapshots are whole even where the store takes changes
    /// (`run`'s: its last snapshot's tables are its results, read as they are).
    fn last_whole(&self) -> bool {
        false
    }

    /// Lane `key`'s snapshot was refused because another writer published that lane's
    /// state since ([`SnapshotError::Fenced`]): whether the lane is dropped and the rest go
    /// on (else the driver stops with the error).
    fn fenced(&mut self, _key: i32, _why: &SnapshotError) -> bool {
        false
    }
}

/// How long snapshots stopped the stream and took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// The longest the loop stopped for a periodic snapshot: copying one lane's state (the
    /// changed lanes are copied one per pass of the loop; scoring and writing happen on
    /// other threads).
    pub longest_pause: Duration,
    /// The longest a periodic snapshot took to score and write beside the stream.
    pub longest_write: Duration,
    /// The time the last snapshot of a lane took (the stream had ended: it is on the
    /// critical path).
    pub last_write: Duration,
}

/// The lanes and their snapshots, as a [`Pipeline`] sees them while it applies input.
pub struct Snapshots<L> {
    pub lanes: Lanes<L>,
    pub timings: Timings,
}

/// How a driver ended: its lanes and pipeline, for the command's summary.
pub struct Ended<P: Pipeline> {
    pub pipeline: P,
    pub lanes: Lanes<P::Lane>,
    pub timings: Timings,
    /// Lanes whose last snapshot was not written because they had to wait.
    pub waiting: Vec<i32>,
}

pub struct Driver<P: Pipeline> {
    pipeline: P,
    state: Snapshots<P::Lane>,
    interval: Duration,
}

const TICK: Duration = Duration::from_secs(1);

impl<P: Pipeline> Driver<P> {
    pub fn new(pipeline: P, lanes: Lanes<P::Lane>, interval: Duration) -> Self {
        Self {
            pipeline,
            state: Snapshots {
                lanes,
                timings: Timings::default(),
            },
            interval,
        }
    }

    /// Runs until the pipeline ends it or the source goes away (which ends it like a
    /// shutdown: the last snapshots are written).
    pub fn run(mut self, rx: Receiver<P::Input>) -> Result<Ended<P>, P::Error> {
        let mut last_snapshot = Instant::now();
        let mut last_tick = Instant::now();
        // Lanes whose periodic snapshot is yet to start this interval: one a pass, so the
        // stream stops for one lane's copy at a time.
        let mut due: Vec<i32> = Vec::new();
        loop {
            let next = (last_snapshot + self.interval).min(last_tick + TICK);
            let wait = match due.is_empty() {
                true => next.saturating_duration_since(Instant::now()),
                false => Duration::ZERO,
            };
            let flow = match rx.recv_timeout(wait) {
                Ok(input) => self.pipeline.apply(&mut self.state, input)?,
                Err(RecvTimeoutError::Timeout) => Flow::Continue,
                Err(RecvTimeoutError::Disconnected) => Flow::End,
            };
            match flow {
                Flow::Continue => {}
                Flow::End => break,
                Flow::Abort => return Ok(self.ended(Vec::new())),
            }
            let now = Instant::now();
            if now >= last_tick + TICK {
                self.pipeline.tick(&mut self.state.lanes);
                last_tick = now;
            }
            if now >= last_snapshot + self.interval {
                self.state.collect(&mut self.pipeline)?;
                due = self.state.lanes.keys().rev().copied().collect();
                last_snapshot = now;
            }
            if let Some(key) = due.pop() {
                self.state.start(&mut self.pipeline, key)?;
            }
        }
        self.pipeline.finishing(&self.state.lanes);
        let waiting = self.state.last(&mut self.pipeline)?;
        self.pipeline.tick(&mut self.state.lanes);
        Ok(self.ended(waiting))
    }

    fn ended(self, waiting: Vec<i32>) -> Ended<P> {
        Ended {
            pipeline: self.pipeline,
            lanes: self.state.lanes,
            timings: self.state.timings,
            waiting,
        }
    }
}

impl<L: Lane> Snapshots<L> {
    /// Publishes the periodic snapshots written beside the stream since the last call.
    fn collect<P>(&mut self, pipeline: &mut P) -> Result<(), P::Error>
    where
        P: Pipeline<Lane = L>,
    {
        let published = self.finished(pipeline, false)?;
        self.published(pipeline, published)
    }

    /// The snapshots written beside the stream that are done (with `wait`, all of them),
    /// each settled (see [`Snapshots::settle`]).
    fn finished<P>(
        &mut self,
        pipeline: &mut P,
        wait: bool,
    ) -> Result<Vec<(i32, Written)>, SnapshotError>
    where
        P: Pipeline<Lane = L>,
    {
        let mut done = Vec::new();
        let keys: Vec<i32> = self.lanes.keys().copied().collect();
        for key in keys {
            let Some(slot) = self.lanes.get_mut(&key) else {
                continue;
            };
            if let Some(outcome) = Outcome::of(slot.store.finished(wait)) {
                self.settle(pipeline, key, outcome, &mut done)?;
            }
        }
        Ok(done)
    }

    /// Settles lane `key`'s snapshot, whatever became of it, in this one place: published
    /// (added to `done`), fenced (the lane dropped, when the pipeline allows it), failed
    /// (counted, tried again at the next interval, up to [`MAX_FAILED_SNAPSHOTS`] in a
    /// row), anything else stops the driver.
    fn settle<P>(
        &mut self,
        pipeline: &mut P,
        key: i32,
        outcome: Outcome,
        done: &mut Vec<(i32, Written)>,
    ) -> Result<(), SnapshotError>
    where
        P: Pipeline<Lane = L>,
    {
        let Some(slot) = self.lanes.get_mut(&key) else {
            return Ok(());
        };
        match outcome {
            Outcome::Published(w) => {
                self.timings.longest_write = self.timings.longest_write.max(w.took);
                slot.failed = 0;
                if let Some(settle) = &w.settle {
                    settled(&mut slot.lane, settle);
                }
                done.push((key, *w));
                Ok(())
            }
            Outcome::Failed(e) => slot.failed(key, e),
            Outcome::Fenced(e) => self.drop_fenced(pipeline, key, e),
            Outcome::Broken(e) => Err(e),
        }
    }

    /// Drops lane `key`, whose snapshot another writer's newer one fenced: its state is
    /// not this process's to publish any more (its new owner has it).
    fn drop_fenced<P>(
        &mut self,
        pipeline: &mut P,
        key: i32,
        e: SnapshotError,
    ) -> Result<(), SnapshotError>
    where
        P: Pipeline<Lane = L>,
    {
        if !pipeline.fenced(key, &e) {
            return Err(e);
        }
        self.lanes.remove(&key);
        Ok(())
    }

    fn published<P>(
        &mut self,
        pipeline: &mut P,
        written: Vec<(i32, Written)>,
    ) -> Result<(), P::Error>
    where
        P: Pipeline<Lane = L>,
    {
        if written.is_empty() {
            return Ok(());
        }
        pipeline.published(&self.lanes, written)
    }

    /// Starts lane `key`'s periodic snapshot beside the stream, if it changed, may be
    /// snapshotted, and its previous one is written (else it waits for the next interval:
    /// it stays changed). The loop stops only to copy this one lane's state.
    fn start<P>(&mut self, pipeline: &mut P, key: i32) -> Result<(), P::Error>
    where
        P: Pipeline<Lane = L>,
    {
        // Its previous snapshot may have finished since the interval began: collected
        // first, for the store is with the writer until then.
        let Some(slot) = self.lanes.get_mut(&key) else {
            return Ok(());
        };
        if let Some(outcome) = Outcome::of(slot.store.finished(false)) {
            let mut done = Vec::new();
            self.settle(pipeline, key, outcome, &mut done)?;
            self.published(pipeline, done)?;
        }
        let Some(slot) = self.lanes.get_mut(&key) else {
            return Ok(());
        };
        // Pending, not busy: one that finished since it was looked at above is collected
        // at the next pass (the store is with it until then).
        if !slot.dirty || slot.store.pending() || !pipeline.ready(key) {
            return Ok(());
        }
        let started = Instant::now();
        let meta = pipeline.meta(key, &slot.lane)?;
        let track = slot.store.incremental();
        let (state, kind, settle) = copy(&mut slot.lane, slot.store.takes_changes(), track);
        slot.store.start(state, meta, kind, settle)?;
        slot.dirty = false;
        let paused = started.elapsed();
        self.timings.longest_pause = self.timings.longest_pause.max(paused);
        Ok(())
    }

    /// Snapshots every lane that changed and may be snapshotted, now, on this thread,
    /// after those being written beside the stream. Returns the lanes that wait.
    pub fn snapshot_now<P>(&mut self, pipeline: &mut P) -> Result<Vec<i32>, P::Error>
    where
        P: Pipeline<Lane = L>,
    {
        self.snapshot_now_or(pipeline, Failure::Stops, false)
    }

    /// Like [`Snapshots::snapshot_now`], for lanes being given up: one the store fails is
    /// said and skipped (its next owner reads on from its previous snapshot, so nothing is
    /// lost), and the driver goes on.
    pub fn snapshot_giving_up<P>(&mut self, pipeline: &mut P) -> Result<Vec<i32>, P::Error>
    where
        P: Pipeline<Lane = L>,
    {
        self.snapshot_now_or(pipeline, Failure::Skipped, false)
    }

    fn snapshot_now_or<P>(
        &mut self,
        pipeline: &mut P,
        failure: Failure,
        whole: bool,
    ) -> Result<Vec<i32>, P::Error>
    where
        P: Pipeline<Lane = L>,
    {
        let mut published = self.finished(pipeline, true)?;
        let mut waiting = Vec::new();
        let keys: Vec<i32> = self.lanes.keys().copied().collect();
        for key in keys {
            let Some(slot) = self.lanes.get_mut(&key) else {
                continue;
            };
            if !slot.dirty {
                continue;
            }
            if !pipeline.ready(key) {
                waiting.push(key);
                continue;
            }
            let meta = pipeline.meta(key, &slot.lane)?;
            // What changed, when the store takes it: the last snapshot of a lane is on the
            // critical path. Else the whole state, written from the lane in place.
            let track = slot.store.incremental();
            let changes = !whole && slot.store.takes_changes();
            let written = if changes && slot.lane.core().tracks_changes() {
                let ((core, seen), kind, settle) = copy(&mut slot.lane, true, track);
                slot.store
                    .write_now((&core, seen.as_ref()), meta, kind, settle)
            } else {
                let settle = mark(&mut slot.lane, track);
                let state = (slot.lane.core(), slot.lane.seen());
                slot.store.write_now(state, meta, Kind::Whole, settle)
            };
            slot.dirty = false;
            // A snapshot written now is not tried again.
            let outcome = match (Outcome::of(written.map(Some)), failure) {
                (Some(Outcome::Failed(e)), Failure::Stops) => Outcome::Broken(e),
                (Some(Outcome::Failed(e)), Failure::Skipped) => {
                    crate::metrics::events::SnapshotFailed.emit();
                    tracing::warn!(
                        lane = key,
                        error = %e,
                        "the snapshot of a lane being given up could not be published; \
                         its next owner reads on from its previous snapshot"
                    );
                    continue;
                }
                (Some(outcome), _) => outcome,
                (None, _) => continue,
            };
            self.settle(pipeline, key, outcome, &mut published)?;
        }
        self.published(pipeline, published)?;
        Ok(waiting)
    }

    /// Each changed lane's last snapshot, written now. A periodic one still being written
    /// for a lane whose last one is written now is given up: this one replaces it, and
    /// waiting for it would only delay it.
    pub fn last<P>(&mut self, pipeline: &mut P) -> Result<Vec<i32>, P::Error>
    where
        P: Pipeline<Lane = L>,
    {
        for (&key, slot) in &self.lanes {
            if slot.dirty && pipeline.ready(key) {
                slot.store.supersede();
            }
        }
        let t = Instant::now();
        let whole = pipeline.last_whole();
        let waiting = self.snapshot_now_or(pipeline, Failure::Stops, whole)?;
        self.timings.last_write = t.elapsed();
        Ok(waiting)
    }
}
