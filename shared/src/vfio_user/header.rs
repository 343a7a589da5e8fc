//! The 16-byte message header, the command numbers and the header flag bits.

use core::fmt;

use super::error::CodecError;
use super::limits::{MAX_MESSAGE_SIZE, MAX_MSG_FDS};

/// Bytes of the header that starts every message.
pub const HEADER_SIZE: usize = 16;

/// Protocol major version we speak. A peer proposing another major is refused.
pub const PROTOCOL_MAJOR: u16 = 0;

/// Highest protocol minor version we speak. A server replies with the lower of this and the
/// client's proposal (QEMU proposes 0.0 and refuses a reply with a higher minor).
pub const PROTOCOL_MINOR: u16 = 1;

/// Mask of the message-type bits (0-3) in the header flags.
pub const FLAGS_TYPE_MASK: u32 = 0xf;
/// Message type of a command.
pub const TYPE_COMMAND: u32 = 0;
/// Message type of a reply.
pub const TYPE_REPLY: u32 = 1;
/// Flag bit 4: the sender of a command wants no reply.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// Flag bit 5: a reply reports an error; the header's `error` field holds the errno.
pub const FLAG_ERROR: u32 = 1 << 5;

/// A vfio-user command number (the spec's "Commands" table).
///
/// 14 (`VFIO_USER_DIRTY_PAGES`) was removed from the protocol and is not listed: it decodes
/// as unknown and is answered with `ENOTSUP`.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `VFIO_USER_VERSION`: version and capability negotiation (client to server).
    Version = 1,
    /// `VFIO_USER_DMA_MAP`: make client memory available for DMA.
    DmaMap = 2,
    /// `VFIO_USER_DMA_UNMAP`: withdraw a DMA mapping.
    DmaUnmap = 3,
    /// `VFIO_USER_DEVICE_GET_INFO`: flags and region/IRQ counts.
    DeviceGetInfo = 4,
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`: one region's size, flags and capabilities.
    DeviceGetRegionInfo = 5,
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`: ioeventfds for a region.
    DeviceGetRegionIoFds = 6,
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`: one IRQ type's flags and count.
    DeviceGetIrqInfo = 7,
    /// `VFIO_USER_DEVICE_SET_IRQS`: wire, mask, unmask or trigger interrupts.
    DeviceSetIrqs = 8,
    /// `VFIO_USER_REGION_READ`: read from a device region.
    RegionRead = 9,
    /// `VFIO_USER_REGION_WRITE`: write to a device region.
    RegionWrite = 10,
    /// `VFIO_USER_DMA_READ`: the server reads client memory (server to client).
    DmaRead = 11,
    /// `VFIO_USER_DMA_WRITE`: the server writes client memory (server to client).
    DmaWrite = 12,
    /// `VFIO_USER_DEVICE_RESET`: reset the device.
    DeviceReset = 13,
    /// `VFIO_USER_REGION_WRITE_MULTI`: several small posted writes in one message.
    RegionWriteMulti = 15,
    /// `VFIO_USER_DEVICE_FEATURE`: get, set or probe a device feature.
    DeviceFeature = 16,
    /// `VFIO_USER_MIG_DATA_READ`: read migration data.
    MigDataRead = 17,
    /// `VFIO_USER_MIG_DATA_WRITE`: write migration data.
    MigDataWrite = 18,
}

impl Command {
    /// Every command, in number order.
    pub const ALL: [Command; 17] = [
        Command::Version,
        Command::DmaMap,
        Command::DmaUnmap,
        Command::DeviceGetInfo,
        Command::DeviceGetRegionInfo,
        Command::DeviceGetRegionIoFds,
        Command::DeviceGetIrqInfo,
        Command::DeviceSetIrqs,
        Command::RegionRead,
        Command::RegionWrite,
        Command::DmaRead,
        Command::DmaWrite,
        Command::DeviceReset,
        Command::RegionWriteMulti,
        Command::DeviceFeature,
        Command::MigDataRead,
        Command::MigDataWrite,
    ];

    /// The command with this number, if it is one we know.
    pub fn from_u16(value: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| *c as u16 == value)
    }

    /// The spec's name, e.g. `VFIO_USER_REGION_READ`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Version => "VFIO_USER_VERSION",
            Self::DmaMap => "VFIO_USER_DMA_MAP",
            Self::DmaUnmap => "VFIO_USER_DMA_UNMAP",
            Self::DeviceGetInfo => "VFIO_USER_DEVICE_GET_INFO",
            Self::DeviceGetRegionInfo => "VFIO_USER_DEVICE_GET_REGION_INFO",
            Self::DeviceGetRegionIoFds => "VFIO_USER_DEVICE_GET_REGION_IO_FDS",
            Self::DeviceGetIrqInfo => "VFIO_USER_DEVICE_GET_IRQ_INFO",
            Self::DeviceSetIrqs => "VFIO_USER_DEVICE_SET_IRQS",
            Self::RegionRead => "VFIO_USER_REGION_READ",
            Self::RegionWrite => "VFIO_USER_REGION_WRITE",
            Self::DmaRead => "VFIO_USER_DMA_READ",
            Self::DmaWrite => "VFIO_USER_DMA_WRITE",
            Self::DeviceReset => "VFIO_USER_DEVICE_RESET",
            Self::RegionWriteMulti => "VFIO_USER_REGION_WRITE_MULTI",
            Self::DeviceFeature => "VFIO_USER_DEVICE_FEATURE",
            Self::MigDataRead => "VFIO_USER_MIG_DATA_READ",
            Self::MigDataWrite => "VFIO_USER_MIG_DATA_WRITE",
        }
    }

    /// True for the commands the server sends to the client (`DMA_READ`, `DMA_WRITE`).
    pub fn is_server_to_client(self) -> bool {
        matches!(self, Self::DmaRead | Self::DmaWrite)
    }

    /// Most file descriptors a reply to this command may carry: the region fd of a
    /// region-info reply, the ioeventfds of an IO-FDs reply, the twin socket of a VERSION
    /// reply. Fds beyond this are to be closed and the reply treated as malformed.
    pub fn max_reply_fds(self) -> usize {
        match self {
            Self::Version | Self::DeviceGetRegionInfo => 1,
            Self::DeviceGetRegionIoFds => MAX_MSG_FDS as usize,
            _ => 0,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The header of every message (16 bytes, little-endian on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message id, chosen by the sender of a command and echoed in its reply.
    pub msg_id: u16,
    /// Command number; raw, so a server can answer an unknown one.
    pub command: u16,
    /// Size of the whole message, header included.
    pub size: u32,
    /// Type bits ([`FLAGS_TYPE_MASK`]), [`FLAG_NO_REPLY`], [`FLAG_ERROR`].
    pub flags: u32,
    /// Errno of an error reply; reserved (zero) otherwise.
    pub error: u32,
}

impl Header {
    /// Decodes and validates a header: the size must cover the header and stay within
    /// [`MAX_MESSAGE_SIZE`], and the type must be command or reply. Reserved flag bits are
    /// ignored.
    ///
    /// An error here means the stream cannot be resynchronised: close the connection.
    pub fn decode(bytes: &[u8; HEADER_SIZE]) -> Result<Self, CodecError> {
        let [i0, i1, c0, c1, s0, s1, s2, s3, f0, f1, f2, f3, e0, e1, e2, e3] = *bytes;
        let header = Self {
            msg_id: u16::from_le_bytes([i0, i1]),
            command: u16::from_le_bytes([c0, c1]),
            size: u32::from_le_bytes([s0, s1, s2, s3]),
            flags: u32::from_le_bytes([f0, f1, f2, f3]),
            error: u32::from_le_bytes([e0, e1, e2, e3]),
        };
        if to_usize(header.size) < HEADER_SIZE {
            return Err(CodecError::HeaderSizeTooSmall { size: header.size });
        }
        if header.size > MAX_MESSAGE_SIZE {
            return Err(CodecError::MessageTooLarge {
                size: u64::from(header.size),
                max: u64::from(MAX_MESSAGE_SIZE),
            });
        }
        match header.message_type() {
            TYPE_COMMAND | TYPE_REPLY => Ok(header),
            other => Err(CodecError::InvalidMessageType(other)),
        }
    }

    /// Encodes in wire order.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.msg_id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }

    /// Bytes of payload that follow the header (0 if `size` is below the header size, which
    /// [`Header::decode`] refuses).
    pub fn payload_len(&self) -> usize {
        to_usize(self.size).saturating_sub(HEADER_SIZE)
    }

    /// The type bits of the flags.
    pub fn message_type(&self) -> u32 {
        self.flags & FLAGS_TYPE_MASK
    }

    /// True for a command message.
    pub fn is_command(&self) -> bool {
        self.message_type() == TYPE_COMMAND
    }

    /// True for a reply message.
    pub fn is_reply(&self) -> bool {
        self.message_type() == TYPE_REPLY
    }

    /// True if the sender of this command wants no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    /// True if this reply reports an error.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// The command, if its number is known.
    pub fn known_command(&self) -> Option<Command> {
        Command::from_u16(self.command)
    }

    /// Header of a command carrying `payload_len` bytes of payload.
    pub fn command(msg_id: u16, command: Command, payload_len: usize) -> Result<Self, CodecError> {
        Ok(Self {
            msg_id,
            command: command as u16,
            size: message_size(payload_len)?,
            flags: TYPE_COMMAND,
            error: 0,
        })
    }

    /// Header of a successful reply carrying `payload_len` bytes of payload.
    pub fn reply(msg_id: u16, command: Command, payload_len: usize) -> Result<Self, CodecError> {
        Ok(Self {
            msg_id,
            command: command as u16,
            size: message_size(payload_len)?,
            flags: TYPE_REPLY,
            error: 0,
        })
    }

    /// Header of an error reply (an error reply has no payload). `command` is raw so an
    /// unknown command can be answered.
    pub fn error_reply(msg_id: u16, command: u16, errno: u32) -> Self {
        Self {
            msg_id,
            command,
            size: HEADER_SIZE as u32,
            flags: TYPE_REPLY | FLAG_ERROR,
            error: errno,
        }
    }

    /// The same header with [`FLAG_NO_REPLY`] set.
    pub fn with_no_reply(self) -> Self {
        Self {
            flags: self.flags | FLAG_NO_REPLY,
            ..self
        }
    }
}

/// Header plus payload in one buffer.
pub(crate) fn encode_message(header: &Header, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_SIZE.saturating_add(payload.len()));
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    out
}

/// Message size for `payload_len` bytes of payload, refused above [`MAX_MESSAGE_SIZE`].
fn message_size(payload_len: usize) -> Result<u32, CodecError> {
    let too_large = || CodecError::MessageTooLarge {
        size: u64::try_from(payload_len)
            .unwrap_or(u64::MAX)
            .saturating_add(HEADER_SIZE as u64),
        max: u64::from(MAX_MESSAGE_SIZE),
    };
    let size = payload_len.checked_add(HEADER_SIZE).ok_or_else(too_large)?;
    match u32::try_from(size) {
        Ok(size) if size <= MAX_MESSAGE_SIZE => Ok(size),
        _ => Err(too_large()),
    }
}

/// Widens a wire `u32` to `usize` (lossless on the 32- and 64-bit targets we build for;
/// saturates elsewhere, which every bound check then refuses).
pub(crate) fn to_usize(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header_bytes(size: u32, flags: u32) -> [u8; HEADER_SIZE] {
        Header {
            msg_id: 7,
            command: 9,
            size,
            flags,
            error: 0,
        }
        .encode()
    }

    #[test]
    fn header_round_trips_field_by_field() {
        let h = Header {
            msg_id: 0xbeef,
            command: 10,
            size: 48,
            flags: TYPE_REPLY | FLAG_ERROR,
            error: 22,
        };
        let b = h.encode();
        assert_eq!(b[0..2], [0xef, 0xbe]);
        assert_eq!(b[4..8], 48u32.to_le_bytes());
        assert_eq!(Header::decode(&b).unwrap(), h);
    }

    #[test]
    fn header_size_below_sixteen_is_refused() {
        for size in [0, 1, 15] {
            assert!(matches!(
                Header::decode(&header_bytes(size, TYPE_COMMAND)),
                Err(CodecError::HeaderSizeTooSmall { .. })
            ));
        }
        assert!(Header::decode(&header_bytes(16, TYPE_COMMAND)).is_ok());
    }

    #[test]
    fn header_size_beyond_max_message_is_refused() {
        assert!(Header::decode(&header_bytes(MAX_MESSAGE_SIZE, TYPE_COMMAND)).is_ok());
        assert!(matches!(
            Header::decode(&header_bytes(MAX_MESSAGE_SIZE + 1, TYPE_COMMAND)),
            Err(CodecError::MessageTooLarge { .. })
        ));
        assert!(Header::decode(&header_bytes(u32::MAX, TYPE_REPLY)).is_err());
    }

    #[test]
    fn header_with_bad_type_bits_is_refused() {
        for ty in 2..=15 {
            assert!(matches!(
                Header::decode(&header_bytes(16, ty)),
                Err(CodecError::InvalidMessageType(t)) if t == ty
            ));
        }
    }

    #[test]
    fn header_reserved_flag_bits_are_ignored() {
        let h = Header::decode(&header_bytes(
            16,
            TYPE_COMMAND | FLAG_NO_REPLY | 0xffff_ff00,
        ))
        .unwrap();
        assert!(h.is_command() && h.no_reply());
    }

    #[test]
    fn constructors_set_type_size_and_flags() {
        let c = Header::command(3, Command::RegionRead, 16).unwrap();
        assert!(c.is_command() && !c.no_reply() && !c.is_error());
        assert_eq!((c.size, c.payload_len()), (32, 16));
        assert!(c.with_no_reply().no_reply());
        let r = Header::reply(3, Command::RegionRead, 20).unwrap();
        assert!(r.is_reply() && !r.is_error());
        let e = Header::error_reply(3, 99, 95);
        assert!(e.is_reply() && e.is_error());
        assert_eq!((e.size, e.error, e.command), (16, 95, 99));
    }

    #[test]
    fn constructing_a_message_beyond_max_is_refused() {
        let max_payload = MAX_MESSAGE_SIZE as usize - HEADER_SIZE;
        assert!(Header::command(0, Command::RegionWrite, max_payload).is_ok());
        assert!(Header::command(0, Command::RegionWrite, max_payload + 1).is_err());
        assert!(Header::reply(0, Command::RegionRead, usize::MAX).is_err());
    }

    #[test]
    fn command_numbers_match_the_spec_table() {
        let expected = [1u16, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18];
        for (c, n) in Command::ALL.iter().zip(expected) {
            assert_eq!(*c as u16, n);
            assert_eq!(Command::from_u16(n), Some(*c));
        }
        assert_eq!(Command::from_u16(0), None);
        assert_eq!(Command::from_u16(14), None);
        assert_eq!(Command::from_u16(19), None);
        assert_eq!(Command::RegionRead.to_string(), "VFIO_USER_REGION_READ");
    }

    proptest! {
        #[test]
        fn any_header_decodes_or_errors_without_panic(bytes in proptest::array::uniform16(any::<u8>())) {
            if let Ok(h) = Header::decode(&bytes) {
                prop_assert!(h.payload_len() + HEADER_SIZE == h.size as usize);
                prop_assert_eq!(h.encode(), bytes);
            }
        }
    }
}
