//! The snapshot tables as Arrow: their schemas (the contract in `schemas/tables.sql`) and
//! how the core's state becomes record batches. Money is Decimal128(18,2) built from
//! integer cents, so no float ever touches it.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Int64Array, Int8Array,
    ListBuilder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray, UInt32Array,
    UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;

use crate::aggregate::{Core, Group, Scored, Seen, Sym};

pub const DAILY_SALES: &str = "daily_sales";
pub const DAILY_CATEGORY_SALES: &str = "daily_category_sales";
pub const DAILY_BRAND_SALES: &str = "daily_brand_sales";
pub const RFM: &str = "rfm";
/// Raw state kept only so that a processor can resume: days' distinct customers (open
/// days', and in a Kafka partition every day's), open days' orders with the categories
/// and brands each counted them in, and the (customer, order) pairs already counted.
pub const STATE_OPEN_SETS: &str = "state_open_sets";
pub const STATE_OPEN_ORDERS: &str = "state_open_orders";
pub const STATE_CUSTOMER_ORDERS: &str = "state_customer_orders";
/// The events a partition has counted (see `aggregate::Seen`), one row per input and pass
/// with its lines as a roaring bitmap: Kafka processors only.
pub const STATE_SEEN: &str = "state_seen";

/// The `scope` values of `state_open_sets`: which distinct set a row belongs to. Snapshots
/// of this format hold customers only there (orders are in `state_open_orders`); the
/// order scopes are read from older snapshots.
pub mod scope {
    pub const ORDER: &str = "order";
    pub const CUSTOMER: &str = "customer";
    pub const CATEGORY_ORDER: &str = "category_order";
    pub const BRAND_ORDER: &str = "brand_order";
}

/// The tables a user queries, in display order.
pub const QUERY_TABLES: [&str; 4] = [DAILY_SALES, DAILY_CATEGORY_SALES, DAILY_BRAND_SALES, RFM];

fn money() -> DataType {
    DataType::Decimal128(18, 2)
}

/// A list of category codes or brands, an unknown one null.
fn names() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub fn schema(table: &str) -> SchemaRef {
    let f = Field::new;
    let fields = match table {
        DAILY_SALES => vec![
            f("day", DataType::Date32, false),
            f("revenue", money(), false),
            f("items", DataType::Int64, false),
            f("orders", DataType::Int64, false),
            f("customers", DataType::Int64, false),
            f("is_final", DataType::Boolean, false),
        ],
        DAILY_CATEGORY_SALES | DAILY_BRAND_SALES => vec![
            f("day", DataType::Date32, false),
            f(
                if table == DAILY_BRAND_SALES {
                    "brand"
                } else {
                    "category_code"
                },
                DataType::Utf8,
                true,
            ),
            f("revenue", money(), false),
            f("items", DataType::Int64, false),
            f("orders", DataType::Int64, false),
        ],
        RFM => vec![
            f("user_id", DataType::UInt64, false),
            f("first_purchase", ts(), false),
            f("last_purchase", ts(), false),
            f("frequency", DataType::Int64, false),
            f("monetary", money(), false),
            f("items", DataType::Int64, false),
            f("recency_days", DataType::Int64, false),
            f("r_score", DataType::Int8, false),
            f("f_score", DataType::Int8, false),
            f("m_score", DataType::Int8, false),
            f("rfm_cell", DataType::Utf8, false),
            f("segment", DataType::Utf8, false),
        ],
        STATE_OPEN_SETS => vec![
            f("day", DataType::Date32, false),
            f("scope", DataType::Utf8, false),
            f("key", DataType::Utf8, true),
            f("value", DataType::UInt64, false),
        ],
        STATE_OPEN_ORDERS => vec![
            f("day", DataType::Date32, false),
            f("order_id", DataType::UInt64, false),
            f("category_codes", names(), false),
            f("brands", names(), false),
        ],
        STATE_CUSTOMER_ORDERS => vec![
            f("user_id", DataType::UInt64, false),
            f("order_id", DataType::UInt64, false),
        ],
        STATE_SEEN => vec![
            f("source", DataType::UInt64, false),
            f("pass", DataType::UInt32, false),
            f("bitmap", DataType::Binary, false),
        ],
        other => panic!("unknown table {other}"),
    };
    Arc::new(Schema::new(fields))
}

fn batch(table: &str, columns: Vec<ArrayRef>) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new(schema(table), columns)
}

fn decimal(cents: impl IntoIterator<Item = i64>) -> Result<ArrayRef, ArrowError> {
    let a = Decimal128Array::from_iter_values(cents.into_iter().map(i128::from))
        .with_precision_and_scale(18, 2)?;
    Ok(Arc::new(a))
}

fn i64s(v: impl IntoIterator<Item = u64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(
        v.into_iter().map(|x| x as i64),
    ))
}

pub fn daily_sales(core: &Core) -> Result<RecordBatch, ArrowError> {
    let days: Vec<_> = core.days().collect();
    batch(
        DAILY_SALES,
        vec![
            Arc::new(Date32Array::from_iter_values(days.iter().map(|d| d.0))),
            decimal(days.iter().map(|d| d.1.totals.revenue_cents))?,
            i64s(days.iter().map(|d| d.1.totals.items)),
            i64s(days.iter().map(|d| d.1.totals.orders)),
            i64s(days.iter().map(|d| d.1.customers)),
            Arc::new(BooleanArray::from(
                days.iter().map(|d| d.2).collect::<Vec<_>>(),
            )),
        ],
    )
}

/// Per-category (`brands == false`) or per-brand sales, sorted by day then name
/// (unknown first).
pub fn daily_group_sales(core: &Core, brands: bool) -> Result<RecordBatch, ArrowError> {
    let mut rows: Vec<(i32, Option<&str>, &Group)> = Vec::new();
    for (day, d, _) in core.days() {
        let groups = if brands { &d.brands } else { &d.categories };
        let start = rows.len();
        rows.extend(
            groups
                .iter()
                .map(|(k, g)| (day, k.map(|s| core.name(s)), g)),
        );
        rows[start..].sort_unstable_by(|a, b| a.1.cmp(&b.1));
    }
    let table = if brands {
        DAILY_BRAND_SALES
    } else {
        DAILY_CATEGORY_SALES
    };
    batch(
        table,
        vec![
            Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
            decimal(rows.iter().map(|r| r.2.totals.revenue_cents))?,
            i64s(rows.iter().map(|r| r.2.totals.items)),
            i64s(rows.iter().map(|r| r.2.totals.orders)),
        ],
    )
}

/// The `rfm` table from the scored columns (moved into the arrays, not copied). Rows not
/// scored (an incremental snapshot's: [`Core::rfm_unscored`]) have recency and scores 0
/// and an empty cell and segment.
pub fn rfm(mut s: Scored) -> Result<RecordBatch, ArrowError> {
    let stamp = |v: Vec<i64>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
    };
    let scored = s.is_scored();
    let (cells, segments) = if scored {
        (
            StringArray::from_iter_values((0..s.len()).map(|i| s.cell(i))),
            StringArray::from_iter_values((0..s.len()).map(|i| s.segment(i))),
        )
    } else {
        let n = s.len();
        let blank = || StringArray::from_iter_values((0..n).map(|_| ""));
        s.recency_days = vec![0; n];
        (s.r, s.f, s.m) = (vec![0; n], vec![0; n], vec![0; n]);
        (blank(), blank())
    };
    let monetary = decimal(s.monetary_cents.iter().copied())?;
    batch(
        RFM,
        vec![
            Arc::new(UInt64Array::from(s.user_id)),
            stamp(s.first_us),
            stamp(s.last_us),
            Arc::new(Int64Array::from(s.frequency)),
            monetary,
            Arc::new(Int64Array::from(s.items)),
            Arc::new(Int64Array::from(s.recency_days)),
            Arc::new(Int8Array::from(s.r)),
            Arc::new(Int8Array::from(s.f)),
            Arc::new(Int8Array::from(s.m)),
            Arc::new(cells),
            Arc::new(segments),
        ],
    )
}

/// Days' distinct customers, sorted by day and customer (sorted ids compress to about
/// half): open days', and final days' in a core that keeps them for merging.
pub fn state_open_sets(core: &Core) -> Result<RecordBatch, ArrowError> {
    let mut rows: Vec<(i32, u64)> = Vec::new();
    for (d, data, _) in core.days() {
        let from = rows.len();
        rows.extend(data.open_customers().map(|c| (d, c)));
        rows[from..].sort_unstable();
    }
    batch(
        STATE_OPEN_SETS,
        vec![
            Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|_| scope::CUSTOMER),
            )),
            Arc::new(StringArray::new_null(rows.len())),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
}

/// Open days' distinct orders, one row per (day, order) with the categories and brands
/// that counted it, sorted by day and order: each order id is written once (not once per
/// set it is in), and ascending ids are stored as deltas.
pub fn state_open_orders(core: &Core) -> Result<RecordBatch, ArrowError> {
    const ORDER: u8 = 0;
    const CATEGORY: u8 = 1;
    const BRAND: u8 = 2;
    let mut days = Vec::new();
    let mut orders = Vec::new();
    let mut categories = ListBuilder::new(StringBuilder::new());
    let mut brands = ListBuilder::new(StringBuilder::new());
    let mut entries: Vec<(u64, u8, Option<Sym>)> = Vec::new();
    for (d, data, is_final) in core.days() {
        if is_final {
            continue;
        }
        entries.clear();
        entries.extend(data.open_orders().map(|o| (o, ORDER, None)));
        for (kind, groups) in [(CATEGORY, &data.categories), (BRAND, &data.brands)] {
            for (k, g) in groups {
                entries.extend(g.open_orders().map(|o| (o, kind, *k)));
            }
        }
        entries.sort_unstable();
        for (i, &(order, kind, sym)) in entries.iter().enumerate() {
            // A group's order is always in the day's set too; a row starts at each order.
            if i == 0 || entries[i - 1].0 != order {
                if i > 0 {
                    categories.append(true);
                    brands.append(true);
                }
                days.push(d);
                orders.push(order);
            }
            let name = sym.map(|s| core.name(s));
            match kind {
                CATEGORY => categories.values().append_option(name),
                BRAND => brands.values().append_option(name),
                _ => {}
            }
        }
        if !entries.is_empty() {
            categories.append(true);
            brands.append(true);
        }
    }
    // The builder's list field is `names()`'s (a nullable `item`).
    let list = |mut b: ListBuilder<StringBuilder>| -> ArrayRef { Arc::new(b.finish()) };
    batch(
        STATE_OPEN_ORDERS,
        vec![
            Arc::new(Date32Array::from(days)),
            Arc::new(UInt64Array::from(orders)),
            list(categories),
            list(brands),
        ],
    )
}

/// The (customer, order) pairs counted, sorted (customer ids ascending are stored as
/// deltas), as batches of at most `rows`: each is written and dropped before the next is
/// built, so the sorted pairs are the one full copy held (as the two columns were before
/// they were sorted).
pub fn state_customer_orders(
    core: &Core,
    rows: usize,
) -> impl Iterator<Item = Result<RecordBatch, ArrowError>> {
    let rows = rows.max(1);
    let mut pairs: Vec<(u64, u64)> = core.customer_orders().collect();
    pairs.sort_unstable();
    let chunks = pairs.len().div_ceil(rows).max(1);
    (0..chunks).map(move |i| {
        let chunk = &pairs[(i * rows).min(pairs.len())..((i + 1) * rows).min(pairs.len())];
        batch(
            STATE_CUSTOMER_ORDERS,
            vec![
                Arc::new(UInt64Array::from_iter_values(chunk.iter().map(|p| p.0))),
                Arc::new(UInt64Array::from_iter_values(chunk.iter().map(|p| p.1))),
            ],
        )
    })
}

/// One row per (source, pass): its lines as a roaring bitmap (portable serialization).
pub fn state_seen(seen: &Seen) -> Result<RecordBatch, ArrowError> {
    let sets = seen.sets();
    batch(
        STATE_SEEN,
        vec![
            Arc::new(UInt64Array::from_iter_values(sets.iter().map(|s| s.0 .0))),
            Arc::new(UInt32Array::from_iter_values(sets.iter().map(|s| s.0 .1))),
            Arc::new(BinaryArray::from_iter_values(
                sets.iter().map(|s| s.1.as_slice()),
            )),
        ],
    )
}
