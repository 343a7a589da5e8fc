//! The two packed forms byte by byte: little-endian fixed-width fields (`chains-le/1`) and
//! LEB128 variable-length integers (`chains-varint/1`), written and walked; a chain's
//! descriptors decoded ([`PackedChain::descriptors`]); the walk over a batch's chains.

use super::{BatchError, BatchFormat, PackedChain, PackedDescriptor, VarintDefect};
use super::{CHAIN_HEADER_BYTES, DESCRIPTOR_BYTES, FLAG_WRITABLE, MAX_LEN_FLAGS};

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Appends `v` as an unsigned LEB128 integer in its shortest form.
pub(super) fn put_varint(out: &mut Vec<u8>, v: u64) {
    let mut w = VarintWriter::new(out);
    w.put(v);
    w.finish();
}

/// LEB128 integers staged on the stack and appended to a vector a run at a time: a chain's
/// fields in one copy rather than one copy (a call to `memcpy`) per field, which cost the
/// device's full mode ~25 ns a chain of three (BENCHMARKS.md).
pub(super) struct VarintWriter<'a> {
    out: &'a mut Vec<u8>,
    staged: [u8; STAGED],
    n: usize,
}

/// Bytes staged before they are appended: a request's chain of three (~20 bytes) goes in
/// one copy, and even the longest chain of three (61 bytes) in two.
const STAGED: usize = 64;
/// The longest LEB128 form of a `u64`.
const VARINT_MAX: usize = 10;

impl<'a> VarintWriter<'a> {
    #[inline]
    pub(super) fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            staged: [0; STAGED],
            n: 0,
        }
    }

    /// Where the next integer lands in the vector.
    #[inline]
    pub(super) fn position(&self) -> usize {
        self.out.len() + self.n
    }

    /// Appends `v` in its shortest form.
    #[inline]
    pub(super) fn put(&mut self, mut v: u64) {
        if self.n > STAGED - VARINT_MAX {
            self.flush();
        }
        if v < 0x80 {
            self.staged[self.n] = v as u8;
            self.n += 1;
            return;
        }
        if v < 1 << 56 {
            // Two to eight bytes without a loop: the 7-bit groups spread one a byte, the
            // continuation bit on every byte but the last, stored as one 8-byte word (the
            // bytes past the last are overwritten by what comes next, or never copied).
            let len = (64 - v.leading_zeros() as usize).div_ceil(7);
            let mut x = 0u64;
            for i in 0..8 {
                x |= ((v >> (7 * i)) & 0x7f) << (8 * i);
            }
            x |= 0x8080_8080_8080_8080 & ((1u64 << (8 * (len - 1))) - 1);
            self.staged[self.n..self.n + 8].copy_from_slice(&x.to_le_bytes());
            self.n += len;
            return;
        }
        while v >= 0x80 {
            self.staged[self.n] = v as u8 | 0x80;
            v >>= 7;
            self.n += 1;
        }
        self.staged[self.n] = v as u8;
        self.n += 1;
    }

    #[inline]
    fn flush(&mut self) {
        // The whole staging array, then cut back to what was put: a copy of a constant
        // size is a few vector stores, where one of `n` bytes is a call to `memcpy`.
        let end = self.out.len() + self.n;
        self.out.extend_from_slice(&self.staged);
        self.out.truncate(end);
        self.n = 0;
    }

    /// Appends what is staged; the vector holds every integer put.
    #[inline]
    pub(super) fn finish(mut self) {
        self.flush();
    }
}

/// Reads a LEB128 integer of at most `max` at `*at` and moves past it; strict: the
/// shortest form only, and nothing above `max`.
fn get_varint(b: &[u8], at: &mut usize, max: u64) -> Result<u64, VarintDefect> {
    let (mut v, mut shift) = (0u64, 0u32);
    loop {
        let Some(&byte) = b.get(*at) else {
            return Err(VarintDefect::Truncated);
        };
        *at += 1;
        let bits = u64::from(byte & 0x7f);
        // The tenth byte holds bit 63 only; anything above it, or an eleventh byte, is
        // larger than a u64.
        if shift == 63 && bits > 1 {
            return Err(VarintDefect::TooLarge);
        }
        v |= bits << shift;
        if byte & 0x80 == 0 {
            if byte == 0 && shift != 0 {
                return Err(VarintDefect::Overlong);
            }
            return if v > max {
                Err(VarintDefect::TooLarge)
            } else {
                Ok(v)
            };
        }
        shift += 7;
        if shift > 63 {
            return Err(VarintDefect::TooLarge);
        }
    }
}

/// ZigZag: a signed distance as an unsigned integer, small either way.
#[inline]
pub(super) fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    (z >> 1) as i64 ^ -((z & 1) as i64)
}

/// The descriptors of a checked chain, in chain order.
struct Descriptors<'a> {
    format: BatchFormat,
    descs: &'a [u8],
    at: usize,
    left: u32,
    prev: u64,
}

impl Iterator for Descriptors<'_> {
    type Item = PackedDescriptor;

    fn next(&mut self) -> Option<PackedDescriptor> {
        if self.left == 0 {
            return None;
        }
        // The bytes were checked whole (`check`): the reads below succeed; were they short,
        // the walk would end rather than panic.
        let d = match self.format {
            BatchFormat::FixedLe => {
                let d = self.descs.get(self.at..self.at + DESCRIPTOR_BYTES)?;
                self.at += DESCRIPTOR_BYTES;
                PackedDescriptor {
                    addr: u64_at(d, 0),
                    len: u32_at(d, 8),
                    writable: d[12] & FLAG_WRITABLE != 0,
                }
            }
            BatchFormat::Varint => {
                let a = get_varint(self.descs, &mut self.at, u64::MAX).ok()?;
                let lf = get_varint(self.descs, &mut self.at, MAX_LEN_FLAGS).ok()?;
                let addr = self.prev.wrapping_add(unzigzag(a) as u64);
                self.prev = addr;
                PackedDescriptor {
                    addr,
                    len: (lf >> 1) as u32,
                    writable: lf & 1 != 0,
                }
            }
        };
        self.left -= 1;
        Some(d)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Descriptors<'_> {}

impl<'a> PackedChain<'a> {
    /// Descriptors in the chain.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the chain has no descriptor.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Its descriptors, in chain order.
    pub fn descriptors(&self) -> impl ExactSizeIterator<Item = PackedDescriptor> + 'a {
        Descriptors {
            format: self.format,
            descs: self.descs,
            at: 0,
            left: self.count,
            prev: 0,
        }
    }
}

/// A chain's header and where its descriptors start and end, checked: the first defect
/// otherwise. `at` is where the chain starts in `data`; `chain` its index.
pub(super) struct Walked {
    pub(super) queue: u16,
    pub(super) head: u16,
    pub(super) count: u32,
    /// Where the descriptors start and where the chain ends.
    pub(super) descs: (usize, usize),
    /// Bytes of every descriptor.
    pub(super) bytes: u64,
}

fn walk_fixed(data: &[u8], at: usize, chain: u64) -> Result<Walked, BatchError> {
    let rest = &data[at..];
    let truncated = |needed: u64| BatchError::Truncated {
        chain,
        offset: at,
        needed,
        left: rest.len(),
    };
    if rest.len() < CHAIN_HEADER_BYTES {
        return Err(truncated(CHAIN_HEADER_BYTES as u64));
    }
    let n = u32_at(rest, 4);
    // At most 8 + (2^32 - 1) * 13 bytes: no overflow in u64.
    let needed = CHAIN_HEADER_BYTES as u64 + u64::from(n) * DESCRIPTOR_BYTES as u64;
    let Some(whole) = usize::try_from(needed).ok().and_then(|e| rest.get(..e)) else {
        return Err(truncated(needed));
    };
    let mut bytes = 0u64;
    for (i, d) in whole[CHAIN_HEADER_BYTES..]
        .chunks_exact(DESCRIPTOR_BYTES)
        .enumerate()
    {
        let flags = d[12];
        if flags & !FLAG_WRITABLE != 0 {
            return Err(BatchError::ReservedFlags {
                chain,
                index: i as u32,
                flags,
            });
        }
        bytes += u64::from(u32_at(d, 8));
    }
    Ok(Walked {
        queue: u16_at(rest, 0),
        head: u16_at(rest, 2),
        count: n,
        descs: (at + CHAIN_HEADER_BYTES, at + whole.len()),
        bytes,
    })
}

fn walk_varint(data: &[u8], at: usize, chain: u64) -> Result<Walked, BatchError> {
    let mut p = at;
    let field = |p: &mut usize, field: &'static str, max: u64| {
        let offset = *p;
        get_varint(data, p, max).map_err(|defect| BatchError::Varint {
            chain,
            offset,
            field,
            defect,
        })
    };
    // The casts below hold: each value was checked against its field's maximum.
    let queue = field(&mut p, "queue", u64::from(u16::MAX))? as u16;
    let head = field(&mut p, "head", u64::from(u16::MAX))? as u16;
    let count = field(&mut p, "count", u64::from(u32::MAX))? as u32;
    let start = p;
    let mut bytes = 0u64;
    // Each descriptor takes at least two bytes, so a count past the end fails at the end
    // of the data, after at most its length in steps.
    for _ in 0..count {
        field(&mut p, "addr", u64::MAX)?;
        bytes += field(&mut p, "len", MAX_LEN_FLAGS)? >> 1;
    }
    Ok(Walked {
        queue,
        head,
        count,
        descs: (start, p),
        bytes,
    })
}

pub(super) fn walk(
    format: BatchFormat,
    data: &[u8],
    at: usize,
    chain: u64,
) -> Result<Walked, BatchError> {
    match format {
        BatchFormat::FixedLe => walk_fixed(data, at, chain),
        BatchFormat::Varint => walk_varint(data, at, chain),
    }
}

/// The chains of checked bytes, in order.
pub(super) struct Chains<'a> {
    pub(super) format: BatchFormat,
    pub(super) data: &'a [u8],
    pub(super) at: usize,
}

impl<'a> Iterator for Chains<'a> {
    type Item = PackedChain<'a>;

    fn next(&mut self) -> Option<PackedChain<'a>> {
        if self.at >= self.data.len() {
            return None;
        }
        // The bytes were checked whole (`check`): a defect cannot be met here, and would end
        // the walk rather than panic.
        let w = walk(self.format, self.data, self.at, 0).ok()?;
        let size = w.descs.1 - self.at;
        self.at = w.descs.1;
        Some(PackedChain {
            queue: w.queue,
            head: w.head,
            count: w.count,
            descs: self.data.get(w.descs.0..w.descs.1)?,
            format: self.format,
            size,
        })
    }
}
