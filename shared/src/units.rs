//! Byte sizes on command lines: `4096`, `4K`, `16M`, `1G` (binary units, case-insensitive,
//! an optional trailing `B`/`iB`).

use thiserror::Error;

/// Why a size did not parse.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SizeError {
    /// A letter other than K, M, G or T.
    #[error("unknown unit in size {0:?}")]
    UnknownUnit(String),
    /// Not a non-negative decimal number before the unit.
    #[error("invalid size {0:?}")]
    Invalid(String),
    /// More than `u64::MAX` bytes.
    #[error("size {0:?} overflows")]
    Overflow(String),
}

/// Parses a size such as `16M` into bytes. Overflow and junk are errors with a message.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .or_else(|| t.strip_suffix(['B', 'b']))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(SizeError::UnknownUnit(s.to_string())),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| SizeError::Invalid(s.to_string()))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2MB"), Ok(2 << 20));
        assert!(parse_size("").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
