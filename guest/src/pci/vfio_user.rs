//! A vfio-user client as a PCI back end: the function lives in another process, reached
//! over a Unix socket. The client plays the firmware's part too: it sizes the BARs, assigns
//! them bus addresses and enables memory decode, as a guest kernel would.
//!
//! Every reply goes through the codec (lengths bounded, error replies become errors) and
//! every value the server returns is checked before use.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use swiotlb_shared::error_chain;
use swiotlb_shared::pci::cfg;
use swiotlb_shared::vfio_user::capabilities::DEFAULT_MAX_MSG_FDS;
use swiotlb_shared::vfio_user::device::{pci_irq, pci_region};
use swiotlb_shared::vfio_user::limits::{MAX_IO_FDS_ARGSZ, MAX_REGION_INFO_ARGSZ};
use swiotlb_shared::vfio_user::region::IO_FD_TYPE_IOEVENTFD;
use swiotlb_shared::vfio_user::region_info::{REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ};
use swiotlb_shared::vfio_user::socket::{recv_message, send_message, RecvError};
use swiotlb_shared::vfio_user::{
    check_reply, encode_request, ArgszReply, CodecError, Command, DeviceInfo, IrqAction, IrqSet,
    IrqSetData, RegionAccess, RegionInfo, RegionIoFds, Request, Version, DEVICE_FLAGS_PCI,
    MAX_DATA_XFER_SIZE,
};

use super::discovery::NUM_BARS;
use super::{PciAccess, PciError};
use crate::pool::Mapping;

/// VFIO region index of PCI config space.
const CONFIG_REGION: u32 = pci_region::CONFIG;
/// Where the client places 32-bit memory BARs (below 4 GiB, as firmware does).
pub const MEM32_BASE: u64 = 0xc000_0000;
/// Where the client places 64-bit memory BARs (above 4 GiB).
pub const MEM64_BASE: u64 = 0x80_0000_0000;
/// How long to wait for a reply before giving up on the server.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// KVM's ioeventfd flag: only writes of exactly `datamatch` signal the fd.
const IOEVENTFD_FLAG_DATAMATCH: u32 = 1;

/// A register the server serves through an eventfd (an ioeventfd): a write of exactly
/// `size` bytes at `offset` of BAR `bar` (and, with `datamatch`, of that value) is an
/// eventfd signal rather than a message.
#[derive(Debug)]
struct Doorbell {
    bar: u8,
    offset: u64,
    size: u64,
    datamatch: Option<u64>,
    fd: OwnedFd,
}

/// What the client knows of one region.
#[derive(Debug, Default)]
struct Region {
    size: u64,
    flags: u32,
    offset: u64,
    sparse: Vec<(u64, u64)>,
    fd: Option<OwnedFd>,
}

/// A vfio-user client connected to one PCI function.
pub struct VfioUserClient {
    sock: UnixStream,
    next_id: u16,
    regions: Vec<Region>,
    max_xfer: usize,
    /// Most fds the server takes in one message (its `max_msg_fds`).
    server_max_fds: usize,
    doorbells: Vec<Doorbell>,
}

fn codec(e: CodecError) -> PciError {
    match e {
        CodecError::Remote { command, errno } => PciError::Refused {
            what: command.to_string(),
            errno,
        },
        other => PciError::Protocol(error_chain(&other)),
    }
}

impl VfioUserClient {
    /// Connects, negotiates the protocol version, reads the device's regions, and assigns
    /// BAR addresses with memory decode and bus mastering enabled.
    pub fn connect(path: &Path) -> Result<Self, PciError> {
        let sock = UnixStream::connect(path).map_err(PciError::Io)?;
        Self::from_stream(sock)
    }

    /// As [`connect`](Self::connect), on an already connected socket.
    pub fn from_stream(sock: UnixStream) -> Result<Self, PciError> {
        sock.set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(PciError::Io)?;
        let mut c = Self {
            sock,
            next_id: 0,
            regions: Vec::new(),
            max_xfer: MAX_DATA_XFER_SIZE as usize,
            server_max_fds: DEFAULT_MAX_MSG_FDS as usize,
            doorbells: Vec::new(),
        };
        c.version()?;
        c.device_info()?;
        c.io_fds()?;
        c.assign_bars(MEM32_BASE, MEM64_BASE)?;
        Ok(c)
    }

    /// How many registers the server serves through eventfds (doorbells written without a
    /// message).
    pub fn eventfd_doorbells(&self) -> usize {
        self.doorbells.len()
    }

    /// Stops using the server's doorbell eventfds: every register write is a message again
    /// (for comparisons).
    pub fn disable_eventfd_doorbells(&mut self) {
        self.doorbells.clear();
    }

    /// Asks for each trapped BAR's IO-FD sub-regions (DEVICE_GET_REGION_IO_FDS) and keeps
    /// the ioeventfds. A server that refuses the command, or offers another kind of fd, is
    /// served by messages; a malformed reply is an error like any other.
    fn io_fds(&mut self) -> Result<(), PciError> {
        for index in 0..NUM_BARS as u32 {
            let Some(r) = self.regions.get(index as usize) else {
                break;
            };
            if r.size == 0 || r.flags & REGION_INFO_FLAG_MMAP != 0 {
                continue;
            }
            let size = r.size;
            let (reply, fds) = match self.io_fds_of(index) {
                Ok(Some(x)) => x,
                Ok(None) | Err(PciError::Refused { .. }) => continue,
                Err(e) => return Err(e),
            };
            let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
            for sub in &reply.sub_regions {
                let fits = sub
                    .offset
                    .checked_add(sub.size)
                    .is_some_and(|end| end <= size);
                let usable = sub.fd_type == IO_FD_TYPE_IOEVENTFD
                    && matches!(sub.size, 1 | 2 | 4 | 8)
                    && fits
                    && sub.flags & !IOEVENTFD_FLAG_DATAMATCH == 0;
                let fd = fds.get_mut(sub.fd_index as usize).and_then(Option::take);
                match (usable, fd) {
                    (true, Some(fd)) => self.doorbells.push(Doorbell {
                        bar: index as u8,
                        offset: sub.offset,
                        size: sub.size,
                        datamatch: (sub.flags & IOEVENTFD_FLAG_DATAMATCH != 0)
                            .then_some(sub.datamatch),
                        fd,
                    }),
                    _ => tracing::debug!(
                        region = index,
                        offset = sub.offset,
                        "IO-FD sub-region not used: writes there stay messages"
                    ),
                }
            }
        }
        Ok(())
    }

    /// One DEVICE_GET_REGION_IO_FDS exchange (with one retry at the size the server
    /// names); `None` when the reply settles on nothing usable.
    fn io_fds_of(&mut self, index: u32) -> Result<Option<(RegionIoFds, Vec<OwnedFd>)>, PciError> {
        let mut argsz = RegionIoFds::FIXED_SIZE as u32;
        for _ in 0..2 {
            let (p, fds) = self.ask(&Request::DeviceGetRegionIoFds { argsz, index })?;
            match RegionIoFds::parse(&p).map_err(codec)? {
                ArgszReply::Complete(r) if r.index == index => return Ok(Some((r, fds))),
                ArgszReply::Complete(r) => {
                    return Err(PciError::Protocol(format!(
                        "IO FDs for region {} when {index} was asked",
                        r.index
                    )))
                }
                ArgszReply::Retry { argsz: need } if need > argsz && need <= MAX_IO_FDS_ARGSZ => {
                    argsz = need;
                }
                ArgszReply::Retry { argsz: need } => {
                    return Err(PciError::Protocol(format!("IO FDs want argsz {need}")));
                }
            }
        }
        Ok(None)
    }

    /// Signals the doorbell eventfd that serves a write of `data` at `offset` of BAR
    /// `bar`; `false` when none does (the write goes as a message).
    fn ring_doorbell(&self, bar: u8, offset: u64, data: &[u8]) -> Result<bool, PciError> {
        let Some(d) = self.doorbells.iter().find(|d| {
            d.bar == bar && d.offset == offset && d.size == data.len() as u64 && {
                let mut v = [0u8; 8];
                v[..data.len()].copy_from_slice(data);
                d.datamatch.is_none_or(|m| m == u64::from_le_bytes(v))
            }
        }) else {
            return Ok(false);
        };
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a local buffer to an eventfd this client owns.
        let n = unsafe { libc::write(d.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if n == 8 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            // The counter is at its maximum: the server has a signal pending anyway.
            return Ok(true);
        }
        Err(PciError::Io(e))
    }

    /// [`call`](Self::call) with a request the codec encodes, carrying no fds.
    fn ask(&mut self, req: &Request<'_>) -> Result<(Vec<u8>, Vec<OwnedFd>), PciError> {
        self.call(req.command(), &req.to_bytes().map_err(codec)?, &[])
    }

    /// Sends a command and returns the reply payload and any fds, checking that the reply
    /// answers this command. Public so tests can speak the protocol directly.
    pub fn call(
        &mut self,
        cmd: Command,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), PciError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let bytes = encode_request(id, cmd, payload).map_err(codec)?;
        send_message(&self.sock, &bytes, fds).map_err(PciError::Io)?;
        let msg = recv_message(&self.sock).map_err(|e| match e {
            RecvError::Io(io) => PciError::Io(io),
            other => PciError::Protocol(other.to_string()),
        })?;
        check_reply(&msg.header, &msg.payload, id, cmd).map_err(codec)?;
        Ok((msg.payload, msg.fds))
    }

    fn version(&mut self) -> Result<(), PciError> {
        let ours = Version::local();
        let (p, _) = self.call(Command::Version, &ours.to_bytes().map_err(codec)?, &[])?;
        let theirs = Version::parse(&p).map_err(codec)?;
        theirs.check_server_reply(&ours).map_err(codec)?;
        let x = theirs.capabilities.max_data_xfer_size;
        self.max_xfer = usize::try_from(x)
            .unwrap_or(usize::MAX)
            .clamp(8, MAX_DATA_XFER_SIZE as usize);
        self.server_max_fds = theirs.capabilities.max_msg_fds as usize;
        Ok(())
    }

    fn device_info(&mut self) -> Result<(), PciError> {
        let argsz = DeviceInfo::SIZE as u32;
        let (p, _) = self.ask(&Request::DeviceGetInfo { argsz })?;
        let info = DeviceInfo::parse(&p).map_err(codec)?;
        if info.flags & DEVICE_FLAGS_PCI == 0 || info.num_regions <= CONFIG_REGION {
            return Err(PciError::Protocol(format!(
                "not a PCI device (flags {:#x}, {} regions)",
                info.flags, info.num_regions
            )));
        }
        for index in 0..=CONFIG_REGION {
            let r = self.region_info(index)?;
            self.regions.push(r);
        }
        if self.regions[CONFIG_REGION as usize].size < cfg::SIZE as u64 {
            return Err(PciError::Protocol(
                "config region smaller than 256 bytes".into(),
            ));
        }
        Ok(())
    }

    fn region_info(&mut self, index: u32) -> Result<Region, PciError> {
        let mut argsz = RegionInfo::FIXED_SIZE as u32;
        for _ in 0..2 {
            let (p, mut fds) = self.ask(&Request::DeviceGetRegionInfo { argsz, index })?;
            match RegionInfo::parse(&p).map_err(codec)? {
                ArgszReply::Complete(info) => {
                    if info.index != index {
                        return Err(PciError::Protocol(format!(
                            "region info for {} when {index} was asked",
                            info.index
                        )));
                    }
                    return Ok(Region {
                        size: info.size,
                        flags: info.flags,
                        offset: info.offset,
                        sparse: info
                            .sparse_areas
                            .iter()
                            .map(|a| (a.offset, a.size))
                            .collect(),
                        fd: fds.pop(),
                    });
                }
                ArgszReply::Retry { argsz: need }
                    if need > argsz && need <= MAX_REGION_INFO_ARGSZ =>
                {
                    argsz = need;
                }
                ArgszReply::Retry { argsz: need } => {
                    return Err(PciError::Protocol(format!(
                        "region info wants argsz {need}"
                    )));
                }
            }
        }
        Err(PciError::Protocol("region info did not settle".into()))
    }

    fn region_read(&mut self, region: u32, offset: u64, buf: &mut [u8]) -> Result<(), PciError> {
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(self.max_xfer);
            let req = RegionAccess {
                offset: offset + done as u64,
                region,
                count: n as u32,
                data: &[],
            };
            let (p, _) = self.call(Command::RegionRead, &req.to_bytes(), &[])?;
            let r = RegionAccess::parse(&p).map_err(codec)?;
            if r.count as usize != n || r.data.len() != n || r.region != region {
                return Err(PciError::Protocol(format!(
                    "read of {n} bytes answered with {} bytes",
                    r.data.len()
                )));
            }
            buf[done..done + n].copy_from_slice(r.data);
            done += n;
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), PciError> {
        for (i, chunk) in data.chunks(self.max_xfer).enumerate() {
            let req = RegionAccess::with_data(offset + (i * self.max_xfer) as u64, region, chunk)
                .map_err(codec)?;
            self.call(Command::RegionWrite, &req.to_bytes(), &[])?;
        }
        Ok(())
    }

    fn config_u32(&mut self, off: u16) -> Result<u32, PciError> {
        let mut b = [0u8; 4];
        self.config_read(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Sizes every BAR and assigns it an address: 32-bit BARs from `mem32`, 64-bit BARs
    /// from `mem64`, each aligned to its size; then enables memory decode and bus mastering.
    pub fn assign_bars(&mut self, mem32: u64, mem64: u64) -> Result<(), PciError> {
        // Decode off while sizing, as the PCI spec asks.
        self.config_write(cfg::COMMAND, &0u16.to_le_bytes())?;
        let (mut next32, mut next64) = (mem32, mem64);
        let mut bar = 0u8;
        while usize::from(bar) < NUM_BARS {
            let reg = cfg::BAR0 + u16::from(bar) * 4;
            let orig = self.config_u32(reg)?;
            if orig & cfg::BAR_IO != 0 {
                bar += 1;
                continue;
            }
            let is64 = orig & (0b11 << 1) == cfg::BAR_MEM_TYPE_64 && bar < 5;
            self.config_write(reg, &u32::MAX.to_le_bytes())?;
            let lo = self.config_u32(reg)? & cfg::BAR_MEM_ADDR_MASK;
            let mut mask = u64::from(lo) | 0xffff_ffff_0000_0000;
            if is64 {
                self.config_write(reg + 4, &u32::MAX.to_le_bytes())?;
                mask = u64::from(lo) | (u64::from(self.config_u32(reg + 4)?) << 32);
            }
            let size = (!mask).wrapping_add(1);
            if lo == 0 || !size.is_power_of_two() {
                // Not implemented.
                bar += if is64 { 2 } else { 1 };
                continue;
            }
            let next = if is64 { &mut next64 } else { &mut next32 };
            let addr = next.checked_next_multiple_of(size).ok_or_else(|| {
                PciError::Protocol(format!("BAR {bar} of {size:#x} bytes cannot be placed"))
            })?;
            *next = addr.saturating_add(size);
            self.config_write(reg, &(addr as u32).to_le_bytes())?;
            if is64 {
                self.config_write(reg + 4, &((addr >> 32) as u32).to_le_bytes())?;
            }
            bar += if is64 { 2 } else { 1 };
        }
        let cmd = cfg::COMMAND_MEMORY | cfg::COMMAND_BUS_MASTER;
        self.config_write(cfg::COMMAND, &cmd.to_le_bytes())
    }

    /// Finds the MSI-X capability's offset.
    fn msix_cap(&mut self) -> Result<Option<u8>, PciError> {
        let mut p = [0u8; 1];
        self.config_read(cfg::CAPABILITIES_POINTER, &mut p)?;
        let mut at = p[0] & !3;
        for _ in 0..48 {
            if at < 0x40 {
                return Ok(None);
            }
            let mut h = [0u8; 2];
            self.config_read(u16::from(at), &mut h)?;
            if h[0] == cfg::CAP_ID_MSIX {
                return Ok(Some(at));
            }
            at = h[1] & !3;
        }
        Ok(None)
    }

    fn eventfd() -> Result<OwnedFd, PciError> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(PciError::Io(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl PciAccess for VfioUserClient {
    fn config_read(&mut self, offset: u16, buf: &mut [u8]) -> Result<(), PciError> {
        self.region_read(CONFIG_REGION, u64::from(offset), buf)
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), PciError> {
        self.region_write(CONFIG_REGION, u64::from(offset), data)
    }

    fn bar_read(&mut self, bar: u8, offset: u64, buf: &mut [u8]) -> Result<(), PciError> {
        self.region_read(u32::from(bar), offset, buf)
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), PciError> {
        if !self.doorbells.is_empty() && self.ring_doorbell(bar, offset, data)? {
            return Ok(());
        }
        self.region_write(u32::from(bar), offset, data)
    }

    fn bar_size(&mut self, bar: u8) -> Result<u64, PciError> {
        Ok(self
            .regions
            .get(usize::from(bar))
            .filter(|r| r.flags & REGION_INFO_FLAG_READ != 0)
            .map_or(0, |r| r.size))
    }

    fn map_bar(&mut self, bar: u8, offset: u64, len: u64) -> Result<Mapping, PciError> {
        let r = self
            .regions
            .get(usize::from(bar))
            .ok_or(PciError::NotMappable {
                bar,
                why: "no such region".into(),
            })?;
        let not = |why: &str| PciError::NotMappable {
            bar,
            why: why.into(),
        };
        if r.flags & REGION_INFO_FLAG_MMAP == 0 {
            return Err(not("the server does not offer it for mmap"));
        }
        let fd =
            r.fd.as_ref()
                .ok_or_else(|| not("no fd came with the region"))?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| not("range overflows"))?;
        if end > r.size
            || !r
                .sparse
                .iter()
                .any(|(o, s)| *o <= offset && o.saturating_add(*s) >= end)
        {
            return Err(not("no mmap-able area covers the range"));
        }
        let file_off = r
            .offset
            .checked_add(offset)
            .ok_or_else(|| not("offset overflows"))?;
        let len = usize::try_from(len).map_err(|_| not("too large"))?;
        Mapping::shared(fd.as_fd(), file_off, len).map_err(PciError::Map)
    }

    fn enable_msix(&mut self, count: u16) -> Result<Option<Vec<OwnedFd>>, PciError> {
        let Some(cap) = self.msix_cap()? else {
            return Ok(None);
        };
        let fds = (0..count)
            .map(|_| Self::eventfd())
            .collect::<Result<Vec<_>, _>>()?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        if self.server_max_fds == 0 && !raw.is_empty() {
            return Err(PciError::Protocol(
                "the server takes no file descriptors (max_msg_fds 0): no MSI-X eventfds".into(),
            ));
        }
        // In sets of at most the server's max_msg_fds, as QEMU's client sends them (none
        // when there is no fd: `chunks` wants a size above 0).
        let per_set = self.server_max_fds.max(1);
        for (i, chunk) in raw.chunks(per_set).enumerate() {
            let set = IrqSet {
                action: IrqAction::Trigger,
                data: IrqSetData::Eventfd,
                index: pci_irq::MSIX,
                start: (i * per_set) as u32,
                count: chunk.len() as u32,
            };
            self.call(
                Command::DeviceSetIrqs,
                &set.to_bytes().map_err(codec)?,
                chunk,
            )?;
        }
        let mut ctl = [0u8; 2];
        self.config_read(u16::from(cap) + 2, &mut ctl)?;
        let v = (u16::from_le_bytes(ctl) | cfg::MSIX_ENABLE) & !cfg::MSIX_FUNCTION_MASK;
        self.config_write(u16::from(cap) + 2, &v.to_le_bytes())?;
        Ok(Some(fds))
    }
}
