//! Reads described instead of done: where each piece of a range comes from.
//!
//! An asynchronous engine issues the file reads of a request itself (on an
//! io_uring) and copies only what lives in memory. A disk tells it what to
//! do with [`ReadAt::plan_read`](crate::ReadAt::plan_read): a sequence of
//! [`ReadPiece`]s that tile the range in order.

use crate::ReadAt;
use std::fs::File;
use std::io;

/// One piece of a planned read, covering the next bytes of the range.
pub enum ReadPiece<'d> {
    /// `len` bytes of `file` from `offset` on. `direct` is the same file
    /// opened with `O_DIRECT`, when the disk serves with `--direct`; the
    /// engine uses it where the buffers and offsets are aligned for it.
    File {
        /// The file, opened for buffered I/O.
        file: &'d File,
        /// The same file opened with `O_DIRECT`, if there is one.
        direct: Option<&'d File>,
        /// Where in the file the piece starts.
        offset: u64,
        /// The piece's length in bytes.
        len: u64,
    },
    /// Bytes held in memory (generated metadata, inline content).
    Bytes(&'d [u8]),
    /// `len` zero bytes.
    Zero(u64),
    /// `len` bytes that only `reader` knows how to read, from `offset` on:
    /// the engine calls [`ReadAt::read_vectored_at`] for them.
    Sync {
        /// What reads the bytes.
        reader: &'d dyn ReadAt,
        /// Where in `reader` the piece starts.
        offset: u64,
        /// The piece's length in bytes.
        len: u64,
    },
}

impl ReadPiece<'_> {
    /// The number of bytes the piece covers.
    pub fn len(&self) -> u64 {
        match self {
            ReadPiece::File { len, .. } | ReadPiece::Sync { len, .. } => *len,
            ReadPiece::Bytes(b) => b.len() as u64,
            ReadPiece::Zero(len) => *len,
        }
    }

    /// Whether the piece covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a plan's consumer does with each piece; an error stops the plan.
pub type PieceSink<'s> = dyn FnMut(ReadPiece<'_>) -> io::Result<()> + 's;

/// Plans `[offset, offset + len)` of `reader`: its own plan if it has one,
/// else one [`ReadPiece::Sync`] piece for the whole range.
pub fn plan_or_sync(
    reader: &dyn ReadAt,
    offset: u64,
    len: u64,
    sink: &mut PieceSink<'_>,
) -> io::Result<()> {
    match reader.plan_read(offset, len, sink) {
        Some(result) => result,
        None => sink(ReadPiece::Sync {
            reader,
            offset,
            len,
        }),
    }
}

/// Where the bytes of a read came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadSources {
    /// Bytes read from the base.
    pub base: u64,
    /// Bytes the overlay answered: written data, or zeros the guest asked
    /// for.
    pub overlay: u64,
}
