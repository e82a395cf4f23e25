//! The golden fixture: a hand-checked CSV and hand-computed tables (tests/golden/README.md).

mod common;

use std::path::{Path, PathBuf};

use common::{manifest, query_csv, run};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn expected(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

const RFM_SQL: &str =
    "SELECT user_id, to_char(first_purchase, '%Y-%m-%d %H:%M:%S') AS first_purchase, \
     to_char(last_purchase, '%Y-%m-%d %H:%M:%S') AS last_purchase, frequency, monetary, items, \
     recency_days, r_score, f_score, m_score, rfm_cell, segment FROM rfm ORDER BY user_id";

#[test]
fn golden_tables_in_event_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let summary = run(&fixture("input.csv"), dir.path(), &[]);
    let field = |name: &str| {
        summary
            .lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(name)).then(|| w.next().unwrap_or("").to_string())
            })
            .unwrap_or_default()
    };
    assert_eq!(field("accepted"), "10", "{summary}");
    assert_eq!(field("rejected"), "9", "{summary}");
    assert_eq!(field("customers"), "4", "{summary}");
    assert_eq!(field("revenue"), "2,005.38", "{summary}");
    assert_eq!(field("Champion"), "1", "{summary}");

    let q = |sql: &str| query_csv(dir.path(), sql);
    assert_eq!(
        q("SELECT * FROM daily_sales ORDER BY day"),
        expected("daily_sales.csv")
    );
    assert_eq!(
        q("SELECT * FROM daily_category_sales ORDER BY day, category_code NULLS FIRST"),
        expected("daily_category_sales.csv")
    );
    assert_eq!(
        q("SELECT * FROM daily_brand_sales ORDER BY day, brand NULLS FIRST"),
        expected("daily_brand_sales.csv")
    );
    assert_eq!(q(RFM_SQL), expected("rfm.csv"));

    let m = manifest(dir.path());
    let c = &m["counts"];
    assert_eq!(c["records"], 19);
    assert_eq!(c["accepted"], 10);
    assert_eq!(c["pending"], 0);
    assert_eq!(c["repaired"], 2);
    assert_eq!(c["blank"], 1);
    assert_eq!(
        c["rejected"],
        serde_json::json!({
            "malformed_row": 2, "invalid_event_time": 1, "event_time_out_of_range": 1,
            "invalid_order_id": 1, "invalid_product_id": 1, "missing_price": 1,
            "invalid_price": 1, "invalid_user_id": 1
        })
    );
    assert_eq!(m["input"]["complete"], true);
    assert_eq!(m["as_of"], "2020-04-26T21:00:00Z");

    // Every rejected line is kept with its number, reason and original bytes.
    let rejected = std::fs::read(dir.path().join("rejected.csv")).unwrap();
    let text = String::from_utf8_lossy(&rejected);
    let pairs: Vec<String> = text
        .lines()
        .skip(1)
        .map(|l| l.splitn(3, ',').take(2).collect::<Vec<_>>().join(","))
        .collect();
    assert_eq!(
        pairs,
        [
            "8,event_time_out_of_range",
            "11,invalid_price",
            "12,invalid_user_id",
            "13,malformed_row",
            "16,invalid_order_id",
            "17,malformed_row",
            "19,invalid_event_time",
            "20,invalid_product_id",
            "21,missing_price"
        ]
    );
    let line17: &[u8] = b"17,malformed_row,\"2020-04-26 20:00:00 UTC,2294500000000000010,1515966223509089914,2.268105426648171e+18,electronics.tablet,apple\xff,1.00,\"\n";
    assert!(rejected.windows(line17.len()).any(|w| w == line17));
}

#[test]
fn golden_in_file_order_has_one_late_event() {
    let dir = tempfile::tempdir().unwrap();
    run(&fixture("input.csv"), dir.path(), &["--order", "file"]);
    let m = manifest(dir.path());
    assert_eq!(m["counts"]["accepted"], 9);
    assert_eq!(m["counts"]["rejected"]["late_event"], 1);
    assert_eq!(
        query_csv(dir.path(), "SELECT day, revenue, items, orders, customers FROM daily_sales ORDER BY day"),
        "day,revenue,items,orders,customers\n2020-04-24,401.54,3,2,2\n2020-04-25,390.51,3,3,1\n2020-04-26,213.33,3,2,2\n"
    );
    // The late line changes no RFM state either: that customer only has line 18.
    assert_eq!(
        query_csv(
            dir.path(),
            "SELECT frequency, monetary, items FROM rfm WHERE user_id = 1515915625500000000"
        ),
        "frequency,monetary,items\n1,12.34,1\n"
    );
    let rejected =
        String::from_utf8_lossy(&std::fs::read(dir.path().join("rejected.csv")).unwrap())
            .into_owned();
    assert!(
        rejected.contains("15,late_event,\"2020-04-24 12:00:00 UTC,2294500000000000009,"),
        "{rejected}"
    );
}
