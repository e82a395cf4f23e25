//! Reads a `kz.csv`-format input in blocks and turns every line into an event or a
//! rejection. Each block is cut at line ends and parsed on all cores; results are merged
//! back in file order, so line numbers, offsets and dictionary ids do not depend on the
//! number of threads.

use std::io::{self, Read};

use rayon::prelude::*;

use crate::event::{Dictionary, PurchaseEvent, Sym};
use crate::reject::{RejectCounts, Rejected};
use crate::validate::{is_blank, Header, HeaderError, LineValidator, DEFAULT_MIN_EVENT_TIME_US};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the input failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Header(#[from] HeaderError),
}

#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// Lines with an earlier event time are `event_time_out_of_range`.
    pub min_event_time_us: i64,
    /// Bytes read and parsed at a time.
    pub block_bytes: usize,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        Self {
            min_event_time_us: DEFAULT_MIN_EVENT_TIME_US,
            block_bytes: 8 << 20,
        }
    }
}

/// What the reader saw. `accepted + rejected.total() == records`; blank lines are apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Non-blank lines after the header.
    pub records: u64,
    pub accepted: u64,
    /// Accepted lines that needed the column-shift repair.
    pub repaired: u64,
    pub blank: u64,
    pub rejected: RejectCounts,
}

impl ReadStats {
    pub fn merge(&mut self, o: &ReadStats) {
        self.records += o.records;
        self.accepted += o.accepted;
        self.repaired += o.repaired;
        self.blank += o.blank;
        self.rejected.merge(&o.rejected);
    }
}

/// The events and rejections of one block of lines, in file order.
#[derive(Debug, Default)]
pub struct Block {
    pub events: Vec<PurchaseEvent>,
    pub rejects: Vec<Rejected>,
    pub stats: ReadStats,
    /// Lines of the input consumed so far, header included (the input position).
    pub lines_through: u64,
    /// Bytes of the input consumed so far.
    pub bytes_through: u64,
}

/// Streams blocks of parsed lines from a reader.
pub struct CsvReader<R> {
    input: R,
    validator: LineValidator,
    dict: Dictionary,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` carried over from the previous read (a partial line).
    carried: usize,
    /// Offset in the input of `buf[0]`.
    buf_offset: u64,
    /// Number of lines before `buf[0]` (so the next line is `lines_before + 1`).
    lines_before: u64,
    eof: bool,
    block_bytes: usize,
    pool: Vec<ChunkOut>,
}

impl<R: Read> CsvReader<R> {
    /// Reads the header and prepares to stream the lines after it.
    pub fn new(mut input: R, config: &ReaderConfig) -> Result<Self, ReadError> {
        let block_bytes = config.block_bytes.max(4096);
        let mut buf = Vec::with_capacity(block_bytes + 4096);
        let mut eof = false;
        let header_end = loop {
            if let Some(p) = memchr::memchr(b'\n', &buf) {
                break p;
            }
            if eof {
                break buf.len();
            }
            eof = fill(&mut input, &mut buf, 64 * 1024)?;
        };
        let header = Header::parse(&buf[..header_end])?;
        let consumed = (header_end + 1).min(buf.len());
        buf.drain(..consumed);
        Ok(Self {
            input,
            validator: LineValidator::new(header, config.min_event_time_us),
            dict: Dictionary::new(),
            carried: buf.len(),
            buf,
            buf_offset: consumed as u64,
            lines_before: 1,
            eof,
            block_bytes,
            pool: Vec::new(),
        })
    }

    /// Category codes and brands seen so far; event [`Sym`]s index into it.
    /// Bytes read and parsed at a time (a block grows only for a line longer than it).
    pub fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    pub fn dictionary(&self) -> &Dictionary {
        &self.dict
    }

    pub fn into_dictionary(self) -> Dictionary {
        self.dict
    }

    /// The next block of lines, or `None` at end of input.
    pub fn next_block(&mut self) -> Result<Option<Block>, ReadError> {
        let mut events = Vec::new();
        let block = self.next_block_into(&mut events)?;
        Ok(block.map(|b| Block { events, ..b }))
    }

    /// Like [`next_block`](Self::next_block), but appends the events to `events` (the
    /// returned block's own `events` stay empty): no copy for a caller that collects.
    pub fn next_block_into(
        &mut self,
        events: &mut Vec<PurchaseEvent>,
    ) -> Result<Option<Block>, ReadError> {
        self.buf.truncate(self.carried);
        while !self.eof && self.buf.len() < self.block_bytes {
            let want = self.block_bytes - self.buf.len();
            self.eof = fill(&mut self.input, &mut self.buf, want)?;
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let end = if self.eof {
            self.buf.len()
        } else {
            match memchr::memrchr(b'\n', &self.buf) {
                Some(p) => p + 1,
                None => {
                    // One line longer than a block: keep reading until it ends.
                    self.block_bytes *= 2;
                    self.carried = self.buf.len();
                    return self.next_block_into(events);
                }
            }
        };
        let chunks = split_at_lines(&self.buf[..end], rayon::current_num_threads() * 4);
        // Chunk buffers are kept between blocks, so their pages are touched only once.
        if self.pool.len() < chunks.len() {
            self.pool.resize_with(chunks.len(), ChunkOut::default);
        }
        let (buf, validator) = (&self.buf, &self.validator);
        self.pool[..chunks.len()]
            .par_iter_mut()
            .zip(chunks.par_iter())
            .for_each(|(out, &(start, stop))| {
                parse_chunk(&buf[start..stop], start, validator, out)
            });

        let mut block = Block::default();
        let total_events: usize = self.pool[..chunks.len()]
            .iter()
            .map(|c| c.events.len())
            .sum();
        events.reserve(total_events);
        let mut lines = self.lines_before;
        for chunk in &mut self.pool[..chunks.len()] {
            let remap = self.dict.absorb(&chunk.dict);
            let fix = |s: Option<Sym>| s.map(|s| remap[s.0 as usize]);
            let buf_offset = self.buf_offset;
            events.extend(chunk.events.drain(..).map(|mut e| {
                e.line += lines + 1;
                e.offset += buf_offset;
                e.category = fix(e.category);
                e.brand = fix(e.brand);
                e
            }));
            block.rejects.extend(chunk.rejects.drain(..).map(|mut r| {
                r.line += lines + 1;
                r
            }));
            block.stats.merge(&chunk.stats);
            lines += chunk.lines;
        }
        self.lines_before = lines;
        block.lines_through = lines;
        self.buf_offset += end as u64;
        block.bytes_through = self.buf_offset;
        self.buf.copy_within(end.., 0);
        self.carried = self.buf.len() - end;
        Ok(Some(block))
    }
}

/// Appends up to `want` bytes; returns true at end of input.
fn fill<R: Read>(input: &mut R, buf: &mut Vec<u8>, want: usize) -> io::Result<bool> {
    let start = buf.len();
    buf.resize(start + want, 0);
    let mut got = 0;
    while got < want {
        match input.read(&mut buf[start + got..]) {
            Ok(0) => {
                buf.truncate(start + got);
                return Ok(true);
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.truncate(start + got);
                return Err(e);
            }
        }
    }
    Ok(false)
}

/// Cuts `buf` into about `parts` ranges, each ending just after a line end (or at the end).
fn split_at_lines(buf: &[u8], parts: usize) -> Vec<(usize, usize)> {
    let target = (buf.len() / parts.max(1)).max(64 * 1024);
    let mut out = Vec::with_capacity(parts + 1);
    let mut start = 0;
    while start < buf.len() {
        let guess = (start + target).min(buf.len());
        let stop = if guess == buf.len() {
            guess
        } else {
            memchr::memchr(b'\n', &buf[guess..]).map_or(buf.len(), |p| guess + p + 1)
        };
        out.push((start, stop));
        start = stop;
    }
    out
}

/// One chunk's results with chunk-relative line numbers (0-based) and buffer offsets.
#[derive(Default)]
struct ChunkOut {
    events: Vec<PurchaseEvent>,
    rejects: Vec<Rejected>,
    stats: ReadStats,
    dict: Dictionary,
    lines: u64,
}

fn parse_chunk(chunk: &[u8], base: usize, validator: &LineValidator, out: &mut ChunkOut) {
    out.events.clear();
    out.rejects.clear();
    out.stats = ReadStats::default();
    out.dict = Dictionary::new();
    out.lines = 0;
    let mut fields = Vec::with_capacity(16);
    let mut last_code: Option<Sym> = None;
    let mut last_brand: Option<Sym> = None;
    let mut pos = 0;
    while pos < chunk.len() {
        let nl = memchr::memchr(b'\n', &chunk[pos..]).map_or(chunk.len(), |p| pos + p);
        let raw = &chunk[pos..nl];
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line_no = out.lines;
        let offset = (base + pos) as u64;
        out.lines += 1;
        pos = nl + 1;
        if is_blank(line) {
            out.stats.blank += 1;
            continue;
        }
        out.stats.records += 1;
        match validator.validate(line, &mut fields) {
            Ok(v) => {
                out.stats.accepted += 1;
                out.stats.repaired += u64::from(v.repaired);
                let category = v
                    .category_code
                    .as_deref()
                    .map(|c| intern_cached(&mut out.dict, &mut last_code, c));
                let brand = v
                    .brand
                    .as_deref()
                    .map(|b| intern_cached(&mut out.dict, &mut last_brand, b));
                out.events.push(PurchaseEvent {
                    event_time_us: v.event_time_us,
                    order_id: v.order_id,
                    product_id: v.product_id,
                    category_id: v.category_id,
                    user_id: v.user_id,
                    price_cents: v.price_cents,
                    category,
                    brand,
                    line: line_no,
                    offset,
                });
            }
            Err(reason) => {
                out.stats.rejected.add(reason, 1);
                out.rejects.push(Rejected {
                    line: line_no,
                    reason,
                    text: line.to_vec(),
                });
            }
        }
    }
}

/// Interning with a one-entry cache: neighbouring lines often repeat a value.
fn intern_cached(dict: &mut Dictionary, last: &mut Option<Sym>, s: &str) -> Sym {
    if let Some(sym) = *last {
        if dict.name(sym) == s {
            return sym;
        }
    }
    let sym = dict.intern(s);
    *last = Some(sym);
    sym
}

/// Everything in an input, read at once.
#[derive(Debug, Default)]
pub struct ReadAll {
    pub events: Vec<PurchaseEvent>,
    pub rejects: Vec<Rejected>,
    pub stats: ReadStats,
    pub dict: Dictionary,
    pub lines: u64,
}

/// Reads a whole input (events in file order).
pub fn read_all<R: Read>(input: R, config: &ReaderConfig) -> Result<ReadAll, ReadError> {
    let mut reader = CsvReader::new(input, config)?;
    let mut all = ReadAll::default();
    while let Some(block) = reader.next_block_into(&mut all.events)? {
        all.rejects.extend(block.rejects);
        all.stats.merge(&block.stats);
        all.lines = block.lines_through;
    }
    all.dict = reader.into_dictionary();
    Ok(all)
}

/// Puts events in event-time order, ties in file order.
pub fn sort_by_event_time(events: &mut [PurchaseEvent]) {
    events.par_sort_unstable_by_key(|e| (e.event_time_us, e.line));
}

#[cfg(test)]
mod tests;
