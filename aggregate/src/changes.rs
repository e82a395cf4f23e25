//! What changed since the last snapshot published, so that a snapshot can hold only that
//! (an incremental snapshot over a full one). Days carry the epoch they last changed in;
//! customers changed are kept by id with theirs; the (customer, order) pairs counted since
//! are kept in order. Tracking is off unless asked for ([`Core::track_changes`]): a core
//! that is only ever written whole pays nothing.
//!
//! A snapshot copies the state (whole, or what changed) and takes a [`Mark`]; when it is
//! published, [`Core::settle`] forgets what it held. A snapshot given up or failed is not
//! settled, so the next one holds its changes too: a copy of what changed always covers
//! everything since the last snapshot published.

use rustc_hash::{FxHashMap, FxHashSet};

use super::Core;

/// What changed since the last snapshot published, besides the days' own stamps.
#[derive(Debug, Clone, Default)]
pub(crate) struct Changes {
    /// Customers changed, with the epoch of their last change.
    customers: FxHashMap<u64, u32>,
    /// (customer, order) pairs counted, in the order they were.
    pairs: Vec<(u64, u64)>,
}

impl Changes {
    /// Customer `user` changed in `epoch`, counting `order` when it is new to them.
    pub(crate) fn customer(&mut self, user: u64, epoch: u32, order: Option<u64>) {
        self.customers.insert(user, epoch);
        if let Some(order) = order {
            self.pairs.push((user, order));
        }
    }
}

/// Where a snapshot's copy of the state was taken: what [`Core::settle`] forgets once it
/// is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    epoch: u32,
    pairs: usize,
}

impl Core {
    /// Keeps track of what changes from now on (a core restored from a snapshot starts
    /// with nothing changed: its first snapshot should be whole).
    pub fn track_changes(&mut self) {
        self.changes.get_or_insert_with(Default::default);
        // A core made with `Default` (not `Core::new`) stamps its first changes after the
        // epoch nothing is settled at.
        self.epoch = self.epoch.max(self.settled + 1);
    }

    pub fn tracks_changes(&self) -> bool {
        self.changes.is_some()
    }

    /// A snapshot of the whole state starts now: its mark.
    pub fn mark(&mut self) -> Mark {
        let mark = Mark {
            epoch: self.epoch,
            pairs: self.changes.as_ref().map_or(0, |c| c.pairs.len()),
        };
        self.epoch += 1;
        mark
    }

    /// A core holding what changed since the last snapshot published (every changed day
    /// and customer whole, the pairs counted since; event time, watermark and counts as
    /// they are now), and its mark. Without tracking, nothing is known to have changed.
    pub fn changed(&mut self) -> (Core, Mark) {
        let mut part = Core {
            config: self.config,
            names: self.names.clone(),
            max_event_us: self.max_event_us,
            watermark_us: self.watermark_us,
            accepted: self.accepted,
            late: self.late,
            epoch: 1,
            ..Core::default()
        };
        part.days = self
            .days
            .iter()
            .filter(|(_, d)| d.changed > self.settled)
            .map(|(&k, d)| (k, d.clone()))
            .collect();
        part.first_open_day = part.days.keys().copied().find(|&d| !self.is_final(d));
        if let Some(changes) = &self.changes {
            part.customers = changes
                .customers
                .keys()
                .filter_map(|u| Some((*u, *self.customers.get(u)?)))
                .collect();
            part.customer_orders = changes.pairs.iter().copied().collect::<FxHashSet<_>>();
        }
        (part, self.mark())
    }

    /// The snapshot taken at `mark` was published: what it held is no longer a change.
    pub fn settle(&mut self, mark: Mark) {
        self.settled = self.settled.max(mark.epoch);
        if let Some(changes) = &mut self.changes {
            changes.customers.retain(|_, e| *e > mark.epoch);
            changes.pairs.drain(..mark.pairs.min(changes.pairs.len()));
        }
    }
}
