//! The device process's sandbox, on by default: it reaches its disk image, its socket and its
//! audit log, and nothing else. Each layer is shown to bite on the real binary: a forbidden
//! file, a forbidden system call from each thread, a mapping past the memory bound; and its
//! memory map during I/O holds no guest memory.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;

use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::{BlockDriver, Options};
use swiotlb_shared::vfio_user::{Command as VfioCommand, DmaMap};
use swiotlb_tests::{bin, disk_image, HostProcess, POOL_SIZE};

/// `/proc/<pid>/status` (or a thread's) field `name`.
fn status_field(status_path: &Path, name: &str) -> String {
    let s = std::fs::read_to_string(status_path).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {}", status_path.display()))
        .trim()
        .to_string()
}

/// Every thread of `pid` and its status file.
fn threads(pid: u32) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().path().join("status"))
        .collect()
}

#[test]
fn sandboxed_host_reaches_its_disk_and_log_but_no_other_file_and_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 1 << 20);
    // A file beside nothing the host needs, in a directory of its own.
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = elsewhere.path().join("secret.txt");
    std::fs::write(&secret, "not for the device").unwrap();
    let logdir = dir.path().join("audit");
    let log = logdir.join("device.jsonl");
    let host = HostProcess::spawn(
        dir.path(),
        &disk,
        &[
            "--log",
            "warn",
            "--queues",
            "2",
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

    // What the process says of itself, and what the kernel says of every thread.
    let sb = host.event("sandbox", 1);
    assert_eq!(sb["landlock"], "fully enforced", "{sb}");
    assert_eq!(sb["capabilities"], "none", "{sb}");
    assert_eq!(
        sb["seccomp"],
        serde_json::json!(["device", "audit-writer", "queue-worker"]),
        "{sb}"
    );
    let tasks = threads(host.pid());
    assert_eq!(
        tasks.len(),
        4,
        "the device thread, the audit writer and a worker per queue"
    );
    for t in &tasks {
        assert_eq!(status_field(t, "Seccomp"), "2", "{} filtered", t.display());
        assert_eq!(status_field(t, "NoNewPrivs"), "1", "{}", t.display());
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(
                status_field(t, set),
                "0000000000000000",
                "{set} of {}",
                t.display()
            );
        }
    }

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

/// Starts a host whose `thread` makes a forbidden call once sandboxed; returns how it ended.
fn forbidden_call_from(thread: &str) -> std::process::ExitStatus {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 1 << 20);
    let log = dir.path().join("audit").join("device.jsonl");
    let mut host = HostProcess::spawn(
        dir.path(),
        &disk,
        &[
            "--log",
            "error",
            "--audit-log",
            log.to_str().unwrap(),
            "--sandbox-probe-syscall",
            thread,
        ],
    );
    host.wait()
}

#[test]
fn a_forbidden_call_from_the_device_thread_kills_the_process() {
    let st = forbidden_call_from("device");
    assert_eq!(
        st.signal(),
        Some(libc::SIGSYS),
        "the device thread's forbidden socket(2) must kill the process: {st}"
    );
}

#[test]
fn a_forbidden_call_from_the_audit_writer_kills_the_process() {
    let st = forbidden_call_from("audit-writer");
    assert_eq!(
        st.signal(),
        Some(libc::SIGSYS),
        "the audit writer's forbidden socket(2) must kill the process: {st}"
    );
}

#[test]
fn a_mapping_past_the_memory_bound_is_refused_and_the_bound_is_what_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 1 << 20);
    let probes = ["--sandbox-probe-map", "1M", "--sandbox-probe-map", "1G"];
    let mut args = vec!["--log", "error"];
    args.extend(probes);
    let host = HostProcess::spawn(dir.path(), &disk, &args);
    let sandbox = host.event("sandbox", 1);
    let limit = sandbox["address_space_limit"].as_u64().unwrap();
    // Without --queues, one queue per CPU: a worker each when there are several.
    let workers = sandbox["queue_workers"].as_u64().unwrap() as u16;
    let cpus = std::thread::available_parallelism().unwrap().get() as u16;
    assert_eq!(
        workers,
        swiotlb_host::virtio::workers::worker_threads(cpus.min(8))
    );
    assert_eq!(
        limit,
        swiotlb_host::sandbox::limits::address_space_limit(POOL_SIZE, workers)
    );
    assert!(limit < 1 << 30);
    let small = host.event("sandbox_probe_map", 1);
    assert_eq!(small["allowed"], true, "{small}");
    let big = host.event("sandbox_probe_map", 2);
    assert_eq!(big["allowed"], false, "{big}");
    assert!(
        big["error"]
            .as_str()
            .unwrap()
            .contains("Cannot allocate memory"),
        "{big}"
    );
    // The process's limit, as the kernel holds it.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", host.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .unwrap();
    assert!(line.contains(&limit.to_string()), "{line}");
    drop(host);

    // Control: without the sandbox the same 1 GiB mapping goes through.
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 1 << 20);
    let mut args = vec!["--log", "error", "--sandbox", "off"];
    args.extend(probes);
    let host = HostProcess::spawn(dir.path(), &disk, &args);
    assert_eq!(host.event("sandbox_probe_map", 2)["allowed"], true);
}

/// The mappings of `pid` that are backed by something: `(range, perms, path)`.
fn file_mappings(pid: u32) -> Vec<(String, String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6).then(|| (f[0].to_string(), f[1].to_string(), f[5..].join(" ")))
        })
        .collect()
}

fn range_len(range: &str) -> u64 {
    let (a, b) = range.split_once('-').unwrap();
    u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap()
}

#[test]
fn during_io_the_device_maps_its_pool_binary_and_libraries_and_no_guest_memory() {
    const CANARY: &str = "guest-ram-canary";
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 8 << 20);
    let host = HostProcess::spawn(dir.path(), &disk, &["--log", "error"]);
    let pid = host.pid();
    // "Guest RAM" offered to the device the way a VMM offers it: DMA_MAP with an fd.
    let ram_path = dir.path().join(CANARY);
    let ram = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&ram_path)
        .unwrap();
    ram.set_len(4 << 20).unwrap();
    let mut client = VfioUserClient::connect(&host.socket).unwrap();
    let map = DmaMap {
        flags: 3,
        offset: 0,
        address: 0x1_0000_0000,
        size: 4 << 20,
    };
    client
        .call(VfioCommand::DmaMap, &map.to_bytes(), &[ram.as_raw_fd()])
        .unwrap();
    let mut drv = BlockDriver::open(client, &Options::default()).unwrap();
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    let mut back = vec![0u8; data.len()];
    let host_exe = std::fs::canonicalize(bin("swiotlb-host")).unwrap();
    let mut checked = 0;
    for round in 0..4u64 {
        drv.write_at(round << 20, &data).unwrap();
        // Mid-session, queues live, pool mapped: what does the device process map?
        let maps = file_mappings(pid);
        let mut pool_bytes = 0;
        for (range, perms, path) in &maps {
            assert!(!path.contains(CANARY), "guest RAM mapped: {range} {path}");
            assert!(!path.contains("disk.img"), "image mapped: {range} {path}");
            if path.starts_with("/memfd:swiotlb-pool") {
                assert!(perms.ends_with('s'), "the pool is a shared mapping");
                assert!(!perms.contains('x'), "pool executable: {perms}");
                pool_bytes += range_len(range);
            } else if path.starts_with('/') {
                let p = Path::new(path.trim_end_matches(" (deleted)"));
                let lib = p.starts_with("/lib")
                    || p.starts_with("/usr/lib")
                    || p.starts_with("/lib64")
                    || p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("ld-linux"));
                assert!(
                    lib || p == host_exe,
                    "unexpected file mapping {range} {perms} {path}"
                );
            } else if path == "anon_inode:[io_uring]" {
                // The disk ring's submission and completion queues: no guest memory.
                assert!(!perms.contains('x'), "ring executable: {perms}");
            } else {
                // [heap], [stack], [vdso], [vvar], [vsyscall] and anonymous memory.
                assert!(path.starts_with('['), "unexpected mapping {range} {path}");
            }
        }
        assert!(pool_bytes >= POOL_SIZE, "the pool is mapped during I/O");
        assert!(
            pool_bytes <= 2 * POOL_SIZE,
            "the pool at most twice (a BAR move): {pool_bytes}"
        );
        checked += maps.len();
        drv.read_at(round << 20, &mut back).unwrap();
        assert!(back == data);
    }
    assert!(checked > 0);
    // The DMA_MAP fd was not kept either.
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert!(
            !target.to_string_lossy().contains(CANARY),
            "fd kept: {}",
            target.display()
        );
    }
    drop(drv);
    let s = host.session(1);
    assert_eq!(s["summary"]["findings"], 0, "{s}");
    assert_eq!(s["protocol"]["dma_maps_ignored"], 1, "{s}");
}

/// Hands the child each `(fd, at)`: the fd appears at number `at`, open across exec, as a
/// supervisor passes it. Targets must not collide with sources of later pairs.
fn pass_fds(cmd: &mut Command, pairs: Vec<(i32, i32)>) {
    // Move every source out of the way first, so no target overwrites a later source.
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = Vec::with_capacity(pairs.len());
            for &(fd, _) in &pairs {
                let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (h, &(_, at)) in high.iter().zip(&pairs) {
                // dup2 to a different number clears close-on-exec on the copy.
                if libc::dup2(*h, at) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[test]
fn the_socket_and_the_image_can_be_passed_in_and_then_no_path_is_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("passed.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let image = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    let (lfd, dfd) = (listener.into_raw_fd(), image.into_raw_fd());
    let mut cmd = Command::new(bin("swiotlb-host"));
    cmd.args(["--listen-fd", "3", "--disk-fd", "4", "--attestation", "off"])
        .args(["--log", "warn", "--require-sandbox", "--sessions", "1"])
        .arg("--sandbox-probe")
        .arg(&disk);
    pass_fds(&mut cmd, vec![(lfd, 3), (dfd, 4)]);
    let mut host = HostProcess::start(cmd, socket.clone());
    // SAFETY: the parent's copies, no longer needed.
    unsafe {
        libc::close(lfd);
        libc::close(dfd);
    }
    // With the image passed in, not even its own path is reachable.
    let probe = host.event("sandbox_probe", 1);
    assert_eq!(probe["allowed"], false, "{probe}");
    let c = VfioUserClient::connect(&socket).unwrap();
    let mut drv = BlockDriver::open(c, &Options::default()).unwrap();
    drv.write_at(512, &[0x5a; 1024]).unwrap();
    drv.flush().unwrap();
    drop(drv);
    assert!(host.wait().success());
    let on_disk = std::fs::read(&disk).unwrap();
    assert_eq!(&on_disk[512..1536], &[0x5a; 1024][..]);
}

#[test]
fn passed_fds_that_are_not_what_they_claim_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 1 << 20);
    let run = |args: &[&str]| {
        let out = Command::new(bin("swiotlb-host"))
            .args(args)
            .args(["--attestation", "off"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let d = disk.to_str().unwrap();
    let sock = dir.path().join("s.sock");
    let s = sock.to_str().unwrap();
    assert!(run(&["--listen-fd", "9", "--disk", d]).contains("fd 9 is not open"));
    assert!(run(&["--listen-fd", "1", "--disk", d]).contains("standard stream"));
    assert!(run(&["--socket", s, "--disk-fd", "disk"]).contains("no passed fd named"));
    // An image opened read-only is refused for a writable disk.
    let ro = std::fs::File::open(&disk).unwrap();
    let fd = ro.as_raw_fd();
    let mut cmd = Command::new(bin("swiotlb-host"));
    cmd.args(["--socket", s, "--disk-fd", "5", "--attestation", "off"]);
    pass_fds(&mut cmd, vec![(fd, 5)]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opened read-only"), "{err}");
}

#[test]
fn started_as_root_with_user_the_device_runs_unprivileged() {
    // SAFETY: a getter.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 1 << 20);
    if !root {
        // Not root: the switch is refused with its reason (this is not the full check).
        eprintln!(
            "NOTE: not running as root: checking only that --user is refused; the switch to \
             an unprivileged user is tested when the suite runs as root (as CI does)"
        );
        let out = Command::new(bin("swiotlb-host"))
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .arg("--disk")
            .arg(&disk)
            .args(["--attestation", "off", "--user", "65534:65534"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("setgroups"));
        return;
    }
    // The image is root's, mode 0600: only its opening before the switch lets the device
    // serve it.
    std::fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut host = HostProcess::spawn(
        dir.path(),
        &disk,
        &["--log", "warn", "--user", "65534:65534", "--sessions", "1"],
    );
    let sb = host.event("sandbox", 1);
    assert_eq!(sb["uid"], 65534, "{sb}");
    assert_eq!(sb["gid"], 65534, "{sb}");
    assert_eq!(sb["switched_user"], true, "{sb}");
    for t in threads(host.pid()) {
        assert_eq!(
            status_field(&t, "Uid"),
            "65534\t65534\t65534\t65534",
            "{}",
            t.display()
        );
        assert_eq!(status_field(&t, "Groups"), "", "{}", t.display());
        assert_eq!(status_field(&t, "CapEff"), "0000000000000000");
    }
    let c = VfioUserClient::connect(&host.socket).unwrap();
    let mut drv = BlockDriver::open(c, &Options::default()).unwrap();
    drv.write_at(0, &[0xa5; 4096]).unwrap();
    let mut back = vec![0u8; 4096];
    drv.read_at(0, &mut back).unwrap();
    assert_eq!(back, vec![0xa5; 4096]);
    drop(drv);
    assert!(host.wait().success());
}

/// The call names listed in the table under `heading` in `docs/sandbox.md`.
fn documented_calls(doc: &str, heading: &str) -> std::collections::BTreeSet<String> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("docs/sandbox.md has no {heading:?}"));
    doc[start + heading.len()..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_sandbox_page_lists_exactly_the_calls_each_thread_is_allowed() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("docs/sandbox.md"),
    )
    .unwrap();
    let out = Command::new(bin("swiotlb-host"))
        .args(["--socket", "/run/x.sock", "--disk", "/x.img"])
        .args(["--audit-log", "/var/log/x/device.jsonl", "--print-sandbox"])
        .args(["--queues", "2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let both = documented_calls(&doc, "### Every thread");
    for (role, heading) in [
        ("device", "### The device thread, in addition"),
        ("audit-writer", "### The audit writer, in addition"),
        ("queue-worker", "### A queue worker, in addition"),
    ] {
        let mut documented = documented_calls(&doc, heading);
        documented.extend(both.iter().cloned());
        let allowed: std::collections::BTreeSet<String> = plan["seccomp"][role]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(documented, allowed, "{role}: docs/sandbox.md vs the binary");
    }
}
