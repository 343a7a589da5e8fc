//! Deleting a ublk device whose server is gone.
//!
//! A server stopped by a signal deletes its device on the way out. One that was killed
//! (SIGKILL, the OOM killer) cannot: the kernel's ublk driver (without recovery flags)
//! fails the dead server's requests and removes the block device, but the ublk device
//! itself (`/dev/ublkcN`, and its id) stays until someone sends `DEL_DEV`. This is that
//! someone. A device whose server still runs is refused unless forced: stopping it under a
//! live server fails every request the server has in flight and ends the server.

use serde::Serialize;

use super::control::Control;
use super::uapi::dev_state;
use super::UblkError;

/// What [`delete`] found and did.
#[derive(Debug, Clone, Serialize)]
pub struct Deleted {
    /// The device.
    pub dev_id: u32,
    /// Its state before: `dead`, `live`, `quiesced`, `fail_io` (or the number).
    pub state: String,
    /// The server the kernel recorded (0: none yet).
    pub server_pid: i32,
    /// Whether that process still ran.
    pub server_running: bool,
}

/// Stops and deletes ublk device `dev_id`. Refused ([`UblkError::ServerRunning`]) while its
/// recorded server process exists, unless `force`. A device that does not exist is the
/// kernel's `ENODEV` in a [`UblkError::Command`].
pub fn delete(dev_id: u32, force: bool) -> Result<Deleted, UblkError> {
    let mut ctl = Control::open()?;
    let info = ctl.dev_info(dev_id)?;
    let server_running = info.ublksrv_pid > 0 && process_exists(info.ublksrv_pid);
    if server_running && !force {
        return Err(UblkError::ServerRunning {
            dev_id,
            pid: info.ublksrv_pid,
        });
    }
    // STOP_DEV of a device already stopped (its server died) does nothing and succeeds.
    ctl.stop(dev_id)?;
    ctl.delete(dev_id)?;
    Ok(Deleted {
        dev_id,
        state: state_name(info.state),
        server_pid: info.ublksrv_pid,
        server_running,
    })
}

/// Whether process `pid` exists (signal 0: EPERM still means it exists).
fn process_exists(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn state_name(state: u16) -> String {
    match state {
        dev_state::DEAD => "dead".into(),
        dev_state::LIVE => "live".into(),
        dev_state::QUIESCED => "quiesced".into(),
        dev_state::FAIL_IO => "fail_io".into(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_exists_and_an_unused_pid_does_not() {
        assert!(process_exists(std::process::id() as i32));
        // Above the kernel's largest pid_max (2^22): never a process.
        assert!(!process_exists((1 << 22) + 1));
    }

    #[test]
    fn states_are_named_as_the_uapi_names_them() {
        assert_eq!(state_name(0), "dead");
        assert_eq!(state_name(1), "live");
        assert_eq!(state_name(2), "quiesced");
        assert_eq!(state_name(3), "fail_io");
        assert_eq!(state_name(9), "9");
    }
}
