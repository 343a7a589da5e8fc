//! The record schema `swiotlb-audit/1` under one path: its events ([`super::event`]), their
//! OCSF record ([`super::ocsf`]) and the encodings of their fields ([`super::encoding`]).

pub use super::encoding::{base64, parse_hex32, parse_hex_u64};
pub use super::event::*;
pub use super::ocsf::*;
