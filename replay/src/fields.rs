//! Parsers for single field values: event time, ids and prices. Each returns `None` for a
//! value that does not follow the input contract; the caller picks the reject reason.

/// Parses `YYYY-MM-DD HH:MM:SS UTC`, the same without ` UTC`, or RFC 3339, into
/// microseconds since the Unix epoch (UTC).
pub fn parse_event_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let plain = match b.len() {
        19 => Some(b),
        23 if &b[19..] == b" UTC" => Some(&b[..19]),
        _ => None,
    };
    if let Some(p) = plain {
        if p[10] == b' ' {
            return parse_plain(p);
        }
    }
    let dt = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(dt.timestamp_micros())
}

/// Parses RFC 3339 into microseconds since the Unix epoch (UTC). The shape the wire
/// writes (`YYYY-MM-DDTHH:MM:SS[.f]Z`, fractions of 1 to 9 digits, truncated to
/// microseconds) is read field by field; any other offset or shape goes through chrono.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() >= 20 && b[10] == b'T' && b[b.len() - 1] == b'Z' {
        let fraction = &b[19..b.len() - 1];
        let micros = match fraction {
            [] => Some(0),
            [b'.', f @ ..] if (1..=9).contains(&f.len()) => {
                digits(f).map(|v| i64::from(v) * 10_i64.pow(9 - f.len() as u32) / 1000)
            }
            _ => None,
        };
        if let (Some(base), Some(micros)) = (parse_plain(&b[..19]), micros) {
            return Some(base + micros);
        }
    }
    let dt = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(dt.timestamp_micros())
}

/// `YYYY-MM-DD HH:MM:SS`, checked field by field (no leap seconds).
fn parse_plain(b: &[u8]) -> Option<i64> {
    if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits(&b[0..4])? as i64;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some(secs * 1_000_000)
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An id: a plain integer, or float notation (`1.515915625441994e+18`) read as an IEEE-754
/// double (correctly rounded) whose integer value is the id. Must fit in `u64`.
pub fn parse_id(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() {
        return None;
    }
    if b.len() <= 19 {
        // Up to 19 digits always fit in u64: no overflow check needed.
        let mut v = 0u64;
        let mut digits_only = true;
        for &c in b {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                digits_only = false;
                break;
            }
            v = v * 10 + u64::from(d);
        }
        if digits_only {
            return Some(v);
        }
    } else if b.iter().all(u8::is_ascii_digit) {
        return s.parse::<u64>().ok();
    }
    if !is_float_notation(b) {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    // 2^64 is exactly representable; anything at or above it does not fit.
    if !v.is_finite() || v < 0.0 || v.fract() != 0.0 || v >= 18_446_744_073_709_551_616.0 {
        return None;
    }
    Some(v as u64)
}

/// `digits [. digits] [(e|E) [+|-] digits]`, with a fraction or an exponent present.
fn is_float_notation(b: &[u8]) -> bool {
    let mut i = 0;
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i == int_start {
        return false;
    }
    let mut has_more = false;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == frac_start {
            return false;
        }
        has_more = true;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
        has_more = true;
    }
    has_more && i == b.len()
}

/// The largest price accepted, in cents (one billion). Above it a line is `invalid_price`:
/// such a value is an export error, and it keeps every sum far inside DECIMAL(18,2).
pub const MAX_PRICE_CENTS: i64 = 100_000_000_000;

/// A price matching `^[0-9]+(\.[0-9]+)?$`, in cents, rounded half away from zero beyond two
/// decimals. `None` when it does not match or exceeds [`MAX_PRICE_CENTS`].
pub fn parse_price_cents(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let dot = b.iter().position(|&c| c == b'.');
    let (int, frac) = match dot {
        Some(p) => (&b[..p], Some(&b[p + 1..])),
        None => (b, None),
    };
    if int.is_empty() || !int.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let int = trim_leading_zeros(int);
    if int.len() > 12 {
        return None;
    }
    let mut cents: i64 = 0;
    for &c in int {
        cents = cents * 10 + i64::from(c - b'0');
    }
    cents *= 100;
    if let Some(frac) = frac {
        if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let d = |i: usize| frac.get(i).map_or(0, |&c| i64::from(c - b'0'));
        cents += d(0) * 10 + d(1);
        if d(2) >= 5 {
            cents += 1;
        }
    }
    (cents <= MAX_PRICE_CENTS).then_some(cents)
}

fn trim_leading_zeros(b: &[u8]) -> &[u8] {
    let nz = b.iter().position(|&c| c != b'0').unwrap_or(b.len());
    &b[nz..]
}

/// `^[0-9]+(\.[0-9]+)?$`: the test for the column-shift repair.
pub fn is_plain_decimal(s: &str) -> bool {
    let b = s.as_bytes();
    let (int, frac) = match b.iter().position(|&c| c == b'.') {
        Some(p) => (&b[..p], Some(&b[p + 1..])),
        None => (b, None),
    };
    !int.is_empty()
        && int.iter().all(u8::is_ascii_digit)
        && frac.is_none_or(|f| !f.is_empty() && f.iter().all(u8::is_ascii_digit))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T_2020_04_24_115039: i64 = 1_587_729_039_000_000;

    #[test]
    fn event_time_formats() {
        let cases: &[(&str, Option<i64>)] = &[
            ("2020-04-24 11:50:39 UTC", Some(T_2020_04_24_115039)),
            ("2020-04-24 11:50:39", Some(T_2020_04_24_115039)),
            ("2020-04-24T11:50:39Z", Some(T_2020_04_24_115039)),
            ("2020-04-24T13:50:39+02:00", Some(T_2020_04_24_115039)),
            (
                "2020-04-24T11:50:39.250Z",
                Some(T_2020_04_24_115039 + 250_000),
            ),
            ("1970-01-01 00:33:40 UTC", Some(2_020_000_000)),
            ("2020-02-29 00:00:00 UTC", Some(1_582_934_400_000_000)),
            ("2019-02-29 00:00:00 UTC", None),
            ("2020-13-01 00:00:00 UTC", None),
            ("2020-04-31 00:00:00 UTC", None),
            ("2020-04-24 24:00:00 UTC", None),
            ("2020-04-24 11:60:00 UTC", None),
            ("2020-04-24 11:50:39 CET", None),
            ("2020-04-24", None),
            ("", None),
            ("yesterday", None),
            ("2020-04-24 11:50:3x UTC", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_event_time(input), *want, "{input:?}");
        }
    }

    #[test]
    fn rfc3339_fast_path_agrees_with_chrono() {
        for s in [
            "2020-04-24T11:50:39Z",
            "2020-04-24T11:50:39.5Z",
            "2020-04-24T11:50:39.123Z",
            "2020-04-24T11:50:39.123456Z",
            "2020-04-24T11:50:39.123456789Z",
            "1969-12-31T23:59:59.999999Z",
            "2020-02-29T00:00:00Z",
            "2020-04-24T13:50:39+02:00",
            "2020-04-24t11:50:39z",
        ] {
            let want = chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_micros();
            assert_eq!(parse_rfc3339(s), Some(want), "{s}");
        }
        for s in [
            "2020-02-30T00:00:00Z",
            "2020-04-24T24:00:00Z",
            "2020-04-24T11:50:39.Z",
            "2020-04-24T11:50:39",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s}");
        }
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2020, 11, 21), 18_587);
    }

    #[test]
    fn ids_plain_and_float_notation() {
        let cases: &[(&str, Option<u64>)] = &[
            ("2294359932054536986", Some(2_294_359_932_054_536_986)),
            ("0", Some(0)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            // The double nearest to 1.515915625441994e18 is 1515915625441993984.
            ("1.515915625441994e+18", Some(1_515_915_625_441_993_984)),
            ("2.268105426648171e+18", Some(2_268_105_426_648_171_008)),
            ("1.5E3", Some(1500)),
            ("12.0", Some(12)),
            ("1.5", None),
            ("1.9e+19", None),
            ("-1", None),
            ("-1.5e+18", None),
            ("nan", None),
            ("inf", None),
            ("1e", None),
            (".5e3", None),
            ("12a", None),
            ("", None),
            (" 12", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_id(input), *want, "{input:?}");
        }
    }

    #[test]
    fn prices_in_cents_rounded_half_away_from_zero() {
        let cases: &[(&str, Option<i64>)] = &[
            ("162.01", Some(16_201)),
            ("0.00", Some(0)),
            ("0", Some(0)),
            ("7", Some(700)),
            ("7.5", Some(750)),
            ("1.005", Some(101)),
            ("1.0049", Some(100)),
            ("2.675", Some(268)),
            ("0.994", Some(99)),
            ("0.995", Some(100)),
            ("50925.90", Some(5_092_590)),
            ("000012.30", Some(1_230)),
            ("1000000000.00", Some(MAX_PRICE_CENTS)),
            ("1000000000.01", None),
            ("99999999999999999999", None),
            ("-5.00", None),
            ("+5.00", None),
            ("1e3", None),
            ("NaN", None),
            ("5.", None),
            (".5", None),
            ("5,00", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_price_cents(input), *want, "{input:?}");
        }
    }

    #[test]
    fn plain_decimal_test_for_shift_repair() {
        assert!(is_plain_decimal("558.77"));
        assert!(is_plain_decimal("558"));
        assert!(!is_plain_decimal("electronics.tablet"));
        assert!(!is_plain_decimal("5.5.5"));
        assert!(!is_plain_decimal(""));
        assert!(!is_plain_decimal("1e5"));
    }
}
