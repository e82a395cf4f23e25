//! Who holds a server's connections. One client address may hold at most
//! [`super::Limits::per_client`] of them, so one client cannot take every slot; and a
//! connection beyond a cap is still answered when it asks for a health endpoint (a
//! liveness probe that got 503 would restart a healthy pipeline): it has a second to send
//! its request line, then gets the probe's answer or a 503, and is closed. At most
//! [`OVERFLOW`] such connections are looked at at once; more are closed unanswered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Answers a health probe (`GET /healthz`) without the router: the path asked for, and
/// the status and text, when it is one.
pub type Probe = fn(&str) -> Option<(StatusCode, String)>;

/// Connections beyond a cap being answered at once.
pub const OVERFLOW: usize = 512;

/// How long a connection beyond a cap has to send its request line.
const OVERFLOW_WAIT: Duration = Duration::from_secs(1);

/// Open connections per client address.
#[derive(Clone, Default)]
pub struct Clients(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection counted for its client until dropped.
pub struct Held {
    clients: Clients,
    ip: IpAddr,
}

impl Clients {
    /// Counts a connection of `ip`, unless it holds `cap` already.
    pub fn hold(&self, ip: IpAddr, cap: usize) -> Option<Held> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Held {
            clients: self.clone(),
            ip,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut m = self.clients.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// The path of a `GET`/`HEAD` request line (`GET /healthz?x HTTP/1.1` → `/healthz`).
fn probed_path(head: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut words = line.split(' ');
    if !matches!(words.next()?, "GET" | "HEAD") {
        return None;
    }
    words.next()?.split('?').next()
}

/// A connection beyond a cap: the probe's answer if it asks for one in time, else a 503;
/// then closed.
pub async fn overflow(mut stream: TcpStream, probe: Probe) {
    let mut head = Vec::with_capacity(512);
    let read = async {
        let mut buf = [0u8; 512];
        while head.len() < 2048 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(n @ 1..) => head.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(OVERFLOW_WAIT, read).await;
    let (status, body) = probed_path(&head).and_then(probe).unwrap_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "too many connections\n".into(),
    ));
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\nretry-after: 1\r\n\
         x-content-type-options: nosniff\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // What the client still sends is read, so closing does not reset the answer away.
        let mut sink = [0u8; 512];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(OVERFLOW_WAIT, write).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_holds_at_most_its_cap_and_gives_slots_back() {
        let clients = Clients::default();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let held: Vec<Held> = (0..3).map_while(|_| clients.hold(a, 2)).collect();
        assert_eq!(held.len(), 2);
        assert!(clients.hold(b, 2).is_some(), "another client has room");
        drop(held);
        assert!(clients.hold(a, 2).is_some());
    }

    #[test]
    fn only_get_and_head_request_lines_are_probes() {
        assert_eq!(
            probed_path(b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some("/healthz")
        );
        assert_eq!(probed_path(b"HEAD /readyz HTTP/1.1\r\n"), Some("/readyz"));
        assert_eq!(probed_path(b"POST /healthz HTTP/1.1\r\n"), None);
        assert_eq!(probed_path(b""), None);
    }
}
