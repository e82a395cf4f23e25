//! Every Prometheus metric storepulse exports, defined here and nowhere else. One
//! registry with the `storepulse_` prefix (process metrics included); base units
//! (seconds, bytes), `_total` on counters, bounded labels only (a reject reason, an RFM
//! segment, a partition number; never a customer or a day). Hot paths update per batch.

mod serve;

use std::sync::OnceLock;

use prometheus::{
    Counter, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use storepulse_replay::{ReadStats, RejectReason};

pub use serve::{serve, Server};

pub struct Metrics {
    registry: Registry,
    pub lines_read: IntCounter,
    pub lines_accepted: IntCounter,
    pub lines_repaired: IntCounter,
    pub lines_rejected: IntCounterVec,
    pub events_applied: IntCounter,
    pub revenue: Counter,
    pub orders: IntCounter,
    pub watermark: Gauge,
    pub max_event_time: Gauge,
    pub event_time_lag: Gauge,
    pub customers: IntGauge,
    pub customer_orders: IntGauge,
    pub days: IntGauge,
    pub segment_customers: GaugeVec,
    pub snapshot_duration: Histogram,
    pub snapshot_size: IntGauge,
    pub snapshot_last_success: Gauge,
    pub snapshots: IntCounter,
    pub target_speed: Gauge,
    pub target_rate: Gauge,
    pub achieved_speed: Gauge,
    pub achieved_rate: Gauge,
}

/// The metrics of this process.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new().expect("metric definitions are valid"))
}

impl Metrics {
    fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new_custom(Some("storepulse".into()), None)?;
        let r = &registry;
        let build = IntGaugeVec::new(
            Opts::new("build_info", "Build information; the value is always 1."),
            &["version"],
        )?;
        r.register(Box::new(build.clone()))?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let m = Metrics {
            lines_read: counter(r, "lines_read_total", "Non-blank input lines read.")?,
            lines_accepted: counter(
                r,
                "lines_accepted_total",
                "Input lines that passed validation.",
            )?,
            lines_repaired: counter(
                r,
                "lines_repaired_total",
                "Accepted lines that needed the column-shift repair.",
            )?,
            lines_rejected: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "lines_rejected_total",
                        "Rejected input lines and events by reason (late_event included).",
                    ),
                    &["reason"],
                )?;
                r.register(Box::new(c.clone()))?;
                for reason in RejectReason::ALL {
                    c.with_label_values(&[reason.as_str()]);
                }
                c
            },
            events_applied: counter(
                r,
                "events_applied_total",
                "Events handed to the aggregate core.",
            )?,
            revenue: {
                let c = Counter::new(
                    "revenue_total",
                    "Revenue counted in the daily tables, in the input's currency units.",
                )?;
                r.register(Box::new(c.clone()))?;
                c
            },
            orders: counter(
                r,
                "orders_total",
                "Orders counted in the daily tables (distinct per day).",
            )?,
            watermark: gauge(
                r,
                "watermark_timestamp_seconds",
                "Event-time watermark, seconds since the epoch.",
            )?,
            max_event_time: gauge(
                r,
                "max_event_timestamp_seconds",
                "Highest event time accepted, seconds since the epoch.",
            )?,
            event_time_lag: gauge(
                r,
                "event_time_lag_seconds",
                "Wall time minus the highest event time accepted.",
            )?,
            customers: int_gauge(r, "customers", "Customers tracked in the RFM state.")?,
            customer_orders: int_gauge(
                r,
                "customer_orders",
                "(customer, order) pairs kept for the frequency count.",
            )?,
            days: int_gauge(r, "day_windows", "Daily windows held in the tables.")?,
            segment_customers: {
                let g = GaugeVec::new(
                    Opts::new(
                        "segment_customers",
                        "Customers per RFM segment at the last snapshot.",
                    ),
                    &["segment"],
                )?;
                r.register(Box::new(g.clone()))?;
                for s in crate::aggregate::rfm::segment_names() {
                    g.with_label_values(&[s]);
                }
                g
            },
            snapshot_duration: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "snapshot_duration_seconds",
                        "Time to score, write and publish one snapshot.",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ]),
                )?;
                r.register(Box::new(h.clone()))?;
                h
            },
            snapshot_size: int_gauge(
                r,
                "snapshot_size_bytes",
                "Bytes of the last snapshot's files.",
            )?,
            snapshot_last_success: gauge(
                r,
                "snapshot_last_success_timestamp_seconds",
                "Wall time the last snapshot was published, seconds since the epoch.",
            )?,
            snapshots: counter(r, "snapshots_total", "Snapshots published.")?,
            target_speed: gauge(
                r,
                "replay_target_speed_ratio",
                "--speed: event time per wall time the replay aims at (0 when not set).",
            )?,
            target_rate: gauge(
                r,
                "replay_target_rate_events_per_second",
                "--rate: events per second the replay aims at (0 when not set).",
            )?,
            achieved_speed: gauge(
                r,
                "replay_speed_ratio",
                "Event time replayed per wall time since the replay started.",
            )?,
            achieved_rate: gauge(
                r,
                "replay_rate_events_per_second",
                "Events replayed per wall second since the replay started.",
            )?,
            registry,
        };
        Ok(m)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        out
    }

    /// Counts one report of the reader.
    pub fn read(&self, stats: &ReadStats) {
        self.lines_read.inc_by(stats.records);
        self.lines_accepted.inc_by(stats.accepted);
        self.lines_repaired.inc_by(stats.repaired);
        for (reason, n) in stats.rejected.iter() {
            self.lines_rejected
                .with_label_values(&[reason.as_str()])
                .inc_by(n);
        }
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<Gauge> {
    let g = Gauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}
