//! A full-mode record's DMAs, one event per descriptor: what `swiotlb-audit show` prints and
//! an OCSF export maps, one Memory Activity event each.

use super::super::event::{DmaChains, Event};
use super::super::ocsf::Record;
use super::PackedChains;

/// One DMA: one descriptor of one chain the device checked and used, as a full-mode record
/// holds it, with where it is in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaEvent {
    /// The record's leaf index (`metadata.sequence`).
    pub sequence: u64,
    /// The record's time (when it was written), ms since the epoch.
    pub time: u64,
    /// Index of the chain within the record, from 0.
    pub chain: u64,
    /// Index of the descriptor within its chain, from 0.
    pub index: u32,
    /// Queue index.
    pub queue: u16,
    /// The chain's head descriptor index.
    pub head: u16,
    /// Bus address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (device to driver: the device wrote `len` bytes at `addr`);
    /// `false`: device-readable (the device read them).
    pub writable: bool,
}

/// The DMAs of one full-mode record, one event per descriptor, in the order the device
/// checked them: a DMA batch record (`unmapped.dma_batch`) or a DMA chains record of older
/// logs (`unmapped.dma_chains`). `None` for a record of any other event. Cannot fail: a
/// parsed record's batch was checked whole.
pub fn expand_dma_record(record: &Record) -> Option<Vec<DmaEvent>> {
    let (sequence, time) = (record.sequence(), record.time);
    match record.event()? {
        Event::DmaBatch(p) => Some(expand_packed(&p, sequence, time)),
        Event::Dma(d) => Some(expand_chains(&d, sequence, time)),
        _ => None,
    }
}

/// The DMAs of a packed batch, stamped with its record's `sequence` and `time`.
pub fn expand_packed(p: &PackedChains, sequence: u64, time: u64) -> Vec<DmaEvent> {
    let mut out = Vec::with_capacity(usize::try_from(p.descriptors()).unwrap_or(0));
    for (chain, c) in p.iter().enumerate() {
        let descs = c.descriptors().map(|d| (d.addr, d.len, d.writable));
        push_chain(&mut out, (sequence, time), chain, (c.queue, c.head), descs);
    }
    out
}

/// The DMAs of an older DMA chains record, stamped with its record's `sequence` and `time`.
pub fn expand_chains(d: &DmaChains, sequence: u64, time: u64) -> Vec<DmaEvent> {
    let mut out = Vec::new();
    for (chain, c) in d.chains.iter().enumerate() {
        let descs = c.descriptors.iter().map(|x| (x.addr, x.len, x.writable));
        push_chain(&mut out, (sequence, time), chain, (c.queue, c.head), descs);
    }
    out
}

/// Appends one event per descriptor `(addr, len, writable)` of chain number `chain` (at
/// `head` on `queue`) of the record at `(sequence, time)`.
fn push_chain(
    out: &mut Vec<DmaEvent>,
    (sequence, time): (u64, u64),
    chain: usize,
    (queue, head): (u16, u16),
    descriptors: impl Iterator<Item = (u64, u32, bool)>,
) {
    for (index, (addr, len, writable)) in descriptors.enumerate() {
        out.push(DmaEvent {
            sequence,
            time,
            chain: chain as u64,
            index: index as u32,
            queue,
            head,
            addr,
            len,
            writable,
        });
    }
}
