//! `swiotlb-guest`: drives a SWIOTLB virtio-blk device over vfio-user. Every buffer the
//! device sees is a bounce slot in its pool.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;
use swiotlb_guest::attest::{self, AttesterChoice};
use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::{BlockDriver, Options};
use swiotlb_shared::error_chain;
use swiotlb_shared::units::parse_size;

/// Drive a virtio-blk device through its SWIOTLB pool.
#[derive(Parser, Debug)]
#[command(name = "swiotlb-guest", version)]
struct Args {
    /// vfio-user socket of the device.
    #[arg(long)]
    socket: PathBuf,
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
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
    #[command(subcommand)]
    cmd: Cmd,
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
            if args.json {
                println!("{}", json!({ "ok": false, "error": e }));
            }
            eprintln!("swiotlb-guest: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn run(args: &Args) -> Result<(), String> {
    let client = VfioUserClient::connect(&args.socket).map_err(|e| {
        format!(
            "connecting to {}: {}",
            args.socket.display(),
            error_chain(&e)
        )
    })?;
    let opts = Options {
        decline_swiotlb: args.decline_swiotlb,
        timeout: Duration::from_millis(args.timeout_ms),
        ..Options::default()
    };
    let choice = match (args.attester, &args.emulated_key) {
        (AttesterArg::Emulated, Some(k)) => Some(AttesterChoice::Emulated(k.clone())),
        (AttesterArg::Emulated, None) => {
            return Err("--attester emulated needs --emulated-key FILE".into())
        }
        (_, Some(_)) => return Err("--emulated-key is only used with --attester emulated".into()),
        (AttesterArg::Auto, None) => Some(AttesterChoice::Auto),
        (AttesterArg::Snp, None) => Some(AttesterChoice::Snp),
        (AttesterArg::Tdx, None) => Some(AttesterChoice::Tdx),
        (AttesterArg::None, None) => None,
    };
    let attester = match &choice {
        Some(c) => attest::choose(c).map_err(|e| error_chain(&e))?,
        None => None,
    };
    let mut dev = BlockDriver::open_attested(client, &opts, attester.as_deref())
        .map_err(|e| error_chain(&e))?;
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
            }
            json!({ "ok": true, "info": info })
        }
        Cmd::Read {
            offset,
            length,
            output,
        } => {
            let len = usize::try_from(*length).map_err(|_| "length too large".to_string())?;
            let mut buf = vec![0u8; len];
            dev.read_at(*offset, &mut buf)
                .map_err(|e| error_chain(&e))?;
            if output.as_os_str() == "-" {
                std::io::stdout()
                    .write_all(&buf)
                    .map_err(|e| e.to_string())?;
            } else {
                std::fs::write(output, &buf)
                    .map_err(|e| format!("writing {}: {e}", output.display()))?;
            }
            json!({ "ok": true, "read": len, "sha256": sha256_hex(&buf) })
        }
        Cmd::Write { offset, input } => {
            let data =
                std::fs::read(input).map_err(|e| format!("reading {}: {e}", input.display()))?;
            dev.write_at(*offset, &data).map_err(|e| error_chain(&e))?;
            json!({ "ok": true, "written": data.len(), "sha256": sha256_hex(&data) })
        }
        Cmd::Flush => {
            dev.flush().map_err(|e| error_chain(&e))?;
            json!({ "ok": true })
        }
        Cmd::GetId => {
            let id = dev.get_id().map_err(|e| error_chain(&e))?;
            let s = String::from_utf8_lossy(&id)
                .trim_end_matches('\0')
                .to_string();
            if !args.json {
                println!("{s}");
            }
            json!({ "ok": true, "id": s })
        }
        Cmd::Discard { offset, length } => {
            dev.discard(*offset, *length).map_err(|e| error_chain(&e))?;
            json!({ "ok": true })
        }
        Cmd::WriteZeroes {
            offset,
            length,
            unmap,
        } => {
            dev.write_zeroes(*offset, *length, *unmap)
                .map_err(|e| error_chain(&e))?;
            json!({ "ok": true })
        }
        Cmd::Roundtrip { offset, size } => roundtrip(&mut dev, *offset, *size, args.json)?,
    };
    if args.json {
        println!("{out}");
    }
    Ok(())
}

fn roundtrip<P: swiotlb_guest::pci::PciAccess>(
    dev: &mut BlockDriver<P>,
    offset: u64,
    size: u64,
    quiet: bool,
) -> Result<serde_json::Value, String> {
    let len = usize::try_from(size).map_err(|_| "size too large".to_string())?;
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
    dev.write_at(offset, &data).map_err(|e| error_chain(&e))?;
    dev.flush().map_err(|e| error_chain(&e))?;
    let tw = t0.elapsed();
    let mut back = vec![0u8; len];
    let t1 = Instant::now();
    dev.read_at(offset, &mut back)
        .map_err(|e| error_chain(&e))?;
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
        return Err(format!(
            "read-back data differs: wrote sha256 {w}, read {r}"
        ));
    }
    Ok(json!({
        "ok": true, "bytes": size, "sha256": w,
        "write_mib_s": wr, "read_mib_s": rd,
    }))
}
