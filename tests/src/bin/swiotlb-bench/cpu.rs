//! The CPU: time spent by a thread, a process and its threads, the machine's load, and
//! pinning a thread to a CPU.

/// The CPU a pinned host runs on.
pub(crate) const HOST_CPU: usize = 1;
/// The CPU a pinned driver runs on.
pub(crate) const DRIVER_CPU: usize = 0;

/// Pins the calling thread to `cpu`, or lets it run on every CPU the machine has (`None`).
/// A failure leaves the thread where it was: pinning only steadies the figures.
pub(crate) fn pin_to(cpu: Option<usize>) {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // The CPUs online, not `available_parallelism` (this thread's own CPUs, one while it
    // is pinned).
    // SAFETY: sysconf only reads a system setting.
    let n = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1);
    for c in cpu.map_or(0..n, |c| c..c + 1) {
        // SAFETY: `c` is below CPU_SETSIZE for any machine this runs on.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of `set`; pid 0 is the
    // calling thread.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

/// The 1-minute load average (`/proc/loadavg`), or NaN where it cannot be read.
pub(crate) fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// On-CPU nanoseconds of process `pid`'s threads so far (the first field of each thread's
/// `schedstat`: time run, not time waiting for a CPU, so it holds on a busy machine): all of
/// them, and those named `name`. `None` where `/proc` does not say.
pub(crate) fn threads_cpu_ns(pid: u32, name: &str) -> Option<(u64, u64)> {
    let (mut all, mut named) = (0u64, 0u64);
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let task = t.path();
        let Ok(stat) = std::fs::read_to_string(task.join("schedstat")) else {
            continue; // the thread has just ended
        };
        let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
        all += ns;
        if std::fs::read_to_string(task.join("comm")).is_ok_and(|c| c.trim_end() == name) {
            named += ns;
        }
    }
    Some((all, named))
}

/// CPU time (user and system) of the calling thread, seconds.
pub(crate) fn thread_cpu_s() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// CPU time (user and system, all threads) of process `pid` from `/proc/PID/stat`, seconds
/// (clock-tick resolution, 10 ms here); NaN where it cannot be read.
pub(crate) fn process_cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name in parentheses: state is field 3, utime 14, stime 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) if hz > 0.0 => (u + s) / hz,
        _ => f64::NAN,
    }
}
