//! `swiotlb-guest`: drives a SWIOTLB virtio-blk device, over vfio-user (`--socket`) or as a
//! PCI function of this Linux machine through sysfs or kernel VFIO (`--pci`). Every buffer the
//! device sees is a bounce slot in its pool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use swiotlb_guest::attest::{self, AttestError, AttesterChoice};
use swiotlb_guest::pci::discovery;
use swiotlb_guest::pci::sysfs::SysfsPci;
use swiotlb_guest::pci::vfio::VfioPci;
use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::pci::{PciAccess, PciError};
use swiotlb_guest::ublk::{serve, ServeOptions, UblkError};
use swiotlb_guest::{BlockDriver, BlockError, Options};
use swiotlb_shared::error_chain;
use thiserror::Error;

mod args;
mod pci_spec;

use args::{Args, AttesterArg, Cmd, OnOff};
use pci_spec::{resolve_pci, Backend, PciSpec, PciSpecError};

/// Why the command failed. `main` prints it with its sources, on one line.
#[derive(Debug, Error)]
enum CliError {
    /// `--pci` names no function this machine has, or not exactly one.
    #[error(transparent)]
    PciSpec(#[from] PciSpecError),
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
        return ublk_delete(id, force, args.json);
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

/// `swiotlb-guest ublk-delete`: deletes a ublk device whose server is gone.
fn ublk_delete(id: u32, force: bool, json_out: bool) -> Result<(), CliError> {
    let deleted = swiotlb_guest::ublk::delete::delete(id, force)?;
    if json_out {
        println!(
            "{}",
            json!({ "ok": true, "event": "ublk_deleted", "deleted": deleted })
        );
        return Ok(());
    }
    // The kernel records -1 once the server is gone (0: it never started one).
    let server = match (deleted.server_pid, deleted.server_running) {
        (pid, true) => format!("its server, process {pid}, still ran: forced"),
        (pid, false) if pid > 0 => format!("its server, process {pid}, was gone"),
        _ => "no server".to_string(),
    };
    println!(
        "deleted ublk device {} (state {}; {server})",
        deleted.dev_id, deleted.state
    );
    Ok(())
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
    use args::tests::parse;

    #[test]
    fn a_device_command_needs_a_device_and_ublk_delete_takes_none() {
        // Neither flag: clap takes it (ublk-delete needs none), the command refuses it.
        let a = parse(&["info"]).unwrap();
        assert!(matches!(run(&a), Err(CliError::DeviceFlags)));
        let a = parse(&["ublk-delete", "--id", "3", "--force"]).unwrap();
        assert!(matches!(a.cmd, Cmd::UblkDelete { id: 3, force: true }));
        // ublk-delete with a device flag: refused before anything is opened.
        let a = parse(&["--socket", "/nonexistent", "ublk-delete", "--id", "3"]).unwrap();
        assert!(matches!(run(&a), Err(CliError::DeviceFlagsUnused)));
    }
}
