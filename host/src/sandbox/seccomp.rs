//! seccomp allow-lists, one per thread role; any other system call kills the process.
//!
//! The device process has two threads once it serves:
//!
//! - the **device** thread (the main thread): accepts vfio-user clients, decodes every
//!   message, runs the PCI function and serves the queues inline on each doorbell, moving
//!   data between the pool mapping and the disk image;
//! - the **audit writer**: appends records to the audit log, signs checkpoints and rotates
//!   files.
//!
//! Each installs its own filter: the device thread after everything is open and bound, the
//! audit writer first thing in its body. Neither may open a socket, execute a program, map
//! executable memory, start a thread, change credentials or trace anything. The device
//! thread cannot open, create or remove a file at all; only the audit writer opens files, and
//! Landlock confines those to the audit directories.
//!
//! Every allowed call is listed with why. Arguments are checked where that narrows the
//! call to what is needed: no `PROT_EXEC` on `mmap`/`mprotect`, `fcntl` to four commands,
//! `getsockopt` to `SO_PEERCRED`, the `stat` family to an open fd (`AT_EMPTY_PATH`).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::SandboxError;

/// The threads that differ in what they may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The vfio-user and queue thread: everything a guest drives.
    Device,
    /// The audit log writer.
    AuditWriter,
}

impl Role {
    /// The role's name, for logs and probes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::AuditWriter => "audit-writer",
        }
    }
}

/// A system call's number and name.
type Sys = (libc::c_long, &'static str);

/// `sys!(SYS_futex)`: the number and the name of `futex`.
macro_rules! sys {
    ($nr:ident) => {
        (libc::$nr, stringify!($nr).trim_start_matches("SYS_"))
    };
}

/// One allowed call: its number and name, why, and the argument rules (empty: any
/// arguments; several: any one of them).
struct Allow {
    nr: libc::c_long,
    name: &'static str,
    /// Why the thread needs it; shown by `allowed_syscalls` for the docs and the closing
    /// notes of the sandbox.
    why: &'static str,
    rules: Vec<Vec<Arg>>,
}

/// One argument condition.
#[derive(Clone, Copy)]
enum Arg {
    /// Argument `index` equals `value`.
    Eq(u8, u64),
    /// Argument `index` has none of the bits of `mask`.
    NoBits(u8, u64),
    /// Argument `index` has all of the bits of `mask`.
    AllBits(u8, u64),
}

fn any((nr, name): Sys, why: &'static str) -> Allow {
    Allow {
        nr,
        name,
        why,
        rules: Vec::new(),
    }
}

fn when((nr, name): Sys, why: &'static str, rules: Vec<Vec<Arg>>) -> Allow {
    Allow {
        nr,
        name,
        why,
        rules,
    }
}

// Flag values as the kernel compares them (32-bit arguments).
const PROT_EXEC: u64 = libc::PROT_EXEC as u64;
const AT_EMPTY_PATH: u64 = libc::AT_EMPTY_PATH as u64;

/// What every thread of the process needs to run Rust code at all.
fn runtime() -> Vec<Allow> {
    let mut v = vec![
        any(sys!(SYS_futex), "locks, condition variables and the audit queue"),
        any(sys!(SYS_write), "the log on stderr; (device) JSON events on stdout and interrupt eventfds; (writer) the audit file"),
        any(sys!(SYS_writev), "vectored writes of the same streams"),
        any(sys!(SYS_close), "dropping fds (per-session fds from the client; rotated files)"),
        when(sys!(SYS_mmap),
            "the allocator and (device) the pool memfd at its bus address; never executable",
            vec![vec![Arg::NoBits(2, PROT_EXEC)]],
        ),
        when(sys!(SYS_mprotect),
            "the allocator's guard pages; never executable",
            vec![vec![Arg::NoBits(2, PROT_EXEC)]],
        ),
        any(sys!(SYS_munmap), "the allocator and (device) the pool on a BAR move"),
        any(sys!(SYS_mremap), "the allocator growing a large buffer"),
        any(sys!(SYS_madvise), "the allocator returning freed memory"),
        any(sys!(SYS_brk), "the allocator's main heap"),
        any(sys!(SYS_clock_gettime), "timestamps (when the vDSO falls back to the kernel)"),
        any(sys!(SYS_getrandom), "hash-map keys; (device) the attestation nonce"),
        any(sys!(SYS_rt_sigreturn), "returning from a signal handler"),
        any(sys!(SYS_rt_sigprocmask), "the runtime's signal masks (thread exit)"),
        any(sys!(SYS_sigaltstack), "the runtime's stack-overflow handler (thread exit)"),
        any(sys!(SYS_sched_yield), "lock and channel back-off"),
        any(sys!(SYS_gettid), "the runtime's thread bookkeeping"),
        any(sys!(SYS_getpid), "the runtime's process bookkeeping"),
        any(sys!(SYS_exit), "a thread ending"),
        any(sys!(SYS_exit_group), "the process ending"),
    ];
    #[cfg(target_arch = "x86_64")]
    v.push(any(
        sys!(SYS_fstat),
        "metadata of an open file (older C libraries; x86_64 only)",
    ));
    v
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

fn allow_list(role: Role) -> Vec<Allow> {
    let mut v = runtime();
    v.extend(match role {
        Role::Device => device(),
        Role::AuditWriter => audit_writer(),
    });
    v
}

/// One allowed call, as the docs and `--print-sandbox` show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AllowedCall {
    /// The call's name.
    pub name: &'static str,
    /// Its number on this architecture.
    pub nr: libc::c_long,
    /// Why the thread needs it.
    pub why: &'static str,
    /// Whether its arguments are restricted too.
    pub arguments_checked: bool,
}

/// The allowed calls of `role`, each with why: for the docs and for operators.
pub fn allowed_syscalls(role: Role) -> Vec<AllowedCall> {
    allow_list(role)
        .into_iter()
        .map(|a| AllowedCall {
            name: a.name,
            nr: a.nr,
            why: a.why,
            arguments_checked: !a.rules.is_empty(),
        })
        .collect()
}

fn condition(a: Arg) -> Result<SeccompCondition, seccompiler::BackendError> {
    let (index, op, value) = match a {
        Arg::Eq(i, v) => (i, SeccompCmpOp::Eq, v),
        Arg::NoBits(i, m) => (i, SeccompCmpOp::MaskedEq(m), 0),
        Arg::AllBits(i, m) => (i, SeccompCmpOp::MaskedEq(m), m),
    };
    // Every condition here is on an int or flag word: compare the low 32 bits.
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
}

fn target_arch() -> Result<TargetArch, SandboxError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SandboxError::Seccomp(format!("no filter for {}", std::env::consts::ARCH)))
}

/// Compiles the filter of `role`: the allow-list, anything else kills the process.
pub fn compile(role: Role) -> Result<BpfProgram, SandboxError> {
    let err = |e: &dyn std::fmt::Display| SandboxError::Seccomp(format!("{}: {e}", role.name()));
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for a in allow_list(role) {
        let mut compiled = Vec::new();
        for r in a.rules {
            let conds = r
                .into_iter()
                .map(condition)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(&e))?;
            compiled.push(SeccompRule::new(conds).map_err(|e| err(&e))?);
        }
        if rules.insert(a.nr, compiled).is_some() {
            return Err(SandboxError::Seccomp(format!(
                "{}: system call {} listed twice",
                role.name(),
                a.nr
            )));
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        target_arch()?,
    )
    .map_err(|e| err(&e))?;
    BpfProgram::try_from(filter).map_err(|e| err(&e))
}

/// Installs the filter of `role` on the calling thread (and the threads it starts later,
/// which it may not). Sets `no_new_privs`, which seccomp needs.
pub fn install(role: Role) -> Result<(), SandboxError> {
    let prog = compile(role)?;
    seccompiler::apply_filter(&prog)
        .map_err(|e| SandboxError::Seccomp(format!("{}: installing: {e}", role.name())))
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
        for role in [Role::Device, Role::AuditWriter] {
            let prog = compile(role).unwrap();
            assert!(!prog.is_empty());
            for c in allowed_syscalls(role) {
                assert!(!c.why.is_empty(), "{} {}", role.name(), c.name);
                assert!(!c.name.starts_with("SYS_"));
            }
        }
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
        ];
        for role in [Role::Device, Role::AuditWriter] {
            let allowed: Vec<_> = allowed_syscalls(role).iter().map(|a| a.nr).collect();
            for nr in forbidden {
                assert!(!allowed.contains(&nr), "{} allows {nr}", role.name());
            }
        }
        // The device thread opens, creates and removes nothing.
        let device: Vec<_> = allowed_syscalls(Role::Device)
            .iter()
            .map(|a| a.nr)
            .collect();
        for nr in [
            libc::SYS_openat,
            libc::SYS_unlinkat,
            libc::SYS_renameat2,
            libc::SYS_mkdirat,
        ] {
            assert!(!device.contains(&nr), "device allows {nr}");
        }
    }
}
