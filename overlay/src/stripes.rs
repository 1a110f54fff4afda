//! Striped locks keyed by block number.
//!
//! Only requests that change a block's state take them: a partial write
//! that copies a block up from the base must not interleave with another
//! write to the same block, or one of them would be lost. Overwrites of
//! blocks already written take no lock.

use smallvec::SmallVec;
use std::sync::{Mutex, MutexGuard};

/// How many locks; block `b` uses lock `b % STRIPES`.
const STRIPES: u64 = 256;

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
        let count = end.saturating_sub(first);
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
