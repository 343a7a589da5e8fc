//! How the pool BAR of a real PCI function is mapped, and what memory type that gives it.
//!
//! sysfs `resourceN` and vfio-pci map a BAR uncached (UC-). QEMU's TCG hides the cost, but on
//! SEV-SNP and TDX the guest's page attributes decide the memory type, and every bounce
//! copy into an uncached pool runs at a small fraction of memory speed. So the driver asks
//! first for a write-back mapping of the pool's physical range through `/dev/mem`, opened
//! without `O_SYNC` (x86 then asks PAT for write-back). The kernel allows it only for a
//! range no driver has claimed (`IO_STRICT_DEVMEM`) and not under lockdown; MTRRs can still
//! turn the request into UC- (a BAR in firmware's 32-bit PCI hole usually is), which
//! `/sys/kernel/debug/x86/pat_memtype_list` shows. Where it cannot, the driver falls back
//! to `resourceN_wc` (write-combining: a prefetchable BAR through sysfs), then to the BAR's
//! own uncached mapping, and says so loudly. The `/dev/mem` descriptor is closed as soon as
//! the mapping exists.
//!
//! Ordering: the rings live in the pool too. Write-back pool memory is ordinary coherent
//! memory, ordered as the driver's fences order RAM; write-combining stores are weakly
//! ordered, and the driver's sequentially consistent fences (an `mfence` on x86) order them
//! before the doorbell or an index store publishes them.

use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;

use super::PciError;
use crate::pool::Mapping;

/// Where `/dev/mem` is.
pub const DEV_MEM: &str = "/dev/mem";

/// What the driver asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolMapMode {
    /// Write-back if the kernel allows it, else write-combining, else the BAR's own mapping,
    /// with a warning.
    #[default]
    Auto,
    /// Write-back or fail.
    WriteBack,
    /// The BAR's own mapping (uncached): no `/dev/mem`.
    Bar,
}

/// The memory type a pool mapping was made with, for `info` and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMemoryType {
    /// `/dev/mem` without `O_SYNC`: write-back, unless an MTRR says otherwise.
    WriteBack,
    /// sysfs `resourceN_wc`.
    WriteCombining,
    /// The BAR's own mapping: sysfs `resourceN` or the VFIO region (UC-).
    Uncached,
}

impl PoolMemoryType {
    /// How it reads in `info`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::WriteBack => "write-back (/dev/mem)",
            Self::WriteCombining => "write-combining (resourceN_wc)",
            Self::Uncached => "uncached (the BAR's own mapping)",
        }
    }
}

/// Maps `len` bytes at physical address `phys` write-back through `/dev/mem`.
pub fn map_write_back(phys: u64, len: u64) -> Result<Mapping, PciError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(DEV_MEM)
        .map_err(|e| PciError::Sysfs {
            what: "opening read-write".into(),
            path: DEV_MEM.into(),
            source: e,
        })?;
    let len = usize::try_from(len).map_err(|_| PciError::NotMappable {
        bar: 0,
        why: "pool larger than the address space".into(),
    })?;
    // The file is closed when it goes out of scope: the mapping does not need it.
    Mapping::shared(file.as_fd(), phys, len).map_err(PciError::Map)
}

/// One of a back end's own ways to map the pool.
pub type MapFn<'a> = dyn FnMut() -> Result<Mapping, PciError> + 'a;

/// Maps the pool as `mode` asks: `write_back` tries `/dev/mem` at `phys`, `fallbacks` are
/// the back end's own mappings in order of preference (write-combining, then uncached),
/// each with the memory type it gives.
pub fn map_pool(
    mode: PoolMapMode,
    phys: u64,
    len: u64,
    fallbacks: &mut [(PoolMemoryType, &mut MapFn<'_>)],
) -> Result<(Mapping, PoolMemoryType), PciError> {
    let mut why = None;
    if mode != PoolMapMode::Bar {
        match map_write_back(phys, len) {
            Ok(m) => return Ok((m, PoolMemoryType::WriteBack)),
            Err(e) if mode == PoolMapMode::WriteBack => return Err(e),
            Err(e) => why = Some(swiotlb_shared::error_chain(&e)),
        }
    }
    let mut last = None;
    for (kind, map) in fallbacks.iter_mut() {
        match map() {
            Ok(m) => {
                if let Some(w) = &why {
                    eprintln!(
                        "swiotlb-guest: WARNING: the pool could not be mapped write-back ({w}); it is mapped {}: on SEV-SNP and TDX every bounce copy then runs at that memory type's speed",
                        kind.describe()
                    );
                }
                return Ok((m, *kind));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(PciError::NotMappable {
        bar: 0,
        why: "no way to map the pool".into(),
    }))
}
