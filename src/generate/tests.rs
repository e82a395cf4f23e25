use std::collections::HashMap;

use storepulse_replay::{read_all, ReaderConfig, RejectReason};

use super::*;

fn make(rows: u64, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let n = generate(&mut out, rows, seed).unwrap();
    assert_eq!(n, rows);
    out
}

#[test]
fn same_seed_same_file_other_seed_other_file() {
    assert_eq!(make(3000, 7), make(3000, 7));
    assert_ne!(make(3000, 7), make(3000, 8));
}

#[test]
fn float_notation_keeps_sixteen_digits_like_the_export() {
    assert_eq!(
        float_notation(1_515_915_625_441_994_067),
        "1.515915625441994e+18"
    );
    assert_eq!(
        float_notation(2_268_105_426_648_170_900),
        "2.268105426648171e+18"
    );
    assert_eq!(float_notation(1_000_000_000_000_000_000), "1e+18");
}

/// The generated file follows the published shape of the real log, within tolerances.
#[test]
fn calibrated_to_the_published_facts() {
    let data = make(120_000, 2020);
    let text = String::from_utf8_lossy(&data);
    let lines: Vec<&str> = text.lines().skip(1).collect();
    let n = lines.len() as f64;
    let share = |pred: &dyn Fn(&[&str]) -> bool| {
        lines
            .iter()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() == 8 && pred(f))
            .count() as f64
            / n
    };
    let shifted = share(&|f| f[3].is_empty() && f[6].is_empty() && f[7].is_empty());
    assert!((0.15..0.18).contains(&shifted), "shifted share {shifted}");
    let placeholder = share(&|f| f[0] == "1970-01-01 00:33:40 UTC");
    assert!(
        (0.005..0.01).contains(&placeholder),
        "placeholder share {placeholder}"
    );
    let float_users = share(&|f| f[7].contains("e+18"));
    assert!(float_users > 0.1, "float-notation user ids {float_users}");

    let all = read_all(data.as_slice(), &ReaderConfig::default()).unwrap();
    let s = all.stats;
    assert_eq!(s.records, 120_000);
    assert_eq!(s.records, s.accepted + s.rejected.total());
    // Every reason the reader can give (late events are the core's).
    for reason in RejectReason::ALL
        .into_iter()
        .filter(|r| *r != RejectReason::LateEvent)
    {
        assert!(s.rejected.get(reason) > 0, "no {reason} lines");
    }
    let repaired = s.repaired as f64 / n;
    assert!((0.15..0.18).contains(&repaired), "repaired {repaired}");

    let ev = &all.events;
    let with_user = ev.iter().filter(|e| e.user_id.is_some()).count() as f64 / ev.len() as f64;
    assert!(
        (0.17..0.26).contains(&with_user),
        "lines with a customer {with_user}"
    );
    let orders: std::collections::HashSet<u64> = ev.iter().map(|e| e.order_id).collect();
    let per_order = ev.len() as f64 / orders.len() as f64;
    assert!(
        (1.65..2.05).contains(&per_order),
        "lines per order {per_order}"
    );

    let top = |key: &dyn Fn(&storepulse_replay::PurchaseEvent) -> Option<String>| {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for e in ev {
            if let Some(k) = key(e) {
                *counts.entry(k).or_default() += 1;
            }
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    };
    let cats = top(&|e| e.category.map(|c| all.dict.name(c).to_string()));
    assert_eq!(cats[0].0, "electronics.smartphone");
    let brands = top(&|e| e.brand.map(|b| all.dict.name(b).to_string()));
    assert_eq!(brands[0].0, "samsung");
    let top5: Vec<&str> = brands[..6].iter().map(|b| b.0.as_str()).collect();
    for b in ["ava", "tefal", "apple"] {
        assert!(top5.contains(&b), "{b} not among top brands {top5:?}");
    }
    let months = top(&|e| {
        chrono::DateTime::from_timestamp_micros(e.event_time_us).map(|t| t.format("%m").to_string())
    });
    assert_eq!(months[0].0, "06", "June is the largest month: {months:?}");

    let mut prices: Vec<i64> = ev.iter().map(|e| e.price_cents).collect();
    prices.sort_unstable();
    let median = prices[prices.len() / 2] as f64 / 100.0;
    let mean = prices.iter().sum::<i64>() as f64 / prices.len() as f64 / 100.0;
    assert!((35.0..80.0).contains(&median), "median price {median}");
    assert!((110.0..200.0).contains(&mean), "mean price {mean}");

    // Heavy-tailed customers: most bought once, a few very often.
    let mut per_customer: HashMap<u64, std::collections::HashSet<u64>> = HashMap::new();
    for e in ev {
        if let Some(u) = e.user_id {
            per_customer.entry(u).or_default().insert(e.order_id);
        }
    }
    let once =
        per_customer.values().filter(|o| o.len() == 1).count() as f64 / per_customer.len() as f64;
    assert!(
        (0.45..0.75).contains(&once),
        "customers who bought once {once}"
    );
    let max_orders = per_customer.values().map(|o| o.len()).max().unwrap();
    assert!(
        max_orders >= 30,
        "heaviest customer has {max_orders} orders"
    );
}

#[test]
fn file_order_is_not_time_order() {
    let data = make(20_000, 3);
    let all = read_all(data.as_slice(), &ReaderConfig::default()).unwrap();
    let backwards = all
        .events
        .windows(2)
        .filter(|w| w[1].event_time_us < w[0].event_time_us)
        .count();
    assert!(backwards > 1000, "only {backwards} steps back in time");
    // Most disorder is local (within an hour); a few lines arrive days late.
    let mut max_seen = all.events[0].event_time_us;
    let mut late_by_day = 0;
    for e in &all.events {
        if max_seen - e.event_time_us > 86_400_000_000 {
            late_by_day += 1;
        }
        max_seen = max_seen.max(e.event_time_us);
    }
    assert!(
        late_by_day > 0 && late_by_day < 400,
        "{late_by_day} lines a day late"
    );
}
