//! The memory bound: the kernel refuses any mapping past the address space the device
//! process needs (`RLIMIT_AS`), so no guest request, however crafted, can make it grow
//! without bound. The process serves one client at a time, so the bound is per connection.
//!
//! Every other bound a peer can push against is a named constant beside the code it
//! limits: vfio-user message sizes (`swiotlb_shared::vfio_user::limits`), the pool
//! (`swiotlb_shared::layout::MAX_POOL_SIZE`), queue sizes and indirect tables
//! (`swiotlb_shared::layout`), evidence (`crate::gate::MAX_EVIDENCE_LEN`), the audit queue
//! (`crate::audit::AuditConfig::queue_capacity`).

use super::SandboxError;

/// Address space for everything but the pool: the binary and its libraries, two thread
/// stacks, and the C library's malloc arenas (each thread's reserves 64 MiB of address
/// space up front). Measured: 136 MiB at the peak of start-up, 72 MiB while serving.
pub const BASE_ADDRESS_SPACE: u64 = 256 << 20;

/// What one connection may allocate on top: a received message (at most
/// `swiotlb_shared::vfio_user::limits::MAX_MESSAGE_SIZE`, about 1 MiB) and its reply, the
/// per-queue bookkeeping (`MAX_QUEUE_SIZE` entries), the evidence being verified, and a
/// full audit queue in full mode (`crate::audit::DEFAULT_QUEUE_CAPACITY` messages of at most
/// twice `crate::audit::MAX_DMA_BATCH_BYTES`: 32 MiB, checked below), with room to spare.
pub const CONNECTION_BUDGET: u64 = 64 << 20;

// A full audit queue takes at most half the budget.
const _: () = assert!(
    (crate::audit::DEFAULT_QUEUE_CAPACITY * 2 * crate::audit::MAX_DMA_BATCH_BYTES) as u64
        <= CONNECTION_BUDGET / 2
);

/// What each queue worker thread adds (`--queues` above 1): the C library's malloc arena
/// for the thread (64 MiB of address space reserved up front on 64-bit glibc), its stack
/// ([`crate::virtio::workers::WORKER_STACK`]) and its io_uring's rings. Measured: 64.6 MiB
/// a worker from 2 to 8 queues.
pub const QUEUE_WORKER_ADDRESS_SPACE: u64 = 72 << 20;

/// How many times the pool is mapped at once: while a BAR move is served, the old view can
/// still be held while the new one is mapped.
pub const POOL_MAPPINGS: u64 = 2;

/// The address-space limit for a process serving a pool of `pool_size` bytes with
/// `queue_workers` worker threads.
pub fn address_space_limit(pool_size: u64, queue_workers: u16) -> u64 {
    BASE_ADDRESS_SPACE
        .saturating_add(pool_size.saturating_mul(POOL_MAPPINGS))
        .saturating_add(QUEUE_WORKER_ADDRESS_SPACE * u64::from(queue_workers))
        .saturating_add(CONNECTION_BUDGET)
}

/// Sets the limit, then checks that a connection's whole budget can still be mapped: a
/// process already near its limit at start would otherwise fail an allocation later, on
/// a peer's message, and die there. Fails closed, with the reason, before serving.
pub fn limit_address_space_with_room(bytes: u64) -> Result<(), SandboxError> {
    limit_address_space(bytes)?;
    probe_map(CONNECTION_BUDGET).map_err(|e| {
        SandboxError::Limits(format!(
            "the address-space limit of {} MiB leaves less than a connection's {} MiB \
             free ({e}): the process maps more at start than the limit allows for",
            bytes >> 20,
            CONNECTION_BUDGET >> 20
        ))
    })
}

/// Sets `RLIMIT_AS` (soft and hard: it cannot be raised again) to `bytes`.
pub fn limit_address_space(bytes: u64) -> Result<(), SandboxError> {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads the struct we pass by reference.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) };
    if rc != 0 {
        return Err(SandboxError::Limits(format!(
            "RLIMIT_AS to {bytes} bytes: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Tries to map `bytes` of fresh anonymous memory (then unmaps it): `Ok` when the limit
/// lets it through, the error otherwise. For operators checking a deployment, and tests.
pub fn probe_map(bytes: u64) -> Result<(), std::io::Error> {
    let len =
        usize::try_from(bytes).map_err(|_| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: an anonymous private mapping at an address the kernel chooses; nothing is
    // read or written through it, and it is unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: unmapping exactly the mapping created above.
    unsafe { libc::munmap(p, len) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_grows_with_the_pool_and_the_workers_and_never_overflows() {
        assert_eq!(address_space_limit(16 << 20, 0), (256 + 32 + 64) << 20);
        assert_eq!(
            address_space_limit(16 << 20, 2),
            (256 + 32 + 2 * 72 + 64) << 20
        );
        assert!(address_space_limit(1 << 30, 0) > 2 << 30);
        assert_eq!(address_space_limit(u64::MAX, 16), u64::MAX);
    }
}
