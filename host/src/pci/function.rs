//! The virtio-pci function: configuration space, the register BAR, the pool BAR, the
//! transport and the device, as a vfio-user server presents them.
//!
//! Region layout (VFIO PCI region indexes): BAR0 holds the virtio registers and the MSI-X
//! table; BAR2 (64-bit, prefetchable) is the SWIOTLB pool; region 7 is config space.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use swiotlb_shared::features::{
    feature_names, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use swiotlb_shared::pci::{
    attest_mailbox, cfg, device_layout as dl, VirtioPciCap, VirtioPciNotifyCap, VirtioPciVendorCap,
    VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_SWIOTLB, VIRTIO_PCI_CAP_VENDOR_CFG,
    VIRTIO_PCI_MODERN_DEVICE_ID_BASE, VIRTIO_PCI_VENDOR_ID,
};
use thiserror::Error;
use virtio_queue::QueueT;

use super::config_space::{BarKind, BarSpec, ConfigSpace};
use super::interrupts::{Interrupts, IrqAction, IrqError};
use crate::audit::{AuditError, AuditHandle};
use crate::findings::{Finding, FindingCounters, FindingKind};
use crate::gate::{EvidenceVerifier, Gate, GateRequest, Verdict};
use crate::pool::{Pool, PoolError};
use crate::virtio::chain::ChainContext;
use crate::virtio::metrics::DmaCounters;
use crate::virtio::transport::{Policy, StatusEffect, VirtioPciTransport};
use crate::virtio::VirtioDevice;
use swiotlb_shared::audit::schema::{
    AttestationVerdict, ConfigChange, PeripheralAction, PeripheralEvent,
};

/// VFIO region index of the register BAR.
pub const REGION_REGS: u32 = dl::REGS_BAR as u32;
/// VFIO region index of the pool BAR.
pub const REGION_POOL: u32 = dl::POOL_BAR as u32;
/// VFIO region index of PCI config space.
pub const REGION_CONFIG: u32 = 7;
/// Number of VFIO regions of a PCI device (BARs 0-5, ROM, config, VGA).
pub const NUM_REGIONS: u32 = 9;
/// Widest single access to the register BAR (one 64-bit register).
pub const MAX_REG_ACCESS: usize = 8;

/// Errors of region access.
#[derive(Debug, Error)]
pub enum AccessError {
    /// The region does not exist or has size zero.
    #[error("region {0} does not exist")]
    NoRegion(u32),
    /// The access does not lie inside the region.
    #[error("access at {offset:#x} of {len} bytes is outside region {region}")]
    OutOfRange {
        /// Region index.
        region: u32,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: usize,
    },
    /// Register accesses are 1 to 8 bytes.
    #[error("register access of {0} bytes (1 to 8 allowed)")]
    BadWidth(usize),
    /// Reading or writing the pool file failed.
    #[error("pool access failed")]
    Pool(#[source] std::io::Error),
}

impl AccessError {
    /// The errno a vfio-user server answers with.
    pub fn errno(&self) -> u32 {
        match self {
            Self::Pool(_) => libc::EIO as u32,
            _ => libc::EINVAL as u32,
        }
    }
}

/// The structures of the register BAR, each at its `device_layout` offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bar0 {
    Common,
    Isr,
    Device,
    Notify,
    MsixTable,
    MsixPba,
    Attest,
}

impl Bar0 {
    /// Which structure `offset` falls in, and the offset within it.
    fn decode(offset: u64) -> Option<(Self, u64)> {
        const MAP: [(Bar0, u32, u32); 7] = [
            (Bar0::Common, dl::COMMON_OFFSET, dl::COMMON_LEN),
            (Bar0::Isr, dl::ISR_OFFSET, dl::ISR_LEN),
            (Bar0::Device, dl::DEVICE_OFFSET, dl::DEVICE_LEN),
            (Bar0::Notify, dl::NOTIFY_OFFSET, dl::NOTIFY_LEN),
            (
                Bar0::MsixTable,
                dl::MSIX_TABLE_OFFSET,
                dl::MSIX_PBA_OFFSET - dl::MSIX_TABLE_OFFSET,
            ),
            (Bar0::MsixPba, dl::MSIX_PBA_OFFSET, 0x1000),
            (Bar0::Attest, dl::ATTEST_OFFSET, dl::ATTEST_LEN),
        ];
        MAP.iter().find_map(|(r, start, len)| {
            let (start, len) = (u64::from(*start), u64::from(*len));
            (offset >= start && offset - start < len).then_some((*r, offset - start))
        })
    }
}

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

/// Whether processing a queue asks the driver for its next doorbell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rearm {
    /// Yes: the device is about to wait for a doorbell.
    Yes,
    /// No: the device goes on polling the queue, so doorbells would be wasted.
    No,
}

/// What one pass over a queue did.
#[derive(Clone, Copy, Debug)]
struct Processed {
    /// Chains were taken.
    took: bool,
    /// The driver asked to be interrupted for them.
    interrupt: bool,
}

/// The function.
pub struct VirtioPciFunction {
    template: ConfigSpace,
    config: ConfigSpace,
    pool: Pool,
    transport: VirtioPciTransport,
    device: Box<dyn VirtioDevice + Send>,
    policy: Policy,
    interrupts: Interrupts,
    isr: u8,
    msix_table: Vec<u8>,
    findings: Arc<FindingCounters>,
    dma: Arc<DmaCounters>,
    trapped_pool: AtomicU64,
    pool_moves: u64,
    last_pool_address: Option<u64>,
    gate: Gate,
    audit: Option<AuditHandle>,
    /// Queues notified while the gate was shut, served once it opens.
    deferred: u64,
    last_verdict: Option<Verdict>,
}

impl VirtioPciFunction {
    /// A function presenting `device` with a pool of `pool_size` bytes.
    pub fn new(
        device: Box<dyn VirtioDevice + Send>,
        pool_size: u64,
        policy: Policy,
    ) -> Result<Self, PoolError> {
        let pool = Pool::new(pool_size)?;
        let msix_vectors = device.num_queues() + 1;
        let template = Self::config_template(device.device_type(), pool_size, msix_vectors);
        let transport = VirtioPciTransport::new(device.as_ref(), policy, msix_vectors);
        Ok(Self {
            config: template.clone(),
            template,
            pool,
            transport,
            device,
            policy,
            interrupts: Interrupts::new(msix_vectors),
            isr: 0,
            msix_table: vec![0; usize::from(msix_vectors) * dl::MSIX_ENTRY_SIZE as usize],
            findings: Arc::new(FindingCounters::default()),
            dma: Arc::new(DmaCounters::default()),
            trapped_pool: AtomicU64::new(0),
            pool_moves: 0,
            last_pool_address: None,
            gate: Gate::new(None),
            audit: None,
            deferred: 0,
            last_verdict: None,
        })
    }

    /// Requires attestation: queues are served only once evidence checked by `verifier`
    /// binds what the device observed.
    pub fn with_attestation(mut self, verifier: Box<dyn EvidenceVerifier>) -> Self {
        self.gate.set_verifier(verifier);
        self
    }

    /// Records every finding, every checked DMA, configuration changes, attestation
    /// verdicts and sessions in the tamper-evident audit log behind `handle`. A full log
    /// queue makes the device wait (back-pressure) rather than drop a record.
    pub fn with_audit(mut self, handle: AuditHandle) -> Self {
        self.audit = Some(handle);
        self
    }

    /// Sends one record to the audit log, if there is one.
    fn audit(&self, send: impl FnOnce(&AuditHandle) -> Result<(), AuditError>) {
        if let Some(h) = &self.audit {
            if let Err(e) = send(h) {
                tracing::error!(error = %e, "audit log record lost: the writer stopped");
            }
        }
    }

    /// A client connected (`peer` names it) or left (with its session summary).
    pub fn audit_peripheral(&self, connect: bool, peer: &str) {
        let session = (!connect).then(|| serde_json::to_value(self.summary()).unwrap_or_default());
        self.audit(|h| {
            h.peripheral(PeripheralEvent {
                action: if connect {
                    PeripheralAction::Connect
                } else {
                    PeripheralAction::Disconnect
                },
                peer: peer.to_string(),
                session,
            })
        });
    }

    /// The attestation gate.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The last attestation verdict of this session.
    pub fn last_verdict(&self) -> Option<&Verdict> {
        self.last_verdict.as_ref()
    }

    fn config_template(device_type: u16, pool_size: u64, msix_vectors: u16) -> ConfigSpace {
        // Modern-only virtio-pci function: revision 1, no legacy I/O BAR (virtio 1.2, 4.1.2.1).
        let mut c = ConfigSpace::new(
            VIRTIO_PCI_VENDOR_ID,
            VIRTIO_PCI_MODERN_DEVICE_ID_BASE + device_type,
            1,
            [0x00, 0x80, 0x01], // mass storage, other
            (VIRTIO_PCI_VENDOR_ID, 0x1100),
        );
        c.add_bar(BarSpec {
            index: dl::REGS_BAR,
            size: dl::REGS_BAR_SIZE,
            kind: BarKind::Mem32,
        });
        c.add_bar(BarSpec {
            index: dl::POOL_BAR,
            size: pool_size,
            kind: BarKind::Mem64Prefetchable,
        });
        let cap = |cfg_type: u8, bar: u8, offset: u32, length: u32| VirtioPciCap {
            cap_vndr: cfg::CAP_ID_VENDOR,
            cap_next: 0,
            cap_len: VirtioPciCap::SIZE as u8,
            cfg_type,
            bar,
            id: 0,
            padding: [0; 2],
            offset,
            length,
        };
        let caps = [
            (
                dl::CAP_COMMON,
                cap(
                    VIRTIO_PCI_CAP_COMMON_CFG,
                    dl::REGS_BAR,
                    dl::COMMON_OFFSET,
                    dl::COMMON_LEN,
                )
                .to_bytes()
                .to_vec(),
            ),
            (
                dl::CAP_NOTIFY,
                VirtioPciNotifyCap {
                    cap: VirtioPciCap {
                        cap_len: VirtioPciNotifyCap::SIZE as u8,
                        ..cap(
                            VIRTIO_PCI_CAP_NOTIFY_CFG,
                            dl::REGS_BAR,
                            dl::NOTIFY_OFFSET,
                            dl::NOTIFY_LEN,
                        )
                    },
                    notify_off_multiplier: dl::NOTIFY_OFF_MULTIPLIER,
                }
                .to_bytes()
                .to_vec(),
            ),
            (
                dl::CAP_ISR,
                cap(
                    VIRTIO_PCI_CAP_ISR_CFG,
                    dl::REGS_BAR,
                    dl::ISR_OFFSET,
                    dl::ISR_LEN,
                )
                .to_bytes()
                .to_vec(),
            ),
            (
                dl::CAP_DEVICE,
                cap(
                    VIRTIO_PCI_CAP_DEVICE_CFG,
                    dl::REGS_BAR,
                    dl::DEVICE_OFFSET,
                    dl::DEVICE_LEN,
                )
                .to_bytes()
                .to_vec(),
            ),
            // The SWIOTLB capability describes the whole pool BAR. `length` is 32 bits, so
            // pools are capped below 4 GiB (MAX_POOL_SIZE is 1 GiB).
            (
                dl::CAP_SWIOTLB,
                cap(VIRTIO_PCI_CAP_SWIOTLB, dl::POOL_BAR, 0, pool_size as u32)
                    .to_bytes()
                    .to_vec(),
            ),
        ];
        for (at, bytes) in caps {
            let got = c.add_capability(bytes[0], &bytes[2..], &[]);
            debug_assert_eq!(got, at);
        }
        let mut msix = Vec::with_capacity(10);
        msix.extend_from_slice(&(msix_vectors - 1).to_le_bytes());
        msix.extend_from_slice(&(dl::MSIX_TABLE_OFFSET | u32::from(dl::REGS_BAR)).to_le_bytes());
        msix.extend_from_slice(&(dl::MSIX_PBA_OFFSET | u32::from(dl::REGS_BAR)).to_le_bytes());
        let got = c.add_capability(cfg::CAP_ID_MSIX, &msix, &[(1, 0xc0)]);
        debug_assert_eq!(got, dl::CAP_MSIX);
        let attest = VirtioPciVendorCap {
            cap_vndr: cfg::CAP_ID_VENDOR,
            cap_next: 0,
            cap_len: VirtioPciVendorCap::SIZE as u8,
            cfg_type: VIRTIO_PCI_CAP_VENDOR_CFG,
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            subtype: attest_mailbox::CAP_SUBTYPE,
            bar: dl::REGS_BAR,
            offset: dl::ATTEST_OFFSET,
            length: dl::ATTEST_LEN,
        }
        .to_bytes();
        let got = c.add_capability(attest[0], &attest[2..], &[]);
        debug_assert_eq!(got, dl::CAP_ATTEST);
        c
    }

    /// The finding counters.
    pub fn findings(&self) -> Arc<FindingCounters> {
        self.findings.clone()
    }

    /// The DMA counters.
    pub fn dma(&self) -> Arc<DmaCounters> {
        self.dma.clone()
    }

    /// The pool (for its fd and size).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The transport (for negotiated state).
    pub fn transport(&self) -> &VirtioPciTransport {
        &self.transport
    }

    /// Size of region `index`, 0 if absent.
    pub fn region_size(&self, index: u32) -> u64 {
        match index {
            REGION_REGS => dl::REGS_BAR_SIZE,
            REGION_POOL => self.pool.size(),
            REGION_CONFIG => cfg::SIZE as u64,
            _ => 0,
        }
    }

    /// IRQ vectors of VFIO IRQ index `index`.
    pub fn irq_count(&self, index: u32) -> u32 {
        self.interrupts.count(index)
    }

    /// Function-level reset: pristine config space, transport and device reset, pool
    /// undecoded and zeroed, interrupts dropped. A new client always starts here.
    pub fn reset(&mut self) {
        self.config = self.template.clone();
        self.virtio_reset();
        self.interrupts.clear();
        self.msix_table.fill(0);
        self.pool.place(None);
        self.last_pool_address = None;
        self.last_verdict = None;
        self.audit(|h| {
            h.config_change(ConfigChange::Reset {
                reason: "function reset (new session or DEVICE_RESET)".into(),
            })
        });
        // Counters are per session: a new client starts from zero.
        self.findings = Arc::new(FindingCounters::default());
        self.dma = Arc::new(DmaCounters::default());
        self.trapped_pool.store(0, Ordering::Relaxed);
        self.pool_moves = 0;
        self.device.clear_metrics();
    }

    /// Device reset (the driver wrote 0 to device_status, or a function reset): transport
    /// and device state, and the pool zeroed, so nothing the driver posted before the reset
    /// (rings, requests, data) is seen or processed after it.
    fn virtio_reset(&mut self) {
        self.transport.reset();
        self.device.reset();
        if let Err(e) = self.pool.clear() {
            tracing::error!(error = %e, "clearing the pool on reset failed");
        }
        self.isr = 0;
        // A fresh nonce: evidence from before the reset can never be replayed.
        self.gate.reset();
        self.deferred = 0;
    }

    fn record(&mut self, f: Finding) {
        self.findings.record(&f);
        self.audit(|h| h.finding(&f));
        if f.kind.is_dma_violation()
            || matches!(
                f.kind,
                FindingKind::ChainTooLong
                    | FindingKind::DescriptorIndexOutOfRange
                    | FindingKind::ReadableAfterWritable
                    | FindingKind::ZeroLengthDescriptor
                    | FindingKind::ChainLengthOverflow
                    | FindingKind::BadIndirectTable
                    | FindingKind::AvailIndexJump
            )
        {
            self.needs_reset();
        }
    }

    fn needs_reset(&mut self) {
        if self.transport.set_needs_reset() {
            // Configuration-change notification (virtio 1.2, 4.1.5.3).
            self.isr |= 2;
            let v = self.transport.config_msix_vector();
            self.raise(v);
        }
    }

    fn raise(&mut self, msix_vector: u16) {
        let sent = if self.config.msix_active() {
            self.interrupts.msix(msix_vector)
        } else if !self.config.intx_disabled() {
            self.isr |= 1;
            self.interrupts.intx()
        } else {
            false
        };
        if sent {
            DmaCounters::add(&self.dma.interrupts, 1);
        }
    }

    fn follow_bars(&mut self) {
        let at = self.config.bar_address(dl::POOL_BAR);
        if self.pool.place(at) {
            if let Some(a) = at {
                let size = self.pool.size();
                let bar = dl::POOL_BAR;
                match self.last_pool_address {
                    Some(from) if from != a => {
                        self.pool_moves += 1;
                        self.gate.pool_moved();
                        self.audit(|h| {
                            h.config_change(ConfigChange::BarMoved {
                                bar,
                                from,
                                to: a,
                                size,
                            })
                        });
                    }
                    Some(_) => {}
                    None => self.audit(|h| {
                        h.config_change(ConfigChange::BarProgrammed {
                            bar,
                            address: a,
                            size,
                        })
                    }),
                }
                self.last_pool_address = Some(a);
            }
            tracing::info!(
                target: "swiotlb::config",
                pool_bus_address = ?at.map(|a| format!("{a:#x}")),
                "pool BAR decode changed"
            );
        }
    }

    /// Reads `buf.len()` bytes of region `region` at `offset`.
    pub fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), AccessError> {
        self.check_range(region, offset, buf.len())?;
        match region {
            REGION_CONFIG => self
                .config
                .read(offset, buf)
                .map_err(|_| AccessError::OutOfRange {
                    region,
                    offset,
                    len: buf.len(),
                }),
            REGION_POOL => {
                self.trapped_pool.fetch_add(1, Ordering::Relaxed);
                read_exact_at(&self.pool, buf, offset)
            }
            _ => {
                if buf.is_empty() || buf.len() > MAX_REG_ACCESS {
                    return Err(AccessError::BadWidth(buf.len()));
                }
                self.regs_read(offset, buf);
                Ok(())
            }
        }
    }

    /// Writes `data` to region `region` at `offset`.
    pub fn region_write(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), AccessError> {
        self.check_range(region, offset, data.len())?;
        match region {
            REGION_CONFIG => {
                let ch = self
                    .config
                    .write(offset, data)
                    .map_err(|_| AccessError::OutOfRange {
                        region,
                        offset,
                        len: data.len(),
                    })?;
                if ch.decode_changed {
                    self.follow_bars();
                }
                Ok(())
            }
            REGION_POOL => {
                self.trapped_pool.fetch_add(1, Ordering::Relaxed);
                self.pool
                    .file()
                    .write_all_at(data, offset)
                    .map_err(AccessError::Pool)
            }
            _ => {
                if data.is_empty() || data.len() > MAX_REG_ACCESS {
                    return Err(AccessError::BadWidth(data.len()));
                }
                self.regs_write(offset, data);
                Ok(())
            }
        }
    }

    fn check_range(&self, region: u32, offset: u64, len: usize) -> Result<(), AccessError> {
        let size = self.region_size(region);
        if size == 0 {
            return Err(AccessError::NoRegion(region));
        }
        if offset.checked_add(len as u64).is_none_or(|e| e > size) {
            return Err(AccessError::OutOfRange {
                region,
                offset,
                len,
            });
        }
        Ok(())
    }

    fn regs_read(&mut self, offset: u64, buf: &mut [u8]) {
        buf.fill(0);
        match Bar0::decode(offset) {
            Some((Bar0::Common, o)) => self.transport.read(o, buf),
            Some((Bar0::Isr, 0)) => {
                // Reading the ISR status clears it (virtio 1.2, 4.1.4.5).
                buf[0] = self.isr;
                self.isr = 0;
            }
            Some((Bar0::Device, o)) => self.device.read_config(o, buf),
            Some((Bar0::MsixTable, o)) => {
                for (k, b) in buf.iter_mut().enumerate() {
                    *b = self.msix_table.get(o as usize + k).copied().unwrap_or(0);
                }
            }
            Some((Bar0::Attest, o)) => self.gate.read(o, buf),
            Some((Bar0::Isr | Bar0::Notify | Bar0::MsixPba, _)) | None => {}
        }
    }

    fn regs_write(&mut self, offset: u64, data: &[u8]) {
        match Bar0::decode(offset) {
            Some((Bar0::Common, o)) => self.common_write(o, data),
            Some((Bar0::Device, o)) => self.device.write_config(o, data),
            Some((Bar0::Notify, o)) => {
                let q = o / u64::from(dl::NOTIFY_OFF_MULTIPLIER);
                self.notify(u16::try_from(q).unwrap_or(u16::MAX));
            }
            Some((Bar0::MsixTable, o)) => {
                for (k, b) in data.iter().enumerate() {
                    if let Some(slot) = self.msix_table.get_mut(o as usize + k) {
                        *slot = *b;
                    }
                }
            }
            Some((Bar0::Attest, o)) => {
                if let Some(GateRequest::Submit { addr, len }) = self.gate.write(o, data) {
                    self.attest(addr, len);
                }
            }
            Some((Bar0::Isr | Bar0::MsixPba, _)) | None => {}
        }
    }

    /// The pool's bus window when it is decoded (and can be mapped), else `None`.
    fn pool_window(&mut self) -> Option<swiotlb_shared::layout::PoolWindow> {
        self.pool.view().ok().flatten().map(|v| v.window)
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let window = self.pool_window();
        match self.transport.write(offset, data, window) {
            Ok(StatusEffect::None) => {}
            Ok(StatusEffect::Reset) => {
                tracing::info!(target: "swiotlb::config", "virtio reset by driver");
                self.audit(|h| {
                    h.config_change(ConfigChange::Reset {
                        reason: "driver wrote 0 to device_status".into(),
                    })
                });
                self.virtio_reset();
            }
            Ok(StatusEffect::FeaturesOk(f)) => {
                tracing::info!(
                    target: "swiotlb::config",
                    driver_features = format_args!("{f:#x}"),
                    negotiated = ?feature_names(f),
                    "features negotiated"
                );
                self.audit_features(f, true);
            }
            Ok(StatusEffect::DriverOk) => {
                let to = self.transport.status();
                self.audit(|h| {
                    h.config_change(ConfigChange::Status {
                        from: to & !swiotlb_shared::pci::status::DRIVER_OK,
                        to,
                    })
                });
                self.activate();
            }
            Err(f) => {
                if matches!(
                    f.kind,
                    FindingKind::SwiotlbDeclined
                        | FindingKind::UnofferedFeature
                        | FindingKind::Version1Declined
                ) {
                    self.audit_features(self.transport.driver_features(), false);
                }
                self.record(f);
            }
        }
    }

    fn audit_features(&self, driver_features: u64, accepted: bool) {
        let device_features = self.transport.device_features();
        self.audit(|h| {
            h.config_change(ConfigChange::Features {
                device_features,
                driver_features,
                accepted,
                negotiated: if accepted {
                    feature_names(driver_features)
                } else {
                    Vec::new()
                },
            })
        });
    }

    /// DRIVER_OK: every enabled queue's rings are checked against the pool again, and
    /// notification suppression follows EVENT_IDX.
    fn activate(&mut self) {
        let window = self.pool_window();
        let event_idx = self.transport.negotiated(VIRTIO_RING_F_EVENT_IDX);
        let mut bad = None;
        for (i, slot) in self.transport.queues().iter().enumerate() {
            if slot.queue.ready() {
                if let Err(f) = VirtioPciTransport::check_rings(i as u16, &slot.queue, window) {
                    bad = Some(f);
                    break;
                }
            }
        }
        for i in 0..self.transport.queues().len() {
            if let Some(s) = self.transport.queue_mut(i as u16) {
                s.queue.set_event_idx(event_idx);
            }
        }
        if let Some(f) = bad {
            self.record(f);
        }
        tracing::info!(target: "swiotlb::config", "driver ready");
    }

    /// A doorbell for queue `q`: process every available chain, then ask the driver for the
    /// next doorbell (EVENT_IDX `avail_event`, or the used ring's NO_NOTIFY flag cleared).
    pub fn notify(&mut self, q: u16) {
        self.notify_with(q, Rearm::Yes);
    }

    /// As [`notify`](Self::notify); with [`Rearm::No`] the driver is not asked for the next
    /// doorbell, because the caller goes on polling the queue (see
    /// [`poll_queues`](Self::poll_queues)).
    pub fn notify_with(&mut self, q: u16, rearm: Rearm) {
        if !self.transport.live() {
            if self.transport.status() & swiotlb_shared::pci::status::DEVICE_NEEDS_RESET == 0 {
                tracing::debug!(queue = q, "notification before DRIVER_OK ignored");
            }
            return;
        }
        let Some(ready) = self
            .transport
            .queues()
            .get(usize::from(q))
            .map(|s| s.queue.ready())
        else {
            self.record(Finding::new(
                FindingKind::BadQueueNotify,
                format!("notification for nonexistent queue {q}"),
            ));
            return;
        };
        if !ready {
            self.record(
                Finding::new(
                    FindingKind::BadQueueNotify,
                    "notification for a queue not enabled",
                )
                .at(q, None),
            );
            return;
        }
        if !self.gate.open() {
            // No I/O before the evidence verifies: remember the doorbell for later.
            self.deferred |= 1u64.checked_shl(u32::from(q)).unwrap_or(0);
            tracing::debug!(queue = q, "notification deferred: attestation pending");
            return;
        }
        let view = match self.pool.view() {
            Ok(Some(v)) => v,
            Ok(None) => {
                self.record(
                    Finding::new(
                        FindingKind::PoolNotDecoded,
                        "notification while the pool BAR is not decoded",
                    )
                    .at(q, None),
                );
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "pool cannot be mapped");
                self.needs_reset();
                return;
            }
        };
        self.run_queue(q, &view, rearm);
    }

    /// Processes queue `q` and interrupts the driver if it asked to be; returns whether any
    /// chain was taken.
    fn run_queue(&mut self, q: u16, view: &crate::pool::PoolView, rearm: Rearm) -> bool {
        match self.process_queue(q, view, rearm) {
            Ok(Processed { took, interrupt }) => {
                if interrupt {
                    let v = self
                        .transport
                        .queues()
                        .get(usize::from(q))
                        .map_or(0, |s| s.msix_vector);
                    self.raise(v);
                }
                took
            }
            Err(f) => {
                self.record(f);
                true
            }
        }
    }

    /// Offset in the register BAR of queue `q`'s doorbell.
    pub fn doorbell_offset(&self, q: u16) -> u64 {
        u64::from(dl::NOTIFY_OFFSET) + u64::from(q) * u64::from(dl::NOTIFY_OFF_MULTIPLIER)
    }

    /// One look at every enabled queue without a doorbell, for a caller that polls: a queue
    /// whose available index moved is processed. With [`Rearm::No`] the driver is left
    /// believing the device is awake (no doorbell is asked for); the caller must make one
    /// last call with [`Rearm::Yes`] before it stops polling and sleeps, which asks for the
    /// next doorbell and processes whatever raced in. Returns whether any chain was taken.
    /// Does nothing before DRIVER_OK, while attestation is pending, or while the pool is not
    /// decoded (a doorbell then records what is wrong, as before).
    pub fn poll_queues(&mut self, rearm: Rearm) -> bool {
        if !self.transport.live() || !self.gate.open() {
            return false;
        }
        let Ok(Some(view)) = self.pool.view() else {
            return false;
        };
        let mut took = false;
        for q in 0..self.transport.queues().len() {
            let q = q as u16;
            let Some(slot) = self.transport.queues().get(usize::from(q)) else {
                break;
            };
            if !slot.queue.ready() {
                continue;
            }
            let moved = slot
                .queue
                .avail_idx(&*view.mem, Ordering::Acquire)
                .map_or(true, |a| a.0 != slot.queue.next_avail());
            if moved || rearm == Rearm::Yes {
                took |= self.run_queue(q, &view, rearm);
            }
        }
        took
    }

    /// The driver rang the attestation doorbell: read its evidence from the pool, have it
    /// verified against the session as the device observed it, open or shut the gate.
    fn attest(&mut self, addr: u64, len: u32) {
        let (verdict, evidence, transcript) = self.attest_verdict(addr, len);
        let reason = if verdict.accepted {
            format!(
                "accepted: {} evidence binds the observed session",
                verdict.platform
            )
        } else {
            verdict.reasons.join("; ")
        };
        let transcript_hash = ring::digest::digest(&ring::digest::SHA256, &transcript);
        self.audit(|h| {
            h.attestation_verdict(AttestationVerdict {
                passed: verdict.accepted,
                reason,
                evidence,
                transcript,
            })?;
            if verdict.accepted {
                let mut th = [0u8; 32];
                th.copy_from_slice(transcript_hash.as_ref());
                h.set_transcript_hash(th)?;
            }
            Ok(())
        });
        tracing::info!(
            target: "swiotlb::attestation",
            accepted = verdict.accepted,
            platform = %verdict.platform,
            reasons = ?verdict.reasons,
            "attestation verdict"
        );
        if !verdict.accepted {
            self.record(Finding::new(
                FindingKind::AttestationRejected,
                format!("evidence rejected: {}", verdict.reasons.join("; ")),
            ));
            self.needs_reset();
        }
        self.last_verdict = Some(verdict);
        if self.gate.open() {
            let deferred = std::mem::take(&mut self.deferred);
            for q in 0..64u16 {
                if deferred & (1u64 << q) != 0 {
                    self.notify(q);
                }
            }
        }
    }

    /// The verdict, the evidence as read, and the transcript the device checked it against
    /// (encoded; empty when there was none), kept so the verdict can be re-checked offline.
    fn attest_verdict(&mut self, addr: u64, len: u32) -> (Verdict, Vec<u8>, Vec<u8>) {
        if !self.gate.required() {
            return (self.gate.decide(&[], &|_| None), Vec::new(), Vec::new());
        }
        if self.transport.status() & swiotlb_shared::pci::status::DRIVER_OK == 0 {
            let v = self
                .gate
                .reject("evidence submitted before DRIVER_OK: the session is not complete");
            return (v, Vec::new(), Vec::new());
        }
        let view = match self.pool.view() {
            Ok(Some(v)) => v,
            _ => {
                let v = self
                    .gate
                    .reject("evidence submitted while the pool is not decoded");
                return (v, Vec::new(), Vec::new());
            }
        };
        if len == 0 || !view.window.contains(addr, u64::from(len)) {
            self.record(
                Finding::new(
                    FindingKind::EvidenceOutsidePool,
                    "attestation evidence outside the pool",
                )
                .range(addr, u64::from(len)),
            );
            return (
                self.gate.reject("evidence outside the pool"),
                Vec::new(),
                Vec::new(),
            );
        }
        let mut evidence = vec![0u8; len as usize];
        if let Err(e) =
            vm_memory::Bytes::read_slice(&*view.mem, &mut evidence, vm_memory::GuestAddress(addr))
        {
            let v = self.gate.reject(&format!("evidence unreadable: {e}"));
            return (v, Vec::new(), Vec::new());
        }
        let observed = self.observed_session(view.window);
        let verdict = match observed.report_data_all() {
            Ok(all) => self.gate.decide(&evidence, &|p| {
                all.iter().find(|(k, _)| *k == p).map(|(_, rd)| *rd)
            }),
            Err(e) => self.gate.reject(&e),
        };
        let transcript = swiotlb_shared::transcript::PlatformKind::from_name(&verdict.platform)
            .and_then(|p| observed.transcript(p).encode().ok())
            .unwrap_or_default();
        (verdict, evidence, transcript)
    }

    /// What the device itself observed of this session: the basis of the transcript it
    /// checks the evidence against.
    fn observed_session(
        &self,
        window: swiotlb_shared::layout::PoolWindow,
    ) -> crate::gate::ObservedSession {
        let mut ids = [0u8; 8];
        let _ = self.config.read(0, &mut ids[..4]);
        let _ = self
            .config
            .read(u64::from(cfg::SUBSYSTEM_VENDOR_ID), &mut ids[4..]);
        crate::gate::ObservedSession {
            nonce: *self.gate.nonce(),
            instance_id: *self.gate.instance_id(),
            pci_ids: [
                u16::from_le_bytes([ids[0], ids[1]]),
                u16::from_le_bytes([ids[2], ids[3]]),
                u16::from_le_bytes([ids[4], ids[5]]),
                u16::from_le_bytes([ids[6], ids[7]]),
            ],
            device_features: self.transport.device_features(),
            driver_features: self.transport.driver_features(),
            pool_base: window.base(),
            pool_size: window.size(),
            queues: self
                .transport
                .queues()
                .iter()
                .enumerate()
                .filter(|(_, s)| s.queue.ready())
                .map(|(i, s)| swiotlb_shared::transcript::QueueRings {
                    index: i as u16,
                    desc: s.queue.desc_table(),
                    avail: s.queue.avail_ring(),
                    used: s.queue.used_ring(),
                    size: s.queue.size(),
                })
                .collect(),
        }
    }

    /// Processes queue `q`: what was taken and whether the driver must be interrupted.
    fn process_queue(
        &mut self,
        q: u16,
        view: &crate::pool::PoolView,
        rearm: Rearm,
    ) -> Result<Processed, Finding> {
        let indirect = self.transport.negotiated(VIRTIO_RING_F_INDIRECT_DESC);
        let mem = &*view.mem;
        let dma = self.dma.clone();
        let audit = self.audit.clone();
        // Sent when dropped: on every way out of this pass, before the caller records a
        // finding, so the log keeps the device's order.
        let mut audit_batch = audit.as_ref().map(|h| h.dma_batch());
        let device = &mut self.device;
        let Some(slot) = self.transport.queue_mut(q) else {
            return Ok(Processed {
                took: false,
                interrupt: false,
            });
        };
        let queue = &mut slot.queue;
        VirtioPciTransport::check_rings(q, queue, Some(view.window))?;
        let avail = queue.avail_idx(mem, Ordering::Acquire).map_err(|e| {
            Finding::new(
                FindingKind::RingOutsidePool,
                format!("available ring unreadable: {e}"),
            )
            .at(q, None)
        })?;
        let pending = avail - std::num::Wrapping(queue.next_avail());
        if pending.0 > queue.size() {
            return Err(Finding::new(
                FindingKind::AvailIndexJump,
                format!(
                    "available index moved by {} on a queue of {}",
                    pending.0,
                    queue.size()
                ),
            )
            .at(q, None));
        }
        let ctx_base = ChainContext {
            mem,
            window: view.window,
            desc_table: queue.desc_table(),
            queue_size: queue.size(),
            indirect,
            queue: q,
        };
        let mut used_any = false;
        loop {
            // No doorbells while the device is taking chains (with EVENT_IDX this is the
            // stale `avail_event`; without, the used ring's NO_NOTIFY flag).
            let _ = queue.disable_notification(mem);
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                DmaCounters::add(&dma.chains, 1);
                match ctx_base.check(head) {
                    Ok(c) => {
                        if let Some(b) = &mut audit_batch {
                            // Every descriptor of the chain; the pass's chains go to the log
                            // in one message. Blocks when the log queue is full:
                            // back-pressure, never a dropped record.
                            let descs = c.descs.iter().map(|d| (d.addr, d.len, d.writable));
                            if let Err(e) = b.record_chain(q, head, descs) {
                                tracing::error!(error = %e, "audit log DMA record lost");
                            }
                        }
                        // From the chain's totals: a few adds per chain, not two per
                        // descriptor (each locked add costs ~2.5 ns; BENCHMARKS.md).
                        let readable = c.readable().len() as u64;
                        let writable = c.writable().len() as u64;
                        if readable != 0 {
                            DmaCounters::add(&dma.readable_descriptors, readable);
                            DmaCounters::add(&dma.readable_bytes, c.readable_len);
                        }
                        if writable != 0 {
                            DmaCounters::add(&dma.writable_descriptors, writable);
                            DmaCounters::add(&dma.writable_bytes, c.writable_len);
                        }
                        if c.indirect_tables != 0 {
                            DmaCounters::add(&dma.indirect_tables, u64::from(c.indirect_tables));
                        }
                        let used = device.handle_chain(q, mem, &c);
                        if let Err(e) = queue.add_used(mem, head, used) {
                            tracing::warn!(error = %e, "add_used failed");
                        }
                        used_any = true;
                    }
                    Err(f) => {
                        DmaCounters::add(&dma.chains_rejected, 1);
                        // Return the chain with nothing written so the driver is not left
                        // waiting; the device then needs a reset.
                        let _ = queue.add_used(mem, head, 0);
                        return Err(f);
                    }
                }
            }
            // Ask for the next doorbell, then look again for chains that raced in. Without
            // EVENT_IDX this clears NO_NOTIFY, and virtio-queue reports no race.
            if rearm == Rearm::No || !queue.enable_notification(mem).unwrap_or(false) {
                break;
            }
        }
        Ok(Processed {
            took: used_any,
            interrupt: used_any && queue.needs_notification(mem).unwrap_or(true),
        })
    }

    /// Applies a SET_IRQS.
    pub fn set_irqs(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        action: IrqAction,
    ) -> Result<(), IrqError> {
        self.interrupts.set(index, start, count, action)
    }

    /// The session summary.
    pub fn summary(&self) -> SessionSummary {
        let g = DmaCounters::get;
        let d = &self.dma;
        let driver = self.transport.driver_features();
        SessionSummary {
            device_features: self.transport.device_features(),
            driver_features: driver,
            negotiated: if self.transport.status() & swiotlb_shared::pci::status::FEATURES_OK != 0 {
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
                crate::gate::GateState::Awaiting => "awaiting",
                crate::gate::GateState::Accepted => "accepted",
                crate::gate::GateState::Rejected => "rejected",
                crate::gate::GateState::NotRequired => "not_required",
            }
            .to_string(),
            attestation: self.last_verdict.clone(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }
}

fn read_exact_at(pool: &Pool, buf: &mut [u8], offset: u64) -> Result<(), AccessError> {
    pool.file()
        .read_exact_at(buf, offset)
        .map_err(AccessError::Pool)
}
