//! Full mode's DMA batch: every descriptor of the chains the device checked, packed into a
//! compact binary form ([`PackedChains`]) that one record carries as base64
//! (`unmapped.dma_batch`), and its expansion back into one event per DMA
//! ([`expand_dma_record`]).
//!
//! Why binary: written as JSON objects, a chain of three descriptors is ~180 bytes that the
//! writer formats and hashes, about a microsecond of the writer's time per chain, which at
//! line rate is half a CPU (BENCHMARKS.md). Packed, the same chain is ~20 bytes (28 in
//! base64), appended by the device as it checks the chain and hashed once, as part of its
//! line.
//!
//! Two packed forms, named by the record's `format` (documented field by field in
//! `docs/audit-schema.md`, "DMA batch"), one entry per chain in the order the device checked
//! them:
//!
//! ```text
//! chains-le/1 (little-endian, fixed width; earlier logs):
//!   chain:      queue u16 | head u16 | n u32 | n descriptors
//!   descriptor: addr u64 | len u32 | flags u8   (flags bit 0: device-writable; bits 1-7 zero)
//! chains-varint/1 (LEB128, shortest form only; what the device writes):
//!   chain:      queue | head | n | n descriptors
//!   descriptor: zigzag(addr - previous addr of the chain, 0 for the first) | len << 1 | writable
//! ```
//!
//! Parsing is strict: every chain whole, no byte after the last one, the reserved flag bits
//! zero, every variable-length integer in its shortest form and within its field, at least
//! one chain. A [`PackedChains`] is valid by construction, so expanding one cannot fail.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::Error as _;
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use super::event::{Envelope, Event};
use super::ocsf::Record;

mod expand;
mod forms;

pub use expand::{expand_chains, expand_dma_record, expand_packed, DmaEvent};
use forms::{put_varint, walk, zigzag, Chains, VarintWriter};

/// The packed forms `unmapped.dma_batch.format` names. Every reader reads both; the device
/// packs [`BatchFormat::Varint`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BatchFormat {
    /// `chains-le/1`: fixed-width little-endian fields, 13 bytes a descriptor. Written by
    /// earlier versions of the device; the default of an empty [`PackedChains`] and of
    /// [`PackedChains::from_bytes`].
    #[default]
    FixedLe,
    /// `chains-varint/1`: the same fields as LEB128 variable-length integers, the address
    /// of each descriptor after a chain's first as its distance from the one before, and
    /// the direction folded into the length: about 20 bytes a chain of three instead of 47.
    Varint,
}

impl BatchFormat {
    /// Every format, oldest first.
    pub const ALL: [BatchFormat; 2] = [BatchFormat::FixedLe, BatchFormat::Varint];

    /// The `format` string of a record.
    pub fn name(self) -> &'static str {
        match self {
            Self::FixedLe => "chains-le/1",
            Self::Varint => "chains-varint/1",
        }
    }

    /// The format a record's `format` string names, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// `chains-le/1`: bytes of a chain's header: queue, head, descriptor count.
pub const CHAIN_HEADER_BYTES: usize = 8;
/// `chains-le/1`: bytes of one packed descriptor: address, length, flags.
pub const DESCRIPTOR_BYTES: usize = 13;
/// `chains-le/1`: flag bit of a device-writable descriptor (device to driver). In
/// `chains-varint/1` the same bit is the low bit of a descriptor's second field.
pub const FLAG_WRITABLE: u8 = 1;
/// `chains-varint/1`: the largest length-and-direction field (`len << 1 | writable`).
const MAX_LEN_FLAGS: u64 = (u32::MAX as u64) << 1 | 1;

/// What is wrong with a variable-length integer of `chains-varint/1`.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum VarintDefect {
    /// The bytes end before its last byte (one with the high bit clear).
    #[error("the data ends inside it")]
    Truncated,
    /// It has a second spelling that is shorter: its last byte is zero.
    #[error("it is not in its shortest form")]
    Overlong,
    /// Its value is larger than the field holds.
    #[error("its value is larger than the field holds")]
    TooLarge,
}

/// Errors of the packed form.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BatchError {
    /// A batch without a chain: the writer never records one.
    #[error("a DMA batch holds no chain")]
    Empty,
    /// The bytes end inside a chain (`chains-le/1`).
    #[error("chain {chain} at byte {offset}: {needed} bytes needed, {left} left")]
    Truncated {
        /// Index of the chain in the batch.
        chain: u64,
        /// Where the chain starts.
        offset: usize,
        /// Bytes the chain needs (its header, or its header and descriptors).
        needed: u64,
        /// Bytes left from `offset`.
        left: usize,
    },
    /// A field of a chain is not a valid variable-length integer (`chains-varint/1`).
    #[error("chain {chain}, {field} at byte {offset}: {defect}")]
    Varint {
        /// Index of the chain in the batch.
        chain: u64,
        /// Where the field starts.
        offset: usize,
        /// Which field: `queue`, `head`, `count`, `addr` or `len`.
        field: &'static str,
        /// What is wrong with it.
        defect: VarintDefect,
    },
    /// A descriptor's reserved flag bits are set (`chains-le/1`).
    #[error("chain {chain}, descriptor {index}: reserved flag bits set ({flags:#04x})")]
    ReservedFlags {
        /// Index of the chain in the batch.
        chain: u64,
        /// Index of the descriptor in its chain.
        index: u32,
        /// The flags byte.
        flags: u8,
    },
    /// A chain of more descriptors than the count field holds.
    #[error("a chain of more than {} descriptors cannot be packed", u32::MAX)]
    ChainTooLong,
    /// The record's `format` names no known packed form.
    #[error("unknown DMA batch format {0:?} (known: chains-le/1, chains-varint/1)")]
    UnknownFormat(String),
    /// `data_b64` is not standard padded base64.
    #[error("DMA batch data is not standard padded base64")]
    Base64,
    /// The record's `chains` disagrees with the chains in its data.
    #[error("DMA batch says {stated} chains, its data holds {found}")]
    ChainCount {
        /// The `chains` field.
        stated: u64,
        /// Chains in `data_b64`.
        found: u64,
    },
}

/// Chains packed in one of the binary forms above, with their totals: valid by construction
/// (built with [`push_chain`](Self::push_chain), or checked by
/// [`from_bytes_as`](Self::from_bytes_as)). An empty one is only a builder's start; a record
/// never holds one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedChains {
    format: BatchFormat,
    data: Vec<u8>,
    chains: u64,
    descriptors: u64,
    bytes: u64,
}

/// One chain of a [`PackedChains`], borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedChain<'a> {
    /// Queue index.
    pub queue: u16,
    /// The chain's head descriptor index.
    pub head: u16,
    /// Descriptors in the chain.
    count: u32,
    /// Its packed descriptors (already checked).
    descs: &'a [u8],
    format: BatchFormat,
    /// Bytes of the whole chain, header included.
    size: usize,
}

/// One descriptor of a packed chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedDescriptor {
    /// Bus address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (device to driver); `false`: device-readable.
    pub writable: bool,
}

impl PackedChains {
    /// An empty batch in `format`, to pack chains into.
    pub fn new(format: BatchFormat) -> Self {
        Self {
            format,
            ..Self::default()
        }
    }

    /// An empty batch in `format`, with room for `bytes` of packed data.
    pub fn with_capacity(format: BatchFormat, bytes: usize) -> Self {
        Self {
            format,
            data: Vec::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// The packed form.
    pub fn format(&self) -> BatchFormat {
        self.format
    }

    /// Packs the chain at `head` on `queue`: every descriptor `(addr, len, writable)` in
    /// chain order. The device's per-chain hot path in full mode: no allocation beyond the
    /// batch's own growth. A chain of more than `u32::MAX` descriptors is refused and leaves
    /// the batch as it was.
    #[inline]
    pub fn push_chain<I>(&mut self, queue: u16, head: u16, descriptors: I) -> Result<(), BatchError>
    where
        I: IntoIterator<Item = (u64, u32, bool)>,
    {
        let descriptors = descriptors.into_iter();
        let start = self.data.len();
        // Where the count goes (`chains-le/1`; `push_varint` puts its own in place).
        let (n, bytes, count_at) = match self.format {
            BatchFormat::FixedLe => self.push_fixed(queue, head, descriptors),
            BatchFormat::Varint => self.push_varint(queue, head, descriptors),
        };
        let Ok(count) = u32::try_from(n) else {
            self.data.truncate(start);
            return Err(BatchError::ChainTooLong);
        };
        match self.format {
            BatchFormat::FixedLe => {
                self.data[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
            }
            // Put in place by `push_varint`.
            BatchFormat::Varint => {}
        }
        self.chains += 1;
        self.descriptors += n;
        self.bytes += bytes;
        Ok(())
    }

    /// `chains-le/1`: the header with a zero count (set after), then the descriptors:
    /// (descriptors, bytes, where the count goes).
    #[inline]
    fn push_fixed<I>(&mut self, queue: u16, head: u16, descriptors: I) -> (u64, u64, usize)
    where
        I: Iterator<Item = (u64, u32, bool)>,
    {
        self.data.reserve(
            CHAIN_HEADER_BYTES + descriptors.size_hint().0.saturating_mul(DESCRIPTOR_BYTES),
        );
        let count_at = self.data.len() + 4;
        let mut header = [0u8; CHAIN_HEADER_BYTES];
        header[0..2].copy_from_slice(&queue.to_le_bytes());
        header[2..4].copy_from_slice(&head.to_le_bytes());
        self.data.extend_from_slice(&header);
        let (mut n, mut bytes) = (0u64, 0u64);
        for (addr, len, writable) in descriptors {
            let mut d = [0u8; DESCRIPTOR_BYTES];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12] = if writable { FLAG_WRITABLE } else { 0 };
            self.data.extend_from_slice(&d);
            n += 1;
            bytes += u64::from(len);
        }
        (n, bytes, count_at)
    }

    /// `chains-varint/1`: queue and head, then the descriptors (the count is put between
    /// them after): (descriptors, bytes, where the count goes).
    #[inline]
    fn push_varint<I>(&mut self, queue: u16, head: u16, descriptors: I) -> (u64, u64, usize)
    where
        I: Iterator<Item = (u64, u32, bool)>,
    {
        // Room for the header and, typically, each descriptor's ~5 bytes.
        let (lo, hi) = descriptors.size_hint();
        self.data.reserve(8 + lo.saturating_mul(8));
        let mut w = VarintWriter::new(&mut self.data);
        w.put(u64::from(queue));
        w.put(u64::from(head));
        // The count, written first when the descriptors say how many they are (the device's
        // do), and put in place after them otherwise or if they said wrong.
        let guess = (hi == Some(lo)).then_some(lo as u64);
        let count_at = w.position();
        if let Some(g) = guess {
            w.put(g);
        }
        let count_end = w.position();
        let (mut n, mut bytes, mut prev) = (0u64, 0u64, 0u64);
        for (addr, len, writable) in descriptors {
            w.put(zigzag(addr.wrapping_sub(prev) as i64));
            w.put(u64::from(len) << 1 | u64::from(writable));
            prev = addr;
            n += 1;
            bytes += u64::from(len);
        }
        w.finish();
        if guess != Some(n) {
            let mut c = Vec::with_capacity(10);
            put_varint(&mut c, n);
            self.data.splice(count_at..count_end, c);
        }
        (n, bytes, count_at)
    }

    /// Appends the chains of `other` after these (repacked if `other` is in another form).
    pub fn append(&mut self, other: &PackedChains) {
        if other.format == self.format {
            self.data.extend_from_slice(&other.data);
            self.chains += other.chains;
            self.descriptors += other.descriptors;
            self.bytes += other.bytes;
            return;
        }
        for c in other.iter() {
            let descs = c.descriptors().map(|d| (d.addr, d.len, d.writable));
            // A chain that was packed once has a count that fits: this cannot fail.
            let _ = self.push_chain(c.queue, c.head, descs);
        }
    }

    /// Removes and returns the longest run of whole chains from the front whose packed data
    /// fits in `max_bytes`, and at least one chain (a chain is never split, so one longer
    /// chain comes out alone). Takes everything when it all fits.
    pub fn split_front(&mut self, max_bytes: usize) -> PackedChains {
        if self.data.len() <= max_bytes {
            return std::mem::replace(self, PackedChains::new(self.format));
        }
        let mut front = PackedChains::new(self.format);
        let mut end = 0;
        for c in self.iter() {
            if front.chains != 0 && end + c.size > max_bytes {
                break;
            }
            end += c.size;
            front.chains += 1;
            front.descriptors += c.len() as u64;
            front.bytes += c.descriptors().map(|d| u64::from(d.len)).sum::<u64>();
        }
        let rest = self.data.split_off(end);
        front.data = std::mem::replace(&mut self.data, rest);
        self.chains -= front.chains;
        self.descriptors -= front.descriptors;
        self.bytes -= front.bytes;
        front
    }

    /// Checks packed bytes in `chains-le/1` (as read from a record) and takes them.
    pub fn from_bytes(data: Vec<u8>) -> Result<Self, BatchError> {
        Self::from_bytes_as(BatchFormat::FixedLe, data)
    }

    /// Checks packed bytes in `format` (as read from a record) and takes them.
    pub fn from_bytes_as(format: BatchFormat, data: Vec<u8>) -> Result<Self, BatchError> {
        let (chains, descriptors, bytes) = check(format, &data)?;
        Ok(Self {
            format,
            data,
            chains,
            descriptors,
            bytes,
        })
    }

    /// The packed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// Chains in the batch.
    pub fn chains(&self) -> u64 {
        self.chains
    }

    /// Descriptors of every chain.
    pub fn descriptors(&self) -> u64 {
        self.descriptors
    }

    /// Bytes of every descriptor.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether no chain is packed yet.
    pub fn is_empty(&self) -> bool {
        self.chains == 0
    }

    /// Size of the packed data.
    pub fn packed_len(&self) -> usize {
        self.data.len()
    }

    /// Bytes of packed data the buffer holds without growing.
    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }

    /// Forgets every chain, keeping the buffer's room (to be packed into again).
    pub fn clear(&mut self) {
        self.data.clear();
        self.chains = 0;
        self.descriptors = 0;
        self.bytes = 0;
    }

    /// The chains, in the order the device checked them.
    pub fn iter(&self) -> impl Iterator<Item = PackedChain<'_>> {
        Chains {
            format: self.format,
            data: &self.data,
            at: 0,
        }
    }
}

/// Walks packed bytes: (chains, descriptors, bytes), or the first defect.
fn check(format: BatchFormat, data: &[u8]) -> Result<(u64, u64, u64), BatchError> {
    let (mut at, mut chains, mut descriptors, mut bytes) = (0usize, 0u64, 0u64, 0u64);
    while at < data.len() {
        let w = walk(format, data, at, chains)?;
        descriptors += u64::from(w.count);
        bytes += w.bytes;
        chains += 1;
        at = w.descs.1;
    }
    if chains == 0 {
        return Err(BatchError::Empty);
    }
    Ok((chains, descriptors, bytes))
}

/// As the record carries it: `{"format", "chains", "data_b64"}`.
impl Serialize for PackedChains {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("PackedChains", 3)?;
        st.serialize_field("format", self.format.name())?;
        st.serialize_field("chains", &self.chains)?;
        st.serialize_field("data_b64", &B64.encode(&self.data))?;
        st.end()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: String,
    chains: u64,
    data_b64: String,
}

/// Strictly: the known format, canonical base64, whole chains, the stated chain count.
impl<'de> Deserialize<'de> for PackedChains {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        PackedChains::from_wire(w).map_err(D::Error::custom)
    }
}

impl PackedChains {
    fn from_wire(w: Wire) -> Result<Self, BatchError> {
        let Some(format) = BatchFormat::from_name(&w.format) else {
            return Err(BatchError::UnknownFormat(w.format));
        };
        let data = B64.decode(&w.data_b64).map_err(|_| BatchError::Base64)?;
        let p = Self::from_bytes_as(format, data)?;
        if p.chains != w.chains {
            return Err(BatchError::ChainCount {
                stated: w.chains,
                found: p.chains,
            });
        }
        Ok(p)
    }
}

/// The line of the DMA batch record of `batch` in `env`: byte for byte
/// `Record::build(env, Event::DmaBatch(batch)).to_line()`, but the base64 of the packed data
/// is put in place rather than passed through the JSON serializer, which would scan it
/// byte by byte for characters to escape (base64 has none): that scan was the largest single
/// cost of writing a batch, a fifth of the writer's time.
pub fn batch_line(env: &Envelope, batch: &PackedChains) -> String {
    // The record of a batch with the same totals and no data: `"data_b64":""` appears once,
    // as the key of that field (inside a JSON string every quote is escaped, so the sequence
    // cannot occur in another value).
    let shell = PackedChains {
        data: Vec::new(),
        ..*batch
    };
    let line = Record::build(env, Event::DmaBatch(shell)).to_line();
    const EMPTY: &str = r#""data_b64":"""#;
    let Some(at) = line.find(EMPTY) else {
        return Record::build(env, Event::DmaBatch(batch.clone())).to_line();
    };
    let at = at + EMPTY.len() - 1;
    let mut out = String::with_capacity(line.len() + batch.data.len().div_ceil(3) * 4);
    out.push_str(&line[..at]);
    B64.encode_string(&batch.data, &mut out);
    out.push_str(&line[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    type Chain = (u16, u16, Vec<(u64, u32, bool)>);

    fn sample() -> Vec<Chain> {
        vec![
            (
                0,
                3,
                vec![
                    (0x80_0010_0000, 16, false),
                    (0x80_0010_0800, 4096, true),
                    (0x80_0010_0010, 1, true),
                ],
            ),
            (1, 65535, vec![(u64::MAX, u32::MAX, false)]),
            (7, 0, vec![]),
        ]
    }

    fn pack(chains: &[Chain]) -> PackedChains {
        let mut p = PackedChains::default();
        for (q, h, d) in chains {
            p.push_chain(*q, *h, d.iter().copied()).unwrap();
        }
        p
    }

    fn unpack(p: &PackedChains) -> Vec<Chain> {
        p.iter()
            .map(|c| {
                let d = c
                    .descriptors()
                    .map(|d| (d.addr, d.len, d.writable))
                    .collect();
                (c.queue, c.head, d)
            })
            .collect()
    }

    #[test]
    fn chains_pack_to_the_documented_bytes() {
        let mut p = PackedChains::default();
        p.push_chain(2, 0x0102, [(0x1122_3344_5566_7788, 0x0a0b_0c0d, true)])
            .unwrap();
        assert_eq!(
            p.as_bytes(),
            [
                2, 0, 2, 1, 1, 0, 0, 0, // queue 2, head 0x102, one descriptor
                0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // addr
                0x0d, 0x0c, 0x0b, 0x0a, // len
                1,    // writable
            ]
        );
        assert_eq!(
            (p.chains(), p.descriptors(), p.bytes()),
            (1, 1, 0x0a0b_0c0d)
        );
    }

    #[test]
    fn packed_chains_read_back_exactly_with_their_totals() {
        let p = pack(&sample());
        assert_eq!(unpack(&p), sample());
        assert_eq!(p.chains(), 3);
        assert_eq!(p.descriptors(), 4);
        assert_eq!(p.bytes(), 16 + 4096 + 1 + u64::from(u32::MAX));
        let q = PackedChains::from_bytes(p.as_bytes().to_vec()).unwrap();
        assert_eq!(q, p);
    }

    #[test]
    fn appended_batches_are_one_batch_in_order() {
        let s = sample();
        let (mut a, b) = (pack(&s[..1]), pack(&s[1..]));
        a.append(&b);
        assert_eq!(a, pack(&s));
    }

    #[test]
    fn split_front_takes_whole_chains_up_to_the_limit() {
        let chains: Vec<Chain> = (0..10u16)
            .map(|i| (0, i, vec![(u64::from(i) << 12, 512, i % 2 == 1); 3]))
            .collect();
        let mut p = pack(&chains);
        let per_chain = CHAIN_HEADER_BYTES + 3 * DESCRIPTOR_BYTES;
        let front = p.split_front(4 * per_chain + per_chain - 1);
        assert_eq!(unpack(&front), chains[..4]);
        assert_eq!(unpack(&p), chains[4..]);
        assert_eq!(front.descriptors() + p.descriptors(), 30);
        assert_eq!(front.bytes() + p.bytes(), 30 * 512);
        // A limit smaller than one chain still takes one.
        let one = p.split_front(1);
        assert_eq!(unpack(&one), chains[4..5]);
        // Everything when it fits.
        let rest = p.split_front(usize::MAX);
        assert_eq!(unpack(&rest), chains[5..]);
        assert!(p.is_empty());
        assert_eq!(p.packed_len(), 0);
    }

    #[test]
    fn malformed_bytes_are_refused_with_what_is_wrong() {
        let good = pack(&sample()).as_bytes().to_vec();
        assert_eq!(PackedChains::from_bytes(Vec::new()), Err(BatchError::Empty));
        // Cut inside the first chain's descriptors, and inside the second's header.
        assert!(matches!(
            PackedChains::from_bytes(good[..20].to_vec()),
            Err(BatchError::Truncated {
                chain: 0,
                offset: 0,
                needed: 47,
                left: 20
            })
        ));
        assert!(matches!(
            PackedChains::from_bytes(good[..50].to_vec()),
            Err(BatchError::Truncated {
                chain: 1,
                offset: 47,
                needed: 8,
                left: 3
            })
        ));
        // A count far past the end allocates nothing and is refused.
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            PackedChains::from_bytes(huge),
            Err(BatchError::Truncated { chain: 0, .. })
        ));
        let mut flags = good.clone();
        flags[CHAIN_HEADER_BYTES + DESCRIPTOR_BYTES - 1] = 0x81;
        assert_eq!(
            PackedChains::from_bytes(flags),
            Err(BatchError::ReservedFlags {
                chain: 0,
                index: 0,
                flags: 0x81
            })
        );
        let mut trailing = good;
        trailing.push(0);
        assert!(matches!(
            PackedChains::from_bytes(trailing),
            Err(BatchError::Truncated { chain: 3, .. })
        ));
    }

    fn pack_as(format: BatchFormat, chains: &[Chain]) -> PackedChains {
        let mut p = PackedChains::new(format);
        for (q, h, d) in chains {
            p.push_chain(*q, *h, d.iter().copied()).unwrap();
        }
        p
    }

    #[test]
    fn varint_chains_pack_to_the_documented_bytes() {
        let mut p = PackedChains::new(BatchFormat::Varint);
        p.push_chain(
            2,
            300,
            [
                (0x80_0010_0000, 16, false),
                (0x80_0010_0800, 4096, true),
                (0x80_0010_0010, 1, true),
            ],
        )
        .unwrap();
        assert_eq!(
            p.as_bytes(),
            [
                2, 0xac, 0x02, 3, // queue 2, head 300, three descriptors
                0x80, 0x80, 0x80, 0x81, 0x80, 0x20, // zigzag(0x80_0010_0000 - 0)
                32,   // 16 << 1, readable
                0x80, 0x20, // zigzag(+0x800)
                0x81, 0x40, // 4096 << 1 | 1
                0xdf, 0x1f, // zigzag(-0x7f0)
                3,    // 1 << 1 | 1
            ]
        );
        assert_eq!((p.chains(), p.descriptors(), p.bytes()), (1, 3, 4113));
        // The same chain in the fixed form takes 47 bytes.
        assert_eq!(pack(&[(2, 300, unpack(&p)[0].2.clone())]).packed_len(), 47);
    }

    #[test]
    fn varint_chains_read_back_exactly_in_every_format() {
        let mut chains = sample();
        // Long chains (a count of two bytes), addresses that wrap, the extremes.
        chains.push((
            u16::MAX,
            0,
            (0..200u64)
                .map(|i| {
                    (
                        i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        i as u32 * 77,
                        i % 3 == 0,
                    )
                })
                .collect(),
        ));
        chains.push((
            0,
            1,
            vec![(0, 0, false), (u64::MAX, u32::MAX, true), (0, 0, true)],
        ));
        for format in BatchFormat::ALL {
            let p = pack_as(format, &chains);
            assert_eq!(p.format(), format);
            assert_eq!(unpack(&p), chains, "{format:?}");
            let q = PackedChains::from_bytes_as(format, p.as_bytes().to_vec()).unwrap();
            assert_eq!(q, p);
            let json = serde_json::to_string(&p).unwrap();
            assert!(json.contains(format.name()));
            assert_eq!(serde_json::from_str::<PackedChains>(&json).unwrap(), p);
            // Split and appended back, in and across formats.
            let mut rest = p.clone();
            let front = rest.split_front(60);
            assert!(front.chains() >= 1);
            let mut again = front.clone();
            again.append(&rest);
            assert_eq!(again, p);
            for other in BatchFormat::ALL {
                let mut x = PackedChains::new(other);
                x.append(&p);
                assert_eq!(unpack(&x), chains);
                assert_eq!(
                    (x.chains(), x.descriptors(), x.bytes()),
                    (p.chains(), p.descriptors(), p.bytes())
                );
            }
        }
        assert!(
            pack_as(BatchFormat::Varint, &chains).packed_len()
                < pack_as(BatchFormat::FixedLe, &chains).packed_len()
        );
    }

    /// Descriptors that claim to be `claim` in number, whatever they are.
    struct Claiming<I>(I, usize);

    impl<I: Iterator<Item = (u64, u32, bool)>> Iterator for Claiming<I> {
        type Item = (u64, u32, bool);
        fn next(&mut self) -> Option<Self::Item> {
            self.0.next()
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (self.1, Some(self.1))
        }
    }

    #[test]
    fn a_varint_chain_packs_the_same_whatever_its_descriptors_say_of_their_number() {
        let descs: Vec<(u64, u32, bool)> = (0..130u64)
            .map(|i| (0x80_0000_0000 + i * 0x800, 512, i % 2 == 0))
            .collect();
        let mut exact = PackedChains::new(BatchFormat::Varint);
        exact.push_chain(1, 2, descs.iter().copied()).unwrap();
        for n in [0, 3, 130] {
            let mut unhinted = PackedChains::new(BatchFormat::Varint);
            let some = descs[..n].iter().copied();
            unhinted.push_chain(1, 2, some.filter(|_| true)).unwrap();
            for claim in [0, 1, 129, 130, 200] {
                let mut lying = PackedChains::new(BatchFormat::Varint);
                lying
                    .push_chain(1, 2, Claiming(descs[..n].iter().copied(), claim))
                    .unwrap();
                assert_eq!(lying, unhinted, "{n} descriptors said to be {claim}");
            }
            if n == 130 {
                assert_eq!(unhinted, exact);
            }
        }
    }

    #[test]
    fn malformed_varint_bytes_are_refused_with_what_is_wrong() {
        let v = |b: &[u8]| PackedChains::from_bytes_as(BatchFormat::Varint, b.to_vec());
        let defect = |b: &[u8]| match v(b) {
            Err(BatchError::Varint { field, defect, .. }) => (field, defect),
            other => panic!("{other:?}"),
        };
        assert_eq!(v(&[]), Err(BatchError::Empty));
        // One chain: queue 1, head 2, one descriptor at 0x10 (zigzag 0x20), 4 bytes, readable.
        let good = [1, 2, 1, 0x20, 8];
        assert_eq!(v(&good).unwrap().descriptors(), 1);
        // Truncated: inside the header, inside a varint, a count past the end.
        assert_eq!(defect(&good[..2]), ("count", VarintDefect::Truncated));
        assert_eq!(defect(&[1, 2, 1, 0x80]), ("addr", VarintDefect::Truncated));
        assert_eq!(defect(&good[..4]), ("len", VarintDefect::Truncated));
        assert_eq!(
            defect(&[1, 2, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x20, 8]),
            ("addr", VarintDefect::Truncated)
        );
        assert_eq!(
            defect(&[1, 2, 2, 0x20, 8]),
            ("addr", VarintDefect::Truncated)
        );
        // Overlong: a second, longer spelling of the same value.
        assert_eq!(
            defect(&[0x81, 0x00, 2, 1, 0x20, 8]),
            ("queue", VarintDefect::Overlong)
        );
        assert_eq!(
            defect(&[1, 2, 1, 0xa0, 0x00, 8]),
            ("addr", VarintDefect::Overlong)
        );
        assert_eq!(
            defect(&[1, 2, 1, 0x20, 0x88, 0x80, 0x00]),
            ("len", VarintDefect::Overlong)
        );
        // Too large for the field: queue and head u16, count u32, len 33 bits, addr u64.
        assert_eq!(
            defect(&[0x80, 0x80, 0x04, 2, 0]),
            ("queue", VarintDefect::TooLarge)
        );
        assert_eq!(
            defect(&[1, 0x80, 0x80, 0x04, 0]),
            ("head", VarintDefect::TooLarge)
        );
        assert_eq!(
            defect(&[1, 2, 0x80, 0x80, 0x80, 0x80, 0x10]),
            ("count", VarintDefect::TooLarge)
        );
        assert_eq!(
            defect(&[1, 2, 1, 0x20, 0x80, 0x80, 0x80, 0x80, 0x20]),
            ("len", VarintDefect::TooLarge)
        );
        let mut eleven = vec![1, 2, 1];
        eleven.extend([0xff; 10]);
        eleven.extend([1, 8]);
        assert_eq!(defect(&eleven), ("addr", VarintDefect::TooLarge));
        let mut bit64 = vec![1, 2, 1];
        bit64.extend([0xff; 9]);
        bit64.extend([2, 8]);
        assert_eq!(defect(&bit64), ("addr", VarintDefect::TooLarge));
        let mut max = vec![1, 2, 1];
        max.extend([0xff; 9]);
        max.extend([1, 8]);
        assert!(v(&max).is_ok());
        // Trailing bytes: the start of a chain that is not there.
        assert_eq!(
            defect(&[&good[..], &[0]].concat()),
            ("head", VarintDefect::Truncated)
        );
        // A stated chain count that disagrees with the data.
        let p = v(&good).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        let bad = json.replace("\"chains\":1", "\"chains\":2");
        let e = serde_json::from_str::<PackedChains>(&bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("says 2 chains, its data holds 1"), "{e}");
        // The same bytes under the other format's name are refused, not misread.
        let fixed = json.replace("chains-varint/1", "chains-le/1");
        assert!(serde_json::from_str::<PackedChains>(&fixed).is_err());
    }

    #[test]
    fn the_json_form_is_strict() {
        let p = pack(&sample());
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.starts_with(r#"{"format":"chains-le/1","chains":3,"data_b64":""#));
        assert_eq!(serde_json::from_str::<PackedChains>(&json).unwrap(), p);
        let err = |s: &str| {
            serde_json::from_str::<PackedChains>(s)
                .unwrap_err()
                .to_string()
        };
        let e = err(&json.replace("chains-le/1", "chains-le/2"));
        assert!(
            e.contains("unknown DMA batch format \"chains-le/2\""),
            "{e}"
        );
        assert!(BatchFormat::ALL
            .iter()
            .all(|f| BatchFormat::from_name(f.name()) == Some(*f)),);
        let e = err(&json.replace("\"chains\":3", "\"chains\":2"));
        assert!(e.contains("says 2 chains, its data holds 3"), "{e}");
        let e = err(&json.replace("\"data_b64\":\"", "\"data_b64\":\"*"));
        assert!(e.contains("base64"), "{e}");
        assert!(err(&json.replace("{", "{\"extra\":1,")).contains("unknown field"));
        // Non-canonical base64 (trailing bits set) is a second spelling: refused.
        let mut one = PackedChains::default();
        one.push_chain(0, 0, []).unwrap();
        let canonical = B64.encode(one.as_bytes());
        assert_eq!(canonical, "AAAAAAAAAAA=");
        let e = err(r#"{"format":"chains-le/1","chains":1,"data_b64":"AAAAAAAAAAB="}"#);
        assert!(e.contains("base64"), "{e}");
    }

    #[test]
    fn a_packed_batch_expands_to_one_event_per_descriptor_in_order() {
        let p = pack(&sample());
        let e = expand_packed(&p, 42, 1_700_000_000_000);
        assert_eq!(e.len(), 4);
        assert_eq!(
            e[1],
            DmaEvent {
                sequence: 42,
                time: 1_700_000_000_000,
                chain: 0,
                index: 1,
                queue: 0,
                head: 3,
                addr: 0x80_0010_0800,
                len: 4096,
                writable: true,
            }
        );
        assert_eq!((e[3].chain, e[3].index, e[3].head), (1, 0, 65535));
    }

    fn env(sequence: u64) -> crate::audit::Envelope {
        crate::audit::Envelope {
            sequence,
            time: 1_700_000_000_123,
            device: crate::audit::DeviceIdentity {
                uid: "dev0".into(),
                name: "virtio-blk swiotlb".into(),
            },
            pid: 4242,
            uid: Some(0),
            product_version: "0.1.0".into(),
            transcript: [0; 32],
            prev_leaf: [0xab; 32],
        }
    }

    #[test]
    fn a_batch_record_parses_back_and_expands_to_the_dmas_packed() {
        let chains = sample();
        let r = Record::build(&env(9), Event::DmaBatch(pack(&chains)));
        assert_eq!((r.class_uid, r.activity_id, r.type_uid), (1004, 99, 100499));
        assert_eq!(r.activity_name, "DMA Batch");
        let line = r.to_line();
        let p = Record::parse(line.as_bytes()).unwrap();
        assert_eq!(p, r);
        let dmas = expand_dma_record(&p).unwrap();
        let expected: Vec<DmaEvent> = chains
            .iter()
            .enumerate()
            .flat_map(|(c, (q, h, d))| {
                d.iter().enumerate().map(move |(i, x)| DmaEvent {
                    sequence: 9,
                    time: r.time,
                    chain: c as u64,
                    index: i as u32,
                    queue: *q,
                    head: *h,
                    addr: x.0,
                    len: x.1,
                    writable: x.2,
                })
            })
            .collect();
        assert_eq!(dmas, expected);
        // Any other record expands to nothing.
        let summary = Record::build(
            &env(1),
            Event::DmaSummary(crate::audit::DmaSummary {
                interval_start: 1,
                interval_end: 2,
                queues: vec![],
            }),
        );
        assert_eq!(expand_dma_record(&summary), None);
    }

    #[test]
    fn batch_line_is_the_record_line_byte_for_byte() {
        let mut big = PackedChains::default();
        for i in 0..700u16 {
            let at = 0x80_0010_0000 + u64::from(i) * 0x1800;
            big.push_chain(
                i % 3,
                i,
                [
                    (at, 16, false),
                    (at + 0x800, 4096, true),
                    (at + 16, 1, true),
                ],
            )
            .unwrap();
        }
        for (i, p) in [pack(&sample()), pack(&sample()[2..]), big]
            .into_iter()
            .enumerate()
        {
            let e = env(i as u64);
            let line = batch_line(&e, &p);
            assert_eq!(
                line,
                Record::build(&e, Event::DmaBatch(p.clone())).to_line()
            );
            assert_eq!(
                Record::parse(line.as_bytes()).unwrap().event(),
                Some(Event::DmaBatch(p))
            );
        }
    }

    #[test]
    fn a_batch_record_whose_totals_or_data_were_changed_does_not_parse() {
        let line = Record::build(&env(5), Event::DmaBatch(pack(&sample()))).to_line();
        let data = B64.encode(pack(&sample()).as_bytes());
        // The same chains with one length changed: well-formed, but the totals disagree.
        let mut other = sample();
        other[0].2[1].1 = 4095;
        let changed = B64.encode(pack(&other).as_bytes());
        for (from, to) in [
            ("\"count\":4", "\"count\":3"),
            ("\"size\":4294971408", "\"size\":4294971409"),
            ("4 DMAs in 3 chains", "4 DMAs in 2 chains"),
            (
                "\"activity_name\":\"DMA Batch\"",
                "\"activity_name\":\"DMA Chains\"",
            ),
            (data.as_str(), changed.as_str()),
            ("\"chains\":3", "\"chains\":4"),
        ] {
            assert!(line.contains(from), "{from}");
            let bad = line.replacen(from, to, 1);
            assert!(Record::parse(bad.as_bytes()).is_err(), "{to}");
        }
    }
}
