//! Helpers shared by the audit-log tests (here and the `swiotlb-audit` tool's, which include
//! this module by path): scratch directories, a log written with known records, line-level
//! file surgery, and verification; [`proofs`] holds the naive RFC 6962 computation.
#![allow(dead_code)]

pub mod proofs;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use swiotlb_host::audit::{discover, AuditConfig, AuditHandle, AuditLog};
use swiotlb_host::findings::{Finding, FindingKind};
use swiotlb_shared::audit::verify::{verify_files, Options, Report};
use swiotlb_shared::audit::{DeviceIdentity, VerifierKey};

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "swiotlb-audit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn base(&self) -> PathBuf {
        self.0.join("audit.jsonl")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn device() -> DeviceIdentity {
    DeviceIdentity {
        uid: "test-dev-0".into(),
        name: "virtio-blk swiotlb".into(),
    }
}

/// Checkpoints every 4 records, a long interval (so tests control them), no rotation.
pub fn config(base: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(base);
    c.checkpoint_every_records = 4;
    c.checkpoint_every = Duration::from_secs(3600);
    c.rotate_bytes = None;
    c
}

pub fn finding(i: u64) -> Finding {
    Finding::new(
        FindingKind::DescriptorOutsidePool,
        format!("test finding {i}"),
    )
    .at(0, Some((i % 256) as u16))
    .range(0x8000_0000_0000 + i * 4096, 4096)
}

/// Writes `n` findings and closes the log.
pub fn write_findings(cfg: AuditConfig, n: u64) -> VerifierKey {
    let (log, h) = AuditLog::open(cfg, device()).unwrap();
    send_findings(&h, 0, n);
    let key = log.verifier_key().clone();
    log.close().unwrap();
    key
}

/// 250 chains of 4 descriptors: chain `j` on queue `j % 3` with head `j % 64`, descriptor
/// `i` (over all chains) at `0x80_0000_0000 + i * 4096`, `512 + i` bytes, writable when
/// `i` is odd.
pub fn dmas(h: &AuditHandle) -> (u64, u64) {
    let (mut n, mut bytes) = (0, 0);
    for j in 0..250u32 {
        let chain =
            (4 * j..4 * j + 4).map(|i| (0x80_0000_0000 + u64::from(i) * 4096, 512 + i, i % 2 == 1));
        h.record_chain((j % 3) as u16, (j % 64) as u16, chain)
            .unwrap();
        for i in 4 * j..4 * j + 4 {
            n += 1;
            bytes += u64::from(512 + i);
        }
    }
    (n, bytes)
}

pub fn send_findings(h: &AuditHandle, from: u64, n: u64) {
    for i in from..from + n {
        h.finding(&finding(i)).unwrap();
    }
}

/// A closed log of `n` findings in one file: its scratch directory, the file and the key.
pub fn closed_log(tag: &str, n: u64) -> (Scratch, std::path::PathBuf, VerifierKey) {
    let s = Scratch::new(tag);
    let key = write_findings(config(&s.base()), n);
    let f = files(&s.base());
    assert_eq!(f.len(), 1);
    let path = f[0].clone();
    (s, path, key)
}

pub fn files(base: &Path) -> Vec<PathBuf> {
    discover(base)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

pub fn lines(path: &Path) -> Vec<Vec<u8>> {
    let data = fs::read(path).unwrap();
    let mut v: Vec<Vec<u8>> = data.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    if v.last().is_some_and(Vec::is_empty) {
        v.pop();
    }
    v
}

pub fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    fs::write(path, out).unwrap();
}

pub fn verify_paths(paths: &[PathBuf], key: &VerifierKey, live: bool) -> Report {
    let data: Vec<(String, Vec<u8>)> = paths
        .iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read(p).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    verify_files(&refs, key, Options { live })
}

/// Parsed records of a file.
pub fn records(path: &Path) -> Vec<swiotlb_shared::audit::Record> {
    lines(path)
        .iter()
        .map(|l| swiotlb_shared::audit::Record::parse(l).unwrap())
        .collect()
}

/// Index of the first line (after `from`) that is not a checkpoint.
pub fn event_line(path: &Path, from: usize) -> usize {
    records(path)
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, r)| r.checkpoint_note().is_none())
        .map(|(i, _)| i)
        .unwrap()
}
