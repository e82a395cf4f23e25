//! A processor's dead letters: the messages it rejects (`late_event`, `invalid_message`,
//! `unsupported_version`) go to `<topic>.rejected`, and a partition's snapshot may only be
//! published once every dead letter of the messages it covers is delivered. So each
//! partition counts its dead letters not yet delivered; one that fails (the broker away,
//! the queue full) is kept and sent again, never dropped, and never waited for on the poll
//! thread: the partition's snapshot simply waits.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};
use rdkafka::ClientContext;

use super::{Connection, DeadLetter, Deliveries};
use crate::logs::Repeats;

/// What is not delivered yet.
#[derive(Debug, Default)]
struct Pending {
    /// Dead letters enqueued or waiting for a retry, not yet delivered, per partition,
    /// sent since the partition was last taken here.
    outstanding: BTreeMap<i32, u64>,
    /// How many times each partition was forgotten: a dead letter sent before is still
    /// delivered, but no longer counts for the partition's snapshots.
    epochs: BTreeMap<i32, u32>,
    /// Failed or never enqueued: (whose, key, value), oldest first.
    retry: Vec<(usize, Vec<u8>, Vec<u8>)>,
}

/// A dead letter's partition and its epoch, as the producer carries them.
fn whose(partition: i32, epoch: u32) -> usize {
    ((epoch as usize) << 32) | partition as u32 as usize
}

fn partition_epoch(whose: usize) -> (i32, u32) {
    (whose as u32 as i32, (whose >> 32) as u32)
}

#[derive(Debug, Default)]
pub struct Context {
    pub counts: Deliveries,
    pending: Mutex<Pending>,
}

impl Context {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for Context {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        super::client_log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::client_error(error, reason);
    }
}

impl ProducerContext for Context {
    /// The partition of the message the dead letter is about, and its epoch ([`whose`]).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, whose: usize) {
        self.counts.note(result);
        let (p, epoch) = partition_epoch(whose);
        let mut pending = self.lock();
        match result {
            Ok(_) => {
                if pending.epochs.get(&p).copied().unwrap_or(0) != epoch {
                    return;
                }
                if let Some(n) = pending.outstanding.get_mut(&p) {
                    *n = n.saturating_sub(1);
                }
            }
            Err((_, m)) => {
                let (key, value) = (m.key().unwrap_or_default(), m.payload().unwrap_or_default());
                pending.retry.push((whose, key.to_vec(), value.to_vec()));
            }
        }
    }
}

pub struct DeadLetters {
    /// Polled for its delivery reports by whoever asks what is outstanding (no thread of
    /// its own: a polling thread spent 5% of the processor's CPU waking up).
    producer: BaseProducer<Context>,
    topic: String,
    /// When the last "not delivered" warning was printed.
    warned: Mutex<Repeats>,
}

impl DeadLetters {
    pub fn new(connection: &Connection, topic: String) -> Result<Self, rdkafka::error::KafkaError> {
        let mut config = connection.client_config();
        // Dead letters may be sent twice after a restart, never lost: retries that
        // duplicate are fine, and idempotence's fatal errors would stop the producer.
        config
            .set("enable.idempotence", "false")
            .set("message.timeout.ms", "30000");
        for (k, v) in &connection.options {
            config.set(k, v);
        }
        let producer = config.create_with_context(Context::default())?;
        Ok(Self {
            producer,
            topic,
            warned: Mutex::new(Repeats::new(Duration::from_secs(10))),
        })
    }

    /// Hands the dead letter of a message of `partition` over; never blocks.
    pub fn send(&self, partition: i32, record: &DeadLetter) {
        let value = serde_json::to_vec(record).expect("dead letter serializes");
        let whose = {
            let mut pending = self.producer.context().lock();
            *pending.outstanding.entry(partition).or_default() += 1;
            whose(
                partition,
                pending.epochs.get(&partition).copied().unwrap_or(0),
            )
        };
        self.enqueue(whose, record.reason.as_bytes(), value);
        self.producer.poll(Duration::ZERO);
    }

    fn enqueue(&self, whose: usize, key: &[u8], value: Vec<u8>) {
        let r = BaseRecord::with_opaque_to(&self.topic, whose)
            .key(key)
            .payload(value.as_slice());
        if let Err((e, _)) = self.producer.send(r) {
            let ctx = self.producer.context();
            ctx.counts.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = ctx.counts.last_error.lock() {
                *last = Some(e.to_string());
            }
            ctx.lock().retry.push((whose, key.to_vec(), value));
        }
    }

    /// Sends the failed ones again (call it often: it only takes what failed since).
    pub fn retry(&self) {
        self.producer.poll(Duration::ZERO);
        let failed = std::mem::take(&mut self.producer.context().lock().retry);
        for (whose, key, value) in failed {
            self.enqueue(whose, &key, value);
        }
    }

    /// Dead letters of `partition` not delivered yet.
    pub fn outstanding(&self, partition: i32) -> u64 {
        self.producer.poll(Duration::ZERO);
        let pending = self.producer.context().lock();
        pending.outstanding.get(&partition).copied().unwrap_or(0)
    }

    /// Forgets a partition given up: its new owner reads its messages again from the last
    /// snapshot and sends their dead letters itself. Those sent before are still delivered
    /// (a dead letter may go twice, never be lost), but if the partition comes back here
    /// they do not count for its snapshots.
    pub fn forget(&self, partition: i32) {
        let mut pending = self.producer.context().lock();
        pending.outstanding.remove(&partition);
        *pending.epochs.entry(partition).or_default() += 1;
    }

    /// Waits, retrying, until `partitions` have no dead letter outstanding or `limit`
    /// passed; returns those that still have some.
    pub fn wait(&self, partitions: &[i32], limit: Duration) -> Vec<i32> {
        let deadline = Instant::now() + limit;
        loop {
            self.retry();
            let left: Vec<i32> = partitions
                .iter()
                .copied()
                .filter(|&p| self.outstanding(p) > 0)
                .collect();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            self.producer.poll(Duration::from_millis(10));
        }
    }

    /// Says (at most every 10 s) which partitions wait for their dead letters.
    pub fn warn_waiting(&self, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let Some(unsaid) = warned.check("", Instant::now()) else {
            return;
        };
        let last = self.producer.context().counts.last_error();
        tracing::warn!(
            ?partitions,
            last_error = %last.as_deref().unwrap_or("none yet"),
            unsaid,
            "dead letters not delivered yet; the snapshots of these partitions wait, retrying"
        );
    }

    pub fn counts(&self) -> &Deliveries {
        &self.producer.context().counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letters_partition_and_epoch_travel_together() {
        for (p, e) in [(0, 0), (7, 3), (i32::MAX, u32::MAX), (1, 1 << 20)] {
            assert_eq!(partition_epoch(whose(p, e)), (p, e));
        }
        assert_ne!(whose(1, 0), whose(1, 1));
    }
}
