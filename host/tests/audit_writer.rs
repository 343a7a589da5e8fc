//! The writer: checkpoints of empty intervals, back-pressure instead of loss, every DMA
//! counted (summary) or recorded (full), the transcript hash, and the key files. (The
//! `swiotlb-audit` tool's commands are tested with the verifiers.)

mod audit_support;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use audit_support::*;
use swiotlb_host::audit::{
    AuditConfig, AuditError, AuditLog, AuditMode, KeyError, DMA_FORMAT, MAX_DMA_BATCH_BYTES,
};
use swiotlb_shared::audit::event::NO_TRANSCRIPT;
use swiotlb_shared::audit::{
    expand_dma_record, AttestationVerdict, ConfigChange, DmaEvent, Event, NoteError, PackedChains,
    PeripheralAction, PeripheralEvent, Record, VerifierKey,
};

#[test]
fn intervals_without_records_still_get_signed_checkpoints() {
    let s = Scratch::new("empty-intervals");
    let mut cfg = config(&s.base());
    cfg.checkpoint_every = Duration::from_millis(40);
    let (log, _h) = AuditLog::open(cfg, device()).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let key = log.verifier_key().clone();
    log.close().unwrap();
    let f = files(&s.base());
    assert!(verify_paths(&f, &key, false).ok);
    let recs = records(&f[0]);
    let cps = recs
        .iter()
        .filter(|r| r.checkpoint_note().is_some())
        .count();
    assert!(cps >= 6, "{cps} checkpoints");
    // Runs of checkpoints with nothing between them: the empty intervals.
    let back_to_back = recs
        .windows(2)
        .filter(|w| w[0].checkpoint_note().is_some() && w[1].checkpoint_note().is_some())
        .count();
    assert!(back_to_back >= 4, "{back_to_back}");
    // Each is later in time than the one before.
    let times: Vec<u64> = recs
        .iter()
        .filter(|r| r.checkpoint_note().is_some())
        .map(|r| r.time)
        .collect();
    assert!(times.windows(2).all(|t| t[0] <= t[1]));
}

#[test]
fn a_full_queue_blocks_the_sender_and_nothing_is_dropped() {
    let s = Scratch::new("backpressure");
    let mut cfg = config(&s.base());
    cfg.queue_capacity = 4;
    let (log, h) = AuditLog::open(cfg, device()).unwrap();
    let pause = h.pause().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let (h2, sent2) = (h.clone(), Arc::clone(&sent));
    let sender = std::thread::spawn(move || {
        for i in 0..200 {
            h2.finding(&finding(i)).unwrap();
            sent2.fetch_add(1, Ordering::SeqCst);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    // The writer is stalled: the sender got exactly as far as the queue holds.
    assert_eq!(sent.load(Ordering::SeqCst), 4);
    drop(pause);
    sender.join().unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 200);
    let key = log.verifier_key().clone();
    log.close().unwrap();
    let f = files(&s.base());
    assert!(verify_paths(&f, &key, false).ok);
    let details: Vec<String> = records(&f[0])
        .into_iter()
        .filter_map(|r| match r.event() {
            Some(Event::Finding(x)) => Some(x.detail),
            _ => None,
        })
        .collect();
    let expected: Vec<String> = (0..200).map(|i| format!("test finding {i}")).collect();
    assert_eq!(details, expected, "every record out, in order");
    // After close, senders learn the writer is gone instead of blocking or losing silently.
    assert!(matches!(h.finding(&finding(0)), Err(AuditError::Closed)));
}

/// Every DMA of the full-mode records of `recs`, in order, as `swiotlb-audit export` sees
/// them.
fn dma_events(recs: &[Record]) -> Vec<DmaEvent> {
    recs.iter()
        .filter_map(expand_dma_record)
        .flatten()
        .collect()
}

/// The DMA batch records of `recs`, in log order.
fn dma_records(recs: &[Record]) -> Vec<PackedChains> {
    recs.iter()
        .filter_map(|r| match r.event() {
            Some(Event::DmaBatch(d)) => Some(d),
            _ => None,
        })
        .collect()
}

/// Descriptors in each DMA batch record, in log order.
fn dma_record_sizes(recs: &[Record]) -> Vec<u64> {
    dma_records(recs)
        .iter()
        .map(PackedChains::descriptors)
        .collect()
}

/// "dma" or "finding" for each record of those kinds, in log order.
fn dma_and_finding_kinds(recs: &[Record]) -> Vec<&'static str> {
    recs.iter()
        .filter_map(|r| match r.event() {
            Some(Event::Dma(_) | Event::DmaBatch(_)) => Some("dma"),
            Some(Event::Finding(_)) => Some("finding"),
            _ => None,
        })
        .collect()
}

#[test]
fn summary_mode_counts_every_dma_per_queue_and_direction() {
    let s = Scratch::new("summary");
    let mut cfg = config(&s.base());
    cfg.checkpoint_every = Duration::from_millis(30);
    let (log, h) = AuditLog::open(cfg, device()).unwrap();
    let (n1, b1) = dmas(&h);
    std::thread::sleep(Duration::from_millis(100));
    let (n2, b2) = dmas(&h);
    let key = log.verifier_key().clone();
    log.close().unwrap();
    let f = files(&s.base());
    assert!(verify_paths(&f, &key, false).ok);
    let recs = records(&f[0]);
    assert!(recs.iter().all(|r| expand_dma_record(r).is_none()));
    let sums: Vec<_> = recs
        .iter()
        .filter_map(|r| match r.event() {
            Some(Event::DmaSummary(s)) => Some(s),
            _ => None,
        })
        .collect();
    assert!(sums.len() >= 2, "{}", sums.len());
    let n: u64 = sums.iter().map(|s| s.descriptors()).sum();
    let b: u64 = sums.iter().map(|s| s.bytes()).sum();
    assert_eq!((n, b), (n1 + n2, b1 + b2));
    let q1_writes: u64 = sums
        .iter()
        .flat_map(|s| s.queues.iter())
        .filter(|q| q.queue == Some(1))
        .map(|q| q.writable_descriptors + q.readable_descriptors)
        .sum();
    assert_eq!(q1_writes, 2 * 83 * 4);
}

#[test]
fn full_mode_records_every_descriptor() {
    let s = Scratch::new("full");
    let mut cfg = config(&s.base());
    cfg.mode = AuditMode::Full;
    cfg.checkpoint_every_records = 64;
    let (log, h) = AuditLog::open(cfg, device()).unwrap();
    let (n, bytes) = dmas(&h);
    let key = log.verifier_key().clone();
    log.close().unwrap();
    let f = files(&s.base());
    assert!(verify_paths(&f, &key, false).ok);
    let recs = records(&f[0]);
    let descs = dma_events(&recs);
    assert_eq!(descs.len() as u64, n);
    assert_eq!(descs.iter().map(|d| u64::from(d.len)).sum::<u64>(), bytes);
    for (i, d) in descs.iter().enumerate() {
        let (i, j) = (i as u32, i as u32 / 4);
        assert_eq!(
            (d.queue, d.head, d.addr, d.len, d.writable, d.index),
            (
                (j % 3) as u16,
                (j % 64) as u16,
                0x80_0000_0000 + u64::from(i) * 4096,
                512 + i,
                i % 2 == 1,
                i % 4
            ),
            "descriptor {i}"
        );
    }
    for r in &recs {
        if let Some(Event::DmaBatch(d)) = r.event() {
            assert_eq!((r.class_uid, r.activity_id, r.type_uid), (1004, 99, 100499));
            assert_eq!(r.activity_name, "DMA Batch");
            assert_eq!((r.count, r.size), (Some(d.descriptors()), Some(d.bytes())));
            assert!(d.packed_len() <= MAX_DMA_BATCH_BYTES);
        }
    }
    // The summaries agree with the per-DMA records.
    let summed: u64 = recs
        .iter()
        .filter_map(|r| match r.event() {
            Some(Event::DmaSummary(s)) => Some(s.descriptors()),
            _ => None,
        })
        .sum();
    assert_eq!(summed, n);
}

#[test]
fn full_mode_coalesces_queued_chains_into_records_of_bounded_size() {
    let s = Scratch::new("full-batch");
    let mut cfg = config(&s.base());
    cfg.mode = AuditMode::Full;
    cfg.checkpoint_every_records = 1000;
    let (log, h) = AuditLog::open(cfg, device()).unwrap();
    // Held paused, the writer finds all 1500 chains (6000 descriptors, 23 packed bytes a
    // chain: 3 of header, 8 for the first descriptor, 4 for each of the others) queued at
    // once, one message a chain.
    let mut one = PackedChains::new(DMA_FORMAT);
    one.push_chain(
        2,
        63,
        (0..4u32).map(|i| (0x80_0000_0000 + u64::from(i) * 4096, 7000 + i, i % 2 == 1)),
    )
    .unwrap();
    assert_eq!(one.packed_len(), 23);
    let pause = h.pause().unwrap();
    let n: u64 = (0..6).map(|_| dmas(&h).0).sum();
    h.finding(&finding(0)).unwrap();
    drop(pause);
    let key = log.verifier_key().clone();
    log.close().unwrap();
    let f = files(&s.base());
    assert!(verify_paths(&f, &key, false).ok);
    let recs = records(&f[0]);
    let sizes = dma_record_sizes(&recs);
    // Whole chains, up to MAX_DMA_BATCH_BYTES of packed data a record: 1424 chains of 23
    // bytes fit in 32 KiB; the finding queued behind them ends the batch and comes after it.
    assert_eq!(MAX_DMA_BATCH_BYTES, 32 << 10);
    assert_eq!(sizes, [1424 * 4, 76 * 4]);
    assert_eq!(dma_events(&recs).len() as u64, n);
    let kinds = dma_and_finding_kinds(&recs);
    assert_eq!(kinds, ["dma", "dma", "finding"]);
}

#[test]
fn full_mode_batches_are_split_into_bounded_records_in_order() {
    let s = Scratch::new("full-batches");
    let mut cfg = config(&s.base());
    cfg.mode = AuditMode::Full;
    let (log, h) = AuditLog::open(cfg, device()).unwrap();
    let pause = h.pause().unwrap();
    let chain =
        |i: u32, n: u32| (0..n).map(move |d| (u64::from(i * 10000 + d) << 12, 512, d % 2 == 1));
    {
        // 64 chains of 10: the batch sends itself when full.
        let mut b = h.dma_batch();
        for i in 0..64 {
            b.record_chain(0, i as u16, chain(i, 10)).unwrap();
        }
        // One chain longer than a record may hold (36,008 packed bytes), then 5 chains
        // left for the drop to send.
        b.record_chain(1, 7, chain(64, 9000)).unwrap();
        for i in 65..70 {
            b.record_chain(0, i as u16, chain(i, 2)).unwrap();
        }
    }
    h.finding(&finding(0)).unwrap();
    drop(pause);
    let key = log.verifier_key().clone();
    log.close().unwrap();
    let f = files(&s.base());
    assert!(verify_paths(&f, &key, false).ok);
    let recs = records(&f[0]);
    let sizes = dma_record_sizes(&recs);
    // The 64 chains of 10 cannot share a record with the long chain, which is a record of
    // its own; then the last 5.
    assert_eq!(sizes, [640, 9000, 10]);
    let events = dma_events(&recs);
    let mut heads: Vec<u16> = events
        .iter()
        .filter(|e| e.index == 0)
        .map(|e| e.head)
        .collect();
    heads.dedup();
    let mut expected: Vec<u16> = (0..64).collect();
    expected.push(7);
    expected.extend(65..70);
    assert_eq!(heads, expected, "every chain once, in the device's order");
    // Every descriptor of the long chain, in chain order.
    let long: Vec<u64> = events
        .iter()
        .filter(|e| e.queue == 1)
        .map(|e| e.addr)
        .collect();
    assert_eq!(long, chain(64, 9000).map(|d| d.0).collect::<Vec<_>>());
    let kinds = dma_and_finding_kinds(&recs);
    assert_eq!(kinds, ["dma", "dma", "dma", "finding"]);
}

#[test]
fn in_full_mode_a_full_queue_holds_the_device_back_and_no_dma_is_dropped() {
    let s = Scratch::new("full-backpressure");
    let mut cfg = config(&s.base());
    cfg.mode = AuditMode::Full;
    cfg.queue_capacity = 4;
    let (log, h) = AuditLog::open(cfg, device()).unwrap();
    const PASSES: u32 = 10_000;
    let pause = h.pause().unwrap();
    let passes = Arc::new(AtomicU64::new(0));
    let (h2, passes2) = (h.clone(), Arc::clone(&passes));
    // The device: 10,000 passes of 3 chains (about 48 packed bytes a pass). They reach the
    // writer as messages of up to a record's 32 KiB, so the queue of 4 and what the device
    // carries hold about 3,400 passes.
    let device = std::thread::spawn(move || {
        for p in 0..PASSES {
            let mut b = h2.dma_batch();
            for c in 0..3u32 {
                let i = p * 3 + c;
                let at = 0x80_0000_0000 + u64::from(i) * 0x1000;
                b.record_chain(
                    0,
                    (i % 256) as u16,
                    [(at, 16, false), (at + 16, 4096, true)],
                )
                .unwrap();
            }
            b.flush().unwrap();
            passes2.fetch_add(1, Ordering::SeqCst);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    // The writer is stalled: the device got as far as the queue and its carry hold, and
    // waits there.
    let stalled = passes.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(passes.load(Ordering::SeqCst), stalled);
    assert!((1000..u64::from(PASSES)).contains(&stalled), "{stalled}");
    assert!(!device.is_finished());
    drop(pause);
    device.join().unwrap();
    let key = log.verifier_key().clone();
    log.close().unwrap();
    let f = files(&s.base());
    assert!(verify_paths(&f, &key, false).ok);
    let events = dma_events(&records(&f[0]));
    let addrs: Vec<u64> = events
        .iter()
        .filter(|e| !e.writable)
        .map(|e| e.addr)
        .collect();
    let expected: Vec<u64> = (0..3 * u64::from(PASSES))
        .map(|i| 0x80_0000_0000 + i * 0x1000)
        .collect();
    assert_eq!(addrs, expected, "every chain recorded, in order");
    assert_eq!(events.len() as u64, 6 * u64::from(PASSES));
}

#[test]
fn records_carry_the_transcript_hash_once_it_is_set() {
    let s = Scratch::new("transcript");
    let (log, h) = AuditLog::open(config(&s.base()), device()).unwrap();
    h.finding(&finding(0)).unwrap();
    h.set_transcript_hash([0x5a; 32]).unwrap();
    h.attestation_verdict(AttestationVerdict {
        passed: false,
        reason: "report data does not bind the transcript".into(),
        evidence: b"evidence bytes".to_vec(),
        transcript: b"transcript bytes".to_vec(),
        ear: None,
    })
    .unwrap();
    h.config_change(ConfigChange::Reset {
        reason: "driver wrote 0".into(),
    })
    .unwrap();
    h.peripheral(PeripheralEvent {
        action: PeripheralAction::Disconnect,
        peer: "client".into(),
        session: Some(serde_json::json!({"dma_descriptors": 12})),
    })
    .unwrap();
    log.close().unwrap();
    let recs = records(&files(&s.base())[0]);
    let by_class = |c: u32| recs.iter().find(|r| r.class_uid == c).unwrap();
    assert_eq!(by_class(2004).unmapped.transcript_sha256, NO_TRANSCRIPT);
    let verdict = by_class(2003);
    assert_eq!(verdict.unmapped.transcript_sha256, [0x5a; 32]);
    assert_eq!(verdict.severity_id, 4);
    assert_eq!(verdict.compliance.as_ref().unwrap().status, "Fail");
    let a = verdict.unmapped.attestation.as_ref().unwrap();
    assert_eq!(a.evidence, b"evidence bytes");
    assert_eq!(a.transcript, b"transcript bytes");
    assert_eq!(by_class(5019).unmapped.transcript_sha256, [0x5a; 32]);
    assert_eq!(by_class(1010).activity_id, 2);
}

#[test]
fn the_signing_key_is_created_0600_with_its_verifier_beside_it_and_reused() {
    let s = Scratch::new("keys");
    let mut cfg = config(&s.base());
    cfg.key_path = Some(s.0.join("keys").join("signing.pk8"));
    let (log, _h) = AuditLog::open(cfg.clone(), device()).unwrap();
    let key1 = log.verifier_key().clone();
    log.close().unwrap();
    let k = s.0.join("keys/signing.pk8");
    assert_eq!(
        std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pubtext = std::fs::read_to_string(s.0.join("keys/signing.pk8.pub")).unwrap();
    assert_eq!(VerifierKey::parse(pubtext.trim()).unwrap(), key1);
    assert!(pubtext.starts_with("swiotlb-audit/test-dev-0+"));
    let (log, _h) = AuditLog::open(cfg.clone(), device()).unwrap();
    assert_eq!(log.verifier_key(), &key1);
    log.close().unwrap();
    // A file that is not a key is refused, not replaced.
    std::fs::write(&k, b"not a key").unwrap();
    assert!(matches!(
        AuditLog::open(cfg, device()),
        Err(AuditError::Key { .. })
    ));
    assert_eq!(std::fs::read(&k).unwrap(), b"not a key");
}

#[test]
fn key_errors_say_which_file_and_what_is_wrong() {
    let s = Scratch::new("keyerr");
    let mut cfg = config(&s.base());
    cfg.origin = Some("two words".into());
    let err = AuditLog::open(cfg, device())
        .err()
        .expect("a bad origin must refuse");
    let AuditError::Key(KeyError::Origin { path, source }) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(path, &s.0.join("audit.key"));
    assert!(matches!(source, NoteError::BadKey(_)), "{source:?}");

    std::fs::write(s.0.join("audit.key"), b"not a key").unwrap();
    let err = AuditLog::open(config(&s.base()), device()).err().unwrap();
    assert!(
        matches!(&err, AuditError::Key(KeyError::NotEd25519 { path }) if path == &s.0.join("audit.key")),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("not an Ed25519 PKCS#8 key"),
        "{err}"
    );
}

#[test]
fn bad_configurations_are_refused() {
    let s = Scratch::new("badcfg");
    let mut c = AuditConfig::new(s.base());
    c.queue_capacity = 0;
    assert!(matches!(
        AuditLog::open(c, device()),
        Err(AuditError::Config(_))
    ));
    let mut c = AuditConfig::new(s.base());
    c.checkpoint_every = Duration::ZERO;
    assert!(matches!(
        AuditLog::open(c, device()),
        Err(AuditError::Config(_))
    ));
}
