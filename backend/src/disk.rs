//! What the device serves: the storage behind a virtio-blk device.
//!
//! The device (see [`crate::device`]) parses requests from guest memory and
//! calls a [`BlockDevice`] with scatter lists that point straight into guest
//! memory. Implementations move the bytes with vectored positional I/O
//! (`preadv`/`pwritev`) and never copy them through a buffer of their own.
//!
//! - [`ReadOnlyDisk`] serves any [`ReadAt`] (such as a composed block map)
//!   and refuses writes;
//! - the overlay (crate `overlay`) is the writable implementation.

pub use blockio::ReadSources;
use blockio::{check_range, total_len, total_len_mut, IoBuf, IoBufMut, PieceSink, ReadAt};
use std::fs::File;
use std::io;

/// Where a write can go straight into a file (see
/// [`BlockDevice::write_target`]).
#[derive(Clone, Copy, Debug)]
pub struct WriteTarget<'d> {
    /// The file, opened for buffered I/O.
    pub file: &'d File,
    /// The same file opened with `O_DIRECT`, when serving with `--direct`.
    pub direct: Option<&'d File>,
    /// Where in the file the write's first byte goes.
    pub offset: u64,
}

/// A disk as the virtio-blk device sees it.
///
/// Every method may be called from several worker threads at once (one per
/// virtqueue), so implementations use interior mutability. Ranges are in
/// bytes; the device only passes ranges it has checked against
/// [`size`](Self::size) and that are multiples of 512 bytes, but
/// implementations must still refuse a range outside the disk rather than
/// touch anything beyond it.
pub trait BlockDevice: Send + Sync {
    /// The size of the disk in bytes, a multiple of 512.
    fn size(&self) -> u64;

    /// Whether the disk refuses writes (the device then offers `VIRTIO_BLK_F_RO`).
    fn read_only(&self) -> bool;

    /// Fills `bufs`, in order, with the bytes at `offset`.
    fn read(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<ReadSources>;

    /// Writes `bufs`, in order, at `offset`.
    fn write(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()>;

    /// Makes `[offset, offset + len)` read as zeros. With `unmap`, the disk may
    /// release the space instead of writing zeros.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;

    /// Tells the disk that the guest no longer needs `[offset, offset + len)`.
    /// What the range reads afterwards is unspecified (old data or zeros).
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;

    /// Switches between write-back (`on`: writes become durable at the next
    /// [`flush`](Self::flush)) and write-through (every write is durable when
    /// it completes). The guest chooses through the `writeback` config field.
    fn set_writeback(&self, on: bool);

    /// Bytes of host storage the device's own writes take (an overlay's
    /// allocation), if it keeps any.
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }

    /// Describes a read instead of doing it, for an engine that issues the
    /// file reads itself: calls `sink` with pieces that tile
    /// `[offset, offset + len)` in order (see [`ReadAt::plan_read`]) and
    /// says where the bytes come from. `None` if the disk cannot (the
    /// engine then calls [`read`](Self::read)).
    fn plan_read(
        &self,
        offset: u64,
        len: u64,
        sink: &mut PieceSink<'_>,
    ) -> Option<io::Result<ReadSources>> {
        let _ = (offset, len, sink);
        None
    }

    /// Where a write of `[offset, offset + len)` can go straight into a
    /// file, for an engine that issues it itself; it then calls
    /// [`commit_write`](Self::commit_write) once the data is written.
    /// `None` if the write must go through [`write`](Self::write).
    fn write_target(&self, offset: u64, len: u64) -> Option<WriteTarget<'_>> {
        let _ = (offset, len);
        None
    }

    /// Records that the data of a write sent to its
    /// [`write_target`](Self::write_target) has been written.
    fn commit_write(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the disk takes no direct writes",
        ))
    }
}

/// The error a read-only disk answers every modification with.
fn read_only_error() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "the disk is read-only")
}

/// Serves a [`ReadAt`] read-only: reads go to it, every modification fails.
///
/// Used for `ocidisk serve --readonly`, where the composed base disk is served
/// without an overlay.
pub struct ReadOnlyDisk<B: ReadAt> {
    base: B,
}

impl<B: ReadAt> ReadOnlyDisk<B> {
    /// Serves `base`, whose size must be a multiple of 512 bytes.
    pub fn new(base: B) -> io::Result<Self> {
        if !base.size().is_multiple_of(512) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the disk size {} is not a multiple of 512 bytes",
                    base.size()
                ),
            ));
        }
        Ok(Self { base })
    }
}

impl<B: ReadAt> BlockDevice for ReadOnlyDisk<B> {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read_only(&self) -> bool {
        true
    }

    fn read(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<ReadSources> {
        let len = total_len_mut(bufs);
        // `ReadAt` refuses a range outside the disk itself.
        self.base.read_vectored_at(offset, bufs)?;
        Ok(ReadSources {
            base: len,
            overlay: 0,
        })
    }

    fn write(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        check_range(offset, total_len(bufs), self.base.size())?;
        Err(read_only_error())
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> io::Result<()> {
        Err(read_only_error())
    }

    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(read_only_error())
    }

    fn flush(&self) -> io::Result<()> {
        // Nothing was written, so everything is as durable as it will get.
        Ok(())
    }

    fn set_writeback(&self, _on: bool) {}

    fn plan_read(
        &self,
        offset: u64,
        len: u64,
        sink: &mut PieceSink<'_>,
    ) -> Option<io::Result<ReadSources>> {
        let planned = check_range(offset, len, self.base.size())
            .and_then(|_| blockio::plan_or_sync(&self.base, offset, len, sink));
        Some(planned.map(|()| ReadSources {
            base: len,
            overlay: 0,
        }))
    }
}

/// A VM's disk: the composed base with the VM's copy-on-write overlay on
/// top. Reads take what the guest wrote from the overlay and the rest from
/// the base; writes go only to the overlay.
pub struct OverlayDisk {
    base: layout::BlockMap,
    overlay: overlay::Overlay,
}

impl OverlayDisk {
    /// Serves `overlay` over `base`; the overlay was opened for this base.
    pub fn new(base: layout::BlockMap, overlay: overlay::Overlay) -> io::Result<Self> {
        if !base.size().is_multiple_of(512) || base.size() != overlay.header().disk_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the base of {} bytes does not fit the overlay of {} bytes",
                    base.size(),
                    overlay.header().disk_size
                ),
            ));
        }
        Ok(OverlayDisk { base, overlay })
    }
}

/// Overlay errors keep their message (it names the file) and get the kind
/// the device maps to a status.
fn overlay_error(err: overlay::OverlayError) -> io::Error {
    let kind = if err.is_guest_error() {
        io::ErrorKind::InvalidInput
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, err)
}

impl BlockDevice for OverlayDisk {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<ReadSources> {
        self.overlay
            .read(offset, bufs, &self.base)
            .map_err(overlay_error)
    }

    fn write(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        self.overlay
            .write(offset, bufs, &self.base)
            .map_err(overlay_error)
    }

    // With or without UNMAP, zeroed blocks become the overlay's zero state:
    // they read as zeros and hold no data, which is what UNMAP permits and
    // what a later write re-allocates anyway.
    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.overlay
            .write_zeroes(offset, len, &self.base)
            .map_err(overlay_error)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.overlay
            .discard(offset, len, &self.base)
            .map_err(overlay_error)
    }

    fn flush(&self) -> io::Result<()> {
        self.overlay.flush().map_err(overlay_error)
    }

    fn set_writeback(&self, on: bool) {
        self.overlay.set_writethrough(!on);
    }

    fn allocated_bytes(&self) -> Option<u64> {
        self.overlay.usage().ok().map(|u| u.allocated_bytes)
    }

    fn plan_read(
        &self,
        offset: u64,
        len: u64,
        sink: &mut PieceSink<'_>,
    ) -> Option<io::Result<ReadSources>> {
        let planned = self.overlay.plan_read(offset, len, &self.base, sink)?;
        Some(planned.map_err(overlay_error))
    }

    fn write_target(&self, offset: u64, len: u64) -> Option<WriteTarget<'_>> {
        let (file, direct, offset) = self.overlay.write_target(offset, len)?;
        Some(WriteTarget {
            file,
            direct,
            offset,
        })
    }

    fn commit_write(&self, offset: u64, len: u64) -> io::Result<()> {
        self.overlay
            .commit_write(offset, len)
            .map_err(overlay_error)
    }
}

impl OverlayDisk {
    /// Opens the overlay and every blob a second time with `O_DIRECT`, so
    /// that an engine's reads and writes bypass the page cache where they
    /// are aligned for it; says what alignment that takes.
    pub fn open_direct(&self) -> io::Result<blockio::DirectAlign> {
        let base = self.base.open_direct()?;
        let overlay = self.overlay.open_direct().map_err(overlay_error)?;
        Ok(base.max(overlay))
    }
}

/// A writable disk in memory, for the device's unit tests and the fuzz
/// targets ([`crate::fuzzing`]).
pub mod memory {
    use super::*;
    use blockio::IoCursor;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// A writable in-memory disk that counts the calls it gets.
    pub struct MemoryDisk {
        /// The disk's bytes.
        pub data: Mutex<Vec<u8>>,
        /// Whether the disk refuses writes.
        pub read_only: bool,
        /// The number of calls that modified the disk.
        pub modifications: AtomicUsize,
        /// The number of flushes.
        pub flushes: AtomicUsize,
        /// The last write-back setting.
        pub writeback: AtomicBool,
        /// The `unmap` argument of the last write-zeroes call.
        pub last_unmap: AtomicBool,
    }

    impl MemoryDisk {
        /// A disk of `size` bytes, each byte set to `fill`.
        pub fn new(size: usize, fill: u8) -> Self {
            Self {
                data: Mutex::new(vec![fill; size]),
                read_only: false,
                modifications: AtomicUsize::new(0),
                flushes: AtomicUsize::new(0),
                writeback: AtomicBool::new(true),
                last_unmap: AtomicBool::new(false),
            }
        }

        fn data(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
            self.data.lock().unwrap_or_else(|e| e.into_inner())
        }

        fn range(&self, offset: u64, len: u64) -> io::Result<std::ops::Range<usize>> {
            let start = check_range(offset, len, self.data().len() as u64)? as usize;
            Ok(start..start + len as usize)
        }

        fn modify(&self, offset: u64, len: u64, f: impl FnOnce(&mut [u8])) -> io::Result<()> {
            if self.read_only {
                return Err(read_only_error());
            }
            let range = self.range(offset, len)?;
            self.modifications.fetch_add(1, Ordering::SeqCst);
            f(&mut self.data()[range]);
            Ok(())
        }
    }

    impl BlockDevice for MemoryDisk {
        fn size(&self) -> u64 {
            self.data().len() as u64
        }
        fn read_only(&self) -> bool {
            self.read_only
        }
        fn read(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<ReadSources> {
            self.data().as_slice().read_vectored_at(offset, bufs)?;
            Ok(ReadSources {
                base: total_len_mut(bufs),
                overlay: 0,
            })
        }
        fn write(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
            self.modify(offset, total_len(bufs), |dst| {
                IoCursor::new(bufs).copy_to(dst);
            })
        }
        fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
            self.last_unmap.store(unmap, Ordering::SeqCst);
            self.modify(offset, len, |dst| dst.fill(0))
        }
        fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
            self.modify(offset, len, |dst| dst.fill(0))
        }
        fn flush(&self) -> io::Result<()> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn set_writeback(&self, on: bool) {
            self.writeback.store(on, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_disk_reads_and_refuses_writes() {
        let disk = ReadOnlyDisk::new((0..1024u32).map(|i| i as u8).collect::<Vec<u8>>()).unwrap();
        assert!(disk.read_only());
        assert_eq!(disk.size(), 1024);
        let mut buf = [0u8; 4];
        disk.read(512, &mut [IoBufMut::new(&mut buf)]).unwrap();
        assert_eq!(buf, [0, 1, 2, 3]);
        let err = disk.read(1022, &mut [IoBufMut::new(&mut buf)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = disk.write(0, &[IoBuf::new(&buf)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(disk.write_zeroes(0, 512, false).is_err());
        assert!(disk.discard(0, 512).is_err());
        disk.flush().unwrap();
    }

    #[test]
    fn read_only_disk_refuses_odd_sizes() {
        assert!(ReadOnlyDisk::new(vec![0u8; 1000]).is_err());
    }
}
