//! The metrics endpoint: `GET /metrics` (Prometheus text format), `GET /healthz` (the
//! process is up) and `GET /readyz` (the pipeline has started), served by axum on a
//! small runtime of its own so that scraping never competes with the pipeline's thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;

/// A running endpoint; it stops with the process.
pub struct Server {
    pub addr: SocketAddr,
}

static READY: AtomicBool = AtomicBool::new(false);

/// Whether the pipeline is working: `/readyz` answers 200 while it is (`run` and
/// `replay` once they start; `process` while it owns partitions).
pub fn set_ready(ready: bool) {
    READY.store(ready, Ordering::SeqCst);
}

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` (port 0 picks a free one) and serves in a background thread.
pub fn serve(addr: SocketAddr) -> std::io::Result<Server> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    std::thread::Builder::new()
        .name("storepulse-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let app = Router::new()
                    .route(
                        "/metrics",
                        get(|| async {
                            ([(header::CONTENT_TYPE, TEXT_FORMAT)], super::get().render())
                        }),
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
                    );
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, app).await {
                            eprintln!("storepulse: metrics endpoint stopped: {e}");
                        }
                    }
                    Err(e) => eprintln!("storepulse: metrics endpoint failed: {e}"),
                }
            })
        })?;
    Ok(Server { addr: bound })
}
