//! Several chunks in flight: `ocidisk pull` fetches a list of chunks (a
//! whole image, or a recorded boot's reads in order) with a bounded number
//! of fetches at once. Each chunk still goes through the fill protocol of
//! its blob, so it is verified and written exactly as a reader's would be.

use super::{CachedBlob, ChunkCacheError};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One chunk of one blob.
#[derive(Clone, Debug)]
pub struct ChunkRef {
    /// The blob the chunk belongs to.
    pub blob: Arc<CachedBlob>,
    /// The chunk's index in the blob (its offset over the chunk size).
    pub chunk: u64,
}

/// What [`fetch_chunks`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlightReport {
    /// Chunks this call fetched.
    pub fetched: u64,
    /// Chunks that were in the cache already (or that another process
    /// fetched meanwhile).
    pub cached: u64,
}

/// Fetches `chunks` with at most `jobs` fetches at once, starting them in
/// the order given (each worker takes the next chunk of the list), so
/// that with one job they are fetched exactly in that order. Stops taking
/// new chunks at the first failure and returns it; chunks already fetched
/// stay in the cache.
pub fn fetch_chunks(chunks: &[ChunkRef], jobs: usize) -> Result<InFlightReport, ChunkCacheError> {
    let jobs = jobs.clamp(1, chunks.len().max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<ChunkCacheError>> = Mutex::new(None);
    let fetched = AtomicU64::new(0);
    let cached = AtomicU64::new(0);
    let work = || {
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(c) = chunks.get(i) else { break };
            match c.blob.fetch_chunk(c.chunk) {
                Ok(true) => fetched.fetch_add(1, Ordering::Relaxed),
                Ok(false) => cached.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                    break;
                }
            };
        }
    };
    if jobs == 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..jobs {
                s.spawn(work);
            }
        });
    }
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(InFlightReport {
        fetched: fetched.into_inner(),
        cached: cached.into_inner(),
    })
}
