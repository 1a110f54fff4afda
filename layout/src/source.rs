//! Where bytes come from: a range of a read-only file, bytes in memory, or zeros.

use blockio::{IoBufMut, IoWindow};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// A file opened read-only, with the path it was opened from (for errors).
///
/// Blobs of the shared OCI cache and host files are only ever opened through
/// [`BlobFile::open`], so nothing that serves a disk can write to them.
#[derive(Debug)]
pub struct BlobFile {
    file: File,
    /// The same file opened with `O_DIRECT`, once [`open_direct`](Self::open_direct) asked.
    direct: OnceLock<File>,
    path: PathBuf,
    len: u64,
    /// What must happen before a range is read, if anything (see [`ChunkGate`]).
    gate: Option<Arc<dyn ChunkGate>>,
}

/// Makes ranges of a blob safe to read before the first read of them: a
/// local payload's chunks are checked against their hashes (lazy
/// verification); a registry blob's chunks are fetched into the shared
/// cache file and checked. Every reader of a [`BlobFile`] that has a gate
/// calls [`BlobFile::ensure`] before it reads a range, so no byte of a
/// chunk that is missing or failed its check is ever served.
pub trait ChunkGate: Send + Sync + std::fmt::Debug {
    /// Returns once every chunk that bytes `[offset, offset + len)` of the
    /// file touch is present in the file and verified, or fails with an
    /// error naming the blob (or payload) and the offset. Called on the
    /// data path: when the chunks are already good it must cost no more
    /// than an atomic load per chunk.
    fn ensure(&self, offset: u64, len: u64) -> io::Result<()>;
}

impl BlobFile {
    /// Opens `path` read-only, following symlinks (Bazel links blobs to its
    /// build outputs), and checks that it is a regular file.
    pub fn open(path: &Path) -> io::Result<BlobFile> {
        let file = OpenOptions::new()
            .read(true)
            // O_NONBLOCK: opening a FIFO planted in place of a blob must fail
            // the regular-file check below, not block forever. It does
            // nothing to reads of regular files.
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        // Now that it is known to be a regular file, clear O_NONBLOCK: an
        // io_uring read of a file marked non-blocking fails with EAGAIN
        // where it should wait for the disk.
        // SAFETY: fcntl on a descriptor this function owns.
        let cleared = unsafe {
            let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            flags >= 0
                && libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
        };
        if !cleared {
            return Err(io::Error::last_os_error());
        }
        Ok(BlobFile {
            file,
            direct: OnceLock::new(),
            path: path.to_owned(),
            len: meta.len(),
            gate: None,
        })
    }

    /// The same file through a second descriptor (sharing the open file
    /// description), without a gate or an `O_DIRECT` twin: to give the
    /// file a gate when the first is shared already.
    pub fn try_clone(&self) -> io::Result<BlobFile> {
        Ok(BlobFile {
            file: self.file.try_clone()?,
            direct: OnceLock::new(),
            path: self.path.clone(),
            len: self.len,
            gate: None,
        })
    }

    /// The same file, read only through `gate` from now on.
    pub fn with_gate(mut self, gate: Arc<dyn ChunkGate>) -> BlobFile {
        self.gate = Some(gate);
        self
    }

    /// Whether reads must pass a [`ChunkGate`] first.
    pub fn is_gated(&self) -> bool {
        self.gate.is_some()
    }

    /// Makes bytes `[offset, offset + len)` safe to read (see [`ChunkGate`]);
    /// a no-op for a file without a gate.
    pub fn ensure(&self, offset: u64, len: u64) -> io::Result<()> {
        match &self.gate {
            Some(gate) => gate.ensure(offset, len),
            None => Ok(()),
        }
    }

    /// Opens the file a second time with `O_DIRECT` (read-only, through
    /// `/proc/self/fd`, so that it is the same file even if the path has
    /// changed since), for engines that bypass the page cache. The error
    /// names the file: some file systems refuse `O_DIRECT`.
    pub fn open_direct(&self) -> io::Result<()> {
        if self.direct.get().is_some() {
            return Ok(());
        }
        let proc_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_DIRECT)
            .open(&proc_path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open {} with O_DIRECT: {e}", self.path.display()),
                )
            })?;
        // A racing caller may have set it first; either file serves.
        let _ = self.direct.set(file);
        Ok(())
    }

    /// The file opened with `O_DIRECT`, if [`open_direct`](Self::open_direct) ran.
    pub fn direct(&self) -> Option<&File> {
        self.direct.get()
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its length when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it was empty when opened.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The origin of the bytes of an extent, from the extent's first byte on.
#[derive(Clone, Debug)]
pub enum Source {
    /// Bytes of a read-only file, from `offset` on.
    File {
        /// The open file.
        file: Arc<BlobFile>,
        /// Where in it the extent's first byte lies.
        offset: u64,
    },
    /// Bytes in memory, from `offset` on: generated (partition table,
    /// file system metadata) or, with `inline`, given inline (an image
    /// layer's `data`, a layout's inline content).
    Bytes {
        /// The bytes, shared by every extent cut from them.
        data: Arc<[u8]>,
        /// Where in `data` the extent's first byte lies.
        offset: usize,
        /// Whether the bytes came inline from the image or layout, not generated here.
        inline: bool,
    },
    /// Zeros.
    Zero,
}

impl Source {
    /// The same source advanced by `by` bytes.
    pub fn advanced(&self, by: u64) -> Source {
        match self {
            Source::File { file, offset } => Source::File {
                file: file.clone(),
                offset: offset + by,
            },
            Source::Bytes {
                data,
                offset,
                inline,
            } => Source::Bytes {
                data: data.clone(),
                offset: offset + by as usize,
                inline: *inline,
            },
            Source::Zero => Source::Zero,
        }
    }

    /// Fills `bufs` from this source, starting `at` bytes past its start.
    ///
    /// The caller guarantees that the range lies within the extent the source
    /// belongs to; a file that has since shrunk is an `UnexpectedEof` error
    /// naming the file.
    pub fn read_vectored_at(&self, at: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()> {
        self.read_into(at, &mut IoWindow::new(bufs))
    }

    /// Fills `window` from this source, starting `at` bytes past its start;
    /// see [`read_vectored_at`](Self::read_vectored_at). Allocates nothing
    /// unless it fails.
    pub fn read_into(&self, at: u64, window: &mut IoWindow<'_, '_>) -> io::Result<()> {
        match self {
            Source::File { file, offset } => {
                file.ensure(offset + at, window.len() as u64)?;
                window.pread_exact(file.file(), offset + at).map_err(|e| {
                    io::Error::new(e.kind(), format!("reading {}: {e}", file.path().display()))
                })
            }
            Source::Bytes { data, offset, .. } => {
                let src = data.get(offset + at as usize..).unwrap_or_default();
                blockio::check_range(0, window.len() as u64, src.len() as u64)?;
                window.copy_from(src);
                Ok(())
            }
            Source::Zero => {
                window.zero_fill();
                Ok(())
            }
        }
    }
}

/// A sized piece of content that a partition or a FAT32 file can hold: an
/// image payload, a host file, inline bytes, or zeros.
#[derive(Clone, Debug)]
pub struct Content {
    /// Where its bytes come from.
    pub source: Source,
    /// How many bytes it has.
    pub len: u64,
}

impl Content {
    /// The whole of a read-only file.
    pub fn file(file: Arc<BlobFile>) -> Content {
        let len = file.len();
        Content {
            source: Source::File { file, offset: 0 },
            len,
        }
    }

    /// Bytes generated in memory.
    pub fn bytes(data: impl Into<Arc<[u8]>>) -> Content {
        Self::in_memory(data.into(), false)
    }

    /// Bytes given inline (an image layer's `data`, a layout's inline
    /// content), held in memory.
    pub fn inline(data: impl Into<Arc<[u8]>>) -> Content {
        Self::in_memory(data.into(), true)
    }

    fn in_memory(data: Arc<[u8]>, inline: bool) -> Content {
        Content {
            len: data.len() as u64,
            source: Source::Bytes {
                data,
                offset: 0,
                inline,
            },
        }
    }

    /// `len` zero bytes.
    pub fn zeros(len: u64) -> Content {
        Content {
            source: Source::Zero,
            len,
        }
    }
}
