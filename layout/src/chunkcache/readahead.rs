//! Bounded readahead for registry blobs: when reads walk a blob chunk
//! after chunk, the next chunks are fetched on a few background threads
//! before the reader asks for them, so a cold sequential read is not one
//! round trip per chunk on the queue's thread.
//!
//! Only a sequential walk that is fetching (it misses, or reaches a chunk
//! readahead brought) triggers it, so reads of what is cached already (a
//! second server on the host) fetch nothing more. A walk is a read going
//! on into chunk `k` after reads that went on into `k-1` and, before
//! that, ended in `k-2` (see [`Detector`]); one large read alone is none.
//! A random-read workload reads no chunk it would not have read anyway
//! (two adjacent steps in a row are needed, which random reads over more
//! than a handful of chunks almost never make).
//!
//! The queue is bounded and jobs that do not fit are dropped; the threads
//! are few and fixed. A background fetch goes through the same fill
//! protocol as a reader's (so a reader that wants the chunk meanwhile
//! waits for it, or finds it done), and its errors are only logged: the
//! reader's own attempt fetches again and fails properly if it must.

use super::CachedBlob;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};

/// Background fetchers shared by every blob of a cache.
#[derive(Debug)]
pub(super) struct Readahead {
    tx: SyncSender<(Weak<CachedBlob>, u64)>,
    /// Chunks to fetch ahead of a sequential reader.
    pub(super) window: u64,
}

impl Readahead {
    /// `window` chunks ahead, on `threads` threads with a queue of
    /// `2 × window` jobs. The threads end once every sender is gone (the
    /// cache and all its blobs dropped).
    pub(super) fn start(window: u64, threads: usize) -> std::io::Result<Arc<Readahead>> {
        let cap = usize::try_from(window.saturating_mul(2)).unwrap_or(usize::MAX);
        let (tx, rx) = sync_channel::<(Weak<CachedBlob>, u64)>(cap.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            spawn_without_signals(format!("readahead-{i}"), move || worker(&rx))?;
        }
        Ok(Arc::new(Readahead { tx, window }))
    }

    /// Queues chunk `chunk` of `blob`; false when the queue is full.
    pub(super) fn offer(&self, blob: Weak<CachedBlob>, chunk: u64) -> bool {
        match self.tx.try_send((blob, chunk)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// Spawns a thread with every signal blocked: the cache may be opened
/// before a server sets up its signal handling (which blocks SIGTERM and
/// friends so that only its signal thread sees them), and a background
/// thread must never be the one a SIGTERM is delivered to.
fn spawn_without_signals(name: String, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    // SAFETY: the sigset_t values are local and initialised by
    // sigfillset/pthread_sigmask before use; the calling thread's mask is
    // restored before returning, and the new thread inherits the full one.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let spawned = std::thread::Builder::new().name(name).spawn(f);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        spawned.map(|_| ())
    }
}

fn worker(rx: &Mutex<Receiver<(Weak<CachedBlob>, u64)>>) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok((blob, chunk)) = job else { return };
        // A blob dropped meanwhile (its server went away) needs nothing.
        let Some(blob) = blob.upgrade() else { continue };
        let fetched = match blob.fetch_chunk(chunk) {
            Ok(fetched) => fetched,
            Err(e) => {
                tracing::debug!(chunk, "readahead: {}", blockio::error_chain(&e));
                false
            }
        };
        blob.readahead_done(chunk, fetched);
    }
}

/// Tells a sequential walk over a blob's chunks from other reads: the last
/// chunk read and how many adjacent steps led to it, packed in one atomic
/// (so that the read path, when the chunk did not change, costs one load).
#[derive(Debug, Default)]
pub(super) struct Detector {
    /// `chunk + 1` in the low 48 bits (0: nothing read yet), the number of
    /// consecutive `+1` steps (saturating at 15) in the top bits.
    state: AtomicU64,
}

const CHUNK_BITS: u32 = 48;
const CHUNK_MASK: u64 = (1 << CHUNK_BITS) - 1;

impl Detector {
    /// Notes a read that ends in chunk `last` having started in `first`;
    /// says whether the walk is sequential enough to read ahead.
    pub(super) fn note(&self, first: u64, last: u64) -> bool {
        let old = self.state.load(Ordering::Relaxed);
        let prev = (old & CHUNK_MASK).checked_sub(1);
        if prev == Some(last) {
            return false;
        }
        // A read that goes on from where the previous one ended (into
        // the following chunk) is one step of a walk; anything else
        // starts over. One large read is no walk by itself: it says
        // nothing about what comes next.
        let steps = match prev {
            Some(p) if p + 1 == first || (p == first && last > p) => {
                ((old >> CHUNK_BITS) + 1).min(15)
            }
            _ => 0,
        };
        let new = (steps << CHUNK_BITS) | ((last + 1) & CHUNK_MASK);
        // Another queue's read may have moved it meanwhile: either note
        // wins, both are reads of this blob.
        self.state.store(new, Ordering::Relaxed);
        steps >= 2
    }
}

#[cfg(test)]
mod tests {
    use super::Detector;

    #[test]
    fn sequential_walks_trigger_and_random_reads_do_not() {
        let d = Detector::default();
        assert!(!d.note(0, 0));
        assert!(!d.note(0, 0), "same chunk again");
        assert!(!d.note(1, 1), "one step");
        assert!(d.note(2, 2), "two steps");
        assert!(!d.note(2, 2), "same chunk: nothing new");
        assert!(d.note(3, 3));
        assert!(!d.note(40, 40), "a jump starts over");
        assert!(!d.note(7, 7));
        assert!(!d.note(9, 9), "a gap is no step");
        assert!(!d.note(10, 10));
        assert!(d.note(11, 11));

        // Large sequential reads: one step per read, not per chunk.
        let d = Detector::default();
        assert!(!d.note(0, 2), "one large read is no walk");
        assert!(!d.note(3, 5));
        assert!(d.note(6, 8));
        // A read that starts in the chunk the last one ended in and goes
        // on into the next continues the walk too.
        let d = Detector::default();
        assert!(!d.note(0, 0));
        assert!(!d.note(0, 1));
        assert!(d.note(1, 2));

        // Random 4 KiB reads over 256 chunks: a pseudo-random walk.
        let d = Detector::default();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut triggered = 0;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let c = x % 256;
            triggered += u32::from(d.note(c, c));
        }
        assert!(triggered <= 2, "{triggered} triggers in 10000 random reads");
    }
}
