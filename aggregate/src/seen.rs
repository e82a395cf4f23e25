//! Which events a partition has already counted, so that a redelivered message or a second
//! replay of the same file changes nothing. An event is (input source, pass, line); the
//! lines of one input and pass are kept as one compressed set (a roaring bitmap), so a run
//! of consecutive lines costs a few bytes and a partition's share of an input (a quarter of
//! the lines at random, with four partitions) about a bit per line of the input. Pure: no
//! I/O, no wire format.
//!
//! A bitmap holds 32-bit values: a line beyond [`Seen::MAX_LINE`] cannot be kept, and
//! nothing is allocated for it (callers reject such ids before they get here).

use rustc_hash::FxHashMap;

use roaring::RoaringBitmap;

/// One event's identity as the core sees it: which input (a hash of its content), which
/// pass over it, which line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeenId {
    pub source: u64,
    pub pass: u32,
    pub line: u64,
}

/// Inserts into one set between two compactions: at least this many, and more for a set
/// that spans many containers, so that compacting costs a few nanoseconds per insert.
const COMPACT_EVERY: u64 = 1024;
/// Compaction visits every container: at most once per this many inserts per container.
const INSERTS_PER_CONTAINER: u64 = 64;

#[derive(Debug, Clone)]
struct Lines {
    bits: RoaringBitmap,
    /// Inserts left before the next [`RoaringBitmap::optimize`].
    until_compact: u64,
}

impl Default for Lines {
    fn default() -> Self {
        Self {
            bits: RoaringBitmap::new(),
            until_compact: COMPACT_EVERY,
        }
    }
}

impl Lines {
    fn insert(&mut self, line: u32) -> bool {
        let new = self.bits.insert(line);
        self.until_compact -= u64::from(new);
        // A fresh container is an array or a plain bitmap; runs become run containers
        // only when asked, and a run container that takes scattered lines grows by 4 bytes
        // a run: compacting now and then keeps every container at its smallest form.
        if self.until_compact == 0 {
            self.compact();
        }
        new
    }

    fn compact(&mut self) {
        self.bits.optimize();
        // Containers cover 65,536 lines each; the span bounds how many there are.
        let span = match (self.bits.min(), self.bits.max()) {
            (Some(lo), Some(hi)) => u64::from((hi >> 16) - (lo >> 16)) + 1,
            _ => 0,
        };
        self.until_compact = COMPACT_EVERY.max(INSERTS_PER_CONTAINER * span);
    }
}

/// The events counted, per (source, pass).
#[derive(Debug, Clone, Default)]
pub struct Seen {
    sets: FxHashMap<(u64, u32), Lines>,
    /// The lines recorded since the last snapshot published, when tracked (see
    /// [`Seen::changed`]).
    fresh: Option<Box<FxHashMap<(u64, u32), RoaringBitmap>>>,
}

/// Why a set written by [`Seen::sets`] could not be put back.
#[derive(Debug, thiserror::Error)]
#[error("not a roaring bitmap: {0}")]
pub struct RestoreError(#[from] std::io::Error);

impl Seen {
    /// The highest line a set can hold.
    pub const MAX_LINE: u64 = u32::MAX as u64;

    /// Records `id`; true if it is new. A line beyond [`Seen::MAX_LINE`] cannot be kept:
    /// false, nothing recorded, nothing allocated.
    pub fn insert(&mut self, id: SeenId) -> bool {
        let Ok(line) = u32::try_from(id.line) else {
            return false;
        };
        let new = self
            .sets
            .entry((id.source, id.pass))
            .or_default()
            .insert(line);
        if let (true, Some(fresh)) = (new, self.fresh.as_deref_mut()) {
            fresh.entry((id.source, id.pass)).or_default().insert(line);
        }
        new
    }

    /// Keeps track of the lines recorded from now on, for incremental snapshots.
    pub fn track_changes(&mut self) {
        self.fresh.get_or_insert_with(Default::default);
    }

    /// The lines recorded since the last snapshot published (all of them are in `self`):
    /// what an incremental snapshot holds, and what [`Seen::settle`] forgets once it is
    /// published. Empty without tracking.
    pub fn changed(&self) -> Seen {
        let sets = self.fresh.as_deref().into_iter().flatten();
        Seen {
            sets: sets
                .map(|(k, bits)| {
                    let lines = Lines {
                        bits: bits.clone(),
                        ..Lines::default()
                    };
                    (*k, lines)
                })
                .collect(),
            fresh: None,
        }
    }

    /// A snapshot holding `published` (what [`Seen::changed`] gave when it started) was
    /// published: those lines are no longer new.
    pub fn settle(&mut self, published: &Seen) {
        let Some(fresh) = self.fresh.as_deref_mut() else {
            return;
        };
        for (k, lines) in &published.sets {
            if let Some(bits) = fresh.get_mut(k) {
                *bits -= &lines.bits;
                if bits.is_empty() {
                    fresh.remove(k);
                }
            }
        }
    }

    /// Whether `id` was recorded (never, for a line beyond [`Seen::MAX_LINE`]).
    pub fn contains(&self, id: SeenId) -> bool {
        let Ok(line) = u32::try_from(id.line) else {
            return false;
        };
        self.sets
            .get(&(id.source, id.pass))
            .is_some_and(|s| s.bits.contains(line))
    }

    /// Events recorded, over every set.
    pub fn len(&self) -> u64 {
        self.sets.values().map(|s| s.bits.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.values().all(|s| s.bits.is_empty())
    }

    /// Every set in roaring's portable serialization (run containers where they are
    /// smaller), sorted by (source, pass), for a snapshot.
    pub fn sets(&self) -> Vec<((u64, u32), Vec<u8>)> {
        let mut out: Vec<_> = self
            .sets
            .iter()
            .map(|(k, s)| {
                let mut bits = s.bits.clone();
                bits.optimize();
                let mut bytes = Vec::with_capacity(bits.serialized_size());
                bits.serialize_into(&mut bytes).expect("writing to a Vec");
                (*k, bytes)
            })
            .collect();
        out.sort_unstable_by_key(|s| s.0);
        out
    }

    /// Puts back one set written by [`Seen::sets`] (added to what is there).
    pub fn restore(&mut self, key: (u64, u32), bytes: &[u8]) -> Result<(), RestoreError> {
        let bits = RoaringBitmap::deserialize_from(bytes)?;
        let set = self.sets.entry(key).or_default();
        set.bits |= bits;
        set.compact();
        Ok(())
    }

    /// Bytes held, estimated from the containers' sizes: 8 KiB a plain bitmap, 2 bytes a
    /// line in an array, 4 bytes a run, and the bookkeeping around each. Run containers'
    /// vectors may hold up to twice their runs, which this does not see (the bench counts
    /// the heap: exact for sets of plain bitmaps, twice this for sets of runs).
    pub fn memory_bytes(&self) -> usize {
        let sets = self.sets.values().map(|s| {
            let st = s.bits.statistics();
            // `statistics` counts array capacity in 4-byte units and bitmaps in bits.
            let arrays = st.n_bytes_array_containers / 2;
            let bitmaps = u64::from(st.n_bitset_containers) * 8192;
            let runs = st.n_bytes_run_containers;
            (arrays + bitmaps + runs) as usize + st.n_containers as usize * CONTAINER_BYTES
        });
        sets.sum::<usize>() + self.sets.capacity() * SET_BYTES
    }
}

/// A container's own record in its bitmap (key, store enum) and its heap block's header.
const CONTAINER_BYTES: usize = 48;
/// One (source, pass) entry in the hash table.
const SET_BYTES: usize = 64;

#[cfg(test)]
mod tests;
