//! virtio-blk request framing (virtio 1.2, 5.2.6) over a checked chain.
//!
//! The driver may frame a request any way it likes (virtio 1.2, 2.6.4): the 16-byte header
//! may span descriptors, and the status byte is the last byte of the last writable buffer.
//! Parsing only slices the checked chain; no byte of the data is touched here.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::pool::PoolGuestMemory;
use crate::virtio::chain::{CheckedChain, CheckedDesc};

pub use swiotlb_shared::blk::{
    HEADER_SIZE, ID_BYTES, RANGE_SIZE, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};

/// Errors of framing a request and of copying its bytes.
#[derive(Debug, Error)]
pub enum RequestError {
    /// Fewer than 16 device-readable bytes.
    #[error("request has {0} readable bytes, fewer than the 16-byte header")]
    NoHeader(u64),
    /// No device-writable byte for the status.
    #[error("request has no device-writable status byte")]
    NoStatus,
    /// Request bytes could not be read from the pool.
    #[error("request bytes at {addr:#x} unreadable")]
    Unreadable {
        /// Bus address of the segment.
        addr: u64,
        /// What the pool mapping said.
        #[source]
        source: GuestMemoryError,
    },
    /// Request bytes could not be written to the pool.
    #[error("request bytes at {addr:#x} unwritable")]
    Unwritable {
        /// Bus address of the segment.
        addr: u64,
        /// What the pool mapping said.
        #[source]
        source: GuestMemoryError,
    },
    /// The segments hold fewer bytes than asked for.
    #[error("only {got} of {want} bytes present")]
    Short {
        /// Bytes the segments hold.
        got: usize,
        /// Bytes asked for.
        want: usize,
    },
}

/// Operation of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// VIRTIO_BLK_T_IN.
    In,
    /// VIRTIO_BLK_T_OUT.
    Out,
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
    /// VIRTIO_BLK_T_GET_ID.
    GetId,
    /// VIRTIO_BLK_T_DISCARD.
    Discard,
    /// VIRTIO_BLK_T_WRITE_ZEROES.
    WriteZeroes,
    /// Anything else.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            other => Self::Unsupported(other),
        }
    }
}

/// A piece of pool memory carrying request data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Bus address inside the pool.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A framed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Operation.
    pub ty: RequestType,
    /// First sector (512-byte units).
    pub sector: u64,
    /// Data buffers: readable ones after the header for OUT/DISCARD/WRITE_ZEROES, writable
    /// ones before the status byte for IN/GET_ID, none otherwise.
    pub data: Vec<Segment>,
    /// Total bytes of `data`.
    pub data_len: u64,
    /// Bus address of the status byte.
    pub status_addr: u64,
}

/// The buffers of `descs` with `front` bytes skipped at the start and `back` at the end.
fn carve(descs: &[CheckedDesc], front: u64, back: u64) -> (Vec<Segment>, u64) {
    let total: u64 = descs.iter().map(|d| u64::from(d.len)).sum();
    let keep_end = total.saturating_sub(back);
    let mut out = Vec::with_capacity(descs.len());
    let mut pos = 0u64;
    let mut kept = 0u64;
    for d in descs {
        let start = pos;
        let end = pos + u64::from(d.len);
        pos = end;
        let lo = start.max(front);
        let hi = end.min(keep_end);
        if lo < hi {
            // lo - start < d.len and hi - lo <= d.len, both fit u32.
            out.push(Segment {
                addr: d.addr + (lo - start),
                len: (hi - lo) as u32,
            });
            kept += hi - lo;
        }
    }
    (out, kept)
}

/// Copies `out.len()` bytes from the start of `segs` (which hold at least that many).
pub fn gather(mem: &PoolGuestMemory, segs: &[Segment], out: &mut [u8]) -> Result<(), RequestError> {
    let mut done = 0usize;
    for s in segs {
        if done == out.len() {
            break;
        }
        let n = (s.len as usize).min(out.len() - done);
        mem.read_slice(&mut out[done..done + n], GuestAddress(s.addr))
            .map_err(|source| RequestError::Unreadable {
                addr: s.addr,
                source,
            })?;
        done += n;
    }
    if done == out.len() {
        Ok(())
    } else {
        Err(RequestError::Short {
            got: done,
            want: out.len(),
        })
    }
}

/// Copies `src` to the start of `segs`; bytes beyond what `segs` hold are not written.
pub fn scatter(mem: &PoolGuestMemory, segs: &[Segment], src: &[u8]) -> Result<(), RequestError> {
    let mut done = 0usize;
    for s in segs {
        if done == src.len() {
            break;
        }
        let n = (s.len as usize).min(src.len() - done);
        mem.write_slice(&src[done..done + n], GuestAddress(s.addr))
            .map_err(|source| RequestError::Unwritable {
                addr: s.addr,
                source,
            })?;
        done += n;
    }
    Ok(())
}

/// Frames a checked chain as a virtio-blk request.
pub fn parse(mem: &PoolGuestMemory, chain: &CheckedChain) -> Result<Request, RequestError> {
    if chain.readable_len < HEADER_SIZE as u64 {
        return Err(RequestError::NoHeader(chain.readable_len));
    }
    let last = chain.writable().last().ok_or(RequestError::NoStatus)?;
    // `last.len >= 1` (zero-length descriptors never pass the chain check).
    let status_addr = last.addr + u64::from(last.len) - 1;
    let (hdr_segs, _) = carve(chain.readable(), 0, chain.readable_len - HEADER_SIZE as u64);
    let mut hdr = [0u8; HEADER_SIZE];
    gather(mem, &hdr_segs, &mut hdr)?;
    let ty = RequestType::from(u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]));
    let mut s = [0u8; 8];
    s.copy_from_slice(&hdr[8..16]);
    let sector = u64::from_le_bytes(s);
    let (data, data_len) = match ty {
        RequestType::Out | RequestType::Discard | RequestType::WriteZeroes => {
            carve(chain.readable(), HEADER_SIZE as u64, 0)
        }
        RequestType::In | RequestType::GetId => carve(chain.writable(), 0, 1),
        RequestType::Flush | RequestType::Unsupported(_) => (Vec::new(), 0),
    };
    Ok(Request {
        ty,
        sector,
        data,
        data_len,
        status_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(addr: u64, len: u32, writable: bool) -> CheckedDesc {
        CheckedDesc {
            addr,
            len,
            writable,
        }
    }

    #[test]
    fn carve_skips_front_and_back_across_buffers() {
        let descs = [
            d(0x1000, 10, false),
            d(0x2000, 10, false),
            d(0x3000, 10, false),
        ];
        let (s, n) = carve(&descs, 12, 5);
        assert_eq!(n, 13);
        assert_eq!(
            s,
            vec![
                Segment {
                    addr: 0x2002,
                    len: 8
                },
                Segment {
                    addr: 0x3000,
                    len: 5
                }
            ]
        );
        assert_eq!(carve(&descs, 40, 0).1, 0);
        assert_eq!(carve(&descs, 0, 40).1, 0);
    }

    #[test]
    fn gather_reports_short_segments_and_addresses_outside_the_pool() {
        const BASE: u64 = 0x80_0000_0000;
        let mut pool = crate::pool::Pool::new(1 << 20).unwrap();
        pool.place(Some(BASE));
        let view = pool.view().unwrap().unwrap();
        let mut out = [0u8; 16];
        let short = [Segment { addr: BASE, len: 8 }];
        assert!(matches!(
            gather(&view.mem, &short, &mut out),
            Err(RequestError::Short { got: 8, want: 16 })
        ));
        let outside = [Segment {
            addr: BASE - 0x1000,
            len: 16,
        }];
        assert!(matches!(
            gather(&view.mem, &outside, &mut out),
            Err(RequestError::Unreadable { addr, .. }) if addr == BASE - 0x1000
        ));
        assert!(matches!(
            scatter(&view.mem, &outside, &out),
            Err(RequestError::Unwritable { addr, .. }) if addr == BASE - 0x1000
        ));
    }
}
