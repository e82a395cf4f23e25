//! `storepulse process`: a consumer-group member that keeps one lane of state per assigned
//! partition in the one [`crate::pipeline`] driver (see [`super::lanes`]) and snapshots
//! each into its own folder with the offset it covers.
//!
//! Exactly-once comes from the snapshots, not from the group: see [`super::rebalance`] for
//! how partitions are taken and given up. Offsets are committed to the group only after a
//! snapshot is durable, as a progress report for lag monitoring.
//!
//! This thread polls: it copies the messages polled into batches for the driver's thread,
//! and its rebalance callbacks hand partitions over in band, waiting for the driver's
//! answer. Batches handed over before a rebalance are applied before it; a batch being
//! gathered when partitions change hands is dropped (its messages are read again from the
//! snapshots' offsets), so the driver never applies a message of an earlier assignment
//! after the change. The processor starts without its brokers (it waits for them, saying
//! so), keeps its state through an outage, and its dead letters are retried (on the
//! driver's thread) while the snapshots they hold back wait.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as ClientError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;

use super::batch::Batch;
use super::dead_letters::DeadLetters;
use super::lanes::{Input, Partitions};
pub use super::processor::{ProcessConfig, ProcessError, ProcessOutcome};
use super::rebalance::Ctx;
use super::{dead_letter_topic, Connection};
use crate::logs::Repeats;
use crate::pipeline::{Driver, Ended, Lanes};

/// Messages handed to the driver at once, at most.
const BATCH: usize = 1024;

type DriverThread = JoinHandle<Result<Ended<Partitions>, ProcessError>>;

/// Runs a processor until `shutdown` is set (or, with `stop_at_end`, until every owned
/// partition is at its end of input), then writes a final snapshot of every partition.
pub fn process(
    config: ProcessConfig,
    shutdown: Arc<AtomicBool>,
) -> Result<ProcessOutcome, ProcessError> {
    let dlq = dead_letter_topic(&config.topic);
    if !wait_for_brokers(&config.connection, &dlq, &shutdown)? {
        return Ok(ProcessOutcome::default());
    }
    let dead_letters = DeadLetters::new(&config.connection, dlq)?;
    let commits = super::lanes::Commits::default();
    let asks = Arc::new(super::lanes::Asks::default());
    let (tx, rx) = sync_channel(4);
    let pipeline = Partitions::new(config.clone(), dead_letters, commits.clone(), asks.clone());
    let interval = config.snapshot_interval;
    let driver: DriverThread = std::thread::Builder::new()
        .name("storepulse-driver".into())
        .spawn(move || Driver::new(pipeline, Lanes::new(), interval).run(rx))
        .expect("spawn the driver thread");
    let consumer = match consumer(config.clone(), tx.clone(), commits, asks) {
        Ok(c) => c,
        Err(e) => return Err(abort(&tx, driver, e)),
    };
    // A static assignment waits for its topic as the group does (services started
    // together start processors before the replayer creates it).
    if let Some(assignment) = &config.assignment {
        let taken = wait_for_topic(&consumer, &config.topic, &shutdown).and_then(|up| match up {
            true => consumer.context().take_static(&consumer, assignment),
            false => Ok(()),
        });
        if let Err(e) = taken {
            return Err(abort(&tx, driver, e));
        }
    }
    if let Err(e) = poll(&consumer, &shutdown) {
        return Err(abort(&tx, driver, e));
    }
    let ctx = consumer.context();
    let _ = tx.send(Input::Shutdown);
    let ended = driver.join().expect("the driver thread panicked")?;
    ctx.commit_published(&consumer);
    let Ended {
        pipeline,
        lanes,
        timings,
        waiting,
    } = ended;
    if !waiting.is_empty() {
        let last_error = pipeline.dead_letters().counts().last_error();
        tracing::warn!(
            partitions = ?waiting,
            last_error = %last_error.as_deref().unwrap_or("no answer"),
            "these partitions keep their previous snapshot: some of their dead letters were \
             not delivered, so a later run reads their messages again from there"
        );
    }
    // The partitions' folders are unlocked before the group is left.
    drop(lanes);
    let views = pipeline.views();
    let Partitions { outcome, view, .. } = pipeline;
    let mut outcome = outcome;
    outcome.not_final = waiting;
    outcome.longest_snapshot = timings.longest_pause;
    consumer.unsubscribe();
    leave_group(consumer, FINAL_CLOSE_WAIT);
    // Once the group is left (its partitions go on elsewhere at once): the view of the
    // latest set, which covers this process's last snapshots.
    outcome.views = view.finish()?;
    // The tables of the newest view (whoever wrote it), unless they hold it already.
    if let Some(lake) = &config.tables {
        let p = crate::lake::publish_last(lake, &views)?;
        tracing::info!(
            result = p.result,
            committed_now = p.committed.len(),
            "the result tables hold the last merged view"
        );
    }
    Ok(outcome)
}

/// Stops the driver after a failure: its own error, if it failed first, is the cause.
fn abort(tx: &SyncSender<Input>, driver: DriverThread, e: ProcessError) -> ProcessError {
    let _ = tx.send(Input::Abort);
    match driver.join().expect("the driver thread panicked") {
        Err(driver_error) => driver_error,
        Ok(_) => e,
    }
}

/// The group member (or, with `--assign`, the static consumer), its partitions taken.
fn consumer(
    config: ProcessConfig,
    tx: SyncSender<Input>,
    commits: super::lanes::Commits,
    asks: Arc<super::lanes::Asks>,
) -> Result<BaseConsumer<Ctx>, ProcessError> {
    let mut cc = config.connection.client_config();
    cc.set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Offsets come from the snapshots; one beyond the log's end is an error to report
        // (the topic was created again), never a silent restart from the beginning.
        .set("auto.offset.reset", "error")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("enable.partition.eof", "true")
        .set("statistics.interval.ms", "1000")
        // A topic the replayer creates after the processor started is found in seconds,
        // not at the default five-minute metadata refresh.
        .set("topic.metadata.refresh.interval.ms", "5000");
    if let Some(id) = &config.instance_id {
        cc.set("group.instance.id", id);
    }
    for (k, v) in &config.connection.options {
        cc.set(k, v);
    }
    let topic = config.topic.clone();
    let static_assignment = config.assignment.is_some();
    let consumer: BaseConsumer<Ctx> =
        cc.create_with_context(Ctx::new(config, tx, commits, asks))?;
    if !static_assignment {
        consumer.subscribe(&[&topic])?;
    }
    Ok(consumer)
}

/// Polls until `shutdown` is set or the driver ended, handing the driver what it polls.
fn poll(consumer: &BaseConsumer<Ctx>, shutdown: &AtomicBool) -> Result<(), ProcessError> {
    let ctx = consumer.context();
    let mut batch = Batch::default();
    let mut polled: BTreeMap<i32, i64> = BTreeMap::new();
    let mut errors = Repeats::new(Duration::from_secs(10));
    let mut alive = true;
    let mut generation = ctx.generation();
    while alive && !shutdown.load(Ordering::SeqCst) {
        // A callback's error stops the loop at once: what was polled is not sent.
        if let Some(e) = ctx.error() {
            return Err(e);
        }
        // The driver's asks between batches (at least every BATCH messages, and whenever
        // polling idles), not with a lock for every message.
        let wait = if batch.is_empty() {
            ctx.answer_asks(consumer)?;
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        let polled_now = consumer.poll(wait);
        // Partitions changed hands inside this poll: what was polled before is not the
        // driver's to apply (each partition is read again from its snapshot's offset).
        if ctx.generation() != generation {
            generation = ctx.generation();
            batch.clear();
        }
        match polled_now {
            Some(Ok(m)) => {
                polled.insert(m.partition(), m.offset() + 1);
                batch.push(&m);
                if batch.len() >= BATCH {
                    alive = ctx.send(Input::Messages(batch.take()));
                }
            }
            Some(Err(ClientError::PartitionEOF(p))) => {
                alive = flush(ctx, &mut batch) && ctx.send(Input::Eof(p));
            }
            Some(Err(ClientError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                return Err(out_of_range(consumer, &polled));
            }
            // The client reconnects by itself; say so once in a while, not per poll.
            Some(Err(e)) => {
                let error = e.to_string();
                if let Some(unsaid) = errors.check(&error, Instant::now()) {
                    tracing::warn!(%error, unsaid, "the client reports an error; retrying");
                }
            }
            None if batch.is_empty() => {
                alive = ctx.send(Input::Idle);
                ctx.commit_published(consumer);
            }
            None => {
                alive = flush(ctx, &mut batch);
                ctx.commit_published(consumer);
            }
        }
    }
    if alive {
        flush(ctx, &mut batch);
    }
    Ok(())
}

fn flush(ctx: &Ctx, batch: &mut Batch) -> bool {
    batch.is_empty() || ctx.send(Input::Messages(batch.take()))
}

/// How long the end of a run waits to leave the group.
const FINAL_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Leaves the group (its rebalance callback gives the partitions up), boundedly. With the
/// brokers away the client's close waits for them without end (rdkafka's `Drop` polls
/// until closed): past `limit` the client is left to the process's exit. Everything that
/// matters is in the snapshots already; the group sees the member's session expire.
fn leave_group(consumer: BaseConsumer<Ctx>, limit: Duration) {
    if consumer.close_queue().is_err() {
        return;
    }
    let deadline = Instant::now() + limit;
    while !consumer.closed() && Instant::now() < deadline {
        consumer.poll(Duration::from_millis(100));
    }
    if !consumer.closed() {
        tracing::warn!(
            seconds = limit.as_secs(),
            "the group could not be left in time (brokers away?); exiting without it"
        );
        std::mem::forget(consumer);
    }
}

/// Makes sure the dead-letter topic exists, retrying while the brokers cannot be reached
/// (saying so every 30 s). False when a shutdown came first.
fn wait_for_brokers(
    connection: &Connection,
    dlq: &str,
    shutdown: &AtomicBool,
) -> Result<bool, ProcessError> {
    let mut said = Repeats::new(Duration::from_secs(30));
    let mut waited = false;
    loop {
        match connection.ensure_topics(&[dlq], 1) {
            Ok(()) => {
                if waited {
                    tracing::info!(brokers = %connection.brokers, "the brokers answer");
                }
                return Ok(true);
            }
            Err(e) => {
                crate::metrics::health::get().broker_reachable(false);
                waited = true;
                // Said every 30 s whatever the error, with the failed tries in between.
                if let Some(unsaid) = said.check("", Instant::now()) {
                    tracing::warn!(
                        brokers = %connection.brokers,
                        error = %e,
                        unsaid,
                        "waiting for the brokers; retrying"
                    );
                }
            }
        }
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if shutdown.load(Ordering::SeqCst) {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits until `topic` exists on the brokers, saying so every 30 s; false when a shutdown
/// came first. /readyz answers "owns no partitions" meanwhile.
fn wait_for_topic(
    consumer: &BaseConsumer<Ctx>,
    topic: &str,
    shutdown: &AtomicBool,
) -> Result<bool, ProcessError> {
    let mut said = Repeats::new(Duration::from_secs(30));
    loop {
        match super::partition_count(consumer.client(), topic) {
            Ok(_) => return Ok(true),
            Err(e) => {
                if let Some(unsaid) = said.check("", Instant::now()) {
                    tracing::warn!(%topic, error = %e, unsaid, "waiting for the topic to be created");
                }
            }
        }
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            if shutdown.load(Ordering::SeqCst) {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The brokers refused an offset from a snapshot: name the partition whose log now ends
/// before it (before what it was assigned at, or what was polled of it since).
fn out_of_range(consumer: &BaseConsumer<Ctx>, polled: &BTreeMap<i32, i64>) -> ProcessError {
    let c = &consumer.context().config;
    for (p, assigned) in consumer.context().assigned() {
        let Some(covered) = assigned.max(polled.get(&p).copied()) else {
            continue;
        };
        if let Ok((_, end)) = consumer.fetch_watermarks(&c.topic, p, Duration::from_secs(5)) {
            if end < covered {
                return ProcessError::TopicChanged {
                    topic: c.topic.clone(),
                    partition: p,
                    covered,
                    end,
                    dir: c.snapshot_dir.clone(),
                };
            }
        }
    }
    ProcessError::Client(ClientError::MessageConsumption(
        RDKafkaErrorCode::OffsetOutOfRange,
    ))
}
