//! `swiotlb-host`: serves a virtio-blk PCI function over vfio-user whose only
//! device-visible memory is the SWIOTLB pool.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use swiotlb_host::devices::block::{disk::DiskImage, Block};
use swiotlb_host::vfio_user::{Server, SessionEnd};
use swiotlb_host::virtio::Policy;
use swiotlb_host::VirtioPciFunction;
use swiotlb_shared::error_chain;
use swiotlb_shared::units::parse_size;

/// Serve a virtio-blk device whose only DMA-reachable memory is a SWIOTLB pool BAR.
#[derive(Parser, Debug)]
#[command(name = "swiotlb-host", version)]
struct Args {
    /// Unix socket to listen on (vfio-user).
    #[arg(long)]
    socket: PathBuf,
    /// Raw disk image to serve.
    #[arg(long)]
    disk: PathBuf,
    /// Size of the SWIOTLB pool BAR (a power of two, 1M to 1G).
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pool_size: u64,
    /// Serve the disk read-only.
    #[arg(long)]
    read_only: bool,
    /// Relaxed policy: let a driver that declines VIRTIO_F_SWIOTLB reach FEATURES_OK.
    /// (The default strict policy refuses it.)
    #[arg(long)]
    allow_no_swiotlb: bool,
    /// Attestation: `required` (default) serves no queue until the driver's evidence
    /// verifies; `off` serves without evidence.
    #[arg(long, value_enum, default_value_t = AttestMode::Required)]
    attestation: AttestMode,
    /// Attestation policy (TOML): platforms, minimum TCB, measurements, debug, emulated.
    #[arg(long)]
    attest_policy: Option<PathBuf>,
    /// Accept evidence from the EMULATED platform (CI and the demo only). Needs
    /// `--emulated-ark`.
    #[arg(long)]
    allow_emulated: bool,
    /// Public key of the emulated ARK (`swiotlb-attest emulated-keygen` writes it).
    #[arg(long)]
    emulated_ark: Option<PathBuf>,
    /// Tamper-evident audit log (JSON Lines; files `<stem>.<NNNNNN>.<ext>` beside PATH).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Per-DMA recording: `summary` (counts per interval, findings in full) or `full`
    /// (every descriptor).
    #[arg(long, value_enum, default_value_t = AuditModeArg::Summary)]
    audit_mode: AuditModeArg,
    /// Ed25519 signing key of the audit log (PKCS#8), created when absent (default: beside
    /// the log); its public key is written to FILE.pub for verifiers.
    #[arg(long)]
    audit_key: Option<PathBuf>,
    /// Sandbox the process (Landlock: only the disk, the socket's directory and the audit
    /// log's directories are reachable; no TCP; no_new_privs). On by default.
    #[arg(long, value_enum, default_value_t = SandboxArg::On)]
    sandbox: SandboxArg,
    /// Refuse to start unless the kernel fully enforces the sandbox.
    #[arg(long)]
    require_sandbox: bool,
    /// After sandboxing, try to read FILE and print whether the sandbox let it through
    /// (a JSON line on stdout); for checking a deployment. Repeatable.
    #[arg(long)]
    sandbox_probe: Vec<PathBuf>,
    /// Exit after this many client sessions (default: serve forever).
    #[arg(long)]
    sessions: Option<u64>,
    /// Log filter (tracing `EnvFilter` syntax), also taken from RUST_LOG.
    #[arg(long, default_value = "info")]
    log: String,
}

/// Whether the process sandboxes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SandboxArg {
    /// Landlock and no_new_privs.
    On,
    /// No sandbox (debugging only).
    Off,
}

/// Audit log DMA recording mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AuditModeArg {
    /// Per-interval DMA counts; findings in full.
    Summary,
    /// Every descriptor recorded.
    Full,
}

/// Whether evidence is required before queues are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AttestMode {
    /// Serve no queue until the evidence verifies.
    Required,
    /// Serve without evidence.
    Off,
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
            eprintln!("swiotlb-host: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The evidence verifier from the policy file and flags.
fn verifier(args: &Args) -> Result<swiotlb_attest::Verifier, String> {
    let mut policy = match &args.attest_policy {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("reading policy {}: {e}", p.display()))?;
            swiotlb_attest::Policy::from_toml(&text)
                .map_err(|e| format!("policy {}: {}", p.display(), error_chain(&e)))?
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
                .map_err(|e| format!("reading emulated ARK {}: {e}", path.display()))?;
            let ev = swiotlb_attest::emulated::Verifier::new(&key)
                .map_err(|e| format!("emulated ARK {}: {}", path.display(), error_chain(&e)))?;
            tracing::warn!("EMULATED attestation platform configured: for CI and demos only");
            v = v.with_emulated(ev);
        }
        (None, true) => return Err("--allow-emulated needs --emulated-ark FILE".into()),
        (None, false) => {}
    }
    Ok(v)
}

/// Applies the sandbox before the audit writer thread and the server start, then runs the
/// operator's probes.
fn sandbox(args: &Args) -> Result<(), String> {
    if args.sandbox == SandboxArg::Off {
        if args.require_sandbox {
            return Err("--require-sandbox contradicts --sandbox off".into());
        }
        tracing::warn!("sandbox OFF: the device process can reach every file this user can");
    } else {
        let mut audit = Vec::new();
        if let Some(log) = &args.audit_log {
            audit.push(log.clone());
        }
        if let Some(key) = &args.audit_key {
            audit.push(key.clone());
        }
        let allowed = swiotlb_host::sandbox::Allowed {
            disk: args.disk.clone(),
            read_only: args.read_only,
            socket: args.socket.clone(),
            audit,
        };
        let e = swiotlb_host::sandbox::apply(&allowed, args.require_sandbox)
            .map_err(|e| format!("sandbox: {}", error_chain(&e)))?;
        match e {
            swiotlb_host::sandbox::Enforcement::Full => {
                tracing::info!(landlock = e.name(), "sandbox applied")
            }
            _ => tracing::warn!(
                landlock = e.name(),
                "sandbox weaker than asked: this kernel lacks Landlock features"
            ),
        }
    }
    for p in &args.sandbox_probe {
        let r = swiotlb_host::sandbox::probe(p);
        println!(
            "{}",
            serde_json::json!({
                "event": "sandbox_probe",
                "path": p.display().to_string(),
                "allowed": r.is_ok(),
                "error": r.err().map(|e| e.to_string()),
            })
        );
    }
    Ok(())
}

fn run(args: &Args) -> Result<(), String> {
    let disk = DiskImage::open(&args.disk, args.read_only)
        .map_err(|e| format!("opening disk image {}: {e}", args.disk.display()))?;
    let capacity = disk.capacity();
    let policy = Policy {
        require_swiotlb: !args.allow_no_swiotlb,
    };
    let mut function = VirtioPciFunction::new(Box::new(Block::new(disk)), args.pool_size, policy)
        .map_err(|e| format!("creating the pool: {}", error_chain(&e)))?;
    if args.attestation == AttestMode::Required {
        function = function.with_attestation(Box::new(verifier(args)?));
    } else if args.allow_emulated || args.attest_policy.is_some() {
        return Err("--allow-emulated and --attest-policy need --attestation required".into());
    }
    sandbox(args)?;
    let audit = match &args.audit_log {
        Some(path) => {
            let mut cfg = swiotlb_host::audit::AuditConfig::new(path);
            cfg.mode = match args.audit_mode {
                AuditModeArg::Summary => swiotlb_host::audit::AuditMode::Summary,
                AuditModeArg::Full => swiotlb_host::audit::AuditMode::Full,
            };
            cfg.key_path = args.audit_key.clone();
            let id = function.gate().instance_id();
            let identity = swiotlb_shared::audit::schema::DeviceIdentity {
                uid: id.iter().map(|b| format!("{b:02x}")).collect(),
                name: format!("virtio-blk swiotlb ({})", args.disk.display()),
            };
            let (log, handle) =
                swiotlb_host::audit::AuditLog::open(cfg, identity).map_err(|e| {
                    format!(
                        "opening the audit log {}: {}",
                        path.display(),
                        error_chain(&e)
                    )
                })?;
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
    if args.socket.exists() {
        std::fs::remove_file(&args.socket)
            .map_err(|e| format!("removing stale socket {}: {e}", args.socket.display()))?;
    }
    // Bind under a temporary name and rename into place once listening, so a client that
    // sees the socket path can always connect (bind creates the file before listen).
    let tmp = args
        .socket
        .with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).map_err(|e| format!("binding {}: {e}", tmp.display()))?;
    // Only the owner may connect: the socket is the device.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("restricting {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &args.socket)
        .map_err(|e| format!("moving the socket to {}: {e}", args.socket.display()))?;
    tracing::info!(
        socket = %args.socket.display(),
        disk = %args.disk.display(),
        capacity,
        pool_size = args.pool_size,
        read_only = args.read_only,
        strict = policy.require_swiotlb,
        attestation = ?args.attestation,
        "serving virtio-blk with a SWIOTLB pool"
    );
    let mut server = Server::new(function);
    server
        .run(&listener, args.sessions, |end, summary, proto| {
            let ended = match end {
                SessionEnd::Closed => "closed".to_string(),
                SessionEnd::ProtocolError(e) => format!("protocol error: {e}"),
            };
            let line = serde_json::json!({
                "event": "session_end",
                "ended": ended,
                "summary": summary,
                "protocol": proto,
            });
            println!("{line}");
        })
        .map_err(|e| format!("accepting clients: {e}"))?;
    let _ = std::fs::remove_file(&args.socket);
    drop(server);
    if let Some(log) = audit {
        log.close()
            .map_err(|e| format!("closing the audit log: {}", error_chain(&e)))?;
    }
    Ok(())
}
