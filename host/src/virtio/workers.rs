//! Queue workers: with VIRTIO_BLK_F_MQ negotiated, each request queue is served by a thread
//! of its own, so queues run side by side (on different CPUs when there are any).
//!
//! The threads are started once, with the process, before the device thread's seccomp filter
//! (which allows no new thread), and each installs its own, narrower filter first thing. They
//! then park. The function hands a worker a [`Job`] (its queue's ring state, the pool view, the
//! part of the device serving the queue, its counters and its doorbell) when the device goes
//! live with the gate open, and takes the ring state back, the worker parked again, before
//! anything that changes what the worker relies on: a reset, a status or queue register write,
//! a BAR or MSI-X change, the end of the session, an orderly stop. So a worker never outlives
//! the session it served, and never runs while the pool is zeroed or the transport reset.
//!
//! A worker does what the device thread does for a lone queue: it waits on the queue's
//! doorbell eventfd (or polls the ring), checks every chain against the pool, hands it to the
//! device, returns it on the used ring and interrupts the driver on the queue's own MSI-X
//! vector. A finding is counted and logged by the worker itself; one that calls for a reset
//! sets a flag the device thread folds into the status register before it answers any
//! register access, and raises the configuration interrupt. The worker serves nothing after
//! that.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use seccompiler::BpfProgram;
use thiserror::Error;

use crate::audit::AuditHandle;
use crate::cpus::{pin_current_thread, CpuError, Placement};
use crate::findings::{self, Finding, FindingCounters};
use crate::pci::interrupts::Interrupts;
use crate::pool::PoolView;
use crate::virtio::device::QueueDevice;
use crate::virtio::metrics::DmaCounters;
use crate::virtio::queue_engine::{self, Processed, QueueWork, Rearm};

/// Stack of a worker thread: a pass over a queue needs little (the chain walk and the
/// device's request are on the heap), and every thread's stack counts against the address
/// space limit of the sandbox.
pub const WORKER_STACK: usize = 512 * 1024;

/// How many worker threads serve `queues` queues: one each when there are several; none
/// for one (the device thread serves it).
pub fn worker_threads(queues: u16) -> u16 {
    if queues > 1 {
        queues
    } else {
        0
    }
}
/// While polling, the stop flag and the idle time are looked at once per this many looks at
/// the ring (as the device thread does with its socket).
const POLL_CHECK_EVERY: u32 = 256;

/// Errors of starting the workers.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// An eventfd could not be made.
    #[error("worker eventfd")]
    Eventfd(#[source] std::io::Error),
    /// The thread could not be started.
    #[error("starting queue worker {0}")]
    Spawn(u16, #[source] std::io::Error),
    /// A worker could not install its seccomp filter (it has ended).
    #[error("queue worker {0} could not install its seccomp filter: {1}")]
    Filter(u16, String),
    /// A worker could not be moved to its CPU (`--queue-cpus`; it has ended).
    #[error("queue worker {0}")]
    Pin(u16, #[source] CpuError),
}

/// What the device thread shares with every worker of one run: how a worker reports a
/// finding and interrupts the driver.
pub(crate) struct Signals {
    /// Findings of the session, by kind.
    pub findings: Arc<FindingCounters>,
    /// The audit log, if there is one.
    pub audit: Option<AuditHandle>,
    /// A worker found something that needs a reset: the device thread sets
    /// DEVICE_NEEDS_RESET from it before it answers the next register access.
    pub needs_reset: AtomicBool,
    /// The interrupt eventfds the client set (the device thread changes them only while
    /// every worker is parked, but a SET_IRQS may come at any time, hence the lock).
    pub interrupts: Arc<Mutex<Interrupts>>,
    /// The ISR status byte (INTx).
    pub isr: Arc<AtomicU8>,
    /// MSI-X is enabled (else INTx, unless disabled).
    pub msix_active: bool,
    /// INTx is disabled in the command register.
    pub intx_disabled: bool,
    /// The configuration-change vector.
    pub config_vector: u16,
}

impl Signals {
    /// Interrupts the driver on `vector`; counts it in `dma` if one went out.
    fn raise(&self, vector: u16, dma: &DmaCounters) {
        let sent = if self.msix_active {
            lock(&self.interrupts).msix(vector)
        } else if !self.intx_disabled {
            self.isr.fetch_or(1, Ordering::AcqRel);
            lock(&self.interrupts).intx()
        } else {
            false
        };
        if sent {
            DmaCounters::add(&dma.interrupts, 1);
        }
    }

    /// Counts and logs `f`; when it calls for a reset, flags it and raises the
    /// configuration interrupt (once per run).
    fn record(&self, f: &Finding, dma: &DmaCounters) {
        self.findings.record(f);
        if let Some(h) = &self.audit {
            if let Err(e) = h.finding(f) {
                tracing::error!(error = %e, "audit log record lost: the writer stopped");
            }
        }
        if findings::needs_reset(f.kind) && !self.needs_reset.swap(true, Ordering::AcqRel) {
            // Configuration-change notification (virtio 1.2, 4.1.5.3).
            self.isr.fetch_or(2, Ordering::AcqRel);
            self.raise(self.config_vector, dma);
        }
    }
}

/// Locks `m`; a poisoned lock can only follow a panic, which aborts the process.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One queue, handed to its worker.
pub(crate) struct Job {
    /// The queue's index.
    pub q: u16,
    /// Its ring state; handed back when the worker parks.
    pub queue: virtio_queue::Queue,
    /// Its MSI-X vector.
    pub msix_vector: u16,
    /// The pool, as decoded when the job started.
    pub view: PoolView,
    /// VIRTIO_RING_F_INDIRECT_DESC was negotiated.
    pub indirect: bool,
    /// The part of the device serving the queue.
    pub device: Box<dyn QueueDevice + Send>,
    /// The queue's own DMA counters.
    pub dma: Arc<DmaCounters>,
    /// Findings and interrupts.
    pub signals: Arc<Signals>,
    /// The doorbell eventfd to wait on: the client's ioeventfd for the queue, or the
    /// worker's own, which the device thread writes when a doorbell arrives as a message.
    pub doorbell: Arc<OwnedFd>,
    /// How long to poll the ring after the last chain before sleeping (zero: never).
    pub poll: Duration,
}

/// Where a worker and the device thread meet.
enum Slot {
    /// Parked, nothing to do.
    Idle,
    /// A job to start.
    Start(Box<Job>),
    /// Serving.
    Running,
    /// Parked again, with the ring state of the job it served.
    Done(Box<virtio_queue::Queue>),
    /// End the thread.
    Exit,
}

struct Shared {
    slot: Mutex<Slot>,
    cv: Condvar,
    /// Set to end the running job.
    stop: AtomicBool,
    /// Written with `stop` so that a worker asleep on its doorbell wakes.
    wake: OwnedFd,
}

struct Worker {
    shared: Arc<Shared>,
    /// The worker's own doorbell, for clients that ring doorbells with messages.
    own_doorbell: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    /// The doorbell of the job running, if one is.
    running: Option<Arc<OwnedFd>>,
}

/// The parked worker threads of a device, one per queue.
pub struct QueueWorkers {
    workers: Vec<Worker>,
}

impl std::fmt::Debug for QueueWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueWorkers")
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl QueueWorkers {
    /// Starts `n` parked workers. Each moves to its CPU of `cpus` (when given), then
    /// installs `filter` (when given) on itself before it takes a job; a worker that cannot
    /// is an error here, and no worker runs unfiltered or elsewhere.
    pub fn spawn(
        n: u16,
        filter: Option<Arc<BpfProgram>>,
        cpus: Option<&Placement>,
    ) -> Result<Self, WorkerError> {
        let mut workers = Vec::with_capacity(usize::from(n));
        let mut ready = Vec::with_capacity(usize::from(n));
        for q in 0..n {
            let shared = Arc::new(Shared {
                slot: Mutex::new(Slot::Idle),
                cv: Condvar::new(),
                stop: AtomicBool::new(false),
                wake: eventfd().map_err(WorkerError::Eventfd)?,
            });
            let own_doorbell = Arc::new(eventfd().map_err(WorkerError::Eventfd)?);
            let (tx, rx) = std::sync::mpsc::channel();
            let s = shared.clone();
            let f = filter.clone();
            let cpu = cpus.and_then(|p| p.queue_list(q));
            let thread = std::thread::Builder::new()
                .name(format!("queue-{q}"))
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = pin_current_thread(&cpu) {
                            let _ = tx.send(Err(WorkerError::Pin(q, e)));
                            return;
                        }
                    }
                    if let Some(prog) = f {
                        if let Err(e) = seccompiler::apply_filter(&prog) {
                            let _ = tx.send(Err(WorkerError::Filter(q, e.to_string())));
                            return;
                        }
                    }
                    let _ = tx.send(Ok(()));
                    worker_main(&s);
                })
                .map_err(|e| WorkerError::Spawn(q, e))?;
            ready.push(rx);
            workers.push(Worker {
                shared,
                own_doorbell,
                thread: Some(thread),
                running: None,
            });
        }
        let me = Self { workers };
        for (q, rx) in ready.into_iter().enumerate() {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(WorkerError::Filter(q as u16, "thread ended".into())),
            }
        }
        Ok(me)
    }

    /// Workers started.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The worker's own doorbell for queue `q` (used when the client has no ioeventfds).
    pub(crate) fn own_doorbell(&self, q: u16) -> Option<Arc<OwnedFd>> {
        self.workers
            .get(usize::from(q))
            .map(|w| w.own_doorbell.clone())
    }

    /// Hands `job` to the worker of its queue. Returns the job back if there is no such
    /// worker or it is busy.
    pub(crate) fn start(&mut self, job: Job) -> Result<(), Box<Job>> {
        let Some(w) = self.workers.get_mut(usize::from(job.q)) else {
            return Err(Box::new(job));
        };
        let mut slot = lock(&w.shared.slot);
        if !matches!(*slot, Slot::Idle) {
            return Err(Box::new(job));
        }
        w.running = Some(job.doorbell.clone());
        *slot = Slot::Start(Box::new(job));
        w.shared.cv.notify_all();
        Ok(())
    }

    /// Whether queue `q`'s worker has a job.
    pub(crate) fn serving(&self, q: u16) -> bool {
        self.workers
            .get(usize::from(q))
            .is_some_and(|w| w.running.is_some())
    }

    /// Whether any worker has a job.
    pub(crate) fn any_serving(&self) -> bool {
        self.workers.iter().any(|w| w.running.is_some())
    }

    /// A doorbell for queue `q` came as a message: wakes its worker. Returns whether a
    /// worker serves `q`.
    pub(crate) fn ring(&self, q: u16) -> bool {
        let Some(fd) = self
            .workers
            .get(usize::from(q))
            .and_then(|w| w.running.as_ref())
        else {
            return false;
        };
        write_eventfd(fd);
        true
    }

    /// Ends every job: each worker finishes the pass it is in (every chain it took is
    /// completed and published) and parks. Returns each queue's ring state, by index.
    pub(crate) fn park_all(&mut self) -> Vec<(u16, virtio_queue::Queue)> {
        for w in self.workers.iter().filter(|w| w.running.is_some()) {
            w.shared.stop.store(true, Ordering::Release);
            write_eventfd(&w.shared.wake);
        }
        let mut back = Vec::new();
        for (q, w) in self.workers.iter_mut().enumerate() {
            if w.running.take().is_none() {
                continue;
            }
            let mut slot = lock(&w.shared.slot);
            loop {
                match std::mem::replace(&mut *slot, Slot::Idle) {
                    Slot::Done(queue) => {
                        back.push((q as u16, *queue));
                        break;
                    }
                    Slot::Start(job) => {
                        // Never taken: the ring state goes back untouched, and the wake-up
                        // meant for it is not left for the next job.
                        drain_eventfd(&w.shared.wake);
                        back.push((q as u16, job.queue));
                        break;
                    }
                    other => {
                        *slot = other;
                        slot = w
                            .shared
                            .cv
                            .wait(slot)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                }
            }
            w.shared.stop.store(false, Ordering::Release);
        }
        back
    }
}

impl Drop for QueueWorkers {
    fn drop(&mut self) {
        let _ = self.park_all();
        for w in &self.workers {
            *lock(&w.shared.slot) = Slot::Exit;
            w.shared.cv.notify_all();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// A worker's life: wait for a job, serve it until told to stop, hand the ring state back.
fn worker_main(s: &Shared) {
    loop {
        let job = {
            let mut slot = lock(&s.slot);
            loop {
                match std::mem::replace(&mut *slot, Slot::Idle) {
                    Slot::Start(job) => {
                        *slot = Slot::Running;
                        break job;
                    }
                    Slot::Exit => return,
                    other => {
                        *slot = other;
                        slot = s.cv.wait(slot).unwrap_or_else(PoisonError::into_inner);
                    }
                }
            }
        };
        let queue = serve(*job, s);
        // The stop request is consumed here, so the next job starts awake.
        drain_eventfd(&s.wake);
        *lock(&s.slot) = Slot::Done(Box::new(queue));
        s.cv.notify_all();
    }
}

/// Serves one job until `s.stop`; returns the ring state.
fn serve(job: Job, s: &Shared) -> virtio_queue::Queue {
    let Job {
        q,
        mut queue,
        msix_vector,
        view,
        indirect,
        mut device,
        dma,
        signals,
        doorbell,
        poll,
    } = job;
    let mut pass = |rearm: Rearm| -> bool {
        if signals.needs_reset.load(Ordering::Acquire) {
            return false; // The device needs a reset: nothing more is served.
        }
        let work = QueueWork {
            q,
            queue: &mut queue,
            msix_vector,
            device: device.as_mut(),
            indirect,
            dma: &dma,
            audit: signals.audit.as_ref(),
        };
        match queue_engine::process_queue(work, &view, rearm) {
            Ok(Processed { took, interrupt }) => {
                if let Some(v) = interrupt {
                    signals.raise(v, &dma);
                }
                took
            }
            Err(r) => {
                signals.record(&r.finding, &dma);
                if let Some(head) = r.head {
                    queue_engine::publish_rejected(&mut queue, &view.mem, head);
                }
                true
            }
        }
    };
    // What was rung before the job started (held while the gate was shut, say).
    pass(Rearm::Yes);
    let mut fds = [doorbell.as_raw_fd(), s.wake.as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    while !s.stop.load(Ordering::Acquire) {
        if !poll.is_zero() {
            let mut idle_since = Instant::now();
            let mut looks = 0u32;
            loop {
                if pass(Rearm::No) {
                    idle_since = Instant::now();
                }
                looks = looks.wrapping_add(1);
                if looks % POLL_CHECK_EVERY == 0
                    && (s.stop.load(Ordering::Acquire) || idle_since.elapsed() >= poll)
                {
                    break;
                }
                std::hint::spin_loop();
            }
            pass(Rearm::Yes);
            if s.stop.load(Ordering::Acquire) {
                break;
            }
        }
        for p in &mut fds {
            p.revents = 0;
        }
        // SAFETY: `fds` is a valid, exclusively borrowed array of two pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc <= 0 {
            continue; // Interrupted: look at the stop flag again.
        }
        if fds[1].revents != 0 {
            // A stop (the flag is set before the eventfd is written, and is looked at next),
            // or one left from a job called back before it started: consumed either way, so
            // the eventfd never stays readable under a running job.
            drain_eventfd(&s.wake);
        }
        if fds[0].revents != 0 {
            drain_eventfd(&doorbell);
            pass(Rearm::Yes);
        }
    }
    queue
}

/// A new non-blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd with constant flags; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to eventfd `fd` (a full counter is already readable, which is all a wake needs).
fn write_eventfd(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a local buffer to an eventfd owned by the caller.
    let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

/// Reads eventfd `fd` to zero (it is non-blocking).
fn drain_eventfd(fd: &OwnedFd) {
    let mut v = [0u8; 8];
    // SAFETY: reads 8 bytes into a local buffer from an eventfd owned by the caller.
    let _ = unsafe { libc::read(fd.as_raw_fd(), v.as_mut_ptr().cast(), v.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads of this process named `name` (the workers name theirs `queue-<q>`).
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim_end() == name)
            .count()
    }

    #[test]
    fn workers_park_until_given_a_job_and_are_joined_when_dropped() {
        // Only this test starts a third worker, so `queue-2` is ours.
        let before = threads_named("queue-2");
        let w = QueueWorkers::spawn(3, None, None).unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(threads_named("queue-2"), before + 1);
        assert!(!w.any_serving());
        // Nothing runs: a doorbell for a queue with no job reaches nobody.
        assert!(!w.ring(0));
        assert!(w.own_doorbell(2).is_some() && w.own_doorbell(3).is_none());
        drop(w);
        assert_eq!(threads_named("queue-2"), before, "joined when dropped");
    }

    #[test]
    fn a_worker_that_cannot_install_its_filter_is_an_error_not_an_unfiltered_thread() {
        // An empty program is refused by the filter installer.
        let err = QueueWorkers::spawn(2, Some(Arc::new(BpfProgram::new())), None).unwrap_err();
        assert!(matches!(err, WorkerError::Filter(0, _)), "{err}");
    }
}
