//! Metric types that do more than the `prometheus` crate's: a counter that takes a
//! restored total as a gauge instead of a jump, and a lag gauge that records when it was
//! last brought up to date. They keep the crate's method names, so call sites read the same.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::{Gauge, IntCounter, IntGauge, IntGaugeVec};

use super::seconds;

/// A counter whose next report after [`Counter::expect_restored`] is a total restored from
/// a snapshot: it goes to a `storepulse_resumed_*` gauge, and the counter starts at 0.
pub struct Counter {
    counter: IntCounter,
    resumed: IntGauge,
    restoring: AtomicBool,
}

impl Counter {
    pub(super) fn new(counter: IntCounter, resumed: IntGauge) -> Self {
        Counter {
            counter,
            resumed,
            restoring: AtomicBool::new(false),
        }
    }

    pub fn inc_by(&self, n: u64) {
        if self.restoring.swap(false, Ordering::SeqCst) {
            self.resumed.set(i64::try_from(n).unwrap_or(i64::MAX));
        } else {
            self.counter.inc_by(n);
        }
    }

    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn get(&self) -> u64 {
        self.counter.get()
    }

    pub(super) fn expect_restored(&self) {
        self.restoring.store(true, Ordering::SeqCst);
    }
}

/// Consumer lag by partition, with the wall time it was last brought up to date
/// (`storepulse_consumer_lag_updated_timestamp_seconds`), so a panel can say how old it is
/// when the loop that updates it stops.
pub struct LagGauge {
    lag: IntGaugeVec,
    updated: Gauge,
}

/// One partition's lag (see [`LagGauge::with_label_values`]).
pub struct Lag<'a> {
    gauge: IntGauge,
    updated: &'a Gauge,
}

impl Lag<'_> {
    pub fn set(&self, lag: i64) {
        self.gauge.set(lag);
        self.updated
            .set(seconds(chrono::Utc::now().timestamp_micros()));
    }

    pub fn get(&self) -> i64 {
        self.gauge.get()
    }
}

impl LagGauge {
    pub(super) fn new(lag: IntGaugeVec, updated: Gauge) -> Self {
        LagGauge { lag, updated }
    }

    pub fn with_label_values(&self, labels: &[&str]) -> Lag<'_> {
        Lag {
            gauge: self.lag.with_label_values(labels),
            updated: &self.updated,
        }
    }

    pub fn remove_label_values(&self, labels: &[&str]) -> prometheus::Result<()> {
        self.lag.remove_label_values(labels)
    }

    /// The lag summed over the partitions reported.
    pub fn total(&self) -> i64 {
        use prometheus::core::Collector;
        self.lag
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_gauge().get_value() as i64)
            .sum()
    }
}
