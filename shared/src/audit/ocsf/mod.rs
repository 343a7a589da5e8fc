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
//!
//! This file builds a record from its event and parses it back. Beside it:
//! - `objects`: the record and the OCSF objects it is made of, field by field;
//! - `version`: the OCSF versions a record may name and all that differs between their
//!   layouts, the reader and upgrade of OCSF 1.5.0 records among it.

mod objects;
mod version;

use thiserror::Error;

use super::event::{
    ConfigChange, DeviceIdentity, Envelope, Event, LogAction, LogEvent, PeripheralAction,
};

pub use objects::{
    Actor, Compliance, Device, FileRef, FindingInfo, Metadata, PeripheralDevice, Process, Product,
    Record, Unmapped, User,
};
pub use version::OcsfVersion;
use version::{writer_actor, writer_process};

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
        AttestationVerdict, AuditFinding, CheckpointRecord, DmaChain, DmaChains, DmaDescriptor,
        DmaSummary, FindingKind, PeripheralEvent, QueueDma, TornTail, NO_TRANSCRIPT,
    };

    pub(super) fn env(seq: u64) -> Envelope {
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

    pub(super) fn samples() -> Vec<Event> {
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
