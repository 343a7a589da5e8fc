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
    /// Completions whose used length exceeded what was posted: clamped, and the device
    /// lying about them (virtio-blk does not rely on the used length).
    pub used_len_above_posted: u64,
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
        let lies = self.driver.ring_stats().bogus_len;
        if lies > self.stats.used_len_above_posted {
            if self.stats.used_len_above_posted == 0 {
                eprintln!("swiotlb-guest ublk: the device reported a used length above what was posted (clamped; counted in used_len_above_posted)");
            }
            self.stats.used_len_above_posted = lies;
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::testing::fake_device::{Behavior, FakeConfig, FakeDevice};
    use crate::Options;

    /// A request the fake kernel delivers: its tag, descriptor, and the data a write
    /// carries (placed in the tag's buffer before delivery).
    type Delivery = (u16, IoDesc, Option<Vec<u8>>);

    /// The kernel side, scripted: delivers batches of requests once their tags are free,
    /// records every commit (and what a read left in the tag's buffer), and aborts every
    /// tag once the script is done and nothing is outstanding.
    struct FakeKernel {
        depth: u16,
        buf_bytes: usize,
        descs: Vec<IoDesc>,
        bufs: Vec<u8>,
        script: VecDeque<Vec<Delivery>>,
        busy: Vec<bool>,
        queued: Vec<(u16, i32)>,
        commits: Vec<(u16, i32)>,
        read_back: Vec<(u16, Vec<u8>)>,
        waits: u32,
        aborted: bool,
    }

    impl FakeKernel {
        fn new(depth: u16, buf_bytes: usize, script: Vec<Vec<Delivery>>) -> Self {
            Self {
                depth,
                buf_bytes,
                descs: vec![IoDesc::default(); usize::from(depth)],
                bufs: vec![0u8; usize::from(depth) * buf_bytes],
                script: script.into(),
                busy: vec![false; usize::from(depth)],
                queued: Vec::new(),
                commits: Vec::new(),
                read_back: Vec::new(),
                waits: 0,
                aborted: false,
            }
        }
    }

    impl KernelQueue for FakeKernel {
        fn depth(&self) -> u16 {
            self.depth
        }
        fn buf_bytes(&self) -> usize {
            self.buf_bytes
        }
        fn desc(&self, tag: u16) -> Option<IoDesc> {
            self.descs.get(usize::from(tag)).copied()
        }
        fn buffers(&mut self) -> &mut [u8] {
            &mut self.bufs
        }
        fn fetch_all(&mut self) -> Result<(), UblkError> {
            Ok(())
        }
        fn commit(&mut self, tag: u16, result: i32) -> Result<(), UblkError> {
            self.queued.push((tag, result));
            Ok(())
        }
        fn arm_irq(&mut self) -> Result<(), UblkError> {
            Ok(())
        }
        fn wait(
            &mut self,
            timeout: Option<Duration>,
            on: &mut dyn FnMut(Event),
        ) -> Result<(), UblkError> {
            self.waits += 1;
            assert!(self.waits < 1_000_000, "the engine spins without progress");
            let mut delivered = !self.queued.is_empty();
            let mut on = |e| {
                delivered = true;
                on(e)
            };
            self.deliver(&mut on);
            // Like the kernel's wait, block for the timeout when there is nothing to deliver
            // (the fake has no interrupt to end it early). Without this the engine's wait for
            // a silent device is a spin whose count depends on the machine's speed.
            if let (false, Some(t)) = (delivered, timeout) {
                std::thread::sleep(t);
            }
            Ok(())
        }
    }

    impl FakeKernel {
        /// Commits what the engine queued, then hands out the next batch of the script if its
        /// tags are free, or aborts every tag once the script is done and no tag is busy.
        fn deliver(&mut self, on: &mut dyn FnMut(Event)) {
            for (tag, result) in std::mem::take(&mut self.queued) {
                let d = self.descs[usize::from(tag)];
                if d.op() == op::READ && result > 0 {
                    let at = usize::from(tag) * self.buf_bytes;
                    self.read_back
                        .push((tag, self.bufs[at..at + result as usize].to_vec()));
                }
                self.busy[usize::from(tag)] = false;
                self.commits.push((tag, result));
            }
            let free = |k: &Self, b: &[Delivery]| b.iter().all(|(t, ..)| !k.busy[usize::from(*t)]);
            if let Some(batch) = self.script.front() {
                if free(self, batch) {
                    let batch = self.script.pop_front().unwrap_or_default();
                    for (tag, desc, data) in batch {
                        self.descs[usize::from(tag)] = desc;
                        if let Some(d) = data {
                            let at = usize::from(tag) * self.buf_bytes;
                            self.bufs[at..at + d.len()].copy_from_slice(&d);
                        }
                        self.busy[usize::from(tag)] = true;
                        on(Event::Request(tag));
                    }
                }
            } else if !self.aborted && self.busy.iter().all(|b| !b) {
                self.aborted = true;
                for tag in 0..self.depth {
                    on(Event::Aborted(tag));
                }
            }
        }
    }

    fn desc(op: u8, sector: u64, sectors: u32) -> IoDesc {
        IoDesc {
            op_flags: u32::from(op),
            nr_sectors: sectors,
            start_sector: sector,
            addr: 0,
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn open(fake: &FakeDevice, timeout: Duration) -> BlockDriver<FakeDevice> {
        let opts = Options {
            timeout,
            ..Options::default()
        };
        BlockDriver::open(fake.clone(), &opts).unwrap()
    }

    #[test]
    fn block_requests_of_every_kind_are_served_through_the_pool() {
        let fake = FakeDevice::with_disk(pattern(4 << 20, 1)).unwrap();
        let mut drv = open(&fake, Duration::from_secs(5));
        let w = pattern(64 << 10, 9);
        let script = vec![
            vec![
                (0, desc(op::READ, 8, 16), None),
                (1, desc(op::WRITE, 100, 128), Some(w.clone())),
                (2, desc(op::FLUSH, 0, 0), None),
            ],
            vec![
                (0, desc(op::DISCARD, 1000, 8), None),
                (1, desc(op::WRITE_ZEROES, 2000, 4), None),
                (2, desc(9, 0, 1), None),
                (3, desc(op::READ, (4 << 20) / 512 - 1, 2), None),
            ],
        ];
        let (stats, kq) = run_to_end(&mut drv, FakeKernel::new(4, 1 << 20, script));
        let of = |tag: u16| -> Vec<i32> {
            kq.commits
                .iter()
                .filter(|c| c.0 == tag)
                .map(|c| c.1)
                .collect()
        };
        // READ 16 sectors at sector 8 reads what the disk holds there.
        let disk = fake.disk();
        assert_eq!(kq.read_back[0], (0, disk[8 * 512..24 * 512].to_vec()));
        // READ, then DISCARD on tag 0; WRITE, then WRITE_ZEROES on tag 1; FLUSH, then an
        // unknown operation (refused) on tag 2; a read past the end (an I/O error) on tag 3.
        assert_eq!(of(0), [8192, 0]);
        assert_eq!(of(1), [65536, 0]);
        assert_eq!(of(2), [0, -libc::EOPNOTSUPP]);
        assert_eq!(of(3), [-libc::EIO]);
        assert_eq!(&disk[100 * 512..100 * 512 + w.len()], &w[..]);
        assert!(
            disk[2000 * 512..2004 * 512].iter().all(|&b| b == 0),
            "write zeroes"
        );
        assert_eq!((stats.reads, stats.writes, stats.flushes), (1, 1, 1));
        assert!(stats.failure.is_none());
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    /// Runs the engine over `kq` to the end and returns the fake kernel.
    fn run_to_end(drv: &mut BlockDriver<FakeDevice>, kq: FakeKernel) -> (EngineStats, FakeKernel) {
        let mut e = Engine::new(drv, kq);
        let mut events = Vec::new();
        let mut timeout = None;
        loop {
            events.clear();
            e.kq.wait(timeout, &mut |ev| events.push(ev)).unwrap();
            for ev in events.drain(..) {
                match ev {
                    Event::Request(t) => e.accept(t).unwrap(),
                    Event::Aborted(_) => e.aborted += 1,
                    _ => {}
                }
            }
            if e.aborted >= e.kq.depth() {
                return (e.stats, e.kq);
            }
            timeout = e.pump().unwrap();
        }
    }

    #[test]
    fn a_request_larger_than_the_pool_is_split_and_a_full_pool_only_holds_requests_back() {
        let disk = pattern(8 << 20, 3);
        let fake = FakeDevice::new(FakeConfig::new(disk).with_pool_size(1 << 20)).unwrap();
        let mut drv = open(&fake, Duration::from_secs(5));
        assert!(drv.max_part_bytes() < 1 << 20);
        // 16 writes of 1 MiB at once, on a 1 MiB pool: each is split, most wait for room.
        let batch: Vec<Delivery> = (0..8u16)
            .map(|t| {
                let data = pattern(1 << 20, t as u8 + 40);
                (t, desc(op::WRITE, u64::from(t) * 2048, 2048), Some(data))
            })
            .collect();
        let reads: Vec<Delivery> = (0..8u16)
            .map(|t| (t, desc(op::READ, u64::from(t) * 2048, 2048), None))
            .collect();
        let kq = FakeKernel::new(8, 1 << 20, vec![batch, reads]);
        let (stats, kq) = run_to_end(&mut drv, kq);
        assert!(
            kq.commits.iter().all(|c| c.1 == 1 << 20),
            "{:?}",
            kq.commits
        );
        assert_eq!(kq.commits.len(), 16);
        assert!(stats.parts > 16, "each 1 MiB request is split: {stats:?}");
        assert!(
            stats.waits_for_room > 0,
            "the pool held requests back: {stats:?}"
        );
        let disk = fake.disk();
        for t in 0..8usize {
            let want = pattern(1 << 20, t as u8 + 40);
            assert_eq!(&disk[t << 20..(t + 1) << 20], &want[..], "write {t}");
            let got = kq.read_back.iter().find(|r| r.0 == t as u16).map(|r| &r.1);
            assert_eq!(got, Some(&want), "read {t}");
        }
    }

    #[test]
    fn a_used_length_above_what_was_posted_is_clamped_and_counted() {
        let disk = pattern(1 << 20, 7);
        let fake = FakeDevice::with_disk(disk.clone()).unwrap();
        let mut drv = open(&fake, Duration::from_secs(5));
        fake.set_behavior(Behavior {
            used_len_extra: 4096,
            ..Behavior::default()
        });
        let script = vec![vec![(0, desc(op::READ, 8, 8), None)]];
        let (stats, kq) = run_to_end(&mut drv, FakeKernel::new(1, 1 << 20, script));
        assert_eq!(kq.commits, [(0, 4096)]);
        assert_eq!(kq.read_back, [(0, disk[4096..8192].to_vec())]);
        assert_eq!(stats.used_len_above_posted, 1);
        assert!(stats.failure.is_none());
    }

    #[test]
    fn a_device_that_stops_answering_fails_every_request_within_the_timeout() {
        let fake = FakeDevice::with_disk(pattern(1 << 20, 5)).unwrap();
        let mut drv = open(&fake, Duration::from_millis(200));
        fake.set_behavior(Behavior {
            never_complete: true,
            ..Behavior::default()
        });
        let script = vec![
            vec![
                (0, desc(op::READ, 0, 8), None),
                (1, desc(op::WRITE, 8, 8), Some(vec![1; 4096])),
            ],
            vec![(2, desc(op::READ, 16, 8), None)],
        ];
        let t0 = Instant::now();
        let (stats, kq) = run_to_end(&mut drv, FakeKernel::new(3, 1 << 20, script));
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert_eq!(kq.commits.len(), 3);
        assert!(
            kq.commits.iter().all(|c| c.1 == -libc::EIO),
            "{:?}",
            kq.commits
        );
        assert!(
            stats
                .failure
                .as_deref()
                .is_some_and(|f| f.contains("did not complete")),
            "{stats:?}"
        );
        // Nothing of a failed read reached the kernel's buffer.
        assert!(kq.read_back.is_empty());
    }
}
