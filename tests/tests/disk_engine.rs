//! The host's disk engines and cache modes on the real pair (the `swiotlb-host` binary,
//! sandboxed, and the real driver):
//!
//! - `--io-engine uring` serves reads and writes through the restricted ring, batching the
//!   requests of one pass (the session's metrics say how many went in how many batches);
//! - `--cache none` opens the image `O_DIRECT` and still returns the right bytes for
//!   requests its alignment does not allow (512-byte sectors at odd offsets, odd lengths);
//! - `--io-engine sync` is the plain path.
//!
//! Every run checks the data against the image file.

use std::path::Path;

use serde_json::Value;
use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::{BlockDriver, Options};
use swiotlb_tests::{disk_image, HostProcess};

const DISK: u64 = 4 << 20;

fn patterned(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let p = disk_image(dir, "disk.img", DISK);
    let content: Vec<u8> = (0..DISK as usize)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    std::fs::write(&p, &content).unwrap();
    (p, content)
}

fn device(s: &Value) -> &Value {
    &s["summary"]["device"]
}

/// Reads at depth 32 and at depth 1, writes of odd sizes at odd sectors, a flush, and the
/// same bytes read back; then the image file is compared with what the driver wrote.
fn exercise(drv: &mut BlockDriver<VfioUserClient>, content: &mut [u8]) {
    // Depth 32: 4 KiB reads at scattered offsets, in calls of 256.
    drv.set_max_in_flight(32);
    let ranges: Vec<(u64, usize)> = (0..256u64)
        .map(|i| ((i * 7919 % (DISK / 4096)) * 4096, 4096))
        .collect();
    let mut buf = vec![0u8; 256 * 4096];
    drv.read_scattered(&ranges, &mut buf).unwrap();
    for (i, (off, len)) in ranges.iter().enumerate() {
        assert!(
            buf[i * 4096..][..*len] == content[*off as usize..][..*len],
            "depth-32 read {i} at {off:#x} returned other bytes than the image holds"
        );
    }
    // Sector-granular requests that no 4 KiB alignment allows.
    drv.set_max_in_flight(0);
    for (k, (sector, sectors)) in [(1u64, 1usize), (7, 3), (4095, 2), (9, 17), (8, 8)]
        .into_iter()
        .enumerate()
    {
        let off = sector * 512;
        let len = sectors * 512;
        let data: Vec<u8> = (0..len).map(|i| (i * 13 + k * 101 + 1) as u8).collect();
        drv.write_at(off, &data).unwrap();
        content[off as usize..][..len].copy_from_slice(&data);
        let mut back = vec![0u8; len];
        drv.read_at(off, &mut back).unwrap();
        assert_eq!(back, data, "write {k} at sector {sector} read back");
        // The sectors around it are what they were.
        let around = off.saturating_sub(1024);
        let mut wide = vec![0u8; len + 2048];
        drv.read_at(around, &mut wide).unwrap();
        assert!(
            wide[..] == content[around as usize..][..len + 2048],
            "bytes around write {k} changed"
        );
    }
    drv.flush().unwrap();
}

fn run(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (disk, mut content) = patterned(dir.path());
    let host = HostProcess::spawn(dir.path(), &disk, args);
    let client = VfioUserClient::connect(&host.socket).unwrap();
    let mut drv = BlockDriver::open(client, &Options::default()).unwrap();
    exercise(&mut drv, &mut content);
    drop(drv);
    let s = host.session(1);
    assert_eq!(s["summary"]["findings"], 0, "{s}");
    assert_eq!(device(&s)["io_errors"], 0, "{s}");
    let now = std::fs::read(&disk).unwrap();
    assert!(now == content, "the image holds what the driver wrote");
    s
}

#[test]
fn the_ring_batches_a_pass_and_returns_the_right_bytes() {
    let s = run(&["--io-engine", "uring"]);
    let d = device(&s);
    assert_eq!(d["io_engine"], "uring", "{s}");
    let requests = d["ring_requests"].as_u64().unwrap();
    let batches = d["ring_batches"].as_u64().unwrap();
    let single = d["single_calls"].as_u64().unwrap();
    // Every read and write went one way or the other; the depth-1 ones (the sector-sized
    // writes and reads) alone in their pass, with a plain call.
    assert!(requests + single >= 256 + 15, "{s}");
    assert!(single >= 15, "{s}");
    // 256 reads at depth 32: passes take several at once.
    assert!(
        requests > batches,
        "{requests} ring requests in {batches} batches: nothing was batched: {s}"
    );
}

#[test]
fn cache_none_serves_unaligned_requests_with_the_right_bytes() {
    for engine in ["uring", "sync"] {
        let s = run(&["--cache", "none", "--io-engine", engine]);
        assert_eq!(device(&s)["io_engine"], engine, "{s}");
    }
}

#[test]
fn the_sync_engine_takes_no_ring() {
    let s = run(&["--io-engine", "sync"]);
    let d = device(&s);
    assert_eq!(d["io_engine"], "sync", "{s}");
    assert_eq!(d["ring_requests"], 0, "{s}");
}
