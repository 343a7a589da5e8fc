//! A test device that can do anything a host can: an in-process [`PciAccess`] back end with
//! no socket behind it.
//!
//! [`FakeDevice`] presents a 256-byte configuration space with the virtio-pci capabilities
//! (common, notify, ISR, device and SWIOTLB, cap type 10) and BAR registers, emulates the
//! common configuration registers of BAR 0 (features, status with FEATURES_OK and
//! DRIVER_OK, queue select/size/addresses/enable, notify offset, config generation) and the
//! virtio-blk device configuration (capacity), and backs the pool BAR (BAR 2) with a memfd.
//! [`PciAccess::map_bar`] maps that memfd again, so the driver and the fake device share the
//! same pool memory exactly as with a real host.
//!
//! It serves virtio-blk requests from an in-memory disk **synchronously, inside the
//! doorbell write**: when the driver notifies queue 0 the device walks the available ring
//! and every descriptor (following indirect tables) in the pool, serves each request, writes
//! used elements and publishes `used.idx` before [`PciAccess::bar_write`] returns. So there
//! are no threads (unless a [`Scribbler`] is started) and every test is deterministic.
//!
//! Misbehaviour comes from two places:
//! - [`FakeConfig`], fixed at construction: what the configuration space, capabilities and
//!   BARs say (a SWIOTLB capability outside its BAR, at a BAR of size zero, unaligned, too
//!   small, absent; SWIOTLB not offered; a pool mapping shorter than announced; a capability
//!   that changes after its first read; config generation churn; DEVICE_NEEDS_RESET at
//!   DRIVER_OK; ...);
//! - [`Behavior`], changeable at any time with [`FakeDevice::set_behavior`]: how requests are
//!   completed (never, twice, with an id never posted, a used length larger or smaller than
//!   posted, a used index jumping ahead, a bad status byte, no data written, bytes spilled
//!   past the posted buffers, DEVICE_NEEDS_RESET, a used id of its choosing, garbage
//!   `used.flags`/`avail_event`, resetting itself or disabling the queue mid-I/O, and device
//!   configuration that changes after open or between the halves of a 64-bit read).
//!
//! One misbehaviour needs a second thread: [`FakeDevice::start_scribbler`] starts a thread
//! that keeps rewriting the data buffers, status bytes and used elements of the chains the
//! device just completed while the driver reads them (see [`Scribble`]). It is the only
//! thread; without it every test is deterministic.
//!
//! Every descriptor the device reads is recorded ([`FakeDevice::descriptors`]) with where it
//! was read from, so a test can prove that none lies outside the pool window; anything the
//! device finds outside the announced window is listed in [`FakeDevice::violations`].
//!
//! [`FakeDevice`] is a cheap handle (`Clone`): give one clone to the driver and keep another
//! to inspect and steer the device. Nothing here panics on driver input; errors are returned
//! or recorded.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use swiotlb_shared::features::{
    bit, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_F_SWIOTLB, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use swiotlb_shared::layout::{PoolWindow, DESC_SIZE, INDIRECT_TABLE_DESCS, PAGE_SIZE};
use swiotlb_shared::pci::{
    cfg, common, device_layout as dl, status, VirtioPciCap, VirtioPciNotifyCap,
    VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_SWIOTLB, VIRTIO_PCI_DEVICE_ID_BLOCK,
    VIRTIO_PCI_VENDOR_ID,
};
use thiserror::Error;

use crate::pci::{PciAccess, PciError};
use crate::pool::{Mapping, PoolAccessError, PoolMemory};
use crate::ring::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

/// Bus address of BAR 0 (the virtio registers).
pub const REGS_BAR_ADDRESS: u64 = 0xc000_0000;
/// Default bus address of the pool BAR.
pub const POOL_BAR_ADDRESS: u64 = 0x80_0000_0000;
/// Default pool size (4 MiB: room for two 1 MiB requests in flight).
pub const DEFAULT_POOL_SIZE: u64 = 4 << 20;
/// The device ID GET_ID returns (NUL-padded to 20 bytes).
pub const DEVICE_ID: &[u8] = b"fake-swiotlb-blk";
/// Byte the device writes when it spills past a posted buffer ([`Behavior::spill`]).
pub const SPILL_BYTE: u8 = 0xee;
/// Bytes a [`Scribbler`] fills completed data buffers with, alternately.
pub const SCRIBBLE_BYTES: [u8; 2] = [0x3c, 0xc3];
/// Status bytes a [`Scribbler`] writes over completed requests' status, in turn: OK, IOERR,
/// UNSUPP and a meaningless value.
pub const SCRIBBLE_STATUS: [u8; 4] = [0, 1, 2, 0x7f];

use swiotlb_shared::blk::SECTOR_SIZE as SECTOR;
use swiotlb_shared::blk::{
    ID_BYTES, VIRTIO_BLK_S_IOERR as S_IOERR, VIRTIO_BLK_S_OK as S_OK,
    VIRTIO_BLK_S_UNSUPP as S_UNSUPP, VIRTIO_BLK_T_DISCARD as T_DISCARD,
    VIRTIO_BLK_T_FLUSH as T_FLUSH, VIRTIO_BLK_T_GET_ID as T_GET_ID, VIRTIO_BLK_T_IN as T_IN,
    VIRTIO_BLK_T_OUT as T_OUT, VIRTIO_BLK_T_WRITE_ZEROES as T_WRITE_ZEROES,
};
/// Most bytes the device gathers from one chain (bounds its allocations).
const MAX_GATHER: u64 = 64 << 20;

/// Errors building a [`FakeDevice`].
#[derive(Debug, Error)]
pub enum FakeError {
    /// The configuration cannot be built.
    #[error("bad fake device configuration: {0}")]
    BadConfig(String),
    /// Creating the pool memfd failed.
    #[error("creating the pool memfd failed")]
    Memfd(#[source] std::io::Error),
    /// Mapping the pool failed.
    #[error("mapping the pool failed")]
    Pool(#[from] PoolAccessError),
}

/// What a virtio-pci capability says: `bar`, `offset`, `length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapSpec {
    /// BAR index (anything, even > 5).
    pub bar: u8,
    /// Offset inside the BAR.
    pub offset: u32,
    /// Length in bytes.
    pub length: u32,
}

/// The fixed part of a fake device: configuration space, BARs, features, disk.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Disk contents; capacity is its length in whole sectors.
    pub disk: Vec<u8>,
    /// Refuse writes (and offer VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// Features offered. [`FakeConfig::new`] offers VERSION_1, SWIOTLB, INDIRECT_DESC,
    /// EVENT_IDX and the virtio-blk features.
    pub features: u64,
    /// Strict policy: FEATURES_OK does not stick unless the driver accepted SWIOTLB.
    pub require_swiotlb: bool,
    /// FEATURES_OK never sticks.
    pub refuse_features_ok: bool,
    /// Maximum size of queue 0 (0: the queue does not exist).
    pub queue_max_size: u16,
    /// `queue_notify_off` of queue 0.
    pub queue_notify_off: u16,
    /// Size of the pool BAR's memory (a non-zero multiple of the page size).
    pub pool_bar_size: u64,
    /// Bus address the pool BAR decodes at (aligned to its size).
    pub pool_bar_address: u64,
    /// The pool BAR register reads as an I/O BAR.
    pub pool_bar_io: bool,
    /// What [`PciAccess::bar_size`] reports for the pool BAR (default: `pool_bar_size`).
    pub reported_pool_bar_size: Option<u64>,
    /// The SWIOTLB capability (`None`: absent). Default: the whole pool BAR.
    pub swiotlb_cap: Option<CapSpec>,
    /// Once the whole SWIOTLB capability has been read, it reads as this from then on.
    pub swiotlb_cap_after_first_read: Option<CapSpec>,
    /// [`PciAccess::map_bar`] maps at most this many bytes, whatever is asked.
    pub map_len_limit: Option<u64>,
    /// Set DEVICE_NEEDS_RESET when the driver sets DRIVER_OK.
    pub needs_reset_on_driver_ok: bool,
    /// Capacity in sectors the device configuration reports (default: the disk's).
    pub capacity_sectors: Option<u64>,
    /// Raw bytes written over the configuration space after it is built, `(offset,
    /// bytes)`: anything the other knobs do not cover (a looping capability list, a
    /// capability pointer into the header, a wrong vendor ID, ...).
    pub config_patches: Vec<(u16, Vec<u8>)>,
    /// The next `config_churn` reads of device configuration each bump
    /// `config_generation` and return garbage (all ones).
    pub config_churn: u32,
}

impl FakeConfig {
    /// A well-behaved device with a `disk` and a [`DEFAULT_POOL_SIZE`] pool.
    pub fn new(disk: Vec<u8>) -> Self {
        Self {
            disk,
            read_only: false,
            features: bit(VIRTIO_F_VERSION_1)
                | bit(VIRTIO_F_SWIOTLB)
                | bit(VIRTIO_RING_F_INDIRECT_DESC)
                | bit(VIRTIO_RING_F_EVENT_IDX)
                | bit(VIRTIO_BLK_F_SEG_MAX)
                | bit(VIRTIO_BLK_F_BLK_SIZE)
                | bit(VIRTIO_BLK_F_FLUSH)
                | bit(VIRTIO_BLK_F_DISCARD)
                | bit(VIRTIO_BLK_F_WRITE_ZEROES),
            require_swiotlb: true,
            refuse_features_ok: false,
            queue_max_size: 256,
            queue_notify_off: 0,
            pool_bar_size: DEFAULT_POOL_SIZE,
            pool_bar_address: POOL_BAR_ADDRESS,
            pool_bar_io: false,
            reported_pool_bar_size: None,
            swiotlb_cap: Some(CapSpec {
                bar: dl::POOL_BAR,
                offset: 0,
                length: DEFAULT_POOL_SIZE as u32,
            }),
            swiotlb_cap_after_first_read: None,
            map_len_limit: None,
            needs_reset_on_driver_ok: false,
            capacity_sectors: None,
            config_patches: Vec::new(),
            config_churn: 0,
        }
    }

    /// Sets the pool BAR size and a SWIOTLB capability covering all of it.
    pub fn with_pool_size(mut self, size: u64) -> Self {
        self.pool_bar_size = size;
        self.swiotlb_cap = Some(CapSpec {
            bar: dl::POOL_BAR,
            offset: 0,
            length: u32::try_from(size).unwrap_or(u32::MAX),
        });
        self
    }
}

/// How the device completes requests. The default completes every request correctly.
/// Knobs combine; see each field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Behavior {
    /// Take requests off the available ring but never complete them.
    pub never_complete: bool,
    /// On the next doorbell set DEVICE_NEEDS_RESET and complete nothing.
    pub needs_reset: bool,
    /// Complete with id `(head + 1) % queue_size`: a descriptor that is not a posted head.
    pub used_id_never_posted: bool,
    /// Complete the first chain of each doorbell twice and the others not at all.
    pub complete_twice: bool,
    /// Add this to every used length (a length larger than posted).
    pub used_len_extra: u32,
    /// Report exactly this used length instead of the real one.
    pub used_len: Option<u32>,
    /// Publish `used.idx` this far beyond the elements written.
    pub used_idx_extra: u16,
    /// Write this status byte instead of the real one.
    pub status: Option<u8>,
    /// Write no data (reads, GET_ID), only the status; the used length is unchanged.
    pub skip_data: bool,
    /// Before serving a chain, write this many [`SPILL_BYTE`]s into the pool right after
    /// the end of every device-writable data buffer (not the status byte). Data is written
    /// after, so only bytes outside the posted buffers keep the spill. Use with one request
    /// in flight: a spill may land in another request's buffers.
    pub spill: u64,
    /// Complete every chain with exactly this used id (the queue size, `0xffff`, or
    /// `0x1_0000`, which truncated to 16 bits is head 0, ...).
    pub used_id: Option<u32>,
    /// After serving a doorbell, write this into `used.flags` (suppression flags of the
    /// device's choosing; bit 0 is VIRTQ_USED_F_NO_NOTIFY).
    pub used_flags: Option<u16>,
    /// After serving a doorbell, write this into `avail_event` instead of the next index
    /// (with VIRTIO_RING_F_EVENT_IDX).
    pub avail_event: Option<u16>,
    /// At a doorbell, reset this way instead of serving it (see [`SelfReset`]), after
    /// [`self_reset_after`](Self::self_reset_after) doorbells served normally.
    pub self_reset: Option<SelfReset>,
    /// Doorbells served normally, counted from [`FakeDevice::set_behavior`], before
    /// [`self_reset`](Self::self_reset) strikes.
    pub self_reset_after: u64,
    /// Device configuration reports this capacity (sectors) from now on.
    pub config_capacity: Option<u64>,
    /// Device configuration reports this `seg_max` from now on.
    pub config_seg_max: Option<u32>,
    /// Device configuration reports this `blk_size` from now on.
    pub config_blk_size: Option<u32>,
    /// Each read of device configuration reports capacity `.0` and `.1` sectors in turn
    /// (`.0` first) without touching `config_generation`: the two 32-bit halves of one
    /// 64-bit read come from different values.
    pub config_capacity_flip: Option<(u64, u64)>,
}

/// How a device resets itself in the middle of I/O ([`Behavior::self_reset`]). In every
/// case the doorbell that triggers it is not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfReset {
    /// As if the driver had written 0 to `device_status`: status reads back 0, the queue
    /// is disabled and the device forgets its ring indexes.
    StatusZero,
    /// DEVICE_NEEDS_RESET appears in the status.
    NeedsReset,
    /// `queue_enable` of queue 0 reads back 0; the status is untouched.
    QueueDisabled,
}

/// What a [`Scribbler`] keeps rewriting in the chains the device completed last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scribble {
    /// Every device-writable data buffer: filled with [`SCRIBBLE_BYTES`] in turn.
    pub data: bool,
    /// The status byte: [`SCRIBBLE_STATUS`] in turn.
    pub status: bool,
    /// The used element: in turn the real `(id, len)`, `(0xffff, len)`, `(id, u32::MAX)`,
    /// `(id, 0)`, `(id, 1)` (id and len stored separately, so a reader may see a mix).
    pub used: bool,
}

/// Targets of a running scribbler: BAR offsets of the last completed chains' parts.
#[derive(Debug, Default)]
struct ScribbleState {
    what: Scribble,
    /// `(offset, len)` of data buffers.
    data: Vec<(u64, u64)>,
    /// Offsets of status bytes.
    status: Vec<u64>,
    /// `(offset, id, len)` of used elements.
    elems: Vec<(u64, u32, u32)>,
    /// Rounds of rewrites done.
    rounds: u64,
}

impl ScribbleState {
    fn idle(&self) -> bool {
        self.data.is_empty() && self.status.is_empty() && self.elems.is_empty()
    }

    fn clear(&mut self) {
        self.data.clear();
        self.status.clear();
        self.elems.clear();
    }
}

fn lock_state(m: &Mutex<ScribbleState>) -> MutexGuard<'_, ScribbleState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A thread rewriting pool memory behind the driver's back; see
/// [`FakeDevice::start_scribbler`]. Dropping it stops and joins the thread.
pub struct Scribbler {
    state: Arc<Mutex<ScribbleState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    dev: FakeDevice,
}

impl Scribbler {
    /// Forgets the current targets and returns once no rewrite is in progress: from then
    /// on nothing is written until the device completes another chain.
    pub fn quiesce(&self) {
        lock_state(&self.state).clear();
    }

    /// Rounds of rewrites done so far.
    pub fn rounds(&self) -> u64 {
        lock_state(&self.state).rounds
    }
}

impl Drop for Scribbler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.dev.lock().scribble = None;
    }
}

/// The scribbler thread: while it has targets, rewrites all of them, round after round.
fn scribble_loop(mem: PoolMemory, state: Arc<Mutex<ScribbleState>>, stop: Arc<AtomicBool>) {
    let mut fill = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let mut st = lock_state(&state);
        if st.idle() {
            drop(st);
            std::thread::sleep(Duration::from_micros(20));
            continue;
        }
        let r = st.rounds;
        if st.what.data {
            let byte = SCRIBBLE_BYTES[(r % 2) as usize];
            for &(o, l) in &st.data {
                fill.clear();
                fill.resize(l as usize, byte);
                let _ = mem.write(o, &fill);
            }
        }
        if st.what.status {
            let v = SCRIBBLE_STATUS[(r % 4) as usize];
            for &o in &st.status {
                let _ = mem.write(o, &[v]);
            }
        }
        if st.what.used {
            for &(o, id, len) in &st.elems {
                let (i, l) = match r % 5 {
                    0 => (id, len),
                    1 => (0xffff, len),
                    2 => (id, u32::MAX),
                    3 => (id, 0),
                    _ => (id, 1),
                };
                let _ = mem.store_u32(o, i);
                let _ = mem.store_u32(o + 4, l);
            }
        }
        st.rounds += 1;
        drop(st);
        std::thread::yield_now();
    }
}

/// A descriptor the device read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenDescriptor {
    /// Bus address the descriptor was read from (ring table or indirect table).
    pub at: u64,
    /// Whether it was read from an indirect table.
    pub in_indirect_table: bool,
    /// `addr`.
    pub addr: u64,
    /// `len`.
    pub len: u32,
    /// `flags`.
    pub flags: u16,
}

/// Queue 0 as the driver programmed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueState {
    /// Queue size.
    pub size: u16,
    /// Descriptor table bus address.
    pub desc: u64,
    /// Available ring bus address.
    pub driver: u64,
    /// Used ring bus address.
    pub device: u64,
    /// MSI-X vector.
    pub msix_vector: u16,
    /// Enabled.
    pub enabled: bool,
}

/// One buffer of a chain, by bus address.
#[derive(Clone, Copy, Debug)]
struct Buf {
    addr: u64,
    len: u32,
    writable: bool,
}

struct Inner {
    cfg: FakeConfig,
    behavior: Behavior,
    config: [u8; cfg::SIZE],
    swiotlb_cap_reads: u32,
    pool_fd: OwnedFd,
    /// The device's mapping of the whole pool BAR.
    pool: PoolMemory,
    disk: Vec<u8>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    generation: u8,
    config_churn_left: u32,
    config_msix_vector: u16,
    queue_select: u16,
    queue: QueueState,
    last_avail: u16,
    used_idx: u16,
    descriptors: Vec<SeenDescriptor>,
    violations: Vec<String>,
    status_writes: Vec<u8>,
    notifies: u64,
    completions: u64,
    /// Doorbells served since the behaviour was last set.
    doorbells_since_behavior: u64,
    /// Reads of PCI configuration space.
    config_space_reads: u64,
    /// Reads of the virtio-blk device configuration.
    device_config_reads: u64,
    /// Which value of [`Behavior::config_capacity_flip`] the next read reports.
    config_flip: bool,
    /// The running scribbler's targets, if any.
    scribble: Option<Arc<Mutex<ScribbleState>>>,
}

/// The fake device; see the module documentation. Clones share one device.
#[derive(Clone)]
pub struct FakeDevice {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for FakeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.lock();
        f.debug_struct("FakeDevice")
            .field("status", &i.status)
            .field("queue", &i.queue)
            .field("behavior", &i.behavior)
            .finish_non_exhaustive()
    }
}

fn memfd(size: u64) -> Result<OwnedFd, FakeError> {
    // SAFETY: memfd_create with a valid NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"swiotlb-fake-pool".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(FakeError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    file.set_len(size).map_err(FakeError::Memfd)?;
    Ok(OwnedFd::from(file))
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(d) = at.checked_add(v.len()).and_then(|e| b.get_mut(at..e)) {
        d.copy_from_slice(v);
    }
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    let mut x = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        x.copy_from_slice(s);
    }
    u16::from_le_bytes(x)
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_le_bytes(x)
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_le_bytes(x)
}

fn cap_bytes(next: u8, cfg_type: u8, spec: CapSpec) -> [u8; VirtioPciCap::SIZE] {
    VirtioPciCap {
        cap_vndr: cfg::CAP_ID_VENDOR,
        cap_next: next,
        cap_len: VirtioPciCap::SIZE as u8,
        cfg_type,
        bar: spec.bar,
        id: 0,
        padding: [0; 2],
        offset: spec.offset,
        length: spec.length,
    }
    .to_bytes()
}

fn regs(offset: u32, length: u32) -> CapSpec {
    CapSpec {
        bar: dl::REGS_BAR,
        offset,
        length,
    }
}

/// Whether `[a, a + alen)` and `[b, b + blen)` overlap.
fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

fn build_config(c: &FakeConfig) -> [u8; cfg::SIZE] {
    let mut b = [0u8; cfg::SIZE];
    put(&mut b, 0x00, &VIRTIO_PCI_VENDOR_ID.to_le_bytes());
    put(&mut b, 0x02, &VIRTIO_PCI_DEVICE_ID_BLOCK.to_le_bytes());
    let command = cfg::COMMAND_MEMORY | cfg::COMMAND_BUS_MASTER;
    put(&mut b, usize::from(cfg::COMMAND), &command.to_le_bytes());
    put(
        &mut b,
        usize::from(cfg::STATUS),
        &cfg::STATUS_CAP_LIST.to_le_bytes(),
    );
    b[usize::from(cfg::REVISION_ID)] = 1;
    put(&mut b, usize::from(cfg::CLASS_PROG), &[0x00, 0x80, 0x01]);
    put(
        &mut b,
        usize::from(cfg::BAR0),
        &(REGS_BAR_ADDRESS as u32).to_le_bytes(),
    );
    let pool_reg = usize::from(cfg::BAR0) + 4 * usize::from(dl::POOL_BAR);
    if c.pool_bar_io {
        put(
            &mut b,
            pool_reg,
            &((c.pool_bar_address as u32 & !3) | cfg::BAR_IO).to_le_bytes(),
        );
    } else {
        let lo = (c.pool_bar_address as u32 & cfg::BAR_MEM_ADDR_MASK)
            | cfg::BAR_MEM_TYPE_64
            | cfg::BAR_PREFETCHABLE;
        put(&mut b, pool_reg, &lo.to_le_bytes());
        put(
            &mut b,
            pool_reg + 4,
            &((c.pool_bar_address >> 32) as u32).to_le_bytes(),
        );
    }
    b[usize::from(cfg::CAPABILITIES_POINTER)] = dl::CAP_COMMON;
    put(
        &mut b,
        usize::from(dl::CAP_COMMON),
        &cap_bytes(
            dl::CAP_NOTIFY,
            VIRTIO_PCI_CAP_COMMON_CFG,
            regs(dl::COMMON_OFFSET, dl::COMMON_LEN),
        ),
    );
    let mut notify = VirtioPciNotifyCap {
        cap: VirtioPciCap::from_bytes(&cap_bytes(
            dl::CAP_ISR,
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            regs(dl::NOTIFY_OFFSET, dl::NOTIFY_LEN),
        ))
        .unwrap_or_default(),
        notify_off_multiplier: dl::NOTIFY_OFF_MULTIPLIER,
    };
    notify.cap.cap_len = VirtioPciNotifyCap::SIZE as u8;
    put(&mut b, usize::from(dl::CAP_NOTIFY), &notify.to_bytes());
    put(
        &mut b,
        usize::from(dl::CAP_ISR),
        &cap_bytes(
            dl::CAP_DEVICE,
            VIRTIO_PCI_CAP_ISR_CFG,
            regs(dl::ISR_OFFSET, dl::ISR_LEN),
        ),
    );
    let after_device = if c.swiotlb_cap.is_some() {
        dl::CAP_SWIOTLB
    } else {
        0
    };
    put(
        &mut b,
        usize::from(dl::CAP_DEVICE),
        &cap_bytes(
            after_device,
            VIRTIO_PCI_CAP_DEVICE_CFG,
            regs(dl::DEVICE_OFFSET, dl::DEVICE_LEN),
        ),
    );
    if let Some(s) = c.swiotlb_cap {
        put(
            &mut b,
            usize::from(dl::CAP_SWIOTLB),
            &cap_bytes(0, VIRTIO_PCI_CAP_SWIOTLB, s),
        );
    }
    for (at, bytes) in &c.config_patches {
        put(&mut b, usize::from(*at), bytes);
    }
    b
}

impl FakeDevice {
    /// Builds the device: configuration space, a zeroed pool memfd of
    /// `cfg.pool_bar_size` bytes, and the disk.
    pub fn new(mut cfg: FakeConfig) -> Result<Self, FakeError> {
        if cfg.read_only {
            cfg.features |= bit(VIRTIO_BLK_F_RO);
        }
        let size = cfg.pool_bar_size;
        if size == 0 || size % PAGE_SIZE != 0 || !size.is_power_of_two() {
            return Err(FakeError::BadConfig(format!(
                "pool BAR size {size:#x} must be a power of two, at least a page"
            )));
        }
        if cfg.pool_bar_address % size != 0 {
            return Err(FakeError::BadConfig(format!(
                "pool BAR address {:#x} not aligned to its size",
                cfg.pool_bar_address
            )));
        }
        let len = usize::try_from(size).map_err(|_| FakeError::BadConfig("pool size".into()))?;
        let pool_fd = memfd(size)?;
        let pool = PoolMemory::new(Mapping::shared(pool_fd.as_fd(), 0, len)?);
        let config = build_config(&cfg);
        let disk = cfg.disk.clone();
        let mut inner = Inner {
            behavior: Behavior::default(),
            config,
            swiotlb_cap_reads: 0,
            pool_fd,
            pool,
            disk,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            generation: 0,
            config_churn_left: cfg.config_churn,
            config_msix_vector: common::NO_VECTOR,
            queue_select: 0,
            queue: QueueState::default(),
            last_avail: 0,
            used_idx: 0,
            descriptors: Vec::new(),
            violations: Vec::new(),
            status_writes: Vec::new(),
            notifies: 0,
            completions: 0,
            doorbells_since_behavior: 0,
            config_space_reads: 0,
            device_config_reads: 0,
            config_flip: false,
            scribble: None,
            cfg,
        };
        inner.reset();
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// A well-behaved device with `disk` (see [`FakeConfig::new`]).
    pub fn with_disk(disk: Vec<u8>) -> Result<Self, FakeError> {
        Self::new(FakeConfig::new(disk))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock leaves consistent enough state to
        // inspect; never propagate the poison.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes how requests are completed from the next doorbell on.
    pub fn set_behavior(&self, b: Behavior) {
        let mut i = self.lock();
        i.behavior = b;
        i.doorbells_since_behavior = 0;
    }

    /// Starts a thread that, each time the device completes chains, keeps rewriting what
    /// `what` says of them (data buffers, status bytes, used elements) until
    /// [`Scribbler::quiesce`] or the next completion. The device waits for one round of
    /// rewrites before it publishes `used.idx`, so the driver never sees the completion
    /// as written, and the rewrites go on while the driver reads it.
    pub fn start_scribbler(&self, what: Scribble) -> Result<Scribbler, FakeError> {
        let mut i = self.lock();
        let len =
            usize::try_from(i.pool.size()).map_err(|_| FakeError::BadConfig("pool size".into()))?;
        let mem = PoolMemory::new(Mapping::shared(i.pool_fd.as_fd(), 0, len)?);
        let state = Arc::new(Mutex::new(ScribbleState {
            what,
            ..ScribbleState::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        i.scribble = Some(state.clone());
        drop(i);
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fake-scribbler".into())
            .spawn(move || scribble_loop(mem, st, sp))
            .map_err(FakeError::Memfd)?;
        Ok(Scribbler {
            state,
            stop,
            thread: Some(thread),
            dev: self.clone(),
        })
    }

    /// Reads of PCI configuration space so far.
    pub fn config_space_reads(&self) -> u64 {
        self.lock().config_space_reads
    }

    /// Reads of the virtio-blk device configuration (capacity, seg_max, ...) so far.
    pub fn device_config_reads(&self) -> u64 {
        self.lock().device_config_reads
    }

    /// The current behaviour.
    pub fn behavior(&self) -> Behavior {
        self.lock().behavior.clone()
    }

    /// Every descriptor read so far, in order.
    pub fn descriptors(&self) -> Vec<SeenDescriptor> {
        self.lock().descriptors.clone()
    }

    /// Forgets the recorded descriptors.
    pub fn clear_descriptors(&self) {
        self.lock().descriptors.clear();
    }

    /// What the device found outside the announced pool window (ring addresses,
    /// descriptors, indirect tables) or otherwise malformed. Empty for a correct driver.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Queue 0 as programmed.
    pub fn queue(&self) -> QueueState {
        self.lock().queue
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.lock().status
    }

    /// Every value the driver wrote to the status register, in order.
    pub fn status_writes(&self) -> Vec<u8> {
        self.lock().status_writes.clone()
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.lock().driver_features
    }

    /// How many configuration-space reads covered the whole SWIOTLB capability.
    pub fn swiotlb_cap_reads(&self) -> u32 {
        self.lock().swiotlb_cap_reads
    }

    /// Doorbells rung.
    pub fn notifies(&self) -> u64 {
        self.lock().notifies
    }

    /// Used elements written.
    pub fn completions(&self) -> u64 {
        self.lock().completions
    }

    /// A copy of the disk.
    pub fn disk(&self) -> Vec<u8> {
        self.lock().disk.clone()
    }

    /// Runs `f` on the disk (to change it behind the driver's back).
    pub fn with_disk_mut<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        f(&mut self.lock().disk)
    }

    /// The pool window the SWIOTLB capability announced at construction (bus addresses),
    /// or `None` without a capability or when it does not fit the BAR's address space.
    pub fn pool_window(&self) -> Option<PoolWindow> {
        let i = self.lock();
        i.announced_window()
    }

    /// Bus address the pool BAR decodes at.
    pub fn pool_bar_address(&self) -> u64 {
        self.lock().pool_bar_base()
    }

    /// Size of the pool BAR's memory.
    pub fn pool_bar_size(&self) -> u64 {
        self.lock().pool.size()
    }

    /// Reads the pool BAR's memory at `offset` (from the BAR start), as the device.
    pub fn read_pool(&self, offset: u64, buf: &mut [u8]) -> Result<(), PoolAccessError> {
        self.lock().pool.read(offset, buf)
    }

    /// Writes the pool BAR's memory at `offset` (from the BAR start), as the device.
    pub fn write_pool(&self, offset: u64, data: &[u8]) -> Result<(), PoolAccessError> {
        self.lock().pool.write(offset, data)
    }

    /// Serves queue 0 now, as if the driver had rung the doorbell.
    pub fn process_queue(&self) {
        self.lock().process_queue();
    }
}

impl Inner {
    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.queue = QueueState {
            size: self.cfg.queue_max_size,
            msix_vector: common::NO_VECTOR,
            ..QueueState::default()
        };
        self.last_avail = 0;
        self.used_idx = 0;
        if let Some(s) = &self.scribble {
            lock_state(s).clear();
        }
    }

    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    fn pool_bar_base(&self) -> u64 {
        let reg = usize::from(cfg::BAR0) + 4 * usize::from(dl::POOL_BAR);
        let lo = get_u32(&self.config, reg);
        if lo & cfg::BAR_IO != 0 {
            return u64::from(lo & !3);
        }
        let mut a = u64::from(lo & cfg::BAR_MEM_ADDR_MASK);
        if lo & (0b11 << 1) == cfg::BAR_MEM_TYPE_64 {
            a |= u64::from(get_u32(&self.config, reg + 4)) << 32;
        }
        a
    }

    fn announced_window(&self) -> Option<PoolWindow> {
        let c = self.cfg.swiotlb_cap?;
        let base = self.pool_bar_base().checked_add(u64::from(c.offset))?;
        PoolWindow::new(base, u64::from(c.length)).ok()
    }

    /// BAR-relative offset of `[addr, addr + len)` when it lies in the pool BAR's memory.
    fn bar_offset(&self, addr: u64, len: u64) -> Option<u64> {
        let off = addr.checked_sub(self.pool_bar_base())?;
        off.checked_add(len)
            .filter(|e| *e <= self.pool.size())
            .map(|_| off)
    }

    /// Checks `[addr, addr + len)` against the announced window, recording a violation.
    fn check_window(&mut self, what: &str, addr: u64, len: u64) -> Option<u64> {
        let inside = self
            .announced_window()
            .is_some_and(|w| w.contains(addr, len));
        match self.bar_offset(addr, len) {
            Some(o) if inside => Some(o),
            _ => {
                self.violation(format!(
                    "{what} [{addr:#x}, +{len:#x}) outside the pool window"
                ));
                None
            }
        }
    }

    fn load_u16(&mut self, what: &str, addr: u64) -> Option<u16> {
        let o = self.check_window(what, addr, 2)?;
        self.pool.load_u16(o).ok()
    }

    fn store_u16(&mut self, what: &str, addr: u64, v: u16) {
        if let Some(o) = self.check_window(what, addr, 2) {
            let _ = self.pool.store_u16(o, v);
        }
    }

    fn store_u32(&mut self, what: &str, addr: u64, v: u32) {
        if let Some(o) = self.check_window(what, addr, 4) {
            let _ = self.pool.store_u32(o, v);
        }
    }

    // ---- configuration space -------------------------------------------------------------

    fn config_read(&mut self, offset: u16, buf: &mut [u8]) -> Result<(), PciError> {
        self.config_space_reads += 1;
        let start = usize::from(offset);
        let src = self
            .config
            .get(start..start + buf.len())
            .ok_or_else(|| refused("config read beyond 256 bytes"))?;
        buf.copy_from_slice(src);
        // A read of the whole capability counts (reads of the capability before it may
        // spill into its first bytes).
        let cap = usize::from(dl::CAP_SWIOTLB);
        if start <= cap && start + buf.len() >= cap + VirtioPciCap::SIZE {
            self.swiotlb_cap_reads += 1;
            if let Some(t) = self.cfg.swiotlb_cap_after_first_read {
                put(
                    &mut self.config,
                    usize::from(dl::CAP_SWIOTLB),
                    &cap_bytes(0, VIRTIO_PCI_CAP_SWIOTLB, t),
                );
            }
        }
        Ok(())
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), PciError> {
        let start = usize::from(offset);
        if start + data.len() > cfg::SIZE {
            return Err(refused("config write beyond 256 bytes"));
        }
        let mut img = self.config;
        put(&mut img, start, data);
        let (o, l) = (u64::from(offset), data.len() as u64);
        if overlaps(o, l, u64::from(cfg::COMMAND), 2) {
            let v = get_u16(&img, usize::from(cfg::COMMAND));
            put(
                &mut self.config,
                usize::from(cfg::COMMAND),
                &v.to_le_bytes(),
            );
        }
        // BAR registers: writable address bits only (sizing reads back the size mask).
        let bar0 = usize::from(cfg::BAR0);
        if overlaps(o, l, u64::from(cfg::BAR0), 4) {
            let mask = !(dl::REGS_BAR_SIZE as u32 - 1);
            let v = get_u32(&img, bar0) & mask;
            put(&mut self.config, bar0, &v.to_le_bytes());
        }
        let pool_reg = bar0 + 4 * usize::from(dl::POOL_BAR);
        let size_mask = !(self.pool.size() - 1);
        if !self.cfg.pool_bar_io && overlaps(o, l, pool_reg as u64, 8) {
            let old_lo = get_u32(&self.config, pool_reg);
            let lo = (get_u32(&img, pool_reg) & size_mask as u32 & cfg::BAR_MEM_ADDR_MASK)
                | (old_lo & !cfg::BAR_MEM_ADDR_MASK);
            let hi = get_u32(&img, pool_reg + 4) & (size_mask >> 32) as u32;
            put(&mut self.config, pool_reg, &lo.to_le_bytes());
            put(&mut self.config, pool_reg + 4, &hi.to_le_bytes());
        }
        Ok(())
    }

    // ---- BAR 0 registers -------------------------------------------------------------------

    fn common_image(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        put(&mut b, 0x00, &self.device_feature_select.to_le_bytes());
        let f = match self.device_feature_select {
            0 => self.cfg.features as u32,
            1 => (self.cfg.features >> 32) as u32,
            _ => 0,
        };
        put(&mut b, 0x04, &f.to_le_bytes());
        put(&mut b, 0x08, &self.driver_feature_select.to_le_bytes());
        let d = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(&mut b, 0x0c, &d.to_le_bytes());
        put(&mut b, 0x10, &self.config_msix_vector.to_le_bytes());
        put(&mut b, 0x12, &1u16.to_le_bytes());
        b[0x14] = self.status;
        b[0x15] = self.generation;
        put(&mut b, 0x16, &self.queue_select.to_le_bytes());
        if self.queue_select == 0 {
            let q = &self.queue;
            put(&mut b, 0x18, &q.size.to_le_bytes());
            put(&mut b, 0x1a, &q.msix_vector.to_le_bytes());
            put(&mut b, 0x1c, &u16::from(q.enabled).to_le_bytes());
            put(&mut b, 0x1e, &self.cfg.queue_notify_off.to_le_bytes());
            put(&mut b, 0x20, &q.desc.to_le_bytes());
            put(&mut b, 0x28, &q.driver.to_le_bytes());
            put(&mut b, 0x30, &q.device.to_le_bytes());
        }
        b
    }

    fn common_write(&mut self, off: u64, data: &[u8]) {
        let Some(end) = off.checked_add(data.len() as u64).filter(|e| *e <= 64) else {
            return;
        };
        let mut img = self.common_image();
        put(&mut img, off as usize, data);
        let len = end - off;
        let hit = |f: u64, w: u64| overlaps(off, len, f, w);
        if hit(common::DEVICE_FEATURE_SELECT, 4) {
            self.device_feature_select = get_u32(&img, 0x00);
        }
        if hit(common::DRIVER_FEATURE_SELECT, 4) {
            self.driver_feature_select = get_u32(&img, 0x08);
        }
        if hit(common::DRIVER_FEATURE, 4) && self.status & status::FEATURES_OK == 0 {
            let v = u64::from(get_u32(&img, 0x0c));
            match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                _ => {}
            }
        }
        if hit(common::CONFIG_MSIX_VECTOR, 2) {
            self.config_msix_vector = get_u16(&img, 0x10);
        }
        if hit(common::DEVICE_STATUS, 1) {
            self.write_status(img[0x14]);
        }
        if hit(common::QUEUE_SELECT, 2) {
            self.queue_select = get_u16(&img, 0x16);
        }
        if self.queue_select != 0 || self.queue.enabled {
            return;
        }
        if hit(common::QUEUE_SIZE, 2) {
            self.queue.size = get_u16(&img, 0x18);
        }
        if hit(common::QUEUE_MSIX_VECTOR, 2) {
            self.queue.msix_vector = get_u16(&img, 0x1a);
        }
        if hit(common::QUEUE_DESC, 8) {
            self.queue.desc = get_u64(&img, 0x20);
        }
        if hit(common::QUEUE_DRIVER, 8) {
            self.queue.driver = get_u64(&img, 0x28);
        }
        if hit(common::QUEUE_DEVICE, 8) {
            self.queue.device = get_u64(&img, 0x30);
        }
        if hit(common::QUEUE_ENABLE, 2) && get_u16(&img, 0x1c) == 1 {
            self.enable_queue();
        }
    }

    fn enable_queue(&mut self) {
        let q = self.queue;
        if q.size == 0 || !q.size.is_power_of_two() || q.size > self.cfg.queue_max_size {
            self.violation(format!("queue size {} enabled", q.size));
            return;
        }
        let n = u64::from(q.size);
        let ok = self
            .check_window("descriptor table", q.desc, 16 * n)
            .is_some()
            & self
                .check_window("available ring", q.driver, 6 + 2 * n)
                .is_some()
            & self
                .check_window("used ring", q.device, 6 + 8 * n)
                .is_some();
        if ok {
            self.queue.enabled = true;
        }
    }

    fn write_status(&mut self, v: u8) {
        self.status_writes.push(v);
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v | (self.status & status::DEVICE_NEEDS_RESET);
        if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let accepted = self.driver_features;
            let ok = accepted & !self.cfg.features == 0
                && !(self.cfg.require_swiotlb && accepted & bit(VIRTIO_F_SWIOTLB) == 0)
                && !self.cfg.refuse_features_ok;
            if !ok {
                v &= !status::FEATURES_OK;
            }
        }
        if v & status::DRIVER_OK != 0 && self.cfg.needs_reset_on_driver_ok {
            v |= status::DEVICE_NEEDS_RESET;
        }
        self.status = v;
    }

    fn device_config_image(&mut self) -> [u8; 64] {
        let mut b = [0u8; 64];
        if self.config_churn_left > 0 {
            self.config_churn_left -= 1;
            self.generation = self.generation.wrapping_add(1);
            return [0xff; 64];
        }
        let bh = &self.behavior;
        let (flip, capacity, seg_max, blk_size) = (
            bh.config_capacity_flip,
            bh.config_capacity,
            bh.config_seg_max,
            bh.config_blk_size,
        );
        let sectors = match flip {
            Some((first, second)) => {
                self.config_flip = !self.config_flip;
                if self.config_flip {
                    first
                } else {
                    second
                }
            }
            None => capacity
                .or(self.cfg.capacity_sectors)
                .unwrap_or(self.disk.len() as u64 / SECTOR),
        };
        let seg_max = seg_max.unwrap_or(u32::from(INDIRECT_TABLE_DESCS - 2));
        let blk_size = blk_size.unwrap_or(SECTOR as u32);
        put(&mut b, 0, &sectors.to_le_bytes());
        put(&mut b, 12, &seg_max.to_le_bytes());
        put(&mut b, 20, &blk_size.to_le_bytes());
        b
    }

    fn bar_read(&mut self, bar: u8, offset: u64, buf: &mut [u8]) -> Result<(), PciError> {
        if bar == dl::POOL_BAR {
            return self.pool.read(offset, buf).map_err(PciError::Map);
        }
        if bar != dl::REGS_BAR {
            return Err(refused("read of an absent BAR"));
        }
        buf.fill(0);
        let region = |start: u32, len: u32| {
            let (s, l) = (u64::from(start), u64::from(len));
            (offset >= s && offset < s + l).then(|| (offset - s) as usize)
        };
        let img = if let Some(o) = region(dl::COMMON_OFFSET, dl::COMMON_LEN) {
            Some((self.common_image(), o))
        } else {
            region(dl::DEVICE_OFFSET, dl::DEVICE_LEN).map(|o| {
                self.device_config_reads += 1;
                (self.device_config_image(), o)
            })
        };
        if let Some((img, o)) = img {
            for (i, d) in buf.iter_mut().enumerate() {
                *d = img.get(o + i).copied().unwrap_or(0);
            }
        }
        Ok(())
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), PciError> {
        if bar == dl::POOL_BAR {
            return self.pool.write(offset, data).map_err(PciError::Map);
        }
        if bar != dl::REGS_BAR {
            return Err(refused("write of an absent BAR"));
        }
        let common_end = u64::from(dl::COMMON_OFFSET) + u64::from(dl::COMMON_LEN);
        let notify = u64::from(dl::NOTIFY_OFFSET);
        if offset < common_end {
            self.common_write(offset - u64::from(dl::COMMON_OFFSET), data);
        } else if offset >= notify && offset < notify + u64::from(dl::NOTIFY_LEN) {
            self.notifies += 1;
            let q = get_u16(data, 0);
            if q != 0 {
                self.violation(format!("notify of queue {q}"));
            } else {
                self.process_queue();
            }
        }
        Ok(())
    }

    // ---- the queue -------------------------------------------------------------------------

    fn read_desc(&mut self, at: u64, in_table: bool) -> Option<(u64, u32, u16, u16)> {
        let o = self.check_window("descriptor", at, DESC_SIZE)?;
        let mut b = [0u8; DESC_SIZE as usize];
        self.pool.read(o, &mut b).ok()?;
        let (addr, len, flags, next) = (
            get_u64(&b, 0),
            get_u32(&b, 8),
            get_u16(&b, 12),
            get_u16(&b, 14),
        );
        self.descriptors.push(SeenDescriptor {
            at,
            in_indirect_table: in_table,
            addr,
            len,
            flags,
        });
        Some((addr, len, flags, next))
    }

    /// Walks the chain at `head`; `None` (with a violation recorded) if it is malformed.
    fn walk_chain(&mut self, head: u16) -> Option<Vec<Buf>> {
        let q = self.queue;
        if head >= q.size {
            self.violation(format!("avail head {head} out of range"));
            return None;
        }
        let mut out = Vec::new();
        let mut push = |this: &mut Self, addr: u64, len: u32, flags: u16| {
            if this.check_window("buffer", addr, u64::from(len)).is_none() {
                return false;
            }
            out.push(Buf {
                addr,
                len,
                writable: flags & VIRTQ_DESC_F_WRITE != 0,
            });
            true
        };
        let (addr, len, flags, next) =
            self.read_desc(q.desc + u64::from(head) * DESC_SIZE, false)?;
        if flags & VIRTQ_DESC_F_INDIRECT != 0 {
            let n = u64::from(len) / DESC_SIZE;
            if len == 0 || u64::from(len) % DESC_SIZE != 0 || n > u64::from(INDIRECT_TABLE_DESCS) {
                self.violation(format!("indirect table of {len} bytes"));
                return None;
            }
            self.check_window("indirect table", addr, u64::from(len))?;
            let mut i = 0u64;
            for _ in 0..n {
                let (a, l, f, nx) = self.read_desc(addr + i * DESC_SIZE, true)?;
                if f & VIRTQ_DESC_F_INDIRECT != 0 {
                    self.violation("nested indirect table".into());
                    return None;
                }
                if !push(self, a, l, f) {
                    return None;
                }
                if f & VIRTQ_DESC_F_NEXT == 0 {
                    return Some(out);
                }
                i = u64::from(nx);
                if i >= n {
                    self.violation(format!("indirect next {nx} beyond the table"));
                    return None;
                }
            }
            self.violation("indirect chain loops".into());
            return None;
        }
        let (mut a, mut l, mut f, mut nx) = (addr, len, flags, next);
        for _ in 0..q.size {
            if !push(self, a, l, f) {
                return None;
            }
            if f & VIRTQ_DESC_F_NEXT == 0 {
                return Some(out);
            }
            if nx >= q.size {
                self.violation(format!("next {nx} out of range"));
                return None;
            }
            (a, l, f, nx) = self.read_desc(q.desc + u64::from(nx) * DESC_SIZE, false)?;
        }
        self.violation("chain loops".into());
        None
    }

    fn process_queue(&mut self) {
        let q = self.queue;
        if self.status & status::DRIVER_OK == 0 || !q.enabled {
            self.violation("doorbell before the queue is live".into());
            return;
        }
        let b = self.behavior.clone();
        if b.needs_reset {
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        if let Some(how) = b.self_reset {
            if self.doorbells_since_behavior >= b.self_reset_after {
                match how {
                    SelfReset::StatusZero => self.reset(),
                    SelfReset::NeedsReset => self.status |= status::DEVICE_NEEDS_RESET,
                    SelfReset::QueueDisabled => self.queue.enabled = false,
                }
                return;
            }
        }
        self.doorbells_since_behavior += 1;
        let Some(avail_idx) = self.load_u16("avail.idx", q.driver + 2) else {
            return;
        };
        if avail_idx.wrapping_sub(self.last_avail) > q.size {
            self.violation(format!(
                "avail.idx jumped from {} to {avail_idx}",
                self.last_avail
            ));
            return;
        }
        let mut done: Vec<(u32, u32)> = Vec::new();
        let mut scribble_data = Vec::new();
        let mut scribble_status = Vec::new();
        while self.last_avail != avail_idx {
            let slot = u64::from(self.last_avail % q.size);
            let Some(head) = self.load_u16("avail ring", q.driver + 4 + 2 * slot) else {
                return;
            };
            self.last_avail = self.last_avail.wrapping_add(1);
            let Some(chain) = self.walk_chain(head) else {
                continue;
            };
            if b.never_complete {
                continue;
            }
            let written = self.serve(&chain, &b);
            if self.scribble.is_some() {
                let (data, st) = self.chain_targets(&chain);
                scribble_data.extend(data);
                scribble_status.extend(st);
            }
            let used = b
                .used_len
                .unwrap_or_else(|| written.saturating_add(b.used_len_extra));
            done.push((u32::from(head), used));
        }
        if self.driver_features & bit(VIRTIO_RING_F_EVENT_IDX) != 0 {
            // avail_event: ask for a doorbell at the next chain.
            let ev = q.device + 4 + 8 * u64::from(q.size);
            let la = b.avail_event.unwrap_or(self.last_avail);
            self.store_u16("avail_event", ev, la);
        }
        if let Some(flags) = b.used_flags {
            self.store_u16("used.flags", q.device, flags);
        }
        if b.complete_twice {
            done = done.first().map(|d| vec![*d, *d]).unwrap_or_default();
        }
        if b.used_id_never_posted {
            for d in &mut done {
                d.0 = (d.0 + 1) % u32::from(q.size);
            }
        }
        if let Some(id) = b.used_id {
            for d in &mut done {
                d.0 = id;
            }
        }
        if done.is_empty() && b.used_idx_extra == 0 {
            return;
        }
        let mut scribble_elems = Vec::new();
        for (id, len) in done {
            let e = q.device + 4 + 8 * u64::from(self.used_idx % q.size);
            self.store_u32("used element", e, id);
            self.store_u32("used element", e + 4, len);
            if let Some(o) = self.bar_offset(e, 8) {
                scribble_elems.push((o, id, len));
            }
            self.used_idx = self.used_idx.wrapping_add(1);
            self.completions += 1;
        }
        self.arm_scribbler(scribble_data, scribble_status, scribble_elems);
        let published = self.used_idx.wrapping_add(b.used_idx_extra);
        self.store_u16("used.idx", q.device + 2, published);
    }

    /// BAR offsets of a chain's device-writable data bytes and of its status byte.
    fn chain_targets(&self, chain: &[Buf]) -> (Vec<(u64, u64)>, Option<u64>) {
        let writable: Vec<&Buf> = chain.iter().filter(|c| c.writable).collect();
        let Some((status_buf, data)) = writable.split_last() else {
            return (Vec::new(), None);
        };
        let mut out: Vec<(u64, u64)> = data
            .iter()
            .filter_map(|d| Some((self.bar_offset(d.addr, u64::from(d.len))?, u64::from(d.len))))
            .collect();
        let len = u64::from(status_buf.len);
        let Some(o) = self.bar_offset(status_buf.addr, len).filter(|_| len > 0) else {
            return (out, None);
        };
        if len > 1 {
            out.push((o, len - 1));
        }
        (out, Some(o + len - 1))
    }

    /// Hands the scribbler (if any) its new targets and waits (at most a second) for one
    /// round of rewrites, so they land before the completion is published.
    fn arm_scribbler(
        &mut self,
        data: Vec<(u64, u64)>,
        status: Vec<u64>,
        elems: Vec<(u64, u32, u32)>,
    ) {
        let Some(s) = self.scribble.clone() else {
            return;
        };
        let start = {
            let mut st = lock_state(&s);
            st.data = data;
            st.status = status;
            st.elems = elems;
            if st.idle() {
                return;
            }
            st.rounds
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        while lock_state(&s).rounds == start && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }

    /// Gathers the readable bytes of a chain (bounded).
    fn gather(&self, bufs: &[Buf]) -> Option<Vec<u8>> {
        let total: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
        if total > MAX_GATHER {
            return None;
        }
        let mut out = vec![0u8; total as usize];
        let mut at = 0usize;
        for b in bufs {
            let o = self.bar_offset(b.addr, u64::from(b.len))?;
            let n = b.len as usize;
            self.pool.read(o, out.get_mut(at..at + n)?).ok()?;
            at += n;
        }
        Some(out)
    }

    /// Scatters `src` over `bufs`; returns the bytes written.
    fn scatter(&self, bufs: &[Buf], src: &[u8]) -> u32 {
        let mut done = 0usize;
        for b in bufs {
            if done == src.len() {
                break;
            }
            let n = (b.len as usize).min(src.len() - done);
            if let Some(o) = self.bar_offset(b.addr, n as u64) {
                if self.pool.write(o, &src[done..done + n]).is_err() {
                    break;
                }
            }
            done += n;
        }
        done as u32
    }

    /// Serves one request; returns the bytes written (status included).
    fn serve(&mut self, chain: &[Buf], b: &Behavior) -> u32 {
        let split = chain.iter().position(|c| c.writable).unwrap_or(chain.len());
        let (readable, writable) = chain.split_at(split);
        let Some((status_buf, data_bufs)) = writable.split_last() else {
            self.violation("request without a status byte".into());
            return 0;
        };
        let Some(status_addr) = status_buf
            .addr
            .checked_add(u64::from(status_buf.len))
            .and_then(|e| e.checked_sub(1))
            .filter(|_| status_buf.len > 0)
        else {
            self.violation("zero-length status descriptor".into());
            return 0;
        };
        let mut data_bufs = data_bufs.to_vec();
        if status_buf.len > 1 {
            data_bufs.push(Buf {
                len: status_buf.len - 1,
                ..*status_buf
            });
        }
        if b.spill > 0 {
            for d in &data_bufs {
                let start = d.addr + u64::from(d.len);
                let room = self
                    .pool_bar_base()
                    .saturating_add(self.pool.size())
                    .saturating_sub(start);
                let n = b.spill.min(room);
                if let Some(o) = self.bar_offset(start, n) {
                    let _ = self.pool.write(o, &vec![SPILL_BYTE; n as usize]);
                }
            }
        }
        let Some(out) = self.gather(readable) else {
            self.violation("readable part too large or outside the pool".into());
            return 0;
        };
        let (st, data) = if out.len() < 16 {
            self.violation("header shorter than 16 bytes".into());
            (S_IOERR, Vec::new())
        } else {
            self.execute(&out, &data_bufs)
        };
        let written = if b.skip_data {
            0
        } else {
            self.scatter(&data_bufs, &data)
        };
        let st = b.status.unwrap_or(st);
        if let Some(o) = self.bar_offset(status_addr, 1) {
            let _ = self.pool.write(o, &[st]);
        }
        if b.skip_data {
            // Claims what a real completion would.
            return data.len() as u32 + 1;
        }
        written + 1
    }

    /// Executes a request; returns the status and the bytes to write back.
    fn execute(&mut self, out: &[u8], data_bufs: &[Buf]) -> (u8, Vec<u8>) {
        let ty = get_u32(out, 0);
        let sector = get_u64(out, 8);
        let payload = out.get(16..).unwrap_or(&[]);
        let in_len: u64 = data_bufs.iter().map(|d| u64::from(d.len)).sum();
        let range = |off: Option<u64>, len: u64, disk: &[u8]| {
            off.and_then(|o| o.checked_add(len).map(|e| (o, e)))
                .filter(|(_, e)| *e <= disk.len() as u64)
                .map(|(o, e)| (o as usize, e as usize))
        };
        match ty {
            T_IN => match range(sector.checked_mul(SECTOR), in_len, &self.disk) {
                Some((s, e)) => (S_OK, self.disk[s..e].to_vec()),
                None => (S_IOERR, Vec::new()),
            },
            T_OUT => {
                if self.cfg.read_only {
                    return (S_IOERR, Vec::new());
                }
                match range(sector.checked_mul(SECTOR), payload.len() as u64, &self.disk) {
                    Some((s, e)) => {
                        self.disk[s..e].copy_from_slice(payload);
                        (S_OK, Vec::new())
                    }
                    None => (S_IOERR, Vec::new()),
                }
            }
            T_FLUSH => (S_OK, Vec::new()),
            T_GET_ID => {
                let mut id = vec![0u8; ID_BYTES];
                id[..DEVICE_ID.len()].copy_from_slice(DEVICE_ID);
                id.truncate(in_len.min(ID_BYTES as u64) as usize);
                (S_OK, id)
            }
            T_DISCARD | T_WRITE_ZEROES => {
                if self.cfg.read_only || payload.is_empty() || payload.len() % 16 != 0 {
                    return (S_IOERR, Vec::new());
                }
                for r in payload.chunks_exact(16) {
                    let s = get_u64(r, 0);
                    let n = u64::from(get_u32(r, 8));
                    match range(s.checked_mul(SECTOR), n * SECTOR, &self.disk) {
                        Some((a, e)) => self.disk[a..e].fill(0),
                        None => return (S_IOERR, Vec::new()),
                    }
                }
                (S_OK, Vec::new())
            }
            _ => (S_UNSUPP, Vec::new()),
        }
    }
}

fn refused(what: &str) -> PciError {
    PciError::Refused {
        what: what.into(),
        errno: libc::EINVAL as u32,
    }
}

impl PciAccess for FakeDevice {
    fn config_read(&mut self, offset: u16, buf: &mut [u8]) -> Result<(), PciError> {
        self.lock().config_read(offset, buf)
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), PciError> {
        self.lock().config_write(offset, data)
    }

    fn bar_read(&mut self, bar: u8, offset: u64, buf: &mut [u8]) -> Result<(), PciError> {
        self.lock().bar_read(bar, offset, buf)
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), PciError> {
        self.lock().bar_write(bar, offset, data)
    }

    fn bar_size(&mut self, bar: u8) -> Result<u64, PciError> {
        let i = self.lock();
        Ok(match bar {
            dl::REGS_BAR => dl::REGS_BAR_SIZE,
            dl::POOL_BAR => i.cfg.reported_pool_bar_size.unwrap_or(i.pool.size()),
            _ => 0,
        })
    }

    fn map_bar(&mut self, bar: u8, offset: u64, len: u64) -> Result<Mapping, PciError> {
        let i = self.lock();
        let not = |why: &str| PciError::NotMappable {
            bar,
            why: why.into(),
        };
        if bar != dl::POOL_BAR {
            return Err(not("only the pool BAR is mappable"));
        }
        let len = i.cfg.map_len_limit.map_or(len, |l| l.min(len));
        if offset.checked_add(len).is_none_or(|e| e > i.pool.size()) {
            return Err(not("range outside the BAR"));
        }
        let len = usize::try_from(len).map_err(|_| not("too large"))?;
        Mapping::shared(i.pool_fd.as_fd(), offset, len).map_err(PciError::Map)
    }

    fn enable_msix(&mut self, _count: u16) -> Result<Option<Vec<OwnedFd>>, PciError> {
        // No interrupts: the driver polls the used ring.
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlockDriver, Options};

    fn disk(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i / 512 * 7 + i % 251) as u8).collect()
    }

    #[test]
    fn well_behaved_fake_device_serves_the_real_driver() {
        let fake = FakeDevice::with_disk(disk(1 << 20)).unwrap();
        let mut drv = BlockDriver::open(fake.clone(), &Options::default()).unwrap();
        assert_eq!(drv.info().capacity, 1 << 20);
        assert_eq!(drv.info().pool_bus_address, POOL_BAR_ADDRESS);
        let mut buf = vec![0u8; 8192];
        drv.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf, fake.disk()[4096..4096 + 8192]);
        drv.write_at(512, &[9u8; 1024]).unwrap();
        assert_eq!(&fake.disk()[512..1536], &[9u8; 1024][..]);
        let id = drv.get_id().unwrap();
        assert_eq!(&id[..DEVICE_ID.len()], DEVICE_ID);
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
        assert!(fake.status() & status::DRIVER_OK != 0);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut fake = FakeDevice::with_disk(disk(4096)).unwrap();
        let reg = cfg::BAR0 + 4 * u16::from(dl::POOL_BAR);
        fake.config_write(reg, &u32::MAX.to_le_bytes()).unwrap();
        fake.config_write(reg + 4, &u32::MAX.to_le_bytes()).unwrap();
        let mut lo = [0u8; 4];
        let mut hi = [0u8; 4];
        fake.config_read(reg, &mut lo).unwrap();
        fake.config_read(reg + 4, &mut hi).unwrap();
        let mask = u64::from(u32::from_le_bytes(lo) & cfg::BAR_MEM_ADDR_MASK)
            | (u64::from(u32::from_le_bytes(hi)) << 32);
        assert_eq!((!mask).wrapping_add(1), DEFAULT_POOL_SIZE);
        assert!(FakeDevice::new(FakeConfig::new(Vec::new()).with_pool_size(3 << 20)).is_err());
    }
}
