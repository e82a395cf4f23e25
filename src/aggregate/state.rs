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
