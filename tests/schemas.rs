//! The contracts under `schemas/` match what the code writes.

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
