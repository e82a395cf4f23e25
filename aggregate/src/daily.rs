//! One UTC day's sales: totals, and the same per category code and per brand. Distinct
//! orders and customers are kept as sets only while the day is open; a final day keeps
//! just its counts.

use crate::{PurchaseEvent, Sym};
use rustc_hash::{FxHashMap, FxHashSet};

/// Exact sums of a day or a group. Money in cents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Totals {
    pub revenue_cents: i64,
    pub items: u64,
    pub orders: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.revenue_cents += o.revenue_cents;
        self.items += o.items;
        self.orders += o.orders;
    }
}

/// Sales of one category code or brand (`None` = unknown) on one day.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub totals: Totals,
    orders: FxHashSet<u64>,
    last_order: Option<u64>,
}

impl Group {
    fn with_capacity(orders: usize) -> Self {
        Group {
            orders: FxHashSet::with_capacity_and_hasher(orders, Default::default()),
            ..Group::default()
        }
    }

    fn record(&mut self, e: &PurchaseEvent) {
        self.totals.revenue_cents += e.price_cents;
        self.totals.items += 1;
        if self.last_order != Some(e.order_id) {
            self.last_order = Some(e.order_id);
            self.totals.orders += u64::from(self.orders.insert(e.order_id));
        }
    }

    fn finalize(&mut self) {
        self.orders = FxHashSet::default();
        self.last_order = None;
    }

    pub(super) fn restore_order(&mut self, order: u64) {
        self.orders.insert(order);
    }

    fn memory_bytes(&self) -> usize {
        super::table_bytes::<u64>(self.orders.capacity())
    }

    /// Order ids still tracked (empty once the day is final).
    pub fn open_orders(&self) -> impl Iterator<Item = u64> + '_ {
        self.orders.iter().copied()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Day {
    pub totals: Totals,
    /// Distinct non-anonymous customers.
    pub customers: u64,
    orders: FxHashSet<u64>,
    customer_set: FxHashSet<u64>,
    /// (order, customer) of the previous line: the lines of an order usually follow
    /// each other, so most set look-ups can be skipped.
    last: Option<(u64, Option<u64>)>,
    pub categories: FxHashMap<Option<Sym>, Group>,
    pub brands: FxHashMap<Option<Sym>, Group>,
    /// While open, the distinct orders each category and brand had the day before: a
    /// new group's set starts at that size (see [`Day::sized_like`]).
    group_sizes: Option<Box<GroupSizes>>,
    /// The core's epoch when the day last changed (see `changes.rs`).
    pub(super) changed: u32,
}

#[derive(Debug, Clone, Default)]
struct GroupSizes {
    categories: FxHashMap<Option<Sym>, usize>,
    brands: FxHashMap<Option<Sym>, usize>,
}

impl Day {
    /// A new day whose sets start at the sizes `prev` reached: days are alike, and a set
    /// grown from empty to a day's orders is rebuilt a dozen times on the way.
    pub(super) fn sized_like(prev: &Day) -> Day {
        let set = |n: u64| FxHashSet::with_capacity_and_hasher(n as usize, Default::default());
        let sizes = |g: &FxHashMap<Option<Sym>, Group>| {
            g.iter()
                .map(|(k, g)| (*k, g.totals.orders as usize))
                .collect()
        };
        Day {
            orders: set(prev.totals.orders),
            customer_set: set(prev.customers),
            categories: FxHashMap::with_capacity_and_hasher(
                prev.categories.len(),
                Default::default(),
            ),
            brands: FxHashMap::with_capacity_and_hasher(prev.brands.len(), Default::default()),
            group_sizes: Some(Box::new(GroupSizes {
                categories: sizes(&prev.categories),
                brands: sizes(&prev.brands),
            })),
            ..Day::default()
        }
    }

    pub(super) fn record(&mut self, e: &PurchaseEvent) {
        self.totals.revenue_cents += e.price_cents;
        self.totals.items += 1;
        if self.last != Some((e.order_id, e.user_id)) {
            self.last = Some((e.order_id, e.user_id));
            self.totals.orders += u64::from(self.orders.insert(e.order_id));
            if let Some(u) = e.user_id {
                self.customers += u64::from(self.customer_set.insert(u));
            }
        }
        let sizes = self.group_sizes.as_deref();
        let new_group =
            |key: &Option<Sym>, of: fn(&GroupSizes) -> &FxHashMap<Option<Sym>, usize>| {
                let n = sizes.and_then(|s| of(s).get(key)).copied().unwrap_or(0);
                Group::with_capacity(n)
            };
        self.categories
            .entry(e.category)
            .or_insert_with_key(|k| new_group(k, |s| &s.categories))
            .record(e);
        self.brands
            .entry(e.brand)
            .or_insert_with_key(|k| new_group(k, |s| &s.brands))
            .record(e);
    }

    pub(super) fn finalize(&mut self, keep_customers: bool) {
        self.orders = FxHashSet::default();
        if !keep_customers {
            self.customer_set = FxHashSet::default();
        }
        self.last = None;
        self.group_sizes = None;
        self.categories.values_mut().for_each(Group::finalize);
        self.brands.values_mut().for_each(Group::finalize);
    }

    pub fn open_orders(&self) -> impl Iterator<Item = u64> + '_ {
        self.orders.iter().copied()
    }

    /// Estimated heap bytes: the distinct sets and the per-category and per-brand groups.
    pub fn memory_bytes(&self) -> usize {
        use super::table_bytes;
        let groups = |g: &FxHashMap<Option<Sym>, Group>| {
            table_bytes::<(Option<Sym>, Group)>(g.capacity())
                + g.values().map(Group::memory_bytes).sum::<usize>()
        };
        table_bytes::<u64>(self.orders.capacity())
            + table_bytes::<u64>(self.customer_set.capacity())
            + groups(&self.categories)
            + groups(&self.brands)
    }

    pub(super) fn restore_sets(&mut self, orders: Vec<u64>, customers: Vec<u64>) {
        self.orders = orders.into_iter().collect();
        self.customer_set = customers.into_iter().collect();
    }

    /// Distinct customers still tracked: open days', and final days' where the core keeps
    /// them ([`super::CoreConfig::keep_day_customers`]).
    pub fn open_customers(&self) -> impl Iterator<Item = u64> + '_ {
        self.customer_set.iter().copied()
    }
}
