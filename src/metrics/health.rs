//! What `/healthz` and `/readyz` say, decided from facts the pipeline reports, never from
//! "the HTTP thread is up". Live: the pipeline made progress within `--stall-timeout`, or
//! no input is waiting for it. Ready: the pipeline has started, and (for `process`) it owns
//! at least one partition and its broker has not been unreachable for longer than
//! `--broker-timeout`.
//!
//! Progress is reported by the metrics the pipeline already updates from its own loop
//! (events applied, reader reports, event-time updates, published snapshots), so a loop
//! that wedges stops reporting it. The calls a Kafka consumer makes are [`Health::progressed`]
//! (each pass of its poll loop), [`Health::input_waiting`] (whether its lag is above 0),
//! [`Health::partitions_owned`] (after each assignment change) and
//! [`Health::broker_reachable`] (from the client's statistics every second: any broker
//! `UP` that has not left requests unanswered for 10 s; and unreachable while it waits for
//! the brokers at start). Time is passed in
//! (`*_at`), so the decisions are tested without a clock.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::SeqCst};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds since this process's health record began; `NEVER` for "not yet".
const NEVER: u64 = u64::MAX;

pub struct Health {
    epoch: Instant,
    started: AtomicBool,
    stall_timeout_ms: AtomicU64,
    last_progress_ms: AtomicU64,
    waiting: AtomicBool,
    /// Whether readiness needs an owned partition (`process`).
    needs_partitions: AtomicBool,
    /// Partitions owned; -1 until told.
    partitions: AtomicI64,
    broker_timeout_ms: AtomicU64,
    broker_down_since_ms: AtomicU64,
}

/// The health of this process.
pub fn get() -> &'static Health {
    static HEALTH: OnceLock<Health> = OnceLock::new();
    HEALTH.get_or_init(Health::new)
}

/// How the checks are tuned, from the command's flags.
#[derive(Debug, Clone, Copy)]
pub struct HealthConfig {
    /// `/healthz` fails after this long without progress while input waits.
    pub stall_timeout: Duration,
    /// `/readyz` fails after the broker has been unreachable this long (`process`).
    pub broker_timeout: Duration,
    /// `/readyz` needs an owned partition (`process`).
    pub needs_partitions: bool,
}

impl Health {
    pub fn new() -> Self {
        Health {
            epoch: Instant::now(),
            started: AtomicBool::new(false),
            stall_timeout_ms: AtomicU64::new(NEVER),
            last_progress_ms: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            needs_partitions: AtomicBool::new(false),
            partitions: AtomicI64::new(-1),
            broker_timeout_ms: AtomicU64::new(NEVER),
            broker_down_since_ms: AtomicU64::new(NEVER),
        }
    }

    /// Milliseconds since the record began: the clock the `*_at` checks take.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn configure(&self, config: HealthConfig) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(NEVER);
        self.stall_timeout_ms
            .store(ms(config.stall_timeout), SeqCst);
        self.broker_timeout_ms
            .store(ms(config.broker_timeout), SeqCst);
        self.needs_partitions.store(config.needs_partitions, SeqCst);
    }

    /// Whether readiness needs an owned partition (a Kafka processor).
    pub fn needs_partitions(&self) -> bool {
        self.needs_partitions.load(SeqCst)
    }

    /// The pipeline has started (or stopped) its work.
    pub fn set_started(&self, started: bool) {
        self.started.store(started, SeqCst);
        if started {
            self.progressed();
        }
    }

    /// The pipeline's loop handled input, or looked for it and found none.
    pub fn progressed(&self) {
        self.last_progress_ms.store(self.now_ms(), SeqCst);
    }

    /// Whether input is known to be waiting for the pipeline (a consumer's lag above 0, a
    /// replay not finished).
    pub fn input_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, SeqCst);
    }

    /// How many partitions the process owns now.
    pub fn partitions_owned(&self, n: usize) {
        self.partitions
            .store(i64::try_from(n).unwrap_or(i64::MAX), SeqCst);
    }

    /// Whether the broker answered (true) or the client reported it unreachable (false).
    pub fn broker_reachable(&self, reachable: bool) {
        if reachable {
            self.broker_down_since_ms.store(NEVER, SeqCst);
        } else {
            let now = self.now_ms();
            let _ = self
                .broker_down_since_ms
                .compare_exchange(NEVER, now, SeqCst, SeqCst);
        }
    }

    /// `Ok` while live; otherwise why not.
    pub fn live_at(&self, now_ms: u64) -> Result<(), String> {
        let stall = self.stall_timeout_ms.load(SeqCst);
        if !self.started.load(SeqCst) || stall == NEVER || !self.waiting.load(SeqCst) {
            return Ok(());
        }
        let idle = now_ms.saturating_sub(self.last_progress_ms.load(SeqCst));
        if idle > stall {
            return Err(format!(
                "stalled: no progress for {:.1}s while input is waiting (--stall-timeout {:.1}s)",
                idle as f64 / 1e3,
                stall as f64 / 1e3
            ));
        }
        Ok(())
    }

    /// `Ok` while ready; otherwise why not.
    pub fn ready_at(&self, now_ms: u64) -> Result<(), String> {
        if !self.started.load(SeqCst) {
            return Err("starting".into());
        }
        if self.needs_partitions.load(SeqCst) && self.partitions.load(SeqCst) == 0 {
            return Err("owns no partitions".into());
        }
        let down = self.broker_down_since_ms.load(SeqCst);
        let limit = self.broker_timeout_ms.load(SeqCst);
        if down != NEVER && limit != NEVER && now_ms.saturating_sub(down) > limit {
            return Err(format!(
                "broker unreachable for {:.1}s (--broker-timeout {:.1}s)",
                now_ms.saturating_sub(down) as f64 / 1e3,
                limit as f64 / 1e3
            ));
        }
        self.live_at(now_ms)
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(needs_partitions: bool) -> Health {
        let h = Health::new();
        h.configure(HealthConfig {
            stall_timeout: Duration::from_secs(10),
            broker_timeout: Duration::from_secs(30),
            needs_partitions,
        });
        h.set_started(true);
        h
    }

    #[test]
    fn a_loop_without_progress_while_input_waits_is_not_live() {
        let h = health(false);
        let t0 = h.last_progress_ms.load(SeqCst);
        h.input_waiting(true);
        assert_eq!(h.live_at(t0 + 9_000), Ok(()));
        let e = h.live_at(t0 + 11_000).unwrap_err();
        assert!(e.starts_with("stalled: no progress for 11.0s"), "{e}");
        assert!(
            h.ready_at(t0 + 11_000).is_err(),
            "a stalled pipeline is not ready"
        );
        // Nothing waiting: an idle pipeline is healthy however long it idles.
        h.input_waiting(false);
        assert_eq!(h.live_at(t0 + 1_000_000), Ok(()));
        h.input_waiting(true);
        h.last_progress_ms.store(t0 + 1_000_000, SeqCst);
        assert_eq!(h.live_at(t0 + 1_005_000), Ok(()));
    }

    #[test]
    fn readiness_needs_a_start_a_partition_and_a_reachable_broker() {
        let h = Health::new();
        assert_eq!(h.ready_at(0), Err("starting".into()));
        let h = health(true);
        let now = h.now_ms();
        assert_eq!(h.ready_at(now), Ok(()), "not told yet: no reason to refuse");
        h.partitions_owned(0);
        assert_eq!(h.ready_at(now), Err("owns no partitions".into()));
        h.partitions_owned(2);
        assert_eq!(h.ready_at(now), Ok(()));
        h.broker_reachable(false);
        let down = h.broker_down_since_ms.load(SeqCst);
        h.broker_reachable(false);
        assert_eq!(
            h.broker_down_since_ms.load(SeqCst),
            down,
            "the first report counts"
        );
        assert_eq!(h.ready_at(down + 29_000), Ok(()));
        let e = h.ready_at(down + 31_000).unwrap_err();
        assert!(e.starts_with("broker unreachable for 31.0s"), "{e}");
        h.broker_reachable(true);
        assert_eq!(h.ready_at(down + 31_000), Ok(()));
        // `run` owns no partitions and needs none.
        let h = health(false);
        h.partitions_owned(0);
        assert_eq!(h.ready_at(h.now_ms()), Ok(()));
    }
}
