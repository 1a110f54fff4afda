//! Vectored positional I/O shared by ocidisk's crates.
//!
//! A virtio-blk request names one disk range and a scatter list of guest
//! buffers. Between the guest and the files that hold the bytes, that range is
//! split twice: by the overlay (written, zero or base blocks) and by the block
//! map (blob, generated or zero extents). This crate holds what both splits
//! need, so that neither copies through a bounce buffer:
//!
//! - [`IoBufMut`] and [`IoBuf`]: the buffers of a scatter list, as address
//!   and length, because guest memory must not become a `&mut [u8]`;
//! - [`ReadAt`]: something disk-like that fills a scatter list from an offset;
//! - [`IoCursor`] and [`IoCursorMut`]: walk a scatter list in consecutive
//!   sub-ranges without allocating for up to eight buffers a piece;
//! - [`IoSplitter`] and [`IoWindow`]: the same, reading each piece in place
//!   in the caller's own array, so that no buffer count allocates;
//! - [`pread_exact_vectored`] and [`pwrite_all_vectored`]: `preadv`/`pwritev`
//!   that retry short transfers and `EINTR`;
//! - [`BaseIdentity`]: what a disk is made of, so that an overlay can refuse
//!   a base it was not made for;
//! - [`error_chain`]: an error and its causes on one line, for the crates
//!   that log errors themselves.

mod cursor;
mod error_chain;
mod file;
mod identity;
mod iobuf;
mod plan;
mod window;

pub use cursor::{total_len, total_len_mut, IoCursor, IoCursorMut, IoVecs, IoVecsMut};
pub use error_chain::{error_chain, ErrorChain};
pub use file::{pread_exact_vectored, pwrite_all_vectored, zero_fill, DirectAlign};
pub use identity::BaseIdentity;
pub use iobuf::{IoBuf, IoBufMut};
pub use plan::{plan_or_sync, PieceSink, ReadPiece, ReadSources};
pub use window::{IoSplitter, IoWindow};

use std::io;

/// A read-only disk image: a fixed size and a way to read any range of it.
///
/// Implemented by the layout's block map (the composed base disk) and by any
/// in-memory disk used in tests. Implementations must be safe to call from
/// several threads at once: one worker thread per virtqueue reads in parallel.
pub trait ReadAt: Send + Sync {
    /// The size of the disk in bytes.
    fn size(&self) -> u64;

    /// Fills `bufs`, in order, with the bytes at
    /// `[offset, offset + total_len_mut(bufs))`.
    ///
    /// The range must lie within [`size`](Self::size); a range that does not
    /// is an [`io::ErrorKind::InvalidInput`] error and leaves `bufs`
    /// unspecified. A source that ends early (a truncated blob) is an
    /// [`io::ErrorKind::UnexpectedEof`] error.
    fn read_vectored_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()>;

    /// Reads into one buffer; see [`read_vectored_at`](Self::read_vectored_at).
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_vectored_at(offset, &mut [IoBufMut::new(buf)])
    }

    /// Describes how to read `[offset, offset + len)` instead of reading it:
    /// calls `sink` with pieces that tile the range in order, so that an
    /// asynchronous engine can issue the file reads itself. `None` (the
    /// default) if the reader cannot describe its reads; the caller then
    /// reads through [`read_vectored_at`](Self::read_vectored_at).
    ///
    /// The range must lie within [`size`](Self::size).
    fn plan_read(&self, offset: u64, len: u64, sink: &mut PieceSink<'_>) -> Option<io::Result<()>> {
        let _ = (offset, len, sink);
        None
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_vectored_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()> {
        (**self).read_vectored_at(offset, bufs)
    }
    fn plan_read(&self, offset: u64, len: u64, sink: &mut PieceSink<'_>) -> Option<io::Result<()>> {
        (**self).plan_read(offset, len, sink)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for std::sync::Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_vectored_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()> {
        (**self).read_vectored_at(offset, bufs)
    }
    fn plan_read(&self, offset: u64, len: u64, sink: &mut PieceSink<'_>) -> Option<io::Result<()>> {
        (**self).plan_read(offset, len, sink)
    }
}

/// An in-memory disk, for tests and for small generated disks.
impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_vectored_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()> {
        let len = total_len_mut(bufs);
        let start = check_range(offset, len, self.size())? as usize;
        IoWindow::new(bufs).copy_from(&self[start..start + len as usize]);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_vectored_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()> {
        self.as_slice().read_vectored_at(offset, bufs)
    }
}

/// Checks that `[offset, offset + len)` lies within a disk of `size` bytes
/// and returns `offset`; the error names the range.
pub fn check_range(offset: u64, len: u64, size: u64) -> io::Result<u64> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(offset),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {offset}+{len} is outside the disk of {size} bytes"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_reads_across_buffers() {
        let disk: Vec<u8> = (0..=255).collect();
        let (mut a, mut b) = ([0u8; 3], [0u8; 5]);
        disk.read_vectored_at(10, &mut [IoBufMut::new(&mut a), IoBufMut::new(&mut b)])
            .unwrap();
        assert_eq!(a, [10, 11, 12]);
        assert_eq!(b, [13, 14, 15, 16, 17]);
    }

    #[test]
    fn slice_refuses_out_of_range() {
        let disk = vec![0u8; 16];
        let mut buf = [0u8; 4];
        let err = disk.read_exact_at(14, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("14+4"), "{err}");
        let err = disk.read_exact_at(u64::MAX, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
