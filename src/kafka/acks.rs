//! What the brokers acknowledged of the replayer's messages, in the order they were handed
//! to the producer: the replayer may only claim progress (a watermark, the end of input)
//! for events that are all delivered, and must claim none after a failure, or a later
//! replay of the same file would find its resent events late.
//!
//! Each message carries a sequence number as its delivery opaque. Deliveries arrive in
//! order within a partition but not across partitions, so the context keeps the longest
//! prefix of sequence numbers that is finished, and beside it the event times the prefix
//! covers (one mark per batch of events).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;
use rdkafka::ClientContext;

use super::Deliveries;

/// The replayer's producer context.
#[derive(Debug, Default)]
pub struct Acks {
    pub counts: Deliveries,
    next_seq: AtomicU64,
    prefix: Mutex<Prefix>,
}

#[derive(Debug, Default)]
struct Prefix {
    /// Every message with a lower sequence number is finished (delivered or failed).
    base: u64,
    /// Finished flags of the messages from `base` on.
    finished: VecDeque<bool>,
    /// A message failed for good: no progress may be claimed any more.
    failed: bool,
    /// (sequence number after a batch, highest event time up to it), oldest first.
    marks: VecDeque<(u64, i64)>,
    /// The highest event time of the delivered prefix.
    delivered_time: Option<i64>,
}

impl Prefix {
    fn finish(&mut self, seq: u64, ok: bool) {
        self.failed |= !ok;
        let Some(i) = seq.checked_sub(self.base).map(|i| i as usize) else {
            return;
        };
        if i >= self.finished.len() {
            self.finished.resize(i + 1, false);
        }
        self.finished[i] = true;
        while self.finished.front() == Some(&true) {
            self.finished.pop_front();
            self.base += 1;
        }
        self.take_marks();
    }

    /// Takes the marks the finished prefix covers.
    fn take_marks(&mut self) {
        while let Some(&(end, time)) = self.marks.front() {
            if end > self.base {
                break;
            }
            self.marks.pop_front();
            self.delivered_time = self.delivered_time.max(Some(time));
        }
    }
}

impl Acks {
    /// The sequence number (delivery opaque) of the next message handed to the producer.
    pub fn next(&self) -> usize {
        self.next_seq.fetch_add(1, Ordering::Relaxed) as usize
    }

    /// Every message handed over so far carries events up to `event_time_us`.
    pub fn mark(&self, event_time_us: i64) {
        let end = self.next_seq.load(Ordering::Relaxed);
        let mut p = self.lock();
        p.marks.push_back((end, event_time_us));
        // A mark already covered (nothing in flight) counts at once.
        p.take_marks();
    }

    /// The highest event time of which every message, and every message handed over before
    /// it, was delivered; `None` once anything failed.
    pub fn delivered_time(&self) -> Option<i64> {
        let p = self.lock();
        (!p.failed).then_some(p.delivered_time).flatten()
    }

    /// Whether any message failed for good.
    pub fn any_failed(&self) -> bool {
        self.lock().failed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Prefix> {
        self.prefix.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for Acks {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        super::client_log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::client_error(error, reason);
    }
}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        self.counts.note(result);
        self.lock().finish(seq as u64, result.is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_the_delivered_prefix_and_stops_at_a_failure() {
        let mut p = Prefix::default();
        // Batches: seqs 0..3 up to t=10, 3..5 up to t=20.
        p.marks.extend([(3, 10), (5, 20)]);
        p.finish(1, true);
        p.finish(3, true);
        assert_eq!((p.base, p.delivered_time), (0, None));
        p.finish(0, true);
        assert_eq!((p.base, p.delivered_time), (2, None));
        p.finish(2, true);
        assert_eq!((p.base, p.delivered_time), (4, Some(10)));
        p.finish(4, true);
        assert_eq!((p.base, p.delivered_time), (5, Some(20)));
        assert!(!p.failed);
        p.finish(5, false);
        assert!(p.failed);
    }

    #[test]
    fn a_mark_after_everything_was_delivered_counts_at_once() {
        let acks = Acks::default();
        for _ in 0..3 {
            let seq = acks.next() as u64;
            acks.lock().finish(seq, true);
        }
        acks.mark(42);
        assert_eq!(acks.delivered_time(), Some(42));
        let seq = acks.next() as u64;
        acks.mark(50);
        assert_eq!(acks.delivered_time(), Some(42));
        acks.lock().finish(seq, false);
        assert_eq!(acks.delivered_time(), None, "no progress after a failure");
        assert!(acks.any_failed());
    }
}
