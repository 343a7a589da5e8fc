//! The encodings of the record fields that JSON has no form for: addresses and feature
//! words as `0x` + lowercase hex without leading zeros, hashes as 64 lowercase hex digits,
//! byte strings as standard padded base64 (see `docs/audit-schema.md`, Encodings). Parsing
//! accepts exactly the form written, so a record has one spelling.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::merkle::Hash;

/// Lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 15)]));
    }
    s
}

/// Parses exactly 64 lowercase hex digits.
pub fn parse_hex32(s: &str) -> Option<Hash> {
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, byte) in h.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(h)
}

/// Parses `0x` followed by 1 to 16 lowercase hex digits without leading zeros.
pub fn parse_hex_u64(s: &str) -> Option<u64> {
    let d = s.strip_prefix("0x")?;
    let ok = !d.is_empty()
        && d.len() <= 16
        && d.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && (d == "0" || !d.starts_with('0'));
    if !ok {
        return None;
    }
    u64::from_str_radix(d, 16).ok()
}

/// `v` as `0x`-prefixed lowercase hex without leading zeros (`0x0` for zero), the form
/// `{:#x}` gives, written into `buf`.
fn hex_u64_str(v: u64, buf: &mut [u8; 18]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(1) as usize;
    buf[0] = b'0';
    buf[1] = b'x';
    for i in 0..digits {
        let nibble = (v >> (4 * (digits - 1 - i))) & 0xf;
        buf[2 + i] = DIGITS[nibble as usize];
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[..2 + digits]).unwrap_or("0x0")
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
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(v))
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
}
