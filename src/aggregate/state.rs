//! Plain-data form of the core's state, for resuming from a snapshot: what the published
//! tables and the raw-state tables hold, with names as strings.

use rustc_hash::{FxHashMap, FxHashSet};

use super::daily::{Day, Group};
use super::rfm::Customer;
use super::{Core, CoreConfig, Totals};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayState {
    pub day: i32,
    pub totals: Totals,
    pub customers: u64,
    pub categories: Vec<(Option<String>, Totals)>,
    pub brands: Vec<(Option<String>, Totals)>,
    /// Distinct sets, only for days that are not final.
    pub open_orders: Vec<u64>,
    pub open_customers: Vec<u64>,
    pub open_category_orders: Vec<(Option<String>, u64)>,
    pub open_brand_orders: Vec<(Option<String>, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerState {
    pub user_id: u64,
    pub first_us: i64,
    pub last_us: i64,
    pub frequency: u64,
    pub monetary_cents: i64,
    pub items: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreState {
    pub max_event_us: Option<i64>,
    pub watermark_us: Option<i64>,
    pub accepted: u64,
    pub late: u64,
    pub days: Vec<DayState>,
    pub customers: Vec<CustomerState>,
    pub customer_orders: Vec<(u64, u64)>,
}

impl Core {
    /// A core that continues exactly where the one that produced `state` stopped.
    pub fn restore(config: CoreConfig, state: CoreState) -> Core {
        let mut core = Core::new(config);
        core.max_event_us = state.max_event_us;
        core.watermark_us = state.watermark_us;
        core.accepted = state.accepted;
        core.late = state.late;
        for d in state.days {
            let mut day = Day::default();
            day.totals = d.totals;
            day.customers = d.customers;
            day.restore_sets(d.open_orders, d.open_customers);
            restore_groups(
                &mut core,
                &mut day.categories,
                d.categories,
                d.open_category_orders,
            );
            restore_groups(&mut core, &mut day.brands, d.brands, d.open_brand_orders);
            core.days.insert(d.day, day);
        }
        core.first_open_day = core.days.keys().copied().find(|&d| !core.is_final(d));
        core.customers = state
            .customers
            .iter()
            .map(|c| {
                let mut customer = Customer::new(c.first_us);
                customer.last_us = c.last_us;
                customer.frequency = c.frequency;
                customer.monetary_cents = c.monetary_cents;
                customer.items = c.items;
                (c.user_id, customer)
            })
            .collect();
        core.customer_orders = state.customer_orders.into_iter().collect::<FxHashSet<_>>();
        core
    }
}

fn restore_groups(
    core: &mut Core,
    groups: &mut FxHashMap<Option<storepulse_replay::Sym>, Group>,
    totals: Vec<(Option<String>, Totals)>,
    open: Vec<(Option<String>, u64)>,
) {
    for (name, t) in totals {
        let key = name.map(|n| core.intern_name(&n));
        groups.entry(key).or_default().totals = t;
    }
    for (name, order) in open {
        let key = name.map(|n| core.intern_name(&n));
        groups.entry(key).or_default().restore_order(order);
    }
}

/// What the merge needs to know of one part's event-time progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartWatermark {
    pub watermark_us: Option<i64>,
    /// The part has accepted at least one event.
    pub has_data: bool,
    /// The part received nothing for the idle timeout when it was snapshotted.
    pub idle: bool,
}

/// The watermark of merged parts: a day is final for the merged tables once every part that
/// has data has passed it. Parts without data do not count, and neither do idle ones while
/// another part is active; when every part with data is idle, the stream has stopped and
/// the most advanced part decides.
pub fn merge_watermarks(parts: &[PartWatermark]) -> Option<i64> {
    let with_data = || parts.iter().filter(|p| p.has_data);
    let active = with_data().filter(|p| !p.idle);
    if active.clone().next().is_some() {
        active.map(|p| p.watermark_us.unwrap_or(i64::MIN)).min()
    } else {
        with_data().filter_map(|p| p.watermark_us).max()
    }
}

impl CoreState {
    /// The state of all `parts` together, for the published tables (not for resuming: the
    /// distinct sets of open days and the counted (customer, order) pairs are left out).
    ///
    /// Exact when every order lives in one part (the replayer keys messages by order id):
    /// then orders per day, category and brand add up, and so do a customer's frequency,
    /// spend and items. Customers per day do not add up (one customer's orders may sit in
    /// two parts), so each part keeps its days' customer sets and the merge counts their
    /// union.
    pub fn merge(parts: Vec<CoreState>, watermark_us: Option<i64>) -> CoreState {
        use std::collections::BTreeMap;
        #[derive(Default)]
        struct MergedDay {
            totals: Totals,
            customers: FxHashSet<u64>,
            categories: BTreeMap<Option<String>, Totals>,
            brands: BTreeMap<Option<String>, Totals>,
        }
        let mut days: BTreeMap<i32, MergedDay> = BTreeMap::new();
        let mut customers: FxHashMap<u64, CustomerState> = FxHashMap::default();
        let mut merged = CoreState {
            watermark_us,
            ..CoreState::default()
        };
        for part in parts {
            merged.max_event_us = merged.max_event_us.max(part.max_event_us);
            merged.accepted += part.accepted;
            merged.late += part.late;
            for d in part.days {
                let m = days.entry(d.day).or_default();
                m.totals.add(&d.totals);
                m.customers.extend(d.open_customers);
                for (name, t) in d.categories {
                    m.categories.entry(name).or_default().add(&t);
                }
                for (name, t) in d.brands {
                    m.brands.entry(name).or_default().add(&t);
                }
            }
            for c in part.customers {
                customers
                    .entry(c.user_id)
                    .and_modify(|m| {
                        m.first_us = m.first_us.min(c.first_us);
                        m.last_us = m.last_us.max(c.last_us);
                        m.frequency += c.frequency;
                        m.monetary_cents += c.monetary_cents;
                        m.items += c.items;
                    })
                    .or_insert(c);
            }
        }
        merged.days = days
            .into_iter()
            .map(|(day, m)| DayState {
                day,
                totals: m.totals,
                customers: m.customers.len() as u64,
                categories: m.categories.into_iter().collect(),
                brands: m.brands.into_iter().collect(),
                ..DayState::default()
            })
            .collect();
        merged.customers = customers.into_values().collect();
        merged
    }
}
