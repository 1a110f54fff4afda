//! One virtqueue's requests in flight on its io_uring.
//!
//! A request is popped, parsed and checked on the queue's thread
//! ([`RequestContext::begin`]); then what is left of it runs as follows:
//!
//! - a **read** asks the disk for its plan ([`BlockDevice::plan_read`](crate::disk::BlockDevice::plan_read)):
//!   bytes held in memory and zeros are copied at once, file pieces are
//!   first read with `preadv2(RWF_NOWAIT)`, which succeeds when the page
//!   cache holds them, so a warm read completes on the spot without a trip
//!   through the ring; what would block goes to the ring;
//! - a **write** of whole overlay blocks goes to the ring, straight from
//!   guest memory to the overlay file; the overlay's map says "written"
//!   only once the data write has completed ([`BlockDevice::commit_write`](crate::disk::BlockDevice::commit_write)).
//!   Other writes (a copy-up of a partly written block) run at once;
//! - a **flush**, and with the write cache off every change, waits for the
//!   [`Syncer`] (group commit), off this thread;
//! - everything else (GET_ID, discard, write-zeroes, errors) completes at
//!   once.
//!
//! Requests complete in the order their I/O does, not the order they were
//! popped. Each one in flight sits in a slot of this queue's table with its
//! descriptor chain, the guest memory it uses (kept mapped until the kernel
//! is done with it) and its operations; an operation's `user_data` names
//! its slot and its index, so a completion finds its request in O(1).

use crate::device::engine::ring::{Io, Ring};
use crate::device::engine::syncer::{Inbox, Syncer};
use crate::device::parallel::{Helpers, MIN_SPLIT};
use crate::device::request::{
    Action, Begun, Completion, ReadOutcome, Request, RequestContext, RequestError,
};
use crate::disk::ReadSources;
use crate::metrics::Started;
use blockio::{DirectAlign, IoBuf, IoBufMut, IoCursorMut, IoWindow, ReadPiece};
use smallvec::SmallVec;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

/// A view of guest memory that keeps its regions mapped while it lives.
pub type MemoryGuard = <GuestMemoryAtomic<GuestMemoryMmap> as GuestAddressSpace>::T;

/// The most buffers one `preadv`/`pwritev` takes.
const IOV_MAX: usize = 1024;

/// A request that has completed, to be put on the used ring.
pub struct Finished {
    /// How it was answered.
    pub completion: Completion,
    /// When it started, for the metrics.
    pub started: Option<Started>,
}

/// One read or write on the ring, with what is left of it.
struct Op {
    fd: RawFd,
    /// The file offset of the next byte.
    offset: u64,
    /// The buffers not yet transferred.
    iovecs: Vec<libc::iovec>,
    write: bool,
}

// SAFETY: the raw pointers in `iovecs` point into guest memory that the
// op's slot keeps mapped; the op is only ever used by the thread that owns
// its queue (moving the queue between threads moves no access).
unsafe impl Send for Op {}

impl Op {
    fn remaining(&self) -> usize {
        self.iovecs.iter().map(|v| v.iov_len).sum()
    }

    /// Drops the first `n` bytes from the buffers.
    fn advance(&mut self, mut n: usize) {
        self.offset += n as u64;
        let mut skip = 0;
        for v in &mut self.iovecs {
            if n == 0 {
                break;
            }
            let k = n.min(v.iov_len);
            // SAFETY: stays within the buffer the iovec describes.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(k) }.cast();
            v.iov_len -= k;
            n -= k;
            if v.iov_len == 0 {
                skip += 1;
            }
        }
        self.iovecs.drain(..skip);
    }
}

/// A request in flight.
struct InFlight {
    request: Request,
    /// Keeps guest memory mapped while the kernel reads or writes it.
    mem: MemoryGuard,
    begun: Begun,
    started: Option<Started>,
    read: ReadOutcome,
    ops: SmallVec<[Op; 1]>,
    /// Operations not yet completed.
    pending: usize,
}

/// What the queue needs from the device to run requests.
pub struct Context<'a> {
    /// Parses requests and writes their status.
    pub requests: RequestContext<'a>,
    /// Whether the guest's write cache is on.
    pub writeback: bool,
    /// Group commit.
    pub syncer: &'a Syncer,
    /// Threads that share the page-cache part of large reads, if sharing
    /// pays now (other queues are not already keeping the cores busy).
    pub helpers: Option<&'a Helpers>,
}

/// One virtqueue's engine: its ring and its table of requests in flight.
pub struct AsyncQueue {
    index: usize,
    ring: Ring,
    ring_entries: usize,
    inbox: Arc<Inbox>,
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
    finished: Vec<Finished>,
    synced: Vec<(u32, Result<(), String>)>,
    /// With `--direct`, what a transfer must meet to use the `O_DIRECT`
    /// files (`statx`'s DIOALIGN); anything less aligned goes through the
    /// page cache instead (a bounce in the kernel, not here).
    direct: Option<DirectAlign>,
    /// How long this queue polls before it sleeps now (adaptive, up to the
    /// configured window); `None` until the first poll.
    poll_now: Option<std::time::Duration>,
}

impl AsyncQueue {
    /// The engine of queue `index`, with a ring of `entries` slots. With
    /// `direct`, file pieces the disk offers an `O_DIRECT` twin for are
    /// read and written through it.
    pub fn new(index: usize, entries: u32, direct: Option<DirectAlign>) -> io::Result<AsyncQueue> {
        let ring = Ring::new(entries)?;
        let inbox = Arc::new(Inbox::new(ring.event().try_clone()?));
        Ok(AsyncQueue {
            index,
            ring,
            ring_entries: entries as usize,
            inbox,
            slots: Vec::new(),
            free: Vec::new(),
            finished: Vec::new(),
            synced: Vec::new(),
            direct,
            poll_now: None,
        })
    }

    /// Where the syncer returns this queue's requests.
    pub fn inbox(&self) -> Arc<Inbox> {
        Arc::clone(&self.inbox)
    }

    /// The eventfd that wakes this queue's thread for completions.
    pub fn event_fd(&self) -> BorrowedFd<'_> {
        self.ring.event_fd()
    }

    /// Whether no request is in flight.
    pub fn is_idle(&self) -> bool {
        self.slots.len() == self.free.len()
    }

    /// Whether another request may start: the ring's completion queue
    /// (twice its submission queue) has room for what is in flight.
    /// Otherwise requests wait in the virtqueue.
    pub fn has_room(&self) -> bool {
        self.ring.in_flight() < self.ring_entries
    }

    /// How long to poll now, given the configured window `max`.
    pub fn poll_window(&self, max: std::time::Duration) -> std::time::Duration {
        self.poll_now.unwrap_or(max)
    }

    /// Adapts the window to what the last poll found: a poll that found
    /// work doubles it (up to `max`), one that ran out halves it (down to
    /// an eighth of `max`), so that a queue whose requests come far apart
    /// soon stops burning its window of CPU after each of them, while a
    /// queue in a steady stream keeps polling.
    pub fn polled(&mut self, found: bool, max: std::time::Duration) {
        let now = self.poll_window(max);
        self.poll_now = Some(if found {
            (now * 2).min(max)
        } else {
            (now / 2).max(max / 8)
        });
    }

    /// Whether anything may have finished since the last look.
    pub fn has_news(&mut self) -> bool {
        self.ring.has_completions() || !self.inbox.is_empty()
    }

    /// Hands queued operations to the kernel.
    pub fn submit(&mut self) {
        if let Err(err) = self.ring.submit() {
            // What the kernel did not take stays in the submission queue,
            // and the next submit hands it over again.
            tracing::error!(queue = self.index, "cannot submit to the io_uring: {err}");
        }
    }

    /// Requests finished since the last call, in completion order.
    pub fn take_finished(&mut self) -> std::vec::Drain<'_, Finished> {
        self.finished.drain(..)
    }

    /// Starts `request`: completes it at once if it can, else leaves it in
    /// flight.
    pub fn start(
        &mut self,
        ctx: &Context<'_>,
        mem: MemoryGuard,
        request: Request,
        started: Option<Started>,
    ) {
        let mut begun = ctx.requests.begin(&mem, &request);
        let mut read = ReadOutcome::default();
        let mut ops = SmallVec::new();
        match begun.action() {
            Action::None => {}
            Action::Read { offset, len } => match ctx.helpers {
                Some(helpers) if len >= MIN_SPLIT => self.plan_shared_read(
                    ctx, helpers, &mem, &request, offset, len, &mut read, &mut ops,
                ),
                _ => read.add(plan_read(
                    ctx,
                    self.direct,
                    &mem,
                    &request,
                    offset,
                    0..len,
                    &mut ops,
                )),
            },
            Action::Write { offset, len } => {
                if let Err(err) = self.plan_write(ctx, &mem, &request, offset, len, &mut ops) {
                    begun.fail(err);
                }
            }
            Action::Flush | Action::Changed => {}
        }
        let slot = InFlight {
            request,
            mem,
            begun,
            started,
            read,
            pending: ops.len(),
            ops,
        };
        if slot.pending == 0 {
            self.io_done(ctx, slot);
        } else {
            let index = self.insert(slot);
            self.push_ops(ctx, index);
        }
    }

    /// Takes completions from the ring and the syncer and finishes the
    /// requests they complete. Returns how many completions it saw.
    pub fn reap(&mut self, ctx: &Context<'_>) -> usize {
        self.ring.clear_event();
        let mut cqes: SmallVec<[(u64, i32); 64]> = SmallVec::new();
        let mut seen = self.ring.reap(|data, res| cqes.push((data, res)));
        for (data, res) in cqes {
            self.op_done(ctx, data, res);
        }
        self.inbox.take(&mut self.synced);
        seen += self.synced.len();
        let mut synced = std::mem::take(&mut self.synced);
        for (index, outcome) in synced.drain(..) {
            if let Some(mut slot) = self.remove(index) {
                if let Err(err) = outcome {
                    slot.begun.fail(RequestError::Io(io::Error::other(err)));
                }
                self.finish(ctx, slot);
            }
        }
        self.synced = synced;
        seen
    }

    fn insert(&mut self, slot: InFlight) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn remove(&mut self, index: u32) -> Option<InFlight> {
        let slot = self.slots.get_mut(index as usize)?.take()?;
        self.free.push(index);
        Some(slot)
    }

    /// [`plan_read`] with the transfer cut into pieces that this thread and
    /// the helpers carry out together: a large read the page cache holds is
    /// a memory copy, which one core alone would do at a fraction of the
    /// memory bandwidth.
    ///
    /// Only a read the page cache holds is shared. Its last
    /// [`PROBE_LEN`] bytes are read here first: if they had to go to the
    /// ring, the read is cold (readahead fills the cache front to back, so
    /// a missing tail means the rest is missing too), and the rest is
    /// planned here as well. Sharing a cold read only splits the ring's
    /// reads and wakes threads that copy nothing: cold 1 MiB reads cost
    /// 2–3× the CPU per request with helpers, at the same speed
    /// (docs/PERFORMANCE.md).
    #[allow(clippy::too_many_arguments)]
    fn plan_shared_read(
        &self,
        ctx: &Context<'_>,
        helpers: &Helpers,
        mem: &GuestMemoryMmap,
        request: &Request,
        offset: u64,
        len: u64,
        read: &mut ReadOutcome,
        ops: &mut SmallVec<[Op; 1]>,
    ) {
        let direct = self.direct;
        let head = len.saturating_sub(PROBE_LEN);
        let queued = ops.len();
        read.add(plan_read(ctx, direct, mem, request, offset, head..len, ops));
        if ops.len() > queued {
            read.add(plan_read(ctx, direct, mem, request, offset, 0..head, ops));
            return;
        }
        let shared = Mutex::new((std::mem::take(read), SmallVec::<[Op; 1]>::new()));
        helpers.for_each_piece(&[(offset, head)], |_, range| {
            let mut piece_ops = SmallVec::new();
            let piece = plan_read(ctx, direct, mem, request, offset, range, &mut piece_ops);
            let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.0.add(piece);
            shared.1.extend(piece_ops);
        });
        let (outcome, piece_ops) = shared.into_inner().unwrap_or_else(PoisonError::into_inner);
        *read = outcome;
        ops.extend(piece_ops);
    }

    /// Turns a write into a ring operation where the disk can take it
    /// straight into a file; otherwise writes it at once. Either way the
    /// request's action stays a write, so that with the write cache off it
    /// still waits for the syncer.
    fn plan_write(
        &self,
        ctx: &Context<'_>,
        mem: &GuestMemoryMmap,
        request: &Request,
        offset: u64,
        len: u64,
        ops: &mut SmallVec<[Op; 1]>,
    ) -> Result<(), RequestError> {
        let target = (len > 0)
            .then(|| ctx.requests.disk.write_target(offset, len))
            .flatten();
        let Some(target) = target else {
            return ctx.requests.write_now(mem, request, offset, len);
        };
        let bufs = request.data_out(mem, len)?;
        let iovecs = IoBuf::as_iovecs(&bufs);
        let file = match target.direct {
            Some(direct) if direct_aligned(self.direct, target.offset, iovecs) => direct,
            _ => target.file,
        };
        push_iovecs(ops, file.as_raw_fd(), target.offset, iovecs, true);
        Ok(())
    }

    /// Queues the operations of slot `index` on the ring.
    fn push_ops(&mut self, ctx: &Context<'_>, index: u32) {
        let count = self.slots[index as usize]
            .as_ref()
            .map_or(0, |s| s.ops.len());
        for op_index in 0..count {
            self.push_op(ctx, index, op_index);
        }
    }

    fn push_op(&mut self, ctx: &Context<'_>, index: u32, op_index: usize) {
        let Some(slot) = self.slots[index as usize].as_ref() else {
            return;
        };
        let op = &slot.ops[op_index];
        let io = if op.write {
            Io::Write {
                fd: op.fd,
                offset: op.offset,
                iovecs: &op.iovecs,
            }
        } else {
            Io::Read {
                fd: op.fd,
                offset: op.offset,
                iovecs: &op.iovecs,
            }
        };
        let data = (u64::from(index) << 32) | op_index as u64;
        // SAFETY: the buffers are guest memory that `slot.mem` keeps mapped
        // until the slot is removed, which happens only once every one of
        // its operations has completed (or at drop, after waiting for
        // them); the iovec array lives in the slot, unmoved, until then.
        let pushed = unsafe { self.ring.push(io, data) };
        if let Err(err) = pushed {
            // The submission queue was full and submitting failed: the
            // operation never reached the kernel.
            self.op_done(ctx, data, -err.raw_os_error().unwrap_or(libc::EIO));
        }
    }

    /// Handles the completion of one operation.
    fn op_done(&mut self, ctx: &Context<'_>, data: u64, res: i32) {
        let (index, op_index) = ((data >> 32) as u32, (data & 0xffff_ffff) as usize);
        let Some(slot) = self.slots.get_mut(index as usize).and_then(Option::as_mut) else {
            tracing::error!(
                queue = self.index,
                data,
                "completion for no request in flight"
            );
            return;
        };
        let Some(op) = slot.ops.get_mut(op_index) else {
            return;
        };
        let error = match res {
            n if n > 0 => {
                op.advance(n as usize);
                if op.remaining() > 0 {
                    // A short transfer: carry on from where it stopped.
                    self.push_op(ctx, index, op_index);
                    return;
                }
                None
            }
            0 if op.remaining() == 0 => None,
            0 if !op.write => Some(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends before offset {}", fd_name(op.fd), op.offset),
            )),
            0 => Some(io::Error::new(
                io::ErrorKind::WriteZero,
                "the write wrote nothing",
            )),
            e if -e == libc::EINTR || -e == libc::EAGAIN => {
                self.push_op(ctx, index, op_index);
                return;
            }
            e => {
                let err = io::Error::from_raw_os_error(-e);
                let what = if op.write { "writing" } else { "reading" };
                Some(io::Error::new(
                    err.kind(),
                    format!("{what} {} at {}: {err}", fd_name(op.fd), op.offset),
                ))
            }
        };
        if let Some(err) = error {
            tracing::debug!(queue = self.index, "request failed: {err}");
            match slot.begun.action() {
                Action::Read { .. } => slot.read.add(Err(err.into())),
                _ => slot.begun.fail(err.into()),
            }
        }
        slot.pending -= 1;
        if slot.pending == 0 {
            if let Some(slot) = self.remove(index) {
                self.io_done(ctx, slot);
            }
        }
    }

    /// Takes a request whose I/O is over to the end: marks a write in the
    /// map, waits for the syncer where durability is owed, then finishes.
    fn io_done(&mut self, ctx: &Context<'_>, mut slot: InFlight) {
        let needs_sync = match slot.begun.action() {
            Action::Write { offset, len } => {
                if !slot.ops.is_empty() {
                    if let Err(err) = ctx.requests.disk.commit_write(offset, len) {
                        slot.begun.fail(err.into());
                    }
                }
                !ctx.writeback
            }
            Action::Changed => !ctx.writeback,
            Action::Flush => true,
            Action::None | Action::Read { .. } => false,
        };
        // A failed request owes nothing.
        if needs_sync && slot.begun.action() != Action::None {
            slot.ops.clear();
            let index = self.insert(slot);
            ctx.syncer.request(self.index, index);
        } else {
            self.finish(ctx, slot);
        }
    }

    fn finish(&mut self, ctx: &Context<'_>, slot: InFlight) {
        let InFlight {
            request,
            mem,
            begun,
            started,
            read,
            ..
        } = slot;
        let completion = ctx.requests.end(&mem, &request, begun, read);
        self.finished.push(Finished {
            completion,
            started,
        });
    }
}

impl Drop for AsyncQueue {
    fn drop(&mut self) {
        // The kernel may still be writing into guest memory that the slots
        // keep mapped: wait for every operation before letting them go.
        while self.ring.in_flight() > 0 {
            if let Err(err) = self.ring.wait() {
                tracing::error!(queue = self.index, "cannot wait for the io_uring: {err}");
                // Leak the slots rather than unmap memory the kernel uses.
                std::mem::forget(std::mem::take(&mut self.slots));
                return;
            }
            self.ring.reap(|_, _| {});
        }
    }
}

/// How much of a large read [`AsyncQueue::plan_shared_read`] reads first to
/// tell a warm read from a cold one: one page.
const PROBE_LEN: u64 = 4096;

/// Reads bytes `range` of a read at disk `offset` as far as that needs no
/// waiting (memory, zeros, the page cache) and turns the rest into ring
/// operations.
fn plan_read(
    ctx: &Context<'_>,
    direct: Option<DirectAlign>,
    mem: &GuestMemoryMmap,
    request: &Request,
    offset: u64,
    range: std::ops::Range<u64>,
    ops: &mut SmallVec<[Op; 1]>,
) -> Result<ReadSources, RequestError> {
    let len = range.end.saturating_sub(range.start);
    if len == 0 {
        return Ok(ReadSources::default());
    }
    let offset = offset + range.start;
    let disk = ctx.requests.disk;
    let mut bufs = request.data_in_range(mem, range.start, len)?;
    let planned = {
        let mut cursor = IoCursorMut::new(&mut bufs);
        let mut sink = |piece: ReadPiece<'_>| -> io::Result<()> {
            let mut sub = cursor.take(piece.len() as usize);
            match piece {
                ReadPiece::File {
                    file,
                    direct: twin,
                    offset,
                    ..
                } => {
                    let twin =
                        twin.filter(|_| direct_aligned(direct, offset, IoBufMut::as_iovecs(&sub)));
                    read_file(file, twin, offset, &mut sub, ops)
                }
                ReadPiece::Bytes(bytes) => {
                    IoWindow::new(&mut sub).copy_from(bytes);
                    Ok(())
                }
                ReadPiece::Zero(_) => {
                    blockio::zero_fill(&mut sub);
                    Ok(())
                }
                ReadPiece::Sync { reader, offset, .. } => reader.read_vectored_at(offset, &mut sub),
            }
        };
        disk.plan_read(offset, len, &mut sink)
    };
    match planned {
        Some(result) => Ok(result?),
        // A disk that cannot describe its reads reads them itself.
        None => Ok(disk.read(offset, &mut bufs)?),
    }
}

/// Whether a transfer at file `offset` into `bufs` may use `O_DIRECT`.
fn direct_aligned(align: Option<DirectAlign>, offset: u64, bufs: &[libc::iovec]) -> bool {
    align.is_some_and(|align| {
        align.allows(
            offset,
            bufs.iter().map(|b| (b.iov_base as usize, b.iov_len)),
        )
    })
}

/// Reads a file piece: through `direct` (its `O_DIRECT` twin, offered only
/// when the transfer is aligned for it) on the ring; otherwise from the page
/// cache at once as far as it holds the bytes, and the rest on the ring.
fn read_file(
    file: &File,
    direct: Option<&File>,
    offset: u64,
    bufs: &mut [IoBufMut<'_>],
    ops: &mut SmallVec<[Op; 1]>,
) -> io::Result<()> {
    if let Some(direct) = direct {
        push_iovecs(
            ops,
            direct.as_raw_fd(),
            offset,
            IoBufMut::as_iovecs(bufs),
            false,
        );
        return Ok(());
    }
    let fd = file.as_raw_fd();
    let mut rest: &mut [IoBufMut<'_>] = bufs;
    let mut at = offset;
    while !rest.is_empty() {
        let cnt = rest.len().min(IOV_MAX) as libc::c_int;
        let off =
            libc::off_t::try_from(at).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let iov = IoBufMut::as_iovecs(rest).as_ptr();
        // SAFETY: every buffer is valid for writes for the duration of the
        // call (`IoBufMut`'s contract).
        let n = unsafe { libc::preadv2(fd, iov, cnt, off, libc::RWF_NOWAIT) };
        if n > 0 {
            at += n as u64;
            IoBufMut::advance_slices(&mut rest, n as usize);
            continue;
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends before offset {at}", fd_name(fd)),
            ));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // Not in the page cache (or a file system that cannot say):
            // the ring waits for it.
            Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP) => break,
            _ => {
                return Err(io::Error::new(
                    err.kind(),
                    format!("reading {} at {at}: {err}", fd_name(fd)),
                ))
            }
        }
    }
    if !rest.is_empty() {
        push_iovecs(ops, fd, at, IoBufMut::as_iovecs(rest), false);
    }
    Ok(())
}

/// Adds operations that transfer `bufs` at file `offset`, one per
/// [`IOV_MAX`] buffers.
fn push_iovecs(
    ops: &mut SmallVec<[Op; 1]>,
    fd: RawFd,
    mut offset: u64,
    bufs: &[libc::iovec],
    write: bool,
) {
    for chunk in bufs.chunks(IOV_MAX) {
        let iovecs = chunk.to_vec();
        let len: usize = chunk.iter().map(|b| b.iov_len).sum();
        ops.push(Op {
            fd,
            offset,
            iovecs,
            write,
        });
        offset += len as u64;
    }
}

/// The path of an open file, for error messages.
fn fd_name(fd: RawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| format!("file descriptor {fd}"))
}
