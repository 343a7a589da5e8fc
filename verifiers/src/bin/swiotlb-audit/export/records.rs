//! What export writes for one proven record: its OCSF record(s), in the OCSF version the
//! writer writes, each carrying where it was proven (`unmapped.proof`).
//!
//! [`ocsf_records`] is the one place where a stored record becomes the records a SIEM
//! receives. A record that holds many DMAs (full mode's DMA batch record, or the DMA chains
//! record of older logs) is expanded here, and only here, into one Memory Activity record
//! per DMA ([`per_dma`]), from the DMAs `swiotlb_shared::audit::expand_dma_record` gives.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use swiotlb_shared::audit::ocsf::OcsfVersion;
use swiotlb_shared::audit::{expand_dma_record, Checkpoint, DmaEvent, Event, Record};
use thiserror::Error;

/// Errors of the mapping of a record to OCSF.
#[derive(Debug, Error)]
pub enum RecordsError {
    /// The record holds no single event (a verified record always does).
    #[error("record {0} holds no single event")]
    NoEvent(u64),
    /// The record's JSON is not an object with `unmapped` (a parsed record always is).
    #[error("record {0} is not a JSON object with unmapped fields")]
    NotAnObject(u64),
}

/// Where a record was proven: its line, and the checkpoint that covers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// The file's name.
    pub file: String,
    /// Line number in the file, from 1.
    pub line: u64,
    /// The record's leaf index (`metadata.sequence`).
    pub index: u64,
    /// The covering checkpoint: its tree size (the record's index is below it) and root.
    pub checkpoint: Checkpoint,
}

impl Proof {
    fn to_json(&self, upgraded_from: Option<&str>) -> Value {
        let mut v = json!({
            "file": self.file,
            "line": self.line,
            "index": self.index,
            "checkpoint_size": self.checkpoint.size,
            "checkpoint_root": B64.encode(self.checkpoint.root),
            "checkpoint_origin": self.checkpoint.origin,
        });
        if let Some(from) = upgraded_from {
            v["upgraded_from"] = from.into();
        }
        v
    }
}

/// How records holding many DMAs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaRecords {
    /// As the log holds them: one record for many DMAs.
    AsWritten,
    /// One Memory Activity record per DMA.
    PerDma,
}

/// The OCSF records of `record` (one, or one per DMA when `dma` says so), each with
/// `unmapped.proof`.
pub fn ocsf_records(
    record: &Record,
    proof: &Proof,
    dma: DmaRecords,
) -> Result<Vec<Value>, RecordsError> {
    let index = record.sequence();
    let upgraded = record.upgraded().ok_or(RecordsError::NoEvent(index))?;
    let from = match record.ocsf_version() {
        Some(OcsfVersion::CURRENT) => None,
        _ => Some(record.metadata.version.as_str()),
    };
    let mut base = serde_json::to_value(&upgraded).map_err(|_| RecordsError::NotAnObject(index))?;
    let Some(unmapped) = base.get_mut("unmapped").and_then(Value::as_object_mut) else {
        return Err(RecordsError::NotAnObject(index));
    };
    unmapped.insert("proof".into(), proof.to_json(from));
    match (upgraded.event(), dma) {
        (Some(Event::Dma(_) | Event::DmaBatch(_)), DmaRecords::PerDma) => {
            let dmas = expand_dma_record(&upgraded).ok_or(RecordsError::NoEvent(index))?;
            Ok(per_dma(&base, &dmas))
        }
        (Some(_), _) => Ok(vec![base]),
        (None, _) => Err(RecordsError::NoEvent(index)),
    }
}

/// One Memory Activity record per DMA of a record `base` (already in OCSF form) that holds
/// `dmas`: activity Read (7) for a device-readable descriptor, which the device reads from
/// the pool, Write (8) for a device-writable one; `base_address` and `size` the
/// descriptor's; `unmapped.dma` the descriptor with its queue, chain head and position, in
/// place of the packed or listed chains. `unmapped.proof.part` numbers them within the
/// record.
fn per_dma(base: &Value, dmas: &[DmaEvent]) -> Vec<Value> {
    let total = dmas.len() as u64;
    let mut out = Vec::with_capacity(dmas.len());
    for (part, d) in (1u64..).zip(dmas) {
        let (id, name) = if d.writable {
            (8, "Write")
        } else {
            (7, "Read")
        };
        let mut r = base.clone();
        r["activity_id"] = id.into();
        r["activity_name"] = name.into();
        r["type_uid"] = (1004u64 * 100 + id).into();
        r["type_name"] = format!("Memory Activity: {name}").into();
        r["message"] = format!(
            "DMA {} {:#x}+{} (queue {}, chain {})",
            if d.writable { "write" } else { "read" },
            d.addr,
            d.len,
            d.queue,
            d.head
        )
        .into();
        r["base_address"] = format!("{:#x}", d.addr).into();
        r["size"] = u64::from(d.len).into();
        r["count"] = 1.into();
        if let Some(u) = r["unmapped"].as_object_mut() {
            u.remove("dma_chains");
            u.remove("dma_batch");
            u.insert(
                "dma".into(),
                json!({"queue": d.queue, "head": d.head, "position": d.index,
                       "addr": format!("{:#x}", d.addr), "len": d.len,
                       "writable": d.writable}),
            );
            if let Some(p) = u.get_mut("proof") {
                p["part"] = part.into();
                p["parts"] = total.into();
            }
        }
        out.push(r);
    }
    out
}
