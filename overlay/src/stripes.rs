//! Striped locks keyed by block number.
//!
//! Only requests that change a block's state take them: a partial write
//! that copies a block up from the base must not interleave with another
//! write to the same block, or one of them would be lost. Overwrites of
//! blocks already written take no lock.
//!
//! A stripe covers a granule of 256 consecutive blocks (1 MiB), so a large
//! request takes one or two locks, not one per block: two queues streaming
//! 1 MiB writes would otherwise hand all 256 locks back and forth on every
//! request. Small random requests still spread over all the stripes.

use smallvec::SmallVec;
use std::sync::{Mutex, MutexGuard};

/// How many locks; block `b` uses lock `(b / GRANULE) % STRIPES`.
const STRIPES: u64 = 256;
/// Blocks per stripe granule.
const GRANULE: u64 = 256;

/// A fixed set of locks shared by all blocks.
pub struct Stripes {
    locks: Box<[Mutex<()>]>,
}

/// The locks held for a range of blocks; released on drop.
pub struct RangeGuard<'a> {
    _guards: SmallVec<[MutexGuard<'a, ()>; 4]>,
}

impl Stripes {
    /// A fresh set of locks.
    pub fn new() -> Stripes {
        Stripes {
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Locks every stripe used by blocks `[first, end)`, always in ascending
    /// stripe order so that two ranges can never deadlock.
    pub fn lock(&self, first: u64, end: u64) -> RangeGuard<'_> {
        if end <= first {
            return RangeGuard {
                _guards: SmallVec::new(),
            };
        }
        let (first, last) = (first / GRANULE, (end - 1) / GRANULE);
        let count = last - first + 1;
        let start = first % STRIPES;
        // Ascending stripe numbers: a range that wraps takes the low
        // stripes first.
        let (low, high) = if count >= STRIPES {
            (0..0, 0..STRIPES)
        } else if start + count <= STRIPES {
            (0..0, start..start + count)
        } else {
            (0..start + count - STRIPES, start..STRIPES)
        };
        let guards = low
            .chain(high)
            // A poisoned stripe guards no data, only ordering: carry on.
            .map(|s| {
                self.locks[s as usize]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
            })
            .collect();
        RangeGuard { _guards: guards }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(stripes: &Stripes) -> Vec<u64> {
        (0..STRIPES)
            .filter(|&s| stripes.locks[s as usize].try_lock().is_err())
            .collect()
    }

    #[test]
    fn a_range_locks_the_stripes_of_its_granules() {
        let s = Stripes::new();
        {
            let _g = s.lock(0, GRANULE);
            assert_eq!(held(&s), vec![0]);
        }
        {
            // An unaligned 1 MiB range spans two granules.
            let _g = s.lock(GRANULE + 10, 2 * GRANULE + 10);
            assert_eq!(held(&s), vec![1, 2]);
        }
        {
            // Wrapping past the last stripe takes the low ones too.
            let _g = s.lock((STRIPES - 1) * GRANULE, (STRIPES + 1) * GRANULE);
            assert_eq!(held(&s), vec![0, STRIPES - 1]);
        }
        {
            let _g = s.lock(5, 5);
            assert_eq!(held(&s), Vec::<u64>::new());
        }
        let _g = s.lock(0, u64::MAX);
        assert_eq!(held(&s).len() as u64, STRIPES);
    }
}
