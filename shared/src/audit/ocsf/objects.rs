//! The record and the OCSF objects it is made of, field by field; how they are filled is
//! the builder's ([`Record::build`]).

use serde::{Deserialize, Serialize};

use crate::audit::batch::PackedChains;
use crate::audit::encoding::hex32;
use crate::audit::event::{
    AttestationVerdict, AuditFinding, CheckpointRecord, ConfigChange, DmaChains, DmaSummary,
    LogEvent, PeripheralEvent,
};
use crate::audit::merkle::Hash;

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
