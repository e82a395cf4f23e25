//! The event-time order of a file larger than memory: events are held up to a byte limit,
//! then sorted and spilled as a run to a temporary file (fixed 73-byte records), and the
//! runs are merged back by (event time, line), the same key as the in-memory sort, so the
//! order (ties in file order) is exactly the same. Below the limit nothing touches disk.

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use rayon::slice::ParallelSliceMut;

use crate::{sort_by_event_time, PurchaseEvent, Sym};

/// Bytes one held event takes in memory.
pub const EVENT_BYTES: usize = std::mem::size_of::<PurchaseEvent>();
const RECORD: usize = 73;
/// Taken events whose memory is given back at once (8 MiB of them).
const GIVE_BACK_EVENTS: usize = (8 << 20) / EVENT_BYTES;

/// Events of one file in event-time order, in memory or in sorted runs on disk.
///
/// Up to `memory_limit` bytes of events are held. Once that overflows, the events go to
/// disk in runs of half the limit: one half is sorted and written on a thread of its own
/// while the reader fills the other, so reading does not wait for the disk.
pub struct Sorter {
    pub held: Vec<PurchaseEvent>,
    /// Set before [`Sorter::finish`] when the events are replayed once: events held in
    /// memory are then handed out by taking them, and their memory goes back as they go.
    pub one_pass: bool,
    limit_events: usize,
    /// Most events one read block adds (a buffer holds the limit plus one block).
    block_events: usize,
    /// The other half while spilling (`None` while its run is being written).
    spare: Option<Vec<PurchaseEvent>>,
    /// The sort keys of the last run written, for the next.
    keys: Vec<(i64, u64, u32)>,
    writing: Option<std::thread::JoinHandle<io::Result<Written>>>,
    runs: Vec<PathBuf>,
    dir: Option<PathBuf>,
    /// The folder's lock file, locked while this sorter lives (see [`remove_orphans`]).
    _lock: Option<File>,
    count: u64,
    span: (i64, i64),
}

/// A run on disk, and the buffer it came from and its sort keys (emptied, for reuse: a
/// buffer this large would otherwise come fresh from the system, page by page, each run).
struct Written {
    buffer: Vec<PurchaseEvent>,
    keys: Vec<(i64, u64, u32)>,
    path: PathBuf,
    count: u64,
    span: (i64, i64),
}

impl Sorter {
    /// Holds at most `memory_limit` bytes of events; `size_hint` (the file's bytes) and
    /// `block_events` (most events one read block adds) size the buffer once.
    pub fn new(memory_limit: usize, size_hint: usize, block_events: usize) -> Self {
        let limit_events = (memory_limit / EVENT_BYTES).max(1);
        // No line is shorter than ~60 bytes; pages never touched stay virtual.
        let capacity = (size_hint / 60).min(limit_events + block_events);
        Sorter {
            held: Vec::with_capacity(capacity),
            one_pass: false,
            limit_events,
            block_events,
            spare: None,
            keys: Vec::new(),
            writing: None,
            runs: Vec::new(),
            dir: None,
            _lock: None,
            count: 0,
            span: (i64::MAX, i64::MIN),
        }
    }

    /// Called after each block is appended to `held`: spills when over the limit.
    pub fn block_added(&mut self) -> io::Result<()> {
        if self.held.len() >= self.limit_events {
            self.spill()?;
        }
        Ok(())
    }

    /// Sends what is held to disk as one sorted run. The first run is written at once and
    /// splits the limit in two halves; later ones are written while the next fills.
    fn spill(&mut self) -> io::Result<()> {
        self.wait_for_writer()?;
        let path = self.next_run_path()?;
        if self.runs.is_empty() {
            // The first run: write it now, then hold half the limit twice.
            let events = std::mem::take(&mut self.held);
            drop(self.runs_done(write_run(events, Vec::new(), path)?));
            self.limit_events = (self.limit_events / 2).max(1);
            let capacity = self.limit_events + self.block_events;
            self.held = Vec::with_capacity(capacity);
            self.spare = Some(Vec::with_capacity(capacity));
            return Ok(());
        }
        let next = self.spare.take().expect("the spare half is back");
        let events = std::mem::replace(&mut self.held, next);
        let keys = std::mem::take(&mut self.keys);
        let writer = std::thread::Builder::new()
            .name("storepulse-spill".into())
            .spawn(move || write_run(events, keys, path))?;
        self.writing = Some(writer);
        Ok(())
    }

    /// Where the next run goes (called with no run being written).
    fn next_run_path(&mut self) -> io::Result<PathBuf> {
        let dir = match &self.dir {
            Some(d) => d.clone(),
            None => {
                let tmp = std::env::temp_dir();
                remove_orphans(&tmp);
                let d = tmp.join(format!(
                    "{SORT_DIR_PREFIX}{}-{:x}",
                    std::process::id(),
                    self as *const Self as usize
                ));
                std::fs::create_dir_all(&d)?;
                // Locked before it has its name: a folder's lock file is never seen
                // unlocked while its sorter lives.
                let lock = File::create(d.join(LOCK_NEW))?;
                lock.lock()?;
                std::fs::rename(d.join(LOCK_NEW), d.join(LOCK))?;
                self._lock = Some(lock);
                self.dir = Some(d.clone());
                d
            }
        };
        Ok(dir.join(format!("run-{}", self.runs.len())))
    }

    /// Takes back the run being written, if any, and its buffer as the spare half.
    fn wait_for_writer(&mut self) -> io::Result<()> {
        if let Some(writer) = self.writing.take() {
            let done = writer.join().expect("the spill writer panicked")?;
            self.spare = Some(self.runs_done(done));
        }
        Ok(())
    }

    /// Records a written run; gives back its buffer, emptied.
    fn runs_done(&mut self, done: Written) -> Vec<PurchaseEvent> {
        self.count += done.count;
        self.span = (self.span.0.min(done.span.0), self.span.1.max(done.span.1));
        self.runs.push(done.path);
        self.keys = done.keys;
        let mut buffer = done.buffer;
        buffer.clear();
        buffer
    }

    fn note(&mut self, n: usize) {
        self.count += n as u64;
        if let (Some(a), Some(b)) = (self.held.first(), self.held.last()) {
            let (a, b) = (a.event_time_us, b.event_time_us);
            self.span = (self.span.0.min(a.min(b)), self.span.1.max(a.max(b)));
        }
    }

    /// All events are in: sorts what is held (and spills it too when runs exist).
    pub fn finish(&mut self) -> io::Result<()> {
        // A run is only written in the background after the first is on disk.
        if self.runs.is_empty() {
            if self.one_pass {
                // Last first: the replay takes events from the end.
                self.held
                    .par_sort_unstable_by_key(|e| Reverse((e.event_time_us, e.line)));
            } else {
                sort_by_event_time(&mut self.held);
            }
            self.note(self.held.len());
            return Ok(());
        }
        if !self.held.is_empty() {
            self.spill()?;
        }
        self.wait_for_writer()?;
        self.held = Vec::new();
        self.spare = None;
        Ok(())
    }

    /// Events held in all, and the (first, last) event time.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn span(&self) -> (i64, i64) {
        self.span
    }

    /// How many runs went to disk.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The events in order (after [`finish`](Self::finish)); may be called once per pass
    /// (once in all with [`Sorter::one_pass`]).
    pub fn events(&mut self) -> io::Result<Events<'_>> {
        if self.runs.is_empty() {
            if self.one_pass {
                return Ok(Events(Source::Take(&mut self.held)));
            }
            return Ok(Events(Source::Memory(self.held.iter())));
        }
        let mut readers = Vec::with_capacity(self.runs.len());
        let mut heap = BinaryHeap::new();
        for path in &self.runs {
            let r = RunReader::open(path)?;
            if let Some(key) = r.key() {
                heap.push(Reverse((key.0, key.1, readers.len() as u32)));
                readers.push(r);
            }
        }
        Ok(Events(Source::Merge { readers, heap }))
    }
}

impl Drop for Sorter {
    fn drop(&mut self) {
        if let Some(writer) = self.writing.take() {
            let _ = writer.join();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The events in event-time order: from memory, or merged from the runs.
pub struct Events<'a>(Source<'a>);

enum Source<'a> {
    Memory(std::slice::Iter<'a, PurchaseEvent>),
    /// Events sorted last first, taken from the end; every few MiB taken the buffer is
    /// shrunk, which hands the pages back to the system.
    Take(&'a mut Vec<PurchaseEvent>),
    /// The heap holds the key (event time, line, run) of each run's next record, so
    /// sifting moves 24 bytes, not events; a record is decoded only when it is taken.
    Merge {
        readers: Vec<RunReader>,
        heap: BinaryHeap<Reverse<(i64, u64, u32)>>,
    },
}

impl Iterator for Events<'_> {
    type Item = io::Result<PurchaseEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Source::Memory(it) => it.next().map(|e| Ok(*e)),
            Source::Take(held) => {
                let e = held.pop()?;
                if held.capacity() - held.len() >= GIVE_BACK_EVENTS {
                    held.shrink_to_fit();
                }
                Some(Ok(e))
            }
            Source::Merge { readers, heap } => {
                let mut top = heap.peek_mut()?;
                let i = top.0 .2;
                let run = &mut readers[i as usize];
                let e = decode(run.head().expect("a run in the heap has a record"));
                if let Err(err) = run.advance() {
                    return Some(Err(err));
                }
                match run.key() {
                    // Replacing the top sifts it down once, instead of a pop and a push.
                    Some((t, line)) => *top = Reverse((t, line, i)),
                    None => {
                        PeekMut::pop(top);
                    }
                }
                Some(Ok(e))
            }
        }
    }
}

/// The start of a sort's folder of runs: `storepulse-sort-<process id>-<sorter>`.
const SORT_DIR_PREFIX: &str = "storepulse-sort-";
/// A sort folder's lock file, locked by its sorter for as long as it lives.
const LOCK: &str = ".lock";
/// The lock file while it is being locked.
const LOCK_NEW: &str = ".lock-new";

/// Removes the sort folders whose sorter is gone: a sorter removes its own when it is
/// dropped, but a process killed while sorting (`kill -9`, out of memory) cannot, and its
/// runs (as large as the input) would stay in the temporary folder for good. A sorter
/// holds an exclusive lock on its folder's lock file while it lives (released by the
/// system when its process ends), so a folder whose lock can be taken is no one's; one
/// without a lock file (named the older way, or not yet locked) is left alone. Processes
/// in other containers or on other machines sharing the folder hold their locks alike.
fn remove_orphans(tmp: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(SORT_DIR_PREFIX)
        {
            continue;
        }
        let Ok(lock) = File::open(entry.path().join(LOCK)) else {
            continue;
        };
        if lock.try_lock().is_ok() && std::fs::remove_dir_all(entry.path()).is_ok() {
            tracing::info!(path = %entry.path().display(), "removed the sort runs of a sort that is gone");
        }
    }
}

/// Sorts `events` by (event time, line) and writes them to `path` as one run.
fn write_run(
    events: Vec<PurchaseEvent>,
    mut keys: Vec<(i64, u64, u32)>,
    path: PathBuf,
) -> io::Result<Written> {
    // Sorting 24-byte keys moves a quarter of the bytes that sorting the events would;
    // the events are then written in key order.
    keys.clear();
    keys.extend(
        events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.event_time_us, e.line, i as u32)),
    );
    keys.par_sort_unstable();
    let span = match (keys.first(), keys.last()) {
        (Some(a), Some(b)) => (a.0, b.0),
        _ => (i64::MAX, i64::MIN),
    };
    let mut w = BufWriter::with_capacity(1 << 20, File::create(&path)?);
    let mut rec = [0u8; RECORD];
    for (k, &(_, _, i)) in keys.iter().enumerate() {
        // The events are gathered out of place: ask for one a few steps ahead.
        if let Some(&(_, _, ahead)) = keys.get(k + 8) {
            prefetch(&events[ahead as usize]);
        }
        encode(&events[i as usize], &mut rec);
        w.write_all(&rec)?;
    }
    w.flush()?;
    Ok(Written {
        buffer: events,
        path,
        count: keys.len() as u64,
        span,
        keys,
    })
}

/// Hints the CPU to load `e` into cache (no effect off x86-64).
#[inline(always)]
fn prefetch(e: &PurchaseEvent) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch hint has no effect on memory; `e` is a valid reference.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = (e as *const PurchaseEvent).cast::<i8>();
        _mm_prefetch(p, _MM_HINT_T0);
        _mm_prefetch(p.add(64), _MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = e;
}

fn encode(e: &PurchaseEvent, out: &mut [u8; RECORD]) {
    let flags = u8::from(e.category_id.is_some())
        | u8::from(e.user_id.is_some()) << 1
        | u8::from(e.category.is_some()) << 2
        | u8::from(e.brand.is_some()) << 3;
    out[0] = flags;
    let mut at = 1;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&e.event_time_us.to_le_bytes());
    put(&e.order_id.to_le_bytes());
    put(&e.product_id.to_le_bytes());
    put(&e.category_id.unwrap_or(0).to_le_bytes());
    put(&e.user_id.unwrap_or(0).to_le_bytes());
    put(&e.price_cents.to_le_bytes());
    put(&e.category.map_or(0, |s| s.0).to_le_bytes());
    put(&e.brand.map_or(0, |s| s.0).to_le_bytes());
    put(&e.line.to_le_bytes());
    put(&e.offset.to_le_bytes());
}

/// Where a record keeps the merge key: the event time and the line.
const TIME_AT: usize = 1;
const LINE_AT: usize = 57;

fn u64_at(b: &[u8; RECORD], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn decode(b: &[u8; RECORD]) -> PurchaseEvent {
    let flags = b[0];
    let u64_at = |at: usize| u64_at(b, at);
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let some = |bit: u8| flags & (1 << bit) != 0;
    PurchaseEvent {
        event_time_us: u64_at(TIME_AT) as i64,
        order_id: u64_at(9),
        product_id: u64_at(17),
        category_id: some(0).then(|| u64_at(25)),
        user_id: some(1).then(|| u64_at(33)),
        price_cents: u64_at(41) as i64,
        category: some(2).then(|| Sym(u32_at(49))),
        brand: some(3).then(|| Sym(u32_at(53))),
        line: u64_at(LINE_AT),
        offset: u64_at(65),
    }
}

/// One run being merged: its records read a block at a time into a buffer of its own,
/// and decoded straight from it.
struct RunReader {
    file: File,
    buf: Box<[u8]>,
    /// The next record starts at `pos`; bytes up to `end` are read.
    pos: usize,
    end: usize,
}

/// Bytes of a run read at once (a whole number of records).
const RUN_BLOCK: usize = RECORD * 4096;

impl RunReader {
    fn open(path: &std::path::Path) -> io::Result<Self> {
        let mut r = RunReader {
            file: File::open(path)?,
            buf: vec![0u8; RUN_BLOCK].into_boxed_slice(),
            pos: 0,
            end: 0,
        };
        r.fill()?;
        Ok(r)
    }

    /// The next record, if any.
    fn head(&self) -> Option<&[u8; RECORD]> {
        (self.pos + RECORD <= self.end).then(|| {
            self.buf[self.pos..self.pos + RECORD]
                .try_into()
                .expect("one record")
        })
    }

    /// The merge key (event time, line) of the next record.
    fn key(&self) -> Option<(i64, u64)> {
        self.head()
            .map(|b| (u64_at(b, TIME_AT) as i64, u64_at(b, LINE_AT)))
    }

    /// Moves past the next record, reading on when the buffer runs out.
    fn advance(&mut self) -> io::Result<()> {
        self.pos += RECORD;
        if self.end - self.pos < RECORD {
            self.fill()?;
        }
        Ok(())
    }

    /// Keeps what is left of a record and reads until the buffer is full or the run ends.
    fn fill(&mut self) -> io::Result<()> {
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        while self.end < self.buf.len() {
            match self.file.read(&mut self.buf[self.end..]) {
                Ok(0) => break,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.end < self.buf.len() && !self.end.is_multiple_of(RECORD) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a spilled run ends inside a record",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: i64, line: u64) -> PurchaseEvent {
        PurchaseEvent {
            event_time_us: t,
            order_id: line * 7,
            product_id: u64::MAX - line,
            category_id: line.is_multiple_of(2).then_some(line),
            user_id: line.is_multiple_of(3).then_some(line << 40),
            price_cents: -(line as i64),
            category: (!line.is_multiple_of(5)).then_some(Sym(line as u32)),
            brand: line.is_multiple_of(4).then_some(Sym(3)),
            line,
            offset: line * 100,
        }
    }

    /// Only the sort folders whose lock no sorter holds are removed.
    #[test]
    fn the_sort_runs_of_a_sort_that_is_gone_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = |name: &str, lock: bool| {
            let d = tmp.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("run-0"), b"runs").unwrap();
            if lock {
                File::create(d.join(LOCK)).unwrap();
            }
            d
        };
        let gone = folder("storepulse-sort-4194399-7f00", true);
        let living = folder("storepulse-sort-1-7f00", true);
        let held = File::open(living.join(LOCK)).unwrap();
        held.lock().unwrap();
        let unlocked = folder("storepulse-sort-2-7f00", false);
        let other = folder("notes", true);
        remove_orphans(tmp.path());
        assert!(!gone.exists());
        for kept in [&living, &unlocked, &other] {
            assert!(kept.join("run-0").exists(), "{}", kept.display());
        }
        // A sorter that spills locks its folder, and the folder goes with it.
        let mut sorter = Sorter::new(0, 0, 1);
        let path = sorter.next_run_path().unwrap();
        let dir = path.parent().unwrap().to_path_buf();
        assert!(File::open(dir.join(LOCK)).unwrap().try_lock().is_err());
        drop(sorter);
        assert!(!dir.exists());
    }

    /// A run cut off inside a record is an error, not a silently shorter stream.
    #[test]
    fn a_run_cut_inside_a_record_is_an_error() {
        let events: Vec<PurchaseEvent> = (0..5_000u64).map(|l| event(l as i64, l)).collect();
        let mut s = Sorter::new(1_000 * EVENT_BYTES, 1 << 20, 64);
        for chunk in events.chunks(64) {
            s.held.extend_from_slice(chunk);
            s.block_added().unwrap();
        }
        s.finish().unwrap();
        assert!(s.runs() > 1);
        let whole: Vec<PurchaseEvent> = s.events().unwrap().map(Result::unwrap).collect();
        assert!(whole == events);
        let run = &s.runs[1];
        let len = std::fs::metadata(run).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(run)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        // Found on opening (a short run is read whole) or while merging.
        let err = match s.events() {
            Err(e) => e,
            Ok(events) => events.filter_map(Result::err).next().expect("an error"),
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn records_round_trip() {
        for line in 0..40 {
            let e = event(i64::MIN + line as i64, line);
            let mut rec = [0u8; RECORD];
            encode(&e, &mut rec);
            assert_eq!(decode(&rec), e);
        }
    }

    /// Spilled runs merge into exactly the in-memory order, ties in file order.
    #[test]
    fn spilled_runs_merge_into_the_in_memory_order() {
        let events: Vec<PurchaseEvent> = (0..10_000u64)
            .map(|line| event(((line * 7919) % 613) as i64, line))
            .collect();
        let mut want = events.clone();
        sort_by_event_time(&mut want);
        for limit in [
            EVENT_BYTES,
            100 * EVENT_BYTES,
            3_333 * EVENT_BYTES,
            usize::MAX / 2,
        ] {
            let mut s = Sorter::new(limit, 1 << 20, 64);
            for chunk in events.chunks(64) {
                s.held.extend_from_slice(chunk);
                s.block_added().unwrap();
                // Two halves while spilling: each half the limit (at least one event) and
                // a block, so together no more than the limit and two blocks.
                let held = s.held.capacity() + s.spare.as_ref().map_or(0, Vec::capacity);
                let half = (limit / EVENT_BYTES / 2).max(1);
                assert!(held <= 2 * (half + 64), "limit {limit}: {held}");
            }
            s.finish().unwrap();
            assert_eq!(s.len(), 10_000);
            assert_eq!(s.span(), (0, 612));
            for _pass in 0..2 {
                let got: Vec<PurchaseEvent> = s.events().unwrap().map(Result::unwrap).collect();
                assert!(got == want, "limit {limit}");
            }
            assert_eq!(s.runs() > 0, limit < 10_000 * EVENT_BYTES, "limit {limit}");

            // Replayed once: the same order, the events taken (and their memory freed).
            let mut s = Sorter::new(limit, 1 << 20, 64);
            s.one_pass = true;
            for chunk in events.chunks(64) {
                s.held.extend_from_slice(chunk);
                s.block_added().unwrap();
            }
            s.finish().unwrap();
            assert_eq!(s.span(), (0, 612));
            let got: Vec<PurchaseEvent> = s.events().unwrap().map(Result::unwrap).collect();
            assert!(got == want, "one pass, limit {limit}");
            assert!(s.held.is_empty(), "limit {limit}");
        }
    }
}
