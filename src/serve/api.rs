//! The JSON endpoints behind the store page. Each response is computed from one loaded
//! snapshot and names it (`snapshot.version`), so the page never mixes two. Money is sent
//! as exact decimal strings, ids as strings (they exceed a JavaScript number's 53 bits).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::Loaded;
use crate::query::{render, Format, Session};

type Shared = State<Arc<super::State>>;

/// Rows a `POST /api/sql` returns at most, by default and at most when asked.
pub const SQL_ROWS: usize = 1000;
pub const SQL_ROWS_MAX: usize = 10_000;
/// How long one `POST /api/sql` may run.
pub const SQL_TIMEOUT: Duration = Duration::from_secs(10);

/// Spend per customer is counted in these buckets (currency units; the last is open).
pub const SPEND_BUCKETS: [u32; 9] = [0, 10, 50, 100, 250, 500, 1000, 2500, 5000];
/// Orders per customer: 1 to 9, then "10 or more".
pub const ORDERS_CAP: u32 = 10;

/// A JSON response (axum's `json` feature would change `serde_json`'s features and
/// rebuild DataFusion, so this is done by hand).
fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn ok_json(v: Value) -> Response {
    json_response(StatusCode::OK, &v)
}

/// A refusal: its status and a message for the user, sent as `{"error": ...}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.0, &json!({ "error": self.1 }))
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

/// `a=1&b=x%20y` as a map (later keys win).
fn query_params(raw: Option<String>) -> HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = |b: u8| (b as char).to_digit(16);
                    match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    raw.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn loaded(state: &super::State) -> Result<Arc<Loaded>, ApiError> {
    state.loaded().ok_or_else(|| {
        let why = state
            .problem
            .read()
            .ok()
            .and_then(|p| p.clone())
            .unwrap_or_else(|| format!("no snapshot yet in {}", state.dir.display()));
        error(StatusCode::SERVICE_UNAVAILABLE, why)
    })
}

/// Runs `sql` and returns its rows as JSON objects.
async fn rows(session: &Session, sql: &str, limit: Option<usize>) -> Result<Vec<Value>, ApiError> {
    Ok(table(session, sql, limit).await?.1)
}

/// Runs `sql`; returns its column names, in order, and its rows as JSON objects (a null
/// is left out of its row).
async fn table(
    session: &Session,
    sql: &str,
    limit: Option<usize>,
) -> Result<(Vec<String>, Vec<Value>), ApiError> {
    let (schema, batches) = session
        .sql_limited(sql, limit)
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
    let text = render(schema, &batches, Format::Json)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut v: Value = serde_json::from_str(&text)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    big_numbers_to_strings(&mut v);
    match v {
        Value::Array(rows) => Ok((columns, rows)),
        _ => Ok((columns, Vec::new())),
    }
}

/// Integers beyond 2^53 become strings: JavaScript would round them.
fn big_numbers_to_strings(v: &mut Value) {
    const SAFE: u64 = 1 << 53;
    match v {
        Value::Number(n)
            if n.as_u64().is_some_and(|x| x > SAFE)
                || n.as_i64().is_some_and(|x| x.unsigned_abs() > SAFE) =>
        {
            *v = Value::String(n.to_string());
        }
        Value::Array(a) => a.iter_mut().for_each(big_numbers_to_strings),
        Value::Object(o) => o.values_mut().for_each(big_numbers_to_strings),
        _ => {}
    }
}

/// What the page shows about the snapshot it answers from.
fn snapshot_info(l: &Loaded) -> Value {
    let parts = &l.session.parts;
    let ids: Vec<u64> = parts.iter().map(|p| p.manifest.id).collect();
    let max_str = |f: fn(&crate::snapshot::Manifest) -> Option<&String>| {
        parts.iter().filter_map(|p| f(&p.manifest)).max().cloned()
    };
    let watermark = parts
        .iter()
        .filter_map(|p| {
            p.manifest
                .watermark_us
                .map(|us| (us, p.manifest.watermark.clone()))
        })
        .min_by_key(|(us, _)| *us)
        .and_then(|(_, text)| text);
    let mut rejected: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut records, mut accepted, mut duplicates) = (0, 0, 0);
    for p in parts {
        let c = &p.manifest.counts;
        records += c.records;
        accepted += c.accepted;
        duplicates += c.duplicates;
        for (reason, n) in &c.rejected {
            *rejected.entry(reason).or_default() += n;
        }
    }
    let mut rejected: Vec<(&str, u64)> = rejected.into_iter().collect();
    rejected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    json!({
        "version": l.version,
        "ids": ids,
        "parts": parts.len(),
        "created_at": max_str(|m| Some(&m.created_at)),
        "as_of": max_str(|m| m.as_of.as_ref()),
        "watermark": watermark,
        "records": records,
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": rejected.iter().map(|(r, n)| json!({"reason": r, "lines": n})).collect::<Vec<_>>(),
    })
}

pub async fn snapshot(State(state): Shared) -> Result<Response, ApiError> {
    let l = loaded(&state)?;
    Ok(ok_json(snapshot_info(&l)))
}

/// A day parameter: `YYYY-MM-DD`.
fn day(params: &HashMap<String, String>, name: &str) -> Result<Option<String>, ApiError> {
    match params.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map(|d| Some(d.format("%Y-%m-%d").to_string()))
            .map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("`{name}` must be a date YYYY-MM-DD, not `{s}`"),
                )
            }),
    }
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

/// Everything the page's charts show, from one snapshot: `?from=&to=` (days, inclusive)
/// limit the top categories and brands; `top` is how many (1 to 50, default 10).
pub async fn overview(State(state): Shared, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    Ok(ok_json(overview_json(&state, &query_params(raw)).await?))
}

async fn overview_json(
    state: &super::State,
    params: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let (from, to) = (day(params, "from")?, day(params, "to")?);
    if let (Some(a), Some(b)) = (&from, &to) {
        if a > b {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("`from` {a} is after `to` {b}"),
            ));
        }
    }
    let top = match params.get("top") {
        None => 10,
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=50).contains(n))
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("`top` must be 1 to 50, not `{t}`"),
                )
            })?,
    };
    let l = loaded(state)?;
    let s = &l.session;
    let mut period = Vec::new();
    if let Some(a) = &from {
        period.push(format!("day >= DATE '{a}'"));
    }
    if let Some(b) = &to {
        period.push(format!("day <= DATE '{b}'"));
    }
    let filter = if period.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", period.join(" AND "))
    };
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
        None,
    )
    .await?;
    let categories_by_revenue = rows(
        s,
        &ranked("daily_category_sales", "category_code", "rev"),
        None,
    )
    .await?;
    let categories_by_units = rows(
        s,
        &ranked("daily_category_sales", "category_code", "units"),
        None,
    )
    .await?;
    let brands_by_revenue = rows(s, &ranked("daily_brand_sales", "brand", "rev"), None).await?;
    let brands_by_units = rows(s, &ranked("daily_brand_sales", "brand", "units"), None).await?;
    let orders = rows(
        s,
        &format!("SELECT LEAST(frequency, {ORDERS_CAP}) AS orders, COUNT(*) AS customers FROM rfm GROUP BY 1 ORDER BY 1"),
        None,
    )
    .await?;
    let mut spend: Vec<Value> = SPEND_BUCKETS
        .iter()
        .enumerate()
        .map(|(i, lo)| {
            let label = match SPEND_BUCKETS.get(i + 1) {
                Some(hi) => format!("{}–{}", short(*lo), short(*hi)),
                None => format!("{}+", short(*lo)),
            };
            json!({"bucket": label, "customers": 0})
        })
        .collect();
    for r in rows(s, &spend_bucket_sql(), None).await? {
        if let (Some(i), Some(n)) = (r["bucket"].as_u64(), r["customers"].as_u64()) {
            if let Some(b) = spend.get_mut(i as usize) {
                b["customers"] = json!(n);
            }
        }
    }
    let segments = rows(
        s,
        "SELECT s.segment, COUNT(r.user_id) AS customers, \
         CAST(COALESCE(SUM(r.monetary), 0) AS VARCHAR) AS revenue \
         FROM (SELECT DISTINCT segment FROM rfm_segments) s LEFT JOIN rfm r ON r.segment = s.segment \
         GROUP BY s.segment ORDER BY customers DESC, s.segment",
        None,
    )
    .await?;
    let grid = rows(
        s,
        "SELECT r_score AS r, f_score AS f, COUNT(*) AS customers FROM rfm GROUP BY 1, 2 ORDER BY 1, 2",
        None,
    )
    .await?;
    Ok(json!({
        "snapshot": snapshot_info(&l),
        "period": {"from": from, "to": to, "top": top},
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
pub async fn customer(State(state): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let Ok(id) = id.trim().parse::<u64>() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("a customer id is a whole number, not `{id}`"),
        ));
    };
    let l = loaded(&state)?;
    let sql = format!(
        "SELECT CAST(user_id AS VARCHAR) AS user_id, CAST(first_purchase AS VARCHAR) AS first_purchase, \
         CAST(last_purchase AS VARCHAR) AS last_purchase, recency_days, frequency, \
         CAST(monetary AS VARCHAR) AS monetary, items, r_score, f_score, m_score, rfm_cell, segment \
         FROM rfm WHERE user_id = {id}"
    );
    let mut c = rows(&l.session, &sql, None)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("no customer {id} in this snapshot"),
            )
        })?;
    c["snapshot"] = json!(l.version);
    Ok(ok_json(c))
}

#[derive(serde::Deserialize)]
pub struct SqlRequest {
    sql: String,
    limit: Option<usize>,
}

/// Read-only SQL over the loaded snapshot, at most `limit` rows (default 1,000, at most
/// 10,000), at most 10 s; DDL, DML, COPY and SET are refused (the `query` module's rules).
pub async fn sql(State(state): Shared, body: String) -> Result<Response, ApiError> {
    let req = serde_json::from_str::<SqlRequest>(&body).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "send JSON: {\"sql\": \"SELECT ...\", \"limit\": 100}",
        )
    })?;
    let limit = req.limit.unwrap_or(SQL_ROWS);
    if limit == 0 || limit > SQL_ROWS_MAX {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("`limit` must be 1 to {SQL_ROWS_MAX}"),
        ));
    }
    let l = loaded(&state)?;
    let run = table(&l.session, &req.sql, Some(limit + 1));
    let (columns, mut r) = tokio::time::timeout(SQL_TIMEOUT, run).await.map_err(|_| {
        error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the query ran longer than {SQL_TIMEOUT:?}"),
        )
    })??;
    let truncated = r.len() > limit;
    r.truncate(limit);
    Ok(ok_json(
        json!({"snapshot": l.version, "columns": columns, "rows": r, "truncated": truncated}),
    ))
}
