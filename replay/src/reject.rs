//! Why a line was not accepted. Every non-blank input line ends up either as an event or as
//! exactly one of these reasons; the reasons are a closed set so that metrics, summaries and
//! the dead-letter file all agree on their names.

use std::fmt;

/// The reason a line was rejected, in the order the reader checks them
/// (`LateEvent` is decided later, by the aggregate core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    MalformedRow,
    InvalidEventTime,
    EventTimeOutOfRange,
    InvalidOrderId,
    InvalidProductId,
    MissingPrice,
    InvalidPrice,
    InvalidUserId,
    LateEvent,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::MalformedRow,
        RejectReason::InvalidEventTime,
        RejectReason::EventTimeOutOfRange,
        RejectReason::InvalidOrderId,
        RejectReason::InvalidProductId,
        RejectReason::MissingPrice,
        RejectReason::InvalidPrice,
        RejectReason::InvalidUserId,
        RejectReason::LateEvent,
    ];

    /// The stable name used in summaries, metrics labels and `rejected.csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedRow => "malformed_row",
            RejectReason::InvalidEventTime => "invalid_event_time",
            RejectReason::EventTimeOutOfRange => "event_time_out_of_range",
            RejectReason::InvalidOrderId => "invalid_order_id",
            RejectReason::InvalidProductId => "invalid_product_id",
            RejectReason::MissingPrice => "missing_price",
            RejectReason::InvalidPrice => "invalid_price",
            RejectReason::InvalidUserId => "invalid_user_id",
            RejectReason::LateEvent => "late_event",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Option<RejectReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts per reason, indexed by [`RejectReason::index`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectCounts(pub [u64; RejectReason::ALL.len()]);

impl RejectCounts {
    pub fn add(&mut self, reason: RejectReason, n: u64) {
        self.0[reason.index()] += n;
    }
    pub fn get(&self, reason: RejectReason) -> u64 {
        self.0[reason.index()]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    pub fn merge(&mut self, other: &RejectCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
    /// Non-zero reasons with their counts, in check order.
    pub fn iter(&self) -> impl Iterator<Item = (RejectReason, u64)> + '_ {
        RejectReason::ALL
            .into_iter()
            .map(|r| (r, self.get(r)))
            .filter(|(_, n)| *n > 0)
    }
}

/// A rejected input line, kept verbatim for the dead-letter file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based line number in the input file (the header is line 1).
    pub line: u64,
    pub reason: RejectReason,
    /// The original bytes of the line, without its line terminator.
    pub text: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::from_name(r.as_str()), Some(r));
        }
        assert_eq!(RejectReason::from_name("nope"), None);
        assert_eq!(RejectReason::LateEvent.index(), 8);
    }

    #[test]
    fn counts_merge_and_total() {
        let mut a = RejectCounts::default();
        a.add(RejectReason::MissingPrice, 2);
        let mut b = RejectCounts::default();
        b.add(RejectReason::MissingPrice, 1);
        b.add(RejectReason::MalformedRow, 4);
        a.merge(&b);
        assert_eq!(a.get(RejectReason::MissingPrice), 3);
        assert_eq!(a.total(), 7);
        let listed: Vec<_> = a.iter().collect();
        assert_eq!(
            listed,
            vec![
                (RejectReason::MalformedRow, 4),
                (RejectReason::MissingPrice, 3)
            ]
        );
    }
}
