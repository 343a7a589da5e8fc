//! The attestation transcript: a canonical, deterministic encoding of what the driver and the
//! device negotiated, and the `REPORT_DATA` that binds it into platform evidence.
//!
//! `REPORT_DATA = SHA-512(DOMAIN || encode(transcript))`: exactly 64 bytes, the size of the
//! REPORT_DATA field of both an SEV-SNP report and a TDX TD report. The driver builds the
//! transcript from what it negotiated and has its platform sign the hash; the device rebuilds
//! it from what *it* observed and compares. Any difference (another nonce, another feature
//! bit, a ring elsewhere, another platform) yields another hash.
//!
//! The encoding is pure and allocation-bounded: fixed-width little-endian fields, explicit
//! lengths and counts, a version byte, at most [`MAX_QUEUES`] queues listed in strictly
//! increasing index order (so one session has exactly one encoding). `docs/transcript.md`
//! describes it byte by byte, with a worked example that a unit test below checks.

use ring::digest;

use crate::little_endian::Cursor;

/// Domain separation string hashed in front of the transcript. It names the protocol and its
/// version, so a hash made for anything else can never be mistaken for a transcript hash.
pub const DOMAIN: &[u8] = b"swiotlb-virtio attestation transcript v1";

/// Version byte at offset 0 of the encoding.
pub const VERSION: u8 = 1;

/// Bytes of the device's nonce (the mailbox's `NONCE` register).
pub const NONCE_LEN: usize = 32;

/// Bytes of `REPORT_DATA`: a SHA-512 digest, the size of the SNP and TDX fields.
pub const REPORT_DATA_LEN: usize = 64;

/// Most queues a transcript lists. Virtio-pci allows up to 65535 queues, but the devices of
/// this project have one request queue and a multi-queue device a few per vCPU; 256 keeps
/// the encoding under 8 KiB ([`MAX_ENCODED_LEN`]) whatever a peer claims.
pub const MAX_QUEUES: usize = 256;

/// Bytes of one queue entry: index (2), desc (8), avail (8), used (8), size (2).
pub const QUEUE_ENTRY_LEN: usize = 28;

/// Bytes before the queue entries when the instance ID is 32 bytes long (the longest header).
const MAX_HEADER_LEN: usize = 1 + 1 + NONCE_LEN + 8 + 1 + 32 + 8 + 8 + 8 + 8 + 2;

/// Largest encoding: the longest header and [`MAX_QUEUES`] entries (7,277 bytes).
pub const MAX_ENCODED_LEN: usize = MAX_HEADER_LEN + MAX_QUEUES * QUEUE_ENTRY_LEN;

/// Errors of building or decoding a transcript.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranscriptError {
    /// More queues than [`MAX_QUEUES`].
    #[error("{0} queues listed, at most {MAX_QUEUES} allowed")]
    TooManyQueues(usize),
    /// Queue indexes must be strictly increasing.
    #[error("queue index {index} follows {previous}: indexes must be strictly increasing")]
    QueueOrder {
        /// The index before.
        previous: u16,
        /// The offending index.
        index: u16,
    },
    /// The encoding ended early or has trailing bytes.
    #[error("transcript encoding is {0} bytes, which is not what its fields say")]
    Length(usize),
    /// Unknown version byte.
    #[error("transcript version {0} is not supported (expected {VERSION})")]
    Version(u8),
    /// Unknown platform byte.
    #[error("platform kind {0} is unknown")]
    Platform(u8),
    /// Instance ID length other than 16 or 32.
    #[error("instance ID length {0} is neither 16 nor 32")]
    InstanceIdLength(u8),
}

/// The kind of platform that signs the evidence. The byte values are those of the
/// transcript and of the evidence blob's platform tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum PlatformKind {
    /// AMD SEV-SNP.
    Snp = 1,
    /// Intel TDX.
    Tdx = 2,
    /// The emulated platform of CI: the SEV-SNP layout signed by a test-only key chain.
    /// Never evidence of a confidential VM.
    Emulated = 3,
}

impl PlatformKind {
    /// All kinds, in byte order.
    pub const ALL: [PlatformKind; 3] = [Self::Snp, Self::Tdx, Self::Emulated];

    /// The kind for a byte value.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Snp),
            2 => Some(Self::Tdx),
            3 => Some(Self::Emulated),
            _ => None,
        }
    }

    /// Lower-case name: `snp`, `tdx` or `emulated`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snp => "snp",
            Self::Tdx => "tdx",
            Self::Emulated => "emulated",
        }
    }

    /// The kind for a lower-case name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for PlatformKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The device's instance ID as the device presents it: 16 or 32 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceId {
    /// 16 bytes (the mailbox's `INSTANCE_ID` register).
    Short([u8; 16]),
    /// 32 bytes.
    Long([u8; 32]),
}

impl InstanceId {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Short(b) => b,
            Self::Long(b) => b,
        }
    }
}

/// Who the device is: its PCI IDs and its instance ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// PCI vendor ID.
    pub vendor_id: u16,
    /// PCI device ID.
    pub device_id: u16,
    /// PCI subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// PCI subsystem ID.
    pub subsystem_id: u16,
    /// The device-provided instance ID.
    pub instance_id: InstanceId,
}

/// One queue's ring addresses (bus addresses inside the pool) and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueRings {
    /// Queue index.
    pub index: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
    /// Queue size.
    pub size: u16,
}

/// Everything the transcript binds. Build it, then [`Transcript::encode`] or
/// [`Transcript::report_data`]; both check the bounds first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transcript {
    /// The platform that signs the evidence.
    pub platform: PlatformKind,
    /// The device's nonce for this reset.
    pub nonce: [u8; NONCE_LEN],
    /// The device's identity.
    pub identity: DeviceIdentity,
    /// The 64-bit `device_features` the device offered.
    pub device_features: u64,
    /// The 64-bit `driver_features` the driver accepted.
    pub driver_features: u64,
    /// Bus address of the pool.
    pub pool_base: u64,
    /// Size of the pool in bytes.
    pub pool_size: u64,
    /// The enabled queues, in strictly increasing index order.
    pub queues: Vec<QueueRings>,
}

impl Transcript {
    /// Checks the bounds (queue count, queue order).
    pub fn check(&self) -> Result<(), TranscriptError> {
        if self.queues.len() > MAX_QUEUES {
            return Err(TranscriptError::TooManyQueues(self.queues.len()));
        }
        for w in self.queues.windows(2) {
            if w[1].index <= w[0].index {
                return Err(TranscriptError::QueueOrder {
                    previous: w[0].index,
                    index: w[1].index,
                });
            }
        }
        Ok(())
    }

    /// The canonical encoding (see `docs/transcript.md`).
    pub fn encode(&self) -> Result<Vec<u8>, TranscriptError> {
        self.check()?;
        let id = self.identity.instance_id.as_bytes();
        let mut b = Vec::with_capacity(MAX_HEADER_LEN + self.queues.len() * QUEUE_ENTRY_LEN);
        b.push(VERSION);
        b.push(self.platform as u8);
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&self.identity.vendor_id.to_le_bytes());
        b.extend_from_slice(&self.identity.device_id.to_le_bytes());
        b.extend_from_slice(&self.identity.subsystem_vendor_id.to_le_bytes());
        b.extend_from_slice(&self.identity.subsystem_id.to_le_bytes());
        // 16 or 32: fits a byte.
        b.push(id.len() as u8);
        b.extend_from_slice(id);
        b.extend_from_slice(&self.device_features.to_le_bytes());
        b.extend_from_slice(&self.driver_features.to_le_bytes());
        b.extend_from_slice(&self.pool_base.to_le_bytes());
        b.extend_from_slice(&self.pool_size.to_le_bytes());
        // At most MAX_QUEUES (checked above): fits a u16.
        b.extend_from_slice(&(self.queues.len() as u16).to_le_bytes());
        for q in &self.queues {
            b.extend_from_slice(&q.index.to_le_bytes());
            b.extend_from_slice(&q.desc.to_le_bytes());
            b.extend_from_slice(&q.avail.to_le_bytes());
            b.extend_from_slice(&q.used.to_le_bytes());
            b.extend_from_slice(&q.size.to_le_bytes());
        }
        Ok(b)
    }

    /// `SHA-512(DOMAIN || encode(self))`.
    pub fn report_data(&self) -> Result<[u8; REPORT_DATA_LEN], TranscriptError> {
        Ok(report_data_of(&self.encode()?))
    }

    /// Decodes a canonical encoding. Strict: the version, platform and instance ID length
    /// must be known, queues in increasing order, and no byte may be missing or left over.
    pub fn decode(bytes: &[u8]) -> Result<Self, TranscriptError> {
        let mut r = Cursor::new(bytes);
        let bad_len = || TranscriptError::Length(bytes.len());
        let version = r.u8().map_err(|_| bad_len())?;
        if version != VERSION {
            return Err(TranscriptError::Version(version));
        }
        let p = r.u8().map_err(|_| bad_len())?;
        let platform = PlatformKind::from_u8(p).ok_or(TranscriptError::Platform(p))?;
        let nonce = r.array::<NONCE_LEN>().map_err(|_| bad_len())?;
        let vendor_id = r.u16().map_err(|_| bad_len())?;
        let device_id = r.u16().map_err(|_| bad_len())?;
        let subsystem_vendor_id = r.u16().map_err(|_| bad_len())?;
        let subsystem_id = r.u16().map_err(|_| bad_len())?;
        let id_len = r.u8().map_err(|_| bad_len())?;
        let instance_id = match id_len {
            16 => InstanceId::Short(r.array::<16>().map_err(|_| bad_len())?),
            32 => InstanceId::Long(r.array::<32>().map_err(|_| bad_len())?),
            n => return Err(TranscriptError::InstanceIdLength(n)),
        };
        let device_features = r.u64().map_err(|_| bad_len())?;
        let driver_features = r.u64().map_err(|_| bad_len())?;
        let pool_base = r.u64().map_err(|_| bad_len())?;
        let pool_size = r.u64().map_err(|_| bad_len())?;
        let count = usize::from(r.u16().map_err(|_| bad_len())?);
        if count > MAX_QUEUES {
            return Err(TranscriptError::TooManyQueues(count));
        }
        if r.remaining() != count * QUEUE_ENTRY_LEN {
            return Err(bad_len());
        }
        let mut queues = Vec::with_capacity(count);
        for _ in 0..count {
            queues.push(QueueRings {
                index: r.u16().map_err(|_| bad_len())?,
                desc: r.u64().map_err(|_| bad_len())?,
                avail: r.u64().map_err(|_| bad_len())?,
                used: r.u64().map_err(|_| bad_len())?,
                size: r.u16().map_err(|_| bad_len())?,
            });
        }
        let t = Transcript {
            platform,
            nonce,
            identity: DeviceIdentity {
                vendor_id,
                device_id,
                subsystem_vendor_id,
                subsystem_id,
                instance_id,
            },
            device_features,
            driver_features,
            pool_base,
            pool_size,
            queues,
        };
        t.check()?;
        Ok(t)
    }
}

/// `SHA-512(DOMAIN || encoded)`: the REPORT_DATA for an encoded transcript.
pub fn report_data_of(encoded: &[u8]) -> [u8; REPORT_DATA_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA512);
    ctx.update(DOMAIN);
    ctx.update(encoded);
    let d = ctx.finish();
    let mut out = [0u8; REPORT_DATA_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of `docs/transcript.md`.
    fn example() -> Transcript {
        let mut nonce = [0u8; NONCE_LEN];
        for (i, b) in nonce.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = 0xa0 + i as u8;
        }
        Transcript {
            platform: PlatformKind::Snp,
            nonce,
            identity: DeviceIdentity {
                vendor_id: 0x1af4,
                device_id: 0x1042,
                subsystem_vendor_id: 0x1af4,
                subsystem_id: 0x0002,
                instance_id: InstanceId::Short(id),
            },
            device_features: 0x0000_0001_0800_0264,
            driver_features: 0x0000_0001_0800_0244,
            pool_base: 0x80_0000_0000,
            pool_size: 0x100_0000,
            queues: vec![QueueRings {
                index: 0,
                desc: 0x80_0000_0000,
                avail: 0x80_0000_1000,
                used: 0x80_0000_2000,
                size: 256,
            }],
        }
    }

    /// The example's encoding, as printed in `docs/transcript.md`.
    const EXAMPLE_ENCODING: &str = concat!(
        "0101",
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        "f41a4210f41a0200",
        "10",
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
        "6402000801000000",
        "4402000801000000",
        "0000000080000000",
        "0000000100000000",
        "0100",
        "0000",
        "0000000080000000",
        "0010000080000000",
        "0020000080000000",
        "0001",
    );

    /// The example's REPORT_DATA, as printed in `docs/transcript.md`.
    const EXAMPLE_REPORT_DATA: &str = concat!(
        "487af0dd03c4bca3cea90cfff7edcca741c3376cd742d43329375a71557f77ec",
        "25ce9cc02a55447995cd3749a7be688ea66ce1ee2a5d19b6daf79ff552e03f5b",
    );

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn worked_example_encodes_as_documented() {
        let enc = example().encode().unwrap();
        assert_eq!(hex(&enc), EXAMPLE_ENCODING);
        assert_eq!(
            enc.len(),
            1 + 1 + 32 + 8 + 1 + 16 + 32 + 2 + QUEUE_ENTRY_LEN
        );
    }

    #[test]
    fn worked_example_report_data_is_the_golden_vector() {
        assert_eq!(hex(&example().report_data().unwrap()), EXAMPLE_REPORT_DATA);
    }

    #[test]
    fn report_data_is_sha512_of_domain_then_encoding() {
        let enc = example().encode().unwrap();
        let mut cat = DOMAIN.to_vec();
        cat.extend_from_slice(&enc);
        let d = digest::digest(&digest::SHA512, &cat);
        assert_eq!(&example().report_data().unwrap()[..], d.as_ref());
    }

    #[test]
    fn encoding_is_deterministic_and_round_trips() {
        let t = example();
        assert_eq!(t.encode().unwrap(), t.clone().encode().unwrap());
        assert_eq!(Transcript::decode(&t.encode().unwrap()).unwrap(), t);
        let mut long = t.clone();
        long.identity.instance_id = InstanceId::Long([7; 32]);
        long.queues.push(QueueRings {
            index: 3,
            desc: 1,
            avail: 2,
            used: 3,
            size: 4,
        });
        assert_eq!(Transcript::decode(&long.encode().unwrap()).unwrap(), long);
    }

    #[test]
    fn every_field_change_changes_report_data() {
        let base = example();
        let rd = base.report_data().unwrap();
        let mut variants: Vec<Transcript> = Vec::new();
        let mut push = |f: &dyn Fn(&mut Transcript)| {
            let mut t = base.clone();
            f(&mut t);
            variants.push(t);
        };
        push(&|t| t.platform = PlatformKind::Tdx);
        push(&|t| t.platform = PlatformKind::Emulated);
        push(&|t| t.nonce[31] ^= 1);
        push(&|t| t.nonce[0] ^= 0x80);
        push(&|t| t.identity.vendor_id ^= 1);
        push(&|t| t.identity.device_id ^= 1);
        push(&|t| t.identity.subsystem_vendor_id ^= 1);
        push(&|t| t.identity.subsystem_id ^= 1);
        push(&|t| t.identity.instance_id = InstanceId::Short([0xa0; 16]));
        push(&|t| {
            let mut l = [0u8; 32];
            l[..16].copy_from_slice(t.identity.instance_id.as_bytes());
            t.identity.instance_id = InstanceId::Long(l);
        });
        push(&|t| t.device_features ^= 1 << 27);
        push(&|t| t.driver_features ^= 1 << 27);
        push(&|t| t.driver_features ^= 1 << 63);
        push(&|t| t.pool_base += 0x1000);
        push(&|t| t.pool_size *= 2);
        push(&|t| t.queues[0].index = 1);
        push(&|t| t.queues[0].desc ^= 0x10);
        push(&|t| t.queues[0].avail ^= 0x10);
        push(&|t| t.queues[0].used ^= 0x10);
        push(&|t| t.queues[0].size = 128);
        push(&|t| t.queues.clear());
        push(&|t| {
            t.queues.push(QueueRings {
                index: 1,
                desc: 0,
                avail: 0,
                used: 0,
                size: 0,
            })
        });
        let mut seen = std::collections::HashSet::new();
        seen.insert(rd);
        for (i, v) in variants.iter().enumerate() {
            let r = v.report_data().unwrap();
            assert!(seen.insert(r), "variant {i} collides: {v:?}");
        }
    }

    #[test]
    fn too_many_or_unordered_queues_are_refused() {
        let mut t = example();
        t.queues = (0..=MAX_QUEUES as u16)
            .map(|index| QueueRings {
                index,
                desc: 0,
                avail: 0,
                used: 0,
                size: 0,
            })
            .collect();
        assert_eq!(
            t.encode(),
            Err(TranscriptError::TooManyQueues(MAX_QUEUES + 1))
        );
        t.queues.truncate(MAX_QUEUES);
        assert_eq!(t.encode().unwrap().len(), MAX_ENCODED_LEN - 16);
        t.queues.swap(0, 1);
        assert!(matches!(
            t.encode(),
            Err(TranscriptError::QueueOrder { .. })
        ));
        t.queues[0].index = t.queues[1].index;
        assert!(matches!(
            t.encode(),
            Err(TranscriptError::QueueOrder { .. })
        ));
    }

    #[test]
    fn decode_refuses_truncation_trailing_bytes_and_unknown_values() {
        let enc = example().encode().unwrap();
        for n in 0..enc.len() {
            assert!(Transcript::decode(&enc[..n]).is_err(), "prefix {n}");
        }
        let mut long = enc.clone();
        long.push(0);
        assert!(Transcript::decode(&long).is_err());
        let mut v = enc.clone();
        v[0] = 2;
        assert_eq!(Transcript::decode(&v), Err(TranscriptError::Version(2)));
        let mut p = enc.clone();
        p[1] = 9;
        assert_eq!(Transcript::decode(&p), Err(TranscriptError::Platform(9)));
        let mut l = enc;
        l[42] = 17;
        assert_eq!(
            Transcript::decode(&l),
            Err(TranscriptError::InstanceIdLength(17))
        );
    }

    #[test]
    fn platform_names_round_trip() {
        for k in PlatformKind::ALL {
            assert_eq!(PlatformKind::from_name(k.as_str()), Some(k));
            assert_eq!(PlatformKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(PlatformKind::from_u8(0), None);
        assert_eq!(PlatformKind::from_name("SNP"), None);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = Transcript::decode(&bytes);
        }
    }
}
