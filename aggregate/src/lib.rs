//! The aggregate core: event-time daily windows (sales per day, category and brand) and
//! per-customer RFM state, kept incrementally. Pure and synchronous: no I/O, no clock
//! reads, no async. Time only arrives as event times and watermarks passed in.
//!
//! A crate of its own so that Cargo enforces the rule: it depends on no wire format,
//! serialization, async runtime or Kafka client (only hash maps, bitmaps, error types
//! and rayon's fork-join); readers and transports depend on it, never the other way round.

mod changes;
mod daily;
pub mod event;
pub mod rfm;
mod seen;
mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod windows;

use std::collections::BTreeMap;

pub use event::{Dictionary, PurchaseEvent, Sym};
use rustc_hash::{FxHashMap, FxHashSet};

pub use changes::Mark;
pub use daily::{Day, Group, Totals};
pub use rfm::{Customer, RfmRow, Scored};
pub use seen::{Seen, SeenId};
pub use state::{merge_watermarks, CoreState, CustomerState, DayState};
use windows::{final_at, raise_max, record_customer, Windows};

pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Batches of at least this many events are recorded on two threads.
const PARALLEL_BATCH: usize = 4096;

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
    /// Whether a new highest event time moves the watermark (to it less the
    /// out-of-orderness). A partition of a consumer group sets this off: its watermark only
    /// moves with the replayer's in-band watermarks, which hold for the whole input, never
    /// with its own share of the events, which another partition's late share cannot stop.
    pub watermark_from_events: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            max_out_of_orderness_us: 3_600_000_000,
            allowed_lateness_us: 0,
            keep_day_customers: false,
            watermark_from_events: true,
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
    /// What changed since the last snapshot published, when tracked (`changes.rs`).
    changes: Option<Box<changes::Changes>>,
    /// Stamps the days changed now; a snapshot started moves it on.
    epoch: u32,
    /// The epoch of the last snapshot published: days stamped later changed since.
    settled: u32,
}

impl Core {
    pub fn new(config: CoreConfig) -> Self {
        Self {
            config,
            epoch: 1,
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
        final_at(self.watermark_us, day, self.config.allowed_lateness_us)
    }

    /// Adds one event to every aggregate, or reports it late.
    pub fn record(&mut self, e: &PurchaseEvent) -> Outcome {
        let (mut windows, mut customers) = self.parts();
        let outcome = windows.record(e);
        if outcome == Outcome::Accepted {
            record_customer(&mut customers, e);
        }
        outcome
    }

    /// [`Core::record`] for a batch in order, with the daily windows and the customers
    /// updated on two threads; returns the positions of the late events. The state after
    /// it is exactly the state after recording the events one by one.
    pub fn record_batch(&mut self, events: &[PurchaseEvent]) -> Vec<usize> {
        // Which events are late follows from the watermark alone: work it out first, so
        // the customers need not wait for the windows.
        let lateness = self.config.allowed_lateness_us;
        let (mut max, mut watermark) = (self.max_event_us, self.watermark_us);
        let accepted: Vec<bool> = events
            .iter()
            .map(|e| {
                if final_at(watermark, day_of(e.event_time_us), lateness) {
                    return false;
                }
                if let Some(to) = raise_max(&mut max, e, &self.config) {
                    watermark = Some(watermark.map_or(to, |w| w.max(to)));
                }
                true
            })
            .collect();
        let (mut windows, mut customers) = self.parts();
        let mut record_customers = || {
            for (e, _) in events.iter().zip(&accepted).filter(|(_, &ok)| ok) {
                record_customer(&mut customers, e);
            }
        };
        // Two threads pay only for a large batch: waking the other costs more than a few
        // thousand events' customers (a processor's batches are a few hundred a partition).
        let late = if events.len() >= PARALLEL_BATCH {
            rayon::join(
                || windows.record_batch(events, &accepted, max, watermark),
                record_customers,
            )
            .0
        } else {
            record_customers();
            windows.record_batch(events, &accepted, max, watermark)
        };
        debug_assert!(late.iter().all(|&i| !accepted[i]));
        late
    }

    /// The daily windows and event-time progress, and apart from them the customers and
    /// their counted orders: the two halves of an event's update.
    fn parts(&mut self) -> (Windows<'_>, windows::Customers<'_>) {
        let windows = Windows {
            epoch: self.epoch,
            config: &self.config,
            days: &mut self.days,
            first_open_day: &mut self.first_open_day,
            max_event_us: &mut self.max_event_us,
            watermark_us: &mut self.watermark_us,
            accepted: &mut self.accepted,
            late: &mut self.late,
        };
        let customers = windows::Customers {
            customers: &mut self.customers,
            orders: &mut self.customer_orders,
            changes: self.changes.as_deref_mut(),
            epoch: self.epoch,
        };
        (windows, customers)
    }

    /// Moves the watermark forward (never back) and finalizes the days it passed.
    pub fn advance_watermark(&mut self, to_us: i64) {
        self.parts().0.advance_watermark(to_us);
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

    /// Every customer's RFM state as rows, not scored (see [`rfm::unscored`]).
    pub fn rfm_unscored(&self) -> Scored {
        rfm::unscored(&self.customers)
    }

    /// RFM rows for every customer, scored against the current as-of date.
    pub fn rfm(&self) -> Scored {
        match self.max_event_us {
            Some(t) => rfm::score(&self.customers, day_of(t)),
            None => Scored::default(),
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
        self.memory().total()
    }

    /// The state's estimated heap bytes by what they grow with.
    pub fn memory(&self) -> MemoryReport {
        let mut report = MemoryReport {
            customers: (
                self.customers.len(),
                table_bytes::<(u64, Customer)>(self.customers.capacity()),
            ),
            customer_orders: (
                self.customer_orders.len(),
                table_bytes::<(u64, u64)>(self.customer_orders.capacity()),
            ),
            ..MemoryReport::default()
        };
        for (_, day, is_final) in self.days() {
            let part = if is_final {
                &mut report.final_days
            } else {
                &mut report.open_days
            };
            part.0 += 1;
            part.1 += day.memory_bytes();
        }
        report
    }
}

/// Estimated heap bytes of a core's state, as (how many, bytes) per kind of entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryReport {
    pub customers: (usize, usize),
    /// The (customer, order) pairs counted in frequencies.
    pub customer_orders: (usize, usize),
    /// Days not final yet: their distinct order and customer sets.
    pub open_days: (usize, usize),
    /// Final days: totals only (and their customer sets in a partition's core).
    pub final_days: (usize, usize),
}

impl MemoryReport {
    pub fn total(&self) -> usize {
        self.customers.1 + self.customer_orders.1 + self.open_days.1 + self.final_days.1
    }

    /// "N kinds at B bytes each" for each kind present.
    pub fn describe(&self) -> String {
        let each = |(n, bytes): (usize, usize), what: &str| {
            (n > 0).then(|| format!("{n} {what} at {:.0} B", bytes as f64 / n as f64))
        };
        [
            each(self.customers, "customers"),
            each(self.customer_orders, "counted orders"),
            each(self.open_days, "open days"),
            each(self.final_days, "final days"),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
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
