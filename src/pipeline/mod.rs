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
//! [`crate::kafka::lanes::Partitions`]. The driver is the only place that reads the wall
//! clock for snapshot timing; the pipeline's [`Pipeline::tick`] runs once a second.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::aggregate::{Core, Seen};
use crate::snapshot::{Beside, SnapshotError, SnapshotMeta, Written};

/// A lane's state as a snapshot writes it.
pub trait Lane {
    fn core(&self) -> &Core;
    /// The event ids counted, for lanes that drop duplicates.
    fn seen(&self) -> Option<&Seen> {
        None
    }
}

/// One lane: its state, its snapshot store, and whether it changed since its last snapshot.
pub struct Slot<L> {
    pub lane: L,
    store: Beside,
    dirty: bool,
}

impl<L> Slot<L> {
    pub fn new(lane: L, store: Beside) -> Self {
        Self {
            lane,
            store,
            dirty: false,
        }
    }

    /// The lane changed: its next snapshot is due at the next interval.
    pub fn touch(&mut self) {
        self.dirty = true;
    }
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

/// How [`Driver::snapshot`] writes: beside the stream (the loop stops only to copy each
/// lane's state), or now, on this thread (before lanes are given up, and at the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Beside,
    Now,
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
}

/// How long snapshots stopped the stream and took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// The longest the loop stopped for a periodic snapshot (copying the changed lanes'
    /// states; scoring and writing happen on other threads).
    pub longest_pause: Duration,
    /// The longest a periodic snapshot took to score and write beside the stream.
    pub longest_write: Duration,
    /// The time the last snapshot of a lane took (the stream had ended: it is on the
    /// critical path).
    pub last_write: Duration,
    pub published: u64,
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
        loop {
            let next = (last_snapshot + self.interval).min(last_tick + TICK);
            let wait = next.saturating_duration_since(Instant::now());
            let flow = match rx.recv_timeout(wait) {
                Ok(input) => self.pipeline.apply(&mut self.state, input)?,
                Err(RecvTimeoutError::Timeout) => Flow::Continue,
                Err(RecvTimeoutError::Disconnected) => Flow::End,
            };
            match flow {
                Flow::Continue => {}
                Flow::End => break,
                Flow::Abort => {
                    return Ok(Ended {
                        pipeline: self.pipeline,
                        lanes: self.state.lanes,
                        timings: self.state.timings,
                        waiting: Vec::new(),
                    })
                }
            }
            let now = Instant::now();
            if now >= last_tick + TICK {
                self.pipeline.tick(&mut self.state.lanes);
                last_tick = now;
            }
            if now >= last_snapshot + self.interval {
                self.state.snapshot(&mut self.pipeline, Write::Beside)?;
                last_snapshot = Instant::now();
            }
        }
        self.pipeline.finishing(&self.state.lanes);
        let waiting = self.state.last(&mut self.pipeline)?;
        self.pipeline.tick(&mut self.state.lanes);
        Ok(Ended {
            pipeline: self.pipeline,
            lanes: self.state.lanes,
            timings: self.state.timings,
            waiting,
        })
    }
}

impl<L: Lane> Snapshots<L> {
    /// Snapshots every lane that changed and may be snapshotted, beside the stream or now
    /// (`how`); a lane whose last snapshot is still being written beside waits for the
    /// next interval (it stays changed). Returns the lanes that wait.
    pub fn snapshot<P>(&mut self, pipeline: &mut P, how: Write) -> Result<Vec<i32>, P::Error>
    where
        P: Pipeline<Lane = L>,
    {
        let mut published = Vec::new();
        for (&key, slot) in self.lanes.iter_mut() {
            if let Some(w) = slot.store.finished(how == Write::Now)? {
                self.timings.longest_write = self.timings.longest_write.max(w.took);
                published.push((key, w));
            }
        }
        let mut waiting = Vec::new();
        let started = Instant::now();
        for (&key, slot) in self.lanes.iter_mut() {
            if !slot.dirty || slot.store.busy() {
                continue;
            }
            if !pipeline.ready(key) {
                waiting.push(key);
                continue;
            }
            let meta = pipeline.meta(key, &slot.lane)?;
            match how {
                Write::Beside => {
                    let core = slot.lane.core().clone();
                    let seen = slot.lane.seen().cloned();
                    slot.store.start(core, seen, meta)?;
                }
                Write::Now => {
                    let w = slot
                        .store
                        .write_now(slot.lane.core(), slot.lane.seen(), meta)?;
                    published.push((key, w));
                }
            }
            slot.dirty = false;
        }
        if how == Write::Beside {
            let paused = started.elapsed();
            self.timings.longest_pause = self.timings.longest_pause.max(paused);
        }
        self.timings.published += published.len() as u64;
        if !published.is_empty() {
            pipeline.published(&self.lanes, published)?;
        }
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
        let waiting = self.snapshot(pipeline, Write::Now)?;
        self.timings.last_write = t.elapsed();
        Ok(waiting)
    }
}
