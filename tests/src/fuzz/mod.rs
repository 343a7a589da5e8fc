//! Fuzz harnesses, shared by the `fuzz/` targets (cargo-fuzz, nightly) and the normal test
//! run, which drives each harness over fixed and pseudo-random inputs and checks that the
//! input types reach what they are meant to reach.
//!
//! Each harness takes raw fuzzer bytes, builds its structured input with `arbitrary`, and
//! panics only when an invariant of the code under test breaks:
//!
//! | harness | what it attacks |
//! |---|---|
//! | [`wire::server`] | the vfio-user server and device model, from a hostile client's message stream |
//! | [`wire::client`] | the vfio-user client and the driver probe, from a hostile server's replies |
//! | [`device::registers`] | config space, BAR0 registers, pool writes and doorbells on the device model |
//! | [`rings::chains`] | the host's descriptor-chain walker over guest-chosen pool contents |
//! | [`rings::used_ring`] | the guest's used-ring handling against a device that writes anything |
//! | [`evidence::snp_report`], [`evidence::tdx_quote`] | attestation parsing and verification |
//! | [`evidence::crl`], [`evidence::ear_jwt`] | revocation lists given to the verifier; EAR JWTs a relying party checks |
//! | [`audit::audit_log`] | audit-log parsing and verification |
//! | [`audit::dma_batch`] | the packed chains of a full-mode DMA batch record |

pub mod audit;
pub mod device;
pub mod evidence;
pub mod rings;
pub mod wire;

use std::fs::File;
use std::os::fd::FromRawFd;

use swiotlb_host::devices::block::{disk::DiskImage, Block};
use swiotlb_host::virtio::Policy;
use swiotlb_host::VirtioPciFunction;
use swiotlb_shared::layout::MIN_POOL_SIZE;

/// Size of the in-memory disk behind the fuzzed functions.
pub const DISK_SIZE: u64 = 1 << 20;

/// A harness: raw fuzzer bytes in, a panic only on a broken invariant.
pub type Harness = fn(&[u8]);

/// Every harness, by the name of its fuzz target.
pub const HARNESSES: [(&str, Harness); 11] = [
    ("vfio_user_server", wire::server),
    ("vfio_user_client", wire::client),
    ("device_registers", device::registers),
    ("descriptor_chains", rings::chains),
    ("used_ring", rings::used_ring),
    ("snp_report", evidence::snp_report),
    ("tdx_quote", evidence::tdx_quote),
    ("crl", evidence::crl),
    ("ear_jwt", evidence::ear_jwt),
    ("audit_log", audit::audit_log),
    ("dma_batch", audit::dma_batch),
];

/// A virtio-blk function on an in-memory disk with the smallest pool; with `verifier`,
/// attestation is required.
pub fn memfd_function(
    verifier: Option<Box<dyn swiotlb_host::gate::EvidenceVerifier>>,
) -> VirtioPciFunction {
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(c"swiotlb-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(DISK_SIZE).expect("size the disk");
    let disk = DiskImage::from_file(file, false).expect("disk");
    let f = VirtioPciFunction::new(Box::new(Block::new(disk)), MIN_POOL_SIZE, Policy::default())
        .expect("function");
    match verifier {
        Some(v) => f.with_attestation(v),
        None => f,
    }
}

#[cfg(test)]
mod tests;
