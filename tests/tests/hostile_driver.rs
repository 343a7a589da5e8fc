//! A hostile driver against the real `swiotlb-host` binary: every chain that reaches outside
//! the pool (or is otherwise malformed) is rejected before any DMA, counted in the session
//! summary, leaves DEVICE_NEEDS_RESET, leaves the disk image byte-for-byte unchanged, and
//! the host process goes on serving new clients.
//!
//! Each test fills a disk image with a known pattern, arms an OUT request whose data would
//! overwrite sector 0 with 0xA5 bytes, corrupts exactly one thing, and kicks. The control
//! tests show the same request, uncorrupted, does change the image, so "unchanged" means
//! something.

mod hostile_support;

use hostile_support::*;
use swiotlb_guest::ring::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use swiotlb_guest::testing::raw_driver::{Desc, Rings, BLK_T_OUT, STATUS_UNSET};

// ---- controls: the same requests, uncorrupted, do write the image ----

#[test]
fn well_formed_out_request_writes_the_image_direct_and_indirect() {
    let mut f = fixture();
    for indirect in [false, true] {
        std::fs::write(&f.disk, pattern()).unwrap();
        let mut d = f.connect();
        let req = arm(&mut d);
        if indirect {
            let off = d.table_area();
            let table = d.write_table(off, &req.descs).unwrap();
            d.write_desc(
                0,
                Desc {
                    addr: table,
                    len: 48,
                    flags: VIRTQ_DESC_F_INDIRECT,
                    next: 0,
                },
            )
            .unwrap();
        } else {
            d.write_chain(0, &req.descs).unwrap();
        }
        d.submit(0).unwrap();
        assert_eq!(d.used_idx().unwrap(), 1);
        assert_eq!(d.blk_status(&req).unwrap(), 0, "VIRTIO_BLK_S_OK");
        assert!(!d.needs_reset().unwrap());
        drop(d);
        let now = std::fs::read(&f.disk).unwrap();
        assert!(now[..DATA_LEN as usize].iter().all(|b| *b == 0xa5));
        assert!(now[DATA_LEN as usize..] == pattern()[DATA_LEN as usize..]);
        let s = f.summary(if indirect { 2 } else { 1 });
        assert_eq!(s["findings"], 0, "{s}");
        assert_eq!(s["chains_rejected"], 0, "{s}");
        assert_eq!(s["dma_descriptors"], 3, "{s}");
    }
    std::fs::write(&f.disk, pattern()).unwrap();
    f.assert_still_serves(3);
}

// ---- descriptors outside the pool ----

#[test]
fn descriptor_outside_pool_is_rejected_counted_and_image_untouched() {
    rejected_chain("descriptor_outside_pool", true, |d, req| {
        let bad = Desc {
            addr: 0x1000,
            ..req.descs[1]
        };
        d.write_chain(0, &with_data(req, bad)).unwrap();
    });
}

#[test]
fn descriptor_straddling_pool_end_is_rejected_counted_and_image_untouched() {
    rejected_chain("descriptor_outside_pool", true, |d, req| {
        // Half the data inside the pool's last 2 KiB, half past its end.
        let at = d.pool_size() - u64::from(DATA_LEN / 2);
        d.pool()
            .write(at, &vec![0xa5; DATA_LEN as usize / 2])
            .unwrap();
        let bad = Desc {
            addr: d.bus(at),
            ..req.descs[1]
        };
        d.write_chain(0, &with_data(req, bad)).unwrap();
    });
}

#[test]
fn descriptor_whose_end_overflows_u64_is_rejected_counted_and_image_untouched() {
    rejected_chain("descriptor_overflow", true, |d, req| {
        let bad = Desc {
            addr: u64::MAX - 1024,
            ..req.descs[1]
        };
        d.write_chain(0, &with_data(req, bad)).unwrap();
    });
}

#[test]
fn indirect_table_outside_pool_is_rejected_counted_and_image_untouched() {
    rejected_chain("indirect_table_outside_pool", true, |d, req| {
        // A valid table in the pool, but the head points at a copy's address outside it.
        let off = d.table_area();
        d.write_table(off, &req.descs).unwrap();
        d.write_desc(
            0,
            Desc {
                addr: 0x2000,
                len: 48,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            },
        )
        .unwrap();
    });
}

#[test]
fn indirect_table_straddling_pool_end_is_rejected_counted_and_image_untouched() {
    rejected_chain("indirect_table_outside_pool", true, |d, req| {
        // The table's first entry is the pool's last 16 bytes; the other two lie past it.
        let off = d.pool_size() - 16;
        d.write_desc_at(
            off,
            Desc {
                next: 1,
                ..req.descs[0]
            },
        )
        .unwrap();
        d.write_desc(
            0,
            Desc {
                addr: d.bus(off),
                len: 48,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            },
        )
        .unwrap();
    });
}

// ---- rings outside the pool ----

#[test]
fn rings_outside_pool_at_queue_enable_are_refused_counted_and_image_untouched() {
    let mut f = fixture();
    for (n, which) in ["desc", "avail", "used"].into_iter().enumerate() {
        let mut d = f.connect();
        let r: Rings = d.standard_rings(QSIZE).unwrap();
        d.use_rings(r);
        let (mut desc, mut avail, mut used) = (d.bus(r.desc), d.bus(r.avail), d.bus(r.used));
        match which {
            "desc" => desc = 0x1000,
            "avail" => avail = d.bus(d.pool_size() - 8), // straddles the end
            _ => used = d.pool_base() - 0x1000,
        }
        let enabled = d.setup_queue(0, QSIZE, desc, avail, used).unwrap();
        assert!(!enabled, "{which}: queue_enable reads back 0");
        assert!(d.needs_reset().unwrap(), "{which}: DEVICE_NEEDS_RESET");
        // Carry on as if nothing happened: DRIVER_OK, a write request, a kick.
        d.driver_ok().unwrap();
        let payload = vec![0xa5u8; DATA_LEN as usize];
        let req = d
            .prepare_blk(BLK_T_OUT, 0, DATA_LEN, Some(&payload))
            .unwrap();
        d.write_chain(0, &req.descs).unwrap();
        d.submit(0).unwrap();
        assert_eq!(d.used_idx().unwrap(), 0, "{which}: nothing processed");
        assert_eq!(d.blk_status(&req).unwrap(), STATUS_UNSET);
        drop(d);
        let s = f.summary(n + 1);
        assert_eq!(
            findings_by_kind(&s),
            vec![("ring_outside_pool".to_string(), 1)],
            "{which}: {s}"
        );
        assert_eq!(s["dma_violations"], 1, "{which}: {s}");
        assert_eq!(s["chains"], 0, "{which}: {s}");
        f.assert_image_untouched();
    }
    f.assert_still_serves(4);
}

#[test]
fn rings_moved_out_by_moving_the_pool_bar_after_driver_ok_are_rejected_and_image_untouched() {
    let mut f = fixture();
    let mut d = f.connect();
    let req = arm(&mut d);
    d.write_chain(0, &req.descs).unwrap();
    d.publish(0).unwrap();
    // Move the pool 64 GiB up: the rings' bus addresses (and the descriptors') now point
    // below the pool.
    let old = d.pool_base();
    let new = old + (64 << 30);
    d.move_pool_bar(new).unwrap();
    assert_eq!(d.read_pool_base().unwrap(), new);
    d.kick(0).unwrap();
    assert_eq!(d.used_idx().unwrap(), 0, "nothing processed");
    assert_eq!(d.blk_status(&req).unwrap(), STATUS_UNSET);
    assert!(d.needs_reset().unwrap());
    drop(d);
    let s = f.summary(1);
    assert_eq!(
        findings_by_kind(&s),
        vec![("ring_outside_pool".to_string(), 1)],
        "{s}"
    );
    assert_eq!(s["dma_violations"], 1, "{s}");
    assert_eq!(s["pool_moves"], 1, "{s}");
    assert_eq!(s["pool_bus_address"], new, "{s}");
    assert_eq!(s["chains"], 0, "{s}");
    f.assert_image_untouched();
    f.assert_still_serves(2);
}

// ---- malformed chains ----

#[test]
fn looping_chain_is_rejected_counted_and_image_untouched() {
    rejected_chain("chain_too_long", false, |d, req| {
        // header -> data -> header -> ... never reaching the status byte.
        d.write_desc(
            0,
            Desc {
                next: 1,
                ..req.descs[0]
            },
        )
        .unwrap();
        d.write_desc(
            1,
            Desc {
                flags: VIRTQ_DESC_F_NEXT,
                next: 0,
                ..req.descs[1]
            },
        )
        .unwrap();
    });
}

#[test]
fn readable_after_writable_is_rejected_counted_and_image_untouched() {
    rejected_chain("readable_after_writable", false, |d, req| {
        let status = Desc {
            flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
            ..req.descs[2]
        };
        let data = Desc {
            flags: 0,
            ..req.descs[1]
        };
        d.write_chain(0, &[req.descs[0], status, data]).unwrap();
    });
}

#[test]
fn zero_length_descriptor_is_rejected_counted_and_image_untouched() {
    rejected_chain("zero_length_descriptor", false, |d, req| {
        let bad = Desc {
            len: 0,
            ..req.descs[1]
        };
        d.write_chain(0, &with_data(req, bad)).unwrap();
    });
}

#[test]
fn avail_idx_jumping_beyond_queue_size_is_refused_counted_and_image_untouched() {
    let mut f = fixture();
    let mut d = f.connect();
    let req = arm(&mut d);
    d.write_chain(0, &req.descs).unwrap();
    for slot in 0..QSIZE {
        d.write_avail_entry(slot, 0).unwrap();
    }
    d.set_avail_idx(QSIZE + 5).unwrap();
    d.kick(0).unwrap();
    assert_eq!(d.used_idx().unwrap(), 0, "no chain consumed");
    assert_eq!(d.blk_status(&req).unwrap(), STATUS_UNSET);
    assert!(d.needs_reset().unwrap());
    drop(d);
    let s = f.summary(1);
    assert_eq!(
        findings_by_kind(&s),
        vec![("avail_index_jump".to_string(), 1)],
        "{s}"
    );
    assert_eq!(s["chains"], 0, "{s}");
    assert_eq!(s["dma_violations"], 0, "{s}");
    f.assert_image_untouched();
    f.assert_still_serves(2);
}

// ---- notifications ----

#[test]
fn notify_for_nonexistent_queue_is_counted_and_the_device_keeps_serving() {
    let mut f = fixture();
    let mut d = f.connect();
    let req = arm(&mut d);
    d.write_chain(0, &req.descs).unwrap();
    d.publish(0).unwrap();
    // Queue 0 has a request pending; doorbells of queues 1 and 1000 must not process it.
    d.kick(1).unwrap();
    d.kick(1000).unwrap();
    assert_eq!(d.used_idx().unwrap(), 0, "queue 0 not processed");
    // A harmless driver bug: counted, but the device does not need a reset.
    assert!(!d.needs_reset().unwrap());
    drop(d);
    let s = f.summary(1);
    assert_eq!(
        findings_by_kind(&s),
        vec![("bad_queue_notify".to_string(), 2)],
        "{s}"
    );
    assert_eq!(s["dma_violations"], 0, "{s}");
    assert_eq!(s["chains"], 0, "{s}");
    f.assert_image_untouched();
    f.assert_still_serves(2);
}

#[test]
fn kick_with_memory_decode_off_is_pool_not_decoded_and_image_untouched() {
    let mut f = fixture();
    let mut d = f.connect();
    let req = arm(&mut d);
    d.write_chain(0, &req.descs).unwrap();
    d.publish(0).unwrap();
    d.set_memory_decode(false).unwrap();
    d.kick(0).unwrap();
    assert_eq!(d.used_idx().unwrap(), 0, "nothing processed");
    assert_eq!(d.blk_status(&req).unwrap(), STATUS_UNSET);
    assert!(d.needs_reset().unwrap());
    // Decode back on: the device stays in DEVICE_NEEDS_RESET and ignores the kick.
    d.set_memory_decode(true).unwrap();
    d.kick(0).unwrap();
    assert_eq!(d.used_idx().unwrap(), 0, "still nothing processed");
    drop(d);
    let s = f.summary(1);
    assert_eq!(
        findings_by_kind(&s),
        vec![("pool_not_decoded".to_string(), 1)],
        "{s}"
    );
    assert_eq!(s["dma_violations"], 1, "{s}");
    assert_eq!(s["chains"], 0, "{s}");
    f.assert_image_untouched();
    f.assert_still_serves(2);
}
