//! Certificate revocation lists (RFC 5280, section 5), as the verifier is given them: AMD's
//! per-product CRL (signed by the product's ARK, RSASSA-PSS; it lists revoked ASKs and
//! ASVKs) and Intel's root CA and PCK CRLs (ECDSA P-256). Nothing is fetched: a CRL is
//! supplied, and its freshness is the supplier's business — a CRL whose nextUpdate has
//! passed is refused, never silently ignored.
//!
//! A CRL is checked in three steps: it must be signed by the certificate that issued the
//! certificate in question (same name, verified signature), be current at the verification
//! time (`thisUpdate <= now <= nextUpdate`), and then must not list the certificate's serial
//! number.

use x509_cert::crl::CertificateList;
use x509_cert::der::{Decode, Encode, Reader, SliceReader};

use crate::x509::{Cert, CertError};

/// Largest CRL read: Intel's PCK CRL is about 2.6 KB, AMD's under 1 KB; revocation lists
/// grow, so allow room, but bound what a file can make the verifier parse.
pub const MAX_CRL_LEN: usize = 1024 * 1024;

/// Errors of reading or applying a CRL.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CrlError {
    /// Larger than [`MAX_CRL_LEN`].
    #[error("{what}: {len} bytes, larger than {MAX_CRL_LEN}")]
    TooLarge {
        /// Which CRL.
        what: &'static str,
        /// Its size.
        len: usize,
    },
    /// Not a DER CRL.
    #[error("{what}: not a DER X.509 CRL ({detail})")]
    Malformed {
        /// Which CRL.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Not issued by the expected certificate (another issuer name).
    #[error("{what} is not issued by {issuer}")]
    Issuer {
        /// Which CRL.
        what: &'static str,
        /// The expected issuer.
        issuer: &'static str,
    },
    /// The signature does not verify, or uses an unsupported algorithm.
    #[error("{what}: signature")]
    Signature {
        /// Which CRL.
        what: &'static str,
        /// Why.
        #[source]
        source: CertError,
    },
    /// Not current at the verification time.
    #[error("{what} is not current at {now} (thisUpdate {this_update}, nextUpdate {next_update:?}, Unix seconds)")]
    NotCurrent {
        /// Which CRL.
        what: &'static str,
        /// The verification time.
        now: u64,
        /// thisUpdate.
        this_update: u64,
        /// nextUpdate, if the CRL has one.
        next_update: Option<u64>,
    },
    /// The CRL lists the certificate.
    #[error("{what} revokes the {cert} (serial {serial})")]
    Revoked {
        /// Which CRL.
        what: &'static str,
        /// Which certificate.
        cert: &'static str,
        /// Its serial number, hex.
        serial: String,
    },
}

/// A parsed CRL that remembers its exact encoding.
#[derive(Clone, Debug)]
pub struct Crl {
    der: Vec<u8>,
    tbs: std::ops::Range<usize>,
    list: CertificateList,
    what: &'static str,
}

impl PartialEq for Crl {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for Crl {}

impl Crl {
    /// Parses a DER CRL; `what` names it in errors ("AMD CRL", "PCK CRL").
    pub fn from_der(der: &[u8], what: &'static str) -> Result<Self, CrlError> {
        if der.len() > MAX_CRL_LEN {
            return Err(CrlError::TooLarge {
                what,
                len: der.len(),
            });
        }
        let malformed = |detail: String| CrlError::Malformed { what, detail };
        let list = CertificateList::from_der(der).map_err(|e| malformed(e.to_string()))?;
        // The signed bytes are the first element of the outer SEQUENCE, exactly as encoded.
        let outer = x509_cert::der::asn1::AnyRef::from_der(der)
            .map_err(|e| malformed(format!("outer TLV: {e}")))?;
        let outer_hdr = der.len() - outer.value().len();
        let tbs_len = SliceReader::new(outer.value())
            .and_then(|mut r| r.tlv_bytes().map(<[u8]>::len))
            .map_err(|e| malformed(format!("TBS TLV: {e}")))?;
        if list.signature_algorithm != list.tbs_cert_list.signature {
            return Err(malformed(
                "outer and inner signature algorithms differ".into(),
            ));
        }
        Ok(Self {
            der: der.to_vec(),
            tbs: outer_hdr..outer_hdr + tbs_len,
            list,
            what,
        })
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Whether `issuer`'s subject is this CRL's issuer name.
    pub fn named_for(&self, issuer: &Cert) -> bool {
        let mine = self.list.tbs_cert_list.issuer.to_der().ok();
        mine.is_some() && mine == issuer.subject_der()
    }

    /// Checks that `issuer` (named `issuer_what`) issued and signed this CRL.
    pub fn verify_signed_by(
        &self,
        issuer: &Cert,
        issuer_what: &'static str,
    ) -> Result<(), CrlError> {
        if !self.named_for(issuer) {
            return Err(CrlError::Issuer {
                what: self.what,
                issuer: issuer_what,
            });
        }
        let sig = self.list.signature.as_bytes().ok_or(CrlError::Malformed {
            what: self.what,
            detail: "signature is not whole bytes".into(),
        })?;
        issuer
            .verify_signature(
                &self.list.signature_algorithm,
                &self.der[self.tbs.clone()],
                sig,
                self.what,
                issuer_what,
            )
            .map_err(|source| CrlError::Signature {
                what: self.what,
                source,
            })
    }

    /// thisUpdate and nextUpdate in Unix seconds.
    pub fn window(&self) -> (u64, Option<u64>) {
        let t = &self.list.tbs_cert_list;
        (
            t.this_update.to_unix_duration().as_secs(),
            t.next_update.map(|n| n.to_unix_duration().as_secs()),
        )
    }

    /// Checks that the CRL is current at `now` (Unix seconds). A CRL without nextUpdate is
    /// current from its thisUpdate on.
    pub fn check_current(&self, now: u64) -> Result<(), CrlError> {
        let (this_update, next_update) = self.window();
        if now < this_update || next_update.is_some_and(|n| now > n) {
            return Err(CrlError::NotCurrent {
                what: self.what,
                now,
                this_update,
                next_update,
            });
        }
        Ok(())
    }

    /// Whether the CRL lists `cert`'s serial number. (Only meaningful once the CRL is known
    /// to come from `cert`'s issuer: serial numbers are unique per issuer.)
    pub fn lists(&self, cert: &Cert) -> bool {
        self.list
            .tbs_cert_list
            .revoked_certificates
            .as_ref()
            .is_some_and(|v| {
                v.iter()
                    .any(|r| r.serial_number.as_bytes() == cert.serial())
            })
    }

    /// All three checks for `cert` (named `cert_what`), issued by `issuer`: signed by it,
    /// current at `now` (`None`: not checked), and not listing `cert`.
    pub fn check(
        &self,
        cert: &Cert,
        cert_what: &'static str,
        issuer: &Cert,
        issuer_what: &'static str,
        now: Option<u64>,
    ) -> Result<(), CrlError> {
        self.verify_signed_by(issuer, issuer_what)?;
        if let Some(now) = now {
            self.check_current(now)?;
        }
        if self.lists(cert) {
            return Err(CrlError::Revoked {
                what: self.what,
                cert: cert_what,
                serial: hex::encode(cert.serial()),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            Crl::from_der(&[], "CRL"),
            Err(CrlError::Malformed { .. })
        ));
        assert!(matches!(
            Crl::from_der(&[0x30, 0x03, 0x02, 0x01, 0x01], "CRL"),
            Err(CrlError::Malformed { .. })
        ));
        assert!(matches!(
            Crl::from_der(&vec![0; MAX_CRL_LEN + 1], "CRL"),
            Err(CrlError::TooLarge { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = Crl::from_der(&b, "CRL");
        }
    }
}
