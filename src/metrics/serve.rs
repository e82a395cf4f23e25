//! The metrics endpoint: `GET /metrics` (Prometheus text format), `GET /healthz` (the
//! pipeline makes progress, or has nothing waiting) and `GET /readyz` (the pipeline is
//! doing its work; see `health.rs`), served by axum on a small runtime of its own (with a
//! timer: connections time out) so that scraping never competes with the pipeline's thread.
//! It answers only to requests that name it by an IP address, `localhost` or a name given
//! with `--metrics-allow-host` (a DNS-rebinding page would read revenue and segment counts).

use std::net::SocketAddr;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::http::Hosts;

use super::health;

/// Whether the pipeline is working: `/readyz` answers 200 while it is (`run` and
/// `replay` once they start; `process` once it has joined its group).
pub fn set_ready(ready: bool) {
    health::get().set_started(ready);
}

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Brings the facts `health` reads from other metrics up to date (a processor's owned
/// partitions and lag), then checks.
fn check(ready: bool) -> Result<(), String> {
    let h = health::get();
    if h.needs_partitions() {
        let m = super::get();
        h.partitions_owned(usize::try_from(m.partitions_assigned.get()).unwrap_or(0));
        h.input_waiting(m.consumer_lag.total() > 0);
    }
    let now = h.now_ms();
    if ready {
        h.ready_at(now)
    } else {
        h.live_at(now)
    }
}

/// `/healthz` or `/readyz` as an answer.
pub fn answer(ready: bool) -> (StatusCode, String) {
    match check(ready) {
        Ok(()) => (
            StatusCode::OK,
            if ready { "ready\n" } else { "ok\n" }.into(),
        ),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why + "\n"),
    }
}

/// `/healthz` and `/readyz` for a connection beyond the caps (`http::Probe`).
fn probe(path: &str) -> Option<(StatusCode, String)> {
    match path {
        "/healthz" => Some(answer(false)),
        "/readyz" => Some(answer(true)),
        _ => None,
    }
}

/// Binds `addr` (port 0 picks a free one) and serves in a background thread to requests
/// that name it as `hosts` allows; returns the bound address.
pub fn serve(addr: SocketAddr, hosts: Hosts) -> std::io::Result<SocketAddr> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let door = move |request: Request, next: Next| {
        let refused = hosts.refusal(
            request
                .headers()
                .get(header::HOST)
                .map(|v| v.to_str().unwrap_or("\u{fffd}")),
            "--metrics-allow-host",
        );
        async move {
            match refused {
                Some(why) => (StatusCode::FORBIDDEN, why + "\n").into_response(),
                None => next.run(request).await,
            }
        }
    };
    crate::http::spawn(
        addr,
        ("storepulse-metrics", probe),
        runtime,
        crate::http::Limits::METRICS,
        || {
            Router::new()
                .route(
                    "/metrics",
                    get(|| async {
                        ([(header::CONTENT_TYPE, TEXT_FORMAT)], super::get().render())
                    }),
                )
                .route("/healthz", get(|| async { answer(false) }))
                .route("/readyz", get(|| async { answer(true) }))
                .layer(axum::middleware::from_fn(door))
                .layer(axum::middleware::map_response(crate::http::nosniff))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_processor_without_partitions_is_not_ready() {
        // The process-wide records, as `process` sets them up.
        health::get().configure(health::HealthConfig {
            stall_timeout: std::time::Duration::from_secs(60),
            broker_timeout: std::time::Duration::from_secs(30),
            needs_partitions: true,
        });
        set_ready(true);
        let m = super::super::get();
        m.partitions_assigned.set(0);
        assert_eq!(
            answer(true),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "owns no partitions\n".into()
            )
        );
        assert_eq!(answer(false).0, StatusCode::OK, "alive all the same");
        m.partitions_assigned.set(2);
        assert_eq!(answer(true).0, StatusCode::OK);
    }
}
