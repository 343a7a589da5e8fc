//! The OCSF versions a record may name, and all that differs between their layouts: which
//! version a record has, the device process as each names it (`process`, `actor`), and the
//! upgrade of an OCSF 1.5.0 record, read and never written, to the current layout.

use super::{Actor, Process, Record, User, PRODUCT_NAME};
use crate::audit::event::Envelope;

/// The OCSF versions whose layout a `swiotlb-audit/1` record may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OcsfVersion {
    /// The first layout, read and never written: it named OCSF 1.5.0, which has no
    /// Peripheral Activity class, and its Memory Activity lacked the `actor` that class
    /// requires. Its records name no user id, and no process outside Memory Activity.
    V1_5_0,
    /// The layout written: OCSF 1.7.0, the first version with every class used here
    /// (Peripheral Activity came in 1.7.0), each record valid against its schema. The
    /// records of the classes that have an `actor` name the device process as it.
    V1_7_0,
}

impl OcsfVersion {
    /// The version the writer writes.
    pub const CURRENT: OcsfVersion = OcsfVersion::V1_7_0;
    /// Every version a record may name, oldest first.
    pub const ALL: [OcsfVersion; 2] = [OcsfVersion::V1_5_0, OcsfVersion::V1_7_0];

    /// The version as `metadata.version` names it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::V1_5_0 => "1.5.0",
            Self::V1_7_0 => "1.7.0",
        }
    }

    /// The version named `s` exactly, if a record may name it.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }
}

/// The device process of `env` as OCSF's `process`.
pub(super) fn writer_process(env: &Envelope, version: OcsfVersion) -> Process {
    Process {
        pid: env.pid,
        name: PRODUCT_NAME.into(),
        user: match version {
            OcsfVersion::V1_5_0 => None,
            OcsfVersion::V1_7_0 => writer_user(env),
        },
    }
}

fn writer_user(env: &Envelope) -> Option<User> {
    env.uid.map(|u| User { uid: u.to_string() })
}

/// The device process of `env` as OCSF's `actor`; none in OCSF 1.5.0 records. A record
/// upgraded from 1.5.0 that did not name its process names the program instead.
pub(super) fn writer_actor(env: &Envelope, version: OcsfVersion) -> Option<Actor> {
    match version {
        OcsfVersion::V1_5_0 => None,
        OcsfVersion::V1_7_0 if env.pid == 0 => Some(Actor {
            process: None,
            user: writer_user(env),
            app_name: Some(PRODUCT_NAME.into()),
        }),
        OcsfVersion::V1_7_0 => Some(Actor {
            process: Some(writer_process(env, version)),
            user: writer_user(env),
            app_name: None,
        }),
    }
}

impl Record {
    /// The OCSF version whose layout this record has; `None` for a version no record of
    /// this schema has (such a record does not parse).
    pub fn ocsf_version(&self) -> Option<OcsfVersion> {
        OcsfVersion::from_name(&self.metadata.version)
    }

    /// This record in the layout of the OCSF version the writer writes: the same event in
    /// the same envelope. A record of that version is returned as it is; one of OCSF 1.5.0
    /// gains its `actor` (the process when it named one, else the program's name).
    pub fn upgraded(&self) -> Option<Record> {
        if self.ocsf_version() == Some(OcsfVersion::CURRENT) {
            return Some(self.clone());
        }
        Some(Record::build(&self.envelope(), self.event()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::Event;
    use crate::audit::ocsf::tests::{env, samples};
    use crate::audit::ocsf::SchemaError;

    #[test]
    fn records_of_ocsf_1_5_0_still_parse_and_upgrade_to_the_current_layout() {
        // A line as the first writer wrote it (from a real log of that layout).
        let old = concat!(
            r#"{"class_uid":1010,"class_name":"Peripheral Activity","category_uid":1,"#,
            r#""category_name":"System Activity","activity_id":1,"activity_name":"Connect","#,
            r#""type_uid":101001,"type_name":"Peripheral Activity: Connect","severity_id":1,"#,
            r#""severity":"Informational","time":1700000000123,"#,
            r#""message":"driver connect: /run/s.sock","metadata":{"version":"1.5.0","#,
            r#""product":{"name":"swiotlb-host","vendor_name":"swiotlb","version":"0.1.0"},"#,
            r#""log_name":"swiotlb-audit","log_version":"swiotlb-audit/1","sequence":1},"#,
            r#""device":{"type_id":99,"type":"Other","uid":"dev0","name":"virtio-blk swiotlb"},"#,
            r#""peripheral_device":{"class":"virtio-pci","name":"virtio-blk swiotlb","uid":"dev0"},"#,
            r#""unmapped":{"transcript_sha256":"0000000000000000000000000000000000000000000000000000000000000000","#,
            r#""prev_leaf":"abababababababababababababababababababababababababababababababab","#,
            r#""peripheral":{"action":"connect","peer":"/run/s.sock"}}}"#
        );
        let r = Record::parse(old.as_bytes()).unwrap();
        assert_eq!(r.ocsf_version(), Some(OcsfVersion::V1_5_0));
        assert_eq!(r.to_line(), old, "parsed as written");
        let up = r.upgraded().unwrap();
        assert_eq!(up.metadata.version, "1.7.0");
        assert_eq!(up.event(), r.event());
        // It named no process: the upgrade names the program, and invents no pid or uid.
        let a = up.actor.clone().unwrap();
        assert_eq!(a.app_name.as_deref(), Some("swiotlb-host"));
        assert!(a.process.is_none() && a.user.is_none());
        assert_eq!(Record::parse(up.to_line().as_bytes()).unwrap(), up);

        // Every event in the old layout round-trips in it; Memory Activity kept its pid.
        for e in samples() {
            let mut en = env(4);
            en.uid = None;
            if !matches!(e, Event::Dma(_) | Event::DmaSummary(_)) {
                en.pid = 0;
            }
            let r = Record::build_as(OcsfVersion::V1_5_0, &en, e.clone());
            assert!(r.actor.is_none());
            let p = Record::parse(r.to_line().as_bytes()).unwrap();
            assert_eq!(p, r);
            let up = p.upgraded().unwrap();
            if let Some(proc_) = &up.process {
                assert_eq!(proc_.pid, 4242);
                assert_eq!(up.actor.as_ref().unwrap().process.as_ref(), Some(proc_));
            }
            assert_eq!(up.event(), Some(e));
        }
    }

    #[test]
    fn a_record_mixing_the_layouts_or_naming_another_ocsf_version_is_refused() {
        let line = Record::build(&env(3), samples().remove(5)).to_line();
        assert!(line.contains("\"actor\""));
        // The actor does not belong in a 1.5.0 record.
        let mixed = line.replacen("\"version\":\"1.7.0\"", "\"version\":\"1.5.0\"", 1);
        assert!(matches!(
            Record::parse(mixed.as_bytes()),
            Err(SchemaError::Inconsistent(_))
        ));
        for v in ["1.8.0", "1.6.0", "1.7", ""] {
            let bad = line.replacen("\"version\":\"1.7.0\"", &format!("\"version\":\"{v}\""), 1);
            match Record::parse(bad.as_bytes()) {
                Err(SchemaError::UnknownOcsfVersion(got)) => assert_eq!(got, v),
                other => panic!("{v}: {other:?}"),
            }
        }
        // A 1.7.0 record whose actor is not the process it reports is refused.
        let other = line.replacen("\"uid\":\"1000\"", "\"uid\":\"0\"", 1);
        assert!(Record::parse(other.as_bytes()).is_err());
        let padded = line.replace("\"uid\":\"1000\"", "\"uid\":\"01000\"");
        assert!(Record::parse(padded.as_bytes()).is_err());
    }
}
