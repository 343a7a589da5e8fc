//! The guest disk: a ublk server on the SWIOTLB driver. The guest kernel's ublk driver
//! (`ublk_drv`) turns `/dev/ublkbN` requests into commands this process serves; each is
//! bounced through the pool by the virtio-blk driver, so the guest OS can partition, format
//! and mount a disk whose every byte the device sees lies in its pool.
//!
//! - [`uapi`]: the ublk UAPI subset (command numbers, wire structs);
//! - [`control`]: `/dev/ublk-control` (add, set parameters, start, stop, delete);
//! - [`queue`]: one queue's char device, request descriptors, tag buffers and io_uring;
//! - [`params`]: the ublk device's shape from the virtio-blk configuration;
//! - [`engine`]: the loop that serves one queue through one virtqueue;
//! - [`delete`]: deleting a device whose server is gone (`swiotlb-guest ublk-delete`).
//!
//! Why not libublk: the server needs the virtqueue's interrupt eventfd in the same io_uring
//! as the ublk commands, rings restricted to exactly those operations, and no files or
//! threads beyond its own before its seccomp filter goes on; and a build that needs only
//! cargo (libublk runs bindgen, which needs libclang, on every build). The UAPI it uses
//! is seven control and two I/O commands, on the `io-uring` crate.

pub mod control;
pub mod delete;
pub mod engine;
pub mod params;
pub mod queue;
pub mod sandbox;
pub mod uapi;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use crate::block::BlockError;
use crate::pci::PciAccess;
use crate::pool::PoolAccessError;
use crate::BlockDriver;
use control::Control;
use engine::{Engine, EngineStats};
use params::Shape;
use queue::UblkQueue;
use uapi::DevInfo;

/// Errors of the ublk server.
#[derive(Debug, Error)]
pub enum UblkError {
    /// No `/dev/ublk-control`.
    #[error("/dev/ublk-control is missing: load the ublk driver (modprobe ublk_drv)")]
    NoControlDevice,
    /// A device node could not be opened.
    #[error("opening {path}")]
    Open {
        /// The node.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An io_uring call failed.
    #[error("io_uring")]
    Ring(#[source] std::io::Error),
    /// The submission queue had no room (a server bug: it is sized for every tag).
    #[error("the io_uring submission queue is full")]
    RingFull,
    /// The kernel refused a control command.
    #[error("ublk {op} failed: errno {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Command {
        /// The command.
        op: &'static str,
        /// The errno.
        errno: i32,
    },
    /// A queue ended before the device started.
    #[error("a queue ended before the device started")]
    StartAbandoned,
    /// Mapping the descriptors or buffers failed.
    #[error("mapping ublk memory")]
    Map(#[source] PoolAccessError),
    /// The buffers asked for do not fit the address space.
    #[error("queue depth times request size overflows")]
    TooLarge,
    /// The device's configuration is unusable.
    #[error("the device's virtio-blk configuration")]
    Config(#[source] swiotlb_shared::blk::BlkConfigError),
    /// The server could not be confined.
    #[error("confining the server")]
    Sandbox(#[from] sandbox::SandboxError),
    /// The driver failed while setting up.
    #[error("the driver")]
    Driver(#[from] BlockError),
    /// The queue thread panicked or could not start.
    #[error("the queue thread {0}")]
    Thread(&'static str),
    /// `ublk-delete` of a device whose server still runs (without `--force`).
    #[error("ublk device {dev_id} is served by process {pid}, which still runs: stop it (SIGTERM), or delete anyway with --force")]
    ServerRunning {
        /// The device.
        dev_id: u32,
        /// Its server.
        pid: i32,
    },
    /// Signal handling could not be set up.
    #[error("signal handling")]
    Signals(#[source] std::io::Error),
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Device id to ask for (`None`: the kernel picks).
    pub dev_id: Option<u32>,
    /// Tags per queue (`None`: what the ring and the pool hold, at most [`DEFAULT_MAX_DEPTH`]).
    pub depth: Option<u16>,
    /// Largest request, in bytes (a multiple of 4096).
    pub max_io_bytes: u32,
    /// Print the device line as JSON.
    pub json: bool,
    /// Confine the server once the device runs ([`sandbox::confine`]).
    pub sandbox: bool,
}

/// Default most tags per queue: the tag buffers are `depth * max_io_bytes` of memory.
pub const DEFAULT_MAX_DEPTH: u16 = 128;
/// Default largest request (1 MiB, as Linux's virtio-blk allows with its default limits).
pub const DEFAULT_MAX_IO_BYTES: u32 = 1 << 20;

/// What the server did, printed when it stops.
#[derive(Debug, Serialize)]
pub struct ServeSummary {
    /// The block device.
    pub device: String,
    /// Queue depth used.
    pub depth: u16,
    /// Largest request.
    pub max_io_bytes: u32,
    /// Per queue.
    pub queues: Vec<EngineStats>,
    /// Why it stopped: "signal", or "deleted" (the device went away).
    pub stopped_by: &'static str,
}

/// Adds a ublk device backed by `driver`, serves it until SIGTERM or SIGINT or until the
/// device is deleted, then removes it. `on_ready` gets the block device's path once it
/// exists.
pub fn serve<P: PciAccess + Send>(
    driver: &mut BlockDriver<P>,
    opts: &ServeOptions,
    on_ready: impl FnOnce(&str, &DevInfo),
) -> Result<ServeSummary, UblkError> {
    let signals = block_stop_signals()?;
    let config = driver.blk_config();
    let shape = Shape {
        config,
        read_only: driver.info().read_only,
        volatile_cache: driver.has_volatile_cache(),
        max_io_bytes: opts.max_io_bytes,
    };
    let depth = opts
        .depth
        .unwrap_or_else(|| driver.natural_depth().min(DEFAULT_MAX_DEPTH))
        .clamp(1, uapi::MAX_QUEUE_DEPTH);
    // Every virtqueue the driver set up: one ublk hardware queue and one queue thread each.
    let mut siblings = driver.take_queues();
    let nr_hw_queues = 1 + siblings.len() as u16;
    let mut ctl = Control::open()?;
    let mut info = DevInfo {
        nr_hw_queues,
        queue_depth: depth,
        max_io_buf_bytes: opts.max_io_bytes,
        dev_id: opts.dev_id.unwrap_or(u32::MAX),
        flags: uapi::flags::CMD_IOCTL_ENCODE,
        ..DevInfo::default()
    };
    ctl.add(&mut info)?;
    let dev_id = info.dev_id;
    let mut drivers: Vec<&mut BlockDriver<P>> =
        std::iter::once(driver).chain(siblings.iter_mut()).collect();
    // The kernel gives a device at most one hardware queue per CPU and says how many it
    // gave: the virtqueues past that stay set up and idle.
    drivers.truncate(usize::from(info.nr_hw_queues).clamp(1, drivers.len()));
    let result = run_device(
        &mut drivers,
        &mut ctl,
        &info,
        &shape,
        signals,
        opts.sandbox,
        on_ready,
    );
    // Whatever happened, take the device away: stop (its queues then end) and delete.
    let _ = ctl.stop(dev_id);
    let deleted = ctl.delete(dev_id);
    let summary = result?;
    match deleted {
        Ok(())
        | Err(UblkError::Command {
            errno: libc::ENODEV,
            ..
        }) => Ok(summary),
        Err(e) => Err(e),
    }
}

fn run_device<P: PciAccess + Send>(
    drivers: &mut [&mut BlockDriver<P>],
    ctl: &mut Control,
    info: &DevInfo,
    shape: &Shape,
    signals: libc::sigset_t,
    confine: bool,
    on_ready: impl FnOnce(&str, &DevInfo),
) -> Result<ServeSummary, UblkError> {
    let dev_id = info.dev_id;
    ctl.set_params(dev_id, &params::params(shape))?;
    // Queue q of the ublk device is served through virtqueue q, whose interrupt it waits on.
    let cdev = UblkQueue::open_cdev(dev_id)?;
    let mut kqs = Vec::with_capacity(drivers.len());
    for (q, d) in drivers.iter().enumerate() {
        kqs.push(UblkQueue::open(
            &cdev,
            q as u16,
            info.queue_depth,
            info.max_io_buf_bytes as usize,
            d.interrupt_fd(),
        )?);
    }
    // Each queue holds its own descriptor of it.
    drop(cdev);
    // Set when any queue's loop ends: the device was stopped or deleted.
    let finished = Arc::new(AtomicBool::new(false));
    let device = format!("/dev/ublkb{dev_id}");
    let (stats, stopped_by) = std::thread::scope(|s| {
        let mut workers = Vec::with_capacity(kqs.len());
        for (q, (driver, kq)) in drivers.iter_mut().zip(kqs).enumerate() {
            let done = finished.clone();
            let worker = std::thread::Builder::new()
                .name(format!("ublk-q{q}"))
                .spawn_scoped(s, move || {
                    let r = Engine::new(driver, kq).run();
                    done.store(true, Ordering::SeqCst);
                    r
                });
            match worker {
                Ok(w) => workers.push(w),
                Err(_) => {
                    finished.store(true, Ordering::SeqCst);
                    return Err(UblkError::Thread("could not start"));
                }
            }
        }
        let started = ctl.start(
            dev_id,
            std::process::id() as i32,
            Duration::from_millis(100),
            || finished.load(Ordering::SeqCst),
        );
        // Confined once the queues run and the device exists: nothing is opened after
        // this (the filter goes on every thread of the process).
        let started = started.and_then(|()| {
            if confine {
                sandbox::confine()?;
            }
            Ok(())
        });
        let stopped_by = match started {
            Ok(()) => {
                on_ready(&device, info);
                wait_for_stop(&signals, &finished)
            }
            Err(e) => {
                let _ = ctl.stop(dev_id);
                for w in workers {
                    let _ = w.join();
                }
                return Err(e);
            }
        };
        // Stopping the device aborts every fetch, which ends each queue's loop.
        let _ = ctl.stop(dev_id);
        let mut stats = Vec::with_capacity(workers.len());
        for w in workers {
            stats.push(w.join().map_err(|_| UblkError::Thread("panicked"))??);
        }
        Ok((stats, stopped_by))
    })?;
    Ok(ServeSummary {
        device,
        depth: info.queue_depth,
        max_io_bytes: info.max_io_buf_bytes,
        queues: stats,
        stopped_by,
    })
}

fn block_stop_signals() -> Result<libc::sigset_t, UblkError> {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only write it and the signal mask.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(UblkError::Signals(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(set)
}

/// Waits for SIGTERM or SIGINT, or for the queue to end on its own (the device deleted).
fn wait_for_stop(set: &libc::sigset_t, finished: &AtomicBool) -> &'static str {
    let tick = libc::timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    loop {
        if finished.load(Ordering::SeqCst) {
            return "deleted";
        }
        // SAFETY: `set` and `tick` are valid for the call; no siginfo is asked for.
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &tick) };
        if sig == libc::SIGTERM || sig == libc::SIGINT {
            return "signal";
        }
    }
}
