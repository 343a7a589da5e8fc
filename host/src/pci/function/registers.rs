//! Register dispatch: region reads and writes as a vfio-user client makes them, decoded to
//! config space, the pool BAR, or the structures of the register BAR (common configuration,
//! ISR, device configuration, doorbells, the MSI-X table and the attestation mailbox).

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use swiotlb_shared::audit::schema::ConfigChange;
use swiotlb_shared::features::{feature_names, VIRTIO_RING_F_EVENT_IDX};
use swiotlb_shared::layout::PoolWindow;
use swiotlb_shared::pci::{device_layout as dl, status};
use virtio_queue::QueueT;

use super::{
    AccessError, VirtioPciFunction, MAX_REG_ACCESS, REGION_CONFIG, REGION_POOL, REGION_REGS,
};
use crate::findings::FindingKind;
use crate::gate::GateRequest;
use crate::pool::Pool;
use crate::virtio::transport::{StatusEffect, VirtioPciTransport};

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

impl VirtioPciFunction {
    /// Reads `buf.len()` bytes of region `region` at `offset`.
    pub fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), AccessError> {
        self.check_range(region, offset, buf.len())?;
        // A worker's finding shows in the status before the driver can read it.
        self.absorb_worker_findings();
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
        // Doorbells and the MSI-X table leave the queue workers running; anything else
        // (config space, the common and device configuration, the mailbox) may change
        // what they rely on, so they are parked first and started again after, if the
        // state still calls for them.
        let quiet = region == REGION_REGS
            && matches!(
                Bar0::decode(offset),
                Some((
                    Bar0::Notify | Bar0::MsixTable | Bar0::MsixPba | Bar0::Isr,
                    _
                ))
            );
        if quiet {
            self.absorb_worker_findings();
        } else {
            self.park_workers();
        }
        let r = self.region_write_parked(region, offset, data);
        if !quiet || self.run.is_none() {
            self.sync_workers();
        }
        r
    }

    fn region_write_parked(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), AccessError> {
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
                buf[0] = self.isr.swap(0, Ordering::AcqRel);
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
    fn pool_window(&mut self) -> Option<PoolWindow> {
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
                        from: to & !status::DRIVER_OK,
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
}

fn read_exact_at(pool: &Pool, buf: &mut [u8], offset: u64) -> Result<(), AccessError> {
    pool.file()
        .read_exact_at(buf, offset)
        .map_err(AccessError::Pool)
}
