//! The block map in memory: two bits per block in atomic words.
//!
//! Readers and writers on any thread load and update states without locks
//! (a compare-and-swap per 32 blocks). Each map page has a dirty flag; a
//! flush clears the flags *before* copying the pages, so a state changed
//! after the copy leaves its page dirty for the next flush.
//!
//! The words live either in private memory or in a shared mapping of the
//! shadow map file (see `shadow.rs`), where every update is already in the
//! kernel's page cache and so survives the process.

use crate::format::{BlockState, WORDS_PER_PAGE};
use crate::shadow::Mapping;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

/// Blocks per in-memory word.
const PER_WORD: u64 = 32;

/// Every block's state.
pub struct Map {
    words: Words,
    dirty: Box<[AtomicBool]>,
}

/// The words, wherever they live: a pointer and a length (so the hot path
/// does not branch on where), and the owner that keeps them alive.
struct Words {
    ptr: *const AtomicU64,
    len: usize,
    owner: Owner,
}

enum Owner {
    /// A boxed slice, held as the raw pointer `Box::into_raw` gave and freed
    /// when the words are dropped: a `Box` that moves (into this enum, or
    /// with the map) asserts that it is unique, which would invalidate
    /// `ptr` (Miri caught this under Stacked Borrows).
    Heap(*mut [AtomicU64]),
    Shared(#[allow(dead_code)] Arc<Mapping>),
}

impl Drop for Words {
    fn drop(&mut self) {
        if let Owner::Heap(raw) = self.owner {
            // SAFETY: `raw` came from `Box::into_raw` in `Map::from_words`
            // and is freed only here; `ptr`, derived from it, dies with
            // `self`.
            drop(unsafe { Box::from_raw(raw) });
        }
    }
}

// SAFETY: `ptr` points into memory `owner` keeps alive and never moves (a
// leaked boxed slice's heap buffer, or a mapping unmapped only on drop),
// and it is only used to make shared references to atomics.
unsafe impl Send for Words {}
// SAFETY: as above; the atomics are `Sync`.
unsafe impl Sync for Words {}

impl std::ops::Deref for Words {
    type Target = [AtomicU64];
    fn deref(&self) -> &[AtomicU64] {
        // SAFETY: see the `Send` impl; `len` atomics are there.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A state repeated in all 32 fields of a word.
fn pattern(state: BlockState) -> u64 {
    0x5555_5555_5555_5555u64 * state as u64
}

/// The fields of blocks `[from, to)` within one word (`0 <= from < to <= 32`).
fn field_mask(from: u64, to: u64) -> u64 {
    let hi = if to == PER_WORD {
        u64::MAX
    } else {
        (1u64 << (2 * to)) - 1
    };
    hi & !((1u64 << (2 * from)) - 1)
}

impl Map {
    /// A map from words read off disk (whole pages; the caller has checked
    /// every field).
    pub fn from_words(words: Vec<u64>) -> Map {
        let pages = words.len() / WORDS_PER_PAGE;
        let heap: Box<[AtomicU64]> = words.into_iter().map(AtomicU64::new).collect();
        let len = heap.len();
        let raw = Box::into_raw(heap);
        Map {
            words: Words {
                ptr: raw.cast_const().cast(),
                len,
                owner: Owner::Heap(raw),
            },
            dirty: (0..pages).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// A map whose words are `mapping`'s words `[first, first + len)`
    /// (whole pages; the caller has checked every field). Updates go
    /// straight to the mapping.
    pub fn from_mapping(mapping: Arc<Mapping>, first: usize, len: usize) -> Map {
        let ptr = mapping.words(first, len).as_ptr();
        Map {
            words: Words {
                ptr,
                len,
                owner: Owner::Shared(mapping),
            },
            dirty: (0..len / WORDS_PER_PAGE)
                .map(|_| AtomicBool::new(false))
                .collect(),
        }
    }

    fn word(&self, block: u64) -> u64 {
        self.words[(block / PER_WORD) as usize].load(SeqCst)
    }

    /// The state of `block` (below [`blocks`](Self::blocks)).
    pub fn get(&self, block: u64) -> BlockState {
        let bits = (self.word(block) >> (2 * (block % PER_WORD))) & 3;
        // Words are checked on load and only ever set to valid patterns.
        BlockState::from_bits(bits).unwrap_or(BlockState::Base)
    }

    /// The state of `block` and the end of its run of equal states, at most
    /// `end`.
    pub fn run(&self, block: u64, end: u64) -> (BlockState, u64) {
        let state = self.get(block);
        let mut b = block + 1;
        while b < end {
            if b.is_multiple_of(PER_WORD) && b + PER_WORD <= end && self.word(b) == pattern(state) {
                b += PER_WORD;
                continue;
            }
            if self.get(b) != state {
                break;
            }
            b += 1;
        }
        (state, b)
    }

    /// True if every block of `[first, end)` is written.
    pub fn all_written(&self, first: u64, end: u64) -> bool {
        first >= end || self.run(first, end) == (BlockState::Written, end)
    }

    /// Sets blocks `[first, end)` to `state`; returns true if any changed
    /// (their pages are then dirty).
    pub fn set(&self, first: u64, end: u64, state: BlockState) -> bool {
        let mut changed = false;
        let mut b = first;
        while b < end {
            let w = b / PER_WORD;
            let to = end.min((w + 1) * PER_WORD);
            let mask = field_mask(b % PER_WORD, to - w * PER_WORD);
            let want = pattern(state) & mask;
            let old = self.words[w as usize]
                .fetch_update(SeqCst, SeqCst, |old| {
                    (old & mask != want).then_some((old & !mask) | want)
                })
                .is_ok();
            if old {
                changed = true;
                let page = w as usize / WORDS_PER_PAGE;
                // The state change above precedes this store, and a flush
                // clears the flag before copying: no change is missed.
                if !self.dirty[page].load(SeqCst) {
                    self.dirty[page].store(true, SeqCst);
                }
            }
            b = to;
        }
        changed
    }

    /// Marks page `page` dirty (a flush that failed to write it).
    pub fn mark_dirty(&self, page: usize) {
        self.dirty[page].store(true, SeqCst);
    }

    /// Marks dirty every page whose words differ from `file` (the map as the
    /// file holds it), so the next flush writes them; returns how many.
    pub fn mark_differing(&self, file: &[u64]) -> u64 {
        let mut n = 0;
        for (page, (mine, theirs)) in self
            .words
            .chunks(WORDS_PER_PAGE)
            .zip(file.chunks(WORDS_PER_PAGE))
            .enumerate()
        {
            if mine.iter().zip(theirs).any(|(a, b)| a.load(SeqCst) != *b) {
                self.mark_dirty(page);
                n += 1;
            }
        }
        n
    }

    /// True if some page is dirty (holds states the file's map lacks).
    pub fn any_dirty(&self) -> bool {
        self.dirty.iter().any(|d| d.load(SeqCst))
    }

    /// Clears every dirty flag and returns copies of the pages that had one.
    pub fn take_dirty(&self) -> Vec<(usize, Vec<u64>)> {
        let mut out = Vec::new();
        for (page, flag) in self.dirty.iter().enumerate() {
            if flag.load(SeqCst) && flag.swap(false, SeqCst) {
                let words = &self.words[page * WORDS_PER_PAGE..(page + 1) * WORDS_PER_PAGE];
                out.push((page, words.iter().map(|w| w.load(SeqCst)).collect()));
            }
        }
        out
    }

    /// How many blocks are written and how many zero.
    pub fn counts(&self) -> (u64, u64) {
        let (mut written, mut zero) = (0, 0);
        for w in self.words.iter() {
            let w = w.load(SeqCst);
            written += u64::from((w & 0x5555_5555_5555_5555).count_ones());
            zero += u64::from((w & 0xAAAA_AAAA_AAAA_AAAA).count_ones());
        }
        (written, zero)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_runs() {
        let map = Map::from_words(vec![0; WORDS_PER_PAGE * 2]);
        assert!(map.set(5, 100, BlockState::Written));
        assert!(!map.set(5, 100, BlockState::Written));
        assert!(map.set(31, 33, BlockState::Zero));
        assert_eq!(map.run(0, 20000), (BlockState::Base, 5));
        assert_eq!(map.run(5, 20000), (BlockState::Written, 31));
        assert_eq!(map.run(31, 20000), (BlockState::Zero, 33));
        assert_eq!(map.run(33, 50), (BlockState::Written, 50));
        assert!(map.all_written(33, 100));
        assert!(!map.all_written(30, 100));
        assert_eq!(map.counts(), (93, 2));
        let dirty = map.take_dirty();
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0].0, 0);
        assert!(map.take_dirty().is_empty());
        map.set(16128, 16129, BlockState::Written);
        assert_eq!(map.take_dirty()[0].0, 1);
    }
}
