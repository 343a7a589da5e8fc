//! The vfio-user server: one client at a time, each starting from a freshly reset function.
//!
//! Every message is parsed by the codec, which bounds every length; a malformed command gets
//! an error reply and the session goes on; a header that cannot be trusted (the stream
//! cannot be resynchronised) ends the session; the server then takes the next client.
//! Guest RAM offered with DMA_MAP is never mapped, and the server never issues
//! DMA_READ/DMA_WRITE: the pool is the only memory the device reaches.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use swiotlb_shared::vfio_user::capabilities::DEFAULT_MAX_MSG_FDS;
use swiotlb_shared::vfio_user::device::{
    IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE,
};
use swiotlb_shared::vfio_user::IrqAction as WireIrqAction;
use swiotlb_shared::vfio_user::{
    encode_error_reply, encode_reply, errno, parse_request, region, Capabilities, CodecError,
    Command, DeviceInfo, Header, IrqInfo, IrqSet, IrqSetData, RegionAccess, RegionInfo,
    RegionIoFds, Request, SparseArea, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET,
};
use swiotlb_shared::vfio_user::{region::IO_FD_TYPE_IOEVENTFD, IoFdSubRegion};

use crate::pci::function::{AccessError, SessionSummary, NUM_REGIONS, REGION_POOL, REGION_REGS};
use crate::pci::interrupts::{
    IrqAction, IrqError, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_IRQS,
};
use crate::pci::VirtioPciFunction;
use crate::virtio::Rearm;
use swiotlb_shared::vfio_user::socket::{recv_message, send_message, Message, RecvError};

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The client closed the connection.
    Closed,
    /// The session was ended for a protocol error.
    ProtocolError(String),
    /// The device was told to stop (the stop descriptor became readable).
    Stopped,
}

/// Per-session protocol counters.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ProtocolStats {
    /// Messages received.
    pub messages: u64,
    /// Commands answered with an error reply.
    pub error_replies: u64,
    /// DMA_MAP requests seen (acknowledged, never mapped).
    pub dma_maps_ignored: u64,
    /// Doorbells that came through an ioeventfd rather than a message.
    pub doorbell_events: u64,
}

/// A reply to send.
struct Reply {
    bytes: Vec<u8>,
    fds: Vec<RawFd>,
}

/// Width of a doorbell write the ioeventfds match: the 16-bit queue index (virtio 1.2
/// §4.1.5.2, without VIRTIO_F_NOTIFICATION_DATA). Other widths still arrive as messages.
const DOORBELL_WIDTH: u64 = 2;
/// While polling, the socket and the doorbell eventfds are looked at once per this many
/// looks at the rings (a `poll(2)` costs far more than a look at an index in the pool).
const POLL_SOCKET_EVERY: u32 = 256;

/// The server around one function.
pub struct Server {
    function: VirtioPciFunction,
    caps: Capabilities,
    stats: ProtocolStats,
    /// This session's doorbell eventfds (ioeventfds), by queue; made when the client asks
    /// for them, closed when the session ends.
    doorbells: Vec<OwnedFd>,
    /// Most fds this session's client takes in one message: its VERSION's `max_msg_fds`
    /// (the spec's default, 1, until then).
    client_max_fds: usize,
    /// How long to keep polling the rings after the last chain before sleeping; zero:
    /// never poll, sleep until a doorbell.
    poll: Duration,
    /// Readable when the device must stop (see [`Server::with_stop`]).
    stop: Option<OwnedFd>,
    /// The stop descriptor was seen readable.
    stopped: bool,
}

impl Server {
    /// A server presenting `function`.
    pub fn new(function: VirtioPciFunction) -> Self {
        Self {
            function,
            caps: Capabilities::local(),
            stats: ProtocolStats::default(),
            doorbells: Vec::new(),
            client_max_fds: DEFAULT_MAX_MSG_FDS as usize,
            poll: Duration::ZERO,
            stop: None,
            stopped: false,
        }
    }

    /// Stops when `fd` becomes readable (a signalfd for SIGTERM and SIGINT: see
    /// `crate::stop`): the session in progress ends after the pass it is in, every chain
    /// taken completed and published, chains not yet taken left in the ring, as
    /// [`SessionEnd::Stopped`], and [`Server::run`] returns. The server never reads `fd`.
    pub fn with_stop(mut self, fd: OwnedFd) -> Self {
        self.stop = Some(fd);
        self
    }

    /// The stop descriptor was seen readable.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Polls the rings for up to `budget` after the last chain taken, with doorbells
    /// suppressed (EVENT_IDX `avail_event` left behind, or NO_NOTIFY), before asking for a
    /// doorbell and sleeping. Zero (the default) never polls. Polling spends a CPU while the
    /// driver is busy and saves a doorbell and a wake-up per request.
    pub fn with_polling(mut self, budget: Duration) -> Self {
        self.poll = budget;
        self.function.set_worker_poll(budget);
        self
    }

    /// The function.
    pub fn function(&self) -> &VirtioPciFunction {
        &self.function
    }

    /// Accepts clients one after another; `on_end` is called after each session. With
    /// `max_sessions`, returns after that many; with a stop descriptor, when it becomes
    /// readable.
    pub fn run(
        &mut self,
        listener: &UnixListener,
        max_sessions: Option<u64>,
        mut on_end: impl FnMut(&SessionEnd, &SessionSummary, &ProtocolStats),
    ) -> std::io::Result<()> {
        let mut n = 0u64;
        loop {
            if self.stopped || max_sessions.is_some_and(|m| n >= m) {
                return Ok(());
            }
            if let Some(stop) = &self.stop {
                let mut fds = [listener.as_raw_fd(), stop.as_raw_fd()].map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
                if !wait_readable(&mut fds, -1)? {
                    continue;
                }
                if fds[1].revents != 0 {
                    self.stopped = true;
                    continue;
                }
            }
            let (stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            n += 1;
            let end = self.serve(&stream);
            on_end(&end, &self.function.summary(), &self.stats);
            if matches!(end, SessionEnd::Stopped) {
                self.stopped = true;
            }
        }
    }

    /// Serves one client until it leaves or breaks the protocol.
    pub fn serve(&mut self, stream: &UnixStream) -> SessionEnd {
        self.function.reset();
        self.stats = ProtocolStats::default();
        let peer = peer_name(stream);
        tracing::info!(target: "swiotlb::session", peer = %peer, "client connected");
        self.function.audit_peripheral(true, &peer);
        let mut versioned = false;
        let end = loop {
            match self.wait(stream) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => break SessionEnd::ProtocolError(format!("waiting for the client: {e}")),
            }
            if self.stopped {
                break SessionEnd::Stopped;
            }
            let msg = match recv_message(stream) {
                Ok(m) => m,
                Err(RecvError::Closed) => break SessionEnd::Closed,
                Err(RecvError::BadHeader {
                    msg_id,
                    command,
                    source,
                }) => {
                    let _ = send_message(
                        stream,
                        &encode_error_reply(msg_id, command, source.errno()),
                        &[],
                    );
                    break SessionEnd::ProtocolError(format!("bad header: {source}"));
                }
                Err(e) => break SessionEnd::ProtocolError(e.to_string()),
            };
            self.stats.messages += 1;
            let header = msg.header;
            if !header.is_command() {
                break SessionEnd::ProtocolError("client sent a reply".into());
            }
            let first = !versioned;
            let result = self.handle(msg, &mut versioned);
            if header.no_reply() {
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "error on a no-reply command");
                    self.stats.error_replies += 1;
                }
                continue;
            }
            let reply = match result {
                Ok(r) => r,
                Err(e) => {
                    self.stats.error_replies += 1;
                    tracing::debug!(command = header.command, error = %e, "command refused");
                    Reply {
                        bytes: encode_error_reply(header.msg_id, header.command, e.errno()),
                        fds: Vec::new(),
                    }
                }
            };
            if let Err(e) = send_message(stream, &reply.bytes, &reply.fds) {
                break SessionEnd::ProtocolError(format!("send failed: {e}"));
            }
            if first && !versioned {
                break SessionEnd::ProtocolError("version negotiation failed".into());
            }
        };
        // Every queue worker parked before the session's state is reported or dropped.
        self.function.set_doorbells(Vec::new());
        tracing::info!(target: "swiotlb::session", end = ?end, "client disconnected");
        self.doorbells.clear();
        self.client_max_fds = DEFAULT_MAX_MSG_FDS as usize;
        self.function.audit_peripheral(false, &peer);
        end
    }

    /// Serves doorbells (and, when polling, the rings) until the socket has a message:
    /// `Ok(true)` then; `Ok(false)` after doorbells were served, for the caller to look
    /// again.
    /// `Ok(true)` too when the stop descriptor became readable (`self.stopped`).
    fn wait(&mut self, stream: &UnixStream) -> std::io::Result<bool> {
        if self.doorbells.is_empty() && self.poll.is_zero() && self.stop.is_none() {
            return Ok(true); // Nothing but the socket: block in recvmsg.
        }
        // While queue workers serve the rings, they poll them; this thread does not.
        if !self.poll.is_zero() && !self.function.workers_serving() && self.spin(stream)? {
            return Ok(true);
        }
        let mut fds = self.pollfds(stream);
        if !wait_readable(&mut fds, -1)? {
            return Ok(false);
        }
        self.serve_doorbells(&fds);
        Ok(fds[0].revents != 0 || self.stop_seen(&fds))
    }

    /// Whether the stop descriptor (last of `fds`, when there is one) is readable; marks
    /// the server stopped if so.
    fn stop_seen(&mut self, fds: &[libc::pollfd]) -> bool {
        if self.stop.is_some() && fds.last().is_some_and(|p| p.revents != 0) {
            self.stopped = true;
        }
        self.stopped
    }

    /// Polls the rings until `poll` passes without a chain, then asks for doorbells again
    /// (taking what raced in). Returns whether the socket has a message.
    fn spin(&mut self, stream: &UnixStream) -> std::io::Result<bool> {
        let mut idle_since = Instant::now();
        let mut looks = 0u32;
        loop {
            if self.function.poll_queues(Rearm::No) {
                idle_since = Instant::now();
            }
            looks = looks.wrapping_add(1);
            if looks % POLL_SOCKET_EVERY == 0 {
                let mut fds = self.pollfds(stream);
                if wait_readable(&mut fds, 0)? {
                    self.serve_doorbells(&fds);
                    if fds[0].revents != 0 || self.stop_seen(&fds) {
                        return Ok(true);
                    }
                }
                if idle_since.elapsed() >= self.poll {
                    break;
                }
            }
            std::hint::spin_loop();
        }
        self.function.poll_queues(Rearm::Yes);
        Ok(false)
    }

    /// What the device thread waits on: the socket first, then each doorbell eventfd in
    /// queue order (-1, which `poll(2)` skips, for a queue a worker serves: that doorbell is
    /// the worker's), then the stop descriptor if there is one.
    fn pollfds(&self, stream: &UnixStream) -> Vec<libc::pollfd> {
        let doorbell = |(q, fd): (usize, &OwnedFd)| {
            if self.function.worker_serves(q as u16) {
                -1
            } else {
                fd.as_raw_fd()
            }
        };
        std::iter::once(stream.as_raw_fd())
            .chain(self.doorbells.iter().enumerate().map(doorbell))
            .chain(self.stop.iter().map(AsRawFd::as_raw_fd))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect()
    }

    /// Drains every doorbell eventfd `fds` (socket first) found readable and serves its
    /// queue. While polling, the driver is not asked for the next doorbell.
    fn serve_doorbells(&mut self, fds: &[libc::pollfd]) {
        let rearm = if self.poll.is_zero() {
            Rearm::Yes
        } else {
            Rearm::No
        };
        for (q, p) in fds.iter().skip(1).take(self.doorbells.len()).enumerate() {
            if p.revents & libc::POLLIN == 0 {
                continue;
            }
            if p.fd < 0 {
                continue;
            }
            let mut v = [0u8; 8];
            // SAFETY: reads 8 bytes into a local buffer from an eventfd this server owns.
            let _ = unsafe { libc::read(p.fd, v.as_mut_ptr().cast(), v.len()) };
            self.stats.doorbell_events += 1;
            self.function.notify_with(q as u16, rearm);
        }
    }

    /// The DEVICE_GET_REGION_IO_FDS reply for `index`: for the register BAR, an ioeventfd
    /// per queue on its doorbell (made on the first ask of the session), as many as the
    /// client's `max_msg_fds`; none elsewhere.
    fn region_io_fds(
        &mut self,
        header: &Header,
        argsz: u32,
        index: u32,
    ) -> Result<Reply, CommandError> {
        if index >= NUM_REGIONS {
            return Err(CodecError::Unsupported("no such region").into());
        }
        let mut sub_regions = Vec::new();
        if index == REGION_REGS {
            if self.doorbells.is_empty() {
                let n = self.function.transport().queues().len();
                self.doorbells = (0..n)
                    .map(|_| eventfd())
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        tracing::warn!(error = %e, "doorbell eventfds unavailable");
                        CodecError::Unsupported("doorbell eventfds unavailable")
                    })?;
                // The queue workers wait on the same eventfds.
                let shared = self
                    .doorbells
                    .iter()
                    .map(|fd| fd.try_clone().map(std::sync::Arc::new))
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        tracing::warn!(error = %e, "doorbell eventfds unavailable");
                        self.doorbells.clear();
                        CodecError::Unsupported("doorbell eventfds unavailable")
                    })?;
                self.function.set_doorbells(shared);
            }
            // No more ioeventfds than the client takes in one message: the doorbells of
            // the queues past that arrive as messages, as they would with none.
            for q in 0..self.doorbells.len().min(self.client_max_fds) {
                sub_regions.push(IoFdSubRegion {
                    offset: self.function.doorbell_offset(q as u16),
                    size: DOORBELL_WIDTH,
                    fd_index: q as u32,
                    fd_type: IO_FD_TYPE_IOEVENTFD,
                    flags: 0,
                    datamatch: 0,
                });
            }
        }
        let r = RegionIoFds { index, sub_regions };
        let bytes = r.to_bytes_for(argsz)?;
        let fds = if argsz >= r.full_size()? {
            self.doorbells[..r.fds_needed()]
                .iter()
                .map(AsRawFd::as_raw_fd)
                .collect()
        } else {
            Vec::new()
        };
        Ok(Reply {
            bytes: encode_reply(header.msg_id, Command::DeviceGetRegionIoFds, &bytes)?,
            fds,
        })
    }

    fn ok(header: &Header, cmd: Command, payload: &[u8]) -> Result<Reply, CommandError> {
        Ok(Reply {
            bytes: encode_reply(header.msg_id, cmd, payload)?,
            fds: Vec::new(),
        })
    }

    fn handle(&mut self, msg: Message, versioned: &mut bool) -> Result<Reply, CommandError> {
        let Message {
            header,
            payload,
            fds,
        } = msg;
        let req = parse_request(&header, &payload)?;
        let cmd = req.command();
        if !*versioned && !matches!(req, Request::Version(_)) {
            return Err(CodecError::Unsupported("a command before VERSION").into());
        }
        if !fds.is_empty() && !req.accepts_fd_count(fds.len()) {
            return Err(CodecError::Unsupported("file descriptors on this command").into());
        }
        match req {
            Request::Version(v) => {
                let ours = v.server_reply(&self.caps)?;
                *versioned = true;
                self.client_max_fds = v.capabilities.max_msg_fds as usize;
                Self::ok(&header, cmd, &ours.to_bytes()?)
            }
            Request::DmaMap(_) => {
                // Guest RAM is never mapped: the pool is the only device-visible memory.
                // The fd (if any) is dropped here.
                self.stats.dma_maps_ignored += 1;
                drop(fds);
                Self::ok(&header, cmd, &[])
            }
            Request::DmaUnmap(u) => Self::ok(&header, cmd, &u.to_bytes()),
            Request::DeviceGetInfo { .. } => {
                let info = DeviceInfo {
                    flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
                    num_regions: NUM_REGIONS,
                    num_irqs: VFIO_PCI_NUM_IRQS,
                };
                Self::ok(&header, cmd, &info.to_bytes())
            }
            Request::DeviceGetRegionInfo { argsz, index } => {
                self.region_info(&header, argsz, index)
            }
            Request::DeviceGetRegionIoFds { argsz, index } => {
                self.region_io_fds(&header, argsz, index)
            }
            Request::DeviceGetIrqInfo { index, .. } => {
                if index >= VFIO_PCI_NUM_IRQS {
                    return Err(CodecError::Unsupported("no such IRQ index").into());
                }
                let flags = match index {
                    VFIO_PCI_INTX_IRQ_INDEX => {
                        IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED
                    }
                    VFIO_PCI_MSIX_IRQ_INDEX => IRQ_INFO_EVENTFD | IRQ_INFO_NORESIZE,
                    _ => IRQ_INFO_EVENTFD,
                };
                let info = IrqInfo {
                    flags,
                    index,
                    count: self.function.irq_count(index),
                };
                Self::ok(&header, cmd, &info.to_bytes())
            }
            Request::DeviceSetIrqs(set) => {
                self.set_irqs(&set, fds)?;
                Self::ok(&header, cmd, &[])
            }
            Request::RegionRead(a) => {
                let mut buf = vec![0u8; a.count as usize];
                self.function.region_read(a.region, a.offset, &mut buf)?;
                let r = RegionAccess::with_data(a.offset, a.region, &buf)?;
                Self::ok(&header, cmd, &r.to_bytes())
            }
            Request::RegionWrite(a) => {
                self.function.region_write(a.region, a.offset, a.data)?;
                let r = RegionAccess { data: &[], ..a };
                Self::ok(&header, cmd, &r.to_bytes())
            }
            Request::DeviceReset => {
                self.function.reset();
                Self::ok(&header, cmd, &[])
            }
            Request::DmaRead(_) | Request::DmaWrite(_) => {
                Err(CodecError::Unsupported("DMA_READ/DMA_WRITE are server-to-client").into())
            }
            Request::RegionWriteMulti(_)
            | Request::DeviceFeature(_)
            | Request::MigDataRead(_)
            | Request::MigDataWrite(_) => {
                Err(CodecError::Unsupported("command not offered").into())
            }
        }
    }

    fn region_info(&self, header: &Header, argsz: u32, index: u32) -> Result<Reply, CommandError> {
        if index >= NUM_REGIONS {
            return Err(CodecError::Unsupported("no such region").into());
        }
        let size = self.function.region_size(index);
        let rw = if size > 0 {
            region::REGION_INFO_FLAG_READ | region::REGION_INFO_FLAG_WRITE
        } else {
            0
        };
        let mut info = RegionInfo {
            flags: rw,
            index,
            size,
            offset: 0,
            sparse_areas: Vec::new(),
        };
        let mut fds = Vec::new();
        if index == REGION_POOL {
            // One sparse area over the whole BAR: the client maps the memfd as RAM, so pool
            // accesses never trap. The fd goes only with the full reply.
            info.flags |= region::REGION_INFO_FLAG_MMAP;
            info.sparse_areas.push(SparseArea { offset: 0, size });
            if argsz >= info.full_size()? {
                fds.push(self.function.pool().fd().as_raw_fd());
            }
        }
        Ok(Reply {
            bytes: encode_reply(
                header.msg_id,
                Command::DeviceGetRegionInfo,
                &info.to_bytes_for(argsz)?,
            )?,
            fds,
        })
    }

    fn set_irqs(&mut self, set: &IrqSet<'_>, fds: Vec<OwnedFd>) -> Result<(), CommandError> {
        let action = match (set.action, set.data) {
            (WireIrqAction::Trigger, IrqSetData::Eventfd) if fds.is_empty() => IrqAction::Disable,
            (WireIrqAction::Trigger, IrqSetData::Eventfd) => IrqAction::Assign(fds),
            (WireIrqAction::Trigger, IrqSetData::None) if set.count == 0 => IrqAction::Disable,
            (WireIrqAction::Trigger, IrqSetData::None) => IrqAction::Trigger,
            (WireIrqAction::Trigger, IrqSetData::Bool(b)) if b.iter().any(|v| *v != 0) => {
                IrqAction::Trigger
            }
            (WireIrqAction::Trigger, IrqSetData::Bool(_)) => return Ok(()),
            (WireIrqAction::Mask | WireIrqAction::Unmask, _) => IrqAction::Mask,
        };
        Ok(self
            .function
            .set_irqs(set.index, set.start, set.count, action)?)
    }
}

/// A new non-blocking, close-on-exec eventfd.
fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd with constant flags; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `poll(2)` on `fds` for `timeout_ms` (-1: forever); whether any is ready. An interrupted
/// wait reports nothing ready.
fn wait_readable(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}

/// Names the client by its process credentials (SO_PEERCRED).
fn peer_name(stream: &UnixStream) -> String {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a properly sized ucred,
    // on a valid socket descriptor borrowed for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        format!("vfio-user client pid={} uid={}", cred.pid, cred.uid)
    } else {
        "vfio-user client (credentials unavailable)".to_string()
    }
}

/// Why a command was refused; each maps to the errno of the error reply.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The message itself is malformed or not supported.
    #[error("malformed or unsupported message")]
    Codec(#[from] CodecError),
    /// A region access outside a region, of a bad width, or failing on the pool file.
    #[error("region access refused")]
    Access(#[from] AccessError),
    /// An interrupt range or fd count that does not fit.
    #[error("interrupt setup refused")]
    Irq(#[from] IrqError),
}

impl CommandError {
    /// The errno of the error reply.
    pub fn errno(&self) -> u32 {
        match self {
            Self::Codec(e) => e.errno(),
            Self::Access(e) => e.errno(),
            Self::Irq(_) => errno::EINVAL,
        }
    }
}
