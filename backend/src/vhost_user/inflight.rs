//! The vhost-user inflight region (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`)
//! for split virtqueues, byte for byte as QEMU's libvhost-user lays it out.
//!
//! The frontend (QEMU) keeps this shared memory across backend restarts, so a
//! backend that is killed mid-request can be restarted and learn which
//! requests it had taken from the avail ring without completing them.
//!
//! # Layout
//!
//! The region holds `num_queues` consecutive per-queue parts of
//! `ALIGN_UP(16 * queue_size + 2, 64)` bytes each (libvhost-user's
//! `vu_inflight_queue_size`; the formula does not count the 16-byte header,
//! but the alignment always leaves room for it, see the test
//! `every_queue_size_fits_header_and_descriptors`). Each part is a
//! `QueueHeader` followed by one `DescState` per descriptor head:
//!
//! ```text
//! header (16 bytes)                 descriptor state (16 bytes), desc_num times
//!  0  features: u64 (0)              0  inflight: u8 (1 = taken, not completed)
//!  8  version: u16 (0 = never used)  1  padding: [u8; 5]
//! 10  desc_num: u16 (queue size)     6  next: u16 (unused for split rings)
//! 12  last_batch_head: u16           8  counter: u64 (order heads were taken)
//! 14  used_idx: u16
//! ```
//!
//! All fields are little-endian. We store native-endian integers, which is
//! the same thing on the little-endian hosts we build for (a compile error
//! guards the others).
//!
//! # Protocol
//!
//! For each head `h` it takes from the avail ring, the device calls
//! [`InflightQueue::begin`] (counter, then `inflight = 1`). To complete it,
//! [`InflightQueue::pre_put`] (`last_batch_head = h`), then the device
//! writes the used element and bumps `used.idx` by one, then
//! [`InflightQueue::post_put`] (`inflight = 0`, then `used_idx = used.idx`).
//! `begin` must be called for each head in the order the heads were taken,
//! before taking the next one (only the last taken head may be unflagged).
//!
//! # Why a SIGKILL at any instant leaves a resumable region
//!
//! The stores reach the shared memory in program order (see "Ordering"), so
//! the next process sees a prefix of them. Invariant: outside a completion,
//! region `used_idx` equals the ring's `used.idx` and the heads with
//! `inflight == 1` are exactly those taken but not published as used. A
//! completion breaks it in one window only, and the window is detectable:
//!
//! * killed before `used.idx` moves: `h` is still flagged and `used_idx`
//!   still matches, so `h` is resubmitted (it was never completed);
//! * killed after `used.idx` moved but before `used_idx` caught up: the
//!   mismatch says the element at `last_batch_head` was published, so
//!   [`InflightQueue::start`] clears that flag (whether or not `post_put`
//!   had got to it) and `h` is not completed twice.
//!
//! A kill inside `begin` leaves either no flag (the head was taken from the
//! avail ring but is fetched again, since the next avail index is derived
//! from the flags) or a flag with its counter already written. So on restart
//! `next_avail = used.idx + #flagged` and the flagged heads are resubmitted,
//! oldest first. This tracks one completion at a time: `used.idx` must move
//! by exactly one between `pre_put` and `post_put`.
//!
//! # Ordering
//!
//! The region is accessed only through atomics. The flag, `last_batch_head`
//! and `used_idx` stores are `Release`, so each is ordered after every
//! earlier store of ours (the counter, the used element and `used.idx` the
//! caller wrote to guest memory), and `pre_put` ends with a `Release` fence
//! so the caller's later used-ring stores cannot move before
//! `last_batch_head`. On x86-64 these compile to plain stores plus compiler
//! barriers (stores are not reordered by the CPU), and a killed process's
//! retired stores still reach memory, so the next process sees a prefix.

use std::fs::File;
use std::mem::{align_of, offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

#[cfg(not(target_endian = "little"))]
compile_error!("the inflight region is little-endian and is accessed with native-endian atomics");

/// libvhost-user's `INFLIGHT_ALIGNMENT`.
const INFLIGHT_ALIGNMENT: u64 = 64;
/// The only region version defined (libvhost-user's `INFLIGHT_VERSION`).
const INFLIGHT_VERSION: u16 = 1;
/// Largest split virtqueue the virtio spec allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Most queues a frontend may ask for (QEMU's `VIRTIO_QUEUE_MAX`).
pub const MAX_QUEUES: u16 = 1024;

/// libvhost-user's `VuVirtqInflight` without its trailing `desc[]`.
#[allow(dead_code)] // never constructed, only viewed in the mapping
#[repr(C)]
struct QueueHeader {
    features: AtomicU64,
    version: AtomicU16,
    desc_num: AtomicU16,
    last_batch_head: AtomicU16,
    used_idx: AtomicU16,
}

/// libvhost-user's `VuDescStateSplit`.
#[allow(dead_code)] // never constructed, only viewed in the mapping
#[repr(C)]
struct DescState {
    inflight: AtomicU8,
    padding: [AtomicU8; 5],
    next: AtomicU16,
    counter: AtomicU64,
}

const _: () = assert!(size_of::<QueueHeader>() == 16);
const _: () = assert!(offset_of!(QueueHeader, version) == 8);
const _: () = assert!(offset_of!(QueueHeader, desc_num) == 10);
const _: () = assert!(offset_of!(QueueHeader, last_batch_head) == 12);
const _: () = assert!(offset_of!(QueueHeader, used_idx) == 14);
const _: () = assert!(size_of::<DescState>() == 16);
const _: () = assert!(offset_of!(DescState, next) == 6);
const _: () = assert!(offset_of!(DescState, counter) == 8);
// Parts start at multiples of 64 from a page-aligned base, so every header
// and descriptor state is suitably aligned.
const _: () = assert!((INFLIGHT_ALIGNMENT as usize).is_multiple_of(align_of::<QueueHeader>()));
const _: () = assert!(size_of::<QueueHeader>().is_multiple_of(align_of::<DescState>()));

/// Bytes of one queue's part: libvhost-user's `vu_inflight_queue_size`.
pub const fn queue_region_size(queue_size: u16) -> u64 {
    (size_of::<DescState>() as u64 * queue_size as u64 + size_of::<u16>() as u64)
        .next_multiple_of(INFLIGHT_ALIGNMENT)
}

/// Bytes of a whole region, as answered to GET_INFLIGHT_FD.
pub const fn region_size(num_queues: u16, queue_size: u16) -> u64 {
    num_queues as u64 * queue_region_size(queue_size)
}

/// Why an inflight region from the frontend cannot be used; each names the
/// field of the message or the queue and the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// The frontend asked for a region for no queues or too many.
    #[error("inflight region for {0} queues: expected 1 to {MAX_QUEUES}")]
    NumQueues(u16),
    /// The frontend asked for a region for empty or oversized rings.
    #[error("inflight region queue size {0}: expected 1 to {MAX_QUEUE_SIZE}")]
    QueueSize(u16),
    /// The region handed back is not the size its queues need.
    #[error(
        "inflight region of {mmap_size} bytes, expected {expected} for {num_queues} queues of {queue_size}"
    )]
    MmapSize {
        /// The size the frontend gave.
        mmap_size: u64,
        /// The size `num_queues` rings of `queue_size` need.
        expected: u64,
        /// Queues the frontend says the region covers.
        num_queues: u16,
        /// Descriptors per ring the frontend says.
        queue_size: u16,
    },
    /// The region's offset in its file cannot be mapped.
    #[error("inflight region mmap_offset {0} is not a multiple of the page size")]
    MmapOffset(u64),
    /// The file handed over does not hold the whole region.
    #[error(
        "inflight region file of {file_len} bytes is shorter than mmap_offset {mmap_offset} + mmap_size {mmap_size}"
    )]
    FileTooShort {
        /// The file's length.
        file_len: u64,
        /// Where the region starts in it.
        mmap_offset: u64,
        /// The region's size.
        mmap_size: u64,
    },
    /// Creating, sizing or mapping the region failed.
    #[error("inflight region: {what}")]
    Io {
        /// What was being done, e.g. `mapping it`.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A ring larger than the region's per-queue slots.
    #[error(
        "queue {queue}: ring of {ring_size} descriptors, the inflight region holds 1 to {capacity}"
    )]
    RingSize {
        /// The queue's index.
        queue: u16,
        /// Its ring's size.
        ring_size: u16,
        /// Descriptors the region holds per queue.
        capacity: u16,
    },
    /// A queue's region header has a layout version we do not know.
    #[error("queue {queue}: unsupported inflight region version {version} (expected 0 or 1)")]
    Version {
        /// The queue's index.
        queue: u16,
        /// The version in its header.
        version: u16,
    },
    /// A queue's region was written for a ring of another size.
    #[error("queue {queue}: inflight region desc_num {desc_num} differs from the ring's size {ring_size}")]
    DescNum {
        /// The queue's index.
        queue: u16,
        /// The ring size its header records.
        desc_num: u16,
        /// The ring's size now.
        ring_size: u16,
    },
    /// A queue's region names a last batch head outside the ring.
    #[error(
        "queue {queue}: inflight region last_batch_head {head} is not below desc_num {desc_num}"
    )]
    LastBatchHead {
        /// The queue's index.
        queue: u16,
        /// The head it records.
        head: u16,
        /// The ring size it records.
        desc_num: u16,
    },
    /// A descriptor's inflight flag is neither 0 nor 1.
    #[error("queue {queue}: inflight region flag of head {head} is {value} (expected 0 or 1)")]
    Flag {
        /// The queue's index.
        queue: u16,
        /// The descriptor head.
        head: u16,
        /// The byte found.
        value: u8,
    },
}

fn io_error(what: &'static str) -> InflightError {
    InflightError::Io {
        what,
        source: std::io::Error::last_os_error(),
    }
}

fn check_geometry(num_queues: u16, queue_size: u16) -> Result<(), InflightError> {
    if num_queues == 0 || num_queues > MAX_QUEUES {
        return Err(InflightError::NumQueues(num_queues));
    }
    if queue_size == 0 || queue_size > MAX_QUEUE_SIZE {
        return Err(InflightError::QueueSize(queue_size));
    }
    Ok(())
}

/// The mapped inflight region of all queues.
pub struct InflightRegion {
    base: NonNull<u8>,
    len: usize,
    num_queues: u16,
    queue_size: u16,
    _file: File,
}

// SAFETY: the mapping is owned by the region and unmapped only on drop; all
// accesses to it go through atomics, so sharing it between threads is sound.
unsafe impl Send for InflightRegion {}
// SAFETY: as above.
unsafe impl Sync for InflightRegion {}

impl InflightRegion {
    /// For GET_INFLIGHT_FD: a new zeroed region; returns the region, the fd
    /// to send, and mmap_size (mmap_offset is 0).
    pub fn create(
        num_queues: u16,
        queue_size: u16,
    ) -> Result<(Arc<InflightRegion>, File, u64), InflightError> {
        check_geometry(num_queues, queue_size)?;
        let size = region_size(num_queues, queue_size);
        // SAFETY: a NUL-terminated name and valid flags; no memory is handed over.
        let fd = unsafe {
            libc::memfd_create(
                c"vhost-inflight".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io_error("memfd_create"));
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        // A new memfd is empty, so growing it zero-fills.
        file.set_len(size).map_err(|source| InflightError::Io {
            what: "sizing the memfd",
            source,
        })?;
        // Like libvhost-user: nobody may resize it under a mapping (SIGBUS).
        let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on an fd we own, with an integer argument.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io_error("sealing the memfd"));
        }
        let send = file.try_clone().map_err(|source| InflightError::Io {
            what: "duplicating the memfd",
            source,
        })?;
        let region = Self::map(file, size, 0, num_queues, queue_size)?;
        Ok((Arc::new(region), send, size))
    }

    /// For SET_INFLIGHT_FD: maps a region the frontend hands over, possibly
    /// written by a previous backend process.
    pub fn from_file(
        file: File,
        mmap_size: u64,
        mmap_offset: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Arc<InflightRegion>, InflightError> {
        check_geometry(num_queues, queue_size)?;
        let expected = region_size(num_queues, queue_size);
        if mmap_size != expected {
            return Err(InflightError::MmapSize {
                mmap_size,
                expected,
                num_queues,
                queue_size,
            });
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = u64::try_from(page).unwrap_or(4096);
        if !mmap_offset.is_multiple_of(page) {
            return Err(InflightError::MmapOffset(mmap_offset));
        }
        // Checked before mmap: touching a page past the end of the file would
        // SIGBUS. (Sockets, pipes and devices report 0 bytes and fail here.)
        let file_len = file
            .metadata()
            .map_err(|source| InflightError::Io {
                what: "fstat",
                source,
            })?
            .len();
        if mmap_offset
            .checked_add(mmap_size)
            .is_none_or(|end| end > file_len)
        {
            return Err(InflightError::FileTooShort {
                file_len,
                mmap_offset,
                mmap_size,
            });
        }
        Ok(Arc::new(Self::map(
            file,
            mmap_size,
            mmap_offset,
            num_queues,
            queue_size,
        )?))
    }

    /// Maps `len` bytes of `file` at `offset`; the callers checked that the
    /// file is that long, the offset page-aligned and the geometry valid.
    fn map(
        file: File,
        len: u64,
        offset: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Self, InflightError> {
        let too_big = |e| InflightError::Io {
            what: "mmap",
            source: std::io::Error::other(e),
        };
        let len = usize::try_from(len).map_err(too_big)?;
        let offset = libc::off_t::try_from(offset).map_err(too_big)?;
        // SAFETY: a new shared mapping chosen by the kernel (address NULL), so
        // no existing memory is affected; `file` covers [offset, offset + len).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_error("mmap"));
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(InflightError::Io {
            what: "mmap",
            source: std::io::Error::other("mapped at address 0"),
        })?;
        Ok(Self {
            base,
            len,
            num_queues,
            queue_size,
            _file: file,
        })
    }

    /// Queues the region covers.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The ring size the region was laid out for.
    #[cfg(test)]
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Queue `index`'s part (None if out of range). The handle keeps the
    /// region alive. Use one handle per queue at a time.
    pub fn queue(self: &Arc<Self>, index: u16) -> Option<InflightQueue> {
        (index < self.num_queues).then(|| InflightQueue {
            region: Arc::clone(self),
            index,
            ring_size: self.queue_size,
            counter: 0,
        })
    }

    /// Start of queue `index`'s part (inside the mapping if `index <
    /// num_queues`, which the dereferencing callers guarantee).
    fn part(&self, index: u16) -> *mut u8 {
        debug_assert!(index < self.num_queues);
        // `queue_region_size` fits in usize since the whole region does.
        let stride = queue_region_size(self.queue_size) as usize;
        self.base.as_ptr().wrapping_add(usize::from(index) * stride)
    }
}

impl Drop for InflightRegion {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are our mapping; every reference into it
        // borrows `self` (or an `Arc` of it), so none outlives this.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// What the device does when a queue starts on a region in use before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Where to resume popping the avail ring (overrides SET_VRING_BASE).
    pub next_avail: u16,
    /// Heads taken but not completed, to process again first; oldest first.
    pub resubmit: Vec<u16>,
}

/// One queue's part of the region; used by one worker thread at a time.
pub struct InflightQueue {
    region: Arc<InflightRegion>,
    /// Invariant: `< region.num_queues` (checked in `InflightRegion::queue`).
    index: u16,
    /// Heads must be below this (the ring size once started).
    ring_size: u16,
    /// Counter for the next `begin`.
    counter: u64,
}

impl InflightQueue {
    fn header(&self) -> &QueueHeader {
        // SAFETY: `index < num_queues`, so the 16-byte header is inside the
        // mapping, which lives as long as `self.region`; the part starts at a
        // multiple of 64 from a page-aligned base, so it is aligned; all its
        // fields are atomics, so other processes writing it is no UB.
        unsafe { &*self.region.part(self.index).cast::<QueueHeader>() }
    }

    /// Head `head`'s state, or None past the region's queue size.
    fn desc(&self, head: u16) -> Option<&DescState> {
        if head >= self.region.queue_size {
            return None;
        }
        let offset = size_of::<QueueHeader>() + usize::from(head) * size_of::<DescState>();
        // SAFETY: head < queue_size, so the state ends at most 16 + 16 *
        // queue_size bytes into the part, which `queue_region_size` always
        // covers; alignment and aliasing as in `header`.
        Some(unsafe { &*self.region.part(self.index).add(offset).cast::<DescState>() })
    }

    /// Head `head`'s state if it is below the ring size, else None (logged).
    fn ring_desc(&self, head: u16, what: &str) -> Option<&DescState> {
        if head >= self.ring_size {
            tracing::debug!(
                queue = self.index,
                head,
                ring_size = self.ring_size,
                "inflight {what}: head out of range, ignored"
            );
            return None;
        }
        self.desc(head)
    }

    /// Called when the ring starts, with `used.idx` from guest memory and the
    /// ring's size. Ok(None): a fresh region (version 0), now initialized;
    /// keep the SET_VRING_BASE index. Ok(Some): resume from the region.
    pub fn start(
        &mut self,
        used_idx: u16,
        queue_size: u16,
    ) -> Result<Option<Resume>, InflightError> {
        let queue = self.index;
        let capacity = self.region.queue_size;
        if queue_size == 0 || queue_size > capacity {
            return Err(InflightError::RingSize {
                queue,
                ring_size: queue_size,
                capacity,
            });
        }
        let header = self.header();
        let version = header.version.load(Ordering::Acquire);
        if version != 0 && version != INFLIGHT_VERSION {
            return Err(InflightError::Version { queue, version });
        }
        let desc_num = header.desc_num.load(Ordering::Acquire);
        if desc_num != queue_size && !(version == 0 && desc_num == 0) {
            return Err(InflightError::DescNum {
                queue,
                desc_num,
                ring_size: queue_size,
            });
        }
        if version == 0 {
            // Fresh (or reset by the frontend): nothing was in flight.
            // libvhost-user only sets version; we also clear stray flags and
            // record used_idx, so that a kill before the first post_put
            // cannot make `start` clear the flag of head 0. Version last: a
            // kill midway leaves version 0 and this runs again.
            for head in 0..queue_size {
                if let Some(desc) = self.desc(head) {
                    desc.inflight.store(0, Ordering::Relaxed);
                }
            }
            header.desc_num.store(queue_size, Ordering::Relaxed);
            header.used_idx.store(used_idx, Ordering::Relaxed);
            header.version.store(INFLIGHT_VERSION, Ordering::Release);
            self.ring_size = queue_size;
            self.counter = 0;
            return Ok(None);
        }

        if header.used_idx.load(Ordering::Acquire) != used_idx {
            // Killed between publishing a used element and post_put.
            let head = header.last_batch_head.load(Ordering::Acquire);
            let desc = self.desc(head).filter(|_| head < desc_num).ok_or(
                InflightError::LastBatchHead {
                    queue,
                    head,
                    desc_num,
                },
            )?;
            desc.inflight.store(0, Ordering::Release);
            header.used_idx.store(used_idx, Ordering::Release);
        }

        // Nonzero flags other than 1 are never written by us or libvhost-user
        // (which would count them as in flight for the resubmit list but not
        // for next_avail); we refuse such a region instead.
        let mut taken = Vec::new();
        for head in 0..queue_size {
            let Some(desc) = self.desc(head) else { break };
            match desc.inflight.load(Ordering::Acquire) {
                0 => {}
                1 => taken.push((desc.counter.load(Ordering::Relaxed), head)),
                value => return Err(InflightError::Flag { queue, head, value }),
            }
        }
        oldest_first(&mut taken);
        // At most queue_size <= 32768 heads, so the count fits in u16.
        let inuse = taken.len() as u16;
        self.ring_size = queue_size;
        self.counter = taken.last().map_or(0, |&(c, _)| c.wrapping_add(1));
        Ok(Some(Resume {
            next_avail: used_idx.wrapping_add(inuse),
            resubmit: taken.into_iter().map(|(_, head)| head).collect(),
        }))
    }

    /// Head `head` was taken from the avail ring.
    pub fn begin(&mut self, head: u16) {
        let counter = self.counter;
        let Some(desc) = self.ring_desc(head, "begin") else {
            return;
        };
        desc.counter.store(counter, Ordering::Relaxed);
        // Release: the counter is in memory before the flag.
        desc.inflight.store(1, Ordering::Release);
        self.counter = counter.wrapping_add(1);
    }

    /// Before writing `head`'s used element and bumping `used.idx` by one.
    pub fn pre_put(&mut self, head: u16) {
        if self.ring_desc(head, "pre_put").is_none() {
            return;
        }
        self.header().last_batch_head.store(head, Ordering::Release);
        // Keep the caller's following used-ring stores after this one.
        fence(Ordering::Release);
    }

    /// After `head`'s used element was published and `used.idx` became
    /// `used_idx`.
    pub fn post_put(&mut self, head: u16, used_idx: u16) {
        let Some(desc) = self.ring_desc(head, "post_put") else {
            return;
        };
        // Release: the caller's used.idx store is in memory before the flag
        // is cleared, and the flag before used_idx.
        desc.inflight.store(0, Ordering::Release);
        self.header().used_idx.store(used_idx, Ordering::Release);
    }
}

/// Sorts `(counter, head)` pairs oldest first. Counters grow by one per
/// request and may (in theory) wrap; the oldest is the one after the largest
/// circular gap between counters. libvhost-user's `inflight_desc_compare`
/// instead treats counters more than 2 * 1024 apart as unordered; the two
/// agree whenever the in-flight counters span less than that, and this rule
/// is also right for a request stuck while thousands of others completed.
fn oldest_first(taken: &mut [(u64, u16)]) {
    taken.sort_unstable();
    let n = taken.len();
    if n < 2 {
        return;
    }
    let start = (0..n)
        .max_by_key(|&i| taken[i].0.wrapping_sub(taken[(i + n - 1) % n].0))
        .unwrap_or(0);
    taken.rotate_left(start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    /// A fresh region of one queue, started (version 1, used.idx 0).
    fn started(queue_size: u16) -> (Arc<InflightRegion>, File, InflightQueue) {
        let (region, file, _) = InflightRegion::create(1, queue_size).unwrap();
        let mut queue = region.queue(0).unwrap();
        assert_eq!(queue.start(0, queue_size).unwrap(), None);
        (region, file, queue)
    }

    /// The same memfd mapped again, as a restarted backend would.
    fn reopen(file: &File, num_queues: u16, queue_size: u16) -> Arc<InflightRegion> {
        InflightRegion::from_file(
            file.try_clone().unwrap(),
            region_size(num_queues, queue_size),
            0,
            num_queues,
            queue_size,
        )
        .unwrap()
    }

    fn flag(queue: &InflightQueue, head: u16) -> u8 {
        queue.desc(head).unwrap().inflight.load(Ordering::Relaxed)
    }

    fn counter(queue: &InflightQueue, head: u16) -> u64 {
        queue.desc(head).unwrap().counter.load(Ordering::Relaxed)
    }

    #[test]
    fn sizes_match_libvhost_user() {
        assert_eq!(queue_region_size(128), 2112);
        assert_eq!(queue_region_size(256), 4160);
        let (region, file, size) = InflightRegion::create(1, 128).unwrap();
        assert_eq!((size, file.metadata().unwrap().len()), (2112, 2112));
        assert_eq!((region.num_queues(), region.queue_size()), (1, 128));
        let (_, file, size) = InflightRegion::create(2, 256).unwrap();
        assert_eq!((size, file.metadata().unwrap().len()), (8320, 8320));
    }

    #[test]
    fn every_queue_size_fits_header_and_descriptors() {
        for queue_size in 1..=MAX_QUEUE_SIZE {
            assert!(queue_region_size(queue_size) >= 16 + 16 * u64::from(queue_size));
        }
    }

    #[test]
    fn layout_is_byte_exact_and_shared_through_the_fd() {
        let (region, file, _) = InflightRegion::create(2, 8).unwrap();
        let mut queue = region.queue(1).unwrap();
        assert_eq!(queue.start(0x1234, 8).unwrap(), None);
        queue.begin(3);
        queue.begin(5);
        queue.pre_put(3);
        queue.post_put(3, 0x1235);

        // Read through the fd: the bytes libvhost-user would see.
        let part = queue_region_size(8);
        let mut bytes = vec![0; 16 + 16 * 8];
        file.read_exact_at(&mut bytes, part).unwrap();
        assert_eq!(
            &bytes[..16],
            &[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 8, 0, 3, 0, 0x35, 0x12]
        );
        let desc = |head: usize| &bytes[16 + 16 * head..32 + 16 * head];
        assert_eq!(desc(3), &[0; 16]); // completed; counter 0
        assert_eq!(desc(5), &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        let mut first = vec![0; part as usize];
        file.read_exact_at(&mut first, 0).unwrap();
        assert!(first.iter().all(|&b| b == 0), "queue 0 untouched");

        // A second mapping of a dup'd fd (a region from a previous process).
        let again = reopen(&file, 2, 8);
        let mut queue = again.queue(1).unwrap();
        let resume = queue.start(0x1235, 8).unwrap();
        assert_eq!(
            resume,
            Some(Resume {
                next_avail: 0x1236,
                resubmit: vec![5]
            })
        );
        assert!(again.queue(2).is_none());
    }

    #[test]
    fn restart_resubmits_oldest_first() {
        let (region, file, mut queue) = started(16);
        for head in [5, 2, 9, 1] {
            queue.begin(head);
        }
        queue.pre_put(2);
        queue.post_put(2, 1);
        drop((queue, region)); // the process dies

        let region = reopen(&file, 1, 16);
        let mut queue = region.queue(0).unwrap();
        let resume = queue.start(1, 16).unwrap().unwrap();
        assert_eq!(
            resume,
            Resume {
                next_avail: 4,
                resubmit: vec![5, 9, 1]
            }
        );
        queue.begin(7);
        assert_eq!(counter(&queue, 1), 3);
        assert_eq!(counter(&queue, 7), 4, "counters continue after the largest");
    }

    #[test]
    fn counters_wrapping_around_stay_in_order() {
        let (_region, file, mut queue) = started(8);
        queue.counter = u64::MAX - 1;
        for head in [3, 0, 6, 2] {
            queue.begin(head); // counters MAX-1, MAX, 0, 1
        }
        let region = reopen(&file, 1, 8);
        let mut queue = region.queue(0).unwrap();
        let resume = queue.start(0, 8).unwrap().unwrap();
        assert_eq!(resume.resubmit, vec![3, 0, 6, 2]);
        assert_eq!(resume.next_avail, 4);
        queue.begin(7);
        assert_eq!(counter(&queue, 7), 2);

        // A request stuck while many others completed is still the oldest.
        let mut taken = vec![(5000, 1), (5, 2), (5001, 3)];
        oldest_first(&mut taken);
        assert_eq!(taken, vec![(5, 2), (5000, 1), (5001, 3)]);
    }

    #[test]
    fn published_but_not_cleared_is_not_resubmitted() {
        let (_region, file, mut queue) = started(16);
        queue.begin(4);
        queue.begin(7);
        queue.pre_put(4);
        // The caller published 4's used element: used.idx 0 -> 1. Killed.
        let region = reopen(&file, 1, 16);
        let mut queue = region.queue(0).unwrap();
        let resume = queue.start(1, 16).unwrap().unwrap();
        assert_eq!(
            resume,
            Resume {
                next_avail: 2,
                resubmit: vec![7]
            }
        );
        assert_eq!(flag(&queue, 4), 0);
        assert_eq!(queue.header().used_idx.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn not_yet_published_is_resubmitted() {
        let (_region, file, mut queue) = started(16);
        queue.begin(4);
        queue.begin(7);
        queue.pre_put(4);
        // Killed before used.idx moved.
        let region = reopen(&file, 1, 16);
        let mut queue = region.queue(0).unwrap();
        let resume = queue.start(0, 16).unwrap().unwrap();
        assert_eq!(
            resume,
            Resume {
                next_avail: 2,
                resubmit: vec![4, 7]
            }
        );
    }

    #[test]
    fn fresh_region_is_initialized() {
        let (region, _file, _) = InflightRegion::create(1, 16).unwrap();
        let mut queue = region.queue(0).unwrap();
        assert_eq!(queue.start(7, 16).unwrap(), None);
        let header = queue.header();
        assert_eq!(header.version.load(Ordering::Relaxed), 1);
        assert_eq!(header.desc_num.load(Ordering::Relaxed), 16);
        assert_eq!(header.used_idx.load(Ordering::Relaxed), 7);
        // Started again without a crash: nothing in flight, resume at used.idx.
        assert_eq!(
            queue.start(7, 16).unwrap(),
            Some(Resume {
                next_avail: 7,
                resubmit: vec![]
            })
        );
    }

    #[test]
    fn unsupported_version_is_an_error() {
        let (_region, _file, mut queue) = started(16);
        queue.header().version.store(2, Ordering::Relaxed);
        let err = queue.start(0, 16).unwrap_err();
        assert!(matches!(err, InflightError::Version { version: 2, .. }));
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn desc_num_mismatch_is_an_error() {
        let (_region, _file, mut queue) = started(16);
        let err = queue.start(0, 8).unwrap_err();
        assert!(matches!(
            err,
            InflightError::DescNum {
                desc_num: 16,
                ring_size: 8,
                ..
            }
        ));
        let err = queue.start(0, 32).unwrap_err();
        assert!(matches!(err, InflightError::RingSize { capacity: 16, .. }));
    }

    #[test]
    fn last_batch_head_out_of_range_is_an_error() {
        let (_region, _file, mut queue) = started(16);
        queue.header().last_batch_head.store(16, Ordering::Relaxed);
        let err = queue.start(1, 16).unwrap_err();
        assert!(matches!(err, InflightError::LastBatchHead { head: 16, .. }));
    }

    #[test]
    fn flag_other_than_0_or_1_is_an_error() {
        let (_region, _file, mut queue) = started(16);
        queue.desc(3).unwrap().inflight.store(2, Ordering::Relaxed);
        let err = queue.start(0, 16).unwrap_err();
        assert!(matches!(
            err,
            InflightError::Flag {
                head: 3,
                value: 2,
                ..
            }
        ));
    }

    #[test]
    fn short_file_is_rejected_before_mmap() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0; 100]).unwrap();
        let err = InflightRegion::from_file(file, 2112, 0, 1, 128)
            .err()
            .unwrap();
        assert!(matches!(
            err,
            InflightError::FileTooShort { file_len: 100, .. }
        ));

        let file = tempfile::tempfile().unwrap();
        file.set_len(2112).unwrap();
        let err = InflightRegion::from_file(file, 2112, 4096, 1, 128)
            .err()
            .unwrap();
        assert!(matches!(err, InflightError::FileTooShort { .. }), "{err}");

        let file = tempfile::tempfile().unwrap();
        file.set_len(8192).unwrap();
        let err = InflightRegion::from_file(file, 2112, 100, 1, 128)
            .err()
            .unwrap();
        assert!(matches!(err, InflightError::MmapOffset(100)), "{err}");
    }

    #[test]
    fn mmap_size_mismatch_is_an_error() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(8320).unwrap();
        let err = InflightRegion::from_file(file, 4096, 0, 2, 256)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "inflight region of 4096 bytes, expected 8320 for 2 queues of 256"
        );
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let file = tempfile::tempfile().unwrap();
        let err = InflightRegion::from_file(file, 0, 0, 0, 128).err().unwrap();
        assert!(matches!(err, InflightError::NumQueues(0)));
        assert!(matches!(
            InflightRegion::create(0, 128).err().unwrap(),
            InflightError::NumQueues(0)
        ));
        assert!(matches!(
            InflightRegion::create(1, 0).err().unwrap(),
            InflightError::QueueSize(0)
        ));
        assert!(matches!(
            InflightRegion::create(1, 32769).err().unwrap(),
            InflightError::QueueSize(32769)
        ));
    }

    #[test]
    fn out_of_range_heads_are_ignored() {
        let (region, _file, _) = InflightRegion::create(2, 16).unwrap();
        let mut queue = region.queue(0).unwrap();
        assert_eq!(queue.start(0, 8).unwrap(), None);
        for head in [8, 16, u16::MAX] {
            queue.begin(head);
            queue.pre_put(head);
            queue.post_put(head, 0);
        }
        let resume = queue.start(0, 8).unwrap().unwrap();
        assert_eq!(resume.resubmit, Vec::<u16>::new());
        assert_eq!(queue.header().last_batch_head.load(Ordering::Relaxed), 0);
        let other = region.queue(1).unwrap();
        assert_eq!(other.header().version.load(Ordering::Relaxed), 0);
    }
}
