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
    /// How far behind a topic's merged view may be and still be read.
    pub max_behind: std::time::Duration,
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
            cut: self.cut,
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
        match series_rows(args.exprs()) {
            Series::Rows(rows) if rows > MAX_SERIES_ROWS => {
                return plan_err!(
                    "{} would produce {rows} rows; at most {MAX_SERIES_ROWS} are allowed",
                    self.name
                )
            }
            Series::Unbounded => {
                return plan_err!(
                    "{} with this step cannot be bounded: an interval whose months, days and \
                     time do not all move the same way may not advance (INTERVAL '1 month \
                     -28 days' from February 1 never does); give a step that always moves",
                    self.name
                )
            }
            _ => {}
        }
        self.inner.function().call_with_args(args)
    }
}

/// What the literals of a series say about its length.
#[derive(Debug, PartialEq, Eq)]
enum Series {
    /// At most this many rows.
    Rows(u64),
    /// A step that may not advance: the series could be endless.
    Unbounded,
    /// Not told by literals: the function decides (and refuses what it cannot read).
    Unknown,
}

const NANOS_PER_HOUR: i128 = 3_600_000_000_000;
const NANOS_PER_DAY: i128 = 24 * NANOS_PER_HOUR;

/// The least and the most an interval step can move a time, in nanoseconds: a month is
/// 28 to 31 days, a day 23 to 25 hours (a time zone's daylight-saving change).
fn interval_span(months: i128, days: i128, nanos: i128) -> (i128, i128) {
    let range = |n: i128, short: i128, long: i128| match n >= 0 {
        true => (n * short, n * long),
        false => (n * long, n * short),
    };
    let m = range(months, 28 * NANOS_PER_DAY, 31 * NANOS_PER_DAY);
    let d = range(
        days,
        NANOS_PER_DAY - NANOS_PER_HOUR,
        NANOS_PER_DAY + NANOS_PER_HOUR,
    );
    (m.0 + d.0 + nanos, m.1 + d.1 + nanos)
}

/// An upper bound on the rows of a series with these arguments, when it can be told from
/// literals. An interval step counts as the least it can move, so the bound is never too
/// low; a step that may move by nothing (or either way) cannot be bounded.
fn series_rows(exprs: &[Expr]) -> Series {
    let lit = |i: usize| match exprs.get(i) {
        Some(Expr::Literal(v, _)) => Some(v),
        _ => None,
    };
    let as_i128 = |v: &ScalarValue| -> Option<i128> {
        match v {
            ScalarValue::Int64(Some(n)) => Some(i128::from(*n)),
            ScalarValue::Date32(Some(d)) => Some(i128::from(*d) * NANOS_PER_DAY),
            ScalarValue::Date64(Some(ms)) => Some(i128::from(*ms) * 1_000_000),
            ScalarValue::TimestampSecond(Some(t), _) => Some(i128::from(*t) * 1_000_000_000),
            ScalarValue::TimestampMillisecond(Some(t), _) => Some(i128::from(*t) * 1_000_000),
            ScalarValue::TimestampMicrosecond(Some(t), _) => Some(i128::from(*t) * 1_000),
            ScalarValue::TimestampNanosecond(Some(t), _) => Some(i128::from(*t)),
            _ => None,
        }
    };
    // The least a step moves, or `Err` when it may not move at all.
    let step = |v: &ScalarValue| -> Option<Result<i128, ()>> {
        let (lo, hi) = match v {
            ScalarValue::Int64(Some(n)) => (i128::from(*n), i128::from(*n)),
            ScalarValue::IntervalMonthDayNano(Some(i)) => interval_span(
                i128::from(i.months),
                i128::from(i.days),
                i128::from(i.nanoseconds),
            ),
            ScalarValue::IntervalDayTime(Some(i)) => interval_span(
                0,
                i128::from(i.days),
                i128::from(i.milliseconds) * 1_000_000,
            ),
            ScalarValue::IntervalYearMonth(Some(m)) => interval_span(i128::from(*m), 0, 0),
            _ => return None,
        };
        Some(match (lo > 0, hi < 0) {
            (true, _) => Ok(lo),
            (_, true) => Ok(-hi),
            _ => Err(()),
        })
    };
    let parsed = match exprs.len() {
        1 => lit(0).and_then(as_i128).map(|end| (0, end, Ok(1))),
        2 => lit(0)
            .and_then(as_i128)
            .zip(lit(1).and_then(as_i128))
            .map(|(a, b)| (a, b, Ok(1))),
        3 => lit(0)
            .and_then(as_i128)
            .zip(lit(1).and_then(as_i128))
            .zip(lit(2).and_then(step))
            .map(|((a, b), s)| (a, b, s)),
        _ => None,
    };
    match parsed {
        None => Series::Unknown,
        // An integer step of 0 is the function's own error.
        Some((_, _, Err(()))) if matches!(lit(2), Some(ScalarValue::Int64(_))) => Series::Unknown,
        Some((_, _, Err(()))) => Series::Unbounded,
        Some((start, end, Ok(step))) => {
            let rows = (end - start).unsigned_abs() / step.unsigned_abs() + 1;
            Series::Rows(u64::try_from(rows).unwrap_or(u64::MAX))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::lit;

    #[test]
    fn a_series_is_counted_from_its_literals() {
        assert_eq!(series_rows(&[lit(10i64)]), Series::Rows(11));
        assert_eq!(
            series_rows(&[lit(1i64), lit(1_000_000_000_000i64)]),
            Series::Rows(1_000_000_000_000)
        );
        assert_eq!(
            series_rows(&[lit(1i64), lit(100i64), lit(10i64)]),
            Series::Rows(10)
        );
        assert_eq!(
            series_rows(&[lit(100i64), lit(1i64), lit(-10i64)]),
            Series::Rows(10)
        );
        assert_eq!(
            series_rows(&[lit(1i64), lit(2i64), lit(0i64)]),
            Series::Unknown
        );
    }

    #[test]
    fn interval_steps_count_their_least_move_and_mixed_signs_that_may_stall_are_unbounded() {
        use datafusion::arrow::datatypes::IntervalMonthDayNano;
        let day = 86_400_000_000_000i64;
        let (feb1, mar1) = (
            ScalarValue::TimestampNanosecond(Some(18_659 * day), None),
            ScalarValue::TimestampNanosecond(Some(18_687 * day), None),
        );
        let series = |months, days, nanos| {
            let step = ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(
                months, days, nanos,
            )));
            series_rows(&[lit(feb1.clone()), lit(mar1.clone()), lit(step)])
        };
        // 28 days, 23-hour days at the least: 28 * 24 / 23 whole steps and the first.
        assert_eq!(series(0, 1, 0), Series::Rows(30));
        assert_eq!(series(0, -1, 0), Series::Rows(30), "counted either way");
        assert_eq!(series(1, 0, 0), Series::Rows(2));
        // From February 1 (a 28-day month) this never advances.
        assert_eq!(series(1, -28, 0), Series::Unbounded);
        assert_eq!(series(-1, 31, 0), Series::Unbounded);
        assert_eq!(series(0, 1, -day), Series::Unbounded);
        assert_eq!(series(0, 0, 0), Series::Unbounded);
        // Mixed signs that always move: at least 28 - 20 days.
        assert_eq!(series(1, -20, 0), Series::Rows(4));
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
            max_behind: std::time::Duration::ZERO,
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
        let e = run(
            &ctx,
            "SELECT COUNT(*) FROM generate_series(TIMESTAMP '2021-02-01', TIMESTAMP '2021-03-01', \
             INTERVAL '1 month -28 days')",
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot be bounded"), "{e}");
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
