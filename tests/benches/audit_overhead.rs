//! Audit overhead: 4 KiB reads at queue depth 32 through the whole pair (vfio-user client,
//! bounce slots, checked chains, disk in the page cache), with the audit log off, in
//! `summary` mode and in `full` mode. The three modes run interleaved in one process, round
//! after round, and the figures are reported as ratios to "off" measured in the same run:
//! these machines are shared and noisy, so absolute numbers move, ratios much less.
//!
//! `cargo bench -p swiotlb-tests --bench audit_overhead [-- --quick]`. Never a pass/fail test.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::{BlockDriver, Options};
use swiotlb_host::audit::{AuditConfig, AuditLog, AuditMode};
use swiotlb_host::devices::block::{disk::DiskImage, Block};
use swiotlb_host::vfio_user::Server;
use swiotlb_host::virtio::Policy;
use swiotlb_host::VirtioPciFunction;
use swiotlb_shared::audit::schema::DeviceIdentity;

const DISK: u64 = 64 << 20;
const QD: usize = 32;
const IO: usize = 4096;

/// One mode: a host thread serving one client, and that client's driver.
struct Rig {
    name: &'static str,
    drv: BlockDriver<VfioUserClient>,
    offsets: Vec<(u64, usize)>,
    buf: Vec<u8>,
}

fn rig(dir: &Path, name: &'static str, mode: Option<AuditMode>) -> Rig {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let disk = sub.join("disk.img");
    std::fs::write(&disk, vec![0x11u8; DISK as usize]).unwrap();
    let socket = sub.join("host.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let image = DiskImage::open(&disk, false).unwrap();
    let f =
        VirtioPciFunction::new(Box::new(Block::new(image)), 16 << 20, Policy::default()).unwrap();
    let (f, log) = match mode {
        None => (f, None),
        Some(m) => {
            let mut cfg = AuditConfig::new(sub.join("audit.jsonl"));
            cfg.mode = m;
            let id = DeviceIdentity {
                uid: name.into(),
                name: "bench".into(),
            };
            let (log, handle) = AuditLog::open(cfg, id).unwrap();
            (f.with_audit(handle), Some(log))
        }
    };
    std::thread::spawn(move || {
        let mut s = Server::new(f);
        let _ = s.run(&listener, Some(1), |_, _, _| {});
        drop(s);
        if let Some(l) = log {
            let _ = l.close();
        }
    });
    let drv = BlockDriver::open(
        VfioUserClient::connect(&socket).unwrap(),
        &Options::default(),
    )
    .unwrap();
    // 32 distinct 4 KiB-aligned offsets spread over the disk (fixed, so every mode reads the
    // same blocks).
    let offsets = (0..QD as u64)
        .map(|i| {
            (
                (i * 7919 * IO as u64) % (DISK - IO as u64) / IO as u64 * IO as u64,
                IO,
            )
        })
        .collect();
    Rig {
        name,
        drv,
        offsets,
        buf: vec![0u8; QD * IO],
    }
}

impl Rig {
    /// Runs batches of 32 for `d` and returns requests per second.
    fn run(&mut self, d: Duration) -> f64 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < d {
            self.drv
                .read_scattered(&self.offsets, &mut self.buf)
                .unwrap();
            n += QD as u64;
        }
        n as f64 / start.elapsed().as_secs_f64()
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, slice) = if quick {
        (3, Duration::from_millis(300))
    } else {
        (9, Duration::from_secs(1))
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rigs = [
        rig(dir.path(), "off", None),
        rig(dir.path(), "summary", Some(AuditMode::Summary)),
        rig(dir.path(), "full", Some(AuditMode::Full)),
    ];
    for r in rigs.iter_mut() {
        r.run(Duration::from_millis(200)); // warm the page cache and the slots
    }
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); rigs.len()];
    for _ in 0..rounds {
        for (i, r) in rigs.iter_mut().enumerate() {
            results[i].push(r.run(slice));
        }
    }
    let med: Vec<f64> = results.iter_mut().map(|v| median(v)).collect();
    println!("audit overhead: 4 KiB reads, queue depth {QD}, {rounds} interleaved rounds of {slice:?} (median)");
    for (r, m) in rigs.iter().zip(&med) {
        println!(
            "  audit {:<8} {:>9.0} IOPS  ratio to off {:.3}",
            r.name,
            m,
            m / med[0]
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "audit_off_iops": med[0],
            "audit_summary_iops": med[1],
            "audit_full_iops": med[2],
            "audit_summary_vs_off": med[1] / med[0],
            "audit_full_vs_off": med[2] / med[0],
        })
    );
}
