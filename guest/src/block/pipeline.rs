//! The driver for callers that keep requests in flight and wait elsewhere (the ublk
//! server): post without waiting, reap completions one at a time, ask for an interrupt,
//! and say why the device stalled. The same submit and completion code as the driver's
//! own blocking calls.
//!
//! A request-level error (the device answered IOERR or UNSUPP) completes that request only;
//! anything that shows the device lying or gone (a bad used element, a short read, a
//! status with no meaning) stops the driver, as in the blocking calls.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use swiotlb_shared::features::{bit, VIRTIO_BLK_F_FLUSH};
use swiotlb_shared::layout::{MAX_MAPPING, MAX_MAPPING_SLOTS, SLOT_SIZE};

use super::{
    range_payload, BlockDriver, BlockError, Build, Request, Sink, MAX_REQUEST_BYTES, SECTOR_SIZE,
    T_DISCARD, T_FLUSH, T_IN, T_OUT, T_WRITE_ZEROES,
};
use crate::pci::PciAccess;

/// A finished request: the caller's token and how it ended.
pub type Finished = (u64, Result<(), BlockError>);

impl BlockError {
    /// Whether this error ends one request only (the device answered it with an error
    /// status), rather than the driver.
    pub fn is_request_error(&self) -> bool {
        matches!(self, BlockError::DeviceIoError | BlockError::Unsupported)
    }

    /// The errno a block layer reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            BlockError::Unsupported => libc::EOPNOTSUPP,
            BlockError::ReadOnly => libc::EROFS,
            _ => libc::EIO,
        }
    }
}

impl<P: PciAccess> BlockDriver<P> {
    /// Posts `req` under `token` without waiting: `Ok(false)` when the ring or the pool has
    /// no room for it now (try again after a completion). Call [`kick`](Self::kick) after a
    /// batch of posts.
    pub fn try_submit(&mut self, req: &Request<'_>, token: u64) -> Result<bool, BlockError> {
        if self.stopped || self.ring.is_broken() {
            return Err(BlockError::Stopped);
        }
        let build = self.build_of(req)?;
        match self.submit(&build)? {
            Some(mut p) => {
                p.token = token;
                let head = usize::from(p.head);
                if let Some(slot) = self.pending.get_mut(head) {
                    *slot = Some(p);
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The driver's request for `req`, checked against the disk.
    fn build_of<'a>(&self, req: &Request<'a>) -> Result<Build<'a>, BlockError> {
        let writes = !matches!(req, Request::Read { .. } | Request::Flush);
        if writes && self.info.read_only {
            return Err(BlockError::ReadOnly);
        }
        let range = |ty, sector: u64, sectors: u32, unmap| -> Result<Build<'a>, BlockError> {
            let offset = sector.saturating_mul(SECTOR_SIZE);
            self.check_io(offset, u64::from(sectors) * SECTOR_SIZE)?;
            Ok(Build {
                ty,
                sector,
                out: None,
                in_len: 0,
                ctl_payload: Some(range_payload(sector, sectors, unmap)),
                sink: Sink::None,
            })
        };
        let data = |sector: u64, len: u64| -> Result<(), BlockError> {
            let offset = sector.saturating_mul(SECTOR_SIZE);
            self.check_io(offset, len)?;
            if len > self.max_part_bytes() {
                return Err(BlockError::PoolExhausted(len));
            }
            Ok(())
        };
        Ok(match *req {
            Request::Read { sector, len, at } => {
                data(sector, u64::from(len))?;
                Build {
                    ty: T_IN,
                    sector,
                    out: None,
                    in_len: len,
                    ctl_payload: None,
                    sink: Sink::Read { at, len },
                }
            }
            Request::Write { sector, data: d } => {
                data(sector, d.len() as u64)?;
                Build {
                    ty: T_OUT,
                    sector,
                    out: Some(d),
                    in_len: 0,
                    ctl_payload: None,
                    sink: Sink::None,
                }
            }
            Request::Flush => Build {
                ty: T_FLUSH,
                sector: 0,
                out: None,
                in_len: 0,
                ctl_payload: None,
                sink: Sink::None,
            },
            Request::Discard { sector, sectors } => range(T_DISCARD, sector, sectors, false)?,
            Request::WriteZeroes {
                sector,
                sectors,
                unmap,
            } => range(T_WRITE_ZEROES, sector, sectors, unmap)?,
        })
    }

    /// Notifies the device of what was posted since the last call, if it wants to know.
    pub fn kick(&mut self) -> Result<(), BlockError> {
        if self.ring.should_notify()? {
            super::lock(&self.vp).notify(self.queue)?;
        }
        Ok(())
    }

    /// Takes the next completion, if any: reads land in `dst` where their request said. A
    /// request-level error is returned with its token; any other error stops the driver
    /// and is returned as the `Err`.
    pub fn poll_completion(&mut self, dst: &mut [u8]) -> Result<Option<Finished>, BlockError> {
        if self.stopped {
            return Err(BlockError::Stopped);
        }
        let c = match self.ring.poll_used() {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.stopped = true;
                return Err(e.into());
            }
        };
        let token = self
            .pending
            .get(usize::from(c.head))
            .and_then(|p| p.as_ref())
            .map_or(0, |p| p.token);
        match self.complete(c, dst) {
            Ok(()) => Ok(Some((token, Ok(())))),
            Err(e) if e.is_request_error() => Ok(Some((token, Err(e)))),
            Err(e) => {
                self.stopped = true;
                Err(e)
            }
        }
    }

    /// Asks for an interrupt at the next completion; `true` when a completion is already
    /// there (poll again before sleeping).
    pub fn arm_interrupt(&mut self) -> Result<bool, BlockError> {
        self.ring.arm_interrupt()?;
        Ok(self.ring.has_used()?)
    }

    /// The request ring's counters; `bogus_len` counts completions whose used length
    /// exceeded what was posted (clamped, never trusted: a device lying).
    pub fn ring_stats(&self) -> crate::ring::RingStats {
        self.ring.stats()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u16 {
        self.ring.in_flight()
    }

    /// The queue's interrupt eventfd, when the back end has interrupts.
    pub fn interrupt_fd(&self) -> Option<BorrowedFd<'_>> {
        self.irq.as_ref().map(AsFd::as_fd)
    }

    /// Whether the queue has an interrupt.
    pub fn has_interrupt(&self) -> bool {
        self.irq.is_some()
    }

    /// How long a request may take before the device counts as gone.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Why requests stopped completing: NEEDS_RESET, a device that reset itself, or plain
    /// silence (a timeout). Stops the driver.
    pub fn diagnose_stall(&mut self) -> BlockError {
        self.stopped = true;
        self.timeout_error()
    }

    /// The device's virtio-blk configuration.
    pub fn blk_config(&self) -> swiotlb_shared::blk::BlkConfig {
        self.config
    }

    /// Whether the device has a volatile write cache (it takes FLUSH).
    pub fn has_volatile_cache(&self) -> bool {
        self.info.driver_features & bit(VIRTIO_BLK_F_FLUSH) != 0
    }

    /// The largest read or write one request may carry: what the pool holds with nothing
    /// else in flight, whatever the slot search's next-fit cursor leaves, up to
    /// [`MAX_REQUEST_BYTES`]. A multiple of 4 KiB (512 bytes in a pool too small for that).
    pub fn max_part_bytes(&self) -> u64 {
        max_part_bytes(u64::from(self.slots.capacity()))
    }

    /// Queue depth the ring and pool hold for 4 KiB requests (a control slot and two data
    /// slots each).
    pub fn natural_depth(&self) -> u16 {
        let by_pool = u64::from(self.slots.capacity()) / (1 + 4096 / SLOT_SIZE);
        self.info
            .queue_size
            .min(u16::try_from(by_pool).unwrap_or(u16::MAX))
            .max(1)
    }
}

/// See [`BlockDriver::max_part_bytes`]: one slot for the control block, and a whole
/// mapping's worth of slots lost at most to the cursor's wrap.
fn max_part_bytes(capacity_slots: u64) -> u64 {
    let usable = capacity_slots.saturating_sub(1 + MAX_MAPPING_SLOTS) * SLOT_SIZE;
    let bytes = if usable >= 4096 {
        usable / 4096 * 4096
    } else {
        capacity_slots.saturating_sub(1) * SLOT_SIZE / SECTOR_SIZE * SECTOR_SIZE
    };
    bytes.clamp(SECTOR_SIZE, MAX_REQUEST_BYTES)
}

const _: () = assert!(MAX_MAPPING_SLOTS * SLOT_SIZE == MAX_MAPPING);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fake_device::{FakeConfig, FakeDevice};
    use crate::Options;

    #[test]
    fn a_transfer_larger_than_the_smallest_pool_is_split_not_refused() {
        let disk: Vec<u8> = (0..4usize << 20).map(|i| (i % 253) as u8).collect();
        let fake = FakeDevice::new(FakeConfig::new(disk.clone()).with_pool_size(1 << 20)).unwrap();
        let mut drv = BlockDriver::open(fake.clone(), &Options::default()).unwrap();
        assert!(drv.max_part_bytes() < 1 << 20);
        let mut buf = vec![0u8; 3 << 20];
        drv.read_at(512, &mut buf).unwrap();
        assert!(buf == disk[512..512 + (3 << 20)]);
        let data = vec![0x5a; 2 << 20];
        drv.write_at(1 << 20, &data).unwrap();
        assert!(fake.disk()[1 << 20..3 << 20] == data[..]);
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    #[test]
    fn parts_fit_the_pool_and_never_exceed_one_request() {
        // 16 MiB of slots: the driver's own largest request.
        assert_eq!(max_part_bytes(8192), MAX_REQUEST_BYTES);
        // About 1 MiB of slots: less than a megabyte, whole pages.
        let p = max_part_bytes(448);
        assert!(p < 1 << 20 && p % 4096 == 0 && p >= 4096, "{p}");
        assert!(p + SLOT_SIZE + MAX_MAPPING <= 448 * SLOT_SIZE);
        // A pool of a handful of slots still carries a sector.
        assert_eq!(max_part_bytes(3), 2 * SLOT_SIZE);
        assert_eq!(max_part_bytes(1), SECTOR_SIZE);
    }
}
