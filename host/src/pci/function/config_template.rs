//! The function's configuration space as a new session finds it: a modern-only virtio-pci
//! header, the register BAR and the 64-bit pool BAR, and the capability list (common, notify,
//! ISR and device configuration, the SWIOTLB capability, MSI-X and the attestation mailbox)
//! at the offsets `device_layout` fixes.

use swiotlb_shared::pci::{
    attest_mailbox, cfg, device_layout as dl, VirtioPciCap, VirtioPciNotifyCap, VirtioPciVendorCap,
    VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_SWIOTLB, VIRTIO_PCI_CAP_VENDOR_CFG,
    VIRTIO_PCI_MODERN_DEVICE_ID_BASE, VIRTIO_PCI_VENDOR_ID,
};

use crate::pci::config_space::{BarKind, BarSpec, ConfigSpace};

/// The template of a function presenting a device of `device_type` with a pool of
/// `pool_size` bytes and `msix_vectors` MSI-X vectors.
pub(super) fn build(device_type: u16, pool_size: u64, msix_vectors: u16) -> ConfigSpace {
    // Modern-only virtio-pci function: revision 1, no legacy I/O BAR (virtio 1.2, 4.1.2.1).
    let mut c = ConfigSpace::new(
        VIRTIO_PCI_VENDOR_ID,
        VIRTIO_PCI_MODERN_DEVICE_ID_BASE + device_type,
        1,
        [0x00, 0x80, 0x01], // mass storage, other
        (VIRTIO_PCI_VENDOR_ID, 0x1100),
    );
    c.add_bar(BarSpec {
        index: dl::REGS_BAR,
        size: dl::REGS_BAR_SIZE,
        kind: BarKind::Mem32,
    });
    c.add_bar(BarSpec {
        index: dl::POOL_BAR,
        size: pool_size,
        kind: BarKind::Mem64Prefetchable,
    });
    let cap = |cfg_type: u8, bar: u8, offset: u32, length: u32| VirtioPciCap {
        cap_vndr: cfg::CAP_ID_VENDOR,
        cap_next: 0,
        cap_len: VirtioPciCap::SIZE as u8,
        cfg_type,
        bar,
        id: 0,
        padding: [0; 2],
        offset,
        length,
    };
    let caps = [
        (
            dl::CAP_COMMON,
            cap(
                VIRTIO_PCI_CAP_COMMON_CFG,
                dl::REGS_BAR,
                dl::COMMON_OFFSET,
                dl::COMMON_LEN,
            )
            .to_bytes()
            .to_vec(),
        ),
        (
            dl::CAP_NOTIFY,
            VirtioPciNotifyCap {
                cap: VirtioPciCap {
                    cap_len: VirtioPciNotifyCap::SIZE as u8,
                    ..cap(
                        VIRTIO_PCI_CAP_NOTIFY_CFG,
                        dl::REGS_BAR,
                        dl::NOTIFY_OFFSET,
                        dl::NOTIFY_LEN,
                    )
                },
                notify_off_multiplier: dl::NOTIFY_OFF_MULTIPLIER,
            }
            .to_bytes()
            .to_vec(),
        ),
        (
            dl::CAP_ISR,
            cap(
                VIRTIO_PCI_CAP_ISR_CFG,
                dl::REGS_BAR,
                dl::ISR_OFFSET,
                dl::ISR_LEN,
            )
            .to_bytes()
            .to_vec(),
        ),
        (
            dl::CAP_DEVICE,
            cap(
                VIRTIO_PCI_CAP_DEVICE_CFG,
                dl::REGS_BAR,
                dl::DEVICE_OFFSET,
                dl::DEVICE_LEN,
            )
            .to_bytes()
            .to_vec(),
        ),
        // The SWIOTLB capability describes the whole pool BAR. `length` is 32 bits, so
        // pools are capped below 4 GiB (MAX_POOL_SIZE is 1 GiB).
        (
            dl::CAP_SWIOTLB,
            cap(VIRTIO_PCI_CAP_SWIOTLB, dl::POOL_BAR, 0, pool_size as u32)
                .to_bytes()
                .to_vec(),
        ),
    ];
    for (at, bytes) in caps {
        let got = c.add_capability(bytes[0], &bytes[2..], &[]);
        debug_assert_eq!(got, at);
    }
    let mut msix = Vec::with_capacity(10);
    msix.extend_from_slice(&(msix_vectors - 1).to_le_bytes());
    msix.extend_from_slice(&(dl::MSIX_TABLE_OFFSET | u32::from(dl::REGS_BAR)).to_le_bytes());
    msix.extend_from_slice(&(dl::MSIX_PBA_OFFSET | u32::from(dl::REGS_BAR)).to_le_bytes());
    let got = c.add_capability(cfg::CAP_ID_MSIX, &msix, &[(1, 0xc0)]);
    debug_assert_eq!(got, dl::CAP_MSIX);
    let attest = VirtioPciVendorCap {
        cap_vndr: cfg::CAP_ID_VENDOR,
        cap_next: 0,
        cap_len: VirtioPciVendorCap::SIZE as u8,
        cfg_type: VIRTIO_PCI_CAP_VENDOR_CFG,
        vendor_id: VIRTIO_PCI_VENDOR_ID,
        subtype: attest_mailbox::CAP_SUBTYPE,
        bar: dl::REGS_BAR,
        offset: dl::ATTEST_OFFSET,
        length: dl::ATTEST_LEN,
    }
    .to_bytes();
    let got = c.add_capability(attest[0], &attest[2..], &[]);
    debug_assert_eq!(got, dl::CAP_ATTEST);
    c
}
