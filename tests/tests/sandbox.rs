//! The device process's sandbox, on by default: it reaches its disk image, its socket and its
//! audit log, and nothing else. The probes ask the sandboxed process itself.

use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::{BlockDriver, Options};
use swiotlb_tests::{disk_image, HostProcess};

#[test]
fn sandboxed_host_reaches_its_disk_and_log_but_no_other_file_and_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 1 << 20);
    // A file beside nothing the host needs, in a directory of its own.
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = elsewhere.path().join("secret.txt");
    std::fs::write(&secret, "not for the device").unwrap();
    let logdir = dir.path().join("audit");
    std::fs::create_dir(&logdir).unwrap();
    let log = logdir.join("device.jsonl");
    let host = HostProcess::spawn(
        dir.path(),
        &disk,
        &[
            "--log",
            "warn",
            "--require-sandbox",
            "--audit-log",
            log.to_str().unwrap(),
            "--sandbox-probe",
            secret.to_str().unwrap(),
            "--sandbox-probe",
            "/etc/passwd",
            "--sandbox-probe",
            disk.to_str().unwrap(),
        ],
    );
    let denied = host.event("sandbox_probe", 1);
    assert_eq!(denied["allowed"], false, "{denied}");
    assert!(
        denied["error"].as_str().unwrap().contains("denied"),
        "{denied}"
    );
    assert_eq!(host.event("sandbox_probe", 2)["allowed"], false);
    // The probe itself works: the disk image is reachable.
    assert_eq!(host.event("sandbox_probe", 3)["allowed"], true);

    // Under the sandbox the device still serves I/O and writes its audit log.
    let c = VfioUserClient::connect(&host.socket).unwrap();
    let mut drv = BlockDriver::open(c, &Options::default()).unwrap();
    drv.write_at(0, &[0x77; 4096]).unwrap();
    let mut back = vec![0u8; 4096];
    drv.read_at(0, &mut back).unwrap();
    assert_eq!(back, vec![0x77; 4096]);
    drop(drv);
    assert_eq!(host.session(1)["summary"]["findings"], 0);
    let files: Vec<_> = std::fs::read_dir(&logdir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().any(|f| f.ends_with(".jsonl")), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with(".key.pub")), "{files:?}");
}
