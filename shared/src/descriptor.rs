//! The split-ring descriptor as it lies in the pool (virtio 1.2, 2.7.5): its flags and its
//! 16-byte little-endian layout, defined once for the driver that writes descriptors and
//! the device that checks them.

/// Bytes of one split-ring descriptor.
pub const DESC_SIZE: u64 = Descriptor::SIZE as u64;

/// Descriptor flag: the chain continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors (VIRTIO_RING_F_INDIRECT_DESC).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// One split-ring descriptor (`struct virtq_desc`). POD, no padding: `#[repr(C)]` with
/// fields in falling size order, 16 bytes. It crosses the wire only through
/// [`Descriptor::to_bytes`] / [`Descriptor::from_bytes`], so no code reinterprets pool
/// memory as this struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Bus address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// `VIRTQ_DESC_F_*` flags.
    pub flags: u16,
    /// Next descriptor of the chain (when `flags` has [`VIRTQ_DESC_F_NEXT`]).
    pub next: u16,
}

const _: () = assert!(core::mem::size_of::<Descriptor>() == 16);

impl Descriptor {
    /// Bytes on the wire.
    pub const SIZE: usize = 16;

    /// The 16 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    /// The descriptor in 16 little-endian bytes. Every bit pattern is a descriptor; what it
    /// may point at is the reader's to check.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[0..8]);
        Self {
            addr: u64::from_le_bytes(addr),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_round_trips_through_its_little_endian_bytes() {
        let d = Descriptor {
            addr: 0x0102_0304_0506_0708,
            len: 0x1122_3344,
            flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            next: 0xabcd,
        };
        let b = d.to_bytes();
        assert_eq!(b[0], 0x08, "addr is little-endian at offset 0");
        assert_eq!(b[8], 0x44, "len is little-endian at offset 8");
        assert_eq!(&b[12..16], &[3, 0, 0xcd, 0xab], "flags at 12, next at 14");
        assert_eq!(Descriptor::from_bytes(&b), d);
    }
}
