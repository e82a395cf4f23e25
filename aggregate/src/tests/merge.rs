//! The merge of a topic's partitions is exact: random events keyed by order id into N
//! partition cores, with the replayer's watermarks given to every partition, merge into
//! what one core fed everything holds: daily totals, customers per day, categories,
//! brands, customers, late events, the watermark and which days are final.

use crate::PurchaseEvent;
use proptest::prelude::*;

use super::super::*;

const NAMES: [&str; 3] = ["electronics.tablet", "appliances.kettle", "acme"];

#[derive(Debug, Clone)]
enum Op {
    Event {
        t: i64,
        order: u64,
        user: Option<u64>,
        cents: i64,
        category: Option<usize>,
        brand: Option<usize>,
    },
    /// The replayer's watermark, to every partition.
    Watermark(i64),
}

fn op() -> impl Strategy<Value = Op> {
    let day = 18_400_i64 * MICROS_PER_DAY;
    prop_oneof![
        8 => (
            0..4 * MICROS_PER_DAY,
            0u64..30,
            proptest::option::of(0u64..10),
            1i64..100_000,
            proptest::option::of(0usize..3),
            proptest::option::of(0usize..3),
        )
            .prop_map(move |(t, order, user, cents, category, brand)| Op::Event {
                t: day + t,
                order,
                user,
                cents,
                category,
                brand,
            }),
        1 => (0..5 * MICROS_PER_DAY).prop_map(move |w| Op::Watermark(day + w)),
    ]
}

fn apply(core: &mut Core, op: &Op) {
    match *op {
        Op::Event {
            t,
            order,
            user,
            cents,
            category,
            brand,
        } => {
            let mut name = |i: Option<usize>| i.map(|i| core.intern_name(NAMES[i]));
            let e = PurchaseEvent {
                event_time_us: t,
                order_id: order,
                product_id: 1,
                category_id: None,
                user_id: user,
                price_cents: cents,
                category: name(category),
                brand: name(brand),
                line: 0,
                offset: 0,
            };
            core.record(&e);
        }
        Op::Watermark(w) => core.advance_watermark(w),
    }
}

/// What the published tables show of a state: per day totals, customers, groups and
/// whether it is final; customers; accepted and late counts; the watermark.
fn published(core: &Core) -> impl PartialEq + std::fmt::Debug {
    let s = core.state();
    let days: Vec<_> = s
        .days
        .iter()
        .map(|d| {
            let mut c = d.categories.clone();
            let mut b = d.brands.clone();
            c.sort();
            b.sort();
            (d.day, d.totals, d.customers, c, b, core.is_final(d.day))
        })
        .collect();
    let mut customers = s.customers.clone();
    customers.sort_unstable_by_key(|c| c.user_id);
    (
        days,
        customers,
        s.accepted,
        s.late,
        s.watermark_us,
        s.max_event_us,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn partitions_keyed_by_order_merge_to_one_core(
        ops in proptest::collection::vec(op(), 0..120),
        n in 1u64..5,
    ) {
        let config = CoreConfig { watermark_from_events: false, ..CoreConfig::default() };
        let mut whole = Core::new(config);
        let part_config = CoreConfig { keep_day_customers: true, ..config };
        let mut parts: Vec<Core> = (0..n).map(|_| Core::new(part_config)).collect();
        for op in &ops {
            apply(&mut whole, op);
            match op {
                Op::Event { order, .. } => apply(&mut parts[(order % n) as usize], op),
                Op::Watermark(_) => parts.iter_mut().for_each(|p| apply(p, op)),
            }
        }
        let marks: Vec<Option<i64>> = parts.iter().map(|p| p.watermark_us()).collect();
        let merged = CoreState::merge(parts.iter().map(Core::state).collect(), merge_watermarks(&marks));
        let merged = Core::restore(config, merged);
        prop_assert_eq!(published(&merged), published(&whole));
    }
}

#[test]
fn a_partition_without_a_watermark_holds_the_merge_back() {
    assert_eq!(merge_watermarks(&[Some(5), Some(3), Some(9)]), Some(3));
    assert_eq!(merge_watermarks(&[Some(5), None]), None);
    assert_eq!(merge_watermarks(&[]), None);
}
