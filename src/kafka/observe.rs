//! The processor's metrics, brought up to date from the owned partitions once a second
//! and at every snapshot, never per message. Counters grow by what each partition applied
//! since it was assigned here; gauges describe the partitions owned now. Customers per
//! segment (and customers tracked) are counted over the owned partitions' customers merged
//! (one customer's orders may sit in several partitions), on a thread of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::partition::PartitionState;
use crate::aggregate::rfm::{self, Customer};
use crate::aggregate::{day_of, merge_watermarks};
use crate::metrics::events::{
    ConsumerLag, CoreTotals, EventTime, MessagesConsumed, PartitionReleased, PartitionsOwned,
    Reported, SegmentsScored, StateSize,
};
use crate::metrics::MESSAGE_REJECT_REASONS;

/// What of one partition the metrics already count.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Messages applied since the partition was assigned here.
    pub consumed: u64,
    reported_consumed: u64,
    reported: Reported,
}

/// What a partition's core has done so far, as the metrics count it.
fn totals(state: &PartitionState) -> CoreTotals {
    let sales = state.core.totals();
    let counts = state.counts();
    let late = state.core.late();
    CoreTotals {
        events: state.core.accepted() + late,
        cents: sales.revenue_cents,
        orders: sales.orders,
        late,
        duplicates: counts.duplicates,
        rejected: MESSAGE_REJECT_REASONS.map(|r| counts.rejected.get(r).copied().unwrap_or(0)),
    }
}

impl Progress {
    /// Counts from here on: what the state holds (restored from a snapshot) is not new.
    pub fn new(state: &PartitionState) -> Self {
        Progress {
            reported: Reported::from(totals(state)),
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

/// Brings every metric up to the owned partitions' state, but its size in bytes (see
/// [`state_bytes`]).
pub(super) fn publish<'a>(parts: impl Iterator<Item = Owned<'a>>) {
    let (mut owned, mut pairs) = (0, 0);
    let mut days = BTreeSet::new();
    let mut marks = Vec::new();
    let mut max_event = None;
    for o in parts {
        owned += 1;
        let label = o.partition.to_string();
        let p = &mut *o.progress;
        p.reported.advance(totals(o.state));
        MessagesConsumed {
            partition: &label,
            messages: p.consumed - p.reported_consumed,
        }
        .emit();
        p.reported_consumed = p.consumed;
        if let Some((start, end)) = o.offsets {
            let position = o.state.next_offset.unwrap_or(start);
            ConsumerLag {
                partition: &label,
                lag: end - position,
            }
            .emit();
        }
        let core = &o.state.core;
        pairs += core.customer_order_count();
        days.extend(core.days().map(|(d, _, _)| d));
        max_event = max_event.max(core.max_event_us());
        marks.push(core.watermark_us());
    }
    PartitionsOwned(owned).emit();
    StateSize {
        days: Some(days.len()),
        customer_orders: Some(pairs),
        ..StateSize::default()
    }
    .emit();
    EventTime {
        watermark_us: merge_watermarks(&marks),
        max_event_us: max_event,
    }
    .emit();
}

/// The owned partitions' state size in bytes, estimated when snapshots are published, as
/// `run` does: the estimate visits every day's groups (done every second, it took 14% of
/// the processor's CPU).
pub(super) fn state_bytes<'a>(states: impl Iterator<Item = &'a PartitionState>) {
    let bytes = states
        .map(|s| s.core.memory_bytes() + s.seen.memory_bytes())
        .sum();
    StateSize {
        bytes: Some(bytes),
        ..StateSize::default()
    }
    .emit();
}

/// The partition is no longer owned here: its lag is no longer ours to report.
pub(super) fn released(partition: i32) {
    PartitionReleased(partition).emit();
}

/// How often the segment gauges are scored at most. Every scoring visits every owned
/// customer (merged on the driver's thread, scored on another): after every snapshot, as
/// before, it was 11% of the processor's CPU at 10x (2.37M customers, a snapshot of a
/// partition every few seconds).
pub(super) const SEGMENTS_EVERY: Duration = Duration::from_secs(30);

/// When the segment gauges were last scored, and whether snapshots published since wait
/// for a scoring.
#[derive(Debug, Default)]
pub(super) struct Segments {
    last: Option<Instant>,
    pending: bool,
}

impl Segments {
    /// Snapshots were published: scored now when the last scoring is [`SEGMENTS_EVERY`]
    /// old, else at a later tick.
    pub fn published<'a>(&mut self, states: impl Iterator<Item = &'a PartitionState>) {
        self.pending = true;
        self.tick(states);
    }

    /// Scores what waits once the interval has passed (every second: an idle processor's
    /// last snapshots are scored within the interval).
    pub fn tick<'a>(&mut self, states: impl Iterator<Item = &'a PartitionState>) {
        if !self.pending || self.last.is_some_and(|t| t.elapsed() < SEGMENTS_EVERY) {
            return;
        }
        if score_segments(states) {
            self.last = Some(Instant::now());
            self.pending = false;
        }
    }
}

/// Scores the owned partitions' customers, merged, on another thread and sets customers
/// per segment; whether it started (not while the previous scoring still runs).
fn score_segments<'a>(states: impl Iterator<Item = &'a PartitionState>) -> bool {
    static SCORING: AtomicBool = AtomicBool::new(false);
    if SCORING.swap(true, Ordering::SeqCst) {
        return false;
    }
    let states: Vec<&PartitionState> = states.collect();
    // At least the largest partition's customers (orders, not customers, are split).
    let largest = states.iter().map(|s| s.core.customers().len()).max();
    let mut merged: FxHashMap<u64, Customer> = FxHashMap::default();
    merged.reserve(largest.unwrap_or(0));
    let mut as_of = None;
    for s in states {
        as_of = as_of.max(s.core.max_event_us());
        for (&id, c) in s.core.customers() {
            merged.entry(id).and_modify(|m| m.merge(c)).or_insert(*c);
        }
    }
    let Some(as_of) = as_of else {
        SCORING.store(false, Ordering::SeqCst);
        return true;
    };
    let spawned = std::thread::Builder::new()
        .name("storepulse-segments".into())
        .spawn(move || {
            let counts: BTreeMap<&str, u64> = rfm::segment_counts(&merged, day_of(as_of));
            SegmentsScored {
                customers: Some(merged.len()),
                counts,
            }
            .emit();
            SCORING.store(false, Ordering::SeqCst);
        });
    if spawned.is_err() {
        SCORING.store(false, Ordering::SeqCst);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshots published within [`SEGMENTS_EVERY`] of a scoring wait for a later one,
    /// which the tick does once the interval has passed: the gauges are never older than
    /// the interval plus a tick, and cost one scoring per interval at most.
    #[test]
    fn segments_are_scored_at_most_once_per_interval_and_never_left_behind() {
        let none = || std::iter::empty::<&PartitionState>();
        let mut s = Segments::default();
        s.published(none());
        assert!(
            !s.pending && s.last.is_some(),
            "the first publish is scored at once"
        );
        let first = s.last;
        s.published(none());
        s.tick(none());
        assert!(s.pending && s.last == first, "within the interval: waits");
        s.last = Some(Instant::now() - SEGMENTS_EVERY);
        s.tick(none());
        assert!(!s.pending && s.last > first, "once due, the tick scores it");
        s.tick(none());
        assert!(!s.pending, "nothing waits: the tick does nothing");
    }
}
