//! The overlay file's neighbours on the host: advisory locks, durable
//! renames, and the temporary files a create or reset builds before it
//! renames them into place.
//!
//! Temporary files are named and swept (`remove_stale_temps`) rather than
//! made with `O_TMPFILE` and `linkat`: `linkat` cannot replace an existing
//! file, and a reset must replace the overlay atomically, so a rename from
//! a named file is needed anyway; `O_TMPFILE` is also missing on some file
//! systems (older NFS, FUSE), and linking one into place needs
//! `CAP_DAC_READ_SEARCH` or `/proc`. Locks and `fallocate` go through
//! rustix: the same system calls, without `unsafe` of our own.

use crate::error::{io_err, OverlayError};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a lock held by someone else may take to go away before the file
/// counts as in use. A backend killed with writes in flight on its io_uring
/// keeps its files referenced, and so locked, until the kernel's teardown
/// of the ring finishes, which happens after the process has been reaped
/// (tens of milliseconds on a busy host): a restart right after a kill -9
/// must wait for that rather than fail.
const BUSY_GRACE: Duration = Duration::from_secs(2);

/// Takes an advisory lock on the file so two processes never write one
/// overlay (the lock dies with the process, so a killed backend leaves none).
pub(crate) fn lock_file(file: &File, path: &Path, exclusive: bool) -> Result<(), OverlayError> {
    use rustix::fs::FlockOperation;
    use rustix::io::Errno;
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    let deadline = Instant::now() + BUSY_GRACE;
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(Errno::WOULDBLOCK) => {
                return Err(OverlayError::Busy {
                    path: path.to_owned(),
                })
            }
            Err(errno) => return Err(io_err(path, "locking the file")(io::Error::from(errno))),
        }
    }
}

/// Opens `path` for reading (and writing if `write`) and locks it
/// (exclusively if `write`). A reset may rename a new file over the path
/// between our open and our lock: then the locked file is not the one the
/// path names, so open again.
pub(crate) fn open_locked(path: &Path, write: bool) -> Result<File, OverlayError> {
    for _ in 0..8 {
        let file = File::options()
            .read(true)
            .write(write)
            .open(path)
            .map_err(io_err(path, "opening"))?;
        lock_file(&file, path, write)?;
        let ours = file
            .metadata()
            .map_err(io_err(path, "reading the file's status"))?;
        match path.metadata() {
            Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => return Ok(file),
            _ => continue,
        }
    }
    Err(OverlayError::Busy {
        path: path.to_owned(),
    })
}

pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename or link in `path`'s directory durable.
pub(crate) fn sync_dir(path: &Path) -> Result<(), OverlayError> {
    let dir = parent_dir(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(path, format!("syncing directory {}", dir.display())))
}

/// A file built next to its final path under the name
/// `.NAME.tmp-PID-NANOS`, removed on drop unless it was renamed into place.
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
}

impl TempFile {
    /// Creates the file and returns it open, after removing temporary files
    /// of `path` left by processes that died while creating or resetting it
    /// (a host crash or kill -9 would otherwise leave a full-size sparse file
    /// forever).
    pub(crate) fn new(path: &Path) -> Result<(TempFile, File), OverlayError> {
        let dir = parent_dir(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{name}.tmp-");
        remove_stale_temps(&dir, &prefix);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!("{prefix}{}-{nanos}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(path, format!("creating {}", tmp.display())))?;
        Ok((TempFile { path: tmp }, file))
    }

    /// The file was renamed into place: nothing to remove.
    pub(crate) fn forget(mut self) {
        self.path = PathBuf::new();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes the files in `dir` named `PREFIX PID-…` whose process is gone.
/// A live process's file may be a create or reset in progress: kept.
pub(crate) fn remove_stale_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<libc::pid_t>) else {
            continue;
        };
        if pid <= 0 {
            continue;
        }
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
