//! Region messages: `DEVICE_GET_REGION_INFO` (with the sparse-mmap capability),
//! `DEVICE_GET_REGION_IO_FDS`, `REGION_READ`/`REGION_WRITE` and `REGION_WRITE_MULTI`.

use super::error::CodecError;
use super::header::to_usize;
use super::limits::{
    MAX_DATA_XFER_SIZE, MAX_IO_FD_SUBREGIONS, MAX_REGION_INFO_ARGSZ, MAX_SPARSE_AREAS,
    MAX_WRITE_MULTI,
};
use super::region_info::RegionInfoHeader;
// The region-info layout has its home in `region_info`; its names are here too, beside the
// message that carries it.
pub use super::region_info::{
    SparseArea, CAP_HEADER_SIZE, REGION_INFO_CAP_SPARSE_MMAP, REGION_INFO_FLAG_CAPS,
    REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE, SPARSE_MMAP_CAP_VERSION,
};
use super::wire::{
    array_size, check_argsz, check_limit, expect_len, len_u32, put_u16, put_u32, put_u64, Reader,
};

/// IO-FD sub-region type: ioeventfd (`VFIO_USER_IO_FD_TYPE_IOEVENTFD`).
pub const IO_FD_TYPE_IOEVENTFD: u32 = 0;
/// IO-FD sub-region type: ioregionfd (`VFIO_USER_IO_FD_TYPE_IOREGIONFD`).
pub const IO_FD_TYPE_IOREGIONFD: u32 = 1;

/// A reply whose size the client bounds with `argsz`: either the whole reply, or (when the
/// client's `argsz` was too small) only the size it needs, to retry with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgszReply<T> {
    /// The whole reply.
    Complete(T),
    /// The reply did not fit; ask again with this `argsz` (already bounded).
    Retry {
        /// The `argsz` the full reply needs.
        argsz: u32,
    },
}

/// `DEVICE_GET_REGION_INFO` reply (`struct vfio_region_info`, then the capability chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// `REGION_INFO_FLAG_*`. [`REGION_INFO_FLAG_CAPS`] is managed by the encoder.
    pub flags: u32,
    /// The region index.
    pub index: u32,
    /// Size of the region.
    pub size: u64,
    /// Offset to mmap the region fd at (base of the sparse areas).
    pub offset: u64,
    /// Mmap-able windows; empty means no sparse-mmap capability.
    pub sparse_areas: Vec<SparseArea>,
}

impl RegionInfo {
    /// Bytes of the fixed structure: argsz, flags, index, cap_offset, size, offset.
    pub const FIXED_SIZE: usize = super::region_info::REGION_INFO_FIXED_SIZE;
    /// Bytes of the sparse-mmap capability before its areas: header, nr_areas, reserved.
    pub const SPARSE_CAP_FIXED_SIZE: usize = super::region_info::SPARSE_CAP_FIXED_SIZE;

    /// `argsz` of the full reply: the fixed part, plus the sparse-mmap capability if there
    /// are areas. Refused above [`MAX_SPARSE_AREAS`] areas.
    pub fn full_size(&self) -> Result<u32, CodecError> {
        let n = len_u32(
            self.sparse_areas.len(),
            MAX_SPARSE_AREAS,
            "sparse mmap areas",
        )?;
        let total = if n == 0 {
            Self::FIXED_SIZE
        } else {
            array_size(
                Self::FIXED_SIZE + Self::SPARSE_CAP_FIXED_SIZE,
                to_usize(n),
                SparseArea::SIZE,
                "region info size",
            )?
        };
        len_u32(total, MAX_REGION_INFO_ARGSZ, "region info size")
    }

    /// Encodes the reply for a client that asked with `client_argsz`, in one place for the
    /// rule: if the full reply fits, all of it (with [`REGION_INFO_FLAG_CAPS`] and
    /// `cap_offset` 32 when there are areas); if not, only the fixed 32 bytes with `argsz`
    /// set to the full size, the CAPS flag clear and `cap_offset` 0, so the client retries.
    ///
    /// (Linux sets CAPS in the short reply; QEMU's vfio-user client then rejects it, because
    /// it checks `cap_offset` whenever CAPS is set. libvfio-user clears it, as here.)
    /// A client `argsz` below 32 is refused (`EINVAL`).
    pub fn to_bytes_for(&self, client_argsz: u32) -> Result<Vec<u8>, CodecError> {
        check_argsz(client_argsz, Self::FIXED_SIZE)?;
        let full = self.full_size()?;
        let complete = client_argsz >= full && !self.sparse_areas.is_empty();
        let mut flags = self.flags & !REGION_INFO_FLAG_CAPS;
        let mut cap_offset = 0;
        if complete {
            flags |= REGION_INFO_FLAG_CAPS;
            cap_offset = Self::FIXED_SIZE as u32;
        }
        let mut out = Vec::with_capacity(if complete {
            to_usize(full)
        } else {
            Self::FIXED_SIZE
        });
        put_u32(&mut out, full);
        put_u32(&mut out, flags);
        put_u32(&mut out, self.index);
        put_u32(&mut out, cap_offset);
        put_u64(&mut out, self.size);
        put_u64(&mut out, self.offset);
        if complete {
            put_u16(&mut out, REGION_INFO_CAP_SPARSE_MMAP);
            put_u16(&mut out, SPARSE_MMAP_CAP_VERSION);
            put_u32(&mut out, 0);
            put_u32(
                &mut out,
                len_u32(
                    self.sparse_areas.len(),
                    MAX_SPARSE_AREAS,
                    "sparse mmap areas",
                )?,
            );
            put_u32(&mut out, 0);
            for a in &self.sparse_areas {
                put_u64(&mut out, a.offset);
                put_u64(&mut out, a.size);
            }
        }
        Ok(out)
    }

    /// Parses the reply. A 32-byte reply whose `argsz` is larger is a request to retry
    /// ([`ArgszReply::Retry`], `argsz` bounded by [`MAX_REGION_INFO_ARGSZ`]). Otherwise the
    /// payload must be exactly `argsz` bytes; with CAPS set, `cap_offset` must point past the
    /// fixed part (QEMU's rule) and the chain is checked by the one region-info parse
    /// ([`RegionInfoHeader::caps`]); only the sparse-mmap areas are kept.
    pub fn parse(payload: &[u8]) -> Result<ArgszReply<Self>, CodecError> {
        let h = RegionInfoHeader::parse(payload)?;
        check_argsz(h.argsz, Self::FIXED_SIZE)?;
        check_limit(
            u64::from(h.argsz),
            u64::from(MAX_REGION_INFO_ARGSZ),
            "region info argsz",
        )?;
        if to_usize(h.argsz) > payload.len() && payload.len() == Self::FIXED_SIZE {
            return Ok(ArgszReply::Retry { argsz: h.argsz });
        }
        expect_len(payload, to_usize(h.argsz), "DEVICE_GET_REGION_INFO reply")?;
        let mut info = Self {
            flags: h.flags,
            index: h.index,
            size: h.size,
            offset: h.offset,
            sparse_areas: Vec::new(),
        };
        if h.flags & REGION_INFO_FLAG_CAPS != 0 {
            info.sparse_areas = h.caps(payload)?.sparse.unwrap_or_default();
        }
        Ok(ArgszReply::Complete(info))
    }
}

/// One sub-region of a `DEVICE_GET_REGION_IO_FDS` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoFdSubRegion {
    /// Offset of the sub-region within the region.
    pub offset: u64,
    /// Length of the sub-region (0: any access size).
    pub size: u64,
    /// Index of the fd in the reply's SCM_RIGHTS array.
    pub fd_index: u32,
    /// [`IO_FD_TYPE_IOEVENTFD`] or [`IO_FD_TYPE_IOREGIONFD`].
    pub fd_type: u32,
    /// KVM ioeventfd / ioregionfd flags.
    pub flags: u32,
    /// ioeventfd datamatch, or ioregionfd user_data.
    pub datamatch: u64,
}

impl IoFdSubRegion {
    /// Encoded size (offset, size, fd_index, type, flags, padding, datamatch).
    pub const SIZE: usize = 40;
}

/// `DEVICE_GET_REGION_IO_FDS` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionIoFds {
    /// The region index.
    pub index: u32,
    /// The sub-regions.
    pub sub_regions: Vec<IoFdSubRegion>,
}

impl RegionIoFds {
    /// Bytes of the fixed part: argsz, flags, index, count.
    pub const FIXED_SIZE: usize = 16;

    /// `argsz` of the full reply. Refused above [`MAX_IO_FD_SUBREGIONS`] sub-regions.
    pub fn full_size(&self) -> Result<u32, CodecError> {
        let n = len_u32(
            self.sub_regions.len(),
            MAX_IO_FD_SUBREGIONS,
            "IO FD sub-regions",
        )?;
        let total = array_size(
            Self::FIXED_SIZE,
            to_usize(n),
            IoFdSubRegion::SIZE,
            "IO FD reply size",
        )?;
        len_u32(total, u32::MAX, "IO FD reply size")
    }

    /// Fds the reply must carry: one past the highest `fd_index` (0 if no sub-regions).
    pub fn fds_needed(&self) -> usize {
        self.sub_regions
            .iter()
            .map(|s| to_usize(s.fd_index).saturating_add(1))
            .max()
            .unwrap_or(0)
    }

    /// Encodes the reply for a client that asked with `client_argsz`: everything if it fits,
    /// else the fixed part alone (count set, `argsz` = full size) so the client retries; in
    /// that case send no fds. A client `argsz` below 16 is refused (`EINVAL`).
    pub fn to_bytes_for(&self, client_argsz: u32) -> Result<Vec<u8>, CodecError> {
        check_argsz(client_argsz, Self::FIXED_SIZE)?;
        let full = self.full_size()?;
        let complete = client_argsz >= full;
        let mut out = Vec::with_capacity(if complete {
            to_usize(full)
        } else {
            Self::FIXED_SIZE
        });
        put_u32(&mut out, full);
        put_u32(&mut out, 0);
        put_u32(&mut out, self.index);
        put_u32(
            &mut out,
            len_u32(
                self.sub_regions.len(),
                MAX_IO_FD_SUBREGIONS,
                "IO FD sub-regions",
            )?,
        );
        if complete {
            for s in &self.sub_regions {
                put_u64(&mut out, s.offset);
                put_u64(&mut out, s.size);
                put_u32(&mut out, s.fd_index);
                put_u32(&mut out, s.fd_type);
                put_u32(&mut out, s.flags);
                put_u32(&mut out, 0);
                put_u64(&mut out, s.datamatch);
            }
        }
        Ok(out)
    }

    /// Parses the reply: count bounded by [`MAX_IO_FD_SUBREGIONS`]; a 16-byte reply whose
    /// `argsz` is larger asks for a retry; otherwise the payload is exactly
    /// `16 + count * 40 == argsz` bytes (sub-regions are taken to be 40 bytes, the only
    /// size the spec defines), each of a known type.
    pub fn parse(payload: &[u8]) -> Result<ArgszReply<Self>, CodecError> {
        let what = "DEVICE_GET_REGION_IO_FDS reply";
        let mut r = Reader::new(payload, what);
        let argsz = r.u32()?;
        let _flags = r.u32()?;
        let index = r.u32()?;
        let count = r.u32()?;
        check_limit(
            u64::from(count),
            u64::from(MAX_IO_FD_SUBREGIONS),
            "IO FD sub-region count",
        )?;
        let full = array_size(Self::FIXED_SIZE, to_usize(count), IoFdSubRegion::SIZE, what)?;
        if to_usize(argsz) != full {
            return Err(CodecError::InvalidField {
                what: "IO FD reply argsz",
                value: u64::from(argsz),
            });
        }
        if payload.len() == Self::FIXED_SIZE && count > 0 {
            return Ok(ArgszReply::Retry { argsz });
        }
        expect_len(payload, full, what)?;
        // Bounded by MAX_IO_FD_SUBREGIONS above.
        let mut sub_regions = Vec::with_capacity(to_usize(count));
        for _ in 0..count {
            let s = IoFdSubRegion {
                offset: r.u64()?,
                size: r.u64()?,
                fd_index: r.u32()?,
                fd_type: r.u32()?,
                flags: r.u32()?,
                datamatch: {
                    let _padding = r.u32()?;
                    r.u64()?
                },
            };
            if s.fd_type != IO_FD_TYPE_IOEVENTFD && s.fd_type != IO_FD_TYPE_IOREGIONFD {
                return Err(CodecError::InvalidField {
                    what: "IO FD type",
                    value: u64::from(s.fd_type),
                });
            }
            sub_regions.push(s);
        }
        Ok(ArgszReply::Complete(Self { index, sub_regions }))
    }
}

/// `REGION_READ`/`REGION_WRITE`: offset, region, count and, where the message carries it,
/// the data. A read request and a write reply carry no data; a write request and a read
/// reply carry exactly `count` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionAccess<'a> {
    /// Offset within the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes transferred.
    pub count: u32,
    /// The data, or empty.
    pub data: &'a [u8],
}

impl<'a> RegionAccess<'a> {
    /// Bytes before the data: offset, region, count.
    pub const FIXED_SIZE: usize = 16;

    /// A message carrying `data` (a write request or read reply), count = its length,
    /// refused above [`MAX_DATA_XFER_SIZE`].
    pub fn with_data(offset: u64, region: u32, data: &'a [u8]) -> Result<Self, CodecError> {
        let count = len_u32(data.len(), MAX_DATA_XFER_SIZE, "region access count")?;
        Ok(Self {
            offset,
            region,
            count,
            data,
        })
    }

    /// Parses a message without data (read request, write reply): exactly
    /// [`Self::FIXED_SIZE`] bytes, count within [`MAX_DATA_XFER_SIZE`], range not wrapping.
    pub fn parse_header_only(payload: &'a [u8]) -> Result<Self, CodecError> {
        expect_len(payload, Self::FIXED_SIZE, "region access")?;
        Self::parse_fixed(payload).map(|(a, _)| a)
    }

    /// Parses a message with data (write request, read reply): count within
    /// [`MAX_DATA_XFER_SIZE`] and equal to the data length.
    pub fn parse(payload: &'a [u8]) -> Result<Self, CodecError> {
        let (mut a, data) = Self::parse_fixed(payload)?;
        expect_len(data, to_usize(a.count), "region access data")?;
        a.data = data;
        Ok(a)
    }

    fn parse_fixed(payload: &'a [u8]) -> Result<(Self, &'a [u8]), CodecError> {
        let mut r = Reader::new(payload, "region access");
        let offset = r.u64()?;
        let region = r.u32()?;
        let count = r.u32()?;
        check_limit(
            u64::from(count),
            u64::from(MAX_DATA_XFER_SIZE),
            "region access count",
        )?;
        if offset.checked_add(u64::from(count)).is_none() {
            return Err(CodecError::InvalidField {
                what: "region offset + count",
                value: offset,
            });
        }
        Ok((
            Self {
                offset,
                region,
                count,
                data: &[],
            },
            r.rest(),
        ))
    }

    /// Encodes offset, region, count and the data (if any).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::FIXED_SIZE.saturating_add(self.data.len()));
        put_u64(&mut out, self.offset);
        put_u32(&mut out, self.region);
        put_u32(&mut out, self.count);
        out.extend_from_slice(self.data);
        out
    }
}

/// One write of a `REGION_WRITE_MULTI` (at most 8 bytes of data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOne {
    /// Offset within the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes of `data` used (at most [`WriteOne::MAX_DATA`]).
    pub count: u32,
    /// The data, left-aligned.
    pub data: [u8; 8],
}

impl WriteOne {
    /// Encoded size (offset, region, count, 8 data bytes).
    pub const SIZE: usize = 24;
    /// Most bytes one write carries (QEMU's `VFIO_USER_MULTI_DATA`).
    pub const MAX_DATA: u32 = 8;

    /// The bytes to write.
    pub fn bytes(&self) -> &[u8] {
        self.data.get(..to_usize(self.count)).unwrap_or(&self.data)
    }
}

/// `REGION_WRITE_MULTI` request: validated writes, read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionWriteMulti<'a> {
    /// The `wr_cnt * 24` bytes of writes, each already checked.
    writes: &'a [u8],
}

impl<'a> RegionWriteMulti<'a> {
    /// Bytes before the writes: wr_cnt (u64).
    pub const FIXED_SIZE: usize = 8;

    /// Parses the request: `wr_cnt` within [`MAX_WRITE_MULTI`], payload exactly
    /// `8 + wr_cnt * 24` bytes, every count at most 8 and every range not wrapping.
    pub fn parse(payload: &'a [u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(payload, "REGION_WRITE_MULTI");
        let wr_cnt = r.u64()?;
        check_limit(wr_cnt, MAX_WRITE_MULTI, "REGION_WRITE_MULTI wr_cnt")?;
        let len = array_size(
            0,
            usize::try_from(wr_cnt).unwrap_or(usize::MAX),
            WriteOne::SIZE,
            "REGION_WRITE_MULTI",
        )?;
        let writes = r.rest();
        expect_len(writes, len, "REGION_WRITE_MULTI writes")?;
        let multi = Self { writes };
        for chunk in writes.chunks_exact(WriteOne::SIZE) {
            let w = decode_write_one(chunk)?;
            check_limit(
                u64::from(w.count),
                u64::from(WriteOne::MAX_DATA),
                "REGION_WRITE_MULTI count",
            )?;
            if w.offset.checked_add(u64::from(w.count)).is_none() {
                return Err(CodecError::InvalidField {
                    what: "region offset + count",
                    value: w.offset,
                });
            }
        }
        Ok(multi)
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.writes.len() / WriteOne::SIZE
    }

    /// True if there are no writes.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The writes, in order.
    pub fn iter(&self) -> impl Iterator<Item = WriteOne> + 'a {
        self.writes
            .chunks_exact(WriteOne::SIZE)
            .filter_map(|c| decode_write_one(c).ok())
    }

    /// Encodes a request from `writes` (at most [`MAX_WRITE_MULTI`], each count at most 8).
    pub fn encode(writes: &[WriteOne]) -> Result<Vec<u8>, CodecError> {
        let n = u64::try_from(writes.len()).unwrap_or(u64::MAX);
        check_limit(n, MAX_WRITE_MULTI, "REGION_WRITE_MULTI wr_cnt")?;
        let mut out = Vec::with_capacity(array_size(
            Self::FIXED_SIZE,
            writes.len(),
            WriteOne::SIZE,
            "REGION_WRITE_MULTI",
        )?);
        put_u64(&mut out, n);
        for w in writes {
            check_limit(
                u64::from(w.count),
                u64::from(WriteOne::MAX_DATA),
                "REGION_WRITE_MULTI count",
            )?;
            put_u64(&mut out, w.offset);
            put_u32(&mut out, w.region);
            put_u32(&mut out, w.count);
            out.extend_from_slice(&w.data);
        }
        Ok(out)
    }

    /// Encodes the reply: the number of writes done.
    pub fn reply_bytes(wr_cnt: u64) -> [u8; 8] {
        wr_cnt.to_le_bytes()
    }

    /// Parses the reply: exactly 8 bytes, the number of writes done.
    pub fn parse_reply(payload: &[u8]) -> Result<u64, CodecError> {
        expect_len(payload, 8, "REGION_WRITE_MULTI reply")?;
        Reader::new(payload, "REGION_WRITE_MULTI reply").u64()
    }
}

fn decode_write_one(chunk: &[u8]) -> Result<WriteOne, CodecError> {
    let mut r = Reader::new(chunk, "REGION_WRITE_MULTI write");
    let offset = r.u64()?;
    let region = r.u32()?;
    let count = r.u32()?;
    let data = r.array::<8>()?;
    Ok(WriteOne {
        offset,
        region,
        count,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::super::region_info::RegionInfoError;
    use super::*;

    fn info(areas: Vec<SparseArea>) -> RegionInfo {
        RegionInfo {
            flags: REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE | REGION_INFO_FLAG_MMAP,
            index: 2,
            size: 0x10000,
            offset: 0x2000,
            sparse_areas: areas,
        }
    }

    fn two_areas() -> Vec<SparseArea> {
        vec![
            SparseArea {
                offset: 0,
                size: 0x1000,
            },
            SparseArea {
                offset: 0x8000,
                size: 0x8000,
            },
        ]
    }

    fn complete<T>(r: ArgszReply<T>) -> T {
        match r {
            ArgszReply::Complete(t) => t,
            ArgszReply::Retry { argsz } => panic!("unexpected retry with argsz {argsz}"),
        }
    }

    #[test]
    fn region_info_round_trips_with_sparse_areas() {
        let i = info(two_areas());
        let full = i.full_size().unwrap();
        assert_eq!(full, 32 + 16 + 2 * 16);
        let b = i.to_bytes_for(full).unwrap();
        assert_eq!(b.len(), full as usize);
        let parsed = complete(RegionInfo::parse(&b).unwrap());
        assert_eq!(parsed.flags, i.flags | REGION_INFO_FLAG_CAPS);
        assert_eq!(parsed.sparse_areas, i.sparse_areas);
        assert_eq!(
            (parsed.index, parsed.size, parsed.offset),
            (2, 0x10000, 0x2000)
        );
    }

    #[test]
    fn region_info_round_trips_without_caps() {
        let i = info(vec![]);
        let b = i.to_bytes_for(32).unwrap();
        assert_eq!(b.len(), 32);
        assert_eq!(complete(RegionInfo::parse(&b).unwrap()), i);
        // A larger client argsz changes nothing.
        assert_eq!(i.to_bytes_for(4096).unwrap(), b);
    }

    #[test]
    fn region_info_argsz_too_small_gets_fixed_part_with_needed_argsz() {
        let i = info(two_areas());
        let full = i.full_size().unwrap();
        let b = i.to_bytes_for(32).unwrap();
        assert_eq!(b.len(), 32);
        assert_eq!(u32::from_le_bytes([b[0], b[1], b[2], b[3]]), full);
        let flags = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        assert_eq!(
            flags & REGION_INFO_FLAG_CAPS,
            0,
            "QEMU rejects CAPS with cap_offset 0"
        );
        assert_eq!(&b[12..16], &[0, 0, 0, 0]);
        assert_eq!(
            RegionInfo::parse(&b).unwrap(),
            ArgszReply::Retry { argsz: full }
        );
        assert_eq!(i.to_bytes_for(full - 1).unwrap().len(), 32);
        assert!(matches!(
            i.to_bytes_for(31),
            Err(CodecError::ArgszTooSmall { .. })
        ));
    }

    #[test]
    fn region_info_truncated_is_refused() {
        let i = info(two_areas());
        let b = i.to_bytes_for(i.full_size().unwrap()).unwrap();
        for len in (0..b.len()).filter(|l| *l != 32) {
            assert!(RegionInfo::parse(&b[..len]).is_err(), "len {len}");
        }
    }

    fn with_caps(nr_areas: u32, next: u32, cap_offset: u32) -> Vec<u8> {
        let mut b = Vec::new();
        let argsz = 32 + 16 + 16;
        put_u32(&mut b, argsz);
        put_u32(&mut b, REGION_INFO_FLAG_CAPS);
        put_u32(&mut b, 0);
        put_u32(&mut b, cap_offset);
        put_u64(&mut b, 0x10000);
        put_u64(&mut b, 0);
        put_u16(&mut b, REGION_INFO_CAP_SPARSE_MMAP);
        put_u16(&mut b, 1);
        put_u32(&mut b, next);
        put_u32(&mut b, nr_areas);
        put_u32(&mut b, 0);
        put_u64(&mut b, 0);
        put_u64(&mut b, 0x1000);
        b
    }

    #[test]
    fn region_info_huge_nr_areas_is_refused() {
        assert!(RegionInfo::parse(&with_caps(1, 0, 32)).is_ok());
        assert!(matches!(
            RegionInfo::parse(&with_caps(u32::MAX, 0, 32)),
            Err(CodecError::RegionInfo(RegionInfoError::TooManyAreas { .. }))
        ));
        assert!(matches!(
            RegionInfo::parse(&with_caps(MAX_SPARSE_AREAS + 1, 0, 32)),
            Err(CodecError::RegionInfo(RegionInfoError::TooManyAreas { .. }))
        ));
        // Within the limit but beyond the payload.
        assert!(matches!(
            RegionInfo::parse(&with_caps(2, 0, 32)),
            Err(CodecError::RegionInfo(RegionInfoError::AreaPastEnd { .. }))
        ));
    }

    #[test]
    fn region_info_cap_chain_loop_or_bad_offset_is_refused() {
        assert!(matches!(
            RegionInfo::parse(&with_caps(1, 32, 32)),
            Err(CodecError::RegionInfo(
                RegionInfoError::ChainBackwards { .. }
            ))
        ));
        assert!(matches!(
            RegionInfo::parse(&with_caps(1, 8, 32)),
            Err(CodecError::RegionInfo(
                RegionInfoError::ChainBackwards { .. }
            ))
        ));
        assert!(RegionInfo::parse(&with_caps(1, 0, 0)).is_err());
        assert!(RegionInfo::parse(&with_caps(1, 0, 16)).is_err());
        assert!(RegionInfo::parse(&with_caps(1, 0, 1 << 20)).is_err());
        assert!(RegionInfo::parse(&with_caps(1, 60, 32)).is_err());
    }

    #[test]
    fn region_info_sparse_area_outside_region_is_refused() {
        let mut i = info(vec![SparseArea {
            offset: 0xf000,
            size: 0x2000,
        }]);
        let b = i.to_bytes_for(4096).unwrap();
        assert!(matches!(
            RegionInfo::parse(&b),
            Err(CodecError::RegionInfo(RegionInfoError::AreaOutside { .. }))
        ));
        i.sparse_areas = vec![SparseArea {
            offset: u64::MAX,
            size: 2,
        }];
        assert!(RegionInfo::parse(&i.to_bytes_for(4096).unwrap()).is_err());
    }

    #[test]
    fn region_info_retry_argsz_is_bounded() {
        let mut b = info(vec![]).to_bytes_for(32).unwrap();
        b[0..4].copy_from_slice(&(MAX_REGION_INFO_ARGSZ + 1).to_le_bytes());
        assert!(matches!(
            RegionInfo::parse(&b),
            Err(CodecError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn region_info_encoder_refuses_too_many_areas() {
        let i = info(vec![
            SparseArea { offset: 0, size: 1 };
            MAX_SPARSE_AREAS as usize + 1
        ]);
        assert!(i.to_bytes_for(u32::MAX).is_err());
        let i = info(vec![
            SparseArea { offset: 0, size: 1 };
            MAX_SPARSE_AREAS as usize
        ]);
        let b = i.to_bytes_for(u32::MAX).unwrap();
        assert_eq!(
            complete(RegionInfo::parse(&b).unwrap()).sparse_areas.len(),
            MAX_SPARSE_AREAS as usize
        );
    }

    fn io_fds() -> RegionIoFds {
        RegionIoFds {
            index: 0,
            sub_regions: vec![
                IoFdSubRegion {
                    offset: 0x3000,
                    size: 2,
                    fd_index: 0,
                    fd_type: IO_FD_TYPE_IOEVENTFD,
                    flags: 1,
                    datamatch: 0,
                },
                IoFdSubRegion {
                    offset: 0x3004,
                    size: 2,
                    fd_index: 1,
                    fd_type: IO_FD_TYPE_IOEVENTFD,
                    flags: 1,
                    datamatch: 1,
                },
            ],
        }
    }

    #[test]
    fn region_io_fds_round_trip_and_retry_rule() {
        let r = io_fds();
        let full = r.full_size().unwrap();
        assert_eq!(full, 16 + 2 * 40);
        let b = r.to_bytes_for(full).unwrap();
        assert_eq!(complete(RegionIoFds::parse(&b).unwrap()), r);
        assert_eq!(r.fds_needed(), 2);
        let short = r.to_bytes_for(16).unwrap();
        assert_eq!(short.len(), 16);
        assert_eq!(
            RegionIoFds::parse(&short).unwrap(),
            ArgszReply::Retry { argsz: full }
        );
        let empty = RegionIoFds {
            index: 3,
            sub_regions: vec![],
        };
        assert_eq!(
            complete(RegionIoFds::parse(&empty.to_bytes_for(16).unwrap()).unwrap()),
            empty
        );
        assert!(r.to_bytes_for(15).is_err());
    }

    #[test]
    fn region_io_fds_huge_count_truncation_and_bad_type_are_refused() {
        let mut b = Vec::new();
        put_u32(&mut b, 16);
        put_u32(&mut b, 0);
        put_u32(&mut b, 0);
        put_u32(&mut b, u32::MAX);
        assert!(matches!(
            RegionIoFds::parse(&b),
            Err(CodecError::LimitExceeded { .. })
        ));
        let full = io_fds().to_bytes_for(4096).unwrap();
        for len in (0..full.len()).filter(|l| *l != 16) {
            assert!(RegionIoFds::parse(&full[..len]).is_err(), "len {len}");
        }
        let mut bad = io_fds();
        bad.sub_regions[1].fd_type = 7;
        assert!(matches!(
            RegionIoFds::parse(&bad.to_bytes_for(4096).unwrap()),
            Err(CodecError::InvalidField { .. })
        ));
    }

    #[test]
    fn region_access_round_trips_in_all_four_shapes() {
        let data = [0xaa, 0xbb, 0xcc, 0xdd];
        let read_req = RegionAccess {
            offset: 0x10,
            region: 7,
            count: 4,
            data: &[],
        };
        assert_eq!(
            RegionAccess::parse_header_only(&read_req.to_bytes()).unwrap(),
            read_req
        );
        let read_reply = RegionAccess::with_data(0x10, 7, &data).unwrap();
        assert_eq!(
            RegionAccess::parse(&read_reply.to_bytes()).unwrap(),
            read_reply
        );
        let write_req = RegionAccess::with_data(0x20, 0, &data[..2]).unwrap();
        assert_eq!(
            RegionAccess::parse(&write_req.to_bytes()).unwrap(),
            write_req
        );
        let write_reply = RegionAccess {
            data: &[],
            ..write_req
        };
        assert_eq!(
            RegionAccess::parse_header_only(&write_reply.to_bytes()).unwrap(),
            write_reply
        );
    }

    #[test]
    fn region_read_count_beyond_max_is_refused() {
        let r = RegionAccess {
            offset: 0,
            region: 0,
            count: MAX_DATA_XFER_SIZE + 1,
            data: &[],
        };
        assert!(matches!(
            RegionAccess::parse_header_only(&r.to_bytes()),
            Err(CodecError::LimitExceeded { .. })
        ));
        let r = RegionAccess {
            count: u32::MAX,
            ..r
        };
        assert!(matches!(
            RegionAccess::parse(&r.to_bytes()),
            Err(CodecError::LimitExceeded { .. })
        ));
        let big = vec![0; MAX_DATA_XFER_SIZE as usize + 1];
        assert!(RegionAccess::with_data(0, 0, &big).is_err());
    }

    #[test]
    fn region_access_count_must_equal_data_length() {
        let mut b = RegionAccess {
            offset: 0,
            region: 0,
            count: 4,
            data: &[1, 2],
        }
        .to_bytes();
        assert!(matches!(
            RegionAccess::parse(&b),
            Err(CodecError::Truncated { .. })
        ));
        b.extend_from_slice(&[3, 4, 5]);
        assert!(matches!(
            RegionAccess::parse(&b),
            Err(CodecError::LengthMismatch { .. })
        ));
        for len in 0..RegionAccess::FIXED_SIZE {
            assert!(RegionAccess::parse(&b[..len]).is_err());
            assert!(RegionAccess::parse_header_only(&b[..len]).is_err());
        }
        let wrapping = RegionAccess {
            offset: u64::MAX,
            region: 0,
            count: 1,
            data: &[],
        };
        assert!(matches!(
            RegionAccess::parse_header_only(&wrapping.to_bytes()),
            Err(CodecError::InvalidField { .. })
        ));
    }

    #[test]
    fn region_write_multi_round_trips() {
        let writes = [
            WriteOne {
                offset: 0x3000,
                region: 0,
                count: 2,
                data: [1, 2, 0, 0, 0, 0, 0, 0],
            },
            WriteOne {
                offset: 0x3004,
                region: 0,
                count: 8,
                data: [1; 8],
            },
        ];
        let b = RegionWriteMulti::encode(&writes).unwrap();
        assert_eq!(b.len(), 8 + 2 * WriteOne::SIZE);
        let m = RegionWriteMulti::parse(&b).unwrap();
        assert_eq!(m.len(), 2);
        assert!(!m.is_empty());
        assert_eq!(m.iter().collect::<Vec<_>>(), writes);
        assert_eq!(m.iter().next().unwrap().bytes(), &[1, 2]);
        assert_eq!(
            RegionWriteMulti::parse_reply(&RegionWriteMulti::reply_bytes(2)).unwrap(),
            2
        );
    }

    #[test]
    fn region_write_multi_huge_wr_cnt_bad_count_or_length_is_refused() {
        let mut b = Vec::new();
        put_u64(&mut b, u64::MAX);
        assert!(matches!(
            RegionWriteMulti::parse(&b),
            Err(CodecError::LimitExceeded { .. })
        ));
        let bad = [WriteOne {
            offset: 0,
            region: 0,
            count: 9,
            data: [0; 8],
        }];
        assert!(RegionWriteMulti::encode(&bad).is_err());
        let mut b = RegionWriteMulti::encode(&[WriteOne { count: 8, ..bad[0] }]).unwrap();
        b[20..24].copy_from_slice(&9u32.to_le_bytes());
        assert!(matches!(
            RegionWriteMulti::parse(&b),
            Err(CodecError::LimitExceeded { .. })
        ));
        b[20..24].copy_from_slice(&8u32.to_le_bytes());
        for len in 0..b.len() {
            assert!(RegionWriteMulti::parse(&b[..len]).is_err());
        }
        b.push(0);
        assert!(RegionWriteMulti::parse(&b).is_err());
        let too_many = vec![
            WriteOne {
                offset: 0,
                region: 0,
                count: 1,
                data: [0; 8]
            };
            MAX_WRITE_MULTI as usize + 1
        ];
        assert!(RegionWriteMulti::encode(&too_many).is_err());
    }
}
