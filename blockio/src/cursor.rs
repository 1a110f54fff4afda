//! Walking a scatter list in consecutive sub-ranges.
//!
//! A request's buffers are split at positions that have nothing to do with
//! buffer boundaries (a 4 KiB overlay block, the end of a blob). A cursor hands
//! out the next `len` bytes as a new, small scatter list that borrows the same
//! memory, so each piece can go to its own `preadv` without copying.

use crate::{IoBuf, IoBufMut};
use smallvec::SmallVec;
use std::mem;

/// A scatter list of readable buffers; short lists stay on the stack.
pub type IoVecs<'a> = SmallVec<[IoBuf<'a>; 8]>;
/// A scatter list of writable buffers; short lists stay on the stack.
pub type IoVecsMut<'a> = SmallVec<[IoBufMut<'a>; 8]>;

/// The total length of a list of readable buffers.
pub fn total_len(bufs: &[IoBuf<'_>]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

/// The total length of a list of writable buffers.
pub fn total_len_mut(bufs: &[IoBufMut<'_>]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

/// Hands out consecutive sub-ranges of a list of writable buffers.
///
/// ```
/// # use blockio::IoBufMut;
/// let (mut a, mut b) = ([0u8; 3], [0u8; 5]);
/// let mut bufs = [IoBufMut::new(&mut a), IoBufMut::new(&mut b)];
/// let mut cursor = blockio::IoCursorMut::new(&mut bufs);
/// let first = cursor.take(4); // all of `a` and one byte of `b`
/// assert_eq!(first.len(), 2);
/// assert_eq!(cursor.remaining(), 4);
/// ```
pub struct IoCursorMut<'s, 'a> {
    head: IoBufMut<'s>,
    rest: std::slice::IterMut<'s, IoBufMut<'a>>,
    remaining: usize,
}

impl<'s, 'a: 's> IoCursorMut<'s, 'a> {
    /// A cursor at the start of `bufs`.
    pub fn new(bufs: &'s mut [IoBufMut<'a>]) -> Self {
        let remaining = bufs.iter().map(|b| b.len()).sum();
        IoCursorMut {
            head: IoBufMut::new(&mut []),
            rest: bufs.iter_mut(),
            remaining,
        }
    }

    /// Bytes not yet handed out.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// The next `len` bytes (fewer if fewer remain) as a scatter list.
    pub fn take(&mut self, len: usize) -> IoVecsMut<'s> {
        let mut out = IoVecsMut::new();
        let mut need = len.min(self.remaining);
        self.remaining -= need;
        while need > 0 {
            if self.head.is_empty() {
                match self.rest.next() {
                    Some(buf) => self.head = buf.reborrow(),
                    None => break,
                }
                continue;
            }
            let n = need.min(self.head.len());
            let head = mem::replace(&mut self.head, IoBufMut::new(&mut []));
            let (piece, tail) = head.split_at(n);
            self.head = tail;
            out.push(piece);
            need -= n;
        }
        out
    }
}

/// Hands out consecutive sub-ranges of a list of readable buffers.
pub struct IoCursor<'s, 'a> {
    head: IoBuf<'a>,
    rest: std::slice::Iter<'s, IoBuf<'a>>,
    remaining: usize,
}

impl<'s, 'a: 's> IoCursor<'s, 'a> {
    /// A cursor at the start of `bufs`.
    pub fn new(bufs: &'s [IoBuf<'a>]) -> Self {
        IoCursor {
            head: IoBuf::new(&[]),
            rest: bufs.iter(),
            remaining: bufs.iter().map(|b| b.len()).sum(),
        }
    }

    /// Bytes not yet handed out.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// The next `len` bytes (fewer if fewer remain) as a scatter list.
    pub fn take(&mut self, len: usize) -> IoVecs<'a> {
        let mut out = IoVecs::new();
        let mut need = len.min(self.remaining);
        self.remaining -= need;
        while need > 0 {
            if self.head.is_empty() {
                match self.rest.next() {
                    Some(buf) => self.head = *buf,
                    None => break,
                }
                continue;
            }
            let n = need.min(self.head.len());
            let (piece, tail) = self.head.split_at(n);
            self.head = tail;
            out.push(piece);
            need -= n;
        }
        out
    }

    /// Copies the next `dst.len()` bytes into `dst` (fewer if fewer remain)
    /// and returns how many were copied; for the rare write that must be
    /// merged with existing data.
    pub fn copy_to(&mut self, dst: &mut [u8]) -> usize {
        let mut done = 0;
        for piece in self.take(dst.len()) {
            done += piece.copy_to(&mut dst[done..]);
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Cutting a scatter list anywhere yields the same bytes in order.
        #[test]
        fn takes_concatenate_to_the_whole(
            lens in prop::collection::vec(0usize..40, 0..8),
            cuts in prop::collection::vec(0usize..50, 0..12),
        ) {
            let total: usize = lens.iter().sum();
            let mut storage: Vec<Vec<u8>> = Vec::new();
            let mut next = 0u8;
            for &len in &lens {
                storage.push((0..len).map(|_| { next = next.wrapping_add(1); next }).collect());
            }
            let expected: Vec<u8> = storage.concat();

            let reads: Vec<IoBuf> = storage.iter().map(|v| IoBuf::new(v)).collect();
            let mut cursor = IoCursor::new(&reads);
            let mut seen = Vec::new();
            for &cut in &cuts {
                let before = cursor.remaining();
                let piece = cursor.take(cut);
                prop_assert_eq!(total_len(&piece) as usize, cut.min(before));
                prop_assert!(piece.iter().all(|p| !p.is_empty()));
                for p in piece.iter() { seen.extend_from_slice(&p.to_vec()); }
            }
            for p in cursor.take(usize::MAX).iter() { seen.extend_from_slice(&p.to_vec()); }
            prop_assert_eq!(&seen, &expected);

            // The writable cursor hands out the same ranges; fill them with
            // their positions and check every byte landed where it belongs.
            let mut targets: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l]).collect();
            {
                let mut writes: Vec<IoBufMut> =
                    targets.iter_mut().map(|v| IoBufMut::new(v)).collect();
                let mut cursor = IoCursorMut::new(&mut writes);
                let mut pos = 0usize;
                for &cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                    for mut p in cursor.take(cut) {
                        pos += p.copy_from(&expected[pos..]);
                    }
                }
                prop_assert_eq!(pos, total);
            }
            prop_assert_eq!(targets.concat(), expected);
        }
    }
}
