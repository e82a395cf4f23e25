//! Publishing one result (the four tables of one snapshot) as one commit per table.

use std::sync::Arc;

use datafusion::arrow::array::{Array, Date32Array, RecordBatch};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::prelude::{col, lit, SessionContext};
use datafusion::scalar::ScalarValue;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructField, Transaction};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError, TableProperty};

use super::{delta, result_of, Lake, LakeError, APP_ID};
use crate::snapshot::tables::{self, RFM};

/// What one publish did, table by table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// Tables committed, with the version the commit made and the days it replaced
    /// (`None`: the whole table).
    pub committed: Vec<(String, u64, Option<usize>)>,
    /// Tables that already held this result or a newer one.
    pub skipped: Vec<String>,
    /// Data files removed by sweeps (see [`sweep`]).
    pub swept: usize,
    /// The result published (a snapshot's or a merged view's id).
    pub result: u64,
}

/// Commits between two checkpoints of a table's log (Delta's default
/// `delta.checkpointInterval`, set explicitly), and between two sweeps of its files.
pub const CHECKPOINT_EVERY: u64 = 100;

/// Publishes the tables of result `seq`; `tables` holds each table's rows in the
/// snapshot's schema.
pub async fn publish(
    lake: &Lake,
    seq: u64,
    tables: Vec<(&str, Vec<RecordBatch>)>,
) -> Result<Published, LakeError> {
    let mut out = Published {
        result: seq,
        ..Published::default()
    };
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    // Everything that can fail on this result's own content (a table to create, a row that
    // does not fit Delta's types) happens before any table commits, so that such a result
    // leaves every table as it was rather than some of them ahead.
    let mut ready = Vec::new();
    for (name, batches) in tables {
        let table = ensure(lake, name).await?;
        if result_of(&table, name).await? >= Some(seq) {
            out.skipped.push(name.to_string());
            continue;
        }
        ready.push((name, table, to_delta(name, batches)?));
    }
    for (name, table, batches) in ready {
        match commit(&table, name, seq, batches).await {
            Ok((version, days)) => {
                out.committed.push((name.to_string(), version, days));
                if (version + 1) % CHECKPOINT_EVERY == 0 {
                    match sweep(lake, name).await {
                        Ok(n) => out.swept += n,
                        Err(e) => {
                            tracing::warn!(error = %e, "the table's old files stay until the next sweep")
                        }
                    }
                }
            }
            Err(e) => {
                // An error does not mean no commit (a lost answer, a checkpoint that failed
                // after it): the log says.
                let table = lake.open(name).await?;
                match table {
                    Some(t) if result_of(&t, name).await? >= Some(seq) => {
                        out.skipped.push(name.to_string())
                    }
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(out)
}

/// The table, created (empty, version 0) if it does not exist yet. Creation never retries
/// on top of a rival's: the loser of a race loads the winner's table.
async fn ensure(lake: &Lake, name: &str) -> Result<DeltaTable, LakeError> {
    if let Some(t) = lake.open(name).await? {
        return Ok(t);
    }
    let schema = delta_schema(name);
    let retention = format!(
        "interval {} seconds",
        lake.policy.retention.as_secs().max(1)
    );
    let checkpoints = CHECKPOINT_EVERY.to_string();
    let columns = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().try_into_kernel())
        .collect::<Result<Vec<StructField>, _>>()
        .map_err(|e| delta(name, DeltaTableError::from(e)))?;
    let mut create = DeltaTable::new(lake.log_store(name)?)
        .create()
        .with_table_name(name)
        .with_columns(columns)
        .with_save_mode(SaveMode::ErrorIfExists)
        .with_configuration_property(TableProperty::LogRetentionDuration, Some(&retention))
        .with_configuration_property(
            TableProperty::DeletedFileRetentionDuration,
            Some(&retention),
        )
        .with_configuration_property(TableProperty::CheckpointInterval, Some(&checkpoints))
        .with_commit_properties(CommitProperties::default().with_max_retries(0));
    if is_daily(name) {
        create = create.with_partition_columns(["day"]);
    }
    match create.await {
        Ok(t) => Ok(t),
        Err(created) => match lake.open(name).await? {
            Some(t) => Ok(t),
            None => Err(delta(name, created)),
        },
    }
}

fn is_daily(name: &str) -> bool {
    name != RFM
}

/// The snapshot's schema as Delta stores it: Delta has no unsigned integers, so the
/// customer id is a `long` (ids up to 2^63 - 1; a larger one fails the publish, loudly).
fn delta_schema(name: &str) -> SchemaRef {
    let fields: Vec<Field> = tables::schema(name)
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::UInt64 => f.as_ref().clone().with_data_type(DataType::Int64),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn to_delta(name: &str, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, LakeError> {
    let schema = delta_schema(name);
    let checked = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let read = |e: datafusion::arrow::error::ArrowError| LakeError::Read {
        table: name.to_string(),
        message: e.to_string(),
    };
    batches
        .into_iter()
        .map(|b| {
            let columns = schema
                .fields()
                .iter()
                .map(|f| {
                    let c = b.column_by_name(f.name()).ok_or_else(|| LakeError::Read {
                        table: name.to_string(),
                        message: format!("no column {}", f.name()),
                    })?;
                    cast_with_options(c, f.data_type(), &checked).map_err(read)
                })
                .collect::<Result<Vec<_>, _>>()?;
            RecordBatch::try_new(schema.clone(), columns).map_err(read)
        })
        .collect()
}

/// One commit of result `seq` to `table`: `rfm` whole, a daily table's changed days.
/// Returns the version made and how many days it replaced.
async fn commit(
    table: &DeltaTable,
    name: &str,
    seq: i64,
    batches: Vec<RecordBatch>,
) -> Result<(u64, Option<usize>), LakeError> {
    // `rfm`'s commits also record the result's event time (its latest purchase), which
    // `query --compare-to Nd` looks versions up by.
    let event_time = match is_daily(name) {
        true => None,
        false => latest_purchase(&batches),
    };
    let properties = || {
        let mut metadata = vec![("storepulse.result".to_string(), serde_json::json!(seq))];
        if let Some(t) = event_time {
            metadata.push((super::EVENT_TIME_KEY.to_string(), serde_json::json!(t)));
        }
        CommitProperties::default()
            .with_application_transaction(Transaction::new(APP_ID, seq))
            .with_metadata(metadata)
    };
    let (written, days) = if is_daily(name) {
        let (days, rows) = changed_days(table, name, batches).await?;
        let n = days.len();
        let write = table
            .clone()
            .write(rows)
            .with_commit_properties(properties());
        let write = match days.is_empty() {
            // Nothing changed: the commit only records the result.
            true => write.with_save_mode(SaveMode::Append),
            false => write
                .with_save_mode(SaveMode::Overwrite)
                .with_replace_where(
                    col("day").in_list(
                        days.into_iter()
                            .map(|d| lit(ScalarValue::Date32(Some(d))))
                            .collect(),
                        false,
                    ),
                ),
        };
        (write.await, Some(n))
    } else {
        let write = table
            .clone()
            .write(batches)
            .with_save_mode(SaveMode::Overwrite)
            .with_commit_properties(properties());
        (write.await, None)
    };
    let t = written.map_err(|e| delta(name, e))?;
    Ok((t.version().unwrap_or(0), days))
}

/// The days whose rows differ between `batches` and the table's latest version, and the
/// rows of those days (one empty batch when none changed).
async fn changed_days(
    table: &DeltaTable,
    name: &str,
    batches: Vec<RecordBatch>,
) -> Result<(Vec<i32>, Vec<RecordBatch>), LakeError> {
    let schema = delta_schema(name);
    let fail = |e: datafusion::error::DataFusionError| LakeError::Read {
        table: name.to_string(),
        message: e.to_string(),
    };
    let ctx = SessionContext::new();
    let new = MemTable::try_new(schema.clone(), vec![batches]).map_err(fail)?;
    ctx.register_table("new_rows", Arc::new(new))
        .map_err(fail)?;
    let current = table.table_provider().await.map_err(fail)?;
    ctx.register_table("current_rows", current).map_err(fail)?;
    let cols = schema
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT DISTINCT day FROM ( \
           (SELECT {cols} FROM new_rows EXCEPT ALL SELECT {cols} FROM current_rows) \
           UNION ALL \
           (SELECT {cols} FROM current_rows EXCEPT ALL SELECT {cols} FROM new_rows)) \
         ORDER BY day"
    );
    let found = ctx
        .sql(&sql)
        .await
        .map_err(fail)?
        .collect()
        .await
        .map_err(fail)?;
    let mut days = Vec::new();
    for b in &found {
        let d = b
            .column(0)
            .as_any()
            .downcast_ref::<Date32Array>()
            .ok_or_else(|| LakeError::Read {
                table: name.to_string(),
                message: "day is not a date".into(),
            })?;
        days.extend((0..d.len()).filter(|&i| d.is_valid(i)).map(|i| d.value(i)));
    }
    if days.is_empty() {
        return Ok((days, vec![RecordBatch::new_empty(schema)]));
    }
    let rows = ctx
        .table("new_rows")
        .await
        .map_err(fail)?
        .filter(
            col("day").in_list(
                days.iter()
                    .map(|d| lit(ScalarValue::Date32(Some(*d))))
                    .collect(),
                false,
            ),
        )
        .map_err(fail)?
        .collect()
        .await
        .map_err(fail)?;
    Ok((days, rows))
}

/// Removes the table's data files that no version within the retention period reads: those
/// a later commit replaced more than the retention ago, and those of a commit that never
/// landed (a publisher killed between its data files and its log entry). This is Delta's
/// vacuum in its full mode, but without the two log entries delta-rs adds for it, so that
/// version *n* stays the *n*-th result. Run after every [`CHECKPOINT_EVERY`]-th commit,
/// when the log's own cleanup (after each checkpoint) has dropped entries past the
/// retention too.
async fn sweep(lake: &Lake, name: &str) -> Result<usize, LakeError> {
    let Some(table) = lake.open(name).await? else {
        return Ok(0);
    };
    let retention =
        chrono::Duration::from_std(lake.policy.retention).unwrap_or(chrono::Duration::MAX);
    let (table, plan) = table
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .with_mode(VacuumMode::Full)
        .with_dry_run(true)
        .await
        .map_err(|e| delta(name, e))?;
    use object_store::ObjectStoreExt as _;
    let store = table.log_store().object_store(None);
    let mut removed = 0;
    for file in plan.files_deleted {
        match store
            .delete(&object_store::path::Path::from(file.as_str()))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
            Err(e) => return Err(delta(name, DeltaTableError::from(e))),
        }
    }
    tracing::info!(table = name, removed, "old data files swept");
    Ok(removed)
}

/// The latest `last_purchase` of `rfm` rows, in microseconds since the epoch.
fn latest_purchase(batches: &[RecordBatch]) -> Option<i64> {
    use datafusion::arrow::array::TimestampMicrosecondArray;
    batches
        .iter()
        .filter_map(|b| {
            b.column_by_name("last_purchase")?
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .and_then(datafusion::arrow::compute::max)
        })
        .max()
}
