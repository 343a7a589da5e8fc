//! The encodings of the record fields that JSON has no form for: addresses and feature
//! words as `0x` + lowercase hex without leading zeros, hashes as 64 lowercase hex digits,
//! byte strings as standard padded base64 (see `docs/audit-schema.md`, Encodings). Parsing
//! accepts exactly the form written, so a record has one spelling.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::merkle::Hash;

/// Whether `s` is lowercase hex digits only (the `hex` crate also reads uppercase, which
/// would give a record a second spelling).
fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses exactly 64 lowercase hex digits.
pub fn parse_hex32(s: &str) -> Option<Hash> {
    if s.len() != 64 || !is_lower_hex(s) {
        return None;
    }
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).ok()?;
    Some(h)
}

/// Parses `0x` followed by 1 to 16 lowercase hex digits without leading zeros.
pub fn parse_hex_u64(s: &str) -> Option<u64> {
    let d = s.strip_prefix("0x")?;
    let ok = !d.is_empty() && d.len() <= 16 && is_lower_hex(d) && (d == "0" || !d.starts_with('0'));
    if !ok {
        return None;
    }
    u64::from_str_radix(d, 16).ok()
}

/// `v` as `0x`-prefixed lowercase hex without leading zeros (`0x0` for zero), the form
/// `{:#x}` gives, written into `buf`: its 16 digits, then `0x` over the leading zeros
/// (all but the last digit of zero).
fn hex_u64_str(v: u64, buf: &mut [u8; 18]) -> &str {
    // 8 bytes always fit the 16 digits after the prefix.
    if hex::encode_to_slice(v.to_be_bytes(), &mut buf[2..]).is_err() {
        return "0x0";
    }
    let skip = (v.leading_zeros() / 4).min(15) as usize;
    buf[skip] = b'0';
    buf[skip + 1] = b'x';
    // Only ASCII was written.
    std::str::from_utf8(&buf[skip..]).unwrap_or("0x0")
}

pub(crate) mod hex_u64 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    /// `format!("{v:#x}")` without the allocation (this runs for every descriptor of a
    /// full-mode log).
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 18];
        s.serialize_str(super::hex_u64_str(*v, &mut buf))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_hex_u64(&s).ok_or_else(|| D::Error::custom("expected 0x-prefixed hex"))
    }
}

pub(crate) mod hex32 {
    use serde::{de::Error as _, ser::Error as _, Deserialize, Deserializer, Serializer};

    /// Through a stack buffer: two hashes are in every record, and `hex::encode` (a `String`
    /// built a character at a time) measured about 3.5 times slower.
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(v, &mut buf).map_err(S::Error::custom)?;
        s.serialize_str(std::str::from_utf8(&buf).map_err(S::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        super::parse_hex32(&s).ok_or_else(|| D::Error::custom("expected 64 lowercase hex digits"))
    }
}

pub(crate) mod b64 {
    use super::B64;
    use base64::Engine as _;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s)
            .map_err(|_| D::Error::custom("expected base64"))
    }
}

pub(crate) mod b64_hashes {
    use super::B64;
    use base64::Engine as _;
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|h| B64.encode(h))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| {
                B64.decode(s)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| D::Error::custom("expected base64 of 32 bytes"))
            })
            .collect()
    }
}

/// Base64 (standard, padded) of `b`.
pub fn base64(b: &[u8]) -> String {
    B64.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_addresses_are_written_as_format_writes_them() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut values = vec![0, 1, 0xf, 0x10, 0xfd00_0000, u64::MAX, 1 << 63];
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x >> (x % 64));
        }
        for v in values {
            let mut buf = [0u8; 18];
            assert_eq!(hex_u64_str(v, &mut buf), format!("{v:#x}"));
        }
    }

    #[test]
    fn hashes_are_read_only_in_the_lowercase_form_they_are_written_in() {
        let h: Hash = std::array::from_fn(|i| (i as u8).wrapping_mul(37));
        let mut out = Vec::new();
        hex32::serialize(&h, &mut serde_json::Serializer::new(&mut out)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let digits = text.trim_matches('"');
        assert_eq!(
            digits,
            h.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        assert_eq!(parse_hex32(digits), Some(h));
        assert_eq!(parse_hex32(&digits.to_uppercase()), None);
        assert_eq!(parse_hex32(&digits[2..]), None);
        assert_eq!(parse_hex32(&format!("{}g", &digits[1..])), None);
    }
}
