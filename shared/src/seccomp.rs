//! seccomp allow-lists as data: each allowed system call with why it is needed and, where
//! that narrows it, conditions on its arguments; compiled to a BPF program that kills the
//! process, or fails the call, on anything else. Building a program does no I/O; installing
//! it is the caller's.
//!
//! - [`runtime`]: what any thread of a Rust program needs to run at all;
//! - [`restate`]: a list with a program's own reasons for some of its calls;
//! - [`compile`]: a list to a program;
//! - [`describe`]: a list as the docs and `--print-sandbox` show it.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

/// Errors of building a filter.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// No filter can be built for this architecture.
    #[error("no seccomp filter for the {0} architecture")]
    Arch(&'static str),
    /// The same call is listed twice (each call has one entry with all its rules).
    #[error("{list}: system call {nr} is listed twice")]
    Duplicate {
        /// Whose list.
        list: &'static str,
        /// The call.
        nr: libc::c_long,
    },
    /// seccompiler refused a rule or the filter.
    #[error("{list}: {why}")]
    Build {
        /// Whose list.
        list: &'static str,
        /// What seccompiler said.
        why: String,
    },
}

/// A system call's number and name.
pub type Sys = (libc::c_long, &'static str);

/// `sys!(SYS_futex)`: the number and the name of `futex`.
#[macro_export]
macro_rules! sys {
    ($nr:ident) => {
        (libc::$nr, stringify!($nr).trim_start_matches("SYS_"))
    };
}

/// One allowed call: its number and name, why, and the argument rules (empty: any
/// arguments; several: any one of them).
pub struct Allow {
    /// The call's number.
    pub nr: libc::c_long,
    /// Its name.
    pub name: &'static str,
    /// Why the thread needs it.
    pub why: &'static str,
    /// Alternatives, each a conjunction of argument conditions.
    pub rules: Vec<Vec<Arg>>,
}

/// One argument condition (on the low 32 bits: every condition here is on an int or a
/// flag word).
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// Argument `index` equals `value`.
    Eq(u8, u64),
    /// Argument `index` has none of the bits of `mask`.
    NoBits(u8, u64),
    /// Argument `index` has all of the bits of `mask`.
    AllBits(u8, u64),
}

/// A call allowed with any arguments.
pub fn any((nr, name): Sys, why: &'static str) -> Allow {
    Allow {
        nr,
        name,
        why,
        rules: Vec::new(),
    }
}

/// A call allowed when one of `rules` holds.
pub fn when((nr, name): Sys, why: &'static str, rules: Vec<Vec<Arg>>) -> Allow {
    Allow {
        nr,
        name,
        why,
        rules,
    }
}

/// `PROT_EXEC`, as the kernel compares it.
pub const PROT_EXEC: u64 = libc::PROT_EXEC as u64;

/// What every thread of a Rust program needs: locks, the allocator (never executable
/// memory), time, signal returns and masks, thread and process exit.
pub fn runtime() -> Vec<Allow> {
    let mut v = vec![
        any(sys!(SYS_futex), "locks, condition variables, thread joins"),
        any(
            sys!(SYS_write),
            "lines on stdout and stderr; eventfd doorbells",
        ),
        any(sys!(SYS_writev), "vectored writes of the same streams"),
        any(sys!(SYS_close), "dropping fds"),
        when(
            sys!(SYS_mmap),
            "the allocator; never executable",
            vec![vec![Arg::NoBits(2, PROT_EXEC)]],
        ),
        when(
            sys!(SYS_mprotect),
            "the allocator's guard pages and heap growth; never executable",
            vec![vec![Arg::NoBits(2, PROT_EXEC)]],
        ),
        any(
            sys!(SYS_munmap),
            "the allocator; a thread's stack when it ends",
        ),
        any(sys!(SYS_mremap), "the allocator growing a large buffer"),
        any(sys!(SYS_madvise), "the allocator returning freed memory"),
        any(sys!(SYS_brk), "the allocator's main heap"),
        any(
            sys!(SYS_clock_gettime),
            "timestamps (when the vDSO falls back to the kernel)",
        ),
        any(sys!(SYS_getrandom), "hash-map keys; nonces"),
        any(sys!(SYS_rt_sigreturn), "returning from a signal handler"),
        any(
            sys!(SYS_rt_sigprocmask),
            "the runtime's signal masks (thread exit)",
        ),
        any(
            sys!(SYS_sigaltstack),
            "the runtime's stack-overflow handler (thread exit)",
        ),
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

/// `list` with the reasons of `reasons` (call name, why) in place of its own: a program
/// says why *its* threads need a call of a shared list such as [`runtime`]. The calls and
/// their argument rules are unchanged; a name not in `list` is ignored, so a caller should
/// test that each one it gives is there.
pub fn restate(mut list: Vec<Allow>, reasons: &[(&str, &'static str)]) -> Vec<Allow> {
    for a in &mut list {
        if let Some((_, why)) = reasons.iter().find(|(name, _)| *name == a.name) {
            a.why = why;
        }
    }
    list
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

/// `list` as the docs show it.
pub fn describe(list: &[Allow]) -> Vec<AllowedCall> {
    list.iter()
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
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
}

/// What a call off the list gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// The process is killed (SIGSYS).
    Kill,
    /// The call fails with `EPERM` and is not made.
    Refuse,
}

/// Compiles `list` (named `name` in errors): the allow-list, anything else as `violation`
/// says.
pub fn compile(
    name: &'static str,
    list: Vec<Allow>,
    violation: Violation,
) -> Result<BpfProgram, SeccompError> {
    let err = |e: &dyn std::fmt::Display| SeccompError::Build {
        list: name,
        why: e.to_string(),
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for a in list {
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
            return Err(SeccompError::Duplicate {
                list: name,
                nr: a.nr,
            });
        }
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))?;
    let mismatch = match violation {
        Violation::Kill => SeccompAction::KillProcess,
        Violation::Refuse => SeccompAction::Errno(libc::EPERM as u32),
    };
    let filter =
        SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch).map_err(|e| err(&e))?;
    BpfProgram::try_from(filter).map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_list_compiles_and_a_duplicate_is_refused() {
        assert!(compile("runtime", runtime(), Violation::Kill).is_ok());
        assert!(compile("runtime", runtime(), Violation::Refuse).is_ok());
        let mut twice = runtime();
        twice.push(any(sys!(SYS_futex), "again"));
        assert!(matches!(
            compile("twice", twice, Violation::Kill),
            Err(SeccompError::Duplicate { .. })
        ));
        let d = describe(&runtime());
        assert!(d.iter().any(|c| c.name == "mmap" && c.arguments_checked));
        assert!(d.iter().any(|c| c.name == "futex" && !c.arguments_checked));
    }

    #[test]
    fn restating_changes_reasons_only() {
        let list = restate(runtime(), &[("mmap", "ours"), ("no_such_call", "ignored")]);
        let before = describe(&runtime());
        let after = describe(&list);
        assert_eq!(before.len(), after.len());
        for (b, a) in before.iter().zip(&after) {
            assert_eq!((b.nr, b.arguments_checked), (a.nr, a.arguments_checked));
            let why = if a.name == "mmap" { "ours" } else { b.why };
            assert_eq!(a.why, why, "{}", a.name);
        }
    }
}
