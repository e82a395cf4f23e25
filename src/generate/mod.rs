//! `storepulse generate`: a synthetic purchase log in the `kz.csv` format, calibrated to
//! the published facts about the real one (volumes by month, category and brand mix,
//! share of lines with a customer, heavy-tailed customers) and with its quirks: float
//! notation ids that lose precision, the column shift, 1970 placeholders, repeated lines,
//! missing values, a file order that is not time order, and a few broken lines.
//! Deterministic for a seed.

mod catalog;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use catalog::{
    CATEGORIES, HOURS, ITEMS_ANONYMOUS, ITEMS_CUSTOMER, MONTH_CUSTOMER_LINES, MONTH_LINES,
};

/// Scales the catalogue's typical prices so that the overall median line price lands near
/// the published 55.53 (mean 154.09).
const PRICE_SCALE: f64 = 0.47;

/// Bumped whenever the output for a given seed changes (benchmarks cache files by it).
pub const VERSION: u32 = 2;

pub use storepulse_replay::validate::HEADER;

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenStats {
    pub lines: u64,
    pub bytes: u64,
}

pub fn write_file(path: &Path, rows: u64, seed: u64) -> io::Result<GenStats> {
    let file = File::create(path)?;
    let mut out = CountingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let lines = generate(&mut out, rows, seed)?;
    out.inner.flush()?;
    Ok(GenStats {
        lines,
        bytes: out.bytes,
    })
}

struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W> CountingWriter<W> {
    fn new(inner: W) -> Self {
        Self { inner, bytes: 0 }
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Picks from cumulative weights.
struct Weighted(Vec<f64>);

impl Weighted {
    fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut acc = 0.0;
        Self(
            weights
                .into_iter()
                .map(|w| {
                    acc += w;
                    acc
                })
                .collect(),
        )
    }
    fn pick(&self, rng: &mut SmallRng) -> usize {
        let x = rng.random::<f64>() * self.0.last().copied().unwrap_or(0.0);
        self.0.partition_point(|&c| c <= x).min(self.0.len() - 1)
    }
}

fn normal(rng: &mut SmallRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// 1 + geometric extra items with the given mean.
fn items(rng: &mut SmallRng, mean: f64) -> usize {
    let q = (mean - 1.0) / mean;
    let mut k = 1;
    while k < 40 && rng.random::<f64>() < q {
        k += 1;
    }
    k
}

struct Product {
    id: u64,
    category: usize,
    category_id: u64,
    /// Index into `brands`, or none.
    brand: Option<usize>,
    has_code: bool,
    price_cents: i64,
}

struct Catalogue {
    products: Vec<Product>,
    /// Per category: product indices and their popularity.
    by_category: Vec<(Vec<usize>, Weighted)>,
    category_pick: Weighted,
    brands: Vec<String>,
}

fn catalogue(rng: &mut SmallRng, rows: u64) -> Catalogue {
    let total_products = ((rows as f64 / 105.0) as usize).clamp(300, 25_113);
    let weight_sum: f64 = CATEGORIES.iter().map(|c| c.1).sum();
    let mut brands: Vec<String> = Vec::new();
    let brand_index =
        |name: &str, brands: &mut Vec<String>| match brands.iter().position(|b| b == name) {
            Some(i) => i,
            None => {
                brands.push(name.to_string());
                brands.len() - 1
            }
        };
    let tail_size = (total_products / 44).clamp(20, 560);
    let mut products = Vec::new();
    let mut by_category = Vec::new();
    for (ci, &(code, weight, median)) in CATEGORIES.iter().enumerate() {
        let n = ((total_products as f64 * weight / weight_sum) as usize).max(3);
        let category_id = 2_268_105_000_000_000_000 + rng.random_range(0..999_999_999_999u64);
        let named = catalog::brands_for(code);
        let named_pick = Weighted::new(named.iter().map(|b| b.1));
        let named_share: f64 = named.iter().map(|b| b.1).sum();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let brand = if rng.random::<f64>() < 0.08 {
                None
            } else if rng.random::<f64>() < named_share {
                Some(brand_index(named[named_pick.pick(rng)].0, &mut brands))
            } else {
                Some(brand_index(
                    &catalog::tail_brand(rng.random_range(0..tail_size)),
                    &mut brands,
                ))
            };
            let price = (PRICE_SCALE * median * (0.9 * normal(rng)).exp()).clamp(0.5, 50_925.9);
            ids.push(products.len());
            products.push(Product {
                id: 1_515_966_223_509_000_000 + rng.random_range(0..99_999_999_999u64),
                category: ci,
                category_id,
                brand,
                has_code: rng.random::<f64>() > 0.083,
                price_cents: (price * 100.0).round() as i64,
            });
        }
        // Zipf-like popularity: a few best sellers per category.
        let pop = Weighted::new((0..n).map(|r| 1.0 / (r as f64 + 1.0).powf(0.9)));
        by_category.push((ids, pop));
    }
    Catalogue {
        products,
        by_category,
        category_pick: Weighted::new(CATEGORIES.iter().map(|c| c.1)),
        brands,
    }
}

/// Chance that a customer order comes from a new customer. With the ids that the export
/// wrote two ways (float notation and full integer, read as different customers, as the
/// contract says), this gives about 0.4 customers per line with a customer: the published
/// 233,575 customers over about 550,000 such lines.
const NEW_CUSTOMER: f64 = 0.5;

/// Customers arrive by preferential attachment (a few buy very often, most once).
struct Customers {
    ids: Vec<u64>,
    /// One entry per order placed, naming the customer: picking from it favours
    /// frequent buyers.
    history: Vec<u32>,
    next_id: u64,
}

impl Customers {
    fn pick(&mut self, rng: &mut SmallRng) -> u64 {
        let idx = if self.history.is_empty() || rng.random::<f64>() < NEW_CUSTOMER {
            // Ids are dense, so writing them with 16 significant digits merges a few.
            self.next_id += rng.random_range(1..4000);
            self.ids.push(self.next_id);
            (self.ids.len() - 1) as u32
        } else if rng.random::<f64>() < 0.003 {
            // A handful of corporate buyers order all year round.
            rng.random_range(0..self.ids.len().min(5)) as u32
        } else {
            self.history[rng.random_range(0..self.history.len())]
        };
        self.history.push(idx);
        self.ids[idx as usize]
    }
}

/// Writes the header and `rows` data lines; returns the number of data lines.
pub fn generate<W: Write>(out: &mut W, rows: u64, seed: u64) -> io::Result<u64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let cat = catalogue(&mut rng, rows);
    let month_pick = Weighted::new(MONTH_LINES);
    let hour_pick = Weighted::new(HOURS);
    let mut customers = Customers {
        ids: Vec::new(),
        history: Vec::new(),
        next_id: 1_515_915_625_440_000_000,
    };
    writeln!(out, "{HEADER}")?;

    // Orders are made in time order, then written in blocks whose order is shuffled, with
    // a few orders held back and written days later (a backfill).
    let mut orders: Vec<(i64, Vec<Vec<u8>>)> = Vec::new();
    let mut made = 0u64;
    let first_order = 2_294_359_932_054_536_986u64;
    while made < rows {
        let month = month_pick.pick(&mut rng);
        let t = order_time(&mut rng, month, &hour_pick);
        let anonymous_orders = {
            // convert the month's customer line share into an order share
            let s = MONTH_CUSTOMER_LINES[month];
            1.0 - s * ITEMS_ANONYMOUS / (ITEMS_CUSTOMER + s * (ITEMS_ANONYMOUS - ITEMS_CUSTOMER))
        };
        let user = (rng.random::<f64>() >= anonymous_orders).then(|| customers.pick(&mut rng));
        let n = items(
            &mut rng,
            if user.is_some() {
                ITEMS_CUSTOMER
            } else {
                ITEMS_ANONYMOUS
            },
        );
        let order_id = first_order
            + ((t - 1_578_182_400) as u64) * 3_000_000_000
            + rng.random_range(0..2_999_999_999u64);
        let mut lines = Vec::with_capacity(n);
        let mut product = None;
        for _ in 0..n.min((rows - made) as usize) {
            // Sometimes the same product again: identical lines are quantity.
            if product.is_none() || rng.random::<f64>() > 0.05 {
                let c = cat.category_pick.pick(&mut rng);
                let (ids, pop) = &cat.by_category[c];
                product = Some(ids[pop.pick(&mut rng)]);
            }
            let p = &cat.products[product.expect("picked")];
            lines.push(line(&mut rng, &cat, p, t, order_id, user));
            made += 1;
        }
        orders.push((t, lines));
    }
    orders.sort_by_key(|o| o.0);
    // The file's first order appears twice, as in the real log.
    if let Some(first) = orders.first().cloned() {
        orders.insert(1, first);
    }
    // Keep exactly `rows` lines: trim the newest orders.
    let mut extra = orders
        .iter()
        .map(|o| o.1.len() as u64)
        .sum::<u64>()
        .saturating_sub(rows);
    while extra > 0 {
        let last = orders.last_mut().expect("orders remain");
        last.1.pop();
        extra -= 1;
        if last.1.is_empty() {
            orders.pop();
        }
    }
    let mut written = 0u64;
    let mut held: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
    let mut i = 0;
    let mut block: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut anomalies = Anomalies::new(rows);
    let mut write_order =
        |lines: Vec<Vec<u8>>, rng: &mut SmallRng, out: &mut W| -> io::Result<()> {
            for l in lines {
                let l = anomalies.apply(rng, l, written);
                out.write_all(&l)?;
                out.write_all(b"\n")?;
                written += 1;
            }
            Ok(())
        };
    // Blocks span about half an hour of orders, whatever the file size.
    let per_block = (orders.len() / 320 / 48).max(1);
    while i < orders.len() {
        let take = rng.random_range(1..=2 * per_block).min(orders.len() - i);
        for (_, lines) in orders[i..i + take].iter_mut() {
            let lines = std::mem::take(lines);
            if rng.random::<f64>() < 0.004 {
                held.push((i + take + rng.random_range(500..20_000), lines));
            } else {
                block.push(lines);
            }
        }
        i += take;
        for j in (1..block.len()).rev() {
            block.swap(j, rng.random_range(0..=j));
        }
        for lines in block.drain(..) {
            write_order(lines, &mut rng, out)?;
        }
        let (due, later): (Vec<_>, Vec<_>) = held.drain(..).partition(|h| h.0 <= i);
        held = later;
        for (_, lines) in due {
            write_order(lines, &mut rng, out)?;
        }
    }
    for (_, lines) in held {
        write_order(lines, &mut rng, out)?;
    }
    Ok(written)
}

/// Seconds since the epoch of an order placed in `month` (0 = January 2020).
fn order_time(rng: &mut SmallRng, month: usize, hours: &Weighted) -> i64 {
    const MONTH_START: [i64; 12] = [
        1_577_836_800,
        1_580_515_200,
        1_583_020_800,
        1_585_699_200,
        1_588_291_200,
        1_590_969_600,
        1_593_561_600,
        1_596_240_000,
        1_598_918_400,
        1_601_510_400,
        1_604_188_800,
        1_606_780_800,
    ];
    let (first_day, last_day) = match month {
        0 => (4, 31),  // from 2020-01-05
        10 => (0, 21), // to 2020-11-21
        m => (0, (MONTH_START[m + 1] - MONTH_START[m]) / 86_400),
    };
    let day = rng.random_range(first_day..last_day);
    let hour = hours.pick(rng) as i64;
    MONTH_START[month] + day * 86_400 + hour * 3600 + rng.random_range(0..3600)
}

/// `1.515915625441994e+18`: 16 significant digits, as the real export wrote them.
fn float_notation(v: u64) -> String {
    let s = format!("{:.15e}", v as f64);
    let (mantissa, exp) = s.split_once('e').expect("exponent");
    let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
    format!("{mantissa}e+{exp}")
}

fn line(
    rng: &mut SmallRng,
    cat: &Catalogue,
    p: &Product,
    t: i64,
    order_id: u64,
    user: Option<u64>,
) -> Vec<u8> {
    let time = chrono::DateTime::from_timestamp(t, 0)
        .expect("valid time")
        .format("%Y-%m-%d %H:%M:%S UTC");
    // Prices move a little over the year: a share of lines carries a discount.
    let cents = if rng.random::<f64>() < 0.1 {
        p.price_cents * rng.random_range(80..100) / 100
    } else {
        p.price_cents
    };
    // The export bug: no category id, the price in category_code and the user in brand.
    if rng.random::<f64>() < 0.164 {
        let user = user.map(|u| u.to_string()).unwrap_or_default();
        return format!(
            "{time},{order_id},{},,{},{user},,",
            p.id,
            storepulse_replay::wire::cents_to_decimal(cents)
        )
        .into_bytes();
    }
    let category_id = if rng.random::<f64>() < 0.85 {
        float_notation(p.category_id)
    } else {
        p.category_id.to_string()
    };
    let code = if p.has_code {
        CATEGORIES[p.category].0
    } else {
        ""
    };
    let brand = p.brand.map_or("", |b| cat.brands[b].as_str());
    let user = match user {
        Some(u) if rng.random::<f64>() < 0.9 => float_notation(u),
        Some(u) => u.to_string(),
        None => String::new(),
    };
    format!(
        "{time},{order_id},{},{category_id},{code},{brand},{},{user}",
        p.id,
        storepulse_replay::wire::cents_to_decimal(cents)
    )
    .into_bytes()
}

/// Damage applied to a few written lines: the 1970 placeholder, repeated lines, and a
/// small number of each kind of broken line, so every reject reason occurs.
struct Anomalies {
    /// Line positions (0-based) that get one forced anomaly each.
    forced: Vec<(u64, u8)>,
}

impl Anomalies {
    const KINDS: u8 = 9;

    fn new(rows: u64) -> Self {
        let every = (rows / 20_000).max(1);
        let mut forced = Vec::new();
        if rows >= 200 {
            for k in 0..Self::KINDS {
                // Spread over the file; more of them in larger files.
                for j in 0..every {
                    let at = (rows / (u64::from(Self::KINDS) + 2)) * (u64::from(k) + 1) + j * 7919;
                    forced.push((at % rows, k));
                }
            }
        }
        forced.sort_unstable();
        Self { forced }
    }

    fn apply(&mut self, rng: &mut SmallRng, mut l: Vec<u8>, pos: u64) -> Vec<u8> {
        if rng.random::<f64>() < 0.0075 {
            let comma = l.iter().position(|&c| c == b',').unwrap_or(0);
            let mut v = b"1970-01-01 00:33:40 UTC".to_vec();
            v.extend_from_slice(&l[comma..]);
            l = v;
        }
        if let Ok(i) = self.forced.binary_search_by_key(&pos, |f| f.0) {
            let kind = self.forced[i].1;
            l = damage(l, kind);
        }
        l
    }
}

fn damage(l: Vec<u8>, kind: u8) -> Vec<u8> {
    let text = String::from_utf8(l).expect("generated lines are UTF-8");
    let mut f: Vec<String> = text.split(',').map(str::to_string).collect();
    match kind {
        0 => f[5] = format!("\"{}", f[5]), // quote left open
        1 => {
            f.pop(); // a field missing
        }
        2 => {
            let mut bytes = f.join(",").into_bytes();
            bytes.extend_from_slice(b"\xff\xfe"); // not UTF-8
            return bytes;
        }
        3 => f[0] = "2020-02-30 25:61:00 UTC".into(),
        4 => f[1] = String::new(),
        5 => f[2] = "n/a".into(),
        6 => f[6] = "-".into(),
        7 => {
            f[3] = String::new(); // a shifted line that lost its price too
            f[4] = String::new();
            f[6] = String::new();
            f[7] = String::new();
        }
        _ => f[7] = "guest".into(),
    }
    f.join(",").into_bytes()
}

#[cfg(test)]
mod tests;
