//! The little of X.509 this crate needs: parse a certificate (`x509-cert`), keep the exact
//! bytes that were signed, read a few extensions and names (`der`), split PEM stacks
//! (`pem`), and check one certificate's signature by another with `ring`.
//!
//! Supported signature algorithms are exactly those of the AMD and Intel chains:
//! RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt (AMD ARK, ASK, ASVK, VCEK, VLEK),
//! and ECDSA with SHA-256 on P-256 (Intel SGX root, PCK CA, PCK). Anything else is refused.

use ring::signature::{self, UnparsedPublicKey};
use x509_cert::der::asn1::{AnyRef, Ia5StringRef, ObjectIdentifier, OctetStringRef};
use x509_cert::der::{Decode, Encode, Reader, SliceReader};
use x509_cert::Certificate;

/// Largest certificate accepted (DER). AMD's RSA-4096 certificates are about 1.7 KB and
/// Intel's PCK certificates about 1.3 KB.
pub const MAX_CERT_LEN: usize = 8 * 1024;

/// Most certificates in one PEM stack: AMD's is ASK (or ASVK) then ARK, Intel's PCK chain
/// is PCK, CA, root; a few more are tolerated for bundles with both ASK and ASVK.
pub const MAX_PEM_CERTS: usize = 8;

/// `rsassaPss` (RFC 4055).
pub const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
/// `ecdsa-with-SHA256` (RFC 5758).
pub const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// `id-ecPublicKey` (RFC 5480).
pub const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `rsaEncryption` (RFC 8017).
pub const OID_RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `secp384r1`.
pub const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// `prime256v1`.
pub const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// DER of the RSASSA-PSS parameters AMD uses: SHA-384, MGF1 with SHA-384, salt length 48,
/// trailer field 1 (AMD encodes the default trailer explicitly).
const PSS_SHA384_PARAMS_WITH_TRAILER: &[u8] = &[
    0x30, 0x39, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x02, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0xa2, 0x03, 0x02, 0x01, 0x30, 0xa3, 0x03, 0x02, 0x01, 0x01,
];

/// Errors about certificates.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CertError {
    /// Not DER, or not a certificate.
    #[error("{what}: not a DER X.509 certificate ({detail})")]
    Malformed {
        /// Which certificate.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// Larger than [`MAX_CERT_LEN`].
    #[error("{what}: {len} bytes, larger than the {MAX_CERT_LEN}-byte limit")]
    TooLarge {
        /// Which certificate.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The PEM text holds no certificate, too many, or a broken one.
    #[error("PEM: {0}")]
    Pem(String),
    /// A signature algorithm other than the supported ones.
    #[error("{what}: unsupported signature algorithm {oid} or parameters")]
    Algorithm {
        /// Which certificate.
        what: &'static str,
        /// The algorithm OID.
        oid: String,
    },
    /// The signature does not verify under the issuer's key.
    #[error("{what}: signature does not verify under the key of {issuer}")]
    BadSignature {
        /// Which certificate.
        what: &'static str,
        /// Who was expected to have signed it.
        issuer: &'static str,
    },
    /// The issuer name is not the issuer's subject.
    #[error("{what}: issuer name is not the subject of {issuer}")]
    IssuerName {
        /// Which certificate.
        what: &'static str,
        /// The expected issuer.
        issuer: &'static str,
    },
    /// The key is not the expected kind.
    #[error("{what}: public key is not {expected}")]
    KeyKind {
        /// Which certificate.
        what: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// Outside its validity window.
    #[error("{what}: not valid at {now} (valid from {not_before} to {not_after}, Unix seconds)")]
    Expired {
        /// Which certificate.
        what: &'static str,
        /// The time of verification.
        now: u64,
        /// Start of validity.
        not_before: u64,
        /// End of validity.
        not_after: u64,
    },
}

/// A parsed certificate that remembers its exact encoding.
#[derive(Clone, Debug)]
pub struct Cert {
    der: Vec<u8>,
    tbs: std::ops::Range<usize>,
    cert: Certificate,
}

impl PartialEq for Cert {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Cert {
    /// Parses a DER certificate. `what` names it in errors ("VCEK", "PCK", ...).
    pub fn from_der(der: &[u8], what: &'static str) -> Result<Self, CertError> {
        if der.len() > MAX_CERT_LEN {
            return Err(CertError::TooLarge {
                what,
                len: der.len(),
            });
        }
        let malformed = |detail: String| CertError::Malformed { what, detail };
        let cert = Certificate::from_der(der).map_err(|e| malformed(e.to_string()))?;
        // The signed bytes are the first element of the outer SEQUENCE, exactly as encoded.
        let outer = AnyRef::from_der(der).map_err(|e| malformed(format!("outer TLV: {e}")))?;
        let outer_hdr = der.len() - outer.value().len();
        let tbs_len = SliceReader::new(outer.value())
            .and_then(|mut r| r.tlv_bytes().map(<[u8]>::len))
            .map_err(|e| malformed(format!("TBS TLV: {e}")))?;
        let tbs = outer_hdr..outer_hdr + tbs_len;
        Ok(Self {
            der: der.to_vec(),
            tbs,
            cert,
        })
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The signed part (`tbsCertificate`), byte for byte as encoded.
    pub fn tbs_der(&self) -> &[u8] {
        &self.der[self.tbs.clone()]
    }

    /// The subject's common name, if any.
    pub fn common_name(&self) -> Option<String> {
        name_cn(self.cert.tbs_certificate().subject())
    }

    /// The issuer's common name, if any.
    pub fn issuer_common_name(&self) -> Option<String> {
        name_cn(self.cert.tbs_certificate().issuer())
    }

    /// The raw value (the OCTET STRING's contents) of the extension `oid`, if present once.
    pub fn extension(&self, oid: &ObjectIdentifier) -> Option<&[u8]> {
        let exts = self.cert.tbs_certificate().extensions()?;
        let mut found = exts.iter().filter(|e| &e.extn_id == oid);
        let first = found.next()?;
        if found.next().is_some() {
            return None;
        }
        Some(first.extn_value.as_bytes())
    }

    /// The validity window in Unix seconds.
    pub fn validity(&self) -> (u64, u64) {
        let v = self.cert.tbs_certificate().validity();
        (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        )
    }

    /// Checks that `now` (Unix seconds) is inside the validity window.
    pub fn check_validity(&self, now: u64, what: &'static str) -> Result<(), CertError> {
        let (not_before, not_after) = self.validity();
        if now < not_before || now > not_after {
            return Err(CertError::Expired {
                what,
                now,
                not_before,
                not_after,
            });
        }
        Ok(())
    }

    /// The subject public key: the algorithm, the curve (for EC keys) and the key bits.
    fn public_key(&self) -> (ObjectIdentifier, Option<ObjectIdentifier>, &[u8]) {
        let spki = self.cert.tbs_certificate().subject_public_key_info();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        (
            spki.algorithm.oid,
            curve,
            spki.subject_public_key.raw_bytes(),
        )
    }

    /// The uncompressed EC point of a P-384 key.
    pub fn p384_public_key(&self, what: &'static str) -> Result<&[u8], CertError> {
        match self.public_key() {
            (OID_EC_PUBLIC_KEY, Some(OID_P384), k) if k.len() == 97 && k[0] == 4 => Ok(k),
            _ => Err(CertError::KeyKind {
                what,
                expected: "an uncompressed ECDSA P-384 key",
            }),
        }
    }

    /// The uncompressed EC point of a P-256 key.
    pub fn p256_public_key(&self, what: &'static str) -> Result<&[u8], CertError> {
        match self.public_key() {
            (OID_EC_PUBLIC_KEY, Some(OID_P256), k) if k.len() == 65 && k[0] == 4 => Ok(k),
            _ => Err(CertError::KeyKind {
                what,
                expected: "an uncompressed ECDSA P-256 key",
            }),
        }
    }

    /// Checks that `issuer` signed this certificate and that the names chain.
    /// `what`/`issuer_what` name both in errors.
    pub fn verify_issued_by(
        &self,
        issuer: &Cert,
        what: &'static str,
        issuer_what: &'static str,
    ) -> Result<(), CertError> {
        let issuer_name = self.cert.tbs_certificate().issuer().to_der();
        let subject_name = issuer.cert.tbs_certificate().subject().to_der();
        match (issuer_name, subject_name) {
            (Ok(a), Ok(b)) if a == b => {}
            _ => {
                return Err(CertError::IssuerName {
                    what,
                    issuer: issuer_what,
                })
            }
        }
        let alg = self.cert.signature_algorithm();
        // The outer and inner (TBS) algorithm identifiers must agree (RFC 5280, 4.1.1.2).
        if alg != self.cert.tbs_certificate().signature() {
            return Err(CertError::Algorithm {
                what,
                oid: alg.oid.to_string(),
            });
        }
        let sig = self
            .cert
            .signature()
            .as_bytes()
            .ok_or(CertError::Algorithm {
                what,
                oid: alg.oid.to_string(),
            })?;
        issuer.verify_signature(alg, self.tbs_der(), sig, what, issuer_what)
    }

    /// Checks that this certificate's key made `sig` over `signed` with `alg` (one of the
    /// algorithms this module supports). `what` names the signed object, `issuer_what` this
    /// certificate, in errors.
    pub fn verify_signature(
        &self,
        alg: &x509_cert::spki::AlgorithmIdentifierOwned,
        signed: &[u8],
        sig: &[u8],
        what: &'static str,
        issuer_what: &'static str,
    ) -> Result<(), CertError> {
        let (key_alg, curve, key) = self.public_key();
        let verify_alg: &'static dyn signature::VerificationAlgorithm = match alg.oid {
            OID_RSASSA_PSS => {
                let params = alg.parameters.as_ref().and_then(|p| p.to_der().ok());
                let ok = params.as_deref().is_some_and(|p| {
                    p == PSS_SHA384_PARAMS_WITH_TRAILER || p == pss_without_trailer().as_slice()
                });
                if !ok || key_alg != OID_RSA_ENCRYPTION {
                    return Err(CertError::Algorithm {
                        what,
                        oid: alg.oid.to_string(),
                    });
                }
                &signature::RSA_PSS_2048_8192_SHA384
            }
            OID_ECDSA_SHA256 if alg.parameters.is_none() => {
                if key_alg != OID_EC_PUBLIC_KEY || curve != Some(OID_P256) {
                    return Err(CertError::Algorithm {
                        what,
                        oid: alg.oid.to_string(),
                    });
                }
                &signature::ECDSA_P256_SHA256_ASN1
            }
            _ => {
                return Err(CertError::Algorithm {
                    what,
                    oid: alg.oid.to_string(),
                })
            }
        };
        UnparsedPublicKey::new(verify_alg, key)
            .verify(signed, sig)
            .map_err(|_| CertError::BadSignature {
                what,
                issuer: issuer_what,
            })
    }

    /// The serial number's bytes (DER INTEGER contents).
    pub fn serial(&self) -> &[u8] {
        self.cert.tbs_certificate().serial_number().as_bytes()
    }

    /// The subject name, DER.
    pub fn subject_der(&self) -> Option<Vec<u8>> {
        self.cert.tbs_certificate().subject().to_der().ok()
    }
}

/// The PSS parameters without the (default) trailer field.
fn pss_without_trailer() -> Vec<u8> {
    let body = &PSS_SHA384_PARAMS_WITH_TRAILER[2..PSS_SHA384_PARAMS_WITH_TRAILER.len() - 5];
    let mut v = vec![0x30, body.len() as u8];
    v.extend_from_slice(body);
    v
}

fn name_cn(name: &x509_cert::name::Name) -> Option<String> {
    name.common_name()
        .ok()
        .flatten()
        .map(|d| d.value().into_owned())
}

/// Splits a PEM stack into DER certificates (the `pem` crate finds and decodes the blocks).
/// Tolerates CRLF line ends, trailing NUL bytes (TDX quotes pad the PCK chain with one),
/// text between blocks and blocks of other kinds; refuses a certificate block that is not
/// base64 or has no end, more than [`MAX_PEM_CERTS`] certificates, or none.
pub fn pem_to_ders(text: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    let end_trim = text.iter().rposition(|&c| c != 0).map_or(0, |p| p + 1);
    let text = std::str::from_utf8(&text[..end_trim])
        .map_err(|_| CertError::Pem("not UTF-8 text".into()))?;
    let blocks = pem::parse_many(text).map_err(|e| {
        CertError::Pem(match e {
            pem::PemError::InvalidData(_) => "invalid base64 in a certificate block".into(),
            e => format!("malformed block ({e})"),
        })
    })?;
    let ders: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    // The parser stops quietly at a block that never ends.
    if text.matches(BEGIN).count() > ders.len() {
        return Err(CertError::Pem("unterminated certificate block".into()));
    }
    if ders.len() > MAX_PEM_CERTS {
        return Err(CertError::Pem(format!(
            "more than {MAX_PEM_CERTS} certificates"
        )));
    }
    if ders.is_empty() {
        return Err(CertError::Pem("no certificate".into()));
    }
    Ok(ders)
}

/// Parses a PEM stack into certificates named `what`.
pub fn pem_to_certs(text: &[u8], what: &'static str) -> Result<Vec<Cert>, CertError> {
    pem_to_ders(text)?
        .iter()
        .map(|d| Cert::from_der(d, what))
        .collect()
}

/// Decodes a DER INTEGER that must fit in a `u8` (AMD's TCB extensions: `02 01 xx` or
/// `02 02 00 xx` for values of 128 and above; DER refuses any other form).
pub fn der_small_uint(v: &[u8]) -> Option<u8> {
    u8::from_der(v).ok()
}

/// Decodes a DER IA5String (AMD's productName extension).
pub fn der_ia5(v: &[u8]) -> Option<&str> {
    Ia5StringRef::from_der(v).ok().map(|s| s.as_str())
}

/// Decodes a DER OCTET STRING's contents.
pub fn der_octets(v: &[u8]) -> Option<&[u8]> {
    <&OctetStringRef>::from_der(v)
        .ok()
        .map(OctetStringRef::as_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One certificate block around `b64`.
    fn block(b64: &str) -> Vec<u8> {
        format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n").into_bytes()
    }

    #[test]
    fn base64_in_blocks_matches_known_values() {
        assert_eq!(pem_to_ders(&block("")).unwrap(), vec![Vec::<u8>::new()]);
        assert_eq!(pem_to_ders(&block("Zg==")).unwrap(), vec![b"f".to_vec()]);
        assert_eq!(pem_to_ders(&block("Zm8=")).unwrap(), vec![b"fo".to_vec()]);
        assert_eq!(pem_to_ders(&block("Zm9v")).unwrap(), vec![b"foo".to_vec()]);
        assert_eq!(
            pem_to_ders(&block("Zm9vYmFy")).unwrap(),
            vec![b"foobar".to_vec()]
        );
        assert!(pem_to_ders(&block("Zm9")).is_err());
        assert!(pem_to_ders(&block("Z===")).is_err());
        assert!(pem_to_ders(&block("Zg==Zm9v")).is_err());
        assert!(pem_to_ders(&block("Zm9*")).is_err());
    }

    #[test]
    fn small_der_integers() {
        assert_eq!(der_small_uint(&[2, 1, 0x73]), Some(0x73));
        assert_eq!(der_small_uint(&[2, 2, 0, 0xd1]), Some(0xd1));
        assert_eq!(der_small_uint(&[2, 2, 0, 0x11]), None);
        assert_eq!(der_small_uint(&[2, 1, 0x81]), None);
        assert_eq!(der_small_uint(&[4, 1, 1]), None);
    }

    #[test]
    fn pss_parameter_forms() {
        let short = pss_without_trailer();
        assert_eq!(short.len(), PSS_SHA384_PARAMS_WITH_TRAILER.len() - 5);
        assert_eq!(usize::from(short[1]) + 2, short.len());
    }

    #[test]
    fn pem_refuses_garbage_and_empty() {
        assert!(pem_to_ders(b"").is_err());
        assert!(pem_to_ders(b"hello").is_err());
        assert!(pem_to_ders(b"-----BEGIN CERTIFICATE-----\nAAAA").is_err());
        assert!(
            pem_to_ders(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----").is_err()
        );
        let one = b"-----BEGIN CERTIFICATE-----\r\nAAEC\r\n-----END CERTIFICATE-----\r\n\0\0";
        assert_eq!(pem_to_ders(one).unwrap(), vec![vec![0u8, 1, 2]]);
    }
}
