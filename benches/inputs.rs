//! What knowing a processor's inputs costs, at scale and without a broker:
//!
//! - an input's identity (`storepulse_replay::identify`: xxh3 of the whole file and its
//!   line count, one streaming pass), timed on the generated file (median of 3);
//! - duplicate detection (`aggregate::Seen`): the events of the file, in event-time order
//!   as `replay` sends them, split over four partitions the way librdkafka's default
//!   partitioner splits them (CRC32 of the order-id key), each partition's lines inserted
//!   into a `Seen` of its own; then every line into one. Prints bytes per event (estimated
//!   by `Seen::memory_bytes` and counted by the allocator), the serialized size in a
//!   snapshot and the cost of an insert.
//!
//! `cargo bench --bench inputs` (by default ten times the real log, 26,335,210 lines);
//! `STOREPULSE_BENCH_ROWS` sets another size.

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

/// (event time, line, partition) of every accepted line, in event-time order.
fn events(path: &std::path::Path) -> Vec<(i64, u32, u8)> {
    let mut reader =
        CsvReader::new(std::fs::File::open(path).unwrap(), &ReaderConfig::default()).unwrap();
    let mut out = Vec::new();
    let mut key = String::new();
    while let Some(block) = reader.next_block().unwrap() {
        for e in block.events {
            use std::fmt::Write;
            key.clear();
            write!(key, "{}", e.order_id).unwrap();
            let p = crc32(key.as_bytes()) as usize % PARTITIONS;
            out.push((e.event_time_us, e.line as u32, p as u8));
        }
    }
    out.sort_unstable();
    out
}

/// Inserts `lines` into fresh sets, one per partition; prints and returns bytes per event.
fn measure(what: &str, lines: &[(i64, u32, u8)], partitions: usize) {
    let held = HELD.load(Ordering::Relaxed);
    let mut parts = vec![Seen::default(); partitions];
    let t = Instant::now();
    for &(_, line, p) in lines {
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
    let n = lines.len() as f64;
    // The chunked bit set this replaced: 8 KiB and 32 bytes per 65,536-line chunk touched.
    let chunks: usize = (0..partitions)
        .map(|p| {
            let mut touched: Vec<u32> = lines
                .iter()
                .filter(|l| l.2 as usize % partitions == p)
                .map(|l| l.1 >> 16)
                .collect();
            touched.sort_unstable();
            touched.dedup();
            touched.len()
        })
        .sum();
    println!(
        "{what}: {:.1} ns an insert; heap {:.3} bytes an event ({} KiB), estimate {:.3} ({} KiB), \
         snapshot {:.3} ({} KiB); the chunked set took {:.3} ({} KiB)",
        secs * 1e9 / n,
        heap as f64 / n,
        heap / 1024,
        estimate as f64 / n,
        estimate / 1024,
        serialized as f64 / n,
        serialized / 1024,
        (chunks * (8192 + 32)) as f64 / n,
        chunks * (8192 + 32) / 1024,
    );
    drop(parts);
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let rows = common::rows_or(26_335_210);
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
    let lines = events(&path);
    println!(
        "input: {} ({rows} lines, {} events, read and sorted in {:.1} s)",
        path.display(),
        lines.len(),
        t.elapsed().as_secs_f64()
    );
    let mut per = [0usize; PARTITIONS];
    for l in &lines {
        per[l.2 as usize] += 1;
    }
    println!("events per partition: {per:?}");
    measure("4 partitions by order id", &lines, PARTITIONS);
    measure("one partition, every line", &lines, 1);
}
