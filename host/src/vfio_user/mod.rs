//! The vfio-user server (message framing and the codec live in `swiotlb-shared`).

pub mod server;

pub use server::{ProtocolStats, Server, SessionEnd};
