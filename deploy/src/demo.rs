//! `swiotlb-demo`: the whole pair on an embedded default. It creates a temporary disk image,
//! starts `swiotlb-host` and runs `swiotlb-guest` as separate processes, writes data through
//! the SWIOTLB pool and reads it back with a checksum, checks the image itself holds the
//! data, and prints the negotiated features, the DMA counters and the violations (zero).
//!
//! The binaries are taken from beside this executable (`cargo build --workspace --bins`
//! puts them there); `deploy/demo.sh` does the build.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use swiotlb_attest::emulated::EmulatedError;
use swiotlb_shared::error_chain;
use thiserror::Error;

/// Size of the demo's disk image.
const DISK_SIZE: u64 = 64 << 20;
/// Bytes the demo writes and reads back.
const IO_SIZE: &str = "16M";
const IO_BYTES: usize = 16 << 20;

/// Why the demo failed.
#[derive(Debug, Error)]
enum DemoError {
    /// This executable's path is unknown.
    #[error("locating the demo binary")]
    LocateSelf(#[source] io::Error),
    /// This executable's path has no directory.
    #[error("demo binary has no directory")]
    NoDirectory,
    /// A binary of the pair is not beside the demo.
    #[error("{} not found beside the demo: run `cargo build --release --workspace --bins` (deploy/demo.sh does)", .0.display())]
    Missing(PathBuf),
    /// The guest cannot be run.
    #[error("running swiotlb-guest")]
    RunGuest(#[source] io::Error),
    /// The guest printed no result.
    #[error("swiotlb-guest {args:?} printed no JSON (exit {status}): {stderr}")]
    GuestNoJson {
        /// Its arguments after `--socket S --json`.
        args: Vec<String>,
        /// How it ended.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The guest reported a failure.
    #[error("swiotlb-guest {args:?} failed: {error}")]
    GuestFailed {
        /// Its arguments after `--socket S --json`.
        args: Vec<String>,
        /// The `error` of its JSON result.
        error: Value,
    },
    /// The temporary directory cannot be made.
    #[error("temporary directory")]
    TempDir(#[source] io::Error),
    /// The disk image cannot be made.
    #[error("creating the disk image")]
    CreateDisk(#[source] io::Error),
    /// The emulated ARK cannot be made.
    #[error("emulated ARK")]
    EmulatedArk(#[source] EmulatedError),
    /// The emulated ARK cannot be written.
    #[error("writing the emulated ARK")]
    WriteArk(#[source] io::Error),
    /// The audit log's directory cannot be made.
    #[error("audit directory")]
    AuditDirectory(#[source] io::Error),
    /// The host cannot be started.
    #[error("starting swiotlb-host")]
    StartHost(#[source] io::Error),
    /// The host's socket did not appear.
    #[error("swiotlb-host did not start listening")]
    HostNotListening,
    /// The pair did not agree on VIRTIO_F_SWIOTLB.
    #[error("VIRTIO_F_SWIOTLB was not negotiated")]
    NotNegotiated,
    /// The host cannot be waited for.
    #[error("waiting for swiotlb-host")]
    WaitHost(#[source] io::Error),
    /// The host ended with a failure.
    #[error("swiotlb-host exited with {0}")]
    HostExit(ExitStatus),
    /// The disk image cannot be read back.
    #[error("reading the image")]
    ReadImage(#[source] io::Error),
    /// The disk image is shorter than what was written.
    #[error("image shorter than the written range")]
    ImageShort,
    /// The disk image does not hold the written data.
    #[error("the disk image does not hold what the guest wrote")]
    ImageDiffers,
    /// The host printed no sandbox report.
    #[error("the host reported no sandbox (it runs sandboxed by default)")]
    NoSandboxReport,
    /// A session was not attested.
    #[error("session {session}: attestation {state}")]
    NotAttested {
        /// The session (1-based).
        session: usize,
        /// Its attestation state.
        state: Value,
    },
    /// A clean run had violations or findings.
    #[error("{0} violations or findings in a clean run")]
    Violations(u64),
    /// The audit log's directory cannot be listed.
    #[error("listing the audit log")]
    ListAuditLog(#[source] io::Error),
    /// The audit tool cannot be run.
    #[error("running swiotlb-audit")]
    RunAudit(#[source] io::Error),
    /// The audit log does not verify.
    #[error("swiotlb-audit verify failed: {0}")]
    AuditVerify(String),
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swiotlb-demo: FAILED: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn sibling(name: &str) -> Result<PathBuf, DemoError> {
    let exe = std::env::current_exe().map_err(DemoError::LocateSelf)?;
    let p = exe.parent().ok_or(DemoError::NoDirectory)?.join(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(DemoError::Missing(p))
    }
}

fn guest(bin: &Path, socket: &Path, args: &[&str]) -> Result<Value, DemoError> {
    let out = Command::new(bin)
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .args(args)
        .output()
        .map_err(DemoError::RunGuest)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let owned = || args.iter().map(|a| a.to_string()).collect();
    let v: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| DemoError::GuestNoJson {
            args: owned(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })?;
    if !out.status.success() || v["ok"] != Value::Bool(true) {
        return Err(DemoError::GuestFailed {
            args: owned(),
            error: v["error"].clone(),
        });
    }
    Ok(v)
}

fn run() -> Result<(), DemoError> {
    let host_bin = sibling("swiotlb-host")?;
    let audit_bin = sibling("swiotlb-audit")?;
    let guest_bin = sibling("swiotlb-guest")?;
    let dir = tempfile::tempdir().map_err(DemoError::TempDir)?;
    let disk = dir.path().join("demo-disk.img");
    let socket = dir.path().join("swiotlb.sock");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(DISK_SIZE))
        .map_err(DemoError::CreateDisk)?;
    // The emulated attestation platform: a fresh test-only ARK for this run. (On SEV-SNP or
    // TDX hardware the guest uses configfs-tsm and the host pins AMD's or Intel's roots.)
    let pk8 =
        swiotlb_attest::emulated::Signer::generate_ark_pkcs8().map_err(DemoError::EmulatedArk)?;
    let public =
        swiotlb_attest::emulated::Signer::public_key_of(&pk8).map_err(DemoError::EmulatedArk)?;
    let key = dir.path().join("emulated-ark.pk8");
    let ark = dir.path().join("emulated-ark.pub");
    std::fs::write(&key, &pk8)
        .and_then(|()| std::fs::write(&ark, public))
        .map_err(DemoError::WriteArk)?;
    let key_s = key.to_string_lossy().to_string();
    // The audit log is kept after the demo, for `swiotlb-audit` to read.
    let audit_dir = std::env::temp_dir().join(format!("swiotlb-demo-audit-{}", std::process::id()));
    std::fs::create_dir_all(&audit_dir).map_err(DemoError::AuditDirectory)?;
    let audit_log = audit_dir.join("device.jsonl");

    println!(
        "== swiotlb demo: a virtio-blk device whose only DMA-reachable memory is its SWIOTLB pool"
    );
    println!(
        "   disk image   {} ({} MiB, sparse)",
        disk.display(),
        DISK_SIZE >> 20
    );
    println!("   socket       {}", socket.display());
    let mut host = Command::new(&host_bin)
        .arg("--socket")
        .arg(&socket)
        .arg("--disk")
        .arg(&disk)
        .args(["--sessions", "2", "--log", "error"])
        .args([
            "--attestation",
            "required",
            "--allow-emulated",
            "--emulated-ark",
        ])
        .arg(&ark)
        .arg("--audit-log")
        .arg(&audit_log)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(DemoError::StartHost)?;
    let start = Instant::now();
    while !socket.exists() {
        if start.elapsed() > Duration::from_secs(10) || host.try_wait().ok().flatten().is_some() {
            let _ = host.kill();
            return Err(DemoError::HostNotListening);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "   host         started (pid {}), attestation required, EMULATED platform admitted",
        host.id()
    );
    let attest = ["--attester", "emulated", "--emulated-key", key_s.as_str()];

    let result = (|| {
        let info = guest(&guest_bin, &socket, &[&attest[..], &["info"]].concat())?;
        let i = &info["info"];
        println!("\n-- guest session 1: negotiation");
        println!("   negotiated   {}", join(&i["negotiated"]));
        println!(
            "   pool         {} MiB at bus address {:#x} (BAR2, mapped as RAM)",
            i["pool_size"].as_u64().unwrap_or(0) >> 20,
            i["pool_bus_address"].as_u64().unwrap_or(0)
        );
        println!("   capacity     {} bytes", i["capacity"]);
        println!(
            "   attestation  {}",
            i["attestation"].as_str().unwrap_or("?")
        );
        if !join(&i["negotiated"]).contains("SWIOTLB") {
            return Err(DemoError::NotNegotiated);
        }
        println!("\n-- guest session 2: write {IO_SIZE}, flush, read back");
        let rt = guest(
            &guest_bin,
            &socket,
            &[
                &attest[..],
                &["roundtrip", "--offset", "1M", "--size", IO_SIZE],
            ]
            .concat(),
        )?;
        println!(
            "   write        {:.0} MiB/s (flush included)\n   read         {:.0} MiB/s\n   sha256       {} (written = read back)",
            rt["write_mib_s"].as_f64().unwrap_or(0.0),
            rt["read_mib_s"].as_f64().unwrap_or(0.0),
            rt["sha256"].as_str().unwrap_or("?")
        );
        Ok::<String, DemoError>(rt["sha256"].as_str().unwrap_or_default().to_string())
    })();
    let status = host.wait().map_err(DemoError::WaitHost)?;
    let mut out = String::new();
    if let Some(mut o) = host.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let written_sha = result?;
    if !status.success() {
        return Err(DemoError::HostExit(status));
    }

    // The image itself must hold what the guest wrote.
    let image = std::fs::read(&disk).map_err(DemoError::ReadImage)?;
    let region = image
        .get(1 << 20..(1 << 20) + IO_BYTES)
        .ok_or(DemoError::ImageShort)?;
    let image_sha: String = ring::digest::digest(&ring::digest::SHA256, region)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!(
        "   image file   sha256 {image_sha} ({})",
        if image_sha == written_sha {
            "matches"
        } else {
            "DIFFERS"
        }
    );
    if image_sha != written_sha {
        return Err(DemoError::ImageDiffers);
    }

    println!("\n-- host: what the device could and could not touch");
    let events: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let sandbox = events
        .iter()
        .find(|v| v["event"] == "sandbox")
        .ok_or(DemoError::NoSandboxReport)?;
    let threads: Vec<&str> = sandbox["seccomp"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "   sandbox: Landlock {}; seccomp allow-lists on the {} threads (any other call kills \
         the process); capabilities {}; address space at most {} MiB",
        sandbox["landlock"].as_str().unwrap_or("?"),
        threads.join(" and "),
        sandbox["capabilities"].as_str().unwrap_or("?"),
        sandbox["address_space_limit"].as_u64().unwrap_or(0) >> 20,
    );
    let mut violations = 0;
    let sessions = events.iter().filter(|v| v["event"] == "session_end");
    for (n, v) in sessions.enumerate() {
        let s = &v["summary"];
        violations +=
            s["dma_violations"].as_u64().unwrap_or(0) + s["findings"].as_u64().unwrap_or(0);
        if s["attestation_state"] != "accepted" {
            return Err(DemoError::NotAttested {
                session: n + 1,
                state: s["attestation_state"].clone(),
            });
        }
        let rd: String = s["attestation"]["expected_report_data"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(16)
            .collect();
        println!(
            "   session {}: attestation {} on platform {} (REPORT_DATA {rd}...)",
            n + 1,
            s["attestation_state"].as_str().unwrap_or("?"),
            s["attestation"]["platform"].as_str().unwrap_or("?"),
        );
        println!(
            "   session {}: {} chains, {} DMAs checked against the pool ({} B device-read, {} B device-written), {} violations, {} findings, {} trapped pool accesses",
            n + 1,
            s["chains"],
            s["dma_descriptors"],
            s["dma_readable_bytes"],
            s["dma_writable_bytes"],
            s["dma_violations"],
            s["findings"],
            s["trapped_pool_accesses"]
        );
    }
    if violations != 0 {
        return Err(DemoError::Violations(violations));
    }
    println!("\n-- audit log: {}", audit_dir.display());
    let files: Vec<PathBuf> = std::fs::read_dir(&audit_dir)
        .map_err(DemoError::ListAuditLog)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    let pubkey = audit_dir.join("device.key.pub");
    let verify = Command::new(&audit_bin)
        .arg("verify")
        .args(&files)
        .arg("--key")
        .arg(&pubkey)
        .output()
        .map_err(DemoError::RunAudit)?;
    print!("   {}", String::from_utf8_lossy(&verify.stdout));
    if !verify.status.success() {
        return Err(DemoError::AuditVerify(
            String::from_utf8_lossy(&verify.stderr).into_owned(),
        ));
    }
    let stats = Command::new(&audit_bin)
        .arg("stats")
        .args(&files)
        .output()
        .map_err(DemoError::RunAudit)?;
    for line in String::from_utf8_lossy(&stats.stdout).lines() {
        println!("   {line}");
    }
    println!(
        "   re-check it yourself: swiotlb-audit verify {}/device.*.jsonl --key {}",
        audit_dir.display(),
        pubkey.display()
    );
    println!("\n== demo passed: SWIOTLB negotiated and attested (EMULATED platform), every DMA inside the pool, zero violations");
    Ok(())
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}
