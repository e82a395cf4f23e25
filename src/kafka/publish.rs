//! `storepulse replay`: the shared replay loop ([`crate::ingest::feed`]) with a Kafka
//! producer as its sink. Each accepted line becomes one JSON purchase event keyed by order
//! id, timestamped with its event time; each rejected line becomes a dead letter. At the
//! end every partition gets an `end_of_input` control message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _};
use storepulse_replay::wire::{EventId, WireEvent};
use storepulse_replay::{identify, Dictionary, PurchaseEvent, ReadStats, Rejected};

use super::{
    dead_letter_topic, partition_count, send, Connection, DeadLetter, Deliveries, EndOfInput,
    KafkaError, Producer, CONTROL_HEADER, END_OF_INPUT,
};
use crate::ingest::feed::{self, FeedConfig, FeedError, FeedOutcome, Sink};

#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub connection: Connection,
    pub topic: String,
    /// Partitions of the topic when this replay creates it.
    pub partitions: i32,
    /// `compression.type` of the producer (`lz4`, `zstd`, `none`, ...).
    pub compression: String,
    pub feed: FeedConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("Kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error("fingerprinting {0}: {1}")]
    Fingerprint(String, std::io::Error),
}

/// What a replay did, for its summary.
#[derive(Debug, Clone, Default)]
pub struct ReplayOutcome {
    pub feed: FeedOutcome,
    pub read: ReadStats,
    /// Events and dead letters handed to the producer.
    pub events_sent: u64,
    pub dead_letters_sent: u64,
    /// Acknowledged by the brokers, and failed for good, over all messages.
    pub delivered: u64,
    pub failed: u64,
    pub last_error: Option<String>,
    pub partitions: i32,
    pub source: u64,
    pub wall: Duration,
}

/// Publishes the input; returns when every message is delivered or has failed.
pub fn replay(config: &ReplayConfig, shutdown: &AtomicBool) -> Result<ReplayOutcome, ReplayError> {
    let dlq = dead_letter_topic(&config.topic);
    config
        .connection
        .ensure_topics(&[&config.topic], config.partitions)?;
    config.connection.ensure_topics(&[&dlq], 1)?;
    let source = identify(&config.feed.input)
        .map_err(|e| ReplayError::Fingerprint(config.feed.input.display().to_string(), e))?
        .source;
    let mut cc = config.connection.client_config();
    cc.set("enable.idempotence", "true")
        .set("compression.type", &config.compression)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "300000");
    for (k, v) in &config.connection.options {
        cc.set(k, v);
    }
    let producer: Producer = cc.create_with_context(Deliveries::default())?;
    let partitions = partition_count(producer.client(), &config.topic)?;

    let start = Instant::now();
    let mut sink = KafkaSink {
        producer: &producer,
        topic: &config.topic,
        dlq: &dlq,
        source,
        dict: Dictionary::new(),
        read: ReadStats::default(),
        events_sent: 0,
        dead_letters_sent: 0,
        error: None,
        value: Vec::with_capacity(512),
        key: String::with_capacity(24),
        reported: (0, 0),
        max_event_us: None,
    };
    let fed = feed::replay(&config.feed, &mut sink, shutdown);
    let mut reported = sink.reported;
    let (read, events_sent, dead_letters_sent, send_error) = (
        sink.read,
        sink.events_sent,
        sink.dead_letters_sent,
        sink.error.take(),
    );
    let fed = fed?;
    if let Some(e) = send_error {
        return Err(e.into());
    }
    // Everything before the end markers must be in place first: a marker makes the
    // partition's days final.
    let flush = || producer.flush(Duration::from_secs(330));
    flush()?;
    if !fed.stopped && !shutdown.load(Ordering::SeqCst) {
        if let Some(last) = fed.last_event_us {
            let value = serde_json::to_vec(&EndOfInput {
                last_event_time_us: last,
            })
            .expect("serializes");
            for p in 0..partitions {
                let headers = OwnedHeaders::new().insert(Header {
                    key: CONTROL_HEADER,
                    value: Some(END_OF_INPUT),
                });
                let r = BaseRecord::to(&config.topic)
                    .partition(p)
                    .payload(value.as_slice())
                    .headers(headers);
                send(&producer, r)?;
            }
            flush()?;
        }
    }
    let d = producer.context();
    report_deliveries(d, &mut reported);
    Ok(ReplayOutcome {
        feed: fed,
        read,
        events_sent,
        dead_letters_sent,
        delivered: d.delivered.load(Ordering::Relaxed),
        failed: d.failed.load(Ordering::Relaxed),
        last_error: d.last_error.lock().ok().and_then(|l| l.clone()),
        partitions,
        source,
        wall: start.elapsed(),
    })
}

struct KafkaSink<'a> {
    producer: &'a Producer,
    topic: &'a str,
    dlq: &'a str,
    source: u64,
    dict: Dictionary,
    read: ReadStats,
    events_sent: u64,
    dead_letters_sent: u64,
    error: Option<rdkafka::error::KafkaError>,
    value: Vec<u8>,
    key: String,
    /// Deliveries and failures already counted in the metrics.
    reported: (u64, u64),
    max_event_us: Option<i64>,
}

/// Brings the delivery counters up to date (per batch, not per message).
fn report_deliveries(d: &super::Deliveries, reported: &mut (u64, u64)) {
    let m = crate::metrics::get();
    let now = (
        d.delivered.load(Ordering::Relaxed),
        d.failed.load(Ordering::Relaxed),
    );
    m.messages_delivered
        .inc_by(now.0.saturating_sub(reported.0));
    m.delivery_failures.inc_by(now.1.saturating_sub(reported.1));
    *reported = now;
}

impl KafkaSink<'_> {
    fn event(&mut self, pass: u32, e: &PurchaseEvent) -> Result<(), rdkafka::error::KafkaError> {
        use std::fmt::Write;
        let id = EventId {
            source: self.source,
            pass,
            line: e.line,
        };
        self.value.clear();
        serde_json::to_writer(&mut self.value, &WireEvent::from_event(e, &self.dict, id))
            .expect("wire events serialize");
        self.key.clear();
        let _ = write!(self.key, "{}", e.order_id);
        let r = BaseRecord::to(self.topic)
            .key(self.key.as_bytes())
            .payload(self.value.as_slice())
            .timestamp(e.event_time_us.div_euclid(1000));
        send(self.producer, r)?;
        self.events_sent += 1;
        Ok(())
    }

    fn dead_letter(&mut self, r: &Rejected) -> Result<(), rdkafka::error::KafkaError> {
        let record = DeadLetter {
            line: Some(r.line),
            ..DeadLetter::new(r.reason.as_str(), "replay", &r.text)
        };
        let value = serde_json::to_vec(&record).expect("dead letter serializes");
        let rec = BaseRecord::to(self.dlq)
            .key(r.reason.as_str().as_bytes())
            .payload(value.as_slice());
        send(self.producer, rec)?;
        self.dead_letters_sent += 1;
        Ok(())
    }
}

impl Sink for KafkaSink<'_> {
    fn read(&mut self, rejects: Vec<Rejected>, stats: ReadStats, _lines_read: u64) -> bool {
        self.read.merge(&stats);
        let m = crate::metrics::get();
        m.read(&stats);
        let before = self.dead_letters_sent;
        let sent = rejects.iter().try_for_each(|r| self.dead_letter(r));
        m.dead_letters_published
            .inc_by(self.dead_letters_sent - before);
        if let Err(e) = sent {
            self.error = Some(e);
            return false;
        }
        true
    }

    fn events(&mut self, pass: u32, names: Vec<Box<str>>, events: Vec<PurchaseEvent>) -> bool {
        for n in &names {
            self.dict.intern(n);
        }
        let before = self.events_sent;
        let sent = events.iter().try_for_each(|e| self.event(pass, e));
        let m = crate::metrics::get();
        m.events_published.inc_by(self.events_sent - before);
        self.max_event_us = self
            .max_event_us
            .max(events.iter().map(|e| e.event_time_us).max());
        m.event_time(None, self.max_event_us);
        report_deliveries(self.producer.context(), &mut self.reported);
        if let Err(err) = sent {
            self.error = Some(err);
            return false;
        }
        true
    }
}
