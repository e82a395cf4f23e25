//! The doors of the store page and of `/metrics` against hostile clients: cross-site reads,
//! a client that hangs up on an overview, SQL that tries to write, to run an endless
//! series or to send too much, foreign host names, huge request heads, one client holding
//! every connection, and a store whose errors would tell its endpoint and layout.
//! (`tests/hostile.rs` attacks the memory and CPU behind the door.)

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::http::{connect, connect_from, exchange, get, request, sql};
use common::procfs::workers;
use common::spawn::{free_addr, Proc};
use common::wait::wait_until;

const MINUTE: Duration = Duration::from_secs(60);

/// `serve` (with `extra` flags) of a finished run of a small generated input, once ready.
fn served(tmp: &Path, extra: &[&str]) -> (Proc, String) {
    let input = common::generate(tmp, 2000, 11);
    let dir = tmp.join("snaps");
    common::run(&input, &dir, &[]);
    let addr = free_addr();
    let dir = dir.to_str().unwrap().to_string();
    let mut args = vec!["serve", "--snapshot-dir", &dir, "--http-addr", &addr];
    args.extend_from_slice(extra);
    let page = Proc::serving("serve", &args, &addr, MINUTE);
    wait_until(MINUTE, "the page to be ready", || {
        get(&addr, "/readyz").0 == 200
    });
    (page, addr)
}

/// A paced `run` of `rows` lines (about a minute for 6000) with the page and the metrics
/// (with `extra` flags), once both listen: (run, page, metrics).
fn running(tmp: &Path, rows: u64, extra: &[&str]) -> (Proc, String, String) {
    let input = common::generate(tmp, rows, 13);
    let (page, metrics) = (free_addr(), free_addr());
    let mut args = vec![
        "--rate",
        "100",
        "--http-addr",
        &page,
        "--metrics-addr",
        &metrics,
    ];
    args.extend_from_slice(extra);
    let mut run = common::spawn_run(&input, &tmp.join("snaps"), &args);
    run.wait_listening(&page, MINUTE);
    run.wait_listening(&metrics, MINUTE);
    (run, page, metrics)
}

#[test]
fn cross_site_reads_are_refused_but_a_link_to_the_page_opens_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (_page, addr) = served(tmp.path(), &[]);
    let cross = |method: &str, path: &str, mode: &str| {
        let headers = [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", mode)];
        request(&addr, method, path, &headers, "")
    };
    for (path, mode) in [
        ("/api/customer/1", "cors"),
        ("/api/overview", "no-cors"),
        ("/api/snapshot", "navigate"),
        ("/page.js", "no-cors"),
    ] {
        let (status, _, body) = cross("GET", path, mode);
        assert_eq!(
            (status, body.as_str()),
            (403, r#"{"error":"cross-site requests are refused"}"#),
            "{path} {mode}"
        );
    }
    let (status, _, body) = cross("GET", "/", "navigate");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<script src=\"/page.js\""), "{body}");
    // An older browser's cross-origin fetch carries only its `Origin`.
    let (status, _, body) = request(
        &addr,
        "GET",
        "/api/customer/1",
        &[("Origin", "http://evil.example")],
        "",
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("origin `http://evil.example`"), "{body}");
    // A JSON post from another site is refused by either check alone.
    let json = ("Content-Type", "application/json");
    let query = r#"{"sql": "SELECT 1 AS x"}"#;
    for (header, says) in [
        (
            ("Sec-Fetch-Site", "cross-site"),
            "cross-site requests are refused",
        ),
        (
            ("Origin", "http://evil.example"),
            "origin `http://evil.example`",
        ),
    ] {
        let (status, _, body) = request(&addr, "POST", "/api/sql", &[json, header], query);
        assert_eq!(status, 403, "{header:?}: {body}");
        assert!(body.contains(says), "{body}");
    }
    let own = format!("http://{addr}");
    let same = [
        json,
        ("Origin", own.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let (status, _, body) = request(&addr, "POST", "/api/sql", &same, query);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn an_overview_whose_client_hung_up_is_finished_and_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let (page, addr) = served(tmp.path(), &[]);
    let worker = workers(page.child.id(), "page");
    assert_eq!(worker.len(), 1);
    // SAFETY: signalling a process this test started (a child of `serve`), by its id.
    unsafe { libc::kill(worker[0] as i32, libc::SIGSTOP) };
    let mut client = connect(&addr).unwrap();
    write!(
        client,
        "GET /api/overview?top=7 HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    // The request reaches the stopped worker's pipe at once; then the client gives up.
    std::thread::sleep(Duration::from_millis(500));
    drop(client);
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(worker[0] as i32, libc::SIGCONT) };
    let (status, _, body) = get(&addr, "/api/overview?top=7");
    assert_eq!(status, 200, "{body}");
    let overview: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(overview["period"]["top"], 7);
    assert_eq!(
        workers(page.child.id(), "page"),
        worker,
        "the page's worker was killed and replaced"
    );
}

#[test]
fn sql_over_http_refuses_writes_and_endless_series_explains_without_paths_and_bounds_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = ["--sql-max-bytes", "1MiB", "--sql-timeout", "5s"];
    let (_page, addr) = served(tmp.path(), &flags);
    let target = tmp.path().join("stolen.csv");
    let target = target.display();
    for q in [
        format!("COPY (SELECT * FROM rfm) TO '{target}'"),
        format!("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{target}'"),
        "SET datafusion.execution.batch_size = 1".into(),
        "INSERT INTO daily_sales SELECT * FROM daily_sales".into(),
        "DROP TABLE rfm".into(),
    ] {
        let (status, reply) = sql(&addr, &q);
        assert_eq!(status, 400, "{q}: {reply}");
        let e = reply["error"].as_str().unwrap();
        assert!(e.contains("queries are read-only"), "{q}: {e}");
    }
    assert!(!tmp.path().join("stolen.csv").exists());

    // Down from March 1, a month less 28 days goes up instead (to March 4): endless.
    let endless = "SELECT COUNT(*) AS n FROM generate_series(TIMESTAMP '2021-03-01', \
                   TIMESTAMP '2021-02-01', INTERVAL '1 month -28 days')";
    let (status, reply) = sql(&addr, endless);
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("cannot be bounded"),
        "{reply}"
    );

    let tmp_name = tmp.path().file_name().unwrap().to_str().unwrap();
    for q in [
        "EXPLAIN SELECT COUNT(*) AS n FROM rfm WHERE monetary > 10",
        "EXPLAIN ANALYZE SELECT COUNT(*) AS n FROM rfm WHERE monetary > 10",
    ] {
        let (status, reply) = sql(&addr, q);
        assert_eq!(status, 200, "{q}: {reply}");
        assert_eq!(reply["columns"], serde_json::json!(["plan_type", "plan"]));
        let plans = reply["rows"].to_string();
        assert!(plans.contains("rfm.parquet"), "{plans}");
        for path in [tmp_name, "snaps/", "snap-0"] {
            assert!(!plans.contains(path), "{path} in {plans}");
        }
    }

    // `--sql-max-bytes 1MiB`: rows of 4,008 bytes of JSON and a comma each, in `[]`.
    let (status, reply) = sql(
        &addr,
        "SELECT repeat('x', 4000) AS s FROM generate_series(1, 1000)",
    );
    assert_eq!(status, 200);
    assert_eq!(reply["truncated"], true);
    assert_eq!(reply["rows"].as_array().unwrap().len(), (1 << 20) / 4009);

    // A body beyond 64 KiB, and one that never arrives.
    let big = format!(r#"{{"sql": "SELECT 1 -- {}"}}"#, "x".repeat(70_000));
    let json = [("Content-Type", "application/json")];
    let (status, _, body) = request(&addr, "POST", "/api/sql", &json, &big);
    assert_eq!(
        (status, body.as_str()),
        (413, r#"{"error":"a query may be at most 65536 bytes"}"#)
    );
    let mut slow = connect(&addr).unwrap();
    let started = Instant::now();
    // (`exchange` ends what it sends with a blank line: 10 bytes of the 100 promised.)
    let (status, answer) = exchange(
        &mut slow,
        &format!(
            "POST /api/sql HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"sql\""
        ),
    );
    assert_eq!(status, 408, "{answer}");
    assert!(
        answer.ends_with(r#"{"error":"the request body did not arrive in time"}"#),
        "{answer}"
    );
    assert!(started.elapsed() >= Duration::from_secs(5));
}

#[test]
fn metrics_answer_only_their_host_names_and_heads_over_64_kib_get_431() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = ["--metrics-allow-host", "prometheus.internal"];
    let (_run, page, metrics) = running(tmp.path(), 3000, &flags);
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (status, _, body) = request(&metrics, "GET", path, &[("Host", "evil.example")], "");
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(
            body,
            "this server does not answer to the host name `evil.example`; start it with \
             --metrics-allow-host evil.example to allow it\n"
        );
    }
    let named = [("Host", "prometheus.internal:9466")];
    let (status, _, body) = request(&metrics, "GET", "/metrics", &named, "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("storepulse_build_info"), "{body}");
    assert_eq!(get(&metrics, "/metrics").0, 200);

    for addr in [&page, &metrics] {
        for (bytes, want) in [(40_000, 200), (300_000, 431)] {
            let head = format!(
                "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-Big: {}",
                "a".repeat(bytes)
            );
            let (status, answer) = exchange(&mut connect(addr).unwrap(), &head);
            assert_eq!(status, want, "{addr}, {bytes} bytes: {answer}");
        }
    }
}

/// `n` connections to `addr` that send nothing.
fn hold(addr: &str, n: usize) -> Vec<std::net::TcpStream> {
    (0..n).map(|_| connect(addr).unwrap()).collect()
}

/// `/healthz` of `addr` 20 times, 25 ms apart: every status and (p50, max) latency.
fn probe(addr: &str) -> (Vec<u16>, Duration, Duration) {
    let mut statuses = Vec::new();
    let mut took = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        statuses.push(get(addr, "/healthz").0);
        took.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(25));
    }
    took.sort();
    (statuses, took[took.len() / 2], took[took.len() - 1])
}

#[test]
fn one_client_cannot_take_every_connection_and_healthz_always_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut run, page, metrics) = running(tmp.path(), 6000, &[]);
    for (name, addr, other) in [
        ("metrics", &metrics, "/metrics"),
        ("page", &page, "/page.css"),
    ] {
        let held = hold(addr, 512);
        let (statuses, p50, max) = probe(addr);
        let mut another = connect_from(addr, "127.0.0.2").unwrap();
        let (status, answer) = exchange(
            &mut another,
            &format!("GET {other} HTTP/1.1\r\nHost: {addr}\r\nConnection: close"),
        );
        drop(held);
        eprintln!(
            "figures: {name} /healthz under 512 connections held by one client: \
             p50 {p50:?}, max {max:?}"
        );
        assert_eq!(statuses, vec![200; 20], "{name}");
        assert_eq!(status, 200, "{name}: another client: {answer}");
    }
    assert!(run.running(), "{}", run.stderr());
}

#[test]
fn store_errors_reach_clients_without_endpoint_layout_or_body() {
    let tmp = tempfile::tempdir().unwrap();
    let server = s3::Server::start("acme-bucket");
    let input = common::generate(tmp.path(), 2000, 17);
    let url = server.url("tenant-7");
    let out = server
        .command(&[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--snapshot-dir",
            &url,
            "--no-progress",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let latest = std::fs::read_to_string(server.file("tenant-7/LATEST")).unwrap();
    let name = latest.lines().next().unwrap().to_string();
    let leaks = |text: &str| {
        let endpoint = server.addr.to_string();
        [
            endpoint.as_str(),
            "acme-bucket",
            "tenant-7",
            "<",
            "NoSuchKey",
        ]
        .into_iter()
        .filter(|l| text.contains(l))
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let serve = || {
        let addr = free_addr();
        let mut cmd = server.command(&["serve", "--snapshot-dir", &url, "--http-addr", &addr]);
        let mut page = Proc::start("serve", &mut cmd);
        page.wait_listening(&addr, MINUTE);
        (page, addr)
    };

    // A table's file gone: the query's error names the file, not where it was.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(server.file(&format!("tenant-7/{name}/manifest.json"))).unwrap(),
    )
    .unwrap();
    let rfm = manifest["tables"]["rfm"]["file"].as_str().unwrap();
    std::fs::remove_file(server.file(&format!("tenant-7/{name}/{rfm}"))).unwrap();
    let (page, addr) = serve();
    wait_until(MINUTE, "the page's snapshot", || {
        get(&addr, "/api/snapshot").0 == 200
    });
    let (status, reply) = sql(&addr, "SELECT COUNT(*) AS n FROM rfm");
    let said = reply["error"].as_str().unwrap_or_default().to_string();
    assert!(status >= 400 && said.contains(rfm), "{status} {reply}");
    assert_eq!(leaks(&said), Vec::<String>::new(), "{said}");
    drop(page);

    // The manifest gone: not ready, saying what could not be read.
    std::fs::remove_file(server.file(&format!("tenant-7/{name}/manifest.json"))).unwrap();
    let (_page, addr) = serve();
    let said = common::wait::wait_until_ok(MINUTE, "the page's problem", || {
        match get(&addr, "/api/snapshot") {
            (503, _, body) if !body.contains("no snapshot yet") => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(said, r#"{"error":"reading manifest.json: not found"}"#);
    let (status, _, ready) = get(&addr, "/readyz");
    assert_eq!(
        (status, ready.as_str()),
        (503, "reading manifest.json: not found\n")
    );
}

#[test]
fn a_query_that_would_spill_beyond_its_limit_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = [
        "--query-memory-limit",
        "1GiB",
        "--query-spill-limit",
        "1MiB",
        "--sql-timeout",
        "60s",
    ];
    let (_page, addr) = served(tmp.path(), &flags);
    // A window over two million strings of about 600 bytes: sorted beyond the pool (512 MiB).
    let q = "SELECT s, ROW_NUMBER() OVER (ORDER BY s) AS n FROM (SELECT \
             repeat(CAST(value AS VARCHAR), 100) AS s FROM generate_series(1, 2000000))";
    let (status, reply) = sql(&addr, q);
    assert_eq!(status, 400, "{reply}");
    let said = reply["error"].as_str().unwrap();
    assert!(
        said.starts_with(
            "the query needs more disk to spill to than a query may use (--query-spill-limit)"
        ),
        "{said}"
    );
    assert!(said.contains("1024.0 KB"), "{said}");
}

/// A connection (with a small receive buffer) that posts `query`, reads the start of the
/// answer and no more: `Some` when the answer was a 200 (the connection holds it), `None`
/// when it was refused.
fn slow_reader(addr: &str, source: &str, query: &str) -> Option<std::net::TcpStream> {
    use std::io::Read;
    let mut s = common::http::connect_with(addr, source, Some(4096)).ok()?;
    let body = serde_json::json!({ "sql": query }).to_string();
    write!(
        s,
        "POST /api/sql HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut start = [0u8; 12];
    s.read_exact(&mut start).ok()?;
    (&start == b"HTTP/1.1 200").then_some(s)
}

#[test]
fn slow_readers_cannot_pile_answers_up_in_the_serving_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (page, addr) = served(tmp.path(), &["--sql-timeout", "30s"]);
    let pid = page.child.id();
    let rss = || common::procfs::status_kib(pid, "VmRSS:").unwrap();
    // Warm: the query once, read whole.
    let q = "SELECT repeat('x', 4000) AS s FROM generate_series(1, 1000)";
    assert_eq!(sql(&addr, q).0, 200);
    let before = rss();
    // 200 clients (on four addresses), each trying for 20 s to get an answer it then
    // never reads.
    let deadline = Instant::now() + Duration::from_secs(20);
    let readers: Vec<_> = (0..200)
        .map(|i| {
            let (addr, source) = (addr.clone(), format!("127.0.0.{}", 2 + i % 4));
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    if let Some(held) = slow_reader(&addr, &source, q) {
                        return Some(held);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                None
            })
        })
        .collect();
    let held: Vec<_> = readers
        .into_iter()
        .filter_map(|r| r.join().unwrap())
        .collect();
    let after = rss();
    eprintln!(
        "figures: serving process RSS {} MiB before, {} MiB with {} answers held by clients \
         that do not read",
        before / 1024,
        after / 1024,
        held.len()
    );
    assert!(held.len() >= 8, "{} answers held", held.len());
    assert!(
        after < before + 64 * 1024,
        "grew from {before} to {after} KiB"
    );
    // After 30 s without taking a byte, their connections are cut and the budget is back:
    // a 4 MB answer fits again while they still hold their sockets open.
    let stalled = Instant::now();
    wait_until(Duration::from_secs(60), "answers to fit again", || {
        sql(&addr, q).0 == 200
    });
    eprintln!("figures: the budget was back {:?} later", stalled.elapsed());
    for mut s in held {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let read = s.read_to_end(&mut Vec::new());
        assert!(
            read.is_ok()
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
    }
}
