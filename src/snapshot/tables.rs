//! The snapshot tables as Arrow: their schemas (the contract in `schemas/tables.sql`) and
//! how the core's state becomes record batches. Money is Decimal128(18,2) built from
//! integer cents, so no float ever touches it.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Int64Array, Int8Array,
    RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;

use crate::aggregate::{Core, Group, Scored, Seen};

pub const DAILY_SALES: &str = "daily_sales";
pub const DAILY_CATEGORY_SALES: &str = "daily_category_sales";
pub const DAILY_BRAND_SALES: &str = "daily_brand_sales";
pub const RFM: &str = "rfm";
/// Raw state kept only so that a processor can resume: open days' distinct sets and
/// the (customer, order) pairs already counted.
pub const STATE_OPEN_SETS: &str = "state_open_sets";
pub const STATE_CUSTOMER_ORDERS: &str = "state_customer_orders";
/// The events a partition has counted (see `aggregate::Seen`), one row per input and pass
/// with its lines as a roaring bitmap: Kafka processors only.
pub const STATE_SEEN: &str = "state_seen";

/// The `scope` values of `state_open_sets`: which distinct set a row belongs to.
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

/// The `rfm` table from the scored columns (moved into the arrays, not copied).
pub fn rfm(s: Scored) -> Result<RecordBatch, ArrowError> {
    let stamp = |v: Vec<i64>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
    };
    let cells = StringArray::from_iter_values((0..s.len()).map(|i| s.cell(i)));
    let segments = StringArray::from_iter_values((0..s.len()).map(|i| s.segment(i)));
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

/// Distinct sets of days that are not final yet: what a resumed processor needs to keep
/// counting distinct orders and customers exactly.
pub fn state_open_sets(core: &Core) -> Result<RecordBatch, ArrowError> {
    let mut rows: Vec<(i32, &'static str, Option<&str>, u64)> = Vec::new();
    for (d, data, is_final) in core.days() {
        // Final days keep their customers only in a core that keeps them for merging.
        rows.extend(data.open_customers().map(|c| (d, scope::CUSTOMER, None, c)));
        if is_final {
            continue;
        }
        rows.extend(data.open_orders().map(|o| (d, scope::ORDER, None, o)));
        for (scope, groups) in [
            (scope::CATEGORY_ORDER, &data.categories),
            (scope::BRAND_ORDER, &data.brands),
        ] {
            for (k, g) in groups {
                let name = k.map(|s| core.name(s));
                rows.extend(g.open_orders().map(|o| (d, scope, name, o)));
            }
        }
    }
    batch(
        STATE_OPEN_SETS,
        vec![
            Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.2))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.3))),
        ],
    )
}

pub fn state_customer_orders(core: &Core) -> Result<RecordBatch, ArrowError> {
    let (users, orders): (Vec<u64>, Vec<u64>) = core.customer_orders().unzip();
    batch(
        STATE_CUSTOMER_ORDERS,
        vec![
            Arc::new(UInt64Array::from(users)),
            Arc::new(UInt64Array::from(orders)),
        ],
    )
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
