//! The session summary: the function's state at the end of a session (negotiation, the
//! pool, DMA and finding counts, interrupts, the device's metrics and the attestation
//! verdict), for operators and tests.

use std::sync::atomic::Ordering;

use serde::Serialize;
use swiotlb_shared::features::feature_names;
use swiotlb_shared::pci::status;

use super::VirtioPciFunction;
use crate::gate::{GateState, Verdict};
use crate::virtio::metrics::DmaCounters;

/// The function's state at the end of a session, for operators and tests.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    /// Features offered.
    pub device_features: u64,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// Names of the negotiated features.
    pub negotiated: Vec<String>,
    /// Final device status.
    pub status: u8,
    /// Pool bus address when last decoded.
    pub pool_bus_address: Option<u64>,
    /// Pool size.
    pub pool_size: u64,
    /// Chains checked.
    pub chains: u64,
    /// Chains rejected.
    pub chains_rejected: u64,
    /// Descriptors checked (DMAs).
    pub dma_descriptors: u64,
    /// Device-readable bytes checked.
    pub dma_readable_bytes: u64,
    /// Device-writable bytes checked.
    pub dma_writable_bytes: u64,
    /// DMA violations (accesses that would have left the pool).
    pub dma_violations: u64,
    /// Findings of every kind.
    pub findings: u64,
    /// Non-zero finding counts by kind.
    pub findings_by_kind: Vec<(String, u64)>,
    /// Pool accesses that went through the socket instead of the mapping.
    pub trapped_pool_accesses: u64,
    /// Interrupts sent.
    pub interrupts: u64,
    /// BAR moves the device followed.
    pub pool_moves: u64,
    /// The device model's own metrics.
    pub device: serde_json::Value,
    /// Attestation gate at the end: "not_required", "awaiting", "accepted" or "rejected".
    pub attestation_state: String,
    /// The last attestation verdict, if evidence was submitted.
    pub attestation: Option<Verdict>,
}

impl VirtioPciFunction {
    /// The session summary.
    pub fn summary(&self) -> SessionSummary {
        let g = DmaCounters::get;
        let d = &DmaCounters::sum(
            std::iter::once(&*self.dma).chain(self.queue_dma.iter().map(|d| &**d)),
        );
        let driver = self.transport.driver_features();
        SessionSummary {
            device_features: self.transport.device_features(),
            driver_features: driver,
            negotiated: if self.transport.status() & status::FEATURES_OK != 0 {
                feature_names(driver)
            } else {
                Vec::new()
            },
            status: self.transport.status(),
            pool_bus_address: self.last_pool_address,
            pool_size: self.pool.size(),
            chains: g(&d.chains),
            chains_rejected: g(&d.chains_rejected),
            dma_descriptors: d.descriptors(),
            dma_readable_bytes: g(&d.readable_bytes),
            dma_writable_bytes: g(&d.writable_bytes),
            dma_violations: self.findings.dma_violations(),
            findings: self.findings.total(),
            findings_by_kind: self
                .findings
                .nonzero()
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
            trapped_pool_accesses: self.trapped_pool.load(Ordering::Relaxed),
            interrupts: g(&d.interrupts),
            pool_moves: self.pool_moves,
            device: self.device.metrics(),
            attestation_state: match self.gate.state() {
                GateState::Awaiting => "awaiting",
                GateState::Accepted => "accepted",
                GateState::Rejected => "rejected",
                GateState::NotRequired => "not_required",
            }
            .to_string(),
            attestation: self.last_verdict.clone(),
        }
    }
}
