//! The ublk control device (`/dev/ublk-control`): adding, configuring, starting, stopping
//! and deleting a ublk device through 80-byte uring commands on a small io_uring of its own.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::uapi::{ctrl, CtrlCmd, DevInfo, Params};
use super::UblkError;

/// Where the kernel's ublk control device is.
pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// An open control device.
pub struct Control {
    file: File,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
}

impl Control {
    /// Opens the control device. A missing device names the module to load.
    pub fn open() -> Result<Self, UblkError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL_PATH)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => UblkError::NoControlDevice,
                _ => UblkError::Open {
                    path: CONTROL_PATH.into(),
                    source: e,
                },
            })?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .build(4)
            .map_err(UblkError::Ring)?;
        Ok(Self { file, ring })
    }

    /// Queues one command without waiting for it.
    fn push(&mut self, op: u32, cmd: CtrlCmd) -> Result<(), UblkError> {
        let sqe = opcode::UringCmd80::new(types::Fd(self.file.as_raw_fd()), op)
            .cmd(cmd.to_bytes())
            .build()
            .user_data(u64::from(op));
        // SAFETY: the command's buffer (`cmd.addr`, when set) is owned by the caller of
        // `command`, which waits for the completion before returning, so it outlives the
        // kernel's use of it.
        unsafe { self.ring.submission().push(&sqe) }.map_err(|_| UblkError::RingFull)?;
        self.ring.submit().map_err(UblkError::Ring)?;
        Ok(())
    }

    /// Waits up to `timeout` (forever: `None`) for the completion of the command in flight:
    /// `Ok(None)` on timeout.
    fn wait(&mut self, op: u32, timeout: Option<Duration>) -> Result<Option<i32>, UblkError> {
        loop {
            if let Some(c) = self.ring.completion().next() {
                let res = c.result();
                if res < 0 {
                    return Err(UblkError::Command {
                        op: op_name(op),
                        errno: -res,
                    });
                }
                return Ok(Some(res));
            }
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
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(UblkError::Ring(e)),
            }
        }
    }

    /// Runs one command to completion.
    fn command(&mut self, op: u32, cmd: CtrlCmd) -> Result<i32, UblkError> {
        self.push(op, cmd)?;
        self.wait(op, None)?.ok_or(UblkError::RingFull)
    }

    /// The driver's `UBLK_F_*` features.
    pub fn features(&mut self) -> Result<u64, UblkError> {
        let mut f = 0u64;
        let cmd = CtrlCmd {
            dev_id: u32::MAX,
            queue_id: u16::MAX,
            len: 8,
            addr: std::ptr::addr_of_mut!(f) as u64,
            ..CtrlCmd::default()
        };
        self.command(ctrl::GET_FEATURES, cmd)?;
        Ok(f)
    }

    /// Adds a device as `info` describes it; the kernel fills in its id (and what it changed).
    pub fn add(&mut self, info: &mut DevInfo) -> Result<(), UblkError> {
        let cmd = CtrlCmd {
            dev_id: info.dev_id,
            queue_id: u16::MAX,
            len: std::mem::size_of::<DevInfo>() as u16,
            addr: std::ptr::from_mut(info) as u64,
            ..CtrlCmd::default()
        };
        self.command(ctrl::ADD_DEV, cmd).map(drop)
    }

    /// What the kernel knows of device `dev_id` (`ENODEV` in the error: there is none).
    pub fn dev_info(&mut self, dev_id: u32) -> Result<DevInfo, UblkError> {
        let mut info = DevInfo::default();
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            len: std::mem::size_of::<DevInfo>() as u16,
            addr: std::ptr::addr_of_mut!(info) as u64,
            ..CtrlCmd::default()
        };
        self.command(ctrl::GET_DEV_INFO, cmd)?;
        Ok(info)
    }

    /// Sets the parameters of a device not yet started.
    pub fn set_params(&mut self, dev_id: u32, params: &Params) -> Result<(), UblkError> {
        let mut p = *params;
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            len: std::mem::size_of::<Params>() as u16,
            addr: std::ptr::addr_of_mut!(p) as u64,
            ..CtrlCmd::default()
        };
        self.command(ctrl::SET_PARAMS, cmd).map(drop)
    }

    /// Starts the device. The kernel answers once every queue has fetched every tag;
    /// `gave_up` is asked every `tick` meanwhile, and a `true` ends the wait with an error
    /// (a queue that failed before it fetched).
    pub fn start(
        &mut self,
        dev_id: u32,
        pid: i32,
        tick: Duration,
        mut gave_up: impl FnMut() -> bool,
    ) -> Result<(), UblkError> {
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            data: pid as u64,
            ..CtrlCmd::default()
        };
        self.push(ctrl::START_DEV, cmd)?;
        loop {
            if self.wait(ctrl::START_DEV, Some(tick))?.is_some() {
                return Ok(());
            }
            if gave_up() {
                return Err(UblkError::StartAbandoned);
            }
        }
    }

    /// Stops the device: its block device goes away and every fetch completes with ABORT.
    pub fn stop(&mut self, dev_id: u32) -> Result<(), UblkError> {
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            ..CtrlCmd::default()
        };
        self.command(ctrl::STOP_DEV, cmd).map(drop)
    }

    /// Deletes a stopped device (the kernel waits until its char device is closed).
    pub fn delete(&mut self, dev_id: u32) -> Result<(), UblkError> {
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            ..CtrlCmd::default()
        };
        self.command(ctrl::DEL_DEV, cmd).map(drop)
    }
}

/// A command's name, for errors.
fn op_name(op: u32) -> &'static str {
    match op {
        ctrl::ADD_DEV => "ADD_DEV",
        ctrl::DEL_DEV => "DEL_DEV",
        ctrl::GET_DEV_INFO => "GET_DEV_INFO",
        ctrl::START_DEV => "START_DEV",
        ctrl::STOP_DEV => "STOP_DEV",
        ctrl::SET_PARAMS => "SET_PARAMS",
        ctrl::GET_FEATURES => "GET_FEATURES",
        _ => "control command",
    }
}
