//! The subset of the Linux ublk UAPI (`include/uapi/linux/ublk_cmd.h`) the server uses:
//! control and I/O command numbers, the control command and device-info structs, the
//! per-request descriptor the driver writes into the mmapped command buffer, and the
//! device parameters. Layouts are those of Linux 6.12 and every later kernel (the
//! parameter block is versioned by its `len`, so a newer kernel takes this shorter one).
//!
//! Wire structs are `#[repr(C)]`, POD with no padding, each with a size assertion.

/// ioctl-style encoding of a command number (`_IOC(dir, 'u', nr, size)`); ublk accepts these
/// on every kernel that has it in the form this server needs (and requires them when the
/// legacy opcodes are configured out).
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'u' as u32) << 8) | nr
}
const IOC_READ: u32 = 2;
const IOC_READ_WRITE: u32 = 3;

/// Control commands (sent to `/dev/ublk-control` as 80-byte uring commands).
pub mod ctrl {
    use super::{ioc, CtrlCmd, IOC_READ, IOC_READ_WRITE};
    const N: usize = std::mem::size_of::<CtrlCmd>();
    /// A device's `DevInfo` (its state and its server's pid among them).
    pub const GET_DEV_INFO: u32 = ioc(IOC_READ, 0x02, N);
    /// Adds a device; the kernel assigns its id when asked with `u32::MAX`.
    pub const ADD_DEV: u32 = ioc(IOC_READ_WRITE, 0x04, N);
    /// Deletes a stopped device (waits until its char device is closed).
    pub const DEL_DEV: u32 = ioc(IOC_READ_WRITE, 0x05, N);
    /// Starts the device: returns once every queue has fetched every tag.
    pub const START_DEV: u32 = ioc(IOC_READ_WRITE, 0x06, N);
    /// Stops the device: the block device goes away, fetches complete with ABORT.
    pub const STOP_DEV: u32 = ioc(IOC_READ_WRITE, 0x07, N);
    /// Sets the device parameters (before START_DEV).
    pub const SET_PARAMS: u32 = ioc(IOC_READ_WRITE, 0x08, N);
    /// The driver's feature flags (`UBLK_F_*`), 8 bytes.
    pub const GET_FEATURES: u32 = ioc(IOC_READ, 0x13, N);
}

/// I/O commands (sent to `/dev/ublkcN` as 16-byte uring commands).
pub mod io {
    use super::{ioc, IoCmd, IOC_READ_WRITE};
    const N: usize = std::mem::size_of::<IoCmd>();
    /// Hands the driver a tag (and its buffer) to deliver a request on.
    pub const FETCH_REQ: u32 = ioc(IOC_READ_WRITE, 0x20, N);
    /// Completes the tag's request with a result and fetches the next one.
    pub const COMMIT_AND_FETCH_REQ: u32 = ioc(IOC_READ_WRITE, 0x21, N);
}

/// A fetch completed with a request for its tag.
pub const IO_RES_OK: i32 = 0;
/// A fetch completed because the device is going away: the tag is not fetched again.
pub const IO_RES_ABORT: i32 = -libc::ENODEV;

/// Most tags per queue.
pub const MAX_QUEUE_DEPTH: u16 = 4096;
/// Offset of queue 0's descriptor array in the char device's mmap space.
pub const CMD_BUF_OFFSET: u64 = 0;

/// Device states (`DevInfo::state`).
pub mod dev_state {
    /// Not started, stopped, or its server died (no recovery).
    pub const DEAD: u16 = 0;
    /// Started: a server serves it.
    pub const LIVE: u16 = 1;
    /// Its server died and the device waits for a new one (user recovery).
    pub const QUIESCED: u16 = 2;
    /// Its server died; requests fail until a new one (user recovery, fail-I/O mode).
    pub const FAIL_IO: u16 = 3;
}

/// Request operations (`op_flags & 0xff`).
pub mod op {
    /// Read: the server fills the tag's buffer, the kernel copies it to the request.
    pub const READ: u8 = 0;
    /// Write: the kernel has copied the request's data into the tag's buffer.
    pub const WRITE: u8 = 1;
    /// Flush the volatile cache.
    pub const FLUSH: u8 = 2;
    /// Discard a range.
    pub const DISCARD: u8 = 3;
    /// Write zeroes to a range.
    pub const WRITE_ZEROES: u8 = 5;
}
/// Request flag: a WRITE_ZEROES that must not deallocate.
pub const IO_F_NOUNMAP: u32 = 1 << 15;

/// Device flags (`UBLK_F_*`) this server asks for.
pub mod flags {
    /// Command numbers are ioctl-encoded.
    pub const CMD_IOCTL_ENCODE: u64 = 1 << 6;
}

/// Device parameter attribute bits (`ublk_param_basic.attrs`).
pub mod attr {
    /// The disk is read-only.
    pub const READ_ONLY: u32 = 1 << 0;
    /// The disk has a volatile write cache (the kernel then sends FLUSH).
    pub const VOLATILE_CACHE: u32 = 1 << 2;
}
/// Parameter types present (`ublk_params.types`).
pub mod param_type {
    /// `basic` is set.
    pub const BASIC: u32 = 1 << 0;
    /// `discard` is set.
    pub const DISCARD: u32 = 1 << 1;
}

/// `struct ublksrv_ctrl_cmd`: the payload of a control uring command.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CtrlCmd {
    /// Device the command is for (`u32::MAX`: any, for ADD_DEV).
    pub dev_id: u32,
    /// Queue (`u16::MAX` when the command is not for a queue).
    pub queue_id: u16,
    /// Length of the buffer at `addr`.
    pub len: u16,
    /// Command-specific buffer, in or out.
    pub addr: u64,
    /// Inline data (START_DEV: the server's pid).
    pub data: u64,
    /// Length of the device path (unprivileged devices only).
    pub dev_path_len: u16,
    /// Padding.
    pub pad: u16,
    /// Reserved.
    pub reserved: u32,
}
const _: () = assert!(std::mem::size_of::<CtrlCmd>() == 32);

/// `struct ublksrv_ctrl_dev_info`: the device as added.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DevInfo {
    /// Queues.
    pub nr_hw_queues: u16,
    /// Tags per queue.
    pub queue_depth: u16,
    /// State (set by the kernel).
    pub state: u16,
    /// Padding.
    pub pad0: u16,
    /// Largest request's buffer, in bytes.
    pub max_io_buf_bytes: u32,
    /// Device id (set by the kernel on ADD_DEV).
    pub dev_id: u32,
    /// The server's pid.
    pub ublksrv_pid: i32,
    /// Padding.
    pub pad1: u32,
    /// `UBLK_F_*` flags.
    pub flags: u64,
    /// Server-private flags.
    pub ublksrv_flags: u64,
    /// Owner (set by the kernel).
    pub owner_uid: u32,
    /// Owner group (set by the kernel).
    pub owner_gid: u32,
    /// Reserved.
    pub reserved1: u64,
    /// Reserved.
    pub reserved2: u64,
}
const _: () = assert!(std::mem::size_of::<DevInfo>() == 64);

/// `struct ublksrv_io_cmd`: the payload of an I/O uring command.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IoCmd {
    /// Queue.
    pub q_id: u16,
    /// Tag.
    pub tag: u16,
    /// Result of the committed request (bytes, or a negative errno).
    pub result: i32,
    /// The tag's buffer in this process.
    pub addr: u64,
}
const _: () = assert!(std::mem::size_of::<IoCmd>() == 16);

impl IoCmd {
    /// The 16 bytes of a uring command.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&self.q_id.to_ne_bytes());
        b[2..4].copy_from_slice(&self.tag.to_ne_bytes());
        b[4..8].copy_from_slice(&self.result.to_ne_bytes());
        b[8..16].copy_from_slice(&self.addr.to_ne_bytes());
        b
    }
}

impl CtrlCmd {
    /// The first 32 of the 80 bytes of a control uring command.
    pub fn to_bytes(self) -> [u8; 80] {
        let mut b = [0u8; 80];
        b[0..4].copy_from_slice(&self.dev_id.to_ne_bytes());
        b[4..6].copy_from_slice(&self.queue_id.to_ne_bytes());
        b[6..8].copy_from_slice(&self.len.to_ne_bytes());
        b[8..16].copy_from_slice(&self.addr.to_ne_bytes());
        b[16..24].copy_from_slice(&self.data.to_ne_bytes());
        b[24..26].copy_from_slice(&self.dev_path_len.to_ne_bytes());
        b
    }
}

/// `struct ublksrv_io_desc`: a request, written by the kernel into the queue's descriptor
/// array before it completes the tag's fetch.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoDesc {
    /// Operation (bits 0-7) and flags (bits 8-31).
    pub op_flags: u32,
    /// Sectors (of 512 bytes).
    pub nr_sectors: u32,
    /// First sector.
    pub start_sector: u64,
    /// The buffer address the server gave with the fetch.
    pub addr: u64,
}
const _: () = assert!(std::mem::size_of::<IoDesc>() == 24);

impl IoDesc {
    /// The operation.
    pub fn op(&self) -> u8 {
        (self.op_flags & 0xff) as u8
    }
}

/// `struct ublk_param_basic`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParamBasic {
    /// `attr::*` bits.
    pub attrs: u32,
    /// log2 of the logical block size.
    pub logical_bs_shift: u8,
    /// log2 of the physical block size.
    pub physical_bs_shift: u8,
    /// log2 of the optimal I/O size.
    pub io_opt_shift: u8,
    /// log2 of the minimum I/O size.
    pub io_min_shift: u8,
    /// Largest request, in sectors.
    pub max_sectors: u32,
    /// Chunk size in sectors (0: none).
    pub chunk_sectors: u32,
    /// Capacity in sectors.
    pub dev_sectors: u64,
    /// Virtual boundary mask (0: none).
    pub virt_boundary_mask: u64,
}
const _: () = assert!(std::mem::size_of::<ParamBasic>() == 32);

/// `struct ublk_param_discard`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParamDiscard {
    /// Alignment of discards, in bytes.
    pub discard_alignment: u32,
    /// Granularity of discards, in bytes.
    pub discard_granularity: u32,
    /// Largest discard, in sectors.
    pub max_discard_sectors: u32,
    /// Largest WRITE_ZEROES, in sectors (0: not supported).
    pub max_write_zeroes_sectors: u32,
    /// Most discard segments in one request.
    pub max_discard_segments: u16,
    /// Reserved.
    pub reserved0: u16,
}
const _: () = assert!(std::mem::size_of::<ParamDiscard>() == 20);

/// `struct ublk_params` up to `discard` and the read-only `devt` and `zoned` blocks (the
/// 6.12 layout; `len` says how much of it the kernel reads).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Params {
    /// Bytes of this struct.
    pub len: u32,
    /// `param_type::*` bits.
    pub types: u32,
    /// Basic parameters.
    pub basic: ParamBasic,
    /// Discard and write-zeroes limits.
    pub discard: ParamDiscard,
    /// Device numbers (read-only; set by the kernel).
    pub devt: [u32; 4],
    /// Zoned parameters (unused).
    pub zoned: [u32; 8],
    /// The C struct's tail padding, explicit so that no byte passed to the kernel is
    /// uninitialized.
    pub pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 112);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_numbers_match_the_kernel_header() {
        // _IOWR('u', 0x04, struct ublksrv_ctrl_cmd) and friends, as the header computes them.
        assert_eq!(ctrl::ADD_DEV, 0xc020_7504);
        assert_eq!(ctrl::DEL_DEV, 0xc020_7505);
        assert_eq!(ctrl::GET_DEV_INFO, 0x8020_7502);
        assert_eq!(ctrl::START_DEV, 0xc020_7506);
        assert_eq!(ctrl::STOP_DEV, 0xc020_7507);
        assert_eq!(ctrl::SET_PARAMS, 0xc020_7508);
        assert_eq!(ctrl::GET_FEATURES, 0x8020_7513);
        assert_eq!(io::FETCH_REQ, 0xc010_7520);
        assert_eq!(io::COMMIT_AND_FETCH_REQ, 0xc010_7521);
    }

    #[test]
    fn command_payloads_are_laid_out_as_the_structs() {
        let b = IoCmd {
            q_id: 1,
            tag: 0x0203,
            result: -5,
            addr: 0x1122_3344_5566_7788,
        }
        .to_bytes();
        assert_eq!(&b[0..2], &1u16.to_ne_bytes());
        assert_eq!(&b[2..4], &0x0203u16.to_ne_bytes());
        assert_eq!(&b[4..8], &(-5i32).to_ne_bytes());
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_ne_bytes());
        let c = CtrlCmd {
            dev_id: u32::MAX,
            queue_id: u16::MAX,
            len: 64,
            addr: 0xdead_beef,
            data: 42,
            ..CtrlCmd::default()
        }
        .to_bytes();
        assert_eq!(&c[0..4], &[0xff; 4]);
        assert_eq!(&c[4..6], &[0xff; 2]);
        assert_eq!(&c[6..8], &64u16.to_ne_bytes());
        assert_eq!(&c[16..24], &42u64.to_ne_bytes());
        assert!(c[32..].iter().all(|&x| x == 0));
    }
}
