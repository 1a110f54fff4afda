//! Where an overlay's bytes live: a small trait over the file.
//!
//! The overlay needs positional vectored reads and writes, punching holes,
//! and `fdatasync`. [`FileStorage`] is the real thing (`preadv`/`pwritev`
//! straight from the caller's buffers); tests put a storage that forgets
//! unsynced writes behind the same trait to simulate crashes.

use blockio::{IoBuf, IoBufMut};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// A file-like store for an overlay. All methods take `&self` and may be
/// called from several threads at once.
pub trait Storage: Send + Sync {
    /// The store's length in bytes.
    fn file_len(&self) -> io::Result<u64>;
    /// Sets the length (new bytes read as zeros and need not be allocated).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Fills `bufs` from `offset`; reading past the end is an error.
    fn read_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()>;
    /// Writes all of `bufs` at `offset` (the slice list is consumed).
    fn write_at(&self, offset: u64, bufs: &mut [IoBuf<'_>]) -> io::Result<()>;
    /// Releases `[offset, offset + len)`: it reads as zeros afterwards. A
    /// store that cannot release space writes zeros or does nothing; the
    /// overlay never reads a range it punched before writing it again.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes every completed write durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Bytes the host has allocated for the store.
    fn allocated(&self) -> io::Result<u64>;

    /// The host file behind the storage, if there is one, for engines that
    /// issue its reads and writes themselves.
    fn file(&self) -> Option<&File> {
        None
    }

    /// Which host file the storage is, to bind a shadow map to it (see
    /// `FORMAT.md`). `None` if it is no host file: then it cannot have a
    /// shadow map. The default asks [`file`](Self::file).
    fn file_id(&self) -> io::Result<Option<FileId>> {
        self.file().map(FileId::of).transpose()
    }
}

/// What identifies a host file while it exists: its device and inode, and
/// its birth time where the file system records one (an inode number is
/// reused once its file is gone; the birth time then differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// Birth time in nanoseconds since the epoch, 0 if unknown.
    pub born: u64,
}

impl FileId {
    /// The identity of an open file.
    pub fn of(file: &File) -> io::Result<FileId> {
        let meta = file.metadata()?;
        Ok(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            born: birth_time(file).unwrap_or(0),
        })
    }
}

/// The file's birth time (`statx`), if the kernel and file system know it.
fn birth_time(file: &File) -> Option<u64> {
    // SAFETY: an all-zero `statx` is a valid value of the plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `statx` on a descriptor we own (empty path with
    // AT_EMPTY_PATH), writing into `stx`, which outlives the call.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_BTIME,
            &mut stx,
        )
    };
    if r != 0 || stx.stx_mask & libc::STATX_BTIME == 0 {
        return None;
    }
    let t = &stx.stx_btime;
    Some((t.tv_sec as u64).wrapping_mul(1_000_000_000) + u64::from(t.tv_nsec))
}

impl<T: Storage + ?Sized> Storage for std::sync::Arc<T> {
    fn file_len(&self) -> io::Result<u64> {
        (**self).file_len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
    fn read_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()> {
        (**self).read_at(offset, bufs)
    }
    fn write_at(&self, offset: u64, bufs: &mut [IoBuf<'_>]) -> io::Result<()> {
        (**self).write_at(offset, bufs)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).punch_hole(offset, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        (**self).sync_data()
    }
    fn file(&self) -> Option<&File> {
        (**self).file()
    }
    fn file_id(&self) -> io::Result<Option<FileId>> {
        (**self).file_id()
    }
    fn allocated(&self) -> io::Result<u64> {
        (**self).allocated()
    }
}

/// An overlay file on the host.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
}

impl FileStorage {
    /// Wraps an open file.
    pub fn new(file: File) -> FileStorage {
        FileStorage { file }
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Storage for FileStorage {
    fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn read_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()> {
        blockio::pread_exact_vectored(&self.file, offset, bufs)
    }

    fn write_at(&self, offset: u64, bufs: &mut [IoBuf<'_>]) -> io::Result<()> {
        blockio::pwrite_all_vectored(&self.file, offset, bufs)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        use rustix::fs::FallocateFlags;
        use rustix::io::Errno;
        // The kernel takes signed offsets: a range past i64::MAX is refused
        // here rather than wrapped.
        if libc::off_t::try_from(offset).is_err() || libc::off_t::try_from(len).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range too large",
            ));
        }
        loop {
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            match rustix::fs::fallocate(&self.file, flags, offset, len) {
                Ok(()) => return Ok(()),
                Err(Errno::INTR) => continue,
                // A file system without holes: the blocks keep their old
                // bytes, which is fine because the map says zero.
                Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => return Ok(()),
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn allocated(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.blocks() * 512)
    }

    fn file(&self) -> Option<&File> {
        Some(&self.file)
    }
}
