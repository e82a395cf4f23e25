//! The one way storepulse serves HTTP (the metrics endpoint and the store page): bind on
//! the caller's thread, so that a busy address is an error the caller sees, then serve an
//! axum router on a tokio runtime and a thread of their own until the process ends, so
//! that serving never competes with the pipeline's threads.
//!
//! Every connection is bounded: at most [`Limits::max_connections`] open at once (more are
//! answered 503 and closed, so slow clients cannot take the file descriptors the snapshot
//! writer and the Kafka client need), request headers within [`Limits::header_timeout`]
//! (which also closes a keep-alive connection left idle that long), and a connection lives
//! at most [`Limits::lifetime`]. An error from `accept` (`EMFILE`) pauses accepting briefly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

/// Bounds on the connections of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub lifetime: Duration,
}

impl Limits {
    /// `/metrics`, `/healthz`, `/readyz`: a scraper and a few probes.
    pub const METRICS: Limits = Limits {
        max_connections: 64,
        header_timeout: Duration::from_secs(5),
        lifetime: Duration::from_secs(300),
    };
}

/// Binds `addr` (port 0 picks a free one) and serves the router `app` builds (inside the
/// runtime, so it may spawn tasks) from a thread named `thread`; returns the bound address.
pub fn spawn(
    addr: SocketAddr,
    thread: &str,
    runtime: Runtime,
    limits: Limits,
    app: impl FnOnce() -> Router + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let name = thread.to_string();
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            runtime.block_on(async move {
                let app = app();
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => serve(l, app, limits).await,
                    Err(e) => tracing::error!(server = %name, error = %e, "an HTTP server stopped"),
                }
            })
        })?;
    Ok(bound)
}

async fn serve(listener: tokio::net::TcpListener, app: Router, limits: Limits) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if connection_error(&e) => continue,
            Err(_) => {
                // Out of file descriptors or memory: wait for some to be given back.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = tokio::time::sleep(limits.lifetime) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

/// Errors of one connection that `accept` reports; the listener itself is fine.
fn connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// A connection beyond the cap: a short 503, then closed.
async fn refuse(mut stream: tokio::net::TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
        retry-after: 1\r\ncontent-length: 22\r\nconnection: close\r\n\r\ntoo many connections\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
}

/// Says that a response is what its content type says it is.
pub async fn nosniff(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Runs `start` and logs where `what` is served (`path` follows the address),
/// or that there is no `missing`: a busy address is a warning, not a failure.
pub fn start_logged(
    command: &str,
    (what, path, missing): (&str, &str, &str),
    addr: SocketAddr,
    start: impl FnOnce(SocketAddr) -> std::io::Result<SocketAddr>,
) -> Option<SocketAddr> {
    match start(addr) {
        Ok(bound) => {
            tracing::info!(command = %command, "{what} on http://{bound}{path}");
            Some(bound)
        }
        Err(e) => {
            tracing::warn!(command = %command, %addr, error = %e, "no {missing}");
            None
        }
    }
}
