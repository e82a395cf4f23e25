//! The store page in a real browser (headless Chromium through ChromeDriver) against a
//! running pipeline (`run --http-addr`): it follows new snapshots without a reload, each
//! chart shows what `storepulse query` returns on the same snapshot, the period picker,
//! the customer look-up and the SQL box work, the console stays clean, and it fits a
//! phone's width. Screenshots land in the test's target directory.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use common::browser::Browser;
use common::http::{get, post_json as post};
use common::query_csv;
use common::spawn::free_port;
use common::wait::wait_until;

/// CSV rows of a query (header dropped), each split on commas (the values compared here
/// hold none).
fn rows(dir: &Path, sql: &str) -> Vec<Vec<String>> {
    query_csv(dir, sql)
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

/// The bars of a chart as (name, value) pairs.
fn bars(b: &Browser, chart: &str) -> Vec<(String, String)> {
    let v = b.eval(
        "return [...document.querySelectorAll('[data-chart=\"' + arguments[0] + '\"] .bar')]\
         .map(g => [g.dataset.name, g.dataset.value]);",
        json!([chart]),
    );
    serde_json::from_value(v).unwrap()
}

fn pairs(rows: Vec<Vec<String>>) -> Vec<(String, String)> {
    rows.into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect()
}

#[test]
fn the_store_page_shows_what_query_returns_and_follows_new_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), 20000, 7);
    let dir = tmp.path().join("snaps");
    let addr = format!("127.0.0.1:{}", free_port());
    // About 25 s of replay with a snapshot every second.
    let mut run = common::spawn_run(
        &input,
        &dir,
        &[
            "--speed",
            "1100000",
            "--snapshot-interval",
            "1s",
            "--metrics-addr",
            "127.0.0.1:0",
            "--http-addr",
            &addr,
        ],
    );
    run.wait_listening(&addr, Duration::from_secs(60));
    wait_until(Duration::from_secs(60), "a snapshot served", || {
        get(&addr, "/api/snapshot").0 == 200
    });

    let b = Browser::start(1280, 2400);
    b.goto(&format!("http://{addr}/"));
    b.wait_for(
        "return document.body.dataset.version",
        Duration::from_secs(30),
    );
    b.eval("window.loadedOnce = true; return 1;", json!([]));
    // While the run goes on, the page moves to each new snapshot by itself.
    let mut versions = std::collections::BTreeSet::new();
    wait_until(Duration::from_secs(120), "the run to finish", || {
        let v = b.eval("return document.body.dataset.version;", json!([]));
        versions.insert(v.as_str().unwrap_or_default().to_string());
        !run.running()
    });
    run.wait_ok(Duration::from_secs(30));
    assert!(versions.len() >= 3, "the page showed only {versions:?}");
    assert_eq!(
        b.eval("return window.loadedOnce === true;", json!([])),
        json!(true),
        "reloaded"
    );

    // The run is over (its page with it): `serve` shows its final snapshot, which stays
    // put while the page is compared with `query`.
    let run_addr = addr;
    let addr = format!("127.0.0.1:{}", free_port());
    let _serve = common::serve(&dir, &addr, Duration::from_secs(60));
    wait_until(Duration::from_secs(60), "serve to answer", || {
        get(&addr, "/api/snapshot").0 == 200
    });
    b.goto(&format!("http://{addr}/"));
    let latest = std::fs::read_to_string(dir.join("LATEST"))
        .unwrap()
        .trim()
        .to_string();
    b.wait_for(
        &format!("return document.body.dataset.version === '{latest}';"),
        Duration::from_secs(30),
    );

    // Each chart against `query` on the same (final) snapshot.
    let manifest = common::manifest(&dir);
    assert_eq!(
        b.eval(
            "return document.querySelector('#as-of').textContent;",
            json!([])
        ),
        manifest["as_of"]
    );
    let daily = rows(
        &dir,
        "SELECT CAST(day AS VARCHAR) AS day, revenue, orders FROM daily_sales ORDER BY day",
    );
    assert!(daily.len() > 300);
    let points = |chart: &str| -> Vec<(String, String)> {
        let v = b.eval(
            "return [...document.querySelectorAll('[data-chart=\"' + arguments[0] + '\"] circle')]\
             .map(c => [c.dataset.day, c.dataset.value]);",
            json!([chart]),
        );
        serde_json::from_value(v).unwrap()
    };
    let want: Vec<(String, String)> = daily.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    assert_eq!(points("daily-revenue"), want);
    let want: Vec<(String, String)> = daily.iter().map(|r| (r[0].clone(), r[2].clone())).collect();
    assert_eq!(points("daily-orders"), want);

    let top = |table: &str, column: &str, measure: &str, period: &str| {
        pairs(rows(
            &dir,
            &format!(
                "SELECT COALESCE({column}, '(unknown)') AS name, SUM({measure}) AS v FROM {table} \
                 {period} GROUP BY 1 ORDER BY v DESC, name LIMIT 10"
            ),
        ))
    };
    assert_eq!(
        bars(&b, "categories-revenue"),
        top("daily_category_sales", "category_code", "revenue", "")
    );
    assert_eq!(
        bars(&b, "categories-units"),
        top("daily_category_sales", "category_code", "items", "")
    );
    assert_eq!(
        bars(&b, "brands-revenue"),
        top("daily_brand_sales", "brand", "revenue", "")
    );
    assert_eq!(
        bars(&b, "brands-units"),
        top("daily_brand_sales", "brand", "items", "")
    );

    let orders: Vec<(String, String)> = rows(
        &dir,
        "SELECT LEAST(frequency, 10) AS o, COUNT(*) FROM rfm GROUP BY 1 ORDER BY 1",
    )
    .into_iter()
    .map(|r| {
        (
            if r[0] == "10" {
                "10+".into()
            } else {
                r[0].clone()
            },
            r[1].clone(),
        )
    })
    .collect();
    assert_eq!(bars(&b, "orders-per-customer"), orders);

    let bounds = [10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];
    let mut spend = vec![0u64; bounds.len() + 1];
    for r in rows(&dir, "SELECT monetary FROM rfm") {
        let m: f64 = r[0].parse().unwrap();
        spend[bounds.iter().filter(|&&b| m >= b).count()] += 1;
    }
    let shown: Vec<u64> = bars(&b, "spend-per-customer")
        .iter()
        .map(|(_, v)| v.parse().unwrap())
        .collect();
    assert_eq!(shown, spend);
    // Each bucket's label names the range it counts: `query` over that range gives the
    // bar's count, and the ranges follow each other from 0 to an open last one.
    let amount = |text: &str| -> String {
        match text.strip_suffix('k') {
            Some(k) => format!("{}", k.parse::<f64>().unwrap() * 1000.0),
            None => text.to_string(),
        }
    };
    let buckets = bars(&b, "spend-per-customer");
    let mut starts = "0".to_string();
    for (i, (label, value)) in buckets.iter().enumerate() {
        let (lo, hi) = match label.split_once('–') {
            Some((lo, hi)) => (amount(lo), Some(amount(hi))),
            None => (
                amount(label.strip_suffix('+').expect("an open last bucket")),
                None,
            ),
        };
        assert_eq!(
            lo, starts,
            "bucket {label} starts off the previous one's end"
        );
        let range = match &hi {
            Some(hi) => format!("monetary >= {lo} AND monetary < {hi}"),
            None => {
                assert_eq!(i, buckets.len() - 1, "{label} is open but not the last");
                format!("monetary >= {lo}")
            }
        };
        let counted = query_csv(
            &dir,
            &format!("SELECT COUNT(*) AS n FROM rfm WHERE {range}"),
        );
        assert_eq!(counted, format!("n\n{value}\n"), "bucket {label}");
        starts = hi.unwrap_or_default();
    }

    let segments: BTreeMap<String, String> = pairs(rows(
        &dir,
        "SELECT segment, COUNT(*) FROM rfm GROUP BY segment",
    ))
    .into_iter()
    .collect();
    let shown: BTreeMap<String, String> = bars(&b, "segments")
        .into_iter()
        .filter(|(_, v)| v != "0")
        .collect();
    assert_eq!(shown, segments);
    assert_eq!(bars(&b, "segments").len(), 11, "every segment is shown");

    let cells: BTreeMap<(String, String), String> = rows(
        &dir,
        "SELECT r_score, f_score, COUNT(*) FROM rfm GROUP BY 1, 2",
    )
    .into_iter()
    .map(|r| ((r[0].clone(), r[1].clone()), r[2].clone()))
    .collect();
    let shown: Vec<(String, String, String)> = serde_json::from_value(b.eval(
        "return [...document.querySelectorAll('[data-chart=\"rf-grid\"] .cell')]\
         .map(g => [g.dataset.r, g.dataset.f, g.dataset.value]);",
        json!([]),
    ))
    .unwrap();
    assert_eq!(shown.len(), 25);
    let shown: BTreeMap<(String, String), String> = shown
        .into_iter()
        .filter(|c| c.2 != "0")
        .map(|(r, f, n)| ((r, f), n))
        .collect();
    assert_eq!(shown, cells);

    let rejected: Vec<(String, String)> = serde_json::from_value(b.eval(
        "return [...document.querySelectorAll('#rejected tr')].slice(1)\
         .map(tr => [tr.cells[0].textContent, tr.cells[1].textContent]);",
        json!([]),
    ))
    .unwrap();
    let want: BTreeMap<String, String> = manifest["counts"]["rejected"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    assert_eq!(rejected.into_iter().collect::<BTreeMap<_, _>>(), want);

    // The period picker: the last 7 days.
    let last = chrono::NaiveDate::parse_from_str(&daily.last().unwrap()[0], "%Y-%m-%d").unwrap();
    let first = last - chrono::Days::new(6);
    b.eval(
        "document.querySelector('[data-days=\"7\"]').click(); return 1;",
        json!([]),
    );
    b.wait_for(
        &format!(
            "return document.querySelector('#period-note').textContent === '{first} to {last}';"
        ),
        Duration::from_secs(30),
    );
    let period = format!("WHERE day BETWEEN DATE '{first}' AND DATE '{last}'");
    assert_eq!(
        bars(&b, "brands-revenue"),
        top("daily_brand_sales", "brand", "revenue", &period)
    );
    assert_eq!(
        bars(&b, "categories-units"),
        top("daily_category_sales", "category_code", "items", &period)
    );

    // The customer look-up: the best customer, and one whose three scores all differ (so
    // scores shown in the wrong order show).
    for pick in [
        "ORDER BY monetary DESC, user_id",
        "WHERE r_score <> f_score AND f_score <> m_score AND r_score <> m_score ORDER BY user_id",
    ] {
        let c = &rows(
            &dir,
            &format!(
                "SELECT CAST(user_id AS VARCHAR) AS id, segment, r_score, f_score, m_score, \
                 rfm_cell, recency_days, frequency, monetary FROM rfm {pick} LIMIT 1"
            ),
        )[0];
        b.eval(
            "document.querySelector('#customer').innerHTML = '';\
             document.querySelector('#customer-id').value = arguments[0];\
             document.querySelector('#lookup').requestSubmit(); return 1;",
            json!([c[0]]),
        );
        let segment = b.wait_for(
            "const e = document.querySelector('[data-field=\"segment\"]'); return e && e.textContent;",
            Duration::from_secs(30),
        );
        assert_eq!(segment, json!(c[1]), "customer {}", c[0]);
        let field = |name: &str| -> String {
            let v = b.eval(
                "return document.querySelector('[data-field=\"' + arguments[0] + '\"]').textContent;",
                json!([name]),
            );
            v.as_str().unwrap().to_string()
        };
        assert_eq!(
            field("R, F, M scores"),
            format!("{}, {}, {} (cell {})", c[2], c[3], c[4], c[5]),
            "customer {}",
            c[0]
        );
        assert_eq!(field("recency"), format!("{} days", c[6]));
        assert_eq!(field("frequency"), format!("{} orders", c[7]));
        assert_eq!(
            field("monetary").replace(',', ""),
            c[8],
            "customer {}",
            c[0]
        );
        // Without the Delta tables, the segment over time says what it needs (no error).
        let over_time = b.wait_for(
            "const e = document.querySelector('#customer-history');              return e && !e.textContent.includes('reading') && e.textContent;",
            Duration::from_secs(30),
        );
        assert!(
            over_time
                .as_str()
                .unwrap()
                .contains("needs the Delta tables"),
            "{over_time}"
        );
    }

    // The SQL box: its default statement, then one typed in, whose table is what `query`
    // returns for the same SQL (64-bit ids and decimals exact).
    b.eval(
        "document.querySelector('#sql-form').requestSubmit(); return 1;",
        json!([]),
    );
    let note = b.wait_for(
        "return document.querySelector('#sql-note').textContent;",
        Duration::from_secs(30),
    );
    assert_eq!(note, json!(format!("{} rows", segments.len())));
    let sql = "SELECT user_id, segment, monetary, frequency, rfm_cell FROM rfm \
               ORDER BY monetary DESC, user_id LIMIT 25";
    b.eval(
        "document.querySelector('#sql-note').textContent = '';\
         document.querySelector('#sql-result').innerHTML = '';\
         document.querySelector('#sql').value = arguments[0];\
         document.querySelector('#sql-form').requestSubmit(); return 1;",
        json!([sql]),
    );
    b.wait_for(
        "return document.querySelector('#sql-note').textContent;",
        Duration::from_secs(30),
    );
    let shown: Vec<Vec<String>> = serde_json::from_value(b.eval(
        "return [...document.querySelectorAll('#sql-result tr')]\
         .map(tr => [...tr.cells].map(c => c.textContent));",
        json!([]),
    ))
    .unwrap();
    let want: Vec<Vec<String>> = query_csv(&dir, sql)
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    assert_eq!(want.len(), 26, "{want:?}");
    assert_eq!(shown, want);

    // Bad requests get a 400 and a message.
    for path in [
        "/api/overview?from=2020-13-01",
        "/api/overview?top=0",
        "/api/customer/12x",
    ] {
        let (status, _, body) = get(&addr, path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("\"error\""), "{body}");
    }
    assert_eq!(get(&addr, "/api/customer/1").0, 404);
    let (status, reply) = post(&addr, "/api/sql", r#"{"sql": "DROP TABLE rfm"}"#);
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap().contains("read-only"),
        "{reply}"
    );
    assert_eq!(post(&addr, "/api/sql", "SELECT 1").0, 400);
    let (status, reply) = post(
        &addr,
        "/api/sql",
        r#"{"sql": "SELECT user_id FROM rfm", "limit": 5}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(reply["rows"].as_array().unwrap().len(), 5);
    assert_eq!(reply["truncated"], json!(true));
    assert_eq!(reply["columns"], json!(["user_id"]));

    // The only error allowed: the page polling the run's address after the run ended,
    // before it was sent to `serve` (the browser logs every refused request).
    let gone = |message: &str| {
        message.contains(&format!("http://{run_addr}/api/"))
            && message.contains("ERR_CONNECTION_REFUSED")
    };
    let errors: Vec<(String, String)> = b
        .console()
        .into_iter()
        .filter(|(level, message)| (level == "SEVERE" || level == "WARNING") && !gone(message))
        .collect();
    assert!(errors.is_empty(), "console: {errors:?}");
    let png = b.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("store-page.png"),
        png,
    )
    .unwrap();

    // Large values: the longest bar's label is drawn whole, with thousands grouped and
    // the cents kept.
    let labels: Vec<(String, f64, f64)> = serde_json::from_value(b.eval(
        "const svg = document.querySelector('[data-chart=\"brands-revenue\"]');\
         barChart(svg, [{name: 'a brand with a long name', revenue: '123456789.10'},\
                        {name: 'small', revenue: '5.00'}],\
           (it) => Number(it.revenue), (it) => it.revenue, 'red', (it) => money(it.revenue));\
         const width = svg.viewBox.baseVal.width;\
         return [...svg.querySelectorAll('.bar text.value')]\
           .map((t) => { const b = t.getBBox(); return [t.textContent, b.x + b.width, width]; });",
        json!([]),
    ))
    .unwrap();
    let shown: Vec<&str> = labels.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(shown, ["123,456,789.10", "5.00"]);
    for (text, right, width) in &labels {
        assert!(right <= width, "{text} ends at {right}, beyond {width}");
    }

    // A phone: nothing wider than the screen.
    let phone = Browser::start(390, 844);
    phone.goto(&format!("http://{addr}/"));
    phone.wait_for(
        "return document.body.dataset.version",
        Duration::from_secs(30),
    );
    assert_eq!(
        phone.eval(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            json!([])
        ),
        json!(true)
    );
    std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("store-page-phone.png"),
        phone.screenshot(),
    )
    .unwrap();
}
