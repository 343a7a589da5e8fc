//! The SEV-SNP TCB version: a u64 of security patch levels whose byte layout depends on the
//! product.
//!
//! | byte | Milan, Genoa | Turin |
//! |---|---|---|
//! | 0 | BOOT_LOADER | FMC |
//! | 1 | TEE | BOOT_LOADER |
//! | 2 | reserved | TEE |
//! | 3 | reserved | SNP |
//! | 4..5 | reserved | reserved |
//! | 6 | SNP | reserved |
//! | 7 | MICROCODE | MICROCODE |
//!
//! The VCEK/VLEK certificate carries the same levels as extensions
//! 1.3.6.1.4.1.3704.1.3.{1 bootloader, 2 tee, 3 snp, 8 microcode} and, on Turin, 3.9 (fmc).

use serde::Serialize;

/// Security patch levels of the SNP TCB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tcb {
    /// FMC (Turin and later only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
    /// Boot loader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

impl Tcb {
    /// Decodes a raw TCB version for the product's layout.
    pub fn from_raw(raw: u64, turin_layout: bool) -> Self {
        let b = raw.to_le_bytes();
        if turin_layout {
            Self {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            }
        } else {
            Self {
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            }
        }
    }

    /// Encodes in the product's layout (FMC is dropped in the pre-Turin layout).
    pub fn to_raw(self, turin_layout: bool) -> u64 {
        let mut b = [0u8; 8];
        if turin_layout {
            b[0] = self.fmc.unwrap_or(0);
            b[1] = self.bootloader;
            b[2] = self.tee;
            b[3] = self.snp;
        } else {
            b[0] = self.bootloader;
            b[1] = self.tee;
            b[6] = self.snp;
        }
        b[7] = self.microcode;
        u64::from_le_bytes(b)
    }

    /// Whether the reserved bytes of `raw` are zero in the product's layout.
    pub fn reserved_clear(raw: u64, turin_layout: bool) -> bool {
        let b = raw.to_le_bytes();
        if turin_layout {
            b[4..7].iter().all(|&x| x == 0)
        } else {
            b[2..6].iter().all(|&x| x == 0)
        }
    }

    /// Components of `self` below those of `min`, named (component-wise comparison, as
    /// go-sev-guest's minimum TCB). A missing FMC in `min` is not checked.
    pub fn below(&self, min: &Tcb) -> Vec<&'static str> {
        let mut v = Vec::new();
        if let Some(m) = min.fmc {
            if self.fmc.unwrap_or(0) < m {
                v.push("fmc");
            }
        }
        if self.bootloader < min.bootloader {
            v.push("bootloader");
        }
        if self.tee < min.tee {
            v.push("tee");
        }
        if self.snp < min.snp {
            v.push("snp");
        }
        if self.microcode < min.microcode {
            v.push("microcode");
        }
        v
    }
}

impl std::fmt::Display for Tcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bootloader={} tee={} snp={} microcode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milan_layout_matches_the_virtee_report() {
        // REPORTED_TCB of the virtee Milan report: 03 00 00 00 00 00 08 73.
        let raw = u64::from_le_bytes([0x03, 0, 0, 0, 0, 0, 0x08, 0x73]);
        let t = Tcb::from_raw(raw, false);
        assert_eq!(
            t,
            Tcb {
                fmc: None,
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 0x73
            }
        );
        assert_eq!(t.to_raw(false), raw);
        assert!(Tcb::reserved_clear(raw, false));
    }

    #[test]
    fn turin_layout_puts_fmc_first() {
        let raw = u64::from_le_bytes([1, 2, 3, 4, 0, 0, 0, 9]);
        let t = Tcb::from_raw(raw, true);
        assert_eq!(
            t,
            Tcb {
                fmc: Some(1),
                bootloader: 2,
                tee: 3,
                snp: 4,
                microcode: 9
            }
        );
        assert_eq!(t.to_raw(true), raw);
        assert!(!Tcb::reserved_clear(raw, false));
        assert!(Tcb::reserved_clear(raw, true));
    }

    #[test]
    fn below_names_each_low_component() {
        let t = Tcb {
            fmc: None,
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
        };
        assert!(t.below(&t).is_empty());
        let min = Tcb {
            fmc: Some(1),
            bootloader: 4,
            tee: 0,
            snp: 9,
            microcode: 100,
        };
        assert_eq!(t.below(&min), vec!["fmc", "bootloader", "snp"]);
    }
}
