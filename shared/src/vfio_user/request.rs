//! Command messages: [`parse_request`] for the receiver (the server, or the client for
//! `DMA_READ`/`DMA_WRITE`), [`Request::to_bytes`] and [`encode_request`] for the sender.

use super::capabilities::Version;
use super::device::{DeviceFeature, DeviceInfo, IrqInfo, IrqSet, MigData};
use super::dma::{DmaAccess, DmaMap, DmaUnmap};
use super::error::CodecError;
use super::header::{encode_message, Command, Header};
use super::region::{RegionAccess, RegionInfo, RegionIoFds, RegionWriteMulti};
use super::wire::{check_argsz, expect_len, put_u32, put_u64, Reader};

/// A parsed command, one variant per command, borrowing bulk data from the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `VERSION`: the client's proposal.
    Version(Version),
    /// `DMA_MAP`. May come with one fd.
    DmaMap(DmaMap),
    /// `DMA_UNMAP`.
    DmaUnmap(DmaUnmap),
    /// `DEVICE_GET_INFO`.
    DeviceGetInfo {
        /// Largest reply payload the client takes (at least 16).
        argsz: u32,
    },
    /// `DEVICE_GET_REGION_INFO`: answer with [`RegionInfo::to_bytes_for`]`(argsz)`.
    DeviceGetRegionInfo {
        /// Largest reply payload the client takes (at least 32).
        argsz: u32,
        /// Region index.
        index: u32,
    },
    /// `DEVICE_GET_REGION_IO_FDS`: answer with [`RegionIoFds::to_bytes_for`]`(argsz)`.
    DeviceGetRegionIoFds {
        /// Largest reply payload the client takes (at least 16).
        argsz: u32,
        /// Region index.
        index: u32,
    },
    /// `DEVICE_GET_IRQ_INFO`.
    DeviceGetIrqInfo {
        /// Largest reply payload the client takes (at least 16).
        argsz: u32,
        /// IRQ index.
        index: u32,
    },
    /// `DEVICE_SET_IRQS`. May come with eventfds (see [`IrqSet::accepts_fd_count`]).
    DeviceSetIrqs(IrqSet<'a>),
    /// `REGION_READ` (no data; `count` bytes wanted).
    RegionRead(RegionAccess<'a>),
    /// `REGION_WRITE` (data borrowed from the payload). QEMU posts writes with
    /// [`FLAG_NO_REPLY`](super::FLAG_NO_REPLY): then send no reply.
    RegionWrite(RegionAccess<'a>),
    /// `DMA_READ` (server to client; no data).
    DmaRead(DmaAccess<'a>),
    /// `DMA_WRITE` (server to client; data borrowed).
    DmaWrite(DmaAccess<'a>),
    /// `DEVICE_RESET`.
    DeviceReset,
    /// `REGION_WRITE_MULTI` (always sent with no-reply by QEMU).
    RegionWriteMulti(RegionWriteMulti<'a>),
    /// `DEVICE_FEATURE`.
    DeviceFeature(DeviceFeature<'a>),
    /// `MIG_DATA_READ` (no data).
    MigDataRead(MigData<'a>),
    /// `MIG_DATA_WRITE` (data borrowed).
    MigDataWrite(MigData<'a>),
}

/// Bytes of the `DEVICE_GET_INFO` / `GET_IRQ_INFO` / `GET_REGION_IO_FDS` requests.
const INFO_REQUEST_SIZE: usize = 16;

/// Parses a command message.
///
/// Checks that `header` is a command and that `payload` is exactly its payload, then parses
/// the command's payload (exact or minimal length as the spec says, every count bounded).
/// On error a server answers with
/// [`encode_error_reply`](super::encode_error_reply)`(header.msg_id, header.command,
/// err.errno())` (unless the command asked for no reply) and keeps going.
pub fn parse_request<'a>(header: &Header, payload: &'a [u8]) -> Result<Request<'a>, CodecError> {
    if !header.is_command() {
        return Err(CodecError::NotACommand);
    }
    expect_len(payload, header.payload_len(), "message payload")?;
    let command =
        Command::from_u16(header.command).ok_or(CodecError::UnknownCommand(header.command))?;
    Ok(match command {
        Command::Version => Request::Version(Version::parse(payload)?),
        Command::DmaMap => Request::DmaMap(DmaMap::parse(payload)?),
        Command::DmaUnmap => Request::DmaUnmap(DmaUnmap::parse(payload)?),
        Command::DeviceGetInfo => {
            let (argsz, _, _, _) = info_request(payload, "DEVICE_GET_INFO", DeviceInfo::SIZE)?;
            Request::DeviceGetInfo { argsz }
        }
        Command::DeviceGetRegionInfo => {
            expect_len(payload, RegionInfo::FIXED_SIZE, "DEVICE_GET_REGION_INFO")?;
            let mut r = Reader::new(payload, "DEVICE_GET_REGION_INFO");
            let argsz = r.u32()?;
            check_argsz(argsz, RegionInfo::FIXED_SIZE)?;
            let _flags = r.u32()?;
            let index = r.u32()?;
            Request::DeviceGetRegionInfo { argsz, index }
        }
        Command::DeviceGetRegionIoFds => {
            let (argsz, flags, index, count) =
                info_request(payload, "DEVICE_GET_REGION_IO_FDS", RegionIoFds::FIXED_SIZE)?;
            if flags != 0 || count != 0 {
                return Err(CodecError::InvalidField {
                    what: "GET_REGION_IO_FDS flags/count",
                    value: u64::from(flags | count),
                });
            }
            Request::DeviceGetRegionIoFds { argsz, index }
        }
        Command::DeviceGetIrqInfo => {
            let (argsz, _, index, _) = info_request(payload, "DEVICE_GET_IRQ_INFO", IrqInfo::SIZE)?;
            Request::DeviceGetIrqInfo { argsz, index }
        }
        Command::DeviceSetIrqs => Request::DeviceSetIrqs(IrqSet::parse(payload)?),
        Command::RegionRead => Request::RegionRead(RegionAccess::parse_header_only(payload)?),
        Command::RegionWrite => Request::RegionWrite(RegionAccess::parse(payload)?),
        Command::DmaRead => Request::DmaRead(DmaAccess::parse_header_only(payload)?),
        Command::DmaWrite => Request::DmaWrite(DmaAccess::parse(payload)?),
        Command::DeviceReset => {
            expect_len(payload, 0, "DEVICE_RESET")?;
            Request::DeviceReset
        }
        Command::RegionWriteMulti => Request::RegionWriteMulti(RegionWriteMulti::parse(payload)?),
        Command::DeviceFeature => Request::DeviceFeature(DeviceFeature::parse(payload)?),
        Command::MigDataRead => Request::MigDataRead(MigData::parse_header_only(payload)?),
        Command::MigDataWrite => Request::MigDataWrite(MigData::parse(payload)?),
    })
}

/// The 16-byte `{argsz, flags, index, count}` requests; argsz must cover a `min`-byte reply.
fn info_request(
    payload: &[u8],
    what: &'static str,
    min: usize,
) -> Result<(u32, u32, u32, u32), CodecError> {
    expect_len(payload, INFO_REQUEST_SIZE, what)?;
    let mut r = Reader::new(payload, what);
    let argsz = r.u32()?;
    check_argsz(argsz, min)?;
    Ok((argsz, r.u32()?, r.u32()?, r.u32()?))
}

fn info_request_bytes(argsz: u32, index: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(INFO_REQUEST_SIZE);
    put_u32(&mut out, argsz);
    put_u32(&mut out, 0);
    put_u32(&mut out, index);
    put_u32(&mut out, 0);
    out
}

impl Request<'_> {
    /// The command this request is.
    pub fn command(&self) -> Command {
        match self {
            Self::Version(_) => Command::Version,
            Self::DmaMap(_) => Command::DmaMap,
            Self::DmaUnmap(_) => Command::DmaUnmap,
            Self::DeviceGetInfo { .. } => Command::DeviceGetInfo,
            Self::DeviceGetRegionInfo { .. } => Command::DeviceGetRegionInfo,
            Self::DeviceGetRegionIoFds { .. } => Command::DeviceGetRegionIoFds,
            Self::DeviceGetIrqInfo { .. } => Command::DeviceGetIrqInfo,
            Self::DeviceSetIrqs(_) => Command::DeviceSetIrqs,
            Self::RegionRead(_) => Command::RegionRead,
            Self::RegionWrite(_) => Command::RegionWrite,
            Self::DmaRead(_) => Command::DmaRead,
            Self::DmaWrite(_) => Command::DmaWrite,
            Self::DeviceReset => Command::DeviceReset,
            Self::RegionWriteMulti(_) => Command::RegionWriteMulti,
            Self::DeviceFeature(_) => Command::DeviceFeature,
            Self::MigDataRead(_) => Command::MigDataRead,
            Self::MigDataWrite(_) => Command::MigDataWrite,
        }
    }

    /// Encodes the payload (the sender's side).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        Ok(match self {
            Self::Version(v) => v.to_bytes()?,
            Self::DmaMap(m) => m.to_bytes(),
            Self::DmaUnmap(u) => u.to_bytes(),
            Self::DeviceGetInfo { argsz } => info_request_bytes(*argsz, 0),
            Self::DeviceGetRegionInfo { argsz, index } => {
                let mut out = Vec::with_capacity(RegionInfo::FIXED_SIZE);
                put_u32(&mut out, *argsz);
                put_u32(&mut out, 0);
                put_u32(&mut out, *index);
                put_u32(&mut out, 0);
                put_u64(&mut out, 0);
                put_u64(&mut out, 0);
                out
            }
            Self::DeviceGetRegionIoFds { argsz, index }
            | Self::DeviceGetIrqInfo { argsz, index } => info_request_bytes(*argsz, *index),
            Self::DeviceSetIrqs(s) => s.to_bytes()?,
            Self::RegionRead(a) | Self::RegionWrite(a) => a.to_bytes(),
            Self::DmaRead(a) | Self::DmaWrite(a) => a.to_bytes(),
            Self::DeviceReset => Vec::new(),
            Self::RegionWriteMulti(m) => {
                let writes: Vec<_> = m.iter().collect();
                RegionWriteMulti::encode(&writes)?
            }
            Self::DeviceFeature(f) => f.to_bytes(),
            Self::MigDataRead(m) | Self::MigDataWrite(m) => m.to_bytes(),
        })
    }

    /// The whole command message (header and payload) with id `msg_id`.
    pub fn encode(&self, msg_id: u16) -> Result<Vec<u8>, CodecError> {
        encode_request(msg_id, self.command(), &self.to_bytes()?)
    }

    /// Whether `n` file descriptors received with this command are acceptable: at most one
    /// with `DMA_MAP`, none or `count` with an EVENTFD `SET_IRQS`, none otherwise. A server
    /// closes the fds and answers `EINVAL` when this is false.
    pub fn accepts_fd_count(&self, n: usize) -> bool {
        match self {
            Self::DmaMap(_) => n <= 1,
            Self::DeviceSetIrqs(s) => s.accepts_fd_count(n),
            _ => n == 0,
        }
    }
}

/// A command message: header (type command, fresh flags) and `payload`.
pub fn encode_request(
    msg_id: u16,
    command: Command,
    payload: &[u8],
) -> Result<Vec<u8>, CodecError> {
    let header = Header::command(msg_id, command, payload.len())?;
    Ok(encode_message(&header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio_user::capabilities::Capabilities;
    use crate::vfio_user::device::{IrqAction, IrqSetData};
    use crate::vfio_user::header::HEADER_SIZE;
    use crate::vfio_user::limits::{MAX_DATA_XFER_SIZE, MAX_IRQ_SET_COUNT, MAX_MESSAGE_SIZE};
    use crate::vfio_user::region::WriteOne;
    use crate::vfio_user::{errno, FLAG_NO_REPLY};
    use proptest::prelude::*;

    fn split(msg: &[u8]) -> (Header, &[u8]) {
        let h: [u8; HEADER_SIZE] = msg[..HEADER_SIZE].try_into().unwrap();
        (Header::decode(&h).unwrap(), &msg[HEADER_SIZE..])
    }

    fn samples() -> Vec<Request<'static>> {
        const DATA: &[u8] = &[1, 2, 3, 4];
        const BOOLS: &[u8] = &[1, 0];
        const MULTI: &[u8] = &[
            1, 0, 0, 0, 0, 0, 0, 0, // wr_cnt
            0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0,
        ];
        let multi = RegionWriteMulti::parse(MULTI).unwrap();
        vec![
            Request::Version(Version::local()),
            Request::DmaMap(DmaMap {
                flags: 3,
                offset: 0,
                address: 0xc0000,
                size: 0x1000,
            }),
            Request::DmaUnmap(DmaUnmap {
                flags: 0,
                address: 0xc0000,
                size: 0x1000,
            }),
            Request::DeviceGetInfo { argsz: 16 },
            Request::DeviceGetRegionInfo {
                argsz: 32,
                index: 7,
            },
            Request::DeviceGetRegionIoFds {
                argsz: 16,
                index: 0,
            },
            Request::DeviceGetIrqInfo {
                argsz: 16,
                index: 2,
            },
            Request::DeviceSetIrqs(IrqSet {
                action: IrqAction::Trigger,
                data: IrqSetData::Eventfd,
                index: 2,
                start: 0,
                count: 2,
            }),
            Request::DeviceSetIrqs(IrqSet {
                action: IrqAction::Unmask,
                data: IrqSetData::Bool(BOOLS),
                index: 0,
                start: 0,
                count: 2,
            }),
            Request::RegionRead(RegionAccess {
                offset: 0x10,
                region: 7,
                count: 4,
                data: &[],
            }),
            Request::RegionWrite(RegionAccess {
                offset: 0x10,
                region: 0,
                count: 4,
                data: DATA,
            }),
            Request::DmaRead(DmaAccess {
                address: 0x1000,
                count: 4,
                data: &[],
            }),
            Request::DmaWrite(DmaAccess {
                address: 0x1000,
                count: 4,
                data: DATA,
            }),
            Request::DeviceReset,
            Request::RegionWriteMulti(multi),
            Request::DeviceFeature(DeviceFeature {
                argsz: 16,
                flags: 1 << 18 | 1,
                data: &[],
            }),
            Request::MigDataRead(MigData {
                argsz: 4104,
                size: 4096,
                data: &[],
            }),
            Request::MigDataWrite(MigData {
                argsz: 8,
                size: 4,
                data: DATA,
            }),
        ]
    }

    #[test]
    fn every_request_round_trips_through_the_wire() {
        let all = samples();
        let mut seen: Vec<Command> = all.iter().map(Request::command).collect();
        seen.dedup();
        assert_eq!(seen, Command::ALL.to_vec());
        for (i, req) in all.iter().enumerate() {
            let msg = req.encode(i as u16).unwrap();
            let (h, payload) = split(&msg);
            assert!(h.is_command() && !h.no_reply());
            assert_eq!(h.msg_id, i as u16);
            assert_eq!(h.command, req.command() as u16);
            assert_eq!(&parse_request(&h, payload).unwrap(), req);
        }
    }

    #[test]
    fn truncated_payload_of_every_command_is_an_error_not_a_panic() {
        for req in samples() {
            let payload = req.to_bytes().unwrap();
            for len in 0..payload.len() {
                let h = Header::command(1, req.command(), len).unwrap();
                let r = parse_request(&h, &payload[..len]);
                // Only a VERSION cut right after the version pair is still well-formed.
                if !(req.command() == Command::Version && len == 4) {
                    assert!(r.is_err(), "{} len {len}", req.command());
                }
            }
        }
    }

    #[test]
    fn payload_not_matching_header_size_is_refused() {
        let h = Header::command(1, Command::DeviceReset, 0).unwrap();
        assert!(matches!(
            parse_request(&h, &[0]),
            Err(CodecError::LengthMismatch { .. })
        ));
        let h = Header::command(1, Command::DeviceGetInfo, 16).unwrap();
        assert!(matches!(
            parse_request(&h, &[0; 8]),
            Err(CodecError::Truncated { .. })
        ));
    }

    #[test]
    fn unknown_command_is_enotsup_and_reply_is_not_a_request() {
        let h = Header {
            msg_id: 1,
            command: 14,
            size: 16,
            flags: 0,
            error: 0,
        };
        let e = parse_request(&h, &[]).unwrap_err();
        assert!(matches!(e, CodecError::UnknownCommand(14)));
        assert_eq!(e.errno(), errno::ENOTSUP);
        let h = Header::reply(1, Command::DeviceReset, 0).unwrap();
        assert!(matches!(
            parse_request(&h, &[]),
            Err(CodecError::NotACommand)
        ));
    }

    #[test]
    fn region_read_count_beyond_max_is_refused_with_e2big() {
        let req = Request::RegionRead(RegionAccess {
            offset: 0,
            region: 0,
            count: MAX_DATA_XFER_SIZE + 1,
            data: &[],
        });
        let msg = req.encode(1).unwrap();
        let (h, payload) = split(&msg);
        let e = parse_request(&h, payload).unwrap_err();
        assert_eq!(e.errno(), errno::E2BIG);
    }

    #[test]
    fn set_irqs_huge_count_is_refused() {
        let req = Request::DeviceSetIrqs(IrqSet {
            action: IrqAction::Trigger,
            data: IrqSetData::Eventfd,
            index: 2,
            start: 0,
            count: MAX_IRQ_SET_COUNT + 1,
        });
        let msg = req.encode(1).unwrap();
        let (h, payload) = split(&msg);
        assert!(matches!(
            parse_request(&h, payload),
            Err(CodecError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn info_requests_with_small_argsz_are_refused() {
        for req in [
            Request::DeviceGetInfo { argsz: 15 },
            Request::DeviceGetRegionInfo {
                argsz: 31,
                index: 0,
            },
            Request::DeviceGetRegionIoFds { argsz: 8, index: 0 },
            Request::DeviceGetIrqInfo { argsz: 0, index: 0 },
        ] {
            let msg = req.encode(1).unwrap();
            let (h, payload) = split(&msg);
            assert!(matches!(
                parse_request(&h, payload),
                Err(CodecError::ArgszTooSmall { .. })
            ));
        }
    }

    #[test]
    fn io_fds_request_with_nonzero_count_is_refused() {
        let mut payload = Request::DeviceGetRegionIoFds {
            argsz: 16,
            index: 0,
        }
        .to_bytes()
        .unwrap();
        payload[12] = 1;
        let h = Header::command(1, Command::DeviceGetRegionIoFds, payload.len()).unwrap();
        assert!(matches!(
            parse_request(&h, &payload),
            Err(CodecError::InvalidField { .. })
        ));
    }

    #[test]
    fn qemu_region_write_posted_and_version_shapes_parse() {
        // QEMU posts a 4-byte config write with NO_REPLY.
        let mut msg = Request::RegionWrite(RegionAccess::with_data(4, 7, &[6, 0, 0, 0]).unwrap())
            .encode(9)
            .unwrap();
        msg[8..12].copy_from_slice(&FLAG_NO_REPLY.to_le_bytes());
        let (h, payload) = split(&msg);
        assert!(h.no_reply());
        assert!(matches!(
            parse_request(&h, payload),
            Ok(Request::RegionWrite(_))
        ));
        // QEMU proposes 0.0.
        let v = Version {
            major: 0,
            minor: 0,
            capabilities: Capabilities::default(),
        };
        let msg = Request::Version(v).encode(0).unwrap();
        let (h, payload) = split(&msg);
        assert_eq!(parse_request(&h, payload).unwrap(), Request::Version(v));
    }

    #[test]
    fn fd_counts_per_request() {
        let map = Request::DmaMap(DmaMap {
            flags: 1,
            offset: 0,
            address: 0,
            size: 1,
        });
        assert!(map.accepts_fd_count(0) && map.accepts_fd_count(1) && !map.accepts_fd_count(2));
        assert!(
            Request::DeviceReset.accepts_fd_count(0) && !Request::DeviceReset.accepts_fd_count(1)
        );
        let set = samples()[7].clone();
        assert!(set.accepts_fd_count(2) && !set.accepts_fd_count(1));
    }

    #[test]
    fn write_multi_request_iterates_its_writes() {
        let writes = [WriteOne {
            offset: 8,
            region: 1,
            count: 4,
            data: [9; 8],
        }];
        let payload = RegionWriteMulti::encode(&writes).unwrap();
        let h = Header::command(1, Command::RegionWriteMulti, payload.len())
            .unwrap()
            .with_no_reply();
        let Ok(Request::RegionWriteMulti(m)) = parse_request(&h, &payload) else {
            panic!("not a write-multi");
        };
        assert_eq!(m.iter().collect::<Vec<_>>(), writes);
    }

    proptest! {
        #[test]
        fn parse_request_never_panics_on_arbitrary_payloads(
            command in 0u16..20,
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let h = Header { msg_id: 0, command, size: (HEADER_SIZE + payload.len()) as u32, flags: 0, error: 0 };
            let _ = parse_request(&h, &payload);
        }

        #[test]
        fn parse_request_never_panics_on_arbitrary_headers(
            header in proptest::array::uniform16(any::<u8>()),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let h = Header::decode(&header).unwrap_or(Header {
                msg_id: 0,
                command: u16::from_le_bytes([header[2], header[3]]),
                size: u32::from_le_bytes([header[4], header[5], header[6], header[7]]),
                flags: 0,
                error: 0,
            });
            let _ = parse_request(&h, &payload);
        }

        #[test]
        fn parse_request_never_panics_on_mutated_valid_payloads(
            which in 0usize..18,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let req = samples()[which].clone();
            let mut payload = req.to_bytes().unwrap();
            for (at, v) in flips {
                if !payload.is_empty() {
                    let n = payload.len();
                    payload[at % n] ^= v;
                }
            }
            payload.truncate(cut % (payload.len() + 1));
            let h = Header::command(0, req.command(), payload.len()).unwrap();
            let _ = parse_request(&h, &payload);
        }
    }

    #[test]
    fn max_message_size_admits_a_full_data_transfer() {
        let data = vec![0u8; MAX_DATA_XFER_SIZE as usize];
        let msg = Request::RegionWrite(RegionAccess::with_data(0, 0, &data).unwrap())
            .encode(1)
            .unwrap();
        assert!(msg.len() <= MAX_MESSAGE_SIZE as usize);
        let (h, payload) = split(&msg);
        assert!(parse_request(&h, payload).is_ok());
    }
}
