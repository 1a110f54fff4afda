//! Large transfers shared with helper threads.
//!
//! A virtqueue's requests run one after another on the queue's worker
//! thread. For small requests that is what makes the device fast (no
//! hand-off between threads), but a 1 MiB read from the page cache is a
//! memory copy that one core finishes at roughly its memory bandwidth, while
//! the other cores idle: a guest streaming a file through one queue would be
//! bound to one core. [`Helpers`] shares such work between the calling
//! thread and a small pool: either a set of whole requests
//! ([`Helpers::for_each`]) or one transfer cut into pieces at 4 KiB
//! boundaries of the disk ([`Helpers::run`]). Both return when all the work
//! is done, so nothing about a request changes but the speed.
//!
//! The calling thread starts working at once and helpers join as they wake
//! up; everyone takes the next item from a shared cursor until none is left.
//! So a helper that wakes late costs nothing but its share, and the work
//! never waits for a thread that is not there.
//!
//! Only transfers of at least [`MIN_SPLIT`] bytes are worth it: below that
//! the hand-off to another thread (a wake-up, some microseconds) costs more
//! than the copy it shares.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The smallest transfer worth sharing.
pub const MIN_SPLIT: u64 = 256 * 1024;
/// The smallest piece: half of [`MIN_SPLIT`], so that a transfer of exactly
/// that size goes to two threads.
const MIN_PIECE: u64 = MIN_SPLIT / 2;
/// Pieces start at multiples of this, in disk offsets: whole pages of the
/// page cache, whole blocks of an overlay.
const PIECE_ALIGN: u64 = 4096;

/// A pool of helper threads that share large transfers with the thread that
/// asks.
pub struct Helpers {
    pool: rayon::ThreadPool,
    /// The calling thread plus the pool's.
    threads: usize,
}

impl Helpers {
    /// Helpers for one thread per CPU this process may run on, or `None` on
    /// a single CPU, where sharing cannot help.
    pub fn for_this_machine() -> io::Result<Option<Self>> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 {
            return Ok(None);
        }
        Self::new(cpus).map(Some)
    }

    /// Helpers that let `threads` threads work at once: the caller and
    /// `threads - 1` pool threads (at least one).
    pub fn new(threads: usize) -> io::Result<Self> {
        let threads = threads.max(2);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads - 1)
            .thread_name(|i| format!("ocidisk-helper-{i}"))
            // Transfers need little stack; the default 2 MiB would only
            // reserve address space.
            .stack_size(256 * 1024)
            .build()
            .map_err(io::Error::other)?;
        Ok(Self { pool, threads })
    }

    /// How many threads work at once: the caller and the pool's.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f` on every item, on this thread and the helpers, and returns
    /// when all calls have returned.
    pub fn for_each<T, F>(&self, items: &mut [T], f: F)
    where
        T: Send,
        F: Fn(&mut T) + Sync,
    {
        if items.len() < 2 {
            items.iter_mut().for_each(f);
            return;
        }
        let helpers = items.len() - 1;
        let cursor = Mutex::new(items.iter_mut());
        let next = || cursor.lock().unwrap_or_else(|e| e.into_inner()).next();
        self.share(helpers, || {
            while let Some(item) = next() {
                f(item);
            }
        });
    }

    /// Transfers `len` bytes by calling `piece(range)` for byte ranges that
    /// tile `0..len`, several at once when `len` is large, and folds their
    /// results with `merge`, in no particular order. Returns an error if any piece failed, after
    /// every piece has finished: no piece still runs when this returns.
    ///
    /// Ranges other than the first start at offsets `r` with
    /// `(base + r) % 4096 == 0`, where `base` is the transfer's disk offset.
    pub fn run<T, E, P, M>(&self, base: u64, len: u64, piece: P, merge: M) -> Result<T, E>
    where
        T: Send,
        E: Send,
        P: Fn(Range<u64>) -> Result<T, E> + Sync,
        M: Fn(T, T) -> T + Sync,
    {
        let cuts = Cuts::new(base, len, self.pieces(len));
        if cuts.count() == 1 {
            return piece(0..len);
        }
        let fold = |a: Result<T, E>, b: Result<T, E>| Ok(merge(a?, b?));
        let next = AtomicUsize::new(0);
        self.share(cuts.count() - 1, || {
            let mut done: Option<Result<T, E>> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cuts.count() {
                    break;
                }
                let r = piece(cuts.piece(i));
                done = Some(match done {
                    Some(d) => fold(d, r),
                    None => r,
                });
            }
            done
        })
        .into_iter()
        .flatten()
        .reduce(fold)
        // Unreachable: the calling thread takes at least the first piece.
        .unwrap_or_else(|| piece(0..0))
    }

    /// Runs `work` on this thread and on up to `wanted` helpers, and returns
    /// every call's result once all have returned. `work` takes its items
    /// from a shared cursor, so any number of calls finishes the work.
    fn share<R, W>(&self, wanted: usize, work: W) -> SmallResults<R>
    where
        R: Send,
        W: Fn() -> R + Sync,
    {
        let helpers = wanted.min(self.threads - 1);
        let results: Mutex<SmallResults<R>> = Mutex::new(SmallResults::new());
        let keep = |r: R| results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
        self.pool.in_place_scope(|scope| {
            for _ in 0..helpers {
                scope.spawn(|_| keep(work()));
            }
            keep(work());
        });
        results.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// How many pieces a transfer of `len` bytes is cut into.
    fn pieces(&self, len: u64) -> usize {
        if len < MIN_SPLIT {
            return 1;
        }
        let most = usize::try_from(len / MIN_PIECE).unwrap_or(usize::MAX);
        self.threads.min(most).max(1)
    }
}

/// The results of one [`Helpers::share`], on the stack for up to 8 threads.
type SmallResults<R> = smallvec::SmallVec<[R; 8]>;

/// Where a transfer of `len` bytes at disk offset `base` is cut into `n`
/// pieces of nearly equal size.
#[derive(Debug, Clone, Copy)]
struct Cuts {
    base: u64,
    len: u64,
    n: usize,
}

impl Cuts {
    fn new(base: u64, len: u64, n: usize) -> Self {
        Self {
            base,
            len,
            n: n.max(1),
        }
    }

    fn count(&self) -> usize {
        self.n
    }

    /// The byte range of piece `i` within the transfer.
    fn piece(&self, i: usize) -> Range<u64> {
        self.cut(i)..self.cut(i + 1)
    }

    /// Where piece `i` starts: the ideal cut rounded down to a 4 KiB
    /// boundary of the disk, kept within the transfer.
    fn cut(&self, i: usize) -> u64 {
        if i == 0 {
            return 0;
        }
        if i >= self.n {
            return self.len;
        }
        // In u128: `len * i` overflows u64 for transfers near 2^64 / n.
        let ideal = (u128::from(self.len) * i as u128 / self.n as u128) as u64;
        let disk = self.base + ideal;
        (disk - disk % PIECE_ALIGN)
            .saturating_sub(self.base)
            .min(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Every range `run` hands out, and what it returned.
    fn pieces_of(helpers: &Helpers, base: u64, len: u64) -> (Vec<Range<u64>>, u64) {
        let seen = Mutex::new(Vec::new());
        let total = helpers
            .run(
                base,
                len,
                |r| {
                    seen.lock().unwrap().push(r.clone());
                    Ok::<_, io::Error>(r.end - r.start)
                },
                |a, b| a + b,
            )
            .unwrap();
        let mut seen = seen.into_inner().unwrap();
        seen.sort_by_key(|r| r.start);
        (seen, total)
    }

    #[test]
    fn small_transfers_stay_whole() {
        let helpers = Helpers::new(4).unwrap();
        for len in [0, 512, 4096, MIN_SPLIT - 512] {
            assert_eq!(pieces_of(&helpers, 0, len).0, vec![0..len]);
        }
    }

    #[test]
    fn large_transfers_tile_the_range_at_page_boundaries() {
        let helpers = Helpers::new(3).unwrap();
        for base in [0, 512, 4096, 7 * 512, (1 << 40) + 1536] {
            for len in [
                MIN_SPLIT,
                MIN_SPLIT + 512,
                1 << 20,
                (1 << 20) + 3584,
                64 << 20,
            ] {
                let (pieces, total) = pieces_of(&helpers, base, len);
                assert_eq!(total, len, "base {base} len {len}");
                assert!(pieces.len() > 1, "base {base} len {len}: {pieces:?}");
                assert!(pieces.len() <= 3);
                assert_eq!(pieces[0].start, 0);
                assert_eq!(pieces.last().unwrap().end, len);
                for w in pieces.windows(2) {
                    assert_eq!(w[0].end, w[1].start, "{pieces:?}");
                    assert_eq!((base + w[1].start) % PIECE_ALIGN, 0, "{pieces:?}");
                }
                assert!(pieces.iter().all(|r| r.start < r.end), "{pieces:?}");
            }
        }
    }

    #[test]
    fn a_lone_item_runs_on_the_calling_thread() {
        let helpers = Helpers::new(2).unwrap();
        let caller = std::thread::current().id();
        let mut items = [None];
        helpers.for_each(&mut items, |t| *t = Some(std::thread::current().id()));
        assert_eq!(items, [Some(caller)]);
    }

    #[test]
    fn every_item_is_visited_once() {
        let helpers = Helpers::new(3).unwrap();
        for n in [0, 1, 2, 3, 16] {
            let mut items = vec![0u32; n];
            helpers.for_each(&mut items, |t| *t += 1);
            assert!(items.iter().all(|&t| t == 1), "{n} items: {items:?}");
        }
    }

    #[test]
    fn the_first_error_wins_after_every_piece_ran() {
        let helpers = Helpers::new(2).unwrap();
        let ran = Mutex::new(0);
        let result: io::Result<u64> = helpers.run(
            0,
            1 << 20,
            |r| {
                *ran.lock().unwrap() += 1;
                if r.start == 0 {
                    Err(io::Error::other("first piece failed"))
                } else {
                    Ok(r.end - r.start)
                }
            },
            |a, b| a + b,
        );
        assert_eq!(result.unwrap_err().to_string(), "first piece failed");
        assert_eq!(*ran.lock().unwrap(), 2);
    }

    #[test]
    fn cuts_near_the_end_of_the_address_space() {
        let cuts = Cuts::new(u64::MAX - (1 << 21), 1 << 20, 2);
        assert_eq!(cuts.piece(0).start, 0);
        assert_eq!(cuts.piece(1).end, 1 << 20);
        assert_eq!(cuts.piece(0).end, cuts.piece(1).start);
    }
}
