//! Framing vfio-user messages on a Unix stream socket, with the file descriptors that ride
//! along as SCM_RIGHTS. Every length comes from a header the codec has already bounded.
//!
//! Received descriptors arrive close-on-exec (`MSG_CMSG_CLOEXEC`), atomically: a peer's
//! eventfd or memory fd must never leak into a program that the receiving process starts,
//! not even one started by another thread between the receive and an `fcntl`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

use super::{CodecError, Header, HEADER_SIZE, MAX_MSG_FDS};
use thiserror::Error;

/// Room for the control message of one receive: [`MAX_MSG_FDS`] descriptors.
const RECV_CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_MSG_FDS as usize));

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
    /// More fds arrived than a message may carry. Those past the limit are closed unseen.
    #[error("more than {MAX_MSG_FDS} file descriptors in one message")]
    TooManyFds,
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
        let mut space = [MaybeUninit::uninit(); RECV_CMSG_SPACE];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let r = match recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => r,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(RecvError::Io(e.into())),
        };
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                fds.extend(rights);
            }
        }
        // The kernel closes what did not fit in the control buffer and says so.
        if r.flags.contains(ReturnFlags::CTRUNC) || fds.len() > MAX_MSG_FDS as usize {
            return Err(RecvError::TooManyFds);
        }
        if r.bytes == 0 {
            break;
        }
        got += r.bytes;
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

/// Sends `bytes` with `fds` attached to the first chunk. Never raises SIGPIPE: a peer gone
/// is an `EPIPE` error. How many fds the peer takes in one message (its `max_msg_fds`) is
/// the caller's to respect.
pub fn send_message(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let borrowed: Vec<BorrowedFd<'_>> = fds
        .iter()
        // SAFETY: the caller keeps `fds` open for the duration of this call, which is as
        // long as these borrows live.
        .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) })
        .collect();
    // Both empty, and so not allocated, for all but the few replies that carry fds.
    let mut space = if borrowed.is_empty() {
        Vec::new()
    } else {
        vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(borrowed.len()))]
    };
    let mut sent = 0;
    while sent < bytes.len() {
        let mut control = SendAncillaryBuffer::new(&mut space);
        if sent == 0
            && !borrowed.is_empty()
            && !control.push(SendAncillaryMessage::ScmRights(&borrowed))
        {
            return Err(io::Error::other("no room for the file descriptors"));
        }
        let iov = [IoSlice::new(&bytes[sent..])];
        match sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => sent += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio_user::{encode_request, Command};
    use std::fs::File;
    use std::os::fd::{AsFd, AsRawFd};

    fn cloexec(fd: &impl AsFd) -> bool {
        rustix::io::fcntl_getfd(fd)
            .expect("F_GETFD")
            .contains(rustix::io::FdFlags::CLOEXEC)
    }

    /// A descriptor without FD_CLOEXEC, as a careless peer (or one in another language)
    /// would pass it.
    fn inheritable() -> OwnedFd {
        let f: OwnedFd = File::open("/dev/null").expect("open").into();
        rustix::io::fcntl_setfd(&f, rustix::io::FdFlags::empty()).expect("F_SETFD");
        assert!(!cloexec(&f));
        f
    }

    #[test]
    fn received_descriptors_are_close_on_exec() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let fds = [inheritable(), inheritable()];
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let bytes = encode_request(7, Command::DmaMap, &[0u8; 32]).expect("encode");
        send_message(&a, &bytes, &raw).expect("send");
        let msg = recv_message(&b).expect("recv");
        assert_eq!(msg.header.msg_id, 7);
        assert_eq!(msg.payload.len(), 32);
        assert_eq!(msg.fds.len(), 2);
        for fd in &msg.fds {
            assert!(cloexec(fd), "a received fd would leak into exec'd children");
        }
    }

    #[test]
    fn a_message_split_across_writes_is_reassembled_with_its_fds() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let bytes = encode_request(9, Command::DmaMap, &[5u8; 32]).expect("encode");
        let f = inheritable();
        // The header alone, with the fd, then the payload in a second write.
        send_message(&a, &bytes[..HEADER_SIZE], &[f.as_raw_fd()]).expect("send header");
        send_message(&a, &bytes[HEADER_SIZE..], &[]).expect("send payload");
        let msg = recv_message(&b).expect("recv");
        assert_eq!(msg.payload, vec![5u8; 32]);
        assert_eq!(msg.fds.len(), 1);
        assert!(cloexec(&msg.fds[0]));
    }

    #[test]
    fn more_descriptors_than_a_message_may_carry_are_refused_on_receipt() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let many: Vec<OwnedFd> = (0..=MAX_MSG_FDS).map(|_| inheritable()).collect();
        let raw: Vec<RawFd> = many.iter().map(|f| f.as_raw_fd()).collect();
        let bytes = encode_request(1, Command::DmaMap, &[0u8; 32]).expect("encode");
        send_message(&a, &bytes, &raw).expect("the sender leaves the limit to its caller");
        assert!(matches!(recv_message(&b), Err(RecvError::TooManyFds)));
        // Exactly the limit is taken (on a new connection: that one is out of step now).
        let (a, b) = UnixStream::pair().expect("socketpair");
        send_message(&a, &bytes, &raw[..MAX_MSG_FDS as usize]).expect("send");
        let msg = recv_message(&b).expect("recv");
        assert_eq!(msg.fds.len(), MAX_MSG_FDS as usize);
    }

    #[test]
    fn a_closed_peer_is_told_apart_from_a_truncated_message() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        drop(a);
        assert!(matches!(recv_message(&b), Err(RecvError::Closed)));

        let (a, b) = UnixStream::pair().expect("socketpair");
        let bytes = encode_request(1, Command::DmaMap, &[0u8; 32]).expect("encode");
        send_message(&a, &bytes[..HEADER_SIZE + 3], &[]).expect("send");
        drop(a);
        assert!(matches!(
            recv_message(&b),
            Err(RecvError::Truncated { got, want }) if got == HEADER_SIZE + 3 && want == bytes.len()
        ));
    }

    #[test]
    fn sending_to_a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        drop(b);
        let e = send_message(&a, &[0u8; 16], &[]).expect_err("sent to nobody");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
