//! What reading a wire event costs a processor: the generated file's events as the
//! replayer writes them (JSON, `storepulse_replay::wire::WireEvent`), read back with
//! serde_json into the borrowed `WireEventRef` and with `storepulse_replay::wire::decode`
//! (its fast path for the replayer's shape), each checked equal to the other, then turned
//! into the compact event as a processor does. Median of 3 passes over all messages.
//!
//! `cargo bench --bench decode`; `STOREPULSE_BENCH_ROWS` sets another file size.

mod common;

use std::time::Instant;

use storepulse::replay::wire::{decode, EventId, WireEvent, WireEventRef};
use storepulse::replay::{CsvReader, Dictionary, ReaderConfig};

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let path = common::data_file(common::rows());
    let mut reader = CsvReader::new(
        std::fs::File::open(&path).unwrap(),
        &ReaderConfig::default(),
    )
    .unwrap();
    let mut events = Vec::new();
    while let Some(block) = reader.next_block().unwrap() {
        events.extend(block.events);
    }
    let dict = reader.into_dictionary();
    let messages: Vec<Vec<u8>> = events
        .iter()
        .map(|e| {
            let id = EventId {
                source: 0xfeed,
                pass: 0,
                line: e.line,
            };
            serde_json::to_vec(&WireEvent::from_event(e, &dict, id)).unwrap()
        })
        .collect();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    println!(
        "messages: {} ({:.0} bytes each on average)",
        messages.len(),
        bytes as f64 / messages.len() as f64
    );
    for m in &messages {
        let slow: WireEventRef = serde_json::from_slice(m).unwrap();
        assert_eq!(decode(m).unwrap(), slow);
    }
    let time = |read: &dyn Fn(&[u8]) -> WireEventRef<'_>| {
        let mut secs = Vec::new();
        for _ in 0..3 {
            let mut names = Dictionary::new();
            let t = Instant::now();
            for m in &messages {
                let w = read(m);
                let e = w.to_event_with(&mut |n| names.intern(n)).unwrap();
                std::hint::black_box(e);
            }
            secs.push(t.elapsed().as_secs_f64());
        }
        common::median(secs) / messages.len() as f64 * 1e9
    };
    let serde = time(&|m| serde_json::from_slice(m).unwrap());
    let fast = time(&|m| decode(m).unwrap());
    println!("serde_json:   {serde:>6.0} ns a message (read and made a compact event)");
    println!(
        "wire::decode: {fast:>6.0} ns a message ({:.2}x serde_json's time)",
        fast / serde
    );
}
