//! The fuzz inputs reach what they are meant to reach, and every harness survives fixed and
//! pseudo-random inputs in the normal test run (the fuzzer goes much further).

use super::device::prelude;
use super::rings::{run_chains, run_used, ChainInput, UsedInput};
use super::wire::{ClientSession, WireMessage};
use super::*;
use swiotlb_shared::descriptor::{Descriptor, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use swiotlb_shared::vfio_user::{Header, HEADER_SIZE};

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % max;
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn every_harness_survives_fixed_and_pseudo_random_inputs() {
    for (name, harness) in HARNESSES {
        let mut rng = Rng(0x5eed ^ name.len() as u64);
        let fixed: [&[u8]; 4] = [&[], &[0; 64], &[0xff; 64], b"\n{}\n{\"seq\":1}\n"];
        for input in fixed {
            harness(input);
        }
        let rounds = if name.starts_with("vfio_user") {
            60
        } else {
            300
        };
        for _ in 0..rounds {
            harness(&rng.bytes(2048));
        }
    }
}

#[test]
fn a_client_session_starts_with_version_and_frames_well_formed_headers() {
    let s = ClientSession {
        no_version: false,
        messages: vec![
            WireMessage {
                command: 3,
                flags: 0,
                lie_about_size: None,
                payload: vec![1, 2, 3],
            },
            WireMessage {
                command: 9,
                flags: 0,
                lie_about_size: None,
                payload: Vec::new(),
            },
        ],
        trailing: Vec::new(),
    };
    let bytes = s.frame();
    let mut at = 0;
    let mut commands = Vec::new();
    while at < bytes.len() {
        let h = Header::decode(bytes[at..at + HEADER_SIZE].try_into().unwrap()).unwrap();
        commands.push(h.command);
        at += HEADER_SIZE + h.payload_len();
    }
    assert_eq!(at, bytes.len());
    // VERSION (1), then the table's entries 3 and 9.
    assert_eq!(commands, vec![1, 4, 10]);
}

#[test]
fn the_live_prelude_reaches_driver_ok_with_the_pool_placed() {
    let mut f = memfd_function(None);
    prelude(&mut f);
    let s = f.summary();
    assert_eq!(s.status, 0x0f, "{s:?}");
    assert_eq!(f.pool().bus_address(), Some(0x80_0000_0000));
}

/// A pool holding one two-descriptor chain at the table's start.
fn good_chain() -> ChainInput {
    let mut contents = vec![0u8; 4096];
    let base = 0x80_0000_0000u64;
    // desc 0: readable 16 bytes at +0x800, NEXT -> 1; desc 1: writable 1 byte at +0x900.
    let descs = [
        Descriptor {
            addr: base + 0x800,
            len: 16,
            flags: VIRTQ_DESC_F_NEXT,
            next: 1,
        },
        Descriptor {
            addr: base + 0x900,
            len: 1,
            flags: VIRTQ_DESC_F_WRITE,
            next: 0,
        },
    ];
    for (d, entry) in descs
        .iter()
        .zip(contents.chunks_exact_mut(Descriptor::SIZE))
    {
        entry.copy_from_slice(&d.to_bytes());
    }
    ChainInput {
        queue_size_log2: 4,
        desc_table: 0,
        head: 0,
        indirect: false,
        contents,
    }
}

#[test]
fn the_chain_input_reaches_an_accepted_chain_and_a_rejected_one() {
    assert_eq!(run_chains(&good_chain()), Some(2));
    let mut outside = good_chain();
    outside.contents[0..8].copy_from_slice(&0x1000u64.to_le_bytes());
    assert_eq!(run_chains(&outside), None);
    let mut table_outside = good_chain();
    table_outside.desc_table = 0x10_0000;
    assert_eq!(run_chains(&table_outside), None);
}

#[test]
fn the_used_input_delivers_a_well_behaved_devices_completions_and_stops_on_nonsense() {
    let good = UsedInput {
        posts: vec![vec![(15, true)], vec![(31, true)]],
        batches: vec![(2, vec![(0, 16), (1, 32)])],
        scribble: 0,
    };
    assert_eq!(run_used(&good), 2);
    let never_posted = UsedInput {
        posts: vec![vec![(15, true)]],
        batches: vec![(1, vec![(9, 16)])],
        scribble: 0,
    };
    assert_eq!(run_used(&never_posted), 0);
}

#[test]
fn every_harness_has_a_fuzz_target_and_every_target_a_harness() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("fuzz/fuzz_targets");
    let mut targets: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    targets.sort();
    let mut names: Vec<String> = HARNESSES.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(targets, names);
    let manifest = std::fs::read_to_string(dir.parent().unwrap().join("Cargo.toml")).unwrap();
    for n in &names {
        assert!(
            manifest.contains(&format!("name = \"{n}\"")),
            "{n} not in fuzz/Cargo.toml"
        );
    }
}

#[test]
fn real_crls_and_jwts_reach_their_checks() {
    use swiotlb_attest::crl::Crl;
    use swiotlb_attest::ear::{EarAlg, EarSigner};
    let pki =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../attest/tests/data/test-pki");
    for f in [
        "amd/crl.der",
        "amd/crl-ask-revoked.der",
        "intel/pck-crl.der",
    ] {
        let der = std::fs::read(pki.join(f)).expect("test CRL");
        assert!(Crl::from_der(&der, "CRL").is_ok(), "{f} parses");
        evidence::crl(&der);
    }
    let signer = EarSigner::from_pkcs8(&EarSigner::generate_pkcs8(EarAlg::EdDsa).unwrap()).unwrap();
    let jwt = signer
        .sign(&serde_json::json!({ "eat_profile": "x" }))
        .unwrap();
    evidence::ear_jwt(jwt.as_bytes());
}

#[test]
fn the_dma_batch_harness_takes_well_formed_packings_and_refuses_the_rest() {
    use swiotlb_shared::audit::PackedChains;

    let mut p = PackedChains::default();
    p.push_chain(
        0,
        3,
        [(0x80_0000_0000, 16, false), (0x80_0000_0800, 4096, true)],
    )
    .unwrap();
    p.push_chain(1, 9, []).unwrap();
    let good = p.as_bytes().to_vec();
    assert!(PackedChains::from_bytes(good.clone()).is_ok());
    audit::dma_batch(&good);
    // One byte short, one byte over, a reserved flag: each refused, none a panic.
    let mut flag = good.clone();
    flag[20] = 2;
    for bad in [
        &good[..good.len() - 1],
        &[good.as_slice(), &[0]].concat(),
        &flag,
    ] {
        assert!(PackedChains::from_bytes(bad.to_vec()).is_err());
        audit::dma_batch(bad);
    }
}

#[test]
fn the_dma_batch_harness_takes_well_formed_varint_packings_and_refuses_the_rest() {
    use swiotlb_shared::audit::batch::BatchFormat;
    use swiotlb_shared::audit::PackedChains;

    let mut p = PackedChains::new(BatchFormat::Varint);
    p.push_chain(
        0,
        3,
        [(0x80_0000_0000, 16, false), (0x80_0000_0800, 4096, true)],
    )
    .unwrap();
    p.push_chain(1, 200, []).unwrap();
    let good = p.as_bytes().to_vec();
    assert!(PackedChains::from_bytes_as(BatchFormat::Varint, good.clone()).is_ok());
    audit::dma_batch(&good);
    // One byte short, one byte over, an overlong count: each refused, none a panic.
    let overlong = [&good[..2], &[0x82, 0x00], &good[3..]].concat();
    for bad in [
        &good[..good.len() - 1],
        &[good.as_slice(), &[0]].concat(),
        &overlong,
    ] {
        assert!(PackedChains::from_bytes_as(BatchFormat::Varint, bad.to_vec()).is_err());
        audit::dma_batch(bad);
    }
}
