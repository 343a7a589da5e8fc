//! Multi-queue (VIRTIO_BLK_F_MQ): a device with two request queues, each served by a worker
//! thread of its own, driven by the block driver on both queues at once and by a raw driver
//! that misbehaves on queue 1.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;
use swiotlb_guest::attest::Emulated;
use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::pci::PciError;
use swiotlb_guest::testing::raw_driver::{
    Desc, RawDriver, BLK_T_IN, DEFAULT_FEATURES, STATUS_UNSET,
};
use swiotlb_guest::{BlockDriver, BlockError, Options};
use swiotlb_host::devices::block::MAX_QUEUES;
use swiotlb_shared::features::{bit, VIRTIO_BLK_F_MQ};
use swiotlb_shared::pci::status;
use swiotlb_shared::vfio_user::limits::MAX_IO_FDS_ARGSZ;
use swiotlb_shared::vfio_user::socket::{recv_message, send_message};
use swiotlb_shared::vfio_user::{
    encode_request, ArgszReply, Command, RegionIoFds, Request, HEADER_SIZE, MAX_MESSAGE_SIZE,
};
use swiotlb_tests::raw_session::emulated_ark;
use swiotlb_tests::{disk_image, HostProcess};

const DISK_SIZE: u64 = 4 << 20;
/// Queue size of the raw driver's rings.
const QSIZE: u16 = 64;
/// How long a worker may take to answer a doorbell in these tests.
const ANSWER: Duration = Duration::from_secs(5);

fn open(host: &HostProcess, queues: u16) -> BlockDriver<VfioUserClient> {
    let c = VfioUserClient::connect(&host.socket).unwrap();
    let opts = Options {
        queues,
        timeout: Duration::from_secs(3),
        ..Options::default()
    };
    BlockDriver::open(c, &opts).unwrap()
}

fn summary(s: &Value, key: &str) -> u64 {
    s["summary"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {s}"))
}

/// Writes a pattern of `tag` to `blocks` 4 KiB blocks starting at block `first` through
/// `drv`, reads them back through the same queue and checks them.
fn write_and_check(drv: &mut BlockDriver<VfioUserClient>, tag: u8, first: u64, blocks: u64) {
    for b in first..first + blocks {
        let data = vec![tag ^ (b as u8); 4096];
        drv.write_at(b * 4096, &data).unwrap();
        let mut back = vec![0u8; 4096];
        drv.read_at(b * 4096, &mut back).unwrap();
        assert_eq!(back, data, "queue {} block {b}", drv.queue());
    }
}

#[test]
fn io_on_both_queues_at_once_is_served_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", DISK_SIZE);
    let host = HostProcess::spawn(dir.path(), &disk, &["--queues", "2", "--sessions", "1"]);
    let mut q0 = open(&host, 2);
    let info = q0.info().clone();
    assert_eq!((info.device_queues, info.queues), (2, 2), "{info:?}");
    assert!(info.negotiated.iter().any(|f| f == "BLK_MQ"), "{info:?}");
    let mut q1 = q0.take_queues().pop().expect("the driver of queue 1");
    assert_eq!(q1.queue(), 1);
    // Each queue has its own pool area: the two allocators hand out disjoint slots.
    assert_eq!(q1.info().slots, q0.info().slots);
    let t = std::thread::spawn(move || {
        write_and_check(&mut q1, 0x11, 0, 64);
        q1
    });
    write_and_check(&mut q0, 0x22, 64, 64);
    let mut q1 = t.join().unwrap();
    // Each queue reads what the other wrote: one disk behind both.
    let mut back = vec![0u8; 4096];
    q0.read_at(5 * 4096, &mut back).unwrap();
    assert_eq!(back, vec![0x11 ^ 5; 4096]);
    q1.read_at(70 * 4096, &mut back).unwrap();
    assert_eq!(back, vec![0x22 ^ 70; 4096]);
    drop((q0, q1));
    let s = host.session(1);
    // 64 writes and 64 reads per queue, and the two cross reads; no finding.
    assert_eq!(summary(&s, "chains"), 4 * 64 + 2, "{s}");
    assert_eq!(summary(&s, "findings"), 0, "{s}");
    assert!(summary(&s, "interrupts") > 0, "{s}");
}

#[test]
fn a_reset_while_both_queues_are_busy_stops_both_and_the_next_session_serves() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", DISK_SIZE);
    let mut host = HostProcess::spawn(dir.path(), &disk, &["--queues", "2", "--sessions", "2"]);
    let mut q0 = open(&host, 2);
    let mut q1 = q0.take_queues().pop().unwrap();
    // Queue 1 reads until the device stops answering it.
    let busy = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut done = 0u64;
        let end = loop {
            match q1.read_scattered(&[(0, 32 * 1024), (1 << 20, 32 * 1024)], &mut buf) {
                Ok(()) => done += 1,
                Err(e) => break e,
            }
            if done > 1_000_000 {
                panic!("queue 1 was never stopped");
            }
        };
        (done, end)
    });
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..20 {
        q0.read_at(0, &mut buf).unwrap();
    }
    // Reset from queue 0's side while queue 1 is in the middle of its reads.
    q0.transport().reset().unwrap();
    let (done, end) = busy.join().unwrap();
    assert!(done > 0, "queue 1 was busy before the reset");
    assert!(
        matches!(
            end,
            BlockError::DeviceReset { .. } | BlockError::Timeout(_) | BlockError::Ring(_)
        ),
        "queue 1 ended with {end:?}"
    );
    assert!(host.is_alive());
    drop(q0);
    let first = host.session(1);
    assert_eq!(summary(&first, "findings"), 0, "{first}");
    // A new session on the same process serves both queues again.
    let mut q0 = open(&host, 2);
    let mut q1 = q0.take_queues().pop().unwrap();
    write_and_check(&mut q0, 0x33, 0, 4);
    write_and_check(&mut q1, 0x44, 4, 4);
    drop((q0, q1));
    assert_eq!(summary(&host.session(2), "findings"), 0);
    assert!(host.wait().success());
}

/// A raw driver that accepted MQ with both queues' rings set up (queue 1's current).
fn raw_with_two_queues(host: &HostProcess) -> RawDriver {
    let mut d =
        RawDriver::connect_with(&host.socket, DEFAULT_FEATURES | bit(VIRTIO_BLK_F_MQ)).unwrap();
    assert_ne!(d.features() & bit(VIRTIO_BLK_F_MQ), 0, "MQ negotiated");
    assert!(d.setup_queue_of(2, 0, QSIZE).unwrap().1, "queue 0 enabled");
    assert!(d.setup_queue_of(2, 1, QSIZE).unwrap().1, "queue 1 enabled");
    d.driver_ok().unwrap();
    d
}

/// Posts a one-sector read on the current rings at `head` and rings queue `q`.
fn post_read(
    d: &mut RawDriver,
    q: u16,
    head: u16,
) -> swiotlb_guest::testing::raw_driver::BlkRequest {
    let req = d.prepare_blk(BLK_T_IN, 0, 512, None).unwrap();
    d.write_chain(head, &req.descs).unwrap();
    d.publish(head).unwrap();
    d.kick(q).unwrap();
    req
}

#[test]
fn a_bad_descriptor_on_queue_1_is_a_finding_and_the_session_rules_hold() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", DISK_SIZE);
    let host = HostProcess::spawn(dir.path(), &disk, &["--queues", "2", "--sessions", "1"]);
    let mut d = raw_with_two_queues(&host);
    let r0 = d.rings_of(2, 0, QSIZE).unwrap();
    let r1 = d.rings_of(2, 1, QSIZE).unwrap();
    // Queue 0 serves a good read.
    d.use_rings(r0);
    let good = post_read(&mut d, 0, 0);
    assert!(d.wait_used(1, ANSWER).unwrap(), "queue 0 answered");
    assert_ne!(d.blk_status(&good).unwrap(), STATUS_UNSET);
    // Queue 1 names memory past the pool's end.
    d.use_rings(r1);
    let outside = d.pool_base() + d.pool_size();
    d.write_chain(
        0,
        &[Desc {
            addr: outside,
            len: 512,
            flags: 0,
            next: 0,
        }],
    )
    .unwrap();
    d.publish(0).unwrap();
    d.kick(1).unwrap();
    // The chain comes back with nothing written, and by then the device needs a reset.
    assert!(
        d.wait_used(1, ANSWER).unwrap(),
        "queue 1 returned the chain"
    );
    assert_eq!(d.used_elem(0).unwrap(), (0, 0));
    assert!(
        d.needs_reset().unwrap(),
        "DEVICE_NEEDS_RESET after the finding"
    );
    // As on queue 0 alone: a device that needs a reset serves nothing more.
    d.use_rings(r0);
    post_read(&mut d, 0, 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        d.used_idx().unwrap(),
        1,
        "queue 0 is not served after the finding"
    );
    // A reset clears it; set up again, queue 0 serves.
    d.transport().reset().unwrap();
    let (_, accepted, ok) = d
        .transport()
        .negotiate(DEFAULT_FEATURES | bit(VIRTIO_BLK_F_MQ))
        .unwrap();
    assert!(ok, "{accepted:#x}");
    assert!(d.setup_queue_of(2, 1, QSIZE).unwrap().1);
    assert!(d.setup_queue_of(2, 0, QSIZE).unwrap().1);
    d.driver_ok().unwrap();
    assert_eq!(d.status().unwrap() & status::DEVICE_NEEDS_RESET, 0);
    let again = post_read(&mut d, 0, 0);
    assert!(
        d.wait_used(1, ANSWER).unwrap(),
        "queue 0 served after the reset"
    );
    assert_ne!(d.blk_status(&again).unwrap(), STATUS_UNSET);
    drop(d);
    let s = host.session(1);
    assert_eq!(summary(&s, "dma_violations"), 1, "{s}");
    assert_eq!(summary(&s, "chains_rejected"), 1, "{s}");
}

#[test]
fn the_attestation_gate_holds_every_queue_until_the_evidence_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", DISK_SIZE);
    let (signer, _, ark) = emulated_ark(dir.path());
    let host = HostProcess::spawn(
        dir.path(),
        &disk,
        &[
            "--queues",
            "2",
            "--sessions",
            "2",
            "--attestation",
            "required",
            "--allow-emulated",
            "--emulated-ark",
            ark.to_str().unwrap(),
        ],
    );
    // Without evidence neither queue is served.
    let mut d = raw_with_two_queues(&host);
    for (q, r) in [
        (1, d.rings_of(2, 1, QSIZE).unwrap()),
        (0, d.rings_of(2, 0, QSIZE).unwrap()),
    ] {
        d.use_rings(r);
        post_read(&mut d, q, 0);
    }
    std::thread::sleep(Duration::from_millis(300));
    for q in [0, 1] {
        d.use_rings(d.rings_of(2, q, QSIZE).unwrap());
        assert_eq!(d.used_idx().unwrap(), 0, "queue {q} held by the gate");
    }
    drop(d);
    let held = host.session(1);
    assert_eq!(summary(&held, "chains"), 0, "{held}");
    assert_eq!(held["summary"]["attestation_state"], "awaiting", "{held}");
    // With evidence over both queues' rings, both are served.
    let emu = Emulated::with_signer(signer);
    let c = VfioUserClient::connect(&host.socket).unwrap();
    let opts = Options {
        queues: 2,
        ..Options::default()
    };
    let mut q0 = BlockDriver::open_attested(c, &opts, Some(&emu)).unwrap();
    assert!(
        q0.info().attestation.starts_with("accepted"),
        "{:?}",
        q0.info()
    );
    let mut q1 = q0.take_queues().pop().unwrap();
    write_and_check(&mut q0, 0x55, 0, 2);
    write_and_check(&mut q1, 0x66, 2, 2);
    drop((q0, q1));
    let served = host.session(2);
    assert_eq!(
        served["summary"]["attestation_state"], "accepted",
        "{served}"
    );
    assert_eq!(summary(&served, "chains"), 8, "{served}");
}

/// `VmPeak` of process `pid`, in bytes.
fn vm_peak(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmPeak in {status}"));
    kib << 10
}

#[test]
fn the_most_queues_are_served_within_the_memory_bound_and_survive_the_largest_message() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 32 << 20);
    let log = dir.path().join("audit.jsonl");
    let queues = MAX_QUEUES.to_string();
    let host = HostProcess::spawn(
        dir.path(),
        &disk,
        &[
            "--queues",
            &queues,
            "--sessions",
            "2",
            "--audit-mode",
            "full",
            "--audit-log",
            log.to_str().unwrap(),
        ],
    );
    let limit = host.event("sandbox", 1)["address_space_limit"]
        .as_u64()
        .unwrap();
    // Every queue busy at once, each worker with its own malloc arena, io_uring and stack.
    // The client takes MAX_MSG_FDS doorbell eventfds in one message, so the host offers
    // only that many: the later queues' doorbells come as messages, and are served alike.
    let mut q0 = open(&host, MAX_QUEUES);
    assert_eq!(q0.info().queues, MAX_QUEUES);
    let blocks = 48;
    let workers: Vec<_> = q0
        .take_queues()
        .into_iter()
        .map(|mut q| {
            std::thread::spawn(move || {
                let i = q.queue();
                write_and_check(&mut q, i as u8, u64::from(i) * blocks, blocks);
                q
            })
        })
        .collect();
    write_and_check(&mut q0, 0xee, 0, blocks);
    let rest: Vec<_> = workers.into_iter().map(|t| t.join().unwrap()).collect();
    drop((q0, rest));
    let s = host.session(1);
    assert_eq!(
        summary(&s, "chains"),
        2 * blocks * u64::from(MAX_QUEUES),
        "{s}"
    );
    assert_eq!(summary(&s, "findings"), 0, "{s}");
    let peak = vm_peak(host.pid());
    assert!(
        peak <= limit,
        "VmPeak {peak} above the address-space limit {limit}"
    );

    // The largest message a peer may send is refused with an error reply, not with the
    // process: its buffer still fits under the limit.
    let mut c = VfioUserClient::connect(&host.socket).unwrap();
    let big = vec![0u8; MAX_MESSAGE_SIZE as usize - HEADER_SIZE];
    match c.call(Command::DeviceGetRegionInfo, &big, &[]) {
        Err(PciError::Refused { errno, .. }) => assert_eq!(errno, libc::EINVAL as u32),
        other => panic!("the largest message: {other:?}"),
    }
    // The same session goes on.
    let (p, _) = c
        .call(
            Command::DeviceGetInfo,
            &Request::DeviceGetInfo { argsz: 16 }.to_bytes().unwrap(),
            &[],
        )
        .unwrap();
    assert_eq!(p.len(), 16);
}

/// Connects raw, proposes VERSION 0.0 with the capabilities `json` (NUL-terminated), and
/// asks for BAR 0's IO-FD sub-regions: how many the host offers, and the fds that came.
fn doorbells_offered(host: &HostProcess, json: &[u8]) -> (usize, usize) {
    let s = UnixStream::connect(&host.socket).unwrap();
    s.set_read_timeout(Some(ANSWER)).unwrap();
    let mut version = vec![0, 0, 0, 0];
    version.extend_from_slice(json);
    let bytes = encode_request(1, Command::Version, &version).unwrap();
    send_message(&s, &bytes, &[]).unwrap();
    let reply = recv_message(&s).unwrap();
    assert!(!reply.header.is_error(), "{:?}", reply.header);
    let ask = Request::DeviceGetRegionIoFds {
        argsz: MAX_IO_FDS_ARGSZ,
        index: 0,
    };
    send_message(&s, &ask.encode(2).unwrap(), &[]).unwrap();
    let reply = recv_message(&s).unwrap();
    assert!(!reply.header.is_error(), "{:?}", reply.header);
    match RegionIoFds::parse(&reply.payload).unwrap() {
        ArgszReply::Complete(r) => (r.sub_regions.len(), reply.fds.len()),
        ArgszReply::Retry { argsz } => panic!("asked again for {argsz}"),
    }
}

#[test]
fn the_host_offers_no_more_doorbell_fds_than_the_client_takes_in_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", DISK_SIZE);
    let host = HostProcess::spawn(dir.path(), &disk, &["--queues", "4", "--sessions", "3"]);
    // Room for every queue's doorbell: one each.
    let many = br#"{"capabilities":{"max_msg_fds":8}}"#;
    assert_eq!(
        doorbells_offered(&host, &[&many[..], b"\0"].concat()),
        (4, 4)
    );
    // Room for two: the first two queues; the others ring by message.
    let two = br#"{"capabilities":{"max_msg_fds":2}}"#;
    assert_eq!(
        doorbells_offered(&host, &[&two[..], b"\0"].concat()),
        (2, 2)
    );
    // Not said: the spec's default, one.
    let unsaid = br#"{"capabilities":{"max_data_xfer_size":1048576}}"#;
    assert_eq!(
        doorbells_offered(&host, &[&unsaid[..], b"\0"].concat()),
        (1, 1)
    );
}
