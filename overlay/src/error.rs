//! What can go wrong with an overlay file.

use blockio::BaseIdentity;
use std::io;
use std::path::{Path, PathBuf};

/// An error from an overlay operation; every variant names the file.
///
/// [`OverlayError::is_guest_error`] tells the errors a guest can cause with a
/// bad request (the backend answers those with `VIRTIO_BLK_S_IOERR` and keeps
/// serving) from failures of the host's storage.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A system call on the overlay file failed.
    #[error("overlay {path}: {what}")]
    Io {
        /// The overlay file.
        path: PathBuf,
        /// What was being done, e.g. `writing data block 12`.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading the base disk failed (for a read or a copy-up).
    #[error("overlay {path}: reading the base at offset {offset}")]
    Base {
        /// The overlay file.
        path: PathBuf,
        /// The disk offset that was being read.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `create` found a file already there; nothing was changed.
    #[error("overlay {path} already exists; refusing to overwrite it")]
    AlreadyExists {
        /// The overlay file.
        path: PathBuf,
    },
    /// Another process (or another `Overlay` in this one) has the file open.
    #[error("overlay {path} is in use by another process")]
    Busy {
        /// The overlay file.
        path: PathBuf,
    },
    /// The options given to `create` cannot make an overlay.
    #[error("overlay {path}: {reason}")]
    InvalidOptions {
        /// The overlay file.
        path: PathBuf,
        /// What is wrong with them.
        reason: String,
    },
    /// The file does not start with the overlay magic.
    #[error("{path} is not an ocidisk overlay (wrong magic {found:02x?})")]
    NotAnOverlay {
        /// The file.
        path: PathBuf,
        /// The first bytes of the file.
        found: Vec<u8>,
    },
    /// The file was written by a newer (or unknown) format version.
    #[error(
        "overlay {path} has format version {version}; this ocidisk reads version {supported} only"
    )]
    UnsupportedVersion {
        /// The overlay file.
        path: PathBuf,
        /// The version in the file.
        version: u32,
        /// The version this build understands.
        supported: u32,
    },
    /// The file is shorter than the format requires (two header copies, or
    /// the whole length its disk size implies).
    #[error("overlay {path} is truncated: {len} bytes, its format needs {expected}")]
    Truncated {
        /// The overlay file.
        path: PathBuf,
        /// The file's length.
        len: u64,
        /// The length the format requires.
        expected: u64,
    },
    /// A header field or map page is inconsistent or fails its checksum.
    #[error("overlay {path} is corrupt: {what}")]
    Corrupt {
        /// The overlay file.
        path: PathBuf,
        /// Which field or page, and why.
        what: String,
    },
    /// The overlay was made for a disk of another size.
    #[error("overlay {path} is for a disk of {overlay} bytes, the disk is {expected} bytes")]
    DiskSizeMismatch {
        /// The overlay file.
        path: PathBuf,
        /// The disk size recorded in the overlay.
        overlay: u64,
        /// The size of the disk it was opened for.
        expected: u64,
    },
    /// The overlay was made for another base; open with `rebase` to keep its
    /// writes over the new base anyway.
    #[error("overlay {path} was made for base {overlay}, not for {expected} (open with rebase to reuse it)")]
    BaseMismatch {
        /// The overlay file.
        path: PathBuf,
        /// The base identity recorded in the overlay.
        overlay: Box<BaseIdentity>,
        /// The base identity it was opened for.
        expected: Box<BaseIdentity>,
    },
    /// A request reaches outside the disk (a guest error).
    #[error("overlay {path}: range {offset}+{len} is outside the disk of {disk_size} bytes")]
    OutOfRange {
        /// The overlay file.
        path: PathBuf,
        /// The request's offset.
        offset: u64,
        /// The request's length.
        len: u64,
        /// The disk size.
        disk_size: u64,
    },
    /// A write to an overlay opened read-only (a guest error).
    #[error("overlay {path} is open read-only")]
    ReadOnly {
        /// The overlay file.
        path: PathBuf,
    },
    /// An earlier flush failed; the kernel may have dropped the data it could
    /// not write, so nothing written since can be promised durable.
    #[error("overlay {path}: an earlier flush failed; reopen the overlay")]
    Poisoned {
        /// The overlay file.
        path: PathBuf,
    },
}

impl OverlayError {
    /// True for errors caused by the request itself (outside the disk, or a
    /// write to a read-only overlay) rather than by the host's storage.
    pub fn is_guest_error(&self) -> bool {
        matches!(
            self,
            OverlayError::OutOfRange { .. } | OverlayError::ReadOnly { .. }
        )
    }
}

/// Wraps an I/O error with the overlay's path and what was being done.
pub(crate) fn io_err(
    path: &Path,
    what: impl Into<String>,
) -> impl FnOnce(io::Error) -> OverlayError + '_ {
    let what = what.into();
    move |source| OverlayError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

/// A file whose bytes say something impossible.
pub(crate) fn corrupt(path: &Path, what: String) -> OverlayError {
    OverlayError::Corrupt {
        path: path.to_owned(),
        what,
    }
}
