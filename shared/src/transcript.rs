//! The canonical attestation transcript (being written).
