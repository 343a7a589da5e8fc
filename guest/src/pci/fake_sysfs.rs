//! A fake `/sys` for the PCI back ends' tests: a `resource` file, a virtio-blk
//! configuration space with its capabilities, and a function directory with the files (and
//! links: IOMMU group, driver) the back ends read.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use swiotlb_shared::pci::{
    cfg, device_layout as dl, VirtioPciCap, VirtioPciNotifyCap, VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_CAP_SWIOTLB,
};

use super::discovery::devices_dir;
use super::sysfs::SysfsPci;
use super::PciError;

pub(crate) const REGS_ADDR: u64 = 0xfe00_0000;
pub(crate) const POOL_ADDR: u64 = 0x8_0000_0000;
pub(crate) const POOL_SIZE: u64 = 4 << 20;
pub(crate) const MEM32_FLAGS: u64 = 0x0004_0200;
pub(crate) const MEM64_PREF_FLAGS: u64 = 0x0014_220c;

pub(crate) fn line(start: u64, size: u64, flags: u64) -> String {
    let end = if size == 0 { 0 } else { start + size - 1 };
    format!("0x{start:016x} 0x{end:016x} 0x{flags:016x}\n")
}

pub(crate) fn good_resource() -> String {
    let zero = line(0, 0, 0);
    [
        line(REGS_ADDR, dl::REGS_BAR_SIZE, MEM32_FLAGS),
        zero.clone(),
        line(POOL_ADDR, POOL_SIZE, MEM64_PREF_FLAGS),
        zero.clone(),
        zero.clone(),
        zero.clone(),
        zero, // ROM
    ]
    .concat()
}

pub(crate) fn cap(next: u8, cfg_type: u8, bar: u8, offset: u32, length: u32) -> [u8; 16] {
    VirtioPciCap {
        cap_vndr: cfg::CAP_ID_VENDOR,
        cap_next: next,
        cap_len: VirtioPciCap::SIZE as u8,
        cfg_type,
        bar,
        id: 0,
        padding: [0; 2],
        offset,
        length,
    }
    .to_bytes()
}

/// A virtio-blk configuration header with its capabilities, 4 KiB as a PCIe function's,
/// with memory decode and bus mastering off.
pub(crate) fn config_bytes(vendor: u16, device: u16) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(0, &vendor.to_le_bytes());
    put(2, &device.to_le_bytes());
    put(6, &cfg::STATUS_CAP_LIST.to_le_bytes());
    put(0x10, &(REGS_ADDR as u32).to_le_bytes());
    let lo = POOL_ADDR as u32 | cfg::BAR_MEM_TYPE_64 | cfg::BAR_PREFETCHABLE;
    put(0x18, &lo.to_le_bytes());
    put(0x1c, &((POOL_ADDR >> 32) as u32).to_le_bytes());
    put(0x34, &[dl::CAP_COMMON]);
    put(
        dl::CAP_COMMON.into(),
        &cap(
            dl::CAP_NOTIFY,
            VIRTIO_PCI_CAP_COMMON_CFG,
            0,
            dl::COMMON_OFFSET,
            dl::COMMON_LEN,
        ),
    );
    let mut n = VirtioPciNotifyCap {
        cap: VirtioPciCap::from_bytes(&cap(
            dl::CAP_ISR,
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            0,
            dl::NOTIFY_OFFSET,
            dl::NOTIFY_LEN,
        ))
        .unwrap(),
        notify_off_multiplier: dl::NOTIFY_OFF_MULTIPLIER,
    };
    n.cap.cap_len = VirtioPciNotifyCap::SIZE as u8;
    put(dl::CAP_NOTIFY.into(), &n.to_bytes());
    put(
        dl::CAP_ISR.into(),
        &cap(
            dl::CAP_DEVICE,
            VIRTIO_PCI_CAP_ISR_CFG,
            0,
            dl::ISR_OFFSET,
            dl::ISR_LEN,
        ),
    );
    put(
        dl::CAP_DEVICE.into(),
        &cap(
            dl::CAP_SWIOTLB,
            VIRTIO_PCI_CAP_DEVICE_CFG,
            0,
            dl::DEVICE_OFFSET,
            dl::DEVICE_LEN,
        ),
    );
    put(
        dl::CAP_SWIOTLB.into(),
        &cap(0, VIRTIO_PCI_CAP_SWIOTLB, 2, 0, POOL_SIZE as u32),
    );
    b
}

/// A fake `/sys` with one function directory, `0000:00:04.0`.
pub(crate) struct Tree {
    pub(crate) root: tempfile::TempDir,
}

impl Tree {
    pub(crate) fn new() -> Self {
        let t = Self {
            root: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(t.dir()).unwrap();
        t.write("config", &config_bytes(0x1af4, 0x1042));
        t.write("resource", good_resource().as_bytes());
        t.write("vendor", b"0x1af4\n");
        t.write("device", b"0x1042\n");
        t.write("enable", b"0\n");
        t.sized("resource0", dl::REGS_BAR_SIZE);
        t.sized("resource2", POOL_SIZE);
        t
    }

    pub(crate) fn dir(&self) -> PathBuf {
        devices_dir(self.root.path()).join("0000:00:04.0")
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    pub(crate) fn write(&self, name: &str, data: &[u8]) {
        fs::write(self.path(name), data).unwrap();
    }

    pub(crate) fn sized(&self, name: &str, size: u64) {
        File::create(self.path(name))
            .unwrap()
            .set_len(size)
            .unwrap();
    }

    pub(crate) fn read(&self, name: &str) -> Vec<u8> {
        fs::read(self.path(name)).unwrap()
    }

    pub(crate) fn open(&self) -> Result<SysfsPci, PciError> {
        SysfsPci::open(&self.dir())
    }
}

/// A fake `/sys/bus/pci/devices/0000:00:04.0` with an IOMMU group and a driver.
pub(crate) fn function(root: &Path, group: Option<&str>, driver: Option<&str>) -> PathBuf {
    let dir = devices_dir(root).join("0000:00:04.0");
    fs::create_dir_all(&dir).unwrap();
    if let Some(g) = group {
        let gdir = root.join("kernel/iommu_groups").join(g);
        fs::create_dir_all(&gdir).unwrap();
        std::os::unix::fs::symlink(&gdir, dir.join("iommu_group")).unwrap();
    }
    if let Some(d) = driver {
        let ddir = root.join("bus/pci/drivers").join(d);
        fs::create_dir_all(&ddir).unwrap();
        std::os::unix::fs::symlink(&ddir, dir.join("driver")).unwrap();
    }
    dir
}
