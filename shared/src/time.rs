//! Civil time without a clock: RFC 3339 text to and from milliseconds since the Unix
//! epoch (proleptic Gregorian, UTC). Used for policy `--now` times and audit-log times.
//! The calendar is `chrono`'s (no clock, no time zone database).

use chrono::{DateTime, SecondsFormat, Utc};

/// Parses an RFC 3339 date-time (`2025-07-01T00:00:00Z`, fractions and `+hh:mm` offsets
/// allowed) into milliseconds since the Unix epoch (fractions beyond milliseconds are
/// dropped). `None` for anything else or a time before 1970.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    // RFC 3339 is ASCII; chrono would also take U+2212 as the offset's minus sign.
    if !s.is_ascii() {
        return None;
    }
    let t = DateTime::parse_from_rfc3339(s).ok()?;
    u64::try_from(t.timestamp_millis()).ok()
}

/// RFC 3339 UTC text (`YYYY-MM-DDTHH:MM:SS.mmmZ`) of milliseconds since the epoch. A time
/// past chrono's calendar (after the year 262143) is printed as the milliseconds themselves.
pub fn format_rfc3339_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map_or_else(
            || ms.to_string(),
            |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_with_offsets_and_fractions() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2025-07-01T02:00:00+02:00"),
            Some(1_751_328_000_000)
        );
        assert_eq!(
            format_rfc3339_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            format_rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(parse_rfc3339_ms("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_rfc3339_ms("garbage"), None);
    }
}
