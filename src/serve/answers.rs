//! The page's answers, computed by a worker process from its loaded [`Session`]: the
//! overview behind the charts, one customer and their segment over time, and `POST
//! /api/sql`. Every value follows the rules of `query::json` (money and 64-bit integers as
//! exact strings).

use serde_json::{json, Value};

use crate::query::Session;

/// Spend per customer is counted in these buckets (currency units; the last is open).
pub const SPEND_BUCKETS: [u32; 9] = [0, 10, 50, 100, 250, 500, 1000, 2500, 5000];
/// Orders per customer: 1 to 9, then "10 or more".
pub const ORDERS_CAP: u32 = 10;

/// A failed answer: an HTTP status and a message for the user.
pub type Refusal = (u16, String);

/// The parameters of an overview, validated: days `YYYY-MM-DD` (inclusive) limiting the
/// top categories and brands, and how many of them (1 to 50).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct OverviewQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub top: usize,
}

impl Default for OverviewQuery {
    fn default() -> Self {
        OverviewQuery {
            from: None,
            to: None,
            top: 10,
        }
    }
}

/// Rows of the page's own queries: no row limit, a generous byte limit.
async fn rows(session: &Session, sql: &str) -> Result<Vec<Value>, Refusal> {
    session
        .json_rows(sql, 10_000_000, 512 << 20)
        .await
        .map(|r| r.rows)
        .map_err(|e| {
            let text = e.to_string();
            // The page's own queries over the limits the server was started with: say
            // which one.
            match exceeded(&text) {
                Some((flag, _)) => (
                    500,
                    format!("the page's own queries need more than {flag} allows: {text}"),
                ),
                None => (500, text),
            }
        })
}

/// The limit a query's error says it went over: the flag that sets it and what it bounds.
pub(super) fn exceeded(error: &str) -> Option<(&'static str, &'static str)> {
    if error.contains("spilling process has exceeded") {
        Some(("--query-spill-limit", "disk to spill to"))
    } else if error.contains("Resources exhausted") {
        Some(("--query-memory-limit", "memory"))
    } else {
        None
    }
}

/// An integer that `query::json` may have sent as a string.
fn int(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// The SQL of the spend histogram: the index of each customer's bucket.
fn spend_bucket_sql() -> String {
    let mut case = String::from("CASE");
    for (i, upper) in SPEND_BUCKETS.iter().enumerate().skip(1) {
        case.push_str(&format!(" WHEN monetary < {upper} THEN {}", i - 1));
    }
    case.push_str(&format!(" ELSE {} END", SPEND_BUCKETS.len() - 1));
    format!("SELECT {case} AS bucket, COUNT(*) AS customers FROM rfm GROUP BY 1 ORDER BY 1")
}

/// 2500 as "2.5k", 50 as "50".
fn short(n: u32) -> String {
    if n >= 1000 {
        format!("{}k", f64::from(n) / 1000.0)
    } else {
        n.to_string()
    }
}

/// Everything the page's charts show, from one snapshot.
pub async fn overview(
    session: &Session,
    snapshot: Value,
    q: &OverviewQuery,
) -> Result<Value, Refusal> {
    let s = session;
    let mut period = Vec::new();
    if let Some(a) = &q.from {
        period.push(format!("day >= DATE '{a}'"));
    }
    if let Some(b) = &q.to {
        period.push(format!("day <= DATE '{b}'"));
    }
    let filter = if period.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", period.join(" AND "))
    };
    let top = q.top;
    let ranked = |table: &str, column: &str, by: &str| {
        format!(
            "SELECT name, CAST(rev AS VARCHAR) AS revenue, units FROM ( \
             SELECT COALESCE({column}, '(unknown)') AS name, SUM(revenue) AS rev, \
             SUM(items) AS units FROM {table} {filter} GROUP BY 1) \
             ORDER BY {by} DESC, name LIMIT {top}"
        )
    };
    let daily = rows(
        s,
        "SELECT CAST(day AS VARCHAR) AS day, CAST(revenue AS VARCHAR) AS revenue, orders, items, \
         customers, is_final FROM daily_sales ORDER BY day",
    )
    .await?;
    let categories_by_revenue =
        rows(s, &ranked("daily_category_sales", "category_code", "rev")).await?;
    let categories_by_units =
        rows(s, &ranked("daily_category_sales", "category_code", "units")).await?;
    let brands_by_revenue = rows(s, &ranked("daily_brand_sales", "brand", "rev")).await?;
    let brands_by_units = rows(s, &ranked("daily_brand_sales", "brand", "units")).await?;
    let orders = rows(
        s,
        &format!("SELECT LEAST(frequency, {ORDERS_CAP}) AS orders, COUNT(*) AS customers FROM rfm GROUP BY 1 ORDER BY 1"),
    )
    .await?;
    let mut counts = vec![0u64; SPEND_BUCKETS.len()];
    for r in rows(s, &spend_bucket_sql()).await? {
        if let (Some(i), Some(n)) = (int(&r["bucket"]), int(&r["customers"])) {
            if let Some(c) = counts.get_mut(i as usize) {
                *c = n;
            }
        }
    }
    let spend: Vec<Value> = SPEND_BUCKETS
        .iter()
        .enumerate()
        .map(|(i, lo)| {
            let label = match SPEND_BUCKETS.get(i + 1) {
                Some(hi) => format!("{}–{}", short(*lo), short(*hi)),
                None => format!("{}+", short(*lo)),
            };
            json!({"bucket": label, "customers": counts[i].to_string()})
        })
        .collect();
    let segments = rows(
        s,
        "SELECT s.segment, COUNT(r.user_id) AS customers, \
         CAST(COALESCE(SUM(r.monetary), 0) AS VARCHAR) AS revenue \
         FROM (SELECT DISTINCT segment FROM rfm_segments) s LEFT JOIN rfm r ON r.segment = s.segment \
         GROUP BY s.segment ORDER BY customers DESC, s.segment",
    )
    .await?;
    let grid = rows(
        s,
        "SELECT r_score AS r, f_score AS f, COUNT(*) AS customers FROM rfm GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .await?;
    Ok(json!({
        "snapshot": snapshot,
        "period": {"from": q.from, "to": q.to, "top": top},
        "daily": daily,
        "categories_by_revenue": categories_by_revenue,
        "categories_by_units": categories_by_units,
        "brands_by_revenue": brands_by_revenue,
        "brands_by_units": brands_by_units,
        "orders_per_customer": orders,
        "spend_per_customer": spend,
        "segments": segments,
        "grid": grid,
    }))
}

/// One customer: R, F, M, scores and segment (404 when the snapshot has no such id).
pub async fn customer(session: &Session, version: &str, id: u64) -> Result<Value, Refusal> {
    let sql = format!(
        "SELECT user_id, CAST(first_purchase AS VARCHAR) AS first_purchase, \
         CAST(last_purchase AS VARCHAR) AS last_purchase, recency_days, frequency, \
         monetary, items, r_score, f_score, m_score, rfm_cell, segment \
         FROM rfm WHERE user_id = {id}"
    );
    let mut c = rows(session, &sql)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| (404, format!("no customer {id} in this snapshot")))?;
    c["snapshot"] = json!(version);
    Ok(c)
}

/// Versions of `rfm` a customer's segment over time shows at most (a year by month).
pub const HISTORY_POINTS: usize = 13;

/// One customer's segment over time, from the Delta table `rfm` (`--tables`): at up to
/// [`HISTORY_POINTS`] versions spread over the event time its kept history covers, the
/// result's event time and the customer's segment, scores, orders and money then
/// (`segment` null: not a customer yet). `{"tables": false}` without the tables.
pub async fn customer_history(
    at: &crate::snapshot::Location,
    timeline: &mut crate::lake::Timeline,
    id: u64,
) -> Result<Value, Refusal> {
    use crate::snapshot::Location;
    let none = json!({"tables": false, "points": []});
    if let Location::Dir(dir) = at {
        if !dir.join(crate::lake::TABLES_DIR).is_dir() {
            return Ok(none);
        }
    }
    let failed = |e: crate::lake::LakeError| (500, e.to_string());
    let lake = crate::lake::Lake::at(at).map_err(failed)?;
    if !timeline.refresh(&lake).await.map_err(failed)? {
        return Ok(none);
    }
    // Ids are signed in the Delta table: a larger one is nobody.
    let wanted = i64::try_from(id).map_or("FALSE".to_string(), |id| format!("user_id = {id}"));
    let sql = format!(
        "SELECT segment, r_score, f_score, m_score, frequency, monetary FROM rfm WHERE {wanted}"
    );
    let (mut points, mut unreadable) = (Vec::new(), 0);
    for (version, event_time) in timeline.points(HISTORY_POINTS) {
        let read = match Session::rfm_at_version(&lake, version).await {
            Ok(session) => rows(&session, &sql).await.map_err(|(_, e)| e),
            Err(e) => Err(e.to_string()),
        };
        // Its files removed by retention since the log was read: not offered again.
        let row = match read {
            Ok(rows) => rows.into_iter().next(),
            Err(error) => {
                tracing::warn!(version, %error, "a version of rfm could not be read");
                timeline.forget(version);
                unreadable += 1;
                continue;
            }
        };
        let mut point = row.unwrap_or_else(|| json!({"segment": null}));
        point["version"] = json!(version);
        point["event_time"] = json!(chrono::DateTime::from_timestamp_micros(event_time)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
        points.push(point);
    }
    Ok(json!({"tables": true, "points": points, "unreadable": unreadable}))
}

/// `POST /api/sql`: at most `limit` rows and `max_bytes` of them. The text of an
/// `EXPLAIN` goes through `plan`, which takes the files' folders out.
pub async fn sql(
    session: &Session,
    (version, plan): (&str, impl Fn(&str) -> String),
    sql: &str,
    limit: usize,
    max_bytes: usize,
) -> Result<Value, crate::query::QueryError> {
    let mut r = session.json_rows(sql, limit, max_bytes).await?;
    if r.explain {
        for row in &mut r.rows {
            if let Value::Object(cells) = row {
                for v in cells.values_mut() {
                    if let Value::String(text) = v {
                        *text = plan(text);
                    }
                }
            }
        }
    }
    Ok(json!({"snapshot": version, "columns": r.columns, "rows": r.rows, "truncated": r.truncated}))
}
