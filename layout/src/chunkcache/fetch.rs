//! Where a remote blob's bytes come from: the [`ChunkFetch`] trait that a
//! registry client (or a test's file) implements.

use thiserror::Error;

/// Reads byte ranges of one remote blob.
///
/// The cache calls [`fetch`](ChunkFetch::fetch) with a chunk's offset and a
/// buffer exactly as long as the chunk (the last chunk may be shorter), at
/// most once at a time per chunk across every process on the host, and
/// checks what comes back against the chunk's hash when it knows one. An
/// implementation fills the whole buffer or fails; it may be called from
/// many threads at once for different chunks.
pub trait ChunkFetch: Send + Sync + std::fmt::Debug {
    /// Fills `buf` with the blob's bytes from `offset` on.
    fn fetch(&self, offset: u64, buf: &mut [u8]) -> Result<(), FetchError>;
}

/// Why a fetch failed, and whether trying again may help.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FetchError {
    /// Worth another attempt: a timeout, a dropped connection, a `5xx`, a
    /// short body, an expired token.
    #[error("{0}")]
    Transient(String),
    /// Trying again will not help: the blob is missing, access is refused,
    /// the range is outside the blob. The cache gives up at once.
    #[error("{0}")]
    Permanent(String),
    /// The source is known to be unreachable right now (it gave no answer
    /// moments ago and rests before asking again): the read fails at once,
    /// without spending the attempt budget, and quietly, since the source
    /// logs the outage once rather than the cache once per chunk.
    #[error("{0}")]
    Unavailable(String),
}

impl FetchError {
    /// Whether the cache should try again (within its attempt budget).
    pub fn is_transient(&self) -> bool {
        matches!(self, FetchError::Transient(_))
    }
}
