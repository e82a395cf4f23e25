//! The one way storepulse serves HTTP (the metrics endpoint and the store page): bind on
//! the caller's thread, so that a busy address is an error the caller sees, then serve an
//! axum router on a tokio runtime and a thread of their own until the process ends, so
//! that serving never competes with the pipeline's threads.

use std::net::SocketAddr;

use axum::Router;
use tokio::runtime::Runtime;

/// Binds `addr` (port 0 picks a free one) and serves the router `app` builds (inside the
/// runtime, so it may spawn tasks) from a thread named `thread`; returns the bound address.
pub fn spawn(
    addr: SocketAddr,
    thread: &str,
    runtime: Runtime,
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
                let served = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => axum::serve(l, app).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = served {
                    eprintln!("storepulse: {name} stopped: {e}");
                }
            })
        })?;
    Ok(bound)
}

/// Runs `start` and says on stderr where `what` is served (`path` follows the address),
/// or that there is no `missing`: a busy address is a warning, not a failure.
pub fn start_logged(
    command: &str,
    (what, path, missing): (&str, &str, &str),
    addr: SocketAddr,
    start: impl FnOnce(SocketAddr) -> std::io::Result<SocketAddr>,
) -> Option<SocketAddr> {
    match start(addr) {
        Ok(bound) => {
            eprintln!("storepulse {command}: {what} on http://{bound}{path}");
            Some(bound)
        }
        Err(e) => {
            eprintln!("storepulse {command}: no {missing} on {addr}: {e}");
            None
        }
    }
}
