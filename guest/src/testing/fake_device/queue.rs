//! Serving queue 0: walking the available ring and every chain (indirect tables included)
//! in the pool, executing each virtio-blk request against the in-memory disk, and
//! completing it as the [`Behavior`] says.

use swiotlb_shared::blk::SECTOR_SIZE as SECTOR;
use swiotlb_shared::blk::{
    ID_BYTES, VIRTIO_BLK_S_IOERR as S_IOERR, VIRTIO_BLK_S_OK as S_OK,
    VIRTIO_BLK_S_UNSUPP as S_UNSUPP, VIRTIO_BLK_T_DISCARD as T_DISCARD,
    VIRTIO_BLK_T_FLUSH as T_FLUSH, VIRTIO_BLK_T_GET_ID as T_GET_ID, VIRTIO_BLK_T_IN as T_IN,
    VIRTIO_BLK_T_OUT as T_OUT, VIRTIO_BLK_T_WRITE_ZEROES as T_WRITE_ZEROES,
};
use swiotlb_shared::descriptor::{
    Descriptor, DESC_SIZE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use swiotlb_shared::features::{bit, VIRTIO_RING_F_EVENT_IDX};
use swiotlb_shared::layout::INDIRECT_TABLE_DESCS;
use swiotlb_shared::pci::status;

use super::behavior::{Behavior, SelfReset, SPILL_BYTE};
use super::device::{get_u32, get_u64, Inner};

/// The device ID GET_ID returns (NUL-padded to 20 bytes).
pub const DEVICE_ID: &[u8] = b"fake-swiotlb-blk";
/// Most bytes the device gathers from one chain (bounds its allocations).
const MAX_GATHER: u64 = 64 << 20;

/// A descriptor the device read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenDescriptor {
    /// Bus address the descriptor was read from (ring table or indirect table).
    pub at: u64,
    /// Whether it was read from an indirect table.
    pub in_indirect_table: bool,
    /// `addr`.
    pub addr: u64,
    /// `len`.
    pub len: u32,
    /// `flags`.
    pub flags: u16,
}

/// Queue 0 as the driver programmed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueState {
    /// Queue size.
    pub size: u16,
    /// Descriptor table bus address.
    pub desc: u64,
    /// Available ring bus address.
    pub driver: u64,
    /// Used ring bus address.
    pub device: u64,
    /// MSI-X vector.
    pub msix_vector: u16,
    /// Enabled.
    pub enabled: bool,
}

/// One buffer of a chain, by bus address.
#[derive(Clone, Copy, Debug)]
pub(super) struct Buf {
    pub(super) addr: u64,
    pub(super) len: u32,
    pub(super) writable: bool,
}

impl Inner {
    pub(super) fn read_desc(&mut self, at: u64, in_table: bool) -> Option<(u64, u32, u16, u16)> {
        let o = self.check_window("descriptor", at, DESC_SIZE)?;
        let mut b = [0u8; Descriptor::SIZE];
        self.pool.read(o, &mut b).ok()?;
        let Descriptor {
            addr,
            len,
            flags,
            next,
        } = Descriptor::from_bytes(&b);
        self.descriptors.push(SeenDescriptor {
            at,
            in_indirect_table: in_table,
            addr,
            len,
            flags,
        });
        Some((addr, len, flags, next))
    }

    /// Walks the chain at `head`; `None` (with a violation recorded) if it is malformed.
    pub(super) fn walk_chain(&mut self, head: u16) -> Option<Vec<Buf>> {
        let q = self.queue;
        if head >= q.size {
            self.violation(format!("avail head {head} out of range"));
            return None;
        }
        let mut out = Vec::new();
        let mut push = |this: &mut Self, addr: u64, len: u32, flags: u16| {
            if this.check_window("buffer", addr, u64::from(len)).is_none() {
                return false;
            }
            out.push(Buf {
                addr,
                len,
                writable: flags & VIRTQ_DESC_F_WRITE != 0,
            });
            true
        };
        let (addr, len, flags, next) =
            self.read_desc(q.desc + u64::from(head) * DESC_SIZE, false)?;
        if flags & VIRTQ_DESC_F_INDIRECT != 0 {
            let n = u64::from(len) / DESC_SIZE;
            if len == 0 || u64::from(len) % DESC_SIZE != 0 || n > u64::from(INDIRECT_TABLE_DESCS) {
                self.violation(format!("indirect table of {len} bytes"));
                return None;
            }
            self.check_window("indirect table", addr, u64::from(len))?;
            let mut i = 0u64;
            for _ in 0..n {
                let (a, l, f, nx) = self.read_desc(addr + i * DESC_SIZE, true)?;
                if f & VIRTQ_DESC_F_INDIRECT != 0 {
                    self.violation("nested indirect table".into());
                    return None;
                }
                if !push(self, a, l, f) {
                    return None;
                }
                if f & VIRTQ_DESC_F_NEXT == 0 {
                    return Some(out);
                }
                i = u64::from(nx);
                if i >= n {
                    self.violation(format!("indirect next {nx} beyond the table"));
                    return None;
                }
            }
            self.violation("indirect chain loops".into());
            return None;
        }
        let (mut a, mut l, mut f, mut nx) = (addr, len, flags, next);
        for _ in 0..q.size {
            if !push(self, a, l, f) {
                return None;
            }
            if f & VIRTQ_DESC_F_NEXT == 0 {
                return Some(out);
            }
            if nx >= q.size {
                self.violation(format!("next {nx} out of range"));
                return None;
            }
            (a, l, f, nx) = self.read_desc(q.desc + u64::from(nx) * DESC_SIZE, false)?;
        }
        self.violation("chain loops".into());
        None
    }

    pub(super) fn process_queue(&mut self) {
        let q = self.queue;
        if self.status & status::DRIVER_OK == 0 || !q.enabled {
            self.violation("doorbell before the queue is live".into());
            return;
        }
        let b = self.behavior.clone();
        if b.needs_reset {
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        if let Some(how) = b.self_reset {
            if self.doorbells_since_behavior >= b.self_reset_after {
                match how {
                    SelfReset::StatusZero => self.reset(),
                    SelfReset::NeedsReset => self.status |= status::DEVICE_NEEDS_RESET,
                    SelfReset::QueueDisabled => self.queue.enabled = false,
                }
                return;
            }
        }
        self.doorbells_since_behavior += 1;
        let Some(avail_idx) = self.load_u16("avail.idx", q.driver + 2) else {
            return;
        };
        if avail_idx.wrapping_sub(self.last_avail) > q.size {
            self.violation(format!(
                "avail.idx jumped from {} to {avail_idx}",
                self.last_avail
            ));
            return;
        }
        let mut done: Vec<(u32, u32)> = Vec::new();
        let mut scribble_data = Vec::new();
        let mut scribble_status = Vec::new();
        while self.last_avail != avail_idx {
            let slot = u64::from(self.last_avail % q.size);
            let Some(head) = self.load_u16("avail ring", q.driver + 4 + 2 * slot) else {
                return;
            };
            self.last_avail = self.last_avail.wrapping_add(1);
            let Some(chain) = self.walk_chain(head) else {
                continue;
            };
            if b.never_complete {
                continue;
            }
            let written = self.serve(&chain, &b);
            if self.scribble.is_some() {
                let (data, st) = self.chain_targets(&chain);
                scribble_data.extend(data);
                scribble_status.extend(st);
            }
            let used = b
                .used_len
                .unwrap_or_else(|| written.saturating_add(b.used_len_extra));
            done.push((u32::from(head), used));
        }
        if self.driver_features & bit(VIRTIO_RING_F_EVENT_IDX) != 0 {
            // avail_event: ask for a doorbell at the next chain.
            let ev = q.device + 4 + 8 * u64::from(q.size);
            let la = b.avail_event.unwrap_or(self.last_avail);
            self.store_u16("avail_event", ev, la);
        }
        if let Some(flags) = b.used_flags {
            self.store_u16("used.flags", q.device, flags);
        }
        if b.complete_twice {
            done = done.first().map(|d| vec![*d, *d]).unwrap_or_default();
        }
        if b.used_id_never_posted {
            for d in &mut done {
                d.0 = (d.0 + 1) % u32::from(q.size);
            }
        }
        if let Some(id) = b.used_id {
            for d in &mut done {
                d.0 = id;
            }
        }
        if done.is_empty() && b.used_idx_extra == 0 {
            return;
        }
        let mut scribble_elems = Vec::new();
        for (id, len) in done {
            let e = q.device + 4 + 8 * u64::from(self.used_idx % q.size);
            self.store_u32("used element", e, id);
            self.store_u32("used element", e + 4, len);
            if let Some(o) = self.bar_offset(e, 8) {
                scribble_elems.push((o, id, len));
            }
            self.used_idx = self.used_idx.wrapping_add(1);
            self.completions += 1;
        }
        self.arm_scribbler(scribble_data, scribble_status, scribble_elems);
        let published = self.used_idx.wrapping_add(b.used_idx_extra);
        self.store_u16("used.idx", q.device + 2, published);
    }

    /// Gathers the readable bytes of a chain (bounded).
    pub(super) fn gather(&self, bufs: &[Buf]) -> Option<Vec<u8>> {
        let total: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
        if total > MAX_GATHER {
            return None;
        }
        let mut out = vec![0u8; total as usize];
        let mut at = 0usize;
        for b in bufs {
            let o = self.bar_offset(b.addr, u64::from(b.len))?;
            let n = b.len as usize;
            self.pool.read(o, out.get_mut(at..at + n)?).ok()?;
            at += n;
        }
        Some(out)
    }

    /// Scatters `src` over `bufs`; returns the bytes written.
    pub(super) fn scatter(&self, bufs: &[Buf], src: &[u8]) -> u32 {
        let mut done = 0usize;
        for b in bufs {
            if done == src.len() {
                break;
            }
            let n = (b.len as usize).min(src.len() - done);
            if let Some(o) = self.bar_offset(b.addr, n as u64) {
                if self.pool.write(o, &src[done..done + n]).is_err() {
                    break;
                }
            }
            done += n;
        }
        done as u32
    }

    /// Serves one request; returns the bytes written (status included).
    pub(super) fn serve(&mut self, chain: &[Buf], b: &Behavior) -> u32 {
        let split = chain.iter().position(|c| c.writable).unwrap_or(chain.len());
        let (readable, writable) = chain.split_at(split);
        let Some((status_buf, data_bufs)) = writable.split_last() else {
            self.violation("request without a status byte".into());
            return 0;
        };
        let Some(status_addr) = status_buf
            .addr
            .checked_add(u64::from(status_buf.len))
            .and_then(|e| e.checked_sub(1))
            .filter(|_| status_buf.len > 0)
        else {
            self.violation("zero-length status descriptor".into());
            return 0;
        };
        let mut data_bufs = data_bufs.to_vec();
        if status_buf.len > 1 {
            data_bufs.push(Buf {
                len: status_buf.len - 1,
                ..*status_buf
            });
        }
        if b.spill > 0 {
            for d in &data_bufs {
                let start = d.addr + u64::from(d.len);
                let room = self
                    .pool_bar_base()
                    .saturating_add(self.pool.size())
                    .saturating_sub(start);
                let n = b.spill.min(room);
                if let Some(o) = self.bar_offset(start, n) {
                    let _ = self.pool.write(o, &vec![SPILL_BYTE; n as usize]);
                }
            }
        }
        let Some(out) = self.gather(readable) else {
            self.violation("readable part too large or outside the pool".into());
            return 0;
        };
        let (st, data) = if out.len() < 16 {
            self.violation("header shorter than 16 bytes".into());
            (S_IOERR, Vec::new())
        } else {
            self.execute(&out, &data_bufs)
        };
        let written = if b.skip_data {
            0
        } else {
            self.scatter(&data_bufs, &data)
        };
        let st = b.status.unwrap_or(st);
        if let Some(o) = self.bar_offset(status_addr, 1) {
            let _ = self.pool.write(o, &[st]);
        }
        if b.skip_data {
            // Claims what a real completion would.
            return data.len() as u32 + 1;
        }
        written + 1
    }

    /// Executes a request; returns the status and the bytes to write back.
    pub(super) fn execute(&mut self, out: &[u8], data_bufs: &[Buf]) -> (u8, Vec<u8>) {
        let ty = get_u32(out, 0);
        let sector = get_u64(out, 8);
        let payload = out.get(16..).unwrap_or(&[]);
        let in_len: u64 = data_bufs.iter().map(|d| u64::from(d.len)).sum();
        let range = |off: Option<u64>, len: u64, disk: &[u8]| {
            off.and_then(|o| o.checked_add(len).map(|e| (o, e)))
                .filter(|(_, e)| *e <= disk.len() as u64)
                .map(|(o, e)| (o as usize, e as usize))
        };
        match ty {
            T_IN => match range(sector.checked_mul(SECTOR), in_len, &self.disk) {
                Some((s, e)) => (S_OK, self.disk[s..e].to_vec()),
                None => (S_IOERR, Vec::new()),
            },
            T_OUT => {
                if self.cfg.read_only {
                    return (S_IOERR, Vec::new());
                }
                match range(sector.checked_mul(SECTOR), payload.len() as u64, &self.disk) {
                    Some((s, e)) => {
                        self.disk[s..e].copy_from_slice(payload);
                        (S_OK, Vec::new())
                    }
                    None => (S_IOERR, Vec::new()),
                }
            }
            T_FLUSH => (S_OK, Vec::new()),
            T_GET_ID => {
                let mut id = vec![0u8; ID_BYTES];
                id[..DEVICE_ID.len()].copy_from_slice(DEVICE_ID);
                id.truncate(in_len.min(ID_BYTES as u64) as usize);
                (S_OK, id)
            }
            T_DISCARD | T_WRITE_ZEROES => {
                if self.cfg.read_only || payload.is_empty() || payload.len() % 16 != 0 {
                    return (S_IOERR, Vec::new());
                }
                for r in payload.chunks_exact(16) {
                    let s = get_u64(r, 0);
                    let n = u64::from(get_u32(r, 8));
                    match range(s.checked_mul(SECTOR), n * SECTOR, &self.disk) {
                        Some((a, e)) => self.disk[a..e].fill(0),
                        None => return (S_IOERR, Vec::new()),
                    }
                }
                (S_OK, Vec::new())
            }
            _ => (S_UNSUPP, Vec::new()),
        }
    }
}
