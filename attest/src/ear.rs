//! The verdict as an EAT Attestation Result (EAR, IETF RATS `draft-fv-rats-ear`, the form
//! Veraison emits and Trustee consumes), optionally signed as a JWT (EdDSA with Ed25519, or
//! ES256), so relying parties read it with the tools they already have.
//!
//! ```json
//! {
//!   "eat_profile": "tag:github.com,2023:veraison/ear",
//!   "iat": 1751328000,
//!   "ear.verifier-id": { "developer": "swiotlb-attest", "build": "swiotlb-attest 0.1.0" },
//!   "eat_nonce": "<REPORT_DATA, base64url>",
//!   "submods": {
//!     "tdx": {
//!       "ear.status": "affirming",
//!       "ear.trustworthiness-vector": { "instance-identity": 2, "configuration": 2,
//!                                       "hardware": 2, "runtime-opaque": 2 },
//!       "ear.appraisal-policy-id": "urn:swiotlb-attest:policy:sha256:<policy digest>",
//!       "ear.veraison.annotated-evidence": { "verdict": "accepted", "evidence_sha256": "…",
//!                                            "measurement": "…", "tcb": {…}, "reasons": [] }
//!     }
//!   }
//! }
//! ```
//!
//! The AR4SI trustworthiness vector claims only what was appraised (`draft-ietf-rats-ar4si`
//! values; 0 "no claim" is left out):
//!
//! | claim | 2 (affirming) when | otherwise |
//! |---|---|---|
//! | instance-identity | the report's or quote's signature and chain verify to the roots | 1 unparsable; 99 signature, chain, binding; 96 revoked; 97 REPORT_DATA or identity field not the expected one |
//! | configuration | no configuration rule broke (debug, VMPL, guest policy, PLATFORM_INFO, TD attributes, XFAM, owner registers, HOST_DATA, firmware) | 96 |
//! | executables | the policy pins measurements (MEASUREMENT/MRTD, RTMRs, MRSEAM) and they match | 33 not recognized; absent when the policy pins none |
//! | hardware | a genuine AMD or Intel chain, TCB at or above the minimums, TDX TCB status UpToDate | 32 an accepted status other than UpToDate, or a TCB below a minimum; 96 a TCB status the policy refuses; 97 an unknown platform or failed collateral; 99 crypto failure |
//! | runtime-opaque | SEV-SNP or TDX with debug off | 96 debug on, or the EMULATED platform (not a confidential VM) |
//!
//! `ear.status` is `contraindicated` for a rejected verdict, and otherwise the worst tier of
//! the vector's claims: `affirming` (2-31), `warning` (32-95) or `contraindicated` (96+). An
//! accepted EMULATED verdict is therefore `contraindicated`: CI evidence never affirms.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING, ED25519,
};
use serde_json::{json, Map, Value};
use swiotlb_shared::transcript::PlatformKind;

use crate::policy::Policy;
use crate::verdict::{ReasonKind, TcbInfo, Verdict};

/// The EAR profile emitted (the one Veraison and Trustee read).
pub const EAT_PROFILE: &str = "tag:github.com,2023:veraison/ear";
/// `ear.verifier-id` developer.
pub const VERIFIER_DEVELOPER: &str = "swiotlb-attest";
/// Largest JWT [`verify_jwt`] reads: an EAR is a few KB.
pub const MAX_JWT_LEN: usize = 256 * 1024;

/// AR4SI claim values used here.
pub mod claim {
    /// The evidence could not be parsed.
    pub const UNEXPECTED_EVIDENCE: i8 = 1;
    /// Affirming (recognized instance, approved config or runtime, genuine hardware,
    /// encrypted memory).
    pub const AFFIRMING: i8 = 2;
    /// Hardware genuine but with known vulnerabilities.
    pub const UNSAFE_HARDWARE: i8 = 32;
    /// Runtime not recognized.
    pub const UNRECOGNIZED_RUNTIME: i8 = 33;
    /// Contraindicated (untrustworthy instance, unsupportable config, contraindicated
    /// hardware, visible memory).
    pub const CONTRAINDICATED: i8 = 96;
    /// Instance or hardware not recognized.
    pub const UNRECOGNIZED: i8 = 97;
    /// Cryptographic validation failed.
    pub const CRYPTO_FAILED: i8 = 99;
}

/// Errors of signing or reading an EAR.
#[derive(Debug, thiserror::Error)]
pub enum EarError {
    /// The key is neither an Ed25519 nor a P-256 PKCS#8 key (DER, or PEM "PRIVATE KEY").
    #[error("EAR signing key is neither an Ed25519 nor an ECDSA P-256 PKCS#8 key")]
    Key,
    /// Randomness or signing failed.
    #[error("EAR signing failed")]
    Sign,
    /// A JWT that is not a well-formed, correctly signed EAR.
    #[error("EAR JWT: {0}")]
    Jwt(&'static str),
    /// JSON that cannot be written or read.
    #[error("EAR JSON")]
    Json(#[from] serde_json::Error),
}

/// The signature algorithm of an EAR JWT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarAlg {
    /// EdDSA with Ed25519.
    EdDsa,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

impl EarAlg {
    /// The JWS `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
        }
    }
}

#[derive(Clone)]
enum SigningKey {
    Ed(std::sync::Arc<Ed25519KeyPair>),
    Es(std::sync::Arc<EcdsaKeyPair>),
}

/// A key that signs EARs as JWTs.
#[derive(Clone)]
pub struct EarSigner {
    key: SigningKey,
    kid: String,
}

impl std::fmt::Debug for EarSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarSigner")
            .field("alg", &self.alg().name())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// The public JWK of a raw public key (Ed25519: 32 bytes; P-256: 65 bytes, uncompressed).
fn jwk_of(alg: EarAlg, public: &[u8]) -> Value {
    match alg {
        EarAlg::EdDsa => json!({ "crv": "Ed25519", "kty": "OKP", "x": b64(public) }),
        EarAlg::Es256 => json!({
            "crv": "P-256",
            "kty": "EC",
            "x": b64(public.get(1..33).unwrap_or_default()),
            "y": b64(public.get(33..65).unwrap_or_default()),
        }),
    }
}

/// The RFC 7638 thumbprint of a JWK: base64url SHA-256 of its required members in
/// lexicographic order (which [`jwk_of`] already writes, serde_json keeping them sorted).
fn thumbprint(jwk: &Value) -> String {
    let canonical = jwk.to_string();
    b64(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
}

/// PKCS#8 DER from DER or PEM ("PRIVATE KEY") bytes.
fn pkcs8_der(bytes: &[u8]) -> Result<Vec<u8>, EarError> {
    if bytes.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(bytes).map_err(|_| EarError::Key)?;
        let p = pem::parse(text).map_err(|_| EarError::Key)?;
        if p.tag() != "PRIVATE KEY" {
            return Err(EarError::Key);
        }
        Ok(p.into_contents())
    } else {
        Ok(bytes.to_vec())
    }
}

impl EarSigner {
    /// A signer from a PKCS#8 private key, DER or PEM: Ed25519 (EdDSA) or P-256 (ES256).
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, EarError> {
        let der = pkcs8_der(bytes)?;
        let key = if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            SigningKey::Ed(std::sync::Arc::new(k))
        } else {
            let k = EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &der,
                &SystemRandom::new(),
            )
            .map_err(|_| EarError::Key)?;
            SigningKey::Es(std::sync::Arc::new(k))
        };
        let mut s = Self {
            key,
            kid: String::new(),
        };
        s.kid = thumbprint(&s.public_jwk());
        Ok(s)
    }

    /// A new key of `alg`, PKCS#8 DER (what `swiotlb-attest ear-keygen` writes).
    pub fn generate_pkcs8(alg: EarAlg) -> Result<Vec<u8>, EarError> {
        let rng = SystemRandom::new();
        let doc = match alg {
            EarAlg::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| EarError::Sign)?,
            EarAlg::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| EarError::Sign)?,
        };
        Ok(doc.as_ref().to_vec())
    }

    /// The algorithm.
    pub fn alg(&self) -> EarAlg {
        match self.key {
            SigningKey::Ed(_) => EarAlg::EdDsa,
            SigningKey::Es(_) => EarAlg::Es256,
        }
    }

    /// The JWT `kid`: the public key's RFC 7638 thumbprint.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, for relying parties to verify with.
    pub fn public_jwk(&self) -> Value {
        match &self.key {
            SigningKey::Ed(k) => jwk_of(EarAlg::EdDsa, k.public_key().as_ref()),
            SigningKey::Es(k) => jwk_of(EarAlg::Es256, k.public_key().as_ref()),
        }
    }

    /// `claims` as a compact JWT: header `{"alg", "typ": "JWT", "kid"}`.
    pub fn sign(&self, claims: &Value) -> Result<String, EarError> {
        let header = json!({ "alg": self.alg().name(), "kid": self.kid, "typ": "JWT" });
        let input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&header)?),
            b64(&serde_json::to_vec(claims)?)
        );
        let sig = match &self.key {
            SigningKey::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            SigningKey::Es(k) => k
                .sign(&SystemRandom::new(), input.as_bytes())
                .map_err(|_| EarError::Sign)?
                .as_ref()
                .to_vec(),
        };
        Ok(format!("{input}.{}", b64(&sig)))
    }
}

/// Verifies a compact JWT EAR against a public JWK (Ed25519 or P-256) and returns its claims.
pub fn verify_jwt(token: &str, jwk: &Value) -> Result<Value, EarError> {
    if token.len() > MAX_JWT_LEN {
        return Err(EarError::Jwt("too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(EarError::Jwt("not three base64url parts"));
    };
    let d = |x: &str| {
        URL_SAFE_NO_PAD
            .decode(x)
            .map_err(|_| EarError::Jwt("not base64url"))
    };
    let header: Value = serde_json::from_slice(&d(h)?)?;
    let sig = d(s)?;
    let field = |k: &str| jwk.get(k).and_then(Value::as_str);
    let (alg, public, verify_alg): (
        _,
        Vec<u8>,
        &'static dyn ring::signature::VerificationAlgorithm,
    ) = match (field("kty"), field("crv")) {
        (Some("OKP"), Some("Ed25519")) => ("EdDSA", d(field("x").unwrap_or_default())?, &ED25519),
        (Some("EC"), Some("P-256")) => {
            let mut k = vec![4u8];
            k.extend(d(field("x").unwrap_or_default())?);
            k.extend(d(field("y").unwrap_or_default())?);
            ("ES256", k, &ECDSA_P256_SHA256_FIXED)
        }
        _ => return Err(EarError::Jwt("the key is neither Ed25519 nor P-256")),
    };
    if header.get("alg").and_then(Value::as_str) != Some(alg) {
        return Err(EarError::Jwt("header alg does not match the key"));
    }
    let signed = &token[..h.len() + 1 + p.len()];
    UnparsedPublicKey::new(verify_alg, &public)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| EarError::Jwt("signature does not verify"))?;
    Ok(serde_json::from_slice(&d(p)?)?)
}

/// One slot of the trustworthiness vector, keeping the worst claim made for it.
#[derive(Default)]
struct Slot(i8);

impl Slot {
    fn set(&mut self, v: i8) {
        if tier(v) > tier(self.0) || (tier(v) == tier(self.0) && v > self.0) {
            self.0 = v;
        }
    }
}

/// The AR4SI tier of a claim value: 0 none, 1 affirming, 2 warning, 3 contraindicated.
fn tier(v: i8) -> u8 {
    match v {
        -1..=1 => 0,
        2..=31 => 1,
        32..=95 => 2,
        _ => 3,
    }
}

/// The AR4SI trustworthiness vector of a verdict under `policy` (claims of 0 left out).
pub fn trustworthiness_vector(v: &Verdict, policy: &Policy) -> Map<String, Value> {
    use claim::*;
    let (mut identity, mut config, mut exec, mut hw, mut opaque) = (
        Slot::default(),
        Slot::default(),
        Slot::default(),
        Slot::default(),
        Slot::default(),
    );
    let real = matches!(v.platform, Some(PlatformKind::Snp | PlatformKind::Tdx));
    let parsed = !v.has(ReasonKind::Malformed) && v.measurement.is_some();
    for r in &v.reasons {
        use ReasonKind as K;
        match r.kind {
            K::Malformed => identity.set(UNEXPECTED_EVIDENCE),
            K::Signature
            | K::Chain
            | K::Validity
            | K::TcbMismatch
            | K::ChipId
            | K::SigningKey
            | K::QeBinding => {
                identity.set(CRYPTO_FAILED);
                hw.set(CRYPTO_FAILED);
            }
            K::Revocation => identity.set(CONTRAINDICATED),
            K::ReportData | K::Identity => identity.set(UNRECOGNIZED),
            K::Platform => hw.set(UNRECOGNIZED),
            K::Collateral => hw.set(match &v.tcb {
                Some(TcbInfo::Tdx {
                    status: Some(_), ..
                }) => CONTRAINDICATED,
                _ => UNRECOGNIZED,
            }),
            K::MinimumTcb | K::Cpuid => hw.set(UNSAFE_HARDWARE),
            K::Debug => {
                config.set(CONTRAINDICATED);
                opaque.set(CONTRAINDICATED);
            }
            K::Vmpl
            | K::GuestPolicy
            | K::PlatformInfo
            | K::TdAttributes
            | K::Xfam
            | K::TdConfig
            | K::HostData
            | K::ProvisionalFirmware => config.set(CONTRAINDICATED),
            K::Measurement | K::Rtmr | K::Seam | K::ServiceTd | K::IdBlock => {
                exec.set(UNRECOGNIZED_RUNTIME)
            }
        }
    }
    if parsed {
        identity.set(AFFIRMING);
        config.set(AFFIRMING);
        let pinned = policy.measurements.is_some()
            || policy.rtmrs.iter().any(Option::is_some)
            || policy.tdx.mr_seams.is_some();
        if pinned {
            exec.set(AFFIRMING);
        }
        if real {
            hw.set(AFFIRMING);
            opaque.set(AFFIRMING);
        } else {
            // EMULATED: no hardware vouches for it, and its memory is the host's.
            hw.set(UNRECOGNIZED);
            opaque.set(CONTRAINDICATED);
        }
        if let Some(TcbInfo::Tdx {
            status: Some(s), ..
        }) = &v.tcb
        {
            if s != "UpToDate" {
                hw.set(UNSAFE_HARDWARE);
            }
        }
    }
    let mut m = Map::new();
    for (name, slot) in [
        ("instance-identity", identity),
        ("configuration", config),
        ("executables", exec),
        ("hardware", hw),
        ("runtime-opaque", opaque),
    ] {
        if slot.0 != 0 {
            m.insert(name.into(), slot.0.into());
        }
    }
    m
}

/// The `ear.status` of a verdict with its vector.
pub fn status(v: &Verdict, vector: &Map<String, Value>) -> &'static str {
    if !v.accepted {
        return "contraindicated";
    }
    let worst = vector
        .values()
        .filter_map(Value::as_i64)
        .map(|x| tier(i8::try_from(x).unwrap_or(i8::MAX)))
        .max()
        .unwrap_or(0);
    match worst {
        0 => "none",
        1 => "affirming",
        2 => "warning",
        _ => "contraindicated",
    }
}

/// The EAR claims of a verdict appraised under `policy`, issued at `iat` (Unix seconds).
pub fn claims(v: &Verdict, policy: &Policy, iat: u64) -> Value {
    let vector = trustworthiness_vector(v, policy);
    let status = status(v, &vector);
    let annotated = json!({
        "verdict": v.verdict,
        "platform": v.platform.map(|p| p.as_str()),
        "emulated": v.emulated,
        "evidence_sha256": v.evidence_sha256,
        "measurement": v.measurement,
        "report_data": v.report_data,
        "tcb": v.tcb,
        "trailing_bytes": v.trailing_bytes,
        "reasons": v.reasons,
    });
    let submod = v.platform.map_or("unknown", |p| p.as_str());
    let mut appraisal = Map::new();
    appraisal.insert("ear.status".into(), status.into());
    if !vector.is_empty() {
        appraisal.insert("ear.trustworthiness-vector".into(), Value::Object(vector));
    }
    appraisal.insert(
        "ear.appraisal-policy-id".into(),
        format!("urn:swiotlb-attest:policy:sha256:{}", policy.digest()).into(),
    );
    appraisal.insert("ear.veraison.annotated-evidence".into(), annotated);
    let mut top = json!({
        "eat_profile": EAT_PROFILE,
        "iat": iat,
        "ear.verifier-id": {
            "developer": VERIFIER_DEVELOPER,
            "build": concat!("swiotlb-attest ", env!("CARGO_PKG_VERSION")),
        },
        "submods": { submod: Value::Object(appraisal) },
    });
    if let Some(rd) = v.report_data.as_deref().and_then(|h| hex::decode(h).ok()) {
        top["eat_nonce"] = b64(&rd).into();
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Reason;

    fn accepted(platform: PlatformKind) -> Verdict {
        Verdict::new(
            Some(platform),
            Some("00".repeat(48)),
            None,
            Some("ab".repeat(64)),
            vec![],
        )
    }

    #[test]
    fn an_accepted_real_verdict_affirms_and_an_emulated_one_never_does() {
        let p = Policy::default();
        for kind in [PlatformKind::Snp, PlatformKind::Tdx] {
            let v = accepted(kind);
            let vec = trustworthiness_vector(&v, &p);
            assert_eq!(status(&v, &vec), "affirming");
            assert!(!vec.contains_key("executables"), "nothing pinned: no claim");
        }
        let v = accepted(PlatformKind::Emulated);
        let vec = trustworthiness_vector(&v, &p);
        assert_eq!(vec["runtime-opaque"], 96);
        assert_eq!(status(&v, &vec), "contraindicated");
        let pinned = Policy {
            measurements: Some(vec![[0; 48]]),
            ..Policy::default()
        };
        assert_eq!(
            trustworthiness_vector(&accepted(PlatformKind::Snp), &pinned)["executables"],
            2
        );
    }

    #[test]
    fn a_rejection_is_contraindicated_with_the_failed_claims() {
        let v = Verdict::new(
            Some(PlatformKind::Snp),
            Some("00".repeat(48)),
            None,
            None,
            vec![
                Reason::new(ReasonKind::Signature, "x"),
                Reason::new(ReasonKind::Debug, "y"),
                Reason::new(ReasonKind::Measurement, "z"),
            ],
        );
        let vec = trustworthiness_vector(&v, &Policy::default());
        assert_eq!(vec["instance-identity"], 99);
        assert_eq!(vec["configuration"], 96);
        assert_eq!(vec["executables"], 33);
        assert_eq!(vec["runtime-opaque"], 96);
        assert_eq!(status(&v, &vec), "contraindicated");
        let unparsed = Verdict::unparsed(None, Reason::new(ReasonKind::Malformed, "m"));
        let vec = trustworthiness_vector(&unparsed, &Policy::default());
        assert_eq!(vec["instance-identity"], 1);
        let c = claims(&unparsed, &Policy::default(), 7);
        assert_eq!(c["submods"]["unknown"]["ear.status"], "contraindicated");
        assert!(c.get("eat_nonce").is_none());
    }

    #[test]
    fn signed_ears_verify_under_their_key_only() {
        let c = claims(
            &accepted(PlatformKind::Tdx),
            &Policy::default(),
            1_751_328_000,
        );
        assert_eq!(c["eat_profile"], EAT_PROFILE);
        assert_eq!(c["submods"]["tdx"]["ear.status"], "affirming");
        assert_eq!(c["eat_nonce"], b64(&[0xab; 64]));
        for alg in [EarAlg::EdDsa, EarAlg::Es256] {
            let s = EarSigner::from_pkcs8(&EarSigner::generate_pkcs8(alg).unwrap()).unwrap();
            assert_eq!(s.alg(), alg);
            let jwt = s.sign(&c).unwrap();
            assert_eq!(verify_jwt(&jwt, &s.public_jwk()).unwrap(), c);
            let other = EarSigner::from_pkcs8(&EarSigner::generate_pkcs8(alg).unwrap()).unwrap();
            assert!(verify_jwt(&jwt, &other.public_jwk()).is_err());
            let mut parts: Vec<&str> = jwt.split('.').collect();
            let tampered = b64(&serde_json::to_vec(&json!({"ear.status": "affirming"})).unwrap());
            parts[1] = &tampered;
            assert!(verify_jwt(&parts.join("."), &s.public_jwk()).is_err());
            assert_eq!(s.kid().len(), 43);
        }
        assert!(EarSigner::from_pkcs8(b"not a key").is_err());
    }

    #[test]
    fn pem_keys_are_read() {
        let der = EarSigner::generate_pkcs8(EarAlg::Es256).unwrap();
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.clone()));
        let a = EarSigner::from_pkcs8(pem.as_bytes()).unwrap();
        let b = EarSigner::from_pkcs8(&der).unwrap();
        assert_eq!(a.public_jwk(), b.public_jwk());
        let wrong = pem::encode(&pem::Pem::new("CERTIFICATE", der));
        assert!(EarSigner::from_pkcs8(wrong.as_bytes()).is_err());
    }
}
