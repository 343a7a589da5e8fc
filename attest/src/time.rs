//! Times as Unix seconds: the system clock and RFC 3339 text (`--now`).

/// Seconds since the Unix epoch now (0 if the clock is before 1970).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses an RFC 3339 date-time into Unix seconds (see
/// [`swiotlb_shared::time::parse_rfc3339_ms`]). `None` for anything else or before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    swiotlb_shared::time::parse_rfc3339_ms(s).map(|ms| ms / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2025-07-01T00:00:00Z"), Some(1_751_328_000));
        assert_eq!(
            parse_rfc3339("2025-07-01T02:00:00+02:00"),
            Some(1_751_328_000)
        );
        assert_eq!(
            parse_rfc3339("2025-06-30T23:00:00.123-01:00"),
            Some(1_751_328_000)
        );
        assert_eq!(parse_rfc3339("2000-02-29T12:00:00Z"), Some(951_825_600));
    }

    #[test]
    fn junk_is_refused() {
        for s in [
            "",
            "2025-07-01",
            "2025-13-01T00:00:00Z",
            "2025-02-30T00:00:00Z",
            "2025-07-01T00:00:00",
            "1969-12-31T23:59:59Z",
            "2025-07-01T00:00:00+2:00",
            "２０２５-07-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s}");
        }
    }
}
