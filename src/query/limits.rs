//! What one SQL statement may cost inside a session: a memory pool that operators
//! (aggregates, sorts, joins) draw from and spill beyond, a cap on the disk they spill to,
//! no recursive CTEs, no list-valued `range`/`generate_series`, and a bound on the rows a
//! `generate_series`/`range` table may produce. The pool does not see what scalar
//! functions allocate (`repeat('x', 2000000000)`): the store page runs its SQL in a child
//! process with an address-space limit for that (`serve::pool`).

use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, ScalarValue};
use datafusion::error::Result;
use datafusion::execution::disk_manager::DiskManagerBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::{QueryError, Session, QUERY_TABLES};

/// The most rows one `generate_series`/`range` table may produce.
pub const MAX_SERIES_ROWS: u64 = 10_000_000;

/// What one session may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes operators may hold in memory before they spill or fail.
    pub memory_pool: usize,
    /// Bytes of spill files at most.
    pub spill: u64,
    /// Threads an operator splits its work into.
    pub partitions: usize,
}

impl Session {
    /// The same tables in a context that enforces `limits` (the tables' providers are
    /// shared, nothing is read again).
    pub async fn limited(self, limits: Limits) -> Result<Session, QueryError> {
        // The same object stores (a bucket's), for the tables read from them.
        let stores = self.ctx.runtime_env().object_store_registry.clone();
        let ctx = limited_context(limits, stores)?;
        for table in QUERY_TABLES.iter().copied().chain(["rfm_segments"]) {
            ctx.register_table(table, self.ctx.table_provider(table).await?)?;
        }
        Ok(Session {
            ctx,
            parts: self.parts,
        })
    }
}

fn limited_context(
    limits: Limits,
    stores: Arc<dyn datafusion::execution::object_store::ObjectStoreRegistry>,
) -> Result<SessionContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(stores)
        .with_memory_pool(Arc::new(FairSpillPool::new(limits.memory_pool)))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_max_temp_directory_size(limits.spill),
        )
        .build_arc()?;
    let mut config = SessionConfig::new().with_target_partitions(limits.partitions.max(1));
    config.options_mut().execution.enable_recursive_ctes = false;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    // The list-valued forms build one array in memory however long it is; the table
    // forms (`FROM generate_series(...)`) stream and are bounded below.
    for list_valued in ["range", "generate_series", "gen_series"] {
        ctx.deregister_udf(list_valued);
    }
    for name in ["generate_series", "range"] {
        let inner = ctx.table_function(name)?;
        ctx.register_udtf(name, Arc::new(BoundedSeries { name, inner }));
    }
    Ok(ctx)
}

/// A series table function that refuses to produce more than [`MAX_SERIES_ROWS`] rows.
#[derive(Debug)]
struct BoundedSeries {
    name: &'static str,
    inner: Arc<datafusion::catalog::TableFunction>,
}

impl TableFunctionImpl for BoundedSeries {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        if let Some(rows) = series_rows(args.exprs()) {
            if rows > MAX_SERIES_ROWS {
                return plan_err!(
                    "{} would produce {rows} rows; at most {MAX_SERIES_ROWS} are allowed",
                    self.name
                );
            }
        }
        self.inner.function().call_with_args(args)
    }
}

/// An upper bound on the rows of a series with these arguments, when it can be told from
/// literals (`None` leaves the decision to the function, which refuses what it cannot
/// read). Intervals count their months as 28 days, so the bound is never too low.
fn series_rows(exprs: &[Expr]) -> Option<u64> {
    let lit = |i: usize| match exprs.get(i) {
        Some(Expr::Literal(v, _)) => Some(v),
        _ => None,
    };
    let as_i128 = |v: &ScalarValue| -> Option<i128> {
        match v {
            ScalarValue::Int64(Some(n)) => Some(i128::from(*n)),
            ScalarValue::Date32(Some(d)) => Some(i128::from(*d) * 86_400_000_000_000),
            ScalarValue::Date64(Some(ms)) => Some(i128::from(*ms) * 1_000_000),
            ScalarValue::TimestampSecond(Some(t), _) => Some(i128::from(*t) * 1_000_000_000),
            ScalarValue::TimestampMillisecond(Some(t), _) => Some(i128::from(*t) * 1_000_000),
            ScalarValue::TimestampMicrosecond(Some(t), _) => Some(i128::from(*t) * 1_000),
            ScalarValue::TimestampNanosecond(Some(t), _) => Some(i128::from(*t)),
            _ => None,
        }
    };
    let step = |v: &ScalarValue| -> Option<i128> {
        match v {
            ScalarValue::Int64(Some(n)) => Some(i128::from(*n).abs()),
            ScalarValue::IntervalMonthDayNano(Some(i)) => Some(
                ((i128::from(i.months) * 28 + i128::from(i.days)) * 86_400_000_000_000
                    + i128::from(i.nanoseconds))
                .abs(),
            ),
            ScalarValue::IntervalDayTime(Some(i)) => Some(
                ((i128::from(i.days) * 86_400_000 + i128::from(i.milliseconds)) * 1_000_000).abs(),
            ),
            ScalarValue::IntervalYearMonth(Some(m)) => {
                Some(i128::from(*m).abs() * 28 * 86_400_000_000_000)
            }
            _ => None,
        }
    };
    let (start, end, step) = match exprs.len() {
        1 => (0, as_i128(lit(0)?)?, 1),
        2 => (as_i128(lit(0)?)?, as_i128(lit(1)?)?, 1),
        3 => (as_i128(lit(0)?)?, as_i128(lit(1)?)?, step(lit(2)?)?),
        _ => return None,
    };
    if step == 0 {
        return None;
    }
    let rows = (end - start).unsigned_abs() / step.unsigned_abs() + 1;
    Some(u64::try_from(rows).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::lit;

    #[test]
    fn a_series_is_counted_from_its_literals() {
        assert_eq!(series_rows(&[lit(10i64)]), Some(11));
        assert_eq!(
            series_rows(&[lit(1i64), lit(1_000_000_000_000i64)]),
            Some(1_000_000_000_000)
        );
        assert_eq!(series_rows(&[lit(1i64), lit(100i64), lit(10i64)]), Some(10));
        assert_eq!(
            series_rows(&[lit(100i64), lit(1i64), lit(-10i64)]),
            Some(10)
        );
        assert_eq!(series_rows(&[lit(1i64), lit(2i64), lit(0i64)]), None);
    }

    async fn ctx() -> SessionContext {
        let stores = SessionContext::new()
            .runtime_env()
            .object_store_registry
            .clone();
        let limits = Limits {
            memory_pool: 64 << 20,
            spill: 64 << 20,
            partitions: 2,
        };
        limited_context(limits, stores).unwrap()
    }

    async fn run(
        ctx: &SessionContext,
        sql: &str,
    ) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
        ctx.sql(sql).await?.collect().await
    }

    #[tokio::test]
    async fn huge_series_and_recursion_are_refused_and_small_ones_run() {
        let ctx = ctx().await;
        let small = run(&ctx, "SELECT COUNT(*) AS n FROM generate_series(1, 1000)")
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&small)
            .unwrap()
            .to_string();
        assert!(text.contains("1000"), "{text}");
        for sql in [
            "SELECT COUNT(*) FROM generate_series(1, 1000000000000)",
            "SELECT COUNT(*) FROM range(0, 9223372036854775807, 2)",
            "SELECT COUNT(*) FROM generate_series(TIMESTAMP '2020-01-01', TIMESTAMP '2021-01-01', INTERVAL '1 second')",
        ] {
            let e = run(&ctx, sql).await.unwrap_err().to_string();
            assert!(e.contains("at most 10000000"), "{sql}: {e}");
        }
        let days = run(
            &ctx,
            "SELECT COUNT(*) FROM generate_series(DATE '2020-01-01', DATE '2020-12-31', INTERVAL '1 day')",
        )
        .await
        .unwrap();
        assert_eq!(days[0].num_rows(), 1);
        for sql in [
            "SELECT range(1, 1000000000000)",
            "SELECT generate_series(1, 1000000000000)",
        ] {
            assert!(run(&ctx, sql).await.is_err(), "{sql} ran");
        }
        let e = run(
            &ctx,
            "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT COUNT(*) FROM t",
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.to_lowercase().contains("recursive"), "{e}");
    }

    #[tokio::test]
    async fn an_aggregate_beyond_the_pool_fails_with_an_error() {
        let ctx = ctx().await;
        let e = run(
            &ctx,
            "SELECT array_agg(value) FROM generate_series(1, 9000000)",
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("Resources exhausted"), "{e}");
    }
}
