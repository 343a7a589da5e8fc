//! Every kind of tampering with a closed log is detected, with its reason and the first bad
//! record; an untouched log verifies. (The `swiotlb-audit verify` tool on such logs is
//! tested with the verifiers.)

mod audit_support;

use std::fs;

use audit_support::*;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use swiotlb_shared::audit::event::CheckpointRecord;
use swiotlb_shared::audit::merkle::{leaf_hash, CompactRange};
use swiotlb_shared::audit::note::NoteSignature;
use swiotlb_shared::audit::verify::{OpenEnd, Verdict};
use swiotlb_shared::audit::{Checkpoint, Event, Reason, Record, SignedNote, VerifierKey};

#[test]
fn a_log_never_tampered_with_verifies() {
    let (_s, path, key) = closed_log("intact", 30);
    let r = verify_paths(std::slice::from_ref(&path), &key, false);
    assert!(r.ok, "{:?}", r.failure);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let n = lines(&path).len() as u64;
    assert_eq!(r.lines, n);
    // The last line is a checkpoint of everything before it.
    assert_eq!(r.latest.unwrap().size, n - 1);
    for (i, rec) in records(&path).iter().enumerate() {
        assert_eq!(rec.sequence(), i as u64);
    }
}

#[test]
fn an_altered_line_is_named_with_reason_altered() {
    let (_s, path, key) = closed_log("altered", 30);
    let mut l = lines(&path);
    let i = event_line(&path, 10);
    let s = String::from_utf8(l[i].clone()).unwrap();
    assert!(s.contains("test finding"));
    // Still a valid record: only the chain and the checkpoints can tell.
    l[i] = s.replace("test finding", "benign event").into_bytes();
    assert!(Record::parse(&l[i]).is_ok());
    write_lines(&path, &l);
    let f = verify_paths(&[path], &key, false).failure.unwrap();
    assert_eq!(
        (f.reason, f.index, f.line),
        (Reason::Altered, i as u64, i as u64 + 1)
    );
}

#[test]
fn a_line_made_unparseable_is_altered() {
    let (_s, path, key) = closed_log("garbled", 12);
    let mut l = lines(&path);
    let half = l[5].len() / 2;
    l[5].truncate(half);
    write_lines(&path, &l);
    let f = verify_paths(&[path], &key, false).failure.unwrap();
    assert_eq!((f.reason, f.index), (Reason::Altered, 5));
}

#[test]
fn a_deleted_line_is_named_with_reason_deleted() {
    let (_s, path, key) = closed_log("deleted", 30);
    let mut l = lines(&path);
    let i = event_line(&path, 7);
    l.remove(i);
    write_lines(&path, &l);
    let f = verify_paths(&[path], &key, false).failure.unwrap();
    assert_eq!((f.reason, f.index), (Reason::Deleted, i as u64));
}

#[test]
fn a_deleted_checkpoint_line_is_deleted() {
    let (_s, path, key) = closed_log("deleted-cp", 30);
    let mut l = lines(&path);
    let cp = records(&path)
        .iter()
        .enumerate()
        .skip(5)
        .find(|(_, r)| r.checkpoint_note().is_some())
        .map(|(i, _)| i)
        .unwrap();
    l.remove(cp);
    write_lines(&path, &l);
    let f = verify_paths(&[path], &key, false).failure.unwrap();
    assert_eq!((f.reason, f.index), (Reason::Deleted, cp as u64));
}

#[test]
fn swapped_lines_are_named_with_reason_reordered() {
    let (_s, path, key) = closed_log("reordered", 30);
    let mut l = lines(&path);
    let i = event_line(&path, 9);
    l.swap(i, i + 1);
    write_lines(&path, &l);
    let f = verify_paths(&[path], &key, false).failure.unwrap();
    assert_eq!((f.reason, f.index), (Reason::Reordered, i as u64));
}

#[test]
fn a_line_moved_far_back_is_reordered() {
    let (_s, path, key) = closed_log("moved", 30);
    let mut l = lines(&path);
    let i = event_line(&path, 4);
    let moved = l.remove(i);
    l.insert(i + 12, moved);
    write_lines(&path, &l);
    let f = verify_paths(&[path], &key, false).failure.unwrap();
    assert_eq!((f.reason, f.index), (Reason::Reordered, i as u64));
}

#[test]
fn a_log_cut_at_its_end_is_open_with_the_unproven_records_named_never_tampered() {
    // A writer killed mid-way leaves exactly this; so would someone cutting the end off.
    // Nothing in the log tells them apart, so the verdict is "open", naming what no
    // checkpoint proves, and never "tampered".
    let (_s, path, key) = closed_log("truncated", 30);
    let l = lines(&path);
    let cp = records(&path)
        .iter()
        .enumerate()
        .skip(10)
        .find(|(_, r)| r.checkpoint_note().is_some())
        .map(|(i, _)| i)
        .unwrap();
    let open = |live: bool| -> OpenEnd {
        let r = verify_paths(std::slice::from_ref(&path), &key, live);
        assert_eq!(r.ok, live, "open logs are ok only when expected live");
        match r.verdict() {
            Verdict::Open(o) => o,
            v => panic!("expected an open end, got {v:?}"),
        }
    };
    let all = records(&path);
    let last_cp_before = |keep: usize| {
        all[..keep]
            .iter()
            .rposition(|r| r.checkpoint_note().is_some())
            .map(|i| i as u64)
    };
    // Cut at a line boundary: the final checkpoint, then the stop record, then more, gone.
    for keep in [l.len() - 1, l.len() - 2, l.len() - 5] {
        write_lines(&path, &l[..keep]);
        let o = open(false);
        let proven = last_cp_before(keep).unwrap();
        assert_eq!(o.proven, Some(proven), "{keep}");
        assert_eq!(o.first_unproven, proven + 1, "{keep}");
        assert_eq!(o.unproven, keep as u64 - proven - 1, "{keep}");
        assert!(!o.torn);
        // Only the first cut keeps the stop record (its checkpoint is what is missing).
        assert_eq!(o.stop_record, keep == l.len() - 1, "{keep}");
    }
    // Cut in the middle of a line: the torn line is named, the complete ones counted.
    write_lines(&path, &l);
    let data = fs::read(&path).unwrap();
    fs::write(&path, &data[..data.len() - 40]).unwrap();
    let o = open(false);
    assert!(o.torn);
    let proven = last_cp_before(l.len() - 1).unwrap();
    assert_eq!(
        (o.first_unproven, o.unproven),
        (proven + 1, l.len() as u64 - 2 - proven)
    );
    // Cut right after a checkpoint in the middle: all proven, no stop record.
    write_lines(&path, &l[..=cp]);
    let o = open(false);
    assert_eq!(
        (o.proven, o.first_unproven, o.unproven, o.stop_record),
        (Some(cp as u64), cp as u64 + 1, 0, false)
    );
    // The same prefix is a valid live log, still open.
    let o = open(true);
    assert_eq!(o.unproven, 0);
}

#[test]
fn a_rotated_file_cut_short_is_still_tampered() {
    // Only the last file may be open: a file the writer rotated away from ends with its
    // checkpoint, always.
    let s = Scratch::new("cut-rotated");
    let mut cfg = config(&s.base());
    cfg.rotate_bytes = Some(4096);
    let key = write_findings(cfg, 120);
    let f = files(&s.base());
    assert!(f.len() >= 3, "{} files", f.len());
    let l = lines(&f[0]);
    write_lines(&f[0], &l[..l.len() - 1]);
    let r = verify_paths(&f, &key, false);
    match r.verdict() {
        Verdict::Tampered(fail) => assert_eq!(fail.reason, Reason::Truncated, "{fail}"),
        v => panic!("expected tampered, got {v:?}"),
    }
    assert!(!verify_paths(&f, &key, true).ok);
}

/// Rewrites the whole log consistently (chain and roots) and signs every checkpoint with
/// `kp` under `name`: a forgery only the key can reveal.
fn resign(path: &std::path::Path, kp: &Ed25519KeyPair, name: &str, alter: Option<usize>) {
    let pk: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
    let vk = VerifierKey::new(name, pk).unwrap();
    let mut tree = CompactRange::new();
    let mut prev = [0u8; 32];
    let mut out = Vec::new();
    for (i, r) in records(path).into_iter().enumerate() {
        let mut env = r.envelope();
        env.prev_leaf = prev;
        let mut ev = r.event().unwrap();
        if let Event::Checkpoint(_) = ev {
            let text = Checkpoint {
                origin: name.into(),
                size: tree.size(),
                root: tree.root(),
            }
            .body();
            let note = SignedNote {
                text: text.clone(),
                signatures: vec![NoteSignature {
                    name: name.into(),
                    id: vk.id,
                    signature: kp.sign(text.as_bytes()).as_ref().to_vec(),
                }],
            }
            .encode();
            ev = Event::Checkpoint(CheckpointRecord { note });
        }
        if alter == Some(i) {
            if let Event::Finding(f) = &mut ev {
                f.detail = "nothing happened".into();
            }
        }
        let line = Record::build(&env, ev).to_line().into_bytes();
        prev = leaf_hash(&line);
        tree.append(prev);
        out.push(line);
    }
    write_lines(path, &out);
}

#[test]
fn checkpoints_signed_by_another_key_are_named_with_reason_wrong_key() {
    let (_s, path, key) = closed_log("wrongkey", 20);
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let other = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    // Same origin, another key: the forger rewrote and re-signed everything.
    let i = event_line(&path, 6);
    resign(&path, &other, &key.name, Some(i));
    let f = verify_paths(std::slice::from_ref(&path), &key, false)
        .failure
        .unwrap();
    // The first checkpoint (after the start record) is the first bad record.
    assert_eq!((f.reason, f.index), (Reason::WrongKey, 1), "{f}");
    // Under the forger's key the forgery is self-consistent: only the key reveals it.
    let pk: [u8; 32] = other.public_key().as_ref().try_into().unwrap();
    let fk = VerifierKey::new(&key.name, pk).unwrap();
    assert!(verify_paths(&[path], &fk, false).ok);
}

#[test]
fn a_checkpoint_whose_root_was_changed_fails_its_signature() {
    // Rewritten records with checkpoint roots recomputed, but the original signatures kept:
    // the signature no longer verifies.
    let (_s, path, key) = closed_log("badsig", 20);
    let mut l = lines(&path);
    let cp = records(&path)
        .iter()
        .enumerate()
        .skip(3)
        .find(|(_, r)| r.checkpoint_note().is_some())
        .map(|(i, _)| i)
        .unwrap();
    let s = String::from_utf8(l[cp].clone()).unwrap();
    let r = Record::parse(s.as_bytes()).unwrap();
    let note = r.checkpoint_note().unwrap();
    let n = SignedNote::parse(note).unwrap();
    let mut c = Checkpoint::parse(&n.text).unwrap();
    c.root[0] ^= 1;
    let forged = SignedNote {
        text: c.body(),
        signatures: n.signatures.clone(),
    }
    .encode();
    let mut env = r.envelope();
    env.prev_leaf = r.unmapped.prev_leaf;
    l[cp] = Record::build(&env, Event::Checkpoint(CheckpointRecord { note: forged }))
        .to_line()
        .into_bytes();
    write_lines(&path, &l);
    let f = verify_paths(&[path], &key, false).failure.unwrap();
    assert_eq!((f.reason, f.index), (Reason::Altered, cp as u64), "{f}");
    assert!(f.detail.contains("does not verify"), "{f}");
}

#[test]
fn a_dma_address_changed_inside_a_batch_record_is_altered() {
    use swiotlb_host::audit::{AuditLog, AuditMode};
    use swiotlb_shared::audit::encoding::base64;
    use swiotlb_shared::audit::PackedChains;

    let s = Scratch::new("batch-altered");
    let mut cfg = config(&s.base());
    cfg.mode = AuditMode::Full;
    let (log, h) = AuditLog::open(cfg, device()).unwrap();
    dmas(&h);
    send_findings(&h, 0, 3);
    let key = log.verifier_key().clone();
    log.close().unwrap();
    let path = files(&s.base()).remove(0);
    assert!(verify_paths(std::slice::from_ref(&path), &key, false).ok);
    let recs = records(&path);
    let i = recs
        .iter()
        .position(|r| matches!(r.event(), Some(Event::DmaBatch(_))))
        .unwrap();
    let Some(Event::DmaBatch(batch)) = recs[i].event() else {
        unreachable!()
    };
    // Move the first DMA one page: the batch is still well formed, its totals unchanged.
    let mut moved = PackedChains::new(batch.format());
    for (n, c) in batch.iter().enumerate() {
        let descs = c.descriptors().enumerate().map(|(i, d)| {
            let at = if n == 0 && i == 0 {
                d.addr ^ 0x1000
            } else {
                d.addr
            };
            (at, d.len, d.writable)
        });
        moved.push_chain(c.queue, c.head, descs).unwrap();
    }
    assert_eq!(
        (moved.chains(), moved.descriptors(), moved.bytes()),
        (batch.chains(), batch.descriptors(), batch.bytes())
    );
    let data = moved.as_bytes().to_vec();
    assert_ne!(data, batch.as_bytes());
    let mut l = lines(&path);
    let line = String::from_utf8(l[i].clone()).unwrap();
    let from = base64(batch.as_bytes());
    assert!(line.contains(&from));
    l[i] = line.replace(&from, &base64(&data)).into_bytes();
    assert!(Record::parse(&l[i]).is_ok(), "still a valid record");
    write_lines(&path, &l);
    let f = verify_paths(&[path], &key, false).failure.unwrap();
    assert_eq!(
        (f.reason, f.index, f.line),
        (Reason::Altered, i as u64, i as u64 + 1)
    );
}
