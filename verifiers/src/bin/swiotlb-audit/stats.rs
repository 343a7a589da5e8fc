//! `swiotlb-audit stats`: DMAs, bytes, findings, attestations and connects per device and
//! queue.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::json;
use swiotlb_shared::audit::{Event, PeripheralAction};

use crate::input::each_record;
use crate::ToolError;

#[derive(Default)]
struct QueueStats {
    readable_descriptors: u64,
    readable_bytes: u64,
    writable_descriptors: u64,
    writable_bytes: u64,
    dma_records: u64,
}

#[derive(Default)]
struct DeviceStats {
    name: String,
    queues: BTreeMap<Option<u16>, QueueStats>,
    /// By kind name (the order the tool prints them in).
    findings: BTreeMap<&'static str, u64>,
    findings_by_queue: BTreeMap<Option<u16>, u64>,
    dma_violations: u64,
    attestations_passed: u64,
    attestations_failed: u64,
    connects: u64,
    records: u64,
}

/// Counts the records of `logs` per device and queue and prints the counts.
pub fn run(logs: &[PathBuf], as_json: bool) -> Result<(), ToolError> {
    let mut devices: BTreeMap<String, DeviceStats> = BTreeMap::new();
    each_record(
        logs,
        |r, _| {
            let d = devices.entry(r.device.uid.clone()).or_default();
            d.name.clone_from(&r.device.name);
            d.records += 1;
            match r.event() {
                Some(Event::DmaSummary(s)) => {
                    for q in s.queues {
                        let e = d.queues.entry(q.queue).or_default();
                        e.readable_descriptors += q.readable_descriptors;
                        e.readable_bytes += q.readable_bytes;
                        e.writable_descriptors += q.writable_descriptors;
                        e.writable_bytes += q.writable_bytes;
                    }
                }
                Some(Event::Dma(x)) => {
                    // Descriptors recorded one by one (full mode), per queue.
                    for c in &x.chains {
                        d.queues.entry(Some(c.queue)).or_default().dma_records +=
                            c.descriptors.len() as u64;
                    }
                }
                Some(Event::Finding(f)) => {
                    *d.findings.entry(f.kind.name()).or_default() += 1;
                    *d.findings_by_queue.entry(f.queue).or_default() += 1;
                    d.dma_violations += u64::from(f.dma_violation);
                }
                Some(Event::Attestation(a)) => {
                    if a.passed {
                        d.attestations_passed += 1;
                    } else {
                        d.attestations_failed += 1;
                    }
                }
                Some(Event::Peripheral(pe)) => {
                    d.connects += u64::from(pe.action == PeripheralAction::Connect)
                }
                _ => {}
            }
        },
        |_, _| {},
    )?;
    if as_json {
        let devs: Vec<_> = devices
            .iter()
            .map(|(uid, d)| {
                let queues: Vec<_> = d
                    .queues
                    .iter()
                    .map(|(q, s)| {
                        json!({"queue": q, "dmas": s.readable_descriptors + s.writable_descriptors,
                           "readable_descriptors": s.readable_descriptors,
                           "readable_bytes": s.readable_bytes,
                           "writable_descriptors": s.writable_descriptors,
                           "writable_bytes": s.writable_bytes,
                           "dma_records": s.dma_records,
                           "findings": d.findings_by_queue.get(q).copied().unwrap_or(0)})
                    })
                    .collect();
                json!({"uid": uid, "name": d.name, "records": d.records, "queues": queues,
                       "findings": d.findings, "dma_violations": d.dma_violations,
                       "attestations_passed": d.attestations_passed,
                       "attestations_failed": d.attestations_failed, "connects": d.connects})
            })
            .collect();
        println!("{}", json!({ "devices": devs }));
        return Ok(());
    }
    for (uid, d) in &devices {
        println!(
            "device {uid} ({}): {} records, {} connects",
            d.name, d.records, d.connects
        );
        for (q, s) in &d.queues {
            let qn = q.map_or_else(|| "other".to_string(), |q| q.to_string());
            println!(
                "  queue {qn}: {} DMAs ({} read: {} bytes; {} write: {} bytes), {} DMA records, {} findings",
                s.readable_descriptors + s.writable_descriptors,
                s.readable_descriptors,
                s.readable_bytes,
                s.writable_descriptors,
                s.writable_bytes,
                s.dma_records,
                d.findings_by_queue.get(q).copied().unwrap_or(0)
            );
        }
        let total: u64 = d.findings.values().sum();
        println!("  findings: {total} ({} DMA violations)", d.dma_violations);
        for (k, n) in &d.findings {
            println!("    {k}: {n}");
        }
        println!(
            "  attestation: {} passed, {} failed",
            d.attestations_passed, d.attestations_failed
        );
    }
    Ok(())
}
