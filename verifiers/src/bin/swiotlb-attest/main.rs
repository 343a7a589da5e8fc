//! `swiotlb-attest`: verify SEV-SNP reports, TDX quotes and evidence blobs; make emulated
//! keys and evidence for CI.
//!
//! Exit status: 0 accepted, 1 rejected (every reason listed), 2 unreadable input or usage.
//!
//! This file holds the commands, the errors and the verdict's output; [`options`] holds every
//! option of `verify` (the policy's among them) and turns them into a verifier and the
//! evidence to check; [`keys`] makes the keys and the emulated evidence.

mod keys;
mod options;

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use swiotlb_attest::crl::CrlError;
use swiotlb_attest::ear::EarError;
use swiotlb_attest::emulated::EmulatedError;
use swiotlb_attest::evidence::EvidenceError;
use swiotlb_attest::policy::PolicyError;
use swiotlb_attest::snp::report::REPORT_LEN;
use swiotlb_attest::tdx::verify::CollateralError;
use swiotlb_attest::x509::CertError;
use swiotlb_attest::{Reason, ReasonKind, Verdict, Verifier};
use swiotlb_shared::error_chain;
use thiserror::Error;

use keys::{ear_keygen, keygen, sign};
use options::{build, VerifyArgs};

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
