//! Config-space and BAR0 register accesses against the device model, with pool contents
//! and doorbells, from a prelude that brings the function to a live queue (so the fuzzer
//! starts deep) or from reset.

use arbitrary::{Arbitrary, Unstructured};
use swiotlb_host::pci::function::{REGION_CONFIG, REGION_POOL, REGION_REGS};
use swiotlb_host::VirtioPciFunction;
use swiotlb_shared::pci::device_layout as dl;

use super::memfd_function;

/// One access of a hostile driver.
#[derive(Arbitrary, Debug)]
pub enum Access {
    /// A config-space write.
    ConfigWrite(u16, Vec<u8>),
    /// A config-space read of 1 to 8 bytes.
    ConfigRead(u16, u8),
    /// A BAR0 register write.
    RegWrite(u16, Vec<u8>),
    /// A BAR0 register read.
    RegRead(u16, u8),
    /// A write into the pool (through the trapped path, as a guest would with its
    /// mapping).
    PoolWrite(u32, Vec<u8>),
    /// A doorbell.
    Notify(u16),
    /// A function reset.
    Reset,
}

/// A hostile driver's accesses.
#[derive(Arbitrary, Debug)]
pub struct Accesses {
    /// Start from a live queue (BARs placed, features negotiated, queue 0 in the pool).
    pub live: bool,
    /// The accesses.
    pub accesses: Vec<Access>,
}

fn w(f: &mut VirtioPciFunction, region: u32, offset: u64, data: &[u8]) {
    let _ = f.region_write(region, offset, data);
}

/// Brings `f` to DRIVER_OK with queue 0 inside the pool at bus address `POOL_BUS`.
pub fn prelude(f: &mut VirtioPciFunction) {
    const POOL_BUS: u64 = 0x80_0000_0000;
    const REGS_BUS: u32 = 0xc000_0000;
    // BAR0 (32-bit), pool BAR (64-bit, two dwords), memory decode on.
    w(f, REGION_CONFIG, 0x10, &REGS_BUS.to_le_bytes());
    let bar = 0x10 + 4 * u64::from(dl::POOL_BAR);
    w(f, REGION_CONFIG, bar, &(POOL_BUS as u32).to_le_bytes());
    w(
        f,
        REGION_CONFIG,
        bar + 4,
        &((POOL_BUS >> 32) as u32).to_le_bytes(),
    );
    w(f, REGION_CONFIG, 0x04, &0x0006u16.to_le_bytes());
    let common = u64::from(dl::COMMON_OFFSET);
    // ACKNOWLEDGE | DRIVER, features (both words as offered), FEATURES_OK.
    w(f, REGION_REGS, common + 0x14, &[0x03]);
    for sel in 0..2u32 {
        let mut offered = [0u8; 4];
        let _ = f.region_write(REGION_REGS, common, &sel.to_le_bytes());
        let _ = f.region_read(REGION_REGS, common + 0x04, &mut offered);
        w(f, REGION_REGS, common + 0x08, &sel.to_le_bytes());
        w(f, REGION_REGS, common + 0x0c, &offered);
    }
    w(f, REGION_REGS, common + 0x14, &[0x0b]);
    // Queue 0: size 16, rings at the pool's start.
    w(f, REGION_REGS, common + 0x16, &0u16.to_le_bytes());
    w(f, REGION_REGS, common + 0x18, &16u16.to_le_bytes());
    for (off, addr) in [(0x20, 0u64), (0x28, 0x100), (0x30, 0x200)] {
        w(
            f,
            REGION_REGS,
            common + off,
            &(POOL_BUS + addr).to_le_bytes(),
        );
    }
    w(f, REGION_REGS, common + 0x1c, &1u16.to_le_bytes());
    w(f, REGION_REGS, common + 0x14, &[0x0f]);
}

/// Register accesses against the device model: never a panic.
pub fn registers(data: &[u8]) {
    let Ok(input) = Accesses::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut f = memfd_function(None);
    if input.live {
        prelude(&mut f);
    }
    let mut buf = [0u8; 8];
    for a in input.accesses {
        match a {
            Access::ConfigWrite(off, d) => w(&mut f, REGION_CONFIG, off.into(), &d),
            Access::ConfigRead(off, n) => {
                let n = usize::from(n % 8) + 1;
                let _ = f.region_read(REGION_CONFIG, off.into(), &mut buf[..n]);
            }
            Access::RegWrite(off, d) => w(&mut f, REGION_REGS, off.into(), &d),
            Access::RegRead(off, n) => {
                let n = usize::from(n % 8) + 1;
                let _ = f.region_read(REGION_REGS, off.into(), &mut buf[..n]);
            }
            Access::PoolWrite(off, d) => w(&mut f, REGION_POOL, off.into(), &d),
            Access::Notify(q) => f.notify(q),
            Access::Reset => f.reset(),
        }
    }
    // The session summary is still produced (it is what the operator sees).
    let _ = f.summary();
}
