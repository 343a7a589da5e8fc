//! `swiotlb-host`: serves a virtio-blk PCI function over vfio-user whose only
//! device-visible memory is the SWIOTLB pool.

mod args;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use serde_json::Value;
use swiotlb_attest::ear::{EarError, EarSigner};
use swiotlb_attest::emulated::EmulatedError;
use swiotlb_attest::policy::PolicyError;
use swiotlb_host::audit::{AuditError, WriterSetupError};
use swiotlb_host::cpus::{self, CpuError, CpuList, Placement};
use swiotlb_host::devices::block::{disk::DiskImage, Block, CacheMode, IoEngine};
use swiotlb_host::fds::{FdError, Passed};
use swiotlb_host::pool::PoolError;
use swiotlb_host::sandbox::{self, landlock, limits, privileges, seccomp, SandboxError};
use swiotlb_host::stop::{signal_name, StopSignals, STOP_DEADLINE};
use swiotlb_host::vfio_user::{Server, SessionEnd};
use swiotlb_host::virtio::workers::worker_threads;
use swiotlb_host::virtio::Policy;
use swiotlb_host::VirtioPciFunction;
use swiotlb_shared::error_chain;
use thiserror::Error;

use args::{Args, AttestMode, AuditModeArg, CacheArg, IoEngineArg, ProbeThread, SandboxArg};

/// Why the device did not start, or stopped.
#[derive(Debug, Error)]
enum HostError {
    /// `--queue-cpus` cannot be applied.
    #[error("--queue-cpus")]
    QueueCpus(#[source] CpuError),
    /// The queue worker threads could not be started.
    #[error("starting the queue workers")]
    QueueWorkers(#[source] swiotlb_host::virtio::WorkerError),
    /// `--require-sandbox` with `--sandbox off`.
    #[error("--require-sandbox contradicts --sandbox off")]
    RequireSandboxOff,
    /// `--sandbox-probe-syscall` with `--sandbox off`.
    #[error("--sandbox-probe-syscall needs the sandbox on")]
    ProbeNeedsSandbox,
    /// `--sandbox-probe-syscall audit-writer` without an audit log.
    #[error("--sandbox-probe-syscall audit-writer needs --audit-log")]
    ProbeNeedsAuditLog,
    /// Neither `--disk` nor `--disk-fd`.
    #[error("--disk or --disk-fd is required")]
    NoDisk,
    /// Neither `--socket` nor `--listen-fd`.
    #[error("--socket or --listen-fd is required")]
    NoSocket,
    /// `--allow-emulated` without the key to check emulated evidence with.
    #[error("--allow-emulated needs --emulated-ark FILE")]
    AllowEmulatedNeedsArk,
    /// Attestation options with `--attestation off`.
    #[error("--allow-emulated, --attest-policy and --ear-key need --attestation required")]
    AttestationOptionsNeedRequired,
    /// The policy file cannot be read.
    #[error("reading policy {}", .0.display())]
    ReadPolicy(PathBuf, #[source] io::Error),
    /// The policy file is not a policy.
    #[error("policy {}", .0.display())]
    Policy(PathBuf, #[source] PolicyError),
    /// The emulated ARK public key file cannot be read.
    #[error("reading emulated ARK {}", .0.display())]
    ReadEmulatedArk(PathBuf, #[source] io::Error),
    /// The emulated ARK public key file does not hold a key.
    #[error("emulated ARK {}", .0.display())]
    EmulatedArk(PathBuf, #[source] EmulatedError),
    /// The EAR signing key file cannot be read.
    #[error("reading EAR key {}", .0.display())]
    ReadEarKey(PathBuf, #[source] io::Error),
    /// The EAR signing key file does not hold a usable key.
    #[error("EAR key {}", .0.display())]
    EarKey(PathBuf, #[source] EarError),
    /// The passed-in fds (`LISTEN_FDS`) are unusable.
    #[error(transparent)]
    PassedFds(FdError),
    /// The disk image cannot be opened.
    #[error("opening disk image {}", .0.display())]
    OpenDisk(PathBuf, #[source] io::Error),
    /// The passed-in disk image fd is unusable.
    #[error("disk image fd")]
    DiskFd(#[source] FdError),
    /// The disk image (its path or fd) cannot be served.
    #[error("disk image {0}")]
    Disk(String, #[source] io::Error),
    /// The pool cannot be created.
    #[error("creating the pool")]
    Pool(#[source] PoolError),
    /// SIGTERM and SIGINT cannot be routed to the orderly stop.
    #[error("blocking SIGTERM and SIGINT for the orderly stop")]
    StopSignals(#[source] io::Error),
    /// The image could not be flushed at the orderly stop.
    #[error("flushing the disk image {0} at the stop")]
    FlushDisk(String, #[source] io::Error),
    /// A stale socket cannot be removed.
    #[error("removing stale socket {}", .0.display())]
    RemoveStaleSocket(PathBuf, #[source] io::Error),
    /// The socket (its temporary path) cannot be bound.
    #[error("binding {}", .0.display())]
    Bind(PathBuf, #[source] io::Error),
    /// The socket's mode cannot be set.
    #[error("restricting {}", .0.display())]
    RestrictSocket(PathBuf, #[source] io::Error),
    /// The socket cannot be renamed into place.
    #[error("moving the socket to {}", .0.display())]
    MoveSocket(PathBuf, #[source] io::Error),
    /// The passed-in listening socket fd is unusable.
    #[error("listening socket fd")]
    ListenFd(#[source] FdError),
    /// An audit directory cannot be created.
    #[error("creating the audit directory {}", .0.display())]
    AuditDirectory(PathBuf, #[source] io::Error),
    /// A layer of the sandbox (user, privileges, a limit, a seccomp filter) failed.
    #[error(transparent)]
    Sandbox(SandboxError),
    /// The filesystem sandbox failed.
    #[error("sandbox")]
    RestrictFiles(#[source] SandboxError),
    /// The audit log cannot be opened.
    #[error("opening the audit log {}", .0.display())]
    OpenAuditLog(PathBuf, #[source] AuditError),
    /// `--sandbox-probe-syscall`: the forbidden call came back instead of killing.
    #[error("the forbidden call returned")]
    ForbiddenCallReturned(#[source] io::Error),
    /// Accepting or serving clients failed.
    #[error("accepting clients")]
    Serve(#[source] io::Error),
    /// The audit log could not be closed cleanly.
    #[error("closing the audit log")]
    CloseAuditLog(#[source] AuditError),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: a stderr that cannot be written must not turn an error into a panic.
            let _ = writeln!(
                std::io::stderr(),
                "swiotlb-host: error: {}",
                error_chain(&e)
            );
            ExitCode::FAILURE
        }
    }
}

/// The evidence verifier from the policy file and flags.
fn verifier(args: &Args) -> Result<swiotlb_attest::Verifier, HostError> {
    let mut policy = match &args.attest_policy {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|source| HostError::ReadPolicy(p.clone(), source))?;
            swiotlb_attest::Policy::from_toml(&text)
                .map_err(|source| HostError::Policy(p.clone(), source))?
        }
        None => swiotlb_attest::Policy::default(),
    };
    if args.allow_emulated {
        policy.allow_emulated = true;
    }
    let mut v = swiotlb_attest::Verifier::new(policy.clone());
    match (&args.emulated_ark, policy.allow_emulated) {
        (Some(path), _) => {
            let key = std::fs::read(path)
                .map_err(|source| HostError::ReadEmulatedArk(path.clone(), source))?;
            let ev = swiotlb_attest::emulated::Verifier::new(&key)
                .map_err(|source| HostError::EmulatedArk(path.clone(), source))?;
            tracing::warn!("EMULATED attestation platform configured: for CI and demos only");
            v = v.with_emulated(ev);
        }
        (None, true) => return Err(HostError::AllowEmulatedNeedsArk),
        (None, false) => {}
    }
    if let Some(path) = &args.ear_key {
        let key =
            std::fs::read(path).map_err(|source| HostError::ReadEarKey(path.clone(), source))?;
        let signer = EarSigner::from_pkcs8(&key)
            .map_err(|source| HostError::EarKey(path.clone(), source))?;
        v = v.with_ear_signer(signer);
    }
    Ok(v)
}

/// The audit writer's sandbox: its seccomp filter.
fn audit_writer_sandbox() -> Result<(), HostError> {
    seccomp::install(seccomp::Role::AuditWriter).map_err(HostError::Sandbox)
}

/// The audit writer's sandbox, then a forbidden call (`--sandbox-probe-syscall
/// audit-writer`).
fn audit_writer_sandbox_then_forbidden_call() -> Result<(), HostError> {
    audit_writer_sandbox()?;
    Err(HostError::ForbiddenCallReturned(
        seccomp::probe_forbidden_call(),
    ))
}

/// The socket path while the process may still remove it: a start that fails after binding
/// leaves no socket behind. Disarmed before the device thread's seccomp filter, which
/// allows no removal.
struct BoundSocket {
    path: Option<PathBuf>,
}

impl BoundSocket {
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds `path` (removing a stale socket), under a temporary name renamed into place once
/// listening, so a client that sees the path can always connect.
fn bind(path: &Path) -> Result<(UnixListener, BoundSocket), HostError> {
    if path.exists() {
        std::fs::remove_file(path)
            .map_err(|source| HostError::RemoveStaleSocket(path.to_path_buf(), source))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).map_err(|source| HostError::Bind(tmp.clone(), source))?;
    let guard = BoundSocket {
        path: Some(tmp.clone()),
    };
    // Only the owner may connect: the socket is the device.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| HostError::RestrictSocket(tmp.clone(), source))?;
    std::fs::rename(&tmp, path)
        .map_err(|source| HostError::MoveSocket(path.to_path_buf(), source))?;
    let mut guard = guard;
    guard.path = Some(path.to_path_buf());
    Ok((listener, guard))
}

/// Prints one JSON event line on stdout.
///
/// The events are for the operator; the audit log is the record. A stdout that cannot take
/// them (a closed pipe, a full disk) must not stop the device, and `println!` would panic
/// (in the sandbox, the panic's own report would then die of a call the filter refuses):
/// the first failure is said once on stderr, and later events are dropped.
fn event(v: serde_json::Value) {
    static DROPPING: AtomicBool = AtomicBool::new(false);
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{v}").and_then(|()| out.flush()) {
        if !DROPPING.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %e,
                "stdout cannot take event lines: dropping them from now on (the audit log is not affected)"
            );
        }
    }
}

/// Drops privileges and restricts the filesystem, before any thread starts.
fn sandbox_process(args: &Args, user: Option<&privileges::User>) -> Result<Value, HostError> {
    let dropped = privileges::drop_privileges(user).map_err(HostError::Sandbox)?;
    let e = sandbox::restrict_files(&allowed_paths(args), args.require_sandbox)
        .map_err(HostError::RestrictFiles)?;
    match e {
        sandbox::Enforcement::Full => tracing::info!(landlock = e.name(), "filesystem sandboxed"),
        _ => tracing::warn!(
            landlock = e.name(),
            "sandbox weaker than asked: this kernel lacks Landlock features"
        ),
    }
    Ok(serde_json::json!({
        "landlock": e.name(),
        "uid": dropped.uid,
        "gid": dropped.gid,
        "switched_user": dropped.switched,
        "capabilities": "none",
    }))
}

/// The Landlock rules for this command line.
fn allowed_paths(args: &Args) -> landlock::Allowed {
    landlock::Allowed {
        disk: args.disk.clone(),
        read_only: args.read_only,
        socket: args.socket.clone(),
        audit: args
            .audit_log
            .iter()
            .chain(args.audit_key.iter())
            .cloned()
            .collect(),
    }
}

/// `--print-sandbox`: what this command line would apply.
fn print_sandbox(args: &Args) {
    let calls = |r| seccomp::allowed_syscalls(r);
    let mut seccomp = serde_json::json!({
        "device": calls(seccomp::Role::Device),
    });
    if args.audit_log.is_some() {
        seccomp["audit-writer"] = serde_json::json!(calls(seccomp::Role::AuditWriter));
    }
    let workers = worker_threads(args.queues());
    if workers > 0 {
        seccomp["queue-worker"] = serde_json::json!(calls(seccomp::Role::QueueWorker));
    }
    let plan = serde_json::json!({
        "sandbox": args.sandbox == SandboxArg::On,
        "user": args.user,
        "landlock": allowed_paths(args),
        "address_space_limit": limits::address_space_limit(args.pool_size, workers),
        "queue_workers": workers,
        "seccomp": seccomp,
        "default_action": "kill process",
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&plan).unwrap_or_else(|e| e.to_string())
    );
}

/// Runs the operator's file and memory probes, printing one event each.
fn run_probes(args: &Args) {
    for p in &args.sandbox_probe {
        let r = sandbox::probe(p);
        event(serde_json::json!({
            "event": "sandbox_probe",
            "path": p.display().to_string(),
            "allowed": r.is_ok(),
            "error": r.err().map(|e| e.to_string()),
        }));
    }
    for &bytes in &args.sandbox_probe_map {
        let r = limits::probe_map(bytes);
        event(serde_json::json!({
            "event": "sandbox_probe_map",
            "bytes": bytes,
            "allowed": r.is_ok(),
            "error": r.err().map(|e| e.to_string()),
        }));
    }
}

/// Ensures the audit directories exist before the sandbox, which allows no directory
/// creation.
fn audit_directories(args: &Args) -> Result<(), HostError> {
    let paths = args.audit_log.iter().chain(args.audit_key.iter());
    for p in paths {
        let dir = landlock::dir_of(p).map_err(HostError::Sandbox)?;
        std::fs::create_dir_all(&dir)
            .map_err(|source| HostError::AuditDirectory(dir.clone(), source))?;
    }
    Ok(())
}

/// Checks `--queue-cpus` against the CPUs this process may run on and moves this thread
/// (and so every thread it starts after) to the CPUs the queues leave.
fn place_threads(list: &CpuList, queues: u16) -> Result<Placement, HostError> {
    let allowed = cpus::allowed().map_err(HostError::QueueCpus)?;
    let p = Placement::new(list, queues, &allowed).map_err(HostError::QueueCpus)?;
    if p.shares() {
        tracing::warn!(
            cpus = %allowed,
            "--queue-cpus names every CPU this process may run on: the audit writer and the \
             control thread share the queues' CPUs"
        );
    }
    cpus::pin_current_thread(p.others()).map_err(HostError::QueueCpus)?;
    tracing::info!(queue_cpus = %list, other_threads = %p.others(), "threads placed");
    Ok(p)
}

fn run(args: &Args) -> Result<(), HostError> {
    if args.print_sandbox {
        print_sandbox(args);
        return Ok(());
    }
    let on = args.sandbox == SandboxArg::On;
    if !on && args.require_sandbox {
        return Err(HostError::RequireSandboxOff);
    }
    if !on && args.sandbox_probe_syscall.is_some() {
        return Err(HostError::ProbeNeedsSandbox);
    }
    if args.sandbox_probe_syscall == Some(ProbeThread::AuditWriter) && args.audit_log.is_none() {
        return Err(HostError::ProbeNeedsAuditLog);
    }
    // Before any thread exists, so that every thread inherits the mask.
    let stop = StopSignals::block().map_err(HostError::StopSignals)?;
    // Also before any thread: the threads started after take the CPUs the queues leave.
    let placement = args
        .queue_cpus
        .as_ref()
        .map(|list| place_threads(list, args.queues()))
        .transpose()?;
    let mut passed = Passed::from_env().map_err(HostError::PassedFds)?;
    let (disk_file, disk_name) = match (&args.disk, &args.disk_fd) {
        (Some(path), _) => (
            OpenOptions::new()
                .read(true)
                .write(!args.read_only)
                .open(path)
                .map_err(|source| HostError::OpenDisk(path.clone(), source))?,
            path.display().to_string(),
        ),
        (None, Some(spec)) => (
            passed
                .disk(spec, args.read_only)
                .map_err(HostError::DiskFd)?,
            format!("fd {spec}"),
        ),
        (None, None) => return Err(HostError::NoDisk),
    };
    // A passed-in listener is checked before this process opens anything of its own (the
    // pool, the disk ring), so a number that was not passed is reported as not open rather
    // than found to be one of ours.
    let passed_listener = match (&args.socket, &args.listen_fd) {
        (None, Some(spec)) => Some(passed.listener(spec).map_err(HostError::ListenFd)?),
        _ => None,
    };
    // A second descriptor of the image, to flush it at the orderly stop.
    let disk_sync = disk_file
        .try_clone()
        .map_err(|source| HostError::Disk(disk_name.clone(), source))?;
    let cache = match args.cache {
        CacheArg::Writeback => CacheMode::Writeback,
        CacheArg::None => CacheMode::None,
    };
    let disk = DiskImage::with_cache(disk_file, args.read_only, cache)
        .map_err(|source| HostError::Disk(disk_name.clone(), source))?;
    let engine = match args.io_engine {
        IoEngineArg::Uring => IoEngine::Uring,
        IoEngineArg::Sync => IoEngine::Sync,
    };
    let capacity = disk.capacity();
    let policy = Policy {
        require_swiotlb: !args.allow_no_swiotlb,
    };
    // The ring is set up here, with the pool, before privileges are dropped and long
    // before the device thread's seccomp filter.
    let queues = args.queues();
    let block = Block::new(disk).with_queues(queues).with_io_engine(engine);
    let mut function =
        VirtioPciFunction::new(Box::new(block), args.pool_size, policy).map_err(HostError::Pool)?;
    if args.attestation == AttestMode::Required {
        function = function.with_attestation(Box::new(verifier(args)?));
    } else if args.allow_emulated || args.attest_policy.is_some() || args.ear_key.is_some() {
        return Err(HostError::AttestationOptionsNeedRequired);
    }
    let user = args
        .user
        .as_deref()
        .map(privileges::User::resolve)
        .transpose()
        .map_err(HostError::Sandbox)?;
    audit_directories(args)?;
    let (listener, mut bound, socket_name) = match (&args.socket, &args.listen_fd) {
        (Some(path), _) => {
            let (l, g) = bind(path)?;
            (l, g, path.display().to_string())
        }
        (None, Some(spec)) => (
            passed_listener.ok_or(HostError::NoSocket)?,
            BoundSocket { path: None },
            format!("fd {spec}"),
        ),
        (None, None) => return Err(HostError::NoSocket),
    };

    // The sandbox, before any thread starts.
    let mut report = if on {
        sandbox_process(args, user.as_ref())?
    } else {
        tracing::warn!("sandbox OFF: the device process can reach every file this user can");
        if let Some(u) = &user {
            privileges::drop_privileges(Some(u)).map_err(HostError::Sandbox)?;
        }
        serde_json::json!({ "landlock": "off" })
    };

    let audit = match &args.audit_log {
        Some(path) => {
            let mut cfg = swiotlb_host::audit::AuditConfig::new(path);
            cfg.mode = match args.audit_mode {
                AuditModeArg::Summary => swiotlb_host::audit::AuditMode::Summary,
                AuditModeArg::Full => swiotlb_host::audit::AuditMode::Full,
            };
            cfg.key_path = args.audit_key.clone();
            if let Some(size) = args.audit_rotate_size {
                cfg.rotate_bytes = Some(size);
            }
            if let Some(n) = args.audit_checkpoint_records {
                cfg.checkpoint_every_records = n;
            }
            if on {
                // The audit log keeps the setup's error whole, as its error's source.
                let setup: fn() -> Result<(), WriterSetupError> = match args.sandbox_probe_syscall {
                    Some(ProbeThread::AuditWriter) => {
                        || Ok(audit_writer_sandbox_then_forbidden_call()?)
                    }
                    _ => || Ok(audit_writer_sandbox()?),
                };
                cfg.writer_setup = Some(setup);
            }
            let id = function.gate().instance_id();
            let identity = swiotlb_shared::audit::DeviceIdentity {
                uid: id.iter().map(|b| format!("{b:02x}")).collect(),
                name: format!("virtio-blk swiotlb ({disk_name})"),
            };
            let (log, handle) = swiotlb_host::audit::AuditLog::open(cfg, identity)
                .map_err(|source| HostError::OpenAuditLog(path.clone(), source))?;
            tracing::info!(
                audit_log = %path.display(),
                key = %log.key_path().display(),
                verifier_key = %log.verifier_key(),
                "audit log open"
            );
            function = function.with_audit(handle);
            Some(log)
        }
        None => None,
    };

    // A parked thread per queue, each with its own filter, before the device thread's
    // filter (which allows no new thread) and the address-space limit.
    let filter = if on {
        Some(std::sync::Arc::new(
            seccomp::compile(seccomp::Role::QueueWorker).map_err(HostError::Sandbox)?,
        ))
    } else {
        None
    };
    function = function
        .with_queue_workers(filter, placement.as_ref())
        .map_err(HostError::QueueWorkers)?;
    // One queue: this thread serves it, on the queue's CPU from now on (the audit writer,
    // started before, stays on the CPUs left).
    if let Some(cpu) = placement.as_ref().and_then(|p| p.queue_list(0)) {
        if queues == 1 {
            cpus::pin_current_thread(&cpu).map_err(HostError::QueueCpus)?;
        }
    }
    let workers = worker_threads(queues);
    if on {
        let limit = limits::address_space_limit(args.pool_size, workers);
        limits::limit_address_space_with_room(limit).map_err(HostError::Sandbox)?;
        report["address_space_limit"] = limit.into();
        report["queue_workers"] = workers.into();
    }
    run_probes(args);
    if on {
        bound.disarm();
        seccomp::install(seccomp::Role::Device).map_err(HostError::Sandbox)?;
        let mut threads = vec!["device"];
        if audit.is_some() {
            threads.push("audit-writer");
        }
        if workers > 0 {
            threads.push("queue-worker");
        }
        report["seccomp"] = threads.into();
        report["event"] = "sandbox".into();
        event(report);
        if args.sandbox_probe_syscall == Some(ProbeThread::Device) {
            return Err(HostError::ForbiddenCallReturned(
                seccomp::probe_forbidden_call(),
            ));
        }
    }
    tracing::info!(
        socket = %socket_name,
        disk = %disk_name,
        capacity,
        pool_size = args.pool_size,
        queues,
        read_only = args.read_only,
        cache = ?args.cache,
        strict = policy.require_swiotlb,
        attestation = ?args.attestation,
        "serving virtio-blk with a SWIOTLB pool"
    );
    let watch = stop.watch().map_err(HostError::StopSignals)?;
    let mut server = Server::new(function)
        .with_polling(std::time::Duration::from_micros(args.poll_us))
        .with_stop(watch);
    server
        .run(&listener, args.sessions, |end, summary, proto| {
            let ended = match end {
                SessionEnd::Closed => "closed".to_string(),
                SessionEnd::ProtocolError(e) => format!("protocol error: {e}"),
                SessionEnd::Stopped => "stopped".to_string(),
            };
            event(serde_json::json!({
                "event": "session_end",
                "ended": ended,
                "summary": summary,
                "protocol": proto,
            }));
        })
        .map_err(HostError::Serve)?;
    if server.stopped() {
        let signal = stop.take().map_or("a signal", signal_name);
        tracing::info!(
            signal,
            deadline_s = STOP_DEADLINE.as_secs(),
            "stopping: no new requests; flushing the image and closing the audit log (a \
             second signal, or the deadline, ends the process at once)"
        );
        if let Err(e) = stop.arm_forced_stop(STOP_DEADLINE) {
            tracing::warn!(error = %e, "the forced-stop deadline could not be set");
        }
        event(serde_json::json!({"event": "stopping", "signal": signal}));
    }
    drop(server);
    if !args.read_only {
        disk_sync
            .sync_data()
            .map_err(|source| HostError::FlushDisk(disk_name.clone(), source))?;
    }
    if let Some(log) = audit {
        log.close().map_err(HostError::CloseAuditLog)?;
    }
    // Unsandboxed, the socket is removed on the way out; sandboxed, the device thread
    // cannot remove files and the next start removes the stale socket.
    drop(bound);
    Ok(())
}
