//! Privileges: `no_new_privs`, every capability dropped, and (when started as root with
//! `--user`) the switch to an unprivileged user. All of it happens before any thread starts:
//! capabilities are per thread, and a thread started later inherits what is left.

use caps::CapSet;

use super::SandboxError;

/// The unprivileged identity to run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// What the operator named (for messages).
    pub name: String,
    /// User ID.
    pub uid: libc::uid_t,
    /// Primary group ID.
    pub gid: libc::gid_t,
}

/// Longest `getpwnam_r` buffer tried: passwd entries are short; a longer one is refused.
const MAX_PASSWD_ENTRY: usize = 64 * 1024;

impl User {
    /// Resolves `spec`: a user name from the password database, or `UID:GID` in numbers.
    /// Must run before the filesystem sandbox (the database is a file).
    pub fn resolve(spec: &str) -> Result<Self, SandboxError> {
        let bad = |why: &str| SandboxError::User(format!("{spec}: {why}"));
        if let Some((u, g)) = spec.split_once(':') {
            let uid = u.parse().map_err(|_| bad("UID is not a number"))?;
            let gid = g.parse().map_err(|_| bad("GID is not a number"))?;
            return Ok(Self {
                name: spec.to_string(),
                uid,
                gid,
            });
        }
        let cname = std::ffi::CString::new(spec).map_err(|_| bad("contains NUL"))?;
        let mut buf = vec![0u8; 1024];
        loop {
            // SAFETY: all-zero is a valid `passwd` (null pointers and zero ids).
            let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: the name is NUL-terminated, `buf` is writable for its length, and
            // `pw`/`result` point to locals that outlive the call.
            let rc = unsafe {
                libc::getpwnam_r(
                    cname.as_ptr(),
                    &mut pw,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                )
            };
            if rc == libc::ERANGE && buf.len() < MAX_PASSWD_ENTRY {
                buf.resize(buf.len() * 2, 0);
                continue;
            }
            if rc != 0 {
                return Err(bad(&std::io::Error::from_raw_os_error(rc).to_string()));
            }
            if result.is_null() {
                return Err(bad("no such user"));
            }
            return Ok(Self {
                name: spec.to_string(),
                uid: pw.pw_uid,
                gid: pw.pw_gid,
            });
        }
    }
}

/// What [`drop_privileges`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Dropped {
    /// The user ID now (real, effective and saved).
    pub uid: libc::uid_t,
    /// The group ID now.
    pub gid: libc::gid_t,
    /// Whether the process switched users.
    pub switched: bool,
}

fn os_err(what: &str) -> SandboxError {
    SandboxError::Privileges(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// Switches to `user` (when given; only root can), then drops every capability from the
/// bounding, ambient, inheritable, permitted and effective sets. Checks afterwards that the
/// old identity cannot be regained. Call before any thread starts.
pub fn drop_privileges(user: Option<&User>) -> Result<Dropped, SandboxError> {
    let caps_err =
        |what: &str, e: caps::errors::CapsError| SandboxError::Privileges(format!("{what}: {e}"));
    // The bounding set can only be cleared while CAP_SETPCAP is still held.
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false) {
        caps::clear(None, CapSet::Bounding).map_err(|e| caps_err("bounding set", e))?;
    }
    // Sets already empty are left alone: under a service manager that granted nothing, the
    // process need not be allowed capset(2) at all.
    let clear = |set: CapSet, what: &str| -> Result<(), SandboxError> {
        let held = caps::read(None, set).map_err(|e| caps_err(what, e))?;
        if held.is_empty() {
            return Ok(());
        }
        caps::clear(None, set).map_err(|e| caps_err(what, e))
    };
    clear(CapSet::Ambient, "ambient set")?;
    let switched = match user {
        Some(u) => {
            // SAFETY: plain syscalls with integer arguments and an empty group list.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0 {
                    return Err(os_err("setgroups"));
                }
                if libc::setresgid(u.gid, u.gid, u.gid) != 0 {
                    return Err(os_err("setresgid"));
                }
                if libc::setresuid(u.uid, u.uid, u.uid) != 0 {
                    return Err(os_err("setresuid"));
                }
            }
            true
        }
        None => false,
    };
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        clear(set, "capability sets")?;
    }
    // SAFETY: getters without arguments.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if let Some(u) = user {
        if uid != u.uid || gid != u.gid {
            return Err(SandboxError::Privileges(format!(
                "still {uid}:{gid} after switching to {}",
                u.name
            )));
        }
        // With no capability left, going back to root must fail.
        // SAFETY: setuid with an integer argument.
        if u.uid != 0 && unsafe { libc::setuid(0) } == 0 {
            return Err(SandboxError::Privileges("root could be regained".into()));
        }
    }
    Ok(Dropped { uid, gid, switched })
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`: no exec can ever gain privileges.
pub fn set_no_new_privs() -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(os_err("no_new_privs"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_by_number_and_name_and_bad_ones_are_refused() {
        assert_eq!(
            User::resolve("65534:65534").unwrap(),
            User {
                name: "65534:65534".into(),
                uid: 65534,
                gid: 65534
            }
        );
        assert!(User::resolve("x:1").is_err());
        assert!(User::resolve("no-such-user-swiotlb").is_err());
        assert_eq!(User::resolve("root").unwrap().uid, 0);
    }
}
