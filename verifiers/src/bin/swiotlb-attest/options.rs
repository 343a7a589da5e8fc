//! The options of `swiotlb-attest verify`: the inputs, the trust anchors and revocation
//! lists, every policy option (`--policy`, `--set`, and the flags that override it), and
//! the EAR's output; and [`build`], which reads them into a verifier and the evidence to
//! check.

use std::path::{Path, PathBuf};

use clap::Args;
use swiotlb_attest::crl::{Crl, MAX_CRL_LEN};
use swiotlb_attest::ear::EarSigner;
use swiotlb_attest::emulated;
use swiotlb_attest::evidence::{Evidence, MAX_EVIDENCE_LEN};
use swiotlb_attest::policy::{parse_hex, Policy, MAX_POLICY_LEN};
use swiotlb_attest::snp::certs::{AmdRoots, Product, ProductRoots};
use swiotlb_attest::snp::report::{decode_hex_text, SigningKey, REPORT_LEN};
use swiotlb_attest::tdx::verify::{Collateral, MAX_COLLATERAL_LEN};
use swiotlb_attest::x509::pem_to_certs;
use swiotlb_attest::{PlatformKind, Verifier};

use crate::{read, CliError};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["report", "tdx_quote", "evidence"])))]
pub struct VerifyArgs {
    /// SEV-SNP report: 1184 raw bytes or hex text.
    #[arg(long, requires = "endorsement")]
    pub report: Option<PathBuf>,
    /// The VCEK certificate (DER) that signed --report.
    #[arg(long, group = "endorsement", conflicts_with = "vlek")]
    pub vcek: Option<PathBuf>,
    /// The VLEK certificate (DER) that signed --report.
    #[arg(long, group = "endorsement")]
    pub vlek: Option<PathBuf>,
    /// Intermediates (ASK or ASVK, then ARK) as PEM; used only if a pinned ARK signed them.
    #[arg(long, requires = "report")]
    pub chain: Option<PathBuf>,
    /// TDX quote (v4 or v5, raw; bytes after its signature data are counted, not read).
    #[arg(long)]
    pub tdx_quote: Option<PathBuf>,
    /// TDX collateral JSON, or a directory holding collateral.json, <quote>_collateral.json
    /// (the quote's file name with that suffix, as dcap-qvl names them) or a single *.json.
    #[arg(long, requires = "tdx_quote")]
    pub collateral: Option<PathBuf>,
    /// An evidence blob, as the guest places it in the pool.
    #[arg(long)]
    pub evidence: Option<PathBuf>,
    /// The emulated ARK public key (emulated-ark.pub or .pub.hex) for emulated evidence.
    #[arg(long)]
    pub emulated_ark: Option<PathBuf>,
    /// Accept emulated evidence (CI only).
    #[arg(long)]
    pub allow_emulated: bool,
    /// Expected SNP VMPL (default 0).
    #[arg(long)]
    pub vmpl: Option<u32>,
    /// Accept debug guests.
    #[arg(long)]
    pub allow_debug: bool,
    /// Expected REPORT_DATA, 128 hex digits.
    #[arg(long)]
    pub report_data: Option<String>,
    /// Policy file (TOML); the flags override it.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// A policy setting KEY=VALUE, spelled as in the policy file (KEY dotted, VALUE TOML):
    /// `--set 'snp.guest_policy.smt="forbidden"'`, `--set tdx.minimum_qe_svn=8`. Repeatable;
    /// applied over --policy.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// An AMD CRL (DER, from the KDS /vcek/v1/{product}/crl); applied when its ARK anchors
    /// the report's chain. Repeatable.
    #[arg(long, value_name = "DER")]
    pub amd_crl: Vec<PathBuf>,
    /// Intel's root CA CRL (DER): must not list the quote's PCK CA.
    #[arg(long, value_name = "DER")]
    pub root_ca_crl: Option<PathBuf>,
    /// Intel's PCK CRL (DER) of the quote's PCK CA: must not list its PCK certificate.
    #[arg(long, value_name = "DER")]
    pub pck_crl: Option<PathBuf>,
    /// Trust these AMD roots instead of the pinned ones: a PEM file with one product's ARK
    /// then ASK (and optionally ASVK), the ARK named ARK-<product>.
    #[arg(long, value_name = "PEM")]
    pub amd_roots: Option<PathBuf>,
    /// Trust this root CA (PEM) instead of the pinned Intel SGX Root CA.
    #[arg(long, value_name = "PEM")]
    pub intel_root: Option<PathBuf>,
    /// Write the verdict as an EAT Attestation Result to this file ("-": standard output):
    /// a JWT when --ear-key is given, else JSON.
    #[arg(long, value_name = "FILE")]
    pub ear_out: Option<PathBuf>,
    /// PKCS#8 key (Ed25519 or P-256, DER or PEM) that signs the EAR.
    #[arg(long, value_name = "PK8", requires = "ear_out")]
    pub ear_key: Option<PathBuf>,
    /// Verification time, RFC 3339 (default: now).
    #[arg(long)]
    pub now: Option<String>,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The collateral file `path` names: the file itself, or in a directory `collateral.json`,
/// the quote's own `<quote file name>_collateral.json`, or its one `*.json`.
fn collateral_file(path: &Path, quote: &Path) -> Result<PathBuf, CliError> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let named = path.join("collateral.json");
    if named.is_file() {
        return Ok(named);
    }
    if let Some(name) = quote.file_name().and_then(|n| n.to_str()) {
        let own = path.join(format!("{name}_collateral.json"));
        if own.is_file() {
            return Ok(own);
        }
    }
    let entries = std::fs::read_dir(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let jsons: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    match jsons.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(CliError::CollateralDir {
            path: path.to_path_buf(),
        }),
    }
}

fn crl(path: &Path, what: &'static str) -> Result<Crl, CliError> {
    Crl::from_der(&read(path, MAX_CRL_LEN)?, what).map_err(|source| CliError::Crl {
        path: path.to_path_buf(),
        source,
    })
}

/// One product's roots from a PEM file: ARK, ASK, and an ASVK if present.
fn amd_roots(path: &Path) -> Result<AmdRoots, CliError> {
    let certs =
        pem_to_certs(&read(path, 64 * 1024)?, "AMD root").map_err(|source| CliError::RootsPem {
            path: path.to_path_buf(),
            source,
        })?;
    let bad = |detail: &str| CliError::Roots {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let (ark, ask) = match certs.as_slice() {
        [ark, ask] | [ark, ask, _] => (ark.clone(), ask.clone()),
        _ => return Err(bad("expected ARK, ASK and optionally ASVK")),
    };
    let product = Product::ALL
        .into_iter()
        .find(|p| ark.common_name().as_deref() == Some(format!("ARK-{}", p.name()).as_str()))
        .ok_or_else(|| {
            bad("the first certificate is not named ARK-Milan, ARK-Genoa or ARK-Turin")
        })?;
    // Without an ASVK, the ASK stands in: its name keeps any VLEK from chaining through it.
    let asvk = certs.get(2).cloned().unwrap_or_else(|| ask.clone());
    Ok(AmdRoots {
        products: vec![ProductRoots {
            product,
            ark,
            ask,
            asvk,
        }],
    })
}

/// The verifier the options ask for, the evidence they name, and for an SNP report the kind
/// of certificate `--vcek` or `--vlek` says signed it.
pub fn build(a: &VerifyArgs) -> Result<(Verifier, Evidence, Option<SigningKey>), CliError> {
    let text = match &a.policy {
        Some(p) => {
            let text = read(p, MAX_POLICY_LEN)?;
            String::from_utf8(text).map_err(|_| CliError::PolicyNotUtf8 { path: p.clone() })?
        }
        None => String::new(),
    };
    let mut policy = match (&a.policy, Policy::from_toml_with(&text, &a.settings)) {
        (_, Ok(p)) => p,
        (Some(p), Err(source)) if Policy::from_toml(&text).is_err() => {
            return Err(CliError::Policy {
                path: p.clone(),
                source,
            })
        }
        (_, Err(source)) => return Err(CliError::Settings(source)),
    };
    if a.allow_debug {
        policy.allow_debug = true;
    }
    if a.allow_emulated {
        policy.allow_emulated = true;
    }
    if let Some(v) = a.vmpl {
        if v > 3 {
            return Err(CliError::Vmpl);
        }
        policy.vmpl = Some(v);
    }
    if let Some(h) = &a.report_data {
        policy.report_data = Some(parse_hex::<64>("--report-data", h).map_err(CliError::Hex)?);
    }
    let mut verifier = Verifier::new(policy);
    if let Some(now) = &a.now {
        let t =
            swiotlb_attest::time::parse_rfc3339(now).ok_or_else(|| CliError::Now(now.clone()))?;
        verifier = verifier.at_time(t);
    }
    for p in &a.amd_crl {
        verifier = verifier.with_amd_crl(crl(p, "AMD CRL")?);
    }
    let root_ca_crl = a
        .root_ca_crl
        .as_deref()
        .map(|p| crl(p, "root CA CRL"))
        .transpose()?;
    let pck_crl = a
        .pck_crl
        .as_deref()
        .map(|p| crl(p, "PCK CRL"))
        .transpose()?;
    verifier = verifier.with_intel_crls(root_ca_crl, pck_crl);
    if let Some(p) = &a.amd_roots {
        verifier = verifier.with_amd_roots(amd_roots(p)?);
    }
    if let Some(p) = &a.intel_root {
        let mut certs = pem_to_certs(&read(p, 64 * 1024)?, "Intel root").map_err(|source| {
            CliError::RootsPem {
                path: p.clone(),
                source,
            }
        })?;
        if certs.len() != 1 {
            return Err(CliError::Roots {
                path: p.clone(),
                detail: "expected one certificate".into(),
            });
        }
        verifier = verifier.with_intel_root(certs.remove(0));
    }
    if let Some(p) = &a.ear_key {
        let signer =
            EarSigner::from_pkcs8(&read(p, 16 * 1024)?).map_err(|source| CliError::Ear {
                path: p.clone(),
                source,
            })?;
        verifier = verifier.with_ear_signer(signer);
    }
    if let Some(p) = &a.emulated_ark {
        let key = read(p, 1024)?;
        let v = emulated::Verifier::new(&key).map_err(|source| CliError::EmulatedArk {
            path: p.clone(),
            source,
        })?;
        verifier = verifier.with_emulated(v);
    }
    let mut claimed_key = None;
    let evidence = if let Some(rp) = &a.report {
        let raw = read(rp, 4 * REPORT_LEN)?;
        let report = if raw.len() == REPORT_LEN {
            raw
        } else {
            decode_hex_text(&raw).ok_or_else(|| CliError::NotAReport { path: rp.clone() })?
        };
        let (cert_path, key) = match (&a.vcek, &a.vlek) {
            (Some(p), _) => (p, SigningKey::Vcek),
            (_, Some(p)) => (p, SigningKey::Vlek),
            _ => return Err(CliError::NoEndorsement),
        };
        claimed_key = Some(key);
        let endorsement = read(cert_path, swiotlb_attest::evidence::MAX_ENDORSEMENT_LEN)?;
        let chain = match &a.chain {
            Some(p) => read(p, swiotlb_attest::evidence::MAX_CHAIN_LEN)?,
            None => Vec::new(),
        };
        Evidence {
            platform: PlatformKind::Snp,
            report,
            endorsement,
            chain,
        }
    } else if let Some(qp) = &a.tdx_quote {
        if let Some(c) = &a.collateral {
            let file = collateral_file(c, qp)?;
            let json = read(&file, MAX_COLLATERAL_LEN)?;
            let col = Collateral::from_json(&json).map_err(|source| CliError::Collateral {
                path: file.clone(),
                source,
            })?;
            verifier = verifier.with_tdx_collateral(col);
        }
        Evidence {
            platform: PlatformKind::Tdx,
            report: read(qp, swiotlb_attest::evidence::MAX_REPORT_LEN)?,
            endorsement: Vec::new(),
            chain: Vec::new(),
        }
    } else if let Some(ep) = &a.evidence {
        let blob = read(ep, MAX_EVIDENCE_LEN)?;
        Evidence::decode(&blob).map_err(|source| CliError::Evidence {
            path: ep.clone(),
            source,
        })?
    } else {
        return Err(CliError::NoInput);
    };
    Ok((verifier, evidence, claimed_key))
}
