//! Moves data into the aggregate core and snapshots out of it. The channel into the core
//! carries a closed enum of messages: events with the names they need, rejected lines,
//! end of input and shutdown. The driver owns the core, the snapshot store and the
//! dead-letter file, is the only place that reads the wall clock for snapshot timing, and
//! updates the pipeline's metrics once per message (never per event).

pub mod embedded;
pub mod feed;
pub mod spill;

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storepulse_replay::{PurchaseEvent, ReadStats, RejectReason, Rejected, Sym};

use crate::aggregate::Core;
use crate::snapshot::{
    Counts, InputPosition, Manifest, RejectedSink, SnapshotError, SnapshotMeta, SnapshotStore,
    WindowConfig,
};

/// Everything that travels into the core.
#[derive(Debug)]
pub enum Message {
    /// Events in replay order, and the names of symbols first used by them.
    Events {
        names: Vec<Box<str>>,
        events: Vec<PurchaseEvent>,
    },
    /// Lines the reader read: their rejections and counts.
    Read {
        rejects: Vec<Rejected>,
        stats: ReadStats,
        lines_read: u64,
    },
    /// The input is exhausted: every day becomes final, then a last snapshot.
    EndOfInput,
    /// Stop early: drain what arrived, write a last snapshot, stop.
    Shutdown,
}

/// Gives the original text of an event's line, for late events.
pub type LineLookup = Box<dyn FnMut(&PurchaseEvent) -> Vec<u8> + Send>;

pub struct DriverConfig {
    pub snapshot_interval: Duration,
    pub window: WindowConfig,
    pub source: String,
    pub order: String,
}

/// How a driver ended.
#[derive(Debug)]
pub struct DriverOutcome {
    pub core: Core,
    pub manifest: Manifest,
    pub complete: bool,
    /// The longest the core stopped for a periodic snapshot (copying its state; the
    /// scoring and writing happen on another thread).
    pub longest_pause: Duration,
    /// The longest a periodic snapshot took to score and write beside the stream, and
    /// the time the last snapshot took (the stream had ended: it is on the critical path).
    pub longest_write: Duration,
    pub last_write: Duration,
    /// Non-blank lines after the header this driver was told were read: a resumed run's
    /// own, without the ones its snapshot already counted.
    pub records_read: u64,
}

/// A periodic snapshot being written on its own thread (the store comes back with it),
/// and the flag that tells it to give up.
type Writing = (
    std::thread::JoinHandle<(SnapshotStore, Result<Manifest, SnapshotError>, Duration)>,
    Arc<AtomicBool>,
);

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("writing rejected lines failed: {0}")]
    Rejected(std::io::Error),
}

pub struct Driver {
    core: Core,
    /// `None` while a periodic snapshot is being written (`writing`).
    store: Option<SnapshotStore>,
    writing: Option<Writing>,
    longest_pause: Duration,
    longest_write: Duration,
    last_write: Duration,
    sink: RejectedSink,
    lookup: LineLookup,
    config: DriverConfig,
    read: ReadStats,
    /// The producer's symbols (in the order their names arrived) to the core's.
    remap: Vec<Sym>,
    /// The last batch in the core's symbols (reused).
    batch: Vec<PurchaseEvent>,
    lines_read: u64,
    events_applied: u64,
    /// Records reported by `Read` messages to this driver (not restored ones).
    records_read: u64,
    /// Revenue (cents), orders and late events already reported to the metrics.
    published: (i64, u64, u64),
}

impl Driver {
    pub fn new(
        core: Core,
        store: SnapshotStore,
        sink: RejectedSink,
        lookup: LineLookup,
        config: DriverConfig,
    ) -> Self {
        Self {
            core,
            store: Some(store),
            writing: None,
            longest_pause: Duration::ZERO,
            longest_write: Duration::ZERO,
            last_write: Duration::ZERO,
            sink,
            lookup,
            config,
            read: ReadStats::default(),
            remap: Vec::new(),
            batch: Vec::new(),
            lines_read: 0,
            events_applied: 0,
            records_read: 0,
            published: (0, 0, 0),
        }
    }

    /// Continues where a snapshot stood: the reader's counts so far, the lines read and
    /// the events applied (the core and the dead-letter file are restored by the caller).
    pub fn resumed(mut self, read: ReadStats, lines_read: u64, events_applied: u64) -> Self {
        crate::metrics::get().read(&read);
        self.read = read;
        self.lines_read = lines_read;
        self.events_applied = events_applied;
        self.publish_progress(0);
        self
    }

    /// Runs until end of input, shutdown, or the sending side going away.
    pub fn run(mut self, rx: Receiver<Message>) -> Result<DriverOutcome, DriverError> {
        let mut last = Instant::now();
        let complete = loop {
            let wait = self.config.snapshot_interval.saturating_sub(last.elapsed());
            match rx.recv_timeout(wait) {
                Ok(Message::Events { names, events }) => self.apply(names, &events)?,
                Ok(Message::Read {
                    rejects,
                    stats,
                    lines_read,
                }) => {
                    for r in &rejects {
                        self.sink.write(r).map_err(DriverError::Rejected)?;
                    }
                    self.read.merge(&stats);
                    self.records_read += stats.records;
                    crate::metrics::get().read(&stats);
                    self.lines_read = lines_read;
                }
                Ok(Message::EndOfInput) => {
                    self.core.finish();
                    break true;
                }
                Ok(Message::Shutdown) | Err(RecvTimeoutError::Disconnected) => break false,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if last.elapsed() >= self.config.snapshot_interval {
                self.snapshot_in_background()?;
                last = Instant::now();
            }
        };
        let manifest = self.snapshot(complete)?;
        Ok(DriverOutcome {
            core: self.core,
            manifest,
            complete,
            longest_pause: self.longest_pause,
            longest_write: self.longest_write,
            last_write: self.last_write,
            records_read: self.records_read,
        })
    }

    fn apply(&mut self, names: Vec<Box<str>>, events: &[PurchaseEvent]) -> Result<(), DriverError> {
        self.remap
            .extend(names.iter().map(|n| self.core.intern_name(n)));
        // The core usually interns the names in the order they came, so symbols match
        // and the events go in as they are.
        let identity = self
            .remap
            .iter()
            .enumerate()
            .all(|(i, s)| s.0 as usize == i);
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        if !identity {
            batch.extend(events.iter().map(|e| PurchaseEvent {
                category: e.category.map(|s| self.remap[s.0 as usize]),
                brand: e.brand.map(|s| self.remap[s.0 as usize]),
                ..*e
            }));
        }
        let n = events.len() as u64;
        let events = if identity { events } else { &batch[..] };
        for i in self.core.record_batch(events) {
            let e = &events[i];
            let r = Rejected {
                line: e.line,
                reason: RejectReason::LateEvent,
                text: (self.lookup)(e),
            };
            self.sink.write(&r).map_err(DriverError::Rejected)?;
        }
        self.batch = batch;
        self.events_applied += n;
        self.publish_progress(n);
        Ok(())
    }

    /// Brings the metrics up to the core's state after a batch of `applied` events.
    fn publish_progress(&mut self, applied: u64) {
        let m = crate::metrics::get();
        m.events_applied.inc_by(applied);
        let totals = self.core.totals();
        let (cents, orders) = (totals.revenue_cents, totals.orders);
        let late = self.core.late();
        let last = std::mem::replace(&mut self.published, (cents, orders, late));
        m.revenue_cents.inc_by((cents - last.0).max(0) as u64);
        m.orders.inc_by(orders - last.1);
        m.late_events.inc_by(late - last.2);
        m.days.set(self.core.days().count() as i64);
        m.customers.set(self.core.customers().len() as i64);
        m.event_time(self.core.watermark_us(), self.core.max_event_us());
    }

    fn counts(&self) -> Counts {
        let mut rejected = self.read.rejected;
        rejected.add(RejectReason::LateEvent, self.core.late());
        Counts {
            records: self.read.records,
            accepted: self.core.accepted(),
            pending: self.read.accepted.saturating_sub(self.events_applied),
            repaired: self.read.repaired,
            blank: self.read.blank,
            duplicates: 0,
            rejected: rejected
                .iter()
                .map(|(r, n)| (r.as_str().to_string(), n))
                .collect(),
        }
    }

    /// What a snapshot taken now records besides the core.
    fn meta(&self, complete: bool) -> SnapshotMeta {
        SnapshotMeta {
            input: InputPosition::File {
                path: self.config.source.clone(),
                order: self.config.order.clone(),
                lines_read: self.lines_read,
                events_applied: self.events_applied,
                complete,
                rejected_bytes: self.sink.bytes(),
            },
            counts: self.counts(),
            config: self.config.window.clone(),
        }
    }

    /// Waits for the periodic snapshot being written, if any, and takes the store back.
    fn finish_writing(&mut self) -> Result<(), DriverError> {
        if let Some((writing, _)) = self.writing.take() {
            let (store, result, took) = writing.join().expect("the snapshot writer panicked");
            self.store = Some(store);
            match result {
                Err(SnapshotError::Superseded) => {}
                result => {
                    self.longest_write = self.longest_write.max(took);
                    self.published(&result?, took);
                }
            }
        }
        Ok(())
    }

    /// A periodic snapshot: the core stops only to copy its state; scoring, encoding and
    /// writing run on another thread. One at a time: the next waits for the last.
    fn snapshot_in_background(&mut self) -> Result<(), DriverError> {
        self.finish_writing()?;
        self.sink.sync().map_err(DriverError::Rejected)?;
        let meta = self.meta(false);
        let started = Instant::now();
        let copy = self.core.clone();
        self.longest_pause = self.longest_pause.max(started.elapsed());
        let mut store = self.store.take().expect("the store is back");
        let give_up = Arc::new(AtomicBool::new(false));
        let flag = give_up.clone();
        let spawned = std::thread::Builder::new()
            .name("storepulse-snapshot".into())
            .spawn(move || {
                let t = Instant::now();
                let result = store.write_beside(&copy, meta, &flag);
                (store, result, t.elapsed())
            })
            .map_err(|e| {
                DriverError::Snapshot(SnapshotError::Io {
                    what: "starting the snapshot writer for",
                    path: std::path::PathBuf::new(),
                    source: e,
                })
            })?;
        self.writing = Some((spawned, give_up));
        Ok(())
    }

    /// The last snapshot of a run, written before returning. A periodic one still being
    /// written is given up: this one replaces it, and waiting for it would only delay it.
    fn snapshot(&mut self, complete: bool) -> Result<Manifest, DriverError> {
        if let Some((_, give_up)) = &self.writing {
            give_up.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.finish_writing()?;
        self.sink.sync().map_err(DriverError::Rejected)?;
        let meta = self.meta(complete);
        let started = Instant::now();
        let store = self.store.as_mut().expect("the store is back");
        let manifest = store.write(&self.core, meta)?;
        self.last_write = started.elapsed();
        self.published(&manifest, self.last_write);
        Ok(manifest)
    }

    /// Metrics of a published snapshot.
    fn published(&mut self, manifest: &Manifest, took: Duration) {
        let m = crate::metrics::get();
        m.snapshot_published(took, manifest.bytes());
        m.segments(manifest.segments.iter().map(|(s, n)| (s.as_str(), *n)));
        m.customer_orders
            .set(self.core.customer_order_count() as i64);
        m.state_bytes.set(self.core.memory_bytes() as i64);
        self.publish_progress(0);
    }
}
