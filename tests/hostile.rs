//! Hostile requests against a live `run --http-addr`: queries that try to eat the memory or
//! the CPU, a crowd of slow connections and concurrent queries, cross-site posts and a
//! rebound host name. The pipeline beside the page must not notice: its memory stays
//! flat, its health endpoints stay quick, and its tables end up exactly those of a run
//! nobody bothered. Figures (peak memory, `/healthz` latency) are printed with
//! `--nocapture`. Beside it, `serve` with no snapshot, a stopped page worker and a snapshot
//! whose files vanish: not ready, answered from the cache, never served from gone files.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::http::{connect, get, request, sql};
use common::procfs::{children, cpu_seconds, status_kib, workers};
use common::query_tables;
use common::spawn::free_port;
use common::wait::wait_until;

/// Samples the resident memory of the query workers of `pid` until stopped; the largest
/// seen, in KiB.
fn watch_workers(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::SeqCst) {
            for c in children(pid) {
                peak = peak.max(status_kib(c, "VmHWM:").unwrap_or(0));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn hostile_requests_leave_the_pipeline_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 20000, 7);
    // What nobody bothered produces.
    let reference = tmp.path().join("reference");
    common::run(&input, &reference, &[]);

    let dir = tmp.path().join("snaps");
    let (page, metrics) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    const LIMIT_MIB: u64 = 1024;
    let limit = format!("{LIMIT_MIB}MiB");
    // Paced to last about two minutes; stopped (SIGTERM) once the requests are done and
    // finished by `run --resume`.
    let mut run = common::spawn_run(
        &input,
        &dir,
        &[
            "--speed",
            "200000",
            "--snapshot-interval",
            "1s",
            "--metrics-addr",
            &metrics,
            "--http-addr",
            &page,
            "--sql-timeout",
            "3s",
            "--sql-concurrency",
            "2",
            "--query-memory-limit",
            &limit,
            "--http-max-connections",
            "300",
            // The crowds below are many clients, here all from one address.
            "--http-max-client-connections",
            "300",
            "--http-header-timeout",
            "3s",
        ],
    );
    run.wait_listening(&page, Duration::from_secs(90));
    let pid = run.child.id();
    wait_until(Duration::from_secs(90), "the page's first snapshot", || {
        get(&page, "/readyz").0 == 200
    });
    // Enough customers that a self join of `rfm` is large.
    wait_until(Duration::from_secs(90), "200 customers", || {
        let (status, reply) = sql(&page, "SELECT CAST(COUNT(*) AS INT) AS n FROM rfm");
        status == 200 && reply["rows"][0]["n"].as_u64().unwrap_or(0) >= 200
    });
    let tmp_path = tmp.path().canonicalize().unwrap().display().to_string();
    let mut said = Vec::new();
    let baseline_kib = status_kib(pid, "VmHWM:").unwrap();

    // 1. Memory: each of these fails alone, with a message, and the run never grows.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_workers(pid, stop.clone());
    // Each with the status and the words it must get (a memory-eating query that merely
    // timed out would be a 504 with other words).
    const MEMORY: &str = "more memory than a query may use";
    for (q, want, says) in [
        ("SELECT repeat('x', 2000000000) AS s", 400, MEMORY),
        ("SELECT length(repeat('x', 2147483647)) AS n", 400, MEMORY),
        (
            "SELECT array_agg(value) FROM generate_series(1, 1000000000000)",
            400,
            "at most 10000000 are allowed",
        ),
        ("SELECT array_agg(value) FROM generate_series(1, 9000000)", 400, MEMORY),
        (
            "SELECT string_agg(repeat('x', 1000), ',') FROM generate_series(1, 10000000)",
            400,
            MEMORY,
        ),
        // A self cross join whose every row keeps a kilobyte: memory, before time, runs out.
        (
            "SELECT array_agg(repeat('x', 1000)) FROM rfm a, rfm b, rfm c, rfm d",
            400,
            MEMORY,
        ),
        (
            "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT COUNT(*) FROM t",
            400,
            "ecursive",
        ),
        ("SELECT range(1, 1000000000000)", 400, "range"),
    ] {
        let started = Instant::now();
        let (status, reply) = sql(&page, q);
        eprintln!("{status} in {:?}: {q}: {reply}", started.elapsed());
        let error = reply["error"].as_str().unwrap().to_string();
        assert_eq!(status, want, "{q}: {reply}");
        assert!(error.contains(says), "{q}: {error}");
        said.push(error);
        assert_eq!(get(&metrics, "/healthz").0, 200);
    }
    // An aggregation of ten million groups: refused, stopped, or (spilling where the pool
    // is full) answered within the answer's bounds; never the run's memory.
    let q = "SELECT value % 1000000000 AS k, COUNT(*) AS n FROM generate_series(1, 10000000) \
             GROUP BY 1 ORDER BY 2 DESC, 1";
    let (status, reply) = sql(&page, q);
    eprintln!("{status}: {q}");
    match status {
        200 => assert_eq!(reply["truncated"], true, "{q}"),
        _ => assert!([400, 504].contains(&status), "{q}: {status} {reply}"),
    }
    stop.store(true, Ordering::SeqCst);
    let worker_peak_kib = watcher.join().unwrap();
    let after_kib = status_kib(pid, "VmHWM:").unwrap();
    eprintln!(
        "figures: run peak memory {} MiB before the memory-eating queries, {} MiB after; \
         largest query worker {} MiB (limit {LIMIT_MIB} MiB)",
        baseline_kib / 1024,
        after_kib / 1024,
        worker_peak_kib / 1024
    );
    assert!(
        after_kib < baseline_kib + 64 * 1024,
        "the run grew from {baseline_kib} to {after_kib} KiB"
    );
    assert!(
        worker_peak_kib <= LIMIT_MIB * 1024,
        "a worker reached {worker_peak_kib} KiB"
    );
    assert!(
        said.iter()
            .any(|e| e.contains("more memory than a query may use")),
        "{said:?}"
    );
    let (status, reply) = sql(&page, "SELECT COUNT(*) AS n FROM rfm");
    assert_eq!(status, 200, "a query after them: {reply}");

    // 2. Time: the limit stops the work, not only the wait.
    let busy =
        "SELECT COUNT(*) AS n FROM generate_series(1, 10000000) a, generate_series(1, 10000000) b \
                WHERE a.value + b.value = 3";
    let page2 = page.clone();
    let started = Instant::now();
    let idle: Vec<(u32, f64)> = workers(pid, "sql")
        .into_iter()
        .map(|p| (p, cpu_seconds(&[p])))
        .collect();
    let slow = std::thread::spawn(move || sql(&page2, busy));
    // The query has reached a worker once one uses CPU (a new one, or an idle one again).
    wait_until(Duration::from_secs(5), "the busy query to run", || {
        workers(pid, "sql").into_iter().any(|p| {
            let was = idle.iter().find(|(q, _)| *q == p).map_or(0.0, |(_, c)| *c);
            cpu_seconds(&[p]) - was > 0.1
        })
    });
    let working = workers(pid, "sql");
    let before: Vec<f64> = working.iter().map(|p| cpu_seconds(&[*p])).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let (busiest, used) = working
        .iter()
        .zip(&before)
        .map(|(p, c)| (*p, (cpu_seconds(&[*p]) - c) / t0.elapsed().as_secs_f64()))
        .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a });
    let (status, reply) = slow.join().unwrap();
    let took = started.elapsed();
    assert_eq!(status, 504, "{reply}");
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    // Workers run at nice 10: on a busy machine they get little, but not nothing.
    assert!(used > 0.05, "the query used {used:.2} CPUs while it ran");
    let stopped_at = Instant::now();
    wait_until(Duration::from_secs(5), "the busy worker to go", || {
        !Path::new(&format!("/proc/{busiest}")).exists()
    });
    let gone = stopped_at.elapsed();
    let now = workers(pid, "sql");
    let (c1, t1) = (cpu_seconds(&now), Instant::now());
    std::thread::sleep(Duration::from_millis(1000));
    let after = (cpu_seconds(&now) - c1) / t1.elapsed().as_secs_f64();
    eprintln!(
        "figures: the busy query used {used:.2} CPUs, answered 504 after {took:?}; its worker \
         was gone {gone:?} later; the workers left use {after:.2} CPUs"
    );
    assert!(
        after < 0.02 && after < used / 4.0,
        "workers still use {after:.2} CPUs after the time limit"
    );
    said.push(reply["error"].as_str().unwrap().to_string());

    // 3. Answers are exact: money as decimal strings, 64-bit ids as strings, always, and
    // a self join's columns told apart.
    let (status, reply) = sql(
        &page,
        "SELECT CAST(12.50 AS DECIMAL(18,2)) AS m, CAST(9007199254740993 AS BIGINT) AS big, \
         CAST(7 AS BIGINT) AS small, 1.5 AS f",
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["rows"][0]["m"], "12.50");
    assert_eq!(reply["rows"][0]["big"], "9007199254740993");
    assert_eq!(reply["rows"][0]["small"], "7");
    assert_eq!(reply["rows"][0]["f"], 1.5);
    let (status, reply) = sql(
        &page,
        "SELECT a.user_id, b.user_id, a.monetary FROM rfm a JOIN rfm b ON a.user_id = b.user_id \
         ORDER BY a.monetary DESC LIMIT 3",
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["columns"],
        serde_json::json!(["a.user_id", "b.user_id", "monetary"])
    );
    for row in reply["rows"].as_array().unwrap() {
        assert!(
            row["a.user_id"].is_string() && row["a.user_id"] == row["b.user_id"],
            "{row}"
        );
        let m = row["monetary"].as_str().unwrap();
        assert_eq!(m.split('.').nth(1).map(str::len), Some(2), "{m}");
    }
    let (status, reply) = sql(&page, "SELECT * FROM (SELECT 1 AS x) a, (SELECT 2 AS x) b");
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["columns"], serde_json::json!(["a.x", "b.x"]));
    assert_eq!(
        reply["rows"][0],
        serde_json::json!({"a.x": "1", "b.x": "2"})
    );
    let (status, reply) = sql(&page, "SELECT 1 AS x, 2 AS x");
    assert_eq!(status, 400, "{reply}");

    // 4. Crowds: 200 connections that send their headers slowly and 50 queries at once,
    // while `/healthz` (page and metrics) is probed.
    let slow_conns: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = connect(&page).unwrap();
            s.write_all(b"GET /api/overview HTTP/1.1\r\nHo").unwrap();
            s
        })
        .collect();
    let crowd_start = Instant::now();
    // Each query would run until stopped: two run (and are stopped after 3 s), the rest
    // are refused.
    let (ran, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let queries: Vec<_> = (0..50)
        .map(|_| {
            let (page, ran, refused) = (page.clone(), ran.clone(), refused.clone());
            std::thread::spawn(move || {
                let (status, reply) = sql(&page, busy);
                match status {
                    504 => ran.fetch_add(1, Ordering::SeqCst),
                    429 => refused.fetch_add(1, Ordering::SeqCst),
                    _ => panic!("{status}: {reply}"),
                };
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut metric_latencies = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(get(&page, "/healthz").0, 200);
        latencies.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(get(&metrics, "/healthz").0, 200);
        metric_latencies.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    for q in queries {
        q.join().unwrap();
    }
    latencies.sort();
    metric_latencies.sort();
    let (a, r) = (ran.load(Ordering::SeqCst), refused.load(Ordering::SeqCst));
    eprintln!(
        "figures: under 200 slow connections and 50 queries ({a} ran until stopped, {r} refused 429): \
         page /healthz p50 {:?} p90 {:?} max {:?}; metrics /healthz p50 {:?} p90 {:?} max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        latencies.last().unwrap(),
        percentile(&metric_latencies, 0.5),
        percentile(&metric_latencies, 0.9),
        metric_latencies.last().unwrap(),
    );
    assert_eq!(a + r, 50);
    assert!(a >= 2 && r >= 40, "{a} ran, {r} refused");
    assert!(
        percentile(&latencies, 0.9) < Duration::from_millis(100),
        "{latencies:?}"
    );
    assert!(
        percentile(&metric_latencies, 0.9) < Duration::from_millis(100),
        "{metric_latencies:?}"
    );
    // The slow connections are closed once their header time is up.
    for mut s in slow_conns {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        // The end of the stream, not a read that timed out.
        let read = s.read_to_end(&mut buf);
        assert!(
            read.is_ok()
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
        assert!(
            buf.is_empty() || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
    }
    assert!(
        crowd_start.elapsed() < Duration::from_secs(30),
        "slow connections were kept"
    );
    // Beyond the connection cap, a quick refusal.
    let mut held: Vec<TcpStream> = (0..310).map(|_| connect(&page).unwrap()).collect();
    for s in &held {
        s.set_nonblocking(true).unwrap();
    }
    let mut busy = 0;
    wait_until(
        Duration::from_secs(10),
        "10 connections refused beyond the cap",
        || {
            held.retain_mut(|s| {
                let mut buf = [0u8; 64];
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        busy += usize::from(
                            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 503"),
                        );
                        false
                    }
                    _ => true,
                }
            });
            busy >= 10
        },
    );
    drop(held);
    wait_until(
        Duration::from_secs(10),
        "the page to take connections again",
        || get(&page, "/healthz").0 == 200,
    );

    // 5. Other sites: a form post, a fetch without a preflight, a rebound host name.
    let form = request(
        &page,
        "POST",
        "/api/sql",
        &[
            ("Content-Type", "text/plain"),
            ("Origin", "http://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        r#"{"sql": "SELECT * FROM rfm"}"#,
    );
    assert_eq!(form.0, 403, "{form:?}");
    let plain = request(
        &page,
        "POST",
        "/api/sql",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        r#"{"sql": "SELECT * FROM rfm"}"#,
    );
    assert_eq!(plain.0, 415, "{plain:?}");
    for path in ["/", "/api/overview", "/api/snapshot"] {
        let rebound = request(&page, "GET", path, &[("Host", "evil.example:8080")], "");
        assert_eq!(rebound.0, 403, "{path}: {rebound:?}");
    }
    let (status, head, _) = get(&page, "/");
    assert_eq!(status, 200);
    let head = head.to_ascii_lowercase();
    for h in [
        "x-content-type-options: nosniff",
        "content-security-policy: default-src 'none'; script-src 'self'",
        "referrer-policy: no-referrer",
        "x-frame-options: deny",
    ] {
        assert!(head.contains(h), "no {h} in {head}");
    }

    // 6. No answer names a path of this machine, not even one the query named.
    let (_, _, snapshot) = get(&page, "/api/snapshot");
    said.push(snapshot);
    let (status, reply) = sql(
        &page,
        &format!("SELECT * FROM '{tmp_path}/elsewhere/data.csv'"),
    );
    let error = reply["error"].as_str().unwrap().to_string();
    assert_eq!(status, 400, "{reply}");
    assert!(error.contains("data.csv"), "{error}");
    said.push(error);
    for text in &said {
        assert!(
            !text.contains(&tmp_path) && !text.contains("/tmp/"),
            "{text}"
        );
    }
    assert_eq!(get(&metrics, "/readyz").0, 200);
    // What an operator sees of all this.
    let (_, _, text) = get(&metrics, "/metrics");
    let outcome = |o: &str| -> f64 {
        let name = format!("storepulse_page_sql_queries_total{{outcome=\"{o}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&name))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    assert!(outcome("too_many") >= 40.0, "{text}");
    assert!(outcome("timed_out") >= 3.0, "{text}");
    assert!(outcome("out_of_memory") >= 2.0, "{text}");
    assert!(outcome("answered") >= 3.0, "{text}");

    // The pipeline never noticed: stopped and resumed, its tables are exact.
    assert!(
        run.running(),
        "the run ended before the requests did: {}",
        run.stderr()
    );
    run.terminate(Duration::from_secs(60));
    common::run(&input, &dir, &["--resume"]);
    assert_eq!(query_tables(&dir), query_tables(&reference));
}

#[test]
fn the_page_is_ready_only_with_a_snapshot_caches_overviews_and_never_serves_pruned_files() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 3000, 5);
    let dir = tmp.path().join("snaps");
    std::fs::create_dir_all(&dir).unwrap();
    let page = format!("127.0.0.1:{}", free_port());
    let serve = common::serve(&dir, &page, Duration::from_secs(30));
    let pid = serve.child.id();
    // Up, but with nothing to answer from: not ready.
    assert_eq!(get(&page, "/healthz").0, 200);
    let (status, _, why) = get(&page, "/readyz");
    assert_eq!(status, 503, "{why}");
    let (status, _, body) = get(&page, "/api/snapshot");
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"error":"no snapshot yet"}"#)
    );
    // A pointer to a snapshot that is not there: the reason names it, not where it is.
    std::fs::write(dir.join("LATEST"), "snap-000009\n").unwrap();
    let body = common::wait::wait_until_ok(Duration::from_secs(30), "the reason", || {
        match get(&page, "/api/snapshot") {
            (503, _, body) if body.contains("snap-000009") => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });
    let tmp_path = tmp.path().canonicalize().unwrap();
    for path in [tmp.path(), tmp_path.as_path()] {
        assert!(!body.contains(path.to_str().unwrap()), "{body}");
    }
    std::fs::remove_file(dir.join("LATEST")).unwrap();

    // Several snapshots, the newest three kept (and those their chains need).
    common::run(
        &input,
        &dir,
        &["--rate", "3000", "--snapshot-interval", "100ms"],
    );
    let latest = std::fs::read_to_string(dir.join("LATEST"))
        .unwrap()
        .trim()
        .to_string();
    wait_until(
        Duration::from_secs(60),
        "the page on the last snapshot",
        || {
            let (status, _, body) = get(&page, "/api/snapshot");
            status == 200 && body.contains(&format!("\"version\":\"{latest}\""))
        },
    );
    assert_eq!(get(&page, "/readyz").0, 200);
    let (status, _, first) = get(&page, "/api/overview");
    assert_eq!(status, 200, "{first}");
    let version = serde_json::from_str::<Value>(&first).unwrap()["snapshot"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(version, latest);

    // Computed once: with the page's worker stopped, viewers still get it.
    let page_worker = workers(pid, "page");
    assert_eq!(page_worker.len(), 1);
    // SAFETY: signalling a process this test started (a child of `serve`), by its id.
    unsafe { libc::kill(page_worker[0] as i32, libc::SIGSTOP) };
    for _ in 0..10 {
        let (status, _, again) = get(&page, "/api/overview");
        assert_eq!((status, again.as_str()), (200, first.as_str()));
    }
    unsafe { libc::kill(page_worker[0] as i32, libc::SIGCONT) };

    let (status, reply) = sql(&page, "SELECT COUNT(*) AS n FROM rfm");
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["snapshot"], latest.as_str());

    // The newest snapshot's files go while the page has it loaded (`LATEST` unchanged):
    // answers come from the newest that is still whole, never from files that are gone.
    let mut kept: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snap-"))
        .collect();
    kept.sort();
    // The newest three, and what their chains need (the run's periodic snapshots are
    // incremental; its last is whole): the one before the newest may be incremental, and
    // the page then reads it restored through its chain.
    assert!(kept.len() >= 3, "{kept:?}");
    assert_eq!(kept.last(), Some(&latest));
    std::fs::remove_dir_all(dir.join(&latest)).unwrap();
    let previous = &kept[kept.len() - 2];
    let (status, _, body) = get(&page, "/api/snapshot");
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["version"], previous.as_str(), "{info}");
    let (status, reply) = sql(&page, "SELECT COUNT(*) AS n FROM rfm");
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["snapshot"], previous.as_str());
    let (status, _, body) = get(&page, "/api/overview");
    assert_eq!(status, 200, "{body}");
    let overview: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(overview["snapshot"]["version"], previous.as_str());
    // Stopped, the page server leaves no temporary folder of its workers behind.
    serve.terminate(Duration::from_secs(30));
    let left: Vec<String> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("storepulse-worker-{pid}-")))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
