//! Byte strings as hex in the policy's JSON form (from which [`super::Policy::digest`] is
//! taken): `serialize_with` helpers for fixed-size arrays, optional ones and lists of them.

use serde::Serializer;

/// A byte array as hex.
pub fn ser<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

/// An optional byte array as hex or `null`.
pub mod opt {
    use serde::Serializer;

    /// Serializes.
    pub fn serialize<S: Serializer, const N: usize>(
        v: &Option<[u8; N]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }
}

/// A list of byte arrays as hex strings.
pub mod vec {
    use serde::Serializer;

    /// Serializes.
    pub fn serialize<S: Serializer, const N: usize>(
        v: &[[u8; N]],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }
}

/// An optional list of byte arrays as hex strings or `null`.
pub mod opt_vec {
    use serde::Serializer;

    /// Serializes.
    pub fn serialize<S: Serializer, const N: usize>(
        v: &Option<Vec<[u8; N]>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(l) => s.collect_seq(l.iter().map(hex::encode)),
            None => s.serialize_none(),
        }
    }
}

/// The four optional RTMRs as hex or `null`.
pub fn ser_rtmrs<S: Serializer>(v: &[Option<[u8; 48]>; 4], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|r| r.map(hex::encode)))
}
