//! Micro-benchmark of transcript hashing: `Transcript::report_data` (canonical encoding, then
//! `SHA-512(DOMAIN || encoding)`), which the guest runs before asking its platform for
//! evidence and the device runs again from what it observed. Its limit, measured in the same
//! run: SHA-512 alone over the same bytes, already laid out in one buffer.
//!
//! One queue (virtio-blk here) and the 16 queues of a multi-queue device. Interleaved rounds,
//! medians; ratios are medians of per-round ratios. Never a pass/fail test.
//!
//! `cargo bench -p swiotlb-shared --bench transcript [-- --quick]`

#[path = "support/measure.rs"]
mod measure;

use measure::{each, measure, median, speed_ratio, Run};

use std::hint::black_box;
use std::time::Duration;

use ring::digest::{digest, SHA512};
use swiotlb_shared::transcript::{
    report_data_of, DeviceIdentity, InstanceId, PlatformKind, QueueRings, Transcript, DOMAIN,
};

fn transcript(queues: u16) -> Transcript {
    Transcript {
        platform: PlatformKind::Snp,
        nonce: [0x5a; 32],
        identity: DeviceIdentity {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x0002,
            instance_id: InstanceId::Long([0x11; 32]),
        },
        device_features: 0x0000_0001_0800_0246,
        driver_features: 0x0000_0001_0800_0206,
        pool_base: 0x80_0000_0000,
        pool_size: 16 << 20,
        queues: (0..queues)
            .map(|i| QueueRings {
                index: i,
                desc: 0x80_0000_0000 + u64::from(i) * 0x1_0000,
                avail: 0x80_0000_1000 + u64::from(i) * 0x1_0000,
                used: 0x80_0000_2000 + u64::from(i) * 0x1_0000,
                size: 256,
            })
            .collect(),
    }
}

fn main() {
    let (rounds, slice) = measure::plan(Duration::from_millis(40), Duration::from_millis(200));
    println!("transcript hashing: {rounds} interleaved rounds of ~{slice:?} (median)");
    let mut json = serde_json::Map::new();
    for queues in [1u16, 16] {
        let t = transcript(queues);
        // Cannot fail: the transcript above is within bounds.
        let encoded = t.encode().expect("valid transcript");
        let hashed: Vec<u8> = [DOMAIN, &encoded[..]].concat();
        assert_eq!(
            digest(&SHA512, &hashed).as_ref(),
            &t.report_data().expect("valid transcript")[..],
            "the baseline hashes the same bytes"
        );
        let (tr, enc, buf) = (&t, &encoded, &hashed);
        let mut cases: Vec<Run<'_>> = vec![
            // 0: SHA-512 alone over DOMAIN || encoding, one buffer.
            each(move |n| {
                for _ in 0..n {
                    black_box(digest(&SHA512, black_box(buf)));
                }
            }),
            // 1: report_data_of on a ready encoding (two updates).
            each(move |n| {
                for _ in 0..n {
                    black_box(report_data_of(black_box(enc)));
                }
            }),
            // 2: Transcript::report_data: encode, then hash.
            each(move |n| {
                for _ in 0..n {
                    black_box(black_box(tr).report_data().expect("valid transcript"));
                }
            }),
        ];
        let r = measure(&mut cases, rounds, slice);
        drop(cases);
        let rate = |v: &[f64]| 1e3 / median(v); // M per second
        println!("  {queues:>2} queue(s), {} bytes hashed:", hashed.len());
        println!(
            "    SHA-512 alone (limit)        {:>6.3} M/s  {:>7.1} ns",
            rate(&r[0]),
            median(&r[0])
        );
        println!(
            "    report_data_of(encoding)     {:>6.3} M/s  {:>7.1} ns  speed vs limit {:.3}",
            rate(&r[1]),
            median(&r[1]),
            speed_ratio(&r[1], &r[0])
        );
        println!(
            "    Transcript::report_data      {:>6.3} M/s  {:>7.1} ns  speed vs limit {:.3}",
            rate(&r[2]),
            median(&r[2]),
            speed_ratio(&r[2], &r[0])
        );
        json.insert(
            format!("sha512_q{queues}_per_s"),
            serde_json::json!(rate(&r[0]) * 1e6),
        );
        json.insert(
            format!("report_data_q{queues}_per_s"),
            serde_json::json!(rate(&r[2]) * 1e6),
        );
        json.insert(
            format!("report_data_q{queues}_vs_sha512"),
            serde_json::json!(speed_ratio(&r[2], &r[0])),
        );
    }
    println!("{}", serde_json::Value::Object(json));
}
