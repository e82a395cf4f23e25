//! Per-customer RFM state and its scoring. Scores are quintiles of SQL `PERCENT_RANK()`
//! over every customer in the state (ties share the lower rank), so they stay global
//! however the state was built; the segment comes from `schemas/rfm_segments.csv`.

use std::sync::OnceLock;

use crate::PurchaseEvent;
use rustc_hash::FxHashMap;

use super::day_of;

/// What is kept per customer: enough to score them and to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Customer {
    pub first_us: i64,
    pub last_us: i64,
    /// Distinct orders.
    pub frequency: u64,
    pub monetary_cents: i64,
    pub items: u64,
    pub(super) last_order: Option<u64>,
}

impl Customer {
    pub(super) fn new(t: i64) -> Self {
        Self {
            first_us: t,
            last_us: t,
            frequency: 0,
            monetary_cents: 0,
            items: 0,
            last_order: None,
        }
    }

    pub(super) fn record(&mut self, e: &PurchaseEvent, new_order: bool) {
        self.first_us = self.first_us.min(e.event_time_us);
        self.last_us = self.last_us.max(e.event_time_us);
        self.frequency += u64::from(new_order);
        self.monetary_cents += e.price_cents;
        self.items += 1;
        self.last_order = Some(e.order_id);
    }
}

impl Customer {
    /// Adds another part's record of the same customer (exact when no order spans parts).
    pub fn merge(&mut self, o: &Customer) {
        self.first_us = self.first_us.min(o.first_us);
        self.last_us = self.last_us.max(o.last_us);
        self.frequency += o.frequency;
        self.monetary_cents += o.monetary_cents;
        self.items += o.items;
    }
}

/// Customers per segment, every customer scored against `as_of_day`.
pub fn segment_counts(
    customers: &FxHashMap<u64, Customer>,
    as_of_day: i32,
) -> std::collections::BTreeMap<&'static str, u64> {
    score(customers, as_of_day).segment_counts()
}

/// One customer's row of the `rfm` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RfmRow {
    pub user_id: u64,
    pub customer: Customer,
    pub recency_days: i64,
    pub r: u8,
    pub f: u8,
    pub m: u8,
    pub segment: &'static str,
}

impl RfmRow {
    /// The cell, e.g. "545".
    pub fn cell(&self) -> &'static str {
        cell(self.r, self.f, self.m)
    }
}

/// The text of a cell, e.g. "545".
pub fn cell(r: u8, f: u8, m: u8) -> &'static str {
    static CELLS: OnceLock<Vec<String>> = OnceLock::new();
    let all = CELLS.get_or_init(|| cells().map(|(r, f, m)| format!("{r}{f}{m}")).collect());
    &all[cell_index(r, f, m)]
}

/// Every customer scored, as the columns of the `rfm` table, sorted by user id.
///
/// Columns, not rows: a snapshot of millions of customers reads each customer's state
/// once (one cache miss, in id order), and the columns become the table's arrays without
/// a copy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scored {
    pub user_id: Vec<u64>,
    pub first_us: Vec<i64>,
    pub last_us: Vec<i64>,
    pub frequency: Vec<i64>,
    pub monetary_cents: Vec<i64>,
    pub items: Vec<i64>,
    pub recency_days: Vec<i64>,
    pub r: Vec<i8>,
    pub f: Vec<i8>,
    pub m: Vec<i8>,
}

impl Scored {
    pub fn len(&self) -> usize {
        self.user_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.user_id.is_empty()
    }

    /// The (r, f, m) scores of row `i` (of scored rows only: see [`Scored::is_scored`]).
    pub fn scores(&self, i: usize) -> (u8, u8, u8) {
        assert!(self.is_scored(), "rows not scored have no scores");
        (self.r[i] as u8, self.f[i] as u8, self.m[i] as u8)
    }

    /// The named segment of row `i`.
    pub fn segment(&self, i: usize) -> &'static str {
        let (r, f, m) = self.scores(i);
        segment(r, f, m)
    }

    /// The cell text of row `i`, e.g. "545".
    pub fn cell(&self, i: usize) -> &'static str {
        let (r, f, m) = self.scores(i);
        cell(r, f, m)
    }

    /// Row `i` on its own. Its customer has no `last_order`: the table keeps no order ids.
    pub fn row(&self, i: usize) -> RfmRow {
        let (r, f, m) = self.scores(i);
        RfmRow {
            user_id: self.user_id[i],
            customer: Customer {
                first_us: self.first_us[i],
                last_us: self.last_us[i],
                frequency: self.frequency[i] as u64,
                monetary_cents: self.monetary_cents[i],
                items: self.items[i] as u64,
                last_order: None,
            },
            recency_days: self.recency_days[i],
            r,
            f,
            m,
            segment: segment(r, f, m),
        }
    }

    /// The rows, one by one.
    pub fn rows(&self) -> impl Iterator<Item = RfmRow> + '_ {
        (0..self.len()).map(|i| self.row(i))
    }

    /// Whether the rows carry recency and scores ([`score`]) or only the customers'
    /// state ([`unscored`]).
    pub fn is_scored(&self) -> bool {
        self.r.len() == self.len()
    }

    /// How many customers fall in each segment (none when not scored).
    pub fn segment_counts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        if !self.is_scored() {
            return Default::default();
        }
        let mut per_cell = [0u64; 125];
        for i in 0..self.len() {
            let (r, f, m) = self.scores(i);
            per_cell[cell_index(r, f, m)] += 1;
        }
        let mut counts = std::collections::BTreeMap::new();
        for ((r, f, m), n) in cells().zip(per_cell) {
            if n > 0 {
                *counts.entry(segment(r, f, m)).or_default() += n;
            }
        }
        counts
    }
}

/// Scores every customer against `as_of_day` (days since the epoch, UTC). Rows come
/// sorted by user id.
pub fn score(customers: &FxHashMap<u64, Customer>, as_of_day: i32) -> Scored {
    let mut s = unscored(customers);
    s.recency_days = s
        .last_us
        .iter()
        .map(|&l| i64::from(as_of_day) - i64::from(day_of(l)))
        .collect();
    // Recency ranks by recency_days descending: negate to rank ascending.
    let r = Quintiles::new(s.recency_days.iter().map(|d| -d).collect());
    s.r = s.recency_days.iter().map(|&d| r.score(-d) as i8).collect();
    let f = Quintiles::new(s.frequency.clone());
    s.f = s.frequency.iter().map(|&v| f.score(v) as i8).collect();
    let m = Quintiles::new(s.monetary_cents.clone());
    s.m = s.monetary_cents.iter().map(|&v| m.score(v) as i8).collect();
    s
}

/// Every customer's state as the `rfm` table's columns, sorted by user id, without
/// recency or scores (left empty: see [`Scored::is_scored`]): what an incremental snapshot
/// holds, since scores are global and computed over the whole state once restored.
pub fn unscored(customers: &FxHashMap<u64, Customer>) -> Scored {
    // Sorting 16-byte (id, reference) pairs moves far less memory than sorting rows.
    let mut ids: Vec<(u64, &Customer)> = customers.iter().map(|(&id, c)| (id, c)).collect();
    ids.sort_unstable_by_key(|&(id, _)| id);
    let n = ids.len();
    let mut s = Scored {
        user_id: Vec::with_capacity(n),
        first_us: Vec::with_capacity(n),
        last_us: Vec::with_capacity(n),
        frequency: Vec::with_capacity(n),
        monetary_cents: Vec::with_capacity(n),
        items: Vec::with_capacity(n),
        recency_days: Vec::new(),
        r: Vec::new(),
        f: Vec::new(),
        m: Vec::new(),
    };
    // The one pass that reads the customers (in id order, so each is a cache miss).
    for (user_id, c) in ids {
        s.user_id.push(user_id);
        s.first_us.push(c.first_us);
        s.last_us.push(c.last_us);
        s.frequency.push(c.frequency as i64);
        s.monetary_cents.push(c.monetary_cents);
        s.items.push(c.items as i64);
    }
    s
}

/// The four cut values of one dimension: a value's score is 1 plus the number of cuts it
/// is above. Exactly the quintiles of PERCENT_RANK, without a search per customer.
struct Quintiles {
    /// `cuts[k - 1]` is the b-th smallest value, b = ceil(k (n - 1) / 5): a value has at
    /// least b values strictly below it, that is PERCENT_RANK >= k / 5, exactly when it is
    /// greater than that one. `None` when n <= 1 (every score is 1).
    cuts: Option<[i64; 4]>,
}

impl Quintiles {
    fn new(mut v: Vec<i64>) -> Self {
        if v.len() <= 1 {
            return Self { cuts: None };
        }
        let span = (v.len() - 1) as u64;
        let at = |k: u64| ((k * span).div_ceil(5) - 1) as usize;
        // Four order statistics by selection (linear), not a full sort. Positions are
        // nondecreasing; each selection leaves the larger values to its right.
        let (a, b, c, d) = (at(1), at(2), at(3), at(4));
        let cut2 = *v.select_nth_unstable(b).1;
        let cut1 = if a == b {
            cut2
        } else {
            *v[..b].select_nth_unstable(a).1
        };
        let cut3 = if c == b {
            cut2
        } else {
            *v[b + 1..].select_nth_unstable(c - b - 1).1
        };
        let cut4 = if d == c {
            cut3
        } else {
            *v[c + 1..].select_nth_unstable(d - c - 1).1
        };
        Self {
            cuts: Some([cut1, cut2, cut3, cut4]),
        }
    }

    /// 5 if PERCENT_RANK >= 0.8, 4 if >= 0.6, ... else 1; exact integer arithmetic.
    /// PERCENT_RANK = (values strictly below) / (n - 1), and 0 when n = 1.
    fn score(&self, value: i64) -> u8 {
        match &self.cuts {
            None => 1,
            Some(cuts) => 1 + cuts.iter().filter(|&&c| value > c).count() as u8,
        }
    }
}

const SEGMENTS_CSV: &str = include_str!("../../schemas/rfm_segments.csv");

/// The named segment of a cell; every one of the 125 cells is mapped.
pub fn segment(r: u8, f: u8, m: u8) -> &'static str {
    static TABLE: OnceLock<Vec<&'static str>> = OnceLock::new();
    let table = TABLE.get_or_init(|| parse_segments(SEGMENTS_CSV));
    table[cell_index(r, f, m)]
}

fn cell_index(r: u8, f: u8, m: u8) -> usize {
    assert!((1..=5).contains(&r) && (1..=5).contains(&f) && (1..=5).contains(&m));
    usize::from(r - 1) * 25 + usize::from(f - 1) * 5 + usize::from(m - 1)
}

fn parse_segments(csv: &'static str) -> Vec<&'static str> {
    let mut table = vec![""; 125];
    for line in csv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let (cell, name) = line.split_once(',').expect("cell,segment");
        let d: Vec<u8> = cell.bytes().map(|b| b - b'0').collect();
        table[cell_index(d[0], d[1], d[2])] = name.trim();
    }
    assert!(table.iter().all(|s| !s.is_empty()), "all 125 cells mapped");
    table
}

/// The 125 cells (r, f, m), each score 1 to 5, in the table's order (111, 112, ... 555).
pub fn cells() -> impl Iterator<Item = (u8, u8, u8)> {
    (1..=5u8).flat_map(|r| (1..=5u8).flat_map(move |f| (1..=5u8).map(move |m| (r, f, m))))
}

/// Every segment name, in first-appearance order of the table.
pub fn segment_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for (r, f, m) in cells() {
        let s = segment(r, f, m);
        if !names.contains(&s) {
            names.push(s);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(values: &[i64]) -> Vec<u8> {
        let qs = Quintiles::new(values.to_vec());
        values.iter().map(|&v| qs.score(v)).collect()
    }

    #[test]
    fn quintiles_follow_percent_rank() {
        // n = 6: ranks 0, .2, .4, .6, .8, 1.0
        assert_eq!(q(&[10, 20, 30, 40, 50, 60]), vec![1, 2, 3, 4, 5, 5]);
        // ties share the lower rank: [1,1,1,2] -> ranks 0,0,0,1
        assert_eq!(q(&[1, 1, 1, 2]), vec![1, 1, 1, 5]);
        // n = 5: ranks 0, .25, .5, .75, 1
        assert_eq!(q(&[5, 4, 3, 2, 1]), vec![5, 4, 3, 2, 1]);
        assert_eq!(q(&[7]), vec![1]);
        assert_eq!(q(&[]), Vec::<u8>::new());
    }

    /// The cuts give exactly the score of counting the values below, on many random
    /// vectors with ties.
    #[test]
    fn cuts_equal_the_percent_rank_by_counting() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for n in 0..200usize {
            let spread = 1 + next() % 50;
            let values: Vec<i64> = (0..n).map(|_| (next() % spread) as i64 - 20).collect();
            let by_counting: Vec<u8> = values
                .iter()
                .map(|&v| {
                    if n <= 1 {
                        return 1;
                    }
                    let below = values.iter().filter(|&&x| x < v).count() as u64;
                    let span = (n - 1) as u64;
                    (1..=4u8)
                        .rev()
                        .find(|&k| 5 * below >= u64::from(k) * span)
                        .map_or(1, |k| k + 1)
                })
                .collect();
            assert_eq!(q(&values), by_counting, "{values:?}");
        }
    }

    #[test]
    fn segment_table_matches_the_reference_cells() {
        assert_eq!(segment(5, 5, 5), "Champion");
        assert_eq!(segment(1, 1, 1), "Lost Customers");
        assert_eq!(segment(1, 1, 3), "Cannot Lose Them");
        assert_eq!(segment(3, 3, 5), "Loyal");
        assert_eq!(segment(5, 1, 1), "New Customers");
        assert_eq!(segment(2, 1, 3), "About To Sleep");
        assert_eq!(segment_names().len(), 11);
    }

    /// The contract (`schemas/rfm_segments.csv`, one row per cell) against an independent
    /// statement of the same 125 cells, written the other way round: by segment, as the
    /// published segment table lists them.
    #[test]
    fn segment_table_equals_the_published_cells_by_segment() {
        let published = [
            ("Champion", "445 454 455 544 545 554 555"),
            ("Loyal", "335 344 345 354 355 435 444 543"),
            ("Potential Loyalist", "323 333 341 342 351 352 353 423 431 432 433 441 442 451 452 453 531 532 533 541 542 551 552 553"),
            ("New Customers", "311 411 412 421 422 511 512"),
            ("Promising", "313 314 315 413 414 415 424 425 513 514 515 521 522 523 524 525"),
            ("Need Attention", "324 325 334 343 434 443 534 535"),
            ("About To Sleep", "213 221 231 241 251 312 321 331"),
            ("At Risk", "124 125 133 134 135 142 143 145 152 153 224 225 234 235 242 243 244 245 252 253 254 255"),
            ("Cannot Lose Them", "113 114 115 144 154 155 214 215"),
            ("Hibernating Customers", "122 123 132 211 212 222 223 232 233 322 332"),
            ("Lost Customers", "111 112 121 131 141 151"),
        ];
        let mut stated = std::collections::BTreeMap::new();
        for (name, list) in published {
            for cell in list.split(' ') {
                assert!(
                    stated.insert(cell.to_string(), name).is_none(),
                    "{cell} twice"
                );
            }
        }
        assert_eq!(stated.len(), 125);
        for (r, f, m) in cells() {
            let cell = format!("{r}{f}{m}");
            assert_eq!(segment(r, f, m), stated[&cell], "cell {cell}");
        }
        let mut names = segment_names();
        names.sort_unstable();
        let mut want: Vec<&str> = published.iter().map(|p| p.0).collect();
        want.sort_unstable();
        assert_eq!(names, want);
    }

    #[test]
    fn score_uses_recency_descending_and_global_ranks() {
        let c = |last_day: i64, frequency: u64, cents: i64| Customer {
            first_us: 0,
            last_us: last_day * super::super::MICROS_PER_DAY,
            frequency,
            monetary_cents: cents,
            items: frequency,
            last_order: None,
        };
        let mut map = FxHashMap::default();
        map.insert(1, c(100, 1, 100));
        map.insert(2, c(90, 2, 200));
        map.insert(3, c(80, 3, 300));
        map.insert(4, c(70, 4, 400));
        map.insert(5, c(60, 5, 500));
        map.insert(6, c(100, 1, 100));
        let scored = score(&map, 100);
        let rows: Vec<RfmRow> = scored.rows().collect();
        let got: Vec<(u64, i64, String)> = rows
            .iter()
            .map(|r| (r.user_id, r.recency_days, r.cell().to_string()))
            .collect();
        // recency_days [0,10,20,30,40,0] descending ranks: 40->0, 30->.2, 20->.4, 10->.6, 0->.8
        assert_eq!(
            got,
            vec![
                (1, 0, "511".to_string()),
                (2, 10, "433".to_string()),
                (3, 20, "344".to_string()),
                (4, 30, "255".to_string()),
                (5, 40, "155".to_string()),
                (6, 0, "511".to_string()),
            ]
        );
        assert_eq!(rows[0].segment, "New Customers");
        assert_eq!(rows[4].segment, "Cannot Lose Them");
        assert_eq!(rows[2].customer, map[&3]);
        assert_eq!(scored.segment(4), "Cannot Lose Them");
        assert_eq!(scored.cell(3), "255");
        let counts = scored.segment_counts();
        assert_eq!(counts.values().sum::<u64>(), 6);
        assert_eq!(counts["New Customers"], 2);
    }
}
