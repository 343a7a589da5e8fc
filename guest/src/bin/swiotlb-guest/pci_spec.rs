//! `--pci`: which PCI function of this machine the command means, and the sysfs directory
//! it names.

use std::path::{Path, PathBuf};

use swiotlb_guest::pci::discovery::{self, bdf_of, DiscoveryError};
use swiotlb_guest::pci::vfio::VFIO_PCI_DRIVER;
use thiserror::Error;

/// The PCI back end `--pci` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// sysfs `config` and `resourceN`.
    Sysfs,
    /// Kernel VFIO (`vfio-pci`).
    Vfio,
}

/// Which PCI function `--pci` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PciSpec {
    /// `<backend>:auto`: the only modern virtio-blk function the back end can drive.
    Auto(Backend),
    /// `<backend>:<BDF>`: that function (normalized as sysfs names it).
    Bdf(Backend, String),
}

/// What `--pci` takes, for messages.
pub const PCI_SPEC_USAGE: &str = "expected sysfs:auto, sysfs:DDDD:BB:DD.F, vfio:auto or vfio:DDDD:BB:DD.F (e.g. vfio:0000:00:04.0)";

/// Why `--pci` names no function to drive.
#[derive(Debug, Error)]
pub enum PciSpecError {
    /// `--pci` names no back end this program has.
    #[error("unknown PCI back end in {spec:?}; {PCI_SPEC_USAGE}")]
    UnknownBackend {
        /// What `--pci` said.
        spec: String,
    },
    /// `--pci` names no PCI address. (The address's error is part of the message, not a
    /// source: clap prints only the message of a value's error.)
    #[error("{why}; {PCI_SPEC_USAGE}")]
    BadAddress {
        /// What is wrong with the address.
        why: DiscoveryError,
    },
    /// No function the `auto` spec could mean.
    #[error("no virtio-blk function (1af4:1042) under {}", .dir.display())]
    NoFunction {
        /// The devices directory searched.
        dir: PathBuf,
    },
    /// `vfio:auto` found several candidates, or only functions other drivers own.
    #[error("not exactly one virtio-blk function (1af4:1042) under {} bound to vfio-pci (or, failing that, free of a driver): {found}; choose one with --pci vfio:<BDF>", .dir.display())]
    NotOneForVfio {
        /// The devices directory searched.
        dir: PathBuf,
        /// The functions found, with their drivers.
        found: String,
    },
    /// `sysfs:auto` found several candidates and not exactly one free of a driver.
    #[error("several virtio-blk functions (1af4:1042) under {} and not exactly one free of a kernel driver: {found}; choose one with --pci sysfs:<BDF>", .dir.display())]
    NotOneForSysfs {
        /// The devices directory searched.
        dir: PathBuf,
        /// The functions found, with their drivers.
        found: String,
    },
}

/// Parses `--pci`'s value.
pub fn parse_pci_spec(s: &str) -> Result<PciSpec, PciSpecError> {
    let (backend, rest) = match s.split_once(':') {
        Some(("sysfs", rest)) => (Backend::Sysfs, rest),
        Some(("vfio", rest)) => (Backend::Vfio, rest),
        _ => return Err(PciSpecError::UnknownBackend { spec: s.into() }),
    };
    if rest == "auto" {
        return Ok(PciSpec::Auto(backend));
    }
    discovery::parse_bdf(rest)
        .map(|bdf| PciSpec::Bdf(backend, bdf))
        .map_err(|why| PciSpecError::BadAddress { why })
}

/// Lists `found` with the driver each is bound to, for messages.
fn describe(found: &[PathBuf]) -> String {
    found
        .iter()
        .map(|p| match discovery::bound_driver(p) {
            Some(d) => format!("{} (bound to {d})", bdf_of(p)),
            None => bdf_of(p),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sysfs directory of the function `spec` names, under `sysfs_root`.
pub fn resolve_pci(spec: &PciSpec, sysfs_root: &Path) -> Result<PathBuf, PciSpecError> {
    let dir = discovery::devices_dir(sysfs_root);
    match spec {
        PciSpec::Bdf(_, bdf) => Ok(dir.join(bdf)),
        PciSpec::Auto(Backend::Vfio) => {
            let found = discovery::find_devices(sysfs_root);
            if found.is_empty() {
                return Err(PciSpecError::NoFunction { dir });
            }
            // The one vfio-pci owns; failing that, the one no driver owns (opening it then
            // says how to bind it to vfio-pci).
            let with = |want: Option<&str>| -> Vec<&PathBuf> {
                found
                    .iter()
                    .filter(|p| discovery::bound_driver(p).as_deref() == want)
                    .collect()
            };
            match (
                with(Some(VFIO_PCI_DRIVER)).as_slice(),
                with(None).as_slice(),
            ) {
                ([one], _) | ([], [one]) => Ok((*one).clone()),
                _ => Err(PciSpecError::NotOneForVfio {
                    found: describe(&found),
                    dir,
                }),
            }
        }
        PciSpec::Auto(Backend::Sysfs) => {
            let found = discovery::find_devices(sysfs_root);
            match found.as_slice() {
                [] => return Err(PciSpecError::NoFunction { dir }),
                [one] => return Ok(one.clone()),
                _ => {}
            }
            // Several: a function a kernel driver owns (the boot disk, typically) can never
            // be driven from here, so the one that no driver owns is meant.
            let free: Vec<&PathBuf> = found
                .iter()
                .filter(|p| discovery::bound_driver(p).is_none())
                .collect();
            if let [one] = free.as_slice() {
                return Ok((*one).clone());
            }
            Err(PciSpecError::NotOneForSysfs {
                found: describe(&found),
                dir,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `parse_pci_spec`'s value, or `Err(())`: its error is not comparable.
    fn parse_pci_spec_ok(s: &str) -> Result<PciSpec, ()> {
        parse_pci_spec(s).map_err(|_| ())
    }

    #[test]
    fn pci_specs() {
        assert_eq!(
            parse_pci_spec_ok("sysfs:auto"),
            Ok(PciSpec::Auto(Backend::Sysfs))
        );
        assert_eq!(
            parse_pci_spec_ok("sysfs:0000:00:04.0"),
            Ok(PciSpec::Bdf(Backend::Sysfs, "0000:00:04.0".into()))
        );
        assert_eq!(
            parse_pci_spec_ok("vfio:auto"),
            Ok(PciSpec::Auto(Backend::Vfio))
        );
        assert_eq!(
            parse_pci_spec_ok("vfio:0000:00:04.0"),
            Ok(PciSpec::Bdf(Backend::Vfio, "0000:00:04.0".into()))
        );
        assert_eq!(
            parse_pci_spec_ok("vfio:00:1F.7"),
            Ok(PciSpec::Bdf(Backend::Vfio, "0000:00:1f.7".into()))
        );
        for bad in [
            "",
            "sysfs",
            "sysfs:",
            "auto",
            "vfio",
            "vfio:",
            "vfio:AUTO",
            "vfio:0000:00:04",
            "vfio:../../x",
            "vfio-pci:0000:00:04.0",
            "uio:auto",
            "sysfs:0000:00:04",
            "sysfs:../../x",
            "SYSFS:auto",
            "VFIO:auto",
        ] {
            assert!(parse_pci_spec(bad).is_err(), "accepted {bad:?}");
        }
    }

    fn function(root: &Path, bdf: &str, vendor: &str, device: &str) {
        let d = discovery::devices_dir(root).join(bdf);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vendor"), vendor).unwrap();
        std::fs::write(d.join("device"), device).unwrap();
    }

    #[test]
    fn auto_needs_exactly_one_match() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let e = resolve_pci(&PciSpec::Auto(Backend::Sysfs), root)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no virtio-blk function"), "{e}");
        function(root, "0000:00:03.0", "0x8086\n", "0x100e\n");
        function(root, "0000:00:04.0", "0x1af4\n", "0x1042\n");
        assert_eq!(
            resolve_pci(&PciSpec::Auto(Backend::Sysfs), root).unwrap(),
            discovery::devices_dir(root).join("0000:00:04.0")
        );
        function(root, "0000:00:05.0", "0x1af4\n", "0x1042\n");
        let e = resolve_pci(&PciSpec::Auto(Backend::Sysfs), root)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("several") && e.contains("0000:00:04.0, 0000:00:05.0"),
            "{e}"
        );
        // One of the two owned by a kernel driver (a boot disk): the other is meant.
        let devs = discovery::devices_dir(root);
        let drv = root.join("bus/pci/drivers/virtio-pci");
        std::fs::create_dir_all(&drv).unwrap();
        std::os::unix::fs::symlink(&drv, devs.join("0000:00:04.0/driver")).unwrap();
        assert_eq!(
            resolve_pci(&PciSpec::Auto(Backend::Sysfs), root).unwrap(),
            devs.join("0000:00:05.0")
        );
        // Both owned: refused, saying so.
        std::os::unix::fs::symlink(&drv, devs.join("0000:00:05.0/driver")).unwrap();
        let e = resolve_pci(&PciSpec::Auto(Backend::Sysfs), root)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0000:00:04.0 (bound to virtio-pci), 0000:00:05.0 (bound to virtio-pci)"),
            "{e}"
        );
        // A single match is used even when bound: opening it then says how to unbind.
        std::fs::remove_dir_all(devs.join("0000:00:05.0")).unwrap();
        assert_eq!(
            resolve_pci(&PciSpec::Auto(Backend::Sysfs), root).unwrap(),
            devs.join("0000:00:04.0")
        );
        assert_eq!(
            resolve_pci(&PciSpec::Bdf(Backend::Sysfs, "0000:00:09.0".into()), root).unwrap(),
            discovery::devices_dir(root).join("0000:00:09.0")
        );
    }

    #[test]
    fn vfio_auto_takes_the_function_vfio_pci_owns_or_else_the_free_one() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let auto = PciSpec::Auto(Backend::Vfio);
        let devs = discovery::devices_dir(root);
        let bind = |bdf: &str, driver: &str| {
            let drv = root.join("bus/pci/drivers").join(driver);
            std::fs::create_dir_all(&drv).unwrap();
            let link = devs.join(bdf).join("driver");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&drv, link).unwrap();
        };
        let e = resolve_pci(&auto, root).unwrap_err().to_string();
        assert!(e.contains("no virtio-blk function"), "{e}");
        function(root, "0000:00:03.0", "0x8086\n", "0x100e\n");
        bind("0000:00:03.0", "vfio-pci"); // vfio-pci, but not virtio-blk: never chosen
        function(root, "0000:00:04.0", "0x1af4\n", "0x1042\n");
        // One, free: chosen (opening it says how to bind it).
        assert_eq!(resolve_pci(&auto, root).unwrap(), devs.join("0000:00:04.0"));
        // One, bound to another driver: refused, naming it.
        bind("0000:00:04.0", "virtio-pci");
        let e = resolve_pci(&auto, root).unwrap_err().to_string();
        assert!(e.contains("0000:00:04.0 (bound to virtio-pci)"), "{e}");
        // A second one bound to vfio-pci: that one.
        function(root, "0000:00:05.0", "0x1af4\n", "0x1042\n");
        bind("0000:00:05.0", "vfio-pci");
        assert_eq!(resolve_pci(&auto, root).unwrap(), devs.join("0000:00:05.0"));
        // vfio-pci wins over a free one.
        std::fs::remove_file(devs.join("0000:00:04.0/driver")).unwrap();
        assert_eq!(resolve_pci(&auto, root).unwrap(), devs.join("0000:00:05.0"));
        // Two bound to vfio-pci: refused, listing both.
        bind("0000:00:04.0", "vfio-pci");
        let e = resolve_pci(&auto, root).unwrap_err().to_string();
        assert!(
            e.contains("0000:00:04.0 (bound to vfio-pci), 0000:00:05.0 (bound to vfio-pci)")
                && e.contains("--pci vfio:<BDF>"),
            "{e}"
        );
        // Two free, none bound: refused.
        std::fs::remove_file(devs.join("0000:00:04.0/driver")).unwrap();
        std::fs::remove_file(devs.join("0000:00:05.0/driver")).unwrap();
        let e = resolve_pci(&auto, root).unwrap_err().to_string();
        assert!(e.contains("0000:00:04.0, 0000:00:05.0"), "{e}");
        // A BDF is taken as given.
        assert_eq!(
            resolve_pci(&PciSpec::Bdf(Backend::Vfio, "0000:00:09.0".into()), root).unwrap(),
            devs.join("0000:00:09.0")
        );
    }
}
