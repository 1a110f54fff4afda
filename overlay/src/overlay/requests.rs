//! Requests on an open overlay: reads (in place or planned for an
//! engine), writes and copy-ups, zeroing and discards, and flushes.

use super::{Overlay, ZEROS};
use crate::error::io_err;
use crate::error::OverlayError;
use crate::format::{self, BlockState, BLOCK_SIZE, SLOT_SIZE};
use blockio::{IoBuf, IoBufMut, IoCursor, IoCursorMut, PieceSink, ReadAt, ReadPiece, ReadSources};

use std::fs::File;

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering;

impl Overlay {
    fn check_range(&self, offset: u64, len: u64) -> Result<(), OverlayError> {
        blockio::check_range(offset, len, self.geo.disk_size)
            .map(|_| ())
            .map_err(|_| OverlayError::OutOfRange {
                path: self.path.clone(),
                offset,
                len,
                disk_size: self.geo.disk_size,
            })
    }

    fn check_writable(&self) -> Result<(), OverlayError> {
        if self.read_only {
            return Err(OverlayError::ReadOnly {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Disk bytes `[start, end)` of block `b`.
    pub(super) fn block_bounds(&self, b: u64) -> (u64, u64) {
        let start = b * BLOCK_SIZE;
        (start, (start + BLOCK_SIZE).min(self.geo.disk_size))
    }

    /// Fills `bufs` with the disk's bytes at `offset`: written blocks from
    /// the overlay, zero blocks with zeros, the rest from `base`. Says how
    /// many bytes came from where.
    pub fn read(
        &self,
        offset: u64,
        bufs: &mut [IoBufMut<'_>],
        base: &dyn ReadAt,
    ) -> Result<ReadSources, OverlayError> {
        let len = blockio::total_len_mut(bufs);
        self.check_range(offset, len)?;
        let mut sources = ReadSources::default();
        if len == 0 {
            return Ok(sources);
        }
        let end = offset + len;
        let end_block = end.div_ceil(BLOCK_SIZE);
        let (state, run_end) = self.map.run(offset / BLOCK_SIZE, end_block);
        if run_end >= end_block {
            // One source for the whole request, the common case: hand the
            // buffers on as they are.
            self.read_run(state, offset, end, bufs, base, &mut sources)?;
            return Ok(sources);
        }
        let mut cursor = IoCursorMut::new(bufs);
        let mut b = offset / BLOCK_SIZE;
        while b < end_block {
            let (state, run_end) = self.map.run(b, end_block);
            let from = offset.max(b * BLOCK_SIZE);
            let to = end.min(run_end * BLOCK_SIZE);
            let mut piece = cursor.take((to - from) as usize);
            self.read_run(state, from, to, &mut piece, base, &mut sources)?;
            b = run_end;
        }
        Ok(sources)
    }

    /// Fills `bufs` with disk bytes `from..to`, all of blocks in `state`.
    fn read_run(
        &self,
        state: BlockState,
        from: u64,
        to: u64,
        bufs: &mut [IoBufMut<'_>],
        base: &dyn ReadAt,
        sources: &mut ReadSources,
    ) -> Result<(), OverlayError> {
        match state {
            BlockState::Base => {
                sources.base += to - from;
                base.read_vectored_at(from, bufs)
                    .map_err(|source| OverlayError::Base {
                        path: self.path.clone(),
                        offset: from,
                        source,
                    })
            }
            BlockState::Written => {
                sources.overlay += to - from;
                self.storage
                    .read_at(self.geo.data_offset + from, bufs)
                    .map_err(io_err(
                        &self.path,
                        format!("reading disk range {from}..{to}"),
                    ))
            }
            BlockState::Zero => {
                sources.overlay += to - from;
                blockio::zero_fill(bufs);
                Ok(())
            }
        }
    }

    /// Writes `bufs` at `offset`. Data goes to the block's fixed place in the
    /// data area first, then the map says written. A block written partly
    /// for the first time is filled from `base` (or zeros) first.
    pub fn write(
        &self,
        offset: u64,
        bufs: &[IoBuf<'_>],
        base: &dyn ReadAt,
    ) -> Result<(), OverlayError> {
        self.check_writable()?;
        let len = blockio::total_len(bufs);
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let (first, end_block) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
        // Overwriting written blocks cannot race with a copy-up: no lock
        // (but see `write_partial` for a block that stopped being written).
        let guard =
            (!self.map.all_written(first, end_block)).then(|| self.stripes.lock(first, end_block));
        let locked = guard.is_some();
        // Blocks below `full_end` end inside the request (the disk's short
        // last block included).
        let full_end = if end == self.geo.disk_size {
            end_block
        } else {
            end / BLOCK_SIZE
        };
        let mut cursor = IoCursor::new(bufs);
        let mut b = first;
        while b < end_block {
            let (bstart, bend) = self.block_bounds(b);
            let (from, to) = (offset.max(bstart), end.min(bend));
            if from == bstart && to == bend {
                // A run of whole blocks: one pwritev straight from `bufs`.
                let run_to = (full_end * BLOCK_SIZE).min(self.geo.disk_size);
                let mut piece = cursor.take((run_to - from) as usize);
                self.write_data(from, &mut piece)?;
                self.map.set(b, full_end, BlockState::Written);
                b = full_end;
            } else {
                let mut piece = cursor.take((to - from) as usize);
                self.write_partial(b, from, &mut piece, base, locked)?;
                b += 1;
            }
        }
        self.after_write()
    }

    /// Writes `[from, from + len(piece))` inside block `b`, which the request
    /// covers only partly. `locked` says whether the caller holds the block's
    /// stripe lock; it does not when the block was written, but a concurrent
    /// discard may have made it zero since, and a copy-up must not run
    /// unlocked: then it locks and looks again.
    fn write_partial(
        &self,
        b: u64,
        from: u64,
        piece: &mut [IoBuf<'_>],
        base: &dyn ReadAt,
        locked: bool,
    ) -> Result<(), OverlayError> {
        let mut state = self.map.get(b);
        if state == BlockState::Written {
            return self.write_data(from, piece);
        }
        let _guard = (!locked).then(|| self.stripes.lock(b, b + 1));
        if !locked {
            state = self.map.get(b);
            if state == BlockState::Written {
                return self.write_data(from, piece);
            }
        }
        let (bstart, bend) = self.block_bounds(b);
        // Copy-up: the whole block reaches the data area before the map
        // says written, so the map never points at stale data.
        let mut block = [0u8; BLOCK_SIZE as usize];
        let blen = (bend - bstart) as usize;
        if state == BlockState::Base {
            base.read_exact_at(bstart, &mut block[..blen])
                .map_err(|source| OverlayError::Base {
                    path: self.path.clone(),
                    offset: bstart,
                    source,
                })?;
        }
        let at = (from - bstart) as usize;
        IoCursor::new(piece).copy_to(&mut block[at..]);
        self.write_data(bstart, &mut [IoBuf::new(&block[..blen])])?;
        self.map.set(b, b + 1, BlockState::Written);
        Ok(())
    }

    fn write_data(&self, from: u64, piece: &mut [IoBuf<'_>]) -> Result<(), OverlayError> {
        let len = blockio::total_len(piece);
        self.storage
            .write_at(self.geo.data_offset + from, piece)
            .map_err(io_err(
                &self.path,
                format!("writing disk range {from}+{len}"),
            ))
    }

    fn after_write(&self) -> Result<(), OverlayError> {
        if self.writethrough() {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Makes `[offset, offset + len)` read as zeros. Whole blocks become zero
    /// blocks (no data, space released); the partial blocks at either end
    /// are written with zeros.
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        base: &dyn ReadAt,
    ) -> Result<(), OverlayError> {
        self.zero_range(offset, len, Some(base))
    }

    /// Discards `[offset, offset + len)`: whole blocks become zero blocks (no
    /// data, space released); partial blocks at either end keep their
    /// contents (a discard promises nothing about them).
    pub fn discard(&self, offset: u64, len: u64, base: &dyn ReadAt) -> Result<(), OverlayError> {
        let _ = base;
        self.zero_range(offset, len, None)
    }

    fn zero_range(
        &self,
        offset: u64,
        len: u64,
        partial_base: Option<&dyn ReadAt>,
    ) -> Result<(), OverlayError> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let (first, end_block) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
        let _guard = self.stripes.lock(first, end_block);
        // Whole blocks: from the first block that starts inside the range to
        // the last that ends inside it (the disk's short last block counts).
        let full_first = offset.div_ceil(BLOCK_SIZE);
        let full_end = if end == self.geo.disk_size {
            end_block
        } else {
            end / BLOCK_SIZE
        };
        if full_first < full_end {
            self.map.set(full_first, full_end, BlockState::Zero);
            let (at, n) = (
                self.geo.data_offset + full_first * BLOCK_SIZE,
                (full_end - full_first) * BLOCK_SIZE,
            );
            self.storage
                .punch_hole(at, n)
                .map_err(io_err(&self.path, format!("releasing file range {at}+{n}")))?;
        }
        if let Some(base) = partial_base {
            let mut partial = vec![first];
            if end_block - 1 != first {
                partial.push(end_block - 1);
            }
            for b in partial {
                if b >= full_first && b < full_end {
                    continue;
                }
                let (bstart, bend) = self.block_bounds(b);
                let (from, to) = (offset.max(bstart), end.min(bend));
                if self.map.get(b) != BlockState::Zero {
                    let zeros = &ZEROS[..(to - from) as usize];
                    self.write_partial(b, from, &mut [IoBuf::new(zeros)], base, true)?;
                }
            }
        }
        self.after_write()
    }

    /// Describes how to read `[offset, offset + len)` (see
    /// [`ReadAt::plan_read`]): written runs as pieces of the overlay file,
    /// zero runs as zeros, the rest as `base` plans it. `None` if the
    /// overlay's storage is not a host file. Says how many bytes come from
    /// where.
    ///
    /// A write that completes while the plan is carried out may or may not
    /// be seen, as with any read that runs beside a write.
    pub fn plan_read(
        &self,
        offset: u64,
        len: u64,
        base: &dyn ReadAt,
        sink: &mut PieceSink<'_>,
    ) -> Option<Result<ReadSources, OverlayError>> {
        let file = self.storage.file()?;
        Some(self.plan_runs(file, offset, len, base, sink))
    }

    fn plan_runs(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        base: &dyn ReadAt,
        sink: &mut PieceSink<'_>,
    ) -> Result<ReadSources, OverlayError> {
        self.check_range(offset, len)?;
        let mut sources = ReadSources::default();
        let end = offset + len;
        let end_block = end.div_ceil(BLOCK_SIZE);
        let mut b = offset / BLOCK_SIZE;
        while b < end_block {
            let (state, run_end) = self.map.run(b, end_block);
            let from = offset.max(b * BLOCK_SIZE);
            let to = end.min(run_end * BLOCK_SIZE);
            let n = to - from;
            let result = match state {
                BlockState::Base => {
                    sources.base += n;
                    blockio::plan_or_sync(base, from, n, sink).map_err(|source| {
                        OverlayError::Base {
                            path: self.path.clone(),
                            offset: from,
                            source,
                        }
                    })
                }
                BlockState::Written => {
                    sources.overlay += n;
                    sink(ReadPiece::File {
                        file,
                        direct: self.direct.get(),
                        offset: self.geo.data_offset + from,
                        len: n,
                    })
                    .map_err(io_err(
                        &self.path,
                        format!("reading disk range {from}..{to}"),
                    ))
                }
                BlockState::Zero => {
                    sources.overlay += n;
                    sink(ReadPiece::Zero(n)).map_err(io_err(
                        &self.path,
                        format!("reading disk range {from}..{to}"),
                    ))
                }
            };
            result?;
            b = run_end;
        }
        Ok(sources)
    }

    /// Where a write of `[offset, offset + len)` can go straight into the
    /// overlay file, for engines that issue it themselves: the file (and
    /// its `O_DIRECT` twin, if open) and the file offset. Only for ranges
    /// of whole blocks (the disk's short last block counts as whole) that
    /// are all written already; `None` for anything else, which goes
    /// through [`write`](Self::write).
    ///
    /// Why only overwrites: a first write changes a block's state, and
    /// [`write`](Self::write) orders that change against a copy-up of the
    /// same block (a partial write reading the base) with the block's
    /// stripe lock. A write in flight outside the lock could land between
    /// the copy-up's read of the base and its write, and the copy-up would
    /// then put base bytes back over a completed write. An overwrite of
    /// written blocks needs no copy-up and can race with nothing but other
    /// writes, whose bytes land whole or not at all.
    ///
    /// Once the data write has completed, [`commit_write`](Self::commit_write)
    /// marks the blocks written; until then reads keep seeing the old data,
    /// and a crash loses the write but never exposes a half-written block.
    pub fn write_target(&self, offset: u64, len: u64) -> Option<(&File, Option<&File>, u64)> {
        let end = offset.checked_add(len)?;
        let whole = offset.is_multiple_of(BLOCK_SIZE)
            && (end.is_multiple_of(BLOCK_SIZE) || end == self.geo.disk_size);
        if self.read_only
            || len == 0
            || !whole
            || end > self.geo.disk_size
            || self.poisoned.load(Ordering::SeqCst)
            || !self
                .map
                .all_written(offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE))
        {
            return None;
        }
        let file = self.storage.file()?;
        Some((file, self.direct.get(), self.geo.data_offset + offset))
    }

    /// Marks `[offset, offset + len)` written after its data reached the
    /// file at the place [`write_target`](Self::write_target) gave. Makes
    /// nothing durable: that is the next [`flush`](Self::flush)'s job.
    pub fn commit_write(&self, offset: u64, len: u64) -> Result<(), OverlayError> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if len > 0 {
            let end = offset + len;
            self.map.set(
                offset / BLOCK_SIZE,
                end.div_ceil(BLOCK_SIZE),
                BlockState::Written,
            );
        }
        Ok(())
    }

    /// Opens the overlay file a second time with `O_DIRECT` (through
    /// `/proc/self/fd`, so it is the same file), which
    /// [`plan_read`](Self::plan_read) and [`write_target`](Self::write_target)
    /// then offer, and says what alignment its transfers need. The error
    /// names the file: some file systems refuse `O_DIRECT`.
    pub fn open_direct(&self) -> Result<blockio::DirectAlign, OverlayError> {
        let Some(file) = self.storage.file() else {
            return Ok(blockio::DirectAlign::NONE);
        };
        if let Some(direct) = self.direct.get() {
            return Ok(blockio::DirectAlign::of(direct));
        }
        let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .write(!self.read_only)
            .custom_flags(libc::O_CLOEXEC | libc::O_DIRECT)
            .open(proc_path)
            .map_err(io_err(&self.path, "opening the file with O_DIRECT"))?;
        let align = blockio::DirectAlign::of(&direct);
        let _ = self.direct.set(direct);
        Ok(align)
    }

    /// Makes every write completed before the call durable.
    ///
    /// The dirty map pages are copied *before* the data is synced, so every
    /// map entry written afterwards describes data already on disk, even
    /// with writes running on other threads meanwhile. Each page goes to its
    /// older copy, then a second sync; a torn page leaves the newer copy.
    pub fn flush(&self) -> Result<(), OverlayError> {
        if self.read_only {
            return Ok(());
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(OverlayError::Poisoned {
                path: self.path.clone(),
            });
        }
        let dirty = self.map.take_dirty();
        let restore = |dirty: &[(usize, Vec<u64>)]| {
            for (page, _) in dirty {
                self.map.mark_dirty(*page);
            }
        };
        if let Err(e) = self.storage.sync_data() {
            self.poison();
            restore(&dirty);
            return Err(io_err(&self.path, "syncing data")(e));
        }
        if dirty.is_empty() {
            return Ok(());
        }
        if let Some(shadow) = &self.shadow {
            shadow.begin_flush(dirty.iter().map(|(page, _)| (*page, slots[*page].seq + 1)));
        }
        let mut buf = vec![0u8; SLOT_SIZE as usize];
        for (page, words) in &dirty {
            let s = slots[*page];
            format::encode_page(*page as u64, s.seq + 1, words, &mut buf);
            let at = self.geo.slot_offset(*page as u64, s.next);
            if let Err(e) = self.storage.write_at(at, &mut [IoBuf::new(&buf)]) {
                restore(&dirty);
                return Err(io_err(&self.path, format!("writing map page {page}"))(e));
            }
        }
        if let Err(e) = self.storage.sync_data() {
            self.poison();
            restore(&dirty);
            return Err(io_err(&self.path, "syncing the map")(e));
        }
        for (page, _) in &dirty {
            let s = &mut slots[*page];
            s.seq += 1;
            s.next = 1 - s.next;
        }
        if let Some(shadow) = &self.shadow {
            shadow.end_flush();
        }
        Ok(())
    }
}

impl Overlay {
    /// A sync failed: the kernel may have dropped data whose states are set,
    /// so only the file's last flushed map can be trusted. Refuses further
    /// flushes, and tells the shadow map so that no later open adopts it.
    fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
        if let Some(shadow) = &self.shadow {
            shadow.poison();
        }
    }
}
