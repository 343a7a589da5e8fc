//! vfio-user on the wire, from both ends.
//!
//! - [`server`]: a hostile client's message stream against the real server and device
//!   model (a fresh function per input, a VERSION first unless the input says otherwise).
//! - [`client`]: a hostile server's replies against the real client and the whole driver
//!   probe ([`BlockDriver::open`]).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::{BlockDriver, Options};
use swiotlb_host::vfio_user::Server;
use swiotlb_shared::vfio_user::capabilities::Version;
use swiotlb_shared::vfio_user::socket::recv_message;
use swiotlb_shared::vfio_user::{
    Command, Header, FLAGS_TYPE_MASK, FLAG_ERROR, HEADER_SIZE, TYPE_REPLY,
};

use super::memfd_function;

/// Commands a client may send, and a few it may not.
const COMMANDS: [u16; 20] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 0, 0xffff,
];

/// One message of a hostile client.
#[derive(Arbitrary, Debug)]
pub struct WireMessage {
    /// Index into the command table (or a raw command number when out of it).
    pub command: u16,
    /// Header flags (reply, no-reply, error bits).
    pub flags: u32,
    /// Whether the header's size is made to lie.
    pub lie_about_size: Option<u32>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// A hostile client's session.
#[derive(Arbitrary, Debug)]
pub struct ClientSession {
    /// Skip the VERSION handshake.
    pub no_version: bool,
    /// The messages after it.
    pub messages: Vec<WireMessage>,
    /// Raw trailing bytes (a torn message).
    pub trailing: Vec<u8>,
}

impl ClientSession {
    /// The bytes the client writes.
    pub fn frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut id = 0u16;
        if !self.no_version {
            let v = Version::local();
            let p = v.to_bytes().expect("our VERSION encodes");
            push(
                &mut out,
                header(id, Command::Version as u16, 0, 0),
                None,
                &p,
            );
        }
        for m in &self.messages {
            id = id.wrapping_add(1);
            let cmd = COMMANDS
                .get(usize::from(m.command))
                .copied()
                .unwrap_or(m.command);
            let h = header(id, cmd, m.flags & FLAGS_TYPE_MASK, 0);
            push(&mut out, h, m.lie_about_size, &m.payload);
        }
        out.extend_from_slice(&self.trailing);
        out
    }
}

/// Appends one message: the codec's header (with `size` when the input makes it lie), then
/// the payload.
fn push(out: &mut Vec<u8>, header: Header, size: Option<u32>, payload: &[u8]) {
    let size = size.unwrap_or((HEADER_SIZE + payload.len()) as u32);
    out.extend_from_slice(&Header { size, ..header }.encode());
    out.extend_from_slice(payload);
}

/// A header of `command` with `flags`, sized for nothing yet (see [`push`]).
fn header(msg_id: u16, command: u16, flags: u32, error: u32) -> Header {
    Header {
        msg_id,
        command,
        size: HEADER_SIZE as u32,
        flags,
        error,
    }
}

/// A hostile client against the server: it must answer or end the session, never panic,
/// and never send more than the protocol allows.
pub fn server(data: &[u8]) {
    let Ok(session) = ClientSession::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let bytes = session.frame();
    let (client, server_end) = UnixStream::pair().expect("socketpair");
    // The client writes and reads on threads of their own, so neither direction can
    // block the other (a small request can ask for a 1 MiB reply).
    let mut writer_end = client.try_clone().expect("dup");
    let writer = std::thread::spawn(move || {
        let _ = writer_end.write_all(&bytes);
        let _ = writer_end.shutdown(Shutdown::Write);
    });
    let feeder = std::thread::spawn(move || {
        let mut c = client;
        let mut replies = Vec::new();
        let _ = c.read_to_end(&mut replies);
        replies
    });
    // One server per thread: each session starts from a freshly reset function (pool
    // zeroed), as every new client does.
    thread_local! {
        static SERVER: std::cell::RefCell<Server> = std::cell::RefCell::new(Server::new(memfd_function(None)));
    }
    SERVER.with(|s| {
        let _end = s.borrow_mut().serve(&server_end);
    });
    // The writer may be stuck on a full socket if the session ended early: shut the
    // server end both ways so it returns.
    let _ = server_end.shutdown(Shutdown::Both);
    drop(server_end);
    writer.join().expect("writer");
    let replies = feeder.join().expect("feeder");
    // Every reply the server sent is a well-formed reply header with its payload.
    let mut at = 0;
    while at < replies.len() {
        let hb: [u8; HEADER_SIZE] = replies[at..at + HEADER_SIZE]
            .try_into()
            .expect("the server sent a torn header");
        let h = Header::decode(&hb).expect("the server sent a header it cannot decode");
        assert!(h.is_reply(), "the server sent a command: {h:?}");
        at += HEADER_SIZE + h.payload_len();
        assert!(at <= replies.len(), "the server sent a torn payload");
    }
}

/// A hostile server's replies.
#[derive(Arbitrary, Debug)]
pub struct ServerScript {
    /// One reply per request, in order: (echo the request's id, error errno, payload).
    pub replies: Vec<(bool, Option<u32>, Vec<u8>)>,
}

/// A hostile server against the client and the driver probe: every answer is a clear
/// error or a working device, never a panic or a hang.
pub fn client(data: &[u8]) {
    let Ok(script) = ServerScript::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let (client_end, server_end) = UnixStream::pair().expect("socketpair");
    let fake = std::thread::spawn(move || {
        for (echo, err, payload) in script.replies {
            let Ok(req) = recv_message(&server_end) else {
                return;
            };
            let id = if echo {
                req.header.msg_id
            } else {
                req.header.msg_id.wrapping_add(1)
            };
            let flags = match err {
                Some(_) => TYPE_REPLY | FLAG_ERROR,
                None => TYPE_REPLY,
            };
            let mut out = Vec::new();
            let h = header(id, req.header.command, flags, err.unwrap_or(0));
            push(&mut out, h, None, &payload);
            if (&server_end).write_all(&out).is_err() {
                return;
            }
        }
        // Out of answers: hang up.
    });
    if let Ok(c) = VfioUserClient::from_stream(client_end) {
        let opts = Options {
            timeout: Duration::from_millis(20),
            ..Options::default()
        };
        if let Ok(mut drv) = BlockDriver::open(c, &opts) {
            let mut buf = [0u8; 512];
            let _ = drv.read_at(0, &mut buf);
        }
    }
    fake.join().expect("fake server");
}
