//! Why the benchmark could not measure.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use swiotlb_attest::emulated::EmulatedError;
use swiotlb_guest::pci::PciError;
use swiotlb_guest::BlockError;
use swiotlb_host::pool::PoolError;
use thiserror::Error;

/// Why the benchmark could not measure: something does not work.
#[derive(Debug, Error)]
pub(crate) enum BenchError {
    /// This executable's path is unknown.
    #[error("locating swiotlb-bench")]
    LocateSelf(#[source] io::Error),
    /// No host binary beside this one.
    #[error("{} not found beside swiotlb-bench: build both with `cargo build --release -p swiotlb-host -p swiotlb-tests --bins`, or name it with --host-bin", .0.display())]
    HostMissing(PathBuf),
    /// An eventfd cannot be made.
    #[error("eventfd")]
    Eventfd(#[source] io::Error),
    /// The baselines' child cannot be started.
    #[error("starting the baseline child")]
    StartChild(#[source] io::Error),
    /// The ping-pong page cannot be made.
    #[error("memfd_create")]
    Memfd(#[source] io::Error),
    /// The ping-pong page cannot be sized.
    #[error("sizing the ping-pong page")]
    SizePage(#[source] io::Error),
    /// The ping-pong page cannot be mapped.
    #[error("mapping the ping-pong page")]
    MapPage(#[source] io::Error),
    /// The shared-memory child stopped answering.
    #[error("the ping-pong child stopped answering")]
    PingPongChildSilent,
    /// The eventfd child stopped answering.
    #[error("the eventfd child did not answer")]
    EventfdChildSilent,
    /// The image cannot be opened for the pread baseline.
    #[error("opening the image")]
    OpenImage(#[source] io::Error),
    /// The pread or pwrite baseline failed.
    #[error("reading or writing the image")]
    ImageIo(#[source] io::Error),
    /// The temporary directory cannot be made.
    #[error("temporary directory")]
    TempDir(#[source] io::Error),
    /// The disk image cannot be created.
    #[error("creating the disk image")]
    CreateDisk(#[source] io::Error),
    /// The disk image cannot be filled.
    #[error("writing the disk image")]
    WriteDisk(#[source] io::Error),
    /// The emulated ARK cannot be made or used.
    #[error("emulated ARK")]
    EmulatedArk(#[source] EmulatedError),
    /// The emulated ARK cannot be written.
    #[error("writing the emulated ARK")]
    WriteArk(#[source] io::Error),
    /// The host cannot be started.
    #[error("starting {}", .0.display())]
    StartHost(PathBuf, #[source] io::Error),
    /// The host ended before its socket appeared.
    #[error("swiotlb-host exited before listening: {0}")]
    HostExitedEarly(ExitStatus),
    /// The host's socket did not appear.
    #[error("swiotlb-host did not start listening in 10 s")]
    HostNotListening,
    /// The driver cannot connect to the host.
    #[error("connecting")]
    Connect(#[source] PciError),
    /// The driver cannot open the device.
    #[error("opening the device")]
    OpenDevice(#[source] BlockError),
    /// The device served without accepting the evidence.
    #[error("attestation not accepted: {0}")]
    NotAttested(String),
    /// The host ended with a failure.
    #[error("swiotlb-host ended with {0}")]
    HostExit(ExitStatus),
    /// The host did not end after its session.
    #[error("swiotlb-host did not exit after its session")]
    HostDidNotExit,
    /// The host cannot be waited for.
    #[error("waiting for swiotlb-host")]
    WaitHost(#[source] io::Error),
    /// A workload's I/O failed.
    #[error("{0}")]
    Workload(&'static str, #[source] BlockError),
    /// The data check's write failed.
    #[error("check write")]
    CheckWrite(#[source] BlockError),
    /// The data check's read failed.
    #[error("check read")]
    CheckRead(#[source] BlockError),
    /// The data check read back something else.
    #[error("data read back differs from what was written")]
    DataDiffers,
    /// The host offered no ioeventfd doorbell.
    #[error("the host offered no doorbell eventfd")]
    NoDoorbellEventfd,
    /// The disk limit's buffer cannot be made.
    #[error("the disk limit's buffer")]
    LimitBuffer(#[source] PoolError),
    /// A read of the disk limit failed.
    #[error("a read of the disk limit")]
    LimitRead(#[source] io::Error),
    /// A disk-limit thread panicked.
    #[error("a disk-limit thread failed")]
    LimitThread,
}
