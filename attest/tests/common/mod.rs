//! Where the tests find real evidence.
//!
//! - `../shared/vectors` beside the checkout, or the directory named by `SWIOTLB_VECTORS`:
//!   SEV-SNP reports from virtee/sev and go-sev-guest, TDX quotes from dcap-qvl and trustee.
//!   When absent, tests that need them say so loudly on stderr and return.
//! - The published sources of the `sev` and `dcap-qvl` crates, found with `cargo metadata`:
//!   `sev` ships a real Milan report, its VCEK and chain (and a Turin VCEK and chain) under
//!   `tests/certs_data/`, `dcap-qvl` a real TDX quote and its collateral under `sample/`.
//!   They are always there once the dev-dependencies are built, so a fresh clone without
//!   `../shared` still tests real evidence.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// 2025-07-01T00:00:00Z: inside the TDX collateral window (2025-06-19..2025-07-19) and the
/// validity of every certificate the vectors carry.
pub const NOW: u64 = 1_751_328_000;

/// The shared vectors directory, or `None` after saying loudly that it is missing.
pub fn vectors(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("SWIOTLB_VECTORS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"),
    };
    if dir.join("README.md").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "!!! {test}: SKIPPED the ../shared/vectors part: {} not found (set SWIOTLB_VECTORS) !!!",
            dir.display()
        );
        // The harness captures eprintln!; say it once per test binary where it is seen.
        static BANNER: OnceLock<()> = OnceLock::new();
        BANNER.get_or_init(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "!!! ../shared/vectors not found at {}: tests that need it are SKIPPED (set SWIOTLB_VECTORS) !!!",
                dir.display()
            );
        });
        None
    }
}

fn metadata() -> &'static serde_json::Value {
    static META: OnceLock<serde_json::Value> = OnceLock::new();
    META.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        for offline in [true, false] {
            let mut cmd = std::process::Command::new(&cargo);
            cmd.args(["metadata", "--format-version", "1", "--manifest-path"])
                .arg(&manifest);
            if offline {
                cmd.arg("--offline");
            }
            if let Ok(out) = cmd.output() {
                if out.status.success() {
                    if let Ok(v) = serde_json::from_slice(&out.stdout) {
                        return v;
                    }
                }
            }
        }
        panic!("cargo metadata failed: cannot locate the sev and dcap-qvl sources");
    })
}

/// The source directory of dependency `name` (its manifest's directory).
pub fn crate_dir(name: &str) -> PathBuf {
    let pkgs = metadata()["packages"].as_array().expect("packages");
    let pkg = pkgs
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not in cargo metadata"));
    let manifest = pkg["manifest_path"].as_str().expect("manifest_path");
    Path::new(manifest)
        .parent()
        .expect("crate dir")
        .to_path_buf()
}

/// `sev`'s `tests/certs_data/`.
pub fn sev_certs_data() -> PathBuf {
    let d = crate_dir("sev").join("tests/certs_data");
    assert!(
        d.join("report_milan.hex").is_file(),
        "{} has no report_milan.hex",
        d.display()
    );
    d
}

/// `dcap-qvl`'s `sample/`.
pub fn dcap_samples() -> PathBuf {
    let d = crate_dir("dcap-qvl").join("sample");
    assert!(
        d.join("tdx_quote").is_file(),
        "{} has no tdx_quote",
        d.display()
    );
    d
}

/// Reads a file.
pub fn read(p: impl AsRef<Path>) -> Vec<u8> {
    let p = p.as_ref();
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A real SNP case: report bytes, endorsement DER, chain PEM.
pub struct SnpCase {
    pub name: &'static str,
    pub report: Vec<u8>,
    pub vcek: Vec<u8>,
    pub chain: Vec<u8>,
}

impl SnpCase {
    /// The case as SNP evidence: its report and VCEK, with its ASK/ARK chain or without it
    /// (the pinned roots then serve).
    pub fn evidence(&self, with_chain: bool) -> swiotlb_attest::Evidence {
        swiotlb_attest::Evidence {
            platform: swiotlb_attest::PlatformKind::Snp,
            report: self.report.clone(),
            endorsement: self.vcek.clone(),
            chain: if with_chain {
                self.chain.clone()
            } else {
                Vec::new()
            },
        }
    }
}

/// The virtee Milan report from the `sev` crate's published source (always available).
pub fn virtee_from_sev_crate() -> SnpCase {
    let d = sev_certs_data();
    let report = swiotlb_attest::snp::report::decode_hex_text(&read(d.join("report_milan.hex")))
        .expect("report_milan.hex is hex");
    SnpCase {
        name: "virtee (sev crate)",
        report,
        vcek: read(d.join("vcek_milan.der")),
        chain: read(d.join("cert_chain_milan")),
    }
}

/// The go-sev-guest report (debug on) from the shared vectors.
pub fn gsg(vectors: &Path) -> SnpCase {
    let d = vectors.join("snp/go-sev-guest");
    SnpCase {
        name: "go-sev-guest",
        report: read(d.join("attestation.bin")),
        vcek: read(d.join("vcek.der")),
        chain: read(d.join("ask_ark_milan.pem")),
    }
}

/// The virtee report from the shared vectors.
pub fn virtee(vectors: &Path) -> SnpCase {
    let d = vectors.join("snp/virtee-sev");
    SnpCase {
        name: "virtee (vectors)",
        report: swiotlb_attest::snp::report::decode_hex_text(&read(d.join("report_milan.hex")))
            .expect("hex"),
        vcek: read(d.join("vcek_milan.der")),
        chain: read(d.join("cert_chain_milan")),
    }
}

pub mod testpki;
