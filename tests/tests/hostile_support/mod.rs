//! Shared by the hostile-driver tests (`hostile_driver.rs`, `hostile_driver_more.rs`,
//! `notification.rs`): a
//! real `swiotlb-host` serving a disk image filled with a known pattern, a raw driver
//! connected to it, and the checks every case makes (rejected on the wire, counted in the
//! session summary, image untouched, host still serving).
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::ErrorKind;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use swiotlb_guest::pci::PciError;
use swiotlb_guest::testing::raw_driver::{
    BlkRequest, Desc, RawDriver, RawError, BLK_T_OUT, DEFAULT_FEATURES, STATUS_UNSET,
};
use swiotlb_guest::virtio_pci::TransportError;
use swiotlb_tests::HostProcess;
use tempfile::TempDir;

pub const DISK_SIZE: usize = 1 << 20;
pub const QSIZE: u16 = 64;
pub const DATA_LEN: u32 = 4096;
pub const DEVICE_NEEDS_RESET: u8 = 0x40;

pub fn pattern() -> Vec<u8> {
    (0..DISK_SIZE).map(|i| (i * 7 + 3) as u8).collect()
}

pub struct Fixture {
    _dir: TempDir,
    pub disk: PathBuf,
    pub host: HostProcess,
}

pub fn fixture() -> Fixture {
    fixture_with(&[])
}

/// As [`fixture`], the host started with `extra` arguments too.
pub fn fixture_with(extra: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, pattern()).unwrap();
    let args: Vec<&str> = ["--log", "warn"].iter().chain(extra).copied().collect();
    let host = HostProcess::spawn(dir.path(), &disk, &args);
    Fixture {
        _dir: dir,
        disk,
        host,
    }
}

impl Fixture {
    /// Connects, retrying while the connection is refused: `HostProcess::spawn` returns once
    /// the socket file exists, which is a moment before the host listens on it. A refused
    /// connection is no session, so the session numbering is unaffected.
    pub fn connect(&self) -> RawDriver {
        self.connect_with(DEFAULT_FEATURES)
    }

    /// As [`Fixture::connect`], negotiating `features`.
    pub fn connect_with(&self, features: u64) -> RawDriver {
        let start = Instant::now();
        loop {
            match RawDriver::connect_with(&self.host.socket, features) {
                Err(RawError::Transport(TransportError::Pci(PciError::Io(e))))
                    if e.kind() == ErrorKind::ConnectionRefused
                        && start.elapsed() < Duration::from_secs(10) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                r => return r.unwrap(),
            }
        }
    }

    /// The `summary` object of session `n`.
    pub fn summary(&self, n: usize) -> Value {
        self.host.session(n)["summary"].clone()
    }

    pub fn assert_image_untouched(&self) {
        let now = std::fs::read(&self.disk).unwrap();
        assert!(now == pattern(), "disk image was modified");
    }

    /// The image is the pattern except `[at, at + len)`, which holds `byte`.
    pub fn assert_image_written(&self, at: usize, len: usize, byte: u8) {
        let mut want = pattern();
        want[at..at + len].fill(byte);
        let now = std::fs::read(&self.disk).unwrap();
        assert!(
            now == want,
            "image is not the pattern with {len} bytes of {byte:#x} at {at}"
        );
    }

    /// Puts the pattern back (after a test wrote the image on purpose).
    pub fn restore_image(&self) {
        std::fs::write(&self.disk, pattern()).unwrap();
    }

    /// The host process is alive and a new client's well-formed read of sector 0 succeeds
    /// and returns the pattern; that session (number `n`) has no findings.
    pub fn assert_still_serves(&mut self, n: usize) {
        assert!(self.host.is_alive(), "host process died");
        let mut d = self.connect();
        let (status, data) = d.read_sectors(0, DATA_LEN).unwrap();
        assert_eq!(status, 0, "read status");
        assert!(data == pattern()[..DATA_LEN as usize], "read data");
        drop(d);
        let s = self.summary(n);
        assert_eq!(s["findings"], 0, "{s}");
        assert_eq!(s["chains"], 1, "{s}");
        assert!(self.host.is_alive(), "host process died");
    }
}

/// Standard queue of `size`, enabled, and DRIVER_OK.
pub fn ready(d: &mut RawDriver, size: u16) {
    let (_, ok) = d.setup_standard_queue(size).unwrap();
    assert!(ok, "queue 0 enabled");
    d.driver_ok().unwrap();
}

/// Standard queue, DRIVER_OK, and an OUT request to sector 0 with 0xA5 data (not on a ring).
pub fn arm(d: &mut RawDriver) -> BlkRequest {
    ready(d, QSIZE);
    let payload = vec![0xa5u8; DATA_LEN as usize];
    d.prepare_blk(BLK_T_OUT, 0, DATA_LEN, Some(&payload))
        .unwrap()
}

pub fn findings_by_kind(s: &Value) -> Vec<(String, u64)> {
    s["findings_by_kind"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_u64().unwrap()))
        .collect()
}

/// `findings_by_kind` as it should read: `(kind, count)` in the host's counter order.
pub fn kinds(expected: &[(&str, u64)]) -> Vec<(String, u64)> {
    expected.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

/// After the kick: the chain came back used with length 0, the status byte was never
/// written, and the device needs a reset. Then the client leaves.
pub fn assert_rejected_on_the_wire(d: &mut RawDriver, req: &BlkRequest) {
    assert_eq!(d.used_idx().unwrap(), 1, "rejected chain returned used");
    assert_eq!(d.used_elem(0).unwrap(), (0, 0), "used (head 0, len 0)");
    assert_eq!(d.blk_status(req).unwrap(), STATUS_UNSET, "status untouched");
    assert!(d.needs_reset().unwrap(), "DEVICE_NEEDS_RESET");
}

/// The session summary shows one checked chain, rejected, with exactly `kind` once, counted
/// as a DMA violation or not.
pub fn assert_counted(s: &Value, kind: &str, dma: bool) {
    assert_eq!(findings_by_kind(s), vec![(kind.to_string(), 1)], "{s}");
    assert_eq!(s["dma_violations"], u64::from(dma), "{s}");
    assert_eq!(s["chains"], 1, "{s}");
    assert_eq!(s["chains_rejected"], 1, "{s}");
    assert_eq!(s["dma_descriptors"], 0, "nothing reached the device: {s}");
    assert_ne!(
        s["status"].as_u64().unwrap() & u64::from(DEVICE_NEEDS_RESET),
        0,
        "{s}"
    );
}

/// Arms a request, lets `corrupt` write the descriptors of head 0, submits, and checks the
/// whole story: rejected, counted, image untouched, host serving.
pub fn rejected_chain(kind: &str, dma: bool, corrupt: impl FnOnce(&mut RawDriver, &BlkRequest)) {
    rejected_chain_with(DEFAULT_FEATURES, kind, dma, corrupt);
}

/// [`rejected_chain`] with the driver negotiating `features`.
pub fn rejected_chain_with(
    features: u64,
    kind: &str,
    dma: bool,
    corrupt: impl FnOnce(&mut RawDriver, &BlkRequest),
) {
    let mut f = fixture();
    let mut d = f.connect_with(features);
    let req = arm(&mut d);
    corrupt(&mut d, &req);
    d.submit(0).unwrap();
    assert_rejected_on_the_wire(&mut d, &req);
    drop(d);
    assert_counted(&f.summary(1), kind, dma);
    f.assert_image_untouched();
    f.assert_still_serves(2);
}

pub fn with_data(req: &BlkRequest, data: Desc) -> [Desc; 3] {
    [req.descs[0], data, req.descs[2]]
}
