//! A type-0 PCI configuration space with BAR emulation (sizing, moves) and a capability list.
//!
//! Every byte has a write mask; writes outside it are dropped, so a driver can only change
//! what a real function lets it change. BAR registers take the mask of their size, so writing
//! all-ones reads back the size, as PCI requires.

use swiotlb_shared::pci::cfg;
use thiserror::Error;

/// Errors of configuration-space access.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The access does not lie inside the configuration space.
    #[error("config access at {offset:#x} of {len} bytes is outside the {size}-byte space")]
    OutOfRange {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: usize,
        /// Size of the space.
        size: usize,
    },
}

/// Kind of a memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit, non-prefetchable memory.
    Mem32,
    /// 64-bit prefetchable memory (uses this BAR and the next).
    Mem64Prefetchable,
}

/// One BAR of the function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    /// BAR index (0..=5).
    pub index: u8,
    /// Size in bytes, a power of two of at least 16.
    pub size: u64,
    /// Memory kind.
    pub kind: BarKind,
}

/// What a write changed that the device must act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigChange {
    /// A BAR register or the command register changed.
    pub decode_changed: bool,
    /// The MSI-X message control changed.
    pub msix_changed: bool,
}

/// The configuration space of one function.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    data: [u8; cfg::SIZE],
    wmask: [u8; cfg::SIZE],
    bars: Vec<BarSpec>,
    next_cap: u8,
    last_cap: Option<u8>,
    msix_cap: Option<u8>,
}

impl ConfigSpace {
    /// A header with the given IDs and class, no BARs and no capabilities yet.
    pub fn new(
        vendor: u16,
        device: u16,
        revision: u8,
        class: [u8; 3],
        subsystem: (u16, u16),
    ) -> Self {
        let mut s = Self {
            data: [0; cfg::SIZE],
            wmask: [0; cfg::SIZE],
            bars: Vec::new(),
            next_cap: 0x40,
            last_cap: None,
            msix_cap: None,
        };
        s.put(cfg::VENDOR_ID, &vendor.to_le_bytes());
        s.put(cfg::DEVICE_ID, &device.to_le_bytes());
        s.put(cfg::REVISION_ID, &[revision]);
        s.put(cfg::CLASS_PROG, &class);
        s.put(cfg::SUBSYSTEM_VENDOR_ID, &subsystem.0.to_le_bytes());
        s.put(cfg::SUBSYSTEM_ID, &subsystem.1.to_le_bytes());
        s.put(cfg::INTERRUPT_PIN, &[1]); // INTA#
        let cmd_mask = cfg::COMMAND_MEMORY | cfg::COMMAND_BUS_MASTER | cfg::COMMAND_INTX_DISABLE;
        s.wmask[cfg::COMMAND as usize..cfg::COMMAND as usize + 2]
            .copy_from_slice(&cmd_mask.to_le_bytes());
        s.wmask[cfg::INTERRUPT_LINE as usize] = 0xff;
        s
    }

    fn put(&mut self, off: u16, bytes: &[u8]) {
        let o = usize::from(off);
        self.data[o..o + bytes.len()].copy_from_slice(bytes);
    }

    /// Adds a memory BAR. Sizes are powers of two of at least 16 bytes.
    pub fn add_bar(&mut self, bar: BarSpec) {
        debug_assert!(bar.size.is_power_of_two() && bar.size >= 16);
        let reg = usize::from(cfg::BAR0) + usize::from(bar.index) * 4;
        let mask = !(bar.size - 1);
        let (flags, lo_mask) = match bar.kind {
            BarKind::Mem32 => (0u32, (mask as u32) & cfg::BAR_MEM_ADDR_MASK),
            BarKind::Mem64Prefetchable => (
                cfg::BAR_MEM_TYPE_64 | cfg::BAR_PREFETCHABLE,
                (mask as u32) & cfg::BAR_MEM_ADDR_MASK,
            ),
        };
        self.data[reg..reg + 4].copy_from_slice(&flags.to_le_bytes());
        self.wmask[reg..reg + 4].copy_from_slice(&lo_mask.to_le_bytes());
        if bar.kind == BarKind::Mem64Prefetchable {
            let hi_mask = (mask >> 32) as u32;
            self.wmask[reg + 4..reg + 8].copy_from_slice(&hi_mask.to_le_bytes());
        }
        self.bars.push(bar);
    }

    /// Appends a capability (its ID byte first, next-pointer byte second, then `body`), with
    /// `writable` marking bytes of `body` the driver may change. Returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[(usize, u8)]) -> u8 {
        let at = self.next_cap;
        let o = usize::from(at);
        self.data[o] = id;
        self.data[o + 1] = 0;
        self.data[o + 2..o + 2 + body.len()].copy_from_slice(body);
        for (i, m) in writable {
            self.wmask[o + 2 + i] = *m;
        }
        match self.last_cap {
            Some(prev) => self.data[usize::from(prev) + 1] = at,
            None => {
                self.data[usize::from(cfg::CAPABILITIES_POINTER)] = at;
                let st = u16::from_le_bytes([self.data[6], self.data[7]]) | cfg::STATUS_CAP_LIST;
                self.put(cfg::STATUS, &st.to_le_bytes());
            }
        }
        if id == cfg::CAP_ID_MSIX {
            self.msix_cap = Some(at);
        }
        self.last_cap = Some(at);
        // Capabilities are dword aligned.
        self.next_cap = at + ((2 + body.len() as u8 + 3) & !3);
        at
    }

    fn check(offset: u64, len: usize) -> Result<usize, ConfigError> {
        match usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(len).map(|e| (o, e)))
        {
            Some((o, end)) if end <= cfg::SIZE => Ok(o),
            _ => Err(ConfigError::OutOfRange {
                offset,
                len,
                size: cfg::SIZE,
            }),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ConfigError> {
        let o = Self::check(offset, buf.len())?;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }

    /// Writes `data` at `offset` through the write masks, reporting what changed.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<ConfigChange, ConfigError> {
        let o = Self::check(offset, data.len())?;
        let before_cmd = self.command();
        let before_bars: Vec<u64> = self.bars.iter().map(|b| self.bar_register(b)).collect();
        let before_msix = self.msix_control();
        for (i, v) in data.iter().enumerate() {
            let m = self.wmask[o + i];
            self.data[o + i] = (self.data[o + i] & !m) | (v & m);
        }
        let after_bars: Vec<u64> = self.bars.iter().map(|b| self.bar_register(b)).collect();
        Ok(ConfigChange {
            decode_changed: before_cmd & cfg::COMMAND_MEMORY
                != self.command() & cfg::COMMAND_MEMORY
                || before_bars != after_bars,
            msix_changed: before_msix != self.msix_control(),
        })
    }

    fn dword(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.data[off],
            self.data[off + 1],
            self.data[off + 2],
            self.data[off + 3],
        ])
    }

    fn bar_register(&self, bar: &BarSpec) -> u64 {
        let reg = usize::from(cfg::BAR0) + usize::from(bar.index) * 4;
        let lo = u64::from(self.dword(reg) & cfg::BAR_MEM_ADDR_MASK);
        match bar.kind {
            BarKind::Mem32 => lo,
            BarKind::Mem64Prefetchable => lo | (u64::from(self.dword(reg + 4)) << 32),
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.data[4], self.data[5]])
    }

    /// Whether memory space decode is on.
    pub fn memory_enabled(&self) -> bool {
        self.command() & cfg::COMMAND_MEMORY != 0
    }

    /// Whether INTx is disabled by the command register.
    pub fn intx_disabled(&self) -> bool {
        self.command() & cfg::COMMAND_INTX_DISABLE != 0
    }

    /// The address BAR `index` decodes at: `None` when memory decode is off, the BAR is
    /// unassigned (zero) or holds its size probe (all address bits set).
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        if !self.memory_enabled() {
            return None;
        }
        let bar = self.bars.iter().find(|b| b.index == index)?;
        let addr = self.bar_register(bar);
        let probe = match bar.kind {
            BarKind::Mem32 => u64::from((!(bar.size - 1)) as u32 & cfg::BAR_MEM_ADDR_MASK),
            BarKind::Mem64Prefetchable => !(bar.size - 1),
        };
        (addr != 0 && addr != probe).then_some(addr)
    }

    /// The size of BAR `index`, if present.
    pub fn bar_size(&self, index: u8) -> Option<u64> {
        self.bars.iter().find(|b| b.index == index).map(|b| b.size)
    }

    fn msix_control(&self) -> u16 {
        self.msix_cap.map_or(0, |c| {
            let o = usize::from(c) + 2;
            u16::from_le_bytes([self.data[o], self.data[o + 1]])
        })
    }

    /// Whether MSI-X is enabled and not function-masked.
    pub fn msix_active(&self) -> bool {
        let c = self.msix_control();
        c & cfg::MSIX_ENABLE != 0 && c & cfg::MSIX_FUNCTION_MASK == 0
    }

    /// Clears the command register (function-level reset of decode and bus mastering).
    pub fn reset_command(&mut self) {
        self.put(cfg::COMMAND, &0u16.to_le_bytes());
        if let Some(c) = self.msix_cap {
            let o = u16::from(c) + 2;
            let ctl = self.msix_control() & !(cfg::MSIX_ENABLE | cfg::MSIX_FUNCTION_MASK);
            self.put(o, &ctl.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        let mut s = ConfigSpace::new(0x1af4, 0x1042, 1, [0, 0, 1], (0x1af4, 0x1100));
        s.add_bar(BarSpec {
            index: 0,
            size: 0x8000,
            kind: BarKind::Mem32,
        });
        s.add_bar(BarSpec {
            index: 2,
            size: 16 << 20,
            kind: BarKind::Mem64Prefetchable,
        });
        s
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut s = space();
        s.write(0x18, &[0xff; 4]).unwrap();
        s.write(0x1c, &[0xff; 4]).unwrap();
        let mut b = [0u8; 8];
        s.read(0x18, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 0xffff_ffff_ff00_000c);
        s.write(0x10, &[0xff; 4]).unwrap();
        let mut d = [0u8; 4];
        s.read(0x10, &mut d).unwrap();
        assert_eq!(u32::from_le_bytes(d), 0xffff_8000);
    }

    #[test]
    fn bar_address_needs_decode_and_follows_moves() {
        let mut s = space();
        s.write(0x18, &0x4000_0000u32.to_le_bytes()).unwrap();
        s.write(0x1c, &0x8u32.to_le_bytes()).unwrap();
        assert_eq!(s.bar_address(2), None, "decode off");
        let ch = s.write(0x04, &cfg::COMMAND_MEMORY.to_le_bytes()).unwrap();
        assert!(ch.decode_changed);
        assert_eq!(s.bar_address(2), Some(0x8_4000_0000));
        let ch = s.write(0x1c, &0x9u32.to_le_bytes()).unwrap();
        assert!(ch.decode_changed);
        assert_eq!(s.bar_address(2), Some(0x9_4000_0000));
        // Unaligned address bits below the size are masked off.
        s.write(0x18, &0x4012_3450u32.to_le_bytes()).unwrap();
        assert_eq!(s.bar_address(2), Some(0x9_4000_0000));
    }

    #[test]
    fn read_only_fields_ignore_writes_and_ranges_are_checked() {
        let mut s = space();
        s.write(0, &[0; 4]).unwrap();
        let mut id = [0u8; 4];
        s.read(0, &mut id).unwrap();
        assert_eq!(id, [0xf4, 0x1a, 0x42, 0x10]);
        assert!(s.read(255, &mut [0u8; 2]).is_err());
        assert!(s.write(u64::MAX, &[0]).is_err());
    }

    #[test]
    fn capabilities_chain_in_order() {
        let mut s = space();
        let a = s.add_capability(9, &[14, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
        let b = s.add_capability(
            cfg::CAP_ID_MSIX,
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[(1, 0xc0)],
        );
        let mut p = [0u8; 1];
        s.read(0x34, &mut p).unwrap();
        assert_eq!(p[0], a);
        s.read(u64::from(a) + 1, &mut p).unwrap();
        assert_eq!(p[0], b);
        assert!(!s.msix_active());
        s.write(u64::from(b) + 3, &[0x80]).unwrap();
        assert!(s.msix_active());
    }
}
