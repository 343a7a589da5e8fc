//! The host's stdout carries event lines for the operator. A stdout that cannot take them
//! (here `/dev/full`: every write fails with ENOSPC) must not stop the device: it serves the
//! session, says once on stderr that it drops the events, and exits as it was told to.

use std::fs::OpenOptions;
use std::process::Command;
use std::time::Duration;

use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::{BlockDriver, Options};
use swiotlb_tests::{bin, disk_image, wait_for, ChildLog};

#[test]
fn a_stdout_that_fails_does_not_stop_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("host.sock");
    let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
    let log = ChildLog::new("swiotlb-host");
    let mut child = Command::new(bin("swiotlb-host"))
        .arg("--socket")
        .arg(&socket)
        .arg("--disk")
        .arg(&disk)
        .args(["--attestation", "off", "--sessions", "1", "--log", "info"])
        .stdout(full)
        .stderr(log.stdio())
        .env("NO_COLOR", "1")
        .spawn()
        .unwrap();
    wait_for(&socket);

    let client = VfioUserClient::connect(&socket).unwrap();
    let opts = Options {
        timeout: Duration::from_secs(5),
        ..Options::default()
    };
    let mut drv = BlockDriver::open(client, &opts).unwrap();
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    drv.write_at(4096, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    drv.read_at(4096, &mut back).unwrap();
    assert_eq!(back, data, "the device served the session");
    drop(drv);

    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        status.success(),
        "the host exits 0 after its one session, whatever its stdout: {status}"
    );
    assert_eq!(
        stderr.matches("stdout cannot take event lines").count(),
        1,
        "said once on stderr"
    );
    assert!(!stderr.contains("panicked"), "no panic");
}
