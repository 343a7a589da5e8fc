//! The codec's view of untrusted bytes: fields read in order through the crate's one
//! little-endian reader ([`crate::little_endian`]), each short read reported as
//! [`CodecError::Truncated`] naming the structure; and the length checks every message
//! shares. Nothing here can panic.

use super::error::CodecError;
use crate::little_endian::{Cursor, OutOfBounds};

/// A cursor over a payload that reads little-endian fields in order.
pub(crate) struct Reader<'a> {
    cursor: Cursor<'a>,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the structure in errors.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self {
            cursor: Cursor::new(buf),
            what,
        }
    }

    fn truncated(&self) -> impl FnOnce(OutOfBounds) -> CodecError {
        let what = self.what;
        move |e| CodecError::Truncated {
            what,
            needed: e.needed(),
            actual: e.actual,
        }
    }

    /// The next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let err = self.truncated();
        self.cursor.bytes(n).map_err(err)
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// The next `u16`.
    pub(crate) fn u16(&mut self) -> Result<u16, CodecError> {
        self.array().map(u16::from_le_bytes)
    }

    /// The next `u32`.
    pub(crate) fn u32(&mut self) -> Result<u32, CodecError> {
        self.array().map(u32::from_le_bytes)
    }

    /// The next `u64`.
    pub(crate) fn u64(&mut self) -> Result<u64, CodecError> {
        self.array().map(u64::from_le_bytes)
    }

    /// Everything not yet read.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        self.cursor.rest()
    }
}

/// Refuses a payload whose length is not exactly `expected`.
pub(crate) fn expect_len(
    payload: &[u8],
    expected: usize,
    what: &'static str,
) -> Result<(), CodecError> {
    if payload.len() == expected {
        Ok(())
    } else if payload.len() < expected {
        Err(CodecError::Truncated {
            what,
            needed: expected,
            actual: payload.len(),
        })
    } else {
        Err(CodecError::LengthMismatch {
            what,
            expected,
            actual: payload.len(),
        })
    }
}

/// Refuses `value` above `max`.
pub(crate) fn check_limit(value: u64, max: u64, what: &'static str) -> Result<(), CodecError> {
    if value > max {
        Err(CodecError::LimitExceeded { what, value, max })
    } else {
        Ok(())
    }
}

/// Refuses a client `argsz` that cannot hold a `min`-byte reply.
pub(crate) fn check_argsz(argsz: u32, min: usize) -> Result<(), CodecError> {
    let min = u32::try_from(min).unwrap_or(u32::MAX);
    if argsz < min {
        Err(CodecError::ArgszTooSmall { argsz, min })
    } else {
        Ok(())
    }
}

/// A `u32` length field for `len` bytes, refused above `max`.
pub(crate) fn len_u32(len: usize, max: u32, what: &'static str) -> Result<u32, CodecError> {
    match u32::try_from(len) {
        Ok(v) if v <= max => Ok(v),
        _ => Err(CodecError::LimitExceeded {
            what,
            value: u64::try_from(len).unwrap_or(u64::MAX),
            max: u64::from(max),
        }),
    }
}

/// `fixed + count * each`, checked. Callers bound `count` by a limit first, so this only
/// guards the arithmetic itself.
pub(crate) fn array_size(
    fixed: usize,
    count: usize,
    each: usize,
    what: &'static str,
) -> Result<usize, CodecError> {
    count
        .checked_mul(each)
        .and_then(|n| n.checked_add(fixed))
        .ok_or(CodecError::InvalidField {
            what,
            value: u64::try_from(count).unwrap_or(u64::MAX),
        })
}

/// Appends `v` little-endian.
pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends `v` little-endian.
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends `v` little-endian.
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reads_in_order_and_reports_short_input() {
        let mut r = Reader::new(&[1, 0, 2, 0, 0, 0, 9], "t");
        assert_eq!(r.u16().unwrap(), 1);
        assert_eq!(r.u32().unwrap(), 2);
        assert!(matches!(
            r.u64(),
            Err(CodecError::Truncated {
                needed: 14,
                actual: 7,
                ..
            })
        ));
        assert_eq!(r.rest(), &[9]);
        assert_eq!(r.rest(), &[] as &[u8]);
    }

    #[test]
    fn reader_survives_huge_lengths() {
        let mut r = Reader::new(&[0; 4], "t");
        assert!(r.bytes(usize::MAX).is_err());
        assert!(r.bytes(5).is_err());
        assert_eq!(r.bytes(4).unwrap().len(), 4);
    }
}
