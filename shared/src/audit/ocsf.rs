//! The OCSF record of an event: one JSON object a line, valid against the official OCSF
//! schema of the version it names in `metadata.version` ([`OcsfVersion::CURRENT`], 1.7.0),
//! with this project's own fields under `unmapped`. Documented field by field in
//! `docs/audit-schema.md`.
//!
//! A record is built from an [`Envelope`] (sequence, time, device, writer process,
//! transcript hash, hash of the previous line) and an [`Event`] (what happened). Parsing is
//! strict: every object refuses unknown fields, and the parsed record must be exactly the
//! record the writer builds from its own envelope and event in the OCSF version the record
//! names, so the OCSF ids, names and messages cannot disagree with the event they describe.
//! Records of the earlier layout ([`OcsfVersion::V1_5_0`]) still parse, as logs of them
//! exist; none is written any more.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::batch::PackedChains;
use super::encoding::hex32;
use super::event::{
    AttestationVerdict, AuditFinding, CheckpointRecord, ConfigChange, DeviceIdentity, DmaChains,
    DmaSummary, Envelope, Event, LogAction, LogEvent, PeripheralAction, PeripheralEvent,
};
use super::merkle::Hash;

/// The schema version, in `metadata.log_version`.
pub const SCHEMA: &str = "swiotlb-audit/1";
/// The OCSF version the writer's records follow, in `metadata.version`.
pub const OCSF_VERSION: &str = OcsfVersion::CURRENT.name();
/// `metadata.log_name`.
pub const LOG_NAME: &str = "swiotlb-audit";
/// `metadata.product.name`.
pub const PRODUCT_NAME: &str = "swiotlb-host";
/// `metadata.product.vendor_name`.
pub const VENDOR_NAME: &str = "swiotlb";

/// The OCSF versions whose layout a `swiotlb-audit/1` record may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OcsfVersion {
    /// The first layout, read and never written: it named OCSF 1.5.0, which has no
    /// Peripheral Activity class, and its Memory Activity lacked the `actor` that class
    /// requires. Its records name no user id, and no process outside Memory Activity.
    V1_5_0,
    /// The layout written: OCSF 1.7.0, the first version with every class used here
    /// (Peripheral Activity came in 1.7.0), each record valid against its schema. The
    /// records of the classes that have an `actor` name the device process as it.
    V1_7_0,
}

impl OcsfVersion {
    /// The version the writer writes.
    pub const CURRENT: OcsfVersion = OcsfVersion::V1_7_0;
    /// Every version a record may name, oldest first.
    pub const ALL: [OcsfVersion; 2] = [OcsfVersion::V1_5_0, OcsfVersion::V1_7_0];

    /// The version as `metadata.version` names it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::V1_5_0 => "1.5.0",
            Self::V1_7_0 => "1.7.0",
        }
    }

    /// The version named `s` exactly, if a record may name it.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }
}

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
    /// `metadata.version` names an OCSF version no record of this schema has.
    #[error(
        "OCSF version {0:?} is not one of this schema's ({known})",
        known = OcsfVersion::ALL.map(OcsfVersion::name).join(", ")
    )]
    UnknownOcsfVersion(String),
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

/// `process` of Memory Activity, and the actor's process: the device process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// Pid.
    pub pid: u32,
    /// Name.
    pub name: String,
    /// The user it runs as (absent in OCSF 1.5.0 records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
}

/// `user`: the device process's user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Its real user id, in decimal (OCSF's user `uid` is a string).
    pub uid: String,
}

/// `actor`: who did what the record reports, the device process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// The device process, when the record names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// The user the device process runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// The device program's name, for a record upgraded from OCSF 1.5.0 whose process
    /// was not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
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
    /// Memory Activity, descriptor chains (older logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dma_chains: Option<DmaChains>,
    /// Memory Activity, descriptor chains packed (`batch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dma_batch: Option<PackedChains>,
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
    /// Who acted: the device process (Memory Activity, Peripheral Activity, Event Log
    /// Activity; absent in OCSF 1.5.0 records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
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

/// The device process of `env` as OCSF's `process`.
fn writer_process(env: &Envelope, version: OcsfVersion) -> Process {
    Process {
        pid: env.pid,
        name: PRODUCT_NAME.into(),
        user: match version {
            OcsfVersion::V1_5_0 => None,
            OcsfVersion::V1_7_0 => writer_user(env),
        },
    }
}

fn writer_user(env: &Envelope) -> Option<User> {
    env.uid.map(|u| User { uid: u.to_string() })
}

/// The device process of `env` as OCSF's `actor`; none in OCSF 1.5.0 records. A record
/// upgraded from 1.5.0 that did not name its process names the program instead.
fn writer_actor(env: &Envelope, version: OcsfVersion) -> Option<Actor> {
    match version {
        OcsfVersion::V1_5_0 => None,
        OcsfVersion::V1_7_0 if env.pid == 0 => Some(Actor {
            process: None,
            user: writer_user(env),
            app_name: Some(PRODUCT_NAME.into()),
        }),
        OcsfVersion::V1_7_0 => Some(Actor {
            process: Some(writer_process(env, version)),
            user: writer_user(env),
            app_name: None,
        }),
    }
}

impl Record {
    /// Builds the record of `event` in `env`, in the OCSF version the writer writes.
    pub fn build(env: &Envelope, event: Event) -> Self {
        Self::build_as(OcsfVersion::CURRENT, env, event)
    }

    /// Builds the record of `event` in `env` in the layout of `version`.
    pub fn build_as(version: OcsfVersion, env: &Envelope, event: Event) -> Self {
        let mut u = Unmapped {
            transcript_sha256: env.transcript,
            prev_leaf: env.prev_leaf,
            finding: None,
            attestation: None,
            config: None,
            peripheral: None,
            dma_chains: None,
            dma_batch: None,
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
                version: version.name().into(),
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
            actor: None,
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
                r.actor = writer_actor(env, version);
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
                r.process = Some(writer_process(env, version));
                r.actor = writer_actor(env, version);
                r.count = Some(n);
                r.size = Some(bytes);
                u.dma_chains = Some(d);
            }
            Event::DmaBatch(p) => {
                (class, activity, activity_name) = (class::MEMORY_ACTIVITY, 99, "DMA Batch");
                let (n, bytes) = (p.descriptors(), p.bytes());
                r.message = format!("{n} DMAs in {} chains, {bytes} bytes", p.chains());
                r.process = Some(writer_process(env, version));
                r.actor = writer_actor(env, version);
                r.count = Some(n);
                r.size = Some(bytes);
                u.dma_batch = Some(p);
            }
            Event::DmaSummary(s) => {
                (class, activity, activity_name) = (class::MEMORY_ACTIVITY, 99, "DMA Summary");
                r.message = format!("{} DMAs, {} bytes", s.descriptors(), s.bytes());
                r.process = Some(writer_process(env, version));
                r.actor = writer_actor(env, version);
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
                r.actor = writer_actor(env, version);
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
                r.actor = writer_actor(env, version);
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
        if let Some(v) = &u.dma_batch {
            found.push(Event::DmaBatch(v.clone()));
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

    /// The OCSF version whose layout this record has; `None` for a version no record of
    /// this schema has (such a record does not parse).
    pub fn ocsf_version(&self) -> Option<OcsfVersion> {
        OcsfVersion::from_name(&self.metadata.version)
    }

    /// The envelope this record was built in.
    pub fn envelope(&self) -> Envelope {
        let process = self
            .actor
            .as_ref()
            .and_then(|a| a.process.as_ref())
            .or(self.process.as_ref());
        let user = self
            .actor
            .as_ref()
            .and_then(|a| a.user.as_ref())
            .or(process.and_then(|p| p.user.as_ref()));
        Envelope {
            sequence: self.metadata.sequence,
            time: self.time,
            device: DeviceIdentity {
                uid: self.device.uid.clone(),
                name: self.device.name.clone(),
            },
            pid: process.map_or(0, |p| p.pid),
            uid: user.and_then(|u| u.uid.parse().ok()),
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

    /// This record in the layout of the OCSF version the writer writes: the same event in
    /// the same envelope. A record of that version is returned as it is; one of OCSF 1.5.0
    /// gains its `actor` (the process when it named one, else the program's name).
    pub fn upgraded(&self) -> Option<Record> {
        if self.ocsf_version() == Some(OcsfVersion::CURRENT) {
            return Some(self.clone());
        }
        Some(Record::build(&self.envelope(), self.event()?))
    }

    /// Parses one line (without its newline), strictly, in the layout of the OCSF version
    /// it names.
    pub fn parse(line: &[u8]) -> Result<Self, SchemaError> {
        let r: Record = serde_json::from_slice(line).map_err(SchemaError::Json)?;
        let Some(version) = r.ocsf_version() else {
            return Err(SchemaError::UnknownOcsfVersion(r.metadata.version));
        };
        let Some(event) = r.event() else {
            return Err(SchemaError::Inconsistent(
                "exactly one event object must be present under unmapped".into(),
            ));
        };
        let rebuilt = Record::build_as(version, &r.envelope(), event);
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
            uid: Some(1000),
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
                ear: Some("eyJhbGciOiJFZERTQSJ9.e30.c2ln".into()),
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
    fn records_name_ocsf_1_7_0_and_the_device_process_where_their_class_has_an_actor() {
        for e in samples() {
            let r = Record::build(&env(2), e);
            assert_eq!(r.metadata.version, "1.7.0");
            assert_eq!(r.ocsf_version(), Some(OcsfVersion::V1_7_0));
            let v = serde_json::to_value(&r).unwrap();
            let process = serde_json::json!({"pid": 4242, "name": "swiotlb-host",
                                             "user": {"uid": "1000"}});
            match r.class_uid {
                // Classes whose schema has an actor: the device process, as who acted.
                class::MEMORY_ACTIVITY | class::PERIPHERAL_ACTIVITY | class::EVENT_LOG_ACTIVITY => {
                    assert_eq!(v["actor"]["process"], process, "{v}");
                    assert_eq!(v["actor"]["user"]["uid"], "1000", "{v}");
                }
                // Findings have none, and the driver, not the device, changes its config.
                _ => assert!(v.get("actor").is_none(), "{v}"),
            }
            if r.class_uid == class::MEMORY_ACTIVITY {
                assert_eq!(v["process"], process, "{v}");
            } else {
                assert!(v.get("process").is_none(), "{v}");
            }
            // The pid and uid come back from the record itself.
            let back = Record::parse(r.to_line().as_bytes()).unwrap().envelope();
            if r.actor.is_some() {
                assert_eq!((back.pid, back.uid), (4242, Some(1000)));
            }
        }
    }

    #[test]
    fn records_of_ocsf_1_5_0_still_parse_and_upgrade_to_the_current_layout() {
        // A line as the first writer wrote it (from a real log of that layout).
        let old = concat!(
            r#"{"class_uid":1010,"class_name":"Peripheral Activity","category_uid":1,"#,
            r#""category_name":"System Activity","activity_id":1,"activity_name":"Connect","#,
            r#""type_uid":101001,"type_name":"Peripheral Activity: Connect","severity_id":1,"#,
            r#""severity":"Informational","time":1700000000123,"#,
            r#""message":"driver connect: /run/s.sock","metadata":{"version":"1.5.0","#,
            r#""product":{"name":"swiotlb-host","vendor_name":"swiotlb","version":"0.1.0"},"#,
            r#""log_name":"swiotlb-audit","log_version":"swiotlb-audit/1","sequence":1},"#,
            r#""device":{"type_id":99,"type":"Other","uid":"dev0","name":"virtio-blk swiotlb"},"#,
            r#""peripheral_device":{"class":"virtio-pci","name":"virtio-blk swiotlb","uid":"dev0"},"#,
            r#""unmapped":{"transcript_sha256":"0000000000000000000000000000000000000000000000000000000000000000","#,
            r#""prev_leaf":"abababababababababababababababababababababababababababababababab","#,
            r#""peripheral":{"action":"connect","peer":"/run/s.sock"}}}"#
        );
        let r = Record::parse(old.as_bytes()).unwrap();
        assert_eq!(r.ocsf_version(), Some(OcsfVersion::V1_5_0));
        assert_eq!(r.to_line(), old, "parsed as written");
        let up = r.upgraded().unwrap();
        assert_eq!(up.metadata.version, "1.7.0");
        assert_eq!(up.event(), r.event());
        // It named no process: the upgrade names the program, and invents no pid or uid.
        let a = up.actor.clone().unwrap();
        assert_eq!(a.app_name.as_deref(), Some("swiotlb-host"));
        assert!(a.process.is_none() && a.user.is_none());
        assert_eq!(Record::parse(up.to_line().as_bytes()).unwrap(), up);

        // Every event in the old layout round-trips in it; Memory Activity kept its pid.
        for e in samples() {
            let mut en = env(4);
            en.uid = None;
            if !matches!(e, Event::Dma(_) | Event::DmaSummary(_)) {
                en.pid = 0;
            }
            let r = Record::build_as(OcsfVersion::V1_5_0, &en, e.clone());
            assert!(r.actor.is_none());
            let p = Record::parse(r.to_line().as_bytes()).unwrap();
            assert_eq!(p, r);
            let up = p.upgraded().unwrap();
            if let Some(proc_) = &up.process {
                assert_eq!(proc_.pid, 4242);
                assert_eq!(up.actor.as_ref().unwrap().process.as_ref(), Some(proc_));
            }
            assert_eq!(up.event(), Some(e));
        }
    }

    #[test]
    fn a_record_mixing_the_layouts_or_naming_another_ocsf_version_is_refused() {
        let line = Record::build(&env(3), samples().remove(5)).to_line();
        assert!(line.contains("\"actor\""));
        // The actor does not belong in a 1.5.0 record.
        let mixed = line.replacen("\"version\":\"1.7.0\"", "\"version\":\"1.5.0\"", 1);
        assert!(matches!(
            Record::parse(mixed.as_bytes()),
            Err(SchemaError::Inconsistent(_))
        ));
        for v in ["1.8.0", "1.6.0", "1.7", ""] {
            let bad = line.replacen("\"version\":\"1.7.0\"", &format!("\"version\":\"{v}\""), 1);
            match Record::parse(bad.as_bytes()) {
                Err(SchemaError::UnknownOcsfVersion(got)) => assert_eq!(got, v),
                other => panic!("{v}: {other:?}"),
            }
        }
        // A 1.7.0 record whose actor is not the process it reports is refused.
        let other = line.replacen("\"uid\":\"1000\"", "\"uid\":\"0\"", 1);
        assert!(Record::parse(other.as_bytes()).is_err());
        let padded = line.replace("\"uid\":\"1000\"", "\"uid\":\"01000\"");
        assert!(Record::parse(padded.as_bytes()).is_err());
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
