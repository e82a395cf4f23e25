//! The wire event read without serde in the common case: a flat object of strings without
//! escapes and unsigned integers, keys in any order, as the replayer writes it. Anything
//! else (an escape, `null`, an unknown or repeated field, another number form, a trailing
//! byte) goes to serde_json, which reads it or says what is wrong. So the two read every
//! message alike: the fast path only ever answers where serde_json would answer the same.
//! It exists because serde's field visitors and string scanning were 40% of a processor's
//! decoding thread.

use std::borrow::Cow;

use super::WireEventRef;

/// Reads a wire event, borrowing its strings from `bytes`.
pub fn decode(bytes: &[u8]) -> Result<WireEventRef<'_>, serde_json::Error> {
    match fast(bytes) {
        Some(w) => Ok(w),
        None => serde_json::from_slice(bytes),
    }
}

struct Cursor<'a> {
    /// The whole message, checked as UTF-8 once: a string cut at its quotes (ASCII) is then
    /// UTF-8 too.
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn skip_ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// A string without escapes or control characters, found in one pass (the wire's
    /// strings are short: a vector search costs more to set up than it saves).
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let len = self.b[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        let end = start + len;
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        self.s.get(start..end)
    }

    /// The next key's place in [`KEYS`] when it is one of them from `expected` on, quoted
    /// and written without escapes; `expected` moves past it.
    fn known_key(&mut self, expected: &mut usize) -> Option<usize> {
        self.skip_ws();
        let rest = &self.b[self.i..];
        let found = KEYS[*expected..].iter().position(|k| {
            rest.len() > k.len() + 1
                && rest[0] == b'"'
                && &rest[1..=k.len()] == k.as_bytes()
                && rest[k.len() + 1] == b'"'
        })?;
        let key = *expected + found;
        *expected = key + 1;
        self.i += KEYS[key].len() + 2;
        Some(key)
    }

    /// An unsigned integer as JSON writes one: digits, no leading zero, sign, fraction or
    /// exponent.
    fn unsigned(&mut self) -> Option<u64> {
        self.skip_ws();
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        let digits = &self.b[start..self.i];
        if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        if matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        digits.iter().try_fold(0u64, |v, &d| {
            v.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    }
}

/// The wire event's keys in the order the replayer writes them.
const KEYS: [&str; 11] = [
    "schema_version",
    "event_id",
    "event_time",
    "order_id",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "source_line",
];
const SCHEMA_VERSION: usize = 0;
const SOURCE_LINE: usize = 10;

/// Sets a field once: a repeated one is serde's to refuse.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

fn fast(bytes: &[u8]) -> Option<WireEventRef<'_>> {
    let s = std::str::from_utf8(bytes).ok()?;
    let mut c = Cursor { s, b: bytes, i: 0 };
    let (mut version, mut line) = (None, None);
    // The string fields by their place in KEYS.
    let mut strings: [Option<&str>; KEYS.len()] = [None; KEYS.len()];
    c.eat(b'{')?;
    // The replayer writes the keys in this order: each is looked for first where the one
    // before it ended (optional ones may be missing), and read as any string otherwise.
    let mut expected = 0;
    loop {
        // The key as its place in KEYS: matching its name against the fields' names
        // compared strings (the decode bench: 380 ns a message against 327 now).
        let key = match c.known_key(&mut expected) {
            Some(key) => key,
            None => {
                let name = c.string()?;
                KEYS.iter().position(|k| *k == name)?
            }
        };
        c.eat(b':')?;
        match key {
            SCHEMA_VERSION => once(&mut version, u32::try_from(c.unsigned()?).ok()?)?,
            SOURCE_LINE => once(&mut line, c.unsigned()?)?,
            _ => once(&mut strings[key], c.string()?)?,
        }
        match c.peek()? {
            b',' => c.i += 1,
            b'}' => {
                c.i += 1;
                break;
            }
            _ => return None,
        }
    }
    c.skip_ws();
    if c.i != bytes.len() {
        return None;
    }
    let [_, event_id, event_time, order_id, product_id, category_id, category_code, brand, price, user_id, _] =
        strings;
    Some(WireEventRef {
        schema_version: version?,
        event_id: Cow::Borrowed(event_id?),
        event_time: Cow::Borrowed(event_time?),
        order_id: Cow::Borrowed(order_id?),
        product_id: Cow::Borrowed(product_id?),
        category_id: category_id.map(Cow::Borrowed),
        category_code: category_code.map(Cow::Borrowed),
        brand: brand.map(Cow::Borrowed),
        price: Cow::Borrowed(price?),
        user_id: user_id.map(Cow::Borrowed),
        source_line: line?,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EVENT: &str = r#"{"schema_version":1,"event_id":"000000000000feed-2-42","event_time":"2020-04-24T11:50:39Z","order_id":"2294359932054536986","product_id":"1515966223509089906","category_id":"2268105426648171008","category_code":"electronics.tablet","brand":"acme é","price":"162.01","user_id":"1515915625441993984","source_line":42}"#;

    /// What serde_json reads, for comparison.
    fn serde(bytes: &[u8]) -> Option<WireEventRef<'_>> {
        serde_json::from_slice(bytes).ok()
    }

    #[test]
    fn the_replayers_shape_takes_the_fast_path_and_reads_as_serde_does() {
        let w = fast(EVENT.as_bytes()).expect("the fast path reads the replayer's shape");
        assert_eq!(Some(&w), serde(EVENT.as_bytes()).as_ref());
        assert_eq!(w.brand.as_deref(), Some("acme é"));
        assert_eq!((w.schema_version, w.source_line), (1, 42));
        // Keys in another order, whitespace, optional fields left out.
        let other = r#" { "source_line" : 7 ,"price":"1.00", "event_id":"0000000000000001-0-7",
            "order_id":"1","product_id":"2","event_time":"2020-04-24T11:50:39Z","schema_version":1 } "#;
        let w = fast(other.as_bytes()).expect("any order and whitespace");
        assert_eq!(Some(&w), serde(other.as_bytes()).as_ref());
        assert_eq!((w.brand, w.user_id), (None, None));
    }

    #[test]
    fn anything_else_is_left_to_serde() {
        let left = [
            EVENT.replace("acme é", r#"acme \"x\""#),
            EVENT.replace(r#""brand":"acme é""#, r#""brand":null"#),
            EVENT.replace(r#""source_line":42"#, r#""source_line":42,"extra":"1""#),
            EVENT.replace(
                r#""source_line":42"#,
                r#""source_line":42,"source_line":43"#,
            ),
            EVENT.replace(r#""source_line":42"#, r#""source_line":042"#),
            EVENT.replace(r#""source_line":42"#, r#""source_line":4.2"#),
            EVENT.replace(r#""source_line":42"#, r#""source_line":42e0"#),
            EVENT.replace(r#""source_line":42"#, r#""source_line":-42"#),
            EVENT.replace(
                r#""source_line":42"#,
                r#""source_line":18446744073709551616"#,
            ),
            EVENT.replace(r#""schema_version":1"#, r#""schema_version":4294967296"#),
            EVENT.replace(r#""price":"162.01""#, r#""price":162.01"#),
            EVENT.replace(r#""event_id""#, r#""event\u005fid""#),
            EVENT.replace(r#""price":"162.01","#, ""),
            format!("{EVENT}x"),
            EVENT.replace('}', ",}"),
            "{}".to_string(),
        ];
        for case in &left {
            assert_eq!(fast(case.as_bytes()), None, "{case}");
        }
        let taken = [
            EVENT.replace(r#""user_id":"1515915625441993984","#, ""),
            EVENT.replace("\":", "\" :\n ").replace(',', "\t, "),
        ];
        for case in &taken {
            let w = fast(case.as_bytes());
            assert!(w.is_some(), "{case}");
            assert_eq!(w, serde(case.as_bytes()), "{case}");
        }
        assert!(decode(b"{\"schema_version\":1}").is_err());
        let escaped = EVENT.replace("acme é", r#"acme \"x\""#);
        assert_eq!(
            decode(escaped.as_bytes()).unwrap().brand.as_deref(),
            Some("acme \"x\"")
        );
    }

    /// Bytes that mean something to JSON, and any byte.
    fn byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            prop::sample::select(b"0\"\\,:}{ .eE-+n\t\x01\xc3".to_vec()),
            any::<u8>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// Whatever the bytes, the fast path answers only as serde_json does.
        #[test]
        fn the_fast_path_never_reads_differently_from_serde(
            cut in 0usize..EVENT.len(),
            at in 0usize..EVENT.len(),
            byte in byte(),
            insert in any::<bool>(),
        ) {
            let mut bytes = EVENT.as_bytes().to_vec();
            if insert {
                bytes.insert(at, byte);
            } else {
                bytes[at] = byte;
            }
            for b in [&bytes[..], &bytes[..cut]] {
                if let Some(w) = fast(b) {
                    prop_assert_eq!(Some(w), serde(b));
                }
            }
        }
    }
}
