//! Test support for this crate's tests and its dependents' (feature `testing`).

use crate::{PurchaseEvent, Sym};

/// A purchase event for tests: one unit of product 1, at line 0.
pub fn ev(
    t: i64,
    order: u64,
    user: Option<u64>,
    cents: i64,
    cat: Option<u32>,
    brand: Option<u32>,
) -> PurchaseEvent {
    PurchaseEvent {
        event_time_us: t,
        order_id: order,
        product_id: 1,
        category_id: None,
        user_id: user,
        price_cents: cents,
        category: cat.map(Sym),
        brand: brand.map(Sym),
        line: 0,
        offset: 0,
    }
}
