//! CONSTRUCTED evidence: real reports and quotes re-signed by the TEST-ONLY chains of
//! `attest/tests/data/test-pki/` (made by its `make.py`; nothing there is AMD's or Intel's).
//!
//! Tests use it only where real evidence cannot show a check: a field a real report never
//! has (an ID block, a v3 CPUID, a provisional firmware), a TCB status Intel did not give
//! the sample platforms, a revoked certificate. The verifier is told to trust the test
//! roots instead of the pinned ones, as go-sev-guest's and go-tdx-guest's `TrustedRoots`
//! allow; with the pinned roots, every piece of evidence here is rejected.

use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use swiotlb_attest::crl::Crl;
use swiotlb_attest::snp::certs::{AmdRoots, Product, ProductRoots};
use swiotlb_attest::tdx::quote::Quote;
use swiotlb_attest::tdx::verify::Collateral;
use swiotlb_attest::x509::{pem_to_certs, Cert};
use swiotlb_attest::{Evidence, PlatformKind};

/// 2027-01-01T00:00:00Z: inside every test certificate's validity (2020..2049).
pub const TEST_NOW: u64 = 1_798_761_600;

/// The test PKI directory.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../attest/tests/data/test-pki")
}

fn read(rel: &str) -> Vec<u8> {
    super::read(dir().join(rel))
}

fn one_cert(rel: &str) -> Cert {
    pem_to_certs(&read(rel), "test certificate")
        .expect("test PKI certificate")
        .remove(0)
}

/// The test AMD chain as the roots to trust: ARK-Milan and SEV-Milan, both TEST ONLY. (It has
/// no ASVK: the ASK stands in, and its name keeps any VLEK from chaining through it.)
pub fn amd_roots() -> AmdRoots {
    let ark = one_cert("amd/ark.pem");
    let ask = one_cert("amd/ask.pem");
    AmdRoots {
        products: vec![ProductRoots {
            product: Product::Milan,
            ark,
            asvk: ask.clone(),
            ask,
        }],
    }
}

/// A test AMD CRL: `crl`, `crl-ask-revoked` or `crl-stale`.
pub fn amd_crl(name: &str) -> Crl {
    Crl::from_der(&read(&format!("amd/{name}.der")), "AMD CRL").expect("test CRL")
}

/// Re-signs an SNP report (any bytes of it changed first) with the test VCEK, whose
/// certificate carries the virtee report's TCB and hwID: the evidence is the report with
/// the test VCEK.
pub fn resign_snp(report: &[u8]) -> Evidence {
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P384_SHA384_FIXED_SIGNING,
        &read("amd/vcek.pk8"),
        &rng,
    )
    .expect("test VCEK key");
    let mut b = report.to_vec();
    let sig = key.sign(&rng, &b[..0x2A0]).expect("sign");
    let sig = sig.as_ref();
    b[0x2A0..0x330].fill(0);
    for (i, off) in [0x2A0, 0x2E8].into_iter().enumerate() {
        for j in 0..48 {
            b[off + j] = sig[i * 48 + 47 - j];
        }
    }
    Evidence {
        platform: PlatformKind::Snp,
        report: b,
        endorsement: read("amd/vcek.der"),
        chain: Vec::new(),
    }
}

/// The test Intel root ("Intel SGX Root CA", TEST ONLY).
pub fn intel_root() -> Cert {
    one_cert("intel/root.pem")
}

/// A test Intel CRL: `root-crl`, `root-crl-ca-revoked`, `pck-crl`, `pck-crl-revoked` or
/// `pck-crl-stale`.
pub fn intel_crl(name: &str) -> Crl {
    Crl::from_der(&read(&format!("intel/{name}.der")), "Intel CRL").expect("test CRL")
}

/// Re-signs a real TDX quote after `edit` changed its signed part (header, v5 descriptor,
/// body): a fresh attestation key signs it, the QE report (the real one, its REPORTDATA
/// re-bound to the new key) is signed by the test PCK key, and the PCK chain is the test
/// one. Trailing bytes are dropped.
pub fn resign_tdx(quote: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let q = Quote::parse(quote).expect("a real quote");
    let rng = SystemRandom::new();
    let ak_pk8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ak =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ak_pk8.as_ref(), &rng).unwrap();
    let pck = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &read("intel/pck.pk8"),
        &rng,
    )
    .expect("test PCK key");
    let mut signed = q.signed_bytes().to_vec();
    edit(&mut signed);
    let ak_public = &ak.public_key().as_ref()[1..];
    let mut qe = q.qe_report_raw;
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(ak_public);
    h.update(&q.qe_auth_data);
    qe[320..352].copy_from_slice(h.finish().as_ref());
    qe[352..384].fill(0);
    let chain = [
        read("intel/pck.pem"),
        read("intel/pck-ca.pem"),
        read("intel/root.pem"),
    ]
    .concat();
    let mut cert_data = Vec::new();
    cert_data.extend_from_slice(&qe);
    cert_data.extend_from_slice(pck.sign(&rng, &qe).unwrap().as_ref());
    cert_data.extend_from_slice(&(q.qe_auth_data.len() as u16).to_le_bytes());
    cert_data.extend_from_slice(&q.qe_auth_data);
    cert_data.extend_from_slice(&5u16.to_le_bytes());
    cert_data.extend_from_slice(&(chain.len() as u32).to_le_bytes());
    cert_data.extend_from_slice(&chain);
    let mut sig_data = Vec::new();
    sig_data.extend_from_slice(ak.sign(&rng, &signed).unwrap().as_ref());
    sig_data.extend_from_slice(ak_public);
    sig_data.extend_from_slice(&6u16.to_le_bytes());
    sig_data.extend_from_slice(&(cert_data.len() as u32).to_le_bytes());
    sig_data.extend_from_slice(&cert_data);
    let mut out = signed;
    out.extend_from_slice(&(sig_data.len() as u32).to_le_bytes());
    out.extend_from_slice(&sig_data);
    out
}

fn sign_json(v: &serde_json::Value) -> (String, String) {
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &read("intel/tcb-signing.pk8"),
        &rng,
    )
    .expect("test TCB signing key");
    let text = v.to_string();
    let sig = hex::encode(key.sign(&rng, text.as_bytes()).unwrap());
    (text, sig)
}

/// Collateral for quotes re-signed by [`resign_tdx`]: the real TCB info and QE identity of
/// dcap-qvl's v4 sample (so the PCK's real FMSPC and TCB match), valid 2020..2049, every
/// platform TCB level given `status` and `advisories`, re-signed by the test TCB signing key,
/// with the test issuer chains and the test CRLs `root_crl` and `pck_crl`.
pub fn tdx_collateral(
    status: &str,
    advisories: &[&str],
    root_crl: &str,
    pck_crl: &str,
) -> Collateral {
    let real: serde_json::Value = serde_json::from_slice(&super::read(
        super::dcap_samples().join("tdx_quote_collateral.json"),
    ))
    .unwrap();
    let mut tcb: serde_json::Value =
        serde_json::from_str(real["tcb_info"].as_str().unwrap()).unwrap();
    tcb["issueDate"] = "2020-01-01T00:00:00Z".into();
    tcb["nextUpdate"] = "2049-12-31T00:00:00Z".into();
    for level in tcb["tcbLevels"].as_array_mut().unwrap() {
        level["tcbStatus"] = status.into();
        level["advisoryIDs"] = advisories
            .iter()
            .map(|a| serde_json::Value::from(*a))
            .collect();
    }
    let mut qe: serde_json::Value =
        serde_json::from_str(real["qe_identity"].as_str().unwrap()).unwrap();
    qe["issueDate"] = "2020-01-01T00:00:00Z".into();
    qe["nextUpdate"] = "2049-12-31T00:00:00Z".into();
    let (tcb_info, tcb_info_signature) = sign_json(&tcb);
    let (qe_identity, qe_identity_signature) = sign_json(&qe);
    let text = |rel: &str| String::from_utf8(read(rel)).unwrap();
    let signing_chain = text("intel/tcb-signing.pem") + &text("intel/root.pem");
    let json = serde_json::json!({
        "pck_crl_issuer_chain": text("intel/pck-ca.pem") + &text("intel/root.pem"),
        "root_ca_crl": hex::encode(read(&format!("intel/{root_crl}.der"))),
        "pck_crl": hex::encode(read(&format!("intel/{pck_crl}.der"))),
        "tcb_info_issuer_chain": signing_chain,
        "tcb_info": tcb_info,
        "tcb_info_signature": tcb_info_signature,
        "qe_identity_issuer_chain": signing_chain,
        "qe_identity": qe_identity,
        "qe_identity_signature": qe_identity_signature,
    });
    Collateral::from_json(json.to_string().as_bytes()).expect("constructed collateral")
}
