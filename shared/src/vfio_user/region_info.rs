//! The one parse of a VFIO region's info: the fixed `struct vfio_region_info` and the
//! capability chain after it (sparse-mmap areas, MSI-X mappable).
//!
//! The layout is the kernel's (`<linux/vfio.h>`); vfio-user's `DEVICE_GET_REGION_INFO`
//! reply carries exactly the same bytes. So both the guest's kernel VFIO back end (the
//! answer of the `VFIO_DEVICE_GET_REGION_INFO` ioctl, [`Region::parse_ioctl`]) and the
//! vfio-user message ([`RegionInfo::parse`](super::RegionInfo::parse), which adds the
//! message's own `argsz` rules) read it here.
//!
//! What the peer wrote is checked before use: the chain must start after the fixed part, be
//! 4-byte aligned, move strictly forward, stay inside `argsz` and be short
//! ([`MAX_REGION_CAPS`]); a sparse-mmap capability has the version this parser knows, at
//! most [`MAX_SPARSE_AREAS`] areas, each inside the region, and comes once. Nothing here
//! panics on any bytes.

use thiserror::Error;

use super::limits::{MAX_REGION_CAPS, MAX_SPARSE_AREAS};
use crate::little_endian::{u16_at, u32_at, u64_at, Cursor, OutOfBounds};

/// `vfio_region_info.flags`: the region may be read.
pub const REGION_INFO_FLAG_READ: u32 = 1 << 0;
/// `vfio_region_info.flags`: the region may be written.
pub const REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// `vfio_region_info.flags`: the region may be mmapped (the device fd in the kernel; the
/// fd sent with the reply in vfio-user).
pub const REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
/// `vfio_region_info.flags`: a capability chain follows at `cap_offset`.
pub const REGION_INFO_FLAG_CAPS: u32 = 1 << 3;

/// Capability id of the sparse-mmap capability (`VFIO_REGION_INFO_CAP_SPARSE_MMAP`).
pub const REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// Capability id of a region type (`VFIO_REGION_INFO_CAP_TYPE`): vendor regions, not used.
pub const REGION_INFO_CAP_TYPE: u16 = 2;
/// Capability id saying the MSI-X table in the region may be mapped too
/// (`VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`).
pub const REGION_INFO_CAP_MSIX_MAPPABLE: u16 = 3;
/// Version of the sparse-mmap capability we write and accept (the kernel's is 1 too).
pub const SPARSE_MMAP_CAP_VERSION: u16 = 1;
/// Bytes of a capability header (`struct vfio_info_cap_header`): id, version, next.
pub const CAP_HEADER_SIZE: usize = 8;
/// Bytes of the fixed `struct vfio_region_info`: argsz, flags, index, cap_offset, size,
/// offset.
pub const REGION_INFO_FIXED_SIZE: usize = 32;
/// Bytes of the sparse-mmap capability before its areas: header, nr_areas, reserved.
pub const SPARSE_CAP_FIXED_SIZE: usize = CAP_HEADER_SIZE + 8;

/// One mmap-able window of a region (`struct vfio_region_sparse_mmap_area`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset of the window within the region.
    pub offset: u64,
    /// Length of the window.
    pub size: u64,
}

impl SparseArea {
    /// Encoded size.
    pub const SIZE: usize = 16;
}

/// What is wrong with a region's info.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RegionInfoError {
    /// Shorter than the fixed structure.
    #[error("{len} bytes, less than the {REGION_INFO_FIXED_SIZE} of vfio_region_info")]
    Short {
        /// Bytes there were.
        len: usize,
    },
    /// The answer is about another region than the one asked.
    #[error("answered for region {got}, not {asked}")]
    WrongIndex {
        /// The index answered.
        got: u32,
        /// The index asked.
        asked: u32,
    },
    /// The region does not fit the 64-bit file offsets of the device fd.
    #[error("region of {size:#x} bytes at fd offset {offset:#x} overflows a file offset")]
    OffsetOverflow {
        /// Region size.
        size: u64,
        /// Its offset in the device fd.
        offset: u64,
    },
    /// `argsz` says the capabilities need more bytes than the buffer has.
    #[error("the capabilities need {argsz} bytes, {offered} were offered")]
    CapsNotOffered {
        /// Bytes the whole info needs.
        argsz: u32,
        /// Bytes of the buffer.
        offered: usize,
    },
    /// The chain is longer than [`MAX_REGION_CAPS`].
    #[error("more than {MAX_REGION_CAPS} capabilities")]
    TooManyCaps,
    /// A capability inside the fixed structure, or not 4-byte aligned.
    #[error("capability at byte {at}, inside the header or unaligned")]
    BadCapOffset {
        /// Its offset.
        at: u32,
    },
    /// A capability header past the end of the info.
    #[error("capability header at byte {at} runs past the {len} bytes")]
    CapPastEnd {
        /// Its offset.
        at: u32,
        /// Bytes of the info (`argsz`).
        len: usize,
    },
    /// The chain goes back (it could loop).
    #[error("capability chain goes back from byte {at} to {next}")]
    ChainBackwards {
        /// The capability.
        at: u32,
        /// Where its `next` points.
        next: u32,
    },
    /// A sparse-mmap capability of a version this parser does not know.
    #[error(
        "sparse-mmap capability at byte {at} has version {version}, not {SPARSE_MMAP_CAP_VERSION}"
    )]
    SparseVersion {
        /// Its offset.
        at: u32,
        /// Its version.
        version: u16,
    },
    /// A second sparse-mmap capability.
    #[error("a second sparse-mmap capability at byte {at}")]
    DuplicateSparse {
        /// Its offset.
        at: u32,
    },
    /// The sparse-mmap capability's count and reserved word run past the end.
    #[error("sparse-mmap capability at byte {at} is cut short")]
    SparseCutShort {
        /// Its offset.
        at: u32,
    },
    /// More sparse-mmap areas than [`MAX_SPARSE_AREAS`].
    #[error("{nr} sparse-mmap areas, more than the {MAX_SPARSE_AREAS} accepted")]
    TooManyAreas {
        /// The count given.
        nr: u32,
    },
    /// A sparse-mmap area past the end of the info.
    #[error("sparse-mmap area {area} runs past the {len} bytes")]
    AreaPastEnd {
        /// The area's number.
        area: u32,
        /// Bytes of the info (`argsz`).
        len: usize,
    },
    /// A sparse-mmap area outside the region.
    #[error("sparse-mmap area {area} [{offset:#x}, +{size:#x}) lies outside the {region_size:#x}-byte region")]
    AreaOutside {
        /// The area's number.
        area: u32,
        /// Its offset.
        offset: u64,
        /// Its size.
        size: u64,
        /// The region's size.
        region_size: u64,
    },
}

/// The fixed `struct vfio_region_info`, as read: nothing checked yet but its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfoHeader {
    /// Bytes of the whole info, capabilities included (what the writer needs, when it did
    /// not fit).
    pub argsz: u32,
    /// `REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// The region index.
    pub index: u32,
    /// Where the capability chain starts (0: none, or it did not fit).
    pub cap_offset: u32,
    /// Size of the region.
    pub size: u64,
    /// Offset of the region in the fd it is reached through.
    pub offset: u64,
}

impl RegionInfoHeader {
    /// Reads the fixed part of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, RegionInfoError> {
        let short = |_: OutOfBounds| RegionInfoError::Short { len: bytes.len() };
        let mut c = Cursor::new(bytes);
        Ok(Self {
            argsz: c.u32().map_err(short)?,
            flags: c.u32().map_err(short)?,
            index: c.u32().map_err(short)?,
            cap_offset: c.u32().map_err(short)?,
            size: c.u64().map_err(short)?,
            offset: c.u64().map_err(short)?,
        })
    }

    /// Walks the capability chain from `cap_offset` through `info` (the info's bytes, the
    /// fixed part included, no more than `argsz`), and keeps what this crate uses. Unknown
    /// capabilities (region types, others) are skipped; sparse-mmap areas are kept as given,
    /// empty ones included.
    pub fn caps(&self, info: &[u8]) -> Result<RegionCaps, RegionInfoError> {
        let len = info.len();
        let mut caps = RegionCaps::default();
        let mut at = self.cap_offset;
        let mut walked = 0;
        loop {
            walked += 1;
            if walked > MAX_REGION_CAPS {
                return Err(RegionInfoError::TooManyCaps);
            }
            let i = at as usize;
            if i < REGION_INFO_FIXED_SIZE || i % 4 != 0 {
                return Err(RegionInfoError::BadCapOffset { at });
            }
            let past = |_: OutOfBounds| RegionInfoError::CapPastEnd { at, len };
            let id = u16_at(info, i).map_err(past)?;
            let version = u16_at(info, i + 2).map_err(past)?;
            let next = u32_at(info, i + 4).map_err(past)?;
            match id {
                REGION_INFO_CAP_SPARSE_MMAP => {
                    if version != SPARSE_MMAP_CAP_VERSION {
                        return Err(RegionInfoError::SparseVersion { at, version });
                    }
                    if caps.sparse.is_some() {
                        return Err(RegionInfoError::DuplicateSparse { at });
                    }
                    caps.sparse = Some(sparse_areas(info, at, self.size)?);
                }
                REGION_INFO_CAP_MSIX_MAPPABLE => caps.msix_mappable = true,
                _ => {}
            }
            if next == 0 {
                return Ok(caps);
            }
            if next <= at {
                return Err(RegionInfoError::ChainBackwards { at, next });
            }
            at = next;
        }
    }
}

/// The sparse-mmap areas of the capability at `at` of `info`, each inside a region of
/// `region_size` bytes.
fn sparse_areas(
    info: &[u8],
    at: u32,
    region_size: u64,
) -> Result<Vec<SparseArea>, RegionInfoError> {
    let i = at as usize;
    let nr = u32_at(info, i + CAP_HEADER_SIZE)
        .and_then(|nr| u32_at(info, i + CAP_HEADER_SIZE + 4).map(|_| nr))
        .map_err(|_| RegionInfoError::SparseCutShort { at })?;
    if nr > MAX_SPARSE_AREAS {
        return Err(RegionInfoError::TooManyAreas { nr });
    }
    // Bounded by MAX_SPARSE_AREAS above.
    let mut areas = Vec::with_capacity(nr as usize);
    for area in 0..nr {
        let a = i + SPARSE_CAP_FIXED_SIZE + area as usize * SparseArea::SIZE;
        let past = |_: OutOfBounds| RegionInfoError::AreaPastEnd {
            area,
            len: info.len(),
        };
        let offset = u64_at(info, a).map_err(past)?;
        let size = u64_at(info, a + 8).map_err(past)?;
        if offset.checked_add(size).is_none_or(|end| end > region_size) {
            return Err(RegionInfoError::AreaOutside {
                area,
                offset,
                size,
                region_size,
            });
        }
        areas.push(SparseArea { offset, size });
    }
    Ok(areas)
}

/// The capabilities of a region that this crate uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionCaps {
    /// The sparse-mmap areas, when the capability is there.
    pub sparse: Option<Vec<SparseArea>>,
    /// The MSI-X mappable capability is there.
    pub msix_mappable: bool,
}

/// One region as the kernel's `VFIO_DEVICE_GET_REGION_INFO` describes it, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Region {
    /// `REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Size in bytes (0: the region is absent).
    pub size: u64,
    /// Offset of the region in the device fd (for pread/pwrite and mmap).
    pub offset: u64,
    /// The areas user space may map, within the region, when the kernel gave a sparse-mmap
    /// capability (empty areas left out); `None` when the whole region may be mapped.
    pub sparse: Option<Vec<SparseArea>>,
    /// The kernel said the MSI-X table in this region may be mapped too.
    pub msix_mappable: bool,
}

impl Region {
    /// Parses what `VFIO_DEVICE_GET_REGION_INFO` wrote for region `index` into `bytes` (the
    /// whole buffer offered, its `argsz`). Strict: the index must be the one asked, the
    /// region must fit the 64-bit file offsets; with `REGION_INFO_FLAG_CAPS` and a
    /// `cap_offset`, `argsz` must lie within the buffer and the chain is checked as the
    /// module says. CAPS with `cap_offset` 0 is the kernel saying the chain did not fit: the
    /// region then has no capabilities.
    pub fn parse_ioctl(index: u32, bytes: &[u8]) -> Result<Self, RegionInfoError> {
        let h = RegionInfoHeader::parse(bytes)?;
        if h.index != index {
            return Err(RegionInfoError::WrongIndex {
                got: h.index,
                asked: index,
            });
        }
        if h.offset
            .checked_add(h.size)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(RegionInfoError::OffsetOverflow {
                size: h.size,
                offset: h.offset,
            });
        }
        let mut region = Self {
            flags: h.flags,
            size: h.size,
            offset: h.offset,
            sparse: None,
            msix_mappable: false,
        };
        if h.flags & REGION_INFO_FLAG_CAPS == 0 || h.cap_offset == 0 {
            return Ok(region);
        }
        let info = bytes
            .get(..h.argsz as usize)
            .ok_or(RegionInfoError::CapsNotOffered {
                argsz: h.argsz,
                offered: bytes.len(),
            })?;
        let caps = h.caps(info)?;
        region.sparse = caps
            .sparse
            .map(|areas| areas.into_iter().filter(|a| a.size != 0).collect());
        region.msix_mappable = caps.msix_mappable;
        Ok(region)
    }

    /// Whether `[offset, offset + len)` of the region may be mmapped.
    pub fn can_map(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if self.flags & REGION_INFO_FLAG_MMAP == 0 || len == 0 || end > self.size {
            return false;
        }
        match &self.sparse {
            None => true,
            Some(areas) => areas.iter().any(|a| {
                a.offset <= offset && a.offset.checked_add(a.size).is_some_and(|e| end <= e)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A region info as the kernel writes it: header, then `caps` (each `(id, body)`,
    /// chained in order, 8-byte aligned).
    fn info(index: u32, flags: u32, size: u64, offset: u64, caps: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0u8; REGION_INFO_FIXED_SIZE];
        let mut chain = Vec::new();
        let mut at = REGION_INFO_FIXED_SIZE;
        for (i, (id, body)) in caps.iter().enumerate() {
            let len = (8 + body.len()).next_multiple_of(8);
            let next = if i + 1 == caps.len() { 0 } else { at + len };
            let mut c = Vec::new();
            c.extend_from_slice(&id.to_le_bytes());
            c.extend_from_slice(&1u16.to_le_bytes());
            c.extend_from_slice(&(next as u32).to_le_bytes());
            c.extend_from_slice(body);
            c.resize(len, 0);
            chain.extend(c);
            at += len;
        }
        let flags = if caps.is_empty() {
            flags
        } else {
            flags | REGION_INFO_FLAG_CAPS
        };
        let cap_offset = if caps.is_empty() {
            0
        } else {
            REGION_INFO_FIXED_SIZE as u32
        };
        b[0..4].copy_from_slice(&((REGION_INFO_FIXED_SIZE + chain.len()) as u32).to_le_bytes());
        b[4..8].copy_from_slice(&flags.to_le_bytes());
        b[8..12].copy_from_slice(&index.to_le_bytes());
        b[12..16].copy_from_slice(&cap_offset.to_le_bytes());
        b[16..24].copy_from_slice(&size.to_le_bytes());
        b[24..32].copy_from_slice(&offset.to_le_bytes());
        b.extend(chain);
        b
    }

    fn sparse(areas: &[(u64, u64)]) -> (u16, Vec<u8>) {
        let mut body = Vec::new();
        body.extend_from_slice(&(areas.len() as u32).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        for (o, s) in areas {
            body.extend_from_slice(&o.to_le_bytes());
            body.extend_from_slice(&s.to_le_bytes());
        }
        (REGION_INFO_CAP_SPARSE_MMAP, body)
    }

    fn areas(a: &[(u64, u64)]) -> Vec<SparseArea> {
        a.iter()
            .map(|&(offset, size)| SparseArea { offset, size })
            .collect()
    }

    const RWM: u32 = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE | REGION_INFO_FLAG_MMAP;

    #[test]
    fn region_info_without_capabilities() {
        let r = Region::parse_ioctl(2, &info(2, RWM, 16 << 20, 2 << 40, &[])).unwrap();
        assert_eq!(
            r,
            Region {
                flags: RWM,
                size: 16 << 20,
                offset: 2 << 40,
                sparse: None,
                msix_mappable: false
            }
        );
        assert!(r.can_map(0, 16 << 20));
        assert!(r.can_map(4096, 4096));
        assert!(!r.can_map(0, (16 << 20) + 1), "past the end");
        assert!(!r.can_map(0, 0), "empty");
        assert!(!r.can_map(u64::MAX, 2), "overflow");
        let ro = Region::parse_ioctl(0, &info(0, REGION_INFO_FLAG_READ, 4096, 0, &[])).unwrap();
        assert!(!ro.can_map(0, 4096), "no MMAP flag");
    }

    #[test]
    fn region_info_with_sparse_areas_and_msix_mappable() {
        let bytes = info(
            0,
            RWM,
            0x8000,
            0,
            &[
                sparse(&[(0, 0x4000), (0x6000, 0x2000), (0x7000, 0)]),
                (REGION_INFO_CAP_MSIX_MAPPABLE, vec![]),
                (REGION_INFO_CAP_TYPE, vec![0; 8]), // a region type: ignored
            ],
        );
        let r = Region::parse_ioctl(0, &bytes).unwrap();
        assert_eq!(r.sparse, Some(areas(&[(0, 0x4000), (0x6000, 0x2000)])));
        assert!(r.msix_mappable);
        assert!(r.can_map(0, 0x4000));
        assert!(r.can_map(0x6000, 0x1000));
        assert!(!r.can_map(0x4000, 0x1000), "the MSI-X table page");
        assert!(!r.can_map(0, 0x8000), "not the whole BAR");
        assert!(!r.can_map(0x3000, 0x4000), "straddles two areas");
    }

    #[test]
    fn region_info_refuses_nonsense() {
        let parse = |index, b: &[u8]| Region::parse_ioctl(index, b).map_err(|e| e.to_string());
        let good = info(0, RWM, 0x8000, 0, &[sparse(&[(0, 0x4000)])]);
        assert!(parse(0, &good).is_ok());
        assert!(parse(1, &good).unwrap_err().contains("region 0"));
        assert!(parse(0, &good[..31]).unwrap_err().contains("less than"));
        // Past 64-bit file offsets.
        let e = parse(0, &info(0, RWM, 2, i64::MAX as u64, &[])).unwrap_err();
        assert!(e.contains("overflows"), "{e}");
        let e = parse(0, &info(0, RWM, u64::MAX, 1, &[])).unwrap_err();
        assert!(e.contains("overflows"), "{e}");
        // An area outside the region.
        let e = parse(0, &info(0, RWM, 0x8000, 0, &[sparse(&[(0x7000, 0x2000)])])).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        let e = parse(0, &info(0, RWM, 0x8000, 0, &[sparse(&[(u64::MAX, 2)])])).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        // More areas than accepted.
        let many: Vec<(u64, u64)> = (0..65).map(|i| (i * 16, 16)).collect();
        let e = parse(0, &info(0, RWM, 0x8000, 0, &[sparse(&many)])).unwrap_err();
        assert!(e.contains("more than"), "{e}");
        // An area count that runs past the bytes.
        let mut b = good.clone();
        let h = REGION_INFO_FIXED_SIZE;
        b[h + 8..h + 12].copy_from_slice(&3u32.to_le_bytes());
        assert!(parse(0, &b).unwrap_err().contains("runs past"));
        // argsz larger than what was offered.
        let mut b = good.clone();
        b[0..4].copy_from_slice(&10_000u32.to_le_bytes());
        assert!(parse(0, &b).unwrap_err().contains("need"));
        // A chain that loops, points into the header, or is unaligned.
        for (cap_offset, next) in [(32u32, 32u32), (8, 0), (34, 0)] {
            let mut b = good.clone();
            b[12..16].copy_from_slice(&cap_offset.to_le_bytes());
            b[h + 4..h + 8].copy_from_slice(&next.to_le_bytes());
            assert!(parse(0, &b).is_err(), "cap at {cap_offset}, next {next}");
        }
        // A capability header past the end.
        let mut b = good.clone();
        b[12..16].copy_from_slice(&((good.len() - 4) as u32).to_le_bytes());
        assert!(parse(0, &b).unwrap_err().contains("runs past"));
    }

    #[test]
    fn a_second_or_unknown_version_sparse_capability_is_refused() {
        let two = info(
            0,
            RWM,
            0x8000,
            0,
            &[sparse(&[(0, 0x1000)]), sparse(&[(0x2000, 0x1000)])],
        );
        assert_eq!(
            Region::parse_ioctl(0, &two),
            Err(RegionInfoError::DuplicateSparse { at: 64 })
        );
        let mut v2 = info(0, RWM, 0x8000, 0, &[sparse(&[(0, 0x1000)])]);
        v2[REGION_INFO_FIXED_SIZE + 2] = 2;
        assert_eq!(
            Region::parse_ioctl(0, &v2),
            Err(RegionInfoError::SparseVersion { at: 32, version: 2 })
        );
    }

    #[test]
    fn region_info_parsing_never_panics_on_garbage() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..200usize {
            let mut b = vec![0u8; len];
            for v in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = x as u8;
            }
            if len >= 16 {
                // Make the caps walk happen now and then.
                b[4] |= REGION_INFO_FLAG_CAPS as u8;
                b[12] = 32;
                b[13..16].fill(0);
                b[8..12].copy_from_slice(&0u32.to_le_bytes());
            }
            let _ = Region::parse_ioctl(0, &b);
        }
    }
}
