//! The durable record of which chunks of a cached blob are present and
//! verified: a small file beside the blob, one byte per chunk after a
//! header. Every process reads and writes the state bytes with `pread` and
//! `pwrite` (through the page cache, so a chunk one process filled is seen
//! by the others at once) and keeps, per chunk, whether it has seen it
//! verified: a verified chunk stays verified while the blob is open (only
//! the whole-blob check of a blob without chunk hashes resets states, and
//! those are never verified before it passes), so a warm read checks one
//! byte of process memory and makes no system call.
//!
//! Not a shared mapping: a record truncated by someone else (a user, a
//! full disk's repair) would raise SIGBUS in every server that touched the
//! lost page. With reads and writes, a truncated record is an error naming
//! the file for the chunks not yet seen verified; the rest keep being
//! served.
//!
//! Layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `OCIDCHK1` |
//! | 8..12 | format version (1) |
//! | 12..16 | reserved, zero |
//! | 16..24 | blob size |
//! | 24..32 | chunk size |
//! | 32..64 | reserved, zero |
//! | 64.. | one state byte per chunk ([`ABSENT`], [`VERIFIED`], [`PRESENT`]) |
//!
//! Byte `64 + i` is also what fillers of chunk `i` lock (an OFD byte-range
//! lock, which belongs to an open file description: each locker opens the
//! file anew, so threads of one process exclude each other as processes
//! do). Byte 0 is locked while the record is created; byte 1 while a blob
//! without chunk hashes is checked whole; byte 2 is read-locked by every
//! process that has the blob open, so that `ocidisk cache prune` (which
//! write-locks it without waiting) never removes a blob in use.

use super::ChunkCacheError;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// The chunk's bytes are not in the blob file (or may be torn).
pub const ABSENT: u8 = 0;
/// The chunk's bytes are in the blob file, durably, and matched its chunk
/// hash or the whole blob's digest.
pub const VERIFIED: u8 = 1;
/// The chunk's bytes are in the blob file, durably, but nothing has
/// checked them yet (a blob without chunk hashes, not yet checked whole).
pub const PRESENT: u8 = 2;

const MAGIC: &[u8; 8] = b"OCIDCHK1";
const VERSION: u32 = 1;
/// Size of the header before the state bytes.
pub const HEADER_LEN: u64 = 64;
/// Locked while the record and blob file are created.
const INIT_LOCK: u64 = 0;
/// Locked while a blob is checked whole.
pub const WHOLE_LOCK: u64 = 1;
/// Read-locked by every process using the blob; see [`Record::hold_in_use`].
pub const IN_USE_LOCK: u64 = 2;

/// An open record.
pub struct Record {
    path: PathBuf,
    file: File,
    /// The record's length, header and state bytes.
    len: u64,
    /// Per chunk, [`VERIFIED`] once this process has seen it verified.
    known: Box<[AtomicU8]>,
    /// A state byte could not be read (logged once).
    read_failed: AtomicBool,
    chunks: u64,
    chunk_size: u64,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("path", &self.path)
            .field("chunks", &self.chunks)
            .field("chunk_size", &self.chunk_size)
            .finish()
    }
}

pub(crate) fn io_err<'p>(
    path: &'p Path,
    op: &'static str,
) -> impl FnOnce(io::Error) -> ChunkCacheError + 'p {
    move |source| ChunkCacheError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// The header as bytes.
fn header(size: u64, chunk_size: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&size.to_le_bytes());
    h[24..32].copy_from_slice(&chunk_size.to_le_bytes());
    h
}

/// The blob size and chunk size a record's header gives; a header that is
/// not a record's, or of another version, is an error naming the file.
pub(crate) fn parse_header(
    path: &Path,
    head: &[u8; HEADER_LEN as usize],
) -> Result<(u64, u64), ChunkCacheError> {
    let bad = |why: String| ChunkCacheError::BadRecord {
        path: path.to_owned(),
        why,
    };
    if &head[0..8] != MAGIC {
        return Err(bad("not a chunk record (bad magic)".to_owned()));
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}; this reader understands {VERSION}"
        )));
    }
    Ok((le64(&head[16..24]), le64(&head[24..32])))
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

impl Record {
    /// Opens the record at `path` for a blob of `size` bytes, creating it
    /// (and sizing `data`, the blob file, to `size`) if it does not exist
    /// yet. `chunk_size`: what the caller wants; `None` takes the existing
    /// record's (or `default_chunk`). A record made for another size or
    /// chunk size is an error naming the file.
    pub fn open(
        path: &Path,
        data: &Path,
        size: u64,
        chunk_size: Option<u64>,
        default_chunk: u64,
    ) -> Result<Record, ChunkCacheError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err(path, "opening the chunk record"))?;
        // The lock has an open file description of its own: the mapping
        // below keeps its file's description alive (and an OFD lock with
        // it) for as long as it exists.
        let lock = ByteLock::acquire(file, path, INIT_LOCK, 1)?;
        let file = &open_existing(path)?;
        let mut head = [0u8; HEADER_LEN as usize];
        let len = file
            .metadata()
            .map_err(io_err(path, "inspecting the chunk record"))?
            .len();
        let n = if len >= HEADER_LEN {
            file.read_exact_at(&mut head, 0)
                .map_err(io_err(path, "reading the chunk record"))?;
            HEADER_LEN
        } else {
            0
        };
        let (size_found, chunk_found) = if n == HEADER_LEN && head[0..8] != [0u8; 8] {
            parse_header(path, &head)?
        } else {
            // New, or left empty by a creator that died before its one
            // header write: (re)initialize under the lock. Every state byte
            // starts absent; the blob file is sized (sparse) to the blob.
            let chunk = chunk_size.unwrap_or(default_chunk);
            if chunk == 0 {
                return Err(ChunkCacheError::BadRecord {
                    path: path.to_owned(),
                    why: "chunk size 0".to_owned(),
                });
            }
            let chunks = size.div_ceil(chunk);
            let data_file = OpenOptions::new()
                .write(true)
                .create(true)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC)
                .open(data)
                .map_err(io_err(data, "creating the cached blob"))?;
            data_file
                .set_len(size)
                .map_err(io_err(data, "sizing the cached blob"))?;
            data_file
                .sync_all()
                .map_err(io_err(data, "syncing the cached blob"))?;
            file.set_len(HEADER_LEN + chunks)
                .map_err(io_err(path, "sizing the chunk record"))?;
            file.write_all_at(&header(size, chunk), 0)
                .map_err(io_err(path, "writing the chunk record"))?;
            file.sync_all()
                .map_err(io_err(path, "syncing the chunk record"))?;
            if let Some(dir) = path.parent() {
                // The directory entries of both files.
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(dir, "syncing the cache directory"))?;
            }
            (size, chunk)
        };
        if size_found != size {
            return Err(ChunkCacheError::BadRecord {
                path: path.to_owned(),
                why: format!("made for a blob of {size_found} bytes, not {size}"),
            });
        }
        if chunk_found == 0 || chunk_size.is_some_and(|c| c != chunk_found) {
            return Err(ChunkCacheError::BadRecord {
                path: path.to_owned(),
                why: format!(
                    "chunk size {chunk_found}; this blob's chunk hashes need {}",
                    chunk_size.unwrap_or(0)
                ),
            });
        }
        let chunks = size.div_ceil(chunk_found);
        let want_len = HEADER_LEN + chunks;
        let len = file
            .metadata()
            .map_err(io_err(path, "inspecting the chunk record"))?
            .len();
        if len != want_len {
            return Err(ChunkCacheError::BadRecord {
                path: path.to_owned(),
                why: format!("{len} bytes long; {chunks} chunks need {want_len}"),
            });
        }
        let data_len = std::fs::metadata(data)
            .map_err(io_err(data, "inspecting the cached blob"))?
            .len();
        if data_len != size {
            return Err(ChunkCacheError::BadRecord {
                path: data.to_owned(),
                why: format!("cached blob is {data_len} bytes, not {size}"),
            });
        }
        let file = open_existing(path)?;
        drop(lock);
        Ok(Record {
            path: path.to_owned(),
            file,
            len: want_len,
            known: (0..chunks).map(|_| AtomicU8::new(ABSENT)).collect(),
            read_failed: AtomicBool::new(false),
            chunks,
            chunk_size: chunk_found,
        })
    }

    /// The record file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many chunks the blob has.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// The chunk size.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    fn known(&self, chunk: u64) -> &AtomicU8 {
        assert!(chunk < self.chunks, "chunk {chunk} of {}", self.chunks);
        &self.known[chunk as usize]
    }

    /// The state of `chunk` ([`ABSENT`], [`VERIFIED`], [`PRESENT`]; any other
    /// value is read as absent). A chunk seen verified before costs a load
    /// of process memory; any other reads its byte of the file. A byte that
    /// cannot be read (the record was truncated) reads as absent, and
    /// [`check`](Self::check) says why before anything is fetched.
    pub fn state(&self, chunk: u64) -> u8 {
        let known = self.known(chunk);
        if known.load(Ordering::Acquire) == VERIFIED {
            return VERIFIED;
        }
        let mut byte = [ABSENT];
        match self.file.read_at(&mut byte, HEADER_LEN + chunk) {
            Ok(1) => {}
            Ok(_) => {
                self.note_read_failure(&io::Error::from(io::ErrorKind::UnexpectedEof));
                return ABSENT;
            }
            Err(e) => {
                self.note_read_failure(&e);
                return ABSENT;
            }
        }
        match byte[0] {
            VERIFIED => {
                known.store(VERIFIED, Ordering::Release);
                VERIFIED
            }
            PRESENT => PRESENT,
            _ => ABSENT,
        }
    }

    fn note_read_failure(&self, e: &io::Error) {
        if !self.read_failed.swap(true, Ordering::Relaxed) {
            tracing::error!(
                record = %self.path.display(),
                error = %e,
                "cannot read the chunk record; chunks not yet read are treated as missing"
            );
        }
    }

    /// Checks that the record is still whole (someone may have truncated
    /// it): an error naming the file if not. Called before a chunk is
    /// fetched, so that a broken record costs no fetch.
    pub fn check(&self) -> Result<(), ChunkCacheError> {
        let len = self
            .file
            .metadata()
            .map_err(io_err(&self.path, "inspecting the chunk record"))?
            .len();
        if len != self.len {
            return Err(ChunkCacheError::BadRecord {
                path: self.path.clone(),
                why: format!(
                    "{len} bytes long, not {}: changed by someone else while in use; stop the servers using it and remove it",
                    self.len
                ),
            });
        }
        Ok(())
    }

    /// Sets the state of `chunk`. Callers hold the chunk's lock, and have
    /// made its bytes durable before they mark it present or verified.
    pub fn set(&self, chunk: u64, state: u8) -> Result<(), ChunkCacheError> {
        let known = self.known(chunk);
        if state != VERIFIED {
            known.store(ABSENT, Ordering::Release);
        }
        // A write past the end would grow a truncated record again, with
        // zeros (absent) for the lost states: refuse instead.
        self.check()?;
        self.file
            .write_all_at(&[state], HEADER_LEN + chunk)
            .map_err(io_err(&self.path, "writing the chunk record"))?;
        if state == VERIFIED {
            known.store(VERIFIED, Ordering::Release);
        }
        Ok(())
    }

    /// Locks chunk `chunk` against every other filler on the host (waits).
    pub fn lock_chunk(&self, chunk: u64) -> Result<ByteLock, ChunkCacheError> {
        self.lock(HEADER_LEN + chunk, 1)
    }

    /// Locks every chunk at once (waits).
    pub fn lock_all_chunks(&self) -> Result<ByteLock, ChunkCacheError> {
        self.lock(HEADER_LEN, self.chunks.max(1))
    }

    /// Locks byte `at` of the header (waits).
    pub fn lock(&self, at: u64, len: u64) -> Result<ByteLock, ChunkCacheError> {
        let file = open_existing(&self.path)?;
        ByteLock::acquire(file, &self.path, at, len)
    }

    /// Marks the blob in use by this process until the lock is dropped (a
    /// shared lock: many users at once), and records the time as its last
    /// use (the record's modification time, which prune orders by). `None`
    /// if `cache prune` removed the record meanwhile: open it again.
    pub fn hold_in_use(&self) -> Result<Option<ByteLock>, ChunkCacheError> {
        let file = open_existing(&self.path)?;
        // Best effort: a cache on a file system that refuses the time
        // update still works, prune just sees an older last use.
        let _ = file.set_modified(std::time::SystemTime::now());
        let ours = file
            .metadata()
            .map_err(io_err(&self.path, "inspecting the chunk record"))?;
        let lock = ByteLock::lock(file, &self.path, IN_USE_LOCK, 1, Kind::Shared)?;
        // Prune unlinks under its lock, so once we hold ours the path
        // either still names our file or the blob is gone.
        match std::fs::metadata(&self.path) {
            Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => Ok(Some(lock)),
            _ => Ok(None),
        }
    }

    /// Makes the state bytes durable (a lost state byte only costs a fetch
    /// again; this keeps restarts after a host crash from refetching).
    pub fn sync(&self) -> Result<(), ChunkCacheError> {
        // Starts write-back without waiting for it, as msync(MS_ASYNC)
        // did for the mapping this record once was.
        // SAFETY: sync_file_range on a descriptor we own; no memory passed.
        let rc = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io_err(&self.path, "syncing the chunk record")(
                io::Error::last_os_error(),
            ))
        }
    }
}

/// Opens an existing record for reading and writing: each lock needs an
/// open file description of its own (see the module doc).
pub(crate) fn open_existing(path: &Path) -> Result<File, ChunkCacheError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path, "opening the chunk record"))
}

/// An OFD lock on a byte range of a record, held by its own open
/// file description; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct ByteLock {
    _file: File,
}

/// How [`ByteLock::lock`] locks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A write lock; waits for it.
    Exclusive,
    /// A read lock; waits for it.
    Shared,
    /// A write lock only if nobody holds any lock on the range now.
    ExclusiveNow,
}

impl ByteLock {
    fn acquire(file: File, path: &Path, at: u64, len: u64) -> Result<ByteLock, ChunkCacheError> {
        Self::lock(file, path, at, len, Kind::Exclusive)
    }

    /// Locks `len` bytes at `at` of `file` (a record at `path`) as `kind`
    /// says. With [`Kind::ExclusiveNow`], a range someone holds is
    /// [`ChunkCacheError::InUse`].
    pub(crate) fn lock(
        file: File,
        path: &Path,
        at: u64,
        len: u64,
        kind: Kind,
    ) -> Result<ByteLock, ChunkCacheError> {
        // SAFETY: flock is plain old data; all-zero is a valid value.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = if kind == Kind::Shared {
            libc::F_RDLCK
        } else {
            libc::F_WRLCK
        } as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = at as libc::off_t;
        fl.l_len = len as libc::off_t;
        let cmd = if kind == Kind::ExclusiveNow {
            libc::F_OFD_SETLK
        } else {
            libc::F_OFD_SETLKW
        };
        loop {
            // SAFETY: fcntl on a descriptor we own with a valid flock.
            let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) };
            if rc == 0 {
                return Ok(ByteLock { _file: file });
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::EACCES) if kind == Kind::ExclusiveNow => {
                    return Err(ChunkCacheError::InUse {
                        path: path.to_owned(),
                    })
                }
                _ => return Err(io_err(path, "locking the chunk record")(e)),
            }
        }
    }
}
