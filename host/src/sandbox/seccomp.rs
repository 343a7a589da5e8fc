//! seccomp allow-lists, one per thread role; any other system call kills the process.
//!
//! The device process has two threads once it serves:
//!
//! - the **device** thread (the main thread): accepts vfio-user clients, decodes every
//!   message, runs the PCI function and serves the queues inline on each doorbell, moving
//!   data between the pool mapping and the disk image (through an io_uring locked down to
//!   reads and writes of the image before this filter goes on: `io_uring_enter` is allowed,
//!   `io_uring_setup` and `io_uring_register` are not);
//! - the **audit writer**: appends records to the audit log, signs checkpoints and rotates
//!   files;
//! - with more than one queue, a **queue worker** per queue: once the driver negotiates
//!   VIRTIO_BLK_F_MQ it serves that queue's ring (doorbell, pool checks, disk I/O on its own
//!   restricted ring, used ring, interrupt) and nothing else: no socket, no new fd.
//!
//! Each installs its own filter: the device thread after everything is open and bound, the
//! audit writer and each queue worker first thing in its body. Neither may open a socket, execute a program, map
//! executable memory, start a thread, change credentials or trace anything. The device
//! thread cannot open, create or remove a file at all; only the audit writer opens files, and
//! Landlock confines those to the audit directories.
//!
//! Every allowed call is listed with why. Arguments are checked where that narrows the
//! call to what is needed: no `PROT_EXEC` on `mmap`/`mprotect`, `fcntl` to four commands,
//! `getsockopt` to `SO_PEERCRED`, the `stat` family to an open fd (`AT_EMPTY_PATH`).
//!
//! The lists are data for the allow-list builder in `swiotlb_shared::seccomp`, which the
//! guest's ublk server uses too: the runtime calls come from there, with this process's
//! reasons; the roles' own calls, and the probe, are here.

use seccompiler::BpfProgram;
use swiotlb_shared::seccomp::{self, any, when, Allow, Arg, Violation};
use swiotlb_shared::sys;

use super::SandboxError;

pub use swiotlb_shared::seccomp::AllowedCall;

/// The threads that differ in what they may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The vfio-user and queue thread: everything a guest drives.
    Device,
    /// The audit log writer.
    AuditWriter,
    /// A queue's worker: one ring, the disk, interrupts.
    QueueWorker,
}

impl Role {
    /// The role's name, for logs and probes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::AuditWriter => "audit-writer",
            Self::QueueWorker => "queue-worker",
        }
    }
}

// Flag values as the kernel compares them (32-bit arguments).
const AT_EMPTY_PATH: u64 = libc::AT_EMPTY_PATH as u64;

/// Why this process's threads need the runtime calls whose shared reason does not say it
/// all (the others keep the shared reason).
const RUNTIME_REASONS: &[(&str, &str)] = &[
    ("futex", "locks, condition variables and the audit queue"),
    (
        "write",
        "the log on stderr; (device) JSON events on stdout and interrupt eventfds; (writer) the audit file",
    ),
    (
        "close",
        "dropping fds (per-session fds from the client; rotated files)",
    ),
    (
        "mmap",
        "the allocator and (device) the pool memfd at its bus address; never executable",
    ),
    ("mprotect", "the allocator's guard pages; never executable"),
    (
        "munmap",
        "the allocator and (device) the pool on a BAR move",
    ),
    ("getrandom", "hash-map keys; (device) the attestation nonce"),
];

/// What every thread of the process needs to run Rust code at all: the shared runtime
/// list, with this process's reasons.
fn runtime() -> Vec<Allow> {
    seccomp::restate(seccomp::runtime(), RUNTIME_REASONS)
}

/// The `stat` family restricted to an open fd: metadata of the memfd, the image and the log.
fn fd_stat() -> Vec<Allow> {
    vec![
        when(
            sys!(SYS_statx),
            "metadata of an open fd (sizes of the image, the pool memfd, the log)",
            vec![vec![Arg::AllBits(2, AT_EMPTY_PATH)]],
        ),
        when(
            sys!(SYS_newfstatat),
            "metadata of an open fd",
            vec![vec![Arg::AllBits(3, AT_EMPTY_PATH)]],
        ),
    ]
}

/// `fcntl` limited to `cmds`.
fn fcntl(why: &'static str, cmds: &[libc::c_int]) -> Allow {
    when(
        sys!(SYS_fcntl),
        why,
        cmds.iter().map(|c| vec![Arg::Eq(1, *c as u64)]).collect(),
    )
}

/// The `fcntl` commands that only read or set fd flags (the runtime checks an fd is open
/// before closing it, in debug builds).
const FCNTL_FLAGS: [libc::c_int; 3] = [libc::F_GETFD, libc::F_SETFD, libc::F_GETFL];

fn device() -> Vec<Allow> {
    let mut cmds = FCNTL_FLAGS.to_vec();
    cmds.push(libc::F_DUPFD_CLOEXEC);
    let mut v = vec![
        any(sys!(SYS_accept4), "the next vfio-user client"),
        any(
            sys!(SYS_recvmsg),
            "vfio-user messages with their fds (SCM_RIGHTS)",
        ),
        any(
            sys!(SYS_sendmsg),
            "vfio-user replies, with the pool memfd for region info",
        ),
        any(sys!(SYS_read), "draining a doorbell eventfd"),
        any(
            sys!(SYS_eventfd2),
            "the session's doorbell eventfds (ioeventfds), on the client's request",
        ),
        any(
            sys!(SYS_ppoll),
            "waiting on the socket and the doorbell eventfds at once",
        ),
        when(
            sys!(SYS_getsockopt),
            "the new client's credentials (SO_PEERCRED), for the log",
            vec![vec![
                Arg::Eq(1, libc::SOL_SOCKET as u64),
                Arg::Eq(2, libc::SO_PEERCRED as u64),
            ]],
        ),
        fcntl(
            "duplicating the pool memfd and eventfds (F_DUPFD_CLOEXEC); fd flags",
            &cmds,
        ),
        any(
            sys!(SYS_preadv),
            "disk reads straight into the pool mapping",
        ),
        any(
            sys!(SYS_pwritev),
            "disk writes straight from the pool mapping",
        ),
        any(sys!(SYS_preadv2), "the same, newer C libraries"),
        any(sys!(SYS_pwritev2), "the same, newer C libraries"),
        any(sys!(SYS_pread64), "single-buffer reads of the image"),
        any(sys!(SYS_pwrite64), "single-buffer writes of the image"),
        any(
            sys!(SYS_fallocate),
            "DISCARD and WRITE_ZEROES on the image; zeroing the pool on reset",
        ),
        any(
            sys!(SYS_restart_syscall),
            "resuming a wait the kernel interrupted to run its own work (io_uring completions)",
        ),
        any(
            sys!(SYS_io_uring_enter),
            "batched disk reads and writes on the ring set up (and restricted to the image) before this filter",
        ),
        any(sys!(SYS_fdatasync), "FLUSH"),
        any(sys!(SYS_fsync), "FLUSH"),
        any(sys!(SYS_lseek), "the image's size"),
        any(
            sys!(SYS_setitimer),
            "the deadline of the orderly stop (SIGALRM ends a stop that hangs)",
        ),
    ];
    #[cfg(target_arch = "x86_64")]
    v.push(any(
        sys!(SYS_poll),
        "the same wait, as the C library makes it on x86_64",
    ));
    v.extend(fd_stat());
    v
}

fn audit_writer() -> Vec<Allow> {
    let mut v = vec![
        any(sys!(SYS_openat),
            "the next log file on rotation and the directory to sync (Landlock: audit directories only)",
        ),
        any(sys!(SYS_fdatasync), "each checkpoint is durable before it is acknowledged"),
        any(sys!(SYS_fsync), "the directory after a new file, the file at rotation"),
        any(sys!(SYS_ftruncate), "cutting a torn last line"),
        any(sys!(SYS_lseek), "file positions"),
        any(sys!(SYS_read), "reading back the current file on recovery"),
        fcntl("fd flags", &FCNTL_FLAGS),
    ];
    v.extend(fd_stat());
    v
}

/// A queue worker: what a pass over one queue needs, and the wait for its doorbell. It
/// makes no fd and touches no socket; its fds (doorbell, wake-up, image, ring) were open
/// before its filter.
fn queue_worker() -> Vec<Allow> {
    let mut v = vec![
        any(sys!(SYS_read), "draining its doorbell and wake-up eventfds"),
        any(sys!(SYS_ppoll), "waiting on its doorbell and wake-up eventfds"),
        any(sys!(SYS_preadv), "disk reads straight into the pool mapping"),
        any(sys!(SYS_pwritev), "disk writes straight from the pool mapping"),
        any(sys!(SYS_preadv2), "the same, newer C libraries"),
        any(sys!(SYS_pwritev2), "the same, newer C libraries"),
        any(sys!(SYS_pread64), "single-buffer reads of the image"),
        any(sys!(SYS_pwrite64), "single-buffer writes of the image"),
        any(sys!(SYS_fallocate), "DISCARD and WRITE_ZEROES on the image"),
        any(
            sys!(SYS_restart_syscall),
            "resuming a wait the kernel interrupted to run its own work (io_uring completions)",
        ),
        any(
            sys!(SYS_io_uring_enter),
            "batched disk reads and writes on its queue's ring, set up and restricted to the image before any filter",
        ),
        any(sys!(SYS_fdatasync), "FLUSH"),
        any(sys!(SYS_fsync), "FLUSH"),
    ];
    #[cfg(target_arch = "x86_64")]
    v.push(any(
        sys!(SYS_poll),
        "the same wait, as the C library makes it on x86_64",
    ));
    v
}

fn allow_list(role: Role) -> Vec<Allow> {
    let mut v = runtime();
    v.extend(match role {
        Role::Device => device(),
        Role::AuditWriter => audit_writer(),
        Role::QueueWorker => queue_worker(),
    });
    v
}

/// The allowed calls of `role`, each with why: for the docs and for operators.
pub fn allowed_syscalls(role: Role) -> Vec<AllowedCall> {
    seccomp::describe(&allow_list(role))
}

/// Compiles the filter of `role`: the allow-list, anything else kills the process.
pub fn compile(role: Role) -> Result<BpfProgram, SandboxError> {
    Ok(seccomp::compile(
        role.name(),
        allow_list(role),
        Violation::Kill,
    )?)
}

/// Installs the filter of `role` on the calling thread (and the threads it starts later,
/// which it may not). Sets `no_new_privs`, which seccomp needs.
pub fn install(role: Role) -> Result<(), SandboxError> {
    let prog = compile(role)?;
    seccompiler::apply_filter(&prog).map_err(|source| SandboxError::SeccompInstall {
        role: role.name(),
        source,
    })
}

/// Makes a call no role allows (a TCP socket); under the filter the process dies of
/// `SIGSYS`. Returns only when no filter is installed (the error says what happened).
pub fn probe_forbidden_call() -> std::io::Error {
    // SAFETY: socket(2) with integer arguments; the fd, if any, is closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: closing the fd we just created.
        unsafe { libc::close(fd) };
        return std::io::Error::other("socket(AF_INET) succeeded: no seccomp filter");
    }
    std::io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile_with_every_call_explained() {
        for role in [Role::Device, Role::AuditWriter, Role::QueueWorker] {
            let prog = compile(role).unwrap();
            assert!(!prog.is_empty());
            for c in allowed_syscalls(role) {
                assert!(!c.why.is_empty(), "{} {}", role.name(), c.name);
                assert!(!c.name.starts_with("SYS_"));
            }
        }
    }

    #[test]
    fn every_restated_reason_is_that_of_a_runtime_call() {
        let shared = seccomp::runtime();
        let ours = runtime();
        for (name, why) in RUNTIME_REASONS {
            assert!(
                shared.iter().any(|a| a.name == *name),
                "{name} is not in the runtime list"
            );
            assert!(
                ours.iter().any(|a| a.name == *name && a.why == *why),
                "{name}"
            );
        }
        let nrs = |l: &[Allow]| l.iter().map(|a| a.nr).collect::<Vec<_>>();
        assert_eq!(nrs(&shared), nrs(&ours), "restating changes no call");
    }

    #[test]
    fn neither_role_may_open_sockets_exec_spawn_or_change_credentials() {
        let forbidden = [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_ptrace,
            libc::SYS_setuid,
            libc::SYS_unshare,
            libc::SYS_mount,
            libc::SYS_ioctl,
            libc::SYS_process_vm_readv,
            libc::SYS_memfd_create,
            libc::SYS_seccomp,
            // A ring is set up and restricted before the filter; none is made or changed after.
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_register,
        ];
        for role in [Role::Device, Role::AuditWriter, Role::QueueWorker] {
            let allowed: Vec<_> = allowed_syscalls(role).iter().map(|a| a.nr).collect();
            for nr in forbidden {
                assert!(!allowed.contains(&nr), "{} allows {nr}", role.name());
            }
        }
        // The device thread and the queue workers open, create and remove nothing.
        for role in [Role::Device, Role::QueueWorker] {
            let allowed: Vec<_> = allowed_syscalls(role).iter().map(|a| a.nr).collect();
            for nr in [
                libc::SYS_openat,
                libc::SYS_unlinkat,
                libc::SYS_renameat2,
                libc::SYS_mkdirat,
            ] {
                assert!(!allowed.contains(&nr), "{} allows {nr}", role.name());
            }
        }
        // A queue worker makes no fd and touches no socket.
        let worker: Vec<_> = allowed_syscalls(Role::QueueWorker)
            .iter()
            .map(|a| a.nr)
            .collect();
        for nr in [
            libc::SYS_accept4,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_eventfd2,
            libc::SYS_fcntl,
            libc::SYS_getsockopt,
        ] {
            assert!(!worker.contains(&nr), "queue-worker allows {nr}");
        }
    }
}
