//! Checked descriptor chains: every descriptor of a chain, the indirect table that holds it
//! and the table entry it was read from are checked against the pool window, with checked
//! arithmetic, before the device touches any of them.
//!
//! `virtio-queue`'s own `DescriptorChain` neither checks addresses nor reports why a chain
//! ended, so the device walks chains here instead and keeps `virtio-queue` for the rings.
//! The walk validates the whole chain into a [`CheckedChain`] before any side effect.

use swiotlb_shared::descriptor::{
    Descriptor, DESC_SIZE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use swiotlb_shared::layout::PoolWindow;
use vm_memory::{Bytes, GuestAddress};

use crate::findings::{Finding, FindingKind};
use crate::pool::PoolGuestMemory;

/// One checked buffer: `[addr, addr + len)` lies inside the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckedDesc {
    /// Bus address (inside the pool window the chain was checked against).
    pub addr: u64,
    /// Length in bytes (non-zero).
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// A chain whose every buffer was checked; readable buffers first, then writable ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckedChain {
    /// Head index in the descriptor table.
    pub head: u16,
    /// The buffers in chain order.
    pub descs: Vec<CheckedDesc>,
    /// Index in `descs` of the first writable buffer (`descs.len()` when none).
    pub first_writable: usize,
    /// Total device-readable bytes.
    pub readable_len: u64,
    /// Total device-writable bytes.
    pub writable_len: u64,
    /// Indirect tables used (0 or 1), for accounting.
    pub indirect_tables: u32,
}

impl CheckedChain {
    /// The device-readable buffers.
    pub fn readable(&self) -> &[CheckedDesc] {
        self.descs.get(..self.first_writable).unwrap_or(&[])
    }

    /// The device-writable buffers.
    pub fn writable(&self) -> &[CheckedDesc] {
        self.descs.get(self.first_writable..).unwrap_or(&[])
    }
}

/// What a chain is checked against.
#[derive(Clone, Copy, Debug)]
pub struct ChainContext<'a> {
    /// The pool, mapped at its bus address.
    pub mem: &'a PoolGuestMemory,
    /// The pool's bus window.
    pub window: PoolWindow,
    /// Bus address of the queue's descriptor table (already checked to be in the pool).
    pub desc_table: u64,
    /// Queue size: descriptor-table length, and the longest chain allowed.
    pub queue_size: u16,
    /// Whether VIRTIO_RING_F_INDIRECT_DESC was negotiated.
    pub indirect: bool,
    /// Queue index, for findings.
    pub queue: u16,
}

impl ChainContext<'_> {
    fn finding(
        &self,
        kind: FindingKind,
        head: u16,
        addr: u64,
        len: u64,
        detail: String,
    ) -> Finding {
        Finding::new(kind, detail)
            .at(self.queue, Some(head))
            .range(addr, len)
    }

    /// Reads entry `index` of the table at `table` (of `table_len` entries), checking the
    /// entry's own address first. The entry is copied once out of shared memory.
    fn read_desc(
        &self,
        head: u16,
        table: u64,
        table_len: u16,
        index: u16,
        in_indirect: bool,
    ) -> Result<Descriptor, Finding> {
        if index >= table_len {
            return Err(self.finding(
                FindingKind::DescriptorIndexOutOfRange,
                head,
                table,
                u64::from(index),
                format!("descriptor index {index} beyond table of {table_len}"),
            ));
        }
        let kind = if in_indirect {
            FindingKind::IndirectTableOutsidePool
        } else {
            FindingKind::RingOutsidePool
        };
        let at = (u64::from(index) * DESC_SIZE)
            .checked_add(table)
            .filter(|a| self.window.contains(*a, DESC_SIZE))
            .ok_or_else(|| {
                self.finding(
                    kind,
                    head,
                    table,
                    DESC_SIZE,
                    "descriptor entry outside the pool".into(),
                )
            })?;
        let raw: [u8; Descriptor::SIZE] = self.mem.read_obj(GuestAddress(at)).map_err(|e| {
            self.finding(
                kind,
                head,
                at,
                DESC_SIZE,
                format!("descriptor entry unreadable: {e}"),
            )
        })?;
        Ok(Descriptor::from_bytes(&raw))
    }

    /// Walks and checks the chain starting at `head`.
    pub fn check(&self, head: u16) -> Result<CheckedChain, Finding> {
        let mut chain = CheckedChain {
            head,
            ..Default::default()
        };
        let mut table = self.desc_table;
        let mut table_len = self.queue_size;
        let mut index = head;
        let mut in_indirect = false;
        // Loop guard: a chain is never longer than the queue size (virtio 1.2, 2.7.5.2), and
        // an indirect table is never longer than the queue size either.
        let mut budget = u32::from(self.queue_size);
        let mut total: u32 = 0;
        loop {
            if budget == 0 {
                return Err(self.finding(
                    FindingKind::ChainTooLong,
                    head,
                    table,
                    u64::from(self.queue_size),
                    format!("chain longer than {} descriptors (loop?)", self.queue_size),
                ));
            }
            budget -= 1;
            let d = self.read_desc(head, table, table_len, index, in_indirect)?;
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                self.check_indirect(head, &d, in_indirect)?;
                chain.indirect_tables += 1;
                table = d.addr;
                // Cannot truncate: `check_indirect` bounded the table by the queue size.
                table_len = (d.len / DESC_SIZE as u32) as u16;
                index = 0;
                in_indirect = true;
                budget = u32::from(table_len);
                continue;
            }
            let len = u64::from(d.len);
            if d.len == 0 {
                return Err(self.finding(
                    FindingKind::ZeroLengthDescriptor,
                    head,
                    d.addr,
                    0,
                    "zero-length descriptor".into(),
                ));
            }
            if d.addr.checked_add(len).is_none() {
                return Err(self.finding(
                    FindingKind::DescriptorOverflow,
                    head,
                    d.addr,
                    len,
                    "addr + len overflows 64 bits".into(),
                ));
            }
            if !self.window.contains(d.addr, len) {
                let straddle = self.window.contains(d.addr, 0);
                return Err(self.finding(
                    FindingKind::DescriptorOutsidePool,
                    head,
                    d.addr,
                    len,
                    format!(
                        "buffer {} the pool [{:#x}, +{:#x})",
                        if straddle {
                            "straddles the end of"
                        } else {
                            "lies outside"
                        },
                        self.window.base(),
                        self.window.size()
                    ),
                ));
            }
            total = total.checked_add(d.len).ok_or_else(|| {
                self.finding(
                    FindingKind::ChainLengthOverflow,
                    head,
                    d.addr,
                    len,
                    "chain longer than 4 GiB".into(),
                )
            })?;
            let writable = d.flags & VIRTQ_DESC_F_WRITE != 0;
            if writable {
                chain.writable_len += len;
            } else {
                if chain.writable_len > 0 {
                    return Err(self.finding(
                        FindingKind::ReadableAfterWritable,
                        head,
                        d.addr,
                        len,
                        "device-readable buffer after a device-writable one".into(),
                    ));
                }
                chain.readable_len += len;
                chain.first_writable += 1;
            }
            chain.descs.push(CheckedDesc {
                addr: d.addr,
                len: d.len,
                writable,
            });
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            index = d.next;
        }
    }

    /// Checks an indirect descriptor. It may end a chain of direct descriptors (virtio 1.2,
    /// 2.7.5.3.2: the device MUST handle zero or more normal chained descriptors followed by
    /// a single indirect one); it may not be nested, nor have NEXT set.
    fn check_indirect(&self, head: u16, d: &Descriptor, in_indirect: bool) -> Result<(), Finding> {
        let len = u64::from(d.len);
        let bad = |why: &str| {
            self.finding(
                FindingKind::BadIndirectTable,
                head,
                d.addr,
                len,
                why.to_string(),
            )
        };
        if !self.indirect {
            return Err(bad(
                "indirect descriptor but VIRTIO_RING_F_INDIRECT_DESC not negotiated",
            ));
        }
        if in_indirect {
            return Err(bad("nested indirect table"));
        }
        if d.flags & VIRTQ_DESC_F_NEXT != 0 {
            return Err(bad("indirect descriptor with NEXT set"));
        }
        if d.len == 0 || len % DESC_SIZE != 0 || len / DESC_SIZE > u64::from(self.queue_size) {
            return Err(bad(
                "indirect table size is zero, not a multiple of 16, or above the queue size",
            ));
        }
        if d.addr.checked_add(len).is_none() || !self.window.contains(d.addr, len) {
            return Err(self.finding(
                FindingKind::IndirectTableOutsidePool,
                head,
                d.addr,
                len,
                "indirect table outside the pool".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;

    const BASE: u64 = 0x10_0000_0000;

    struct Fixture {
        _pool: Pool,
        mem: std::sync::Arc<PoolGuestMemory>,
        window: PoolWindow,
    }

    fn fixture() -> Fixture {
        let mut pool = Pool::new(1 << 20).unwrap();
        pool.place(Some(BASE));
        let v = pool.view().unwrap().unwrap();
        Fixture {
            _pool: pool,
            mem: v.mem,
            window: v.window,
        }
    }

    fn put(f: &Fixture, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let b = Descriptor {
            addr,
            len,
            flags,
            next,
        }
        .to_bytes();
        f.mem
            .write_slice(&b, GuestAddress(table + u64::from(i) * DESC_SIZE))
            .unwrap();
    }

    fn ctx(f: &Fixture) -> ChainContext<'_> {
        ChainContext {
            mem: &f.mem,
            window: f.window,
            desc_table: BASE,
            queue_size: 8,
            indirect: true,
            queue: 0,
        }
    }

    #[test]
    fn well_formed_chain_is_checked_in_order() {
        let f = fixture();
        put(&f, BASE, 0, BASE + 0x1000, 16, VIRTQ_DESC_F_NEXT, 3);
        put(
            &f,
            BASE,
            3,
            BASE + 0x2000,
            4096,
            VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            5,
        );
        put(&f, BASE, 5, BASE + 0x3000, 1, VIRTQ_DESC_F_WRITE, 0);
        let c = ctx(&f).check(0).unwrap();
        assert_eq!(c.readable().len(), 1);
        assert_eq!(c.writable().len(), 2);
        assert_eq!(c.readable_len, 16);
        assert_eq!(c.writable_len, 4097);
    }

    #[test]
    fn descriptor_outside_straddling_or_overflowing_is_a_finding() {
        let f = fixture();
        for (addr, len, kind) in [
            (0x1000, 16, FindingKind::DescriptorOutsidePool),
            (BASE + (1 << 20) - 8, 16, FindingKind::DescriptorOutsidePool),
            (u64::MAX - 4, 16, FindingKind::DescriptorOverflow),
            (BASE, 0, FindingKind::ZeroLengthDescriptor),
        ] {
            put(&f, BASE, 0, addr, len, 0, 0);
            let e = ctx(&f).check(0).unwrap_err();
            assert_eq!(e.kind, kind, "{addr:#x}+{len}");
            assert_eq!(e.addr, addr);
        }
    }

    #[test]
    fn loops_and_bad_indexes_are_findings() {
        let f = fixture();
        put(&f, BASE, 0, BASE + 0x1000, 16, VIRTQ_DESC_F_NEXT, 1);
        put(&f, BASE, 1, BASE + 0x1000, 16, VIRTQ_DESC_F_NEXT, 0);
        assert_eq!(
            ctx(&f).check(0).unwrap_err().kind,
            FindingKind::ChainTooLong
        );
        put(&f, BASE, 1, BASE + 0x1000, 16, VIRTQ_DESC_F_NEXT, 99);
        assert_eq!(
            ctx(&f).check(0).unwrap_err().kind,
            FindingKind::DescriptorIndexOutOfRange
        );
        assert_eq!(
            ctx(&f).check(8).unwrap_err().kind,
            FindingKind::DescriptorIndexOutOfRange
        );
    }

    #[test]
    fn readable_after_writable_is_a_finding() {
        let f = fixture();
        put(
            &f,
            BASE,
            0,
            BASE + 0x1000,
            16,
            VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            1,
        );
        put(&f, BASE, 1, BASE + 0x2000, 16, 0, 0);
        assert_eq!(
            ctx(&f).check(0).unwrap_err().kind,
            FindingKind::ReadableAfterWritable
        );
    }

    #[test]
    fn indirect_tables_are_checked() {
        let f = fixture();
        let t = BASE + 0x8000;
        put(&f, t, 0, BASE + 0x1000, 16, VIRTQ_DESC_F_NEXT, 1);
        put(&f, t, 1, BASE + 0x2000, 512, VIRTQ_DESC_F_WRITE, 0);
        put(&f, BASE, 0, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
        let c = ctx(&f).check(0).unwrap();
        assert_eq!((c.descs.len(), c.indirect_tables), (2, 1));

        put(&f, BASE, 0, 0x2000, 32, VIRTQ_DESC_F_INDIRECT, 0);
        assert_eq!(
            ctx(&f).check(0).unwrap_err().kind,
            FindingKind::IndirectTableOutsidePool
        );
        put(
            &f,
            BASE,
            0,
            BASE + (1 << 20) - 16,
            32,
            VIRTQ_DESC_F_INDIRECT,
            0,
        );
        assert_eq!(
            ctx(&f).check(0).unwrap_err().kind,
            FindingKind::IndirectTableOutsidePool
        );
        put(&f, BASE, 0, t, 24, VIRTQ_DESC_F_INDIRECT, 0);
        assert_eq!(
            ctx(&f).check(0).unwrap_err().kind,
            FindingKind::BadIndirectTable
        );
        put(&f, t, 0, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
        put(&f, BASE, 0, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
        assert_eq!(
            ctx(&f).check(0).unwrap_err().kind,
            FindingKind::BadIndirectTable
        );
        let mut c = ctx(&f);
        c.indirect = false;
        assert_eq!(c.check(0).unwrap_err().kind, FindingKind::BadIndirectTable);
    }

    #[test]
    fn direct_descriptors_may_end_in_one_indirect_table_in_order() {
        let f = fixture();
        let t = BASE + 0x8000;
        // Direct: the readable header, then an indirect table with the data and the status.
        put(&f, BASE, 0, BASE + 0x1000, 16, VIRTQ_DESC_F_NEXT, 1);
        put(&f, BASE, 1, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
        put(
            &f,
            t,
            0,
            BASE + 0x2000,
            512,
            VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
            1,
        );
        put(&f, t, 1, BASE + 0x3000, 1, VIRTQ_DESC_F_WRITE, 0);
        let c = ctx(&f).check(0).unwrap();
        assert_eq!((c.descs.len(), c.indirect_tables), (3, 1));
        assert_eq!((c.readable().len(), c.writable().len()), (1, 2));
        // Readable after writable still counts across the switch.
        put(
            &f,
            BASE,
            0,
            BASE + 0x1000,
            16,
            VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
            1,
        );
        put(&f, t, 0, BASE + 0x2000, 512, VIRTQ_DESC_F_NEXT, 1);
        assert_eq!(
            ctx(&f).check(0).unwrap_err().kind,
            FindingKind::ReadableAfterWritable
        );
        // An indirect descriptor with NEXT is still refused.
        put(&f, BASE, 0, BASE + 0x1000, 16, VIRTQ_DESC_F_NEXT, 1);
        put(
            &f,
            BASE,
            1,
            t,
            32,
            VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT,
            2,
        );
        assert_eq!(
            ctx(&f).check(0).unwrap_err().kind,
            FindingKind::BadIndirectTable
        );
    }
}
