//! The codec's one error type, and the errno each error is answered with.

use thiserror::Error;

use super::header::{Command, HEADER_SIZE};
use super::region_info::RegionInfoError;

/// Linux errno values used in vfio-user error replies (the `error` header field).
///
/// The protocol carries host errno values; these are the Linux ones, which is where QEMU's
/// `vfio-user-pci` client runs.
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: u32 = 1;
    /// No such entry (e.g. an unknown DMA mapping).
    pub const ENOENT: u32 = 2;
    /// I/O error; also what a zero errno in an error reply is taken to mean.
    pub const EIO: u32 = 5;
    /// A count or size is above a limit.
    pub const E2BIG: u32 = 7;
    /// Bad address (an access outside a mapping).
    pub const EFAULT: u32 = 14;
    /// Already exists (e.g. an overlapping DMA mapping).
    pub const EEXIST: u32 = 17;
    /// No such device (e.g. an access nothing decodes).
    pub const ENODEV: u32 = 19;
    /// Invalid argument: a malformed message.
    pub const EINVAL: u32 = 22;
    /// Operation not supported (Linux `EOPNOTSUPP`, 95).
    pub const ENOTSUP: u32 = 95;
}

/// Errors of the vfio-user codec.
///
/// On the server side every variant a request can produce maps to an errno (see
/// [`CodecError::errno`]) for the error reply. Errors from
/// [`Header::decode`](super::Header::decode) mean the byte stream cannot be trusted to
/// resynchronise: close the connection instead of replying.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The header's message size is smaller than the header itself.
    #[error("message size {size} is smaller than the {HEADER_SIZE}-byte header")]
    HeaderSizeTooSmall {
        /// The size field.
        size: u32,
    },
    /// A message (header included) is larger than we accept or can encode.
    #[error("message size {size} exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Size of the message, header included.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The type bits of the header flags are neither command (0) nor reply (1).
    #[error("message type {0} is neither command (0) nor reply (1)")]
    InvalidMessageType(u32),
    /// The command number is not one this codec knows.
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    /// A known command or option that this codec does not implement.
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    /// A reply was handed to the request parser.
    #[error("expected a command message, got a reply")]
    NotACommand,
    /// A command was handed to the reply checker.
    #[error("expected a reply message, got a command")]
    NotAReply,
    /// The payload is shorter than its fixed part.
    #[error("{what}: needs {needed} bytes, payload has {actual}")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The payload is not exactly as long as its fields say.
    #[error("{what}: payload is {actual} bytes, expected exactly {expected}")]
    LengthMismatch {
        /// What was being decoded.
        what: &'static str,
        /// Bytes expected.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// A count or size is above the limit named by a constant in [`limits`](super::limits).
    #[error("{what} is {value}, above the limit of {max}")]
    LimitExceeded {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A field has a value the protocol does not allow.
    #[error("invalid {what}: {value:#x}")]
    InvalidField {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The client's `argsz` cannot hold even the fixed part of the reply.
    #[error("argsz {argsz} is smaller than the {min}-byte reply structure")]
    ArgszTooSmall {
        /// The client's argsz.
        argsz: u32,
        /// The fixed reply size.
        min: u32,
    },
    /// The VERSION capabilities string does not end with its NUL terminator.
    #[error("capabilities string is not NUL-terminated")]
    CapabilitiesNotTerminated,
    /// The VERSION capabilities string is not JSON.
    #[error("capabilities string is not valid JSON")]
    CapabilitiesJson(#[source] serde_json::Error),
    /// A VERSION capability has the wrong JSON type or an out-of-range value.
    #[error("capability `{0}` has the wrong type or an out-of-range value")]
    InvalidCapability(&'static str),
    /// The peer's protocol version cannot be served.
    #[error("protocol version {major}.{minor} is not compatible")]
    IncompatibleVersion {
        /// Proposed or replied major version.
        major: u16,
        /// Proposed or replied minor version.
        minor: u16,
    },
    /// A reply does not answer the request that is waiting for it.
    #[error("reply (id {msg_id}, command {command}) does not answer request id {expected_msg_id} ({expected})")]
    UnexpectedReply {
        /// The reply's message id.
        msg_id: u16,
        /// The reply's command number.
        command: u16,
        /// The request's message id.
        expected_msg_id: u16,
        /// The request's command.
        expected: Command,
    },
    /// A region's info (the `DEVICE_GET_REGION_INFO` reply's layout and capability chain)
    /// is malformed.
    #[error("DEVICE_GET_REGION_INFO reply")]
    RegionInfo(#[from] RegionInfoError),
    /// The peer answered with an error reply.
    #[error("peer failed {command} with errno {errno}")]
    Remote {
        /// The command that failed.
        command: Command,
        /// The errno from the reply header (0 if the peer gave none).
        errno: u32,
    },
}

impl CodecError {
    /// The errno a server answers this error with.
    ///
    /// Malformed messages are `EINVAL`, limits `E2BIG`, unknown or unimplemented commands
    /// `ENOTSUP`. A [`CodecError::Remote`] gives back the peer's errno (`EIO` if it was 0).
    pub fn errno(&self) -> u32 {
        match self {
            Self::MessageTooLarge { .. }
            | Self::LimitExceeded { .. }
            | Self::RegionInfo(
                RegionInfoError::TooManyCaps | RegionInfoError::TooManyAreas { .. },
            ) => errno::E2BIG,
            Self::UnknownCommand(_) | Self::Unsupported(_) | Self::IncompatibleVersion { .. } => {
                errno::ENOTSUP
            }
            Self::Remote { errno: 0, .. } => errno::EIO,
            Self::Remote { errno, .. } => *errno,
            Self::HeaderSizeTooSmall { .. }
            | Self::InvalidMessageType(_)
            | Self::NotACommand
            | Self::NotAReply
            | Self::Truncated { .. }
            | Self::LengthMismatch { .. }
            | Self::InvalidField { .. }
            | Self::ArgszTooSmall { .. }
            | Self::CapabilitiesNotTerminated
            | Self::CapabilitiesJson(_)
            | Self::InvalidCapability(_)
            | Self::RegionInfo(_)
            | Self::UnexpectedReply { .. } => errno::EINVAL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_command_is_answered_with_enotsup() {
        assert_eq!(CodecError::UnknownCommand(14).errno(), errno::ENOTSUP);
    }

    #[test]
    fn limits_are_answered_with_e2big() {
        let e = CodecError::LimitExceeded {
            what: "count",
            value: 9,
            max: 8,
        };
        assert_eq!(e.errno(), errno::E2BIG);
    }

    #[test]
    fn malformed_payload_is_answered_with_einval() {
        let e = CodecError::Truncated {
            what: "x",
            needed: 8,
            actual: 2,
        };
        assert_eq!(e.errno(), errno::EINVAL);
    }

    #[test]
    fn remote_error_keeps_peer_errno_and_zero_becomes_eio() {
        let e = CodecError::Remote {
            command: Command::DmaMap,
            errno: errno::EEXIST,
        };
        assert_eq!(e.errno(), errno::EEXIST);
        let e = CodecError::Remote {
            command: Command::DmaMap,
            errno: 0,
        };
        assert_eq!(e.errno(), errno::EIO);
    }

    #[test]
    fn json_error_message_does_not_repeat_its_source() {
        let src = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        let src_text = src.to_string();
        let e = CodecError::CapabilitiesJson(src);
        assert!(!e.to_string().contains(&src_text));
    }
}
