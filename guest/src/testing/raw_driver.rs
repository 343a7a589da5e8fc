//! A test driver that can do anything a guest can: a [`VfioUserClient`] and a [`VirtioPci`]
//! with every safety net of [`BlockDriver`](crate::BlockDriver) removed.
//!
//! It negotiates the features it is told and maps the pool, then leaves the rest to the test:
//! queue 0 with arbitrary ring bus addresses and size, raw descriptors at any index or pool
//! offset, avail entries and avail index written directly (so the index can jump), the used
//! ring read back, doorbells for any queue number, and raw config-space writes (move the pool
//! BAR, switch memory decode off).
//!
//! [`RawDriver::prepare_blk`] builds a well-formed virtio-blk request (16-byte header, data,
//! status byte) in the pool so a test corrupts exactly one thing at a time.
//!
//! Pool layout used by the helpers (offsets from the pool start): the rings of
//! [`RawDriver::setup_standard_queue`] where [`PoolLayout`] puts them (from 0), indirect
//! tables from [`RawDriver::table_area`] (a quarter of the pool), request buffers from
//! [`RawDriver::scratch_area`] (half the pool). The pool is at least 1 MiB, so these never
//! overlap for queues of up to 256 entries.
//!
//! Kicks are synchronous: the device processes a queue while answering the doorbell's
//! REGION_WRITE, so the used ring is final when [`RawDriver::kick`] returns.

use std::path::Path;

use swiotlb_shared::descriptor::{DESC_SIZE, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use swiotlb_shared::features::{
    bit, VIRTIO_F_SWIOTLB, VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC,
};
use swiotlb_shared::layout::{avail_ring_size, desc_table_size, used_ring_size, PoolLayout};
use swiotlb_shared::pci::{cfg, common, status};
use thiserror::Error;

use crate::pci::vfio_user::VfioUserClient;
use crate::pci::{PciAccess, PciError};
use crate::pool::{PoolAccessError, PoolMemory};
use crate::virtio_pci::{Region, TransportError, VirtioPci};

/// Features negotiated by [`RawDriver::connect`]: VERSION_1, SWIOTLB, INDIRECT_DESC.
pub const DEFAULT_FEATURES: u64 =
    bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_SWIOTLB) | bit(VIRTIO_RING_F_INDIRECT_DESC);

pub use swiotlb_shared::blk::{VIRTIO_BLK_T_IN as BLK_T_IN, VIRTIO_BLK_T_OUT as BLK_T_OUT};
/// Value [`RawDriver::prepare_blk`] leaves in the status byte; the device overwrites it.
pub const STATUS_UNSET: u8 = 0xff;

/// Errors of the raw driver.
#[derive(Debug, Error)]
pub enum RawError {
    /// Transport (config space, registers) failed.
    #[error("transport")]
    Transport(#[from] TransportError),
    /// A pool access failed (outside the mapping, misaligned).
    #[error("pool access")]
    Pool(#[from] PoolAccessError),
    /// The device refused FEATURES_OK.
    #[error("device refused features {0:#x}")]
    FeaturesRefused(u64),
    /// The device has no SWIOTLB capability.
    #[error("device has no SWIOTLB capability")]
    NoPool,
    /// A helper was used before [`RawDriver::setup_standard_queue`].
    #[error("no standard queue set up")]
    NoQueue,
    /// An argument does not fit (index overflow, doorbell outside the notify region, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl From<PciError> for RawError {
    fn from(e: PciError) -> Self {
        Self::Transport(e.into())
    }
}

/// One split-ring descriptor, exactly as it goes into memory.
pub use swiotlb_shared::descriptor::Descriptor as Desc;

/// Where the standard queue's rings are, as pool offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rings {
    /// Queue size.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// A virtio-blk request laid out in the pool by [`RawDriver::prepare_blk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkRequest {
    /// Pool offset of the 16-byte header.
    pub header: u64,
    /// Pool offset of the data buffer.
    pub data: u64,
    /// Data length.
    pub data_len: u32,
    /// Pool offset of the status byte.
    pub status: u64,
    /// Header (readable), data (readable for OUT, writable for IN), status (writable);
    /// the first two have NEXT set. `next` is filled in by [`RawDriver::write_chain`] /
    /// [`RawDriver::write_table`].
    pub descs: [Desc; 3],
}

/// The raw test driver.
pub struct RawDriver {
    vp: VirtioPci<VfioUserClient>,
    mem: PoolMemory,
    pool: Region,
    base: u64,
    features: u64,
    rings: Option<Rings>,
}

impl RawDriver {
    /// Connects and negotiates [`DEFAULT_FEATURES`].
    pub fn connect(path: &Path) -> Result<Self, RawError> {
        Self::connect_with(path, DEFAULT_FEATURES)
    }

    /// Connects, resets the device, negotiates `features` (as offered ∩ `features`; fails if
    /// FEATURES_OK is refused) and maps the pool BAR.
    pub fn connect_with(path: &Path, features: u64) -> Result<Self, RawError> {
        let mut client = VfioUserClient::connect(path)?;
        // Doorbells as messages: the server has served the kick when its reply arrives, so a
        // test can look at the rings right after `kick` (an eventfd doorbell is not waited
        // for).
        client.disable_eventfd_doorbells();
        let mut vp = VirtioPci::probe(client)?;
        let pool = vp.caps().swiotlb.ok_or(RawError::NoPool)?;
        let (_, accepted, ok) = vp.negotiate(features)?;
        if !ok {
            return Err(RawError::FeaturesRefused(accepted));
        }
        let base = vp
            .bar_address(pool.bar)?
            .checked_add(pool.offset)
            .ok_or_else(|| RawError::Invalid("pool bus address overflows".into()))?;
        let mapping = vp.pci().map_bar(pool.bar, pool.offset, pool.len)?;
        Ok(Self {
            vp,
            mem: PoolMemory::new(mapping),
            pool,
            base,
            features: accepted,
            rings: None,
        })
    }

    /// The features accepted.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The transport, for anything not wrapped here.
    pub fn transport(&mut self) -> &mut VirtioPci<VfioUserClient> {
        &mut self.vp
    }

    /// The mapped pool (offset-addressed).
    pub fn pool(&self) -> &PoolMemory {
        &self.mem
    }

    /// Pool size in bytes.
    pub fn pool_size(&self) -> u64 {
        self.pool.len
    }

    /// Bus address of the pool's first byte, as last programmed by this driver.
    pub fn pool_base(&self) -> u64 {
        self.base
    }

    /// Bus address of the pool's first byte, read from config space now.
    pub fn read_pool_base(&mut self) -> Result<u64, RawError> {
        self.vp
            .bar_address(self.pool.bar)?
            .checked_add(self.pool.offset)
            .ok_or_else(|| RawError::Invalid("pool bus address overflows".into()))
    }

    /// Bus address of pool offset `offset` (not checked against the pool: tests may want
    /// addresses past its end).
    pub fn bus(&self, offset: u64) -> u64 {
        self.base.wrapping_add(offset)
    }

    /// Pool offset where indirect tables go (a quarter of the pool).
    pub fn table_area(&self) -> u64 {
        self.pool.len / 4
    }

    /// Pool offset where request buffers go (half the pool).
    pub fn scratch_area(&self) -> u64 {
        self.pool.len / 2
    }

    // ---- device status and queue setup ----

    /// The device status register.
    pub fn status(&mut self) -> Result<u8, RawError> {
        Ok(self.vp.status()?)
    }

    /// Whether DEVICE_NEEDS_RESET is set.
    pub fn needs_reset(&mut self) -> Result<bool, RawError> {
        Ok(self.status()? & status::DEVICE_NEEDS_RESET != 0)
    }

    /// Sets DRIVER_OK (on top of ACKNOWLEDGE | DRIVER | FEATURES_OK).
    pub fn driver_ok(&mut self) -> Result<(), RawError> {
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        Ok(self.vp.set_status(s)?)
    }

    /// Programs queue `q` with `size` and ring bus addresses `desc`, `avail`, `used` (any
    /// values), no MSI-X vector, and writes queue_enable = 1. Returns whether queue_enable
    /// reads back 1 (the device refuses rings outside the pool).
    pub fn setup_queue(
        &mut self,
        q: u16,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<bool, RawError> {
        self.vp
            .setup_queue(q, size, (desc, avail, used), common::NO_VECTOR)?;
        self.queue_enabled(q)
    }

    /// Whether queue `q`'s queue_enable reads 1.
    pub fn queue_enabled(&mut self, q: u16) -> Result<bool, RawError> {
        self.common_write(common::QUEUE_SELECT, &q.to_le_bytes())?;
        let mut b = [0u8; 2];
        self.common_read(common::QUEUE_ENABLE, &mut b)?;
        Ok(u16::from_le_bytes(b) == 1)
    }

    /// Where [`PoolLayout`] puts one queue of `size`, as pool offsets.
    pub fn standard_rings(&self, size: u16) -> Result<Rings, RawError> {
        self.rings_of(1, 0, size)
    }

    /// Where [`PoolLayout`] puts queue `q` of `queues` queues of `size`, as pool offsets.
    pub fn rings_of(&self, queues: u16, q: u16, size: u16) -> Result<Rings, RawError> {
        let l = PoolLayout::new(self.pool.len, queues, size)
            .map_err(|e| RawError::Invalid(e.to_string()))?;
        let q = l
            .queues
            .get(usize::from(q))
            .ok_or_else(|| RawError::Invalid(format!("layout has no queue {q}")))?;
        Ok(Rings {
            size,
            desc: q.desc,
            avail: q.avail,
            used: q.used,
        })
    }

    /// Zeroes and programs queue 0 with well-formed rings of `size` in the pool, and
    /// remembers them for the descriptor/avail/used helpers. Returns them and whether the
    /// queue reads back enabled.
    pub fn setup_standard_queue(&mut self, size: u16) -> Result<(Rings, bool), RawError> {
        self.setup_queue_of(1, 0, size)
    }

    /// As [`setup_standard_queue`](Self::setup_standard_queue), for queue `q` of a pool laid
    /// out for `queues` queues (VIRTIO_BLK_F_MQ); the helpers then work on queue `q`'s
    /// rings until [`use_rings`](Self::use_rings) names others.
    pub fn setup_queue_of(
        &mut self,
        queues: u16,
        q: u16,
        size: u16,
    ) -> Result<(Rings, bool), RawError> {
        let r = self.rings_of(queues, q, size)?;
        self.mem.zero(r.desc, desc_table_size(size) as usize)?;
        self.mem.zero(r.avail, avail_ring_size(size) as usize)?;
        self.mem.zero(r.used, used_ring_size(size) as usize)?;
        self.rings = Some(r);
        let (d, a, u) = (self.bus(r.desc), self.bus(r.avail), self.bus(r.used));
        let ok = self.setup_queue(q, size, d, a, u)?;
        Ok((r, ok))
    }

    /// Waits up to `timeout` for the used index of the current rings to reach `n` (a
    /// queue served by a worker thread of the device answers after the doorbell's reply).
    pub fn wait_used(&self, n: u16, timeout: std::time::Duration) -> Result<bool, RawError> {
        let start = std::time::Instant::now();
        loop {
            if self.used_idx()? == n {
                return Ok(true);
            }
            if start.elapsed() >= timeout {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Tells the descriptor/avail/used helpers where the rings are in the pool, without
    /// programming the device (for tests that program the device with other addresses).
    pub fn use_rings(&mut self, r: Rings) {
        self.rings = Some(r);
    }

    fn rings(&self) -> Result<Rings, RawError> {
        self.rings.ok_or(RawError::NoQueue)
    }

    // ---- descriptors, avail and used rings ----

    /// Writes `d` at pool offset `offset` (an indirect table entry, or anywhere).
    pub fn write_desc_at(&self, offset: u64, d: Desc) -> Result<(), RawError> {
        Ok(self.mem.write(offset, &d.to_bytes())?)
    }

    /// Writes `d` at index `index` of the standard descriptor table (any index whose entry
    /// lies in the pool, even beyond the queue size).
    pub fn write_desc(&self, index: u16, d: Desc) -> Result<(), RawError> {
        let r = self.rings()?;
        self.write_desc_at(r.desc + u64::from(index) * DESC_SIZE, d)
    }

    /// Writes `descs` at `head`, `head + 1`, ... of the descriptor table, each `next` set to
    /// the following index (flags are written as given).
    pub fn write_chain(&self, head: u16, descs: &[Desc]) -> Result<(), RawError> {
        for (i, d) in descs.iter().enumerate() {
            let i = u16::try_from(i).map_err(|_| RawError::Invalid("chain too long".into()))?;
            let at = head.wrapping_add(i);
            self.write_desc(
                at,
                Desc {
                    next: at.wrapping_add(1),
                    ..*d
                },
            )?;
        }
        Ok(())
    }

    /// Writes `descs` as a table at pool offset `offset`, each `next` set to the following
    /// entry. Returns the bus address of the table.
    pub fn write_table(&self, offset: u64, descs: &[Desc]) -> Result<u64, RawError> {
        for (i, d) in descs.iter().enumerate() {
            let i = u16::try_from(i).map_err(|_| RawError::Invalid("table too long".into()))?;
            self.write_desc_at(
                offset + u64::from(i) * DESC_SIZE,
                Desc {
                    next: i.wrapping_add(1),
                    ..*d
                },
            )?;
        }
        Ok(self.bus(offset))
    }

    /// Writes `head` into avail ring entry `slot` (not reduced modulo the queue size: any
    /// slot whose entry lies in the pool).
    pub fn write_avail_entry(&self, slot: u16, head: u16) -> Result<(), RawError> {
        let r = self.rings()?;
        Ok(self
            .mem
            .store_u16(r.avail + 4 + 2 * u64::from(slot), head)?)
    }

    /// The available index.
    pub fn avail_idx(&self) -> Result<u16, RawError> {
        let r = self.rings()?;
        Ok(self.mem.load_u16(r.avail + 2)?)
    }

    /// Sets the available index to any value.
    pub fn set_avail_idx(&self, idx: u16) -> Result<(), RawError> {
        let r = self.rings()?;
        Ok(self.mem.store_u16(r.avail + 2, idx)?)
    }

    /// Makes `head` available (next avail entry, index + 1) without kicking.
    pub fn publish(&self, head: u16) -> Result<(), RawError> {
        let r = self.rings()?;
        let idx = self.avail_idx()?;
        self.write_avail_entry(idx % r.size.max(1), head)?;
        self.set_avail_idx(idx.wrapping_add(1))
    }

    /// Makes `head` available and kicks queue 0.
    pub fn submit(&mut self, head: u16) -> Result<(), RawError> {
        self.publish(head)?;
        self.kick(0)
    }

    /// The used index.
    pub fn used_idx(&self) -> Result<u16, RawError> {
        let r = self.rings()?;
        Ok(self.mem.load_u16(r.used + 2)?)
    }

    /// Used element `slot`: `(id, len)`.
    pub fn used_elem(&self, slot: u16) -> Result<(u32, u32), RawError> {
        let r = self.rings()?;
        let at = r.used + 4 + 8 * u64::from(slot % r.size.max(1));
        Ok((self.mem.load_u32(at)?, self.mem.load_u32(at + 4)?))
    }

    // ---- doorbells, registers, config space ----

    /// Rings the doorbell of queue `q` (any number, existing or not): a 2-byte write of `q`
    /// at `q * notify_off_multiplier` in the notify region (this device's queue_notify_off
    /// is the queue index). Fails only if that lies outside the notify region.
    pub fn kick(&mut self, q: u16) -> Result<(), RawError> {
        let caps = *self.vp.caps();
        let n = caps.notify;
        let at = u64::from(q)
            .checked_mul(u64::from(caps.notify_multiplier))
            .filter(|a| a.checked_add(2).is_some_and(|e| e <= n.len))
            .ok_or_else(|| RawError::Invalid(format!("no doorbell for queue {q}")))?;
        self.vp
            .pci()
            .bar_write(n.bar, n.offset + at, &q.to_le_bytes())?;
        Ok(())
    }

    fn common_read(&mut self, off: u64, buf: &mut [u8]) -> Result<(), RawError> {
        let c = self.vp.caps().common;
        Ok(self.vp.pci().bar_read(c.bar, c.offset + off, buf)?)
    }

    fn common_write(&mut self, off: u64, data: &[u8]) -> Result<(), RawError> {
        let c = self.vp.caps().common;
        Ok(self.vp.pci().bar_write(c.bar, c.offset + off, data)?)
    }

    /// Writes a register of BAR `bar` (1 to 8 bytes).
    pub fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), RawError> {
        Ok(self.vp.pci().bar_write(bar, offset, data)?)
    }

    /// Reads a register of BAR `bar` (1 to 8 bytes).
    pub fn bar_read(&mut self, bar: u8, offset: u64, buf: &mut [u8]) -> Result<(), RawError> {
        Ok(self.vp.pci().bar_read(bar, offset, buf)?)
    }

    /// Writes configuration space.
    pub fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), RawError> {
        Ok(self.vp.pci().config_write(offset, data)?)
    }

    /// Reads configuration space.
    pub fn config_read(&mut self, offset: u16, buf: &mut [u8]) -> Result<(), RawError> {
        Ok(self.vp.pci().config_read(offset, buf)?)
    }

    /// Reprograms the pool BAR (64-bit) to `addr`, one dword at a time as a guest does (only
    /// dwords that change are written), and remembers the new pool base (`addr` plus the
    /// capability offset). The device follows while memory decode is on.
    pub fn move_pool_bar(&mut self, addr: u64) -> Result<(), RawError> {
        let reg = cfg::BAR0 + u16::from(self.pool.bar) * 4;
        let old = self.vp.bar_address(self.pool.bar)?;
        if old as u32 != addr as u32 {
            self.config_write(reg, &(addr as u32).to_le_bytes())?;
        }
        if (old >> 32) != (addr >> 32) {
            self.config_write(reg + 4, &((addr >> 32) as u32).to_le_bytes())?;
        }
        self.base = addr.wrapping_add(self.pool.offset);
        Ok(())
    }

    /// Turns memory-space decode on or off in the command register.
    pub fn set_memory_decode(&mut self, on: bool) -> Result<(), RawError> {
        let mut b = [0u8; 2];
        self.config_read(cfg::COMMAND, &mut b)?;
        let mut c = u16::from_le_bytes(b);
        if on {
            c |= cfg::COMMAND_MEMORY;
        } else {
            c &= !cfg::COMMAND_MEMORY;
        }
        self.config_write(cfg::COMMAND, &c.to_le_bytes())
    }

    // ---- virtio-blk requests ----

    /// Lays out a well-formed virtio-blk request in the scratch area: the header (`ty`,
    /// reserved 0, `sector`) at the scratch start, the status byte ([`STATUS_UNSET`]) 256
    /// bytes later, and `data_len` bytes of data 4 KiB in, filled with `out` when given (an
    /// OUT request's payload; `out.len()` must equal `data_len`). The data descriptor is
    /// device-writable when `ty` is [`BLK_T_IN`]. Nothing is put on a ring.
    pub fn prepare_blk(
        &self,
        ty: u32,
        sector: u64,
        data_len: u32,
        out: Option<&[u8]>,
    ) -> Result<BlkRequest, RawError> {
        let header = self.scratch_area();
        let status_off = header + 256;
        let data = header + 4096;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write(header, &h)?;
        self.mem.write(status_off, &[STATUS_UNSET])?;
        match out {
            Some(o) if o.len() as u64 == u64::from(data_len) => self.mem.write(data, o)?,
            Some(_) => return Err(RawError::Invalid("out.len() != data_len".into())),
            None => self.mem.zero(data, data_len as usize)?,
        }
        let data_flags = if ty == BLK_T_IN {
            VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE
        } else {
            VIRTQ_DESC_F_NEXT
        };
        let descs = [
            Desc {
                addr: self.bus(header),
                len: 16,
                flags: VIRTQ_DESC_F_NEXT,
                next: 0,
            },
            Desc {
                addr: self.bus(data),
                len: data_len,
                flags: data_flags,
                next: 0,
            },
            Desc {
                addr: self.bus(status_off),
                len: 1,
                flags: VIRTQ_DESC_F_WRITE,
                next: 0,
            },
        ];
        Ok(BlkRequest {
            header,
            data,
            data_len,
            status: status_off,
            descs,
        })
    }

    /// The status byte of `req` ([`STATUS_UNSET`] if the device did not write it).
    pub fn blk_status(&self, req: &BlkRequest) -> Result<u8, RawError> {
        let mut b = [0u8; 1];
        self.mem.read(req.status, &mut b)?;
        Ok(b[0])
    }

    /// The data buffer of `req`.
    pub fn blk_data(&self, req: &BlkRequest) -> Result<Vec<u8>, RawError> {
        let mut v = vec![0u8; req.data_len as usize];
        self.mem.read(req.data, &mut v)?;
        Ok(v)
    }

    /// Sets up a standard queue of `size`, reaches DRIVER_OK, reads `len` bytes at `sector`
    /// with a well-formed request, and returns (status byte, data). For checking that a
    /// device still serves after a test.
    pub fn read_sectors(&mut self, sector: u64, len: u32) -> Result<(u8, Vec<u8>), RawError> {
        if self.rings.is_none() {
            let (_, ok) = self.setup_standard_queue(64)?;
            if !ok {
                return Err(RawError::Invalid("queue 0 not enabled".into()));
            }
            self.driver_ok()?;
        }
        let req = self.prepare_blk(BLK_T_IN, sector, len, None)?;
        self.write_chain(0, &req.descs)?;
        self.submit(0)?;
        Ok((self.blk_status(&req)?, self.blk_data(&req)?))
    }
}
