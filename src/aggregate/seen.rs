//! Which events a partition has already counted, by event id, so that a redelivered message
//! or a second replay of the same file changes nothing. Ids are (input fingerprint, pass,
//! line); lines are dense, so they are kept as bits in chunks of 65,536 lines: memory is
//! 8 KiB per chunk touched, about one bit per line of each input replayed (330 KB for the
//! 2.6M-line log), whatever the order of arrival. Pure: no I/O.

use rustc_hash::FxHashMap;
use storepulse_replay::wire::EventId;

const CHUNK_BITS: u64 = 1 << 16;
const WORDS: usize = (CHUNK_BITS / 64) as usize;

/// Key of one chunk: input fingerprint, pass, line / 65,536.
pub type ChunkKey = (u64, u32, u64);

#[derive(Debug, Clone, Default)]
pub struct Seen {
    chunks: FxHashMap<ChunkKey, Box<[u64; WORDS]>>,
}

impl Seen {
    /// Records `id`; false if it was already there (a duplicate).
    pub fn insert(&mut self, id: EventId) -> bool {
        let chunk = self
            .chunks
            .entry((id.source, id.pass, id.line / CHUNK_BITS))
            .or_insert_with(|| Box::new([0; WORDS]));
        let bit = id.line % CHUNK_BITS;
        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
        let new = chunk[word] & mask == 0;
        chunk[word] |= mask;
        new
    }

    pub fn contains(&self, id: EventId) -> bool {
        let bit = id.line % CHUNK_BITS;
        self.chunks
            .get(&(id.source, id.pass, id.line / CHUNK_BITS))
            .is_some_and(|c| c[(bit / 64) as usize] & (1u64 << (bit % 64)) != 0)
    }

    /// Chunks as little-endian bytes, sorted by key, for a snapshot.
    pub fn chunks(&self) -> Vec<(ChunkKey, Vec<u8>)> {
        let mut out: Vec<_> = self
            .chunks
            .iter()
            .map(|(k, words)| (*k, words.iter().flat_map(|w| w.to_le_bytes()).collect()))
            .collect();
        out.sort_unstable_by_key(|c| c.0);
        out
    }

    /// Puts back one chunk written by [`Seen::chunks`]; false if `bytes` is not a chunk.
    pub fn restore(&mut self, key: ChunkKey, bytes: &[u8]) -> bool {
        if bytes.len() != WORDS * 8 {
            return false;
        }
        let mut words = Box::new([0u64; WORDS]);
        for (w, b) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        self.chunks.insert(key, words);
        true
    }

    /// Bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.chunks.len() * (WORDS * 8 + 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(source: u64, pass: u32, line: u64) -> EventId {
        EventId { source, pass, line }
    }

    #[test]
    fn a_second_insert_of_the_same_id_is_a_duplicate() {
        let mut s = Seen::default();
        assert!(s.insert(id(1, 0, 2)));
        assert!(!s.insert(id(1, 0, 2)));
        // Another pass, another input, a line in another chunk: all new.
        assert!(s.insert(id(1, 1, 2)));
        assert!(s.insert(id(2, 0, 2)));
        assert!(s.insert(id(1, 0, 2 + CHUNK_BITS)));
        assert!(s.contains(id(1, 0, 2 + CHUNK_BITS)) && !s.contains(id(1, 0, 3)));
        assert_eq!(s.memory_bytes(), 4 * (8192 + 32));
    }

    #[test]
    fn chunks_round_trip() {
        let mut s = Seen::default();
        for line in [2, 63, 64, 65_535, 65_536, 1_000_000] {
            s.insert(id(7, 3, line));
        }
        let mut back = Seen::default();
        for (k, bytes) in s.chunks() {
            assert!(back.restore(k, &bytes));
        }
        for line in [2, 63, 64, 65_535, 65_536, 1_000_000] {
            assert!(!back.insert(id(7, 3, line)), "{line}");
        }
        assert!(back.insert(id(7, 3, 3)));
        assert!(!back.restore((0, 0, 0), &[1, 2, 3]));
    }
}
