//! Durations on the command line: `500ms`, `10s`, `5m`, `1h`, `2d`, `1h 30m`, or `0`,
//! parsed by `humantime`. Event-time arithmetic is in microseconds, so a duration is
//! bounded to 100 years: a longer one is a usage error (exit 2), never an overflow.

use std::time::Duration;

/// The longest duration a flag accepts: 100 years of 365.25 days.
pub const MAX: Duration = Duration::from_secs(100 * 31_557_600);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration such as 500ms, 10s, 5m, 1h or 2d: {e}"))?;
    if d > MAX {
        return Err(format!(
            "`{s}` is longer than the 100 years a duration may be"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").unwrap_err().contains("not a duration"));
        assert!(parse_duration("10x")
            .unwrap_err()
            .contains("unknown time unit"));
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn overflowing_durations_are_errors_not_panics() {
        let err = parse_duration("99999999999999999999999d").unwrap_err();
        assert!(err.contains("not a duration"), "{err}");
        let err = parse_duration("36600d").unwrap_err();
        assert!(err.contains("100 years"), "{err}");
        assert_eq!(
            parse_duration("36500d"),
            Ok(Duration::from_secs(36_500 * 86_400))
        );
    }
}
