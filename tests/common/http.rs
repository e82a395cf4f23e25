//! The tests' one HTTP client, `ureq` (no TLS), for the store page, the metrics endpoint,
//! Prometheus and ChromeDriver: plain requests whatever the status, no redirects followed,
//! no connection kept. Tests that send deliberately slow or partial requests take a raw
//! connection from [`connect`] (or [`connect_from`], another loopback address: another
//! client) and may send a request by hand with [`exchange`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// How long a request may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A raw connection to `addr`, for requests no well-behaved client sends.
pub fn connect(addr: &str) -> std::io::Result<TcpStream> {
    TcpStream::connect(addr)
}

/// A raw connection to `addr` from the loopback address `source` (`127.0.0.2`: a client
/// other than the tests' usual `127.0.0.1`).
pub fn connect_from(addr: &str, source: &str) -> std::io::Result<TcpStream> {
    connect_with(addr, source, None)
}

/// [`connect_from`], with a receive buffer of `receive` bytes when given (a client that
/// does not read then takes only that much of an answer into its kernel).
pub fn connect_with(addr: &str, source: &str, receive: Option<u32>) -> std::io::Result<TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{source}:0").parse().expect("an IPv4 address"))?;
        if let Some(bytes) = receive {
            socket.set_recv_buffer_size(bytes)?;
        }
        let stream = socket
            .connect(addr.parse().expect("an address"))
            .await?
            .into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    })
}

/// Sends `head` (a request's text up to the blank line, which is added) on `stream` and
/// reads the answer to its end (within 30 s): (status, the whole answer). A connection
/// closed without an answer is status 0.
pub fn exchange(stream: &mut TcpStream, head: &str) -> (u16, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = stream.write_all(format!("{head}\r\n\r\n").as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// One request; (status, head, body), the head as `HTTP/1.1 STATUS` and `name: value`
/// lines. A `Host` header in `headers` replaces the default (`addr`). A request that got
/// no answer (refused, reset, timed out) is status 0 with the error as its body.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections(0)
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let sent = if body.is_empty() && ["GET", "DELETE", "HEAD"].contains(&method) {
        agent.run(req.body(()).unwrap())
    } else {
        agent.run(req.body(body).unwrap())
    };
    let mut reply = match sent {
        Ok(reply) => reply,
        Err(e) => return (0, String::new(), format!("{method} {addr}{path}: {e}")),
    };
    let mut head = format!("HTTP/1.1 {}", reply.status().as_u16());
    for (k, v) in reply.headers() {
        head.push_str(&format!(
            "\r\n{k}: {}",
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    let body = reply
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap_or_else(|e| format!("{method} {addr}{path}: {e}").into_bytes());
    (
        reply.status().as_u16(),
        head,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

pub fn get(addr: &str, path: &str) -> (u16, String, String) {
    request(addr, "GET", path, &[], "")
}

/// A POST of JSON text `body`; (status, the JSON reply).
pub fn post_json(addr: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, _, reply) = request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body,
    );
    let v = serde_json::from_str(&reply)
        .unwrap_or_else(|e| panic!("POST {path}: {status}: {e}: {reply}"));
    (status, v)
}

/// A query through the store page's `POST /api/sql`.
pub fn sql(addr: &str, sql: &str) -> (u16, Value) {
    post_json(
        addr,
        "/api/sql",
        &serde_json::json!({ "sql": sql }).to_string(),
    )
}

/// The value of the header `name` in `head` (names compared without case).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
