//! The JSON endpoints behind the store page. Each response is computed from one snapshot
//! and names it (`snapshot.version`), so the page never mixes two. Money is sent as exact
//! decimal strings, 64-bit integers (ids, counts) as strings (they exceed a JavaScript
//! number's 53 bits); see `query::json`.
//!
//! `/api/snapshot` comes from the manifests this process read; the rest from the workers:
//! the overview once per snapshot and parameters (cached here), a customer and
//! `POST /api/sql` each time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as HttpBody;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub use super::answers::OverviewQuery;
use super::in_flight::Reserved;
use super::pool::{Answer, Failure};
use super::worker::Request as Work;

type Shared = State<Arc<super::State>>;

/// Rows a `POST /api/sql` returns at most, by default and at most when asked.
pub const SQL_ROWS: usize = 1000;
pub const SQL_ROWS_MAX: usize = 10_000;
/// Bytes of a `POST /api/sql` request at most, and how long it may take to arrive.
pub const SQL_REQUEST_BYTES: usize = 64 << 10;
pub const SQL_REQUEST_TIME: Duration = Duration::from_secs(5);
/// How long a query waits for a free worker before it is refused (429).
pub const SQL_WAIT: Duration = Duration::from_millis(250);
/// The page's own questions: how long they wait for the page's worker, and how long
/// they may take (a processor's snapshot is merged first).
pub const PAGE_WAIT: Duration = Duration::from_secs(10);
pub const PAGE_TIME: Duration = Duration::from_secs(60);

/// A JSON body computed once and sent to many (shared, not copied per request).
pub type Body = bytes::Bytes;
/// A cached overview, and whether it is from the snapshot it is cached under.
pub type Cached = (Body, bool);

fn json_bytes(status: StatusCode, body: impl Into<HttpBody>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.into(),
    )
        .into_response()
}

/// A refusal: its status and a message for the user, sent as `{"error": ...}`.
#[derive(Debug, Clone)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = matches!(
            self.0,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        let mut r = json_bytes(self.0, json!({ "error": self.1 }).to_string());
        if retry {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

/// What a failed worker call means for the client.
fn failure(state: &super::State, f: Failure, what: &str) -> ApiError {
    match f {
        Failure::Busy => error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{what}: every query worker is busy; try again in a moment"),
        ),
        Failure::Timeout(t) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{what} ran longer than {t:?} and was stopped"),
        ),
        Failure::Memory(limit) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "{what} needed more memory than a query may use ({} MiB, --query-memory-limit) and was stopped",
                limit >> 20
            ),
        ),
        Failure::TooLarge(n) => error(
            StatusCode::BAD_REQUEST,
            format!("{what}: the answer ({n} bytes) is larger than allowed"),
        ),
        Failure::Crashed(said) => {
            let said = state.scrub(&said);
            tracing::warn!(said = %said, "a query worker stopped");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{what}: the query worker stopped ({said})"),
            )
        }
        Failure::Spawn(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what}: no query worker could be started ({e})"),
        ),
    }
}

/// Room for an answer of at most `bytes` among the answers being sent, or a 429.
fn reserve(state: &super::State, bytes: usize) -> Result<Reserved, ApiError> {
    state.in_flight.reserve(bytes).ok_or_else(|| {
        error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many answers are on their way to clients; try again in a moment",
        )
    })
}

/// A worker's answer (200) as a response, holding its size of the room reserved until sent.
fn sent(room: Reserved, body: Vec<u8>) -> Response {
    let held = room.hold(body.into());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        HttpBody::new(held),
    )
        .into_response()
}

/// A worker's answer as a response: its body as it is.
fn answered(a: Answer) -> Result<Answer, ApiError> {
    if a.status == 200 {
        return Ok(a);
    }
    let message = serde_json::from_slice::<serde_json::Value>(&a.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_else(|| "the query failed".into());
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Err(error(status, message))
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

/// The snapshot this process knows, after checking that its files are still there (a
/// pruned one is replaced by the newest first).
async fn known(state: &Arc<super::State>) -> Result<Arc<super::Known>, ApiError> {
    if let Some(k) = state.known() {
        if k.parts.iter().all(|p| p.present()) {
            return Ok(k);
        }
        super::refresh(state).await;
        if let Some(k) = state
            .known()
            .filter(|k| k.parts.iter().all(|p| p.present()))
        {
            return Ok(k);
        }
    }
    let why = state
        .problem
        .read()
        .ok()
        .and_then(|p| p.clone())
        .unwrap_or_else(|| "no snapshot yet".into());
    Err(error(StatusCode::SERVICE_UNAVAILABLE, why))
}

pub async fn snapshot(State(state): Shared) -> Result<Response, ApiError> {
    let k = known(&state).await?;
    Ok(json_bytes(
        StatusCode::OK,
        super::snapshot_info(&k.version, &k.parts, k.cut.as_ref()).to_string(),
    ))
}

/// `/readyz` of the page: a snapshot is known and the page's worker could answer from it.
pub async fn readyz(state: Arc<super::State>) -> (StatusCode, String) {
    match known(&state).await {
        Ok(k) => match overview_cached(&state, OverviewQuery::default()).await {
            Ok(_) => (StatusCode::OK, format!("ready: snapshot {}\n", k.version)),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.1 + "\n"),
        },
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.1 + "\n"),
    }
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

fn overview_query(params: &HashMap<String, String>) -> Result<OverviewQuery, ApiError> {
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
    Ok(OverviewQuery { from, to, top })
}

/// Everything the page's charts show, from one snapshot: `?from=&to=` (days, inclusive)
/// limit the top categories and brands; `top` is how many (1 to 50, default 10).
pub async fn overview(State(state): Shared, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let q = overview_query(&query_params(raw))?;
    let body = overview_cached(&state, q).await?;
    Ok(json_bytes(StatusCode::OK, body))
}

/// The overview for the current snapshot and `q`: computed by the page's worker the first
/// time, then the same bytes for everyone (concurrent first requests wait for one answer).
/// The computation runs in a task of its own: a client that hangs up leaves it to finish
/// and be cached, rather than killing the page's worker in the middle.
pub async fn overview_cached(
    state: &Arc<super::State>,
    q: OverviewQuery,
) -> Result<Body, ApiError> {
    let k = known(state).await?;
    let key = (
        k.version.clone(),
        serde_json::to_string(&q).unwrap_or_default(),
    );
    let cell = {
        let mut cache = state.overviews.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 256 {
            // Many periods asked for: start over, but keep what every page opens with.
            let default = serde_json::to_string(&OverviewQuery::default()).unwrap_or_default();
            cache.retain(|(_, q), _| *q == default);
        }
        cache.entry(key.clone()).or_default().clone()
    };
    if let Some((body, _)) = cell.get() {
        crate::metrics::events::OverviewServed { source: "cache" }.emit();
        return Ok(body.clone());
    }
    let task = tokio::spawn(compute_overview(state.clone(), cell, key, q));
    task.await.unwrap_or_else(|e| {
        Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the overview stopped: {e}"),
        ))
    })
}

/// Computes and caches the default overview of the snapshot `version` (not necessarily
/// the one shown yet: the worker reads the newest, and an answer from another is not kept).
pub async fn warm(state: &Arc<super::State>, version: &str) {
    let q = OverviewQuery::default();
    let key = (
        version.to_string(),
        serde_json::to_string(&q).unwrap_or_default(),
    );
    let cell = {
        let mut cache = state.overviews.lock().unwrap_or_else(|p| p.into_inner());
        cache.entry(key.clone()).or_default().clone()
    };
    let task = tokio::spawn(compute_overview(state.clone(), cell, key, q));
    let _ = task.await;
}

/// Fills `cell` (the cache entry `key`) with the overview `q`, or waits for the request
/// already filling it.
async fn compute_overview(
    state: Arc<super::State>,
    cell: super::Overview,
    key: (String, String),
    q: OverviewQuery,
) -> Result<Body, ApiError> {
    let computed = std::sync::atomic::AtomicBool::new(false);
    let body = cell
        .get_or_try_init(|| async {
            computed.store(true, std::sync::atomic::Ordering::SeqCst);
            let work = Work::Overview { query: q };
            let a = state
                .page
                .call(&work, PAGE_WAIT, PAGE_TIME, 256 << 20)
                .await
                .map_err(|f| failure(&state, f, "the overview"))?;
            let a = answered(a)?;
            Ok::<(Body, bool), ApiError>((a.body.into(), a.version == key.0))
        })
        .await;
    // An error is tried again next time; so is an answer from a snapshot newer than the
    // one this process knows (it catches up within a second).
    if !body.as_ref().is_ok_and(|(_, same)| *same) {
        state
            .overviews
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
    let source = match computed.load(std::sync::atomic::Ordering::SeqCst) {
        true => "worker",
        false => "cache",
    };
    if body.is_ok() {
        crate::metrics::events::OverviewServed { source }.emit();
    }
    body.map(|(b, _)| b.clone())
}

/// A customer id from the path; 400 when it is not a whole number.
fn customer_id(id: &str) -> Result<u64, ApiError> {
    id.trim().parse::<u64>().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            format!("a customer id is a whole number, not `{id}`"),
        )
    })
}

/// One customer: R, F, M, scores and segment (404 when the snapshot has no such id).
pub async fn customer(State(state): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = customer_id(&id)?;
    known(&state).await?;
    let room = reserve(&state, 1 << 20)?;
    let a = state
        .page
        .call(&Work::Customer { id }, PAGE_WAIT, PAGE_TIME, 1 << 20)
        .await
        .map_err(|f| failure(&state, f, "the look-up"))?;
    Ok(sent(room, answered(a)?.body))
}

/// One customer's segment over time, from the Delta table `rfm` (`{"tables": false}`
/// without it): see [`super::answers::customer_history`].
pub async fn customer_history(
    State(state): Shared,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = customer_id(&id)?;
    let room = reserve(&state, 1 << 20)?;
    let a = state
        .page
        .call(&Work::CustomerHistory { id }, PAGE_WAIT, PAGE_TIME, 1 << 20)
        .await
        .map_err(|f| failure(&state, f, "the segment over time"))?;
    Ok(sent(room, answered(a)?.body))
}

#[derive(serde::Deserialize)]
pub struct SqlRequest {
    sql: String,
    limit: Option<usize>,
    /// The Delta tables' history: `query --as-of` and `--compare-to`.
    #[serde(flatten)]
    history: super::worker::History,
}

/// Read-only SQL over the latest snapshot, at most `limit` rows (default 1,000, at most
/// 10,000) and `--sql-max-bytes` of them, within `--sql-timeout`; DDL, DML, COPY and SET
/// are refused (the `query` module's rules). JSON requests only.
pub async fn sql(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/json",
        ));
    }
    let read = axum::body::to_bytes(request.into_body(), SQL_REQUEST_BYTES);
    let body = match tokio::time::timeout(SQL_REQUEST_TIME, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a query may be at most {SQL_REQUEST_BYTES} bytes"),
            ))
        }
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            ))
        }
    };
    let req = serde_json::from_slice::<SqlRequest>(&body).map_err(|_| {
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
    known(&state).await?;
    let max_bytes = state.config.answer_bytes;
    let room = reserve(&state, max_bytes + (64 << 10)).inspect_err(|_| {
        crate::metrics::events::SqlQueryEnded {
            outcome: "too_many",
        }
        .emit()
    })?;
    req.history
        .parse()
        .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let work = Work::Sql {
        sql: req.sql,
        limit,
        max_bytes,
        history: req.history,
    };
    let called = state
        .sql
        .call(
            &work,
            SQL_WAIT,
            state.config.sql_timeout,
            max_bytes + (64 << 10),
        )
        .await;
    let outcome = match &called {
        Ok(a) if a.status == 200 => "answered",
        Ok(a) if a.status < 500 => "refused_by_sql",
        Err(Failure::Busy) => "too_many",
        Err(Failure::Timeout(_)) => "timed_out",
        Err(Failure::Memory(_)) => "out_of_memory",
        _ => "failed",
    };
    crate::metrics::events::SqlQueryEnded { outcome }.emit();
    let a = called.map_err(|f| failure(&state, f, "the query"))?;
    Ok(sent(room, answered(a)?.body))
}
