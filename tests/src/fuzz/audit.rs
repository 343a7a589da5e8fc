//! Audit logs as an attacker with write access to the files could leave them: every line
//! parsed, every file verified. Verification gives a report, never a panic, and never
//! calls a log intact that it could not parse.

use swiotlb_shared::audit::verify::{verify_files, Options};
use swiotlb_shared::audit::{Record, VerifierKey};

/// The key the target verifies against (a fixed, otherwise unused public key).
fn key() -> VerifierKey {
    VerifierKey::new("swiotlb-audit/fuzz", [7u8; 32]).expect("key")
}

/// Lines parsed one by one, then the input verified as one file and as two (split at the
/// first byte's position).
pub fn audit_log(data: &[u8]) {
    // Complete lines only: a torn last line is the writer's crash signature, which live
    // verification tolerates.
    let mut unparsable = false;
    let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    for line in data[..complete].split(|b| *b == b'\n') {
        if !line.is_empty() && Record::parse(line).is_err() {
            unparsable = true;
        }
    }
    let key = key();
    for live in [false, true] {
        let r = verify_files(&[("audit.000001.jsonl", data)], &key, Options { live });
        if unparsable && !live {
            assert!(!r.ok, "a log with an unparsable line verified");
        }
    }
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(cut);
    let _ = verify_files(
        &[("audit.000001.jsonl", a), ("audit.000002.jsonl", b)],
        &key,
        Options { live: false },
    );
}

/// Bytes as the packed chains of a DMA batch, in each packed form: refused with an error, or
/// accepted and then exactly what packing its own chains gives back, with totals that match
/// its expansion, and the same chains again when repacked in the other form.
pub fn dma_batch(data: &[u8]) {
    use swiotlb_shared::audit::batch::{expand_packed, BatchFormat, PackedChains};

    for format in BatchFormat::ALL {
        let Ok(p) = PackedChains::from_bytes_as(format, data.to_vec()) else {
            continue;
        };
        let mut again = PackedChains::new(format);
        for c in p.iter() {
            let descs = c.descriptors().map(|d| (d.addr, d.len, d.writable));
            again
                .push_chain(c.queue, c.head, descs)
                .expect("a parsed chain packs again");
        }
        assert_eq!(
            again, p,
            "accepted bytes are the packing of their own chains"
        );
        let dmas = expand_packed(&p, 0, 0);
        assert_eq!(dmas.len() as u64, p.descriptors());
        let bytes: u64 = dmas.iter().map(|d| u64::from(d.len)).sum();
        assert_eq!(bytes, p.bytes());
        for other in BatchFormat::ALL {
            let mut x = PackedChains::new(other);
            x.append(&p);
            let back = PackedChains::from_bytes_as(other, x.as_bytes().to_vec())
                .expect("a repacked batch parses in its form");
            assert_eq!(
                expand_packed(&back, 0, 0),
                dmas,
                "the same DMAs in every form"
            );
        }
    }
}
