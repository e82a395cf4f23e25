//! Read-only SQL over the latest complete snapshot with DataFusion. Tables:
//! `daily_sales`, `daily_category_sales`, `daily_brand_sales`, `rfm`, and the reference
//! table `rfm_segments`. DDL, DML, COPY and statements are refused before anything runs.
//! `limits.rs` bounds what one statement may cost; `json.rs` gives results to HTTP clients.

mod json;
mod limits;

pub use json::JsonRows;
pub use limits::{Limits, MAX_SERIES_ROWS};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::aggregate::rfm::{self, segment};
use crate::snapshot::view::{self, Cut, Reading};
use crate::snapshot::{self, tables, tables::QUERY_TABLES, Published, SnapshotError};
use crate::snapshot::{Bucket, Location};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("the snapshot {0} has no table {1}")]
    MissingTable(String, String),
    #[error("{0}")]
    Sql(DataFusionError),
    #[error("formatting the result failed: {0}")]
    Format(#[from] ArrowError),
    #[error(transparent)]
    Lake(#[from] crate::lake::LakeError),
    #[error("{0} holds no Delta tables: `run --tables` publishes them")]
    NoTables(String),
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        QueryError::Sql(e)
    }
}

/// The Delta tables at `at`: a folder that is not there has no snapshot, one without
/// `tables/` no tables.
fn lake_at(at: &Location) -> Result<crate::lake::Lake, QueryError> {
    if let Location::Dir(dir) = at {
        if !dir.is_dir() {
            return Err(SnapshotError::None(dir.clone()).into());
        }
        if !dir.join(crate::lake::TABLES_DIR).is_dir() {
            return Err(QueryError::NoTables(dir.display().to_string()));
        }
    }
    Ok(crate::lake::Lake::at(at)?)
}

/// Customers between two results of `rfm` (see [`Session::compare_to`]). Ids compared as
/// decimals: `rfm`'s are unsigned in a snapshot, signed in a Delta table.
const SEGMENT_MOVEMENT: &str = "CREATE VIEW segment_movement AS \
    SELECT COALESCE(t.segment, '(new)') AS from_segment, \
           COALESCE(n.segment, '(gone)') AS to_segment, \
           COUNT(*) AS customers, \
           SUM(COALESCE(t.monetary, CAST(0 AS DECIMAL(18,2)))) AS monetary_then, \
           SUM(COALESCE(n.monetary, CAST(0 AS DECIMAL(18,2)))) AS monetary_now, \
           SUM(COALESCE(n.monetary, CAST(0 AS DECIMAL(18,2))) \
               - COALESCE(t.monetary, CAST(0 AS DECIMAL(18,2)))) AS spent_between \
    FROM rfm n FULL JOIN rfm_then t \
      ON CAST(n.user_id AS DECIMAL(20,0)) = CAST(t.user_id AS DECIMAL(20,0)) \
    GROUP BY 1, 2";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// A session over the latest published snapshot: one for `run`; for `process`, the
/// topic's merged view, or the merge of every partition's latest when no view is usable.
pub struct Session {
    ctx: SessionContext,
    pub parts: Vec<Published>,
    /// When a topic is read through its merged view: the cut it merges.
    pub cut: Option<Cut>,
}

impl Session {
    /// Opens the latest snapshot(s) in `dir` and registers the tables; a topic's merged
    /// view is read when at most [`view::MAX_BEHIND`] behind.
    pub async fn open(dir: &Path) -> Result<Session, QueryError> {
        Self::open_at(&Location::parse(dir)?, view::MAX_BEHIND).await
    }

    /// Opens the latest snapshot(s) at a folder or bucket prefix already parsed; a topic's
    /// merged view is read when its cut is at most `max_behind` behind the partitions'
    /// newest snapshots (see [`view::reading`]).
    pub async fn open_at(at: &Location, max_behind: Duration) -> Result<Session, QueryError> {
        let dir = match at {
            Location::Bucket(bucket) => return Self::open_bucket(bucket, max_behind).await,
            Location::Dir(dir) => dir.as_path(),
        };
        let reading = view::reading(dir, max_behind)?;
        let parts = reading.snapshots();
        let cut = reading.cut().cloned();
        let ctx = SessionContext::new();
        match &reading {
            // A run's incremental snapshot (while it runs, or after it was killed): its
            // chain restored.
            Reading::Files(snapshot) if snapshot.manifest.chain.is_some() => {
                register_restored(&ctx, snapshot)?
            }
            Reading::Files(snapshot) | Reading::View(snapshot, _) => {
                snapshot.readable_alone()?;
                for table in QUERY_TABLES {
                    let path = snapshot.table_path(table).ok_or_else(|| {
                        QueryError::MissingTable(snapshot.path.display().to_string(), table.into())
                    })?;
                    ctx.register_parquet(
                        table,
                        path.to_string_lossy().as_ref(),
                        ParquetReadOptions::default(),
                    )
                    .await?;
                }
            }
            Reading::Merge(topic) => register_merge(&ctx, topic)?,
        }
        ctx.register_table("rfm_segments", Arc::new(segments_table()?))?;
        Ok(Session { ctx, parts, cut })
    }

    /// Registers the query tables of the snapshot a bucket's `LATEST` names, read by
    /// DataFusion from the store directly (nothing is copied to local disk first).
    async fn open_bucket(bucket: &Bucket, max_behind: Duration) -> Result<Session, QueryError> {
        let latest = match snapshot::remote::latest_run(bucket).await {
            Err(SnapshotError::None(_)) => {
                return Self::open_bucket_topic(bucket, max_behind).await
            }
            found => found?,
        };
        latest.verify_format()?;
        let ctx = SessionContext::new();
        let latest = match latest.manifest.chain {
            // An incremental snapshot: fetched with its chain into memory and restored.
            Some(_) => {
                let fetched = snapshot::remote::fetch_good(bucket, &latest).await?;
                register_restored(&ctx, &fetched)?;
                fetched
            }
            None => {
                register_bucket_files(&ctx, bucket, &latest).await?;
                latest
            }
        };
        ctx.register_table("rfm_segments", Arc::new(segments_table()?))?;
        Ok(Session {
            ctx,
            parts: vec![latest],
            cut: None,
        })
    }

    /// The partitions of one topic under `<bucket>/partitions/`: their merged view when
    /// readers may use it, read from the store directly; else each one's latest snapshot
    /// fetched into memory and merged.
    async fn open_bucket_topic(
        bucket: &Bucket,
        max_behind: Duration,
    ) -> Result<Session, QueryError> {
        let Some((set, view)) = view::bucket_set(bucket).await? else {
            return Err(SnapshotError::None(PathBuf::from(&bucket.url)).into());
        };
        let ctx = SessionContext::new();
        let (parts, cut) = match view::usable_view(&set, view, max_behind) {
            Some((view, cut)) => {
                let views = bucket.child(snapshot::VIEW_DIR);
                register_bucket_files(&ctx, &views, &view).await?;
                (vec![view], Some(cut))
            }
            None => {
                let set = snapshot::remote::fetch_set(bucket, set).await?;
                register_merge(&ctx, &set)?;
                (set.parts.into_iter().map(|(_, p)| p).collect(), None)
            }
        };
        ctx.register_table("rfm_segments", Arc::new(segments_table()?))?;
        Ok(Session { ctx, parts, cut })
    }

    /// The four tables as they were at `as_of` in their Delta Lake history (`run --tables`),
    /// each table at its own version for that point (versions move in step: version n of
    /// every table is the n-th result published).
    pub async fn open_as_of(
        at: &Location,
        as_of: &crate::lake::AsOf,
    ) -> Result<Session, QueryError> {
        let lake = lake_at(at)?;
        let ctx = SessionContext::new();
        // Never an answer that mixes two results: tables ahead of the others are read at
        // the result all of them hold.
        let (tables, result) = lake.open_one_result(&QUERY_TABLES, as_of).await?;
        let versions: Vec<u64> = tables.iter().map(|t| t.version().unwrap_or(0)).collect();
        match (result, versions.windows(2).any(|w| w[0] != w[1])) {
            (None, _) => tracing::warn!(
                ?versions,
                "read the tables before their first result: they are empty (a time is a \
                 commit's wall-clock time, not event time)"
            ),
            (Some(result), false) => {
                tracing::info!(result, version = versions[0], "read the tables")
            }
            (Some(result), true) => tracing::info!(
                result,
                ?versions,
                "the tables are out of step: read the newest result all of them hold"
            ),
        }
        for (table, t) in QUERY_TABLES.iter().zip(tables) {
            ctx.register_table(*table, t.table_provider().await?)?;
        }
        ctx.register_table("rfm_segments", Arc::new(segments_table()?))?;
        Ok(Session {
            ctx,
            parts: Vec::new(),
            cut: None,
        })
    }

    /// `rfm` alone, at `version` of its Delta table (a customer's segment over time).
    pub async fn rfm_at_version(
        lake: &crate::lake::Lake,
        version: u64,
    ) -> Result<Session, QueryError> {
        let rfm = crate::snapshot::tables::RFM;
        let t = lake
            .open_as_of(rfm, &crate::lake::AsOf::Version(version))
            .await?;
        let ctx = SessionContext::new();
        ctx.register_table(rfm, t.table_provider().await?)?;
        Ok(Session {
            ctx,
            parts: Vec::new(),
            cut: None,
        })
    }

    /// Adds `rfm_then` (the `rfm` table at `since` in its Delta history) and the view
    /// `segment_movement`: customers by segment then and now (`(new)` for a customer not
    /// there then), how many, and their money then, now and in between. Returns the `rfm`
    /// version compared with.
    pub async fn compare_to(
        &self,
        at: &Location,
        since: &crate::lake::Since,
    ) -> Result<u64, QueryError> {
        use crate::lake::{AsOf, Since};
        let lake = lake_at(at)?;
        let as_of = match since {
            Since::At(a) => a.clone(),
            Since::EventDays(days) => {
                let now = self.latest_purchase("rfm").await?.unwrap_or(i64::MIN);
                let limit = now.saturating_sub(i64::from(*days) * 86_400_000_000);
                AsOf::Version(lake.rfm_version_at_event_time(limit, *days).await?)
            }
        };
        let rfm = crate::snapshot::tables::RFM;
        let then = lake.open_as_of(rfm, &as_of).await?;
        let version = then.version().unwrap_or(0);
        self.ctx
            .register_table("rfm_then", then.table_provider().await?)?;
        self.ctx.sql(SEGMENT_MOVEMENT).await?;
        let later = self.latest_purchase("rfm_then").await? > self.latest_purchase("rfm").await?;
        if later {
            tracing::warn!(
                version,
                "rfm_then is a later result than the one read: customers not in the one read \
                 show as (gone), and spent_between is negative"
            );
        }
        Ok(version)
    }

    /// The latest `last_purchase` in `table` (an `rfm`), microseconds since the epoch.
    async fn latest_purchase(&self, table: &str) -> Result<Option<i64>, QueryError> {
        use datafusion::arrow::array::{Array, Int64Array};
        let sql = format!("SELECT arrow_cast(MAX(last_purchase), 'Int64') FROM {table}");
        let (_, b) = self.sql(&sql).await?;
        Ok(b.first().filter(|b| b.num_rows() == 1).and_then(|b| {
            let a = b.column(0).as_any().downcast_ref::<Int64Array>()?;
            a.is_valid(0).then(|| a.value(0))
        }))
    }

    /// Whether this session merges a topic's partitions (no view read).
    pub fn is_merge(&self) -> bool {
        self.cut.is_none()
            && self
                .parts
                .iter()
                .any(|p| matches!(p.manifest.input, snapshot::InputPosition::Kafka { .. }))
    }

    /// Runs one read-only statement.
    pub async fn sql(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        self.sql_limited(sql, None).await
    }

    /// Runs one read-only statement, keeping at most `limit` rows of its result.
    pub async fn sql_limited(
        &self,
        sql: &str,
        limit: Option<usize>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let mut df = self
            .ctx
            .sql_with_options(sql, read_only())
            .await
            .map_err(read_only_message)?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        if limit.is_some() && !is_explain(&df) {
            df = df.limit(0, limit)?;
        }
        let batches = df.collect().await?;
        Ok((schema, batches))
    }
}

/// Registers the four query tables of `snapshot`, found in `bucket` by
/// [`snapshot::remote::latest`], read by DataFusion from the store directly.
async fn register_bucket_files(
    ctx: &SessionContext,
    bucket: &Bucket,
    snapshot: &Published,
) -> Result<(), QueryError> {
    let name = snapshot
        .path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let manifest = &snapshot.manifest;
    let url = ObjectStoreUrl::parse(format!("s3://{}", bucket.bucket))?;
    ctx.register_object_store(url.as_ref(), bucket.store.clone());
    for table in QUERY_TABLES {
        let file = manifest.tables.get(table).ok_or_else(|| {
            QueryError::MissingTable(format!("{}/{name}", bucket.url), table.into())
        })?;
        let key = bucket.key(&format!("{name}/{}", file.file));
        ctx.register_parquet(
            table,
            bucket.object_url(&key),
            ParquetReadOptions::default(),
        )
        .await?;
    }
    Ok(())
}

/// Registers the four tables of the merge of `topic`'s partition snapshots.
fn register_merge(ctx: &SessionContext, topic: &snapshot::TopicSet) -> Result<(), QueryError> {
    let missing = topic.missing();
    if !missing.is_empty() {
        tracing::warn!(
            partitions = ?missing,
            topic = %topic.topic,
            of = topic.partitions,
            "these partitions have no snapshot yet: their events are missing and no day is final"
        );
    }
    register_core(ctx, &snapshot::load_merged(topic)?)
}

/// Registers the four tables of `run` snapshot `snapshot` restored through its chain (an
/// incremental snapshot's own tables hold only what changed since the one before).
fn register_restored(ctx: &SessionContext, snapshot: &Published) -> Result<(), QueryError> {
    let config = snapshot.manifest.config.core();
    let core = crate::aggregate::Core::restore(config, snapshot::load_state(snapshot)?);
    register_core(ctx, &core)
}

/// Registers the four tables of `core`, scored, in memory.
fn register_core(ctx: &SessionContext, core: &crate::aggregate::Core) -> Result<(), QueryError> {
    let rfm = core.rfm();
    let batches = [
        tables::daily_sales(core)?,
        tables::daily_group_sales(core, false)?,
        tables::daily_group_sales(core, true)?,
        tables::rfm(rfm)?,
    ];
    for (table, batch) in QUERY_TABLES.iter().zip(batches) {
        let mem = MemTable::try_new(batch.schema(), in_pieces(&batch))?;
        ctx.register_table(*table, Arc::new(mem))?;
    }
    Ok(())
}

/// Rows per batch of a table held in memory: what a Parquet file's reader hands out.
const MEMORY_BATCH_ROWS: usize = 8192;

/// `batch` as slices of [`MEMORY_BATCH_ROWS`] (no copy) dealt over as many partitions as
/// DataFusion plans for: operators then stream and account memory a slice at a time, as
/// they do over files. One batch of every row made a sort or an aggregate claim the
/// whole table at once, which a small `--query-memory-limit` refused.
fn in_pieces(batch: &RecordBatch) -> Vec<Vec<RecordBatch>> {
    let partitions = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = vec![Vec::new(); partitions];
    let mut at = 0;
    let mut i = 0;
    while at < batch.num_rows() {
        let n = MEMORY_BATCH_ROWS.min(batch.num_rows() - at);
        out[i % partitions].push(batch.slice(at, n));
        at += n;
        i += 1;
    }
    out
}

/// What a statement may do over a snapshot, for every caller (`query`, the page's
/// workers): read. DDL (`CREATE EXTERNAL TABLE` included), DML (`COPY ... TO`, `INSERT`)
/// and statements (`SET`) are refused before anything runs.
fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// `EXPLAIN [ANALYZE]`: its plan must stay the root, so no row limit goes above it (its
/// answer is a few rows).
fn is_explain(df: &datafusion::dataframe::DataFrame) -> bool {
    use datafusion::logical_expr::LogicalPlan;
    matches!(
        df.logical_plan(),
        LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)
    )
}

/// Says plainly that the query interface is read-only.
fn read_only_message(e: DataFusionError) -> QueryError {
    let text = e.to_string();
    if text.contains("DDL not supported")
        || text.contains("DML not supported")
        || text.contains("Statement not supported")
    {
        QueryError::Sql(DataFusionError::Plan(format!(
            "queries are read-only: only SELECT-style statements run over a snapshot ({})",
            text.trim_start_matches("Error during planning: ")
        )))
    } else {
        QueryError::Sql(e)
    }
}

/// The 125 RFM cells and their segment names, as a table.
fn segments_table() -> Result<MemTable, DataFusionError> {
    let mut cells = Vec::new();
    let mut names = Vec::new();
    for (r, f, m) in rfm::cells() {
        cells.push(format!("{r}{f}{m}"));
        names.push(segment(r, f, m));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("rfm_cell", DataType::Utf8, false),
        Field::new("segment", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(cells)),
            Arc::new(StringArray::from(names)),
        ],
    )?;
    MemTable::try_new(schema, vec![vec![batch]])
}

/// Renders a result as an aligned table, CSV with a header, or a JSON array of objects.
pub fn render(
    schema: SchemaRef,
    batches: &[RecordBatch],
    format: Format,
) -> Result<String, ArrowError> {
    use datafusion::arrow::{csv, json, util::pretty};
    match format {
        Format::Table => {
            Ok(pretty::pretty_format_batches_with_schema(schema, batches)?.to_string() + "\n")
        }
        Format::Csv => {
            let mut out = Vec::new();
            {
                let mut w = csv::WriterBuilder::new().with_header(true).build(&mut out);
                if batches.is_empty() {
                    w.write(&RecordBatch::new_empty(schema))?;
                }
                for b in batches {
                    w.write(b)?;
                }
            }
            Ok(String::from_utf8(out).expect("CSV output is UTF-8"))
        }
        Format::Json => {
            let mut w = json::ArrayWriter::new(Vec::new());
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            let mut out = String::from_utf8(w.into_inner()).expect("JSON output is UTF-8");
            if out.is_empty() {
                out.push_str("[]");
            }
            out.push('\n');
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests;
