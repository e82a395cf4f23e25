//! The store page: `storepulse serve` (and `run`/`process` with `--http-addr`) answers the
//! business questions from the latest complete snapshot through DataFusion: a page at `/`
//! and the JSON behind it.
//!
//! Every answer comes from one loaded snapshot: the loader checks the `LATEST` pointers
//! once a second and swaps in a new [`Session`] only when it has opened completely, so a
//! response never mixes two snapshots. Serving runs on its own runtime and threads, so a
//! slow query never holds up the pipeline.

mod api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::header;
use axum::routing::{get, post};
use axum::Router;

use crate::query::Session;

/// A loaded snapshot and what was computed from it.
pub(crate) struct Loaded {
    /// The `LATEST` pointers it was opened from: changes when a snapshot is published.
    pub version: String,
    pub session: Session,
}

pub(crate) struct State {
    pub dir: PathBuf,
    pub current: RwLock<Option<Arc<Loaded>>>,
    /// Why the newest snapshot could not be opened, when it could not.
    pub problem: RwLock<Option<String>>,
}

impl State {
    pub fn loaded(&self) -> Option<Arc<Loaded>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Serves the page for `dir` on `addr` (port 0: any free one) from a thread of its own;
/// returns the bound address.
pub fn start(dir: PathBuf, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("storepulse-http")
        .enable_all()
        .build()?;
    crate::http::spawn(addr, "storepulse-serve", runtime, move || {
        let state = Arc::new(State {
            dir,
            current: RwLock::new(None),
            problem: RwLock::new(None),
        });
        tokio::spawn(reload(state.clone()));
        router(state)
    })
}

/// Starts the page server, saying where; a busy address is a warning, not a failure.
pub fn start_logged(command: &str, dir: &Path, addr: SocketAddr) -> Option<SocketAddr> {
    let what = ("store page", "/", "store page");
    crate::http::start_logged(command, what, addr, |a| start(dir.to_path_buf(), a))
}

const PAGE: &str = include_str!("page.html");

fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/snapshot", get(api::snapshot))
        .route("/api/overview", get(api::overview))
        .route("/api/customer/{id}", get(api::customer))
        .route("/api/sql", post(api::sql))
        .with_state(state)
}

/// Opens the newest snapshot whenever a pointer changes; keeps the last good one
/// meanwhile.
async fn reload(state: Arc<State>) {
    let mut seen = String::new();
    loop {
        let dir = state.dir.clone();
        let v = tokio::task::spawn_blocking(move || crate::snapshot::pointers(&dir))
            .await
            .unwrap_or_default();
        if !v.is_empty() && v != seen {
            match Session::open(&state.dir).await {
                Ok(session) => {
                    let loaded = Arc::new(Loaded {
                        version: v.clone(),
                        session,
                    });
                    *state.current.write().unwrap_or_else(|p| p.into_inner()) = Some(loaded);
                    *state.problem.write().unwrap_or_else(|p| p.into_inner()) = None;
                    seen = v;
                }
                Err(e) => {
                    // Tried again when a pointer moves, not in a loop.
                    *state.problem.write().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    seen = v;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
