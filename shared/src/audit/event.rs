//! The events of `swiotlb-audit/1`: what the device reports ([`Event`]) and what every
//! record carries besides ([`Envelope`]). Their OCSF record is built in [`super::ocsf`];
//! their fields are documented one by one in `docs/audit-schema.md`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use super::encoding::{b64, b64_hashes, hex32, hex_u64};
use super::merkle::Hash;

/// The transcript hash before attestation.
pub const NO_TRANSCRIPT: Hash = [0; 32];
/// Torn bytes up to this size are kept (base64) in the recovery record; beyond it, only
/// their length and hash. A record line is far smaller unless it carries attestation
/// evidence, which is bounded by the evidence mailbox.
pub const MAX_TORN_KEPT: usize = 64 << 10;

/// Errors of event values.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EventError {
    /// A finding kind that is not one of [`FindingKind::ALL`].
    #[error(
        "unknown finding kind {0:?} (not one of the {n} kinds of swiotlb-audit/1)",
        n = FindingKind::ALL.len()
    )]
    UnknownFindingKind(String),
}

/// What the driver did wrong: the device-policy violations, a closed set. Its names are
/// the `kind` of a Detection Finding; a record of any other kind is not a
/// `swiotlb-audit/1` record, so a verifier or a SIEM mapping can rely on the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FindingKind {
    /// A data descriptor's `[addr, addr + len)` lies outside the pool, or straddles its end.
    DescriptorOutsidePool,
    /// A descriptor's `addr + len` overflows 64 bits.
    DescriptorOverflow,
    /// An indirect table lies outside the pool, or straddles its end.
    IndirectTableOutsidePool,
    /// An indirect table has a bad size, is nested, or indirect was not negotiated.
    BadIndirectTable,
    /// A descriptor table, available ring or used ring lies outside the pool.
    RingOutsidePool,
    /// A chain loops or is longer than the queue allows.
    ChainTooLong,
    /// A chain's `next` or head index is beyond its table.
    DescriptorIndexOutOfRange,
    /// A device-readable descriptor follows a device-writable one.
    ReadableAfterWritable,
    /// A descriptor of length zero.
    ZeroLengthDescriptor,
    /// The chain's total length overflows 32 bits.
    ChainLengthOverflow,
    /// The available index moved by more than the queue size.
    AvailIndexJump,
    /// The pool BAR was not decoded (memory space off or BAR unassigned) while queues ran.
    PoolNotDecoded,
    /// The driver did not accept VIRTIO_F_SWIOTLB (strict policy refuses FEATURES_OK).
    SwiotlbDeclined,
    /// The driver accepted a feature the device did not offer.
    UnofferedFeature,
    /// The driver did not accept VIRTIO_F_VERSION_1.
    Version1Declined,
    /// The driver changed features after FEATURES_OK, or cleared a status bit.
    StatusProtocolViolation,
    /// A notification for a queue that does not exist, or is not enabled.
    BadQueueNotify,
    /// A queue size that is zero, not a power of two, or above the maximum.
    BadQueueSize,
    /// A request the device could not parse (bad header, missing status byte, ...).
    MalformedRequest,
    /// Attestation evidence placed outside the pool.
    EvidenceOutsidePool,
    /// Attestation evidence that did not verify, or was submitted out of order.
    AttestationRejected,
}

impl FindingKind {
    /// Every kind, in counter order.
    pub const ALL: [FindingKind; 21] = [
        Self::DescriptorOutsidePool,
        Self::DescriptorOverflow,
        Self::IndirectTableOutsidePool,
        Self::BadIndirectTable,
        Self::RingOutsidePool,
        Self::ChainTooLong,
        Self::DescriptorIndexOutOfRange,
        Self::ReadableAfterWritable,
        Self::ZeroLengthDescriptor,
        Self::ChainLengthOverflow,
        Self::AvailIndexJump,
        Self::PoolNotDecoded,
        Self::SwiotlbDeclined,
        Self::UnofferedFeature,
        Self::Version1Declined,
        Self::StatusProtocolViolation,
        Self::BadQueueNotify,
        Self::BadQueueSize,
        Self::MalformedRequest,
        Self::EvidenceOutsidePool,
        Self::AttestationRejected,
    ];

    /// Stable snake_case name used in events, JSON and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Self::DescriptorOutsidePool => "descriptor_outside_pool",
            Self::DescriptorOverflow => "descriptor_overflow",
            Self::IndirectTableOutsidePool => "indirect_table_outside_pool",
            Self::BadIndirectTable => "bad_indirect_table",
            Self::RingOutsidePool => "ring_outside_pool",
            Self::ChainTooLong => "chain_too_long",
            Self::DescriptorIndexOutOfRange => "descriptor_index_out_of_range",
            Self::ReadableAfterWritable => "readable_after_writable",
            Self::ZeroLengthDescriptor => "zero_length_descriptor",
            Self::ChainLengthOverflow => "chain_length_overflow",
            Self::AvailIndexJump => "avail_index_jump",
            Self::PoolNotDecoded => "pool_not_decoded",
            Self::SwiotlbDeclined => "swiotlb_declined",
            Self::UnofferedFeature => "unoffered_feature",
            Self::Version1Declined => "version_1_declined",
            Self::StatusProtocolViolation => "status_protocol_violation",
            Self::BadQueueNotify => "bad_queue_notify",
            Self::BadQueueSize => "bad_queue_size",
            Self::MalformedRequest => "malformed_request",
            Self::EvidenceOutsidePool => "evidence_outside_pool",
            Self::AttestationRejected => "attestation_rejected",
        }
    }

    /// Whether this kind is a DMA that would have reached outside the pool.
    pub fn is_dma_violation(self) -> bool {
        matches!(
            self,
            Self::DescriptorOutsidePool
                | Self::DescriptorOverflow
                | Self::IndirectTableOutsidePool
                | Self::RingOutsidePool
                | Self::PoolNotDecoded
                | Self::EvidenceOutsidePool
        )
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FindingKind {
    type Err = EventError;

    /// The kind named `s` ([`FindingKind::name`]), exactly.
    fn from_str(s: &str) -> Result<Self, EventError> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| EventError::UnknownFindingKind(s.to_string()))
    }
}

/// As its name, a JSON string.
impl Serialize for FindingKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// From its name; any other string is refused with an error that names it.
impl<'de> Deserialize<'de> for FindingKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = FindingKind;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a finding kind name")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<FindingKind, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Name)
    }
}

/// A device-policy violation, as the device found it (the host's `Finding`, flattened).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFinding {
    /// What the driver did wrong (its name in the record: `descriptor_outside_pool`, ...).
    pub kind: FindingKind,
    /// Whether this is a DMA that would have left the pool.
    pub dma_violation: bool,
    /// Queue index, when the finding concerns a queue.
    pub queue: Option<u16>,
    /// Chain head, when the finding concerns a chain.
    pub head: Option<u16>,
    /// Bus address involved (0 when none).
    #[serde(with = "hex_u64")]
    pub addr: u64,
    /// Length involved (0 when none).
    pub len: u64,
    /// Human-readable detail.
    pub detail: String,
}

/// The verdict on a session's attestation evidence, with what is needed to re-check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationVerdict {
    /// Whether the evidence verified and satisfied the policy.
    pub passed: bool,
    /// Why (the policy checked, or the first mismatch).
    pub reason: String,
    /// The evidence as received (base64 in the record).
    #[serde(rename = "evidence_b64", with = "b64")]
    pub evidence: Vec<u8>,
    /// The session transcript the evidence binds (base64 in the record).
    #[serde(rename = "transcript_b64", with = "b64")]
    pub transcript: Vec<u8>,
}

/// A change of the device's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConfigChange {
    /// FEATURES_OK was written: what was offered and accepted, and whether it was granted.
    Features {
        /// Features offered.
        #[serde(with = "hex_u64")]
        device_features: u64,
        /// Features the driver accepted.
        #[serde(with = "hex_u64")]
        driver_features: u64,
        /// Whether FEATURES_OK was granted.
        accepted: bool,
        /// Names of the negotiated features.
        negotiated: Vec<String>,
    },
    /// A BAR was assigned an address.
    BarProgrammed {
        /// BAR index.
        bar: u8,
        /// Bus address.
        #[serde(with = "hex_u64")]
        address: u64,
        /// BAR size.
        size: u64,
    },
    /// A BAR moved (the device follows the pool).
    BarMoved {
        /// BAR index.
        bar: u8,
        /// Old bus address.
        #[serde(with = "hex_u64")]
        from: u64,
        /// New bus address.
        #[serde(with = "hex_u64")]
        to: u64,
        /// BAR size.
        size: u64,
    },
    /// The device status changed.
    Status {
        /// Old status byte.
        from: u8,
        /// New status byte.
        to: u8,
    },
    /// The device was reset.
    Reset {
        /// Why (driver wrote 0, new session, ...).
        reason: String,
    },
}

/// Peripheral activity verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeripheralAction {
    /// A driver (client) connected.
    Connect,
    /// The driver disconnected.
    Disconnect,
}

/// A driver connecting or disconnecting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeripheralEvent {
    /// Connect or disconnect.
    pub action: PeripheralAction,
    /// Who the peer is (socket path, client pid, ...).
    pub peer: String,
    /// On disconnect: the session summary (features, DMA counters, findings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<serde_json::Value>,
}

/// One descriptor the device checked and used (full mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmaDescriptor {
    /// Bus address.
    #[serde(with = "hex_u64")]
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable (device to driver) or device-readable.
    pub writable: bool,
}

/// One descriptor chain the device checked and used, every descriptor in chain order
/// (full mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmaChain {
    /// Queue index.
    pub queue: u16,
    /// Head of the chain.
    pub head: u16,
    /// Its descriptors.
    pub descriptors: Vec<DmaDescriptor>,
}

/// Chains recorded together in one record, in the order the device checked them (full
/// mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmaChains {
    /// The chains.
    pub chains: Vec<DmaChain>,
}

impl DmaChains {
    /// Descriptors of every chain.
    pub fn descriptors(&self) -> u64 {
        self.chains.iter().map(|c| c.descriptors.len() as u64).sum()
    }

    /// Bytes of every descriptor.
    pub fn bytes(&self) -> u64 {
        self.chains
            .iter()
            .flat_map(|c| c.descriptors.iter())
            .map(|d| u64::from(d.len))
            .sum()
    }
}

/// DMA counts of one queue over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDma {
    /// Queue index; `null` for the bucket of queues at or above the accumulator's limit.
    pub queue: Option<u16>,
    /// Device-readable descriptors (driver to device).
    pub readable_descriptors: u64,
    /// Device-readable bytes.
    pub readable_bytes: u64,
    /// Device-writable descriptors (device to driver).
    pub writable_descriptors: u64,
    /// Device-writable bytes.
    pub writable_bytes: u64,
}

/// Every DMA of an interval, counted per queue and direction (both modes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmaSummary {
    /// Start of the interval, ms since the epoch.
    pub interval_start: u64,
    /// End of the interval, ms since the epoch.
    pub interval_end: u64,
    /// Queues with at least one DMA, by queue index.
    pub queues: Vec<QueueDma>,
}

impl DmaSummary {
    /// Descriptors of every queue and direction.
    pub fn descriptors(&self) -> u64 {
        self.queues
            .iter()
            .map(|q| {
                q.readable_descriptors
                    .saturating_add(q.writable_descriptors)
            })
            .fold(0, u64::saturating_add)
    }

    /// Bytes of every queue and direction.
    pub fn bytes(&self) -> u64 {
        self.queues
            .iter()
            .map(|q| q.readable_bytes.saturating_add(q.writable_bytes))
            .fold(0, u64::saturating_add)
    }
}

/// Log lifecycle verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogAction {
    /// First record of a new log (tree starts empty).
    Start,
    /// First record of a file continuing the log of the previous file.
    Rotate,
    /// The writer reopened the current file (after a clean stop or a crash).
    Restart,
    /// The writer is stopping; a checkpoint follows.
    Stop,
}

/// The checkpoint a rotated file continues from, and the tree state at it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousCheckpoint {
    /// File name of the previous file.
    pub file: String,
    /// Its final checkpoint (the signed note).
    pub checkpoint: String,
    /// Peaks of the tree at that checkpoint's size (base64), largest first.
    #[serde(with = "b64_hashes")]
    pub peaks: Vec<Hash>,
}

/// A partial last line found when reopening a file after a crash, and removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TornTail {
    /// Byte offset of the torn line in the file.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// SHA-256 of its bytes (hex).
    #[serde(with = "hex32")]
    pub sha256: Hash,
    /// Its bytes (base64), when at most [`MAX_TORN_KEPT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
}

/// A log lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEvent {
    /// What happened.
    pub action: LogAction,
    /// This file's name.
    pub file: String,
    /// Recording mode: `summary` or `full`.
    pub mode: String,
    /// The verifier key (`name+id+key`) checkpoints are signed with.
    pub key: String,
    /// Rotate: the previous file's final checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousCheckpoint>,
    /// Restart or start: the torn line removed from the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torn: Option<TornTail>,
    /// Restart: the previous run did not stop cleanly.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unclean: bool,
    /// Free text (e.g. why a new log was started instead of continuing the old one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// A signed checkpoint of every line before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRecord {
    /// The C2SP signed note (checkpoint body and signature line).
    pub note: String,
}

/// What a record is about.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Detection Finding 2004.
    Finding(AuditFinding),
    /// Compliance Finding 2003.
    Attestation(AttestationVerdict),
    /// Device Config State Change 5019.
    Config(ConfigChange),
    /// Peripheral Activity 1010.
    Peripheral(PeripheralEvent),
    /// Memory Activity 1004, Other (99): "DMA Chains".
    Dma(DmaChains),
    /// Memory Activity 1004, Other (99): "DMA Summary".
    DmaSummary(DmaSummary),
    /// Event Log Activity 1008: Start 6, Rotate 5, Restart 8, Stop 7.
    Log(LogEvent),
    /// Event Log Activity 1008, Other (99): "Checkpoint".
    Checkpoint(CheckpointRecord),
}

/// Who is reporting: the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// Stable unique id of the device instance.
    pub uid: String,
    /// Human name (e.g. `virtio-blk swiotlb`).
    pub name: String,
}

/// What every record carries besides its event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Leaf index in the log's Merkle tree (global across files).
    pub sequence: u64,
    /// Ms since the epoch.
    pub time: u64,
    /// The device.
    pub device: DeviceIdentity,
    /// The writer's process id (Memory Activity's `process`).
    pub pid: u32,
    /// `metadata.product.version`.
    pub product_version: String,
    /// The session transcript hash, all zero before attestation.
    pub transcript: Hash,
    /// Leaf hash of the previous line (all zero for the first line of a log).
    pub prev_leaf: Hash,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finding_kind_is_written_as_its_name_and_read_back() {
        let mut names: Vec<&str> = FindingKind::ALL.iter().map(|k| k.name()).collect();
        for k in FindingKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
            assert_eq!(serde_json::from_str::<FindingKind>(&json).unwrap(), k);
            assert_eq!(k.name().parse::<FindingKind>(), Ok(k));
            assert_eq!(k.to_string(), k.name());
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FindingKind::ALL.len(), "names are unique");
    }

    #[test]
    fn an_unknown_finding_kind_is_refused_with_its_name() {
        for bad in ["descriptor_outside_the_pool", "Descriptor_outside_pool", ""] {
            assert_eq!(
                bad.parse::<FindingKind>(),
                Err(EventError::UnknownFindingKind(bad.to_string()))
            );
            let e = serde_json::from_str::<FindingKind>(&format!("\"{bad}\"")).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(serde_json::from_str::<FindingKind>("3").is_err());
    }
}
