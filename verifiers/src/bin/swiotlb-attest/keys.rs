//! The commands that make files: `emulated-keygen` and `emulated-sign` (an emulated ARK key
//! pair and evidence signed with it, for CI), and `ear-keygen` (a key that signs EARs).

use std::path::Path;

use swiotlb_attest::ear::{EarAlg, EarSigner};
use swiotlb_attest::emulated::{ReportOptions, Signer};
use swiotlb_attest::policy::parse_hex;

use crate::{read, CliError, KeyAlg};

pub fn keygen(out: &Path) -> Result<(), CliError> {
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

pub fn ear_keygen(alg: KeyAlg, out: &Path) -> Result<(), CliError> {
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
pub fn sign(
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
