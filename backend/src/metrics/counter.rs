//! Counters with one writer and any number of readers.
//!
//! Each virtqueue is served by exactly one worker thread, so its counters
//! have one writer. Adding with a relaxed load and store instead of an atomic
//! read-modify-write keeps the count exact for that writer and costs about a
//! nanosecond instead of the ~6-8 ns of a locked instruction, which is most
//! of the metrics' cost per request. Readers (the HTTP endpoint) load
//! whenever they like and see a recent value. Two threads adding to the same
//! counter at once would lose counts (never memory safety): the API that
//! writes says so.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A u64 counter for one writer thread at a time (see the module docs).
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (wrapping; a u64 of bytes or ns does not wrap in practice).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Subtracts `n`, stopping at zero.
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0
            .store(self.0.load(Relaxed).saturating_sub(n), Relaxed);
    }

    /// Raises the value to `v` if it is lower.
    #[inline]
    pub fn raise(&self, v: u64) {
        if v > self.0.load(Relaxed) {
            self.0.store(v, Relaxed);
        }
    }

    /// Sets the value (a gauge; any thread).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}
