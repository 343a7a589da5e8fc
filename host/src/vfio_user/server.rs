//! The vfio-user server: one client at a time, each starting from a freshly reset function.
//!
//! Every message is parsed by the codec, which bounds every length; a malformed command gets
//! an error reply and the session goes on; a header that cannot be trusted (the stream
//! cannot be resynchronised) ends the session; the server then takes the next client.
//! Guest RAM offered with DMA_MAP is never mapped, and the server never issues
//! DMA_READ/DMA_WRITE: the pool is the only memory the device reaches.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use swiotlb_shared::vfio_user::device::{
    IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE,
};
use swiotlb_shared::vfio_user::IrqAction as WireIrqAction;
use swiotlb_shared::vfio_user::{
    encode_error_reply, encode_reply, errno, parse_request, region, Capabilities, CodecError,
    Command, DeviceInfo, Header, IrqInfo, IrqSet, IrqSetData, RegionAccess, RegionInfo,
    RegionIoFds, Request, SparseArea, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET,
};

use crate::pci::function::{AccessError, SessionSummary, NUM_REGIONS, REGION_POOL};
use crate::pci::interrupts::{
    IrqAction, IrqError, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_IRQS,
};
use crate::pci::VirtioPciFunction;
use swiotlb_shared::vfio_user::socket::{recv_message, send_message, Message, RecvError};

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The client closed the connection.
    Closed,
    /// The session was ended for a protocol error.
    ProtocolError(String),
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
}

/// A reply to send.
struct Reply {
    bytes: Vec<u8>,
    fds: Vec<RawFd>,
}

/// The server around one function.
pub struct Server {
    function: VirtioPciFunction,
    caps: Capabilities,
    stats: ProtocolStats,
}

impl Server {
    /// A server presenting `function`.
    pub fn new(function: VirtioPciFunction) -> Self {
        Self {
            function,
            caps: Capabilities::local(),
            stats: ProtocolStats::default(),
        }
    }

    /// The function.
    pub fn function(&self) -> &VirtioPciFunction {
        &self.function
    }

    /// Accepts clients one after another; `on_end` is called after each session. With
    /// `max_sessions`, returns after that many.
    pub fn run(
        &mut self,
        listener: &UnixListener,
        max_sessions: Option<u64>,
        mut on_end: impl FnMut(&SessionEnd, &SessionSummary, &ProtocolStats),
    ) -> std::io::Result<()> {
        let mut n = 0u64;
        loop {
            if max_sessions.is_some_and(|m| n >= m) {
                return Ok(());
            }
            let (stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            n += 1;
            let end = self.serve(&stream);
            on_end(&end, &self.function.summary(), &self.stats);
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
        tracing::info!(target: "swiotlb::session", end = ?end, "client disconnected");
        self.function.audit_peripheral(false, &peer);
        end
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
                if index >= NUM_REGIONS {
                    return Err(CodecError::Unsupported("no such region").into());
                }
                let r = RegionIoFds {
                    index,
                    sub_regions: Vec::new(),
                };
                Self::ok(&header, cmd, &r.to_bytes_for(argsz)?)
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
