//! The device side of one frontend connection: [`BlkBackend`] runs a
//! virtqueue's requests when its worker thread
//! ([`crate::vhost_user::worker`]) asks, and answers what the protocol
//! handler ([`crate::vhost_user::connection`]) asks of the device.
//!
//! All methods take `&self`; the state the frontend changes (acked features,
//! write-back) sits behind atomics and guest memory behind the atomic map the
//! handler replaces, so that every virtqueue runs on its own worker thread
//! without contention.

use crate::device::config::{DeviceConfig, WCE_OFFSET};
use crate::device::engine::queue::{AsyncQueue, Context};
use crate::device::engine::syncer::Syncer;
use crate::device::engine::EngineConfig;
use crate::device::parallel::{Helpers, MIN_SPLIT};
use crate::device::request::{Completion, Request, RequestContext, RequestType, MAX_BATCH};
use crate::disk::BlockDevice;
use crate::metrics::{DiskMetrics, Done, QueueMetrics, ReqKind, Started, Status};
use crate::vhost_user::vring::Vring;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use smallvec::SmallVec;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_FLUSH};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

/// Guest memory as the vhost-user daemon shares it with the backend.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Request counters of one connection, for the log line at disconnect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests completed.
    pub requests: u64,
    /// Requests completed with an error status (or no status at all).
    pub errors: u64,
}

/// One queue's [`Stats`], on a cache line of its own: only that queue's
/// worker writes it, so queues never contend for it.
#[derive(Debug, Default)]
#[repr(align(128))]
struct QueueStats {
    requests: AtomicU64,
    errors: AtomicU64,
}

/// A virtio-blk device for one vhost-user connection.
pub struct BlkBackend {
    disk: Arc<dyn BlockDevice>,
    config: DeviceConfig,
    /// Guest memory; the protocol handler replaces what it holds.
    mem: GuestMemory,
    writeback: AtomicBool,
    stats: Box<[QueueStats]>,
    metrics: Option<Arc<DiskMetrics>>,
    helpers: Option<Arc<Helpers>>,
    /// How many queues are being drained right now.
    draining: AtomicUsize,
    engine: EngineConfig,
    /// With the io_uring engine, each queue's engine (locked only by that
    /// queue's worker thread) and the group-commit thread.
    queues: Box<[Mutex<AsyncQueue>]>,
    syncer: Option<Syncer>,
}

impl BlkBackend {
    /// A device serving `disk` as `config` describes, with `mem` the guest
    /// memory the daemon fills in.
    pub fn new(disk: Arc<dyn BlockDevice>, config: DeviceConfig, mem: GuestMemory) -> Self {
        let writeback = !config.writethrough;
        disk.set_writeback(writeback);
        let stats = (0..config.num_queues)
            .map(|_| QueueStats::default())
            .collect();
        Self {
            disk,
            config,
            mem,
            writeback: AtomicBool::new(writeback),
            stats,
            metrics: None,
            helpers: None,
            draining: AtomicUsize::new(0),
            engine: EngineConfig::blocking(),
            queues: Box::new([]),
            syncer: None,
        }
    }

    /// Runs the queues on `engine`: with io_uring, sets up a ring per
    /// queue and the group-commit thread.
    pub fn with_engine(mut self, engine: EngineConfig) -> io::Result<Self> {
        self.engine = engine;
        if !engine.uring {
            return Ok(self);
        }
        // Room for a full virtqueue of requests, a few operations each.
        let entries = u32::from(self.config.queue_size)
            .next_power_of_two()
            .max(32);
        let queues = (0..usize::from(self.config.num_queues))
            .map(|i| AsyncQueue::new(i, entries, engine.direct).map(Mutex::new))
            .collect::<io::Result<Box<[_]>>>()?;
        let inboxes = queues
            .iter()
            .map(|q| q.lock().unwrap_or_else(PoisonError::into_inner).inbox())
            .collect();
        self.syncer = Some(Syncer::start(Arc::clone(&self.disk), inboxes)?);
        self.queues = queues;
        // The engine makes writes durable itself (group commit): the disk
        // must not flush on every write.
        self.set_writeback(self.writeback());
        Ok(self)
    }

    /// Records every request into `metrics` (queue `i` into its queue `i`).
    pub fn with_metrics(mut self, metrics: Option<Arc<DiskMetrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Shares large transfers with `helpers`.
    pub fn with_helpers(mut self, helpers: Option<Arc<Helpers>>) -> Self {
        self.helpers = helpers;
        self
    }

    /// The connection's request counters, summed over its queues.
    pub fn stats(&self) -> Stats {
        self.stats.iter().fold(Stats::default(), |sum, q| Stats {
            requests: sum.requests + q.requests.load(Ordering::Relaxed),
            errors: sum.errors + q.errors.load(Ordering::Relaxed),
        })
    }

    /// The guest's current write-back setting.
    pub fn writeback(&self) -> bool {
        self.writeback.load(Ordering::Relaxed)
    }

    fn set_writeback(&self, on: bool) {
        self.writeback.store(on, Ordering::Relaxed);
        // With group commit the engine owns durability; the disk itself
        // stays in write-back mode.
        self.disk.set_writeback(on || self.syncer.is_some());
    }

    /// What completes queue `queue_index`'s requests during one drain.
    fn retire(&self, queue_index: usize) -> Retire<'_> {
        Retire {
            // Only this queue's worker thread records into its metrics.
            metrics: self.metrics.as_deref().map(|m| m.queue(queue_index)),
            stats: &self.stats[queue_index.min(self.stats.len().saturating_sub(1))],
            last_finish: None,
            completed: false,
        }
    }

    fn memory(&self) -> GuestMemory {
        self.mem.clone()
    }

    /// Completes every available request of `vring`, notifying the driver
    /// whenever it wants to be and something was completed.
    ///
    /// Requests run on this thread in the order they are popped, except
    /// large reads when there are helper threads: those are set aside and run
    /// together on the helpers once the ring is empty (or a batch is full),
    /// so that a guest streaming through one queue keeps every core copying.
    /// virtio lets a device complete requests in any order.
    fn process_queue(&self, queue_index: usize, state: &mut Vring) {
        let atomic = self.memory();
        let draining = Draining::enter(&self.draining);
        // When other queues are draining too, their threads already keep the
        // cores busy, and handing work around would only add wake-ups.
        let helpers = self
            .helpers
            .as_deref()
            .filter(|h| draining.queues() < h.threads());
        let ctx = RequestContext {
            disk: &*self.disk,
            serial: &self.config.serial,
        };
        let event_idx = state.event_idx();
        let mut retire = self.retire(queue_index);
        let mut batch = Batch::new();
        loop {
            if event_idx {
                state.disable_notification(&atomic.memory());
            }
            loop {
                // A fresh view of guest memory for every request: the
                // frontend may have added a region (and had it acknowledged)
                // while this loop ran, and its next request may live there.
                let mem = atomic.memory();
                let Some(request) = state.pop(&mem) else {
                    break;
                };
                let started = retire.start();
                match helpers {
                    // Only reads: buffered writes to one file take its
                    // inode lock in turn (ext4, xfs), so writes would gain
                    // little from more threads.
                    Some(helpers) if request.writable_len() >= MIN_SPLIT => {
                        batch.push(Deferred {
                            request,
                            mem,
                            started,
                        });
                        if batch.is_full() {
                            self.run_batch(&ctx, helpers, &mut batch, state, &atomic, &mut retire);
                        }
                    }
                    _ => {
                        let done = ctx.complete(&mem, &request);
                        retire.done(state, &mem, started, &done);
                    }
                }
            }
            if let Some(helpers) = helpers {
                self.run_batch(&ctx, helpers, &mut batch, state, &atomic, &mut retire);
            }
            // With EVENT_IDX, re-enabling notifications reports requests
            // that arrived meanwhile: process them before sleeping. (A
            // broken ring reports nothing, so it cannot keep this going.)
            if !event_idx || !state.enable_notification(&atomic.memory()) {
                break;
            }
        }
        retire.notify(state, &atomic.memory());
    }

    /// Runs queue `queue_index` on its io_uring: finishes what completed,
    /// starts what the driver made available (while the ring has room),
    /// and notifies the driver; then polls for the configured window
    /// before the thread goes back to sleep.
    fn process_queue_async(
        &self,
        queue_index: usize,
        state: &mut Vring,
        engine: &Mutex<AsyncQueue>,
        syncer: &Syncer,
    ) {
        let atomic = self.memory();
        let mut engine = engine.lock().unwrap_or_else(PoisonError::into_inner);
        let draining = Draining::enter(&self.draining);
        // When other queues are draining too, their threads already keep
        // the cores busy, and handing work around would only add wake-ups.
        let helpers = self
            .helpers
            .as_deref()
            .filter(|h| draining.queues() < h.threads());
        let ctx = self.engine_context(syncer, helpers);
        let event_idx = state.event_idx();
        let mut retire = self.retire(queue_index);
        let poll = self.engine.poll;
        let mut idle_since: Option<Instant> = None;
        loop {
            let mut progress = engine.reap(&ctx) > 0;
            if event_idx && engine.has_room() {
                state.disable_notification(&atomic.memory());
            }
            while engine.has_room() {
                let mem = atomic.memory();
                let Some(request) = state.pop(&mem) else {
                    break;
                };
                progress = true;
                let started = retire.start();
                engine.start(&ctx, mem, request, started);
                retire_finished(&mut engine, state, &atomic, &mut retire);
            }
            engine.submit();
            retire_finished(&mut engine, state, &atomic, &mut retire);
            retire.notify(state, &atomic.memory());
            if progress {
                idle_since = None;
                continue;
            }
            // With EVENT_IDX, re-enabling notifications reports requests
            // that arrived meanwhile.
            if event_idx && engine.has_room() && state.enable_notification(&atomic.memory()) {
                continue;
            }
            if poll.is_zero() {
                break;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            let window = engine.poll_window(poll);
            let found = poll_once(&mut engine, state, &atomic, since, window);
            engine.polled(found, poll);
            if !found {
                break;
            }
        }
    }

    /// What a queue's engine needs to run requests now.
    fn engine_context<'a>(
        &'a self,
        syncer: &'a Syncer,
        helpers: Option<&'a Helpers>,
    ) -> Context<'a> {
        Context {
            helpers,
            requests: RequestContext {
                disk: &*self.disk,
                serial: &self.config.serial,
            },
            writeback: self.writeback(),
            syncer,
        }
    }

    /// Carries out the set-aside reads on this thread and the helpers, in
    /// pieces of all of them at once (so that the threads finish together),
    /// completes them in the order they were popped, and tells the driver
    /// at once: it refills the ring while the next batch is copied, instead
    /// of after the whole drain.
    fn run_batch(
        &self,
        ctx: &RequestContext<'_>,
        helpers: &Helpers,
        batch: &mut Batch,
        state: &mut Vring,
        atomic: &GuestMemory,
        retire: &mut Retire<'_>,
    ) {
        if batch.is_empty() {
            return;
        }
        let mut started: SmallVec<[Option<Started>; MAX_BATCH]> =
            batch.items.iter_mut().map(|d| d.started.take()).collect();
        let requests: SmallVec<[(&GuestMemoryMmap, &Request); MAX_BATCH]> =
            batch.items.iter().map(|d| (&*d.mem, &d.request)).collect();
        ctx.complete_shared(helpers, &requests, |i, done| {
            retire.done(state, requests[i].0, started[i].take(), &done);
        });
        drop(requests);
        batch.clear();
        retire.notify(state, &atomic.memory());
    }
}

/// Puts the requests the engine finished on the used ring (which drops
/// them if the frontend has taken the ring back).
fn retire_finished(
    engine: &mut AsyncQueue,
    state: &mut Vring,
    atomic: &GuestMemory,
    retire: &mut Retire<'_>,
) {
    let mem = atomic.memory();
    for finished in engine.take_finished() {
        retire.done(state, &mem, finished.started, &finished.completion);
    }
}

/// Spins until the ring or the syncer has news or the driver made a request
/// available (true), or `poll` has passed since `since` (false).
fn poll_once(
    engine: &mut AsyncQueue,
    state: &mut Vring,
    atomic: &GuestMemory,
    since: Instant,
    poll: Duration,
) -> bool {
    let mem = atomic.memory();
    while since.elapsed() < poll {
        if engine.has_news() {
            return true;
        }
        if engine.has_room() && state.has_available(&mem) {
            return true;
        }
        std::hint::spin_loop();
    }
    false
}

/// Counts a queue as draining while it lives.
struct Draining<'a> {
    count: &'a AtomicUsize,
    queues: usize,
}

impl<'a> Draining<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let queues = count.fetch_add(1, Ordering::Relaxed) + 1;
        Self { count, queues }
    }

    /// Queues draining when this one started, itself included.
    fn queues(&self) -> usize {
        self.queues
    }
}

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request set aside for the helper threads, with the memory view it was
/// popped under.
struct Deferred {
    request: Request,
    mem: GuestMemoryGuard,
    started: Option<Started>,
}

/// Reads set aside for the helpers, run once the ring is empty or
/// [`Batch::is_full`].
#[derive(Default)]
struct Batch {
    items: SmallVec<[Deferred; MAX_BATCH]>,
    bytes: u64,
}

impl Batch {
    /// Bytes after which a batch runs even if the ring has more: enough for
    /// every thread to copy for a few hundred microseconds (far longer than
    /// waking one), and no more, so that a driver keeping several MiB in
    /// flight hears of completions while the rest is still being copied.
    const BYTES: u64 = 4 << 20;

    fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, deferred: Deferred) {
        self.bytes += deferred.request.writable_len();
        self.items.push(deferred);
    }

    fn is_full(&self) -> bool {
        self.items.len() == MAX_BATCH || self.bytes >= Self::BYTES
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }
}

type GuestMemoryGuard = <GuestMemory as GuestAddressSpace>::T;

/// Completes requests on the used ring and counts them, for one drain of
/// one queue.
struct Retire<'a> {
    metrics: Option<&'a QueueMetrics>,
    stats: &'a QueueStats,
    /// The clock reading that ended the previous request: the next request
    /// popped starts then, which saves a clock read per request.
    last_finish: Option<Instant>,
    /// Whether anything was added to the used ring.
    completed: bool,
}

impl Retire<'_> {
    /// Starts the clock of a request just popped.
    fn start(&mut self) -> Option<Started> {
        let m = self.metrics?;
        Some(match self.last_finish.take() {
            Some(at) => m.start_at(at),
            None => m.start(),
        })
    }

    /// Tells the driver about the requests completed since the last call,
    /// if it wants to hear (EVENT_IDX lets it say when).
    fn notify(&mut self, state: &mut Vring, mem: &GuestMemoryMmap) {
        if std::mem::take(&mut self.completed) {
            state.notify(mem);
        }
    }

    /// Counts `done` and puts it on the used ring.
    fn done(
        &mut self,
        state: &mut Vring,
        mem: &GuestMemoryMmap,
        started: Option<Started>,
        done: &Completion,
    ) {
        if let (Some(m), Some(started)) = (self.metrics, started) {
            self.last_finish = Some(m.finish(started, metric_of(done)));
            m.add_base_read(done.summary.base_bytes);
            m.add_overlay_read(done.summary.overlay_bytes);
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if done.status != Some(0) {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        if state.add_used(mem, done.head, done.used_len) {
            self.completed = true;
        }
    }
}

/// What the metrics record of a completed request.
fn metric_of(done: &Completion) -> Done {
    let kind = match done.summary.kind {
        Some(RequestType::In) => ReqKind::Read,
        Some(RequestType::Out) => ReqKind::Write,
        Some(RequestType::Flush) => ReqKind::Flush,
        Some(RequestType::Discard) => ReqKind::Discard,
        Some(RequestType::WriteZeroes) => ReqKind::WriteZeroes,
        Some(RequestType::GetId) => ReqKind::GetId,
        Some(RequestType::Unsupported(_)) | None => ReqKind::Unsupported,
    };
    let status = match done.status {
        Some(0) => Status::Ok,
        Some(2) => Status::Unsupported,
        _ => Status::IoErr,
    };
    Done {
        kind,
        offset: done.summary.offset,
        len: done.summary.len,
        status,
    }
}

/// What the protocol handler asks of the device.
impl BlkBackend {
    /// How many virtqueues the device has.
    pub fn num_queues(&self) -> usize {
        usize::from(self.config.num_queues)
    }

    /// The largest virtqueue the device takes.
    pub fn max_queue_size(&self) -> u16 {
        self.config.queue_size
    }

    /// The virtio feature bits the device offers.
    pub fn features(&self) -> u64 {
        self.config.features()
    }

    /// Applies the features the driver accepted.
    pub fn acked_features(&self, features: u64) {
        // Without FLUSH the driver cannot make writes durable, so every
        // write must be; with FLUSH but without CONFIG_WCE it keeps the
        // device's initial mode.
        let writeback = if features & (1 << VIRTIO_BLK_F_FLUSH) == 0 {
            false
        } else if features & (1 << VIRTIO_BLK_F_CONFIG_WCE) == 0 {
            !self.config.writethrough
        } else {
            self.writeback()
        };
        self.set_writeback(writeback);
    }

    /// Back to the state before the driver negotiated.
    pub fn reset_device(&self) {
        self.set_writeback(!self.config.writethrough);
    }

    /// Reads `size` bytes of the config space at `offset`.
    pub fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // The vhost-user message bounds `size`; this bounds it again so a
        // broken frontend cannot make the backend allocate much.
        self.config
            .read_config(self.writeback(), offset, size.min(4096))
    }

    /// Writes the config space at `offset`.
    pub fn set_config(&self, offset: u32, buf: &[u8]) {
        // Only the write-back byte is writable; writes elsewhere are ignored
        // as the spec asks of read-only fields.
        let wce = (WCE_OFFSET as u64)
            .checked_sub(u64::from(offset))
            .and_then(|i| buf.get(usize::try_from(i).ok()?));
        if let Some(&wce) = wce {
            self.set_writeback(wce != 0);
        }
    }

    /// The eventfd that signals queue `index`'s io_uring completions, if it
    /// has a ring: its worker thread waits on it beside the kick.
    pub fn ring_fd(&self, index: usize) -> Option<RawFd> {
        let queue = self.queues.get(index)?;
        Some(
            queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .event_fd()
                .as_raw_fd(),
        )
    }

    /// Runs what queue `index`'s driver made available and what its engine
    /// finished, notifying the driver.
    pub fn process(&self, index: usize, vring: &mut Vring) {
        match (self.queues.get(index), &self.syncer) {
            (Some(engine), Some(syncer)) => self.process_queue_async(index, vring, engine, syncer),
            _ => self.process_queue(index, vring),
        }
    }

    /// Finishes everything queue `index` has in flight, without taking new
    /// requests, and puts it on the used ring: the frontend is about to
    /// take the ring back (GET_VRING_BASE, a disconnect, a graceful stop),
    /// and then it must find every request it made available either
    /// answered or still available.
    pub fn quiesce(&self, index: usize, vring: &mut Vring) {
        let (Some(engine), Some(syncer)) = (self.queues.get(index), &self.syncer) else {
            // The blocking engine finishes each drain before it returns.
            return;
        };
        let atomic = self.memory();
        let mut engine = engine.lock().unwrap_or_else(PoisonError::into_inner);
        let ctx = self.engine_context(syncer, None);
        let mut retire = self.retire(index);
        loop {
            engine.reap(&ctx);
            engine.submit();
            retire_finished(&mut engine, vring, &atomic, &mut retire);
            retire.notify(vring, &atomic.memory());
            if engine.is_idle() {
                return;
            }
            wait_readable(engine.event_fd(), Duration::from_millis(100));
        }
    }
}

/// Waits until `fd` is readable or `timeout` passed.
/// An interrupted or failed wait only costs the caller one more round of
/// its loop, so errors are not reported.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) {
    let timeout = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: i64::MAX,
        tv_nsec: 0,
    });
    let _ = poll(
        &mut [PollFd::from_borrowed_fd(fd, PollFlags::IN)],
        Some(&timeout),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::memory::MemoryDisk;
    use std::os::fd::{AsRawFd, FromRawFd};
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const FLUSH: u64 = 1 << VIRTIO_BLK_F_FLUSH;
    const WCE: u64 = 1 << VIRTIO_BLK_F_CONFIG_WCE;

    fn backend(writethrough: bool, disk: Arc<MemoryDisk>) -> BlkBackend {
        let config = DeviceConfig::new(disk.size(), false, 2, 256, "sn", writethrough).unwrap();
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap(),
        );
        BlkBackend::new(disk, config, mem)
    }

    #[test]
    fn writeback_follows_features_and_config() {
        let disk = Arc::new(MemoryDisk::new(4096, 0));
        let b = backend(false, Arc::clone(&disk));
        let wb = |b: &BlkBackend| (b.writeback(), disk.writeback.load(Ordering::SeqCst));
        assert_eq!(wb(&b), (true, true));
        assert_eq!(b.get_config(WCE_OFFSET as u32, 1), [1]);
        // Without FLUSH the driver cannot ask for durability: write-through.
        b.acked_features(0);
        assert_eq!(wb(&b), (false, false));
        b.reset_device();
        b.acked_features(FLUSH | WCE);
        assert_eq!(wb(&b), (true, true));
        // The guest switches through the config byte, alone or in a range.
        b.set_config(WCE_OFFSET as u32, &[0]);
        assert_eq!(wb(&b), (false, false));
        assert_eq!(b.get_config(WCE_OFFSET as u32, 1), [0]);
        b.set_config(30, &[9, 9, 1, 9]);
        assert_eq!(wb(&b), (true, true));
        // Writes to other fields are ignored.
        b.set_config(0, &[0; 8]);
        b.set_config(40, &[0; 4]);
        b.set_config(u32::MAX, &[0]);
        assert_eq!(wb(&b), (true, true));
        assert_eq!(b.get_config(0, 8), (4096u64 / 512).to_le_bytes());

        let b = backend(true, Arc::clone(&disk));
        assert_eq!(wb(&b), (false, false));
        b.acked_features(FLUSH);
        assert_eq!(wb(&b), (false, false));
        b.set_config(WCE_OFFSET as u32, &[1]);
        assert_eq!(wb(&b), (true, true));
        b.reset_device();
        assert_eq!(wb(&b), (false, false));
    }

    /// Drives requests through a real vring, as the worker thread would.
    /// A vring over the rings of `queue`, ready to serve.
    fn ready_vring(
        atomic: &GuestMemory,
        queue: &MockSplitQueue<'_, GuestMemoryMmap>,
        size: u16,
    ) -> Vring {
        let mut vring = Vring::new(0, size).unwrap();
        vring.set_size(u32::from(size)).unwrap();
        vring.set_addresses(
            queue.desc_table_addr().0,
            queue.avail_addr().0,
            queue.used_addr().0,
        );
        vring.set_enabled(true);
        vring.start(&atomic.memory(), None).unwrap();
        vring
    }

    #[test]
    fn handle_event_completes_requests_and_survives_bad_ones() {
        let disk = Arc::new(MemoryDisk::new(64 * 1024, 7));
        let b = backend(false, Arc::clone(&disk));
        let atomic = b.memory();
        let mem = atomic.memory();
        let queue = MockSplitQueue::new(&*mem, 16);
        let desc = |addr: u64, len: u32, write: bool, next: u16| {
            let flags =
                if write { VRING_DESC_F_WRITE as u16 } else { 0 } | if next != 0 { 1 } else { 0 };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        };
        let header = |addr: u64, kind: u32, sector: u64| {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            mem.write_slice(&h, GuestAddress(addr)).unwrap();
        };
        header(0x1_0000, VIRTIO_BLK_T_OUT, 2);
        mem.write_slice(&[0xee; 512], GuestAddress(0x2_0000))
            .unwrap();
        header(0x1_1000, VIRTIO_BLK_T_IN, 1u64 << 40);
        header(0x1_2000, VIRTIO_BLK_T_GET_ID, 0);
        header(0x1_3000, VIRTIO_BLK_T_IN, 2);
        queue
            .add_desc_chains(
                &[
                    // A write.
                    desc(0x1_0000, 16, false, 1),
                    desc(0x2_0000, 512, false, 2),
                    desc(0x3_0000, 1, true, 0),
                    // A read far past the end.
                    desc(0x1_1000, 16, false, 4),
                    desc(0x2_1000, 512, true, 5),
                    desc(0x3_0001, 1, true, 0),
                    // A chain without a status byte.
                    desc(0x1_2000, 16, false, 0),
                    // A read of what was written.
                    desc(0x1_3000, 16, false, 8),
                    desc(0x2_2000, 512, true, 9),
                    desc(0x3_0002, 1, true, 0),
                ],
                0,
            )
            .unwrap();
        let mut vring = ready_vring(&atomic, &queue, 16);
        b.process(0, &mut vring);

        let status = |i: u64| mem.read_obj::<u8>(GuestAddress(0x3_0000 + i)).unwrap();
        assert_eq!([status(0), status(1), status(2)], [0, 1, 0]);
        let mut read = [0u8; 512];
        mem.read_slice(&mut read, GuestAddress(0x2_2000)).unwrap();
        assert_eq!(read, [0xee; 512]);
        // Every chain is in the used ring, the status-less one with length 0.
        assert_eq!(queue.used().idx().load(), 4);
        let used: Vec<(u32, u32)> = (0..4)
            .map(|i| {
                let e = queue.used().ring().ref_at(i).unwrap().load();
                (e.id(), e.len())
            })
            .collect();
        assert_eq!(used, [(0, 1), (3, 1), (6, 0), (7, 513)]);
        assert_eq!(
            b.stats(),
            Stats {
                requests: 4,
                errors: 2
            }
        );
    }

    #[test]
    fn large_reads_notify_the_driver_after_each_batch() {
        const MIB: u64 = 1 << 20;
        const READS: u64 = 8;
        let disk = Arc::new(MemoryDisk::new((READS * MIB) as usize, 0x5a));
        let config = DeviceConfig::new(disk.size(), false, 1, 32, "sn", false).unwrap();
        let atomic = GuestMemoryAtomic::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), ((READS + 1) * MIB) as usize)])
                .unwrap(),
        );
        let b = BlkBackend::new(disk, config, atomic.clone())
            .with_helpers(Some(Arc::new(Helpers::new(2).unwrap())));
        let mem = atomic.memory();
        let queue = MockSplitQueue::new(&*mem, 32);
        let mut chains = Vec::new();
        for i in 0..READS {
            let header = 0x1_0000 + i * 0x100;
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
            h[8..16].copy_from_slice(&(i * MIB / 512).to_le_bytes());
            mem.write_slice(&h, GuestAddress(header)).unwrap();
            let next = (3 * i) as u16;
            let write = VRING_DESC_F_WRITE as u16;
            chains.extend([
                SplitDescriptor::new(header, 16, 1, next + 1),
                SplitDescriptor::new((i + 1) * MIB, MIB as u32, write | 1, next + 2),
                SplitDescriptor::new(0x2_0000 + i, 1, write, 0),
            ]);
        }
        let chains: Vec<RawDescriptor> = chains.into_iter().map(RawDescriptor::from).collect();
        queue.add_desc_chains(&chains, 0).unwrap();
        let mut vring = ready_vring(&atomic, &queue, 32);
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor, owned by `consumer` alone.
        let consumer = unsafe { std::fs::File::from_raw_fd(fd) };
        vring.set_call(Some(consumer.try_clone().unwrap()));

        b.process(0, &mut vring);

        assert_eq!(queue.used().idx().load(), READS as u16);
        for i in 0..READS {
            assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2_0000 + i)).unwrap(), 0);
            let mut data = vec![0u8; MIB as usize];
            mem.read_slice(&mut data, GuestAddress((i + 1) * MIB))
                .unwrap();
            assert!(data.iter().all(|&b| b == 0x5a), "read {i}");
        }
        // Two batches of 4 MiB, each announced as soon as it is done, so
        // that a driver can refill the ring while the next one is copied.
        let mut count = [0u8; 8];
        // SAFETY: `count` is valid for 8 bytes of writes.
        let n = unsafe { libc::read(consumer.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(u64::from_ne_bytes(count), READS * MIB / Batch::BYTES);
    }
}
