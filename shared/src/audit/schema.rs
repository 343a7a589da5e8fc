//! The record schema `swiotlb-audit/1` under one path: its events ([`super::event`]), their
//! OCSF record ([`super::ocsf`]) and the encodings of their fields ([`super::encoding`]).
//! Nothing is defined here; it stays for the code that imports through this path.

pub use super::encoding::{base64, parse_hex32, parse_hex_u64};
pub use super::event::*;
pub use super::ocsf::*;
