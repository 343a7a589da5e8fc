//! Doorbells and interrupts over the real pair (the `swiotlb-host` binary, the real driver):
//!
//! - the host hands out one ioeventfd per queue (DEVICE_GET_REGION_IO_FDS) and the driver
//!   rings it, so a request costs no socket message;
//! - with `--poll-us` on the host and `Options::poll` on the driver, EVENT_IDX suppression
//!   leaves most requests with neither a doorbell nor an interrupt;
//! - a client hammering its doorbell eventfd before the device is ready changes nothing.
//!
//! Every run checks the data against the image file.

mod hostile_support;

use std::path::Path;
use std::time::{Duration, Instant};

use hostile_support::{arm, assert_rejected_on_the_wire, findings_by_kind, fixture_with, kinds};
use serde_json::Value;
use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::pci::PciAccess;
use swiotlb_guest::testing::raw_driver::{Desc, RawDriver};
use swiotlb_guest::{BlockDriver, Options};
use swiotlb_shared::pci::device_layout as dl;
use swiotlb_tests::{disk_image, HostProcess};

const DISK: u64 = 8 << 20;
const IO: usize = 4096;

/// Fills the image with a pattern and returns it.
fn patterned(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let p = disk_image(dir, "disk.img", DISK);
    let content: Vec<u8> = (0..DISK as usize)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    std::fs::write(&p, &content).unwrap();
    (p, content)
}

/// `n` queue-depth-1 reads of 4 KiB at scattered offsets, each checked against `content`.
fn reads(drv: &mut BlockDriver<VfioUserClient>, content: &[u8], n: u64) {
    let mut buf = vec![0u8; IO];
    for i in 0..n {
        let off = (i * 7919 % (DISK / IO as u64)) * IO as u64;
        drv.read_at(off, &mut buf).unwrap();
        assert!(
            buf[..] == content[off as usize..off as usize + IO],
            "read {i} at {off:#x} returned other bytes than the image holds"
        );
    }
}

fn protocol(s: &Value, key: &str) -> u64 {
    s["protocol"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no protocol.{key} in {s}"))
}

fn summary(s: &Value, key: &str) -> u64 {
    s["summary"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no summary.{key} in {s}"))
}

#[test]
fn doorbells_are_eventfds_not_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, content) = patterned(dir.path());
    // One queue: the device thread itself waits on the doorbell and counts it.
    let host = HostProcess::spawn(dir.path(), &disk, &["--queues", "1"]);
    let client = VfioUserClient::connect(&host.socket).unwrap();
    assert_eq!(
        client.eventfd_doorbells(),
        1,
        "one doorbell eventfd per queue"
    );
    let mut drv = BlockDriver::open(client, &Options::default()).unwrap();
    const N: u64 = 400;
    reads(&mut drv, &content, N);
    drop(drv);
    let s = host.session(1);
    assert_eq!(summary(&s, "findings"), 0, "{s}");
    assert_eq!(summary(&s, "chains"), N, "{s}");
    // The host asks for a doorbell after every request (it does not poll), so each of the N
    // requests rang the eventfd once...
    let rung = protocol(&s, "doorbell_events");
    assert!(
        (N..=N + 2).contains(&rung),
        "{rung} eventfd doorbells for {N} requests: {s}"
    );
    // ...and none was a message: the session's messages are the set-up ones.
    let messages = protocol(&s, "messages");
    assert!(
        messages < 150,
        "{messages} messages for {N} requests: doorbells went over the socket: {s}"
    );
}

#[test]
fn polling_suppresses_most_doorbells_and_interrupts() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, content) = patterned(dir.path());
    // A generous budget on both sides, so a busy machine descheduling one side for a
    // moment does not turn this into a test of the scheduler.
    let host = HostProcess::spawn(dir.path(), &disk, &["--poll-us", "5000"]);
    let client = VfioUserClient::connect(&host.socket).unwrap();
    let opts = Options {
        poll: Duration::from_millis(5),
        ..Options::default()
    };
    let mut drv = BlockDriver::open(client, &opts).unwrap();
    const N: u64 = 2000;
    reads(&mut drv, &content, N);
    // Writes too, checked in the file after the session.
    let data = vec![0x5au8; IO];
    for i in 0..200u64 {
        drv.write_at(i * IO as u64, &data).unwrap();
    }
    drop(drv);
    let s = host.session(1);
    assert_eq!(summary(&s, "findings"), 0, "{s}");
    assert_eq!(summary(&s, "chains"), N + 200, "{s}");
    let rung = protocol(&s, "doorbell_events");
    let interrupts = summary(&s, "interrupts");
    eprintln!(
        "polling: {rung} doorbells and {interrupts} interrupts for {} requests",
        N + 200
    );
    // Without suppression every request would ring and interrupt once.
    assert!(
        rung < N / 2,
        "{rung} doorbells for {} requests: the polling host did not suppress them: {s}",
        N + 200
    );
    assert!(
        interrupts < N / 2,
        "{interrupts} interrupts for {} requests: the polling driver did not suppress them: {s}",
        N + 200
    );
    let now = std::fs::read(&disk).unwrap();
    assert!(now[..200 * IO].iter().all(|b| *b == 0x5a), "writes landed");
    assert!(
        now[200 * IO..] == content[200 * IO..],
        "nothing else changed"
    );
}

#[test]
fn doorbell_eventfd_storm_before_driver_ok_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, content) = patterned(dir.path());
    let mut host = HostProcess::spawn(dir.path(), &disk, &["--queues", "1"]);
    let mut client = VfioUserClient::connect(&host.socket).unwrap();
    assert_eq!(client.eventfd_doorbells(), 1);
    let bell = u64::from(dl::NOTIFY_OFFSET);
    for _ in 0..20_000 {
        client
            .bar_write(dl::REGS_BAR, bell, &0u16.to_le_bytes())
            .unwrap();
    }
    // The same client then drives the device properly.
    let mut drv = BlockDriver::open(client, &Options::default()).unwrap();
    reads(&mut drv, &content, 50);
    drop(drv);
    let s = host.session(1);
    assert_eq!(summary(&s, "findings"), 0, "{s}");
    assert_eq!(summary(&s, "chains"), 50, "{s}");
    assert!(
        protocol(&s, "doorbell_events") >= 50,
        "the storm and the requests came through the eventfd: {s}"
    );
    assert!(host.is_alive());
    assert!(std::fs::read(&disk).unwrap() == content, "image untouched");
}

#[test]
fn the_command_line_driver_takes_a_polling_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, content) = patterned(dir.path());
    let host = HostProcess::spawn(dir.path(), &disk, &["--poll-us", "5000", "--sessions", "2"]);
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let input = dir.path().join("in.bin");
    std::fs::write(&input, &data).unwrap();
    let run = |args: &[&str]| {
        let o = std::process::Command::new(swiotlb_tests::bin("swiotlb-guest"))
            .arg("--socket")
            .arg(&host.socket)
            .args(["--attester", "none", "--poll-us", "5000"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "swiotlb-guest {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "write",
        "--offset",
        "4096",
        "--input",
        input.to_str().unwrap(),
    ]);
    let output = dir.path().join("out.bin");
    let out = output.to_str().unwrap();
    run(&[
        "read", "--offset", "4096", "--length", "1048576", "--output", out,
    ]);
    assert!(
        std::fs::read(&output).unwrap() == data,
        "read back what was written"
    );
    let now = std::fs::read(&disk).unwrap();
    assert!(now[4096..4096 + data.len()] == data[..]);
    assert!(
        now[..4096] == content[..4096] && now[4096 + data.len()..] == content[4096 + data.len()..]
    );
    for n in [1, 2] {
        let s = host.session(n);
        assert_eq!(summary(&s, "findings"), 0, "{s}");
    }
}

/// Waits up to 5 s for the used index to reach `n`, with no doorbell rung.
fn used_without_doorbell(d: &RawDriver, n: u16) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if d.used_idx().unwrap() == n {
            return true;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    false
}

#[test]
fn a_polling_host_takes_and_checks_chains_without_a_doorbell() {
    // A budget far longer than the test: the host is still polling when the chains appear.
    let mut f = fixture_with(&["--poll-us", "1000000"]);
    {
        let mut d = f.connect();
        let req = arm(&mut d);
        // Nudge the host into polling with one doorbell for an empty ring...
        d.kick(0).unwrap();
        // ...then a well-formed request is taken with no doorbell at all.
        d.write_chain(0, &req.descs).unwrap();
        d.publish(0).unwrap();
        assert!(
            used_without_doorbell(&d, 1),
            "the polling host took the chain"
        );
        assert_eq!(d.blk_status(&req).unwrap(), 0, "VIRTIO_BLK_S_OK");
    }
    f.assert_image_written(0, 4096, 0xa5);
    f.restore_image();
    {
        // A descriptor outside the pool, likewise unannounced: refused, counted, and the
        // device needs a reset.
        let mut d = f.connect();
        let req = arm(&mut d);
        d.kick(0).unwrap();
        let mut descs = req.descs;
        descs[1] = Desc {
            addr: 0x1000,
            ..descs[1]
        };
        d.write_chain(0, &descs).unwrap();
        d.publish(0).unwrap();
        assert!(
            used_without_doorbell(&d, 1),
            "the polling host returned the chain"
        );
        assert_rejected_on_the_wire(&mut d, &req);
    }
    let s = f.summary(2);
    assert_eq!(
        findings_by_kind(&s),
        kinds(&[("descriptor_outside_pool", 1)]),
        "{s}"
    );
    f.assert_image_untouched();
    f.assert_still_serves(3);
}
