//! The embedded pipeline: a file replayed through an in-process channel into the core,
//! no broker. The calling thread reads (and, by default, orders and paces) events; a
//! second thread runs the [`Driver`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use storepulse_replay::{
    sort_by_event_time, CsvReader, Dictionary, Pace, Pacer, PurchaseEvent, ReadError, ReaderConfig,
};

use super::{Driver, DriverConfig, DriverError, DriverOutcome, LineLookup, Message};
use crate::aggregate::{Core, CoreConfig};
use crate::snapshot::{RejectedSink, SnapshotError, SnapshotStore, WindowConfig};

/// In which order events are replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Read the whole file, then replay by event time (ties in file order).
    EventTime,
    /// Replay in file order as the file is read.
    File,
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Order::EventTime => "event_time",
            Order::File => "file",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub input: PathBuf,
    pub snapshot_dir: PathBuf,
    pub snapshot_interval: Duration,
    pub keep_snapshots: usize,
    pub pace: Pace,
    pub order: Order,
    pub reader: ReaderConfig,
    pub core: CoreConfig,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the input {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: ReadError },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot write rejected lines: {0}")]
    Rejected(std::io::Error),
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// Events per message into the core.
const BATCH: usize = 64 * 1024;

/// Runs the whole embedded pipeline; returns when the final snapshot is published.
pub fn run(config: &RunConfig, shutdown: Arc<AtomicBool>) -> Result<DriverOutcome, RunError> {
    let open = || {
        File::open(&config.input).map_err(|source| RunError::Open {
            path: config.input.clone(),
            source,
        })
    };
    let file = open()?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let lookup_file = open()?;
    let store = SnapshotStore::open(&config.snapshot_dir, config.keep_snapshots)?;
    let sink = RejectedSink::create(&config.snapshot_dir).map_err(RunError::Rejected)?;
    let driver = Driver::new(
        Core::new(config.core),
        store,
        sink,
        line_lookup(lookup_file),
        DriverConfig {
            snapshot_interval: config.snapshot_interval,
            window: WindowConfig {
                max_out_of_orderness_us: config.core.max_out_of_orderness_us,
                allowed_lateness_us: config.core.allowed_lateness_us,
                min_event_time: crate::snapshot::manifest::rfc3339(config.reader.min_event_time_us),
            },
            source: config.input.display().to_string(),
            order: config.order.as_str().to_string(),
        },
    );
    let (tx, rx) = sync_channel(4);
    let core_thread = std::thread::Builder::new()
        .name("storepulse-core".into())
        .spawn(move || driver.run(rx))
        .expect("spawn core thread");

    let bar = progress_bar(config.progress, total_bytes);
    let feed = Feed {
        size_hint: total_bytes as usize,
        tx: &tx,
        shutdown: &shutdown,
        bar: &bar,
    };
    let read_result = match CsvReader::new(file, &config.reader) {
        Ok(reader) => feed.replay(reader, config),
        Err(source) => Err(RunError::Read {
            path: config.input.clone(),
            source,
        }),
    };
    bar.finish_and_clear();
    let last = match (&read_result, shutdown.load(Ordering::SeqCst)) {
        (Ok(()), false) => Message::EndOfInput,
        _ => Message::Shutdown,
    };
    // The core thread may already have stopped with an error; it reports it below.
    let _ = tx.send(last);
    drop(tx);
    let outcome = core_thread.join().expect("core thread panicked");
    read_result?;
    Ok(outcome?)
}

struct Feed<'a> {
    size_hint: usize,
    tx: &'a SyncSender<Message>,
    shutdown: &'a AtomicBool,
    bar: &'a ProgressBar,
}

impl Feed<'_> {
    fn stopped(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    fn send(&self, m: Message) -> bool {
        self.tx.send(m).is_ok()
    }

    fn replay(
        &self,
        mut reader: CsvReader<impl std::io::Read>,
        config: &RunConfig,
    ) -> Result<(), RunError> {
        let mut pacer = Pacer::new(config.pace);
        let start = Instant::now();
        let mut names_sent = 0;
        // Reserved from the file size (no line is shorter than ~60 bytes): pages never
        // touched stay virtual, and the buffer never doubles while full.
        let mut held: Vec<PurchaseEvent> = Vec::new();
        if config.order == Order::EventTime {
            held.reserve(self.size_hint / 60);
        }
        let by_time = config.order == Order::EventTime;
        loop {
            // In event-time order the reader appends straight to `held`.
            let next = if by_time {
                reader.next_block_into(&mut held)
            } else {
                reader.next_block()
            };
            let block = match next {
                Ok(Some(block)) => block,
                Ok(None) => break,
                Err(source) => {
                    return Err(RunError::Read {
                        path: config.input.clone(),
                        source,
                    })
                }
            };
            self.bar.set_position(block.bytes_through);
            let read = Message::Read {
                rejects: block.rejects,
                stats: block.stats,
                lines_read: block.lines_through,
            };
            if self.stopped() || !self.send(read) {
                return Ok(());
            }
            if !by_time {
                let names = new_names(reader.dictionary(), &mut names_sent);
                if !self.emit(names, block.events, &mut pacer, start) {
                    return Ok(());
                }
            }
        }
        if by_time {
            self.bar.set_message("ordering by event time");
            sort_by_event_time(&mut held);
            let names = new_names(reader.dictionary(), &mut names_sent);
            self.bar.set_length(held.len() as u64);
            self.bar.set_position(0);
            self.bar.set_message("replaying by event time");
            self.emit(names, held, &mut pacer, start);
        }
        Ok(())
    }

    /// Sends events in batches, waiting for each one's due time. False when stopped.
    fn emit(
        &self,
        mut names: Vec<Box<str>>,
        events: Vec<PurchaseEvent>,
        pacer: &mut Pacer,
        start: Instant,
    ) -> bool {
        let mut batch = Vec::with_capacity(BATCH.min(events.len()));
        let flush = |batch: &mut Vec<PurchaseEvent>, names: &mut Vec<Box<str>>| {
            let events = std::mem::take(batch);
            self.bar.inc(events.len() as u64);
            self.send(Message::Events {
                names: std::mem::take(names),
                events,
            })
        };
        for e in events {
            let due = pacer.due(e.event_time_us);
            // The clock is read only when pacing (not in --max mode).
            if let Some(wait) = due.and_then(|d| Pacer::wait(d, start.elapsed())) {
                if !batch.is_empty() && !flush(&mut batch, &mut names) {
                    return false;
                }
                if !self.sleep(wait) {
                    return false;
                }
            }
            batch.push(e);
            if batch.len() >= BATCH && (!flush(&mut batch, &mut names) || self.stopped()) {
                return false;
            }
        }
        (batch.is_empty() && names.is_empty()) || flush(&mut batch, &mut names)
    }

    /// Sleeps in short slices so that a shutdown is seen promptly. False when stopped.
    fn sleep(&self, total: Duration) -> bool {
        let until = Instant::now() + total;
        loop {
            if self.stopped() {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }
}

fn new_names(dict: &Dictionary, sent: &mut usize) -> Vec<Box<str>> {
    let names = (*sent..dict.len())
        .map(|i| dict.name(storepulse_replay::Sym(i as u32)).into())
        .collect();
    *sent = dict.len();
    names
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

fn progress_bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:24} [{bar:40}] {percent:>3}% {elapsed_precise}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message("reading");
    bar
}
