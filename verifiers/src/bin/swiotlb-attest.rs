//! `swiotlb-attest`: verify SEV-SNP reports, TDX quotes and evidence blobs; make emulated
//! keys and evidence for CI.
//!
//! Exit status: 0 accepted, 1 rejected (every reason listed), 2 unreadable input or usage.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use swiotlb_attest::crl::{Crl, CrlError, MAX_CRL_LEN};
use swiotlb_attest::ear::{EarAlg, EarError, EarSigner};
use swiotlb_attest::emulated::{self, EmulatedError, ReportOptions, Signer};
use swiotlb_attest::evidence::{Evidence, EvidenceError, MAX_EVIDENCE_LEN};
use swiotlb_attest::policy::{parse_hex, Policy, PolicyError, MAX_POLICY_LEN};
use swiotlb_attest::snp::certs::{AmdRoots, Product, ProductRoots};
use swiotlb_attest::snp::report::{decode_hex_text, SigningKey, REPORT_LEN};
use swiotlb_attest::tdx::verify::{Collateral, CollateralError, MAX_COLLATERAL_LEN};
use swiotlb_attest::x509::{pem_to_certs, CertError};
use swiotlb_attest::{PlatformKind, Reason, ReasonKind, Verdict, Verifier};
use swiotlb_shared::error_chain;
use thiserror::Error;

#[derive(Parser)]
#[command(
    name = "swiotlb-attest",
    version,
    about = "Verify attestation evidence for the SWIOTLB virtio pair"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Verify an SEV-SNP report, a TDX quote or an evidence blob.
    Verify(Box<VerifyArgs>),
    /// Write a new emulated ARK key pair (CI only): emulated-ark.pk8 (PKCS#8, private),
    /// emulated-ark.pub (97-byte P-384 point) and emulated-ark.pub.hex.
    EmulatedKeygen {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a new key for signing EARs: ear-key.pk8 (PKCS#8, private, 0600) and
    /// ear-key.jwk (the public key relying parties verify with).
    EarKeygen {
        /// ed25519 (JWT alg EdDSA) or es256 (ECDSA P-256).
        #[arg(long, value_enum, default_value_t = KeyAlg::Ed25519)]
        alg: KeyAlg,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign an emulated report with an emulated ARK key and write the evidence blob (CI only).
    EmulatedSign {
        /// The emulated ARK private key (emulated-ark.pk8).
        #[arg(long)]
        key: PathBuf,
        /// REPORT_DATA, 128 hex digits.
        #[arg(long)]
        report_data: String,
        /// MEASUREMENT, 96 hex digits (default zeros).
        #[arg(long)]
        measurement: Option<String>,
        /// HOST_DATA, 64 hex digits (default zeros).
        #[arg(long)]
        host_data: Option<String>,
        /// Set the DEBUG policy bit.
        #[arg(long)]
        debug: bool,
        /// VMPL of the report.
        #[arg(long, default_value_t = 0)]
        vmpl: u32,
        /// Where to write the evidence blob.
        #[arg(long)]
        out: PathBuf,
    },
}

/// The algorithm of an EAR signing key.
#[derive(Clone, Copy, clap::ValueEnum)]
enum KeyAlg {
    /// Ed25519, JWT alg EdDSA.
    Ed25519,
    /// ECDSA P-256, JWT alg ES256.
    Es256,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["report", "tdx_quote", "evidence"])))]
struct VerifyArgs {
    /// SEV-SNP report: 1184 raw bytes or hex text.
    #[arg(long, requires = "endorsement")]
    report: Option<PathBuf>,
    /// The VCEK certificate (DER) that signed --report.
    #[arg(long, group = "endorsement", conflicts_with = "vlek")]
    vcek: Option<PathBuf>,
    /// The VLEK certificate (DER) that signed --report.
    #[arg(long, group = "endorsement")]
    vlek: Option<PathBuf>,
    /// Intermediates (ASK or ASVK, then ARK) as PEM; used only if a pinned ARK signed them.
    #[arg(long, requires = "report")]
    chain: Option<PathBuf>,
    /// TDX quote (v4 or v5, raw; bytes after its signature data are counted, not read).
    #[arg(long)]
    tdx_quote: Option<PathBuf>,
    /// TDX collateral JSON, or a directory holding collateral.json, <quote>_collateral.json
    /// (the quote's file name with that suffix, as dcap-qvl names them) or a single *.json.
    #[arg(long, requires = "tdx_quote")]
    collateral: Option<PathBuf>,
    /// An evidence blob, as the guest places it in the pool.
    #[arg(long)]
    evidence: Option<PathBuf>,
    /// The emulated ARK public key (emulated-ark.pub or .pub.hex) for emulated evidence.
    #[arg(long)]
    emulated_ark: Option<PathBuf>,
    /// Accept emulated evidence (CI only).
    #[arg(long)]
    allow_emulated: bool,
    /// Expected SNP VMPL (default 0).
    #[arg(long)]
    vmpl: Option<u32>,
    /// Accept debug guests.
    #[arg(long)]
    allow_debug: bool,
    /// Expected REPORT_DATA, 128 hex digits.
    #[arg(long)]
    report_data: Option<String>,
    /// Policy file (TOML); the flags override it.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A policy setting KEY=VALUE, spelled as in the policy file (KEY dotted, VALUE TOML):
    /// `--set 'snp.guest_policy.smt="forbidden"'`, `--set tdx.minimum_qe_svn=8`. Repeatable;
    /// applied over --policy.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// An AMD CRL (DER, from the KDS /vcek/v1/{product}/crl); applied when its ARK anchors
    /// the report's chain. Repeatable.
    #[arg(long, value_name = "DER")]
    amd_crl: Vec<PathBuf>,
    /// Intel's root CA CRL (DER): must not list the quote's PCK CA.
    #[arg(long, value_name = "DER")]
    root_ca_crl: Option<PathBuf>,
    /// Intel's PCK CRL (DER) of the quote's PCK CA: must not list its PCK certificate.
    #[arg(long, value_name = "DER")]
    pck_crl: Option<PathBuf>,
    /// Trust these AMD roots instead of the pinned ones: a PEM file with one product's ARK
    /// then ASK (and optionally ASVK), the ARK named ARK-<product>.
    #[arg(long, value_name = "PEM")]
    amd_roots: Option<PathBuf>,
    /// Trust this root CA (PEM) instead of the pinned Intel SGX Root CA.
    #[arg(long, value_name = "PEM")]
    intel_root: Option<PathBuf>,
    /// Write the verdict as an EAT Attestation Result to this file ("-": standard output):
    /// a JWT when --ear-key is given, else JSON.
    #[arg(long, value_name = "FILE")]
    ear_out: Option<PathBuf>,
    /// PKCS#8 key (Ed25519 or P-256, DER or PEM) that signs the EAR.
    #[arg(long, value_name = "PK8", requires = "ear_out")]
    ear_key: Option<PathBuf>,
    /// Verification time, RFC 3339 (default: now).
    #[arg(long)]
    now: Option<String>,
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
}

/// An input that cannot be read or understood, or an output that cannot be written: exit
/// status 2.
#[derive(Debug, Error)]
enum CliError {
    /// A file cannot be read.
    #[error("{}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file is larger than what it may hold.
    #[error("{}: {len} bytes, larger than {max}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The policy file is not text.
    #[error("{}: not UTF-8", path.display())]
    PolicyNotUtf8 {
        /// The policy file.
        path: PathBuf,
    },
    /// The policy file is not a policy.
    #[error("{}", path.display())]
    Policy {
        /// The policy file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: PolicyError,
    },
    /// `--vmpl` out of range.
    #[error("--vmpl must be 0 to 3")]
    Vmpl,
    /// A hex argument (`--report-data`, `--measurement`, `--host-data`) that does not parse.
    #[error(transparent)]
    Hex(PolicyError),
    /// `--now` is not a time.
    #[error("--now {0:?} is not an RFC 3339 time")]
    Now(String),
    /// The emulated ARK public key file does not hold a key.
    #[error("{}", path.display())]
    EmulatedArk {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: EmulatedError,
    },
    /// The report file is neither a raw report nor its hex.
    #[error("{}: neither {REPORT_LEN} bytes nor hex text", path.display())]
    NotAReport {
        /// The report file.
        path: PathBuf,
    },
    /// `--report` without its certificate.
    #[error("--report needs --vcek or --vlek")]
    NoEndorsement,
    /// A collateral directory without one collateral file.
    #[error("{}: expected collateral.json, the quote's <name>_collateral.json, or exactly one *.json file", path.display())]
    CollateralDir {
        /// The directory.
        path: PathBuf,
    },
    /// The collateral file is not collateral.
    #[error("{}", path.display())]
    Collateral {
        /// The collateral file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: CollateralError,
    },
    /// The evidence file is not an evidence blob.
    #[error("{}", path.display())]
    Evidence {
        /// The evidence file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: EvidenceError,
    },
    /// No input named.
    #[error("one of --report, --tdx-quote, --evidence is required")]
    NoInput,
    /// A file cannot be written (or its directory created).
    #[error("{}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The emulated platform refused a key or a report.
    #[error(transparent)]
    Emulated(EmulatedError),
    /// The signed evidence cannot be encoded.
    #[error(transparent)]
    Encode(EvidenceError),
    /// A CRL file is not a CRL.
    #[error("{}", path.display())]
    Crl {
        /// The CRL file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: CrlError,
    },
    /// A roots file is not the roots it should be.
    #[error("{}: {detail}", path.display())]
    Roots {
        /// The roots file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A roots file does not hold certificates.
    #[error("{}", path.display())]
    RootsPem {
        /// The roots file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: CertError,
    },
    /// The EAR key cannot sign, or the EAR cannot be made.
    #[error("{}", path.display())]
    Ear {
        /// The key file, or the EAR's output.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: EarError,
    },
    /// `--set` settings that do not apply.
    #[error("--set")]
    Settings(#[source] PolicyError),
}

fn read(path: &Path, max: usize) -> Result<Vec<u8>, CliError> {
    let unreadable = |source| CliError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.len() > max as u64 {
        return Err(CliError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
            max,
        });
    }
    std::fs::read(path).map_err(unreadable)
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

fn build(a: &VerifyArgs) -> Result<(Verifier, Evidence, Option<SigningKey>), CliError> {
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

fn print_verdict(v: &Verdict, json: bool) {
    if json {
        match serde_json::to_string_pretty(v) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("swiotlb-attest: cannot print JSON: {e}"),
        }
        return;
    }
    let platform = v.platform.map_or("unknown", |p| p.as_str());
    let label = if v.emulated {
        " (EMULATED: not a confidential VM)"
    } else {
        ""
    };
    println!("{}: {platform}{label}", v.verdict);
    if let Some(m) = &v.measurement {
        println!("measurement: {m}");
    }
    if let Some(t) = &v.tcb {
        if let Ok(s) = serde_json::to_string(t) {
            println!("tcb: {s}");
        }
    }
    if let Some(n) = v.trailing_bytes.filter(|&n| n > 0) {
        println!("trailing bytes: {n} after the quote's signature data (unsigned, not read)");
    }
    if let Some(d) = &v.evidence_sha256 {
        println!("evidence sha256: {d}");
    }
    for r in &v.reasons {
        println!("reason: {r}");
    }
}

fn verify(a: &VerifyArgs) -> ExitCode {
    let (verifier, evidence, claimed_key) = match build(a) {
        Ok(x) => x,
        Err(e) => return unreadable(&e, a.json),
    };
    let mut verdict = verifier.verify_evidence(&evidence, None);
    // The report's SIGNING_KEY must be the kind of certificate the operator named.
    if let (Some(claimed), Ok(r)) = (
        claimed_key,
        swiotlb_attest::snp::report::Report::parse(&evidence.report),
    ) {
        if r.signing_key != claimed {
            verdict.push(Reason::new(
                ReasonKind::SigningKey,
                format!(
                    "--{} given but the report's SIGNING_KEY is {}",
                    claimed.name().to_lowercase(),
                    r.signing_key.name()
                ),
            ));
        }
    }
    print_verdict(&verdict, a.json);
    if let Some(out) = &a.ear_out {
        if let Err(e) = write_ear(&verifier, &verdict, out) {
            return unreadable(&e, a.json);
        }
    }
    if verdict.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Writes the verdict's EAR to `out` ("-": standard output).
fn write_ear(verifier: &Verifier, verdict: &Verdict, out: &Path) -> Result<(), CliError> {
    let ear = verifier.ear(verdict).map_err(|source| CliError::Ear {
        path: out.to_path_buf(),
        source,
    })?;
    if out == Path::new("-") {
        println!("{ear}");
        return Ok(());
    }
    std::fs::write(out, format!("{ear}\n")).map_err(|source| CliError::Write {
        path: out.to_path_buf(),
        source,
    })
}

fn unreadable(e: &CliError, json: bool) -> ExitCode {
    let msg = error_chain(e);
    if json {
        println!(
            "{}",
            serde_json::json!({ "verdict": "error", "accepted": false, "error": msg })
        );
    }
    eprintln!("swiotlb-attest: {msg}");
    ExitCode::from(2)
}

fn keygen(out: &Path) -> Result<(), CliError> {
    let unwritable = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CliError::Write { path, source }
    };
    std::fs::create_dir_all(out).map_err(unwritable(out))?;
    let pk8 = Signer::generate_ark_pkcs8().map_err(CliError::Emulated)?;
    let public = Signer::public_key_of(&pk8).map_err(CliError::Emulated)?;
    let key_path = out.join("emulated-ark.pk8");
    write_private(&key_path, &pk8)?;
    for (name, bytes) in [
        ("emulated-ark.pub", public.to_vec()),
        (
            "emulated-ark.pub.hex",
            format!("{}\n", hex::encode(public)).into_bytes(),
        ),
    ] {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(unwritable(&p))?;
    }
    println!(
        "wrote {} (private, EMULATED platform only) and emulated-ark.pub[.hex]",
        key_path.display()
    );
    Ok(())
}

/// Writes a 0600 file that must not exist yet.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let unwritable = |source| CliError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(unwritable)?;
    f.write_all(bytes).map_err(unwritable)
}

fn ear_keygen(alg: KeyAlg, out: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(out).map_err(|source| CliError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let key_path = out.join("ear-key.pk8");
    let ear_err = |source| CliError::Ear {
        path: key_path.clone(),
        source,
    };
    let alg = match alg {
        KeyAlg::Ed25519 => EarAlg::EdDsa,
        KeyAlg::Es256 => EarAlg::Es256,
    };
    let pk8 = EarSigner::generate_pkcs8(alg).map_err(ear_err)?;
    let jwk = EarSigner::from_pkcs8(&pk8).map_err(ear_err)?.public_jwk();
    write_private(&key_path, &pk8)?;
    let jwk_path = out.join("ear-key.jwk");
    std::fs::write(&jwk_path, format!("{jwk}\n")).map_err(|source| CliError::Write {
        path: jwk_path.clone(),
        source,
    })?;
    println!(
        "wrote {} (private, signs EARs with {}) and {}",
        key_path.display(),
        alg.name(),
        jwk_path.display()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn sign(
    key: &Path,
    report_data: &str,
    measurement: Option<&str>,
    host_data: Option<&str>,
    debug: bool,
    vmpl: u32,
    out: &Path,
) -> Result<(), CliError> {
    let pk8 = read(key, 4096)?;
    let signer = Signer::from_pkcs8(&pk8).map_err(CliError::Emulated)?;
    let rd = parse_hex::<64>("--report-data", report_data).map_err(CliError::Hex)?;
    let m = measurement
        .map(|s| parse_hex::<48>("--measurement", s))
        .transpose()
        .map_err(CliError::Hex)?
        .unwrap_or([0; 48]);
    let mut opts = ReportOptions {
        vmpl,
        ..ReportOptions::default()
    };
    if let Some(h) = host_data {
        opts.host_data = parse_hex::<32>("--host-data", h).map_err(CliError::Hex)?;
    }
    if debug {
        opts.guest_policy |= swiotlb_attest::snp::report::POLICY_DEBUG;
    }
    let ev = signer
        .sign_report(&rd, &m, &opts)
        .map_err(CliError::Emulated)?;
    let blob = ev.encode().map_err(CliError::Encode)?;
    std::fs::write(out, blob).map_err(|source| CliError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    println!("wrote EMULATED evidence to {}", out.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Verify(a) => verify(&a),
        Cmd::EmulatedKeygen { out } => match keygen(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => unreadable(&e, false),
        },
        Cmd::EarKeygen { alg, out } => match ear_keygen(alg, &out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => unreadable(&e, false),
        },
        Cmd::EmulatedSign {
            key,
            report_data,
            measurement,
            host_data,
            debug,
            vmpl,
            out,
        } => match sign(
            &key,
            &report_data,
            measurement.as_deref(),
            host_data.as_deref(),
            debug,
            vmpl,
            &out,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => unreadable(&e, false),
        },
    }
}
