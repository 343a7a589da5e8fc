//! `swiotlb-attest`: verify SEV-SNP reports, TDX quotes and evidence blobs; make emulated
//! keys and evidence for CI.
//!
//! Exit status: 0 accepted, 1 rejected (every reason listed), 2 unreadable input or usage.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use swiotlb_attest::emulated::{self, EmulatedError, ReportOptions, Signer};
use swiotlb_attest::evidence::{Evidence, EvidenceError, MAX_EVIDENCE_LEN};
use swiotlb_attest::policy::{parse_hex, Policy, PolicyError, MAX_POLICY_LEN};
use swiotlb_attest::snp::report::{decode_hex_text, SigningKey, REPORT_LEN};
use swiotlb_attest::tdx::verify::{Collateral, CollateralError, MAX_COLLATERAL_LEN};
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
    Verify(VerifyArgs),
    /// Write a new emulated ARK key pair (CI only): emulated-ark.pk8 (PKCS#8, private),
    /// emulated-ark.pub (97-byte P-384 point) and emulated-ark.pub.hex.
    EmulatedKeygen {
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
    /// Policy file (TOML); the flags above override it.
    #[arg(long)]
    policy: Option<PathBuf>,
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

fn build(a: &VerifyArgs) -> Result<(Verifier, Evidence, Option<SigningKey>), CliError> {
    let mut policy = match &a.policy {
        Some(p) => {
            let text = read(p, MAX_POLICY_LEN)?;
            let text =
                String::from_utf8(text).map_err(|_| CliError::PolicyNotUtf8 { path: p.clone() })?;
            Policy::from_toml(&text).map_err(|source| CliError::Policy {
                path: p.clone(),
                source,
            })?
        }
        None => Policy::default(),
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
    if verdict.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
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
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let unwritable = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CliError::Write { path, source }
    };
    std::fs::create_dir_all(out).map_err(unwritable(out))?;
    let pk8 = Signer::generate_ark_pkcs8().map_err(CliError::Emulated)?;
    let public = Signer::public_key_of(&pk8).map_err(CliError::Emulated)?;
    let key_path = out.join("emulated-ark.pk8");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(unwritable(&key_path))?;
    f.write_all(&pk8).map_err(unwritable(&key_path))?;
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
