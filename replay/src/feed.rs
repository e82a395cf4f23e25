//! The replay loop shared by `run` and `replay`: read a file, order its events (by event
//! time or as read), pace them and hand them in batches to a [`Sink`] (the in-process
//! channel into the core, or a Kafka producer). `--loop` passes shift event times forward.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use storepulse_aggregate::MICROS_PER_DAY;

use crate::spill::Sorter;
use crate::{
    CsvReader, Dictionary, Pace, Pacer, PurchaseEvent, ReadError, ReadStats, ReaderConfig, Rejected,
};

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

/// Where the replay loop delivers. Each method returns false to stop the replay.
pub trait Sink {
    /// Lines read: their rejections and counts; `lines_read` counts the header too.
    fn read(&mut self, rejects: Vec<Rejected>, stats: ReadStats, lines_read: u64) -> bool;
    /// Events in replay order, from pass `pass`, with the names first used by them (in
    /// the order the reader's dictionary gave them ids).
    fn events(&mut self, pass: u32, names: Vec<Box<str>>, events: Vec<PurchaseEvent>) -> bool;
    /// The pace the replay aims at, once at the start: `speed` times real time and `rate`
    /// events per second (0 for the one that does not apply, both for `--max`).
    fn pace_set(&mut self, _speed: f64, _rate: f64) {}
    /// The pace achieved so far: events per second and, once two event times are known,
    /// event-time seconds per wall second.
    fn pace_achieved(&mut self, _rate: f64, _speed: Option<f64>) {}
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot open the input {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: ReadError },
}

#[derive(Debug, Clone)]
pub struct FeedConfig {
    pub input: PathBuf,
    pub pace: Pace,
    pub order: Order,
    pub reader: ReaderConfig,
    /// Replay the file this many times (at least 1); each pass shifts event times forward
    /// by the file's span rounded up to whole days, so daily patterns stay aligned.
    pub passes: u32,
    /// Stop after this many events in all (`--limit`).
    pub limit: Option<u64>,
    pub progress: bool,
    /// What an earlier run already delivered (`run --resume`).
    pub skip: Skip,
    /// Bytes of events an event-time replay holds in memory; beyond it, sorted runs are
    /// spilled to temporary files and merged (`--memory-limit`).
    pub memory_limit: usize,
}

/// The default `--memory-limit`: the real log's 2.6 M events (about 240 MiB) stay in
/// memory; a file ten times larger is sorted in runs.
pub const DEFAULT_MEMORY_LIMIT: usize = 256 << 20;

/// The part of the replay a resumed run skips: the read reports of the first `lines`
/// lines and the first `events` events in replay order. Both sequences are deterministic
/// for one file and one reader configuration, so the rest is delivered exactly once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skip {
    pub lines: u64,
    pub events: u64,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct FeedOutcome {
    pub events: u64,
    /// Event-time range replayed (µs), shifts included.
    pub first_event_us: Option<i64>,
    pub last_event_us: Option<i64>,
    /// Wall time from the start of the pacing schedule to the last event handed over
    /// (reading and sorting before an event-time replay are not included).
    pub emit_wall: Duration,
    pub stopped: bool,
    /// The replay ended at `--limit`, before the end of the input.
    pub limited: bool,
}

/// Events per batch handed to the sink.
const BATCH: usize = 16 * 1024;

/// Replays `config.input` into `sink` until the end, the limit, a stop request or the
/// sink refusing more.
pub fn replay(
    config: &FeedConfig,
    sink: &mut dyn Sink,
    shutdown: &AtomicBool,
) -> Result<FeedOutcome, FeedError> {
    let open = |path: &Path| {
        File::open(path).map_err(|source| FeedError::Open {
            path: path.to_path_buf(),
            source,
        })
    };
    let (speed, rate) = match config.pace {
        Pace::Max => (0.0, 0.0),
        Pace::Speed(x) => (x, 0.0),
        Pace::Rate(n) => (0.0, n),
    };
    sink.pace_set(speed, rate);
    let file = open(&config.input)?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(config.progress, total_bytes);
    let mut feed = Feed {
        sink,
        shutdown,
        bar: &bar,
        pacer: Pacer::new(config.pace),
        start: Instant::now(),
        outcome: FeedOutcome::default(),
        limit: config.limit.unwrap_or(u64::MAX),
        limit_reached: false,
        skip: config.skip,
        memory_limit: config.memory_limit,
    };
    let read_err = |source| FeedError::Read {
        path: config.input.clone(),
        source,
    };
    let result = match config.order {
        Order::EventTime => {
            let reader = CsvReader::new(file, &config.reader).map_err(read_err)?;
            feed.by_event_time(reader, total_bytes as usize, config.passes)
        }
        Order::File => {
            let mut reader = Some(CsvReader::new(file, &config.reader).map_err(read_err)?);
            let mut span = (i64::MAX, i64::MIN);
            let mut done = Ok(true);
            for pass in 0..config.passes.max(1) {
                let r = match reader.take() {
                    Some(r) => r,
                    None => {
                        CsvReader::new(open(&config.input)?, &config.reader).map_err(read_err)?
                    }
                };
                bar.set_position(0);
                let shift = pass_shift(span, pass);
                done = feed.in_file_order(r, pass, shift, &mut span);
                if !matches!(done, Ok(true)) {
                    break;
                }
            }
            done
        }
    };
    bar.finish_and_clear();
    let go_on = result.map_err(read_err)?;
    // Reaching `--limit` is a normal end; anything else that ended early is a stop.
    feed.outcome.stopped = (!go_on && !feed.limit_reached) || feed.stopped();
    feed.outcome.limited = feed.limit_reached;
    Ok(feed.outcome)
}

/// How far pass `pass` moves event times: the span of the file's events rounded up to
/// whole days, times the pass number.
fn pass_shift((min, max): (i64, i64), pass: u32) -> i64 {
    if pass == 0 || min > max {
        return 0;
    }
    let days = (max - min) / MICROS_PER_DAY + 1;
    days * MICROS_PER_DAY * i64::from(pass)
}

struct Feed<'a> {
    sink: &'a mut dyn Sink,
    shutdown: &'a AtomicBool,
    bar: &'a ProgressBar,
    pacer: Pacer,
    start: Instant,
    outcome: FeedOutcome,
    limit: u64,
    limit_reached: bool,
    skip: Skip,
    memory_limit: usize,
}

impl Feed<'_> {
    fn stopped(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// False when the replay should end (stopped, limit reached or the sink refused).
    fn by_event_time(
        &mut self,
        mut reader: CsvReader<File>,
        size_hint: usize,
        passes: u32,
    ) -> Result<bool, ReadError> {
        let started = Instant::now();
        let block_events = reader.block_bytes() / 60 + 1;
        let mut sorter = Sorter::new(self.memory_limit, size_hint, block_events);
        while let Some(block) = reader.next_block_into(&mut sorter.held)? {
            self.bar.set_position(block.bytes_through);
            if self.stopped() {
                return Ok(false);
            }
            let seen = block.lines_through <= self.skip.lines;
            if !seen
                && !self
                    .sink
                    .read(block.rejects, block.stats, block.lines_through)
            {
                return Ok(false);
            }
            sorter.block_added()?;
        }
        self.bar.set_message("ordering by event time");
        sorter.one_pass = passes <= 1;
        sorter.finish()?;
        if sorter.runs() > 0 {
            tracing::info!(
                events = sorter.len(),
                runs = sorter.runs(),
                seconds = format_args!("{:.1}", started.elapsed().as_secs_f64()),
                "read and sorted by event time in runs on disk (--memory-limit)"
            );
        }
        let span = sorter.span();
        let mut names = new_names(reader.dictionary(), &mut 0);
        self.bar.set_length(sorter.len() * u64::from(passes.max(1)));
        self.bar.set_position(0);
        self.bar.set_message("replaying by event time");
        // The schedule starts with the first event, not with the reading before it.
        self.start = Instant::now();
        for pass in 0..passes.max(1) {
            let names = std::mem::take(&mut names);
            let mut failed = None;
            let events = sorter.events()?.map_while(|e| match e {
                Ok(e) => Some(e),
                Err(err) => {
                    failed = Some(err);
                    None
                }
            });
            let go_on = self.emit(pass, pass_shift(span, pass), names, events);
            if let Some(err) = failed {
                return Err(err.into());
            }
            if !go_on {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn in_file_order(
        &mut self,
        mut reader: CsvReader<File>,
        pass: u32,
        shift: i64,
        span: &mut (i64, i64),
    ) -> Result<bool, ReadError> {
        let mut names_sent = 0;
        while let Some(block) = reader.next_block()? {
            self.bar.set_position(block.bytes_through);
            // Later passes replay the same lines: their rejections were reported once.
            let (rejects, stats) = if pass == 0 {
                (block.rejects, block.stats)
            } else {
                (Vec::new(), ReadStats::default())
            };
            if self.stopped() {
                return Ok(false);
            }
            let seen = pass == 0 && block.lines_through <= self.skip.lines;
            if !seen && !self.sink.read(rejects, stats, block.lines_through) {
                return Ok(false);
            }
            for e in &block.events {
                span.0 = span.0.min(e.event_time_us);
                span.1 = span.1.max(e.event_time_us);
            }
            // A later pass reads the same file into the same ids: names go once.
            let names = if pass == 0 {
                new_names(reader.dictionary(), &mut names_sent)
            } else {
                Vec::new()
            };
            if !self.emit(pass, shift, names, block.events.iter().copied()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Hands events to the sink in batches, waiting for each one's due time.
    fn emit(
        &mut self,
        pass: u32,
        shift: i64,
        mut names: Vec<Box<str>>,
        events: impl Iterator<Item = PurchaseEvent>,
    ) -> bool {
        let mut batch: Vec<PurchaseEvent> =
            Vec::with_capacity(BATCH.min(events.size_hint().1.unwrap_or(BATCH).max(1)));
        for e in events {
            if self.skip.events > 0 {
                self.skip.events -= 1;
                continue;
            }
            if self.outcome.events >= self.limit {
                self.limit_reached = true;
                break;
            }
            let e = PurchaseEvent {
                event_time_us: e.event_time_us + shift,
                ..e
            };
            let due = self.pacer.due(e.event_time_us);
            // The clock is read only when pacing (not in --max mode).
            if let Some(wait) = due.and_then(|d| Pacer::wait(d, self.start.elapsed())) {
                if !batch.is_empty() && !self.flush(pass, &mut batch, &mut names) {
                    return false;
                }
                if !self.sleep(wait) {
                    return false;
                }
            }
            self.outcome.events += 1;
            self.outcome.first_event_us = Some(
                self.outcome
                    .first_event_us
                    .map_or(e.event_time_us, |f| f.min(e.event_time_us)),
            );
            self.outcome.last_event_us = self.outcome.last_event_us.max(Some(e.event_time_us));
            batch.push(e);
            if batch.len() >= BATCH && (!self.flush(pass, &mut batch, &mut names) || self.stopped())
            {
                return false;
            }
        }
        let flushed =
            (batch.is_empty() && names.is_empty()) || self.flush(pass, &mut batch, &mut names);
        flushed && !self.limit_reached
    }

    fn flush(
        &mut self,
        pass: u32,
        batch: &mut Vec<PurchaseEvent>,
        names: &mut Vec<Box<str>>,
    ) -> bool {
        self.bar.inc(batch.len() as u64);
        self.outcome.emit_wall = self.start.elapsed();
        let wall = self.outcome.emit_wall.as_secs_f64();
        if wall > 0.0 {
            let (first, last) = (self.outcome.first_event_us, self.outcome.last_event_us);
            self.sink.pace_achieved(
                self.outcome.events as f64 / wall,
                first.zip(last).map(|(a, b)| (b - a) as f64 / 1e6 / wall),
            );
        }
        self.sink
            .events(pass, std::mem::take(names), std::mem::take(batch))
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

/// Names the dictionary gained since `sent`.
fn new_names(dict: &Dictionary, sent: &mut usize) -> Vec<Box<str>> {
    let names = (*sent..dict.len())
        .map(|i| dict.name(crate::Sym(i as u32)).into())
        .collect();
    *sent = dict.len();
    names
}

fn progress_bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:24} [{bar:40}] {percent:>3}% {elapsed_precise} {per_sec}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message("reading");
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_passes_shift_by_whole_days_of_the_span() {
        let day = MICROS_PER_DAY;
        assert_eq!(pass_shift((0, 10), 0), 0);
        assert_eq!(pass_shift((0, 10), 1), day);
        assert_eq!(pass_shift((5, 5 + 2 * day), 2), 2 * 3 * day);
        assert_eq!(pass_shift((i64::MAX, i64::MIN), 3), 0);
    }
}
