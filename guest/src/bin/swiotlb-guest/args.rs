//! The command line: the global flags, the subcommands and their value types.

use std::path::PathBuf;

use clap::{ArgGroup, Parser, Subcommand};
use swiotlb_guest::pci::pool_map::PoolMapMode;
use swiotlb_shared::units::parse_size;

use crate::pci_spec::{parse_pci_spec, PciSpec};

/// Drive a virtio-blk device through its SWIOTLB pool.
#[derive(Parser, Debug)]
#[command(name = "swiotlb-guest", version)]
#[command(group(ArgGroup::new("device").args(["socket", "pci"])))]
pub struct Args {
    /// vfio-user socket of the device.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The device as a PCI function of this machine (root). Through sysfs (no kernel driver
    /// bound; no interrupts, completions are polled): `sysfs:auto` (the one 1af4:1042
    /// function under /sys/bus/pci/devices; among several, the one no kernel driver owns)
    /// or `sysfs:DDDD:BB:DD.F`. Through kernel VFIO (the function bound to vfio-pci, an
    /// IOMMU group, so a vIOMMU; MSI-X interrupts): `vfio:auto` (the one 1af4:1042 function
    /// bound to vfio-pci; failing that, the one bound to no driver) or `vfio:DDDD:BB:DD.F`.
    #[arg(long, value_name = "SPEC", value_parser = parse_pci_spec)]
    pub pci: Option<PciSpec>,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
    /// How to map the pool of a --pci function: `auto` (write-back through /dev/mem where
    /// the kernel allows it, else write-combining, else the BAR's own uncached mapping, with
    /// a warning), `write-back` (or fail), `bar` (the BAR's own mapping).
    #[arg(long, value_enum, default_value_t = PoolMapArg::Auto)]
    pub pool_map: PoolMapArg,
    /// Decline VIRTIO_F_SWIOTLB and report what the device does (testing the device's policy).
    #[arg(long)]
    pub decline_swiotlb: bool,
    /// Attester proving the session to a device that requires it: `auto` (configfs-tsm when
    /// present), `snp`, `tdx`, `emulated` (needs --emulated-key; CI only) or `none`.
    #[arg(long, value_enum, default_value_t = AttesterArg::Auto)]
    pub attester: AttesterArg,
    /// Emulated ARK private key (PKCS#8, from `swiotlb-attest emulated-keygen`).
    #[arg(long)]
    pub emulated_key: Option<PathBuf>,
    /// How long to wait for each completion, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Poll the used ring this many microseconds for a completion before asking for an
    /// interrupt and sleeping (interrupts suppressed meanwhile, EVENT_IDX). Spends a CPU
    /// while I/O is in flight and saves an interrupt and a wake-up per request. 0: sleep at
    /// once (back ends without interrupts always poll).
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub poll_us: u64,
    /// Request queues to set up when the device offers VIRTIO_BLK_F_MQ (default: every
    /// queue it has, at most 16), each with its own share of the pool; `ublk` serves each
    /// through a ublk hardware queue and a thread of its own, the other commands use queue 0.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=16))]
    pub queues: Option<u16>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// `--pool-map` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolMapArg {
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
pub enum AttesterArg {
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
pub enum Cmd {
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

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::pci_spec::Backend;

    /// Parses a command line (without the program's name).
    pub fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
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
        // Neither: the command refuses it (`run`), since ublk-delete needs no device.
        assert!(
            parse(&["--socket", "/s", "--pci", "sysfs:auto", "info"]).is_err(),
            "both"
        );
    }
}
