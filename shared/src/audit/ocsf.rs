//! The OCSF record of an event: one JSON object a line, shaped after OCSF 1.5 so a SIEM
//! ingests it as OCSF, with this project's own fields under `unmapped`. Documented field by
//! field in `docs/audit-schema.md`.
//!
//! A record is built from an [`Envelope`] (sequence, time, device, transcript hash, hash of
//! the previous line) and an [`Event`] (what happened). Parsing is strict: every object
//! refuses unknown fields, and the parsed record must be exactly the record the writer
//! builds from its own envelope and event, so the OCSF ids, names and messages cannot
//! disagree with the event they describe.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::encoding::hex32;
use super::event::{
    AttestationVerdict, AuditFinding, CheckpointRecord, ConfigChange, DeviceIdentity, DmaChains,
    DmaSummary, Envelope, Event, LogAction, LogEvent, PeripheralAction, PeripheralEvent,
};
use super::merkle::Hash;

/// The schema version, in `metadata.log_version`.
pub const SCHEMA: &str = "swiotlb-audit/1";
/// The OCSF version the records follow, in `metadata.version`.
pub const OCSF_VERSION: &str = "1.5.0";
/// `metadata.log_name`.
pub const LOG_NAME: &str = "swiotlb-audit";
/// `metadata.product.name`.
pub const PRODUCT_NAME: &str = "swiotlb-host";
/// `metadata.product.vendor_name`.
pub const VENDOR_NAME: &str = "swiotlb";

/// OCSF class ids used here.
pub mod class {
    /// Memory Activity (System Activity): descriptor chains and per-interval DMA counts.
    pub const MEMORY_ACTIVITY: u32 = 1004;
    /// Event Log Activity (System Activity): log start, rotation, restart, stop, checkpoints.
    pub const EVENT_LOG_ACTIVITY: u32 = 1008;
    /// Peripheral Activity (System Activity): driver connect and disconnect.
    pub const PERIPHERAL_ACTIVITY: u32 = 1010;
    /// Compliance Finding (Findings): attestation verdicts.
    pub const COMPLIANCE_FINDING: u32 = 2003;
    /// Detection Finding (Findings): device-policy violations.
    pub const DETECTION_FINDING: u32 = 2004;
    /// Device Config State Change (Discovery): negotiation, BARs, resets.
    pub const DEVICE_CONFIG_STATE_CHANGE: u32 = 5019;
}

/// Errors of record parsing.
#[derive(Debug, Error)]
pub enum SchemaError {
    /// Not a JSON object of this schema.
    #[error("not a {SCHEMA} record")]
    Json(#[source] serde_json::Error),
    /// Well-formed, but a field disagrees with the event (message says which).
    #[error("inconsistent record: {0}")]
    Inconsistent(String),
}

/// `metadata.product`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// Product name.
    pub name: String,
    /// Vendor.
    pub vendor_name: String,
    /// Version.
    pub version: String,
}

/// `metadata`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// OCSF version.
    pub version: String,
    /// The product.
    pub product: Product,
    /// Log name.
    pub log_name: String,
    /// This schema's version.
    pub log_version: String,
    /// Leaf index.
    pub sequence: u64,
}

/// `device`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// OCSF device type id: 99 (Other).
    pub type_id: u32,
    /// Its caption.
    #[serde(rename = "type")]
    pub type_: String,
    /// Device uid.
    pub uid: String,
    /// Device name.
    pub name: String,
}

/// `finding_info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingInfo {
    /// `<device uid>/<sequence>`.
    pub uid: String,
    /// Title.
    pub title: String,
    /// Description.
    pub desc: String,
    /// Finding types: the kind.
    pub types: Vec<String>,
    /// Creation time.
    pub created_time: u64,
}

/// `compliance`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compliance {
    /// Standards: `swiotlb-attestation`.
    pub standards: Vec<String>,
    /// Control checked.
    pub control: String,
    /// 1 Pass, 3 Fail.
    pub status_id: u32,
    /// Its caption.
    pub status: String,
}

/// `process` of Memory Activity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// Pid.
    pub pid: u32,
    /// Name.
    pub name: String,
}

/// `peripheral_device` of Peripheral Activity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeripheralDevice {
    /// Device class.
    pub class: String,
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
}

/// `file` of Event Log Activity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// File name.
    pub name: String,
    /// 1 (Regular File).
    pub type_id: u32,
}

/// This project's fields (OCSF's place for attributes it does not define).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unmapped {
    /// Session transcript hash (hex), all zero before attestation.
    #[serde(with = "hex32")]
    pub transcript_sha256: Hash,
    /// Leaf hash of the previous line (hex).
    #[serde(with = "hex32")]
    pub prev_leaf: Hash,
    /// Detection Finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<AuditFinding>,
    /// Compliance Finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationVerdict>,
    /// Device Config State Change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigChange>,
    /// Peripheral Activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peripheral: Option<PeripheralEvent>,
    /// Memory Activity, descriptor chains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dma_chains: Option<DmaChains>,
    /// Memory Activity, interval counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dma_summary: Option<DmaSummary>,
    /// Event Log Activity, lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogEvent>,
    /// Event Log Activity, checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointRecord>,
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// OCSF class.
    pub class_uid: u32,
    /// Its caption.
    pub class_name: String,
    /// OCSF category.
    pub category_uid: u32,
    /// Its caption.
    pub category_name: String,
    /// Activity within the class.
    pub activity_id: u32,
    /// Its caption.
    pub activity_name: String,
    /// `class_uid * 100 + activity_id`.
    pub type_uid: u64,
    /// `"<class>: <activity>"`.
    pub type_name: String,
    /// 1 Informational, 2 Low, 3 Medium, 4 High.
    pub severity_id: u32,
    /// Its caption.
    pub severity: String,
    /// Ms since the epoch.
    pub time: u64,
    /// DMA summary: interval start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// DMA summary: interval end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<u64>,
    /// DMA summary: descriptors in the interval; DMA chains: descriptors in the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// One-line description.
    pub message: String,
    /// Metadata.
    pub metadata: Metadata,
    /// The reporting device.
    pub device: Device,
    /// Findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding_info: Option<FindingInfo>,
    /// Detection Finding: always true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_alert: Option<bool>,
    /// Compliance Finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<Compliance>,
    /// Memory Activity: the device process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// Memory Activity (DMA chains): bytes of every descriptor in the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Peripheral Activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peripheral_device: Option<PeripheralDevice>,
    /// Event Log Activity: log name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_name: Option<String>,
    /// Event Log Activity: the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileRef>,
    /// This project's fields.
    pub unmapped: Unmapped,
}

fn severity_name(id: u32) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        _ => "Other",
    }
}

impl Record {
    /// Builds the record of `event` in `env`.
    pub fn build(env: &Envelope, event: Event) -> Self {
        let mut u = Unmapped {
            transcript_sha256: env.transcript,
            prev_leaf: env.prev_leaf,
            finding: None,
            attestation: None,
            config: None,
            peripheral: None,
            dma_chains: None,
            dma_summary: None,
            log: None,
            checkpoint: None,
        };
        let mut r = Record {
            class_uid: 0,
            class_name: String::new(),
            category_uid: 0,
            category_name: String::new(),
            activity_id: 0,
            activity_name: String::new(),
            type_uid: 0,
            type_name: String::new(),
            severity_id: 1,
            severity: String::new(),
            time: env.time,
            start_time: None,
            end_time: None,
            count: None,
            message: String::new(),
            metadata: Metadata {
                version: OCSF_VERSION.into(),
                product: Product {
                    name: PRODUCT_NAME.into(),
                    vendor_name: VENDOR_NAME.into(),
                    version: env.product_version.clone(),
                },
                log_name: LOG_NAME.into(),
                log_version: SCHEMA.into(),
                sequence: env.sequence,
            },
            device: Device {
                type_id: 99,
                type_: "Other".into(),
                uid: env.device.uid.clone(),
                name: env.device.name.clone(),
            },
            finding_info: None,
            is_alert: None,
            compliance: None,
            process: None,
            size: None,
            peripheral_device: None,
            log_name: None,
            file: None,
            unmapped: u.clone(),
        };
        let finding_info = |title: &str, desc: &str, kind: &str| FindingInfo {
            uid: format!("{}/{}", env.device.uid, env.sequence),
            title: title.into(),
            desc: desc.into(),
            types: vec![kind.into()],
            created_time: env.time,
        };
        let (class, activity, activity_name): (u32, u32, &str);
        match event {
            Event::Finding(f) => {
                (class, activity, activity_name) = (class::DETECTION_FINDING, 1, "Create");
                r.severity_id = if f.dma_violation { 4 } else { 3 };
                r.message = format!("device policy violation: {}", f.kind);
                let mut desc = f.detail.clone();
                if f.dma_violation {
                    desc = format!("DMA outside the pool refused: {desc}");
                }
                r.finding_info = Some(finding_info(&r.message, &desc, f.kind.name()));
                r.is_alert = Some(true);
                u.finding = Some(f);
            }
            Event::Attestation(a) => {
                (class, activity, activity_name) = (class::COMPLIANCE_FINDING, 1, "Create");
                r.severity_id = if a.passed { 1 } else { 4 };
                let verdict = if a.passed { "passed" } else { "failed" };
                r.message = format!("attestation {verdict}");
                r.finding_info = Some(finding_info(&r.message, &a.reason, "attestation"));
                r.compliance = Some(Compliance {
                    standards: vec!["swiotlb-attestation".into()],
                    control: "evidence binds the session transcript".into(),
                    status_id: if a.passed { 1 } else { 3 },
                    status: if a.passed { "Pass" } else { "Fail" }.into(),
                });
                u.attestation = Some(a);
            }
            Event::Config(c) => {
                (class, activity, activity_name) = (class::DEVICE_CONFIG_STATE_CHANGE, 1, "Log");
                r.message = match &c {
                    ConfigChange::Features { accepted, .. } => format!(
                        "features {}",
                        if *accepted { "negotiated" } else { "refused" }
                    ),
                    ConfigChange::BarProgrammed { bar, address, .. } => {
                        format!("BAR {bar} programmed at {address:#x}")
                    }
                    ConfigChange::BarMoved { bar, from, to, .. } => {
                        format!("BAR {bar} moved from {from:#x} to {to:#x}")
                    }
                    ConfigChange::Status { from, to } => {
                        format!("device status {from:#04x} -> {to:#04x}")
                    }
                    ConfigChange::Reset { reason } => format!("device reset: {reason}"),
                };
                u.config = Some(c);
            }
            Event::Peripheral(p) => {
                let (a, n) = match p.action {
                    PeripheralAction::Connect => (1, "Connect"),
                    PeripheralAction::Disconnect => (2, "Disconnect"),
                };
                (class, activity, activity_name) = (class::PERIPHERAL_ACTIVITY, a, n);
                r.message = format!("driver {}: {}", n.to_lowercase(), p.peer);
                r.peripheral_device = Some(PeripheralDevice {
                    class: "virtio-pci".into(),
                    name: env.device.name.clone(),
                    uid: env.device.uid.clone(),
                });
                u.peripheral = Some(p);
            }
            Event::Dma(d) => {
                (class, activity, activity_name) = (class::MEMORY_ACTIVITY, 99, "DMA Chains");
                let (n, bytes) = (d.descriptors(), d.bytes());
                r.message = format!("{n} DMAs in {} chains, {bytes} bytes", d.chains.len());
                r.process = Some(Process {
                    pid: env.pid,
                    name: PRODUCT_NAME.into(),
                });
                r.count = Some(n);
                r.size = Some(bytes);
                u.dma_chains = Some(d);
            }
            Event::DmaSummary(s) => {
                (class, activity, activity_name) = (class::MEMORY_ACTIVITY, 99, "DMA Summary");
                r.message = format!("{} DMAs, {} bytes", s.descriptors(), s.bytes());
                r.process = Some(Process {
                    pid: env.pid,
                    name: PRODUCT_NAME.into(),
                });
                r.start_time = Some(s.interval_start);
                r.end_time = Some(s.interval_end);
                r.count = Some(s.descriptors());
                u.dma_summary = Some(s);
            }
            Event::Log(l) => {
                let (a, n) = match l.action {
                    LogAction::Start => (6, "Start"),
                    LogAction::Rotate => (5, "Rotate"),
                    LogAction::Restart => (8, "Restart"),
                    LogAction::Stop => (7, "Stop"),
                };
                (class, activity, activity_name) = (class::EVENT_LOG_ACTIVITY, a, n);
                if l.torn.is_some() || l.unclean || !l.detail.is_empty() {
                    r.severity_id = 2;
                }
                r.message = format!("audit log {}: {}", n.to_lowercase(), l.file);
                if l.torn.is_some() {
                    r.message.push_str(" (torn last line removed)");
                }
                r.log_name = Some(LOG_NAME.into());
                r.file = Some(FileRef {
                    name: l.file.clone(),
                    type_id: 1,
                });
                u.log = Some(l);
            }
            Event::Checkpoint(c) => {
                (class, activity, activity_name) = (class::EVENT_LOG_ACTIVITY, 99, "Checkpoint");
                r.message = "signed checkpoint".into();
                r.log_name = Some(LOG_NAME.into());
                u.checkpoint = Some(c);
            }
        }
        let (cat, cat_name, class_name) = match class {
            class::MEMORY_ACTIVITY => (1, "System Activity", "Memory Activity"),
            class::EVENT_LOG_ACTIVITY => (1, "System Activity", "Event Log Activity"),
            class::PERIPHERAL_ACTIVITY => (1, "System Activity", "Peripheral Activity"),
            class::COMPLIANCE_FINDING => (2, "Findings", "Compliance Finding"),
            class::DETECTION_FINDING => (2, "Findings", "Detection Finding"),
            _ => (5, "Discovery", "Device Config State Change"),
        };
        r.class_uid = class;
        r.class_name = class_name.into();
        r.category_uid = cat;
        r.category_name = cat_name.into();
        r.activity_id = activity;
        r.activity_name = activity_name.into();
        r.type_uid = u64::from(class) * 100 + u64::from(activity);
        r.type_name = format!("{class_name}: {activity_name}");
        r.severity = severity_name(r.severity_id).into();
        r.unmapped = u;
        r
    }

    /// The record as one JSON line (no newline).
    pub fn to_line(&self) -> String {
        // Serializing plain structs of strings, integers and JSON values cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The event this record describes (exactly one detail is present after parsing).
    pub fn event(&self) -> Option<Event> {
        let u = &self.unmapped;
        let mut found = Vec::with_capacity(1);
        if let Some(v) = &u.finding {
            found.push(Event::Finding(v.clone()));
        }
        if let Some(v) = &u.attestation {
            found.push(Event::Attestation(v.clone()));
        }
        if let Some(v) = &u.config {
            found.push(Event::Config(v.clone()));
        }
        if let Some(v) = &u.peripheral {
            found.push(Event::Peripheral(v.clone()));
        }
        if let Some(v) = &u.dma_chains {
            found.push(Event::Dma(v.clone()));
        }
        if let Some(v) = &u.dma_summary {
            found.push(Event::DmaSummary(v.clone()));
        }
        if let Some(v) = &u.log {
            found.push(Event::Log(v.clone()));
        }
        if let Some(v) = &u.checkpoint {
            found.push(Event::Checkpoint(v.clone()));
        }
        if found.len() == 1 {
            found.pop()
        } else {
            None
        }
    }

    /// The envelope this record was built in.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            sequence: self.metadata.sequence,
            time: self.time,
            device: DeviceIdentity {
                uid: self.device.uid.clone(),
                name: self.device.name.clone(),
            },
            pid: self.process.as_ref().map_or(0, |p| p.pid),
            product_version: self.metadata.product.version.clone(),
            transcript: self.unmapped.transcript_sha256,
            prev_leaf: self.unmapped.prev_leaf,
        }
    }

    /// The leaf index.
    pub fn sequence(&self) -> u64 {
        self.metadata.sequence
    }

    /// The checkpoint note, for a checkpoint record.
    pub fn checkpoint_note(&self) -> Option<&str> {
        self.unmapped.checkpoint.as_ref().map(|c| c.note.as_str())
    }

    /// The lifecycle event, for an Event Log Activity record other than a checkpoint.
    pub fn log_event(&self) -> Option<&LogEvent> {
        self.unmapped.log.as_ref()
    }

    /// Parses one line (without its newline), strictly.
    pub fn parse(line: &[u8]) -> Result<Self, SchemaError> {
        let r: Record = serde_json::from_slice(line).map_err(SchemaError::Json)?;
        let Some(event) = r.event() else {
            return Err(SchemaError::Inconsistent(
                "exactly one event object must be present under unmapped".into(),
            ));
        };
        let rebuilt = Record::build(&r.envelope(), event);
        if rebuilt != r {
            return Err(SchemaError::Inconsistent(first_difference(&rebuilt, &r)));
        }
        Ok(r)
    }
}

/// Names the first top-level field where `a` and `b` differ.
fn first_difference(a: &Record, b: &Record) -> String {
    let (Ok(serde_json::Value::Object(x)), Ok(serde_json::Value::Object(y))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return "record".into();
    };
    for (k, v) in &x {
        if y.get(k) != Some(v) {
            return format!("field {k:?} does not match the event");
        }
    }
    for k in y.keys() {
        if !x.contains_key(k) {
            return format!("field {k:?} does not belong to this event");
        }
    }
    "record".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{
        DmaChain, DmaDescriptor, FindingKind, QueueDma, TornTail, NO_TRANSCRIPT,
    };

    fn env(seq: u64) -> Envelope {
        Envelope {
            sequence: seq,
            time: 1_700_000_000_123,
            device: DeviceIdentity {
                uid: "dev0".into(),
                name: "virtio-blk swiotlb".into(),
            },
            pid: 4242,
            product_version: "0.1.0".into(),
            transcript: NO_TRANSCRIPT,
            prev_leaf: [0xab; 32],
        }
    }

    fn samples() -> Vec<Event> {
        vec![
            Event::Finding(AuditFinding {
                kind: FindingKind::DescriptorOutsidePool,
                dma_violation: true,
                queue: Some(0),
                head: Some(7),
                addr: 0xdead_beef_0000,
                len: 4096,
                detail: "past pool end".into(),
            }),
            Event::Attestation(AttestationVerdict {
                passed: false,
                reason: "measurement mismatch".into(),
                evidence: vec![1, 2, 3],
                transcript: vec![4, 5],
            }),
            Event::Config(ConfigChange::Features {
                device_features: 1 << 32 | 1 << 27,
                driver_features: 1 << 32 | 1 << 27,
                accepted: true,
                negotiated: vec!["VERSION_1".into(), "SWIOTLB".into()],
            }),
            Event::Config(ConfigChange::BarMoved {
                bar: 2,
                from: 0x80_0000_0000,
                to: 0x90_0000_0000,
                size: 16 << 20,
            }),
            Event::Config(ConfigChange::Reset {
                reason: "driver wrote 0".into(),
            }),
            Event::Peripheral(PeripheralEvent {
                action: PeripheralAction::Disconnect,
                peer: "/run/s.sock".into(),
                session: Some(serde_json::json!({"chains": 3})),
            }),
            Event::Dma(DmaChains {
                chains: vec![
                    DmaChain {
                        queue: 0,
                        head: 1,
                        descriptors: vec![
                            DmaDescriptor {
                                addr: 0x1000,
                                len: 16,
                                writable: false,
                            },
                            DmaDescriptor {
                                addr: 0x2000,
                                len: 512,
                                writable: true,
                            },
                        ],
                    },
                    DmaChain {
                        queue: 1,
                        head: 7,
                        descriptors: vec![DmaDescriptor {
                            addr: 0x3000,
                            len: 1,
                            writable: true,
                        }],
                    },
                ],
            }),
            Event::DmaSummary(DmaSummary {
                interval_start: 1,
                interval_end: 2,
                queues: vec![QueueDma {
                    queue: Some(0),
                    readable_descriptors: 2,
                    readable_bytes: 32,
                    writable_descriptors: 1,
                    writable_bytes: 4096,
                }],
            }),
            Event::Log(LogEvent {
                action: LogAction::Restart,
                file: "audit.000001.jsonl".into(),
                mode: "summary".into(),
                key: "k+00000000+AQ==".into(),
                previous: None,
                torn: Some(TornTail {
                    offset: 10,
                    len: 3,
                    sha256: [1; 32],
                    data_b64: Some("YWJj".into()),
                }),
                unclean: true,
                detail: String::new(),
            }),
            Event::Checkpoint(CheckpointRecord {
                note: "o\n1\nAAAA\n\n\u{2014} o AAAAAA==\n".into(),
            }),
        ]
    }

    #[test]
    fn every_event_round_trips_through_its_line() {
        for (i, e) in samples().into_iter().enumerate() {
            let r = Record::build(&env(i as u64), e.clone());
            let line = r.to_line();
            assert!(!line.contains('\n'));
            let p = Record::parse(line.as_bytes()).unwrap();
            assert_eq!(p, r);
            assert_eq!(p.event(), Some(e));
            assert_eq!(
                p.type_uid,
                u64::from(p.class_uid) * 100 + u64::from(p.activity_id)
            );
        }
    }

    #[test]
    fn ocsf_ids_follow_the_event() {
        let ids: Vec<(u32, u32, u32)> = samples()
            .into_iter()
            .map(|e| {
                let r = Record::build(&env(0), e);
                (r.class_uid, r.category_uid, r.activity_id)
            })
            .collect();
        assert_eq!(
            ids,
            [
                (2004, 2, 1),
                (2003, 2, 1),
                (5019, 5, 1),
                (5019, 5, 1),
                (5019, 5, 1),
                (1010, 1, 2),
                (1004, 1, 99),
                (1004, 1, 99),
                (1008, 1, 8),
                (1008, 1, 99)
            ]
        );
    }

    #[test]
    fn records_whose_ocsf_fields_disagree_with_the_event_are_rejected() {
        let r = Record::build(&env(3), samples().remove(0));
        let line = r.to_line();
        for (from, to) in [
            ("\"severity_id\":4", "\"severity_id\":1"),
            ("\"class_uid\":2004", "\"class_uid\":2003"),
            ("\"addr\":\"0xdeadbeef0000\"", "\"addr\":\"0xDEADBEEF0000\""),
            ("\"unmapped\":{", "\"unmapped\":{\"extra\":1,"),
            ("\"uid\":\"dev0/3\"", "\"uid\":\"dev0/4\""),
        ] {
            assert!(line.contains(from), "{from}");
            let bad = line.replacen(from, to, 1);
            assert!(Record::parse(bad.as_bytes()).is_err(), "{to}");
        }
        assert!(Record::parse(b"{}").is_err());
        assert!(Record::parse(b"not json").is_err());
    }

    #[test]
    fn dma_chains_records_whose_totals_disagree_with_their_descriptors_are_rejected() {
        let e = samples()
            .into_iter()
            .find(|e| matches!(e, Event::Dma(_)))
            .unwrap();
        let line = Record::build(&env(5), e).to_line();
        for (from, to) in [
            ("\"count\":3", "\"count\":2"),
            ("\"size\":529", "\"size\":528"),
            ("\"len\":512", "\"len\":511"),
            ("\"activity_id\":99", "\"activity_id\":8"),
            ("3 DMAs in 2 chains", "2 DMAs in 2 chains"),
        ] {
            assert!(line.contains(from), "{from}");
            let bad = line.replacen(from, to, 1);
            assert!(Record::parse(bad.as_bytes()).is_err(), "{to}");
        }
    }

    #[test]
    fn a_record_of_an_unknown_finding_kind_is_refused_naming_the_kind() {
        let line = Record::build(&env(3), samples().remove(0)).to_line();
        let from = "\"kind\":\"descriptor_outside_pool\"";
        assert!(line.contains(from));
        let bad = line.replace("descriptor_outside_pool", "descriptor_outside_the_pool");
        let e = Record::parse(bad.as_bytes()).unwrap_err();
        assert!(matches!(e, SchemaError::Json(_)), "{e:?}");
        let chain = crate::error_chain(&e);
        assert!(
            chain.contains("unknown finding kind \"descriptor_outside_the_pool\""),
            "{chain}"
        );
    }
}
