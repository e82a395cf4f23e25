//! Reads a published snapshot back into the core's plain-data state, so that a processor
//! can resume from it exactly.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    Date32Type, Decimal128Type, Int64Type, TimestampMicrosecondType, UInt32Type, UInt64Type,
};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use storepulse_replay::RejectReason;

use super::{tables, Published, SnapshotError, TableSource, TopicSet};
use crate::aggregate::{Core, CoreConfig, CoreState, CustomerState, DayState, Seen, Totals};

fn read(snapshot: &Published, table: &str) -> Result<Vec<RecordBatch>, SnapshotError> {
    let (path, source) = snapshot.table_source(table)?;
    let damaged = |e: &dyn std::fmt::Display| SnapshotError::Damaged {
        path: path.clone(),
        what: format!("not readable as Parquet: {e}"),
    };
    let reader = match source {
        TableSource::File(f) => ParquetRecordBatchReaderBuilder::try_new(f).and_then(|b| b.build()),
        TableSource::Bytes(b) => {
            ParquetRecordBatchReaderBuilder::try_new(b).and_then(|b| b.build())
        }
    };
    reader
        .map_err(|e| damaged(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| damaged(&e))
}

fn totals(b: &RecordBatch, row: usize, first: usize) -> Totals {
    Totals {
        revenue_cents: b.column(first).as_primitive::<Decimal128Type>().value(row) as i64,
        items: b.column(first + 1).as_primitive::<Int64Type>().value(row) as u64,
        orders: b.column(first + 2).as_primitive::<Int64Type>().value(row) as u64,
    }
}

fn name(b: &RecordBatch, col: usize, row: usize) -> Option<String> {
    let a = b.column(col).as_string::<i32>();
    (!a.is_null(row)).then(|| a.value(row).to_string())
}

/// The state a snapshot holds: for an incremental one, its base's with each snapshot of the
/// chain applied in order. The snapshots are verified first (format, tables, schemas), so
/// a damaged or foreign one, or a broken chain, is an error naming the file, never a panic.
pub fn load_state(snapshot: &Published) -> Result<CoreState, SnapshotError> {
    load_chain(snapshot, false).map(|(state, _)| state)
}

/// [`load_state`] of a Kafka partition's snapshot, and the event ids it has counted (for
/// an incremental one, those of every snapshot of its chain), the chain found and verified
/// once.
pub fn load_with_seen(snapshot: &Published) -> Result<(CoreState, Seen), SnapshotError> {
    load_chain(snapshot, true)
}

/// The state of `snapshot` through its chain, and with `with_seen` its event ids.
fn load_chain(snapshot: &Published, with_seen: bool) -> Result<(CoreState, Seen), SnapshotError> {
    let chain = snapshot.chain()?;
    let mut states = Vec::with_capacity(chain.len());
    let mut seen = Seen::default();
    for part in &chain {
        part.verify_one()?;
        states.push(load_one(part)?);
        if with_seen {
            load_seen_one(part, &mut seen)?;
        }
    }
    let mut state = states.remove(0);
    state.apply_all(states);
    Ok((state, seen))
}

/// The state one snapshot's own tables hold (for an incremental one, what changed).
fn load_one(snapshot: &Published) -> Result<CoreState, SnapshotError> {
    let m = &snapshot.manifest;
    let mut days: BTreeMap<i32, DayState> = BTreeMap::new();
    for b in read(snapshot, tables::DAILY_SALES)? {
        let day = b.column(0).as_primitive::<Date32Type>();
        let customers = b.column(4).as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            let d = days.entry(day.value(r)).or_default();
            d.day = day.value(r);
            d.totals = totals(&b, r, 1);
            d.customers = customers.value(r) as u64;
        }
    }
    for (table, brands) in [
        (tables::DAILY_CATEGORY_SALES, false),
        (tables::DAILY_BRAND_SALES, true),
    ] {
        for b in read(snapshot, table)? {
            let day = b.column(0).as_primitive::<Date32Type>();
            for r in 0..b.num_rows() {
                let d = days.entry(day.value(r)).or_default();
                let group = (name(&b, 1, r), totals(&b, r, 2));
                if brands {
                    d.brands.push(group);
                } else {
                    d.categories.push(group);
                }
            }
        }
    }
    for b in read(snapshot, tables::STATE_OPEN_SETS)? {
        let day = b.column(0).as_primitive::<Date32Type>();
        let scope = b.column(1).as_string::<i32>();
        let value = b.column(3).as_primitive::<UInt64Type>();
        for r in 0..b.num_rows() {
            let d = days.entry(day.value(r)).or_default();
            let v = value.value(r);
            match scope.value(r) {
                tables::scope::ORDER => d.open_orders.push(v),
                tables::scope::CUSTOMER => d.open_customers.push(v),
                tables::scope::CATEGORY_ORDER => d.open_category_orders.push((name(&b, 2, r), v)),
                tables::scope::BRAND_ORDER => d.open_brand_orders.push((name(&b, 2, r), v)),
                other => {
                    return Err(SnapshotError::Damaged {
                        path: snapshot.path.clone(),
                        what: format!("{} has an unknown scope `{other}`", tables::STATE_OPEN_SETS),
                    })
                }
            }
        }
    }
    if snapshot.table_path(tables::STATE_OPEN_ORDERS).is_some() {
        for b in read(snapshot, tables::STATE_OPEN_ORDERS)? {
            let day = b.column(0).as_primitive::<Date32Type>();
            let order = b.column(1).as_primitive::<UInt64Type>();
            let (categories, brands) = (b.column(2).as_list::<i32>(), b.column(3).as_list::<i32>());
            for r in 0..b.num_rows() {
                let d = days.entry(day.value(r)).or_default();
                let o = order.value(r);
                d.open_orders.push(o);
                for (list, to) in [
                    (categories, &mut d.open_category_orders),
                    (brands, &mut d.open_brand_orders),
                ] {
                    let names = list.value(r);
                    let names = names.as_string::<i32>();
                    to.extend(names.iter().map(|n| (n.map(str::to_string), o)));
                }
            }
        }
    }
    let mut customers = Vec::new();
    for b in read(snapshot, tables::RFM)? {
        let user = b.column(0).as_primitive::<UInt64Type>();
        let first = b.column(1).as_primitive::<TimestampMicrosecondType>();
        let last = b.column(2).as_primitive::<TimestampMicrosecondType>();
        let frequency = b.column(3).as_primitive::<Int64Type>();
        let monetary = b.column(4).as_primitive::<Decimal128Type>();
        let items = b.column(5).as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            customers.push(CustomerState {
                user_id: user.value(r),
                first_us: first.value(r),
                last_us: last.value(r),
                frequency: frequency.value(r) as u64,
                monetary_cents: monetary.value(r) as i64,
                items: items.value(r) as u64,
            });
        }
    }
    let mut customer_orders = Vec::new();
    for b in read(snapshot, tables::STATE_CUSTOMER_ORDERS)? {
        let user = b.column(0).as_primitive::<UInt64Type>();
        let order = b.column(1).as_primitive::<UInt64Type>();
        customer_orders.extend((0..b.num_rows()).map(|r| (user.value(r), order.value(r))));
    }
    Ok(CoreState {
        max_event_us: m.as_of_us,
        watermark_us: m.watermark_us,
        accepted: m.counts.accepted,
        late: m
            .counts
            .rejected
            .get(RejectReason::LateEvent.as_str())
            .copied()
            .unwrap_or(0),
        days: days.into_values().collect(),
        customers,
        customer_orders,
    })
}

/// The event ids one snapshot's own table holds, added to `seen` (none for a `run`'s).
fn load_seen_one(snapshot: &Published, seen: &mut Seen) -> Result<(), SnapshotError> {
    if snapshot.table_path(tables::STATE_SEEN).is_none() {
        return Ok(());
    }
    for b in read(snapshot, tables::STATE_SEEN)? {
        let source = b.column(0).as_primitive::<UInt64Type>();
        let pass = b.column(1).as_primitive::<UInt32Type>();
        let bitmap = b.column(2).as_binary::<i32>();
        for r in 0..b.num_rows() {
            let key = (source.value(r), pass.value(r));
            seen.restore(key, bitmap.value(r))
                .map_err(|e| SnapshotError::Damaged {
                    path: snapshot.path.clone(),
                    what: format!("{} row {r}: {e}", tables::STATE_SEEN),
                })?;
        }
    }
    Ok(())
}

/// One core holding the merged state of a topic's partitions, for the published tables;
/// see `CoreState::merge` for why the merge is exact. Its watermark is the set's: no day is
/// final while a partition has no snapshot or has not passed it.
pub fn load_merged(set: &TopicSet) -> Result<Core, SnapshotError> {
    use rayon::prelude::*;
    // Partitions are read and their chains applied side by side.
    let states = set
        .parts
        .par_iter()
        .map(|(_, p)| load_state(p))
        .collect::<Result<Vec<_>, _>>()?;
    let config = set
        .parts
        .first()
        .map_or_else(CoreConfig::default, |(_, p)| p.manifest.config.core());
    Ok(Core::restore(
        config,
        CoreState::merge(states, set.watermark()),
    ))
}
