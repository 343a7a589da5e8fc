//! Rings from both ends: the host's chain walker over a pool whose every byte the guest
//! chose, and the guest's used-ring handling against a device that writes anything.

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use swiotlb_guest::pool::{Mapping, PoolMemory};
use swiotlb_guest::ring::{Segment, SplitRing};
use swiotlb_host::virtio::chain::ChainContext;
use swiotlb_shared::layout::{PoolLayout, PoolWindow, MIN_POOL_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Bus address of the fuzzed pools.
const BASE: u64 = 0x80_0000_0000;

/// Size of the host-side pool the chain walker sees.
const CHAIN_POOL: usize = 16 * 1024;

/// A guest-chosen pool and where the walk starts.
#[derive(Arbitrary, Debug)]
pub struct ChainInput {
    /// log2 of the queue size (taken modulo 9: 1 to 256).
    pub queue_size_log2: u8,
    /// Where the descriptor table is, as an offset into the pool (may lie outside it).
    pub desc_table: u32,
    /// The head to walk.
    pub head: u16,
    /// Whether indirect descriptors were negotiated.
    pub indirect: bool,
    /// Pool contents (repeated to fill the pool).
    pub contents: Vec<u8>,
}

/// The host's chain walker: whatever the pool holds, a chain it accepts lies wholly in
/// the pool, readable before writable, and never longer than allowed.
pub fn chains(data: &[u8]) {
    if let Ok(input) = ChainInput::arbitrary_take_rest(Unstructured::new(data)) {
        run_chains(&input);
    }
}

/// [`chains`] on a structured input: the number of descriptors of the accepted chain.
pub fn run_chains(input: &ChainInput) -> Option<usize> {
    thread_local! {
        static MEM: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(BASE), CHAIN_POOL)])
                .expect("anonymous pool");
    }
    MEM.with(|mem| {
        // Every byte of the pool from this input alone (zeros when it gives none).
        let fill: Vec<u8> = if input.contents.is_empty() {
            vec![0; CHAIN_POOL]
        } else {
            input
                .contents
                .iter()
                .copied()
                .cycle()
                .take(CHAIN_POOL)
                .collect()
        };
        mem.write_slice(&fill, GuestAddress(BASE)).expect("fill");
        check_chain(mem, input)
    })
}

fn check_chain(mem: &GuestMemoryMmap<()>, input: &ChainInput) -> Option<usize> {
    let window = PoolWindow::new(BASE, CHAIN_POOL as u64).expect("window");
    let queue_size = 1u16 << (input.queue_size_log2 % 9);
    let ctx = ChainContext {
        mem,
        window,
        desc_table: BASE.wrapping_add(u64::from(input.desc_table)),
        queue_size,
        indirect: input.indirect,
        queue: 0,
    };
    let chain = ctx.check(input.head).ok()?;
    let all: Vec<_> = chain.readable().iter().chain(chain.writable()).collect();
    assert!(!all.is_empty(), "an accepted chain has a descriptor");
    for d in &all {
        assert!(
            window.contains(d.addr, u64::from(d.len)),
            "accepted descriptor outside the pool: {d:?}"
        );
        assert!(d.len > 0, "accepted zero-length descriptor: {d:?}");
    }
    Some(all.len())
}

/// A device's answers to the guest's ring.
#[derive(Arbitrary, Debug)]
pub struct UsedInput {
    /// Requests posted first: (segments, each (length, device-writable)).
    pub posts: Vec<Vec<(u16, bool)>>,
    /// What the device writes: (used index, entries (id, len)), one batch per poll.
    pub batches: Vec<(u16, Vec<(u32, u32)>)>,
    /// Bytes the device scribbles over the used ring's flags and avail_event.
    pub scribble: u32,
}

/// The guest's used-ring handling: whatever the device writes, a completion names a chain
/// in flight, once, and never claims more than was posted to the caller; after an error
/// the ring stays stopped.
pub fn used_ring(data: &[u8]) {
    if let Ok(input) = UsedInput::arbitrary_take_rest(Unstructured::new(data)) {
        run_used(&input);
    }
}

/// [`used_ring`] on a structured input: the completions delivered.
pub fn run_used(input: &UsedInput) -> usize {
    let pool_size = MIN_POOL_SIZE;
    let layout = PoolLayout::new(pool_size, 1, 16).expect("layout");
    let q = layout.queues[0];
    let mem = Arc::new(PoolMemory::new(
        Mapping::anonymous(pool_size as usize).expect("pool mapping"),
    ));
    let window = PoolWindow::new(BASE, pool_size).expect("window");
    let mut ring = SplitRing::new(mem.clone(), window, q, true, true).expect("ring");
    let mut in_flight = std::collections::BTreeMap::new();
    let mut delivered = 0;
    let mut slot = q.slots;
    for segs in input.posts.iter().take(16) {
        let mut v = Vec::new();
        let mut writable = 0u32;
        for &(len, w) in segs.iter().take(8) {
            let len = u32::from(len % 4096) + 1;
            v.push(Segment {
                offset: slot,
                len,
                device_writable: w,
            });
            if w {
                writable += len;
            }
            slot += u64::from(len);
        }
        // Readable before writable, as virtio requires.
        v.sort_by_key(|s| s.device_writable);
        if let Ok(head) = ring.add(&v) {
            in_flight.insert(head, writable);
        }
    }
    for (idx, entries) in input.batches.iter().take(32) {
        for (i, &(id, len)) in entries.iter().take(16).enumerate() {
            let at = q.used + 4 + 8 * (i as u64 % u64::from(q.size));
            let _ = mem.store_u32(at, id);
            let _ = mem.store_u32(at + 4, len);
        }
        let _ = mem.store_u16(q.used, input.scribble as u16);
        let _ = mem.store_u16(q.used + 2, *idx);
        let _ = mem.store_u16(
            q.used + 4 + 8 * u64::from(q.size),
            (input.scribble >> 16) as u16,
        );
        loop {
            match ring.poll_used() {
                Ok(Some(c)) => {
                    delivered += 1;
                    let posted = in_flight
                        .remove(&c.head)
                        .expect("a completion for a chain not in flight");
                    assert_eq!(c.posted_writable, posted, "{c:?}");
                    assert!(c.clamped_len() <= posted, "{c:?}");
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(ring.is_broken(), "an error leaves the ring stopped");
                    assert!(ring.poll_used().is_err(), "a stopped ring stays stopped");
                    return delivered;
                }
            }
        }
    }
    delivered
}
