//! Intel TDX: [`quote`] (strict parse of v4 and v5 quotes, every TD report body type),
//! [`pck`] (the PCK certificate's SGX extensions) and [`verify`] (signatures, QE binding,
//! PCK chain to the pinned Intel root, optional collateral and CRLs).

pub mod pck;
pub mod quote;
pub mod verify;
