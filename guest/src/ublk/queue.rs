//! One ublk queue's kernel side: its char device (`/dev/ublkcN`), the read-only array of
//! request descriptors the kernel writes, the server's own I/O buffers (one per tag), and
//! an io_uring that carries the fetch and commit commands and, when the device has an
//! interrupt, reads of its eventfd.
//!
//! The ring is created disabled and restricted before it is enabled: it accepts only
//! uring commands and reads, and only on its two registered files (the char device and the
//! interrupt eventfd). Whatever the rest of the process does, this ring cannot be turned
//! into a way to open, read or write anything else.
//!
//! Why the server keeps buffers of its own: Linux 6.12's ublk pins the server's buffer to
//! copy a request's data, and a BAR mapping (`VM_IO | VM_PFNMAP`) cannot be pinned. So data
//! moves kernel <-> these buffers (the kernel's copy) and these buffers <-> the pool (the
//! driver's bounce): one copy more than a virtio-blk driver in the kernel makes.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use io_uring::{cqueue, opcode, register::Restriction, squeue, types, IoUring};

use super::uapi::{io, IoCmd, IoDesc, CMD_BUF_OFFSET};
use super::UblkError;
use crate::pool::Mapping;

/// Registered file index of the char device.
const CDEV: types::Fixed = types::Fixed(0);
/// Registered file index of the interrupt eventfd.
const IRQ: types::Fixed = types::Fixed(1);
/// `user_data` of the eventfd read (tags are below 4096).
pub const IRQ_TOKEN: u64 = u64::MAX;

/// What a completion on the queue's ring says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The kernel delivered a request on `tag` (its descriptor is ready to read).
    Request(u16),
    /// The kernel will not deliver on `tag` again: the device is stopping.
    Aborted(u16),
    /// A fetch or commit on `tag` failed with this errno.
    Failed(u16, i32),
    /// The device's interrupt fired (or its read failed: the event only says to look).
    Interrupt,
}

/// Page size for the descriptor array's mapping.
fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|p| *p > 0).unwrap_or(4096)
}

/// One queue of a ublk device, as the server sees it.
pub struct UblkQueue {
    q_id: u16,
    depth: u16,
    buf_bytes: usize,
    _cdev: File,
    descs: Mapping,
    bufs: Mapping,
    ring: IoUring,
    has_irq: bool,
    irq_buf: Box<[u8; 8]>,
}

impl UblkQueue {
    /// Opens device `dev_id`'s char device, which every queue of the server shares: the
    /// kernel lets it be opened once at a time.
    pub fn open_cdev(dev_id: u32) -> Result<File, UblkError> {
        open_when_present(&format!("/dev/ublkc{dev_id}"))
    }

    /// Sets up queue `q_id` of the device whose char device is `cdev` ([`open_cdev`](
    /// Self::open_cdev)) with `depth` tags of `buf_bytes` each, and an optional interrupt
    /// eventfd to watch.
    pub fn open(
        cdev: &File,
        q_id: u16,
        depth: u16,
        buf_bytes: usize,
        irq: Option<BorrowedFd<'_>>,
    ) -> Result<Self, UblkError> {
        let cdev = cdev.try_clone().map_err(|source| UblkError::Open {
            path: "the ublk char device".into(),
            source,
        })?;
        let page = page_size();
        let desc_len = (usize::from(depth) * std::mem::size_of::<IoDesc>()).div_ceil(page) * page;
        // The kernel places queue q's descriptors q strides past the offset, a stride being
        // what the deepest queue needs (`UBLK_MAX_QUEUE_DEPTH`), whatever the depth in use.
        let stride = (usize::from(super::uapi::MAX_QUEUE_DEPTH) * std::mem::size_of::<IoDesc>())
            .div_ceil(page)
            * page;
        let off = CMD_BUF_OFFSET + u64::from(q_id) * stride as u64;
        let descs =
            Mapping::shared_read_only(cdev.as_fd(), off, desc_len).map_err(UblkError::Map)?;
        let total = usize::from(depth)
            .checked_mul(buf_bytes)
            .ok_or(UblkError::TooLarge)?;
        let bufs = Mapping::private_anonymous(total).map_err(UblkError::Map)?;
        let entries = u32::from(depth).saturating_add(2).next_power_of_two();
        let ring = IoUring::builder()
            .setup_r_disabled()
            .setup_cqsize(entries * 2)
            .build(entries)
            .map_err(UblkError::Ring)?;
        let sub = ring.submitter();
        let mut files = vec![cdev.as_raw_fd()];
        if let Some(fd) = irq {
            files.push(fd.as_raw_fd());
        }
        sub.register_files(&files).map_err(UblkError::Ring)?;
        let mut rules = [
            Restriction::sqe_op(opcode::UringCmd16::CODE),
            Restriction::sqe_op(opcode::Read::CODE),
            Restriction::sqe_flags_required(squeue::Flags::FIXED_FILE.bits()),
            Restriction::sqe_flags_allowed(squeue::Flags::FIXED_FILE.bits()),
        ];
        sub.register_restrictions(&mut rules)
            .map_err(UblkError::Ring)?;
        sub.register_enable_rings().map_err(UblkError::Ring)?;
        Ok(Self {
            q_id,
            depth,
            buf_bytes,
            _cdev: cdev,
            descs,
            bufs,
            ring,
            has_irq: irq.is_some(),
            irq_buf: Box::new([0u8; 8]),
        })
    }

    /// Tags of this queue.
    pub fn depth(&self) -> u16 {
        self.depth
    }

    /// Bytes of each tag's buffer.
    pub fn buf_bytes(&self) -> usize {
        self.buf_bytes
    }

    fn buf_addr(&self, tag: u16) -> u64 {
        self.bufs.as_mut_ptr() as u64 + u64::from(tag) * self.buf_bytes as u64
    }

    /// The request descriptor of `tag`, read once. The kernel wrote it before it completed
    /// the tag's fetch and does not change it until the tag is committed.
    pub fn desc(&self, tag: u16) -> Option<IoDesc> {
        if tag >= self.depth {
            return None;
        }
        let at = usize::from(tag) * std::mem::size_of::<IoDesc>();
        // SAFETY: `at + 24` lies inside the mapping (tag < depth, and the mapping covers
        // depth descriptors); the kernel aligns the array to a page and the struct to 8
        // bytes. A volatile read takes one private copy of what may change under us.
        Some(unsafe { std::ptr::read_volatile(self.descs.as_mut_ptr().add(at).cast::<IoDesc>()) })
    }

    /// The whole buffer area: `depth` buffers of `buf_bytes`, tag after tag. Only this
    /// thread and the kernel (inside this thread's `io_uring_enter`, for the tags it
    /// delivers or is committed) touch it; a slice handed out here must not be held across
    /// [`wait`](Self::wait).
    pub fn buffers(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `depth * buf_bytes` bytes of private anonymous memory owned
        // by this queue; `&mut self` makes this the only Rust view of it while it lives, and
        // the kernel writes it only while this thread is inside `wait` (which needs `&mut
        // self` too, so no slice from here is alive then).
        unsafe { std::slice::from_raw_parts_mut(self.bufs.as_mut_ptr(), self.bufs.byte_len()) }
    }

    fn push(&mut self, sqe: &squeue::Entry) -> Result<(), UblkError> {
        // SAFETY: every entry refers to memory owned by this queue (the tag buffers, the
        // eventfd buffer), which lives as long as the ring.
        unsafe { self.ring.submission().push(sqe) }.map_err(|_| UblkError::RingFull)
    }

    fn io_cmd(&mut self, op: u32, tag: u16, result: i32) -> Result<(), UblkError> {
        let cmd = IoCmd {
            q_id: self.q_id,
            tag,
            result,
            addr: self.buf_addr(tag),
        };
        let sqe = opcode::UringCmd16::new(CDEV, op)
            .cmd(cmd.to_bytes())
            .build()
            .user_data(u64::from(tag));
        self.push(&sqe)
    }

    /// Queues a fetch for every tag (submitted with the next [`wait`](Self::wait)).
    pub fn fetch_all(&mut self) -> Result<(), UblkError> {
        for tag in 0..self.depth {
            self.io_cmd(io::FETCH_REQ, tag, 0)?;
        }
        Ok(())
    }

    /// Queues the commit of `tag`'s request with `result` (bytes, or a negative errno) and
    /// the fetch of its next one.
    pub fn commit(&mut self, tag: u16, result: i32) -> Result<(), UblkError> {
        self.io_cmd(io::COMMIT_AND_FETCH_REQ, tag, result)
    }

    /// Queues a read of the interrupt eventfd, when the queue has one.
    pub fn arm_irq(&mut self) -> Result<(), UblkError> {
        if !self.has_irq {
            return Ok(());
        }
        let sqe = opcode::Read::new(IRQ, self.irq_buf.as_mut_ptr(), 8)
            .build()
            .user_data(IRQ_TOKEN);
        self.push(&sqe)
    }

    /// Submits what is queued and waits for at least one completion, or `timeout`
    /// (`None`: forever); then hands every completion to `on`.
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
        mut on: impl FnMut(Event),
    ) -> Result<(), UblkError> {
        let r = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => return Err(UblkError::Ring(e)),
        }
        for c in self.ring.completion() {
            on(classify(&c));
        }
        Ok(())
    }
}

/// What one completion means.
fn classify(c: &cqueue::Entry) -> Event {
    let ud = c.user_data();
    if ud == IRQ_TOKEN {
        return Event::Interrupt;
    }
    let tag = (ud & 0xffff) as u16;
    match c.result() {
        super::uapi::IO_RES_OK => Event::Request(tag),
        super::uapi::IO_RES_ABORT => Event::Aborted(tag),
        r => Event::Failed(tag, -r),
    }
}

/// Opens a device node the kernel (devtmpfs) creates a moment after the device is added.
fn open_when_present(path: &str) -> Result<File, UblkError> {
    let mut last = None;
    for _ in 0..200 {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(UblkError::Open {
                    path: path.into(),
                    source: e,
                })
            }
        }
    }
    Err(UblkError::Open {
        path: path.into(),
        source: last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT)),
    })
}
