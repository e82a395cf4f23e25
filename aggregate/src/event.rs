//! The compact, typed purchase event the core works on, and the dictionary that turns
//! category codes and brands into small integers. No serialization lives here: the wire
//! format is in the replay crate's `wire.rs`.

use rustc_hash::FxHashMap;

/// An interned string (category code or brand); see [`Dictionary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(pub u32);

/// One unit of one product in one order, validated and repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseEvent {
    /// Event time, microseconds since the Unix epoch, UTC.
    pub event_time_us: i64,
    pub order_id: u64,
    pub product_id: u64,
    pub category_id: Option<u64>,
    /// `None` is an anonymous purchase: counted in sales, not in RFM.
    pub user_id: Option<u64>,
    /// Exact price in cents.
    pub price_cents: i64,
    pub category: Option<Sym>,
    pub brand: Option<Sym>,
    /// Where the event came from: 1-based line number in the input (header = line 1).
    pub line: u64,
    /// Byte offset of the line's first byte in the input file.
    pub offset: u64,
}

/// Interns category codes and brands. Ids are dense and stable for the life of a run.
#[derive(Debug, Clone, Default)]
pub struct Dictionary {
    names: Vec<Box<str>>,
    ids: FxHashMap<Box<str>, u32>,
}

impl Dictionary {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn intern(&mut self, name: &str) -> Sym {
        if let Some(&id) = self.ids.get(name) {
            return Sym(id);
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 distinct names");
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        Sym(id)
    }

    pub fn name(&self, sym: Sym) -> &str {
        &self.names[sym.0 as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Interns every name of `other` here; returns the map from `other`'s ids to ours.
    pub fn absorb(&mut self, other: &Dictionary) -> Vec<Sym> {
        other.names.iter().map(|n| self.intern(n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intern_is_stable_and_absorb_remaps() {
        let mut a = Dictionary::new();
        assert_eq!(a.intern("samsung"), Sym(0));
        assert_eq!(a.intern("apple"), Sym(1));
        assert_eq!(a.intern("samsung"), Sym(0));
        let mut b = Dictionary::new();
        b.intern("apple");
        b.intern("tefal");
        let map = a.absorb(&b);
        assert_eq!(map, vec![Sym(1), Sym(2)]);
        assert_eq!(a.name(Sym(2)), "tefal");
        assert_eq!(a.len(), 3);
    }
}
