//! `storepulse replay`: the shared replay loop ([`storepulse_replay::feed`]) with a Kafka
//! producer as its sink. Each accepted line becomes one JSON purchase event keyed by order
//! id, timestamped with its event time; each rejected line becomes a dead letter.
//!
//! Progress travels in the data, and is only ever claimed for what the brokers
//! acknowledged ([`super::acks`]): an event-time replay sends every partition a `watermark`
//! (no earlier event follows) about once a second, and a replay that published every event
//! of every pass, all delivered, ends with an `end_of_input` on every partition. A partial
//! replay (`--limit`, a signal, a failed delivery) sends no end of input, so the days it
//! did not finish stay open for the next replay of the same file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};
use storepulse_replay::wire::{EventId, WireEvent};
use storepulse_replay::{identify, Dictionary, PurchaseEvent, ReadStats, Rejected};

use super::acks::Acks;
use super::{
    dead_letter_topic, partition_count, send, Connection, DeadLetter, EndOfInput, Input,
    KafkaError, Watermark, CONTROL_HEADER, END_OF_INPUT, INPUT, WATERMARK,
};
use crate::metrics::events::{Delivered, EventTime, LinesRead, PaceAchieved, PaceSet, Published};
use storepulse_replay::feed::{self, FeedConfig, FeedError, FeedOutcome, Order, Sink};

type Producer = ThreadedProducer<Acks>;

#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub connection: Connection,
    pub topic: String,
    /// Partitions of the topic when this replay creates it.
    pub partitions: i32,
    /// `compression.type` of the producer (`lz4`, `zstd`, `none`, ...).
    pub compression: String,
    pub feed: FeedConfig,
    /// Wall time between two watermarks of an event-time replay.
    pub watermark_interval: Duration,
    /// Messages handed to the producer and not yet acknowledged, at most.
    pub max_in_flight: usize,
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

/// Whether the replay ended with an `end_of_input` on every partition, and if not, why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum End {
    /// Every event of every pass delivered; the end of input sent and delivered.
    Sent,
    /// `--limit` ended the replay before the end of the input.
    Limited,
    /// A signal stopped the replay.
    Stopped,
    /// A message could not be delivered (or enqueued).
    Failed,
    /// The input had no event.
    #[default]
    NoEvents,
}

impl End {
    pub fn describe(self) -> &'static str {
        match self {
            End::Sent => "sent to every partition: the replayed days are final",
            End::Limited => "not sent (--limit): the days after the last event sent stay open",
            End::Stopped => "not sent (stopped): the days after the last event sent stay open",
            End::Failed => {
                "not sent (a delivery failed): replay the file again; what was delivered counts once"
            }
            End::NoEvents => "not sent (no event)",
        }
    }
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
    /// Watermark messages sent (one per partition each time), and the last one's time.
    pub watermarks: u64,
    pub last_watermark_us: Option<i64>,
    pub end: End,
}

/// Publishes the input; returns when every message is delivered or has failed.
pub fn replay(config: &ReplayConfig, shutdown: &AtomicBool) -> Result<ReplayOutcome, ReplayError> {
    let dlq = dead_letter_topic(&config.topic);
    config
        .connection
        .ensure_topics(&[&config.topic], config.partitions)?;
    config.connection.ensure_topics(&[&dlq], 1)?;
    let identity = identify(&config.feed.input)
        .map_err(|e| ReplayError::Fingerprint(config.feed.input.display().to_string(), e))?;
    let source = identity.source;
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
    let producer: Producer = cc.create_with_context(Acks::default())?;
    let partitions = partition_count(producer.client(), &config.topic)?;
    let control = Control {
        producer: &producer,
        topic: &config.topic,
        partitions,
    };

    // The processors learn of the input before its first event.
    control.send(
        INPUT,
        &Input {
            source: format!("{source:016x}"),
            lines: identity.lines,
        },
    )?;
    let start = Instant::now();
    let fed_all = AtomicBool::new(false);
    let mut watermarks = Watermarks::default();
    let (fed, sink) = std::thread::scope(|scope| {
        // An event-time replay's watermarks go out beside the feed, on a steady wall-time
        // cadence, whatever the pace of the events.
        let ticker = (config.feed.order == Order::EventTime).then(|| {
            scope.spawn(|| {
                let mut w = Watermarks::default();
                let mut last = Instant::now();
                while !fed_all.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    if last.elapsed() >= config.watermark_interval {
                        last = Instant::now();
                        if let Err(e) = w.advance(&control) {
                            return (w, Some(e));
                        }
                    }
                }
                (w, None)
            })
        });
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
            max_in_flight: config.max_in_flight,
            held: crate::logs::Repeats::new(Duration::from_secs(10)),
        };
        let fed = feed::replay(&config.feed, &mut sink, shutdown);
        fed_all.store(true, Ordering::SeqCst);
        if let Some((w, error)) = ticker.and_then(|t| t.join().ok()) {
            watermarks = w;
            sink.error = sink.error.take().or(error);
        }
        (fed, sink)
    });
    let mut reported = sink.reported;
    let (read, events_sent, dead_letters_sent, send_error) = (
        sink.read,
        sink.events_sent,
        sink.dead_letters_sent,
        sink.error,
    );
    let fed = fed?;
    // Everything must be delivered before the end of input is claimed: it makes the
    // partitions' days final.
    let flush = || producer.flush(Duration::from_secs(330));
    flush()?;
    let acks = producer.context();
    let end = if send_error.is_some() || acks.any_failed() {
        End::Failed
    } else if shutdown.load(Ordering::SeqCst) || fed.stopped {
        End::Stopped
    } else if fed.limited {
        End::Limited
    } else if fed.last_event_us.is_none() {
        End::NoEvents
    } else {
        End::Sent
    };
    match (end, fed.last_event_us) {
        (End::Sent, Some(last)) => {
            control.send(
                END_OF_INPUT,
                &EndOfInput {
                    last_event_time_us: last,
                },
            )?;
            flush()?;
        }
        // What was delivered of a partial event-time replay is final up to its last event.
        (End::Limited | End::Stopped, _) if config.feed.order == Order::EventTime => {
            watermarks.advance(&control)?;
            flush()?;
        }
        _ => {}
    }
    let end = if end == End::Sent && acks.any_failed() {
        End::Failed
    } else {
        end
    };
    let d = &acks.counts;
    report_deliveries(d, &mut reported);
    if let Some(e) = send_error {
        return Err(e.into());
    }
    Ok(ReplayOutcome {
        feed: fed,
        read,
        events_sent,
        dead_letters_sent,
        delivered: d.delivered.load(Ordering::Relaxed),
        failed: d.failed.load(Ordering::Relaxed),
        last_error: d.last_error(),
        partitions,
        source,
        wall: start.elapsed(),
        watermarks: watermarks.sent,
        last_watermark_us: watermarks.last_us,
        end,
    })
}

/// Control messages to every partition of the topic.
struct Control<'a> {
    producer: &'a Producer,
    topic: &'a str,
    partitions: i32,
}

impl Control<'_> {
    fn send(
        &self,
        kind: &str,
        value: &impl serde::Serialize,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let value = serde_json::to_vec(value).expect("control values serialize");
        for p in 0..self.partitions {
            let headers = OwnedHeaders::new().insert(Header {
                key: CONTROL_HEADER,
                value: Some(kind),
            });
            let r = BaseRecord::with_opaque_to(self.topic, self.producer.context().next())
                .partition(p)
                .payload(value.as_slice())
                .headers(headers);
            send(self.producer, r)?;
        }
        Ok(())
    }
}

/// The watermarks sent so far.
#[derive(Debug, Default)]
struct Watermarks {
    sent: u64,
    last_us: Option<i64>,
}

impl Watermarks {
    /// Sends the time up to which everything is delivered, when it moved (and nothing
    /// failed: after a failure no progress is claimed).
    fn advance(&mut self, control: &Control<'_>) -> Result<(), rdkafka::error::KafkaError> {
        let Some(to) = control.producer.context().delivered_time() else {
            return Ok(());
        };
        if self.last_us.is_some_and(|l| l >= to) {
            return Ok(());
        }
        control.send(WATERMARK, &Watermark { watermark_us: to })?;
        self.sent += 1;
        self.last_us = Some(to);
        EventTime {
            watermark_us: Some(to),
            max_event_us: None,
        }
        .emit();
        Ok(())
    }
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
    max_in_flight: usize,
    /// Says, once in a while, that the brokers hold the replay back.
    held: crate::logs::Repeats,
}

/// Brings the delivery counters up to date (per batch, not per message).
fn report_deliveries(d: &super::Deliveries, reported: &mut (u64, u64)) {
    let now = (
        d.delivered.load(Ordering::Relaxed),
        d.failed.load(Ordering::Relaxed),
    );
    Delivered {
        delivered: now.0.saturating_sub(reported.0),
        failed: now.1.saturating_sub(reported.1),
    }
    .emit();
    *reported = now;
}

impl KafkaSink<'_> {
    /// Waits while `max_in_flight` messages wait for the brokers' acknowledgement: the
    /// replay runs at most that far ahead of what was delivered, so its pace is the
    /// brokers' when they are slower than the one asked for (and a message that cannot be
    /// delivered fails at `message.timeout.ms`, which ends the wait).
    fn hold_back(&mut self) {
        let waiting = |p: &Producer| p.in_flight_count().max(0) as usize;
        if waiting(self.producer) < self.max_in_flight {
            return;
        }
        let started = Instant::now();
        while waiting(self.producer) >= self.max_in_flight {
            std::thread::sleep(Duration::from_millis(1));
            if started.elapsed() >= Duration::from_secs(1) {
                if let Some(unsaid) = self.held.check("", Instant::now()) {
                    tracing::warn!(
                        waiting = waiting(self.producer),
                        unsaid,
                        "the brokers acknowledge more slowly than the pace asked for: the \
                         replay waits for deliveries (--max-in-flight)"
                    );
                }
            }
        }
        report_deliveries(&self.producer.context().counts, &mut self.reported);
    }

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
        self.hold_back();
        let r = BaseRecord::with_opaque_to(self.topic, self.producer.context().next())
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
        self.hold_back();
        let rec = BaseRecord::with_opaque_to(self.dlq, self.producer.context().next())
            .key(r.reason.as_str().as_bytes())
            .payload(value.as_slice());
        send(self.producer, rec)?;
        self.dead_letters_sent += 1;
        Ok(())
    }
}

impl Sink for KafkaSink<'_> {
    fn pace_set(&mut self, speed: f64, rate: f64) {
        PaceSet { speed, rate }.emit();
    }

    fn pace_achieved(&mut self, rate: f64, speed: Option<f64>) {
        PaceAchieved { rate, speed }.emit();
    }

    fn read(&mut self, rejects: Vec<Rejected>, stats: ReadStats, _lines_read: u64) -> bool {
        self.read.merge(&stats);
        LinesRead(&stats).emit();
        let before = self.dead_letters_sent;
        let sent = rejects.iter().try_for_each(|r| self.dead_letter(r));
        Published {
            events: 0,
            dead_letters: self.dead_letters_sent - before,
        }
        .emit();
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
        Published {
            events: self.events_sent - before,
            dead_letters: 0,
        }
        .emit();
        self.max_event_us = self
            .max_event_us
            .max(events.iter().map(|e| e.event_time_us).max());
        if let Some(t) = self.max_event_us {
            self.producer.context().mark(t);
        }
        EventTime {
            watermark_us: None,
            max_event_us: self.max_event_us,
        }
        .emit();
        report_deliveries(&self.producer.context().counts, &mut self.reported);
        if let Err(err) = sent {
            self.error = Some(err);
            return false;
        }
        true
    }
}
