//! The one way storepulse serves HTTP (the metrics endpoint and the store page): bind on
//! the caller's thread, so that a busy address is an error the caller sees, then serve an
//! axum router on a tokio runtime and a thread of their own until the process ends, so
//! that serving never competes with the pipeline's threads.
//!
//! Every connection is bounded: at most [`Limits::max_connections`] open at once and
//! [`Limits::per_client`] from one client address (more are answered 503 and closed, so
//! slow clients cannot take the file descriptors the snapshot writer and the Kafka client
//! need, and one client cannot take every slot; a health probe beyond the caps is still
//! answered: `crowd.rs`), request headers within [`Limits::header_timeout`] (which also
//! closes a keep-alive connection left idle that long) and [`MAX_HEADER_BYTES`], a client
//! must take some of an answer every [`Limits::write_stall`] (`stall.rs`), and a
//! connection lives at most [`Limits::lifetime`]. An error from `accept` (`EMFILE`) pauses
//! accepting briefly. `hosts.rs` says which `Host` names a server answers to.

mod crowd;
mod hosts;
mod stall;

pub use crowd::Probe;
pub use hosts::{host_name, Hosts};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

/// Bounds on the connections of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// Open connections of one client address at most.
    pub per_client: usize,
    pub header_timeout: Duration,
    /// How long a write may wait for the client to take a byte before the connection ends.
    pub write_stall: Duration,
    pub lifetime: Duration,
}

impl Limits {
    /// `/metrics`, `/healthz`, `/readyz`: a scraper and a few probes.
    pub const METRICS: Limits = Limits {
        max_connections: 64,
        per_client: 16,
        header_timeout: Duration::from_secs(5),
        write_stall: Duration::from_secs(30),
        lifetime: Duration::from_secs(300),
    };
}

/// The bytes of a request's head (request line and headers) at most: a larger one gets
/// 431. (hyper's own default, about 400 KiB per connection, is 200 MiB over 512 of them.)
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// Binds `addr` (port 0 picks a free one) and serves the router `app` builds (inside the
/// runtime, so it may spawn tasks) from a thread named `thread`; returns the bound address.
/// `probe` answers health probes that arrive beyond the connection caps.
pub fn spawn(
    addr: SocketAddr,
    (thread, probe): (&str, Probe),
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
                    Ok(l) => serve(l, app, limits, probe).await,
                    Err(e) => tracing::error!(server = %name, error = %e, "an HTTP server stopped"),
                }
            })
        })?;
    Ok(bound)
}

async fn serve(listener: tokio::net::TcpListener, app: Router, limits: Limits, probe: Probe) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let overflow = Arc::new(Semaphore::new(crowd::OVERFLOW));
    let clients = crowd::Clients::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if connection_error(&e) => continue,
            Err(_) => {
                // Out of file descriptors or memory: wait for some to be given back.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let held = clients.hold(peer.ip(), limits.per_client.max(1));
        let permit = open.clone().try_acquire_owned().ok();
        let (Some(held), Some(permit)) = (held, permit) else {
            if let Ok(looking) = overflow.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    crowd::overflow(stream, probe).await;
                    drop(looking);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = (permit, held);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(
                    TokioIo::new(stall::Stalling::new(stream, limits.write_stall)),
                    service,
                );
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
