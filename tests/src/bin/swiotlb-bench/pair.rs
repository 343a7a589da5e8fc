//! A pair: one `swiotlb-host` process and the driver connected to it, and the files every
//! host of the run shares.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use swiotlb_attest::emulated::Signer;
use swiotlb_guest::attest::Emulated;
use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::{BlockDriver, Options};

use crate::cli::Config;
use crate::cpu::{pin_to, DRIVER_CPU, HOST_CPU};
use crate::error::BenchError;

/// How the two sides learn of each other's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Polling,
    Interrupt,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Polling => "polling",
            Self::Interrupt => "interrupt",
        }
    }
}

/// Files every host of the run shares: the disk image and the emulated ARK.
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
    pub(crate) disk: PathBuf,
    ark: PathBuf,
    signer_pk8: Vec<u8>,
}

impl Fixture {
    pub(crate) fn new(disk_bytes: u64) -> Result<Self, BenchError> {
        let dir = tempfile::tempdir().map_err(BenchError::TempDir)?;
        let disk = dir.path().join("disk.img");
        // Written (not sparse), so reads come from the page cache rather than a hole.
        let mut f = File::create(&disk).map_err(BenchError::CreateDisk)?;
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for _ in 0..disk_bytes >> 20 {
            f.write_all(&chunk).map_err(BenchError::WriteDisk)?;
        }
        let signer_pk8 = Signer::generate_ark_pkcs8().map_err(BenchError::EmulatedArk)?;
        let public = Signer::public_key_of(&signer_pk8).map_err(BenchError::EmulatedArk)?;
        let ark = dir.path().join("emulated-ark.pub");
        std::fs::write(&ark, public).map_err(BenchError::WriteArk)?;
        Ok(Self {
            dir,
            disk,
            ark,
            signer_pk8,
        })
    }
}

/// Audit settings of a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Audit {
    Off,
    Summary,
    Full,
}

impl Audit {
    /// The name in the report, the JSON keys and `swiotlb-host --audit-mode`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Summary => "summary",
            Self::Full => "full",
        }
    }
}

/// One `swiotlb-host` process and the driver connected to it.
pub(crate) struct Pair {
    pub(crate) host: Child,
    /// The host's audit directory, removed when the host has stopped.
    audit_dir: Option<PathBuf>,
    pub(crate) drv: BlockDriver<VfioUserClient>,
    pub(crate) doorbell_eventfds: usize,
}

impl Pair {
    pub(crate) fn start(
        cfg: &Config,
        fx: &Fixture,
        mode: Mode,
        audit: Audit,
        tag: &str,
    ) -> Result<Self, BenchError> {
        Self::start_queues(cfg, fx, mode, audit, tag, 1)
    }

    /// [`Pair::start`] with a host of `queues` request queues, every one set up by the
    /// driver (the driver of queue 0 in `drv`, the others from `drv.take_queues()`). One
    /// queue is the device without VIRTIO_BLK_F_MQ, served by the host's device thread.
    pub(crate) fn start_queues(
        cfg: &Config,
        fx: &Fixture,
        mode: Mode,
        audit: Audit,
        tag: &str,
        queues: u16,
    ) -> Result<Self, BenchError> {
        let socket = fx.dir.path().join(format!("{tag}.sock"));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(&cfg.host_bin);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--disk")
            .arg(&fx.disk)
            .args(["--io-engine", &cfg.io_engine])
            .args(["--queues", &queues.to_string()])
            .args(["--sessions", "1", "--log", "error"])
            .args([
                "--attestation",
                "required",
                "--allow-emulated",
                "--emulated-ark",
            ])
            .arg(&fx.ark);
        if mode == Mode::Polling {
            cmd.arg("--poll-us").arg(cfg.poll.as_micros().to_string());
        }
        let mut audit_dir = None;
        if audit != Audit::Off {
            let dir = cfg
                .audit_dir
                .as_deref()
                .unwrap_or(fx.dir.path())
                .join(format!("swiotlb-bench-audit-{}-{tag}", std::process::id()));
            cmd.arg("--audit-log")
                .arg(dir.join("device.jsonl"))
                .arg("--audit-mode")
                .arg(audit.name());
            audit_dir = Some(dir);
        }
        // Only polling needs each side on a CPU of its own; a sleeping side is woken
        // sooner wherever the scheduler finds a free CPU.
        let pin = cfg.pin && mode == Mode::Polling && queues == 1;
        if pin {
            // The whole host, its audit writer included, on HOST_CPU: the driver's CPU is the
            // guest's, which no host thread takes on a real machine.
            // SAFETY: between fork and exec the closure only calls sched_setaffinity,
            // which is async-signal-safe, on a set built on its own stack.
            unsafe {
                cmd.pre_exec(|| {
                    pin_to(Some(HOST_CPU));
                    Ok(())
                });
            }
        }
        let mut host = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::StartHost(cfg.host_bin.clone(), e))?;
        if pin {
            pin_to(Some(DRIVER_CPU));
        }
        let t = Instant::now();
        while !socket.exists() {
            if let Ok(Some(s)) = host.try_wait() {
                return Err(BenchError::HostExitedEarly(s));
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = host.kill();
                return Err(BenchError::HostNotListening);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let fail = |host: &mut Child, e: BenchError| {
            let _ = host.kill();
            let _ = host.wait();
            e
        };
        let client = match VfioUserClient::connect(&socket) {
            Ok(c) => c,
            Err(e) => return Err(fail(&mut host, BenchError::Connect(e))),
        };
        let doorbell_eventfds = client.eventfd_doorbells();
        let signer = Signer::from_pkcs8(&fx.signer_pk8).map_err(BenchError::EmulatedArk)?;
        let attester = Emulated::with_signer(signer);
        let opts = Options {
            poll: match mode {
                Mode::Polling => cfg.poll,
                Mode::Interrupt => Duration::ZERO,
            },
            queues,
            ..Options::default()
        };
        let drv = match BlockDriver::open_attested(client, &opts, Some(&attester)) {
            Ok(d) => d,
            Err(e) => return Err(fail(&mut host, BenchError::OpenDevice(e))),
        };
        if !drv.info().attestation.starts_with("accepted") {
            return Err(fail(
                &mut host,
                BenchError::NotAttested(drv.info().attestation.clone()),
            ));
        }
        Ok(Self {
            host,
            audit_dir,
            drv,
            doorbell_eventfds,
        })
    }

    pub(crate) fn stop(self) -> Result<(), BenchError> {
        let Self {
            mut host,
            audit_dir,
            drv,
            ..
        } = self;
        drop(drv);
        // The driver's thread may run anywhere again (a no-op when it was not pinned).
        pin_to(None);
        let r = wait_exit(&mut host);
        if let Some(d) = &audit_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        r
    }
}

/// Waits for a host to exit after its one session.
fn wait_exit(host: &mut Child) -> Result<(), BenchError> {
    let t = Instant::now();
    loop {
        match host.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(BenchError::HostExit(s)),
            Ok(None) if t.elapsed() > Duration::from_secs(10) => {
                let _ = host.kill();
                return Err(BenchError::HostDidNotExit);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(BenchError::WaitHost(e)),
        }
    }
}
