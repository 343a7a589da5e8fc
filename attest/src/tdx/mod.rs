//! Intel TDX: [`quote`] (strict parse of a v4 quote) and [`verify`] (signatures, QE binding,
//! PCK chain to the pinned Intel root, optional collateral).

pub mod quote;
pub mod verify;
