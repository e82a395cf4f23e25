//! The metrics endpoint: `GET /metrics` (Prometheus text format), `GET /healthz` (the
//! process is up) and `GET /readyz` (the pipeline has started), served by axum on a
//! small runtime of its own so that scraping never competes with the pipeline's thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;

static READY: AtomicBool = AtomicBool::new(false);

/// Whether the pipeline is working: `/readyz` answers 200 while it is (`run` and
/// `replay` once they start; `process` once it has joined its group).
pub fn set_ready(ready: bool) {
    READY.store(ready, Ordering::SeqCst);
}

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` (port 0 picks a free one) and serves in a background thread; returns
/// the bound address.
pub fn serve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    crate::http::spawn(addr, "storepulse-metrics", runtime, || {
        Router::new()
            .route(
                "/metrics",
                get(|| async { ([(header::CONTENT_TYPE, TEXT_FORMAT)], super::get().render()) }),
            )
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(|| {
                    let ready = READY.load(Ordering::SeqCst);
                    async move {
                        if ready {
                            (StatusCode::OK, "ready\n")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                        }
                    }
                }),
            )
    })
}
