//! The Kafka path: `replay` publishes purchase events to a topic ([`publish`]), `process`
//! consumes them in a consumer group with one aggregate core per partition
//! ([`consume`], [`partition`]). This module holds what both sides share: client
//! settings, topic creation, the dead-letter record and the in-band control message.
//!
//! Messages are keyed by order id, so every line of an order lands in one partition:
//! that is what makes the partitions' distinct order counts add up (see
//! `aggregate::CoreState::merge`).

mod acks;
mod batch;
pub mod consume;
mod dead_letters;
mod lanes;
mod observe;
pub mod partition;
mod processor;
pub mod publish;
mod rebalance;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

/// Header that marks a control message (its value names the control).
pub const CONTROL_HEADER: &str = "storepulse-control";
/// Control value: the replayer published every event of every pass, all delivered.
pub const END_OF_INPUT: &str = "end_of_input";
/// Control value: no event earlier than the message's time follows on this partition.
pub const WATERMARK: &str = "watermark";
/// Control value: the input whose events follow, with its line count.
pub const INPUT: &str = "input";

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.rejected")
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("Kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic {0} was not found on the brokers")]
    NoTopic(String),
}

/// Connection settings common to producers and consumers.
#[derive(Debug, Clone)]
pub struct Connection {
    pub brokers: String,
    /// Extra librdkafka properties (`--kafka-option key=value`), applied last.
    pub options: Vec<(String, String)>,
}

impl Connection {
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "storepulse")
            // Reconnect quickly but back off while a broker stays down.
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "5000");
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c.set_log_level(client_log_level());
        c
    }

    /// Creates each topic with `partitions` partitions unless it exists. Event times are
    /// in the past (2020), so the topics keep records by size, not time
    /// (`retention.ms=-1`): time-based retention would delete a replay as soon as it lands.
    pub fn ensure_topics(&self, topics: &[&str], partitions: i32) -> Result<(), KafkaError> {
        let admin: AdminClient<Logged> = self.client_config().create_with_context(Logged)?;
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| {
                NewTopic::new(t, partitions, TopicReplication::Fixed(1)).set("retention.ms", "-1")
            })
            .collect();
        let opts = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(30)))
            .request_timeout(Some(Duration::from_secs(10)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let results = rt.block_on(admin.create_topics(&new, &opts))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(KafkaError::CreateTopic { topic, code }),
            }
        }
        Ok(())
    }
}

/// A client context that only passes the client's log lines on (see [`client_log`]).
pub struct Logged;

impl rdkafka::ClientContext for Logged {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        client_log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        client_error(error, reason);
    }
}

/// librdkafka's log line as an event of target `rdkafka` (`RUST_LOG=rdkafka=debug`), its
/// facility (`FAIL`, `CGRP`, ...) a field. Every client context of ours says them here.
pub fn client_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    use RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error => {
            tracing::error!(target: "rdkafka", %facility, "librdkafka: {message}")
        }
        Warning => tracing::warn!(target: "rdkafka", %facility, "librdkafka: {message}"),
        Notice | Info => tracing::info!(target: "rdkafka", %facility, "librdkafka: {message}"),
        Debug => tracing::debug!(target: "rdkafka", %facility, "librdkafka: {message}"),
    }
}

/// A client's global error (`1/1 brokers are down`), at debug level: what follows from it
/// is said where it matters, rate-limited (a consumer's poll, the wait for the brokers, a
/// producer's failed deliveries), and the connection failures behind it are librdkafka's
/// own log lines. The client's default would log every one as an error.
pub fn client_error(error: rdkafka::error::KafkaError, reason: &str) {
    tracing::debug!(target: "rdkafka", %error, "librdkafka: {reason}");
}

/// The most detailed level the log filter lets through for `rdkafka`: librdkafka formats
/// nothing beyond it (its debug lines also need `--kafka-option debug=...`).
fn client_log_level() -> RDKafkaLogLevel {
    use tracing::Level;
    if tracing::enabled!(target: "rdkafka", Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "rdkafka", Level::INFO) {
        RDKafkaLogLevel::Info
    } else if tracing::enabled!(target: "rdkafka", Level::WARN) {
        RDKafkaLogLevel::Warning
    } else {
        RDKafkaLogLevel::Error
    }
}

/// The number of partitions of `topic`, as the brokers report it.
pub fn partition_count<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<i32, KafkaError> {
    let md = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|&n| n > 0)
        .ok_or_else(|| KafkaError::NoTopic(topic.to_string()))
}

/// A dead-letter record, the value of a message on `<topic>.rejected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The reject reason (`malformed_row`, `late_event`, `invalid_message`, ...).
    pub reason: String,
    /// Who rejected it: `replay` (a CSV line) or `process` (a message).
    pub stage: String,
    /// The CSV line number, for lines rejected by the replayer or late events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// Where the message was, for messages rejected by a processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// What went wrong beyond the reason, when there is more to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The original line or message (invalid UTF-8 replaced by U+FFFD), at most
    /// [`ORIGINAL_LIMIT`] bytes of it.
    pub original: String,
    /// The original's full length in bytes, when `original` holds only its start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_bytes: Option<u64>,
    /// `original` is the start of a longer line or message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Bytes of the original a dead letter carries at most: a rejected line or message of any
/// length then fits in a message (librdkafka's default limit is 1,000,000 bytes, and JSON
/// escaping makes a byte at most six).
pub const ORIGINAL_LIMIT: usize = 64 * 1024;

impl DeadLetter {
    /// A dead letter of `reason` from `stage` carrying `original`: its lossy UTF-8 text
    /// when that fits in [`ORIGINAL_LIMIT`] bytes, else the text's start cut at a character
    /// boundary, with the full length in bytes and `truncated`. Where it was (line,
    /// partition, offset) and `detail` are left for the caller.
    pub fn new(reason: &str, stage: &str, original: &[u8]) -> DeadLetter {
        // Text never has fewer bytes than its source (an invalid sequence of up to three
        // becomes U+FFFD, three bytes), so whatever starts past the limit in the source is
        // cut anyway; three more bytes complete a character that starts before it.
        let head = &original[..original.len().min(ORIGINAL_LIMIT + 3)];
        let mut text = String::from_utf8_lossy(head).into_owned();
        let truncated = text.len() > ORIGINAL_LIMIT;
        if truncated {
            text.truncate(text.floor_char_boundary(ORIGINAL_LIMIT));
        }
        DeadLetter {
            reason: reason.to_string(),
            stage: stage.to_string(),
            line: None,
            partition: None,
            offset: None,
            detail: None,
            original: text,
            original_bytes: truncated.then_some(original.len() as u64),
            truncated,
        }
    }
}

/// The value of an `end_of_input` control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndOfInput {
    /// The highest event time the replayer published, over all partitions: every day up to
    /// this one's is complete.
    pub last_event_time_us: i64,
}

/// The value of an `input` control message, sent to every partition before the events of
/// an input: a processor counts only events of inputs it was told of, and only lines the
/// input has, so a forged or broken event id cannot make it keep state for lines that do
/// not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// The input's identity as in event ids (16 hex digits).
    pub source: String,
    /// Its highest line number (the header is line 1).
    pub lines: u64,
}

/// The value of a `watermark` control message: every event of the replay earlier than
/// `watermark_us` has been delivered, to whichever partition it belongs, so none can
/// follow. The replayer sends it to every partition, so a partition without events moves
/// too, and only for an event-time replay (a file-order replay knows nothing of the
/// times to come).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub watermark_us: i64,
}

/// Counts a producer's deliveries: what the brokers acknowledged and what failed for good
/// (after librdkafka's own retries).
#[derive(Debug, Default)]
pub struct Deliveries {
    pub delivered: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl Deliveries {
    /// Counts one delivery report.
    pub fn note(&self, result: &rdkafka::message::DeliveryResult<'_>) {
        use std::sync::atomic::Ordering::Relaxed;
        match result {
            Ok(_) => self.delivered.fetch_add(1, Relaxed),
            Err((e, _)) => {
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
                self.failed.fetch_add(1, Relaxed)
            }
        };
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }
}

impl rdkafka::ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        client_log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        client_error(error, reason);
    }
}

impl rdkafka::producer::ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        self.note(result);
    }
}

pub type Producer = rdkafka::producer::ThreadedProducer<Deliveries>;

/// Enqueues a record, waiting while librdkafka's queue is full (back-pressure from a slow
/// or absent broker); fails only on errors that waiting cannot cure.
pub fn send<C: rdkafka::producer::ProducerContext>(
    producer: &rdkafka::producer::ThreadedProducer<C>,
    mut record: rdkafka::producer::BaseRecord<'_, [u8], [u8], C::DeliveryOpaque>,
) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::error::KafkaError as E;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((E::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
