use crate::{PurchaseEvent, Sym};
use proptest::prelude::*;

use super::*;

const H: i64 = 3_600_000_000;
const D: i64 = MICROS_PER_DAY;
/// 2020-06-01 00:00:00 UTC
const JUNE1: i64 = 1_590_969_600_000_000;

pub(crate) use crate::testing::ev;

fn core() -> Core {
    let mut c = Core::new(CoreConfig::default());
    assert_eq!(c.intern_name("electronics.smartphone"), Sym(0));
    assert_eq!(c.intern_name("samsung"), Sym(1));
    c
}

#[test]
fn daily_totals_count_distinct_orders_and_customers() {
    let mut c = core();
    for e in [
        ev(JUNE1 + H, 10, Some(1), 10_000, Some(0), Some(1)),
        ev(JUNE1 + H, 10, Some(1), 10_000, Some(0), Some(1)), // identical line: 2 units
        ev(JUNE1 + 2 * H, 11, None, 5_55, None, None),
        ev(JUNE1 + 3 * H, 12, Some(2), 1_01, Some(0), None),
        ev(JUNE1 + 4 * H, 10, Some(1), 50, None, Some(1)), // order 10 again, later
    ] {
        assert_eq!(c.record(&e), Outcome::Accepted);
    }
    c.finish();
    let days: Vec<_> = c.days().collect();
    assert_eq!(days.len(), 1);
    let (day, d, is_final) = days[0];
    assert_eq!(day, 18_414); // 2020-06-01
    assert!(is_final);
    assert_eq!(
        d.totals,
        Totals {
            revenue_cents: 20_706,
            items: 5,
            orders: 3
        }
    );
    assert_eq!(d.customers, 2);
    let phone = &d.categories[&Some(Sym(0))].totals;
    assert_eq!(
        (phone.revenue_cents, phone.items, phone.orders),
        (20_101, 3, 2)
    );
    let unknown = &d.categories[&None].totals;
    assert_eq!(
        (unknown.revenue_cents, unknown.items, unknown.orders),
        (6_05, 2, 2)
    );
    let samsung = &d.brands[&Some(Sym(1))].totals;
    assert_eq!(
        (samsung.revenue_cents, samsung.items, samsung.orders),
        (20_050, 3, 1)
    );

    let c1 = c.customers()[&1];
    assert_eq!((c1.frequency, c1.monetary_cents, c1.items), (1, 20_050, 3));
    assert_eq!((c1.first_us, c1.last_us), (JUNE1 + H, JUNE1 + 4 * H));
    assert_eq!(c.customers().len(), 2);
    assert_eq!(c.accepted(), 5);
}

#[test]
fn watermark_finalizes_days_and_late_events_change_nothing() {
    let mut c = core();
    c.record(&ev(JUNE1 + 10 * H, 1, Some(7), 100, None, None));
    // Next day, 00:30: watermark = 23:30 of June 1 -> June 1 still open.
    c.record(&ev(JUNE1 + D + H / 2, 2, Some(7), 100, None, None));
    assert!(!c.is_final(day_of(JUNE1)));
    assert_eq!(
        c.record(&ev(JUNE1 + 23 * H, 3, Some(7), 100, None, None)),
        Outcome::Accepted
    );
    // 01:00 of June 2: watermark reaches midnight -> June 1 final.
    c.record(&ev(JUNE1 + D + H, 4, None, 100, None, None));
    assert!(c.is_final(day_of(JUNE1)));
    let before: Vec<_> = c.days().map(|(d, day, f)| (d, day.totals, f)).collect();
    let cust = c.customers()[&7];
    assert_eq!(
        c.record(&ev(JUNE1 + 23 * H, 5, Some(7), 999, None, None)),
        Outcome::Late
    );
    assert_eq!(c.late(), 1);
    let after: Vec<_> = c.days().map(|(d, day, f)| (d, day.totals, f)).collect();
    assert_eq!(before, after);
    assert_eq!(c.customers()[&7], cust, "late events do not touch RFM");
    assert_eq!(c.watermark_us(), Some(JUNE1 + D));
}

#[test]
fn allowed_lateness_keeps_a_day_open_longer() {
    let mut c = Core::new(CoreConfig {
        max_out_of_orderness_us: H,
        allowed_lateness_us: 2 * H,
        ..CoreConfig::default()
    });
    c.record(&ev(JUNE1 + D + 2 * H, 1, None, 100, None, None)); // wm = June 2 01:00
    assert!(!c.is_final(day_of(JUNE1)));
    assert_eq!(
        c.record(&ev(JUNE1 + 5 * H, 2, None, 100, None, None)),
        Outcome::Accepted
    );
    c.record(&ev(JUNE1 + D + 3 * H, 3, None, 100, None, None)); // wm = 02:00
    assert!(c.is_final(day_of(JUNE1)));
    assert_eq!(
        c.record(&ev(JUNE1 + 5 * H, 4, None, 100, None, None)),
        Outcome::Late
    );
}

#[test]
fn recency_is_measured_from_the_highest_event_time() {
    let mut c = core();
    c.record(&ev(JUNE1 + H, 1, Some(1), 100, None, None));
    c.record(&ev(JUNE1 + 10 * D + 23 * H, 2, Some(2), 100, None, None));
    c.finish();
    let rows = c.rfm();
    assert_eq!(
        rows.rows().map(|r| r.recency_days).collect::<Vec<_>>(),
        vec![10, 0]
    );
}

#[test]
fn empty_core_has_no_rows() {
    let mut c = core();
    c.finish();
    assert_eq!(c.days().count(), 0);
    assert!(c.rfm().is_empty());
    assert_eq!(c.max_event_us(), None);
}

/// A core fed `events` one at a time, and the positions of the late ones.
fn one_by_one(events: &[PurchaseEvent]) -> (Core, Vec<usize>) {
    let mut one = core();
    let late = events
        .iter()
        .enumerate()
        .filter(|(_, e)| one.record(e) == Outcome::Late)
        .map(|(i, _)| i)
        .collect();
    (one, late)
}

type OpenSets = Vec<(i32, bool, Vec<u64>, Vec<u64>, Vec<(Option<Sym>, Vec<u64>)>)>;

/// Each day's finality and the distinct sets it still keeps, sorted.
fn open_sets(c: &Core) -> OpenSets {
    let sorted = |it: &mut dyn Iterator<Item = u64>| {
        let mut v: Vec<u64> = it.collect();
        v.sort_unstable();
        v
    };
    c.days()
        .map(|(d, day, is_final)| {
            let mut groups: Vec<(Option<Sym>, Vec<u64>)> = day
                .categories
                .iter()
                .chain(&day.brands)
                .map(|(k, g)| (*k, sorted(&mut g.open_orders())))
                .collect();
            groups.sort();
            (
                d,
                is_final,
                sorted(&mut day.open_orders()),
                sorted(&mut day.open_customers()),
                groups,
            )
        })
        .collect()
}

type GroupRows = Vec<(Option<Sym>, Totals)>;
type DayRow = (i32, Totals, u64, GroupRows, GroupRows);

/// Everything observable about a finished core, for comparisons.
fn observe(c: &Core) -> (Vec<DayRow>, Vec<String>) {
    let days = c
        .days()
        .map(|(d, day, _)| {
            let mut cats: Vec<_> = day.categories.iter().map(|(k, g)| (*k, g.totals)).collect();
            cats.sort_by_key(|x| x.0);
            let mut brands: Vec<_> = day.brands.iter().map(|(k, g)| (*k, g.totals)).collect();
            brands.sort_by_key(|x| x.0);
            (d, day.totals, day.customers, cats, brands)
        })
        .collect();
    let rfm = c
        .rfm()
        .rows()
        .map(|r| {
            let c = &r.customer;
            format!(
                "{} {} {} {} {} {} {} {} {}",
                r.user_id,
                c.first_us,
                c.last_us,
                c.frequency,
                c.monetary_cents,
                c.items,
                r.recency_days,
                r.cell(),
                r.segment
            )
        })
        .collect();
    (days, rfm)
}

prop_compose! {
    fn events()(specs in prop::collection::vec(
        (0i64..(20 * 24), 0i64..3600, 0u64..40, prop::option::of(0u64..15), 0i64..100_000, prop::option::of(0u32..2), prop::option::of(0u32..2)),
        1..300,
    )) -> Vec<PurchaseEvent> {
        let mut v: Vec<PurchaseEvent> = specs
            .into_iter()
            .map(|(hour, sec, order, user, cents, cat, brand)| {
                // An order belongs to one customer, as in the real log.
                let user = user.map(|_| order % 15);
                ev(JUNE1 + hour * H + sec * 1_000_000, order, user, cents, cat, brand)
            })
            .collect();
        v.sort_by_key(|e| e.event_time_us);
        v
    }
}

/// `events` in the order they arrive when each is delayed by the next of `delays`.
fn delayed(events: &[PurchaseEvent], delays: &[i64]) -> Vec<PurchaseEvent> {
    let mut arrivals: Vec<(i64, PurchaseEvent)> = events
        .iter()
        .zip(delays.iter().cycle())
        .map(|(e, d)| (e.event_time_us + d, *e))
        .collect();
    arrivals.sort_by_key(|x| x.0);
    arrivals.into_iter().map(|x| x.1).collect()
}

proptest! {
    /// Results do not depend on arrival order as long as disorder stays within the
    /// out-of-orderness bound (each event arrives before the stream has moved more than
    /// one hour past it).
    #[test]
    fn arrival_order_within_the_bound_does_not_matter(
        sorted in events(),
        keys in prop::collection::vec(0i64..H, 300),
    ) {
        // Shuffle by sorting on event time plus a random delay below the bound.
        let shuffled = delayed(&sorted, &keys);
        let mut in_order = core();
        let mut disordered = core();
        for e in &sorted {
            prop_assert_eq!(in_order.record(e), Outcome::Accepted);
        }
        for e in &shuffled {
            prop_assert_eq!(disordered.record(e), Outcome::Accepted);
        }
        in_order.finish();
        disordered.finish();
        prop_assert_eq!(observe(&in_order), observe(&disordered));
    }
}

proptest! {
    /// Recording in batches (windows and customers on two threads) gives exactly what
    /// recording one by one gives, late events included: arrival order here is arbitrary,
    /// so many events arrive after their day is final.
    #[test]
    fn batches_record_exactly_as_single_events(
        events in events(),
        keys in prop::collection::vec(0i64..(3 * D), 300),
        batch in 1usize..50,
    ) {
        let shuffled = delayed(&events, &keys);
        let (mut one, late_one) = one_by_one(&shuffled);
        let mut batched = core();
        let mut late_batched = Vec::new();
        for (n, chunk) in shuffled.chunks(batch).enumerate() {
            late_batched.extend(batched.record_batch(chunk).into_iter().map(|i| n * batch + i));
        }
        prop_assert_eq!(&late_one, &late_batched);
        prop_assert_eq!(one.late(), batched.late());
        prop_assert_eq!(one.accepted(), batched.accepted());
        prop_assert_eq!(one.watermark_us(), batched.watermark_us());
        prop_assert_eq!(one.customer_order_count(), batched.customer_order_count());
        prop_assert_eq!(one.max_event_us(), batched.max_event_us());
        // Before the end, open days keep the same distinct sets and final days none.
        prop_assert_eq!(open_sets(&one), open_sets(&batched));
        prop_assert_eq!(observe(&one), observe(&batched));
        one.finish();
        batched.finish();
        prop_assert_eq!(observe(&one), observe(&batched));
    }
}

/// A batch of thousands of events in long runs of one day, out of order within their
/// days and some late, ends in the same state as one-by-one recording.
#[test]
fn long_day_runs_record_exactly_as_single_events() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let events: Vec<PurchaseEvent> = (0..20_000u64)
        .map(|i| {
            // Three days in order, each event up to two hours early or late.
            let t = JUNE1 + (i as i64) * 12_960_000 + next(4 * H as u64) as i64 - 2 * H;
            let order = i / 3 + next(2);
            let user = (next(10) > 0).then(|| next(2_000));
            let cat = (next(8) > 0).then(|| next(2) as u32);
            let brand = (next(8) > 0).then(|| next(2) as u32);
            ev(t, order, user, next(100_000) as i64, cat, brand)
        })
        .collect();
    let (one, late_one) = one_by_one(&events);
    let mut batched = core();
    let late_batched = batched.record_batch(&events);
    assert!(!late_one.is_empty());
    assert_eq!(late_one, late_batched);
    assert_eq!(one.accepted(), batched.accepted());
    assert_eq!(open_sets(&one), open_sets(&batched));
    assert_eq!(observe(&one), observe(&batched));
}

mod changes;
mod merge;
