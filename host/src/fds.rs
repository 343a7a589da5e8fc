//! File descriptors handed in by a supervisor, so the device process need not open (or be
//! able to reach) what it serves: the listening socket (systemd socket activation, or any
//! parent) and the disk image (systemd's `OpenFile=`, or any parent).
//!
//! A passed fd is named by number (`--listen-fd 3`) or by the name systemd gave it in
//! `LISTEN_FDNAMES` (`--disk-fd disk`); names are honoured only when `LISTEN_PID` is this
//! process, as `sd_listen_fds(3)` specifies. Each fd is checked to be what it claims to be
//! before it is used.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use thiserror::Error;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Most fds taken from `LISTEN_FDS`: a socket and an image, with room for more sockets.
const MAX_LISTEN_FDS: RawFd = 64;

/// Errors taking a passed fd.
#[derive(Debug, Error)]
pub enum FdError {
    /// The spec names no fd.
    #[error("no passed fd named {0:?} (LISTEN_FDNAMES: {1})")]
    NoSuchName(String, String),
    /// The number is not an open fd of this process.
    #[error("fd {0} is not open")]
    NotOpen(RawFd),
    /// The fd is a standard stream.
    #[error("fd {0} is a standard stream")]
    Standard(RawFd),
    /// The fd is not what it should be.
    #[error("fd {fd}: {why}")]
    Wrong {
        /// The fd.
        fd: RawFd,
        /// What is wrong.
        why: String,
    },
    /// Two specs name the same fd.
    #[error("fd {0} is named twice")]
    Twice(RawFd),
    /// The environment from the supervisor is malformed.
    #[error("LISTEN_FDS environment: {0}")]
    Environment(String),
}

/// The fds named in the environment (`LISTEN_FDS`, `LISTEN_FDNAMES`), as the supervisor
/// passed them; the variables are removed so no child could inherit them.
#[derive(Debug, Default)]
pub struct Passed {
    names: Vec<(RawFd, String)>,
    taken: Vec<RawFd>,
}

impl Passed {
    /// Reads and clears the systemd variables; empty when they are absent or meant for
    /// another process.
    pub fn from_env() -> Result<Self, FdError> {
        let fds = std::env::var("LISTEN_FDS").ok();
        let pid = std::env::var("LISTEN_PID").ok();
        let names = std::env::var("LISTEN_FDNAMES").ok();
        for v in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
            std::env::remove_var(v);
        }
        Self::from_vars(fds, pid, names, std::process::id())
    }

    /// Parses the three variables as `sd_listen_fds_with_names(3)` does, for process `me`.
    fn from_vars(
        fds: Option<String>,
        pid: Option<String>,
        names: Option<String>,
        me: u32,
    ) -> Result<Self, FdError> {
        let (Some(fds), Some(pid)) = (fds, pid) else {
            return Ok(Self::default());
        };
        if pid.parse::<u32>().ok() != Some(me) {
            return Ok(Self::default());
        }
        let n: RawFd = fds
            .parse()
            .map_err(|_| FdError::Environment(format!("LISTEN_FDS={fds:?}")))?;
        if !(0..=MAX_LISTEN_FDS).contains(&n) {
            return Err(FdError::Environment(format!(
                "LISTEN_FDS={n} (at most {MAX_LISTEN_FDS})"
            )));
        }
        let names: Vec<String> = match names {
            Some(s) => s.split(':').map(str::to_string).collect(),
            None => vec!["unknown".to_string(); n as usize],
        };
        if names.len() != n as usize {
            return Err(FdError::Environment(format!(
                "LISTEN_FDNAMES has {} names for {n} fds",
                names.len()
            )));
        }
        Ok(Self {
            names: (LISTEN_FDS_START..).zip(names).collect(),
            taken: Vec::new(),
        })
    }

    fn names(&self) -> String {
        if self.names.is_empty() {
            return "none".into();
        }
        self.names
            .iter()
            .map(|(fd, n)| format!("{n}={fd}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Takes ownership of the fd `spec` names: a number, or a name from `LISTEN_FDNAMES`.
    fn take(&mut self, spec: &str) -> Result<OwnedFd, FdError> {
        let fd = match spec.parse::<RawFd>() {
            Ok(n) => n,
            Err(_) => self
                .names
                .iter()
                .find(|(_, n)| n == spec)
                .map(|(fd, _)| *fd)
                .ok_or_else(|| FdError::NoSuchName(spec.to_string(), self.names()))?,
        };
        if (0..LISTEN_FDS_START).contains(&fd) {
            return Err(FdError::Standard(fd));
        }
        if fd < 0 {
            return Err(FdError::NotOpen(fd));
        }
        if self.taken.contains(&fd) {
            return Err(FdError::Twice(fd));
        }
        // SAFETY: fcntl on an integer fd; an unopened number fails with EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            return Err(FdError::NotOpen(fd));
        }
        // Not inherited by anything this process might start.
        // SAFETY: as above, on an fd now known to be open.
        unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        self.taken.push(fd);
        // SAFETY: the fd is open, was handed to this process by its parent, and nothing
        // else in the process owns it: each number is taken once (checked above), before
        // anything else opens files.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The listening vfio-user socket named by `spec`: a Unix stream socket, listening.
    pub fn listener(&mut self, spec: &str) -> Result<UnixListener, FdError> {
        let fd = self.take(spec)?;
        let raw = fd.as_raw_fd();
        let wrong = |why: String| FdError::Wrong { fd: raw, why };
        if file_type(&fd)? != libc::S_IFSOCK {
            return Err(wrong("not a socket".into()));
        }
        if sockopt(&fd, libc::SO_DOMAIN)? != libc::AF_UNIX {
            return Err(wrong("not a Unix socket".into()));
        }
        if sockopt(&fd, libc::SO_TYPE)? != libc::SOCK_STREAM {
            return Err(wrong("not a stream socket".into()));
        }
        if sockopt(&fd, libc::SO_ACCEPTCONN)? != 1 {
            return Err(wrong("not listening".into()));
        }
        Ok(UnixListener::from(fd))
    }

    /// The disk image named by `spec`: a regular file or block device, writable unless
    /// `read_only`.
    pub fn disk(&mut self, spec: &str, read_only: bool) -> Result<File, FdError> {
        let fd = self.take(spec)?;
        let raw = fd.as_raw_fd();
        let wrong = |why: &str| FdError::Wrong {
            fd: raw,
            why: why.to_string(),
        };
        let t = file_type(&fd)?;
        if t != libc::S_IFREG && t != libc::S_IFBLK {
            return Err(wrong("not a regular file or block device"));
        }
        // SAFETY: fcntl on an open fd we own.
        let fl = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        if fl < 0 {
            return Err(FdError::NotOpen(raw));
        }
        if fl & libc::O_PATH != 0 {
            return Err(wrong("opened with O_PATH"));
        }
        let mode = fl & libc::O_ACCMODE;
        if mode == libc::O_WRONLY {
            return Err(wrong("opened write-only"));
        }
        if !read_only && mode != libc::O_RDWR {
            return Err(wrong("opened read-only: serve it with --read-only"));
        }
        Ok(File::from(fd))
    }
}

fn file_type(fd: &OwnedFd) -> Result<libc::mode_t, FdError> {
    // SAFETY: all-zero is a valid `stat`; fstat fills it for an open fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a writable local.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(FdError::NotOpen(fd.as_raw_fd()));
    }
    Ok(st.st_mode & libc::S_IFMT)
}

fn sockopt(fd: &OwnedFd, opt: libc::c_int) -> Result<libc::c_int, FdError> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are writable locals of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(FdError::Wrong {
            fd: fd.as_raw_fd(),
            why: format!("getsockopt: {}", std::io::Error::last_os_error()),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(fds: &str, pid: &str, names: Option<&str>) -> Result<Passed, FdError> {
        Passed::from_vars(
            Some(fds.into()),
            Some(pid.into()),
            names.map(Into::into),
            42,
        )
    }

    #[test]
    fn names_map_to_fds_from_three_for_this_process_only() {
        let p = vars("2", "42", Some("vfio-user:disk")).unwrap();
        assert_eq!(p.names, vec![(3, "vfio-user".into()), (4, "disk".into())]);
        // Meant for another process (a parent's variables leaked): ignored.
        assert!(vars("2", "41", Some("a:b")).unwrap().names.is_empty());
        assert!(Passed::from_vars(None, Some("42".into()), None, 42)
            .unwrap()
            .names
            .is_empty());
        // Without names every fd is "unknown", as systemd says.
        assert_eq!(vars("1", "42", None).unwrap().names[0].1, "unknown");
    }

    #[test]
    fn malformed_variables_are_refused() {
        assert!(vars("x", "42", None).is_err());
        assert!(vars("-1", "42", None).is_err());
        assert!(vars("100000", "42", None).is_err());
        assert!(vars("2", "42", Some("only-one")).is_err());
    }

    #[test]
    fn a_name_nobody_passed_says_what_was_passed() {
        let mut p = vars("1", "42", Some("vfio-user")).unwrap();
        let e = p.take("disk").unwrap_err().to_string();
        assert!(e.contains("vfio-user=3"), "{e}");
        assert!(matches!(p.take("1"), Err(FdError::Standard(1))));
        assert!(matches!(p.take("-5"), Err(FdError::NotOpen(-5))));
    }
}
