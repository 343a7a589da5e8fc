//! One ublk queue served by one virtqueue: the loop that takes the kernel's block requests,
//! splits each into virtio-blk requests that fit the pool, posts them (waiting for room
//! when the pool or the ring is full: back-pressure, never an error), and commits each
//! block request once all its parts are done.
//!
//! Failure is an error, never a hang: when the device stops answering (the driver's
//! timeout), asks for a reset or resets itself, every request in flight and every later
//! one completes with `-EIO`, and one line on stderr says why. The engine never copies a
//! byte outside the tag buffers of the requests it serves and the pool slots it posted.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use swiotlb_shared::blk::SECTOR_SIZE;

use super::queue::Event;
use super::uapi::{op, IoDesc, IO_F_NOUNMAP};
use super::UblkError;
use crate::block::{BlockError, Request};
use crate::pci::PciAccess;
use crate::BlockDriver;

/// How long to wait between looks at the used ring when the device has no interrupt.
const POLL_NAP: Duration = Duration::from_micros(20);

/// The kernel side of a queue, as the engine needs it (a real ublk queue, or a test's).
pub trait KernelQueue {
    /// Tags of the queue.
    fn depth(&self) -> u16;
    /// Bytes of each tag's buffer.
    fn buf_bytes(&self) -> usize;
    /// The descriptor of `tag`'s request, read once.
    fn desc(&self, tag: u16) -> Option<IoDesc>;
    /// All tag buffers, tag after tag.
    fn buffers(&mut self) -> &mut [u8];
    /// Queues a fetch of every tag.
    fn fetch_all(&mut self) -> Result<(), UblkError>;
    /// Queues the commit of `tag` with `result`.
    fn commit(&mut self, tag: u16, result: i32) -> Result<(), UblkError>;
    /// Queues a read of the interrupt eventfd (a no-op without one).
    fn arm_irq(&mut self) -> Result<(), UblkError>;
    /// Submits and waits for completions (or `timeout`).
    fn wait(
        &mut self,
        timeout: Option<Duration>,
        on: &mut dyn FnMut(Event),
    ) -> Result<(), UblkError>;
}

impl KernelQueue for super::queue::UblkQueue {
    fn depth(&self) -> u16 {
        self.depth()
    }
    fn buf_bytes(&self) -> usize {
        self.buf_bytes()
    }
    fn desc(&self, tag: u16) -> Option<IoDesc> {
        self.desc(tag)
    }
    fn buffers(&mut self) -> &mut [u8] {
        self.buffers()
    }
    fn fetch_all(&mut self) -> Result<(), UblkError> {
        self.fetch_all()
    }
    fn commit(&mut self, tag: u16, result: i32) -> Result<(), UblkError> {
        self.commit(tag, result)
    }
    fn arm_irq(&mut self) -> Result<(), UblkError> {
        self.arm_irq()
    }
    fn wait(
        &mut self,
        timeout: Option<Duration>,
        on: &mut dyn FnMut(Event),
    ) -> Result<(), UblkError> {
        self.wait(timeout, on)
    }
}

/// What a queue did, for the summary line.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct EngineStats {
    /// Block requests completed, by operation.
    pub reads: u64,
    /// Writes.
    pub writes: u64,
    /// Flushes.
    pub flushes: u64,
    /// Discards.
    pub discards: u64,
    /// Write-zeroes.
    pub write_zeroes: u64,
    /// Bytes read and written.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// virtio-blk requests posted (a block request is one or more).
    pub parts: u64,
    /// Times a part waited because the pool or the ring was full.
    pub waits_for_room: u64,
    /// Block requests completed with an error.
    pub errors: u64,
    /// Why the device was given up, when it was.
    pub failure: Option<String>,
}

/// One virtio-blk request to post for a tag.
#[derive(Debug, Clone, Copy)]
struct Part {
    tag: u16,
    kind: PartKind,
}

#[derive(Debug, Clone, Copy)]
enum PartKind {
    /// Read `len` bytes at `sector` into the buffer area at `at`.
    Read {
        sector: u64,
        len: u32,
        at: usize,
    },
    /// Write `len` bytes from the buffer area at `at` to `sector`.
    Write {
        sector: u64,
        len: u32,
        at: usize,
    },
    Flush,
    Discard {
        sector: u64,
        sectors: u32,
    },
    WriteZeroes {
        sector: u64,
        sectors: u32,
        unmap: bool,
    },
}

/// A tag's block request while its parts are out.
#[derive(Debug, Clone, Copy, Default)]
struct TagState {
    /// Parts not yet completed (posted or waiting for room).
    left: u32,
    /// Result to commit: bytes, or the first part's negative errno.
    result: i32,
}

/// Serves one queue until the kernel aborts every tag (the device stopped or was deleted).
pub struct Engine<'d, P: PciAccess, K: KernelQueue> {
    driver: &'d mut BlockDriver<P>,
    kq: K,
    tags: Vec<TagState>,
    backlog: VecDeque<Part>,
    aborted: u16,
    /// Largest part, in bytes (fits the pool with nothing else in flight).
    part_bytes: u32,
    capacity: u64,
    /// When the device last showed progress while parts were in flight.
    last_progress: Instant,
    failure: Option<String>,
    stats: EngineStats,
    has_irq: bool,
}

impl<'d, P: PciAccess, K: KernelQueue> Engine<'d, P, K> {
    /// An engine for `kq` over `driver`.
    pub fn new(driver: &'d mut BlockDriver<P>, kq: K) -> Self {
        let depth = usize::from(kq.depth());
        let part_bytes = u32::try_from(driver.max_part_bytes()).unwrap_or(u32::MAX);
        let capacity = driver.info().capacity;
        let has_irq = driver.has_interrupt();
        Self {
            driver,
            kq,
            tags: vec![TagState::default(); depth],
            backlog: VecDeque::new(),
            aborted: 0,
            part_bytes,
            capacity,
            last_progress: Instant::now(),
            failure: None,
            stats: EngineStats::default(),
            has_irq,
        }
    }

    /// Runs until every tag is aborted; returns what was done.
    pub fn run(mut self) -> Result<EngineStats, UblkError> {
        self.kq.fetch_all()?;
        self.kq.arm_irq()?;
        let mut events = Vec::new();
        let mut timeout = None;
        loop {
            events.clear();
            self.kq.wait(timeout, &mut |e| events.push(e))?;
            for e in events.drain(..) {
                match e {
                    Event::Request(tag) => self.accept(tag)?,
                    Event::Aborted(_) => self.aborted += 1,
                    Event::Failed(tag, errno) => {
                        eprintln!("swiotlb-guest ublk: the kernel refused a command on tag {tag}: errno {errno}");
                        self.aborted += 1;
                    }
                    Event::Interrupt => self.kq.arm_irq()?,
                }
            }
            if self.aborted >= self.kq.depth() {
                return Ok(self.stats);
            }
            timeout = self.pump()?;
        }
    }

    /// Takes the request the kernel delivered on `tag`.
    fn accept(&mut self, tag: u16) -> Result<(), UblkError> {
        let Some(d) = self.kq.desc(tag) else {
            return Ok(());
        };
        if self.failure.is_some() {
            self.stats.errors += 1;
            return self.kq.commit(tag, -libc::EIO);
        }
        let parts = match self.split(tag, &d) {
            Ok(p) => p,
            Err(errno) => {
                self.stats.errors += 1;
                return self.kq.commit(tag, -errno);
            }
        };
        let bytes = u64::from(d.nr_sectors) * SECTOR_SIZE;
        match d.op() {
            op::READ => {
                (self.stats.reads, self.stats.read_bytes) =
                    (self.stats.reads + 1, self.stats.read_bytes + bytes)
            }
            op::WRITE => {
                (self.stats.writes, self.stats.write_bytes) =
                    (self.stats.writes + 1, self.stats.write_bytes + bytes)
            }
            op::FLUSH => self.stats.flushes += 1,
            op::DISCARD => self.stats.discards += 1,
            _ => self.stats.write_zeroes += 1,
        }
        let result = if matches!(d.op(), op::READ | op::WRITE) {
            i32::try_from(bytes).unwrap_or(i32::MAX)
        } else {
            0
        };
        if let Some(t) = self.tags.get_mut(usize::from(tag)) {
            *t = TagState {
                left: parts.len() as u32,
                result,
            };
        }
        self.backlog.extend(parts);
        Ok(())
    }

    /// The parts of `d`, or the errno to fail it with at once.
    fn split(&self, tag: u16, d: &IoDesc) -> Result<Vec<Part>, i32> {
        let bytes = u64::from(d.nr_sectors) * SECTOR_SIZE;
        let ranged = matches!(
            d.op(),
            op::READ | op::WRITE | op::DISCARD | op::WRITE_ZEROES
        );
        if ranged {
            let end = d
                .start_sector
                .checked_mul(SECTOR_SIZE)
                .and_then(|o| o.checked_add(bytes));
            if end.is_none_or(|e| e > self.capacity) {
                return Err(libc::EIO);
            }
        }
        let base = usize::from(tag) * self.kq.buf_bytes();
        match d.op() {
            op::READ | op::WRITE => {
                if bytes > self.kq.buf_bytes() as u64 {
                    return Err(libc::EIO);
                }
                let mut parts = Vec::new();
                let mut done = 0u64;
                while done < bytes {
                    let len = (bytes - done).min(u64::from(self.part_bytes)) as u32;
                    let sector = d.start_sector + done / SECTOR_SIZE;
                    let at = base + done as usize;
                    let kind = if d.op() == op::READ {
                        PartKind::Read { sector, len, at }
                    } else {
                        PartKind::Write { sector, len, at }
                    };
                    parts.push(Part { tag, kind });
                    done += u64::from(len);
                }
                Ok(parts)
            }
            op::FLUSH => Ok(vec![Part {
                tag,
                kind: PartKind::Flush,
            }]),
            op::DISCARD => Ok(vec![Part {
                tag,
                kind: PartKind::Discard {
                    sector: d.start_sector,
                    sectors: d.nr_sectors,
                },
            }]),
            op::WRITE_ZEROES => Ok(vec![Part {
                tag,
                kind: PartKind::WriteZeroes {
                    sector: d.start_sector,
                    sectors: d.nr_sectors,
                    unmap: (d.op_flags >> 8) & (IO_F_NOUNMAP >> 8) == 0,
                },
            }]),
            _ => Err(libc::EOPNOTSUPP),
        }
    }

    /// Reaps completions, posts what waits, and says how long to sleep.
    fn pump(&mut self) -> Result<Option<Duration>, UblkError> {
        if self.failure.is_none() {
            if let Err(e) = self.progress() {
                self.fail(&e)?;
            }
        }
        if self.failure.is_some() || self.driver.in_flight() == 0 {
            return Ok(None);
        }
        let deadline = self.last_progress + self.driver.timeout();
        let now = Instant::now();
        if now >= deadline {
            let why = self.driver.diagnose_stall();
            self.fail(&why)?;
            return Ok(None);
        }
        if !self.has_irq {
            return Ok(Some(POLL_NAP.min(deadline - now)));
        }
        // Ask for an interrupt, then look once more: a completion that landed before the
        // request for an interrupt would otherwise wait for the deadline.
        match self.driver.arm_interrupt() {
            Ok(true) => Ok(Some(Duration::ZERO)),
            Ok(false) => Ok(Some(deadline - now)),
            Err(e) => {
                self.fail(&e)?;
                Ok(None)
            }
        }
    }

    /// Completes what the device finished and posts what fits.
    fn progress(&mut self) -> Result<(), BlockError> {
        loop {
            let done = self.driver.poll_completion(self.kq.buffers())?;
            let Some((token, r)) = done else { break };
            self.last_progress = Instant::now();
            self.part_done(token as u16, r.map_err(|e| e.errno()))
                .map_err(|_| BlockError::Stopped)?;
        }
        let mut posted = false;
        while let Some(p) = self.backlog.front().copied() {
            if self.driver.in_flight() == 0 {
                self.last_progress = Instant::now();
            }
            let bufs = self.kq.buffers();
            let req = match p.kind {
                PartKind::Read { sector, len, at } => Request::Read { sector, len, at },
                PartKind::Write { sector, len, at } => Request::Write {
                    sector,
                    data: &bufs[at..at + len as usize],
                },
                PartKind::Flush => Request::Flush,
                PartKind::Discard { sector, sectors } => Request::Discard { sector, sectors },
                PartKind::WriteZeroes {
                    sector,
                    sectors,
                    unmap,
                } => Request::WriteZeroes {
                    sector,
                    sectors,
                    unmap,
                },
            };
            if !self.driver.try_submit(&req, u64::from(p.tag))? {
                if self.driver.in_flight() == 0 {
                    // Nothing will free room: a part that does not fit an empty pool (parts
                    // are sized so that this cannot happen).
                    return Err(BlockError::PoolExhausted(u64::from(self.part_bytes)));
                }
                self.stats.waits_for_room += 1;
                break;
            }
            self.stats.parts += 1;
            posted = true;
            self.backlog.pop_front();
        }
        if posted {
            self.driver.kick()?;
        }
        Ok(())
    }

    /// One part of `tag` finished with `r`; commits the tag when it was the last.
    fn part_done(&mut self, tag: u16, r: Result<(), i32>) -> Result<(), UblkError> {
        let Some(t) = self.tags.get_mut(usize::from(tag)) else {
            return Ok(());
        };
        if let Err(errno) = r {
            if t.result >= 0 {
                t.result = -errno;
            }
        }
        t.left = t.left.saturating_sub(1);
        if t.left == 0 {
            let result = t.result;
            if result < 0 {
                self.stats.errors += 1;
            }
            self.kq.commit(tag, result)?;
        }
        Ok(())
    }

    /// Gives the device up: every tag with parts out completes with `-EIO` now, and every
    /// later request at once.
    fn fail(&mut self, why: &BlockError) -> Result<(), UblkError> {
        let line = swiotlb_shared::error_chain(why);
        eprintln!("swiotlb-guest ublk: the device failed ({line}); every request now completes with an I/O error");
        self.failure = Some(line.clone());
        self.stats.failure = Some(line);
        self.backlog.clear();
        for tag in 0..self.kq.depth() {
            let t = &mut self.tags[usize::from(tag)];
            if t.left > 0 {
                t.left = 0;
                self.stats.errors += 1;
                self.kq.commit(tag, -libc::EIO)?;
            }
        }
        Ok(())
    }
}
