//! The command line of `swiotlb-host`: the flags, their values and how each is checked.

use std::path::PathBuf;

use clap::Parser;
use swiotlb_host::cpus::CpuList;
use swiotlb_host::devices::block::MAX_QUEUES;
use swiotlb_shared::units::parse_size;

/// Serve a virtio-blk device whose only DMA-reachable memory is a SWIOTLB pool BAR.
#[derive(Parser, Debug)]
#[command(name = "swiotlb-host", version)]
pub(crate) struct Args {
    /// Unix socket to listen on (vfio-user).
    #[arg(
        long,
        required_unless_present = "listen_fd",
        conflicts_with = "listen_fd"
    )]
    pub(crate) socket: Option<PathBuf>,
    /// A listening Unix socket passed in: an fd number, or its name in `LISTEN_FDNAMES`
    /// (systemd socket activation).
    #[arg(long, value_name = "FD|NAME")]
    pub(crate) listen_fd: Option<String>,
    /// Raw disk image to serve.
    #[arg(long, required_unless_present = "disk_fd", conflicts_with = "disk_fd")]
    pub(crate) disk: Option<PathBuf>,
    /// The disk image passed in as an open fd: a number, or its name in `LISTEN_FDNAMES`
    /// (systemd `OpenFile=`). No path of the image is then reachable.
    #[arg(long, value_name = "FD|NAME")]
    pub(crate) disk_fd: Option<String>,
    /// Size of the SWIOTLB pool BAR (a power of two, 1M to 1G).
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub(crate) pool_size: u64,
    /// Request queues (1 to 16), each served by a thread of its own once the driver accepts
    /// VIRTIO_BLK_F_MQ (offered when there is more than one). Default: the CPUs this
    /// process may run on, at most 8, as QEMU gives a virtio-blk device a queue per vCPU.
    /// `--queues 1` is the device without MQ, served by the device thread alone.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=MAX_QUEUES as i64))]
    pub(crate) queues: Option<u16>,
    /// Run queue `i`'s thread on the `i`th CPU of LIST (`1`, `2,3`, `4-7`), and every
    /// other thread of the device (the audit writer, the control thread) on the CPUs this
    /// process may run on that LIST leaves (all of them when it leaves none). For a polling
    /// device (`--poll-us`) given a fixed set of CPUs: nothing then preempts a spinning queue
    /// thread. Each CPU must be one the process may run on; without `--queues`, one queue
    /// per CPU listed. Default: the scheduler places every thread.
    #[arg(long, value_name = "LIST")]
    pub(crate) queue_cpus: Option<CpuList>,
    /// Serve the disk read-only.
    #[arg(long)]
    pub(crate) read_only: bool,
    /// How disk I/O is made: `uring` (default) submits the reads and writes of each pass
    /// over a queue together through an io_uring restricted to the image, reading straight
    /// into the pool; `sync` makes one preadv/pwritev per request. Where the kernel refuses
    /// io_uring (kernel.io_uring_disabled, a container profile), `uring` falls back to
    /// `sync` and says so once.
    #[arg(long, value_enum, default_value_t = IoEngineArg::Uring)]
    pub(crate) io_engine: IoEngineArg,
    /// Host cache mode of the image, as QEMU names them: `writeback` (default) through the
    /// page cache; `none` opens it O_DIRECT (requests the filesystem's alignment does not
    /// allow go through an aligned buffer of the device's own).
    #[arg(long, value_enum, default_value_t = CacheArg::Writeback)]
    pub(crate) cache: CacheArg,
    /// Relaxed policy: let a driver that declines VIRTIO_F_SWIOTLB reach FEATURES_OK.
    /// (The default strict policy refuses it.)
    #[arg(long)]
    pub(crate) allow_no_swiotlb: bool,
    /// Attestation: `required` (default) serves no queue until the driver's evidence
    /// verifies; `off` serves without evidence.
    #[arg(long, value_enum, default_value_t = AttestMode::Required)]
    pub(crate) attestation: AttestMode,
    /// Attestation policy (TOML): platforms, minimum TCB, measurements, debug, emulated.
    #[arg(long)]
    pub(crate) attest_policy: Option<PathBuf>,
    /// Accept evidence from the EMULATED platform (CI and the demo only). Needs
    /// `--emulated-ark`.
    #[arg(long)]
    pub(crate) allow_emulated: bool,
    /// Public key of the emulated ARK (`swiotlb-attest emulated-keygen` writes it).
    #[arg(long)]
    pub(crate) emulated_ark: Option<PathBuf>,
    /// Key that signs each verdict's EAT Attestation Result, kept in the audit log (Ed25519
    /// or P-256 PKCS#8, DER or PEM; `swiotlb-attest ear-keygen` writes one). Without it the
    /// EAR is kept unsigned.
    #[arg(long)]
    pub(crate) ear_key: Option<PathBuf>,
    /// Tamper-evident audit log (JSON Lines; files `<stem>.<NNNNNN>.<ext>` beside PATH).
    #[arg(long)]
    pub(crate) audit_log: Option<PathBuf>,
    /// Per-DMA recording: `summary` (counts per interval, findings in full) or `full`
    /// (every descriptor).
    #[arg(long, value_enum, default_value_t = AuditModeArg::Summary)]
    pub(crate) audit_mode: AuditModeArg,
    /// Ed25519 signing key of the audit log (PKCS#8), created when absent (default: beside
    /// the log); its public key is written to FILE.pub for verifiers.
    #[arg(long)]
    pub(crate) audit_key: Option<PathBuf>,
    /// Start the next audit log file when the current one reaches SIZE (default 64M).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) audit_rotate_size: Option<u64>,
    /// Write a signed checkpoint after this many audit records (default 1000; one also
    /// comes every 10 s). A live feed (`swiotlb-audit export --follow`) passes on records
    /// only once a checkpoint covers them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) audit_checkpoint_records: Option<u64>,
    /// Sandbox the process: capabilities dropped; Landlock (only the disk, the socket's
    /// directory and the audit log's directories are reachable; no TCP); an address-space
    /// limit; a seccomp allow-list per thread. On by default.
    #[arg(long, value_enum, default_value_t = SandboxArg::On)]
    pub(crate) sandbox: SandboxArg,
    /// Refuse to start unless the kernel fully enforces the sandbox.
    #[arg(long)]
    pub(crate) require_sandbox: bool,
    /// When started as root, switch to this user (a name, or UID:GID) once the disk, the
    /// socket and the configuration are open.
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// After sandboxing, try to read FILE and print whether the sandbox let it through
    /// (a JSON line on stdout); for checking a deployment. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub(crate) sandbox_probe: Vec<PathBuf>,
    /// After the memory limit, try to map SIZE bytes and print whether it was let through.
    /// Repeatable.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) sandbox_probe_map: Vec<u64>,
    /// Print the sandbox this command line would apply (Landlock paths, seccomp allow-lists
    /// with the reason for each call, the memory limit) as JSON, and exit.
    #[arg(long)]
    pub(crate) print_sandbox: bool,
    /// Once sandboxed, make a forbidden system call (a TCP socket) from the named thread:
    /// the process must die of SIGSYS. Proves the seccomp filter is on.
    #[arg(long, value_enum, value_name = "THREAD")]
    pub(crate) sandbox_probe_syscall: Option<ProbeThread>,
    /// After taking a request, keep polling the rings this many microseconds for the next
    /// before sleeping, with the driver's doorbells suppressed meanwhile (EVENT_IDX). Spends
    /// a CPU while the driver is busy and saves a doorbell and a wake-up per request.
    /// 0 (the default): never poll, sleep until a doorbell.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub(crate) poll_us: u64,
    /// Exit after this many client sessions (default: serve forever).
    #[arg(long)]
    pub(crate) sessions: Option<u64>,
    /// Log filter (tracing `EnvFilter` syntax), also taken from RUST_LOG.
    #[arg(long, default_value = "info")]
    pub(crate) log: String,
}

/// The thread that makes the forbidden call of `--sandbox-probe-syscall`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProbeThread {
    /// The vfio-user and queue thread.
    Device,
    /// The audit log writer (needs `--audit-log`).
    AuditWriter,
}

/// `--io-engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum IoEngineArg {
    /// A restricted io_uring, batched per pass, the pool as a fixed buffer.
    Uring,
    /// One preadv/pwritev per request.
    Sync,
}

/// `--cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CacheArg {
    /// Through the host's page cache.
    Writeback,
    /// O_DIRECT.
    None,
}

/// Whether the process sandboxes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SandboxArg {
    /// Every layer.
    On,
    /// No sandbox (debugging only).
    Off,
}

/// Audit log DMA recording mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AuditModeArg {
    /// Per-interval DMA counts; findings in full.
    Summary,
    /// Every descriptor recorded.
    Full,
}

/// Whether evidence is required before queues are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AttestMode {
    /// Serve no queue until the evidence verifies.
    Required,
    /// Serve without evidence.
    Off,
}

/// Most queues `--queues` takes by default: past a handful, more queues than the guest
/// drives only cost threads, rings and pool areas.
const DEFAULT_QUEUES_MAX: u16 = 8;

impl Args {
    /// `--queues`, or its default: one per CPU of `--queue-cpus` (at most [`MAX_QUEUES`]),
    /// else the CPUs this process may run on (its affinity and CPU quota), at most
    /// [`DEFAULT_QUEUES_MAX`].
    pub(crate) fn queues(&self) -> u16 {
        self.queues.unwrap_or_else(|| {
            if let Some(list) = &self.queue_cpus {
                return u16::try_from(list.cpus().len())
                    .unwrap_or(u16::MAX)
                    .clamp(1, MAX_QUEUES);
            }
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            u16::try_from(cpus)
                .unwrap_or(u16::MAX)
                .clamp(1, DEFAULT_QUEUES_MAX)
        })
    }
}
