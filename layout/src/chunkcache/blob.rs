//! One blob of the chunk cache: the fill protocol and the gate that reads
//! of it pass (see the module documentation of [`super`]).

use super::readahead::{Detector, Readahead};
use super::record::{ByteLock, Record, ABSENT, PRESENT, VERIFIED, WHOLE_LOCK};
use super::{
    BlobSpec, ChunkCache, ChunkCacheError, ChunkCacheSettings, ChunkFetch, FetchCounters,
    FetchError, DEFAULT_CHUNK_SIZE,
};
use crate::cache::hex;
use crate::source::{BlobFile, ChunkGate};
use sha2::{Digest as _, Sha256};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

/// A blob of the cache, possibly only partly present. It is the
/// [`ChunkGate`] of the [`BlobFile`] that [`blob_file`](Self::blob_file)
/// opens: every read of that file first makes its chunks present and
/// verified.
#[derive(Debug)]
pub struct CachedBlob {
    spec: BlobSpec,
    hex: String,
    data_path: PathBuf,
    /// The blob file opened for writing: only the fill protocol writes.
    data: File,
    record: Record,
    fetch: Arc<dyn ChunkFetch>,
    settings: ChunkCacheSettings,
    counters: Arc<FetchCounters>,
    /// Held while this value lives: tells `cache prune` the blob is in use.
    _in_use: ByteLock,
    /// Chunks this process has already counted (as a hit, or fetched):
    /// the read path counts a hit once per chunk, so that it stays an
    /// atomic load after that instead of a shared counter's increment.
    seen: Box<[AtomicBool]>,
    /// This blob, for the readahead queue (which must not keep it alive).
    me: Weak<CachedBlob>,
    /// The cache's background fetchers, when readahead is on.
    readahead: Option<Arc<Readahead>>,
    /// Whether reads walk the blob sequentially.
    detector: Detector,
    /// Chunks waiting in the readahead queue or being fetched by it.
    queued: Box<[AtomicBool]>,
    /// Chunks readahead fetched that no read has reached yet: reaching one
    /// keeps the window moving (reads of chunks that were in the cache
    /// already, say another server's, never start a readahead).
    ahead: Box<[AtomicBool]>,
}

/// How much of a blob is in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobStatus {
    /// Chunks in the blob.
    pub chunks: u64,
    /// Chunks present but not yet verified.
    pub present: u64,
    /// Chunks present and verified.
    pub verified: u64,
}

impl CachedBlob {
    pub(super) fn open(
        cache: &ChunkCache,
        spec: BlobSpec,
        fetch: Arc<dyn ChunkFetch>,
    ) -> Result<Arc<CachedBlob>, ChunkCacheError> {
        let bad = |why: String| ChunkCacheError::BadSpec {
            digest: spec.digest.clone(),
            why,
        };
        let hex = match spec.digest.strip_prefix("sha256:") {
            Some(h)
                if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                h.to_owned()
            }
            _ => return Err(bad("not sha256:<64 lower-case hex digits>".to_owned())),
        };
        if let Some(h) = &spec.chunk_hashes {
            if h.chunk_size == 0 {
                return Err(bad("chunk size 0".to_owned()));
            }
            let want = spec.size.div_ceil(h.chunk_size);
            if h.hashes.len() as u64 != want {
                return Err(bad(format!(
                    "{} chunk hashes; {} bytes in chunks of {} need {want}",
                    h.hashes.len(),
                    spec.size,
                    h.chunk_size
                )));
            }
        }
        let (data_path, record_path) = cache.paths(&spec);
        if let Some(dir) = data_path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ChunkCacheError::Io {
                path: dir.to_owned(),
                op: "creating the cache directory",
                source,
            })?;
        }
        // Held from before the blob file is opened, so that a prune
        // racing with this open either finishes first (and the record is
        // made again) or waits for this process to let go.
        let mut attempts = 0;
        let (record, in_use) = loop {
            let record = Record::open(
                &record_path,
                &data_path,
                spec.size,
                spec.chunk_hashes.as_ref().map(|h| h.chunk_size),
                DEFAULT_CHUNK_SIZE,
            )?;
            match record.hold_in_use()? {
                Some(lock) => break (record, lock),
                None if attempts < 3 => attempts += 1,
                None => {
                    return Err(ChunkCacheError::BadRecord {
                        path: record_path,
                        why: "removed again and again while being opened".to_owned(),
                    })
                }
            }
        };
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&data_path)
            .map_err(|source| ChunkCacheError::Io {
                path: data_path.clone(),
                op: "opening the cached blob",
                source,
            })?;
        let flags = || {
            (0..record.chunks())
                .map(|_| AtomicBool::new(false))
                .collect()
        };
        let seen = flags();
        let queued = flags();
        let ahead = flags();
        // Only chunks that can be read one by one are worth reading ahead.
        let readahead = cache
            .readahead()
            .filter(|_| spec.chunk_hashes.is_some() || cache.settings().trust_unverified);
        Ok(Arc::new_cyclic(|me| CachedBlob {
            _in_use: in_use,
            seen,
            me: me.clone(),
            readahead,
            detector: Detector::default(),
            queued,
            ahead,
            spec,
            hex,
            data_path,
            data,
            record,
            fetch,
            settings: cache.settings().clone(),
            counters: Arc::clone(cache.counters()),
        }))
    }

    /// The blob's description.
    pub fn spec(&self) -> &BlobSpec {
        &self.spec
    }

    /// The cached blob file.
    pub fn path(&self) -> &Path {
        &self.data_path
    }

    /// The chunk size.
    pub fn chunk_size(&self) -> u64 {
        self.record.chunk_size()
    }

    /// The blob file opened read-only, with this blob as its gate: what a
    /// block map reads.
    pub fn blob_file(self: &Arc<Self>) -> Result<BlobFile, ChunkCacheError> {
        let file = BlobFile::open(&self.data_path).map_err(|source| ChunkCacheError::Io {
            path: self.data_path.clone(),
            op: "opening the cached blob",
            source,
        })?;
        Ok(file.with_gate(Arc::clone(self) as Arc<dyn ChunkGate>))
    }

    /// How much of the blob is in the cache now.
    pub fn status(&self) -> BlobStatus {
        let mut s = BlobStatus {
            chunks: self.record.chunks(),
            present: 0,
            verified: 0,
        };
        for i in 0..self.record.chunks() {
            match self.record.state(i) {
                VERIFIED => s.verified += 1,
                PRESENT => s.present += 1,
                _ => {}
            }
        }
        s
    }

    /// Whether a chunk in `state` may be read.
    fn readable(&self, state: u8) -> bool {
        state == VERIFIED || (state == PRESENT && self.settings.trust_unverified)
    }

    fn chunk_range(&self, chunk: u64) -> Range<u64> {
        let cs = self.record.chunk_size();
        let start = chunk * cs;
        start..(start + cs).min(self.spec.size)
    }

    /// Makes every chunk that bytes `[offset, offset + len)` touch
    /// readable: fetched (by this process or another) and verified.
    pub fn ensure_range(&self, offset: u64, len: u64) -> Result<(), ChunkCacheError> {
        if len == 0 {
            return Ok(());
        }
        let end = offset.checked_add(len).filter(|&e| e <= self.spec.size);
        let Some(end) = end else {
            return Err(ChunkCacheError::OutOfRange {
                digest: self.spec.digest.clone(),
                offset,
                end: offset.saturating_add(len),
                size: self.spec.size,
            });
        };
        let cs = self.record.chunk_size();
        if let Some(ra) = &self.readahead {
            let (first, last) = (offset / cs, (end - 1) / cs);
            // Only a sequential walk that is fetching (a miss, or a chunk
            // readahead brought) reads further ahead.
            if self.detector.note(first, last)
                && (first..=last).any(|c| {
                    !self.readable(self.record.state(c))
                        || self.ahead[c as usize].swap(false, Ordering::Relaxed)
                })
            {
                self.read_ahead(ra, last);
            }
        }
        for chunk in offset / cs..end.div_ceil(cs) {
            if self.readable(self.record.state(chunk)) {
                let seen = &self.seen[chunk as usize];
                if !seen.load(Ordering::Relaxed) && !seen.swap(true, Ordering::Relaxed) {
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            if self.spec.chunk_hashes.is_none() && !self.settings.trust_unverified {
                // Nothing of it may be read before the whole is checked.
                return self.verify_whole();
            }
            self.fill(chunk)?;
        }
        Ok(())
    }

    /// Queues the chunks after `last` (up to the readahead window) that are
    /// neither readable nor queued already; stops when the queue is full.
    fn read_ahead(&self, ra: &Readahead, last: u64) {
        let end = last
            .saturating_add(ra.window)
            .min(self.record.chunks().saturating_sub(1));
        for chunk in last + 1..=end {
            if self.readable(self.record.state(chunk)) {
                continue;
            }
            let queued = &self.queued[chunk as usize];
            if queued.swap(true, Ordering::Relaxed) {
                continue;
            }
            if !ra.offer(self.me.clone(), chunk) {
                queued.store(false, Ordering::Relaxed);
                break;
            }
        }
    }

    /// A readahead job for `chunk` ended: `fetched` it, or found it
    /// there, or failed.
    pub(super) fn readahead_done(&self, chunk: u64, fetched: bool) {
        if fetched {
            if let Some(a) = self.ahead.get(chunk as usize) {
                a.store(true, Ordering::Relaxed);
            }
        }
        if let Some(q) = self.queued.get(chunk as usize) {
            q.store(false, Ordering::Relaxed);
        }
    }

    /// Fetches every missing chunk, in order, and for a blob without chunk
    /// hashes checks the whole (for `ocidisk pull`).
    pub fn fetch_all(&self) -> Result<(), ChunkCacheError> {
        for chunk in 0..self.record.chunks() {
            if self.record.state(chunk) == ABSENT {
                self.fill(chunk)?;
            }
        }
        if self.spec.chunk_hashes.is_none() {
            self.verify_whole()?;
        }
        self.record.sync()
    }

    /// Chunks in the blob.
    pub fn chunks(&self) -> u64 {
        self.record.chunks()
    }

    /// Whether the blob carries chunk hashes (each chunk checked on its
    /// own); without them it can only be checked whole.
    pub fn has_chunk_hashes(&self) -> bool {
        self.spec.chunk_hashes.is_some()
    }

    /// Fetches one chunk if it is missing (for a blob with chunk hashes:
    /// also one present but not yet verified); says whether this call
    /// fetched it. A blob without chunk hashes is not checked here: call
    /// [`fetch_all`](Self::fetch_all) once its chunks are in. Safe to call
    /// from many threads: the fill protocol serializes each chunk.
    pub fn fetch_chunk(&self, chunk: u64) -> Result<bool, ChunkCacheError> {
        if chunk >= self.record.chunks() {
            let cs = self.record.chunk_size();
            return Err(ChunkCacheError::OutOfRange {
                digest: self.spec.digest.clone(),
                offset: chunk.saturating_mul(cs),
                end: chunk.saturating_add(1).saturating_mul(cs),
                size: self.spec.size,
            });
        }
        let state = self.record.state(chunk);
        let missing = if self.spec.chunk_hashes.is_some() {
            !self.readable(state)
        } else {
            state == ABSENT
        };
        if !missing {
            return Ok(false);
        }
        self.fill(chunk)
    }

    /// Fetches the chunks `ranges` touch, in the order given (a recorded
    /// boot's reads, so that a first boot finds what it needs first).
    /// Ranges are clamped to the blob; stops at the first failure.
    pub fn prefetch(&self, ranges: &[Range<u64>]) -> Result<(), ChunkCacheError> {
        for r in ranges {
            let start = r.start.min(self.spec.size);
            let end = r.end.clamp(start, self.spec.size);
            self.ensure_range(start, end - start)?;
        }
        self.record.sync()
    }

    /// Fills one chunk under its lock (steps 1–5 of the protocol); says
    /// whether it fetched the chunk (not when another filler had, or the
    /// chunk hash verified what was present).
    fn fill(&self, chunk: u64) -> Result<bool, ChunkCacheError> {
        let _lock = self.record.lock_chunk(chunk)?;
        let state = self.record.state(chunk);
        if self.readable(state) || (state == PRESENT && self.spec.chunk_hashes.is_none()) {
            // Another filler finished while we waited (a present chunk of
            // a blob without chunk hashes waits for the whole check).
            return Ok(false);
        }
        // A record someone truncated cannot take the new state: say so
        // before fetching rather than after.
        self.record.check()?;
        let range = self.chunk_range(chunk);
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        if state == PRESENT {
            // Present but unchecked (fetched without chunk hashes): the
            // hashes we have may verify it without a fetch.
            if let Some(expected) = self.expected_hash(chunk) {
                self.data
                    .read_exact_at(&mut buf, range.start)
                    .map_err(|source| self.io_err("reading the cached blob", source))?;
                if Sha256::digest(&buf).as_slice() == expected {
                    self.record.set(chunk, VERIFIED)?;
                    return Ok(false);
                }
            }
        }
        self.fetch_checked(chunk, &range, &mut buf)?;
        self.seen[chunk as usize].store(true, Ordering::Relaxed);
        // Durable before the byte says so: a crash between the two leaves
        // the chunk absent, never a set byte over missing data.
        self.data
            .write_all_at(&buf, range.start)
            .map_err(|source| self.io_err("writing the cached blob", source))?;
        self.data
            .sync_data()
            .map_err(|source| self.io_err("syncing the cached blob", source))?;
        let new = if self.spec.chunk_hashes.is_some() {
            VERIFIED
        } else {
            PRESENT
        };
        self.record.set(chunk, new)?;
        Ok(true)
    }

    fn expected_hash(&self, chunk: u64) -> Option<&[u8; 32]> {
        self.spec.chunk_hashes.as_ref()?.hashes.get(chunk as usize)
    }

    fn io_err(&self, op: &'static str, source: io::Error) -> ChunkCacheError {
        ChunkCacheError::Io {
            path: self.data_path.clone(),
            op,
            source,
        }
    }

    /// What the log and errors call this blob.
    fn what(&self) -> String {
        if self.spec.name.is_empty() {
            self.spec.digest.clone()
        } else {
            format!("{} ({})", self.spec.name, self.spec.digest)
        }
    }

    /// Fetches a chunk into `buf` and checks its hash, trying again within
    /// the attempt budget.
    fn fetch_checked(
        &self,
        chunk: u64,
        range: &Range<u64>,
        buf: &mut [u8],
    ) -> Result<(), ChunkCacheError> {
        let attempts = self.settings.max_attempts.max(1);
        let mut delay = self.settings.retry_delay;
        let mut last = String::new();
        let mut made = 0;
        // Whether every attempt was refused by a source resting after an
        // outage (it logged that once): then the failure is not logged
        // again per chunk.
        let mut only_unavailable = true;
        for attempt in 1..=attempts {
            made = attempt;
            let began = Instant::now();
            let result =
                self.fetch
                    .fetch(range.start, buf)
                    .and_then(|()| match self.expected_hash(chunk) {
                        Some(expected) if Sha256::digest(&*buf).as_slice() != expected => {
                            Err(FetchError::Transient(format!(
                                "wrong bytes: chunk {chunk} does not match its chunk hash"
                            )))
                        }
                        _ => Ok(()),
                    });
            match result {
                Ok(()) => {
                    let c = &self.counters;
                    c.fetches.fetch_add(1, Ordering::Relaxed);
                    c.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
                    c.fetch_micros
                        .fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e @ FetchError::Unavailable(_)) => {
                    last = e.to_string();
                    break;
                }
                Err(e) => {
                    only_unavailable = false;
                    tracing::warn!(
                        blob = %self.what(),
                        offset = range.start,
                        end = range.end,
                        attempt,
                        attempts,
                        "fetching a chunk failed: {e}"
                    );
                    last = e.to_string();
                    if !e.is_transient() || attempt == attempts {
                        break;
                    }
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(self.settings.max_retry_delay);
                }
            }
        }
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        let err = ChunkCacheError::Fetch {
            digest: self.spec.digest.clone(),
            offset: range.start,
            end: range.end,
            attempts: made,
            last,
        };
        if only_unavailable {
            tracing::debug!(blob = %self.what(), "{err}");
        } else {
            tracing::error!(blob = %self.what(), "{err}");
        }
        Err(err)
    }

    /// Fetches what is missing of a blob without chunk hashes and checks it
    /// whole; on success every chunk is marked verified, on a mismatch every
    /// chunk is marked absent again.
    fn verify_whole(&self) -> Result<(), ChunkCacheError> {
        let all_verified = |r: &Record| (0..r.chunks()).all(|i| r.state(i) == VERIFIED);
        if all_verified(&self.record) {
            return Ok(());
        }
        let _whole = self.record.lock(WHOLE_LOCK, 1)?;
        if all_verified(&self.record) {
            return Ok(());
        }
        for chunk in 0..self.record.chunks() {
            if self.record.state(chunk) == ABSENT {
                self.fill(chunk)?;
            }
        }
        // Every chunk is now present and durable, and no filler writes a
        // present chunk: the file is stable while it is hashed.
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0;
        while pos < self.spec.size {
            let n = (self.spec.size - pos).min(buf.len() as u64) as usize;
            self.data
                .read_exact_at(&mut buf[..n], pos)
                .map_err(|source| self.io_err("reading the cached blob", source))?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        let actual = hex(&hasher.finalize());
        if actual == self.hex {
            for chunk in 0..self.record.chunks() {
                self.record.set(chunk, VERIFIED)?;
            }
            return self.record.sync();
        }
        let _all = self.record.lock_all_chunks()?;
        for chunk in 0..self.record.chunks() {
            self.record.set(chunk, ABSENT)?;
        }
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        let err = ChunkCacheError::DigestMismatch {
            digest: self.spec.digest.clone(),
            actual: format!("sha256:{actual}"),
        };
        tracing::error!(blob = %self.what(), "{err}");
        Err(err)
    }
}

impl ChunkGate for CachedBlob {
    fn ensure(&self, offset: u64, len: u64) -> io::Result<()> {
        self.ensure_range(offset, len).map_err(io::Error::from)
    }
}
