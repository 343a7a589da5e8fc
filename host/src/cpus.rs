//! Where the device's threads run (`--queue-cpus`): each queue's thread on a CPU of its
//! own, and every other thread of the process (the audit writer, the control thread) on the
//! CPUs left, so that nothing preempts a polling queue thread or takes its caches. Without
//! the option the scheduler places every thread, which on a host with idle CPUs already
//! keeps a busy writer off a spinning queue thread; the option is for a device given a
//! fixed set of CPUs (a cpuset, `taskset`, systemd `CPUAffinity=`), as cloud-hypervisor's
//! per-queue `queue_affinity` is.
//!
//! Parse ([`CpuList`]), then check against the CPUs this process may run on
//! ([`Placement::new`]), then apply, thread by thread ([`pin_current_thread`]), before the
//! sandbox's filters, which do not allow `sched_setaffinity`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// The highest CPU number a list may name: what a `cpu_set_t` holds.
const MAX_CPU: usize = libc::CPU_SETSIZE as usize - 1;

/// Why a CPU list or a placement is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpuError {
    /// The list is empty or malformed.
    #[error("CPU list {0:?}: expected CPU numbers and ranges such as 1 or 2,3 or 4-7")]
    Syntax(String),
    /// A CPU number above what the kernel interface holds.
    #[error("CPU {0} is above the highest CPU number this interface takes ({MAX_CPU})")]
    TooHigh(usize),
    /// A CPU named twice (two queues on one CPU defeat the option's purpose).
    #[error("CPU {0} is named twice: each queue takes a CPU of its own")]
    Repeated(usize),
    /// A CPU the process may not run on.
    #[error("CPU {cpu} is not one this process may run on (it may run on {allowed})")]
    NotAllowed {
        /// The CPU named.
        cpu: usize,
        /// The CPUs the process may run on.
        allowed: CpuList,
    },
    /// More queues than CPUs named.
    #[error("{queues} queues need {queues} CPUs in --queue-cpus, {given} given")]
    TooFew {
        /// Queues served.
        queues: u16,
        /// CPUs named.
        given: usize,
    },
    /// The kernel refused to read or set an affinity.
    #[error("{0}")]
    Affinity(String),
}

/// A list of CPU numbers in the kernel's list syntax (`0`, `2,3`, `4-7,9`), in the order
/// given: queue `i` runs on the `i`th.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// The CPUs, in order.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }
}

impl FromStr for CpuList {
    type Err = CpuError;

    fn from_str(s: &str) -> Result<Self, CpuError> {
        let syntax = || CpuError::Syntax(s.to_string());
        let number = |t: &str| -> Result<usize, CpuError> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            let n: usize = t.parse().map_err(|_| syntax())?;
            if n > MAX_CPU {
                return Err(CpuError::TooHigh(n));
            }
            Ok(n)
        };
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for part in s.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => {
                    let n = number(part)?;
                    (n, n)
                }
            };
            if lo > hi {
                return Err(syntax());
            }
            for c in lo..=hi {
                if !seen.insert(c) {
                    return Err(CpuError::Repeated(c));
                }
                out.push(c);
            }
        }
        Ok(Self(out))
    }
}

impl fmt::Display for CpuList {
    /// The kernel's list syntax, consecutive runs as ranges.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        let mut first = true;
        while i < self.0.len() {
            let mut j = i;
            while j + 1 < self.0.len() && self.0[j + 1] == self.0[j] + 1 {
                j += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if j > i {
                write!(f, "{}-{}", self.0[i], self.0[j])?;
            } else {
                write!(f, "{}", self.0[i])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

/// Where each thread runs: a CPU per queue, and the rest of the process's CPUs for every
/// other thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    queues: CpuList,
    others: CpuList,
}

impl Placement {
    /// Checks `queues` (one CPU per queue, in queue order) against `allowed`, the CPUs the
    /// process may run on. The other threads take the allowed CPUs not named; when every
    /// allowed CPU is named they share them, and `shares` says so.
    pub fn new(queue_cpus: &CpuList, queues: u16, allowed: &CpuList) -> Result<Self, CpuError> {
        if queue_cpus.0.len() < usize::from(queues) {
            return Err(CpuError::TooFew {
                queues,
                given: queue_cpus.0.len(),
            });
        }
        for &cpu in &queue_cpus.0 {
            if !allowed.0.contains(&cpu) {
                return Err(CpuError::NotAllowed {
                    cpu,
                    allowed: allowed.clone(),
                });
            }
        }
        let used = &queue_cpus.0[..usize::from(queues)];
        let rest: Vec<usize> = allowed
            .0
            .iter()
            .copied()
            .filter(|c| !used.contains(c))
            .collect();
        Ok(Self {
            queues: CpuList(used.to_vec()),
            others: if rest.is_empty() {
                allowed.clone()
            } else {
                CpuList(rest)
            },
        })
    }

    /// The CPU of queue `q`'s thread.
    pub fn queue(&self, q: u16) -> Option<usize> {
        self.queues.0.get(usize::from(q)).copied()
    }

    /// The CPU of queue `q`'s thread, as a list to pin it to.
    pub fn queue_list(&self, q: u16) -> Option<CpuList> {
        self.queue(q).map(|c| CpuList(vec![c]))
    }

    /// The CPUs of every other thread.
    pub fn others(&self) -> &CpuList {
        &self.others
    }

    /// Whether the other threads share the queues' CPUs (no CPU was left for them).
    pub fn shares(&self) -> bool {
        self.others.0.iter().any(|c| self.queues.0.contains(c))
    }
}

/// The CPUs the calling thread may run on, ascending.
pub fn allowed() -> Result<CpuList, CpuError> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most `size_of::<cpu_set_t>()` bytes into `set`; pid 0 is
    // the calling thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(CpuError::Affinity(format!(
            "reading this process's CPUs (sched_getaffinity): {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: CPU_ISSET reads `set`, which is initialised, for numbers below CPU_SETSIZE.
    let cpus = (0..=MAX_CPU)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    Ok(CpuList(cpus))
}

/// Runs the calling thread (and the threads it starts after) on `cpus` only.
pub fn pin_current_thread(cpus: &CpuList) -> Result<(), CpuError> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in &cpus.0 {
        // SAFETY: every number of a CpuList is at most MAX_CPU, inside the set.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: the kernel reads `size_of::<cpu_set_t>()` bytes of `set`; pid 0 is the calling
    // thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(CpuError::Affinity(format!(
            "running a thread on CPUs {cpus} (sched_setaffinity): {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> CpuList {
        s.parse().unwrap()
    }

    #[test]
    fn lists_parse_in_the_kernel_syntax_and_keep_their_order() {
        assert_eq!(list("1").cpus(), &[1]);
        assert_eq!(list("3,1").cpus(), &[3, 1]);
        assert_eq!(list("4-7,2").cpus(), &[4, 5, 6, 7, 2]);
        assert_eq!(list("0-0").cpus(), &[0]);
        assert_eq!(list("4-7,2").to_string(), "4-7,2");
        assert_eq!(list("0,1,2,5").to_string(), "0-2,5");
    }

    #[test]
    fn malformed_lists_are_refused_with_what_is_wrong() {
        for bad in ["", ",", "1,", "a", "-1", "3-1", "1-", "1 ,2", "+1", "1.5"] {
            assert!(
                matches!(bad.parse::<CpuList>(), Err(CpuError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert_eq!("1,1".parse::<CpuList>(), Err(CpuError::Repeated(1)));
        assert_eq!("0-3,2".parse::<CpuList>(), Err(CpuError::Repeated(2)));
        assert_eq!("1024".parse::<CpuList>(), Err(CpuError::TooHigh(1024)));
        // Far past usize: refused, not wrapped.
        assert!("99999999999999999999999".parse::<CpuList>().is_err());
    }

    #[test]
    fn the_other_threads_take_the_cpus_the_queues_leave() {
        let p = Placement::new(&list("1"), 1, &list("0-3")).unwrap();
        assert_eq!(p.queue(0), Some(1));
        assert_eq!(p.queue(1), None);
        assert_eq!(p.others(), &list("0,2,3"));
        assert!(!p.shares());
        // Only the first `queues` CPUs are taken.
        let p = Placement::new(&list("2,3,0"), 2, &list("0-3")).unwrap();
        assert_eq!((p.queue(0), p.queue(1)), (Some(2), Some(3)));
        assert_eq!(p.others(), &list("0,1"));
        // Nothing left: the others share the queues' CPUs, and say so.
        let p = Placement::new(&list("0,1"), 2, &list("0,1")).unwrap();
        assert_eq!(p.others(), &list("0,1"));
        assert!(p.shares());
    }

    #[test]
    fn a_placement_outside_the_process_or_short_of_cpus_is_refused() {
        assert_eq!(
            Placement::new(&list("5"), 1, &list("0-3")),
            Err(CpuError::NotAllowed {
                cpu: 5,
                allowed: list("0-3")
            })
        );
        let e = Placement::new(&list("1"), 2, &list("0-3")).unwrap_err();
        assert_eq!(
            e,
            CpuError::TooFew {
                queues: 2,
                given: 1
            }
        );
        assert_eq!(
            e.to_string(),
            "2 queues need 2 CPUs in --queue-cpus, 1 given"
        );
        assert_eq!(
            Placement::new(&list("5"), 1, &list("0-3"))
                .unwrap_err()
                .to_string(),
            "CPU 5 is not one this process may run on (it may run on 0-3)"
        );
    }

    #[test]
    fn this_thread_runs_where_it_is_pinned_and_back() {
        let all = allowed().unwrap();
        assert!(!all.cpus().is_empty());
        // In a thread of its own: the pin must not leak into other tests.
        std::thread::spawn(move || {
            let one = CpuList(vec![all.cpus()[0]]);
            pin_current_thread(&one).unwrap();
            assert_eq!(allowed().unwrap(), one);
            pin_current_thread(&all).unwrap();
            assert_eq!(allowed().unwrap(), all);
        })
        .join()
        .unwrap();
    }
}
