//! `swiotlb-guest`: drives a SWIOTLB virtio-blk device, over vfio-user (`--socket`) or as a
//! PCI function of this Linux machine through sysfs or kernel VFIO (`--pci`). Every buffer the
//! device sees is a bounce slot in its pool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Parser, Subcommand};
use serde_json::json;
use swiotlb_guest::attest::{self, AttestError, AttesterChoice};
use swiotlb_guest::pci::discovery::{self, bdf_of, DiscoveryError};
use swiotlb_guest::pci::pool_map::PoolMapMode;
use swiotlb_guest::pci::sysfs::SysfsPci;
use swiotlb_guest::pci::vfio::{VfioPci, VFIO_PCI_DRIVER};
use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::pci::{PciAccess, PciError};
use swiotlb_guest::ublk::{serve, ServeOptions, UblkError};
use swiotlb_guest::{BlockDriver, BlockError, Options};
use swiotlb_shared::error_chain;
use swiotlb_shared::units::parse_size;
use thiserror::Error;

/// Drive a virtio-blk device through its SWIOTLB pool.
#[derive(Parser, Debug)]
#[command(name = "swiotlb-guest", version)]
#[command(group(ArgGroup::new("device").args(["socket", "pci"])))]
struct Args {
    /// vfio-user socket of the device.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The device as a PCI function of this machine (root). Through sysfs (no kernel driver
    /// bound; no interrupts, completions are polled): `sysfs:auto` (the one 1af4:1042
    /// function under /sys/bus/pci/devices; among several, the one no kernel driver owns)
    /// or `sysfs:DDDD:BB:DD.F`. Through kernel VFIO (the function bound to vfio-pci, an
    /// IOMMU group, so a vIOMMU; MSI-X interrupts): `vfio:auto` (the one 1af4:1042 function
    /// bound to vfio-pci; failing that, the one bound to no driver) or `vfio:DDDD:BB:DD.F`.
    #[arg(long, value_name = "SPEC", value_parser = parse_pci_spec)]
    pci: Option<PciSpec>,
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
    /// How to map the pool of a --pci function: `auto` (write-back through /dev/mem where
    /// the kernel allows it, else write-combining, else the BAR's own uncached mapping, with
    /// a warning), `write-back` (or fail), `bar` (the BAR's own mapping).
    #[arg(long, value_enum, default_value_t = PoolMapArg::Auto)]
    pool_map: PoolMapArg,
    /// Decline VIRTIO_F_SWIOTLB and report what the device does (testing the device's policy).
    #[arg(long)]
    decline_swiotlb: bool,
    /// Attester proving the session to a device that requires it: `auto` (configfs-tsm when
    /// present), `snp`, `tdx`, `emulated` (needs --emulated-key; CI only) or `none`.
    #[arg(long, value_enum, default_value_t = AttesterArg::Auto)]
    attester: AttesterArg,
    /// Emulated ARK private key (PKCS#8, from `swiotlb-attest emulated-keygen`).
    #[arg(long)]
    emulated_key: Option<PathBuf>,
    /// How long to wait for each completion, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Poll the used ring this many microseconds for a completion before asking for an
    /// interrupt and sleeping (interrupts suppressed meanwhile, EVENT_IDX). Spends a CPU
    /// while I/O is in flight and saves an interrupt and a wake-up per request. 0: sleep at
    /// once (back ends without interrupts always poll).
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    poll_us: u64,
    /// Request queues to set up when the device offers VIRTIO_BLK_F_MQ (default: every
    /// queue it has, at most 16), each with its own share of the pool; `ublk` serves each
    /// through a ublk hardware queue and a thread of its own, the other commands use queue 0.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=16))]
    queues: Option<u16>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// `--pool-map` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PoolMapArg {
    /// Write-back if allowed, else the best the back end has.
    Auto,
    /// Write-back or fail.
    WriteBack,
    /// The BAR's own mapping.
    Bar,
}

impl From<PoolMapArg> for PoolMapMode {
    fn from(a: PoolMapArg) -> Self {
        match a {
            PoolMapArg::Auto => Self::Auto,
            PoolMapArg::WriteBack => Self::WriteBack,
            PoolMapArg::Bar => Self::Bar,
        }
    }
}

/// Attester choices on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AttesterArg {
    /// configfs-tsm if present, else none.
    Auto,
    /// SEV-SNP through configfs-tsm.
    Snp,
    /// TDX through configfs-tsm.
    Tdx,
    /// The emulated platform (CI only).
    Emulated,
    /// No attester.
    None,
}

/// The PCI back end `--pci` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// sysfs `config` and `resourceN`.
    Sysfs,
    /// Kernel VFIO (`vfio-pci`).
    Vfio,
}

/// Which PCI function `--pci` names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PciSpec {
    /// `<backend>:auto`: the only modern virtio-blk function the back end can drive.
    Auto(Backend),
    /// `<backend>:<BDF>`: that function (normalized as sysfs names it).
    Bdf(Backend, String),
}

/// What `--pci` takes, for messages.
const PCI_SPEC_USAGE: &str = "expected sysfs:auto, sysfs:DDDD:BB:DD.F, vfio:auto or vfio:DDDD:BB:DD.F (e.g. vfio:0000:00:04.0)";

/// Why the command failed. `main` prints it with its sources, on one line.
#[derive(Debug, Error)]
enum CliError {
    /// `--pci` names no back end this program has.
    #[error("unknown PCI back end in {spec:?}; {PCI_SPEC_USAGE}")]
    UnknownBackend {
        /// What `--pci` said.
        spec: String,
    },
    /// `--pci` names no PCI address. (The address's error is part of the message, not a
    /// source: clap prints only the message of a value's error.)
    #[error("{why}; {PCI_SPEC_USAGE}")]
    BadAddress {
        /// What is wrong with the address.
        why: DiscoveryError,
    },
    /// No function the `auto` spec could mean.
    #[error("no virtio-blk function (1af4:1042) under {}", .dir.display())]
    NoFunction {
        /// The devices directory searched.
        dir: PathBuf,
    },
    /// `vfio:auto` found several candidates, or only functions other drivers own.
    #[error("not exactly one virtio-blk function (1af4:1042) under {} bound to vfio-pci (or, failing that, free of a driver): {found}; choose one with --pci vfio:<BDF>", .dir.display())]
    NotOneForVfio {
        /// The devices directory searched.
        dir: PathBuf,
        /// The functions found, with their drivers.
        found: String,
    },
    /// `sysfs:auto` found several candidates and not exactly one free of a driver.
    #[error("several virtio-blk functions (1af4:1042) under {} and not exactly one free of a kernel driver: {found}; choose one with --pci sysfs:<BDF>", .dir.display())]
    NotOneForSysfs {
        /// The devices directory searched.
        dir: PathBuf,
        /// The functions found, with their drivers.
        found: String,
    },
    /// Both or neither of `--socket` and `--pci`.
    #[error("exactly one of --socket and --pci names the device")]
    DeviceFlags,
    /// `--socket` or `--pci` with a command that opens no device.
    #[error(
        "ublk-delete works on /dev/ublk-control, not on the virtio device: drop --socket and --pci"
    )]
    DeviceFlagsUnused,
    /// The vfio-user socket could not be used.
    #[error("connecting to {}", .socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: PciError,
    },
    /// Opening the PCI function failed (the error names the file or ioctl).
    #[error(transparent)]
    Open(PciError),
    /// `--attester emulated` without its key.
    #[error("--attester emulated needs --emulated-key FILE")]
    EmulatedKeyMissing,
    /// `--emulated-key` with another attester.
    #[error("--emulated-key is only used with --attester emulated")]
    EmulatedKeyUnused,
    /// The attester could not be set up.
    #[error(transparent)]
    Attester(#[from] AttestError),
    /// The device failed a request, or could not be brought up.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A length that does not fit this machine's memory.
    #[error("{0} too large")]
    TooLarge(&'static str),
    /// Writing the output failed.
    #[error("writing {}", .path.display())]
    Write {
        /// The file (`-`: stdout).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading the input failed.
    #[error("reading {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// What was read back is not what was written.
    #[error("read-back data differs: wrote sha256 {wrote}, read {read}")]
    ReadBackDiffers {
        /// SHA-256 of what was written.
        wrote: String,
        /// SHA-256 of what was read.
        read: String,
    },
    /// `--max-io` out of range.
    #[error("--max-io {0}: a multiple of 4K between 4K and 16M")]
    MaxIo(u64),
    /// The ublk server failed.
    #[error(transparent)]
    Ublk(#[from] UblkError),
    /// A queue of the ublk server failed; the summary says which and how.
    #[error("the device failed: {summary}")]
    DeviceFailed {
        /// The JSON summary printed when the server stopped.
        summary: serde_json::Value,
    },
}

fn parse_pci_spec(s: &str) -> Result<PciSpec, CliError> {
    let (backend, rest) = match s.split_once(':') {
        Some(("sysfs", rest)) => (Backend::Sysfs, rest),
        Some(("vfio", rest)) => (Backend::Vfio, rest),
        _ => return Err(CliError::UnknownBackend { spec: s.into() }),
    };
    if rest == "auto" {
        return Ok(PciSpec::Auto(backend));
    }
    discovery::parse_bdf(rest)
        .map(|bdf| PciSpec::Bdf(backend, bdf))
        .map_err(|why| CliError::BadAddress { why })
}

/// Lists `found` with the driver each is bound to, for messages.
fn describe(found: &[PathBuf]) -> String {
    found
        .iter()
        .map(|p| match discovery::bound_driver(p) {
            Some(d) => format!("{} (bound to {d})", bdf_of(p)),
            None => bdf_of(p),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sysfs directory of the function `spec` names, under `sysfs_root`.
fn resolve_pci(spec: &PciSpec, sysfs_root: &Path) -> Result<PathBuf, CliError> {
    let dir = discovery::devices_dir(sysfs_root);
    match spec {
        PciSpec::Bdf(_, bdf) => Ok(dir.join(bdf)),
        PciSpec::Auto(Backend::Vfio) => {
            let found = discovery::find_devices(sysfs_root);
            if found.is_empty() {
                return Err(CliError::NoFunction { dir });
            }
            // The one vfio-pci owns; failing that, the one no driver owns (opening it then
            // says how to bind it to vfio-pci).
            let with = |want: Option<&str>| -> Vec<&PathBuf> {
                found
                    .iter()
                    .filter(|p| discovery::bound_driver(p).as_deref() == want)
                    .collect()
            };
            match (
                with(Some(VFIO_PCI_DRIVER)).as_slice(),
                with(None).as_slice(),
            ) {
                ([one], _) | ([], [one]) => Ok((*one).clone()),
                _ => Err(CliError::NotOneForVfio {
                    found: describe(&found),
                    dir,
                }),
            }
        }
        PciSpec::Auto(Backend::Sysfs) => {
            let found = discovery::find_devices(sysfs_root);
            match found.as_slice() {
                [] => return Err(CliError::NoFunction { dir }),
                [one] => return Ok(one.clone()),
                _ => {}
            }
            // Several: a function a kernel driver owns (the boot disk, typically) can never
            // be driven from here, so the one that no driver owns is meant.
            let free: Vec<&PathBuf> = found
                .iter()
                .filter(|p| discovery::bound_driver(p).is_none())
                .collect();
            if let [one] = free.as_slice() {
                return Ok((*one).clone());
            }
            Err(CliError::NotOneForSysfs {
                found: describe(&found),
                dir,
            })
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Negotiated features, pool bus address and size, capacity.
    Info,
    /// Read LENGTH bytes at OFFSET into FILE.
    Read {
        /// Byte offset (a multiple of 512).
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        /// Bytes to read (a multiple of 512).
        #[arg(long, value_parser = parse_size)]
        length: u64,
        /// Output file ("-" for stdout).
        #[arg(long)]
        output: PathBuf,
    },
    /// Write FILE at OFFSET (its length must be a multiple of 512).
    Write {
        /// Byte offset (a multiple of 512).
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        /// Input file.
        #[arg(long)]
        input: PathBuf,
    },
    /// Flush the device's write cache.
    Flush,
    /// Print the device ID.
    GetId,
    /// Discard a range.
    Discard {
        /// Byte offset (a multiple of 512).
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        /// Bytes (a multiple of 512).
        #[arg(long, value_parser = parse_size)]
        length: u64,
    },
    /// Write zeroes to a range.
    WriteZeroes {
        /// Byte offset (a multiple of 512).
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        /// Bytes (a multiple of 512).
        #[arg(long, value_parser = parse_size)]
        length: u64,
        /// Let the device deallocate the range.
        #[arg(long)]
        unmap: bool,
    },
    /// Serve the device as a block device of this machine (/dev/ublkbN, through the kernel's
    /// ublk driver) until SIGTERM or SIGINT or until the ublk device is deleted; then remove
    /// it. Prints the device's path (a JSON line with --json) once it exists, and what was
    /// served when it stops.
    Ublk {
        /// ublk device id to ask for (default: the kernel picks).
        #[arg(long)]
        id: Option<u32>,
        /// Requests in flight per queue (default: what the ring and the pool hold, at most
        /// 128).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4096))]
        depth: Option<u16>,
        /// Largest request (a multiple of 4K, at most 16M); larger transfers are split by
        /// the kernel, and each request is split to fit the pool.
        #[arg(long, value_parser = parse_size, default_value = "1M")]
        max_io: u64,
        /// Confine the server once the device runs: every capability dropped but
        /// CAP_SYS_ADMIN (ublk's control commands need it), a seccomp allow-list on every
        /// thread (no open, no socket, no new ring, no exec).
        #[arg(long, value_enum, default_value_t = OnOff::On)]
        sandbox: OnOff,
    },
    /// Delete ublk device ID that a killed server left behind (its block device is gone,
    /// /dev/ublkcID and the id stay). Needs no --socket or --pci. Refused while the
    /// device's server process still runs, unless --force (which fails that server's
    /// requests in flight and ends it).
    UblkDelete {
        /// The ublk device id (N of /dev/ublkcN).
        #[arg(long)]
        id: u32,
        /// Delete even though its server still runs.
        #[arg(long)]
        force: bool,
    },
    /// Write SIZE bytes of pseudo-random data at OFFSET, read them back, compare SHA-256
    /// digests, and report throughput.
    Roundtrip {
        /// Byte offset (a multiple of 512).
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
        /// Bytes (a multiple of 512).
        #[arg(long, value_parser = parse_size, default_value = "8M")]
        size: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = error_chain(&e);
            if args.json {
                println!("{}", json!({ "ok": false, "error": e }));
            }
            eprintln!("swiotlb-guest: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `swiotlb-guest ublk`: serves the device as /dev/ublkbN until stopped.
fn ublk<P: PciAccess>(
    dev: &mut BlockDriver<P>,
    id: Option<u32>,
    depth: Option<u16>,
    max_io: u64,
    sandbox: bool,
    json_out: bool,
) -> Result<serde_json::Value, CliError> {
    let max_io_bytes = u32::try_from(max_io)
        .ok()
        .filter(|m| *m >= 4096 && *m <= 16 << 20 && m % 4096 == 0)
        .ok_or(CliError::MaxIo(max_io))?;
    let opts = ServeOptions {
        dev_id: id,
        depth,
        max_io_bytes,
        json: json_out,
        sandbox,
    };
    let info = dev.info().clone();
    let summary = serve(dev, &opts, |path, dev_info| {
        if json_out {
            let line = json!({
                "ok": true, "event": "ublk_ready", "device": path, "dev_id": dev_info.dev_id,
                "queues": dev_info.nr_hw_queues, "depth": dev_info.queue_depth,
                "max_io_bytes": dev_info.max_io_buf_bytes, "capacity": info.capacity,
                "read_only": info.read_only, "attestation": info.attestation,
                "pool_bus_address": info.pool_bus_address, "pool_size": info.pool_size,
                "pool_memory": info.pool_memory,
            });
            println!("{line}");
        } else {
            println!(
                "{path}: {} bytes, {} queue(s) of depth {}, requests up to {} bytes; SWIOTLB pool of {} bytes at {:#x}; attestation {}",
                info.capacity,
                dev_info.nr_hw_queues,
                dev_info.queue_depth,
                dev_info.max_io_buf_bytes,
                info.pool_size,
                info.pool_bus_address,
                info.attestation
            );
        }
        let _ = std::io::stdout().flush();
    })?;
    let failed = summary.queues.iter().any(|q| q.failure.is_some());
    let out = json!({ "ok": !failed, "event": "ublk_stopped", "summary": summary });
    if !json_out {
        eprintln!(
            "swiotlb-guest ublk: stopped ({}): {out}",
            summary.stopped_by
        );
    }
    if failed {
        return Err(CliError::DeviceFailed { summary: out });
    }
    Ok(out)
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn run(args: &Args) -> Result<(), CliError> {
    if let Cmd::UblkDelete { id, force } = args.cmd {
        if args.socket.is_some() || args.pci.is_some() {
            return Err(CliError::DeviceFlagsUnused);
        }
        let deleted = swiotlb_guest::ublk::delete::delete(id, force)?;
        let out = json!({ "ok": true, "event": "ublk_deleted", "deleted": deleted });
        if args.json {
            println!("{out}");
        } else {
            println!(
                "deleted ublk device {} (it was {}; server pid {}, {})",
                deleted.dev_id,
                deleted.state,
                deleted.server_pid,
                if deleted.server_running {
                    "still running: forced"
                } else {
                    "gone"
                }
            );
        }
        return Ok(());
    }
    match (&args.socket, &args.pci) {
        (Some(socket), None) => {
            let client = VfioUserClient::connect(socket).map_err(|source| CliError::Connect {
                socket: socket.clone(),
                source,
            })?;
            drive(args, client)
        }
        (None, Some(spec)) => {
            let dir = resolve_pci(spec, Path::new(discovery::SYSFS_ROOT))?;
            // Every error of opening names the file or ioctl it concerns.
            match spec {
                PciSpec::Auto(Backend::Sysfs) | PciSpec::Bdf(Backend::Sysfs, _) => {
                    let pci = SysfsPci::open(&dir).map_err(CliError::Open)?;
                    drive(args, pci.with_pool_map(args.pool_map.into()))
                }
                PciSpec::Auto(Backend::Vfio) | PciSpec::Bdf(Backend::Vfio, _) => {
                    let pci = VfioPci::open(&dir).map_err(CliError::Open)?;
                    drive(args, pci.with_pool_map(args.pool_map.into()))
                }
            }
        }
        _ => Err(CliError::DeviceFlags),
    }
}

/// Opens the device on back end `pci` and runs the subcommand.
fn drive<P: PciAccess>(args: &Args, pci: P) -> Result<(), CliError> {
    let opts = Options {
        decline_swiotlb: args.decline_swiotlb,
        timeout: Duration::from_millis(args.timeout_ms),
        poll: Duration::from_micros(args.poll_us),
        queues: args.queues.unwrap_or(swiotlb_guest::block::MAX_QUEUES),
        ..Options::default()
    };
    let choice = match (args.attester, &args.emulated_key) {
        (AttesterArg::Emulated, Some(k)) => Some(AttesterChoice::Emulated(k.clone())),
        (AttesterArg::Emulated, None) => return Err(CliError::EmulatedKeyMissing),
        (_, Some(_)) => return Err(CliError::EmulatedKeyUnused),
        (AttesterArg::Auto, None) => Some(AttesterChoice::Auto),
        (AttesterArg::Snp, None) => Some(AttesterChoice::Snp),
        (AttesterArg::Tdx, None) => Some(AttesterChoice::Tdx),
        (AttesterArg::None, None) => None,
    };
    let attester = match &choice {
        Some(c) => attest::choose(c)?,
        None => None,
    };
    let mut dev = BlockDriver::open_attested(pci, &opts, attester.as_deref())?;
    let info = dev.info().clone();
    let out = match &args.cmd {
        Cmd::Info => {
            if !args.json {
                println!(
                    "negotiated features: {:#x} ({})",
                    info.driver_features,
                    info.negotiated.join(", ")
                );
                println!("offered features:    {:#x}", info.device_features);
                println!(
                    "pool:                {:#x} bytes at bus address {:#x}",
                    info.pool_size, info.pool_bus_address
                );
                println!(
                    "capacity:            {} bytes ({} sectors)",
                    info.capacity,
                    info.capacity / 512
                );
                println!("read-only:           {}", info.read_only);
                println!(
                    "queue size:          {} ({} bounce slots of 2 KiB)",
                    info.queue_size, info.slots
                );
                println!("attestation:         {}", info.attestation);
                if let Some(m) = &info.pool_memory {
                    println!("pool memory type:    {m}");
                }
            }
            json!({ "ok": true, "info": info })
        }
        Cmd::Read {
            offset,
            length,
            output,
        } => {
            let len = usize::try_from(*length).map_err(|_| CliError::TooLarge("length"))?;
            // Filled, so every page is touched before the timer (a fresh zeroed buffer would
            // take its page faults during the transfer): the figure is the device's.
            let mut buf = vec![0xa5u8; len];
            let t0 = Instant::now();
            dev.read_at(*offset, &mut buf)?;
            // The device transfer alone: no set-up, no digest, no output.
            let secs = t0.elapsed().as_secs_f64();
            let written = if output.as_os_str() == "-" {
                std::io::stdout().write_all(&buf)
            } else {
                std::fs::write(output, &buf)
            };
            written.map_err(|source| CliError::Write {
                path: output.clone(),
                source,
            })?;
            let mib_s = len as f64 / (1024.0 * 1024.0) / secs.max(1e-9);
            json!({
                "ok": true, "read": len, "sha256": sha256_hex(&buf),
                "seconds": secs, "read_mib_s": mib_s,
            })
        }
        Cmd::Write { offset, input } => {
            let data = std::fs::read(input).map_err(|source| CliError::Read {
                path: input.clone(),
                source,
            })?;
            dev.write_at(*offset, &data)?;
            json!({ "ok": true, "written": data.len(), "sha256": sha256_hex(&data) })
        }
        Cmd::Flush => {
            dev.flush()?;
            json!({ "ok": true })
        }
        Cmd::GetId => {
            let id = dev.get_id()?;
            let s = String::from_utf8_lossy(&id)
                .trim_end_matches('\0')
                .to_string();
            if !args.json {
                println!("{s}");
            }
            json!({ "ok": true, "id": s })
        }
        Cmd::Discard { offset, length } => {
            dev.discard(*offset, *length)?;
            json!({ "ok": true })
        }
        Cmd::WriteZeroes {
            offset,
            length,
            unmap,
        } => {
            dev.write_zeroes(*offset, *length, *unmap)?;
            json!({ "ok": true })
        }
        Cmd::Roundtrip { offset, size } => roundtrip(&mut dev, *offset, *size, args.json)?,
        Cmd::Ublk {
            id,
            depth,
            max_io,
            sandbox,
        } => ublk(
            &mut dev,
            *id,
            *depth,
            *max_io,
            *sandbox == OnOff::On,
            args.json,
        )?,
        // `run` serves it without a device; with one it is refused there.
        Cmd::UblkDelete { .. } => return Err(CliError::DeviceFlagsUnused),
    };
    // A device that reports more bytes written than were posted is lying: the driver clamps
    // the length, and says so here rather than silently.
    let lies = dev.ring_stats().bogus_len;
    let mut out = out;
    if lies > 0 {
        eprintln!("swiotlb-guest: the device reported a used length above what was posted {lies} time(s) (clamped)");
        if let Some(o) = out.as_object_mut() {
            o.insert("used_len_above_posted".into(), lies.into());
        }
    }
    if args.json {
        println!("{out}");
    }
    Ok(())
}

fn roundtrip<P: PciAccess>(
    dev: &mut BlockDriver<P>,
    offset: u64,
    size: u64,
    quiet: bool,
) -> Result<serde_json::Value, CliError> {
    let len = usize::try_from(size).map_err(|_| CliError::TooLarge("size"))?;
    // Deterministic pseudo-random data (xorshift), so a rerun writes the same bytes.
    let mut data = vec![0u8; len];
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ offset;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    let t0 = Instant::now();
    dev.write_at(offset, &data)?;
    dev.flush()?;
    let tw = t0.elapsed();
    let mut back = vec![0u8; len];
    let t1 = Instant::now();
    dev.read_at(offset, &mut back)?;
    let tr = t1.elapsed();
    let (w, r) = (sha256_hex(&data), sha256_hex(&back));
    let mib = size as f64 / (1024.0 * 1024.0);
    let wr = mib / tw.as_secs_f64().max(1e-9);
    let rd = mib / tr.as_secs_f64().max(1e-9);
    if !quiet {
        println!("wrote {size} bytes at {offset}: sha256 {w} ({wr:.0} MiB/s, flush included)");
        println!("read  {size} bytes at {offset}: sha256 {r} ({rd:.0} MiB/s)");
        println!("checksums {}", if w == r { "match" } else { "DIFFER" });
    }
    if w != r {
        return Err(CliError::ReadBackDiffers { wrote: w, read: r });
    }
    Ok(json!({
        "ok": true, "bytes": size, "sha256": w,
        "write_mib_s": wr, "read_mib_s": rd,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `parse_pci_spec`'s value, or `Err(())`: its error is not comparable.
    fn parse_pci_spec_ok(s: &str) -> Result<PciSpec, ()> {
        parse_pci_spec(s).map_err(|_| ())
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("swiotlb-guest").chain(argv.iter().copied()))
    }

    #[test]
    fn exactly_one_device_flag() {
        let a = parse(&["--socket", "/run/s.sock", "info"]).unwrap();
        assert_eq!(a.socket, Some(PathBuf::from("/run/s.sock")));
        assert_eq!(a.pci, None);
        let a = parse(&["--pci", "sysfs:auto", "--json", "info"]).unwrap();
        assert_eq!(a.pci, Some(PciSpec::Auto(Backend::Sysfs)));
        assert!(a.socket.is_none() && a.json);
        let a = parse(&["--pci", "sysfs:00:04.0", "roundtrip", "--size", "1M"]).unwrap();
        assert_eq!(
            a.pci,
            Some(PciSpec::Bdf(Backend::Sysfs, "0000:00:04.0".into()))
        );
        let a = parse(&["--pci", "vfio:auto", "info"]).unwrap();
        assert_eq!(a.pci, Some(PciSpec::Auto(Backend::Vfio)));
        assert!(
            parse(&["--socket", "/s", "--pci", "vfio:auto", "info"]).is_err(),
            "both"
        );
        assert!(parse(&["info"]).is_err(), "neither");
        assert!(
            parse(&["--socket", "/s", "--pci", "sysfs:auto", "info"]).is_err(),
            "both"
        );
    }

    #[test]
    fn pci_specs() {
        assert_eq!(
            parse_pci_spec_ok("sysfs:auto"),
            Ok(PciSpec::Auto(Backend::Sysfs))
        );
        assert_eq!(
            parse_pci_spec_ok("sysfs:0000:00:04.0"),
            Ok(PciSpec::Bdf(Backend::Sysfs, "0000:00:04.0".into()))
        );
        assert_eq!(
            parse_pci_spec_ok("vfio:auto"),
            Ok(PciSpec::Auto(Backend::Vfio))
        );
        assert_eq!(
            parse_pci_spec_ok("vfio:0000:00:04.0"),
            Ok(PciSpec::Bdf(Backend::Vfio, "0000:00:04.0".into()))
        );
        assert_eq!(
            parse_pci_spec_ok("vfio:00:1F.7"),
            Ok(PciSpec::Bdf(Backend::Vfio, "0000:00:1f.7".into()))
        );
        for bad in [
            "",
            "sysfs",
            "sysfs:",
            "auto",
            "vfio",
            "vfio:",
            "vfio:AUTO",
            "vfio:0000:00:04",
            "vfio:../../x",
            "vfio-pci:0000:00:04.0",
            "uio:auto",
            "sysfs:0000:00:04",
            "sysfs:../../x",
            "SYSFS:auto",
            "VFIO:auto",
        ] {
            assert!(parse_pci_spec(bad).is_err(), "accepted {bad:?}");
        }
    }

    fn function(root: &Path, bdf: &str, vendor: &str, device: &str) {
        let d = discovery::devices_dir(root).join(bdf);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vendor"), vendor).unwrap();
        std::fs::write(d.join("device"), device).unwrap();
    }

    #[test]
    fn auto_needs_exactly_one_match() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let e = resolve_pci(&PciSpec::Auto(Backend::Sysfs), root)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no virtio-blk function"), "{e}");
        function(root, "0000:00:03.0", "0x8086\n", "0x100e\n");
        function(root, "0000:00:04.0", "0x1af4\n", "0x1042\n");
        assert_eq!(
            resolve_pci(&PciSpec::Auto(Backend::Sysfs), root).unwrap(),
            discovery::devices_dir(root).join("0000:00:04.0")
        );
        function(root, "0000:00:05.0", "0x1af4\n", "0x1042\n");
        let e = resolve_pci(&PciSpec::Auto(Backend::Sysfs), root)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("several") && e.contains("0000:00:04.0, 0000:00:05.0"),
            "{e}"
        );
        // One of the two owned by a kernel driver (a boot disk): the other is meant.
        let devs = discovery::devices_dir(root);
        let drv = root.join("bus/pci/drivers/virtio-pci");
        std::fs::create_dir_all(&drv).unwrap();
        std::os::unix::fs::symlink(&drv, devs.join("0000:00:04.0/driver")).unwrap();
        assert_eq!(
            resolve_pci(&PciSpec::Auto(Backend::Sysfs), root).unwrap(),
            devs.join("0000:00:05.0")
        );
        // Both owned: refused, saying so.
        std::os::unix::fs::symlink(&drv, devs.join("0000:00:05.0/driver")).unwrap();
        let e = resolve_pci(&PciSpec::Auto(Backend::Sysfs), root)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0000:00:04.0 (bound to virtio-pci), 0000:00:05.0 (bound to virtio-pci)"),
            "{e}"
        );
        // A single match is used even when bound: opening it then says how to unbind.
        std::fs::remove_dir_all(devs.join("0000:00:05.0")).unwrap();
        assert_eq!(
            resolve_pci(&PciSpec::Auto(Backend::Sysfs), root).unwrap(),
            devs.join("0000:00:04.0")
        );
        assert_eq!(
            resolve_pci(&PciSpec::Bdf(Backend::Sysfs, "0000:00:09.0".into()), root).unwrap(),
            discovery::devices_dir(root).join("0000:00:09.0")
        );
    }

    #[test]
    fn vfio_auto_takes_the_function_vfio_pci_owns_or_else_the_free_one() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let auto = PciSpec::Auto(Backend::Vfio);
        let devs = discovery::devices_dir(root);
        let bind = |bdf: &str, driver: &str| {
            let drv = root.join("bus/pci/drivers").join(driver);
            std::fs::create_dir_all(&drv).unwrap();
            let link = devs.join(bdf).join("driver");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&drv, link).unwrap();
        };
        let e = resolve_pci(&auto, root).unwrap_err().to_string();
        assert!(e.contains("no virtio-blk function"), "{e}");
        function(root, "0000:00:03.0", "0x8086\n", "0x100e\n");
        bind("0000:00:03.0", "vfio-pci"); // vfio-pci, but not virtio-blk: never chosen
        function(root, "0000:00:04.0", "0x1af4\n", "0x1042\n");
        // One, free: chosen (opening it says how to bind it).
        assert_eq!(resolve_pci(&auto, root).unwrap(), devs.join("0000:00:04.0"));
        // One, bound to another driver: refused, naming it.
        bind("0000:00:04.0", "virtio-pci");
        let e = resolve_pci(&auto, root).unwrap_err().to_string();
        assert!(e.contains("0000:00:04.0 (bound to virtio-pci)"), "{e}");
        // A second one bound to vfio-pci: that one.
        function(root, "0000:00:05.0", "0x1af4\n", "0x1042\n");
        bind("0000:00:05.0", "vfio-pci");
        assert_eq!(resolve_pci(&auto, root).unwrap(), devs.join("0000:00:05.0"));
        // vfio-pci wins over a free one.
        std::fs::remove_file(devs.join("0000:00:04.0/driver")).unwrap();
        assert_eq!(resolve_pci(&auto, root).unwrap(), devs.join("0000:00:05.0"));
        // Two bound to vfio-pci: refused, listing both.
        bind("0000:00:04.0", "vfio-pci");
        let e = resolve_pci(&auto, root).unwrap_err().to_string();
        assert!(
            e.contains("0000:00:04.0 (bound to vfio-pci), 0000:00:05.0 (bound to vfio-pci)")
                && e.contains("--pci vfio:<BDF>"),
            "{e}"
        );
        // Two free, none bound: refused.
        std::fs::remove_file(devs.join("0000:00:04.0/driver")).unwrap();
        std::fs::remove_file(devs.join("0000:00:05.0/driver")).unwrap();
        let e = resolve_pci(&auto, root).unwrap_err().to_string();
        assert!(e.contains("0000:00:04.0, 0000:00:05.0"), "{e}");
        // A BDF is taken as given.
        assert_eq!(
            resolve_pci(&PciSpec::Bdf(Backend::Vfio, "0000:00:09.0".into()), root).unwrap(),
            devs.join("0000:00:09.0")
        );
    }
}
