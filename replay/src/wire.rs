//! The purchase event on the wire (JSON), as described by
//! `schemas/purchase_event.schema.json`. Ids are strings because JSON numbers beyond 2^53
//! lose precision in many consumers; the price is a decimal string so no float touches
//! money. Only this module knows the wire format.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::{Dictionary, PurchaseEvent, Sym};

/// The `schema_version` this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Where an event came from: which input (a hash of its whole content, see
/// [`crate::identify`]), which pass over it (`--loop`) and which line. Deterministic, so a
/// consumer tells a redelivery or a second replay of the same file from a new purchase.
/// Written as `<source:016x>-<loop>-<line>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId {
    pub source: u64,
    pub pass: u32,
    pub line: u64,
}

/// The core's identity of an event, from the wire's.
impl From<EventId> for storepulse_aggregate::SeenId {
    fn from(id: EventId) -> Self {
        Self {
            source: id.source,
            pass: id.pass,
            line: id.line,
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}-{}", self.source, self.pass, self.line)
    }
}

impl std::str::FromStr for EventId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut it = s.splitn(3, '-');
        let source = it.next().filter(|h| h.len() == 16).ok_or(())?;
        Ok(EventId {
            source: u64::from_str_radix(source, 16).map_err(|_| ())?,
            pass: it.next().ok_or(())?.parse().map_err(|_| ())?,
            line: it.next().ok_or(())?.parse().map_err(|_| ())?,
        })
    }
}

/// Money in cents as a decimal string with two decimals, e.g. `162.01`.
pub fn cents_to_decimal(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    format!("{sign}{}.{:02}", c / 100, c % 100)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireEvent {
    /// The wire format's version ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// See [`EventId`].
    pub event_id: String,
    /// RFC 3339, UTC, microsecond precision when needed.
    pub event_time: String,
    pub order_id: String,
    pub product_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    /// Decimal string with two decimals, e.g. "162.01".
    pub price: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// 1-based line of the source file the event came from.
    pub source_line: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("wire event field `{field}` is invalid: {value:?}")]
pub struct WireError {
    pub field: &'static str,
    pub value: String,
}

impl WireEvent {
    pub fn from_event(e: &PurchaseEvent, dict: &Dictionary, id: EventId) -> WireEvent {
        let t = chrono::DateTime::from_timestamp_micros(e.event_time_us)
            .expect("event times come from valid dates");
        WireEvent {
            schema_version: SCHEMA_VERSION,
            event_id: id.to_string(),
            event_time: t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            order_id: e.order_id.to_string(),
            product_id: e.product_id.to_string(),
            category_id: e.category_id.map(|v| v.to_string()),
            category_code: e.category.map(|s| dict.name(s).to_string()),
            brand: e.brand.map(|s| dict.name(s).to_string()),
            price: cents_to_decimal(e.price_cents),
            user_id: e.user_id.map(|v| v.to_string()),
            source_line: e.line,
        }
    }

    /// Back to the compact event, interning names into `dict`. `offset` is unknown (0).
    pub fn to_event(&self, dict: &mut Dictionary) -> Result<PurchaseEvent, WireError> {
        self.view().to_event_with(&mut |name| dict.intern(name))
    }

    /// The event id, checked.
    pub fn id(&self) -> Result<EventId, WireError> {
        self.view().id()
    }

    /// The same event, borrowed.
    pub fn view(&self) -> WireEventRef<'_> {
        fn b(s: &str) -> Cow<'_, str> {
            Cow::Borrowed(s)
        }
        WireEventRef {
            schema_version: self.schema_version,
            event_id: b(&self.event_id),
            event_time: b(&self.event_time),
            order_id: b(&self.order_id),
            product_id: b(&self.product_id),
            category_id: self.category_id.as_deref().map(b),
            category_code: self.category_code.as_deref().map(b),
            brand: self.brand.as_deref().map(b),
            price: b(&self.price),
            user_id: self.user_id.as_deref().map(b),
            source_line: self.source_line,
        }
    }
}

/// A wire event as a processor reads it: the same fields as [`WireEvent`], borrowed from
/// the message where JSON allows (a string without escapes), so decoding one allocates
/// nothing in the common case.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireEventRef<'a> {
    pub schema_version: u32,
    #[serde(borrow)]
    pub event_id: Cow<'a, str>,
    #[serde(borrow)]
    pub event_time: Cow<'a, str>,
    #[serde(borrow)]
    pub order_id: Cow<'a, str>,
    #[serde(borrow)]
    pub product_id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub category_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub category_code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub brand: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub price: Cow<'a, str>,
    #[serde(default, borrow)]
    pub user_id: Option<Cow<'a, str>>,
    pub source_line: u64,
}

impl WireEventRef<'_> {
    /// The event id, checked.
    pub fn id(&self) -> Result<EventId, WireError> {
        self.event_id.parse().map_err(|_| WireError {
            field: "event_id",
            value: self.event_id.to_string(),
        })
    }

    /// Back to the compact event, naming categories and brands through `intern`.
    /// `offset` is unknown (0).
    pub fn to_event_with(
        &self,
        intern: &mut dyn FnMut(&str) -> Sym,
    ) -> Result<PurchaseEvent, WireError> {
        let bad = |field: &'static str, value: &str| WireError {
            field,
            value: value.to_string(),
        };
        let id = |field: &'static str, v: &str| v.parse::<u64>().map_err(|_| bad(field, v));
        let event_time_us = crate::fields::parse_rfc3339(&self.event_time)
            .ok_or_else(|| bad("event_time", &self.event_time))?;
        Ok(PurchaseEvent {
            event_time_us,
            order_id: id("order_id", &self.order_id)?,
            product_id: id("product_id", &self.product_id)?,
            category_id: self
                .category_id
                .as_deref()
                .map(|v| id("category_id", v))
                .transpose()?,
            user_id: self
                .user_id
                .as_deref()
                .map(|v| id("user_id", v))
                .transpose()?,
            price_cents: crate::fields::parse_price_cents(&self.price)
                .ok_or_else(|| bad("price", &self.price))?,
            category: self.category_code.as_deref().map(&mut *intern),
            brand: self.brand.as_deref().map(&mut *intern),
            line: self.source_line,
            offset: 0,
        })
    }
}

mod fast;

pub use fast::decode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json_exactly() {
        let mut dict = Dictionary::new();
        let e = PurchaseEvent {
            event_time_us: 1_587_729_039_000_000,
            order_id: 2_294_359_932_054_536_986,
            product_id: 1_515_966_223_509_089_906,
            category_id: Some(2_268_105_426_648_171_008),
            user_id: Some(1_515_915_625_441_993_984),
            price_cents: 16_201,
            category: Some(dict.intern("electronics.tablet")),
            brand: None,
            line: 42,
            offset: 0,
        };
        let id = EventId {
            source: 0xfeed,
            pass: 2,
            line: 42,
        };
        let json = serde_json::to_string(&WireEvent::from_event(&e, &dict, id)).unwrap();
        assert_eq!(
            json,
            r#"{"schema_version":1,"event_id":"000000000000feed-2-42","event_time":"2020-04-24T11:50:39Z","order_id":"2294359932054536986","product_id":"1515966223509089906","category_id":"2268105426648171008","category_code":"electronics.tablet","price":"162.01","user_id":"1515915625441993984","source_line":42}"#
        );
        let back: WireEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_event(&mut dict).unwrap(), e);
        assert_eq!(back.id().unwrap(), id);
    }

    #[test]
    fn the_borrowed_reading_equals_the_owned_one_escapes_included() {
        let json = r#"{"schema_version":1,"event_id":"000000000000feed-0-7","event_time":"2020-04-24T11:50:39.25Z","order_id":"1","product_id":"2","brand":"o\"neill \u00e9","price":"3.10","source_line":7}"#;
        let owned: WireEvent = serde_json::from_str(json).unwrap();
        let borrowed: WireEventRef = serde_json::from_str(json).unwrap();
        assert_eq!(borrowed, owned.view());
        assert!(matches!(borrowed.order_id, Cow::Borrowed(_)));
        assert_eq!(borrowed.brand.as_deref(), Some("o\"neill \u{e9}"));
        let (mut a, mut b) = (Dictionary::new(), Dictionary::new());
        let e = borrowed.to_event_with(&mut |n| a.intern(n)).unwrap();
        assert_eq!(e, owned.to_event(&mut b).unwrap());
        assert_eq!(e.event_time_us, 1_587_729_039_250_000);
        assert_eq!(a.name(e.brand.unwrap()), "o\"neill \u{e9}");
        let unknown = json.replace("\"source_line\"", "\"extra\":1,\"source_line\"");
        assert!(serde_json::from_str::<WireEventRef>(&unknown).is_err());
    }

    #[test]
    fn event_ids_parse_only_in_their_own_shape() {
        for bad in [
            "",
            "feed-1-2",
            "000000000000feed-1",
            "000000000000feed-x-2",
            "000000000000feed-1-2-3",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad}");
        }
        assert_eq!(cents_to_decimal(5), "0.05");
        assert_eq!(cents_to_decimal(-105), "-1.05");
    }

    #[test]
    fn invalid_wire_fields_are_named() {
        let mut w = WireEvent {
            schema_version: SCHEMA_VERSION,
            event_id: "0000000000000001-0-2".into(),
            event_time: "2020-04-24T11:50:39Z".into(),
            order_id: "1".into(),
            product_id: "2".into(),
            category_id: None,
            category_code: None,
            brand: None,
            price: "-1".into(),
            user_id: None,
            source_line: 2,
        };
        let mut dict = Dictionary::new();
        assert_eq!(w.to_event(&mut dict).unwrap_err().field, "price");
        w.price = "1.00".into();
        w.order_id = "1e5".into();
        assert_eq!(w.to_event(&mut dict).unwrap_err().field, "order_id");
    }
}
