//! The store page: `storepulse serve` (and `run`/`process` with `--http-addr`) answers the
//! business questions from the latest complete snapshot through DataFusion: a page at `/`
//! and the JSON behind it.
//!
//! No SQL runs in this process. Every query runs in a child process of this same binary
//! (`worker.rs`, started by `pool.rs`) with an address-space limit, a lower CPU priority
//! and a time limit enforced by killing it: a query that asks for too much memory or time
//! fails alone, and the pipeline beside the page never notices. The page's own questions
//! go to one worker, `POST /api/sql` to a small pool of others (more at once: 429), so
//! hostile SQL cannot starve the page. A worker opens (for `process`: merges) a new
//! snapshot when the `LATEST` pointers move, so loading never runs on the async threads.
//!
//! This process only follows the pointers and reads manifests (`/api/snapshot`), caches
//! each overview per snapshot and parameters (ten viewers cost what one does, and they
//! share its bytes), bounds the bytes of answers it is sending (`in_flight.rs`), and guards
//! the door (`guard.rs`: Host and Origin checks, JSON only, protective headers). What a
//! client is told of a failure names no path, store endpoint or store answer (`scrub.rs`).

mod answers;
mod api;
mod guard;
mod in_flight;
mod pool;
mod scrub;
pub mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::http::header;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use crate::snapshot::Published;
pub use pool::remove_own_folders;
use scrub::scrub;
pub use worker::{Role, WorkerArgs};

/// How the page server bounds its work (`--sql-*`, `--query-memory-limit`, `--allow-host`,
/// `--http-*` flags).
#[derive(Debug, Clone)]
pub struct PageConfig {
    /// `POST /api/sql` queries running at once (one worker process each).
    pub sql_workers: usize,
    /// How long one `POST /api/sql` query may run before its worker is killed.
    pub sql_timeout: Duration,
    /// Address space of each worker process, in bytes; its DataFusion memory pool is half.
    pub memory_limit: u64,
    /// Bytes a `POST /api/sql` query may spill to disk (the page's own queries: none).
    pub spill_limit: u64,
    /// Bytes of one SQL answer at most.
    pub answer_bytes: usize,
    /// Host names (besides IP addresses and `localhost`) the page answers to; `*`: any.
    pub allowed_hosts: Vec<String>,
    pub connections: crate::http::Limits,
    /// How far behind the partitions' newest snapshots a topic's merged view may be and
    /// still be read (`--max-behind`).
    pub max_behind: Duration,
}

impl Default for PageConfig {
    fn default() -> Self {
        PageConfig {
            sql_workers: 2,
            sql_timeout: Duration::from_secs(10),
            memory_limit: 2 << 30,
            spill_limit: 256 << 20,
            answer_bytes: 4 << 20,
            allowed_hosts: Vec::new(),
            max_behind: crate::snapshot::view::MAX_BEHIND,
            connections: crate::http::Limits {
                max_connections: 512,
                per_client: 128,
                header_timeout: Duration::from_secs(10),
                write_stall: Duration::from_secs(30),
                lifetime: Duration::from_secs(600),
            },
        }
    }
}

/// What this process knows of the latest snapshot: its manifests, not its data.
pub(crate) struct Known {
    /// Changes when a snapshot is published; names no absolute path.
    pub version: String,
    pub parts: Vec<Published>,
    /// When a topic is read through its merged view: the cut it merges.
    pub cut: Option<crate::snapshot::view::Cut>,
}

/// One overview, computed by the first request that needs it.
pub(crate) type Overview = Arc<tokio::sync::OnceCell<api::Cached>>;

pub(crate) struct State {
    pub dir: PathBuf,
    /// `dir` parsed once: a folder, or a bucket prefix with its store.
    pub location: crate::snapshot::Location,
    pub config: PageConfig,
    pub current: RwLock<Option<Arc<Known>>>,
    /// Why the newest snapshot could not be opened, when it could not.
    pub problem: RwLock<Option<String>>,
    /// Overviews by (version, query), each computed once.
    pub overviews: Mutex<HashMap<(String, String), Overview>>,
    pub page: pool::Pool,
    pub sql: pool::Pool,
    /// The bytes of answers from workers being sent to clients (`in_flight.rs`).
    pub in_flight: in_flight::Budget,
}

impl State {
    pub fn known(&self) -> Option<Arc<Known>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_problem(&self, problem: Option<String>) {
        *self.problem.write().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// Text safe to show a client: no absolute path of this machine.
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, &self.dir)
    }
}

/// Serves the page for `dir` on `addr` (port 0: any free one) from a thread of its own;
/// returns the bound address.
pub fn start(dir: PathBuf, addr: SocketAddr, config: PageConfig) -> std::io::Result<SocketAddr> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("storepulse-http")
        .enable_all()
        .build()?;
    let limits = config.connections;
    let exe = worker::executable()?;
    let location =
        crate::snapshot::Location::parse(&dir).map_err(|e| std::io::Error::other(e.to_string()))?;
    let thread = ("storepulse-serve", probe as crate::http::Probe);
    crate::http::spawn(addr, thread, runtime, limits, move || {
        let guard = guard::Guard::new(&config.allowed_hosts);
        let state = Arc::new(State {
            page: pool::Pool::new(&exe, &dir, &config, Role::Page),
            sql: pool::Pool::new(&exe, &dir, &config, Role::Sql),
            in_flight: in_flight::Budget::new(answers_in_flight(&config)),
            dir,
            location,
            config,
            current: RwLock::new(None),
            problem: RwLock::new(None),
            overviews: Mutex::new(HashMap::new()),
        });
        tokio::task::spawn_blocking(pool::remove_stale_folders);
        tokio::spawn(reload(state.clone()));
        router(state, guard)
    })
}

/// The bytes of worker answers being sent at once: 32 MiB, or the largest answer of every
/// SQL worker and two more.
fn answers_in_flight(config: &PageConfig) -> usize {
    (32usize << 20).max((config.sql_workers + 2) * (config.answer_bytes + (64 << 10)))
}

/// Starts the page server, saying where; a busy address is a warning, not a failure.
pub fn start_logged(
    command: &str,
    dir: &Path,
    addr: SocketAddr,
    config: PageConfig,
) -> Option<SocketAddr> {
    let what = ("store page", "/", "store page");
    crate::http::start_logged(command, what, addr, |a| start(dir.to_path_buf(), a, config))
}

/// `/healthz` for a connection beyond the caps: the pipeline's health, as the router says.
fn probe(path: &str) -> Option<(axum::http::StatusCode, String)> {
    (path == "/healthz").then(|| crate::metrics::health_answer(false))
}

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

fn router(state: Arc<State>, guard: guard::Guard) -> Router {
    let ready = state.clone();
    Router::new()
        .route(
            "/",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }),
        )
        .route(
            "/page.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    SCRIPT,
                )
            }),
        )
        .route(
            "/page.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }),
        )
        .route(
            "/healthz",
            get(|| async { crate::metrics::health_answer(false) }),
        )
        .route("/readyz", get(move || api::readyz(ready.clone())))
        .route("/api/snapshot", get(api::snapshot))
        .route("/api/overview", get(api::overview))
        .route("/api/customer/{id}", get(api::customer))
        .route("/api/customer/{id}/history", get(api::customer_history))
        .route("/api/sql", post(api::sql))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard),
            guard::check,
        ))
}

/// The version of the snapshot `parts` make up: their folders relative to `dir`
/// (`snap-000012`, or `partitions/purchases-0/snap-000003|...`), so it names no absolute
/// path and changes whenever one of them does.
pub(crate) fn version_of(dir: &Path, parts: &[Published]) -> String {
    parts
        .iter()
        .map(|p| {
            p.path
                .strip_prefix(dir)
                .unwrap_or(&p.path)
                .display()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// Follows the pointers: reads the newest snapshot's manifests whenever a pointer changes
/// (on a blocking thread) and has the page's worker compute its default overview. The
/// first snapshot is shown at once (its first viewer waits for the overview); a newer one
/// only once its overview is ready, so that viewers are answered from the cache meanwhile
/// (at millions of customers an overview takes seconds). A request that finds the shown
/// snapshot pruned moves on by itself (`refresh`); whichever of the two installs later
/// does so only if the page still shows what it showed when it read the newest, so a slow
/// overview never puts an older snapshot back (and wipes the newer one's overviews).
async fn reload(state: Arc<State>) {
    let mut seen = String::new();
    loop {
        let v = crate::snapshot::view::pointers_at(&state.location).await;
        if !v.is_empty() && v != seen {
            seen = v.clone();
            let shown = shown(&state);
            if let Some(next) = newest(&state).await {
                let version = next.version.clone();
                let installed = match shown.is_some() {
                    true => {
                        api::warm(&state, &version).await;
                        install(&state, next, shown.as_deref())
                    }
                    false => {
                        let installed = install(&state, next, None);
                        let warm = state.clone();
                        tokio::spawn(async move { api::warm(&warm, &version).await });
                        installed
                    }
                };
                if !installed {
                    // Something else moved the page meanwhile: look again.
                    seen.clear();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The version the page shows, if any.
fn shown(state: &State) -> Option<String> {
    state.known().map(|k| k.version.clone())
}

/// Reads the manifests of the newest complete snapshot and makes it current (unless the
/// page moved meanwhile); whether it could.
pub(crate) async fn refresh(state: &Arc<State>) -> bool {
    let shown = shown(state);
    match newest(state).await {
        Some(next) => {
            install(state, next, shown.as_deref());
            true
        }
        None => false,
    }
}

/// The manifests of the newest complete snapshot (`None`, with the problem noted, when
/// there is none to read).
async fn newest(state: &Arc<State>) -> Option<Known> {
    let found = crate::snapshot::view::reading_at(&state.location, state.config.max_behind).await;
    match found {
        Ok(set) => {
            let parts = set.snapshots();
            let cut = set.cut().cloned();
            let version = version_of(&state.dir, &parts);
            Some(Known {
                version,
                parts,
                cut,
            })
        }
        Err(e) => {
            state.set_problem(Some(scrub::snapshot_error(&e, &state.dir)));
            None
        }
    }
}

/// Makes `next` the snapshot shown, and forgets the overviews of any other, if the page
/// still shows `shown` (what it showed when `next` was read); whether it did.
fn install(state: &State, next: Known, shown: Option<&str>) -> bool {
    let version = next.version.clone();
    {
        let mut current = state.current.write().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().map(|k| k.version.as_str()) != shown {
            return false;
        }
        *current = Some(Arc::new(next));
    }
    state.set_problem(None);
    state
        .overviews
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(v, _), _| *v == version);
    true
}

/// What the page shows about a snapshot (`parts`: one for `run` or a merged view, one per
/// partition for `process` read by merging; `cut`: a view's). Ids are strings, like every
/// 64-bit id the page gets.
pub(crate) fn snapshot_info(
    version: &str,
    parts: &[Published],
    cut: Option<&crate::snapshot::view::Cut>,
) -> Value {
    use serde_json::json;
    use std::collections::BTreeMap;
    let ids: Vec<String> = parts.iter().map(|p| p.manifest.id.to_string()).collect();
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
        "version": version,
        "ids": ids,
        "parts": parts.len(),
        "created_at": max_str(|m| Some(&m.created_at)),
        "as_of": max_str(|m| m.as_of.as_ref()),
        "watermark": watermark,
        "records": records,
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": rejected.iter().map(|(r, n)| json!({"reason": r, "lines": n})).collect::<Vec<_>>(),
        "cut": cut.map(|c| json!({
            "view": c.view.to_string(),
            "topic": c.topic,
            "newest": c.is_newest(),
            "behind_ms": c.behind().as_millis() as u64,
            "text": c.describe(),
            "parts": c.parts.iter().map(|p| json!({
                "partition": p.partition,
                "snapshot": p.snapshot.to_string(),
                "newest": p.newest.to_string(),
                "behind_ms": p.behind_ms,
            })).collect::<Vec<_>>(),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_names_folders_relative_to_the_snapshot_dir() {
        let dir = Path::new("/srv/data/snaps");
        let part = |path: &str| Published {
            path: PathBuf::from(path),
            fetched: None,
            fetched_chain: None,
            manifest: serde_json::from_value(serde_json::json!({
                "format": 1, "id": 2, "created_at": "", "as_of": null, "watermark": null,
                "as_of_us": null, "watermark_us": null,
                "input": {"kind": "kafka", "topic": "t", "partition": 0, "partitions": 1,
                          "next_offset": 0, "end_of_input": false},
                "counts": {"records": 0, "accepted": 0, "pending": 0, "repaired": 0,
                           "blank": 0, "rejected": {}},
                "customers": 0, "segments": {}, "tables": {},
                "config": {"max_out_of_orderness_us": 0, "allowed_lateness_us": 0,
                           "min_event_time": ""}
            }))
            .unwrap(),
        };
        assert_eq!(
            version_of(
                dir,
                &[
                    part("/srv/data/snaps/partitions/purchases-0/snap-000002"),
                    part("/srv/data/snaps/partitions/purchases-1/snap-000007"),
                ]
            ),
            "partitions/purchases-0/snap-000002|partitions/purchases-1/snap-000007"
        );
    }
}
