//! Turns one CSV line into a validated, repaired purchase, or exactly one reject reason,
//! checking the rules of the input contract in their order (see docs/input.md).

use std::borrow::Cow;

use crate::csv_line::split_fields;
use crate::fields::{is_plain_decimal, parse_event_time, parse_id, parse_price_cents};
use crate::reject::RejectReason;

/// The columns the reader needs, in the order of the `kz.csv` header.
pub const COLUMNS: [&str; 8] = [
    "event_time",
    "order_id",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
];

/// The `kz.csv` header line: [`COLUMNS`] joined by commas (a test keeps them equal).
pub const HEADER: &str =
    "event_time,order_id,product_id,category_id,category_code,brand,price,user_id";

/// `2000-01-01T00:00:00Z`: the default `--min-event-time`.
pub const DEFAULT_MIN_EVENT_TIME_US: i64 = 946_684_800_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("the input is empty: expected a header line naming the columns {COLUMNS:?}")]
    Empty,
    #[error("the header is not valid UTF-8")]
    NotUtf8,
    #[error("the header has no column `{0}` (expected the columns {COLUMNS:?}, in any order)")]
    MissingColumn(&'static str),
    #[error("the header names column `{0}` twice")]
    DuplicateColumn(String),
    #[error("the header line is not valid CSV")]
    Malformed,
}

/// Where each needed column sits in a line, found by header name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Field index of each of [`COLUMNS`].
    pub index: [usize; 8],
    /// Number of fields every line must have.
    pub width: usize,
}

impl Header {
    /// Parses the header line (terminator removed; a UTF-8 byte-order mark is skipped).
    pub fn parse(line: &[u8]) -> Result<Header, HeaderError> {
        let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Err(HeaderError::Empty);
        }
        let text = std::str::from_utf8(line).map_err(|_| HeaderError::NotUtf8)?;
        let mut fields = Vec::new();
        split_fields(text, &mut fields).map_err(|_| HeaderError::Malformed)?;
        let names: Vec<String> = fields.iter().map(|f| f.trim().to_string()).collect();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(HeaderError::DuplicateColumn(n.clone()));
            }
        }
        let mut index = [0; 8];
        for (slot, col) in index.iter_mut().zip(COLUMNS) {
            *slot = names
                .iter()
                .position(|n| n == col)
                .ok_or(HeaderError::MissingColumn(col))?;
        }
        Ok(Header {
            index,
            width: names.len(),
        })
    }
}

/// A line that passed every check, borrowing its text fields from the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidLine<'a> {
    pub event_time_us: i64,
    pub order_id: u64,
    pub product_id: u64,
    pub category_id: Option<u64>,
    pub user_id: Option<u64>,
    pub price_cents: i64,
    pub category_code: Option<Cow<'a, str>>,
    pub brand: Option<Cow<'a, str>>,
    /// The column-shift repair was applied.
    pub repaired: bool,
}

/// Validates lines against one header. Reuses its field buffer between lines.
#[derive(Debug, Clone)]
pub struct LineValidator {
    header: Header,
    min_event_time_us: i64,
}

impl LineValidator {
    pub fn new(header: Header, min_event_time_us: i64) -> Self {
        Self {
            header,
            min_event_time_us,
        }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Checks one non-blank line (terminator removed). `fields` is scratch space.
    pub fn validate<'a>(
        &self,
        line: &'a [u8],
        fields: &mut Vec<Cow<'a, str>>,
    ) -> Result<ValidLine<'a>, RejectReason> {
        use RejectReason::*;
        let line = std::str::from_utf8(line).map_err(|_| MalformedRow)?;
        if split_fields(line, fields).is_err() || fields.len() != self.header.width {
            return Err(MalformedRow);
        }
        let mut get = |i: usize| -> Option<Cow<'a, str>> {
            let f = std::mem::take(&mut fields[self.header.index[i]]);
            (!f.is_empty()).then_some(f)
        };
        let event_time = get(0);
        let order_id = get(1);
        let product_id = get(2);
        let category_id = get(3);
        let mut category_code = get(4);
        let mut brand = get(5);
        let mut price = get(6);
        let mut user_id = get(7);

        let repaired = category_id.is_none()
            && price.is_none()
            && user_id.is_none()
            && category_code.as_deref().is_some_and(is_plain_decimal);
        if repaired {
            price = category_code.take();
            user_id = brand.take();
        }

        let event_time_us = event_time
            .as_deref()
            .and_then(parse_event_time)
            .ok_or(InvalidEventTime)?;
        if event_time_us < self.min_event_time_us {
            return Err(EventTimeOutOfRange);
        }
        let order_id = order_id
            .as_deref()
            .and_then(parse_id)
            .ok_or(InvalidOrderId)?;
        let product_id = product_id
            .as_deref()
            .and_then(parse_id)
            .ok_or(InvalidProductId)?;
        let price_cents = parse_price_cents(&price.ok_or(MissingPrice)?).ok_or(InvalidPrice)?;
        let user_id = match user_id {
            None => None,
            Some(u) => Some(parse_id(&u).ok_or(InvalidUserId)?),
        };
        Ok(ValidLine {
            event_time_us,
            order_id,
            product_id,
            // Optional and only carried along: an unparseable value is dropped, not fatal.
            category_id: category_id.as_deref().and_then(parse_id),
            user_id,
            price_cents,
            category_code,
            brand,
            repaired,
        })
    }
}

/// A line that is empty or only white space: skipped, not a record.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests;
