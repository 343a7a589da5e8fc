//! Client memory: `DMA_MAP`, `DMA_UNMAP`, and the server-to-client `DMA_READ`/`DMA_WRITE`.

use super::error::CodecError;
use super::limits::MAX_DATA_XFER_SIZE;
use super::wire::{check_argsz, check_limit, expect_len, put_u32, put_u64, Reader};

/// `DMA_MAP` flag: the server may read the region.
pub const DMA_MAP_FLAG_READ: u32 = 1 << 0;
/// `DMA_MAP` flag: the server may write the region.
pub const DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
/// `DMA_UNMAP` flag: also return a dirty bitmap (removed from the spec; refused).
pub const DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
/// `DMA_UNMAP` flag: unmap everything (Linux `VFIO_DMA_UNMAP_FLAG_ALL`; QEMU sends it).
pub const DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;

/// `DMA_MAP` request: a client memory range, with its file offset if an fd comes with it.
/// The reply has no payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaMap {
    /// [`DMA_MAP_FLAG_READ`] | [`DMA_MAP_FLAG_WRITE`].
    pub flags: u32,
    /// Offset of the range in the accompanying fd (0 when no fd is sent).
    pub offset: u64,
    /// DMA (bus) address of the range.
    pub address: u64,
    /// Length of the range.
    pub size: u64,
}

impl DmaMap {
    /// Encoded size: argsz, flags, offset, address, size.
    pub const SIZE: usize = 32;

    /// Parses the request: exactly [`Self::SIZE`] bytes, `argsz` covering the structure,
    /// only the READ/WRITE flags, and a range that does not wrap.
    pub fn parse(payload: &[u8]) -> Result<Self, CodecError> {
        expect_len(payload, Self::SIZE, "DMA_MAP")?;
        let mut r = Reader::new(payload, "DMA_MAP");
        check_argsz(r.u32()?, Self::SIZE)?;
        let flags = r.u32()?;
        if flags & !(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE) != 0 {
            return Err(CodecError::InvalidField {
                what: "DMA_MAP flags",
                value: u64::from(flags),
            });
        }
        let map = Self {
            flags,
            offset: r.u64()?,
            address: r.u64()?,
            size: r.u64()?,
        };
        if map.end().is_none() {
            return Err(CodecError::InvalidField {
                what: "DMA_MAP address + size",
                value: map.address,
            });
        }
        Ok(map)
    }

    /// Encodes the request (argsz = [`Self::SIZE`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        put_u32(&mut out, Self::SIZE as u32);
        put_u32(&mut out, self.flags);
        put_u64(&mut out, self.offset);
        put_u64(&mut out, self.address);
        put_u64(&mut out, self.size);
        out
    }

    /// One past the last address, or `None` if the range wraps.
    pub fn end(&self) -> Option<u64> {
        self.address.checked_add(self.size)
    }
}

/// `DMA_UNMAP` request, and its reply (the server echoes the request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaUnmap {
    /// 0 or [`DMA_UNMAP_FLAG_ALL`].
    pub flags: u32,
    /// DMA address of the mapping (must match a mapping exactly).
    pub address: u64,
    /// Size of the mapping.
    pub size: u64,
}

impl DmaUnmap {
    /// Encoded size: argsz, flags, address, size.
    pub const SIZE: usize = 24;

    /// Parses the request (or the echoing reply): exactly [`Self::SIZE`] bytes, `argsz`
    /// covering the structure, flags 0 or ALL. The dirty-bitmap variant is refused with
    /// `ENOTSUP`.
    pub fn parse(payload: &[u8]) -> Result<Self, CodecError> {
        expect_len(payload, Self::SIZE, "DMA_UNMAP")?;
        let mut r = Reader::new(payload, "DMA_UNMAP");
        check_argsz(r.u32()?, Self::SIZE)?;
        let flags = r.u32()?;
        match flags {
            0 | DMA_UNMAP_FLAG_ALL => {}
            f if f & DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 => {
                return Err(CodecError::Unsupported("DMA_UNMAP dirty bitmap"));
            }
            f => {
                return Err(CodecError::InvalidField {
                    what: "DMA_UNMAP flags",
                    value: u64::from(f),
                })
            }
        }
        Ok(Self {
            flags,
            address: r.u64()?,
            size: r.u64()?,
        })
    }

    /// Parses a reply: empty, or the echoed request.
    pub fn parse_reply(payload: &[u8]) -> Result<Option<Self>, CodecError> {
        if payload.is_empty() {
            Ok(None)
        } else {
            Self::parse(payload).map(Some)
        }
    }

    /// Encodes the request, or the server's echo (argsz = [`Self::SIZE`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        put_u32(&mut out, Self::SIZE as u32);
        put_u32(&mut out, self.flags);
        put_u64(&mut out, self.address);
        put_u64(&mut out, self.size);
        out
    }

    /// True if this unmaps every mapping.
    pub fn is_all(&self) -> bool {
        self.flags & DMA_UNMAP_FLAG_ALL != 0
    }
}

/// `DMA_READ`/`DMA_WRITE` (server to client): address, count and, where the message carries
/// it, the data.
///
/// Layout as in the spec: address u64, count u64, data. QEMU's client (`VFIOUserDMARW`)
/// instead reads a u32 count and places data at payload offset 12; see the module
/// documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaAccess<'a> {
    /// Client DMA address.
    pub address: u64,
    /// Bytes to transfer.
    pub count: u64,
    /// The data (`DMA_WRITE` request, `DMA_READ` reply); empty otherwise.
    pub data: &'a [u8],
}

impl<'a> DmaAccess<'a> {
    /// Bytes before the data.
    pub const FIXED_SIZE: usize = 16;

    /// A message carrying `data` (count = its length), refused above [`MAX_DATA_XFER_SIZE`].
    pub fn with_data(address: u64, data: &'a [u8]) -> Result<Self, CodecError> {
        let count = u64::try_from(data.len()).unwrap_or(u64::MAX);
        check_limit(count, u64::from(MAX_DATA_XFER_SIZE), "DMA count")?;
        Ok(Self {
            address,
            count,
            data,
        })
    }

    /// Parses a message without data (`DMA_READ` request): exactly [`Self::FIXED_SIZE`]
    /// bytes, count bounded by [`MAX_DATA_XFER_SIZE`], range not wrapping.
    pub fn parse_header_only(payload: &'a [u8]) -> Result<Self, CodecError> {
        expect_len(payload, Self::FIXED_SIZE, "DMA access")?;
        let (access, _) = Self::parse_fixed(payload)?;
        Ok(access)
    }

    /// Parses a message with data (`DMA_WRITE` request, `DMA_READ` reply): count bounded by
    /// [`MAX_DATA_XFER_SIZE`] and equal to the data length.
    pub fn parse(payload: &'a [u8]) -> Result<Self, CodecError> {
        let (mut access, data) = Self::parse_fixed(payload)?;
        let expected = usize::try_from(access.count).unwrap_or(usize::MAX);
        if data.len() != expected {
            return Err(CodecError::LengthMismatch {
                what: "DMA data",
                expected,
                actual: data.len(),
            });
        }
        access.data = data;
        Ok(access)
    }

    /// Parses a `DMA_WRITE` reply: empty (QEMU), address + u32 count (spec table) or
    /// address + u64 count.
    pub fn parse_write_reply(payload: &[u8]) -> Result<(), CodecError> {
        match payload.len() {
            0 | 12 | 16 => Ok(()),
            n => Err(CodecError::LengthMismatch {
                what: "DMA_WRITE reply",
                expected: 16,
                actual: n,
            }),
        }
    }

    fn parse_fixed(payload: &'a [u8]) -> Result<(Self, &'a [u8]), CodecError> {
        let mut r = Reader::new(payload, "DMA access");
        let address = r.u64()?;
        let count = r.u64()?;
        check_limit(count, u64::from(MAX_DATA_XFER_SIZE), "DMA count")?;
        if address.checked_add(count).is_none() {
            return Err(CodecError::InvalidField {
                what: "DMA address + count",
                value: address,
            });
        }
        Ok((
            Self {
                address,
                count,
                data: &[],
            },
            r.rest(),
        ))
    }

    /// Encodes address, count and the data (if any).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::FIXED_SIZE.saturating_add(self.data.len()));
        put_u64(&mut out, self.address);
        put_u64(&mut out, self.count);
        out.extend_from_slice(self.data);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dma_map_round_trips() {
        let m = DmaMap {
            flags: DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
            offset: 0x1000,
            address: 0xc0000,
            size: 0x10000,
        };
        let b = m.to_bytes();
        assert_eq!(b.len(), DmaMap::SIZE);
        assert_eq!(DmaMap::parse(&b).unwrap(), m);
    }

    #[test]
    fn dma_map_truncated_or_padded_is_refused() {
        let b = DmaMap {
            flags: 1,
            offset: 0,
            address: 0,
            size: 1,
        }
        .to_bytes();
        for len in 0..DmaMap::SIZE {
            assert!(DmaMap::parse(&b[..len]).is_err());
        }
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(
            DmaMap::parse(&long),
            Err(CodecError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn dma_map_with_unknown_flags_small_argsz_or_wrapping_range_is_refused() {
        let mut b = DmaMap {
            flags: 4,
            offset: 0,
            address: 0,
            size: 1,
        }
        .to_bytes();
        assert!(matches!(
            DmaMap::parse(&b),
            Err(CodecError::InvalidField { .. })
        ));
        b[0..4].copy_from_slice(&8u32.to_le_bytes());
        assert!(matches!(
            DmaMap::parse(&b),
            Err(CodecError::ArgszTooSmall { .. })
        ));
        let b = DmaMap {
            flags: 1,
            offset: 0,
            address: u64::MAX,
            size: 2,
        }
        .to_bytes();
        assert!(matches!(
            DmaMap::parse(&b),
            Err(CodecError::InvalidField { .. })
        ));
    }

    #[test]
    fn dma_unmap_round_trips_and_echo_reply_parses() {
        for u in [
            DmaUnmap {
                flags: 0,
                address: 0xc0000,
                size: 0x1000,
            },
            DmaUnmap {
                flags: DMA_UNMAP_FLAG_ALL,
                address: 0,
                size: 0,
            },
        ] {
            let b = u.to_bytes();
            assert_eq!(b.len(), DmaUnmap::SIZE);
            assert_eq!(DmaUnmap::parse(&b).unwrap(), u);
            assert_eq!(DmaUnmap::parse_reply(&b).unwrap(), Some(u));
        }
        assert_eq!(DmaUnmap::parse_reply(&[]).unwrap(), None);
    }

    #[test]
    fn dma_unmap_dirty_bitmap_is_unsupported_and_other_flags_invalid() {
        let b = DmaUnmap {
            flags: DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
            address: 0,
            size: 0,
        }
        .to_bytes();
        let e = DmaUnmap::parse(&b).unwrap_err();
        assert_eq!(e.errno(), super::super::errno::ENOTSUP);
        let b = DmaUnmap {
            flags: 8,
            address: 0,
            size: 0,
        }
        .to_bytes();
        assert!(matches!(
            DmaUnmap::parse(&b),
            Err(CodecError::InvalidField { .. })
        ));
        for len in 0..DmaUnmap::SIZE {
            assert!(DmaUnmap::parse(&b[..len]).is_err());
        }
    }

    #[test]
    fn dma_access_round_trips_with_and_without_data() {
        let data = [1u8, 2, 3, 4, 5];
        let w = DmaAccess::with_data(0x1000, &data).unwrap();
        let b = w.to_bytes();
        assert_eq!(b.len(), DmaAccess::FIXED_SIZE + 5);
        assert_eq!(DmaAccess::parse(&b).unwrap(), w);
        let r = DmaAccess {
            address: 0x2000,
            count: 64,
            data: &[],
        };
        assert_eq!(DmaAccess::parse_header_only(&r.to_bytes()).unwrap(), r);
        assert!(DmaAccess::parse_write_reply(&[]).is_ok());
        assert!(DmaAccess::parse_write_reply(&r.to_bytes()).is_ok());
        assert!(DmaAccess::parse_write_reply(&[0; 5]).is_err());
    }

    #[test]
    fn dma_count_beyond_max_is_refused() {
        let r = DmaAccess {
            address: 0,
            count: u64::from(MAX_DATA_XFER_SIZE) + 1,
            data: &[],
        };
        assert!(matches!(
            DmaAccess::parse_header_only(&r.to_bytes()),
            Err(CodecError::LimitExceeded { .. })
        ));
        assert!(matches!(
            DmaAccess::parse(&r.to_bytes()),
            Err(CodecError::LimitExceeded { .. })
        ));
        let big = vec![0u8; MAX_DATA_XFER_SIZE as usize + 1];
        assert!(DmaAccess::with_data(0, &big).is_err());
    }

    #[test]
    fn dma_data_length_must_equal_count() {
        let mut b = DmaAccess {
            address: 0,
            count: 4,
            data: &[1, 2, 3],
        }
        .to_bytes();
        assert!(matches!(
            DmaAccess::parse(&b),
            Err(CodecError::LengthMismatch { .. })
        ));
        b.extend_from_slice(&[4, 5]);
        assert!(matches!(
            DmaAccess::parse(&b),
            Err(CodecError::LengthMismatch { .. })
        ));
        for len in 0..DmaAccess::FIXED_SIZE {
            assert!(DmaAccess::parse(&b[..len]).is_err());
        }
    }
}
