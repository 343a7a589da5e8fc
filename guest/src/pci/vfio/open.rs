//! Setting the function up: the checks that come before VFIO is asked (a directory, an
//! IOMMU group, bound to `vfio-pci`), the container, group and device, and what the kernel
//! assigned (each BAR region's size and register address against its `resource` file).

use std::fs;
use std::io::ErrorKind;
use std::mem::ManuallyDrop;
use std::path::Path;
use std::sync::Arc;

use swiotlb_shared::pci::cfg;
use swiotlb_shared::vfio_user::device::pci_region;
use swiotlb_shared::vfio_user::region_info::{REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE};
use swiotlb_shared::vfio_user::Region;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioError};

use super::{regions, VfioPci, VFIO_PCI_DRIVER};
use crate::pci::discovery::{self, bdf_of, check_function_dir, BarResource, NUM_BARS};
use crate::pci::pool_map::PoolMapMode;
use crate::pci::{check_virtio_blk, PciAccess, PciError, MAX_CONFIG_SIZE};

/// Where the VFIO container device lives.
const CONTAINER_PATH: &str = "/dev/vfio/vfio";

/// The IOMMU group number of the function in `dir`, from its `iommu_group` link
/// (`../../../kernel/iommu_groups/<N>`).
pub fn iommu_group(dir: &Path) -> Result<u32, PciError> {
    let link = dir.join("iommu_group");
    let target = match fs::read_link(&link) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(PciError::NoIommuGroup {
                path: dir.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(PciError::Sysfs {
                path: link,
                what: "reading the link".into(),
                source,
            })
        }
    };
    target
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| PciError::SysfsInvalid {
            path: link,
            why: format!(
                "points at {:?}, not an IOMMU group number",
                discovery::excerpt(&target.to_string_lossy())
            ),
        })
}

/// Checks what must hold before VFIO is asked for the function in `dir`, so each failure
/// says what to do: a directory, an IOMMU group, bound to `vfio-pci`. Returns the group.
pub fn check_function(dir: &Path) -> Result<u32, PciError> {
    check_function_dir(dir)?;
    let group = iommu_group(dir)?;
    match discovery::bound_driver(dir) {
        Some(d) if d == VFIO_PCI_DRIVER => Ok(group),
        driver => Err(PciError::NotVfioBound {
            path: dir.to_path_buf(),
            bdf: bdf_of(dir),
            driver,
        }),
    }
}

fn open_err(what: impl Into<String>) -> impl FnOnce(VfioError) -> PciError {
    let what = what.into();
    move |source| PciError::VfioOpen { what, source }
}

impl VfioPci {
    /// Opens the function whose sysfs directory is `dir` (`/sys/bus/pci/devices/<BDF>`):
    /// checks its IOMMU group and that `vfio-pci` owns it, opens the container (type1),
    /// group and device, checks it is a modern virtio-blk function (1af4:1042), reads its
    /// regions, checks each BAR region's size and each BAR register's address against the
    /// kernel's `resource` file, and turns on memory decode and bus mastering.
    pub fn open(dir: &Path) -> Result<Self, PciError> {
        let group = check_function(dir)?;
        let bdf = bdf_of(dir);
        if !Path::new(CONTAINER_PATH).exists() {
            return Err(PciError::Vfio {
                what: format!(
                    "no {CONTAINER_PATH}: load the vfio and vfio_iommu_type1 modules (and vfio-pci)"
                ),
                source: std::io::Error::from(ErrorKind::NotFound),
            });
        }
        let container = Arc::new(VfioContainer::new(None).map_err(open_err(format!(
            "opening the VFIO container {CONTAINER_PATH} with the type1v2 IOMMU"
        )))?);
        let device = VfioDevice::new(dir, container.clone(), false).map_err(open_err(format!(
            "opening {bdf} through VFIO group {group} (/dev/vfio/{group}; every function of the group must be bound to vfio-pci or to no driver)"
        )))?;
        let mut me = Self {
            dir: dir.to_path_buf(),
            bdf,
            group,
            config: Region::default(),
            config_size: 0,
            bars: Default::default(),
            resources: [BarResource::default(); NUM_BARS],
            maps: std::array::from_fn(|_| None),
            pool_map: PoolMapMode::Bar,
            pool_memory: None,
            msix_enabled: false,
            device: ManuallyDrop::new(device),
            _container: container,
        };
        me.config = regions::region_info(me.fd(), pci_region::CONFIG, &me.bdf)?;
        let rw = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
        if me.config.flags & rw != rw || me.config.size < cfg::SIZE as u64 {
            return Err(PciError::VfioInvalid {
                what: format!("config region of {}", me.bdf),
                why: format!(
                    "{} bytes, flags {:#x}: not a readable and writable space of at least 256 bytes",
                    me.config.size, me.config.flags
                ),
            });
        }
        me.config_size = me.config.size.min(MAX_CONFIG_SIZE);
        let dir = me.dir.clone();
        check_virtio_blk(&mut me, &dir)?;
        me.resources = discovery::read_resources(&me.dir)?;
        for i in 0..NUM_BARS as u32 {
            me.bars[i as usize] = regions::region_info(me.fd(), i, &me.bdf)?;
        }
        me.check_bars()?;
        let mut c = [0u8; 2];
        me.config_read(cfg::COMMAND, &mut c)?;
        let command = u16::from_le_bytes(c);
        let wanted = command | cfg::COMMAND_MEMORY | cfg::COMMAND_BUS_MASTER;
        if wanted != command {
            me.config_write(cfg::COMMAND, &wanted.to_le_bytes())?;
            me.config_read(cfg::COMMAND, &mut c)?;
            let now = u16::from_le_bytes(c);
            if now & cfg::COMMAND_MEMORY == 0 {
                return Err(PciError::VfioInvalid {
                    what: format!("command register of {}", me.bdf),
                    why: format!(
                        "memory decode did not turn on (wrote {wanted:#06x}, reads {now:#06x})"
                    ),
                });
            }
        }
        Ok(me)
    }

    /// Each BAR region's size must be the kernel's, and each assigned memory BAR's registers
    /// must hold the address the kernel assigned: the driver reads the pool's bus address from
    /// those registers, and a wrong one would put every ring address outside the pool.
    fn check_bars(&mut self) -> Result<(), PciError> {
        let resource = self.dir.join("resource");
        for bar in 0..NUM_BARS as u8 {
            let (r, region) = (
                self.resources[usize::from(bar)],
                &self.bars[usize::from(bar)],
            );
            if region.size != r.size {
                return Err(PciError::VfioInvalid {
                    what: format!("BAR {bar} region of {}", self.bdf),
                    why: format!(
                        "{:#x} bytes, the kernel's {} says {:#x}",
                        region.size,
                        resource.display(),
                        r.size
                    ),
                });
            }
            if !r.is_memory() || !r.is_assigned() {
                continue;
            }
            let at = cfg::BAR0 + u16::from(bar) * 4;
            let mut lo = [0u8; 4];
            self.config_read(at, &mut lo)?;
            let lo = u32::from_le_bytes(lo);
            let mut addr = u64::from(lo & cfg::BAR_MEM_ADDR_MASK);
            if lo & (0b11 << 1) == cfg::BAR_MEM_TYPE_64 && bar < 5 {
                let mut hi = [0u8; 4];
                self.config_read(at + 4, &mut hi)?;
                addr |= u64::from(u32::from_le_bytes(hi)) << 32;
            }
            if lo & cfg::BAR_IO != 0 || addr != r.start {
                return Err(PciError::BarMismatch {
                    bar,
                    config: addr,
                    kernel: r.start,
                    resource: resource.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::fake_sysfs::function;

    #[test]
    fn a_function_without_an_iommu_group_says_to_boot_with_a_viommu() {
        let t = tempfile::tempdir().unwrap();
        let dir = function(t.path(), None, Some("vfio-pci"));
        let e = check_function(&dir).unwrap_err();
        assert!(matches!(e, PciError::NoIommuGroup { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("no IOMMU group: boot with a vIOMMU (intel_iommu=on")
                && msg.contains("0000:00:04.0"),
            "{msg}"
        );
        // Opening says the same, before touching /dev/vfio.
        let e = VfioPci::open(&dir).unwrap_err();
        assert!(matches!(e, PciError::NoIommuGroup { .. }), "{e:?}");
    }

    #[test]
    fn the_iommu_group_number_comes_from_the_link() {
        let t = tempfile::tempdir().unwrap();
        let dir = function(t.path(), Some("7"), Some("vfio-pci"));
        assert_eq!(iommu_group(&dir).unwrap(), 7);
        assert_eq!(check_function(&dir).unwrap(), 7);
        for bad in ["x", "-1", "99999999999", "1 2"] {
            let t = tempfile::tempdir().unwrap();
            let dir = function(t.path(), Some(bad), None);
            let e = iommu_group(&dir).unwrap_err();
            assert!(
                matches!(&e, PciError::SysfsInvalid { why, .. } if why.contains("not an IOMMU group")),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn a_function_not_bound_to_vfio_pci_says_how_to_bind_it() {
        let t = tempfile::tempdir().unwrap();
        let dir = function(t.path(), Some("3"), None);
        let e = check_function(&dir).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(&e, PciError::NotVfioBound { driver: None, bdf, .. } if bdf == "0000:00:04.0"),
            "{e:?}"
        );
        assert!(
            msg.contains("bound to no driver")
                && msg
                    .contains("echo vfio-pci > /sys/bus/pci/devices/0000:00:04.0/driver_override")
                && msg.contains("echo 0000:00:04.0 > /sys/bus/pci/drivers_probe")
                && !msg.contains("unbind"),
            "{msg}"
        );

        let t = tempfile::tempdir().unwrap();
        let dir = function(t.path(), Some("3"), Some("virtio-pci"));
        let msg = VfioPci::open(&dir).unwrap_err().to_string();
        assert!(
            msg.contains("bound to the kernel driver `virtio-pci`")
                && msg.contains("echo 0000:00:04.0 > /sys/bus/pci/drivers/virtio-pci/unbind"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_or_odd_function_directory_is_named() {
        let t = tempfile::tempdir().unwrap();
        let e = check_function(&t.path().join("nowhere")).unwrap_err();
        assert!(matches!(e, PciError::Sysfs { .. }), "{e:?}");
        let f = t.path().join("file");
        fs::write(&f, "").unwrap();
        let e = check_function(&f).unwrap_err();
        assert!(matches!(e, PciError::SysfsInvalid { .. }), "{e:?}");
    }
}
