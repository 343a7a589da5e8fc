//! Reply messages: [`encode_reply`] and [`encode_error_reply`] for the receiver of a
//! command, [`check_reply`] for its sender (before the typed parsers).

use super::error::CodecError;
use super::header::{encode_message, Command, Header};
use super::wire::expect_len;

/// A successful reply: header (type reply) and `payload`. Refused only if the message would
/// exceed [`MAX_MESSAGE_SIZE`](super::MAX_MESSAGE_SIZE).
pub fn encode_reply(msg_id: u16, command: Command, payload: &[u8]) -> Result<Vec<u8>, CodecError> {
    let header = Header::reply(msg_id, command, payload.len())?;
    Ok(encode_message(&header, payload))
}

/// An error reply: the header alone, with the error flag and `errno`. `command` is raw so an
/// unknown command can be answered.
pub fn encode_error_reply(msg_id: u16, command: u16, errno: u32) -> Vec<u8> {
    Header::error_reply(msg_id, command, errno)
        .encode()
        .to_vec()
}

/// Checks a reply against the request waiting for it and returns its payload.
///
/// `header` must be a reply with `expected_msg_id` and `expected`'s command number (else
/// [`CodecError::NotAReply`] / [`CodecError::UnexpectedReply`]), and `payload` exactly its
/// payload. A reply with the error flag becomes [`CodecError::Remote`] with the peer's errno.
pub fn check_reply<'a>(
    header: &Header,
    payload: &'a [u8],
    expected_msg_id: u16,
    expected: Command,
) -> Result<&'a [u8], CodecError> {
    if !header.is_reply() {
        return Err(CodecError::NotAReply);
    }
    if header.msg_id != expected_msg_id || header.command != expected as u16 {
        return Err(CodecError::UnexpectedReply {
            msg_id: header.msg_id,
            command: header.command,
            expected_msg_id,
            expected,
        });
    }
    expect_len(payload, header.payload_len(), "reply payload")?;
    if header.is_error() {
        return Err(CodecError::Remote {
            command: expected,
            errno: header.error,
        });
    }
    Ok(payload)
}

/// Refuses a payload in a reply that has none (`DMA_MAP`, `DEVICE_SET_IRQS`,
/// `DEVICE_RESET`, `MIG_DATA_WRITE`).
pub fn expect_empty_reply(payload: &[u8], command: Command) -> Result<(), CodecError> {
    expect_len(payload, 0, command.name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio_user::capabilities::Version;
    use crate::vfio_user::device::{DeviceFeature, DeviceInfo, IrqInfo, MigData, DEVICE_FLAGS_PCI};
    use crate::vfio_user::dma::{DmaAccess, DmaUnmap};
    use crate::vfio_user::errno;
    use crate::vfio_user::header::HEADER_SIZE;
    use crate::vfio_user::region::{
        ArgszReply, IoFdSubRegion, RegionAccess, RegionInfo, RegionIoFds, RegionWriteMulti,
        SparseArea,
    };
    use proptest::prelude::*;

    fn split(msg: &[u8]) -> (Header, &[u8]) {
        let h: [u8; HEADER_SIZE] = msg[..HEADER_SIZE].try_into().unwrap();
        (Header::decode(&h).unwrap(), &msg[HEADER_SIZE..])
    }

    fn through_wire(command: Command, payload: &[u8]) -> Vec<u8> {
        let msg = encode_reply(42, command, payload).unwrap();
        let (h, p) = split(&msg);
        assert!(h.is_reply() && !h.is_error());
        check_reply(&h, p, 42, command).unwrap().to_vec()
    }

    #[test]
    fn error_reply_becomes_remote_error_with_errno() {
        let msg = encode_error_reply(5, Command::DmaMap as u16, errno::EEXIST);
        assert_eq!(msg.len(), HEADER_SIZE);
        let (h, p) = split(&msg);
        match check_reply(&h, p, 5, Command::DmaMap) {
            Err(CodecError::Remote {
                command: Command::DmaMap,
                errno: e,
            }) => assert_eq!(e, errno::EEXIST),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reply_with_wrong_id_command_or_type_is_unexpected() {
        let msg = encode_reply(5, Command::DeviceReset, &[]).unwrap();
        let (h, p) = split(&msg);
        assert!(matches!(
            check_reply(&h, p, 6, Command::DeviceReset),
            Err(CodecError::UnexpectedReply { .. })
        ));
        assert!(matches!(
            check_reply(&h, p, 5, Command::DmaMap),
            Err(CodecError::UnexpectedReply { .. })
        ));
        let cmd = Header::command(5, Command::DeviceReset, 0).unwrap();
        assert!(matches!(
            check_reply(&cmd, &[], 5, Command::DeviceReset),
            Err(CodecError::NotAReply)
        ));
        assert!(matches!(
            check_reply(&h, &[0], 5, Command::DeviceReset),
            Err(CodecError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn every_reply_round_trips_through_the_wire() {
        let v = Version::local();
        assert_eq!(
            Version::parse(&through_wire(Command::Version, &v.to_bytes().unwrap())).unwrap(),
            v
        );

        expect_empty_reply(&through_wire(Command::DmaMap, &[]), Command::DmaMap).unwrap();

        let u = DmaUnmap {
            flags: 0,
            address: 0x1000,
            size: 0x1000,
        };
        assert_eq!(
            DmaUnmap::parse_reply(&through_wire(Command::DmaUnmap, &u.to_bytes())).unwrap(),
            Some(u)
        );

        let d = DeviceInfo {
            flags: DEVICE_FLAGS_PCI,
            num_regions: 9,
            num_irqs: 5,
        };
        assert_eq!(
            DeviceInfo::parse(&through_wire(Command::DeviceGetInfo, &d.to_bytes())).unwrap(),
            d
        );

        let ri = RegionInfo {
            flags: 0b1111,
            index: 0,
            size: 0x4000,
            offset: 0,
            sparse_areas: vec![SparseArea {
                offset: 0x1000,
                size: 0x3000,
            }],
        };
        let b = through_wire(
            Command::DeviceGetRegionInfo,
            &ri.to_bytes_for(4096).unwrap(),
        );
        assert_eq!(RegionInfo::parse(&b).unwrap(), ArgszReply::Complete(ri));

        let io = RegionIoFds {
            index: 0,
            sub_regions: vec![IoFdSubRegion {
                offset: 0,
                size: 4,
                fd_index: 0,
                fd_type: 0,
                flags: 0,
                datamatch: 7,
            }],
        };
        let b = through_wire(
            Command::DeviceGetRegionIoFds,
            &io.to_bytes_for(4096).unwrap(),
        );
        assert_eq!(RegionIoFds::parse(&b).unwrap(), ArgszReply::Complete(io));

        let irq = IrqInfo {
            flags: 1,
            index: 2,
            count: 4,
        };
        assert_eq!(
            IrqInfo::parse(&through_wire(Command::DeviceGetIrqInfo, &irq.to_bytes())).unwrap(),
            irq
        );

        expect_empty_reply(
            &through_wire(Command::DeviceSetIrqs, &[]),
            Command::DeviceSetIrqs,
        )
        .unwrap();

        let data = [1u8, 2, 3, 4];
        let rr = RegionAccess::with_data(0x10, 7, &data).unwrap();
        let b = through_wire(Command::RegionRead, &rr.to_bytes());
        assert_eq!(RegionAccess::parse(&b).unwrap(), rr);

        let wr = RegionAccess {
            offset: 0x10,
            region: 7,
            count: 4,
            data: &[],
        };
        let b = through_wire(Command::RegionWrite, &wr.to_bytes());
        assert_eq!(RegionAccess::parse_header_only(&b).unwrap(), wr);

        let dr = DmaAccess::with_data(0x1000, &data).unwrap();
        assert_eq!(
            DmaAccess::parse(&through_wire(Command::DmaRead, &dr.to_bytes())).unwrap(),
            dr
        );
        DmaAccess::parse_write_reply(&through_wire(Command::DmaWrite, &[])).unwrap();

        expect_empty_reply(
            &through_wire(Command::DeviceReset, &[]),
            Command::DeviceReset,
        )
        .unwrap();

        let b = through_wire(Command::RegionWriteMulti, &RegionWriteMulti::reply_bytes(3));
        assert_eq!(RegionWriteMulti::parse_reply(&b).unwrap(), 3);

        let f = DeviceFeature {
            argsz: 16,
            flags: 1 << 16 | 1,
            data: &[1, 0, 0, 0, 0, 0, 0, 0],
        };
        assert_eq!(
            DeviceFeature::parse(&through_wire(Command::DeviceFeature, &f.to_bytes())).unwrap(),
            f
        );

        let m = MigData {
            argsz: 12,
            size: 4,
            data: &data,
        };
        assert_eq!(
            MigData::parse(&through_wire(Command::MigDataRead, &m.to_bytes())).unwrap(),
            m
        );

        expect_empty_reply(
            &through_wire(Command::MigDataWrite, &[]),
            Command::MigDataWrite,
        )
        .unwrap();
        assert!(expect_empty_reply(&[0], Command::MigDataWrite).is_err());
    }

    #[test]
    fn truncated_replies_are_errors_not_panics() {
        let d = DeviceInfo {
            flags: 0,
            num_regions: 9,
            num_irqs: 5,
        }
        .to_bytes();
        let i = IrqInfo {
            flags: 0,
            index: 0,
            count: 1,
        }
        .to_bytes();
        let r = RegionAccess::with_data(0, 0, &[1, 2]).unwrap().to_bytes();
        for len in 0..16 {
            assert!(DeviceInfo::parse(&d[..len]).is_err());
            assert!(IrqInfo::parse(&i[..len]).is_err());
            assert!(RegionAccess::parse(&r[..len]).is_err());
            assert!(DmaAccess::parse(&r[..len]).is_err());
            assert!(DmaUnmap::parse_reply(&d[..len.max(1)]).is_err());
        }
    }

    proptest! {
        #[test]
        fn reply_parsers_never_panic_on_arbitrary_bytes(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Version::parse(&payload);
            let _ = DmaUnmap::parse_reply(&payload);
            let _ = DeviceInfo::parse(&payload);
            let _ = RegionInfo::parse(&payload);
            let _ = RegionIoFds::parse(&payload);
            let _ = IrqInfo::parse(&payload);
            let _ = RegionAccess::parse(&payload);
            let _ = RegionAccess::parse_header_only(&payload);
            let _ = DmaAccess::parse(&payload);
            let _ = DmaAccess::parse_header_only(&payload);
            let _ = DmaAccess::parse_write_reply(&payload);
            let _ = RegionWriteMulti::parse_reply(&payload);
            let _ = DeviceFeature::parse(&payload);
            let _ = MigData::parse(&payload);
            let _ = expect_empty_reply(&payload, Command::DmaMap);
        }

        #[test]
        fn region_info_parser_never_panics_on_plausible_replies(
            argsz in 32u32..200,
            flags in any::<u32>(),
            cap_offset in 0u32..200,
            tail in proptest::collection::vec(any::<u8>(), 0..168),
        ) {
            let mut b = Vec::new();
            b.extend_from_slice(&argsz.to_le_bytes());
            b.extend_from_slice(&flags.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&cap_offset.to_le_bytes());
            b.extend_from_slice(&u64::MAX.to_le_bytes());
            b.extend_from_slice(&0u64.to_le_bytes());
            b.extend_from_slice(&tail);
            let _ = RegionInfo::parse(&b);
        }

        #[test]
        fn check_reply_never_panics_on_arbitrary_headers(
            header in proptest::array::uniform16(any::<u8>()),
            payload in proptest::collection::vec(any::<u8>(), 0..32),
            id in any::<u16>(),
            which in 0usize..17,
        ) {
            if let Ok(h) = Header::decode(&header) {
                let _ = check_reply(&h, &payload, id, Command::ALL[which]);
            }
        }
    }
}
