//! `VFIO_USER_VERSION`: the version pair and the JSON capabilities string.
//!
//! The string is bounded ([`MAX_CAPABILITIES_JSON`]) before it reaches the JSON parser, must
//! end in exactly one NUL, and must be a JSON object. Unknown keys are ignored; missing keys
//! take the spec's defaults; a known key of the wrong type or out of range is an error.

use serde_json::{Map, Value};

use super::error::CodecError;
use super::header::{PROTOCOL_MAJOR, PROTOCOL_MINOR};
use super::limits::{MAX_CAPABILITIES_JSON, MAX_DATA_XFER_SIZE, MAX_MSG_FDS};
use super::wire::{check_limit, put_u16, Reader};

/// Spec default of `max_msg_fds` when the key is absent.
pub const DEFAULT_MAX_MSG_FDS: u32 = 1;
/// Spec default of `max_data_xfer_size` when the key is absent (1 MiB).
pub const DEFAULT_MAX_DATA_XFER_SIZE: u64 = 1 << 20;
/// Spec default of `pgsizes` when the key is absent (4 KiB pages only).
pub const DEFAULT_PGSIZES: u64 = 4096;
/// Spec default of `max_dma_maps` when the key is absent (64k - 1).
pub const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
/// QEMU's default migration dirty-page size (`VFIO_USER_DEF_PGSIZE`).
pub const DEFAULT_MIGRATION_PGSIZE: u64 = 4096;
/// QEMU's default migration `max_bitmap_size` (`VFIO_USER_DEF_MAX_BITMAP`, 256 MiB).
pub const DEFAULT_MAX_BITMAP_SIZE: u64 = 256 << 20;

/// The `migration` capability object (sent by QEMU; not in the current spec table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationCapabilities {
    /// Dirty-page tracking granularity (`pgsize`).
    pub pgsize: u64,
    /// Largest dirty bitmap in one message (`max_bitmap_size`).
    pub max_bitmap_size: u64,
}

/// The `twin_socket` capability object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwinSocket {
    /// Whether the sender supports (client) or enabled (server) twin-socket mode.
    pub supported: bool,
    /// Server reply only: index of the server-to-client socket in the reply's fds.
    pub fd_index: Option<u32>,
}

/// The capabilities of one side, as carried in the VERSION JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Most fds the sender can receive in one message.
    pub max_msg_fds: u32,
    /// Largest data `count` the sender accepts in one read/write message.
    pub max_data_xfer_size: u64,
    /// Page sizes supported for DMA mappings, or'ed together.
    pub pgsizes: u64,
    /// Most DMA mappings valid at once.
    pub max_dma_maps: u32,
    /// Migration parameters, if offered.
    pub migration: Option<MigrationCapabilities>,
    /// Twin-socket parameters, if offered.
    pub twin_socket: Option<TwinSocket>,
    /// `REGION_WRITE_MULTI` is supported.
    pub write_multiple: bool,
}

impl Default for Capabilities {
    /// The spec's defaults: what a peer that sends no JSON (or omits keys) is assumed to have.
    fn default() -> Self {
        Self {
            max_msg_fds: DEFAULT_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            pgsizes: DEFAULT_PGSIZES,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            migration: None,
            twin_socket: None,
            write_multiple: false,
        }
    }
}

impl Capabilities {
    /// What this codec can receive: [`MAX_MSG_FDS`] fds and [`MAX_DATA_XFER_SIZE`] bytes a
    /// message, 4 KiB pages, no migration, no twin socket, no `REGION_WRITE_MULTI`. A server
    /// may lower `max_dma_maps` or turn on `write_multiple` before replying.
    pub fn local() -> Self {
        Self {
            max_msg_fds: MAX_MSG_FDS,
            max_data_xfer_size: u64::from(MAX_DATA_XFER_SIZE),
            ..Self::default()
        }
    }

    /// Parses the version-data part of a VERSION payload: empty (all defaults) or a
    /// NUL-terminated JSON object of at most [`MAX_CAPABILITIES_JSON`] bytes.
    pub fn parse(data: &[u8]) -> Result<Self, CodecError> {
        if data.is_empty() {
            return Ok(Self::default());
        }
        check_limit(
            u64::try_from(data.len()).unwrap_or(u64::MAX),
            MAX_CAPABILITIES_JSON as u64,
            "capabilities string length",
        )?;
        let Some((&0, json)) = data.split_last() else {
            return Err(CodecError::CapabilitiesNotTerminated);
        };
        let root: Value = serde_json::from_slice(json).map_err(CodecError::CapabilitiesJson)?;
        let Value::Object(root) = root else {
            return Err(CodecError::InvalidCapability("(top level)"));
        };
        let mut caps = Self::default();
        let Some(c) = root.get("capabilities") else {
            return Ok(caps);
        };
        let Value::Object(c) = c else {
            return Err(CodecError::InvalidCapability("capabilities"));
        };
        if let Some(v) = c.get("max_msg_fds") {
            caps.max_msg_fds = json_u32(v, "max_msg_fds")?;
        }
        if let Some(v) = c.get("max_data_xfer_size") {
            caps.max_data_xfer_size = json_u64(v, "max_data_xfer_size")?;
        }
        if let Some(v) = c.get("pgsizes") {
            caps.pgsizes = json_u64(v, "pgsizes")?;
        }
        if let Some(v) = c.get("max_dma_maps") {
            caps.max_dma_maps = json_u32(v, "max_dma_maps")?;
        }
        if let Some(v) = c.get("write_multiple") {
            caps.write_multiple = v
                .as_bool()
                .ok_or(CodecError::InvalidCapability("write_multiple"))?;
        }
        if let Some(v) = c.get("migration") {
            let Value::Object(m) = v else {
                return Err(CodecError::InvalidCapability("migration"));
            };
            let mut mig = MigrationCapabilities {
                pgsize: DEFAULT_MIGRATION_PGSIZE,
                max_bitmap_size: DEFAULT_MAX_BITMAP_SIZE,
            };
            if let Some(v) = m.get("pgsize") {
                mig.pgsize = json_u64(v, "migration.pgsize")?;
            }
            if let Some(v) = m.get("max_bitmap_size") {
                mig.max_bitmap_size = json_u64(v, "migration.max_bitmap_size")?;
            }
            caps.migration = Some(mig);
        }
        if let Some(v) = c.get("twin_socket") {
            let Value::Object(t) = v else {
                return Err(CodecError::InvalidCapability("twin_socket"));
            };
            let mut twin = TwinSocket {
                supported: false,
                fd_index: None,
            };
            if let Some(v) = t.get("supported") {
                twin.supported = v
                    .as_bool()
                    .ok_or(CodecError::InvalidCapability("twin_socket.supported"))?;
            }
            if let Some(v) = t.get("fd_index") {
                twin.fd_index = Some(json_u32(v, "twin_socket.fd_index")?);
            }
            caps.twin_socket = Some(twin);
        }
        Ok(caps)
    }

    /// The NUL-terminated JSON string. `write_multiple` is written only when true and the
    /// optional objects only when present, to keep the string short (a QEMU client receives
    /// the VERSION reply into the buffer of its own request).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        let mut c = Map::new();
        c.insert("max_msg_fds".into(), Value::from(self.max_msg_fds));
        c.insert(
            "max_data_xfer_size".into(),
            Value::from(self.max_data_xfer_size),
        );
        c.insert("pgsizes".into(), Value::from(self.pgsizes));
        c.insert("max_dma_maps".into(), Value::from(self.max_dma_maps));
        if self.write_multiple {
            c.insert("write_multiple".into(), Value::Bool(true));
        }
        if let Some(m) = self.migration {
            let mut o = Map::new();
            o.insert("pgsize".into(), Value::from(m.pgsize));
            o.insert("max_bitmap_size".into(), Value::from(m.max_bitmap_size));
            c.insert("migration".into(), Value::Object(o));
        }
        if let Some(t) = self.twin_socket {
            let mut o = Map::new();
            o.insert("supported".into(), Value::Bool(t.supported));
            if let Some(i) = t.fd_index {
                o.insert("fd_index".into(), Value::from(i));
            }
            c.insert("twin_socket".into(), Value::Object(o));
        }
        let mut root = Map::new();
        root.insert("capabilities".into(), Value::Object(c));
        let mut out =
            serde_json::to_vec(&Value::Object(root)).map_err(CodecError::CapabilitiesJson)?;
        out.push(0);
        check_limit(
            u64::try_from(out.len()).unwrap_or(u64::MAX),
            MAX_CAPABILITIES_JSON as u64,
            "capabilities string length",
        )?;
        Ok(out)
    }

    /// The capabilities a server with `self` replies to a client that proposed `client`:
    /// the server's own limits; `write_multiple`, `migration` and `twin_socket` only if the
    /// client offered them too (the reply must be a subset of the proposal). A twin socket
    /// is never enabled here (that needs a socket pair and an fd index).
    pub fn server_reply(&self, client: &Capabilities) -> Capabilities {
        Capabilities {
            write_multiple: self.write_multiple && client.write_multiple,
            migration: self.migration.filter(|_| client.migration.is_some()),
            twin_socket: None,
            ..*self
        }
    }
}

/// The VERSION payload, the same shape both ways: major, minor, capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    /// Protocol major version.
    pub major: u16,
    /// Protocol minor version.
    pub minor: u16,
    /// The sender's capabilities.
    pub capabilities: Capabilities,
}

impl Version {
    /// Bytes before the capabilities string.
    pub const FIXED_SIZE: usize = 4;

    /// Our proposal as a client: [`PROTOCOL_MAJOR`].[`PROTOCOL_MINOR`] with
    /// [`Capabilities::local`].
    pub fn local() -> Self {
        Self {
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
            capabilities: Capabilities::local(),
        }
    }

    /// Parses a VERSION payload (request or reply).
    pub fn parse(payload: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(payload, "VERSION");
        let major = r.u16()?;
        let minor = r.u16()?;
        let capabilities = Capabilities::parse(r.rest())?;
        Ok(Self {
            major,
            minor,
            capabilities,
        })
    }

    /// Encodes the payload (always with a capabilities string).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        let json = self.capabilities.to_bytes()?;
        let mut out = Vec::with_capacity(Self::FIXED_SIZE.saturating_add(json.len()));
        put_u16(&mut out, self.major);
        put_u16(&mut out, self.minor);
        out.extend_from_slice(&json);
        Ok(out)
    }

    /// The server's reply to this client proposal: same major (else
    /// [`CodecError::IncompatibleVersion`], and the server closes the connection), the lower
    /// minor, and [`Capabilities::server_reply`].
    pub fn server_reply(&self, ours: &Capabilities) -> Result<Version, CodecError> {
        if self.major != PROTOCOL_MAJOR {
            return Err(CodecError::IncompatibleVersion {
                major: self.major,
                minor: self.minor,
            });
        }
        Ok(Version {
            major: PROTOCOL_MAJOR,
            minor: self.minor.min(PROTOCOL_MINOR),
            capabilities: ours.server_reply(&self.capabilities),
        })
    }

    /// Checks a server's reply against what this client proposed: same major, minor not
    /// above ours.
    pub fn check_server_reply(&self, proposed: &Version) -> Result<(), CodecError> {
        if self.major != proposed.major || self.minor > proposed.minor {
            return Err(CodecError::IncompatibleVersion {
                major: self.major,
                minor: self.minor,
            });
        }
        Ok(())
    }
}

fn json_u64(v: &Value, name: &'static str) -> Result<u64, CodecError> {
    v.as_u64().ok_or(CodecError::InvalidCapability(name))
}

fn json_u32(v: &Value, name: &'static str) -> Result<u32, CodecError> {
    json_u64(v, name)
        .and_then(|n| u32::try_from(n).map_err(|_| CodecError::InvalidCapability(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// QEMU's proposal (hw/vfio-user/proxy.c `caps_json()`), written compactly: the shortest
    /// form its JSON writer could produce, so a lower bound on its length.
    const QEMU_CAPS: &str = concat!(
        r#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"#,
        r#""max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"#,
        r#""max_dma_maps":65535,"write_multiple":true}}"#
    );

    fn version_payload(json: &[u8]) -> Vec<u8> {
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(json);
        p
    }

    #[test]
    fn qemu_proposal_parses() {
        let mut json = QEMU_CAPS.as_bytes().to_vec();
        json.push(0);
        let v = Version::parse(&version_payload(&json)).unwrap();
        assert_eq!((v.major, v.minor), (0, 0));
        let c = v.capabilities;
        assert_eq!(c.max_msg_fds, 16);
        assert_eq!(c.max_data_xfer_size, 1 << 20);
        assert_eq!(c.pgsizes, 4096);
        assert_eq!(c.max_dma_maps, 65535);
        assert!(c.write_multiple);
        assert_eq!(
            c.migration,
            Some(MigrationCapabilities {
                pgsize: 4096,
                max_bitmap_size: 256 << 20
            })
        );
        assert_eq!(c.twin_socket, None);
    }

    #[test]
    fn server_reply_to_qemu_fits_in_qemu_request_and_is_accepted_by_its_rules() {
        let mut json = QEMU_CAPS.as_bytes().to_vec();
        json.push(0);
        let proposal = Version::parse(&version_payload(&json)).unwrap();
        let reply = proposal.server_reply(&Capabilities::local()).unwrap();
        // QEMU refuses a minor above what it proposed, and receives into its request buffer.
        assert_eq!((reply.major, reply.minor), (0, 0));
        let bytes = reply.to_bytes().unwrap();
        assert!(bytes.len() <= 4 + json.len());
        // QEMU's caps checks: max_msg_fds <= 16, max_data_xfer_size <= 64 MiB,
        // max_dma_maps <= 65535, pgsizes a multiple of 4 KiB.
        let c = reply.capabilities;
        assert!(c.max_msg_fds <= 16 && c.max_data_xfer_size <= 64 << 20);
        assert!(c.max_dma_maps <= 65535 && c.pgsizes % 4096 == 0);
        assert!(!c.write_multiple && c.migration.is_none());
        assert_eq!(Version::parse(&bytes).unwrap(), reply);
        reply.check_server_reply(&proposal).unwrap();
    }

    #[test]
    fn version_round_trips_with_every_capability() {
        let v = Version {
            major: 0,
            minor: 1,
            capabilities: Capabilities {
                max_msg_fds: 3,
                max_data_xfer_size: 65536,
                pgsizes: 4096 | (2 << 20),
                max_dma_maps: 10,
                migration: Some(MigrationCapabilities {
                    pgsize: 8192,
                    max_bitmap_size: 1 << 20,
                }),
                twin_socket: Some(TwinSocket {
                    supported: true,
                    fd_index: Some(0),
                }),
                write_multiple: true,
            },
        };
        assert_eq!(Version::parse(&v.to_bytes().unwrap()).unwrap(), v);
        assert_eq!(
            Version::parse(&Version::local().to_bytes().unwrap()).unwrap(),
            Version::local()
        );
    }

    #[test]
    fn missing_json_and_missing_keys_take_spec_defaults() {
        assert_eq!(
            Version::parse(&[0, 0, 1, 0]).unwrap().capabilities,
            Capabilities::default()
        );
        let v = Version::parse(&version_payload(b"{}\0")).unwrap();
        assert_eq!(v.capabilities, Capabilities::default());
        let v = Version::parse(&version_payload(br#"{"capabilities":{"max_msg_fds":4}}"#)).err();
        assert!(matches!(v, Some(CodecError::CapabilitiesNotTerminated)));
        let v = Version::parse(&version_payload(
            b"{\"capabilities\":{\"max_msg_fds\":4}}\0",
        ))
        .unwrap();
        assert_eq!(
            v.capabilities,
            Capabilities {
                max_msg_fds: 4,
                ..Capabilities::default()
            }
        );
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let json = b"{\"x\":[1,2],\"capabilities\":{\"future\":{\"a\":1},\"pgsizes\":8192}}\0";
        let v = Version::parse(&version_payload(json)).unwrap();
        assert_eq!(v.capabilities.pgsizes, 8192);
    }

    #[test]
    fn capabilities_not_nul_terminated_are_refused() {
        assert!(matches!(
            Version::parse(&version_payload(b"{}")),
            Err(CodecError::CapabilitiesNotTerminated)
        ));
        // A second NUL is not JSON whitespace.
        assert!(matches!(
            Version::parse(&version_payload(b"{}\0\0")),
            Err(CodecError::CapabilitiesJson(_))
        ));
    }

    #[test]
    fn capabilities_json_too_long_is_refused() {
        let mut json = b"{\"pad\":\"".to_vec();
        json.resize(MAX_CAPABILITIES_JSON, b'a');
        json.extend_from_slice(b"\"}\0");
        assert!(matches!(
            Version::parse(&version_payload(&json)),
            Err(CodecError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn capabilities_that_are_not_json_are_refused() {
        for bad in [
            &b"\0"[..],
            b"{\0",
            b"not json\0",
            b"{\"a\":1,}\0",
            b"\xff\xfe\0",
        ] {
            assert!(matches!(
                Version::parse(&version_payload(bad)),
                Err(CodecError::CapabilitiesJson(_))
            ));
        }
    }

    #[test]
    fn capabilities_of_the_wrong_type_are_refused() {
        for bad in [
            &b"[]\0"[..],
            b"1\0",
            b"{\"capabilities\":[]}\0",
            b"{\"capabilities\":{\"max_msg_fds\":\"8\"}}\0",
            b"{\"capabilities\":{\"max_msg_fds\":-1}}\0",
            b"{\"capabilities\":{\"max_msg_fds\":4294967296}}\0",
            b"{\"capabilities\":{\"max_data_xfer_size\":1.5}}\0",
            b"{\"capabilities\":{\"write_multiple\":1}}\0",
            b"{\"capabilities\":{\"migration\":true}}\0",
            b"{\"capabilities\":{\"twin_socket\":{\"supported\":\"yes\"}}}\0",
            b"{\"capabilities\":{\"twin_socket\":{\"fd_index\":-3}}}\0",
        ] {
            assert!(
                matches!(
                    Version::parse(&version_payload(bad)),
                    Err(CodecError::InvalidCapability(_))
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn truncated_version_is_refused() {
        for len in 0..4 {
            assert!(matches!(
                Version::parse(&[0; 3][..len]),
                Err(CodecError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn server_refuses_another_major_and_lowers_the_minor() {
        let client = Version {
            major: 1,
            minor: 0,
            capabilities: Capabilities::default(),
        };
        assert!(matches!(
            client.server_reply(&Capabilities::local()),
            Err(CodecError::IncompatibleVersion { major: 1, .. })
        ));
        let client = Version {
            major: 0,
            minor: 7,
            ..client
        };
        assert_eq!(
            client.server_reply(&Capabilities::local()).unwrap().minor,
            PROTOCOL_MINOR
        );
    }

    #[test]
    fn server_reply_is_a_subset_of_the_proposal() {
        let ours = Capabilities {
            write_multiple: true,
            migration: Some(MigrationCapabilities {
                pgsize: 4096,
                max_bitmap_size: 1,
            }),
            twin_socket: Some(TwinSocket {
                supported: true,
                fd_index: Some(0),
            }),
            ..Capabilities::local()
        };
        let r = ours.server_reply(&Capabilities::default());
        assert!(!r.write_multiple && r.migration.is_none() && r.twin_socket.is_none());
        let client = Capabilities {
            write_multiple: true,
            migration: ours.migration,
            ..Capabilities::default()
        };
        let r = ours.server_reply(&client);
        assert!(r.write_multiple && r.migration.is_some());
    }

    #[test]
    fn client_refuses_a_reply_with_higher_minor_or_other_major() {
        let proposed = Version {
            major: 0,
            minor: 0,
            capabilities: Capabilities::local(),
        };
        let higher = Version {
            minor: 1,
            ..proposed
        };
        assert!(higher.check_server_reply(&proposed).is_err());
        let other = Version {
            major: 1,
            ..proposed
        };
        assert!(other.check_server_reply(&proposed).is_err());
        assert!(proposed.check_server_reply(&proposed).is_ok());
    }

    proptest! {
        #[test]
        fn version_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Version::parse(&bytes);
        }

        #[test]
        fn capabilities_parse_never_panics_on_json_like_text(s in "[{}\\[\\]\":,a-z0-9. -]{0,80}") {
            let mut b = s.into_bytes();
            b.push(0);
            let _ = Capabilities::parse(&b);
        }
    }
}
