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

impl Core {
    /// The plain-data form of the state: what [`Core::restore`] takes back (sorted, so two
    /// equal states compare equal).
    pub fn state(&self) -> CoreState {
        let name = |k: &Option<crate::Sym>| k.map(|s| self.name(s).to_string());
        let groups = |g: &FxHashMap<Option<crate::Sym>, Group>| {
            let mut totals: Vec<(Option<String>, Totals)> =
                g.iter().map(|(k, g)| (name(k), g.totals)).collect();
            let mut open: Vec<(Option<String>, u64)> = g
                .iter()
                .flat_map(|(k, g)| g.open_orders().map(move |o| (name(k), o)))
                .collect();
            totals.sort();
            open.sort();
            (totals, open)
        };
        let sorted = |it: &mut dyn Iterator<Item = u64>| {
            let mut v: Vec<u64> = it.collect();
            v.sort_unstable();
            v
        };
        let days = self
            .days
            .iter()
            .map(|(&day, d)| {
                let (categories, open_category_orders) = groups(&d.categories);
                let (brands, open_brand_orders) = groups(&d.brands);
                DayState {
                    day,
                    totals: d.totals,
                    customers: d.customers,
                    categories,
                    brands,
                    open_orders: sorted(&mut d.open_orders()),
                    open_customers: sorted(&mut d.open_customers()),
                    open_category_orders,
                    open_brand_orders,
                }
            })
            .collect();
        let mut customers: Vec<CustomerState> = self
            .customers
            .iter()
            .map(|(&user_id, c)| CustomerState {
                user_id,
                first_us: c.first_us,
                last_us: c.last_us,
                frequency: c.frequency,
                monetary_cents: c.monetary_cents,
                items: c.items,
            })
            .collect();
        customers.sort_unstable_by_key(|c| c.user_id);
        let mut customer_orders: Vec<(u64, u64)> = self.customer_orders.iter().copied().collect();
        customer_orders.sort_unstable();
        CoreState {
            max_event_us: self.max_event_us,
            watermark_us: self.watermark_us,
            accepted: self.accepted,
            late: self.late,
            days,
            customers,
            customer_orders,
        }
    }
}

impl CoreState {
    /// Applies incremental snapshots' states (copies of what changed, see
    /// [`Core::changed`]) in order: their days and customers replace
    /// these, their counted pairs are added, and event time, watermark and counts become
    /// the last one's. Applying a copy that holds more than changed (a superset) gives the
    /// same state. One pass over this state however many are applied.
    pub fn apply_all(&mut self, deltas: Vec<CoreState>) {
        use std::collections::BTreeMap;
        if deltas.is_empty() {
            return;
        }
        let mut days: BTreeMap<i32, DayState> = std::mem::take(&mut self.days)
            .into_iter()
            .map(|d| (d.day, d))
            .collect();
        for delta in deltas {
            self.max_event_us = delta.max_event_us;
            self.watermark_us = delta.watermark_us;
            self.accepted = delta.accepted;
            self.late = delta.late;
            days.extend(delta.days.into_iter().map(|d| (d.day, d)));
            self.customers.extend(delta.customers);
            self.customer_orders.extend(delta.customer_orders);
        }
        self.days = days.into_values().collect();
        // A stable sort keeps a customer's entries in the order applied, so the last one
        // of each is the newest; each snapshot's are sorted already (its `rfm` table is),
        // and the sort merges such runs in linear time.
        self.customers.sort_by_key(|c| c.user_id);
        let newest =
            |c: &[CustomerState], i: usize| c.get(i + 1).is_none_or(|n| n.user_id != c[i].user_id);
        let mut kept = 0;
        for i in 0..self.customers.len() {
            if newest(&self.customers, i) {
                self.customers[kept] = self.customers[i];
                kept += 1;
            }
        }
        self.customers.truncate(kept);
        self.customer_orders.sort();
        self.customer_orders.dedup();
    }
}

fn restore_groups(
    core: &mut Core,
    groups: &mut FxHashMap<Option<crate::Sym>, Group>,
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

/// The watermark of a topic's partitions merged: the lowest of them, and none while any
/// partition has none (one without a snapshot counts as none). A day is final in the merged
/// tables only once every partition has passed it; a partition rejects events of its final
/// days, so such a day stays final with the same numbers, whatever arrives later.
pub fn merge_watermarks(per_partition: &[Option<i64>]) -> Option<i64> {
    per_partition
        .iter()
        .copied()
        .collect::<Option<Vec<i64>>>()?
        .into_iter()
        .min()
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
