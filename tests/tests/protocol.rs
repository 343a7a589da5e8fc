//! Malformed vfio-user, as raw bytes over a Unix socket, against the server (in process, so
//! each session's end reason and protocol counters are visible). Valid messages come from
//! the codec and are then corrupted. After every case the server must still serve a full
//! normal session: `BlockDriver::open` and a read that returns the image's bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::pci::PciError;
use swiotlb_guest::pool::Mapping;
use swiotlb_guest::{BlockDriver, Options};
use swiotlb_host::virtio::Policy;
use swiotlb_shared::vfio_user::{
    encode_request, errno, Capabilities, Command, DmaMap, DmaUnmap, Header, IrqAction, IrqSet,
    IrqSetData, RegionAccess, Version, HEADER_SIZE, MAX_DATA_XFER_SIZE, MAX_MESSAGE_SIZE,
};
use swiotlb_tests::{InProcessHost, SessionRecord};
use tempfile::TempDir;

const DISK_SIZE: usize = 1 << 20;
/// VFIO region index of PCI config space.
const CONFIG: u32 = 7;

fn pattern() -> Vec<u8> {
    (0..DISK_SIZE).map(|i| (i * 13 + 5) as u8).collect()
}

struct Fixture {
    dir: TempDir,
    disk: PathBuf,
    host: InProcessHost,
}

/// A pattern-filled image and an in-process host serving `sessions` clients.
fn fixture(sessions: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, pattern()).unwrap();
    let host = InProcessHost::start(dir.path(), &disk, sessions, false, Policy::default());
    Fixture { dir, disk, host }
}

impl Fixture {
    fn raw(&self) -> Raw {
        Raw::connect(&self.host.socket)
    }

    /// A full normal session: the block driver opens the device and reads what is on disk.
    fn assert_full_session(&self) {
        let client = VfioUserClient::connect(&self.host.socket).unwrap();
        let mut dev = BlockDriver::open(client, &Options::default()).unwrap();
        let mut buf = vec![0u8; 8192];
        dev.read_at(4096, &mut buf).unwrap();
        assert!(buf == pattern()[4096..4096 + 8192], "read back the image");
    }

    fn finish(self) -> Vec<SessionRecord> {
        let r = self.host.finish();
        assert!(
            std::fs::read(&self.disk).unwrap() == pattern(),
            "image changed"
        );
        drop(self.dir);
        r
    }
}

/// A raw vfio-user connection.
struct Raw {
    s: UnixStream,
    next_id: u16,
}

impl Raw {
    fn connect(path: &Path) -> Self {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self { s, next_id: 100 }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Sends `cmd` with `payload`; returns its message id.
    fn send_cmd(&mut self, cmd: Command, payload: &[u8]) -> u16 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&encode_request(id, cmd, payload).unwrap());
        id
    }

    /// The next message, or `None` once the server has closed the connection.
    fn recv(&mut self) -> Option<(Header, Vec<u8>)> {
        let mut h = [0u8; HEADER_SIZE];
        let mut got = 0;
        while got < HEADER_SIZE {
            match self.s.read(&mut h[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("reading a reply: {e}"),
            }
        }
        if got == 0 {
            return None;
        }
        assert_eq!(got, HEADER_SIZE, "partial reply header");
        let header = Header::decode(&h).expect("the server's reply header is valid");
        let mut payload = vec![0u8; header.payload_len()];
        self.s.read_exact(&mut payload).unwrap();
        Some((header, payload))
    }

    /// Sends `cmd` and returns its reply, checked to answer it.
    fn call(&mut self, cmd: Command, payload: &[u8]) -> (Header, Vec<u8>) {
        let id = self.send_cmd(cmd, payload);
        let (h, p) = self.recv().expect("a reply");
        assert!(h.is_reply(), "{h:?}");
        assert_eq!((h.msg_id, h.command), (id, cmd as u16), "{h:?}");
        (h, p)
    }

    /// Sends `cmd` and expects an error reply; returns its errno.
    fn call_err(&mut self, cmd: Command, payload: &[u8]) -> u32 {
        let (h, p) = self.call(cmd, payload);
        assert_error(&h);
        assert!(p.is_empty(), "error replies carry no payload");
        h.error
    }

    /// A valid VERSION exchange.
    fn version(&mut self) {
        let (h, p) = self.call(Command::Version, &Version::local().to_bytes().unwrap());
        assert!(!h.is_error(), "{h:?}");
        Version::parse(&p).unwrap();
    }

    /// A valid command still works: read the vendor and device IDs from config space.
    fn assert_alive(&mut self) {
        let req = RegionAccess {
            offset: 0,
            region: CONFIG,
            count: 4,
            data: &[],
        };
        let (h, p) = self.call(Command::RegionRead, &req.to_bytes());
        assert!(!h.is_error(), "{h:?}");
        let r = RegionAccess::parse(&p).unwrap();
        assert_eq!(r.data, &[0xf4, 0x1a, 0x42, 0x10], "virtio-blk IDs");
    }

    /// The server closed the connection (nothing more arrives).
    fn assert_closed(&mut self) {
        assert!(self.recv().is_none(), "connection still open");
    }
}

fn assert_error(h: &Header) {
    assert!(h.is_reply(), "{h:?}");
    assert!(h.is_error(), "error flag: {h:?}");
    assert_ne!(h.error, 0, "errno: {h:?}");
}

fn version_payload(major: u16, minor: u16, json: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&major.to_le_bytes());
    p.extend_from_slice(&minor.to_le_bytes());
    p.extend_from_slice(json);
    p
}

fn region_read(region: u32, offset: u64, count: u32) -> Vec<u8> {
    RegionAccess {
        offset,
        region,
        count,
        data: &[],
    }
    .to_bytes()
}

fn ended_with_protocol_error(r: &SessionRecord) -> bool {
    r.0.starts_with("protocol error")
}

#[test]
fn truncated_messages_end_the_session_without_a_panic_and_the_next_client_is_served() {
    let f = fixture(3);
    // A header announcing 100 bytes, then 4 bytes of payload and a close.
    let mut msg = encode_request(1, Command::Version, &[0u8; 84]).unwrap();
    assert_eq!(msg.len(), 100);
    msg.truncate(20);
    let mut c = f.raw();
    c.send(&msg);
    c.s.shutdown(Shutdown::Write).unwrap();
    c.assert_closed();
    drop(c);
    // Half a header.
    let mut c = f.raw();
    c.send(&msg[..8]);
    c.s.shutdown(Shutdown::Write).unwrap();
    c.assert_closed();
    drop(c);
    f.assert_full_session();
    let r = f.finish();
    assert!(ended_with_protocol_error(&r[0]), "{:?}", r[0].0);
    assert!(ended_with_protocol_error(&r[1]), "{:?}", r[1].0);
    assert_eq!(r[2].0, "closed");
    assert_eq!(r[0].2.messages, 0);
}

#[test]
fn untrustworthy_headers_get_an_error_reply_then_the_connection_closes() {
    let f = fixture(4);
    let bad_headers = [
        // Larger than MAX_MESSAGE_SIZE.
        Header {
            msg_id: 7,
            command: Command::Version as u16,
            size: MAX_MESSAGE_SIZE + 1,
            flags: 0,
            error: 0,
        },
        // u32::MAX: a server that trusted it would allocate 4 GiB.
        Header {
            msg_id: 8,
            command: Command::RegionWrite as u16,
            size: u32::MAX,
            flags: 0,
            error: 0,
        },
        // Smaller than the header itself.
        Header {
            msg_id: 9,
            command: Command::Version as u16,
            size: 4,
            flags: 0,
            error: 0,
        },
    ];
    for bad in bad_headers {
        let mut c = f.raw();
        c.send(&bad.encode());
        let (h, p) = c.recv().expect("an error reply");
        assert_error(&h);
        assert_eq!((h.msg_id, h.command), (bad.msg_id, bad.command));
        assert!(p.is_empty());
        if bad.size > MAX_MESSAGE_SIZE {
            assert_eq!(h.error, errno::E2BIG);
        }
        c.assert_closed();
    }
    f.assert_full_session();
    let r = f.finish();
    for rec in &r[..3] {
        assert!(ended_with_protocol_error(rec), "{:?}", rec.0);
    }
    assert_eq!(r[3].0, "closed");
}

#[test]
fn region_read_beyond_max_data_xfer_size_is_refused_and_the_session_continues() {
    let f = fixture(2);
    let mut c = f.raw();
    c.version();
    for count in [MAX_DATA_XFER_SIZE + 1, MAX_DATA_XFER_SIZE * 64, u32::MAX] {
        let e = c.call_err(Command::RegionRead, &region_read(CONFIG, 0, count));
        assert_eq!(e, errno::E2BIG, "count {count}");
        c.assert_alive();
    }
    drop(c);
    f.assert_full_session();
    let r = f.finish();
    assert_eq!(r[0].0, "closed");
    assert_eq!(r[0].2.error_replies, 3);
}

#[test]
fn set_irqs_with_huge_count_or_wrong_fd_count_is_refused_and_the_session_continues() {
    let f = fixture(3);
    let mut c = f.raw();
    c.version();
    for count in [u32::MAX, 1 << 20] {
        let set = IrqSet {
            action: IrqAction::Trigger,
            data: IrqSetData::Eventfd,
            index: 2,
            start: 0,
            count,
        };
        let e = c.call_err(Command::DeviceSetIrqs, &set.to_bytes().unwrap());
        assert_eq!(e, errno::E2BIG, "count {count}");
        c.assert_alive();
    }
    // A range beyond the device's MSI-X vectors, and an IRQ index that does not exist.
    for (index, start, count) in [(2, 100, 1), (9, 0, 1)] {
        let set = IrqSet {
            action: IrqAction::Trigger,
            data: IrqSetData::None,
            index,
            start,
            count,
        };
        c.call_err(Command::DeviceSetIrqs, &set.to_bytes().unwrap());
        c.assert_alive();
    }
    drop(c);

    // Fds need SCM_RIGHTS: use the client's raw `call`. Two vectors, one fd.
    let mut client = VfioUserClient::connect(&f.host.socket).unwrap();
    let fd_file = std::fs::File::create(f.dir.path().join("not-an-eventfd")).unwrap();
    let set = IrqSet {
        action: IrqAction::Trigger,
        data: IrqSetData::Eventfd,
        index: 2,
        start: 0,
        count: 2,
    };
    match client.call(
        Command::DeviceSetIrqs,
        &set.to_bytes().unwrap(),
        &[fd_file.as_raw_fd()],
    ) {
        Err(PciError::Refused { errno, .. }) => assert_ne!(errno, 0),
        other => panic!("wrong fd count accepted: {other:?}"),
    }
    // An fd on a command that takes none.
    match client.call(
        Command::RegionRead,
        &region_read(CONFIG, 0, 4),
        &[fd_file.as_raw_fd()],
    ) {
        Err(PciError::Refused { errno, .. }) => assert_ne!(errno, 0),
        other => panic!("fd on REGION_READ accepted: {other:?}"),
    }
    let (p, _) = client
        .call(Command::RegionRead, &region_read(CONFIG, 0, 4), &[])
        .unwrap();
    assert_eq!(
        RegionAccess::parse(&p).unwrap().data,
        &[0xf4, 0x1a, 0x42, 0x10]
    );
    drop(client);

    f.assert_full_session();
    let r = f.finish();
    assert_eq!(r[0].0, "closed");
    assert_eq!(r[0].2.error_replies, 4);
    assert_eq!(r[1].0, "closed");
    assert_eq!(r[1].2.error_replies, 2);
}

#[test]
fn bad_version_gets_an_error_reply_and_ends_the_session() {
    let good_json = Capabilities::local().to_bytes().unwrap();
    let unterminated = &good_json[..good_json.len() - 1];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "major 1",
            Version {
                major: 1,
                minor: 0,
                capabilities: Capabilities::local(),
            }
            .to_bytes()
            .unwrap(),
        ),
        (
            "JSON not NUL-terminated",
            version_payload(0, 0, unterminated),
        ),
        (
            "garbage JSON",
            version_payload(0, 0, b"{\"capabilities\": [}}\0"),
        ),
        ("JSON not an object", version_payload(0, 0, b"42\0")),
        (
            "wrong type for a known key",
            version_payload(0, 0, b"{\"capabilities\":{\"max_msg_fds\":\"many\"}}\0"),
        ),
        ("too short for the version pair", vec![0u8; 3]),
    ];
    let f = fixture(cases.len() as u64 + 1);
    for (what, payload) in &cases {
        let mut c = f.raw();
        let e = c.call_err(Command::Version, payload);
        assert!(
            e == errno::EINVAL || e == errno::ENOTSUP,
            "{what}: errno {e}"
        );
        c.assert_closed();
    }
    f.assert_full_session();
    let r = f.finish();
    for (rec, (what, _)) in r.iter().zip(&cases) {
        assert_eq!(
            rec.0, "protocol error: version negotiation failed",
            "{what}"
        );
    }
    assert_eq!(r[cases.len()].0, "closed");
}

#[test]
fn command_before_version_gets_an_error_reply_and_ends_the_session() {
    let f = fixture(3);
    let mut c = f.raw();
    let e = c.call_err(Command::DeviceGetInfo, &{
        let mut p = 16u32.to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 12]);
        p
    });
    assert_eq!(e, errno::ENOTSUP);
    c.assert_closed();
    // A register write (DRIVER_OK) before VERSION is not applied either.
    let mut c = f.raw();
    let w = RegionAccess::with_data(0x14, 0, &[0x0f]).unwrap();
    c.call_err(Command::RegionWrite, &w.to_bytes());
    c.assert_closed();
    f.assert_full_session();
    let r = f.finish();
    assert!(ended_with_protocol_error(&r[0]), "{:?}", r[0].0);
    assert!(ended_with_protocol_error(&r[1]), "{:?}", r[1].0);
    assert_eq!(r[1].1.status, 0, "status untouched");
    assert_eq!(r[2].0, "closed");
}

#[test]
fn unknown_or_client_illegal_commands_get_enotsup_and_the_session_continues() {
    let f = fixture(2);
    let mut c = f.raw();
    c.version();
    for command in [0u16, 14, 19, 99, u16::MAX] {
        let h = Header {
            msg_id: 500 + command % 100,
            command,
            size: HEADER_SIZE as u32,
            flags: 0,
            error: 0,
        };
        c.send(&h.encode());
        let (r, p) = c.recv().expect("a reply");
        assert_error(&r);
        assert_eq!(r.error, errno::ENOTSUP, "command {command}");
        assert_eq!((r.msg_id, r.command), (h.msg_id, command));
        assert!(p.is_empty());
        c.assert_alive();
    }
    // DMA_READ/DMA_WRITE go server to client only.
    let dma_read = swiotlb_shared::vfio_user::DmaAccess {
        address: 0x1000,
        count: 4,
        data: &[],
    };
    c.call_err(Command::DmaRead, &dma_read.to_bytes());
    c.assert_alive();
    // Payload shorter than its command's fixed part.
    c.call_err(Command::RegionRead, &[0u8; 8]);
    c.assert_alive();
    drop(c);
    f.assert_full_session();
    let r = f.finish();
    assert_eq!(r[0].0, "closed");
    assert_eq!(r[0].2.error_replies, 7);
}

#[test]
fn region_index_out_of_range_or_access_beyond_a_region_is_refused() {
    let f = fixture(2);
    let mut c = f.raw();
    c.version();
    let bad_reads = [
        (8, 0, 4),            // VGA region: size 0
        (9, 0, 4),            // past the last region
        (u32::MAX, 0, 4),     // absurd index
        (CONFIG, 254, 4),     // straddles the end of config space
        (CONFIG, 256, 1),     // just past it
        (0, 0x8000 - 2, 4),   // straddles the end of BAR0
        (0, 0, 16),           // wider than a register
        (2, 16 << 20, 8),     // past the pool BAR
        (0, u64::MAX - 1, 4), // offset + count overflows
    ];
    for (region, offset, count) in bad_reads {
        c.call_err(Command::RegionRead, &region_read(region, offset, count));
        c.assert_alive();
    }
    for (region, offset) in [
        (8u32, 0u64),
        (CONFIG, 255),
        (0, 0x7fff),
        (2, (16 << 20) - 2),
    ] {
        let w = RegionAccess::with_data(offset, region, &[1, 2, 3, 4]).unwrap();
        c.call_err(Command::RegionWrite, &w.to_bytes());
        c.assert_alive();
    }
    // Region info of a region that does not exist.
    let mut info = Vec::new();
    for v in [32u32, 0, 50, 0, 0, 0, 0, 0] {
        info.extend_from_slice(&v.to_le_bytes());
    }
    c.call_err(Command::DeviceGetRegionInfo, &info);
    c.assert_alive();
    drop(c);
    f.assert_full_session();
    let r = f.finish();
    assert_eq!(r[0].0, "closed");
    assert_eq!(r[0].2.error_replies, 14);
    assert_eq!(
        r[0].1.trapped_pool_accesses, 0,
        "no pool access got through"
    );
}

fn maps_mention(name: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .contains(name)
}

#[test]
fn dma_map_with_an_fd_is_acknowledged_and_never_mapped() {
    const CANARY: &str = "guest-ram-canary";
    let f = fixture(2);
    let canary_path = f.dir.path().join(CANARY);
    let canary = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&canary_path)
        .unwrap();
    canary.set_len(1 << 20).unwrap();
    assert!(!maps_mention(CANARY));

    let mut client = VfioUserClient::connect(&f.host.socket).unwrap();
    let map = DmaMap {
        flags: 3,
        offset: 0,
        address: 0x1_0000_0000,
        size: 1 << 20,
    };
    let (p, fds) = client
        .call(Command::DmaMap, &map.to_bytes(), &[canary.as_raw_fd()])
        .unwrap();
    assert!(p.is_empty() && fds.is_empty(), "DMA_MAP acknowledged");
    // Two fds on one DMA_MAP are refused.
    match client.call(
        Command::DmaMap,
        &map.to_bytes(),
        &[canary.as_raw_fd(), canary.as_raw_fd()],
    ) {
        Err(PciError::Refused { errno, .. }) => assert_ne!(errno, 0),
        other => panic!("two fds accepted: {other:?}"),
    }
    // I/O on the same session: the device works from its pool alone.
    let mut dev = BlockDriver::open(client, &Options::default()).unwrap();
    let data: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; data.len()];
    dev.write_at(65536, &data).unwrap();
    dev.read_at(65536, &mut back).unwrap();
    assert!(back == data);
    assert!(
        !maps_mention(CANARY),
        "the server mapped the DMA_MAP fd (/proc/self/maps: the host runs in this process)"
    );
    let unmap = DmaUnmap {
        flags: 0,
        address: map.address,
        size: map.size,
    };
    dev.transport()
        .pci()
        .call(Command::DmaUnmap, &unmap.to_bytes(), &[])
        .unwrap();
    drop(dev);
    f.assert_full_session();
    assert!(!maps_mention(CANARY));

    // Control: a mapping of that file does show in /proc/self/maps.
    {
        use std::os::fd::AsFd;
        let _m = Mapping::shared(canary.as_fd(), 0, 4096).unwrap();
        assert!(
            maps_mention(CANARY),
            "the maps check can see such a mapping"
        );
    }

    let host = f.host;
    let r = host.finish();
    assert_eq!(r[0].0, "closed");
    assert_eq!(r[0].2.dma_maps_ignored, 1, "{:?}", r[0].2);
    assert_eq!(r[0].2.error_replies, 1);
    assert_eq!(r[0].1.findings, 0);
    // The write of this session did reach the image (restore for the final check).
    let img = std::fs::read(&f.disk).unwrap();
    assert!(img[65536..65536 + data.len()] == data[..]);
}
