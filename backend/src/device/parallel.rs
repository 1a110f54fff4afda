//! Large transfers shared with helper threads.
//!
//! A virtqueue's requests run one after another on the queue's worker
//! thread. For small requests that is what makes the device fast (no
//! hand-off between threads), but a 1 MiB read from the page cache is a
//! memory copy that one core finishes at roughly its memory bandwidth, while
//! the other cores idle: a guest streaming a file through one queue would be
//! bound to one core. [`Helpers`] shares such work between the calling
//! thread and a small pool: [`Helpers::for_each_piece`] cuts a set of
//! transfers into pieces at 4 KiB boundaries of the disk and returns when
//! every piece is done, so nothing about a request changes but the speed.
//!
//! The calling thread starts working at once and helpers join as they wake
//! up; everyone takes the next piece from a shared cursor until none is
//! left. So a helper that wakes late costs nothing but its share, and the
//! work never waits for a thread that is not there.
//!
//! Only transfers of at least [`MIN_SPLIT`] bytes are worth it: below that
//! the hand-off to another thread (a wake-up, some microseconds) costs more
//! than the copy it shares.

use smallvec::SmallVec;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The smallest transfer worth sharing.
pub const MIN_SPLIT: u64 = 256 * 1024;
/// The size of a piece (at least; cuts round to 4 KiB): small enough that
/// threads finish close together, large enough that a piece's system call
/// costs nothing next to its copy.
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

    /// Calls `piece(i, range)` for byte ranges that tile `0..len` of each
    /// transfer `i` (`transfers[i]` is its disk offset and length), on this
    /// thread and the helpers, and returns when all calls have returned.
    ///
    /// Transfers of [`MIN_SPLIT`] bytes or more are cut into pieces of about
    /// 128 KiB, so that the threads finish at nearly the same time however
    /// the transfers' sizes add up; ranges other than a transfer's first
    /// start at offsets `r` with `(offset + r) % 4096 == 0`.
    pub fn for_each_piece<P>(&self, transfers: &[(u64, u64)], piece: P)
    where
        P: Fn(usize, Range<u64>) + Sync,
    {
        let cuts: SmallVec<[Cuts; 16]> = transfers
            .iter()
            .map(|&(offset, len)| Cuts::new(offset, len, pieces(len)))
            .collect();
        let total: usize = cuts.iter().map(Cuts::count).sum();
        if total <= 1 {
            for (i, c) in cuts.iter().enumerate() {
                (0..c.count()).for_each(|p| piece(i, c.piece(p)));
            }
            return;
        }
        let next = AtomicUsize::new(0);
        self.share(total - 1, || loop {
            let mut unit = next.fetch_add(1, Ordering::Relaxed);
            if unit >= total {
                break;
            }
            for (i, c) in cuts.iter().enumerate() {
                if unit < c.count() {
                    piece(i, c.piece(unit));
                    break;
                }
                unit -= c.count();
            }
        });
    }

    /// Runs `work` on this thread and on up to `wanted` helpers, and
    /// returns once every call has returned. `work` takes its items from a
    /// shared cursor, so any number of calls finishes the work.
    fn share<W>(&self, wanted: usize, work: W)
    where
        W: Fn() + Sync,
    {
        let helpers = wanted.min(self.threads - 1);
        self.pool.in_place_scope(|scope| {
            for _ in 0..helpers {
                scope.spawn(|_| work());
            }
            work();
        });
    }
}

/// How many pieces a transfer of `len` bytes is cut into: none if it is
/// empty, one below [`MIN_SPLIT`], else pieces of at least [`MIN_PIECE`].
fn pieces(len: u64) -> usize {
    if len == 0 {
        return 0;
    }
    if len < MIN_SPLIT {
        return 1;
    }
    usize::try_from(len / MIN_PIECE).unwrap_or(usize::MAX)
}

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
        Self { base, len, n }
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

    /// Every range `for_each_piece` hands out for one transfer, and their
    /// total length.
    fn pieces_of(helpers: &Helpers, base: u64, len: u64) -> (Vec<Range<u64>>, u64) {
        let seen = Mutex::new(Vec::new());
        helpers.for_each_piece(&[(base, len)], |i, r| {
            assert_eq!(i, 0);
            seen.lock().unwrap().push(r);
        });
        let mut seen = seen.into_inner().unwrap();
        seen.sort_by_key(|r| r.start);
        let total = seen.iter().map(|r| r.end - r.start).sum();
        (seen, total)
    }

    #[test]
    fn small_transfers_stay_whole() {
        let helpers = Helpers::new(4).unwrap();
        assert_eq!(pieces_of(&helpers, 0, 0).0, vec![]);
        for len in [512, 4096, MIN_SPLIT - 512] {
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
                assert_eq!(
                    pieces.len() as u64,
                    len / MIN_PIECE,
                    "base {base} len {len}"
                );
                assert_eq!(pieces[0].start, 0);
                assert_eq!(pieces.last().unwrap().end, len);
                for w in pieces.windows(2) {
                    assert_eq!(w[0].end, w[1].start, "{pieces:?}");
                    assert_eq!((base + w[1].start) % PIECE_ALIGN, 0, "{pieces:?}");
                }
                assert!(
                    pieces
                        .iter()
                        .all(|r| r.end - r.start >= MIN_PIECE - PIECE_ALIGN),
                    "{pieces:?}"
                );
            }
        }
    }

    #[test]
    fn every_piece_of_every_transfer_once() {
        let helpers = Helpers::new(2).unwrap();
        let transfers = [(0, 1 << 20), (4096, 0), (1536, 4096), (8192, MIN_SPLIT)];
        let seen = Mutex::new(Vec::new());
        helpers.for_each_piece(&transfers, |i, r| seen.lock().unwrap().push((i, r)));
        let mut seen = seen.into_inner().unwrap();
        seen.sort_by_key(|(i, r)| (*i, r.start));
        for (i, &(_, len)) in transfers.iter().enumerate() {
            let mine: Vec<_> = seen.iter().filter(|(j, _)| *j == i).collect();
            let covered: u64 = mine.iter().map(|(_, r)| r.end - r.start).sum();
            assert_eq!(covered, len, "transfer {i}: {mine:?}");
        }
        // Only a transfer of nothing has no piece.
        assert!(seen.iter().all(|(i, _)| *i != 1));
    }

    #[test]
    fn a_small_transfer_runs_on_the_calling_thread() {
        let helpers = Helpers::new(2).unwrap();
        let caller = std::thread::current().id();
        let ran_on = Mutex::new(Vec::new());
        helpers.for_each_piece(&[(0, MIN_SPLIT - 4096)], |_, _| {
            ran_on.lock().unwrap().push(std::thread::current().id())
        });
        assert_eq!(ran_on.into_inner().unwrap(), vec![caller]);
    }

    #[test]
    fn cuts_near_the_end_of_the_address_space() {
        let cuts = Cuts::new(u64::MAX - (1 << 21), 1 << 20, 2);
        assert_eq!(cuts.piece(0).start, 0);
        assert_eq!(cuts.piece(1).end, 1 << 20);
        assert_eq!(cuts.piece(0).end, cuts.piece(1).start);
    }
}
