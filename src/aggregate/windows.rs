//! The daily windows and event-time progress of a core, borrowed apart from its
//! customers, and a customer's part of an event: the two halves that
//! [`super::Core::record_batch`] runs side by side.

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap, FxHashSet};
use storepulse_replay::PurchaseEvent;

use super::{day_of, CoreConfig, Customer, Day, Outcome, MICROS_PER_DAY};

/// Whether a day is final under `watermark`: the watermark passed its end plus the
/// allowed lateness.
pub(super) fn final_at(watermark_us: Option<i64>, day: i32, allowed_lateness_us: i64) -> bool {
    let end = (i64::from(day) + 1) * MICROS_PER_DAY;
    watermark_us.is_some_and(|w| w >= end.saturating_add(allowed_lateness_us))
}

/// An accepted event that raises the highest event time `max` moves the watermark
/// towards it less the out-of-orderness: returns where to.
pub(super) fn raise_max(
    max: &mut Option<i64>,
    e: &PurchaseEvent,
    config: &CoreConfig,
) -> Option<i64> {
    if max.is_some_and(|m| e.event_time_us <= m) {
        return None;
    }
    *max = Some(e.event_time_us);
    Some(
        e.event_time_us
            .saturating_sub(config.max_out_of_orderness_us),
    )
}

/// A customer's part of an accepted event: their RFM state and the counted orders.
pub(super) fn record_customer(
    customers: &mut FxHashMap<u64, Customer>,
    customer_orders: &mut FxHashSet<(u64, u64)>,
    e: &PurchaseEvent,
) {
    if let Some(user) = e.user_id {
        let c = customers
            .entry(user)
            .or_insert_with(|| Customer::new(e.event_time_us));
        let new_order =
            c.last_order != Some(e.order_id) && customer_orders.insert((user, e.order_id));
        c.record(e, new_order);
    }
}

/// The core's daily windows and event-time progress, borrowed on their own so that the
/// customers can be updated beside them.
pub(super) struct Windows<'a> {
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
        if !self.days.contains_key(&day) {
            let new = match self.days.last_key_value() {
                Some((_, last)) => Day::sized_like(last),
                None => Day::default(),
            };
            self.days.insert(day, new);
        }
        self.days.get_mut(&day).expect("just added").record(e);
        if self.first_open_day.is_none_or(|d| day < d) {
            *self.first_open_day = Some(day);
        }
        if let Some(to) = raise_max(self.max_event_us, e, self.config) {
            self.advance_watermark(to);
        }
        Outcome::Accepted
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
            }
            *self.first_open_day = open.next().map(|(&d, _)| d);
        }
    }
}
