//! The scribbler: a second thread that keeps rewriting the data buffers, status bytes and
//! used elements of the chains the device just completed, while the driver reads them.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::device::{FakeDevice, FakeError, Inner};
use super::queue::Buf;
use crate::pool::{Mapping, PoolMemory};

/// Bytes a [`Scribbler`] fills completed data buffers with, alternately.
pub const SCRIBBLE_BYTES: [u8; 2] = [0x3c, 0xc3];
/// Status bytes a [`Scribbler`] writes over completed requests' status, in turn: OK, IOERR,
/// UNSUPP and a meaningless value.
pub const SCRIBBLE_STATUS: [u8; 4] = [0, 1, 2, 0x7f];

/// What a [`Scribbler`] keeps rewriting in the chains the device completed last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scribble {
    /// Every device-writable data buffer: filled with [`SCRIBBLE_BYTES`] in turn.
    pub data: bool,
    /// The status byte: [`SCRIBBLE_STATUS`] in turn.
    pub status: bool,
    /// The used element: in turn the real `(id, len)`, `(0xffff, len)`, `(id, u32::MAX)`,
    /// `(id, 0)`, `(id, 1)` (id and len stored separately, so a reader may see a mix).
    pub used: bool,
}

/// Targets of a running scribbler: BAR offsets of the last completed chains' parts.
#[derive(Debug, Default)]
pub(super) struct ScribbleState {
    what: Scribble,
    /// `(offset, len)` of data buffers.
    data: Vec<(u64, u64)>,
    /// Offsets of status bytes.
    status: Vec<u64>,
    /// `(offset, id, len)` of used elements.
    elems: Vec<(u64, u32, u32)>,
    /// Rounds of rewrites done.
    rounds: u64,
}

impl ScribbleState {
    fn idle(&self) -> bool {
        self.data.is_empty() && self.status.is_empty() && self.elems.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.data.clear();
        self.status.clear();
        self.elems.clear();
    }
}

pub(super) fn lock_state(m: &Mutex<ScribbleState>) -> MutexGuard<'_, ScribbleState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A thread rewriting pool memory behind the driver's back; see
/// [`FakeDevice::start_scribbler`]. Dropping it stops and joins the thread.
pub struct Scribbler {
    state: Arc<Mutex<ScribbleState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    dev: FakeDevice,
}

impl Scribbler {
    /// Forgets the current targets and returns once no rewrite is in progress: from then
    /// on nothing is written until the device completes another chain.
    pub fn quiesce(&self) {
        lock_state(&self.state).clear();
    }

    /// Rounds of rewrites done so far.
    pub fn rounds(&self) -> u64 {
        lock_state(&self.state).rounds
    }
}

impl Drop for Scribbler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.dev.lock().scribble = None;
    }
}

/// The scribbler thread: while it has targets, rewrites all of them, round after round.
fn scribble_loop(mem: PoolMemory, state: Arc<Mutex<ScribbleState>>, stop: Arc<AtomicBool>) {
    let mut fill = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let mut st = lock_state(&state);
        if st.idle() {
            drop(st);
            std::thread::sleep(Duration::from_micros(20));
            continue;
        }
        let r = st.rounds;
        if st.what.data {
            let byte = SCRIBBLE_BYTES[(r % 2) as usize];
            for &(o, l) in &st.data {
                fill.clear();
                fill.resize(l as usize, byte);
                let _ = mem.write(o, &fill);
            }
        }
        if st.what.status {
            let v = SCRIBBLE_STATUS[(r % 4) as usize];
            for &o in &st.status {
                let _ = mem.write(o, &[v]);
            }
        }
        if st.what.used {
            for &(o, id, len) in &st.elems {
                let (i, l) = match r % 5 {
                    0 => (id, len),
                    1 => (0xffff, len),
                    2 => (id, u32::MAX),
                    3 => (id, 0),
                    _ => (id, 1),
                };
                let _ = mem.store_u32(o, i);
                let _ = mem.store_u32(o + 4, l);
            }
        }
        st.rounds += 1;
        drop(st);
        std::thread::yield_now();
    }
}

impl FakeDevice {
    /// Starts a thread that, each time the device completes chains, keeps rewriting what
    /// `what` says of them (data buffers, status bytes, used elements) until
    /// [`Scribbler::quiesce`] or the next completion. The device waits for one round of
    /// rewrites before it publishes `used.idx`, so the driver never sees the completion
    /// as written, and the rewrites go on while the driver reads it.
    pub fn start_scribbler(&self, what: Scribble) -> Result<Scribbler, FakeError> {
        let mut i = self.lock();
        let len =
            usize::try_from(i.pool.size()).map_err(|_| FakeError::BadConfig("pool size".into()))?;
        let mem = PoolMemory::new(Mapping::shared(i.pool_fd.as_fd(), 0, len)?);
        let state = Arc::new(Mutex::new(ScribbleState {
            what,
            ..ScribbleState::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        i.scribble = Some(state.clone());
        drop(i);
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fake-scribbler".into())
            .spawn(move || scribble_loop(mem, st, sp))
            .map_err(FakeError::Memfd)?;
        Ok(Scribbler {
            state,
            stop,
            thread: Some(thread),
            dev: self.clone(),
        })
    }
}

impl Inner {
    /// BAR offsets of a chain's device-writable data bytes and of its status byte.
    pub(super) fn chain_targets(&self, chain: &[Buf]) -> (Vec<(u64, u64)>, Option<u64>) {
        let writable: Vec<&Buf> = chain.iter().filter(|c| c.writable).collect();
        let Some((status_buf, data)) = writable.split_last() else {
            return (Vec::new(), None);
        };
        let mut out: Vec<(u64, u64)> = data
            .iter()
            .filter_map(|d| Some((self.bar_offset(d.addr, u64::from(d.len))?, u64::from(d.len))))
            .collect();
        let len = u64::from(status_buf.len);
        let Some(o) = self.bar_offset(status_buf.addr, len).filter(|_| len > 0) else {
            return (out, None);
        };
        if len > 1 {
            out.push((o, len - 1));
        }
        (out, Some(o + len - 1))
    }

    /// Hands the scribbler (if any) its new targets and waits (at most a second) for one
    /// round of rewrites, so they land before the completion is published.
    pub(super) fn arm_scribbler(
        &mut self,
        data: Vec<(u64, u64)>,
        status: Vec<u64>,
        elems: Vec<(u64, u32, u32)>,
    ) {
        let Some(s) = self.scribble.clone() else {
            return;
        };
        let start = {
            let mut st = lock_state(&s);
            st.data = data;
            st.status = status;
            st.elems = elems;
            if st.idle() {
                return;
            }
            st.rounds
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        while lock_state(&s).rounds == start && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }
}
