//! The block map: where every byte of a virtual disk comes from.

use crate::source::{Content, Source};
use blockio::{IoBufMut, IoSplitter, PieceSink, ReadAt, ReadPiece};
use std::io;
use thiserror::Error;

/// A contiguous run of the disk whose bytes come from one source.
#[derive(Clone, Debug)]
pub struct Extent {
    /// Disk offset of the first byte.
    pub start: u64,
    /// Length in bytes; never zero.
    pub len: u64,
    /// Where the bytes come from, starting at `start`.
    pub source: Source,
}

impl Extent {
    /// The disk offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// A block map that does not describe a disk.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MapError {
    /// Two placed contents overlap.
    #[error("{what} at {start}+{len} overlaps what is already placed before {prev_end}")]
    Overlap {
        /// What was being placed, e.g. a partition or the GPT.
        what: String,
        /// Its first byte on the disk.
        start: u64,
        /// Its length in bytes.
        len: u64,
        /// The end of what is already placed.
        prev_end: u64,
    },
    /// A placed content ends past the disk.
    #[error("{what} at {start}+{len} ends past the disk of {size} bytes")]
    PastEnd {
        /// What was being placed, e.g. a partition or the GPT.
        what: String,
        /// Its first byte on the disk.
        start: u64,
        /// Its length in bytes.
        len: u64,
        /// The disk's size in bytes.
        size: u64,
    },
}

/// How the bytes of a disk divide among the kinds of source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapSummary {
    /// Number of extents.
    pub extents: usize,
    /// Bytes read from files (blobs and host files).
    pub file_bytes: u64,
    /// Bytes generated in memory (partition table, file system metadata).
    pub generated_bytes: u64,
    /// Bytes given inline: image layers' `data`, a layout's inline contents.
    pub inline_bytes: u64,
    /// Bytes that read as zero.
    pub zero_bytes: u64,
}

/// A sorted, gap-free, non-overlapping list of extents covering
/// `[0, size)`.
///
/// Built with [`BlockMapBuilder`]; read through [`ReadAt`]. Lookups are a
/// binary search followed by a walk over the extents the range touches, and
/// allocate nothing.
#[derive(Clone, Debug)]
pub struct BlockMap {
    size: u64,
    extents: Vec<Extent>,
}

impl BlockMap {
    /// The size of the disk in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// All extents, in disk order.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// The extents that `[offset, offset + len)` touches, each with the
    /// part of the range it covers: `(extent, start within the extent,
    /// length)`. The range must lie within the disk.
    pub fn segments(&self, offset: u64, len: u64) -> Segments<'_> {
        // The first extent whose end lies past `offset`.
        let first = self.extents.partition_point(|e| e.end() <= offset);
        Segments {
            extents: &self.extents[first..],
            pos: offset,
            end: offset.saturating_add(len).min(self.size),
        }
    }

    /// How the disk's bytes divide among the kinds of source.
    pub fn summary(&self) -> MapSummary {
        let mut s = MapSummary {
            extents: self.extents.len(),
            ..MapSummary::default()
        };
        for e in &self.extents {
            match e.source {
                Source::File { .. } => s.file_bytes += e.len,
                Source::Bytes { inline: true, .. } => s.inline_bytes += e.len,
                Source::Bytes { .. } => s.generated_bytes += e.len,
                Source::Zero => s.zero_bytes += e.len,
            }
        }
        s
    }

    /// The reference reader: fills `buf` with the disk's bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(offset, buf)
    }
}

impl ReadAt for BlockMap {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_vectored_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()> {
        let len = blockio::total_len_mut(bufs);
        blockio::check_range(offset, len, self.size)?;
        // Each piece is read in place in the caller's own buffer list, so
        // no request allocates, whatever its number of buffers.
        let mut split = IoSplitter::new(bufs);
        for (extent, at, n) in self.segments(offset, len) {
            split.with_next(n as usize, |w| extent.source.read_into(at, w))?;
        }
        Ok(())
    }

    fn plan_read(&self, offset: u64, len: u64, sink: &mut PieceSink<'_>) -> Option<io::Result<()>> {
        Some(self.plan(offset, len, sink))
    }
}

impl BlockMap {
    /// Describes `[offset, offset + len)` as pieces of files, memory and
    /// zeros (see [`ReadAt::plan_read`]).
    fn plan(&self, offset: u64, len: u64, sink: &mut PieceSink<'_>) -> io::Result<()> {
        blockio::check_range(offset, len, self.size)?;
        for (extent, at, n) in self.segments(offset, len) {
            let piece = match &extent.source {
                Source::File { file, offset } => {
                    // A gated blob (lazy verification, a registry blob)
                    // makes the range good before anyone reads it.
                    file.ensure(offset + at, n)?;
                    ReadPiece::File {
                        file: file.file(),
                        direct: file.direct(),
                        offset: offset + at,
                        len: n,
                    }
                }
                Source::Bytes { data, offset, .. } => {
                    let bytes = usize::try_from(at)
                        .ok()
                        .and_then(|at| data.get(offset + at..)?.get(..n as usize));
                    match bytes {
                        Some(bytes) => ReadPiece::Bytes(bytes),
                        // The builder sized every extent to its bytes.
                        None => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "generated extent at {} is shorter than the map says",
                                    extent.start
                                ),
                            ))
                        }
                    }
                }
                Source::Zero => ReadPiece::Zero(n),
            };
            sink(piece)?;
        }
        Ok(())
    }

    /// Opens every file the map reads a second time with `O_DIRECT` (see
    /// [`BlobFile::open_direct`](crate::source::BlobFile::open_direct)), and
    /// says what alignment transfers through them need (the strictest of
    /// the files').
    pub fn open_direct(&self) -> io::Result<blockio::DirectAlign> {
        let mut align = blockio::DirectAlign::NONE;
        for extent in &self.extents {
            if let Source::File { file, .. } = &extent.source {
                file.open_direct()?;
                if let Some(direct) = file.direct() {
                    align = align.max(blockio::DirectAlign::of(direct));
                }
            }
        }
        Ok(align)
    }
}

/// Iterator returned by [`BlockMap::segments`].
pub struct Segments<'a> {
    extents: &'a [Extent],
    pos: u64,
    end: u64,
}

impl<'a> Iterator for Segments<'a> {
    type Item = (&'a Extent, u64, u64);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let (extent, rest) = self.extents.split_first()?;
        let at = self.pos - extent.start;
        let n = extent.end().min(self.end) - self.pos;
        self.pos += n;
        self.extents = rest;
        Some((extent, at, n))
    }
}

/// Places contents at disk offsets; what is left between them reads as zero.
#[derive(Debug)]
pub struct BlockMapBuilder {
    size: u64,
    placed: Vec<(String, u64, Content)>,
}

impl BlockMapBuilder {
    /// A builder for a disk of `size` bytes.
    pub fn new(size: u64) -> BlockMapBuilder {
        BlockMapBuilder {
            size,
            placed: Vec::new(),
        }
    }

    /// Places `content` at disk offset `start`. `what` names it in errors
    /// (e.g. `partition 2 (METROPOLIS-SYSTEM-A)`).
    pub fn place(&mut self, what: impl Into<String>, start: u64, content: Content) -> &mut Self {
        self.placed.push((what.into(), start, content));
        self
    }

    /// Places every extent of a list made relative to `start` (e.g. a FAT32
    /// file system built for its partition).
    pub fn place_extents(&mut self, what: &str, start: u64, extents: Vec<Extent>) -> &mut Self {
        for e in extents {
            let content = Content {
                source: e.source,
                len: e.len,
            };
            self.place(what, start + e.start, content);
        }
        self
    }

    /// Sorts what was placed, checks it fits, fills the gaps with zeros and
    /// merges neighbouring zero extents.
    pub fn build(mut self) -> Result<BlockMap, MapError> {
        self.placed.sort_by_key(|(_, start, _)| *start);
        let mut extents: Vec<Extent> = Vec::with_capacity(self.placed.len() * 2 + 1);
        let mut pos = 0u64;
        for (what, start, content) in self.placed {
            if content.len == 0 {
                continue;
            }
            let end = match start.checked_add(content.len) {
                Some(end) if end <= self.size => end,
                _ => {
                    return Err(MapError::PastEnd {
                        what,
                        start,
                        len: content.len,
                        size: self.size,
                    })
                }
            };
            if start < pos {
                return Err(MapError::Overlap {
                    what,
                    start,
                    len: content.len,
                    prev_end: pos,
                });
            }
            push_merged(&mut extents, pos, start - pos, Source::Zero);
            push_merged(&mut extents, start, content.len, content.source);
            pos = end;
        }
        push_merged(&mut extents, pos, self.size - pos, Source::Zero);
        Ok(BlockMap {
            size: self.size,
            extents,
        })
    }
}

fn push_merged(extents: &mut Vec<Extent>, start: u64, len: u64, source: Source) {
    if len == 0 {
        return;
    }
    if let (Some(last), Source::Zero) = (extents.last_mut(), &source) {
        if matches!(last.source, Source::Zero) && last.end() == start {
            last.len += len;
            return;
        }
    }
    extents.push(Extent { start, len, source });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(v: &[u8]) -> Content {
        Content::bytes(v.to_vec())
    }

    #[test]
    fn gaps_read_as_zero() {
        let mut b = BlockMapBuilder::new(32);
        b.place("a", 4, bytes(&[1, 2, 3]))
            .place("b", 20, Content::inline(vec![9; 4]));
        let map = b.build().unwrap();
        assert_eq!(map.extents().len(), 5);
        let mut buf = vec![0xffu8; 32];
        map.read_at(0, &mut buf).unwrap();
        let mut want = vec![0u8; 32];
        want[4..7].copy_from_slice(&[1, 2, 3]);
        want[20..24].copy_from_slice(&[9; 4]);
        assert_eq!(buf, want);
        assert_eq!(
            map.summary(),
            MapSummary {
                extents: 5,
                file_bytes: 0,
                generated_bytes: 3,
                inline_bytes: 4,
                zero_bytes: 25
            }
        );
    }

    #[test]
    fn overlap_and_overflow_are_errors() {
        let mut b = BlockMapBuilder::new(32);
        b.place("a", 4, bytes(&[1; 8]))
            .place("b", 10, bytes(&[2; 4]));
        let err = b.build().unwrap_err();
        assert!(err.to_string().starts_with("b at 10+4 overlaps"), "{err}");

        let mut b = BlockMapBuilder::new(32);
        b.place("big", 30, bytes(&[1; 8]));
        assert!(matches!(b.build(), Err(MapError::PastEnd { .. })));

        let mut b = BlockMapBuilder::new(32);
        b.place("wrap", u64::MAX - 1, bytes(&[1; 8]));
        assert!(matches!(b.build(), Err(MapError::PastEnd { .. })));
    }

    #[test]
    fn out_of_range_reads_fail() {
        let map = BlockMapBuilder::new(16).build().unwrap();
        let mut buf = [0u8; 4];
        assert!(map.read_at(13, &mut buf).is_err());
        assert!(map.read_at(u64::MAX - 1, &mut buf).is_err());
        map.read_at(12, &mut buf).unwrap();
    }

    proptest! {
        /// Any read through the map equals the same range of a flat image.
        #[test]
        fn reads_match_flat_image(
            pieces in prop::collection::vec((0u64..200, prop::collection::vec(any::<u8>(), 0..40)), 0..8),
            reads in prop::collection::vec((0u64..256, 0usize..64, 1usize..5), 1..16),
        ) {
            let size = 256u64;
            let mut flat = vec![0u8; size as usize];
            let mut b = BlockMapBuilder::new(size);
            let mut pos = 0u64;
            for (gap, data) in pieces {
                let start = pos + gap;
                if start + data.len() as u64 > size { break; }
                flat[start as usize..start as usize + data.len()].copy_from_slice(&data);
                pos = start + data.len() as u64;
                b.place("p", start, bytes(&data));
            }
            let map = b.build().unwrap();
            let mut covered = 0;
            for e in map.extents() {
                prop_assert_eq!(e.start, covered);
                prop_assert!(e.len > 0);
                covered = e.end();
            }
            prop_assert_eq!(covered, size);

            for (off, len, nbufs) in reads {
                let len = len.min((size - off) as usize);
                let mut out = vec![0xaau8; len];
                // Split the destination into several buffers.
                let chunk = len.div_ceil(nbufs).max(1);
                {
                    let mut bufs: Vec<IoBufMut> = out.chunks_mut(chunk).map(IoBufMut::new).collect();
                    map.read_vectored_at(off, &mut bufs).unwrap();
                }
                prop_assert_eq!(&out[..], &flat[off as usize..off as usize + len]);
            }
        }
    }
}
