//! Data integrity over the real pair: the real `swiotlb-host` device (in process, or the
//! binary) and the real guest driver over vfio-user. Every write is read back through the
//! driver AND checked in the image file itself, with nothing outside the written range
//! changed. Offsets come from a seeded generator, so every run is the same.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::pci::PciAccess;
use swiotlb_guest::pool::PoolMemory;
use swiotlb_guest::virtio_pci::VirtioPci;
use swiotlb_guest::{BlockDriver, BlockError, Options};
use swiotlb_host::virtio::Policy;
use swiotlb_tests::{bin, disk_image, HostProcess, InProcessHost, POOL_SIZE};

/// Disk size for most tests.
const DISK: u64 = 32 << 20;
/// DRIVER_OK status bit.
const DRIVER_OK: u64 = 4;

/// A seeded xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A sector-aligned offset where `len` bytes fit in `disk`.
    fn offset(&mut self, len: u64, disk: u64) -> u64 {
        let sectors = (disk - len) / 512 + 1;
        self.next() % sectors * 512
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut v = vec![0u8; len];
    for c in v.chunks_mut(8) {
        let b = r.next().to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    v
}

/// A disk image of `size` bytes holding `pattern(size, seed)`.
fn patterned_image(dir: &Path, size: u64, seed: u64) -> (PathBuf, Vec<u8>) {
    let p = disk_image(dir, "disk.img", size);
    let content = pattern(size as usize, seed);
    std::fs::write(&p, &content).expect("fill disk image");
    (p, content)
}

fn open(socket: &Path) -> BlockDriver<VfioUserClient> {
    let client = VfioUserClient::connect(socket).expect("connect to the host");
    BlockDriver::open(client, &Options::default()).expect("open the device")
}

fn assert_image(path: &Path, expect: &[u8], what: &str) {
    let now = std::fs::read(path).expect("read image");
    assert_eq!(now.len(), expect.len(), "{what}: image size changed");
    if now != expect {
        let first = now
            .iter()
            .zip(expect)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!("{what}: image differs from the expected contents first at byte {first}");
    }
}

fn guest_cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin("swiotlb-guest"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run swiotlb-guest")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn writes_of_every_size_at_random_offsets_read_back_and_land_exactly_in_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, mut model) = patterned_image(dir.path(), DISK, 1);
    let host = InProcessHost::start(dir.path(), &disk, 1, false, Policy::default());
    let mut drv = open(&host.socket);
    assert_eq!(drv.info().capacity, DISK);
    let mut rng = Rng(0x5eed_1234);
    let sizes: [u64; 8] = [
        512,
        4096,
        64 << 10,
        256 << 10,         // one maximal mapping
        (256 << 10) + 512, // two descriptors
        1 << 20,           // one maximal request: four descriptors
        (3 << 20) + 512,   // four requests in flight
        6 << 20,           // six requests in flight
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let off = rng.offset(len, DISK);
        let data = pattern(len as usize, 100 + i as u64);
        drv.write_at(off, &data)
            .unwrap_or_else(|e| panic!("write {len} at {off}: {e:?}"));
        let mut back = vec![0u8; len as usize];
        drv.read_at(off, &mut back)
            .unwrap_or_else(|e| panic!("read {len} at {off}: {e:?}"));
        assert!(back == data, "read back {len} bytes at {off}");
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
        assert_image(
            &disk,
            &model,
            &format!("after writing {len} bytes at {off}"),
        );
    }
    // A read spanning several earlier writes sees the model.
    let mut all = vec![0u8; DISK as usize];
    drv.read_at(0, &mut all).unwrap();
    assert!(all == model, "whole-disk read differs from the model");
    drop(drv);
    let records = host.finish();
    let (ended, summary, _) = &records[0];
    assert_eq!(ended, "closed");
    assert_eq!(summary.dma_violations, 0);
    assert_eq!(summary.findings, 0, "{:?}", summary.findings_by_kind);
    assert_eq!(summary.chains_rejected, 0);
}

#[test]
fn flush_discard_write_zeroes_and_get_id_behave_and_reach_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, mut model) = patterned_image(dir.path(), 8 << 20, 2);
    let host = InProcessHost::start(dir.path(), &disk, 1, false, Policy::default());
    let mut drv = open(&host.socket);

    let data = pattern(1 << 20, 3);
    drv.write_at(1 << 20, &data).unwrap();
    model[1 << 20..2 << 20].copy_from_slice(&data);
    drv.flush().unwrap();
    assert_image(&disk, &model, "after write + flush");

    let mut back = vec![0xa5u8; 256 << 10];
    drv.discard(1 << 20, 256 << 10).unwrap();
    drv.read_at(1 << 20, &mut back).unwrap();
    assert!(
        back.iter().all(|b| *b == 0),
        "discarded range reads back zeros"
    );
    model[1 << 20..(1 << 20) + (256 << 10)].fill(0);
    assert_image(&disk, &model, "after discard");

    for (off, len, unmap) in [
        ((3 << 20) / 2, 128u64 << 10, false),
        ((7 << 20) / 4, 64u64 << 10, true),
        (0, 512, false),
    ] {
        drv.write_zeroes(off, len, unmap).unwrap();
        let mut back = vec![0xa5u8; len as usize];
        drv.read_at(off, &mut back).unwrap();
        assert!(back.iter().all(|b| *b == 0), "write_zeroes {len} at {off}");
        model[off as usize..(off + len) as usize].fill(0);
        assert_image(&disk, &model, &format!("after write_zeroes at {off}"));
    }

    let id = drv.get_id().unwrap();
    let end = id.iter().position(|b| *b == 0).unwrap_or(id.len());
    assert!(id.starts_with(b"swiotlb-"), "{id:?}");
    assert!(id[end..].iter().all(|b| *b == 0), "NUL padded: {id:?}");
    assert!(id[..end].iter().all(|b| b.is_ascii_graphic()));
    drop(drv);
    let records = host.finish();
    assert_eq!(records[0].1.findings, 0);
}

#[test]
fn read_only_device_refuses_writes_with_a_clear_error_and_the_image_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, model) = patterned_image(dir.path(), 4 << 20, 4);
    let host = HostProcess::spawn(dir.path(), &disk, &["--read-only"]);
    {
        let mut drv = open(&host.socket);
        assert!(drv.info().read_only);
        let data = pattern(8192, 5);
        assert!(matches!(
            drv.write_at(4096, &data),
            Err(BlockError::ReadOnly)
        ));
        assert!(matches!(drv.discard(0, 4096), Err(BlockError::ReadOnly)));
        assert!(matches!(
            drv.write_zeroes(0, 4096, true),
            Err(BlockError::ReadOnly)
        ));
        // Reads still work (the refusals did not stop the driver).
        let mut back = vec![0u8; 64 << 10];
        drv.read_at(64 << 10, &mut back).unwrap();
        assert!(back[..] == model[64 << 10..128 << 10]);
    }
    let input = dir.path().join("in.bin");
    std::fs::write(&input, pattern(4096, 6)).unwrap();
    let o = guest_cli(
        &host.socket,
        &["write", "--offset", "0", "--input", input.to_str().unwrap()],
    );
    assert!(
        !o.status.success(),
        "CLI write to a read-only device succeeded"
    );
    assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));
    assert_image(&disk, &model, "read-only image");
    assert_eq!(host.session(1)["summary"]["findings"], 0);
}

#[test]
fn unaligned_and_out_of_range_requests_are_rejected_before_anything_is_posted() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 4 << 20);
    let host = InProcessHost::start(dir.path(), &disk, 1, false, Policy::default());
    let mut drv = open(&host.socket);
    let cap = drv.info().capacity;
    let mut buf = vec![0u8; 4096];
    type Check = fn(&BlockError) -> bool;
    let unaligned: Check = |e| matches!(e, BlockError::Unaligned { .. });
    let out_of_range: Check = |e| matches!(e, BlockError::OutOfRange { .. });
    let results: Vec<(&str, Result<(), BlockError>, Check)> = vec![
        ("read at 100", drv.read_at(100, &mut buf), unaligned),
        ("read 100 bytes", drv.read_at(0, &mut buf[..100]), unaligned),
        ("write at 511", drv.write_at(511, &buf[..512]), unaligned),
        ("write 513 bytes", drv.write_at(0, &[0; 513]), unaligned),
        (
            "read past end",
            drv.read_at(cap - 512, &mut buf),
            out_of_range,
        ),
        ("write at end", drv.write_at(cap, &buf[..512]), out_of_range),
        (
            "write wrapping u64",
            drv.write_at(u64::MAX - 511, &buf[..512]),
            out_of_range,
        ),
        ("discard unaligned", drv.discard(0, 100), unaligned),
        ("discard past end", drv.discard(cap, 512), out_of_range),
        (
            "write_zeroes past end",
            drv.write_zeroes(cap - 512, 1024, false),
            out_of_range,
        ),
    ];
    for (what, r, check) in results {
        match r {
            Err(e) => assert!(check(&e), "{what}: {e:?}"),
            Ok(()) => panic!("{what} was accepted"),
        }
    }
    // The driver is still usable: exactly one chain reaches the device.
    drv.read_at(0, &mut buf).unwrap();
    drop(drv);
    let records = host.finish();
    let s = &records[0].1;
    assert_eq!(s.chains, 1, "rejected requests were posted");
    assert_eq!(s.chains_rejected, 0);
}

#[test]
fn cli_writes_a_file_reads_it_back_byte_equal_and_reports_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, mut model) = patterned_image(dir.path(), 8 << 20, 7);
    let host = HostProcess::spawn(dir.path(), &disk, &[]);
    let data = pattern((300 << 10) + 512, 8);
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    std::fs::write(&input, &data).unwrap();

    let o = guest_cli(
        &host.socket,
        &[
            "write",
            "--offset",
            "1M",
            "--input",
            input.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "write: {}", stderr(&o));
    let len = data.len().to_string();
    let o = guest_cli(
        &host.socket,
        &[
            "read",
            "--offset",
            "1M",
            "--length",
            &len,
            "--output",
            output.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "read: {}", stderr(&o));
    assert!(
        std::fs::read(&output).unwrap() == data,
        "CLI read-back differs"
    );
    model[1 << 20..(1 << 20) + data.len()].copy_from_slice(&data);
    assert_image(&disk, &model, "after CLI write");

    let o = guest_cli(&host.socket, &["--json", "info"]);
    assert!(o.status.success(), "info: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("info --json is JSON");
    assert_eq!(v["ok"], true);
    let negotiated: Vec<&str> = v["info"]["negotiated"]
        .as_array()
        .expect("negotiated list")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(negotiated.contains(&"SWIOTLB"), "{negotiated:?}");
    assert_eq!(v["info"]["pool_size"], POOL_SIZE);
    assert_eq!(v["info"]["capacity"], 8 << 20);

    // `--json read` reports the transfer's own time and throughput beside the digest.
    let o = guest_cli(
        &host.socket,
        &[
            "--json",
            "read",
            "--offset",
            "1M",
            "--length",
            &len,
            "--output",
            "/dev/null",
        ],
    );
    assert!(o.status.success(), "read --json: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("read --json is JSON");
    assert_eq!(v["ok"], true);
    assert_eq!(v["read"], data.len());
    assert_eq!(v["sha256"].as_str().map(str::len), Some(64), "{v}");
    let secs = v["seconds"].as_f64().expect("seconds");
    let mib_s = v["read_mib_s"].as_f64().expect("read_mib_s");
    assert!(secs > 0.0 && mib_s > 0.0, "{v}");
    let expect = data.len() as f64 / (1024.0 * 1024.0) / secs;
    assert!((mib_s - expect).abs() <= 1e-6 * expect, "{v}");
    for n in 1..=4 {
        let s = host.session(n);
        assert_eq!(s["summary"]["dma_violations"], 0, "session {n}");
        assert!(s["summary"]["status"].as_u64().unwrap() & DRIVER_OK != 0);
    }
}

#[test]
fn declining_swiotlb_exits_nonzero_and_the_host_records_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 1 << 20);
    let host = HostProcess::spawn(dir.path(), &disk, &[]);
    let o = guest_cli(&host.socket, &["--decline-swiotlb", "info"]);
    assert!(!o.status.success(), "declining SWIOTLB succeeded");
    let err = stderr(&o);
    assert!(err.contains("requires the pool"), "{err}");
    let s = &host.session(1)["summary"];
    let st = s["status"].as_u64().expect("status");
    assert_eq!(st & DRIVER_OK, 0, "DRIVER_OK reached: status {st:#x}");
    let kinds = s["findings_by_kind"].as_array().expect("findings_by_kind");
    assert!(
        kinds
            .iter()
            .any(|k| k[0] == "swiotlb_declined" && k[1].as_u64() >= Some(1)),
        "{kinds:?}"
    );
}

#[test]
fn a_second_client_gets_a_zeroed_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, _) = patterned_image(dir.path(), 4 << 20, 9);
    let host = InProcessHost::start(dir.path(), &disk, 2, false, Policy::default());
    {
        let mut drv = open(&host.socket);
        let mut buf = vec![0u8; 1 << 20];
        drv.read_at(0, &mut buf).unwrap();
        drv.write_at(0, &buf).unwrap();
        // Leave the whole pool dirty: rings are in use, and every byte gets a pattern.
        let info = drv.info().clone();
        let pool = drv
            .transport()
            .pci()
            .map_bar(2, 0, info.pool_size)
            .expect("map the pool again");
        let pool = PoolMemory::new(pool);
        pool.write(0, &vec![0xa5u8; info.pool_size as usize])
            .unwrap();
        let mut b = [0u8; 4];
        pool.read(info.pool_size - 4, &mut b).unwrap();
        assert_eq!(b, [0xa5; 4]);
    }
    // The next client maps the pool before posting (or zeroing) anything.
    let client = VfioUserClient::connect(&host.socket).expect("second client");
    let mut vp = VirtioPci::probe(client).expect("probe");
    let region = vp.caps().swiotlb.expect("SWIOTLB capability");
    assert_eq!(region.len, POOL_SIZE);
    let map = vp
        .pci()
        .map_bar(region.bar, region.offset, region.len)
        .expect("map the pool");
    let pool = PoolMemory::new(map);
    let mut all = vec![0xffu8; region.len as usize];
    pool.read(0, &mut all).unwrap();
    let dirty = all.iter().filter(|b| **b != 0).count();
    assert_eq!(
        dirty, 0,
        "{dirty} bytes of the first client's pool survived"
    );
    drop(vp);
    let records = host.finish();
    assert_eq!(records.len(), 2);
}

#[test]
fn scattered_reads_in_flight_together_land_each_range_in_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, image) = patterned_image(dir.path(), 4 << 20, 7);
    let host = InProcessHost::start(dir.path(), &disk, 1, false, Policy::default());
    let mut drv = open(&host.socket);
    // 40 ranges of mixed sizes (more than the 32 of a batch), out of order, one of 1 MiB.
    let mut ranges: Vec<(u64, usize)> = (0..39u64)
        .map(|i| (((i * 37) % 4000) * 512, 512 * (1 + (i as usize % 8))))
        .collect();
    ranges.push((2 << 20, 1 << 20));
    let total: usize = ranges.iter().map(|r| r.1).sum();
    let mut buf = vec![0xeeu8; total];
    drv.read_scattered(&ranges, &mut buf).unwrap();
    let mut at = 0;
    for (off, len) in &ranges {
        let o = *off as usize;
        assert_eq!(&buf[at..at + len], &image[o..o + len], "range at {off}");
        at += len;
    }
    // A length that does not match the buffer is refused before anything is posted.
    assert!(drv.read_scattered(&ranges, &mut buf[1..]).is_err());
    drop(drv);
    host.finish();
}
