//! Moves data into the aggregate core and snapshots out of it. The channel into the core
//! carries a closed enum of messages: events with the names they need, rejected lines,
//! end of input and shutdown. The driver owns the core, the snapshot store and the
//! dead-letter file, is the only place that reads the wall clock for snapshot timing, and
//! updates the pipeline's metrics once per message (never per event).

pub mod embedded;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use storepulse_replay::{PurchaseEvent, ReadStats, RejectReason, Rejected, Sym};

use crate::aggregate::Core;
use crate::metrics::events::{
    CoreTotals, EventTime, LinesRead, Reported, SegmentsScored, SnapshotPublished, StateSize,
};
use crate::snapshot::{
    Beside, Counts, InputPosition, Manifest, RejectedSink, SnapshotError, SnapshotMeta,
    SnapshotStore, WindowConfig,
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

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("writing rejected lines failed: {0}")]
    Rejected(std::io::Error),
}

pub struct Driver {
    core: Core,
    /// Periodic snapshots are written beside the stream.
    store: Beside,
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
    /// What the metrics were last told of the core.
    reported: Reported,
    /// Records reported by `Read` messages to this driver (not restored ones).
    records_read: u64,
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
            store: Beside::new(store),
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
            reported: Reported::default(),
            records_read: 0,
        }
    }

    /// Continues where a snapshot stood: the reader's counts so far, the lines read and
    /// the events applied (the core and the dead-letter file are restored by the caller).
    pub fn resumed(mut self, read: ReadStats, lines_read: u64, events_applied: u64) -> Self {
        LinesRead(&read).emit();
        self.read = read;
        self.lines_read = lines_read;
        self.events_applied = events_applied;
        // The events restored are not work done here; their revenue, orders and late
        // events go to the `resumed` gauges (`RunResumed`).
        self.reported = Reported::from(CoreTotals {
            events: events_applied,
            ..CoreTotals::default()
        });
        self.publish_progress();
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
                    LinesRead(&stats).emit();
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
        self.publish_progress();
        Ok(())
    }

    /// Brings the metrics up to the core's state.
    fn publish_progress(&mut self) {
        let sales = self.core.totals();
        self.reported.advance(CoreTotals {
            events: self.events_applied,
            cents: sales.revenue_cents,
            orders: sales.orders,
            late: self.core.late(),
            ..CoreTotals::default()
        });
        StateSize {
            days: Some(self.core.days().count()),
            customers: Some(self.core.customers().len()),
            ..StateSize::default()
        }
        .emit();
        EventTime {
            watermark_us: self.core.watermark_us(),
            max_event_us: self.core.max_event_us(),
        }
        .emit();
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

    /// Waits for the periodic snapshot being written, if any.
    fn finish_writing(&mut self) -> Result<(), DriverError> {
        if let Some(w) = self.store.finished(true)? {
            self.longest_write = self.longest_write.max(w.took);
            self.published(&w.manifest, w.took);
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
        self.store.start(copy, None, meta)?;
        Ok(())
    }

    /// The last snapshot of a run, written before returning. A periodic one still being
    /// written is given up: this one replaces it, and waiting for it would only delay it.
    fn snapshot(&mut self, complete: bool) -> Result<Manifest, DriverError> {
        self.store.supersede();
        self.finish_writing()?;
        self.sink.sync().map_err(DriverError::Rejected)?;
        let meta = self.meta(complete);
        let written = self.store.write_now(&self.core, None, meta)?;
        self.last_write = written.took;
        self.published(&written.manifest, self.last_write);
        Ok(written.manifest)
    }

    /// Metrics of a published snapshot.
    fn published(&mut self, manifest: &Manifest, took: Duration) {
        SnapshotPublished {
            took,
            bytes: manifest.bytes(),
        }
        .emit();
        SegmentsScored {
            customers: None,
            counts: manifest.segments.iter().map(|(s, n)| (s.as_str(), *n)),
        }
        .emit();
        StateSize {
            customer_orders: Some(self.core.customer_order_count()),
            bytes: Some(self.core.memory_bytes()),
            ..StateSize::default()
        }
        .emit();
        self.publish_progress();
    }
}
