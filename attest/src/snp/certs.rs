//! AMD's certificates: the pinned roots (ARK, ASK, ASVK for Milan, Genoa and Turin), the
//! VCEK/VLEK endorsement certificate and its extensions, and the chain check.
//!
//! The roots in `roots/` are AMD's public certificates as its Key Distribution Service
//! serves them (`/vcek/v1/{product}/cert_chain` gives ASK then ARK, `/vlek/v1/{product}/
//! cert_chain` ASVK then ARK). They are data, pinned in the binary; the tests check each
//! ASK and ASVK against its ARK, each ARK against itself, and the Milan and Turin files
//! against the copies that `virtee/sev` and the project's vectors carry.
//!
//! Chain rules: the VCEK is signed by the product's ASK, a VLEK by the product's ASVK, with
//! RSASSA-PSS (SHA-384, salt 48); the ASK/ASVK by the ARK. An intermediate the evidence
//! carries is used only if the pinned ARK signed it (so a re-issued ASK works); an ARK the
//! evidence carries is ignored unless it is byte-identical to a pinned one. Revocation
//! lists are not consulted (see `docs/attestation.md`).

use std::sync::OnceLock;

use x509_cert::der::asn1::ObjectIdentifier;

use super::report::SigningKey;
use super::tcb::Tcb;
use crate::x509::{der_ia5, der_octets, der_small_uint, pem_to_certs, Cert, CertError};

/// AMD's structure-version extension, 1.3.6.1.4.1.3704.1.1.
pub const OID_STRUCT_VERSION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.1");
/// productName, 1.3.6.1.4.1.3704.1.2 (IA5String, e.g. "Milan-B0").
pub const OID_PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
/// blSPL, 1.3.6.1.4.1.3704.1.3.1.
pub const OID_BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
/// teeSPL, 1.3.6.1.4.1.3704.1.3.2.
pub const OID_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
/// snpSPL, 1.3.6.1.4.1.3704.1.3.3.
pub const OID_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
/// ucodeSPL, 1.3.6.1.4.1.3704.1.3.8.
pub const OID_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
/// fmcSPL (Turin), 1.3.6.1.4.1.3704.1.3.9.
pub const OID_FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
/// hwID, 1.3.6.1.4.1.3704.1.4: the CHIP_ID the VCEK belongs to (VCEK only).
pub const OID_HWID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
/// csp_id, 1.3.6.1.4.1.3704.1.5: the cloud provider a VLEK was issued to (VLEK only).
pub const OID_CSP_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.5");

/// An EPYC generation with SEV-SNP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Product {
    /// Zen 3 (family 19h, models 00h-0Fh).
    Milan,
    /// Zen 4 (family 19h, models 10h-1Fh, A0h-AFh).
    Genoa,
    /// Zen 5 (family 1Ah, models 00h-11h).
    Turin,
}

impl Product {
    /// All products with pinned roots.
    pub const ALL: [Product; 3] = [Self::Milan, Self::Genoa, Self::Turin];

    /// AMD's name, as in the KDS URLs and certificate names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Milan => "Milan",
            Self::Genoa => "Genoa",
            Self::Turin => "Turin",
        }
    }

    /// Whether TCB versions use the Turin layout (with FMC).
    pub fn turin_layout(self) -> bool {
        matches!(self, Self::Turin)
    }

    /// The product for the CPUID family and model of a version 3+ report.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0f) => Some(Self::Milan),
            (0x19, 0x10..=0x1f | 0xa0..=0xaf) => Some(Self::Genoa),
            (0x1a, 0x00..=0x11) => Some(Self::Turin),
            _ => None,
        }
    }
}

/// The pinned certificates of one product.
#[derive(Clone, Debug)]
pub struct ProductRoots {
    /// The product.
    pub product: Product,
    /// AMD Root Key, self-signed.
    pub ark: Cert,
    /// AMD SEV Key: signs VCEKs.
    pub ask: Cert,
    /// AMD SEV-VLEK Key: signs VLEKs.
    pub asvk: Cert,
}

/// The AMD roots of every product: those pinned in this binary, or others a caller trusts
/// instead (go-sev-guest's `TrustedRoots`).
#[derive(Clone, Debug)]
pub struct AmdRoots {
    /// One entry per product.
    pub products: Vec<ProductRoots>,
}

/// One product's root certificate files: the product, then ARK, ASK and ASVK (PEM).
pub type ProductPems = (Product, &'static [u8], &'static [u8], &'static [u8]);

/// The root certificate files pinned in this binary.
pub const PINNED_PEMS: [ProductPems; 3] = [
    (
        Product::Milan,
        include_bytes!("roots/milan_ark.pem"),
        include_bytes!("roots/milan_ask.pem"),
        include_bytes!("roots/milan_asvk.pem"),
    ),
    (
        Product::Genoa,
        include_bytes!("roots/genoa_ark.pem"),
        include_bytes!("roots/genoa_ask.pem"),
        include_bytes!("roots/genoa_asvk.pem"),
    ),
    (
        Product::Turin,
        include_bytes!("roots/turin_ark.pem"),
        include_bytes!("roots/turin_ask.pem"),
        include_bytes!("roots/turin_asvk.pem"),
    ),
];

fn one_pem(pem: &[u8], what: &'static str) -> Result<Cert, CertError> {
    let mut v = pem_to_certs(pem, what)?;
    match (v.pop(), v.is_empty()) {
        (Some(c), true) => Ok(c),
        _ => Err(CertError::Pem(format!("{what}: expected one certificate"))),
    }
}

impl AmdRoots {
    /// Parses the given per-product PEMs.
    pub fn from_pems(pems: &[ProductPems]) -> Result<Self, CertError> {
        let mut products = Vec::new();
        for &(product, ark, ask, asvk) in pems {
            products.push(ProductRoots {
                product,
                ark: one_pem(ark, "ARK")?,
                ask: one_pem(ask, "ASK")?,
                asvk: one_pem(asvk, "ASVK")?,
            });
        }
        Ok(Self { products })
    }

    /// The roots pinned in this binary.
    pub fn pinned() -> &'static AmdRoots {
        static ROOTS: OnceLock<AmdRoots> = OnceLock::new();
        ROOTS.get_or_init(|| {
            // The PEMs are constants of this crate, parsed by the test
            // `pinned_roots_parse_and_chain`; a failure here is a build defect, not input.
            AmdRoots::from_pems(&PINNED_PEMS).expect("pinned AMD roots parse")
        })
    }
}

/// The VCEK or VLEK certificate with the extensions the verifier needs.
#[derive(Clone, Debug)]
pub struct Endorsement {
    /// The certificate.
    pub cert: Cert,
    /// VCEK or VLEK, from the subject's common name.
    pub kind: SigningKey,
    /// productName, if present.
    pub product_name: Option<String>,
    /// The TCB levels the certificate was issued for.
    pub tcb: Tcb,
    /// hwID (VCEK only).
    pub hwid: Option<Vec<u8>>,
}

impl Endorsement {
    /// Parses a DER VCEK or VLEK certificate and reads its AMD extensions.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let cert = Cert::from_der(der, "VCEK/VLEK")?;
        let malformed = |detail: &str| CertError::Malformed {
            what: "VCEK/VLEK",
            detail: detail.to_string(),
        };
        let kind = match cert.common_name().as_deref() {
            Some("SEV-VCEK") => SigningKey::Vcek,
            Some("SEV-VLEK") => SigningKey::Vlek,
            _ => return Err(malformed("subject CN is neither SEV-VCEK nor SEV-VLEK")),
        };
        let spl = |oid: &ObjectIdentifier, name: &str| -> Result<u8, CertError> {
            cert.extension(oid)
                .and_then(der_small_uint)
                .ok_or_else(|| malformed(&format!("missing or malformed {name} extension")))
        };
        let fmc = match cert.extension(&OID_FMC_SPL) {
            None => None,
            Some(v) => Some(der_small_uint(v).ok_or_else(|| malformed("malformed fmcSPL"))?),
        };
        let tcb = Tcb {
            fmc,
            bootloader: spl(&OID_BL_SPL, "blSPL")?,
            tee: spl(&OID_TEE_SPL, "teeSPL")?,
            snp: spl(&OID_SNP_SPL, "snpSPL")?,
            microcode: spl(&OID_UCODE_SPL, "ucodeSPL")?,
        };
        let product_name = cert
            .extension(&OID_PRODUCT_NAME)
            .and_then(der_ia5)
            .map(str::to_string);
        // hwID is the raw CHIP_ID bytes (64 before Turin, 8 on Turin); some certificates wrap
        // it in an OCTET STRING.
        let hwid = cert.extension(&OID_HWID).map(|v| match v.len() {
            64 | 8 => v.to_vec(),
            _ => der_octets(v).map_or_else(|| v.to_vec(), <[u8]>::to_vec),
        });
        if kind == SigningKey::Vcek && hwid.is_none() {
            return Err(malformed("VCEK without hwID extension"));
        }
        Ok(Self {
            cert,
            kind,
            product_name,
            tcb,
            hwid,
        })
    }
}

/// What a successful chain check established.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainOk {
    /// The product whose ARK anchors the chain.
    pub product: Product,
    /// The intermediate that signed the endorsement (ASK or ASVK, pinned or supplied).
    pub intermediate: Cert,
    /// The ARK.
    pub ark: Cert,
}

/// Checks that the endorsement chains to a pinned ARK through the intermediate its kind
/// requires (ASK for a VCEK, ASVK for a VLEK). `supplied` are intermediates and roots from
/// the evidence (untrusted). With `now`, every certificate on the path must be valid then.
pub fn verify_chain(
    endorsement: &Endorsement,
    supplied: &[Cert],
    roots: &AmdRoots,
    now: Option<u64>,
) -> Result<ChainOk, CertError> {
    let (what, inter_what) = match endorsement.kind {
        SigningKey::Vlek => ("VLEK", "ASVK"),
        _ => ("VCEK", "ASK"),
    };
    let mut last_err = CertError::BadSignature {
        what,
        issuer: inter_what,
    };
    for pr in &roots.products {
        let pinned = match endorsement.kind {
            SigningKey::Vlek => &pr.asvk,
            _ => &pr.ask,
        };
        // The pinned intermediate first, then any supplied one that the ARK signed.
        let mut candidates: Vec<&Cert> = vec![pinned];
        for c in supplied {
            if c != pinned && c != &pr.ark && c.verify_issued_by(&pr.ark, inter_what, "ARK").is_ok()
            {
                candidates.push(c);
            }
        }
        for inter in candidates {
            match endorsement.cert.verify_issued_by(inter, what, inter_what) {
                Ok(()) => {
                    // The intermediate must be the right kind for the leaf.
                    let expected_cn = match endorsement.kind {
                        SigningKey::Vlek => format!("SEV-VLEK-{}", pr.product.name()),
                        _ => format!("SEV-{}", pr.product.name()),
                    };
                    if inter.common_name().as_deref() != Some(expected_cn.as_str()) {
                        return Err(CertError::IssuerName {
                            what,
                            issuer: inter_what,
                        });
                    }
                    if let Some(now) = now {
                        endorsement.cert.check_validity(now, what)?;
                        inter.check_validity(now, inter_what)?;
                        pr.ark.check_validity(now, "ARK")?;
                    }
                    return Ok(ChainOk {
                        product: pr.product,
                        intermediate: inter.clone(),
                        ark: pr.ark.clone(),
                    });
                }
                Err(e @ CertError::Algorithm { .. }) => last_err = e,
                Err(_) => {}
            }
        }
    }
    Err(last_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_roots_parse_and_chain() {
        let roots = AmdRoots::pinned();
        assert_eq!(roots.products.len(), 3);
        for pr in &roots.products {
            let n = pr.product.name();
            pr.ark.verify_issued_by(&pr.ark, "ARK", "ARK").unwrap();
            pr.ask.verify_issued_by(&pr.ark, "ASK", "ARK").unwrap();
            pr.asvk.verify_issued_by(&pr.ark, "ASVK", "ARK").unwrap();
            assert_eq!(pr.ark.common_name().unwrap(), format!("ARK-{n}"));
            assert_eq!(pr.ask.common_name().unwrap(), format!("SEV-{n}"));
            assert_eq!(pr.asvk.common_name().unwrap(), format!("SEV-VLEK-{n}"));
        }
    }

    #[test]
    fn intermediates_do_not_verify_under_another_products_ark() {
        let roots = AmdRoots::pinned();
        let milan = &roots.products[0];
        let genoa = &roots.products[1];
        assert!(genoa
            .ask
            .verify_issued_by(&milan.ark, "ASK", "ARK")
            .is_err());
        assert!(milan
            .asvk
            .verify_issued_by(&genoa.ark, "ASVK", "ARK")
            .is_err());
    }

    #[test]
    fn cpuid_products() {
        assert_eq!(Product::from_cpuid(0x19, 0x01), Some(Product::Milan));
        assert_eq!(Product::from_cpuid(0x19, 0x11), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x19, 0xa0), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x1a, 0x02), Some(Product::Turin));
        assert_eq!(Product::from_cpuid(0x17, 0x31), None);
    }
}
