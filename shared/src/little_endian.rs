//! Little-endian fields read out of bytes a peer wrote: the one home of these readers for
//! the vfio-user codec, the VFIO region-info parse, and the attestation formats (SNP
//! reports, TDX quotes, the evidence blob).
//!
//! Every read is bounds-checked with `.get(..)` and checked arithmetic, and a read past the
//! end is an [`OutOfBounds`] naming where it was; nothing here can panic, whatever the
//! offsets and lengths.

use thiserror::Error;

/// A field that does not lie inside the bytes it was read from.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("{len} bytes at byte {at} run past the end of {actual} bytes")]
pub struct OutOfBounds {
    /// Where the field starts.
    pub at: usize,
    /// How long it is.
    pub len: usize,
    /// How many bytes there are.
    pub actual: usize,
}

impl OutOfBounds {
    /// Bytes the read needed: the end of the field (`usize::MAX` if that overflows).
    pub fn needed(&self) -> usize {
        self.at.saturating_add(self.len)
    }
}

/// The `len` bytes at `at`.
pub fn bytes_at(b: &[u8], at: usize, len: usize) -> Result<&[u8], OutOfBounds> {
    at.checked_add(len)
        .and_then(|end| b.get(at..end))
        .ok_or(OutOfBounds {
            at,
            len,
            actual: b.len(),
        })
}

/// The `N` bytes at `at`, as an array.
pub fn array_at<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], OutOfBounds> {
    let s = bytes_at(b, at, N)?;
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    Ok(a)
}

/// The `u16` at `at`.
pub fn u16_at(b: &[u8], at: usize) -> Result<u16, OutOfBounds> {
    array_at(b, at).map(u16::from_le_bytes)
}

/// The `u32` at `at`.
pub fn u32_at(b: &[u8], at: usize) -> Result<u32, OutOfBounds> {
    array_at(b, at).map(u32::from_le_bytes)
}

/// The `u64` at `at`.
pub fn u64_at(b: &[u8], at: usize) -> Result<u64, OutOfBounds> {
    array_at(b, at).map(u64::from_le_bytes)
}

/// A cursor that reads fields in order.
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes. On error nothing is consumed.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], OutOfBounds> {
        let out = bytes_at(self.buf, self.pos, n)?;
        self.pos += n; // `bytes_at` checked `pos + n` against the length.
        Ok(out)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], OutOfBounds> {
        let a = array_at(self.buf, self.pos)?;
        self.pos += N; // As in `bytes`.
        Ok(a)
    }

    /// The next `u8`.
    pub fn u8(&mut self) -> Result<u8, OutOfBounds> {
        self.array::<1>().map(|[b]| b)
    }

    /// The next `u16`.
    pub fn u16(&mut self) -> Result<u16, OutOfBounds> {
        self.array().map(u16::from_le_bytes)
    }

    /// The next `u32`.
    pub fn u32(&mut self) -> Result<u32, OutOfBounds> {
        self.array().map(u32::from_le_bytes)
    }

    /// The next `u64`.
    pub fn u64(&mut self) -> Result<u64, OutOfBounds> {
        self.array().map(u64::from_le_bytes)
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_at_offsets_and_past_the_end() {
        let b = [1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(u16_at(&b, 0), Ok(1));
        assert_eq!(u32_at(&b, 2), Ok(2));
        assert_eq!(u64_at(&b, 6), Ok(3));
        assert_eq!(array_at::<2>(&b, 12), Ok([0, 0]));
        let e = u64_at(&b, 7).unwrap_err();
        assert_eq!(
            e,
            OutOfBounds {
                at: 7,
                len: 8,
                actual: 14
            }
        );
        assert_eq!(e.needed(), 15);
        assert!(u32_at(&b, usize::MAX).is_err());
        assert_eq!(
            bytes_at(&b, usize::MAX, 2).unwrap_err().needed(),
            usize::MAX
        );
    }

    #[test]
    fn the_cursor_reads_in_order_and_consumes_nothing_on_error() {
        let mut c = Cursor::new(&[7, 1, 0, 2, 0, 0, 0, 9]);
        assert_eq!(c.u8(), Ok(7));
        assert_eq!(c.u16(), Ok(1));
        assert_eq!(c.u32(), Ok(2));
        assert_eq!((c.position(), c.remaining()), (7, 1));
        assert_eq!(c.u64().unwrap_err().needed(), 15);
        assert_eq!(c.position(), 7);
        assert!(c.bytes(usize::MAX).is_err());
        assert_eq!(c.rest(), &[9]);
        assert_eq!(c.rest(), &[] as &[u8]);
        assert_eq!(c.remaining(), 0);
    }

    proptest! {
        #[test]
        fn reads_never_panic(b in proptest::collection::vec(any::<u8>(), 0..32), at: usize, len: usize) {
            let _ = bytes_at(&b, at, len);
            let _ = u64_at(&b, at);
            let _ = u16_at(&b, at % 40);
            let mut c = Cursor::new(&b);
            let _ = c.bytes(len % 40);
            let _ = c.u32();
            prop_assert!(c.position() <= b.len());
        }
    }
}
