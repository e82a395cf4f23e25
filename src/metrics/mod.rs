//! Every Prometheus metric storepulse exports, defined here and nowhere else. One
//! registry with the `storepulse_` prefix, and the process metrics under their standard
//! names (`process_resident_memory_bytes`, ...) so stock dashboards work; base units
//! (seconds, bytes), `_total` on counters, bounded labels only (a reject reason, an RFM
//! segment, a partition number; never a customer or a day). Hot paths update per batch.
//!
//! Counters count what this process did: a resumed `run` reports the totals it restored
//! from its snapshot as `storepulse_resumed_*` gauges, never as a counter jump (see
//! [`Metrics::expect_restored`]). The updates the pipeline makes from its own loop are also
//! its heartbeat for `/healthz` (`health.rs`).

pub mod events;
pub mod health;
mod kinds;
mod serve;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};
use storepulse_replay::{ReadStats, RejectReason};

pub use kinds::{Counter, Lag, LagGauge};
pub use serve::{answer as health_answer, serve, set_ready};

pub struct Metrics {
    registry: Registry,
    /// The process collector's metrics, without the prefix.
    process: Registry,
    /// The next reader report is the one a resumed run restored (see `expect_restored`).
    restoring_read: AtomicBool,
    resumed_lines_read: IntGauge,
    resumed_lines_accepted: IntGauge,
    lines_read: IntCounter,
    lines_accepted: IntCounter,
    lines_repaired: IntCounter,
    lines_rejected: IntCounterVec,
    events_applied: IntCounter,
    late_events: Counter,
    revenue_cents: Counter,
    orders: Counter,
    watermark: Gauge,
    max_event_time: Gauge,
    event_time_lag: Gauge,
    customers: IntGauge,
    customer_orders: IntGauge,
    days: IntGauge,
    segment_customers: GaugeVec,
    snapshot_duration: Histogram,
    snapshot_size: IntGauge,
    snapshot_last_success: Gauge,
    snapshots: IntCounter,
    snapshot_failures: IntCounter,
    store_errors: IntCounter,
    target_speed: Gauge,
    target_rate: Gauge,
    achieved_speed: Gauge,
    achieved_rate: Gauge,
    state_bytes: IntGauge,
    // replay
    events_published: IntCounter,
    dead_letters_published: IntCounter,
    messages_delivered: IntCounter,
    delivery_failures: IntCounter,
    // process
    messages_consumed: IntCounterVec,
    messages_rejected: IntCounterVec,
    duplicate_messages: IntCounter,
    consumer_lag: LagGauge,
    partitions_assigned: IntGauge,
    // the store page
    page_overviews: IntCounterVec,
    page_sql_queries: IntCounterVec,
    page_workers_started: IntCounter,
}

/// Where an overview of the store page came from.
pub const OVERVIEW_SOURCES: [&str; 2] = ["cache", "worker"];
/// What became of a `POST /api/sql` query.
pub const SQL_OUTCOMES: [&str; 6] = [
    "answered",
    "refused_by_sql",
    "too_many",
    "timed_out",
    "out_of_memory",
    "failed",
];

/// Reasons a processor rejects a message (dead-lettered), besides late events.
pub const MESSAGE_REJECT_REASONS: [&str; 2] = ["invalid_message", "unsupported_version"];

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
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        process.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let restorable = |name: &str, help: &str, resumed: &str| -> prometheus::Result<Counter> {
            Ok(Counter::new(
                counter(r, name, help)?,
                int_gauge(
                    r,
                    resumed,
                    &format!(
                        "{help} Restored by `run --resume` from its snapshot (0 when not resumed)."
                    ),
                )?,
            ))
        };
        let m = Metrics {
            process,
            restoring_read: AtomicBool::new(false),
            resumed_lines_read: int_gauge(
                r,
                "resumed_lines_read",
                "Non-blank input lines read before a resumed run's snapshot (0 when not resumed).",
            )?,
            resumed_lines_accepted: int_gauge(
                r,
                "resumed_lines_accepted",
                "Input lines accepted before a resumed run's snapshot (0 when not resumed).",
            )?,
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
                        "Input lines rejected by the reader, by reason.",
                    ),
                    &["reason"],
                )?;
                r.register(Box::new(c.clone()))?;
                for reason in RejectReason::ALL {
                    if reason != RejectReason::LateEvent {
                        c.with_label_values(&[reason.as_str()]);
                    }
                }
                c
            },
            late_events: restorable(
                "late_events_total",
                "Events whose day was already final (rejected as late_event, kept apart).",
                "resumed_late_events",
            )?,
            events_applied: counter(
                r,
                "events_applied_total",
                "Events handed to the aggregate core.",
            )?,
            revenue_cents: restorable(
                "revenue_cents_total",
                "Revenue counted in the daily tables, in cents of the input's currency (exact).",
                "resumed_revenue_cents",
            )?,
            orders: restorable(
                "orders_total",
                "Orders counted in the daily tables (distinct per day).",
                "resumed_orders",
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
                        "Customers per RFM segment at the last snapshot, scored over this process's customers only (a processor: its own partitions'); the store page has the merged numbers.",
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
            store_errors: counter(
                r,
                "store_errors_total",
                "Object store requests answered 5xx or 429, or not answered; each is retried by the store client, up to its limit.",
            )?,
            snapshot_failures: counter(
                r,
                "snapshot_failures_total",
                "Periodic snapshots not published (a store error beyond its retries); each is tried again at the next interval.",
            )?,
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
            state_bytes: int_gauge(
                r,
                "state_bytes",
                "Estimated heap bytes of the aggregate state (hash tables at their capacity).",
            )?,
            events_published: counter(
                r,
                "events_published_total",
                "Purchase events handed to the Kafka producer.",
            )?,
            dead_letters_published: counter(
                r,
                "dead_letters_published_total",
                "Dead letters (rejected lines or messages) handed to the Kafka producer.",
            )?,
            messages_delivered: counter(
                r,
                "messages_delivered_total",
                "Messages the brokers acknowledged.",
            )?,
            delivery_failures: counter(
                r,
                "delivery_failures_total",
                "Messages that could not be delivered (after the producer's retries).",
            )?,
            messages_consumed: counter_vec(
                r,
                "messages_consumed_total",
                "Messages applied by this processor, by partition.",
                "partition",
                &[],
            )?,
            messages_rejected: counter_vec(
                r,
                "messages_rejected_total",
                "Messages a processor dead-lettered, by reason.",
                "reason",
                &MESSAGE_REJECT_REASONS,
            )?,
            duplicate_messages: counter(
                r,
                "duplicate_messages_total",
                "Messages whose event id was already applied (skipped, counted).",
            )?,
            consumer_lag: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "consumer_lag_messages",
                        "Log end offset minus this processor's position, by owned partition.",
                    ),
                    &["partition"],
                )?;
                r.register(Box::new(g.clone()))?;
                LagGauge::new(
                    g,
                    gauge(
                        r,
                        "consumer_lag_updated_timestamp_seconds",
                        "Wall time the consumer lag was last brought up to date, seconds since the epoch.",
                    )?,
                )
            },
            partitions_assigned: int_gauge(
                r,
                "partitions_assigned",
                "Partitions this processor owns.",
            )?,
            page_overviews: counter_vec(
                r,
                "page_overviews_total",
                "Overviews the store page sent, by where they came from (computed by the page's worker once per snapshot and parameters, then the cache).",
                "source",
                &OVERVIEW_SOURCES,
            )?,
            page_sql_queries: counter_vec(
                r,
                "page_sql_queries_total",
                "POST /api/sql queries, by outcome (too_many: refused with 429; timed_out and out_of_memory: their worker was killed).",
                "outcome",
                &SQL_OUTCOMES,
            )?,
            page_workers_started: counter(
                r,
                "page_query_workers_started_total",
                "Query worker processes the store page started (each replaces one that was killed, died or was let go).",
            )?,
            registry,
        };
        Ok(m)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&families, &mut out)
            .expect("text encoding of gathered metrics");
        out
    }

    /// The next reader report and the next report of revenue, orders and late events are
    /// the totals a resumed run restored from its snapshot, not work done here: they go to
    /// the `storepulse_resumed_*` gauges and the counters start at 0. `run --resume` calls
    /// this before the pipeline starts; the driver reports what it restored first.
    fn expect_restored(&self) {
        self.restoring_read.store(true, Ordering::SeqCst);
        self.revenue_cents.expect_restored();
        self.orders.expect_restored();
        self.late_events.expect_restored();
    }

    /// Counts one report of the reader.
    fn read(&self, stats: &ReadStats) {
        health::get().progressed();
        if self.restoring_read.swap(false, Ordering::SeqCst) {
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.resumed_lines_read.set(n(stats.records));
            self.resumed_lines_accepted.set(n(stats.accepted));
            return;
        }
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

/// Seconds since the epoch, from microseconds.
fn seconds(us: i64) -> f64 {
    us as f64 / 1e6
}

impl Metrics {
    /// Event-time progress: the watermark, the highest event time and how far it is
    /// behind the wall clock.
    fn event_time(&self, watermark_us: Option<i64>, max_event_us: Option<i64>) {
        // Called from the pipeline's loop after every batch and every second or snapshot.
        health::get().progressed();
        if let Some(w) = watermark_us.filter(|&w| w != i64::MAX && w != i64::MIN) {
            self.watermark.set(seconds(w));
        }
        if let Some(t) = max_event_us {
            self.max_event_time.set(seconds(t));
            let now = chrono::Utc::now().timestamp_micros();
            self.event_time_lag.set(seconds(now - t));
        }
    }

    /// A snapshot was published.
    fn snapshot_published(&self, took: std::time::Duration, bytes: u64) {
        health::get().progressed();
        self.snapshot_duration.observe(took.as_secs_f64());
        self.snapshots.inc();
        self.snapshot_size.set(bytes as i64);
        self.snapshot_last_success
            .set(seconds(chrono::Utc::now().timestamp_micros()));
    }

    /// Customers per segment (every segment is set: those without customers to 0).
    fn segments<'a>(&self, counts: impl IntoIterator<Item = (&'a str, u64)>) {
        for s in crate::aggregate::rfm::segment_names() {
            self.segment_customers.with_label_values(&[s]).set(0.0);
        }
        for (segment, n) in counts {
            self.segment_customers
                .with_label_values(&[segment])
                .set(n as f64);
        }
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

/// A counter by one label, with a series for each `known` value from the start.
fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    known: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
    r.register(Box::new(c.clone()))?;
    for value in known {
        c.with_label_values(&[value]);
    }
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
