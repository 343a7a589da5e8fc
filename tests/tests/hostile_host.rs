//! The real guest driver against a hostile device ([`FakeDevice`]): whatever the device does,
//! the driver returns a clear [`BlockError`], never panics, never hangs, keeps every
//! descriptor inside its own queue's areas of the pool, never copies back more than it
//! posted, never exposes stale data, and refuses further I/O after a device error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swiotlb_guest::block::{BlockDriver, BlockError, Options, MAX_REQUEST_BYTES, SECTOR_SIZE};
use swiotlb_guest::pool::PoolAccessError;
use swiotlb_guest::ring::{RingError, VIRTQ_DESC_F_INDIRECT};
use swiotlb_guest::testing::fake_device::{
    Behavior, CapSpec, FakeConfig, FakeDevice, Scribble, SelfReset, DEFAULT_POOL_SIZE, DEVICE_ID,
    POOL_BAR_ADDRESS, SCRIBBLE_BYTES, SPILL_BYTE,
};
use swiotlb_guest::virtio_pci::TransportError;
use swiotlb_shared::blk::BlkConfigError;
use swiotlb_shared::features::{bit, VIRTIO_BLK_F_MQ, VIRTIO_F_SWIOTLB, VIRTIO_RING_F_EVENT_IDX};
use swiotlb_shared::layout::{
    avail_ring_size, desc_table_size, used_ring_size, PoolLayout, PoolWindow, QueueLayout,
    DESC_SIZE, INDIRECT_TABLE_DESCS, SLOT_SIZE,
};
use swiotlb_shared::pci::status;

/// Completion timeout for every test: a device that never answers costs 200 ms.
const TIMEOUT: Duration = Duration::from_millis(200);
/// Disk size of the fake device.
const DISK: usize = 8 << 20;
/// What caller buffers hold before a request; bytes the driver must not touch keep it.
const SENTINEL: u8 = 0xa5;

/// Deterministic non-trivial disk contents (xorshift).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = vec![0u8; len];
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    v
}

fn opts() -> Options {
    Options {
        timeout: TIMEOUT,
        ..Options::default()
    }
}

fn fake_with(cfg: FakeConfig) -> FakeDevice {
    FakeDevice::new(cfg).expect("build fake device")
}

fn fake() -> FakeDevice {
    fake_with(FakeConfig::new(pattern(DISK, 1)))
}

fn open(f: &FakeDevice) -> BlockDriver<FakeDevice> {
    BlockDriver::open(f.clone(), &opts()).expect("open the fake device")
}

fn open_err(f: &FakeDevice) -> BlockError {
    match BlockDriver::open(f.clone(), &opts()) {
        Ok(_) => panic!("open succeeded against a broken device"),
        Err(e) => e,
    }
}

fn misbehave(f: &FakeDevice, b: Behavior) {
    f.set_behavior(b);
}

/// The queue layout the driver must be using, and the announced window.
fn layout(f: &FakeDevice, drv: &BlockDriver<FakeDevice>) -> (PoolWindow, QueueLayout) {
    let w = f.pool_window().expect("the device announces a pool");
    let q = PoolLayout::new(w.size(), 1, drv.info().queue_size)
        .expect("layout")
        .queues[0];
    (w, q)
}

fn within(range: &std::ops::Range<u64>, addr: u64, len: u64) -> bool {
    addr >= range.start && addr.checked_add(len).is_some_and(|e| e <= range.end)
}

/// Every descriptor the device saw lies inside the pool window and, more precisely, where
/// the driver's layout puts it: ring descriptors in the descriptor table, table entries in
/// the indirect area (each head's table at its own slot), and every buffer in the bounce
/// slot area. The rings are programmed where the layout says. The device found nothing
/// outside the window.
fn assert_confined(f: &FakeDevice, drv: &BlockDriver<FakeDevice>) {
    assert_eq!(
        f.violations(),
        Vec::<String>::new(),
        "device-side violations"
    );
    let (w, q) = layout(f, drv);
    let b = w.base();
    let size = u64::from(q.size);
    let qs = f.queue();
    assert_eq!(
        (qs.desc, qs.driver, qs.device),
        (b + q.desc, b + q.avail, b + q.used),
        "rings programmed where the layout puts them"
    );
    let ring = b + q.desc..b + q.desc + desc_table_size(q.size);
    let tables =
        b + q.indirect..b + q.indirect + size * u64::from(INDIRECT_TABLE_DESCS) * DESC_SIZE;
    let slots = b + q.slots..b + q.slots + q.slot_count * SLOT_SIZE;
    let descs = f.descriptors();
    assert!(!descs.is_empty(), "the device read no descriptor");
    for d in descs {
        assert!(
            w.contains(d.addr, u64::from(d.len)),
            "{d:?} outside the window"
        );
        if d.in_indirect_table {
            assert!(
                within(&tables, d.at, DESC_SIZE),
                "{d:?} read outside tables"
            );
        } else {
            assert!(
                within(&ring, d.at, DESC_SIZE),
                "{d:?} read outside the ring"
            );
        }
        if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            assert!(!d.in_indirect_table, "nested indirect table {d:?}");
            let head = ((d.at - ring.start) / DESC_SIZE) as u16;
            assert_eq!(d.addr, b + q.indirect_table(head), "table of head {head}");
            assert!(within(&tables, d.addr, u64::from(d.len)), "{d:?}");
        } else {
            assert!(
                within(&slots, d.addr, u64::from(d.len)),
                "buffer {d:?} outside the slot area {slots:x?}"
            );
        }
    }
}

/// After a device error every operation fails at once with `Stopped`.
fn assert_stopped(drv: &mut BlockDriver<FakeDevice>) {
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    assert!(matches!(drv.read_at(0, &mut buf), Err(BlockError::Stopped)));
    assert!(matches!(drv.write_at(0, &buf), Err(BlockError::Stopped)));
    assert!(matches!(drv.flush(), Err(BlockError::Stopped)));
    assert!(matches!(drv.get_id(), Err(BlockError::Stopped)));
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "Stopped must not wait"
    );
}

fn sentinel(len: usize) -> Vec<u8> {
    vec![SENTINEL; len]
}

fn untouched(b: &[u8]) -> bool {
    b.iter().all(|x| *x == SENTINEL)
}

// ---- a well-behaved fake device: the baseline -------------------------------------------

#[test]
fn well_behaved_device_round_trips_every_size_with_descriptors_confined_to_the_slot_area() {
    for indirect in [true, false] {
        let f = fake();
        let mut drv = BlockDriver::open(f.clone(), &Options { indirect, ..opts() }).unwrap();
        let (w, q) = layout(&f, &drv);
        let bar_off = w.base() - f.pool_bar_address();
        // A canary in the gap after the used ring (inside the window, in no area the driver
        // owns): the driver must never write it.
        let gap_start = q.used + used_ring_size(q.size);
        let gap_end = gap_start.next_multiple_of(4096);
        assert!(gap_end > gap_start);
        let canary = vec![0x5a; (gap_end - gap_start) as usize];
        f.write_pool(bar_off + gap_start, &canary).unwrap();
        let mut expect = f.disk();
        let sizes = [512usize, 4096, 65536, 256 << 10, (256 << 10) + 512, 1 << 20];
        let mut at = 0u64;
        for (i, &n) in sizes.iter().chain(&[(2 << 20) + 512]).enumerate() {
            let data = pattern(n, 100 + i as u64);
            drv.write_at(at, &data).unwrap();
            expect[at as usize..at as usize + n].copy_from_slice(&data);
            assert!(f.disk() == expect, "disk differs after writing {n} bytes");
            let mut back = sentinel(n + 4096);
            drv.read_at(at, &mut back[..n]).unwrap();
            assert!(back[..n] == data[..], "read back {n} bytes");
            assert!(untouched(&back[n..]));
            at += (n as u64).next_multiple_of(8192);
        }
        drv.flush().unwrap();
        drv.discard(0, 8192).unwrap();
        drv.write_zeroes(8192, 4096, false).unwrap();
        expect[..12288].fill(0);
        assert!(f.disk() == expect);
        let id = drv.get_id().unwrap();
        assert_eq!(&id[..DEVICE_ID.len()], DEVICE_ID);
        assert!(id[DEVICE_ID.len()..].iter().all(|b| *b == 0));

        assert_confined(&f, &drv);
        let indirect_seen = f
            .descriptors()
            .iter()
            .any(|d| d.flags & VIRTQ_DESC_F_INDIRECT != 0);
        assert_eq!(indirect_seen, indirect);
        // Every slot was zeroed when its request completed; the canary is intact.
        let mut slots = vec![0u8; (q.slot_count * SLOT_SIZE) as usize];
        f.read_pool(bar_off + q.slots, &mut slots).unwrap();
        assert!(slots.iter().all(|b| *b == 0), "a bounce slot kept data");
        let mut gap = vec![0u8; canary.len()];
        f.read_pool(bar_off + gap_start, &mut gap).unwrap();
        assert_eq!(gap, canary, "the driver wrote outside its areas");
    }
}

#[test]
fn pool_at_an_offset_inside_a_larger_bar_is_used_there_and_nothing_outside_is_touched() {
    let mut cfg = FakeConfig::new(pattern(DISK, 2)).with_pool_size(8 << 20);
    cfg.swiotlb_cap = Some(CapSpec {
        bar: 2,
        offset: 4 << 20,
        length: 4 << 20,
    });
    let f = fake_with(cfg);
    let outside = pattern(4 << 20, 3);
    f.write_pool(0, &outside).unwrap();
    let mut drv = open(&f);
    assert_eq!(drv.info().pool_bus_address, POOL_BAR_ADDRESS + (4 << 20));
    assert_eq!(drv.info().pool_size, 4 << 20);
    let data = pattern(3 << 20, 4);
    drv.write_at(1 << 20, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    drv.read_at(1 << 20, &mut back).unwrap();
    assert!(back == data);
    assert_confined(&f, &drv);
    let mut now = vec![0u8; outside.len()];
    f.read_pool(0, &mut now).unwrap();
    assert!(now == outside, "the driver wrote outside its window");
}

// ---- completions that make no sense -------------------------------------------------------

#[test]
fn used_id_never_posted_is_a_ring_error_and_the_driver_stops() {
    let f = fake();
    let mut drv = open(&f);
    misbehave(
        &f,
        Behavior {
            used_id_never_posted: true,
            ..Behavior::default()
        },
    );
    let mut buf = sentinel(4096);
    let e = drv.read_at(0, &mut buf).unwrap_err();
    assert!(
        matches!(e, BlockError::Ring(RingError::BogusUsedId { .. })),
        "{e:?}"
    );
    assert!(
        untouched(&buf),
        "nothing may be copied for a bogus completion"
    );
    assert_confined(&f, &drv);
    assert_stopped(&mut drv);
}

#[test]
fn same_id_completed_twice_is_a_ring_error_after_the_first_completion_is_delivered() {
    let f = fake();
    let mut drv = open(&f);
    misbehave(
        &f,
        Behavior {
            complete_twice: true,
            ..Behavior::default()
        },
    );
    // Two 1 MiB requests in flight; the device completes the first one twice.
    let n = 2 * MAX_REQUEST_BYTES as usize;
    let mut buf = sentinel(n);
    let e = drv.read_at(0, &mut buf).unwrap_err();
    assert!(
        matches!(e, BlockError::Ring(RingError::BogusUsedId { .. })),
        "{e:?}"
    );
    let half = MAX_REQUEST_BYTES as usize;
    assert!(
        buf[..half] == f.disk()[..half],
        "first completion delivered"
    );
    assert!(
        untouched(&buf[half..]),
        "the never-completed half is untouched"
    );
    assert_confined(&f, &drv);
    assert_stopped(&mut drv);
}

#[test]
fn used_index_jumping_past_the_requests_in_flight_is_a_ring_error() {
    let f = fake();
    let mut drv = open(&f);
    let mut buf = sentinel(4096);
    drv.read_at(0, &mut buf).unwrap();
    misbehave(
        &f,
        Behavior {
            used_idx_extra: 5,
            ..Behavior::default()
        },
    );
    let mut buf = sentinel(4096);
    let e = drv.read_at(4096, &mut buf).unwrap_err();
    assert!(
        matches!(
            e,
            BlockError::Ring(RingError::UsedIndexJump {
                last_used: 1,
                used_idx: 7,
                in_flight: 1
            })
        ),
        "{e:?}"
    );
    assert!(untouched(&buf));
    assert_stopped(&mut drv);
}

#[test]
fn used_len_larger_than_posted_copies_only_the_posted_bytes() {
    let f = fake();
    let mut drv = open(&f);
    misbehave(
        &f,
        Behavior {
            used_len_extra: 1 << 20,
            spill: 64 << 10,
            ..Behavior::default()
        },
    );
    let disk = f.disk();
    let mut buf = sentinel(8192);
    drv.read_at(8192, &mut buf[..4096]).unwrap();
    assert!(buf[..4096] == disk[8192..8192 + 4096]);
    assert!(untouched(&buf[4096..]));
    // GET_ID posted 20 bytes: exactly those come back.
    let id = drv.get_id().unwrap();
    assert_eq!(&id[..DEVICE_ID.len()], DEVICE_ID);
    assert!(id[DEVICE_ID.len()..].iter().all(|b| *b == 0), "{id:?}");
    // A flush posted no data: a huge used length changes nothing.
    drv.flush().unwrap();
    // Several requests in flight, each claiming far more than posted: each lands at its
    // own place in the caller's buffer.
    misbehave(
        &f,
        Behavior {
            used_len_extra: u32::MAX / 2,
            ..Behavior::default()
        },
    );
    let n = 2 * MAX_REQUEST_BYTES as usize + 4096;
    let mut buf = sentinel(n + 4096);
    drv.read_at(0, &mut buf[..n]).unwrap();
    assert!(buf[..n] == disk[..n]);
    assert!(untouched(&buf[n..]));
    assert_confined(&f, &drv);
}

#[test]
fn bytes_the_device_writes_past_the_posted_buffers_never_reach_the_caller() {
    let f = fake();
    let mut drv = open(&f);
    misbehave(
        &f,
        Behavior {
            spill: 256 << 10,
            ..Behavior::default()
        },
    );
    let disk = f.disk();
    for (off, n) in [(0usize, 512usize), (4096, 4096), (1 << 20, 256 << 10)] {
        let mut buf = sentinel(n);
        drv.read_at(off as u64, &mut buf).unwrap();
        assert!(buf == disk[off..off + n], "read of {n} at {off}");
        assert!(!buf.contains(&SPILL_BYTE) || disk[off..off + n].contains(&SPILL_BYTE));
    }
    // The driver is still healthy once the device behaves.
    misbehave(&f, Behavior::default());
    let mut buf = sentinel(65536);
    drv.read_at(0, &mut buf).unwrap();
    assert!(buf == disk[..65536]);
    assert_confined(&f, &drv);
}

#[test]
fn success_without_data_returns_zeros_never_an_earlier_requests_data() {
    // The driver zeroes every slot before reuse, so a device that claims a read succeeded
    // but writes nothing yields zeros: not the data of the write or read that used the
    // same slots just before, and not whatever the caller's buffer held.
    for n in [4096usize, 65536, 1 << 20] {
        let f = fake();
        let mut drv = open(&f);
        let secret = pattern(n, 77);
        drv.write_at(0, &secret).unwrap();
        let mut first = sentinel(n);
        drv.read_at(0, &mut first).unwrap();
        assert!(first == secret);
        misbehave(
            &f,
            Behavior {
                skip_data: true,
                ..Behavior::default()
            },
        );
        let mut second = sentinel(n);
        drv.read_at(n as u64, &mut second).unwrap();
        assert!(
            second.iter().all(|b| *b == 0),
            "stale bytes after a {n}-byte read"
        );
        let mut again = sentinel(n);
        drv.read_at(0, &mut again).unwrap();
        assert!(
            again.iter().all(|b| *b == 0),
            "stale bytes after a {n}-byte read"
        );
        assert_confined(&f, &drv);
    }
}

#[test]
fn short_or_empty_completions_of_a_read_are_errors_and_copy_nothing() {
    let f = fake();
    let mut drv = open(&f);
    misbehave(
        &f,
        Behavior {
            used_len: Some(4097),
            ..Behavior::default()
        },
    );
    let mut buf = sentinel(8192);
    let e = drv.read_at(0, &mut buf).unwrap_err();
    assert!(
        matches!(
            e,
            BlockError::ShortCompletion {
                used: 4097,
                expected: 8193
            }
        ),
        "{e:?}"
    );
    assert!(untouched(&buf));
    assert_stopped(&mut drv);

    // A used length of 0: not even the status byte was written; the driver treats the
    // device as needing a reset.
    let f = fake();
    let mut drv = open(&f);
    misbehave(
        &f,
        Behavior {
            used_len: Some(0),
            ..Behavior::default()
        },
    );
    let mut buf = sentinel(4096);
    let e = drv.read_at(0, &mut buf).unwrap_err();
    assert!(matches!(e, BlockError::NeedsReset), "{e:?}");
    assert!(untouched(&buf));
    assert_stopped(&mut drv);
}

#[test]
fn status_bytes_map_to_errors_and_copy_nothing() {
    type Check = fn(&BlockError) -> bool;
    let cases: [(u8, Check); 4] = [
        (1, |e| matches!(e, BlockError::DeviceIoError)),
        (2, |e| matches!(e, BlockError::Unsupported)),
        (7, |e| matches!(e, BlockError::BadStatus(7))),
        (0xff, |e| matches!(e, BlockError::BadStatus(0xff))),
    ];
    for (st, check) in cases {
        let f = fake();
        let mut drv = open(&f);
        misbehave(
            &f,
            Behavior {
                status: Some(st),
                ..Behavior::default()
            },
        );
        let mut buf = sentinel(4096);
        let e = drv.read_at(0, &mut buf).unwrap_err();
        assert!(check(&e), "status {st:#x}: {e:?}");
        assert!(untouched(&buf), "status {st:#x}: data copied on error");
        assert_confined(&f, &drv);
        assert_stopped(&mut drv);
    }
}

// ---- devices that stop answering ----------------------------------------------------------

#[test]
fn device_that_never_answers_times_out_within_the_timeout_then_the_driver_is_stopped() {
    let f = fake();
    let mut drv = open(&f);
    misbehave(
        &f,
        Behavior {
            never_complete: true,
            ..Behavior::default()
        },
    );
    let mut buf = sentinel(4096);
    let t = Instant::now();
    let e = drv.read_at(0, &mut buf).unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, BlockError::Timeout(d) if d == TIMEOUT), "{e:?}");
    assert!(took >= TIMEOUT && took < TIMEOUT * 5, "took {took:?}");
    assert!(untouched(&buf));
    assert_confined(&f, &drv);
    assert_stopped(&mut drv);
}

#[test]
fn device_needs_reset_during_io_is_reported_as_needs_reset() {
    let f = fake();
    let mut drv = open(&f);
    misbehave(
        &f,
        Behavior {
            needs_reset: true,
            ..Behavior::default()
        },
    );
    let e = drv.write_at(0, &[1u8; 4096]).unwrap_err();
    assert!(matches!(e, BlockError::NeedsReset), "{e:?}");
    assert!(f.status() & status::DEVICE_NEEDS_RESET != 0);
    assert_stopped(&mut drv);
}

#[test]
fn device_needs_reset_at_driver_ok_fails_open() {
    let mut cfg = FakeConfig::new(pattern(DISK, 1));
    cfg.needs_reset_on_driver_ok = true;
    let f = fake_with(cfg);
    assert!(matches!(open_err(&f), BlockError::NeedsReset));
}

#[test]
fn bogus_queue_notify_offset_is_a_bad_register_not_a_wild_write() {
    let mut cfg = FakeConfig::new(pattern(DISK, 1));
    cfg.queue_notify_off = 0xffff;
    let f = fake_with(cfg);
    let mut drv = open(&f);
    let mut buf = sentinel(4096);
    let e = drv.read_at(0, &mut buf).unwrap_err();
    assert!(
        matches!(
            e,
            BlockError::Transport(TransportError::BadRegister {
                what: "queue_notify_off",
                ..
            })
        ),
        "{e:?}"
    );
    assert_eq!(f.notifies(), 0);
    assert_stopped(&mut drv);
}

// ---- configuration that changes under the driver ------------------------------------------

#[test]
fn config_generation_changing_during_a_read_is_retried_until_consistent() {
    let mut cfg = FakeConfig::new(pattern(DISK, 1));
    cfg.config_churn = 3;
    let f = fake_with(cfg);
    let drv = open(&f);
    assert_eq!(drv.info().capacity, DISK as u64, "a torn read was used");
}

#[test]
fn config_generation_that_never_settles_fails_open_as_unstable() {
    let mut cfg = FakeConfig::new(pattern(DISK, 1));
    cfg.config_churn = u32::MAX;
    let f = fake_with(cfg);
    let e = open_err(&f);
    assert!(
        matches!(e, BlockError::Transport(TransportError::ConfigUnstable)),
        "{e:?}"
    );
}

#[test]
fn swiotlb_capability_rewritten_after_probe_is_never_reread() {
    let mut cfg = FakeConfig::new(pattern(DISK, 1));
    // After the first read the capability points far outside the BAR.
    cfg.swiotlb_cap_after_first_read = Some(CapSpec {
        bar: 2,
        offset: 0x4000_0000,
        length: 0x100_0000,
    });
    let f = fake_with(cfg);
    let mut drv = open(&f);
    assert_eq!(f.swiotlb_cap_reads(), 1, "the capability is read once");
    assert_eq!(drv.info().pool_size, DEFAULT_POOL_SIZE);
    assert_eq!(drv.info().pool_bus_address, POOL_BAR_ADDRESS);
    let mut buf = vec![0u8; 65536];
    drv.read_at(0, &mut buf).unwrap();
    assert!(buf == f.disk()[..65536]);
    assert_confined(&f, &drv);
}

// ---- SWIOTLB capability and pool problems: refused at open --------------------------------

fn assert_bad_swiotlb_cap(cfg: FakeConfig, why_contains: &str) {
    let f = fake_with(cfg);
    let e = open_err(&f);
    match &e {
        BlockError::Transport(TransportError::BadCapability { what, why }) => {
            assert_eq!(*what, "SWIOTLB", "{e:?}");
            assert!(why.contains(why_contains), "{why:?} lacks {why_contains:?}");
        }
        other => panic!("expected BadCapability for SWIOTLB ({why_contains}), got {other:?}"),
    }
    assert!(
        f.status_writes().is_empty(),
        "the driver touched the device before validating the pool"
    );
}

fn with_cap(bar: u8, offset: u32, length: u32) -> FakeConfig {
    let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
    cfg.swiotlb_cap = Some(CapSpec {
        bar,
        offset,
        length,
    });
    cfg
}

#[test]
fn swiotlb_capability_outside_its_bar_is_refused() {
    let p = DEFAULT_POOL_SIZE as u32;
    assert_bad_swiotlb_cap(with_cap(2, p, p), "outside BAR 2");
    assert_bad_swiotlb_cap(with_cap(2, 4096, p), "outside BAR 2");
    assert_bad_swiotlb_cap(with_cap(2, 0xffff_f000, 0xffff_f000), "outside BAR 2");
}

#[test]
fn swiotlb_capability_at_a_bar_of_size_zero_or_a_missing_bar_is_refused() {
    let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
    cfg.reported_pool_bar_size = Some(0);
    assert_bad_swiotlb_cap(cfg, "size zero");
    assert_bad_swiotlb_cap(with_cap(4, 0, 1 << 20), "size zero");
    assert_bad_swiotlb_cap(with_cap(7, 0, 1 << 20), "does not exist");
}

#[test]
fn swiotlb_capability_not_page_aligned_is_refused() {
    let mut cfg = with_cap(2, 0x800, 2 << 20);
    cfg.pool_bar_size = 8 << 20;
    assert_bad_swiotlb_cap(cfg, "not page aligned");
    assert_bad_swiotlb_cap(with_cap(2, 0, (1 << 20) + 512), "not page aligned");
}

#[test]
fn swiotlb_pool_too_small_for_the_rings_or_not_a_power_of_two_is_refused() {
    assert_bad_swiotlb_cap(with_cap(2, 0, 512 << 10), "outside [0x100000");
    assert_bad_swiotlb_cap(with_cap(2, 0, 4096), "outside [0x100000");
    assert_bad_swiotlb_cap(with_cap(2, 0, 3 << 20), "power of two");
}

#[test]
fn swiotlb_capability_on_an_io_bar_is_refused() {
    let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
    cfg.pool_bar_io = true;
    assert_bad_swiotlb_cap(cfg, "I/O BAR");
}

#[test]
fn pool_mapping_smaller_than_the_capability_fails_open_before_driver_ok() {
    let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
    cfg.map_len_limit = Some(1 << 20);
    let f = fake_with(cfg);
    let e = open_err(&f);
    assert!(
        matches!(e, BlockError::Pool(PoolAccessError::OutOfBounds { .. })),
        "{e:?}"
    );
    assert!(f.status_writes().iter().all(|s| s & status::DRIVER_OK == 0));
    assert!(!f.queue().enabled);
}

#[test]
fn device_not_offering_swiotlb_is_refused_before_negotiation() {
    let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
    cfg.features &= !bit(VIRTIO_F_SWIOTLB);
    let f = fake_with(cfg);
    assert!(matches!(open_err(&f), BlockError::NoSwiotlbOffered));
    assert_eq!(f.status_writes(), vec![0], "only the reset");
    assert_eq!(f.driver_features(), 0);
}

#[test]
fn device_offering_swiotlb_without_a_capability_is_refused() {
    let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
    cfg.swiotlb_cap = None;
    let f = fake_with(cfg);
    assert!(matches!(open_err(&f), BlockError::NoPoolCapability));
    assert_eq!(f.status_writes(), vec![0], "only the reset");
}

#[test]
fn declining_swiotlb_never_reaches_driver_ok_whatever_the_device_policy() {
    let decline = Options {
        decline_swiotlb: true,
        ..opts()
    };
    for strict in [true, false] {
        let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
        cfg.require_swiotlb = strict;
        let f = fake_with(cfg);
        let e = match BlockDriver::open(f.clone(), &decline) {
            Ok(_) => panic!("open succeeded without the pool"),
            Err(e) => e,
        };
        if strict {
            assert!(matches!(e, BlockError::SwiotlbRequired), "{e:?}");
        } else {
            assert!(matches!(e, BlockError::DeclinedButAccepted), "{e:?}");
        }
        assert!(f.status_writes().iter().all(|s| s & status::DRIVER_OK == 0));
        assert!(f.status() & status::FAILED != 0);
        assert_eq!(f.driver_features() & bit(VIRTIO_F_SWIOTLB), 0);
        assert!(!f.queue().enabled);
    }
}

#[test]
fn device_refusing_features_ok_or_having_no_queue_fails_open() {
    let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
    cfg.refuse_features_ok = true;
    let f = fake_with(cfg);
    let e = open_err(&f);
    assert!(
        matches!(e, BlockError::FeaturesRefused { accepted, .. } if accepted & bit(VIRTIO_F_SWIOTLB) != 0),
        "{e:?}"
    );

    let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
    cfg.queue_max_size = 0;
    let f = fake_with(cfg);
    let e = open_err(&f);
    assert!(
        matches!(
            e,
            BlockError::Transport(TransportError::BadRegister {
                what: "queue 0 size",
                ..
            })
        ),
        "{e:?}"
    );
    assert!(f.status_writes().iter().all(|s| s & status::DRIVER_OK == 0));
}

#[test]
fn mq_with_a_bad_num_queues_fails_open_and_too_many_are_clamped_to_what_the_driver_uses() {
    let mq = |num_queues: u16, transport: u16| {
        let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
        cfg.features |= bit(VIRTIO_BLK_F_MQ);
        cfg.blk_num_queues = num_queues;
        cfg.transport_queues = transport;
        fake_with(cfg)
    };
    // num_queues 0: no request queue at all.
    let f = mq(0, 1);
    let e = open_err(&f);
    assert!(
        matches!(e, BlockError::Config(BlkConfigError::NoQueues)),
        "{e:?}"
    );
    assert!(f.status_writes().iter().all(|s| s & status::DRIVER_OK == 0));
    // More queues than the transport has.
    let f = mq(4, 1);
    let e = open_err(&f);
    assert!(
        matches!(
            e,
            BlockError::QueueCount {
                num_queues: 4,
                transport: 1
            }
        ),
        "{e:?}"
    );
    assert!(f.status_writes().iter().all(|s| s & status::DRIVER_OK == 0));
    // More than the driver drives (here: the one queue its options ask for): it drives
    // what it asked for, and only that queue is set up.
    let f = mq(u16::MAX, u16::MAX);
    let mut drv = open(&f);
    assert_eq!((drv.info().device_queues, drv.info().queues), (u16::MAX, 1));
    assert!(drv.take_queues().is_empty());
    let mut buf = vec![0u8; 4096];
    drv.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(1 << 20, 1)[..4096]);
}

#[test]
fn invalid_requests_are_refused_before_anything_is_posted() {
    let f = fake();
    let mut drv = open(&f);
    let cap = drv.info().capacity;
    let mut buf = vec![0u8; 1024];
    assert!(matches!(
        drv.read_at(100, &mut buf),
        Err(BlockError::Unaligned { .. })
    ));
    assert!(matches!(
        drv.read_at(0, &mut buf[..100]),
        Err(BlockError::Unaligned { .. })
    ));
    assert!(matches!(
        drv.write_at(cap - 512, &buf),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        drv.write_at(u64::MAX - 511, &buf[..512]),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        drv.discard(cap, SECTOR_SIZE),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        drv.write_zeroes(0, 100, false),
        Err(BlockError::Unaligned { .. })
    ));
    assert_eq!(f.notifies(), 0);
    assert!(f.descriptors().is_empty());
    // Rejections do not stop the driver.
    drv.read_at(0, &mut buf).unwrap();
    assert!(buf == f.disk()[..1024]);
}

#[test]
fn ring_and_avail_areas_are_where_the_layout_says() {
    let f = fake();
    let drv = open(&f);
    let (w, q) = layout(&f, &drv);
    let qs = f.queue();
    assert!(qs.enabled);
    assert_eq!(qs.size, drv.info().queue_size);
    for (addr, len) in [
        (qs.desc, desc_table_size(q.size)),
        (qs.driver, avail_ring_size(q.size)),
        (qs.device, used_ring_size(q.size)),
    ] {
        assert!(w.contains(addr, len));
    }
}

#[test]
fn pool_bar_at_the_top_of_the_bus_is_refused_as_an_overflowing_window() {
    let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
    cfg.pool_bar_address = 0u64.wrapping_sub(DEFAULT_POOL_SIZE);
    let f = fake_with(cfg);
    let e = open_err(&f);
    assert!(
        matches!(
            e,
            BlockError::Layout(swiotlb_shared::layout::LayoutError::WindowOverflow { .. })
        ),
        "{e:?}"
    );
    assert!(f.status_writes().iter().all(|s| s & status::DRIVER_OK == 0));
}

#[test]
fn tiny_queues_offered_by_the_device_work_with_indirect_tables_or_fail_without_posting() {
    // With indirect descriptors one ring entry carries any request, so even a queue of one
    // serves several requests (one after another).
    for max in [1u16, 2, 3] {
        let mut cfg = FakeConfig::new(pattern(DISK, 1));
        cfg.queue_max_size = max;
        let f = fake_with(cfg);
        let mut drv = open(&f);
        assert!(drv.info().queue_size <= max);
        let n = 2 * MAX_REQUEST_BYTES as usize + 512;
        let mut buf = sentinel(n);
        drv.read_at(0, &mut buf).unwrap();
        assert!(buf == f.disk()[..n], "queue of {max}");
        assert_confined(&f, &drv);
    }
    // Without them a 3-descriptor request cannot fit a queue of two: open refuses at once
    // with a clear error, before DRIVER_OK, and nothing is ever posted.
    let mut cfg = FakeConfig::new(pattern(DISK, 1));
    cfg.queue_max_size = 3;
    let f = fake_with(cfg);
    let t = Instant::now();
    let e = BlockDriver::open(
        f.clone(),
        &Options {
            indirect: false,
            ..opts()
        },
    )
    .err()
    .expect("a queue of two cannot hold a request");
    assert!(matches!(e, BlockError::QueueTooSmall(2)), "{e:?}");
    assert!(t.elapsed() < TIMEOUT);
    assert_eq!(f.notifies(), 0);
}

// ---- configuration space that lies ---------------------------------------------------------

fn patched(patches: Vec<(u16, Vec<u8>)>) -> FakeDevice {
    let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
    cfg.config_patches = patches;
    fake_with(cfg)
}

#[test]
fn looping_or_misplaced_capability_lists_fail_probe() {
    use swiotlb_shared::pci::device_layout as dl;
    // The SWIOTLB capability's next pointer leads back to the first capability.
    let f = patched(vec![(u16::from(dl::CAP_SWIOTLB) + 1, vec![dl::CAP_COMMON])]);
    let e = open_err(&f);
    assert!(
        matches!(&e, BlockError::Transport(TransportError::BadCapability { what: "list", why }) if why.contains("loops")),
        "{e:?}"
    );
    // The capability pointer points into the standard header.
    let f = patched(vec![(0x34, vec![0x10])]);
    let e = open_err(&f);
    assert!(
        matches!(&e, BlockError::Transport(TransportError::BadCapability { what: "list", why }) if why.contains("header")),
        "{e:?}"
    );
    // Not a virtio function at all.
    let f = patched(vec![(0, vec![0x86, 0x80])]);
    assert!(matches!(
        open_err(&f),
        BlockError::Transport(TransportError::NotVirtio { vendor: 0x8086, .. })
    ));
    assert!(f.status_writes().is_empty());
}

#[test]
fn a_second_swiotlb_capability_is_ignored_the_first_one_wins() {
    use swiotlb_shared::pci::device_layout as dl;
    use swiotlb_shared::pci::{cfg, VirtioPciCap, VIRTIO_PCI_CAP_SWIOTLB};
    let rogue = VirtioPciCap {
        cap_vndr: cfg::CAP_ID_VENDOR,
        cap_next: 0,
        cap_len: 16,
        cfg_type: VIRTIO_PCI_CAP_SWIOTLB,
        bar: 0,
        id: 0,
        padding: [0; 2],
        offset: 0,
        length: 0x8000,
    };
    let f = patched(vec![
        (u16::from(dl::CAP_SWIOTLB) + 1, vec![0xc0]),
        (0xc0, rogue.to_bytes().to_vec()),
    ]);
    let mut drv = open(&f);
    assert_eq!(drv.info().pool_bus_address, POOL_BAR_ADDRESS);
    assert_eq!(drv.info().pool_size, DEFAULT_POOL_SIZE);
    let mut buf = vec![0u8; 4096];
    drv.read_at(0, &mut buf).unwrap();
    assert_confined(&f, &drv);
}

#[test]
fn capacity_that_overflows_bytes_fails_open_and_one_beyond_the_disk_gets_io_errors() {
    let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
    cfg.capacity_sectors = Some(u64::MAX / 2);
    let f = fake_with(cfg);
    let e = open_err(&f);
    assert!(
        matches!(
            e,
            BlockError::Config(BlkConfigError::CapacityOverflow(s)) if s == u64::MAX / 2
        ),
        "{e:?}"
    );

    // The device claims twice the disk it has: reads past its real end fail cleanly.
    let mut cfg = FakeConfig::new(pattern(1 << 20, 1));
    cfg.capacity_sectors = Some(2 * (1 << 20) / 512);
    let f = fake_with(cfg);
    let mut drv = open(&f);
    let mut buf = sentinel(4096);
    let e = drv.read_at(1 << 20, &mut buf).unwrap_err();
    assert!(matches!(e, BlockError::DeviceIoError), "{e:?}");
    assert!(untouched(&buf));
    assert_stopped(&mut drv);
}

// ---- pool contents that change while the driver reads them --------------------------------

/// What the caller got from many reads against a scribbling device.
#[derive(Debug, Default)]
struct Outcomes {
    /// Reads that succeeded.
    ok: u32,
    /// Of the bytes delivered, how many were the disk's and how many the scribbler's.
    disk_bytes: u64,
    scribbled_bytes: u64,
    /// Errors, by kind.
    errors: BTreeMap<String, u32>,
    /// Rewrite rounds the scribbler did.
    rounds: u64,
}

/// Whether `e` is an answer the driver may give when the device rewrites `what` of a
/// completed request: each is what one reading of the status byte or used element says.
fn allowed_under_scribbling(e: &BlockError, what: Scribble) -> bool {
    let status = matches!(
        e,
        BlockError::DeviceIoError | BlockError::Unsupported | BlockError::BadStatus(0x7f)
    );
    let used = matches!(
        e,
        BlockError::Ring(RingError::BogusUsedId { id: 0xffff })
            | BlockError::NeedsReset
            | BlockError::ShortCompletion { used: 1, .. }
    );
    (what.status && status) || (what.used && used)
}

/// Reads of every size (one request each) while a second thread keeps rewriting `what` of
/// each completed request, from before the completion is published until the read returns.
/// Whatever the interleaving: the read never panics; it either succeeds with exactly the
/// posted bytes, each the disk's or one the device wrote (never a zero from a slot already
/// released, never an earlier request's data), or fails with one of the errors a single
/// reading of the status byte and used element allows, having copied nothing; nothing past
/// the posted bytes is ever written; after an error the driver is stopped.
fn hammer(what: Scribble, iterations: usize) -> Outcomes {
    let f = fake();
    let mut drv = open(&f);
    // Secrets pass through the slots first (then live on the disk's second half, which the
    // reads below never touch): none of them may come back.
    let secret = pattern(2 << 20, 99);
    drv.write_at((DISK / 2) as u64, &secret).unwrap();
    let mut back = vec![0u8; secret.len()];
    drv.read_at((DISK / 2) as u64, &mut back).unwrap();
    assert!(back == secret);
    let disk = f.disk();
    let scribbler = f.start_scribbler(what).unwrap();
    let sizes = [
        512usize,
        4096,
        65536,
        (256 << 10) + 512,
        MAX_REQUEST_BYTES as usize,
    ];
    let mut out = Outcomes::default();
    for i in 0..iterations {
        let n = sizes[i % sizes.len()];
        let off = (i * 7919 * 512) % (DISK / 2 - n) / 512 * 512;
        let mut buf = sentinel(n + 4096);
        let r = drv.read_at(off as u64, &mut buf[..n]);
        scribbler.quiesce();
        assert!(untouched(&buf[n..]), "bytes copied past the posted buffer");
        match r {
            Ok(()) => {
                out.ok += 1;
                for (k, (got, want)) in buf[..n].iter().zip(&disk[off..off + n]).enumerate() {
                    if got == want {
                        out.disk_bytes += 1;
                    } else if what.data && SCRIBBLE_BYTES.contains(got) {
                        out.scribbled_bytes += 1;
                    } else {
                        panic!("byte {k} of a {n}-byte read at {off}: {got:#x}, neither the disk's {want:#x} nor the device's");
                    }
                }
            }
            Err(e) => {
                assert!(allowed_under_scribbling(&e, what), "{what:?}: {e:?}");
                assert!(untouched(&buf[..n]), "{e:?} after copying data");
                *out.errors.entry(format!("{e:?}")).or_default() += 1;
                assert_stopped(&mut drv);
                drv = open(&f);
            }
        }
    }
    out.rounds = scribbler.rounds();
    drop(scribbler);
    assert!(
        out.rounds >= iterations as u64,
        "the scribbler rewrote each completion at least once"
    );
    assert_confined(&f, &drv);
    eprintln!("{what:?}: {out:?}");
    out
}

#[test]
fn data_rewritten_while_the_driver_copies_it_out_gives_device_bytes_never_stale_or_extra_bytes() {
    let what = Scribble {
        data: true,
        ..Scribble::default()
    };
    let out = hammer(what, 200);
    // The status and used element are intact, so every read succeeds; what the caller gets
    // is one copy of the buffer as the device had it at that moment (its bytes, possibly a
    // mix of two rewrites), exactly as if the device had returned that data.
    assert_eq!(out.ok, 200, "{out:?}");
    assert!(out.errors.is_empty());
    assert!(out.scribbled_bytes > 0, "{out:?}");
}

#[test]
fn status_byte_rewritten_after_completion_is_read_once_data_only_with_ok() {
    let what = Scribble {
        status: true,
        ..Scribble::default()
    };
    // Each read either succeeds with exactly the disk's data, or fails with the error its
    // single status reading gives and nothing copied: never data together with an error.
    let out = hammer(what, 400);
    assert_eq!(out.ok + out.errors.values().sum::<u32>(), 400, "{out:?}");
    assert_eq!(out.scribbled_bytes, 0);
}

#[test]
fn used_element_rewritten_after_completion_is_read_once_and_bounded_by_what_was_posted() {
    let what = Scribble {
        used: true,
        ..Scribble::default()
    };
    // Id and length are each read once: a bogus id, a zero or short length fail with nothing
    // copied; a length of u32::MAX is clamped to what was posted; the real one succeeds.
    let out = hammer(what, 400);
    assert_eq!(out.scribbled_bytes, 0);
    assert_eq!(out.ok + out.errors.values().sum::<u32>(), 400, "{out:?}");
}

#[test]
fn data_status_and_used_element_all_rewritten_at_once_still_give_one_consistent_answer() {
    let what = Scribble {
        data: true,
        status: true,
        used: true,
    };
    let out = hammer(what, 300);
    assert_eq!(out.ok + out.errors.values().sum::<u32>(), 300, "{out:?}");
}

// ---- a device that resets itself in the middle of I/O -------------------------------------

fn assert_self_reset_error(how: SelfReset, e: &BlockError) {
    let ok = match how {
        SelfReset::NeedsReset => matches!(e, BlockError::NeedsReset),
        SelfReset::StatusZero => matches!(
            e,
            BlockError::DeviceReset {
                status: 0,
                queue_enabled: false
            }
        ),
        SelfReset::QueueDisabled => matches!(
            e,
            BlockError::DeviceReset {
                status,
                queue_enabled: false
            } if status & status::DRIVER_OK != 0
        ),
    };
    assert!(ok, "{how:?}: {e:?}");
}

#[test]
fn device_resetting_itself_mid_io_is_a_clear_error_nothing_is_copied_and_the_driver_stops() {
    for how in [
        SelfReset::StatusZero,
        SelfReset::NeedsReset,
        SelfReset::QueueDisabled,
    ] {
        // One request: the doorbell makes the device reset itself instead of serving it.
        let f = fake();
        let mut drv = open(&f);
        let mut buf = sentinel(65536);
        drv.read_at(0, &mut buf).unwrap();
        misbehave(
            &f,
            Behavior {
                self_reset: Some(how),
                ..Behavior::default()
            },
        );
        let mut buf = sentinel(65536);
        let t = Instant::now();
        let e = drv.read_at(65536, &mut buf).unwrap_err();
        assert!(t.elapsed() < TIMEOUT * 5, "{how:?}: took {:?}", t.elapsed());
        assert_self_reset_error(how, &e);
        assert!(untouched(&buf), "{how:?}: data copied");
        assert_stopped(&mut drv);
        assert_eq!(f.violations(), Vec::<String>::new());

        // Several requests in flight: the device serves one doorbell, then resets at the
        // next. What it completed before is delivered in place; the rest stays untouched.
        let f = fake();
        let mut drv = open(&f);
        misbehave(
            &f,
            Behavior {
                self_reset: Some(how),
                self_reset_after: 1,
                ..Behavior::default()
            },
        );
        let n = 4 * MAX_REQUEST_BYTES as usize;
        let mut buf = sentinel(n + 4096);
        let e = drv.read_at(0, &mut buf[..n]).unwrap_err();
        assert_self_reset_error(how, &e);
        let done = f.completions() as usize * MAX_REQUEST_BYTES as usize;
        assert!(done > 0 && done < n, "{how:?}: {done} bytes completed");
        assert!(buf[..done] == f.disk()[..done], "{how:?}: completed part");
        assert!(untouched(&buf[done..]), "{how:?}: uncompleted part touched");
        assert_stopped(&mut drv);
        for v in f.violations() {
            assert!(v.contains("before the queue is live"), "{how:?}: {v}");
        }

        // Reopening recovers a device that behaves again.
        misbehave(&f, Behavior::default());
        let f2 = fake();
        let mut drv = open(&f2);
        let mut buf = sentinel(8192);
        drv.read_at(0, &mut buf).unwrap();
        assert!(buf == f2.disk()[..8192]);
        assert_confined(&f2, &drv);
        let mut drv = open(&f);
        let mut buf = sentinel(8192);
        drv.read_at(4096, &mut buf).unwrap();
        assert!(
            buf == f.disk()[4096..4096 + 8192],
            "{how:?}: after reopening"
        );
    }
}

// ---- device configuration that changes after open -----------------------------------------

#[test]
fn device_configuration_changing_after_open_is_never_reread_and_only_the_opened_capacity_counts() {
    let f = fake();
    let mut drv = open(&f);
    let info = drv.info().clone();
    assert_eq!(info.capacity, DISK as u64);
    let (cfg_reads, dev_reads) = (f.config_space_reads(), f.device_config_reads());
    let mut expect = f.disk();
    let changes = [
        Behavior {
            config_capacity: Some(u64::MAX),
            config_seg_max: Some(1),
            config_blk_size: Some(4096),
            ..Behavior::default()
        },
        Behavior {
            config_capacity: Some(0),
            config_seg_max: Some(0),
            config_blk_size: Some(0),
            ..Behavior::default()
        },
        Behavior {
            config_capacity: Some(2 * DISK as u64 / 512),
            config_seg_max: Some(u32::MAX),
            config_blk_size: Some(3),
            ..Behavior::default()
        },
        Behavior {
            config_capacity_flip: Some((0, u64::MAX)),
            ..Behavior::default()
        },
    ];
    for (i, b) in changes.into_iter().enumerate() {
        misbehave(&f, b.clone());
        // Requests of every size within the capacity read at open work as before.
        let data = pattern(MAX_REQUEST_BYTES as usize + 4096, 300 + i as u64);
        let at = DISK - data.len();
        drv.write_at(at as u64, &data).unwrap();
        expect[at..].copy_from_slice(&data);
        let mut back = sentinel(data.len());
        drv.read_at(at as u64, &mut back).unwrap();
        assert!(back == data, "{b:?}");
        let mut small = sentinel(512);
        drv.read_at(0, &mut small).unwrap();
        assert!(small == expect[..512]);
        // Beyond it: refused before anything is posted, whatever the device now claims.
        let notifies = f.notifies();
        let e = drv.read_at(DISK as u64, &mut small).unwrap_err();
        assert!(
            matches!(e, BlockError::OutOfRange { capacity, .. } if capacity == DISK as u64),
            "{b:?}: {e:?}"
        );
        assert_eq!(f.notifies(), notifies);
        assert_eq!(drv.info().capacity, info.capacity);
        assert_eq!(drv.info().queue_size, info.queue_size);
    }
    assert!(f.disk() == expect);
    assert_eq!(
        f.config_space_reads(),
        cfg_reads,
        "PCI configuration space read again after open"
    );
    assert_eq!(
        f.device_config_reads(),
        dev_reads,
        "device configuration read again after open"
    );
    // A device that really shrinks its disk answers I/O errors for what it dropped: a
    // clean error, nothing copied, the driver stops.
    f.with_disk_mut(|d| d.truncate(DISK / 2));
    misbehave(
        &f,
        Behavior {
            config_capacity: Some((DISK / 2 / 512) as u64),
            ..Behavior::default()
        },
    );
    let mut buf = sentinel(4096);
    let e = drv.read_at(DISK as u64 - 4096, &mut buf).unwrap_err();
    assert!(matches!(e, BlockError::DeviceIoError), "{e:?}");
    assert!(untouched(&buf));
    assert_confined(&f, &drv);
    assert_stopped(&mut drv);
}

#[test]
fn capacity_torn_between_its_two_32_bit_halves_is_read_once_and_only_bounds_requests() {
    // The device changes capacity between the two 32-bit reads of the 64-bit field without
    // bumping config_generation, so the driver sees the low half of one value and the high
    // half of the other: a value the device never reported. No driver can tell; what
    // matters is that the value is read once, checked, and only bounds requests.
    let sectors = DISK as u64 / 512;
    for (first, second) in [
        (1u64 << 32, sectors),     // low 0, high 0: a disk of size zero
        (sectors, 1 << 32),        // low 0x4000, high 1: 2 TiB more than the disk
        (sectors, u64::MAX << 32), // high 0xffff_ffff: overflows bytes
        (sectors, sectors),        // not torn: the real capacity
    ] {
        let f = fake();
        misbehave(
            &f,
            Behavior {
                config_capacity_flip: Some((first, second)),
                ..Behavior::default()
            },
        );
        let torn = (first & 0xffff_ffff) | (second & !0xffff_ffff);
        let Some(bytes) = torn.checked_mul(512) else {
            let e = open_err(&f);
            assert!(
                matches!(
                    e,
                    BlockError::Config(BlkConfigError::CapacityOverflow(s)) if s == torn
                ),
                "{e:?}"
            );
            continue;
        };
        let mut drv = open(&f);
        assert_eq!(drv.info().capacity, bytes, "({first:#x}, {second:#x})");
        let mut buf = sentinel(4096);
        if bytes == 0 {
            assert!(matches!(
                drv.read_at(0, &mut buf),
                Err(BlockError::OutOfRange { capacity: 0, .. })
            ));
            assert_eq!(f.notifies(), 0);
            assert!(untouched(&buf));
            continue;
        }
        drv.read_at(0, &mut buf).unwrap();
        assert!(buf == f.disk()[..4096]);
        if bytes > DISK as u64 {
            let mut buf = sentinel(4096);
            let e = drv.read_at(DISK as u64, &mut buf).unwrap_err();
            assert!(matches!(e, BlockError::DeviceIoError), "{e:?}");
            assert!(untouched(&buf));
            assert_stopped(&mut drv);
        }
        assert_confined(&f, &drv);
    }
}

// ---- used ring fields the device fills with garbage -----------------------------------------

/// Serves queue 0 every 200 µs, as a device that polls its ring does, until dropped.
struct Poller(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Poller {
    fn start(f: &FakeDevice) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f) = (stop.clone(), f.clone());
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                f.process_queue();
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        Self(stop, Some(t))
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn garbage_used_flags_and_avail_event_only_suppress_doorbells_never_break_the_ring() {
    for event_idx in [false, true] {
        for garbage in [0xffffu16, 0xfffe, 0x8000, 0x7fff, 1, 0] {
            let mut cfg = FakeConfig::new(pattern(DISK, 1));
            if !event_idx {
                cfg.features &= !bit(VIRTIO_RING_F_EVENT_IDX);
            }
            let f = fake_with(cfg);
            // Every request here is answered (the poller serves what no doorbell announced):
            // a generous timeout, so that a loaded machine's late scheduling of the poller is
            // not taken for a lost request.
            let patient = Options {
                timeout: Duration::from_secs(10),
                ..opts()
            };
            let mut drv = BlockDriver::open(f.clone(), &patient).expect("open the fake device");
            misbehave(
                &f,
                Behavior {
                    used_flags: Some(garbage),
                    avail_event: Some(garbage),
                    ..Behavior::default()
                },
            );
            // Whether or not the driver rings, a device that also polls serves everything.
            let poller = Poller::start(&f);
            let mut expect = f.disk();
            for (i, n) in [512usize, 65536, 2 * MAX_REQUEST_BYTES as usize + 4096]
                .into_iter()
                .enumerate()
            {
                let at = i * (4 << 20) / 3 / 512 * 512;
                let data = pattern(n, 500 + i as u64);
                drv.write_at(at as u64, &data).unwrap();
                expect[at..at + n].copy_from_slice(&data);
                let mut back = sentinel(n + 512);
                drv.read_at(at as u64, &mut back[..n]).unwrap();
                assert!(back[..n] == data[..], "{garbage:#x}, event_idx {event_idx}");
                assert!(untouched(&back[n..]));
            }
            drv.flush().unwrap();
            drop(poller);
            assert!(f.disk() == expect);
            assert_confined(&f, &drv);
        }
    }
    // A device that only answers doorbells and asks for none (NO_NOTIFY set; avail_event
    // far away) is never woken: the next request times out cleanly, nothing copied.
    for event_idx in [false, true] {
        let mut cfg = FakeConfig::new(pattern(DISK, 1));
        if !event_idx {
            cfg.features &= !bit(VIRTIO_RING_F_EVENT_IDX);
        }
        let f = fake_with(cfg);
        let mut drv = open(&f);
        misbehave(
            &f,
            Behavior {
                used_flags: Some(0xffff),
                avail_event: Some(0x8000),
                ..Behavior::default()
            },
        );
        let mut buf = sentinel(4096);
        drv.read_at(0, &mut buf).unwrap();
        assert_eq!(f.notifies(), 1);
        let mut buf = sentinel(4096);
        let e = drv.read_at(4096, &mut buf).unwrap_err();
        assert!(matches!(e, BlockError::Timeout(d) if d == TIMEOUT), "{e:?}");
        assert_eq!(f.notifies(), 1, "the device asked not to be notified");
        assert!(untouched(&buf));
        assert_confined(&f, &drv);
        assert_stopped(&mut drv);
    }
}

#[test]
fn used_id_equal_to_the_queue_size_0xffff_or_truncating_to_a_posted_head_is_a_ring_error() {
    for qmax in [256u16, 4] {
        let mut cfg = FakeConfig::new(pattern(DISK, 1));
        cfg.queue_max_size = qmax;
        // 0x1_0000 and 0x1_0000 + queue size truncate to head 0, the head posted.
        let qs = u32::from(qmax);
        for id in [qs, qs + 1, 0xffff, 0x1_0000, 0x1_0000 + qs, u32::MAX] {
            let f = fake_with(cfg.clone());
            let mut drv = open(&f);
            assert_eq!(u32::from(drv.info().queue_size), qs);
            misbehave(
                &f,
                Behavior {
                    used_id: Some(id),
                    ..Behavior::default()
                },
            );
            let mut buf = sentinel(65536);
            let e = drv.read_at(0, &mut buf).unwrap_err();
            assert!(
                matches!(e, BlockError::Ring(RingError::BogusUsedId { id: got }) if got == id),
                "queue {qs}, id {id:#x}: {e:?}"
            );
            assert!(untouched(&buf), "queue {qs}, id {id:#x}: data copied");
            assert_confined(&f, &drv);
            assert_stopped(&mut drv);
        }
    }
}
