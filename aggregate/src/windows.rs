//! The daily windows and event-time progress of a core, borrowed apart from its
//! customers, and a customer's part of an event: the two halves that
//! [`super::Core::record_batch`] runs side by side.

use std::collections::BTreeMap;

use crate::PurchaseEvent;
use rustc_hash::{FxHashMap, FxHashSet};

use super::changes::Changes;
use super::{day_of, CoreConfig, Customer, Day, Outcome, MICROS_PER_DAY};

/// Whether a day is final under `watermark`: the watermark passed its end plus the
/// allowed lateness.
pub(super) fn final_at(watermark_us: Option<i64>, day: i32, allowed_lateness_us: i64) -> bool {
    let end = (i64::from(day) + 1) * MICROS_PER_DAY;
    watermark_us.is_some_and(|w| w >= end.saturating_add(allowed_lateness_us))
}

/// An accepted event that raises the highest event time `max` moves the watermark
/// towards it less the out-of-orderness (when the watermark follows the events): returns
/// where to.
pub(super) fn raise_max(
    max: &mut Option<i64>,
    e: &PurchaseEvent,
    config: &CoreConfig,
) -> Option<i64> {
    if max.is_some_and(|m| e.event_time_us <= m) {
        return None;
    }
    *max = Some(e.event_time_us);
    if !config.watermark_from_events {
        return None;
    }
    Some(
        e.event_time_us
            .saturating_sub(config.max_out_of_orderness_us),
    )
}

/// The core's customers and their counted orders, borrowed apart from the windows, with
/// the record of what changed when the core tracks it.
pub(super) struct Customers<'a> {
    pub(super) customers: &'a mut FxHashMap<u64, Customer>,
    pub(super) orders: &'a mut FxHashSet<(u64, u64)>,
    pub(super) changes: Option<&'a mut Changes>,
    pub(super) epoch: u32,
}

/// A customer's part of an accepted event: their RFM state and the counted orders.
pub(super) fn record_customer(c: &mut Customers<'_>, e: &PurchaseEvent) {
    if let Some(user) = e.user_id {
        let customer = c
            .customers
            .entry(user)
            .or_insert_with(|| Customer::new(e.event_time_us));
        let new_order =
            customer.last_order != Some(e.order_id) && c.orders.insert((user, e.order_id));
        customer.record(e, new_order);
        if let Some(changes) = c.changes.as_deref_mut() {
            changes.customer(user, c.epoch, new_order.then_some(e.order_id));
        }
    }
}

/// The core's daily windows and event-time progress, borrowed on their own so that the
/// customers can be updated beside them.
pub(super) struct Windows<'a> {
    /// Stamped on every day changed (see `changes.rs`).
    pub(super) epoch: u32,
    pub(super) config: &'a CoreConfig,
    pub(super) days: &'a mut BTreeMap<i32, Day>,
    pub(super) first_open_day: &'a mut Option<i32>,
    pub(super) max_event_us: &'a mut Option<i64>,
    pub(super) watermark_us: &'a mut Option<i64>,
    pub(super) accepted: &'a mut u64,
    pub(super) late: &'a mut u64,
}

impl Windows<'_> {
    fn is_final(&self, day: i32) -> bool {
        final_at(*self.watermark_us, day, self.config.allowed_lateness_us)
    }

    /// The windows' part of [`Core::record`].
    pub(super) fn record(&mut self, e: &PurchaseEvent) -> Outcome {
        let day = day_of(e.event_time_us);
        if self.is_final(day) {
            *self.late += 1;
            return Outcome::Late;
        }
        *self.accepted += 1;
        self.open_day(day).record(e);
        if let Some(to) = raise_max(self.max_event_us, e, self.config) {
            self.advance_watermark(to);
        }
        Outcome::Accepted
    }

    /// The windows' part of [`super::Core::record_batch`]: `accepted` tells which events
    /// are not late, and `max_event_us` and `watermark_us` are where the batch takes event
    /// time (both worked out before from the watermark alone). Returns the late events'
    /// positions.
    ///
    /// The same state as [`Windows::record`] one by one: a day's sums and sets do not
    /// depend on the order of its events, an event is never added to a day that is final
    /// by then, and the days the watermark passes are finalized at the end instead of
    /// along the way. Runs of events of one day are added with one look-up of the day.
    pub(super) fn record_batch(
        &mut self,
        events: &[PurchaseEvent],
        accepted: &[bool],
        max_event_us: Option<i64>,
        watermark_us: Option<i64>,
    ) -> Vec<usize> {
        let mut late = Vec::new();
        let mut i = 0;
        while i < events.len() {
            if !accepted[i] {
                late.push(i);
                i += 1;
                continue;
            }
            let d = day_of(events[i].event_time_us);
            let day = self.open_day(d);
            let start = i;
            while i < events.len() && accepted[i] && day_of(events[i].event_time_us) == d {
                day.record(&events[i]);
                i += 1;
            }
            *self.accepted += (i - start) as u64;
        }
        *self.late += late.len() as u64;
        *self.max_event_us = max_event_us;
        if let Some(to) = watermark_us {
            self.advance_watermark(to);
        }
        late
    }

    /// The open day `day`, made if it is new (its sets sized like the latest day's).
    fn open_day(&mut self, day: i32) -> &mut Day {
        if self.first_open_day.is_none_or(|d| day < d) {
            *self.first_open_day = Some(day);
        }
        if !self.days.contains_key(&day) {
            let new = match self.days.last_key_value() {
                Some((_, last)) => Day::sized_like(last),
                None => Day::default(),
            };
            self.days.insert(day, new);
        }
        let d = self.days.get_mut(&day).expect("just added");
        d.changed = self.epoch;
        d
    }

    pub(super) fn advance_watermark(&mut self, to_us: i64) {
        if self.watermark_us.is_some_and(|w| w >= to_us) {
            return;
        }
        *self.watermark_us = Some(to_us);
        while let Some(day) = *self.first_open_day {
            if !self.is_final(day) {
                break;
            }
            let mut open = self.days.range_mut(day..);
            if let Some((_, d)) = open.next() {
                d.finalize(self.config.keep_day_customers);
                d.changed = self.epoch;
            }
            *self.first_open_day = open.next().map(|(&d, _)| d);
        }
    }
}
