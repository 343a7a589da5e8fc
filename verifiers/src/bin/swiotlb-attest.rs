//! `swiotlb-attest`: verify SEV-SNP reports, TDX quotes and evidence blobs; make emulated
//! keys and evidence for CI.
//!
//! Exit status: 0 accepted, 1 rejected (every reason listed), 2 unreadable input or usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use swiotlb_attest::emulated::{self, ReportOptions, Signer};
use swiotlb_attest::evidence::{Evidence, MAX_EVIDENCE_LEN};
use swiotlb_attest::policy::{parse_hex, Policy, MAX_POLICY_LEN};
use swiotlb_attest::snp::report::{decode_hex_text, SigningKey, REPORT_LEN};
use swiotlb_attest::tdx::verify::{Collateral, MAX_COLLATERAL_LEN};
use swiotlb_attest::{PlatformKind, Reason, ReasonKind, Verdict, Verifier};

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
    /// TDX quote (v4, raw).
    #[arg(long)]
    tdx_quote: Option<PathBuf>,
    /// TDX collateral JSON, or a directory holding collateral.json (or a single *.json).
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

/// An input that cannot be read or understood: exit status 2.
struct Unreadable(String);

fn read(path: &Path, max: usize) -> Result<Vec<u8>, Unreadable> {
    let meta =
        std::fs::metadata(path).map_err(|e| Unreadable(format!("{}: {e}", path.display())))?;
    if meta.len() > max as u64 {
        return Err(Unreadable(format!(
            "{}: {} bytes, larger than {max}",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| Unreadable(format!("{}: {e}", path.display())))
}

fn collateral_file(path: &Path) -> Result<PathBuf, Unreadable> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let named = path.join("collateral.json");
    if named.is_file() {
        return Ok(named);
    }
    let entries =
        std::fs::read_dir(path).map_err(|e| Unreadable(format!("{}: {e}", path.display())))?;
    let jsons: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    match jsons.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Unreadable(format!(
            "{}: expected collateral.json or exactly one *.json file",
            path.display()
        ))),
    }
}

fn build(a: &VerifyArgs) -> Result<(Verifier, Evidence, Option<SigningKey>), Unreadable> {
    let mut policy = match &a.policy {
        Some(p) => {
            let text = read(p, MAX_POLICY_LEN)?;
            let text = String::from_utf8(text)
                .map_err(|_| Unreadable(format!("{}: not UTF-8", p.display())))?;
            Policy::from_toml(&text).map_err(|e| {
                Unreadable(format!(
                    "{}: {}",
                    p.display(),
                    swiotlb_shared::error_chain(&e)
                ))
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
            return Err(Unreadable("--vmpl must be 0 to 3".into()));
        }
        policy.vmpl = Some(v);
    }
    if let Some(h) = &a.report_data {
        policy.report_data =
            Some(parse_hex::<64>("--report-data", h).map_err(|e| Unreadable(e.to_string()))?);
    }
    let mut verifier = Verifier::new(policy);
    if let Some(now) = &a.now {
        let t = swiotlb_attest::time::parse_rfc3339(now)
            .ok_or_else(|| Unreadable(format!("--now {now:?} is not an RFC 3339 time")))?;
        verifier = verifier.at_time(t);
    }
    if let Some(p) = &a.emulated_ark {
        let key = read(p, 1024)?;
        let v = emulated::Verifier::new(&key)
            .map_err(|e| Unreadable(format!("{}: {e}", p.display())))?;
        verifier = verifier.with_emulated(v);
    }
    let mut claimed_key = None;
    let evidence = if let Some(rp) = &a.report {
        let raw = read(rp, 4 * REPORT_LEN)?;
        let report = if raw.len() == REPORT_LEN {
            raw
        } else {
            decode_hex_text(&raw).ok_or_else(|| {
                Unreadable(format!(
                    "{}: neither {REPORT_LEN} bytes nor hex text",
                    rp.display()
                ))
            })?
        };
        let (cert_path, key) = match (&a.vcek, &a.vlek) {
            (Some(p), _) => (p, SigningKey::Vcek),
            (_, Some(p)) => (p, SigningKey::Vlek),
            _ => return Err(Unreadable("--report needs --vcek or --vlek".into())),
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
            let file = collateral_file(c)?;
            let json = read(&file, MAX_COLLATERAL_LEN)?;
            let col = Collateral::from_json(&json).map_err(|e| {
                Unreadable(format!(
                    "{}: {}",
                    file.display(),
                    swiotlb_shared::error_chain(&e)
                ))
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
        Evidence::decode(&blob).map_err(|e| Unreadable(format!("{}: {e}", ep.display())))?
    } else {
        return Err(Unreadable(
            "one of --report, --tdx-quote, --evidence is required".into(),
        ));
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
        Err(Unreadable(msg)) => return unreadable(&msg, a.json),
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

fn unreadable(msg: &str, json: bool) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::json!({ "verdict": "error", "accepted": false, "error": msg })
        );
    }
    eprintln!("swiotlb-attest: {msg}");
    ExitCode::from(2)
}

fn keygen(out: &Path) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let pk8 = Signer::generate_ark_pkcs8().map_err(|e| e.to_string())?;
    let public = Signer::public_key_of(&pk8).map_err(|e| e.to_string())?;
    let key_path = out.join("emulated-ark.pk8");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    f.write_all(&pk8)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    for (name, bytes) in [
        ("emulated-ark.pub", public.to_vec()),
        (
            "emulated-ark.pub.hex",
            format!("{}\n", hex::encode(public)).into_bytes(),
        ),
    ] {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))?;
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
) -> Result<(), String> {
    let pk8 = read(key, 4096).map_err(|Unreadable(m)| m)?;
    let signer = Signer::from_pkcs8(&pk8).map_err(|e| e.to_string())?;
    let rd = parse_hex::<64>("--report-data", report_data).map_err(|e| e.to_string())?;
    let m = measurement
        .map(|s| parse_hex::<48>("--measurement", s))
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or([0; 48]);
    let mut opts = ReportOptions {
        vmpl,
        ..ReportOptions::default()
    };
    if let Some(h) = host_data {
        opts.host_data = parse_hex::<32>("--host-data", h).map_err(|e| e.to_string())?;
    }
    if debug {
        opts.guest_policy |= swiotlb_attest::snp::report::POLICY_DEBUG;
    }
    let ev = signer
        .sign_report(&rd, &m, &opts)
        .map_err(|e| e.to_string())?;
    let blob = ev.encode().map_err(|e| e.to_string())?;
    std::fs::write(out, blob).map_err(|e| format!("{}: {e}", out.display()))?;
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
