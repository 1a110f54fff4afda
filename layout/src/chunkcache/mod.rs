//! The host's shared cache of remote blobs, filled chunk by chunk.
//!
//! A remote blob lives in the cache directory as a sparse file of its full
//! size (`chunks/sha256/<hex>`) with a record beside it
//! (`chunks/sha256/<hex>.chunks`, see [`record`]) that says, one byte per
//! chunk, which chunks are present and verified. Every `ocidisk` process on
//! the host reads and writes it through the page cache, so a chunk one of
//! them fills is seen by all at once.
//!
//! Filling a chunk (the only way anything is written to the cache):
//! 1. take an OFD lock on the chunk's byte of the record (one filler per
//!    chunk across all processes and threads; the others wait);
//! 2. look at the byte again: someone may have filled it meanwhile;
//! 3. fetch the chunk into memory through [`ChunkFetch`], with bounded
//!    retries, and check it against its chunk hash when one is known;
//! 4. write it into the blob file and `fdatasync` it;
//! 5. only then set the byte.
//!
//! A filler killed at any point leaves the byte clear (its lock dies with
//! it), so no reader ever takes torn or unchecked bytes for data, and the
//! next reader fetches the chunk again. A partly filled blob survives
//! restarts: its present chunks stay present.
//!
//! A blob without chunk hashes can only be checked whole: its chunks are
//! present-but-unverified until every one is fetched and the file's SHA-256
//! matches the blob's digest; then all are marked verified. Its reads wait
//! for that unless [`ChunkCacheSettings::trust_unverified`] says otherwise.

mod blob;
mod fetch;
mod inflight;
mod maintain;
mod meta;
mod readahead;
pub mod record;

pub use blob::{BlobStatus, CachedBlob};
pub use fetch::{ChunkFetch, FetchError};
pub use inflight::{fetch_chunks, ChunkRef, InFlightReport};
pub use maintain::{Entry, PrunePolicy, PruneReport};
pub use meta::{MetaPin, MetaPruneReport, RefRecord};

use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The chunk size of blobs without chunk hashes: Monogon's hash chunk.
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;

/// Something the chunk cache could not do. Every variant names the file or
/// the blob and the byte range.
#[derive(Debug, Error)]
pub enum ChunkCacheError {
    /// A file operation on the cache failed.
    #[error("{op} {path}")]
    Io {
        /// The cache file at fault.
        path: PathBuf,
        /// What was being done with it, e.g. `opening the cached blob`.
        op: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A record (or the blob file beside it) is not what this blob needs.
    #[error("{path}: {why}")]
    BadRecord {
        /// The cache file at fault.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The blob's description is unusable.
    #[error("blob {digest}: {why}")]
    BadSpec {
        /// The blob's digest.
        digest: String,
        /// What is wrong with its description.
        why: String,
    },
    /// A chunk could not be fetched within the attempt budget, or the
    /// fetcher said trying again would not help.
    #[error(
        "blob {digest}: fetching bytes {offset}..{end} failed after {attempts} attempt(s): {last}"
    )]
    Fetch {
        /// The blob's digest.
        digest: String,
        /// First byte of the range.
        offset: u64,
        /// End of the range (exclusive).
        end: u64,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: String,
    },
    /// A blob without chunk hashes, fetched whole, does not match its digest
    /// (every chunk is marked absent again).
    #[error("blob {digest}: fetched in full, its SHA-256 is {actual}; every chunk will be fetched again")]
    DigestMismatch {
        /// The blob's digest.
        digest: String,
        /// The SHA-256 of the bytes fetched.
        actual: String,
    },
    /// A process has the blob open (`ocidisk cache prune` leaves it).
    #[error("{path}: in use by a running server")]
    InUse {
        /// The cache file at fault.
        path: PathBuf,
    },
    /// A range outside the blob was asked for.
    #[error("blob {digest}: bytes {offset}..{end} lie outside its {size} bytes")]
    OutOfRange {
        /// The blob's digest.
        digest: String,
        /// First byte of the range.
        offset: u64,
        /// End of the range (exclusive).
        end: u64,
        /// The blob's size in bytes.
        size: u64,
    },
}

impl From<ChunkCacheError> for std::io::Error {
    fn from(e: ChunkCacheError) -> std::io::Error {
        let kind = match &e {
            ChunkCacheError::Io { source, .. } => source.kind(),
            ChunkCacheError::OutOfRange { .. } => std::io::ErrorKind::InvalidInput,
            _ => std::io::ErrorKind::Other,
        };
        // Flattened with its causes: an io::Error carries one message.
        std::io::Error::new(kind, blockio::error_chain(&e).to_string())
    }
}

/// How the cache behaves.
#[derive(Clone, Debug)]
pub struct ChunkCacheSettings {
    /// Attempts per chunk before a read fails (at least 1).
    pub max_attempts: u32,
    /// The wait before the second attempt; doubled before each further one,
    /// up to [`max_retry_delay`](Self::max_retry_delay).
    pub retry_delay: Duration,
    /// The longest wait between attempts.
    pub max_retry_delay: Duration,
    /// Serve chunks of blobs without chunk hashes before the whole blob is
    /// checked against its digest.
    pub trust_unverified: bool,
    /// Chunks fetched ahead, on background threads, of reads that walk a
    /// blob sequentially (0: none). Only blobs whose chunks can be read one
    /// by one (with chunk hashes, or `trust_unverified`) are read ahead.
    pub readahead: u64,
}

impl Default for ChunkCacheSettings {
    fn default() -> Self {
        ChunkCacheSettings {
            max_attempts: 4,
            retry_delay: Duration::from_millis(200),
            max_retry_delay: Duration::from_secs(5),
            trust_unverified: false,
            readahead: 0,
        }
    }
}

/// Totals over every blob of a [`ChunkCache`], for `/metrics`.
#[derive(Debug, Default)]
pub struct FetchCounters {
    /// Chunks fetched and written into the cache.
    pub fetches: AtomicU64,
    /// Bytes of those chunks.
    pub bytes: AtomicU64,
    /// Attempts that failed and were tried again.
    pub retries: AtomicU64,
    /// Chunks that could not be fetched (a read of them failed).
    pub failures: AtomicU64,
    /// Chunks this process found ready in the cache (each counted once:
    /// a second node that fetches nothing shows only hits).
    pub hits: AtomicU64,
    /// Chunks a read found missing (it fetched them or waited for another
    /// process that did).
    pub misses: AtomicU64,
    /// Total time spent in successful fetches, in microseconds.
    pub fetch_micros: AtomicU64,
}

/// A snapshot of [`FetchCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchTotals {
    /// Chunk ranges fetched from the registry.
    pub fetches: u64,
    /// Bytes those fetches brought.
    pub bytes: u64,
    /// Fetch attempts that failed and were tried again.
    pub retries: u64,
    /// Fetches that failed for good.
    pub failures: u64,
    /// Reads served from chunks already in the cache.
    pub hits: u64,
    /// Reads that had to fetch first.
    pub misses: u64,
    /// Time spent in successful fetches, in microseconds.
    pub fetch_micros: u64,
}

impl FetchCounters {
    /// The counters now.
    pub fn totals(&self) -> FetchTotals {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FetchTotals {
            fetches: l(&self.fetches),
            bytes: l(&self.bytes),
            retries: l(&self.retries),
            failures: l(&self.failures),
            hits: l(&self.hits),
            misses: l(&self.misses),
            fetch_micros: l(&self.fetch_micros),
        }
    }
}

/// A remote blob as the cache needs to know it.
#[derive(Clone, Debug)]
pub struct BlobSpec {
    /// `sha256:<64 hex digits>`; names the cache files.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of each chunk (a Monogon payload's `chunk_hashes_sha256`),
    /// with the chunk size they were made over; `None` for a blob that can
    /// only be checked whole.
    pub chunk_hashes: Option<ChunkHashes>,
    /// How the blob is named in log lines and errors besides its digest
    /// (e.g. `payload "system"`); may be empty.
    pub name: String,
}

/// The chunk hashes of a blob.
#[derive(Clone, Debug)]
pub struct ChunkHashes {
    /// The size of each chunk but the last.
    pub chunk_size: u64,
    /// SHA-256 of each chunk.
    pub hashes: Arc<[[u8; 32]]>,
}

/// The cache directory, shared by every process on the host.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    settings: ChunkCacheSettings,
    counters: Arc<FetchCounters>,
    /// Background fetchers, started with the cache when readahead is on.
    readahead: Option<Arc<readahead::Readahead>>,
}

/// Background readahead threads per cache: enough to keep a few fetches
/// in flight, few enough not to crowd the queue threads.
const READAHEAD_THREADS: u64 = 4;

impl ChunkCache {
    /// The chunk cache under `dir` (today's `--cache` directory; its files
    /// go to `dir/chunks/`).
    pub fn new(dir: impl Into<PathBuf>, settings: ChunkCacheSettings) -> ChunkCache {
        let readahead = match settings.readahead {
            0 => None,
            window => {
                let threads = window.min(READAHEAD_THREADS) as usize;
                match readahead::Readahead::start(window, threads) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        // Reads still work, one chunk at a time.
                        tracing::warn!("cannot start readahead threads, reading without: {e}");
                        None
                    }
                }
            }
        };
        ChunkCache {
            dir: dir.into(),
            settings,
            counters: Arc::default(),
            readahead,
        }
    }

    /// The background fetchers, when readahead is on.
    fn readahead(&self) -> Option<Arc<readahead::Readahead>> {
        self.readahead.clone()
    }

    /// The counters of every blob opened through this cache.
    pub fn counters(&self) -> &Arc<FetchCounters> {
        &self.counters
    }

    /// The settings.
    pub fn settings(&self) -> &ChunkCacheSettings {
        &self.settings
    }

    /// Where `spec`'s blob is kept, and its record: `chunks/sha256/HEX`
    /// for a blob checked against its digest only, `HEX.hID` for one
    /// checked against chunk hashes, where ID names the hash list.
    ///
    /// A chunk marked verified was checked against the list its record was
    /// made with, and the list comes from an image's config, not from the
    /// blob's digest. Keying by the list too keeps one image's (possibly
    /// wrong) list from vouching for bytes another image reads: two images
    /// with different lists for one blob keep separate copies.
    pub fn paths(&self, spec: &BlobSpec) -> (PathBuf, PathBuf) {
        let dir = self.dir.join("chunks").join("sha256");
        let hex = spec.digest.strip_prefix("sha256:").unwrap_or(&spec.digest);
        let name = match &spec.chunk_hashes {
            None => hex.to_owned(),
            Some(h) => {
                let mut id = Sha256::new();
                id.update(h.chunk_size.to_le_bytes());
                for hash in h.hashes.iter() {
                    id.update(hash);
                }
                let id = id.finalize();
                format!("{hex}.h{}", crate::cache::hex(&id[..16]))
            }
        };
        (dir.join(&name), dir.join(format!("{name}.chunks")))
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens (creating if needed) the cached copy of `spec`'s blob, whose
    /// missing chunks `fetch` provides.
    pub fn open_blob(
        &self,
        spec: BlobSpec,
        fetch: Arc<dyn ChunkFetch>,
    ) -> Result<Arc<CachedBlob>, ChunkCacheError> {
        CachedBlob::open(self, spec, fetch)
    }
}

#[cfg(test)]
mod tests;
