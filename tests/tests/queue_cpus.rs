//! `--queue-cpus`: each queue's thread on its own CPU, every other thread (the audit
//! writer, the control thread) on the CPUs left, read back from the kernel
//! (`/proc/PID/task/*/status`) while the sandboxed host serves I/O; a CPU the process may
//! not use is refused with a clear error before anything is served.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::{BlockDriver, Options};
use swiotlb_host::cpus::CpuList;
use swiotlb_tests::{bin, disk_image, HostProcess};

const DISK_SIZE: u64 = 4 << 20;

/// The CPUs a task's `/proc/.../status` says it may run on (`Cpus_allowed_list`, the
/// kernel's list syntax, which the host's own `CpuList` reads).
fn allowed_in(status: &str) -> CpuList {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The CPUs the kernel lets each thread of `pid` run on, by thread name: (name, CPUs).
fn thread_cpus(pid: u32) -> Vec<(String, CpuList)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(t.join("comm")),
            std::fs::read_to_string(t.join("status")),
        ) else {
            continue;
        };
        out.push((comm.trim_end().to_string(), allowed_in(&status)));
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

/// The CPUs of the thread named `name` in `threads`.
fn cpus_of<'a>(threads: &'a [(String, CpuList)], name: &str) -> &'a [usize] {
    threads
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("a thread named {name} in {threads:?}"))
        .1
        .cpus()
}

/// The CPUs of this process, if there are at least two (the placements need a CPU for the
/// queue and one for the rest); says loudly when there are not.
fn two_cpus() -> Option<(usize, usize)> {
    let list = allowed_in(&std::fs::read_to_string("/proc/self/status").unwrap());
    let cpus = list.cpus();
    if cpus.len() < 2 {
        eprintln!(
            "\n*** NOT RUN: --queue-cpus placement needs two CPUs; this test runs on {list} ***\n"
        );
        return None;
    }
    Some((cpus[0], cpus[1]))
}

/// Opens the device with `queues` queues, writes and reads back through it, and returns the
/// driver: while it is connected the session, and so every queue thread, is alive.
fn serve_some_io(host: &HostProcess, queues: u16) -> BlockDriver<VfioUserClient> {
    let c = VfioUserClient::connect(&host.socket).unwrap();
    let opts = Options {
        queues,
        timeout: Duration::from_secs(5),
        ..Options::default()
    };
    let mut drv = BlockDriver::open(c, &opts).unwrap();
    let data: Vec<u8> = (0..16384u32).map(|i| (i * 13 + 1) as u8).collect();
    drv.write_at(8192, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    drv.read_at(8192, &mut back).unwrap();
    assert_eq!(back, data);
    drv
}

#[test]
fn one_queue_runs_alone_on_its_cpu_and_the_audit_writer_elsewhere() {
    let Some((a, b)) = two_cpus() else { return };
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", DISK_SIZE);
    let log = dir.path().join("audit").join("device.jsonl");
    let cpu = b.to_string();
    let mut host = HostProcess::spawn(
        dir.path(),
        &disk,
        &[
            "--queue-cpus",
            &cpu,
            "--poll-us",
            "50",
            "--audit-log",
            log.to_str().unwrap(),
            "--audit-mode",
            "full",
            "--sessions",
            "1",
        ],
    );
    let drv = serve_some_io(&host, 1);
    let threads = thread_cpus(host.pid());
    drop(drv);
    // Queue 0 is served by the device thread (named after the process) on CPU b alone.
    assert_eq!(cpus_of(&threads, "swiotlb-host"), [b], "{threads:?}");
    // The audit writer runs on what is left, which includes CPU a and not CPU b.
    let left = cpus_of(&threads, "swiotlb-audit");
    assert!(left.contains(&a) && !left.contains(&b), "{threads:?}");
    assert!(host.wait().success());
}

#[test]
fn each_queue_worker_runs_on_its_own_cpu() {
    let Some((a, b)) = two_cpus() else { return };
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", DISK_SIZE);
    // Given in reverse: queue 0 on b, queue 1 on a.
    let list = format!("{b},{a}");
    let mut host = HostProcess::spawn(
        dir.path(),
        &disk,
        &["--queues", "2", "--queue-cpus", &list, "--sessions", "1"],
    );
    let drv = serve_some_io(&host, 2);
    let threads = thread_cpus(host.pid());
    drop(drv);
    assert_eq!(cpus_of(&threads, "queue-0"), [b], "{threads:?}");
    assert_eq!(cpus_of(&threads, "queue-1"), [a], "{threads:?}");
    assert!(host.wait().success());
}

fn refused(dir: &Path, extra: &[&str]) -> String {
    let disk = disk_image(dir, "disk.img", DISK_SIZE);
    let out = Command::new(bin("swiotlb-host"))
        .arg("--socket")
        .arg(dir.join("host.sock"))
        .arg("--disk")
        .arg(&disk)
        .args(["--attestation", "off"])
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{extra:?} must be refused");
    assert!(!dir.join("host.sock").exists(), "nothing was served");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_cpu_the_process_may_not_use_or_too_few_cpus_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // CPU 1023 is a valid number and, on the machines this runs on, not one the process has.
    let e = refused(dir.path(), &["--queue-cpus", "1023"]);
    assert!(
        e.contains("--queue-cpus: CPU 1023 is not one this process may run on"),
        "{e}"
    );
    let e = refused(dir.path(), &["--queues", "2", "--queue-cpus", "0"]);
    assert!(
        e.contains("2 queues need 2 CPUs in --queue-cpus, 1 given"),
        "{e}"
    );
    let e = refused(dir.path(), &["--queue-cpus", "0,0"]);
    assert!(e.contains("CPU 0 is named twice"), "{e}");
}
