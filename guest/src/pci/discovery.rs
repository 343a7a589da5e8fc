//! Finding PCI functions in sysfs and reading what the kernel says about them, for both
//! back ends of a real function ([`super::sysfs`] and [`super::vfio`]): the functions under
//! `/sys/bus/pci/devices` (modern virtio-blk, 1af4:1042), their PCI addresses, the driver
//! each is bound to, and the BARs the kernel assigned (the `resource` file).
//!
//! What these files say comes from the host: every value is checked before use, and
//! nothing here panics on file contents.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use swiotlb_shared::pci::{VIRTIO_PCI_DEVICE_ID_BLOCK, VIRTIO_PCI_VENDOR_ID};
use thiserror::Error;

use super::PciError;

/// Where sysfs is mounted.
pub const SYSFS_ROOT: &str = "/sys";
/// The directory of PCI functions, relative to the sysfs root.
pub const DEVICES_DIR: &str = "bus/pci/devices";
/// Number of BARs of a type-0 header.
pub const NUM_BARS: usize = 6;
/// Most bytes read from the `resource` file (a function has at most a few dozen lines of
/// 57 bytes).
const MAX_RESOURCE_BYTES: u64 = 64 * 1024;
/// Most bytes read from a small attribute (`vendor`, `device`, `enable`).
const MAX_ATTR_BYTES: u64 = 64;
/// `IORESOURCE_IO`: an I/O port BAR.
pub const IORESOURCE_IO: u64 = 0x0000_0100;
/// `IORESOURCE_MEM`: a memory BAR.
pub const IORESOURCE_MEM: u64 = 0x0000_0200;
/// `IORESOURCE_PREFETCH`: a prefetchable memory BAR (sysfs then offers `resourceN_wc`).
pub const IORESOURCE_PREFETCH: u64 = 0x0000_2000;
/// `IORESOURCE_DISABLED`: the resource is not in use.
pub const IORESOURCE_DISABLED: u64 = 0x1000_0000;
/// `IORESOURCE_UNSET`: the kernel sized the BAR but could not give it an address.
pub const IORESOURCE_UNSET: u64 = 0x2000_0000;

/// One BAR as the `resource` file describes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BarResource {
    /// Address the BAR decodes at, as the kernel reports it.
    pub start: u64,
    /// Size in bytes (0: the BAR is unused).
    pub size: u64,
    /// The kernel's `IORESOURCE_*` flags.
    pub flags: u64,
}

impl BarResource {
    /// Whether the BAR is a memory BAR.
    pub fn is_memory(&self) -> bool {
        self.size != 0 && self.flags & IORESOURCE_MEM != 0
    }

    /// Whether the BAR is prefetchable memory.
    pub fn is_prefetchable(&self) -> bool {
        self.is_memory() && self.flags & IORESOURCE_PREFETCH != 0
    }

    /// Whether the BAR is an I/O port BAR.
    pub fn is_io(&self) -> bool {
        self.size != 0 && self.flags & IORESOURCE_IO != 0
    }

    /// Whether the kernel gave the BAR an address.
    pub fn is_assigned(&self) -> bool {
        self.size != 0 && self.flags & (IORESOURCE_UNSET | IORESOURCE_DISABLED) == 0
    }
}

/// At most the first 40 characters of `s`, for error messages about file contents.
pub(super) fn excerpt(s: &str) -> String {
    let mut e: String = s.chars().take(40).collect();
    if s.chars().nth(40).is_some() {
        e.push('…');
    }
    e
}

/// What is wrong with a sysfs text this module parses (a `resource` file, an ID file) or
/// with a PCI address.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DiscoveryError {
    /// Not a hexadecimal number.
    #[error("{0:?} is not a hexadecimal number")]
    NotHex(String),
    /// A hexadecimal number wider than 64 bits.
    #[error("{0:?} does not fit 64 bits")]
    HexTooWide(String),
    /// A BAR line that is not three words.
    #[error("BAR {bar}: expected `start end flags`, found {line:?}")]
    BarLine {
        /// The BAR.
        bar: usize,
        /// The start of the line.
        line: String,
    },
    /// A word of a BAR line that is not a number.
    #[error("BAR {bar} {field}")]
    BarField {
        /// The BAR.
        bar: usize,
        /// Which word: `start`, `end` or `flags`.
        field: &'static str,
        /// What is wrong with it.
        #[source]
        source: Box<DiscoveryError>,
    },
    /// A BAR that ends before it starts.
    #[error("BAR {bar}: end {end:#x} lies below start {start:#x}")]
    EndBelowStart {
        /// The BAR.
        bar: usize,
        /// Its first address.
        start: u64,
        /// Its last address.
        end: u64,
    },
    /// A BAR whose size does not fit 64 bits.
    #[error("BAR {bar}: [{start:#x}, {end:#x}] overflows 64 bits")]
    SizeOverflow {
        /// The BAR.
        bar: usize,
        /// Its first address.
        start: u64,
        /// Its last address.
        end: u64,
    },
    /// A BAR whose flags say neither or both of I/O and memory.
    #[error("BAR {bar}: flags {flags:#x} say neither or both of I/O and memory")]
    Kind {
        /// The BAR.
        bar: usize,
        /// Its `IORESOURCE_*` flags.
        flags: u64,
    },
    /// A BAR whose size is not a power of two.
    #[error("BAR {bar}: size {size:#x} is not a power of two")]
    NotPowerOfTwo {
        /// The BAR.
        bar: usize,
        /// Its size.
        size: u64,
    },
    /// A BAR smaller than PCI allows.
    #[error("BAR {bar}: size {size:#x} is below the {min} bytes PCI allows")]
    TooSmall {
        /// The BAR.
        bar: usize,
        /// Its size.
        size: u64,
        /// The least PCI allows for its kind.
        min: u64,
    },
    /// A BAR not aligned to its size.
    #[error("BAR {bar}: address {start:#x} is not aligned to its size {size:#x}")]
    Unaligned {
        /// The BAR.
        bar: usize,
        /// Its address.
        start: u64,
        /// Its size.
        size: u64,
    },
    /// A `resource` file with fewer lines than BARs.
    #[error("{lines} lines, expected at least {NUM_BARS} (one per BAR)")]
    TooFewLines {
        /// Lines there were.
        lines: usize,
    },
    /// Not a PCI address.
    #[error("{0:?} is not a PCI address (DDDD:BB:DD.F)")]
    NotBdf(String),
}

/// A hexadecimal number of at most 64 bits, with or without `0x`.
fn parse_hex(s: &str) -> Result<u64, DiscoveryError> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DiscoveryError::NotHex(excerpt(s)));
    }
    u64::from_str_radix(digits, 16).map_err(|_| DiscoveryError::HexTooWide(excerpt(s)))
}

/// Checks one BAR line (`start end flags`) of the `resource` file.
fn parse_bar(bar: usize, line: &str) -> Result<BarResource, DiscoveryError> {
    let mut words = line.split_ascii_whitespace();
    let (Some(a), Some(b), Some(c), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(DiscoveryError::BarLine {
            bar,
            line: excerpt(line),
        });
    };
    let field = |field: &'static str, s: &str| {
        parse_hex(s).map_err(|e| DiscoveryError::BarField {
            bar,
            field,
            source: Box::new(e),
        })
    };
    let (start, end, flags) = (field("start", a)?, field("end", b)?, field("flags", c)?);
    if start == 0 && end == 0 {
        // Unused (or the upper half of a 64-bit BAR).
        return Ok(BarResource::default());
    }
    if end < start {
        return Err(DiscoveryError::EndBelowStart { bar, start, end });
    }
    let size = (end - start)
        .checked_add(1)
        .ok_or(DiscoveryError::SizeOverflow { bar, start, end })?;
    match (flags & IORESOURCE_IO != 0, flags & IORESOURCE_MEM != 0) {
        (true, false) | (false, true) => {}
        _ => return Err(DiscoveryError::Kind { bar, flags }),
    }
    if !size.is_power_of_two() {
        return Err(DiscoveryError::NotPowerOfTwo { bar, size });
    }
    // The smallest BARs PCI allows: 16 bytes of memory, 4 of I/O ports.
    let min = if flags & IORESOURCE_MEM != 0 { 16 } else { 4 };
    if size < min {
        return Err(DiscoveryError::TooSmall { bar, size, min });
    }
    if start % size != 0 {
        return Err(DiscoveryError::Unaligned { bar, start, size });
    }
    Ok(BarResource { start, size, flags })
}

/// Parses the `resource` file: its first six lines are BARs 0 to 5 (later lines, the ROM
/// and bridge or SR-IOV windows, are not used and not looked at).
pub fn parse_resource(text: &str) -> Result<[BarResource; NUM_BARS], DiscoveryError> {
    let mut bars = [BarResource::default(); NUM_BARS];
    let mut lines = text.lines();
    for (i, bar) in bars.iter_mut().enumerate() {
        let line = lines
            .next()
            .ok_or(DiscoveryError::TooFewLines { lines: i })?;
        *bar = parse_bar(i, line)?;
    }
    Ok(bars)
}

/// Parses a PCI address: `DDDD:BB:DD.F`, or `BB:DD.F` in domain 0. Returns it as sysfs
/// names the function (lower-case, zero-padded), so it can only ever name an entry of the
/// devices directory.
pub fn parse_bdf(s: &str) -> Result<String, DiscoveryError> {
    let bad = || DiscoveryError::NotBdf(excerpt(s));
    let num = |t: &str, max_digits: usize, max: u32| -> Result<u32, DiscoveryError> {
        if t.is_empty() || t.len() > max_digits || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u32::from_str_radix(t, 16)
            .ok()
            .filter(|v| *v <= max)
            .ok_or_else(bad)
    };
    let (rest, func) = s.rsplit_once('.').ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (domain, bus, dev) = match parts.as_slice() {
        [d, b, v] => (num(d, 8, u32::MAX)?, *b, *v),
        [b, v] => (0, *b, *v),
        _ => return Err(bad()),
    };
    let (bus, dev, func) = (num(bus, 2, 0xff)?, num(dev, 2, 0x1f)?, num(func, 1, 7)?);
    Ok(format!("{domain:04x}:{bus:02x}:{dev:02x}.{func}"))
}

/// The directory of PCI functions under `sysfs_root`.
pub fn devices_dir(sysfs_root: &Path) -> PathBuf {
    sysfs_root.join(DEVICES_DIR)
}

/// Reads a small attribute file (at most [`MAX_ATTR_BYTES`]).
pub(super) fn read_attr(path: &Path) -> std::io::Result<String> {
    let mut s = String::new();
    File::open(path)?
        .take(MAX_ATTR_BYTES)
        .read_to_string(&mut s)?;
    Ok(s)
}

/// A 16-bit ID file (`vendor`, `device`: "0x1af4\n").
fn read_id(path: &Path) -> Option<u16> {
    let s = read_attr(path).ok()?;
    let v = parse_hex(s.trim()).ok()?;
    u16::try_from(v).ok()
}

/// Lists the modern virtio-blk functions (vendor 0x1af4, device 0x1042 by their `vendor`
/// and `device` files) under `<sysfs_root>/bus/pci/devices`, sorted. An unreadable
/// directory or entry is simply not listed.
pub fn find_devices(sysfs_root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(devices_dir(sysfs_root)) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            read_id(&p.join("vendor")) == Some(VIRTIO_PCI_VENDOR_ID)
                && read_id(&p.join("device")) == Some(VIRTIO_PCI_DEVICE_ID_BLOCK)
        })
        .collect();
    found.sort();
    found
}

/// The kernel driver bound to the function in `dir` (its `driver` link), if any; `Some("?")`
/// when the link exists but cannot be read.
pub fn bound_driver(dir: &Path) -> Option<String> {
    let link = dir.join("driver");
    fs::symlink_metadata(&link).ok()?;
    Some(
        fs::read_link(&link)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "?".into()),
    )
}

/// Reads and parses the `resource` file of the function in `dir`.
pub fn read_resources(dir: &Path) -> Result<[BarResource; NUM_BARS], PciError> {
    let path = dir.join("resource");
    let mut raw = Vec::new();
    File::open(&path)
        .and_then(|f| f.take(MAX_RESOURCE_BYTES).read_to_end(&mut raw))
        .map_err(sysfs_err(&path, "reading"))?;
    let text = String::from_utf8_lossy(&raw);
    parse_resource(&text).map_err(|source| PciError::Resource { path, source })
}

/// The name of the function in `dir` (its BDF: the directory's name), for messages.
pub fn bdf_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Checks that `dir` is a directory, as a function's sysfs directory is.
pub(super) fn check_function_dir(dir: &Path) -> Result<(), PciError> {
    let meta = fs::metadata(dir).map_err(sysfs_err(dir, "looking up the PCI function"))?;
    if !meta.is_dir() {
        return Err(PciError::SysfsInvalid {
            path: dir.to_path_buf(),
            why: "not a directory (expected /sys/bus/pci/devices/<BDF>)".into(),
        });
    }
    Ok(())
}

/// The error of a sysfs file `path` that could not be used for `what`.
pub(super) fn sysfs_err(
    path: &Path,
    what: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> PciError {
    let (path, what) = (path.to_path_buf(), what.into());
    move |source| PciError::Sysfs { path, what, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::fake_sysfs::{
        function, good_resource, line, Tree, MEM32_FLAGS, POOL_SIZE, REGS_ADDR,
    };
    use proptest::prelude::*;
    use swiotlb_shared::pci::device_layout as dl;

    #[test]
    fn resource_parsing() {
        let bars = parse_resource(&good_resource()).unwrap();
        assert_eq!(
            bars[0],
            BarResource {
                start: REGS_ADDR,
                size: dl::REGS_BAR_SIZE,
                flags: MEM32_FLAGS
            }
        );
        assert!(bars[0].is_memory() && bars[0].is_assigned() && !bars[0].is_io());
        assert_eq!(bars[2].size, POOL_SIZE);
        for i in [1, 3, 4, 5] {
            assert_eq!(bars[i], BarResource::default(), "BAR {i} unused");
            assert!(!bars[i].is_memory() && !bars[i].is_assigned());
        }
        // Exactly six lines is enough; without the 0x prefix too; trailing lines ignored.
        let six: String = good_resource()
            .lines()
            .take(6)
            .map(|l| l.to_string() + "\n")
            .collect();
        assert_eq!(parse_resource(&six).unwrap(), bars);
        let bare = six.replace("0x", "");
        assert_eq!(parse_resource(&bare).unwrap(), bars);
        assert!(parse_resource(&(six.clone() + "garbage\n")).is_ok());

        // An I/O BAR, and a BAR the kernel could not place.
        let io = line(0xc000, 0x40, IORESOURCE_IO | 0x4_0000);
        let unset = line(0, 0x1000, IORESOURCE_MEM | IORESOURCE_UNSET);
        let text = [
            io,
            unset,
            six.lines().skip(2).map(|l| l.to_string() + "\n").collect(),
        ]
        .concat();
        let b = parse_resource(&text).unwrap();
        assert!(b[0].is_io() && !b[0].is_memory() && b[0].size == 0x40);
        assert!(b[1].is_memory() && !b[1].is_assigned() && b[1].size == 0x1000);
    }

    #[test]
    fn resource_parsing_refuses_nonsense() {
        let with_bar0 = |l: &str| {
            let mut lines: Vec<String> = good_resource().lines().map(str::to_string).collect();
            lines[0] = l.to_string();
            lines.join("\n")
        };
        let max = u64::MAX;
        for bad in [
            // Malformed.
            String::new(),
            "0x0 0x0".into(),
            "0x0 0x0 0x0 0x0".into(),
            "0xfe000000 0xfe007fff zz".into(),
            "0x 0x0 0x0".into(),
            "+1 0x0 0x0".into(),
            "-0x1 0x0 0x0".into(),
            "0xfe000000,0xfe007fff,0x200".into(),
            // Addresses that overflow.
            "0x1fe000000000000000 0x1fe000000000007fff 0x200".into(),
            format!("0x0 {max:#x} 0x200"),
            "0xfe008000 0xfe007fff 0x200".into(),
            // Sizes that are not powers of two.
            "0xfe000000 0xfe002fff 0x200".into(),
            "0xfe000000 0xfe000002 0x200".into(),
            // Smaller than PCI allows.
            "0xfe000000 0xfe000000 0x200".into(),
            "0xfe000000 0xfe000007 0x200".into(),
            "0xc000 0xc001 0x100".into(),
            // Not aligned to its size.
            "0xfe004000 0xfe00bfff 0x200".into(),
            // Neither or both kinds.
            "0xfe000000 0xfe007fff 0x0".into(),
            "0xfe000000 0xfe007fff 0x300".into(),
        ] {
            let text = with_bar0(&bad);
            assert!(
                parse_resource(&text).is_err(),
                "accepted BAR 0 line {bad:?}"
            );
        }
        // 2^63 bytes at 2^63 is a power of two, aligned, and ends exactly at the top.
        assert!(parse_resource(&with_bar0(&format!("0x8000000000000000 {max:#x} 0x200"))).is_ok());
        // Fewer than six lines.
        let five: String = good_resource()
            .lines()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse_resource(&five)
            .unwrap_err()
            .to_string()
            .contains("at least 6"));
    }

    proptest! {
        #[test]
        fn resource_parsing_never_panics(text in "[0-9a-fxX \\n\\t,+-]{0,400}") {
            let _ = parse_resource(&text);
        }

        #[test]
        fn accepted_bars_are_aligned_powers_of_two(start: u64, end: u64, flags: u64) {
            let text = format!("{start:#x} {end:#x} {flags:#x}\n").repeat(6);
            if let Ok(bars) = parse_resource(&text) {
                let b = bars[0];
                prop_assert!(b.size == 0 || (b.size.is_power_of_two() && b.start % b.size == 0));
                prop_assert!(b.size == 0 || b.start.checked_add(b.size - 1) == Some(end));
            }
        }
    }

    #[test]
    fn find_devices_lists_only_modern_virtio_blk() {
        let t = Tree::new();
        let devs = devices_dir(t.root.path());
        for (name, vendor, device) in [
            ("0000:00:03.0", "0x8086\n", "0x100e\n"),
            ("0000:00:05.0", "0x1af4\n", "0x1001\n"),
            ("0000:00:06.0", "garbage", "\u{0}\u{1}"),
        ] {
            fs::create_dir_all(devs.join(name)).unwrap();
            fs::write(devs.join(name).join("vendor"), vendor).unwrap();
            fs::write(devs.join(name).join("device"), device).unwrap();
        }
        fs::create_dir_all(devs.join("0000:00:07.0")).unwrap(); // no ID files
        assert_eq!(find_devices(t.root.path()), vec![t.dir()]);

        fs::create_dir_all(devs.join("0000:00:02.0")).unwrap();
        fs::write(devs.join("0000:00:02.0/vendor"), "0x1af4").unwrap();
        fs::write(devs.join("0000:00:02.0/device"), "0x1042").unwrap();
        assert_eq!(
            find_devices(t.root.path()),
            vec![devs.join("0000:00:02.0"), t.dir()],
            "sorted"
        );
        assert!(find_devices(&t.root.path().join("nowhere")).is_empty());
    }

    #[test]
    fn bdf_parsing() {
        assert_eq!(parse_bdf("0000:00:04.0").unwrap(), "0000:00:04.0");
        assert_eq!(parse_bdf("00:04.0").unwrap(), "0000:00:04.0");
        assert_eq!(parse_bdf("0000:AF:1f.7").unwrap(), "0000:af:1f.7");
        assert_eq!(parse_bdf("10000:00:00.0").unwrap(), "10000:00:00.0");
        for bad in [
            "",
            "auto",
            "0000:00:04",
            "0000:00:20.0",
            "0000:00:04.8",
            "0000:100:04.0",
            "0000:00:04.0.1",
            "x:00:04.0",
            "0:0:0:0.0",
            "../../../etc:00:04.0",
            "0000:00:04.0/",
            "0000:00:+4.0",
            "123456789:00:04.0",
        ] {
            assert!(parse_bdf(bad).is_err(), "accepted {bad:?}");
        }
    }
    #[test]
    fn resources_are_read_and_checked() {
        let t = tempfile::tempdir().unwrap();
        let dir = function(t.path(), Some("1"), Some("vfio-pci"));
        let e = read_resources(&dir).unwrap_err();
        assert!(matches!(e, PciError::Sysfs { .. }), "{e:?}");
        let line = |s: u64, n: u64, f: u64| {
            if n == 0 {
                "0x0 0x0 0x0\n".to_string()
            } else {
                format!("{s:#x} {:#x} {f:#x}\n", s + n - 1)
            }
        };
        let text = [
            line(0xfe00_0000, 0x8000, 0x40200),
            line(0, 0, 0),
            line(0x8_0000_0000, 16 << 20, 0x14220c),
            line(0, 0, 0),
            line(0, 0, 0),
            line(0, 0, 0),
        ]
        .concat();
        fs::write(dir.join("resource"), &text).unwrap();
        let r = read_resources(&dir).unwrap();
        assert_eq!((r[2].start, r[2].size), (0x8_0000_0000, 16 << 20));
        fs::write(dir.join("resource"), "0x1 0x0 0x200\n").unwrap();
        assert!(matches!(
            read_resources(&dir),
            Err(PciError::Resource { .. })
        ));
    }
}
