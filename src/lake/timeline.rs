//! Which versions of `rfm` show a customer's segment over time (the page's look-up): the
//! event time of every kept version, read once from the log and then only for newer
//! versions, and a few of them spread evenly over the event time the log covers.

use std::collections::BTreeMap;

use super::history::{field, newest_where};
use super::{Lake, LakeError, EVENT_TIME_KEY};

const DAY_US: i64 = 86_400_000_000;

/// The versions of `rfm` known and their results' event times (microseconds).
#[derive(Debug, Default)]
pub struct Timeline {
    known: BTreeMap<u64, i64>,
}

impl Timeline {
    /// Reads the log entries of `rfm` newer than the versions known (every kept one the
    /// first time). `false` when there is no `rfm` table.
    pub async fn refresh(&mut self, lake: &Lake) -> Result<bool, LakeError> {
        let rfm = crate::snapshot::tables::RFM;
        let Some(table) = lake.open(rfm).await? else {
            self.known.clear();
            return Ok(false);
        };
        let newest = table.version().unwrap_or(0);
        // A table created again under the same name: nothing known holds.
        if self.known.keys().next_back().is_some_and(|v| *v > newest) {
            self.known.clear();
        }
        let from = self.known.keys().next_back().map_or(1, |v| v + 1);
        let mut read = Vec::new();
        newest_where(&table, rfm, |version, entry| {
            if version < from {
                return true;
            }
            if let Some(t) = field(entry, "commitInfo", EVENT_TIME_KEY).and_then(|v| v.as_i64()) {
                read.push((version, t));
            }
            false
        })
        .await?;
        self.known.extend(read);
        Ok(true)
    }

    /// A version that could not be read (its files removed by retention): not offered again.
    pub fn forget(&mut self, version: u64) {
        self.known.remove(&version);
    }

    /// At most `max` versions, oldest first: the newest, then the newest at or before each
    /// step back in event time, steps of whole days spreading them over the oldest known.
    pub fn points(&self, max: usize) -> Vec<(u64, i64)> {
        let Some((_, &now)) = self.known.last_key_value() else {
            return Vec::new();
        };
        let oldest = self.known.values().copied().min().unwrap_or(now);
        let gaps = max.saturating_sub(1).max(1) as i64;
        let step = ((now - oldest) / gaps + DAY_US - 1) / DAY_US;
        let step = step.max(1) * DAY_US;
        let mut points: Vec<(u64, i64)> = Vec::new();
        let mut target = now;
        while points.len() < max && target >= oldest {
            let at = self.known.iter().rev().find(|(_, t)| **t <= target);
            if let Some((&v, &t)) = at {
                if points.last().is_none_or(|(last, _)| *last != v) {
                    points.push((v, t));
                }
            }
            target -= step;
        }
        points.reverse();
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(points: &[(u64, i64)]) -> Timeline {
        Timeline {
            known: points.iter().copied().collect(),
        }
    }

    #[test]
    fn points_spread_over_the_event_time_in_whole_days_newest_last() {
        // A version a day for 100 days (event times at noon).
        let days: Vec<(u64, i64)> = (1..=100)
            .map(|v| (v, v as i64 * DAY_US + DAY_US / 2))
            .collect();
        let p = timeline(&days).points(12);
        // 99 days over 11 gaps: steps of 9 days back from version 100.
        let versions: Vec<u64> = p.iter().map(|(v, _)| *v).collect();
        assert_eq!(
            versions,
            vec![1, 10, 19, 28, 37, 46, 55, 64, 73, 82, 91, 100]
        );
        // Fewer versions than asked: each one once.
        assert_eq!(timeline(&days[..3]).points(12).len(), 3);
        // Several versions of one event time: the newest of them.
        let same = timeline(&[(1, DAY_US), (2, DAY_US), (3, 3 * DAY_US)]);
        assert_eq!(same.points(12), vec![(2, DAY_US), (3, 3 * DAY_US)]);
        assert!(Timeline::default().points(12).is_empty());
    }

    #[test]
    fn a_step_is_at_least_a_day() {
        // Versions an hour apart over two days: a point per day at most.
        let hours: Vec<(u64, i64)> = (0..48).map(|h| (h + 1, h as i64 * 3_600_000_000)).collect();
        let p = timeline(&hours).points(12);
        let versions: Vec<u64> = p.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, vec![24, 48]);
    }
}
