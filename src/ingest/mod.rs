//! `run`'s pipeline: a file's events into one lane of the [`crate::pipeline`] driver. The
//! channel into the driver carries a closed enum of messages: events with the names they
//! need, rejected lines, end of input and shutdown. [`File`] owns the dead-letter file and
//! updates the pipeline's metrics once per message (never per event).

pub mod embedded;

use std::sync::mpsc::Receiver;
use std::time::Duration;

use storepulse_replay::{PurchaseEvent, ReadStats, RejectReason, Rejected, Sym};

use crate::aggregate::Core;
use crate::metrics::events::{
    CoreTotals, EventTime, LinesRead, Reported, SegmentsScored, SnapshotPublished, StateSize,
};
use crate::pipeline::{self, Ended, Flow, Lane, Lanes, Pipeline, Slot, Snapshots};
use crate::snapshot::{
    Beside, Counts, InputPosition, Manifest, RejectedSink, SnapshotError, SnapshotMeta,
    SnapshotStore, WindowConfig, Written,
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
    /// Events a resumed run's snapshot had applied (0 for a fresh run): the rate a run
    /// reports is of the events it applied itself.
    pub events_resumed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("writing rejected lines failed: {0}")]
    Rejected(std::io::Error),
}

/// `run`'s pipeline: one lane (key 0) fed by the file's reader through the channel.
pub struct File {
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
    /// Events applied before this driver, by the snapshot a run resumed from.
    events_resumed: u64,
    /// Told of every published snapshot, when the result tables follow them.
    tables: Option<crate::lake::Notify>,
    /// End of input was applied: the run is complete.
    complete: bool,
    last: Option<Manifest>,
}

impl Lane for Core {
    fn core(&self) -> &Core {
        self
    }

    fn state_mut(&mut self) -> (&mut Core, Option<&mut crate::aggregate::Seen>) {
        (self, None)
    }
}

/// The one lane of a run.
const LANE: i32 = 0;

/// `run`'s driver: the one [`pipeline::Driver`] with [`File`] as its pipeline.
pub struct Driver {
    file: File,
    core: Core,
    store: SnapshotStore,
}

impl Driver {
    pub fn new(
        core: Core,
        store: SnapshotStore,
        sink: RejectedSink,
        lookup: LineLookup,
        config: DriverConfig,
    ) -> Self {
        let file = File {
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
            events_resumed: 0,
            complete: false,
            last: None,
            tables: None,
        };
        Self { file, core, store }
    }

    /// Tells `tables` of every snapshot published (`run --tables`).
    pub fn with_tables(mut self, tables: crate::lake::Notify) -> Self {
        self.file.tables = Some(tables);
        self
    }

    /// Continues where a snapshot stood: the reader's counts so far, the lines read and
    /// the events applied (the core and the dead-letter file are restored by the caller).
    pub fn resumed(mut self, read: ReadStats, lines_read: u64, events_applied: u64) -> Self {
        LinesRead(&read).emit();
        let f = &mut self.file;
        f.read = read;
        f.lines_read = lines_read;
        f.events_applied = events_applied;
        f.events_resumed = events_applied;
        // The events restored are not work done here; their revenue, orders and late
        // events go to the `resumed` gauges (`RunResumed`).
        f.reported = Reported::from(CoreTotals {
            events: events_applied,
            ..CoreTotals::default()
        });
        f.publish_progress(&self.core);
        self
    }

    /// Runs until end of input, shutdown, or the sending side going away.
    pub fn run(self, rx: Receiver<Message>) -> Result<DriverOutcome, DriverError> {
        let interval = self.file.config.snapshot_interval;
        let mut lanes = Lanes::new();
        lanes.insert(LANE, Slot::new(self.core, Beside::new(self.store)));
        let ended = pipeline::Driver::new(self.file, lanes, interval).run(rx)?;
        let Ended {
            pipeline: file,
            mut lanes,
            timings,
            ..
        } = ended;
        let core = lanes.remove(&LANE).expect("the run's lane").lane;
        Ok(DriverOutcome {
            core,
            manifest: file.last.expect("the last snapshot is always written"),
            complete: file.complete,
            longest_pause: timings.longest_pause,
            longest_write: timings.longest_write,
            last_write: timings.last_write,
            records_read: file.records_read,
            events_resumed: file.events_resumed,
        })
    }
}

impl Pipeline for File {
    type Input = Message;
    type Lane = Core;
    type Error = DriverError;

    fn apply(&mut self, driver: &mut Snapshots<Core>, input: Message) -> Result<Flow, DriverError> {
        let slot = driver.lanes.get_mut(&LANE).expect("the run's lane");
        slot.touch();
        let core = &mut slot.lane;
        match input {
            Message::Events { names, events } => self.apply(core, names, &events)?,
            Message::Read {
                rejects,
                stats,
                lines_read,
            } => {
                for r in &rejects {
                    self.sink.write(r).map_err(DriverError::Rejected)?;
                }
                self.read.merge(&stats);
                self.records_read += stats.records;
                LinesRead(&stats).emit();
                self.lines_read = lines_read;
            }
            Message::EndOfInput => {
                core.finish();
                self.complete = true;
                return Ok(Flow::End);
            }
            Message::Shutdown => return Ok(Flow::End),
        }
        Ok(Flow::Continue)
    }

    fn meta(&mut self, _key: i32, core: &Core) -> Result<SnapshotMeta, DriverError> {
        self.sink.sync().map_err(DriverError::Rejected)?;
        Ok(SnapshotMeta {
            input: InputPosition::File {
                path: self.config.source.clone(),
                order: self.config.order.clone(),
                lines_read: self.lines_read,
                events_applied: self.events_applied,
                complete: self.complete,
                rejected_bytes: self.sink.bytes(),
            },
            counts: self.counts(core),
            config: self.config.window.clone(),
        })
    }

    fn published(
        &mut self,
        lanes: &Lanes<Core>,
        written: Vec<(i32, Written)>,
    ) -> Result<(), DriverError> {
        let core = &lanes[&LANE].lane;
        for (_, w) in written {
            SnapshotPublished {
                took: w.took,
                bytes: w.manifest.bytes(),
            }
            .emit();
            // An incremental snapshot's customers are not scored (scores are global): the
            // gauges keep the last whole snapshot's counts.
            if w.manifest.chain.is_none() {
                SegmentsScored {
                    customers: None,
                    counts: w.manifest.segments.iter().map(|(s, n)| (s.as_str(), *n)),
                }
                .emit();
            }
            self.last = Some(w.manifest);
            if let Some(tables) = &self.tables {
                tables.published();
            }
        }
        StateSize {
            customer_orders: Some(core.customer_order_count()),
            bytes: Some(core.memory_bytes()),
            ..StateSize::default()
        }
        .emit();
        self.publish_progress(core);
        Ok(())
    }

    /// The run's last snapshot is whole: its tables are the run's results, read as they are
    /// (by `query`, the page, Spark or Polars) without restoring a chain.
    fn last_whole(&self) -> bool {
        true
    }

    /// The run snapshots every interval even when nothing changed; every tick says the
    /// loop is alive, so a run paced slower than `--stall-timeout` (one event a minute)
    /// stays healthy while it waits for its next event.
    fn tick(&mut self, lanes: &mut Lanes<Core>) {
        if let Some(slot) = lanes.get_mut(&LANE) {
            slot.touch();
            self.publish_progress(&slot.lane);
        }
    }
}

impl File {
    fn apply(
        &mut self,
        core: &mut Core,
        names: Vec<Box<str>>,
        events: &[PurchaseEvent],
    ) -> Result<(), DriverError> {
        self.remap.extend(names.iter().map(|n| core.intern_name(n)));
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
        for i in core.record_batch(events) {
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
        self.publish_progress(core);
        Ok(())
    }

    /// Brings the metrics up to the core's state.
    fn publish_progress(&mut self, core: &Core) {
        let sales = core.totals();
        self.reported.advance(CoreTotals {
            events: self.events_applied,
            cents: sales.revenue_cents,
            orders: sales.orders,
            late: core.late(),
            ..CoreTotals::default()
        });
        StateSize {
            days: Some(core.days().count()),
            customers: Some(core.customers().len()),
            ..StateSize::default()
        }
        .emit();
        EventTime {
            watermark_us: core.watermark_us(),
            max_event_us: core.max_event_us(),
        }
        .emit();
    }

    fn counts(&self, core: &Core) -> Counts {
        let mut rejected = self.read.rejected;
        rejected.add(RejectReason::LateEvent, core.late());
        Counts {
            records: self.read.records,
            accepted: core.accepted(),
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
}
