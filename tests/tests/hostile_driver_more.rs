//! More of the hostile driver against the real `swiotlb-host` binary (see
//! `hostile_driver.rs`): the real limits on chain length and total size, malformed indirect
//! tables, invalid queue sizes, requests past the end of the disk, feature changes after
//! FEATURES_OK, a reset in the middle of I/O, and the pool BAR taken away with requests
//! posted. Each case shows what the host did on the wire, that the session summary counts
//! it as the right kind of finding (or, for a plain I/O error, as an I/O error and no
//! finding), that the image holds nothing it should not, and that the host goes on serving.
//!
//! Kicks are synchronous (the host processes the queue before it answers the doorbell
//! write), so a chain that was kicked is complete before the driver's next register write:
//! the chains that can be pending at a reset, a BAR move or memory decode switched off are
//! the ones published in the avail ring and not kicked yet.

mod hostile_support;

use std::cell::Cell;

use hostile_support::*;
use serde_json::Value;
use swiotlb_guest::ring::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT};
use swiotlb_guest::testing::raw_driver::{
    BlkRequest, Desc, RawDriver, BLK_T_IN, BLK_T_OUT, DEFAULT_FEATURES, STATUS_UNSET,
};
use swiotlb_shared::blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use swiotlb_shared::features::{
    bit, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use swiotlb_shared::pci::{common, status};

const SECTOR: u64 = 512;
/// Sectors of the disk image.
const CAPACITY: u64 = DISK_SIZE as u64 / SECTOR;
/// ACKNOWLEDGE | DRIVER | FEATURES_OK.
const FEATURES_OK: u8 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

/// An OUT request writing `byte` over `sectors` sectors at `sector`, with its data split
/// into one descriptor per sector: `sectors + 2` descriptors (header, data..., status),
/// NEXT set on all but the last. Nothing is written to a ring or table.
fn out_chain(d: &RawDriver, sector: u64, sectors: usize, byte: u8) -> (BlkRequest, Vec<Desc>) {
    let len = sectors as u32 * SECTOR as u32;
    let req = d
        .prepare_blk(BLK_T_OUT, sector, len, Some(&vec![byte; len as usize]))
        .unwrap();
    let mut descs = vec![req.descs[0]];
    descs.extend((0..sectors as u64).map(|i| Desc {
        addr: req.descs[1].addr + i * SECTOR,
        len: SECTOR as u32,
        flags: VIRTQ_DESC_F_NEXT,
        next: 0,
    }));
    descs.push(req.descs[2]);
    (req, descs)
}

/// Points descriptor 0 at an indirect table of `entries` entries at `table` (bus address).
fn indirect_head(d: &RawDriver, table: u64, entries: u32) {
    d.write_desc(
        0,
        Desc {
            addr: table,
            len: entries * 16,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: 0,
        },
    )
    .unwrap();
}

/// Writes a common-configuration register.
fn common_write(d: &mut RawDriver, off: u64, data: &[u8]) {
    let c = d.transport().caps().common;
    d.bar_write(c.bar, c.offset + off, data).unwrap();
}

/// Reads a common-configuration register.
fn common_read<const N: usize>(d: &mut RawDriver, off: u64) -> [u8; N] {
    let c = d.transport().caps().common;
    let mut b = [0u8; N];
    d.bar_read(c.bar, c.offset + off, &mut b).unwrap();
    b
}

/// The 64 driver-feature bits as the device reads them back.
fn driver_features(d: &mut RawDriver) -> u64 {
    let mut f = 0;
    for sel in 0..2u32 {
        common_write(d, common::DRIVER_FEATURE_SELECT, &sel.to_le_bytes());
        let half = u32::from_le_bytes(common_read(d, common::DRIVER_FEATURE));
        f |= u64::from(half) << (32 * sel);
    }
    f
}

/// Resets the device (status 0) and negotiates [`DEFAULT_FEATURES`] again on the same
/// connection; FEATURES_OK must be accepted.
fn renegotiate(d: &mut RawDriver) {
    let (_, accepted, ok) = d.transport().negotiate(DEFAULT_FEATURES).unwrap();
    assert!(ok, "FEATURES_OK accepted after the reset");
    assert_eq!(accepted, d.features(), "the same features as before");
}

/// Writes `req` (three descriptors at head 0) and submits it; returns the status byte.
fn submit_request(d: &mut RawDriver, descs: &[Desc], req: &BlkRequest) -> u8 {
    d.write_chain(0, descs).unwrap();
    d.submit(0).unwrap();
    d.blk_status(req).unwrap()
}

fn needs_reset_in(s: &Value) -> bool {
    s["status"].as_u64().unwrap() & u64::from(DEVICE_NEEDS_RESET) != 0
}

/// The session went on as a healthy one: `chains` chains checked, none rejected, no finding,
/// DRIVER_OK and no DEVICE_NEEDS_RESET at the end.
fn assert_clean_session(s: &Value, chains: u64) {
    assert_eq!(s["findings"], 0, "{s}");
    assert_eq!(s["chains"], chains, "{s}");
    assert_eq!(s["chains_rejected"], 0, "{s}");
    assert_ne!(
        s["status"].as_u64().unwrap() & u64::from(status::DRIVER_OK),
        0,
        "{s}"
    );
    assert!(!needs_reset_in(s), "{s}");
}

// ---- 1. chain length: the real limits ----
//
// A chain in the descriptor table that visits more descriptors than the queue size must
// visit one twice (a loop, `looping_chain_is_rejected_...` in `hostile_driver.rs`) or step
// past the table's end. An indirect table is bounded by the queue size too, so a chain can
// never be longer than the queue: exactly that long is served.

#[test]
fn direct_chain_of_exactly_queue_size_descriptors_is_served() {
    let mut f = fixture();
    let mut d = f.connect();
    ready(&mut d, QSIZE);
    let n = usize::from(QSIZE) - 2;
    let (req, descs) = out_chain(&d, 0, n, 0xa5);
    assert_eq!(descs.len(), usize::from(QSIZE));
    assert_eq!(submit_request(&mut d, &descs, &req), VIRTIO_BLK_S_OK);
    assert_eq!(
        d.used_elem(0).unwrap(),
        (0, 1),
        "used (head 0, status byte)"
    );
    assert!(!d.needs_reset().unwrap());
    drop(d);
    f.assert_image_written(0, n * SECTOR as usize, 0xa5);
    let s = f.summary(1);
    assert_clean_session(&s, 1);
    assert_eq!(s["dma_descriptors"], u64::from(QSIZE), "{s}");
    f.restore_image();
    f.assert_still_serves(2);
}

#[test]
fn chain_of_queue_size_plus_one_descriptors_is_rejected_counted_and_image_untouched() {
    rejected_chain("chain_too_long", false, |d, _| {
        // All 64 entries are good descriptors of one chain, the last with NEXT on to index
        // 64: a 65th descriptor, past the table (where the avail ring is).
        let (_, descs) = out_chain(d, 0, usize::from(QSIZE) - 1, 0xa5);
        d.write_chain(0, &descs[..usize::from(QSIZE)]).unwrap();
    });
}

#[test]
fn next_index_past_the_descriptor_table_is_rejected_counted_and_image_untouched() {
    rejected_chain("descriptor_index_out_of_range", false, |d, req| {
        // header -> data -> index 64, one past the table.
        let data = Desc {
            next: QSIZE,
            ..req.descs[1]
        };
        d.write_chain(0, &req.descs[..1]).unwrap();
        d.write_desc(1, data).unwrap();
    });
}

#[test]
fn indirect_table_of_exactly_queue_size_entries_is_served() {
    let mut f = fixture();
    let mut d = f.connect();
    ready(&mut d, QSIZE);
    let n = usize::from(QSIZE) - 2;
    let (req, descs) = out_chain(&d, 0, n, 0xa5);
    let table = d.write_table(d.table_area(), &descs).unwrap();
    indirect_head(&d, table, u32::from(QSIZE));
    d.submit(0).unwrap();
    assert_eq!(d.blk_status(&req).unwrap(), VIRTIO_BLK_S_OK);
    assert_eq!(d.used_elem(0).unwrap(), (0, 1));
    assert!(!d.needs_reset().unwrap());
    drop(d);
    f.assert_image_written(0, n * SECTOR as usize, 0xa5);
    let s = f.summary(1);
    assert_clean_session(&s, 1);
    assert_eq!(s["dma_descriptors"], u64::from(QSIZE), "{s}");
    f.restore_image();
    f.assert_still_serves(2);
}

#[test]
fn indirect_table_longer_than_queue_size_is_rejected_counted_and_image_untouched() {
    rejected_chain("bad_indirect_table", false, |d, _| {
        // 65 good entries; only the table's length is wrong.
        let (_, descs) = out_chain(d, 0, usize::from(QSIZE) - 1, 0xa5);
        let table = d.write_table(d.table_area(), &descs).unwrap();
        indirect_head(d, table, u32::from(QSIZE) + 1);
    });
}

#[test]
fn loop_inside_an_indirect_table_is_rejected_counted_and_image_untouched() {
    rejected_chain("chain_too_long", false, |d, req| {
        // header -> data -> header -> ... inside a table of three.
        let off = d.table_area();
        let table = d.write_table(off, &req.descs).unwrap();
        d.write_desc_at(
            off + 16,
            Desc {
                next: 0,
                ..req.descs[1]
            },
        )
        .unwrap();
        indirect_head(d, table, 3);
    });
}

#[test]
fn next_index_beyond_an_indirect_table_is_rejected_counted_and_image_untouched() {
    rejected_chain("descriptor_index_out_of_range", false, |d, req| {
        // A table declared three long whose data descriptor goes on to entry 3, where a good
        // status descriptor lies in memory: past the table all the same.
        let off = d.table_area();
        let table = d.write_table(off, &req.descs).unwrap();
        d.write_desc_at(
            off + 16,
            Desc {
                next: 3,
                ..req.descs[1]
            },
        )
        .unwrap();
        d.write_desc_at(off + 48, req.descs[2]).unwrap();
        indirect_head(d, table, 3);
    });
}

// ---- 2. total length ----
//
// Each descriptor lies inside the pool, but their lengths add up past what a chain may
// carry (u32). A chain just under that is checked and answered: the request is larger
// than the disk, so VIRTIO_BLK_S_IOERR, and no byte moves.

#[test]
fn descriptor_lengths_summing_past_4_gib_are_rejected_counted_and_image_untouched() {
    let mut f = fixture();
    for (n, indirect) in [false, true].into_iter().enumerate() {
        let mut d = f.connect();
        ready(&mut d, 256);
        let req = d
            .prepare_blk(BLK_T_OUT, 0, DATA_LEN, Some(&[0xa5; DATA_LEN as usize]))
            .unwrap();
        // Whole-pool descriptors, as many as it takes to pass 4 GiB (256 of 16 MiB).
        let pool = d.pool_size();
        let count = ((1u64 << 32) / pool) as usize;
        assert!(count as u64 * pool > u64::from(u32::MAX) && count <= 256);
        let mut descs = vec![
            Desc {
                addr: d.bus(0),
                len: pool as u32,
                flags: VIRTQ_DESC_F_NEXT,
                next: 0,
            };
            count
        ];
        descs[count - 1].flags = 0;
        if indirect {
            let table = d.write_table(d.table_area(), &descs).unwrap();
            indirect_head(&d, table, count as u32);
        } else {
            d.write_chain(0, &descs).unwrap();
        }
        d.submit(0).unwrap();
        assert_rejected_on_the_wire(&mut d, &req);
        drop(d);
        assert_counted(&f.summary(n + 1), "chain_length_overflow", false);
        f.assert_image_untouched();
    }
    f.assert_still_serves(3);
}

#[test]
fn chain_of_nearly_4_gib_inside_the_pool_is_answered_ioerr_and_image_untouched() {
    let mut f = fixture();
    let mut d = f.connect();
    ready(&mut d, 256);
    let req = d
        .prepare_blk(BLK_T_OUT, 0, DATA_LEN, Some(&[0xa5; DATA_LEN as usize]))
        .unwrap();
    // Header, 254 whole-pool data descriptors, status: 254 * 16 MiB + 17 bytes, under 4 GiB.
    let pool = d.pool_size();
    let data = Desc {
        addr: d.bus(0),
        len: pool as u32,
        flags: VIRTQ_DESC_F_NEXT,
        next: 0,
    };
    let mut descs = vec![req.descs[0]];
    descs.extend(std::iter::repeat_n(data, 254));
    descs.push(req.descs[2]);
    let total: u64 = descs.iter().map(|d| u64::from(d.len)).sum();
    assert!(total <= u64::from(u32::MAX) && total > DISK_SIZE as u64);
    assert_eq!(submit_request(&mut d, &descs, &req), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.used_elem(0).unwrap(), (0, 1));
    assert!(!d.needs_reset().unwrap());
    drop(d);
    f.assert_image_untouched();
    let s = f.summary(1);
    assert_clean_session(&s, 1);
    assert_eq!(s["dma_descriptors"], 256, "{s}");
    assert_eq!(s["device"]["io_errors"], 1, "{s}");
    assert_eq!(s["device"]["writes"], 0, "{s}");
    f.assert_still_serves(2);
}

// ---- 3. malformed indirect tables ----

#[test]
fn nested_indirect_table_is_rejected_counted_and_image_untouched() {
    rejected_chain("bad_indirect_table", false, |d, req| {
        // The head's table holds one entry: another indirect table with the request.
        let inner = d.write_table(d.table_area() + 4096, &req.descs).unwrap();
        let outer = d.table_area();
        d.write_desc_at(
            outer,
            Desc {
                addr: inner,
                len: 48,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            },
        )
        .unwrap();
        indirect_head(d, d.bus(outer), 1);
    });
}

#[test]
fn indirect_table_of_length_zero_is_rejected_counted_and_image_untouched() {
    rejected_chain("bad_indirect_table", false, |d, req| {
        let table = d.write_table(d.table_area(), &req.descs).unwrap();
        indirect_head(d, table, 0);
    });
}

#[test]
fn indirect_table_length_not_a_multiple_of_16_is_rejected_counted_and_image_untouched() {
    rejected_chain("bad_indirect_table", false, |d, req| {
        let table = d.write_table(d.table_area(), &req.descs).unwrap();
        d.write_desc(
            0,
            Desc {
                addr: table,
                len: 40,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            },
        )
        .unwrap();
    });
}

#[test]
fn indirect_descriptor_with_next_set_is_rejected_counted_and_image_untouched() {
    rejected_chain("bad_indirect_table", false, |d, req| {
        // A good table, and NEXT on to a good status descriptor at index 1.
        let table = d.write_table(d.table_area(), &req.descs).unwrap();
        d.write_desc(
            0,
            Desc {
                addr: table,
                len: 48,
                flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT,
                next: 1,
            },
        )
        .unwrap();
        d.write_desc(1, req.descs[2]).unwrap();
    });
}

#[test]
fn indirect_descriptor_without_indirect_negotiated_is_rejected_counted_and_image_untouched() {
    let features = DEFAULT_FEATURES & !bit(VIRTIO_RING_F_INDIRECT_DESC);
    rejected_chain_with(features, "bad_indirect_table", false, |d, req| {
        assert_eq!(d.features(), features);
        let table = d.write_table(d.table_area(), &req.descs).unwrap();
        indirect_head(d, table, 3);
    });
}

// ---- 4. queue sizes ----
//
// A split virtqueue's size is a power of two (virtio 1.2, 2.7), at most what the device
// presents in queue_size. A write of anything else is refused and counted, the register
// keeps the device's maximum, and the queue cannot be enabled until the driver writes a
// valid size: enabling it with the size the device kept would have the device use rings
// of a size the driver never laid out. The refused enable is counted too, and so is the
// kick of the queue that is not enabled; nothing is processed.

#[test]
fn queue_size_not_a_power_of_two_zero_or_above_the_maximum_is_refused_counted_and_not_enabled() {
    let mut f = fixture();
    let bad_sizes = [100u16, 0, 255, 512, 32768];
    for (n, bad) in bad_sizes.into_iter().enumerate() {
        let mut d = f.connect();
        let max = u16::from_le_bytes(common_read(&mut d, common::QUEUE_SIZE));
        assert_eq!(max, 256, "{bad}: the device's maximum");
        // The rings are laid out in the pool (so that is not what is refused).
        let r = d.standard_rings(QSIZE).unwrap();
        d.use_rings(r);
        let (desc, avail, used) = (d.bus(r.desc), d.bus(r.avail), d.bus(r.used));
        let enabled = d.setup_queue(0, bad, desc, avail, used).unwrap();
        assert!(!enabled, "{bad}: queue_enable reads back 0");
        let size = u16::from_le_bytes(common_read(&mut d, common::QUEUE_SIZE));
        assert_eq!(size, max, "{bad}: queue_size keeps the maximum");
        // Carry on as if nothing happened: DRIVER_OK, a write request, a kick.
        d.driver_ok().unwrap();
        let req = d
            .prepare_blk(BLK_T_OUT, 0, DATA_LEN, Some(&[0xa5; DATA_LEN as usize]))
            .unwrap();
        d.write_chain(0, &req.descs).unwrap();
        d.submit(0).unwrap();
        assert_eq!(d.used_idx().unwrap(), 0, "{bad}: nothing processed");
        assert_eq!(d.blk_status(&req).unwrap(), STATUS_UNSET, "{bad}");
        drop(d);
        let s = f.summary(n + 1);
        assert_eq!(
            findings_by_kind(&s),
            kinds(&[("bad_queue_notify", 1), ("bad_queue_size", 2)]),
            "{bad}: {s}"
        );
        assert_eq!(s["dma_violations"], 0, "{bad}: {s}");
        assert_eq!(s["chains"], 0, "{bad}: {s}");
        f.assert_image_untouched();
    }
    f.assert_still_serves(bad_sizes.len() + 1);
}

#[test]
fn valid_queue_size_written_after_a_refused_one_is_accepted_and_the_queue_serves() {
    let mut f = fixture();
    let mut d = f.connect();
    common_write(&mut d, common::QUEUE_SELECT, &0u16.to_le_bytes());
    common_write(&mut d, common::QUEUE_SIZE, &100u16.to_le_bytes());
    ready(&mut d, QSIZE);
    let size = u16::from_le_bytes(common_read(&mut d, common::QUEUE_SIZE));
    assert_eq!(size, QSIZE);
    let (status, data) = d.read_sectors(0, DATA_LEN).unwrap();
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert!(data == pattern()[..DATA_LEN as usize]);
    assert!(!d.needs_reset().unwrap());
    drop(d);
    let s = f.summary(1);
    assert_eq!(findings_by_kind(&s), kinds(&[("bad_queue_size", 1)]), "{s}");
    assert_eq!(s["chains"], 1, "{s}");
    assert!(!needs_reset_in(&s), "{s}");
    f.assert_image_untouched();
    f.assert_still_serves(2);
}

// ---- 5. past the end of the disk ----
//
// Not a protocol violation: the device answers VIRTIO_BLK_S_IOERR (virtio 1.2, 5.2.6),
// counts an I/O error, records no finding, and the same queue goes on serving.

/// (first sector, bytes) of requests that do not fit the disk.
const PAST_THE_END: [(u64, u32); 6] = [
    (CAPACITY, 4096),         // starts at the end
    (CAPACITY + 1000, 512),   // starts well past it
    (CAPACITY - 1, 4096),     // starts inside, runs past the end
    (CAPACITY - 8, 8192),     // starts inside, runs past the end
    (u64::MAX / SECTOR, 512), // offset + length overflows u64
    (u64::MAX, 512),          // sector * 512 overflows u64
];

#[test]
fn writes_past_the_disk_end_are_answered_ioerr_image_untouched_and_the_queue_keeps_serving() {
    let mut f = fixture();
    let mut d = f.connect();
    ready(&mut d, QSIZE);
    for (i, (sector, len)) in PAST_THE_END.into_iter().enumerate() {
        let req = d
            .prepare_blk(BLK_T_OUT, sector, len, Some(&vec![0xa5; len as usize]))
            .unwrap();
        let st = submit_request(&mut d, &req.descs, &req);
        assert_eq!(st, VIRTIO_BLK_S_IOERR, "sector {sector:#x}");
        assert_eq!(d.used_idx().unwrap(), i as u16 + 1);
        assert_eq!(d.used_elem(i as u16).unwrap(), (0, 1), "status byte only");
        assert!(!d.needs_reset().unwrap());
    }
    f.assert_image_untouched();
    // The last 4 KiB of the disk, on the same queue: served.
    let req = d
        .prepare_blk(BLK_T_OUT, CAPACITY - 8, 4096, Some(&[0xa5; 4096]))
        .unwrap();
    assert_eq!(submit_request(&mut d, &req.descs, &req), VIRTIO_BLK_S_OK);
    drop(d);
    f.assert_image_written(DISK_SIZE - 4096, 4096, 0xa5);
    let s = f.summary(1);
    let n = PAST_THE_END.len() as u64;
    assert_clean_session(&s, n + 1);
    assert_eq!(s["device"]["io_errors"], n, "{s}");
    assert_eq!(s["device"]["writes"], 1, "{s}");
    f.restore_image();
    f.assert_still_serves(2);
}

#[test]
fn reads_past_the_disk_end_are_answered_ioerr_and_return_no_data() {
    let mut f = fixture();
    let mut d = f.connect();
    ready(&mut d, QSIZE);
    for (i, (sector, len)) in PAST_THE_END.into_iter().enumerate() {
        let req = d.prepare_blk(BLK_T_IN, sector, len, None).unwrap();
        d.pool().write(req.data, &vec![0x5a; len as usize]).unwrap();
        let st = submit_request(&mut d, &req.descs, &req);
        assert_eq!(st, VIRTIO_BLK_S_IOERR, "sector {sector:#x}");
        assert_eq!(d.used_elem(i as u16).unwrap(), (0, 1), "no data written");
        let data = d.blk_data(&req).unwrap();
        assert!(data.iter().all(|b| *b == 0x5a), "buffer untouched");
        assert!(!d.needs_reset().unwrap());
    }
    let (status, data) = d.read_sectors(CAPACITY - 8, 4096).unwrap();
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert!(data == pattern()[DISK_SIZE - 4096..]);
    drop(d);
    let s = f.summary(1);
    let n = PAST_THE_END.len() as u64;
    assert_clean_session(&s, n + 1);
    assert_eq!(s["device"]["io_errors"], n, "{s}");
    assert_eq!(s["device"]["reads"], 1, "{s}");
    f.assert_image_untouched();
    f.assert_still_serves(2);
}

// ---- 6. features after FEATURES_OK ----
//
// "The driver MUST NOT accept new feature bits after" setting FEATURES_OK (virtio 1.2,
// 3.1.1 step 5) and "MUST NOT clear a device status bit" (2.1.1). The device keeps what it
// accepted at FEATURES_OK until a reset: a later driver_feature write is refused (reads
// back unchanged), a status write clearing FEATURES_OK is refused (the bit stays set),
// each counted as a status_protocol_violation; setting FEATURES_OK again is a no-op, not
// a second negotiation. Nothing changes for I/O, so no reset is needed.

/// An indirect OUT request of 0xA5 at sector 0, submitted; returns its status. It only
/// succeeds while VIRTIO_RING_F_INDIRECT_DESC stays negotiated.
fn indirect_write(d: &mut RawDriver) -> u8 {
    let req = d
        .prepare_blk(BLK_T_OUT, 0, DATA_LEN, Some(&[0xa5; DATA_LEN as usize]))
        .unwrap();
    let table = d.write_table(d.table_area(), &req.descs).unwrap();
    indirect_head(d, table, 3);
    d.submit(0).unwrap();
    d.blk_status(&req).unwrap()
}

#[test]
fn driver_features_written_after_features_ok_are_refused_counted_and_the_negotiated_set_kept() {
    let mut f = fixture();
    let mut d = f.connect();
    let accepted = d.features();
    assert_ne!(accepted & bit(VIRTIO_RING_F_INDIRECT_DESC), 0);
    // Drop INDIRECT_DESC and SWIOTLB, add EVENT_IDX: both halves differ.
    let other = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX);
    d.transport().set_driver_features(other).unwrap();
    assert_eq!(
        driver_features(&mut d),
        accepted,
        "driver_feature unchanged"
    );
    assert_eq!(
        d.status().unwrap(),
        FEATURES_OK,
        "FEATURES_OK, no reset needed"
    );
    ready(&mut d, QSIZE);
    assert_eq!(
        indirect_write(&mut d),
        VIRTIO_BLK_S_OK,
        "INDIRECT_DESC kept"
    );
    drop(d);
    f.assert_image_written(0, DATA_LEN as usize, 0xa5);
    let s = f.summary(1);
    assert_eq!(
        findings_by_kind(&s),
        kinds(&[("status_protocol_violation", 2)]),
        "{s}"
    );
    assert_eq!(s["driver_features"], accepted, "{s}");
    assert_eq!(s["chains"], 1, "{s}");
    assert_eq!(s["chains_rejected"], 0, "{s}");
    assert!(!needs_reset_in(&s), "{s}");
    f.restore_image();
    f.assert_still_serves(2);
}

#[test]
fn features_ok_cleared_is_refused_counted_and_setting_it_again_renegotiates_nothing() {
    let mut f = fixture();
    let mut d = f.connect();
    let accepted = d.features();
    let driver = status::ACKNOWLEDGE | status::DRIVER;
    // Clear FEATURES_OK: refused, the bit stays.
    d.transport().set_status(driver).unwrap();
    assert_eq!(d.status().unwrap(), FEATURES_OK);
    // Offer other features and set FEATURES_OK again as if renegotiating: the feature
    // write is refused and FEATURES_OK, already set, changes nothing.
    let fewer = accepted & !bit(VIRTIO_RING_F_INDIRECT_DESC);
    d.transport().set_driver_features(fewer).unwrap();
    d.transport().set_status(FEATURES_OK).unwrap();
    assert_eq!(d.status().unwrap(), FEATURES_OK);
    assert_eq!(driver_features(&mut d), accepted);
    ready(&mut d, QSIZE);
    // After DRIVER_OK, a status write without FEATURES_OK: refused too.
    d.transport()
        .set_status(driver | status::DRIVER_OK)
        .unwrap();
    assert_eq!(d.status().unwrap(), FEATURES_OK | status::DRIVER_OK);
    assert_eq!(
        indirect_write(&mut d),
        VIRTIO_BLK_S_OK,
        "INDIRECT_DESC kept"
    );
    drop(d);
    f.assert_image_written(0, DATA_LEN as usize, 0xa5);
    let s = f.summary(1);
    // The first clear, the feature write (two driver_feature writes, each refused), and
    // the clear after DRIVER_OK.
    assert_eq!(
        findings_by_kind(&s),
        kinds(&[("status_protocol_violation", 4)]),
        "{s}"
    );
    assert_eq!(s["driver_features"], accepted, "{s}");
    assert_eq!(s["chains"], 1, "{s}");
    assert!(!needs_reset_in(&s), "{s}");
    f.restore_image();
    f.assert_still_serves(2);
}

// ---- 7. reset in the middle of I/O ----

#[test]
fn reset_with_requests_pending_zeroes_the_pool_and_nothing_posted_before_is_processed_after() {
    let mut f = fixture();
    let mut d = f.connect();
    ready(&mut d, QSIZE);
    let rings = d.standard_rings(QSIZE).unwrap();
    // A: sector 0, kicked and served before the reset.
    let (a, a_descs) = out_chain(&d, 0, 8, 0xa5);
    assert_eq!(submit_request(&mut d, &a_descs, &a), VIRTIO_BLK_S_OK);
    // B: sector 16, published at head 3 but not kicked when the driver resets.
    let (b, b_descs) = out_chain(&d, 16, 8, 0xb6);
    d.write_chain(3, &b_descs).unwrap();
    d.publish(3).unwrap();
    assert_eq!(d.avail_idx().unwrap(), 2);
    d.transport().reset().unwrap();
    // The pool is zeroed: rings, descriptors, B's header and data.
    for (what, off, len) in [
        ("descriptor table", rings.desc, 16 * u64::from(QSIZE)),
        ("avail ring", rings.avail, 4 + 2 * u64::from(QSIZE)),
        ("used ring", rings.used, 4 + 8 * u64::from(QSIZE)),
        ("request header", b.header, 16),
        ("request data", b.data, u64::from(b.data_len)),
    ] {
        let mut buf = vec![0xffu8; len as usize];
        d.pool().read(off, &mut buf).unwrap();
        assert!(buf.iter().all(|x| *x == 0), "{what} zeroed by the reset");
    }
    // A kick before the new negotiation does nothing.
    d.kick(0).unwrap();
    assert_eq!(d.used_idx().unwrap(), 0);
    // Negotiate again on the same connection and enable the queue at the same rings, as a
    // careless driver might, without clearing them: nothing from before is pending.
    renegotiate(&mut d);
    let (desc, avail, used) = (d.bus(rings.desc), d.bus(rings.avail), d.bus(rings.used));
    assert!(d.setup_queue(0, QSIZE, desc, avail, used).unwrap());
    d.driver_ok().unwrap();
    d.kick(0).unwrap();
    assert_eq!(
        d.used_idx().unwrap(),
        0,
        "nothing from before the reset processed"
    );
    // A new request is served.
    let (c, c_descs) = out_chain(&d, 32, 8, 0xc7);
    assert_eq!(submit_request(&mut d, &c_descs, &c), VIRTIO_BLK_S_OK);
    assert_eq!(d.used_idx().unwrap(), 1);
    drop(d);
    // A's sectors written, B's never, C's written.
    let mut want = pattern();
    want[..4096].fill(0xa5);
    want[32 * 512..32 * 512 + 4096].fill(0xc7);
    assert!(
        std::fs::read(&f.disk).unwrap() == want,
        "image: A and C only"
    );
    let s = f.summary(1);
    assert_clean_session(&s, 2);
    assert_eq!(
        s["dma_descriptors"], 20,
        "A and C, 10 descriptors each: {s}"
    );
    f.restore_image();
    f.assert_still_serves(2);
}

// ---- 8. the pool taken away with requests posted ----

/// With a request published but not kicked, `take_away` removes the pool from where the
/// rings are; the kick is rejected as `kind`, counted, and the image untouched. Then
/// `give_back` and further kicks still do nothing (DEVICE_NEEDS_RESET), until a reset and a
/// new negotiation on the same connection: the device serves again. Returns the session's
/// summary.
fn pool_taken_away_then_reset(
    f: &Fixture,
    session: usize,
    kind: &str,
    take_away: impl FnOnce(&mut RawDriver),
    give_back: impl FnOnce(&mut RawDriver),
) -> Value {
    let mut d = f.connect();
    let req = arm(&mut d);
    d.write_chain(0, &req.descs).unwrap();
    d.publish(0).unwrap();
    take_away(&mut d);
    d.kick(0).unwrap();
    assert_eq!(d.used_idx().unwrap(), 0, "nothing processed");
    assert_eq!(d.blk_status(&req).unwrap(), STATUS_UNSET);
    assert!(d.needs_reset().unwrap());
    give_back(&mut d);
    d.kick(0).unwrap();
    assert_eq!(d.used_idx().unwrap(), 0, "still nothing processed");
    assert!(d.needs_reset().unwrap());
    f.assert_image_untouched();
    // Reset and start over on the same connection: the posted request is gone (the pool
    // was zeroed), a new one is served.
    renegotiate(&mut d);
    assert!(!d.needs_reset().unwrap());
    assert_eq!(d.avail_idx().unwrap(), 0, "the pool was zeroed");
    let req = arm(&mut d);
    assert_eq!(submit_request(&mut d, &req.descs, &req), VIRTIO_BLK_S_OK);
    assert_eq!(d.used_idx().unwrap(), 1);
    let base = d.read_pool_base().unwrap();
    assert_eq!(base, d.pool_base());
    drop(d);
    f.assert_image_written(0, DATA_LEN as usize, 0xa5);
    f.restore_image();
    let s = f.summary(session);
    assert_eq!(findings_by_kind(&s), kinds(&[(kind, 1)]), "{s}");
    assert_eq!(s["dma_violations"], 1, "{s}");
    assert_eq!(s["chains"], 1, "only the request after the reset: {s}");
    assert_eq!(s["chains_rejected"], 0, "{s}");
    assert_eq!(s["pool_bus_address"], base, "{s}");
    assert!(!needs_reset_in(&s), "{s}");
    s
}

#[test]
fn pool_bar_moved_with_requests_posted_is_rejected_and_after_a_reset_the_device_serves_again() {
    let mut f = fixture();
    let moved = |d: &mut RawDriver| {
        let to = d.pool_base() + (64 << 30);
        d.move_pool_bar(to).unwrap();
    };
    // Moved back before the reset ...
    let old = Cell::new(0);
    let s = pool_taken_away_then_reset(
        &f,
        1,
        "ring_outside_pool",
        |d| {
            old.set(d.pool_base());
            moved(d);
        },
        |d| d.move_pool_bar(old.get()).unwrap(),
    );
    assert_eq!(s["pool_moves"], 2, "{s}");
    // ... or left where it went: after the reset the driver uses it there.
    let s = pool_taken_away_then_reset(&f, 2, "ring_outside_pool", moved, |_| {});
    assert_eq!(s["pool_moves"], 1, "{s}");
    f.assert_still_serves(3);
}

#[test]
fn memory_decode_off_with_requests_posted_is_rejected_and_after_a_reset_the_device_serves_again() {
    let mut f = fixture();
    let s = pool_taken_away_then_reset(
        &f,
        1,
        "pool_not_decoded",
        |d| d.set_memory_decode(false).unwrap(),
        |d| d.set_memory_decode(true).unwrap(),
    );
    assert_eq!(s["pool_moves"], 0, "{s}");
    f.assert_still_serves(2);
}
