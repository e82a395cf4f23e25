//! The Delta tables' history as users read it: `segment_movement` (`query --compare-to`)
//! against pandas over two versions of `rfm`, the SQL box's `as_of` and `compare_to`
//! against `query`, and the page's movement matrix in a browser. Each starts from a run
//! paced so that it commits several versions.

mod common;
#[path = "common/python.rs"]
mod python;

use std::path::{Path, PathBuf};

use common::kafka_cases::LIMIT;

/// A generated input of `rows` lines run at 4,000 lines/s with a snapshot every 200 ms,
/// each committed to the tables: several versions. The folder and the snapshot folder in it.
fn with_versions(rows: u64, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::generate(tmp.path(), rows, seed);
    let dir = tmp.path().join("snaps");
    let paced = [
        "--rate",
        "4000",
        "--snapshot-interval",
        "200ms",
        "--tables",
        "--tables-interval",
        "0s",
    ];
    common::run(&input, &dir, &paced);
    (tmp, dir)
}

/// `query`'s CSV lines (header left out) for `sql` with `flags`, sorted.
fn query_lines(dir: &Path, flags: &[&str], sql: &str) -> Vec<String> {
    let mut args = vec![
        "query",
        "--snapshot-dir",
        dir.to_str().unwrap(),
        "--format",
        "csv",
    ];
    args.extend_from_slice(flags);
    args.push(sql);
    let mut lines: Vec<String> = common::ok(&args)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// `segment_movement` (`query --compare-to`) against pandas over the Delta table `rfm`
/// (`tests/py/movement.py`): the same matrix, money to the cent, for an older version named
/// and for the newest version 60 days of event time before the latest.
#[test]
fn segment_movement_equals_pandas_over_two_versions_of_rfm() {
    let (_tmp, dir) = with_versions(20_000, 68);
    let rfm = std::fs::canonicalize(dir.join("tables/rfm")).unwrap();
    let d = dir.to_str().unwrap();
    let sql = "SELECT from_segment, to_segment, customers, monetary_then, monetary_now, \
               spent_between FROM segment_movement";
    for (since, pandas) in [("3", ["--version", "3"]), ("60d", ["--days", "60"])] {
        let out = common::storepulse(&[
            "query",
            "--snapshot-dir",
            d,
            "--format",
            "csv",
            "--compare-to",
            since,
            sql,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect();
        got.sort();
        let mut args = vec![rfm.display().to_string()];
        args.extend(pandas.iter().map(|a| a.to_string()));
        let mut want = python::script("movement.py", &args, &[]);
        let version = want.remove(0);
        want.sort();
        assert!(want.len() > 5, "{since}: {want:?}");
        assert!(
            want.iter().any(|l| !l.starts_with("(new)") && {
                let mut f = l.split(',');
                f.next() != f.next()
            }),
            "{since}: some customers change segment: {want:?}"
        );
        assert_eq!(got, want, "{since} ({version})");
        // The version compared with is said on stderr.
        let err = String::from_utf8_lossy(&out.stderr);
        let v = version.trim_start_matches("# version ");
        assert!(err.contains(&format!("version={v}")), "{err}");
    }
}

/// `POST /api/sql` with `as_of` and `compare_to` answers what `query --as-of` and
/// `--compare-to` print; a bad or unreachable point is refused with 400, saying why.
#[test]
fn the_sql_box_reads_the_history_as_query_does() {
    let (_tmp, dir) = with_versions(16_000, 69);
    let cli = |flags: &[&str], sql: &str| query_lines(&dir, flags, sql);
    let addr = common::spawn::free_addr();
    let _serve = common::serve(&dir, &addr, LIMIT);
    let boxed = |history: serde_json::Value, sql: &str| -> (u16, serde_json::Value) {
        let mut body = history;
        body["sql"] = sql.into();
        common::http::post_json(&addr, "/api/sql", &body.to_string())
    };
    let movement = "SELECT from_segment || '|' || to_segment || '|' || CAST(customers AS VARCHAR) \
                    || '|' || CAST(spent_between AS VARCHAR) AS line FROM segment_movement";
    let totals = "SELECT CAST(COUNT(*) AS VARCHAR) || '|' || CAST(SUM(monetary) AS VARCHAR) \
                  AS line FROM rfm";
    let cases = [
        (
            serde_json::json!({ "compare_to": "60d" }),
            vec!["--compare-to", "60d"],
            movement,
        ),
        (
            serde_json::json!({ "as_of": "2" }),
            vec!["--as-of", "2"],
            totals,
        ),
        (
            serde_json::json!({ "as_of": "3", "compare_to": "1" }),
            vec!["--as-of", "3", "--compare-to", "1"],
            movement,
        ),
    ];
    for (history, flags, sql) in cases {
        let (status, reply) = boxed(history.clone(), sql);
        assert_eq!(status, 200, "{history}: {reply}");
        let mut got: Vec<String> = reply["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["line"].as_str().unwrap().to_string())
            .collect();
        got.sort();
        let want = cli(&flags, sql);
        assert!(!want.is_empty(), "{history}");
        assert_eq!(got, want, "{history}");
    }
    // The latest differs from version 2: the history was read, not the snapshot.
    assert_ne!(cli(&[], totals), cli(&["--as-of", "2"], totals));
    for (history, said) in [
        (serde_json::json!({ "as_of": "x" }), "`as_of`"),
        (
            serde_json::json!({ "compare_to": "900d" }),
            "no version of rfm kept",
        ),
        (
            serde_json::json!({ "as_of": "999" }),
            "there is no version 999",
        ),
    ] {
        let (status, reply) = boxed(history.clone(), "SELECT 1 AS x");
        assert_eq!(status, 400, "{history}: {reply}");
        assert!(reply["error"].as_str().unwrap().contains(said), "{reply}");
    }
}

/// The page's movement matrix (asked with *compare*) shows, cell by cell, the customers
/// `query --compare-to` counts, and says which version it compared with; a customer's
/// look-up shows their segment over time as `/api/customer/{id}/history` gives it.
#[test]
fn the_page_draws_the_movement_matrix_query_computes() {
    let (_tmp, dir) = with_versions(16_000, 70);
    let sql = "SELECT from_segment || '|' || to_segment || '|' || CAST(customers AS VARCHAR) \
               FROM segment_movement";
    let want = query_lines(&dir, &["--compare-to", "60d"], sql);
    assert!(want.len() > 5, "{want:?}");

    let addr = common::spawn::free_addr();
    let _serve = common::serve(&dir, &addr, LIMIT);
    let b = common::browser::Browser::start(1280, 2400);
    b.goto(&format!("http://{addr}/"));
    b.wait_for(
        "return document.body.dataset.version",
        std::time::Duration::from_secs(30),
    );
    b.eval(
        "document.querySelector('#since').value = '60d'; \
         document.querySelector('#movement-form button').click(); return 1;",
        serde_json::json!([]),
    );
    b.wait_for(
        "return document.querySelectorAll('#movement td[data-customers]').length",
        std::time::Duration::from_secs(30),
    );
    let cells = b.eval(
        "return [...document.querySelectorAll('#movement td[data-customers]')]\
         .map(c => c.dataset.from + '|' + c.dataset.to + '|' + c.dataset.customers);",
        serde_json::json!([]),
    );
    let mut got: Vec<String> = cells
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, want);
    let note = b.eval(
        "return document.querySelector('#movement-note').textContent;",
        serde_json::json!([]),
    );
    assert!(
        note.as_str().unwrap().contains("compared with rfm version"),
        "{note}"
    );

    // A customer's look-up shows their segment over time: the API's points, row by row.
    let id = query_lines(
        &dir,
        &[],
        "SELECT CAST(user_id AS VARCHAR) AS id FROM rfm ORDER BY monetary DESC, user_id LIMIT 1",
    )
    .remove(0);
    let (status, _, body) = common::http::get(&addr, &format!("/api/customer/{id}/history"));
    assert_eq!(status, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    let want: Vec<String> = h["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}|{}", p["version"], text(&p["segment"])))
        .collect();
    assert!(want.len() >= 3, "{h}");
    b.eval(
        "document.querySelector('#customer-id').value = arguments[0];          document.querySelector('#lookup').requestSubmit(); return 1;",
        serde_json::json!([id]),
    );
    b.wait_for(
        "return document.querySelectorAll('#customer-history tr[data-version]').length",
        std::time::Duration::from_secs(30),
    );
    let rows = b.eval(
        "return [...document.querySelectorAll('#customer-history tr[data-version]')]\
         .map(r => r.dataset.version + '|' + r.dataset.segment);",
        serde_json::json!([]),
    );
    let got: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    let errors: Vec<_> = b
        .console()
        .into_iter()
        .filter(|(level, _)| level == "SEVERE" || level == "WARNING")
        .collect();
    assert!(errors.is_empty(), "console: {errors:?}");
}

/// A JSON value as the Python reader prints it: text bare, null empty.
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// `GET /api/customer/{id}/history`: the points' versions, and one line per point as
/// `tests/py/customer.py` prints it.
fn history(addr: &str, id: &str) -> (Vec<u64>, Vec<String>) {
    let (status, _, body) = common::http::get(addr, &format!("/api/customer/{id}/history"));
    assert_eq!(status, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["tables"], true, "{h}");
    assert_eq!(h["unreadable"], 0, "{h}");
    let points = h["points"].as_array().unwrap();
    let versions = points
        .iter()
        .map(|p| p["version"].as_u64().unwrap())
        .collect();
    let fields = ["event_time", "segment", "r_score", "f_score", "m_score"];
    let lines = points
        .iter()
        .map(|p| {
            let mut cells = vec![p["version"].to_string()];
            cells.extend(fields.iter().map(|f| text(&p[*f])));
            cells.extend(["frequency", "monetary"].iter().map(|f| text(&p[*f])));
            cells.join(",")
        })
        .collect();
    (versions, lines)
}

/// A customer's segment over time (`/api/customer/{id}/history`, the page's look-up) is,
/// at every point, what the Python `deltalake` package reads from that version of `rfm`:
/// the result's event time (its latest purchase), the segment, scores, orders and money.
/// The points run from old to new up to the newest version, for a customer who changed
/// segment, one who was not a customer yet at the first point, and nobody.
#[test]
fn a_customers_segment_over_time_is_what_each_version_of_rfm_says() {
    let (_tmp, dir) = with_versions(16_000, 71);
    let rfm = std::fs::canonicalize(dir.join("tables/rfm")).unwrap();
    let addr = common::spawn::free_addr();
    let _serve = common::serve(&dir, &addr, LIMIT);
    let reader = |id: &str, versions: &[u64]| -> Vec<String> {
        let mut args = vec![rfm.display().to_string(), id.to_string()];
        args.extend(versions.iter().map(u64::to_string));
        python::script("customer.py", &args, &[])
    };
    // The points do not depend on the customer: nobody's first.
    let (versions, nobody) = history(&addr, &u64::MAX.to_string());
    assert!((3..=13).contains(&versions.len()), "{versions:?}");
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    let log = std::fs::read_dir(rfm.join("_delta_log")).unwrap();
    let last = log
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".json")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap();
    assert_eq!(
        *versions.last().unwrap(),
        last,
        "the newest version is the last point"
    );
    assert!(nobody.iter().all(|l| l.ends_with(",,,,,,")), "{nobody:?}");

    // A customer in a different segment at the first point and now, and one not there then.
    let first = versions[0].to_string();
    let pick = |condition: &str| -> String {
        let sql = format!(
            "SELECT CAST(n.user_id AS VARCHAR) AS id FROM rfm n LEFT JOIN rfm_then t \
             ON CAST(n.user_id AS DECIMAL(20,0)) = CAST(t.user_id AS DECIMAL(20,0)) \
             WHERE {condition} ORDER BY n.monetary DESC, 1 LIMIT 1"
        );
        let lines = query_lines(&dir, &["--compare-to", &first], &sql);
        assert_eq!(lines.len(), 1, "{condition}: {lines:?}");
        lines[0].clone()
    };
    let moved = pick("t.segment IS NOT NULL AND t.segment <> n.segment");
    let new = pick("t.segment IS NULL");
    for id in [&moved, &new] {
        let (v, got) = history(&addr, id);
        assert_eq!(v, versions, "{id}");
        assert_eq!(got, reader(id, &versions), "{id}");
    }
    let segments = |id: &str| -> Vec<String> {
        history(&addr, id)
            .1
            .iter()
            .map(|l| l.split(',').nth(2).unwrap().to_string())
            .collect()
    };
    let moved_segments = segments(&moved);
    assert_ne!(moved_segments.first(), moved_segments.last());
    assert_eq!(segments(&new).first().map(String::as_str), Some(""));
    assert_eq!(common::http::get(&addr, "/api/customer/x1/history").0, 400);
}
