//! The tests' one HTTP client: HTTP/1.1 requests with `Connection: close` to the store
//! page, the metrics endpoint, Prometheus and ChromeDriver. The reply is read by its
//! `Content-Length`, its chunks, or until the server closes, whichever it uses, so servers
//! that keep a connection open or chunk their answers are read alike. Tests that send
//! deliberately slow or partial requests take a raw connection from [`connect`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// How long a reply may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A raw connection to `addr`, for requests no well-behaved client sends.
pub fn connect(addr: &str) -> std::io::Result<TcpStream> {
    TcpStream::connect(addr)
}

/// One request; (status, head, body). A `Host` header in `headers` replaces the default
/// (`addr`). A connection closed before a status line reads as status 0.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = connect(addr).unwrap_or_else(|e| panic!("{method} {addr}{path}: {e}"));
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    // A server may answer (and close) before reading it all: the reply tells.
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|()| s.write_all(body.as_bytes()));
    let mut reader = BufReader::new(s);
    let head = read_head(&mut reader);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = read_body(&mut reader, &head);
    (status, head, String::from_utf8_lossy(&body).into_owned())
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

/// The status line and headers, up to the blank line (without it).
fn read_head(r: &mut impl BufRead) -> String {
    let mut head = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => head.push_str(&line),
        }
    }
    head.trim_end().to_string()
}

/// The body as the head says it is sent; a connection that breaks ends it where it broke.
fn read_body(r: &mut impl BufRead, head: &str) -> Vec<u8> {
    let mut body = Vec::new();
    if header(head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let hex = line.split(';').next().unwrap_or("").trim();
            let n = u64::from_str_radix(hex, 16)
                .unwrap_or_else(|_| panic!("a bad chunk size {line:?}"));
            if n == 0 {
                break;
            }
            let _ = r.by_ref().take(n).read_to_end(&mut body);
            line.clear();
            let _ = r.read_line(&mut line);
            line.clear();
        }
    } else if let Some(n) = header(head, "content-length") {
        // The server may keep the connection open: read that much and no more.
        let _ = r.take(n.parse().unwrap()).read_to_end(&mut body);
    } else {
        let _ = r.read_to_end(&mut body);
    }
    body
}
