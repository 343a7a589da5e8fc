//! The systemd units in `deploy/systemd/` match the binary they start: every ExecStart line
//! parses with the real `swiotlb-host` and yields the sandbox expected; where
//! `systemd-analyze` is installed, the units verify and the unit's SystemCallFilter (the
//! second layer) lets through every call the process makes, so it cannot kill a correct
//! start.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use swiotlb_tests::bin;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy/systemd")
}

/// The unit's `key=` values, continuation lines joined.
fn values(unit: &str, key: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// ExecStart as the service manager would run it for instance `vm1` with a 16M pool.
fn exec_args(exec: &str) -> Vec<String> {
    let words: Vec<String> = exec
        .replace("%i", "vm1")
        .replace("${POOL_SIZE}", "16M")
        .split_whitespace()
        .filter(|w| *w != "$EXTRA_ARGS")
        .map(str::to_string)
        .collect();
    assert_eq!(words[0], "/usr/bin/swiotlb-host", "{exec}");
    words[1..].to_vec()
}

/// Runs the binary with the unit's arguments and `--print-sandbox`.
fn plan(args: &[String]) -> serde_json::Value {
    let out = Command::new(bin("swiotlb-host"))
        .args(args)
        .arg("--print-sandbox")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The queue workers the plan counts: one per queue when there are several, from the
/// CPUs the unit may use (at most 8), so the figure depends on the machine.
fn queue_workers(p: &serde_json::Value) -> u16 {
    let n = p["queue_workers"]
        .as_u64()
        .expect("queue_workers in the plan") as u16;
    assert!(n == 0 || (2..=8).contains(&n), "{n} queue workers");
    n
}

fn check_plan(p: &serde_json::Value) {
    assert_eq!(p["sandbox"], true);
    assert_eq!(
        p["address_space_limit"],
        swiotlb_host::sandbox::limits::address_space_limit(16 << 20, queue_workers(p))
    );
    assert!(p["seccomp"]["device"].as_array().unwrap().len() > 10);
    assert!(p["seccomp"]["audit-writer"].as_array().unwrap().len() > 10);
    assert_eq!(
        p["landlock"]["audit"][0],
        "/var/log/swiotlb/vm1/device.jsonl"
    );
}

#[test]
fn every_exec_start_parses_with_the_binary_and_sandboxes_it() {
    let unit = std::fs::read_to_string(deploy().join("swiotlb-host@.service")).unwrap();
    let execs = values(&unit, "ExecStart");
    assert_eq!(execs.len(), 1);
    let p = plan(&exec_args(&execs[0]));
    check_plan(&p);
    assert_eq!(p["landlock"]["disk"], "/var/lib/swiotlb/images/vm1.img");
    assert_eq!(p["landlock"]["socket"], serde_json::Value::Null);
    // The unit's writable path is the image the command line serves.
    assert_eq!(
        values(&unit, "ReadWritePaths"),
        vec!["/var/lib/swiotlb/images/%i.img"]
    );

    let dropin =
        std::fs::read_to_string(deploy().join("swiotlb-host@.service.d/open-file.conf")).unwrap();
    let execs: Vec<_> = values(&dropin, "ExecStart")
        .into_iter()
        .filter(|e| !e.is_empty())
        .collect();
    assert_eq!(execs.len(), 1);
    let p = plan(&exec_args(&execs[0]));
    check_plan(&p);
    // With the image passed in, no path of it is granted.
    assert_eq!(p["landlock"]["disk"], serde_json::Value::Null);
    assert_eq!(
        values(&dropin, "OpenFile"),
        vec!["/var/lib/swiotlb/images/%i.img:disk"]
    );

    let socket = std::fs::read_to_string(deploy().join("swiotlb-host@.socket")).unwrap();
    assert_eq!(values(&socket, "FileDescriptorName"), vec!["vfio-user"]);
    assert!(execs[0].contains("--listen-fd vfio-user"));
}

/// What `systemd-analyze syscall-filter` says each group holds.
fn syscall_groups() -> std::collections::BTreeMap<String, Vec<String>> {
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut groups = std::collections::BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_string());
            groups.insert(line.trim().to_string(), Vec::new());
        } else if let Some(g) = &current {
            let t = line.trim();
            if !t.is_empty() && !t.starts_with('#') {
                groups.get_mut(g).unwrap().push(t.to_string());
            }
        }
    }
    groups
}

fn expand(
    name: &str,
    groups: &std::collections::BTreeMap<String, Vec<String>>,
    out: &mut BTreeSet<String>,
) {
    match groups.get(name) {
        Some(members) => {
            for m in members {
                expand(m, groups, out);
            }
        }
        None => {
            assert!(!name.starts_with('@'), "unknown group {name}");
            out.insert(name.to_string());
        }
    }
}

/// Calls the process makes before its own filters are on (start-up, the sandbox itself,
/// binding and opening), as `strace -f` showed them on a full start with an audit log.
const START_UP: &[&str] = &[
    "execve",
    "brk",
    "arch_prctl",
    "set_tid_address",
    "set_robust_list",
    "rseq",
    "prlimit64",
    "mmap",
    "mprotect",
    "munmap",
    "openat",
    "read",
    "pread64",
    "close",
    "newfstatat",
    "statx",
    "access",
    "poll",
    "rt_sigaction",
    "rt_sigprocmask",
    "sigaltstack",
    "sched_getaffinity",
    "getrandom",
    "memfd_create",
    "ftruncate",
    // The disk ring, set up and restricted before the sandbox.
    "io_uring_setup",
    "io_uring_register",
    "fcntl",
    "write",
    "gettid",
    "prctl",
    "capget",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    "seccomp",
    "clone3",
    "futex",
    "getdents64",
    "rename",
    "mkdir",
    "fsync",
    "fdatasync",
    "getpid",
    "madvise",
    "exit",
];

#[test]
fn the_units_verify_and_their_syscall_filter_admits_every_call_the_process_makes() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "NOTE: systemd-analyze is not installed: the units were NOT verified and their \
             SystemCallFilter was NOT checked (install the systemd package to check them)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = bin("swiotlb-host");
    for name in ["swiotlb-host@.service", "swiotlb-host@.socket"] {
        let text = std::fs::read_to_string(deploy().join(name)).unwrap();
        let text = text.replace("/usr/bin/swiotlb-host", host.to_str().unwrap());
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("swiotlb-host@vm1.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("Unknown") && !stderr.contains("ignoring"),
        "{stderr}"
    );

    let unit = std::fs::read_to_string(deploy().join("swiotlb-host@.service")).unwrap();
    let groups = syscall_groups();
    let mut allowed = BTreeSet::new();
    let mut denied = BTreeSet::new();
    for v in values(&unit, "SystemCallFilter") {
        let (set, list) = match v.strip_prefix('~') {
            Some(rest) => (&mut denied, rest.to_string()),
            None => (&mut allowed, v.clone()),
        };
        for item in list.split_whitespace() {
            expand(item, &groups, set);
        }
    }
    let admitted: BTreeSet<_> = allowed.difference(&denied).cloned().collect();
    let p = plan(&exec_args(&values(&unit, "ExecStart")[0]));
    let mut used: BTreeSet<String> = START_UP.iter().map(|s| s.to_string()).collect();
    for role in ["device", "audit-writer"] {
        for c in p["seccomp"][role].as_array().unwrap() {
            used.insert(c["name"].as_str().unwrap().to_string());
        }
    }
    let refused: Vec<_> = used.difference(&admitted).collect();
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter refuses calls the process makes: {refused:?}"
    );
    // And it does refuse what a device never needs.
    for never in [
        "mount",
        "setuid",
        "ptrace",
        "kexec_load",
        "init_module",
        "capset",
    ] {
        assert!(!admitted.contains(never), "{never} admitted");
    }
}
