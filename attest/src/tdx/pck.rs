//! The Intel SGX extensions of a PCK certificate (OID 1.2.840.113741.1.13.1): the TCB level
//! the certificate was issued for (PCESVN, CPUSVN) and the platform model (FMSPC).
//!
//! ```text
//! SGXExtensions ::= SEQUENCE OF SEQUENCE { id OBJECT IDENTIFIER, value ANY }
//!   .1  PPID   OCTET STRING (16)
//!   .2  TCB    SEQUENCE OF SEQUENCE { id, value }: .2.1 to .2.16 component SVNs (INTEGER),
//!              .2.17 PCESVN (INTEGER), .2.18 CPUSVN (OCTET STRING, 16)
//!   .3  PCE-ID OCTET STRING (2)
//!   .4  FMSPC  OCTET STRING (6)
//!   ...        (SGX type, platform instance ID, configuration: not read)
//! ```
//!
//! The certificate's signature makes these values Intel's: the PCE SVN here, not the
//! quote header's reserved word, is what `minimum_pce_svn` is checked against.

use x509_cert::der::asn1::ObjectIdentifier;

use crate::x509::Cert;

/// The SGX extensions, 1.2.840.113741.1.13.1.
pub const OID_SGX_EXTENSIONS: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1");
/// TCB, 1.2.840.113741.1.13.1.2.
pub const OID_SGX_TCB: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.2");
/// PCESVN, 1.2.840.113741.1.13.1.2.17.
pub const OID_SGX_PCESVN: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.2.17");
/// CPUSVN, 1.2.840.113741.1.13.1.2.18.
pub const OID_SGX_CPUSVN: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.2.18");
/// FMSPC, 1.2.840.113741.1.13.1.4.
pub const OID_SGX_FMSPC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.4");

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// Errors of reading the SGX extensions.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PckError {
    /// The certificate has no SGX extensions extension (or has it twice).
    #[error("PCK certificate has no SGX extensions")]
    Missing,
    /// The extension is not the DER structure described above.
    #[error("PCK certificate SGX extensions: {0}")]
    Malformed(&'static str),
}

/// What the SGX extensions say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PckInfo {
    /// PCESVN of the TCB level the certificate was issued for.
    pub pce_svn: u16,
    /// CPUSVN of that TCB level.
    pub cpu_svn: [u8; 16],
    /// FMSPC: the platform's family, model, stepping and platform type.
    pub fmspc: [u8; 6],
}

/// One DER TLV: its tag, contents and what follows. Single-byte tags and definite lengths
/// of up to three length bytes only (these structures are a few hundred bytes).
fn tlv(b: &[u8]) -> Result<(u8, &[u8], &[u8]), PckError> {
    let bad = PckError::Malformed("truncated or oversized DER element");
    let (&tag, rest) = b.split_first().ok_or(bad.clone())?;
    if tag & 0x1f == 0x1f {
        return Err(PckError::Malformed("multi-byte DER tag"));
    }
    let (&first, mut rest) = rest.split_first().ok_or(bad.clone())?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return Err(bad);
        }
        let (len_bytes, r) = rest.split_at(n);
        rest = r;
        len_bytes
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x))
    };
    if rest.len() < len {
        return Err(bad);
    }
    let (value, after) = rest.split_at(len);
    Ok((tag, value, after))
}

/// One `SEQUENCE { OID, value }`: the OID's encoding, the value's tag and contents.
type Entry<'a> = (&'a [u8], u8, &'a [u8]);

/// The `(OID, value)` pairs of a `SEQUENCE OF SEQUENCE { OID, ANY }` given as its contents.
fn pairs(mut b: &[u8]) -> Result<Vec<Entry<'_>>, PckError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (tag, seq, rest) = tlv(b)?;
        if tag != TAG_SEQUENCE {
            return Err(PckError::Malformed("entry is not a SEQUENCE"));
        }
        let (tag, oid, value) = tlv(seq)?;
        if tag != TAG_OID {
            return Err(PckError::Malformed("entry does not start with an OID"));
        }
        let (vtag, v, tail) = tlv(value)?;
        if !tail.is_empty() {
            return Err(PckError::Malformed(
                "entry has more than an OID and a value",
            ));
        }
        out.push((oid, vtag, v));
        b = rest;
    }
    Ok(out)
}

fn find<'a>(
    pairs: &[Entry<'a>],
    oid: &ObjectIdentifier,
    tag: u8,
    name: &'static str,
) -> Result<&'a [u8], PckError> {
    let mut it = pairs.iter().filter(|(o, _, _)| *o == oid.as_bytes());
    match (it.next(), it.next()) {
        (Some(&(_, t, v)), None) if t == tag => Ok(v),
        _ => Err(PckError::Malformed(name)),
    }
}

/// A DER INTEGER's contents as a u16 (non-negative, minimal encoding).
fn der_u16(v: &[u8]) -> Option<u16> {
    match v {
        [x] if *x < 0x80 => Some(u16::from(*x)),
        [0, x] if *x >= 0x80 => Some(u16::from(*x)),
        [x, y] if *x != 0 && *x < 0x80 => Some(u16::from_be_bytes([*x, *y])),
        [0, x, y] if *x >= 0x80 => Some(u16::from_be_bytes([*x, *y])),
        _ => None,
    }
}

impl PckInfo {
    /// Reads the SGX extensions of a PCK certificate.
    pub fn from_cert(cert: &Cert) -> Result<Self, PckError> {
        let ext = cert
            .extension(&OID_SGX_EXTENSIONS)
            .ok_or(PckError::Missing)?;
        Self::from_extension(ext)
    }

    /// Reads the SGX extensions from the extension's value (the DER SEQUENCE).
    pub fn from_extension(ext: &[u8]) -> Result<Self, PckError> {
        let (tag, contents, rest) = tlv(ext)?;
        if tag != TAG_SEQUENCE || !rest.is_empty() {
            return Err(PckError::Malformed("not one SEQUENCE"));
        }
        let top = pairs(contents)?;
        let tcb = pairs(find(&top, &OID_SGX_TCB, TAG_SEQUENCE, "no TCB entry")?)?;
        let pce_svn = der_u16(find(&tcb, &OID_SGX_PCESVN, TAG_INTEGER, "no PCESVN")?)
            .ok_or(PckError::Malformed("PCESVN is not a 16-bit INTEGER"))?;
        let cpu_svn = find(&tcb, &OID_SGX_CPUSVN, TAG_OCTET_STRING, "no CPUSVN")?
            .try_into()
            .map_err(|_| PckError::Malformed("CPUSVN is not 16 bytes"))?;
        let fmspc = find(&top, &OID_SGX_FMSPC, TAG_OCTET_STRING, "no FMSPC")?
            .try_into()
            .map_err(|_| PckError::Malformed("FMSPC is not 6 bytes"))?;
        Ok(Self {
            pce_svn,
            cpu_svn,
            fmspc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = parts.concat();
        der(TAG_SEQUENCE, &body)
    }

    fn der(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if body.len() < 0x80 {
            v.push(body.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    fn entry(oid: &ObjectIdentifier, value: Vec<u8>) -> Vec<u8> {
        seq(&[der(TAG_OID, oid.as_bytes()), value])
    }

    fn sample(pce: &[u8]) -> Vec<u8> {
        let tcb = seq(&[
            entry(&OID_SGX_PCESVN, der(TAG_INTEGER, pce)),
            entry(&OID_SGX_CPUSVN, der(TAG_OCTET_STRING, &[7; 16])),
        ]);
        seq(&[
            entry(&OID_SGX_TCB, tcb),
            entry(&OID_SGX_FMSPC, der(TAG_OCTET_STRING, &[1, 2, 3, 4, 5, 6])),
        ])
    }

    #[test]
    fn constructed_extensions_are_read() {
        let i = PckInfo::from_extension(&sample(&[13])).unwrap();
        assert_eq!(i.pce_svn, 13);
        assert_eq!(i.cpu_svn, [7; 16]);
        assert_eq!(i.fmspc, [1, 2, 3, 4, 5, 6]);
        assert_eq!(
            PckInfo::from_extension(&sample(&[0, 0x80]))
                .unwrap()
                .pce_svn,
            0x80
        );
        assert_eq!(
            PckInfo::from_extension(&sample(&[0x12, 0x34]))
                .unwrap()
                .pce_svn,
            0x1234
        );
    }

    #[test]
    fn malformed_extensions_are_refused() {
        for pce in [&[][..], &[0x80], &[0, 1], &[1, 2, 3]] {
            assert!(PckInfo::from_extension(&sample(pce)).is_err(), "{pce:?}");
        }
        let good = sample(&[13]);
        for cut in 0..good.len() {
            assert!(PckInfo::from_extension(&good[..cut]).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = PckInfo::from_extension(&b);
        }
    }
}
