//! Walking a scatter list in windows that are the list itself.
//!
//! [`IoCursorMut`](crate::IoCursorMut) copies each piece's buffers into a
//! small list of its own, which spills to the heap past eight buffers; a
//! request may have up to the queue size of them. An [`IoSplitter`] instead
//! hands out each piece as a sub-slice of the caller's own array, with its
//! first and last buffers trimmed in place for the call and restored after
//! it, so reading a piece allocates nothing whatever the buffer count.
//!
//! The window is handed out as an [`IoWindow`], which can fill its buffers
//! but not move or replace them: the trimmed buffers can then be restored
//! by position without any two buffers of the caller's array ever
//! overlapping.

use crate::file::{pread_exact_vectored, IOV_MAX};
use crate::IoBufMut;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;

/// Consecutive ranges of a scatter list, each filled in place.
///
/// ```
/// # use blockio::IoBufMut;
/// let (mut a, mut b) = ([0u8; 3], [0u8; 5]);
/// let mut bufs = [IoBufMut::new(&mut a), IoBufMut::new(&mut b)];
/// let mut split = blockio::IoSplitter::new(&mut bufs);
/// split.with_next(4, |w| w.copy_from(&[1, 2, 3, 4])); // all of `a`, one byte of `b`
/// split.with_next(4, |w| w.zero_fill());
/// assert_eq!(split.remaining(), 0);
/// assert_eq!((a, b), ([1, 2, 3], [4, 0, 0, 0, 0]));
/// ```
pub struct IoSplitter<'s, 'a> {
    bufs: &'s mut [IoBufMut<'a>],
    /// The buffer the next window starts in.
    index: usize,
    /// Bytes of `bufs[index]` already handed out.
    skip: usize,
    remaining: usize,
}

impl<'s, 'a> IoSplitter<'s, 'a> {
    /// A splitter at the start of `bufs`.
    pub fn new(bufs: &'s mut [IoBufMut<'a>]) -> Self {
        let remaining = bufs.iter().map(|b| b.len()).sum();
        IoSplitter {
            bufs,
            index: 0,
            skip: 0,
            remaining,
        }
    }

    /// Bytes not yet handed out.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Calls `f` with the next `len` bytes (fewer if fewer remain) as a
    /// window onto the caller's buffers, and returns what it returns. The
    /// buffers are as they were once it returns.
    pub fn with_next<R>(&mut self, len: usize, f: impl FnOnce(&mut IoWindow<'_, 'a>) -> R) -> R {
        let need = len.min(self.remaining);
        self.remaining -= need;
        if need == 0 {
            return f(&mut IoWindow {
                bufs: &mut [],
                len: 0,
            });
        }
        while self.skip == self.bufs[self.index].len() {
            self.index += 1;
            self.skip = 0;
        }
        let (first, skip) = (self.index, self.skip);
        let mut last = first;
        let mut avail = self.bufs[first].len() - skip;
        while avail < need {
            last += 1;
            avail += self.bufs[last].len();
        }
        // Bytes of the last buffer, from its start, inside the window.
        let keep = self.bufs[last].len() - (avail - need);
        (self.index, self.skip) = (last, keep);

        let first_whole = raw_parts(&self.bufs[first]);
        let last_whole = raw_parts(&self.bufs[last]);
        // SAFETY: each new buffer is a sub-range of the buffer it replaces,
        // which had the same contract for 'a; the replaced buffers are
        // restored below from the same pointers. `IoWindow` cannot move,
        // replace or hand out the buffers, so positions `first` and `last`
        // still hold exactly the trimmed buffers when they are restored.
        unsafe {
            if first == last {
                self.bufs[first] = IoBufMut::from_raw_parts(first_whole.0.add(skip), keep - skip);
            } else {
                self.bufs[first] =
                    IoBufMut::from_raw_parts(first_whole.0.add(skip), first_whole.1 - skip);
                self.bufs[last] = IoBufMut::from_raw_parts(last_whole.0, keep);
            }
        }
        let mut window = IoWindow {
            bufs: &mut self.bufs[first..=last],
            len: need,
        };
        let out = f(&mut window);
        // SAFETY: as above; these are the buffers the caller gave.
        unsafe {
            self.bufs[first] = IoBufMut::from_raw_parts(first_whole.0, first_whole.1);
            self.bufs[last] = IoBufMut::from_raw_parts(last_whole.0, last_whole.1);
        }
        out
    }
}

fn raw_parts(buf: &IoBufMut<'_>) -> (*mut u8, usize) {
    (buf.as_ptr(), buf.len())
}

/// A range of a scatter list, handed out by [`IoSplitter::with_next`]: it
/// fills its buffers, in order, and never moves them.
pub struct IoWindow<'w, 'a> {
    bufs: &'w mut [IoBufMut<'a>],
    len: usize,
}

impl<'w, 'a> IoWindow<'w, 'a> {
    /// A window onto the whole of `bufs`.
    pub fn new(bufs: &'w mut [IoBufMut<'a>]) -> Self {
        let len = bufs.iter().map(|b| b.len()).sum();
        IoWindow { bufs, len }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills it with zeros.
    pub fn zero_fill(&mut self) {
        crate::zero_fill(self.bufs);
    }

    /// Copies the first `len()` bytes of `src` into it (fewer if `src` is
    /// shorter); returns how many were copied.
    pub fn copy_from(&mut self, mut src: &[u8]) -> usize {
        let mut done = 0;
        for buf in self.bufs.iter_mut() {
            let n = buf.copy_from(src);
            src = &src[n..];
            done += n;
        }
        done
    }

    /// Fills it from `file` at `offset` with `preadv`, retrying short reads
    /// and `EINTR`, without changing the buffers themselves (unlike
    /// [`pread_exact_vectored`]). Reaching the end of the file first is an
    /// [`io::ErrorKind::UnexpectedEof`] error naming the offset.
    pub fn pread_exact(&mut self, file: &File, mut offset: u64) -> io::Result<()> {
        let fd = file.as_raw_fd();
        for chunk in self.bufs.chunks_mut(IOV_MAX) {
            let want: usize = chunk.iter().map(|b| b.len()).sum();
            let got = loop {
                let iov = IoBufMut::as_iovecs(chunk);
                // SAFETY: every buffer is valid for writes for the call
                // (`IoBufMut`'s contract).
                let n = unsafe {
                    libc::preadv(
                        fd,
                        iov.as_ptr(),
                        chunk.len() as libc::c_int,
                        offset as libc::off_t,
                    )
                };
                if n >= 0 {
                    break n as usize;
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            };
            if got == 0 && want > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file ends before offset {offset}"),
                ));
            }
            if got < want {
                // Rare (a signal, a file that shrank): finish buffer by
                // buffer through one-buffer lists of our own.
                let done_to = offset + got as u64;
                let mut pos = offset;
                for buf in chunk.iter_mut() {
                    let (start, end) = (pos, pos + buf.len() as u64);
                    pos = end;
                    if end <= done_to {
                        continue;
                    }
                    let from = done_to.saturating_sub(start);
                    let mut rest = buf.reborrow();
                    rest.advance(from as usize);
                    pread_exact_vectored(file, start + from, &mut [rest])?;
                }
            }
            offset += want as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write as _;

    fn parts(bufs: &mut [IoBufMut<'_>]) -> Vec<(usize, usize)> {
        bufs.iter_mut()
            .map(|b| (b.as_ptr() as usize, b.len()))
            .collect()
    }

    proptest! {
        /// Windows cut anywhere fill the buffers in order, each window is
        /// exactly its range, and the caller's buffers are as they were
        /// after every call.
        #[test]
        fn windows_fill_in_place_and_restore(
            lens in prop::collection::vec(0usize..40, 0..12),
            cuts in prop::collection::vec(0usize..60, 0..12),
        ) {
            let total: usize = lens.iter().sum();
            let expected: Vec<u8> = (0..total).map(|i| (i % 251) as u8 + 1).collect();
            let mut targets: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l]).collect();
            {
                let mut bufs: Vec<IoBufMut> =
                    targets.iter_mut().map(|v| IoBufMut::new(v)).collect();
                let before = parts(&mut bufs);
                let mut pos = 0usize;
                let mut split = IoSplitter::new(&mut bufs);
                for &cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                    let left = split.remaining();
                    let n = split.with_next(cut, |w| {
                        assert_eq!(w.len(), cut.min(left));
                        w.copy_from(&expected[pos..pos + w.len()])
                    });
                    prop_assert_eq!(n, cut.min(left));
                    pos += n;
                }
                prop_assert_eq!(pos, total);
                prop_assert_eq!(parts(&mut bufs), before);
            }
            prop_assert_eq!(targets.concat(), expected);
        }
    }

    #[test]
    fn preads_more_buffers_than_iov_max() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 13) as u8).collect();
        file.write_all(&data).unwrap();
        let mut out = vec![0u8; 3000];
        let mut bufs: Vec<IoBufMut> = out.chunks_mut(1).map(IoBufMut::new).collect();
        let mut split = IoSplitter::new(&mut bufs);
        split.with_next(1, |w| w.zero_fill());
        split
            .with_next(2999, |w| w.pread_exact(&file, 1001))
            .unwrap();
        drop(bufs);
        assert_eq!(out[0], 0);
        assert!(out[1..] == data[1001..4000]);
    }

    #[test]
    fn a_file_ending_inside_a_window_is_unexpected_eof() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7u8; 100]).unwrap();
        let (mut a, mut b, mut c) = ([0u8; 30], [0u8; 30], [0u8; 30]);
        let mut bufs = [
            IoBufMut::new(&mut a),
            IoBufMut::new(&mut b),
            IoBufMut::new(&mut c),
        ];
        // preadv stops at byte 100, in the middle of `b`: the rest is read
        // buffer by buffer, which finds the end.
        let err = IoWindow::new(&mut bufs).pread_exact(&file, 55).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("100"), "{err}");
        let err2 = IoWindow::new(&mut bufs)
            .pread_exact(&file, 100)
            .unwrap_err();
        assert_eq!(err2.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(a, [7u8; 30]);
        assert_eq!(b[..15], [7u8; 15]);
    }
}
