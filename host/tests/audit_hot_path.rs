//! The per-DMA summary path allocates nothing (a counting allocator watches this thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use swiotlb_host::audit::{AuditConfig, AuditLog};
use swiotlb_shared::audit::DeviceIdentity;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counter is a
// thread-local `Cell` touched without allocating.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn record_chain_in_summary_mode_does_not_allocate() {
    let dir = std::env::temp_dir().join(format!("swiotlb-audit-hot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = AuditConfig::new(dir.join("audit.jsonl"));
    cfg.checkpoint_every = Duration::from_millis(5);
    let dev = DeviceIdentity {
        uid: "hot".into(),
        name: "hot".into(),
    };
    let (log, h) = AuditLog::open(cfg, dev).unwrap();
    let before = ALLOCS.with(Cell::get);
    for i in 0..200_000u32 {
        let chain = (0..3u32).map(|d| (u64::from(i + d) << 12, 4096, d == 1));
        h.record_chain((i % 4) as u16, (i % 256) as u16, chain)
            .unwrap();
    }
    let after = ALLOCS.with(Cell::get);
    assert_eq!(after - before, 0);
    log.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
