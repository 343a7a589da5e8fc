//! Attestation: parse, verify, validate (being written).
