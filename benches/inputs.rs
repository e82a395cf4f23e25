//! What knowing a processor's inputs costs, without a broker:
//!
//! - an input's identity (`storepulse_replay::identify`: xxh3 of the whole file and its
//!   line count, one streaming pass), timed on the generated file (median of 3);
//! - duplicate detection (`aggregate::Seen`) at ten times the real log: the file's events
//!   in event-time order, as `replay` sends them, ten copies one after the other as one
//!   input of 26.3 M lines (copy k: each line + k × the file's lines, each order id + k,
//!   so that its orders spread over the partitions anew), split over four partitions the
//!   way librdkafka's default partitioner splits them (CRC32 of the order-id key), each
//!   partition's lines inserted into a `Seen` of its own; then every line into one. Prints
//!   the cost of an insert and bytes per event: counted by the allocator, estimated by
//!   `Seen::memory_bytes`, serialized for a snapshot, and what the chunked bit set it
//!   replaced took.
//!
//! `cargo bench --bench inputs`; `STOREPULSE_BENCH_ROWS` sets another file size,
//! `STOREPULSE_BENCH_COPIES` another number of copies (default 10).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use storepulse::aggregate::{Seen, SeenId};
use storepulse::replay::{identify, CsvReader, ReaderConfig};

/// Counts the bytes this process holds on the heap.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const PARTITIONS: usize = 4;

/// CRC-32 (IEEE), as librdkafka's `consistent_random` partitioner hashes a key.
fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !bytes.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// (line, order id) of every accepted line of the file, in event-time order (ties in line
/// order), as `replay` sends them.
fn events(path: &std::path::Path) -> Vec<(u32, u64)> {
    let mut reader =
        CsvReader::new(std::fs::File::open(path).unwrap(), &ReaderConfig::default()).unwrap();
    let mut out = Vec::new();
    while let Some(block) = reader.next_block().unwrap() {
        out.extend(
            block
                .events
                .iter()
                .map(|e| (e.event_time_us, e.line as u32, e.order_id)),
        );
    }
    out.sort_unstable();
    out.into_iter()
        .map(|(_, line, order)| (line, order))
        .collect()
}

/// The events of `copies` copies of the file one after the other, as one input of
/// `copies` times the lines: copy k's lines follow the file's last line k times over
/// (line + k × lines) and its order ids are other orders (order id + k), so the orders
/// of each copy spread over the partitions anew. (line, partition) in insertion order.
fn scaled(base: &[(u32, u64)], lines: u64, copies: u64) -> Vec<(u32, u8)> {
    let mut key = String::new();
    let mut out = Vec::with_capacity(base.len() * copies as usize);
    for k in 0..copies {
        for &(line, order) in base {
            use std::fmt::Write;
            key.clear();
            write!(key, "{}", order.wrapping_add(k)).unwrap();
            let p = crc32(key.as_bytes()) as usize % PARTITIONS;
            let line = u64::from(line) + k * lines;
            out.push((u32::try_from(line).unwrap(), p as u8));
        }
    }
    out
}

/// Inserts `events` into fresh sets, one per partition (all in one when `partitions` is
/// 1); prints the cost per insert and the bytes per event.
fn measure(what: &str, events: &[(u32, u8)], partitions: usize) {
    let held = HELD.load(Ordering::Relaxed);
    let mut parts = vec![Seen::default(); partitions];
    let t = Instant::now();
    for &(line, p) in events {
        let id = SeenId {
            source: 0x5eed,
            pass: 0,
            line: u64::from(line),
        };
        assert!(parts[p as usize % partitions].insert(id));
    }
    let secs = t.elapsed().as_secs_f64();
    let heap = HELD.load(Ordering::Relaxed) - held;
    let estimate: usize = parts.iter().map(Seen::memory_bytes).sum();
    let serialized: usize = parts
        .iter()
        .flat_map(|s| s.sets())
        .map(|(_, bytes)| bytes.len())
        .sum();
    let n = events.len() as f64;
    // The chunked bit set this replaced: 8 KiB and 32 bytes per 65,536-line chunk touched.
    let mut touched = vec![false; partitions << 16];
    for &(line, p) in events {
        touched[(p as usize % partitions) << 16 | (line >> 16) as usize] = true;
    }
    let chunked = touched.iter().filter(|&&t| t).count() * (8192 + 32);
    println!("{what}:");
    println!("  insert           {:>8.1} ns", secs * 1e9 / n);
    for (label, bytes) in [
        ("heap (allocator)", heap),
        ("memory_bytes()", estimate),
        ("snapshot bitmaps", serialized),
        ("chunked set, before", chunked),
    ] {
        println!(
            "  {label:<20} {:>7.3} bytes an event, {:>9} KiB",
            bytes as f64 / n,
            bytes / 1024
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let rows = common::rows();
    let path = common::data_file(rows);
    let bytes = std::fs::metadata(&path).unwrap().len() as f64;
    let mut secs = Vec::new();
    let mut identity = None;
    for _ in 0..3 {
        let t = Instant::now();
        identity = Some(identify(&path).unwrap());
        secs.push(t.elapsed().as_secs_f64());
    }
    let (identity, secs) = (identity.unwrap(), common::median(secs));
    println!(
        "identify: {secs:.3} s for {:.0} MiB ({:.0} MiB/s), source {:016x}, {} lines",
        bytes / 1048576.0,
        bytes / 1048576.0 / secs,
        identity.source,
        identity.lines
    );
    let t = Instant::now();
    let base = events(&path);
    let copies = std::env::var("STOREPULSE_BENCH_COPIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10u64);
    let all = scaled(&base, identity.lines, copies);
    let mut per = [0usize; PARTITIONS];
    for e in &all {
        per[e.1 as usize] += 1;
    }
    println!(
        "events: {} of the file, {copies} copies: {} ({:.1} s to read, sort and key); per partition {per:?}",
        base.len(),
        all.len(),
        t.elapsed().as_secs_f64()
    );
    drop(base);
    measure("4 partitions by order id", &all, PARTITIONS);
    measure("one partition, every line", &all, 1);
}
