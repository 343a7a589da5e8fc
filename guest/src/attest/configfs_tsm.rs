//! The configfs-tsm attester: Linux's `/sys/kernel/config/tsm/report`, one interface for
//! SEV-SNP (`sev_guest`) and TDX (`tdx_guest`); `generation` is read before and after the
//! report so a racing writer is detected. This is the project's own code (the
//! `configfs-tsm` crate is AGPL).

use std::fs;
use std::path::{Path, PathBuf};

use swiotlb_attest::Evidence;
use swiotlb_shared::little_endian;
use swiotlb_shared::transcript::PlatformKind;

use super::{io, AttestError, Attester};

/// Where configfs-tsm lives.
pub const TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";
/// Retries when `generation` changes under a read (another writer raced us).
const TSM_RETRIES: usize = 4;
/// Largest auxblob accepted (the SNP certificate table: VCEK, ASK, ARK fit in 16 KiB).
const MAX_AUXBLOB: usize = 64 * 1024;
/// GUID of the VCEK in an SNP certificate table (AMD SEV-SNP ABI, "GHCB" spec, table 10),
/// byte order as stored: 63da758d-e664-4564-adc5-f4b93be8accd.
const VCEK_GUID: [u8; 16] = [
    0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];
/// GUID of the VLEK in an SNP certificate table: a8074bc2-a25a-483e-aae6-39c045a0b8a1.
const VLEK_GUID: [u8; 16] = [
    0xc2, 0x4b, 0x07, 0xa8, 0x5a, 0xa2, 0x3e, 0x48, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1,
];

/// Linux configfs-tsm.
pub struct ConfigfsTsm {
    root: PathBuf,
    platform: PlatformKind,
}

impl ConfigfsTsm {
    /// Opens configfs-tsm at `root` (normally [`TSM_REPORT_DIR`]); the provider decides the
    /// platform. `want` refuses a provider of another platform.
    pub fn open(root: &Path, want: Option<PlatformKind>) -> Result<Self, AttestError> {
        if !root.is_dir() {
            return Err(AttestError::Unavailable(format!(
                "{} does not exist (no configfs-tsm: kernel without TSM_REPORTS, or not a confidential VM)",
                root.display()
            )));
        }
        let probe = Self::entry(root, "probe")?;
        let provider =
            fs::read_to_string(probe.join("provider")).map_err(io("reading the TSM provider"))?;
        let _ = fs::remove_dir(&probe);
        let platform = match provider.trim() {
            "sev_guest" => PlatformKind::Snp,
            "tdx_guest" => PlatformKind::Tdx,
            other => {
                return Err(AttestError::Unavailable(format!(
                    "unknown TSM provider {other:?}"
                )))
            }
        };
        if want.is_some_and(|w| w != platform) {
            return Err(AttestError::Unavailable(format!(
                "the TSM provider is {}, not the platform asked for",
                platform.as_str()
            )));
        }
        Ok(Self {
            root: root.to_path_buf(),
            platform,
        })
    }

    fn entry(root: &Path, tag: &str) -> Result<PathBuf, AttestError> {
        let dir = root.join(format!("swiotlb-{}-{tag}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
            Err(e) => Err(io(format!("creating {}", dir.display()))(e)),
        }
    }

    fn generation(dir: &Path) -> Result<u64, AttestError> {
        fs::read_to_string(dir.join("generation"))
            .map_err(io("reading the TSM generation"))?
            .trim()
            .parse()
            .map_err(|_| AttestError::Bad("TSM generation is not a number".into()))
    }
}

/// Finds the VCEK or VLEK DER in an SNP certificate table (entries of GUID, offset, length,
/// ended by an all-zero entry); every offset and length is checked against the table.
fn endorsement_from_cert_table(table: &[u8]) -> Option<Vec<u8>> {
    for entry in table.chunks_exact(24).take(64) {
        let guid: [u8; 16] = entry[..16].try_into().ok()?;
        if guid == [0; 16] {
            break;
        }
        let off = little_endian::u32_at(entry, 16).ok()? as usize;
        let len = little_endian::u32_at(entry, 20).ok()? as usize;
        if guid == VCEK_GUID || guid == VLEK_GUID {
            return table.get(off..off.checked_add(len)?).map(<[u8]>::to_vec);
        }
    }
    None
}

impl Attester for ConfigfsTsm {
    fn platform(&self) -> PlatformKind {
        self.platform
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
        let dir = Self::entry(&self.root, "report")?;
        let result = (|| {
            for _ in 0..TSM_RETRIES {
                fs::write(dir.join("inblob"), report_data).map_err(io("writing the TSM inblob"))?;
                let before = Self::generation(&dir)?;
                let report =
                    fs::read(dir.join("outblob")).map_err(io("reading the TSM outblob"))?;
                let aux = match fs::read(dir.join("auxblob")) {
                    Ok(a) if a.len() <= MAX_AUXBLOB => a,
                    Ok(_) => return Err(AttestError::Bad("auxblob larger than 64 KiB".into())),
                    Err(_) => Vec::new(),
                };
                if Self::generation(&dir)? != before {
                    continue; // someone else wrote inblob between our reads: try again
                }
                let endorsement = match self.platform {
                    PlatformKind::Snp => endorsement_from_cert_table(&aux).ok_or_else(|| {
                        AttestError::Bad(
                            "no VCEK/VLEK in the SNP certificate table (auxblob)".into(),
                        )
                    })?,
                    _ => Vec::new(),
                };
                let ev = Evidence {
                    platform: self.platform,
                    report,
                    endorsement,
                    chain: Vec::new(),
                };
                return ev.encode().map_err(|e| AttestError::Bad(e.to_string()));
            }
            Err(AttestError::Bad(
                "the TSM generation kept changing (a concurrent writer)".into(),
            ))
        })();
        let _ = fs::remove_dir(&dir);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_configfs_tsm_is_reported_clearly() {
        let d = tempfile::tempdir().unwrap();
        let e = ConfigfsTsm::open(&d.path().join("nope"), Some(PlatformKind::Snp))
            .err()
            .unwrap();
        assert!(
            matches!(e, AttestError::Unavailable(ref m) if m.contains("configfs-tsm")),
            "{e}"
        );
    }

    #[test]
    fn configfs_tsm_protocol_against_a_fake_tree() {
        // A directory standing in for configfs: the provider and the blobs are plain files.
        // (Real configfs creates them on mkdir; here they are made up front.)
        let d = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        for tag in ["probe", "report"] {
            let e = d.path().join(format!("swiotlb-{pid}-{tag}"));
            fs::create_dir(&e).unwrap();
            fs::write(e.join("provider"), "tdx_guest\n").unwrap();
            fs::write(e.join("generation"), "7\n").unwrap();
            fs::write(e.join("outblob"), b"QUOTE").unwrap();
        }
        let t = ConfigfsTsm::open(d.path(), None).unwrap();
        assert_eq!(t.platform(), PlatformKind::Tdx);
        assert!(ConfigfsTsm::open(d.path(), Some(PlatformKind::Snp)).is_err());
    }

    #[test]
    fn cert_table_yields_the_vcek_and_rejects_bad_offsets() {
        let mut t = vec![0u8; 72];
        t[..16].copy_from_slice(&VCEK_GUID);
        t[16..20].copy_from_slice(&48u32.to_le_bytes());
        t[20..24].copy_from_slice(&4u32.to_le_bytes());
        t[48..52].copy_from_slice(b"CERT");
        assert_eq!(
            endorsement_from_cert_table(&t).as_deref(),
            Some(&b"CERT"[..])
        );
        t[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(endorsement_from_cert_table(&t), None);
    }
}

#[cfg(test)]
mod hardware {
    use super::*;

    /// On a SEV-SNP or TDX guest with configfs-tsm, real evidence over a known REPORT_DATA
    /// must decode as evidence of that platform. Needs the hardware, so it is not run in CI.
    #[test]
    #[ignore = "needs a SEV-SNP or TDX guest with configfs-tsm (/sys/kernel/config/tsm/report)"]
    fn configfs_tsm_produces_platform_evidence_on_hardware() {
        let t = ConfigfsTsm::open(Path::new(TSM_REPORT_DIR), None).expect("configfs-tsm present");
        let ev = t.evidence(&[0x5a; 64]).expect("evidence");
        let decoded = Evidence::decode(&ev).expect("decodes");
        assert_eq!(decoded.platform, t.platform());
        assert!(!decoded.report.is_empty());
    }
}
