//! The contracts under `schemas/` match what the code writes.

mod common;

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use storepulse::replay::wire::{EventId, WireEvent};
use storepulse::replay::{Dictionary, PurchaseEvent};
use storepulse::snapshot::tables::{schema, QUERY_TABLES};

fn comparable(t: &DataType) -> String {
    match t {
        // The DDL cannot name the unit; the files use microseconds in UTC.
        DataType::Timestamp(_, tz) => format!("Timestamp(tz={})", tz.is_some()),
        // DataFusion maps VARCHAR to its string view type.
        DataType::Utf8View => DataType::Utf8.to_string(),
        other => other.to_string(),
    }
}

#[tokio::test]
async fn snapshot_tables_match_schemas_tables_sql() {
    let ddl = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/tables.sql"))
        .unwrap();
    // TIMESTAMP WITH TIME ZONE takes the session's zone; the files are in UTC.
    let config =
        datafusion::prelude::SessionConfig::new().set_str("datafusion.execution.time_zone", "UTC");
    let ctx = SessionContext::new_with_config(config);
    let code: String = ddl
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let statements: Vec<&str> = code.split(';').filter(|s| !s.trim().is_empty()).collect();
    assert_eq!(statements.len(), QUERY_TABLES.len());
    for stmt in statements {
        ctx.sql(stmt).await.unwrap().collect().await.unwrap();
    }
    for table in QUERY_TABLES {
        let declared = ctx.table(table).await.unwrap().schema().as_arrow().clone();
        let written = schema(table);
        let d: Vec<_> = declared
            .fields()
            .iter()
            .map(|f| (f.name().clone(), comparable(f.data_type()), f.is_nullable()))
            .collect();
        let w: Vec<_> = written
            .fields()
            .iter()
            .map(|f| (f.name().clone(), comparable(f.data_type()), f.is_nullable()))
            .collect();
        assert_eq!(d, w, "{table}");
    }
}

#[test]
fn wire_event_follows_the_json_schema() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/purchase_event.schema.json"
    ))
    .unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut dict = Dictionary::new();
    let full = PurchaseEvent {
        event_time_us: 1_587_729_039_250_000,
        order_id: u64::MAX,
        product_id: 1,
        category_id: Some(2),
        user_id: Some(3),
        price_cents: 5_092_590,
        category: Some(dict.intern("electronics.tablet")),
        brand: Some(dict.intern("samsung")),
        line: 2,
        offset: 0,
    };
    let bare = PurchaseEvent {
        category_id: None,
        user_id: None,
        category: None,
        brand: None,
        ..full
    };
    let id = EventId {
        source: u64::MAX,
        pass: 3,
        line: 2,
    };
    for e in [full, bare] {
        let v = serde_json::to_value(WireEvent::from_event(&e, &dict, id)).unwrap();
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{v}: {errors:?}");
    }
    // The schema is strict where the processor is: these fail it.
    let good = serde_json::to_value(WireEvent::from_event(&full, &dict, id)).unwrap();
    for (field, value) in [
        ("price", serde_json::json!("1.5")),
        ("order_id", serde_json::json!(12)),
        ("event_id", serde_json::json!("12-3")),
        ("schema_version", serde_json::json!(2)),
        ("unknown", serde_json::json!(1)),
    ] {
        let mut bad = good.clone();
        bad[field] = value;
        assert!(!validator.is_valid(&bad), "{field} should fail");
    }
}

#[test]
fn run_summary_follows_the_json_schema_and_matches_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let input = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/input.csv");
    let out = common::ok(&[
        "run",
        "--no-progress",
        "--metrics-addr",
        "127.0.0.1:0",
        "--summary",
        "json",
        "--input",
        input,
        "--snapshot-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.lines().count(), 1, "one object on one line: {out}");
    // `common::summary` validates against schemas/summary.schema.json.
    let v = common::summary(&out);
    let m = common::manifest(dir.path());
    assert_eq!(v["counts"]["records"], m["counts"]["records"]);
    assert_eq!(v["counts"]["records"], 19);
    assert_eq!(v["counts"]["accepted"], 10);
    assert_eq!(v["counts"]["rejected"], 9);
    assert_eq!(v["counts"]["late"], 0);
    assert_eq!(v["counts"]["rejected_by_reason"]["malformed_row"], 2);
    assert_eq!(v["counts"]["rejected_by_reason"]["invalid_price"], 1);
    assert_eq!(v["counts"]["blank"], 1);
    assert_eq!(v["counts"]["repaired"], 2);
    assert_eq!(v["counts"]["rejected_by_reason"]["late_event"], 0);
    assert_eq!(v["records_read_this_run"], 19);
    assert_eq!(v["revenue"], "2005.38");
    assert_eq!(v["customers"], 4);
    assert_eq!(v["segments"]["Champion"], 1);
    assert_eq!(v["snapshot"]["id"], m["id"]);
    assert_eq!(v["first_day"], "2020-04-24");
    assert_eq!(v["state"], "complete");
    let file = std::fs::read_to_string(dir.path().join("summary.json")).unwrap();
    assert_eq!(
        common::summary(&file),
        v,
        "summary.json is the printed object"
    );

    // The schema is strict: a count as text, money as a number, an unknown key, a missing
    // reason or a summary of no known command fail it.
    for (pointer, value) in [
        ("/counts/accepted", serde_json::json!("10")),
        ("/revenue", serde_json::json!(2005.38)),
        ("/unknown", serde_json::json!(1)),
        ("/command", serde_json::json!("serve")),
        ("/counts/pending", serde_json::json!(-1)),
    ] {
        let mut bad = v.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        bad.pointer_mut(if parent.is_empty() { "" } else { parent })
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert(key.to_string(), value);
        assert!(
            !common::summary_errors(&bad).is_empty(),
            "{pointer} should fail"
        );
    }
    let mut bad = v.clone();
    bad["counts"]["rejected_by_reason"]
        .as_object_mut()
        .unwrap()
        .remove("late_event");
    assert!(!common::summary_errors(&bad).is_empty());
}
