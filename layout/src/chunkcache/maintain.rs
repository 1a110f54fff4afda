//! Looking after the cache: what it holds (`ocidisk cache list`) and
//! removing what is old or too much (`ocidisk cache prune`), never a blob a
//! running server has open (see [`IN_USE_LOCK`]). The manifests and configs
//! kept for starting without the registry are pruned by age too, and by
//! size once the blobs are, never one a running server opened (see the
//! `meta` module).

use super::record::{
    io_err, open_existing, parse_header, ByteLock, Kind, HEADER_LEN, IN_USE_LOCK, PRESENT, VERIFIED,
};
use super::{ChunkCache, ChunkCacheError};
use serde::Serialize;
use std::fs::File;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// One cached blob.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The blob file.
    pub path: PathBuf,
    /// Its record.
    pub record: PathBuf,
    /// The blob's size in bytes.
    pub size: u64,
    /// Bytes of host storage the blob file takes (it is sparse).
    pub allocated: u64,
    /// Chunks in all.
    pub chunks: u64,
    /// Chunks checked against their hash (or the blob's digest).
    pub verified: u64,
    /// Chunks fetched but not yet checked.
    pub present: u64,
    /// When a server last opened it, seconds since the epoch.
    pub last_used: u64,
    /// Whether a running process has it open now.
    pub in_use: bool,
}

/// What [`ChunkCache::prune`] removes.
#[derive(Clone, Debug, Default)]
pub struct PrunePolicy {
    /// Blobs no server has opened for this long.
    pub older_than: Option<Duration>,
    /// Then the least recently used blobs, until the cache's blobs and
    /// kept manifests and configs take at most this many bytes of storage;
    /// if that is not enough (blobs in use stay), the least recently used
    /// manifests and configs no server uses, with the resolution records
    /// that point at them.
    pub max_bytes: Option<u64>,
    /// Say what would go, remove nothing.
    pub dry_run: bool,
}

/// What a prune did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// Removed (or, in a dry run, to be removed).
    pub removed: Vec<Entry>,
    /// Chosen by the policy but in use, so kept.
    pub kept_in_use: Vec<Entry>,
    /// Storage freed, bytes (blobs, manifests and configs).
    pub freed: u64,
    /// Storage the cache's blobs and kept manifests and configs take
    /// afterwards, bytes.
    pub remaining: u64,
    /// Manifests, configs and reference records (by age; by size only
    /// after the blobs, as they take a few KiB each).
    pub metadata: super::MetaPruneReport,
}

impl ChunkCache {
    /// Every blob in the cache, least recently used first. A record that
    /// cannot be read is an error naming it.
    pub fn entries(&self) -> Result<Vec<Entry>, ChunkCacheError> {
        let dir = self.dir().join("chunks").join("sha256");
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ChunkCacheError::Io {
                    path: dir,
                    op: "listing the cache directory",
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for item in listing {
            let item = item.map_err(|source| ChunkCacheError::Io {
                path: dir.clone(),
                op: "listing the cache directory",
                source,
            })?;
            let record = item.path();
            let Some(name) = record
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".chunks"))
            else {
                continue;
            };
            let path = dir.join(name);
            let hex = name.split('.').next().unwrap_or(name);
            match read_entry(&record, &path, hex) {
                Ok(entry) => out.push(entry),
                // Removed by a concurrent prune since the listing.
                Err(ChunkCacheError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| (a.last_used, &a.digest).cmp(&(b.last_used, &b.digest)));
        Ok(out)
    }

    /// Removes blobs as `policy` says, oldest first, skipping those in use.
    pub fn prune(&self, policy: &PrunePolicy) -> Result<PruneReport, ChunkCacheError> {
        let entries = self.entries()?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Listed once: their storage counts towards the limit, and the
        // same list is pruned after the blobs.
        let metas = self.meta_files()?;
        let mut report = PruneReport {
            remaining: entries.iter().map(|e| e.allocated).sum::<u64>()
                + super::meta::meta_bytes(&metas),
            ..PruneReport::default()
        };
        for entry in entries {
            let old = policy
                .older_than
                .is_some_and(|age| now.saturating_sub(entry.last_used) >= age.as_secs());
            let too_much = policy.max_bytes.is_some_and(|max| report.remaining > max);
            if !old && !too_much {
                continue;
            }
            if policy.dry_run {
                if entry.in_use {
                    report.kept_in_use.push(entry);
                } else {
                    report.freed += entry.allocated;
                    report.remaining -= entry.allocated;
                    report.removed.push(entry);
                }
                continue;
            }
            match remove(&entry) {
                Ok(()) => {
                    report.freed += entry.allocated;
                    report.remaining -= entry.allocated;
                    report.removed.push(entry);
                }
                Err(ChunkCacheError::InUse { .. }) => report.kept_in_use.push(entry),
                Err(e) => return Err(e),
            }
        }
        // Manifests and configs after the blobs: a few KiB each, and what a
        // restart without the registry needs.
        let free = policy
            .max_bytes
            .map_or(0, |max| report.remaining.saturating_sub(max));
        if policy.older_than.is_some() || free > 0 {
            let age = policy.older_than.map(|a| a.as_secs());
            report.metadata = self.prune_meta(metas, age, free, policy.dry_run)?;
            report.freed += report.metadata.freed;
            report.remaining = report.remaining.saturating_sub(report.metadata.freed);
        }
        Ok(report)
    }
}

/// Reads a record's header and states without changing anything.
fn read_entry(record: &Path, path: &Path, hex: &str) -> Result<Entry, ChunkCacheError> {
    let file = File::open(record).map_err(io_err(record, "opening the chunk record"))?;
    let meta = file
        .metadata()
        .map_err(io_err(record, "inspecting the chunk record"))?;
    if meta.len() < HEADER_LEN {
        return Err(ChunkCacheError::BadRecord {
            path: record.to_owned(),
            why: "shorter than its header".to_owned(),
        });
    }
    let mut head = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(io_err(record, "reading the chunk record"))?;
    let (size, chunk_size) = parse_header(record, &head)?;
    if chunk_size == 0 {
        return Err(ChunkCacheError::BadRecord {
            path: record.to_owned(),
            why: "chunk size 0".to_owned(),
        });
    }
    let chunks = size.div_ceil(chunk_size);
    let mut states = vec![0u8; chunks as usize];
    file.read_exact_at(&mut states, HEADER_LEN)
        .map_err(io_err(record, "reading the chunk record"))?;
    let allocated = std::fs::metadata(path)
        .map_err(io_err(path, "inspecting the cached blob"))?
        .blocks()
        * 512;
    let last_used = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok(Entry {
        digest: format!("sha256:{hex}"),
        path: path.to_owned(),
        record: record.to_owned(),
        size,
        allocated,
        chunks,
        verified: states.iter().filter(|&&s| s == VERIFIED).count() as u64,
        present: states.iter().filter(|&&s| s == PRESENT).count() as u64,
        last_used,
        in_use: lock_unused(record).is_err(),
    })
}

/// The record's in-use byte, write-locked, if no process holds it.
fn lock_unused(record: &Path) -> Result<ByteLock, ChunkCacheError> {
    let file = open_existing(record)?;
    ByteLock::lock(file, record, IN_USE_LOCK, 1, Kind::ExclusiveNow)
}

/// Removes a blob unless it is in use: the blob file first, so that a
/// record never outlives its data's removal claiming chunks are present.
fn remove(entry: &Entry) -> Result<(), ChunkCacheError> {
    let _lock = lock_unused(&entry.record)?;
    for path in [&entry.path, &entry.record] {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ChunkCacheError::Io {
                    path: path.to_owned(),
                    op: "removing",
                    source,
                })
            }
        }
    }
    Ok(())
}
