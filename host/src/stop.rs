//! The orderly stop: SIGTERM (what `systemctl stop` sends) and SIGINT end the device the way
//! a clean shutdown must, never by the signal's default action.
//!
//! [`StopSignals::block`] runs first, before any thread exists, so every thread inherits the
//! mask and no thread is ever killed by either signal; the signals then wait in a
//! `signalfd`, which the server polls beside the socket and the doorbells
//! (`Server::with_stop`). When it becomes readable the device finishes the pass it is in
//! (every chain it took is completed and its used element published; chains not yet taken
//! stay in the ring), ends the session as a disconnect would, and returns. The caller then
//! flushes the image and closes the audit log (its stop record and final signed checkpoint,
//! made durable), and exits 0.
//!
//! Nothing may keep the process from ending when asked twice: after the first signal,
//! [`StopSignals::arm_forced_stop`] unblocks both signals in the calling thread (the device
//! thread), so a second one ends the process by its default action, and sets a deadline
//! (an `ITIMER_REAL` timer, whose SIGALRM also ends it). A log cut short that way verifies
//! as open, never as tampered.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// The signals that stop the device.
const STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// How long the orderly stop may take before SIGALRM ends the process: time for the pass in
/// progress, the image's flush and the audit writer's last checkpoint on a slow disk, and
/// well inside systemd's default stop timeout (90 s).
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// SIGTERM and SIGINT, blocked and readable from a descriptor.
#[derive(Debug)]
pub struct StopSignals {
    fd: OwnedFd,
}

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initializes the set it is given; sigaddset adds valid signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

impl StopSignals {
    /// Blocks SIGTERM and SIGINT in the calling thread (and so in every thread it starts
    /// afterwards) and opens a non-blocking `signalfd` for them. Call it before any thread
    /// is started.
    pub fn block() -> io::Result<Self> {
        let set = stop_set();
        // SAFETY: `set` is an initialized signal set; the old mask is not wanted.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: signalfd with -1 creates a new descriptor for an initialized set.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// A second descriptor of the same signalfd, for the server to poll.
    pub fn watch(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// The signal waiting, if one is: its number (consumed).
    pub fn take(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain data; all-zero is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let len = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `len` bytes into `info`, which is `len` bytes long.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                len,
            )
        };
        (usize::try_from(n).ok() == Some(len)).then_some(info.ssi_signo as libc::c_int)
    }

    /// After the first signal: a second SIGTERM or SIGINT, or `deadline` passing, ends the
    /// process. Affects the calling thread's mask only: call it on the device thread.
    pub fn arm_forced_stop(&self, deadline: Duration) -> io::Result<()> {
        let timer = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            it_value: libc::timeval {
                tv_sec: libc::time_t::try_from(deadline.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_usec: deadline.subsec_micros() as libc::suseconds_t,
            },
        };
        // SAFETY: a valid itimerval; the old value is not wanted.
        if unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let set = stop_set();
        // SAFETY: `set` is an initialized signal set; the old mask is not wanted.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }
}

impl AsFd for StopSignals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A signal's name, for the log.
pub fn signal_name(signo: libc::c_int) -> &'static str {
    match signo {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "a signal",
    }
}
