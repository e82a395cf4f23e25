//! The shared test helpers themselves: the HTTP client (`ureq`, as `common::http` sets it
//! up) reads a reply however the server frames it (a length on a connection left open,
//! chunks, or until close), sends a `Host` it is given and returns error statuses as
//! replies; a bounded wait gives up after its limit naming what it waited for and what it
//! last saw.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::http::{get, header, request};
use common::wait::{wait_until, wait_until_ok};

/// A one-connection server on a free loopback port that answers with `reply` (raw bytes)
/// and keeps the connection open for a while when `linger`; returns its address and the
/// request head it got.
fn answer_once(reply: &'static [u8], linger: bool) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = String::new();
        let mut r = BufReader::new(s.try_clone().unwrap());
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        // Read the body too: closing on unread bytes would reset the connection.
        let length = header(&head, "content-length").map_or(0, |n| n.parse().unwrap());
        std::io::Read::read_exact(&mut r, &mut vec![0; length]).unwrap();
        s.write_all(reply).unwrap();
        tx.send(head).unwrap();
        if linger {
            // A client that waited for the close would wait out this sleep.
            std::thread::sleep(Duration::from_secs(5));
        }
    });
    (addr, rx)
}

#[test]
fn the_client_reads_a_length_without_waiting_for_the_close() {
    let (addr, server) = answer_once(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
        true,
    );
    let started = Instant::now();
    let (status, head, body) = get(&addr, "/x");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((status, body.as_str()), (200, "{\"a\":1}"));
    assert_eq!(header(&head, "content-type"), Some("application/json"));
    let sent = server.recv().unwrap().to_ascii_lowercase();
    assert!(sent.starts_with("get /x http/1.1\r\n"), "{sent}");
    assert!(sent.contains(&format!("host: {addr}\r\n")), "{sent}");
}

#[test]
fn the_client_joins_chunks_and_reads_to_the_close_without_a_length() {
    let (addr, _server) = answer_once(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\n\r\n",
        true,
    );
    assert_eq!(get(&addr, "/").2, "hello, world");
    let (addr, _server) = answer_once(b"HTTP/1.0 404 Not Found\r\n\r\nnothing here", false);
    let (status, _, body) = get(&addr, "/");
    assert_eq!((status, body.as_str()), (404, "nothing here"));
}

#[test]
fn a_host_header_given_replaces_the_default() {
    let (addr, server) = answer_once(
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    let (status, _, _) = request(&addr, "POST", "/api/sql", &[("Host", "evil.example")], "{}");
    assert_eq!(status, 403);
    let sent = server.recv().unwrap().to_ascii_lowercase();
    assert!(sent.contains("host: evil.example\r\n"), "{sent}");
    assert!(!sent.contains(&addr), "{sent}");
    assert!(sent.contains("content-length: 2\r\n"), "{sent}");
}

#[test]
fn a_wait_gives_up_after_its_limit_naming_what_it_waited_for() {
    let started = Instant::now();
    let failed = std::panic::catch_unwind(|| {
        wait_until(Duration::from_millis(300), "the moon", || false);
    });
    let said = *failed.unwrap_err().downcast::<String>().unwrap();
    assert!(said.contains("waiting for the moon"), "{said}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");

    let failed = std::panic::catch_unwind(|| {
        wait_until_ok::<(), _>(Duration::from_millis(100), "a value", || Err("still 41"));
    });
    let said = *failed.unwrap_err().downcast::<String>().unwrap();
    assert!(
        said.contains("a value") && said.contains("still 41"),
        "{said}"
    );

    let mut n = 0;
    let got = wait_until_ok(Duration::from_secs(10), "the third look", || {
        n += 1;
        if n == 3 {
            Ok(n)
        } else {
            Err("")
        }
    });
    assert_eq!(got, 3);
}
