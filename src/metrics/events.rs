//! Metrics through typed events, the way Vector's `internal_events` work: one struct per
//! thing that happened, whose `emit` moves the metrics (and the `/healthz` heartbeat).
//! Call sites say what happened; only this module knows which metrics that moves, and the
//! counters that follow an aggregate core are diffed in one place ([`Reported`]).

use std::time::Duration;

use storepulse_replay::ReadStats;

use super::{get, MESSAGE_REJECT_REASONS};

/// What an aggregate core (a run's, or one partition's) has done so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CoreTotals {
    /// Events handed to the core (late ones included).
    pub events: u64,
    pub cents: i64,
    pub orders: u64,
    pub late: u64,
    /// Messages dropped as already counted (the Kafka path).
    pub duplicates: u64,
    /// Messages rejected, by [`MESSAGE_REJECT_REASONS`] (the Kafka path).
    pub rejected: [u64; 2],
}

/// The totals already reported for one core: counters follow the core by difference.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reported(CoreTotals);

impl Reported {
    /// Starts from totals that are not work done here (a state restored from a snapshot).
    pub fn from(totals: CoreTotals) -> Self {
        Self(totals)
    }

    /// Reports what the core did since the last report.
    pub fn advance(&mut self, now: CoreTotals) {
        let was = std::mem::replace(&mut self.0, now);
        let m = get();
        m.events_applied
            .inc_by(now.events.saturating_sub(was.events));
        m.revenue_cents
            .inc_by((now.cents - was.cents).max(0) as u64);
        m.orders.inc_by(now.orders.saturating_sub(was.orders));
        m.late_events.inc_by(now.late.saturating_sub(was.late));
        m.duplicate_messages
            .inc_by(now.duplicates.saturating_sub(was.duplicates));
        for (i, reason) in MESSAGE_REJECT_REASONS.iter().enumerate() {
            let n = now.rejected[i].saturating_sub(was.rejected[i]);
            if n > 0 {
                m.messages_rejected.with_label_values(&[reason]).inc_by(n);
            }
        }
    }
}

/// The reader reported a block of lines.
pub struct LinesRead<'a>(pub &'a ReadStats);

impl LinesRead<'_> {
    pub fn emit(self) {
        get().read(self.0);
    }
}

/// Event-time progress: the watermark and the highest event time seen.
pub struct EventTime {
    pub watermark_us: Option<i64>,
    pub max_event_us: Option<i64>,
}

impl EventTime {
    pub fn emit(self) {
        get().event_time(self.watermark_us, self.max_event_us);
    }
}

/// The size of the live state (`None`: not known here, left as it is).
#[derive(Default)]
pub struct StateSize {
    pub days: Option<usize>,
    pub customers: Option<usize>,
    pub customer_orders: Option<usize>,
    pub bytes: Option<usize>,
}

impl StateSize {
    pub fn emit(self) {
        let m = get();
        let set = |g: &prometheus::IntGauge, v: Option<usize>| {
            if let Some(v) = v {
                g.set(v as i64);
            }
        };
        set(&m.days, self.days);
        set(&m.customers, self.customers);
        set(&m.customer_orders, self.customer_orders);
        set(&m.state_bytes, self.bytes);
    }
}

/// A snapshot (or the partitions' snapshots of one tick) was published.
pub struct SnapshotPublished {
    pub took: Duration,
    pub bytes: u64,
}

impl SnapshotPublished {
    pub fn emit(self) {
        get().snapshot_published(self.took, self.bytes);
    }
}

/// A periodic snapshot could not be published (the store failed beyond its retries); it
/// is tried again at the next interval.
pub struct SnapshotFailed;

impl SnapshotFailed {
    pub fn emit(self) {
        get().snapshot_failures.inc();
    }
}

/// A request to the object store was answered 5xx or 429, or not at all (the store's
/// client retries it, up to its limit).
pub struct StoreError;

impl StoreError {
    pub fn emit(self) {
        get().store_errors.inc();
    }
}

/// Customers were scored: how many, and how many fall in each segment.
pub struct SegmentsScored<I> {
    pub customers: Option<usize>,
    pub counts: I,
}

impl<'a, I: IntoIterator<Item = (&'a str, u64)>> SegmentsScored<I> {
    pub fn emit(self) {
        let m = get();
        if let Some(c) = self.customers {
            m.customers.set(c as i64);
        }
        m.segments(self.counts);
    }
}

/// A replay started at this pace (0 for what does not apply).
pub struct PaceSet {
    pub speed: f64,
    pub rate: f64,
}

impl PaceSet {
    pub fn emit(self) {
        let m = get();
        m.target_speed.set(self.speed);
        m.target_rate.set(self.rate);
    }
}

/// The pace a replay achieved so far.
pub struct PaceAchieved {
    pub rate: f64,
    pub speed: Option<f64>,
}

impl PaceAchieved {
    pub fn emit(self) {
        let m = get();
        m.achieved_rate.set(self.rate);
        if let Some(s) = self.speed {
            m.achieved_speed.set(s);
        }
    }
}

/// The replayer handed messages to its producer.
pub struct Published {
    pub events: u64,
    pub dead_letters: u64,
}

impl Published {
    pub fn emit(self) {
        let m = get();
        m.events_published.inc_by(self.events);
        m.dead_letters_published.inc_by(self.dead_letters);
    }
}

/// The brokers acknowledged (or failed) messages of the replayer.
pub struct Delivered {
    pub delivered: u64,
    pub failed: u64,
}

impl Delivered {
    pub fn emit(self) {
        let m = get();
        m.messages_delivered.inc_by(self.delivered);
        m.delivery_failures.inc_by(self.failed);
    }
}

/// A processor applied messages of one partition.
pub struct MessagesConsumed<'a> {
    pub partition: &'a str,
    pub messages: u64,
}

impl MessagesConsumed<'_> {
    pub fn emit(self) {
        get()
            .messages_consumed
            .with_label_values(&[self.partition])
            .inc_by(self.messages);
    }
}

/// How far a partition's position is behind its log's end.
pub struct ConsumerLag<'a> {
    pub partition: &'a str,
    pub lag: i64,
}

impl ConsumerLag<'_> {
    pub fn emit(self) {
        get()
            .consumer_lag
            .with_label_values(&[self.partition])
            .set(self.lag.max(0));
    }
}

/// A processor owns this many partitions now.
pub struct PartitionsOwned(pub usize);

impl PartitionsOwned {
    pub fn emit(self) {
        get().partitions_assigned.set(self.0 as i64);
    }
}

/// A partition is no longer owned here: its lag is no longer ours to report.
pub struct PartitionReleased(pub i32);

impl PartitionReleased {
    pub fn emit(self) {
        let _ = get()
            .consumer_lag
            .remove_label_values(&[&self.0.to_string()]);
    }
}

/// The store page started a query worker.
pub struct PageWorkerStarted;

impl PageWorkerStarted {
    pub fn emit(self) {
        get().page_workers_started.inc();
    }
}

/// The store page answered an overview, from its cache or a worker.
pub struct OverviewServed {
    pub source: &'static str,
}

impl OverviewServed {
    pub fn emit(self) {
        get().page_overviews.with_label_values(&[self.source]).inc();
    }
}

/// A `POST /api/sql` query ended this way (one of `SQL_OUTCOMES`).
pub struct SqlQueryEnded {
    pub outcome: &'static str,
}

impl SqlQueryEnded {
    pub fn emit(self) {
        get()
            .page_sql_queries
            .with_label_values(&[self.outcome])
            .inc();
    }
}

/// The next reports of lines, revenue, orders and late events are totals a resumed run
/// restored, not work done here (see [`super::Metrics::expect_restored`]).
pub struct RunResumed;

impl RunResumed {
    pub fn emit(self) {
        get().expect_restored();
    }
}
