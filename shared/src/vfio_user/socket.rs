//! Framing vfio-user messages on a Unix stream socket, with the file descriptors that ride
//! along as SCM_RIGHTS. Every length comes from a header the codec has already bounded.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use super::{CodecError, Header, HEADER_SIZE, MAX_MSG_FDS};
use thiserror::Error;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Errors receiving a message.
#[derive(Debug, Error)]
pub enum RecvError {
    /// The peer closed the connection between messages.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the connection inside a message.
    #[error("connection closed after {got} of {want} bytes of a message")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The header is invalid; the stream cannot be resynchronised.
    #[error("invalid message header")]
    BadHeader {
        /// Message id, to answer with an error.
        msg_id: u16,
        /// Command, to answer with an error.
        command: u16,
        /// Why.
        #[source]
        source: CodecError,
    },
    /// More fds arrived than a message may carry.
    #[error("{0} file descriptors in one message (at most {MAX_MSG_FDS})")]
    TooManyFds(usize),
    /// Socket error.
    #[error("socket error")]
    Io(#[from] io::Error),
}

/// A received message.
#[derive(Debug)]
pub struct Message {
    /// The decoded header.
    pub header: Header,
    /// The payload (exactly `header.payload_len()` bytes).
    pub payload: Vec<u8>,
    /// Descriptors that came with it.
    pub fds: Vec<OwnedFd>,
}

/// Fills `buf` from the socket, collecting any fds. Returns the bytes read (less than
/// `buf.len()` only at end of stream).
fn recv_exact(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<usize, RecvError> {
    let mut got = 0;
    while got < buf.len() {
        let mut raw = [-1 as RawFd; MAX_MSG_FDS as usize];
        let rest = &mut buf[got..];
        let mut iov = [libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        }];
        // SAFETY: the iovec points at `rest`, which is valid and writable for its length for
        // the whole call.
        let r = unsafe { sock.recv_with_fds(&mut iov, &mut raw) };
        let (n, nfds) = match r {
            Ok(v) => v,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(RecvError::Io(io::Error::from_raw_os_error(e.errno()))),
        };
        for fd in raw.iter().take(nfds) {
            // SAFETY: the kernel just installed these descriptors for us; nothing else owns
            // them.
            fds.push(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
        if fds.len() > MAX_MSG_FDS as usize {
            return Err(RecvError::TooManyFds(fds.len()));
        }
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Receives one whole message.
pub fn recv_message(sock: &UnixStream) -> Result<Message, RecvError> {
    let mut fds = Vec::new();
    let mut hb = [0u8; HEADER_SIZE];
    let got = recv_exact(sock, &mut hb, &mut fds)?;
    if got == 0 {
        return Err(RecvError::Closed);
    }
    if got < HEADER_SIZE {
        return Err(RecvError::Truncated {
            got,
            want: HEADER_SIZE,
        });
    }
    let header = Header::decode(&hb).map_err(|source| RecvError::BadHeader {
        msg_id: u16::from_le_bytes([hb[0], hb[1]]),
        command: u16::from_le_bytes([hb[2], hb[3]]),
        source,
    })?;
    // Bounded by MAX_MESSAGE_SIZE in `Header::decode`.
    let mut payload = vec![0u8; header.payload_len()];
    let got = recv_exact(sock, &mut payload, &mut fds)?;
    if got < payload.len() {
        return Err(RecvError::Truncated {
            got: HEADER_SIZE + got,
            want: HEADER_SIZE + payload.len(),
        });
    }
    Ok(Message {
        header,
        payload,
        fds,
    })
}

/// Sends `bytes` with `fds` attached to the first chunk.
pub fn send_message(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut sent = 0;
    let mut fds = fds;
    while sent < bytes.len() {
        match sock.send_with_fds(&[&bytes[sent..]], fds) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                sent += n;
                fds = &[];
            }
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    }
    Ok(())
}
