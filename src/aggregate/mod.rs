//! The aggregate core: event-time daily windows (sales per day, category and brand) and
//! per-customer RFM state, kept incrementally. Pure and synchronous: no I/O, no clock
//! reads, no async. Time only arrives as event times and watermarks passed in.

mod daily;
pub mod rfm;
mod seen;
mod state;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap, FxHashSet};
use storepulse_replay::{Dictionary, PurchaseEvent, Sym};

pub use daily::{Day, Group, Totals};
pub use rfm::{Customer, RfmRow};
pub use seen::Seen;
pub use state::{merge_watermarks, CoreState, CustomerState, DayState, PartWatermark};

pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Days since 1970-01-01 (UTC) of an event time in microseconds.
pub fn day_of(event_time_us: i64) -> i32 {
    event_time_us.div_euclid(MICROS_PER_DAY) as i32
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    /// Watermark = highest event time seen minus this.
    pub max_out_of_orderness_us: i64,
    /// A day is final once the watermark passes its end plus this.
    pub allowed_lateness_us: i64,
    /// Keep each day's distinct customers after the day is final. A partition of a
    /// consumer group needs them: another partition may have seen the same customer on the
    /// same day, and only the union of the sets counts that customer once.
    pub keep_day_customers: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            max_out_of_orderness_us: 3_600_000_000,
            allowed_lateness_us: 0,
            keep_day_customers: false,
        }
    }
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Its day was already final: counted as `late_event`, changes no aggregate.
    Late,
}

/// All aggregate state. Everything a snapshot shows is derived from it.
#[derive(Debug, Clone, Default)]
pub struct Core {
    config: CoreConfig,
    names: Dictionary,
    /// Highest accepted event time: the as-of time of a snapshot.
    max_event_us: Option<i64>,
    watermark_us: Option<i64>,
    days: BTreeMap<i32, Day>,
    /// Oldest day that is not final yet (days before it are all final).
    first_open_day: Option<i32>,
    customers: FxHashMap<u64, Customer>,
    /// (user, order) pairs already counted in a customer's frequency.
    customer_orders: FxHashSet<(u64, u64)>,
    accepted: u64,
    late: u64,
}

impl Core {
    pub fn new(config: CoreConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    pub fn allowed_lateness_us(&self) -> i64 {
        self.config.allowed_lateness_us
    }

    /// The core's symbol for a category code or brand. Events must carry the core's
    /// symbols: a producer with its own dictionary maps its symbols through this once.
    pub fn intern_name(&mut self, name: &str) -> Sym {
        self.names.intern(name)
    }

    pub fn name(&self, sym: Sym) -> &str {
        self.names.name(sym)
    }

    /// Whether events of `day` are late now.
    pub fn is_final(&self, day: i32) -> bool {
        let end = (i64::from(day) + 1) * MICROS_PER_DAY;
        self.watermark_us
            .is_some_and(|w| w >= end.saturating_add(self.config.allowed_lateness_us))
    }

    /// Adds one event to every aggregate, or reports it late.
    pub fn record(&mut self, e: &PurchaseEvent) -> Outcome {
        let day = day_of(e.event_time_us);
        if self.is_final(day) {
            self.late += 1;
            return Outcome::Late;
        }
        self.accepted += 1;
        self.days.entry(day).or_default().record(e);
        if let Some(user) = e.user_id {
            let c = self
                .customers
                .entry(user)
                .or_insert_with(|| Customer::new(e.event_time_us));
            let new_order =
                c.last_order != Some(e.order_id) && self.customer_orders.insert((user, e.order_id));
            c.record(e, new_order);
        }
        if self.first_open_day.is_none_or(|d| day < d) {
            self.first_open_day = Some(day);
        }
        if self.max_event_us.is_none_or(|m| e.event_time_us > m) {
            self.max_event_us = Some(e.event_time_us);
            self.advance_watermark(
                e.event_time_us
                    .saturating_sub(self.config.max_out_of_orderness_us),
            );
        }
        Outcome::Accepted
    }

    /// Moves the watermark forward (never back) and finalizes the days it passed.
    pub fn advance_watermark(&mut self, to_us: i64) {
        if self.watermark_us.is_some_and(|w| w >= to_us) {
            return;
        }
        self.watermark_us = Some(to_us);
        while let Some(day) = self.first_open_day {
            if !self.is_final(day) {
                break;
            }
            let mut open = self.days.range_mut(day..);
            if let Some((_, d)) = open.next() {
                d.finalize(self.config.keep_day_customers);
            }
            self.first_open_day = open.next().map(|(&d, _)| d);
        }
    }

    /// End of input: every day becomes final.
    pub fn finish(&mut self) {
        self.advance_watermark(i64::MAX);
    }

    pub fn watermark_us(&self) -> Option<i64> {
        self.watermark_us
    }

    /// The as-of time: highest accepted event time.
    pub fn max_event_us(&self) -> Option<i64> {
        self.max_event_us
    }

    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    pub fn late(&self) -> u64 {
        self.late
    }

    /// Days in order, with whether each is final.
    pub fn days(&self) -> impl Iterator<Item = (i32, &Day, bool)> + '_ {
        self.days.iter().map(|(&d, day)| (d, day, self.is_final(d)))
    }

    /// Revenue, items and orders over every day held.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for day in self.days.values() {
            t.add(&day.totals);
        }
        t
    }

    pub fn customers(&self) -> &FxHashMap<u64, Customer> {
        &self.customers
    }

    /// RFM rows for every customer, scored against the current as-of date.
    pub fn rfm(&self) -> Vec<RfmRow> {
        match self.max_event_us {
            Some(t) => rfm::score(&self.customers, day_of(t)),
            None => Vec::new(),
        }
    }
}

impl Core {
    /// How many (customer, order) pairs are kept for the frequency count.
    pub fn customer_order_count(&self) -> usize {
        self.customer_orders.len()
    }

    /// Estimated heap bytes of the state: every hash table at its capacity (a hashbrown
    /// table holds one control byte per slot and 8 slots per 7 of capacity).
    pub fn memory_bytes(&self) -> usize {
        let customers = table_bytes::<(u64, Customer)>(self.customers.capacity());
        let pairs = table_bytes::<(u64, u64)>(self.customer_orders.capacity());
        let days: usize = self.days.values().map(Day::memory_bytes).sum();
        customers + pairs + days
    }
}

/// Heap bytes of a hashbrown table of `capacity` entries of `T`.
pub(crate) fn table_bytes<T>(capacity: usize) -> usize {
    capacity * 8 / 7 * (std::mem::size_of::<T>() + 1)
}

impl Core {
    /// The (customer, order) pairs counted in frequencies so far.
    pub fn customer_orders(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.customer_orders.iter().copied()
    }
}
