//! Full mode's hand-off from the device to the writer: the chains of a pass packed into the
//! thread's pass buffer ([`DmaBatch`]), appended to the chains carried for the writer
//! (`Carry`, in record buffers the writer hands back: `SpareBuffers`), which takes them
//! every few milliseconds or receives them through the queue when they would grow past a
//! record.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use swiotlb_shared::audit::batch::BatchFormat;
use swiotlb_shared::audit::PackedChains;

use super::{AuditError, AuditHandle, Msg, MAX_DMA_BATCH_BYTES};

/// Chains a full-mode batch holds before it hands them to the writer on its own.
pub const DMA_BATCH_CHAINS: usize = 64;

/// The chains of one pass over a queue, on their way to the writer (see
/// [`AuditHandle::dma_batch`]). Whatever is left is sent when the batch is dropped, so a
/// finding the device records after the pass lands after the chains that preceded it.
pub struct DmaBatch<'a> {
    handle: &'a AuditHandle,
    chains: PackedChains,
}

/// The packed form the device writes (`docs/audit-schema.md`, "DMA batch"): a chain of three
/// descriptors in ~20 bytes rather than 47, so the writer base64-encodes, hashes and writes
/// less than half as much per chain.
pub const DMA_FORMAT: BatchFormat = BatchFormat::Varint;

/// Packed bytes a pass's batch starts with room for: 64 chains of three descriptors in the
/// fixed form, more than enough in the variable-length one.
const PASS_BYTES: usize = DMA_BATCH_CHAINS * (8 + 3 * 13);

thread_local! {
    /// This thread's pass buffer between two passes. A pass's chains are copied into the
    /// carry, so its buffer never leaves the thread that packs into it: kept here, it is
    /// taken back without a lock (a shared pool cost the device two locks a pass, and a
    /// polled pass is a few chains).
    static PASS_BUFFER: Cell<Option<PackedChains>> = const { Cell::new(None) };
}

/// This thread's pass buffer, empty: the one it used last, or a new one.
fn take_pass_buffer() -> PackedChains {
    PASS_BUFFER
        .take()
        .unwrap_or_else(|| PackedChains::with_capacity(DMA_FORMAT, PASS_BYTES))
}

/// Keeps `p`, emptied, as this thread's pass buffer (one grown past a pass's usual size by
/// a long chain is let go).
fn keep_pass_buffer(mut p: PackedChains) {
    if p.format() == DMA_FORMAT && p.capacity() <= 4 * PASS_BYTES {
        p.clear();
        PASS_BUFFER.set(Some(p));
    }
}

/// Record-sized buffers (what the carry holds, [`MAX_DMA_BATCH_BYTES`]) the writer has
/// written, handed back for the carry to fill again: the device then allocates no buffer
/// of that size a record, and the writer frees none (a buffer allocated by one thread and
/// freed by another takes the allocator's shared lock on both).
const SPARE_BUFFERS: usize = 8;

/// The record buffers the writer has emptied (see [`SPARE_BUFFERS`]).
#[derive(Debug, Default)]
pub(crate) struct SpareBuffers(Mutex<Vec<PackedChains>>);

impl SpareBuffers {
    /// An empty buffer with room for a record: a spare one, or a new one.
    pub(super) fn take(&self) -> PackedChains {
        // A poisoned lock (a panic elsewhere aborts the process first) only holds buffers.
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.pop()
            .unwrap_or_else(|| PackedChains::with_capacity(DMA_FORMAT, MAX_DMA_BATCH_BYTES))
    }

    /// Keeps `p`'s buffer, emptied, for the carry to fill again (up to [`SPARE_BUFFERS`]
    /// of them; one of another size is let go).
    pub(crate) fn give(&self, mut p: PackedChains) {
        if p.format() != DMA_FORMAT
            || !(MAX_DMA_BATCH_BYTES..=2 * MAX_DMA_BATCH_BYTES).contains(&p.capacity())
        {
            return;
        }
        p.clear();
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < SPARE_BUFFERS {
            v.push(p);
        }
    }
}

/// The chains the device has checked and the writer has not taken yet, shared by every
/// handle of a log and the writer. Passes are appended here rather than sent one message
/// each: a message a pass cost the two CPUs the queue's slot, the buffer and its recycling
/// once a pass, and a polled queue is taken a few chains a pass. The writer takes what is
/// here when it looks (every few milliseconds while chains arrive), after everything
/// already queued, so the device's order holds. The device sends what is here through the
/// queue instead, as one message, when it would grow past a record
/// ([`MAX_DMA_BATCH_BYTES`]; a full queue then holds the device back as before), when the
/// writer is asleep on the queue, and before any other record it sends.
#[derive(Debug, Default)]
pub(crate) struct Carry {
    chains: Mutex<PackedChains>,
    /// Set while the writer sleeps on the queue alone (nothing comes of chains left here
    /// then): the device sends them instead, which wakes it.
    writer_asleep: AtomicBool,
}

impl Carry {
    pub(crate) fn lock(&self) -> MutexGuard<'_, PackedChains> {
        // A poisoned lock (a panic elsewhere aborts the process first) holds chains as valid
        // as before.
        self.chains.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the writer asleep on the queue (or awake).
    pub(crate) fn set_writer_asleep(&self, asleep: bool) {
        self.writer_asleep.store(asleep, Ordering::SeqCst);
    }

    /// Everything here, leaving it empty.
    pub(crate) fn take(&self) -> PackedChains {
        std::mem::take(&mut *self.lock())
    }
}

impl DmaBatch<'_> {
    /// The per-chain hot path: counts every descriptor `(addr, len, writable)` of the
    /// chain at `head` on `queue` (summed here, then at most four relaxed atomic adds for the
    /// chain); in full mode also packs the chain (about 4 bytes a descriptor, into a reused
    /// buffer), handing the batch to the writer when it holds [`DMA_BATCH_CHAINS`]. Summary
    /// mode allocates nothing.
    #[inline]
    pub fn record_chain<I>(
        &mut self,
        queue: u16,
        head: u16,
        descriptors: I,
    ) -> Result<(), AuditError>
    where
        I: IntoIterator<Item = (u64, u32, bool)>,
    {
        if !self.handle.full {
            self.handle.count_chain(queue, descriptors);
            return Ok(());
        }
        if self.chains.capacity() == 0 {
            self.chains = take_pass_buffer();
        }
        self.handle
            .pack_chain(&mut self.chains, queue, head, descriptors)?;
        if self.chains.chains() >= DMA_BATCH_CHAINS as u64 {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the chains held so far to the writer (see `Carry`; blocks while the
    /// writer's queue is full, when they go through it).
    pub fn flush(&mut self) -> Result<(), AuditError> {
        if self.chains.is_empty() {
            return Ok(());
        }
        self.handle.carry_chains(&mut self.chains)
    }
}

impl Drop for DmaBatch<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "audit log DMA records lost");
        }
        // The pass's buffer, emptied, serves this thread's next pass: a buffer of this
        // size allocated and freed every pass cost the device the allocator's slow paths.
        if self.chains.capacity() != 0 {
            keep_pass_buffer(std::mem::take(&mut self.chains));
        }
    }
}

impl AuditHandle {
    /// A batch for the chains of one pass over a queue: in full mode they are handed to the
    /// writer (up to [`DMA_BATCH_CHAINS`] at a time) when the batch is flushed or dropped,
    /// appended to what the device carries for it (`Carry`), so the device pays one short
    /// lock per pass rather than a queue operation per chain.
    pub fn dma_batch(&self) -> DmaBatch<'_> {
        DmaBatch {
            handle: self,
            chains: PackedChains::new(DMA_FORMAT),
        }
    }

    /// Appends `chains` to the chains carried for the writer (leaving `chains` empty, to be
    /// packed into again), and sends what is carried through the queue when it would grow
    /// past a record or the writer is asleep (see [`Carry`]).
    pub(super) fn carry_chains(&self, chains: &mut PackedChains) -> Result<(), AuditError> {
        let send = {
            let mut c = self.carry.lock();
            let full = !c.is_empty() && c.packed_len() + chains.packed_len() > MAX_DMA_BATCH_BYTES;
            let before = if full {
                Some(std::mem::take(&mut *c))
            } else {
                None
            };
            if c.is_empty() && c.capacity() < MAX_DMA_BATCH_BYTES {
                // Room for a record at once: grown pass by pass instead, the buffer was
                // reallocated and copied several times over between two looks of the writer.
                *c = self.spare.take();
            }
            c.append(chains);
            chains.clear();
            let asleep = self.carry.writer_asleep.load(Ordering::SeqCst);
            let now = asleep.then(|| std::mem::take(&mut *c));
            [before, now]
        };
        // Sent without the lock held: the writer takes the lock while the queue may be full.
        for p in send.into_iter().flatten() {
            self.send_now(Msg::Dma(p))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_buffers_come_back_emptied_and_only_record_sized() {
        let spare = SpareBuffers::default();
        let mut a = spare.take();
        assert!(a.capacity() >= MAX_DMA_BATCH_BYTES && a.is_empty());
        a.push_chain(0, 1, [(0x1000, 16, false)]).unwrap();
        let at = a.as_bytes().as_ptr();
        spare.give(a);
        let b = spare.take();
        assert!(b.is_empty(), "handed back emptied");
        assert_eq!(b.as_bytes().as_ptr(), at, "the same buffer, not a new one");
        // A pass-sized buffer, one of another form, or one grown far past a record: let go.
        spare.give(PackedChains::with_capacity(DMA_FORMAT, PASS_BYTES));
        spare.give(PackedChains::with_capacity(
            BatchFormat::FixedLe,
            MAX_DMA_BATCH_BYTES,
        ));
        spare.give(PackedChains::with_capacity(
            DMA_FORMAT,
            4 * MAX_DMA_BATCH_BYTES,
        ));
        assert!(spare.0.lock().unwrap().is_empty());
        // At most SPARE_BUFFERS kept.
        for _ in 0..2 * SPARE_BUFFERS {
            spare.give(PackedChains::with_capacity(DMA_FORMAT, MAX_DMA_BATCH_BYTES));
        }
        assert_eq!(spare.0.lock().unwrap().len(), SPARE_BUFFERS);
    }

    #[test]
    fn a_thread_packs_every_pass_into_its_own_buffer() {
        std::thread::spawn(|| {
            let mut p = take_pass_buffer();
            p.push_chain(0, 1, [(0x1000, 16, false)]).unwrap();
            let at = p.as_bytes().as_ptr();
            keep_pass_buffer(p);
            let again = take_pass_buffer();
            assert!(again.is_empty());
            assert_eq!(again.as_bytes().as_ptr(), at);
            // Taken: the next take makes a new one.
            assert_ne!(take_pass_buffer().as_bytes().as_ptr(), at);
        })
        .join()
        .unwrap();
    }
}
