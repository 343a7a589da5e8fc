//! The ublk server confined, once the device is started: it parses what a hostile host
//! writes into the pool, so it keeps only what serving needs.
//!
//! - **Capabilities**: all dropped but `CAP_SYS_ADMIN`, which the kernel requires of every
//!   control command on a (privileged) ublk device, STOP_DEV and DEL_DEV at the end among
//!   them. `CAP_SYS_RAWIO` (for `/dev/mem`) and the rest are gone; no new privileges.
//! - **Files**: none is opened after this point, and `/dev/mem` was closed as soon as the
//!   pool was mapped.
//! - **System calls**: one allow-list for every thread (TSYNC): no `open`, no sockets, no
//!   new rings, no exec, no executable memory. A call off the list fails with `EPERM` and is
//!   not made (rather than killing the process as the host's filter does): on its way out
//!   the server must still stop and delete the ublk device and reset the virtio device,
//!   and a library's release path that looks something up (vfio-ioctls re-reads the
//!   function's IOMMU group link) then takes its error branch instead of leaving a dead
//!   server behind a ublk device. The queue's io_uring is itself restricted to uring
//!   commands and reads on its two files.

use caps::{CapSet, Capability, CapsHashSet};
use swiotlb_shared::seccomp::{self, any, Allow, Violation};
use swiotlb_shared::sys;
use thiserror::Error;

/// Errors of confining the server.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// Capabilities could not be dropped.
    #[error("dropping capabilities ({what})")]
    Caps {
        /// Which set.
        what: &'static str,
        /// What the library said.
        #[source]
        source: caps::errors::CapsError,
    },
    /// The filter could not be built.
    #[error("building the seccomp filter")]
    Filter(#[from] seccomp::SeccompError),
    /// The filter could not be installed.
    #[error("installing the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// What the server's threads call once the device runs.
pub fn allow_list() -> Vec<Allow> {
    let mut v = seccomp::runtime();
    v.extend([
        any(
            sys!(SYS_io_uring_enter),
            "the queue's ring (fetch, commit, the interrupt eventfd) and the control ring (STOP_DEV, DEL_DEV)",
        ),
        any(
            sys!(SYS_rt_sigtimedwait),
            "waiting for SIGTERM or SIGINT (blocked, taken synchronously)",
        ),
        any(
            sys!(SYS_pread64),
            "configuration space through the VFIO device fd or sysfs `config`",
        ),
        any(
            sys!(SYS_pwrite64),
            "the same, writing (a reset on the way out)",
        ),
        any(
            sys!(SYS_ioctl),
            "VFIO: turning the MSI-X eventfds off when the device is released",
        ),
        any(
            sys!(SYS_sendmsg),
            "vfio-user: register accesses over the socket",
        ),
        any(sys!(SYS_recvmsg), "vfio-user: their replies"),
        any(sys!(SYS_read), "draining an interrupt eventfd"),
        any(sys!(SYS_ppoll), "waiting on an eventfd (the driver's own wait)"),
        any(sys!(SYS_clock_nanosleep), "naps of a polling driver"),
        any(sys!(SYS_nanosleep), "the same, older C libraries"),
    ]);
    #[cfg(target_arch = "x86_64")]
    v.push(any(
        sys!(SYS_poll),
        "the eventfd wait, as the C library makes it on x86_64",
    ));
    v
}

/// Drops every capability but `CAP_SYS_ADMIN` and installs the allow-list on every thread.
pub fn confine() -> Result<(), SandboxError> {
    let keep: CapsHashSet = [Capability::CAP_SYS_ADMIN].into_iter().collect();
    let caps_err = |what| move |source| SandboxError::Caps { what, source };
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for c in caps::read(None, CapSet::Bounding).map_err(caps_err("bounding"))? {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c).map_err(caps_err("bounding"))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("inheritable"))?;
    let held = caps::read(None, CapSet::Permitted).map_err(caps_err("permitted"))?;
    let kept: CapsHashSet = held.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(caps_err("effective"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_err("permitted"))?;
    let program = seccomp::compile("ublk server", allow_list(), Violation::Refuse)?;
    // Sets no_new_privs, then the filter on every thread of the process.
    seccompiler::apply_filter_all_threads(&program).map_err(SandboxError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_compiles_and_opens_nothing() {
        assert!(seccomp::compile("ublk server", allow_list(), Violation::Refuse).is_ok());
        let names: Vec<_> = seccomp::describe(&allow_list())
            .into_iter()
            .map(|c| c.name)
            .collect();
        for never in [
            "openat",
            "open",
            "socket",
            "execve",
            "io_uring_setup",
            "clone3",
        ] {
            assert!(!names.contains(&never), "{never} is allowed");
        }
    }
}
