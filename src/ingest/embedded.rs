//! The embedded pipeline: a file replayed through an in-process channel into the core,
//! no broker. The calling thread reads (and, by default, orders and paces) events; a
//! second thread runs the [`Driver`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use storepulse_replay::{Pace, PurchaseEvent, ReadStats, ReaderConfig, Rejected};

use super::{Driver, DriverConfig, DriverError, DriverOutcome, LineLookup, Message};
use crate::aggregate::{Core, CoreConfig};
use crate::snapshot::{RejectedSink, SnapshotError, SnapshotStore, WindowConfig};
use storepulse_replay::feed::{self, FeedConfig, FeedError, Sink, Skip};

pub use storepulse_replay::feed::Order;

use crate::metrics::events::{PaceAchieved, PaceSet};

mod resume;

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub input: PathBuf,
    pub snapshot_dir: PathBuf,
    pub snapshot_interval: Duration,
    pub keep_snapshots: usize,
    /// Incremental snapshots between two whole ones at most (`--incremental-snapshots`;
    /// 0: every snapshot whole). The run's last snapshot is whole.
    pub incremental: u32,
    pub pace: Pace,
    pub order: Order,
    pub reader: ReaderConfig,
    pub core: CoreConfig,
    pub progress: bool,
    /// Continue from the latest complete snapshot in `snapshot_dir` (`--resume`).
    pub resume: bool,
    /// Bytes of events held for the event-time sort (`--memory-limit`).
    pub memory_limit: usize,
    /// A bucket prefix every snapshot is published to after `snapshot_dir`.
    pub remote: Option<crate::snapshot::Bucket>,
    /// Publish the result tables as Delta Lake tables beside the snapshots, kept by this
    /// policy.
    pub tables: Option<crate::lake::Policy>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the input {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot write rejected lines: {0}")]
    Rejected(std::io::Error),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("cannot resume: {0}")]
    Resume(String),
    #[error("the result tables were not published: {0}")]
    Tables(#[from] crate::lake::LakeError),
}

/// Runs the whole embedded pipeline; returns when the final snapshot is published.
pub fn run(config: &RunConfig, shutdown: Arc<AtomicBool>) -> Result<DriverOutcome, RunError> {
    let lookup_file = File::open(&config.input).map_err(|source| RunError::Open {
        path: config.input.clone(),
        source,
    })?;
    // The folder's lock is held before the snapshot to resume from is chosen.
    let mut store = SnapshotStore::open(&config.snapshot_dir, config.keep_snapshots)?;
    if let Some(bucket) = &config.remote {
        // One set per prefix: never beside a topic's partitions.
        crate::snapshot::remote::check_run_prefix(bucket)?;
        // Claimed before the snapshot to resume from is read: a writer of this prefix
        // started earlier (paused, cut off) is refused from now on.
        let publisher = crate::snapshot::Publisher::claim(bucket.clone(), config.keep_snapshots)?;
        store = store.with_remote(publisher)?;
    }
    let mut store = store.with_deltas(config.incremental);
    let window = WindowConfig::of(
        &config.core,
        crate::snapshot::manifest::rfc3339(config.reader.min_event_time_us),
    );
    let (core, sink, skip, done) = if config.resume {
        let r = resume::point(config, &window)?;
        // The bucket's rejected lines go on from the pieces the snapshot covers (a fresh
        // run starts its own).
        store.continue_rejected(r.rejected_pieces);
        (r.core, r.sink, r.skip, Some(r.read))
    } else {
        let sink = RejectedSink::create(&config.snapshot_dir).map_err(RunError::Rejected)?;
        (Core::new(config.core), sink, Skip::default(), None)
    };
    let mut driver = Driver::new(
        core,
        store,
        sink,
        line_lookup(lookup_file),
        DriverConfig {
            snapshot_interval: config.snapshot_interval,
            window,
            source: config.input.display().to_string(),
            order: config.order.as_str().to_string(),
        },
    );
    if let Some(read) = done {
        driver = driver.resumed(read, skip.lines, skip.events);
    }
    let follower = match config.tables {
        Some(policy) => {
            let at = match &config.remote {
                Some(bucket) => crate::snapshot::Location::Bucket(bucket.clone()),
                None => crate::snapshot::Location::Dir(config.snapshot_dir.clone()),
            };
            let (follower, notify) = crate::lake::Follower::start(at, policy)?;
            driver = driver.with_tables(notify);
            Some(follower)
        }
        None => None,
    };
    let (tx, rx) = sync_channel(2);
    let core_thread = std::thread::Builder::new()
        .name("storepulse-core".into())
        .spawn(move || driver.run(rx))
        .expect("spawn core thread");

    let feed_config = FeedConfig {
        input: config.input.clone(),
        pace: config.pace,
        order: config.order,
        reader: config.reader.clone(),
        passes: 1,
        limit: None,
        progress: config.progress,
        skip,
        memory_limit: config.memory_limit,
    };
    let read_result = feed::replay(&feed_config, &mut ChannelSink(&tx), &shutdown);
    let last = match (&read_result, shutdown.load(Ordering::SeqCst)) {
        (Ok(o), false) if !o.stopped => Message::EndOfInput,
        _ => Message::Shutdown,
    };
    // The core thread may already have stopped with an error; it reports it below.
    let _ = tx.send(last);
    drop(tx);
    let outcome = core_thread.join().expect("core thread panicked");
    if read_result.is_err() || outcome.is_err() {
        // The run fails: its last publish is still waited for (never left running while the
        // process exits), and its own error said beside the run's.
        if let Some(Err(e)) = follower.map(crate::lake::Follower::finish) {
            tracing::warn!(error = %e, "the result tables were not published");
        }
        read_result?;
        return Ok(outcome?);
    }
    let outcome = outcome?;
    if let Some(follower) = follower {
        let published = follower.finish()?;
        // The last publish may find every table holding the snapshot already (the thread
        // beside the stream committed it): what counts is the result they hold.
        tracing::info!(
            result = published.result,
            committed_now = published.committed.len(),
            "the result tables hold the last snapshot"
        );
    }
    Ok(outcome)
}

/// The in-process channel into the core's thread.
struct ChannelSink<'a>(&'a SyncSender<Message>);

impl Sink for ChannelSink<'_> {
    fn pace_set(&mut self, speed: f64, rate: f64) {
        PaceSet { speed, rate }.emit();
    }

    fn pace_achieved(&mut self, rate: f64, speed: Option<f64>) {
        PaceAchieved { rate, speed }.emit();
    }

    fn read(&mut self, rejects: Vec<Rejected>, stats: ReadStats, lines_read: u64) -> bool {
        let m = Message::Read {
            rejects,
            stats,
            lines_read,
        };
        self.0.send(m).is_ok()
    }

    fn events(&mut self, _pass: u32, names: Vec<Box<str>>, events: Vec<PurchaseEvent>) -> bool {
        self.0.send(Message::Events { names, events }).is_ok()
    }
}

/// Reads an event's original line back from the file by its offset.
fn line_lookup(file: File) -> LineLookup {
    Box::new(move |e: &PurchaseEvent| {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        let mut at = e.offset;
        while let Ok(n) = file.read_at(&mut buf, at) {
            if n == 0 {
                break;
            }
            match memchr::memchr(b'\n', &buf[..n]) {
                Some(p) => {
                    out.extend_from_slice(&buf[..p]);
                    break;
                }
                None => out.extend_from_slice(&buf[..n]),
            }
            at += n as u64;
        }
        if out.last() == Some(&b'\r') {
            out.pop();
        }
        out
    })
}
