//! The processor's metrics, brought up to date from the owned partitions once a second
//! and at every snapshot, never per message. Counters grow by what each partition applied
//! since it was assigned here; gauges describe the partitions owned now. Customers per
//! segment (and customers tracked) are counted over the owned partitions' customers merged
//! (one customer's orders may sit in several partitions), on a thread of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use rustc_hash::FxHashMap;

use super::partition::PartitionState;
use crate::aggregate::rfm::{self, Customer};
use crate::aggregate::{day_of, merge_watermarks};
use crate::metrics::{self, MESSAGE_REJECT_REASONS};

/// What of one partition the metrics already count.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Messages applied since the partition was assigned here.
    pub consumed: u64,
    reported_consumed: u64,
    reported: Totals,
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    cents: i64,
    orders: u64,
    accepted: u64,
    late: u64,
    duplicates: u64,
    rejected: [u64; 2],
}

impl Totals {
    fn of(state: &PartitionState) -> Self {
        let sales = state.core.totals();
        let counts = state.counts();
        let rejected = MESSAGE_REJECT_REASONS.map(|r| counts.rejected.get(r).copied().unwrap_or(0));
        Totals {
            cents: sales.revenue_cents,
            orders: sales.orders,
            accepted: state.core.accepted(),
            late: state.core.late(),
            duplicates: counts.duplicates,
            rejected,
        }
    }
}

impl Progress {
    /// Counts from here on: what the state holds (restored from a snapshot) is not new.
    pub fn new(state: &PartitionState) -> Self {
        Progress {
            reported: Totals::of(state),
            ..Progress::default()
        }
    }
}

/// One owned partition, as the metrics see it.
pub(super) struct Owned<'a> {
    pub partition: i32,
    pub state: &'a PartitionState,
    pub progress: &'a mut Progress,
    /// (log start, log end) offsets last reported by the client's statistics.
    pub offsets: Option<(i64, i64)>,
}

/// Brings every metric up to the owned partitions' state.
pub(super) fn publish<'a>(parts: impl Iterator<Item = Owned<'a>>) {
    let m = metrics::get();
    let (mut owned, mut pairs, mut bytes) = (0, 0, 0);
    let mut days = BTreeSet::new();
    let mut marks = Vec::new();
    let mut max_event = None;
    for o in parts {
        owned += 1;
        let label = o.partition.to_string();
        let now = Totals::of(o.state);
        let was = std::mem::replace(&mut o.progress.reported, now);
        m.revenue_cents
            .inc_by((now.cents - was.cents).max(0) as u64);
        m.orders.inc_by(now.orders.saturating_sub(was.orders));
        m.events_applied
            .inc_by(now.accepted.saturating_sub(was.accepted));
        m.late_events.inc_by(now.late.saturating_sub(was.late));
        m.duplicate_messages
            .inc_by(now.duplicates.saturating_sub(was.duplicates));
        for (i, reason) in MESSAGE_REJECT_REASONS.iter().enumerate() {
            m.messages_rejected
                .with_label_values(&[reason])
                .inc_by(now.rejected[i].saturating_sub(was.rejected[i]));
        }
        let p = &mut *o.progress;
        m.messages_consumed
            .with_label_values(&[&label])
            .inc_by(p.consumed - p.reported_consumed);
        p.reported_consumed = p.consumed;
        if let Some((start, end)) = o.offsets {
            let position = o.state.next_offset.unwrap_or(start);
            m.consumer_lag
                .with_label_values(&[&label])
                .set((end - position).max(0));
        }
        let core = &o.state.core;
        pairs += core.customer_order_count();
        bytes += core.memory_bytes() + o.state.seen.memory_bytes();
        days.extend(core.days().map(|(d, _, _)| d));
        max_event = max_event.max(core.max_event_us());
        marks.push(core.watermark_us());
    }
    m.partitions_assigned.set(owned);
    m.customer_orders.set(pairs as i64);
    m.state_bytes.set(bytes as i64);
    m.days.set(days.len() as i64);
    m.event_time(merge_watermarks(&marks), max_event);
}

/// The partition is no longer owned here: its lag is no longer ours to report.
pub(super) fn released(partition: i32) {
    let _ = metrics::get()
        .consumer_lag
        .remove_label_values(&[&partition.to_string()]);
}

/// Scores the owned partitions' customers, merged, on another thread and sets customers
/// per segment; skipped while the previous scoring still runs.
pub(super) fn score_segments<'a>(states: impl Iterator<Item = &'a PartitionState>) {
    static SCORING: AtomicBool = AtomicBool::new(false);
    if SCORING.swap(true, Ordering::SeqCst) {
        return;
    }
    let mut merged: FxHashMap<u64, Customer> = FxHashMap::default();
    let mut as_of = None;
    for s in states {
        as_of = as_of.max(s.core.max_event_us());
        for (&id, c) in s.core.customers() {
            merged.entry(id).and_modify(|m| m.merge(c)).or_insert(*c);
        }
    }
    let Some(as_of) = as_of else {
        SCORING.store(false, Ordering::SeqCst);
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("storepulse-segments".into())
        .spawn(move || {
            let counts: BTreeMap<&str, u64> = rfm::segment_counts(&merged, day_of(as_of));
            let m = metrics::get();
            m.customers.set(merged.len() as i64);
            m.segments(counts);
            SCORING.store(false, Ordering::SeqCst);
        });
    if spawned.is_err() {
        SCORING.store(false, Ordering::SeqCst);
    }
}
