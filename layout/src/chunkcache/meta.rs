//! What a server needs besides the chunks to open a registry image while
//! the registry cannot be reached: the verified manifests and configs
//! (`meta/sha256/<hex>`, named by their digest and checked against it on
//! every read) and the last resolution of each reference (`refs/<id>.json`,
//! where ID hashes the reference and its manifest selection).
//!
//! Both are written as the rest of the cache is filled: into a temporary
//! file beside the target, synced, then renamed into place (and the
//! directory synced), so a reader finds the old file, the new one, or none,
//! never a partial one.
//!
//! A server holds a shared `flock` on the manifest and config it opened
//! ([`MetaPin`]) for as long as it runs; `ocidisk cache prune` removes one
//! only under an exclusive lock it takes without waiting, so it never
//! removes what a live server would need to start again offline. `flock`
//! rather than the records' OFD byte locks because these files are
//! read-only and a write lock would need a writable descriptor.

use super::record::io_err;
use super::{ChunkCache, ChunkCacheError};
use rustix::fs::FlockOperation;
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The version of a reference record's JSON.
const REF_RECORD_VERSION: u32 = 1;

/// The last resolution of a reference, as kept in `refs/<id>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRecord {
    /// Format version (1).
    pub version: u32,
    /// What was resolved: the reference with its manifest selection, e.g.
    /// `localhost:5000/os:v1 ref=- platform=linux/amd64`.
    pub key: String,
    /// The image manifest it resolved to, `sha256:<hex>`.
    pub manifest: String,
    /// When, seconds since the epoch.
    pub resolved_at: u64,
}

/// A manifest or config a live server uses, protected from `cache prune`
/// until dropped.
#[derive(Debug)]
pub struct MetaPin {
    _file: File,
}

/// What a prune did to the manifests, configs and reference records.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MetaPruneReport {
    /// Manifests and configs removed (or, in a dry run, to be removed).
    pub removed: Vec<String>,
    /// Chosen by the policy but used by a live server, so kept.
    pub kept_in_use: Vec<String>,
    /// Reference records removed because their manifest is gone.
    pub removed_refs: usize,
    /// Storage the removed manifests and configs took, bytes.
    pub freed: u64,
}

/// A kept manifest or config, as prune sees it.
#[derive(Debug)]
pub(super) struct MetaFile {
    path: PathBuf,
    digest: String,
    /// When a server last used it, seconds since the epoch.
    used: u64,
    /// Bytes of storage it takes.
    allocated: u64,
}

/// Storage `files` take, bytes.
pub(super) fn meta_bytes(files: &[MetaFile]) -> u64 {
    files.iter().map(|f| f.allocated).sum()
}

fn hex_of(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ChunkCache {
    fn meta_dir(&self) -> PathBuf {
        self.dir().join("meta").join("sha256")
    }

    fn refs_dir(&self) -> PathBuf {
        self.dir().join("refs")
    }

    /// Where the manifest or config with `digest` is kept.
    pub fn meta_path(&self, digest: &str) -> Result<PathBuf, ChunkCacheError> {
        let hex = hex_of(digest).ok_or_else(|| ChunkCacheError::BadSpec {
            digest: digest.to_owned(),
            why: "not sha256:<64 lowercase hex digits>".to_owned(),
        })?;
        Ok(self.meta_dir().join(hex))
    }

    /// Where the resolution of `key` is recorded.
    pub fn ref_path(&self, key: &str) -> PathBuf {
        let id = Sha256::digest(key.as_bytes());
        self.refs_dir()
            .join(format!("{}.json", crate::cache::hex(&id[..16])))
    }

    /// Keeps `bytes`, which must hash to `digest` (a manifest or config the
    /// caller verified). An existing copy is kept (its time of last use
    /// refreshed) when it is intact, replaced otherwise.
    pub fn put_meta(&self, digest: &str, bytes: &[u8]) -> Result<(), ChunkCacheError> {
        let path = self.meta_path(digest)?;
        let actual = format!("sha256:{}", crate::cache::hex(&Sha256::digest(bytes)));
        if actual != digest {
            return Err(ChunkCacheError::DigestMismatch {
                digest: digest.to_owned(),
                actual,
            });
        }
        if let Ok(Some(_)) = self.get_meta(digest) {
            touch(&path);
            return Ok(());
        }
        write_atomically(&path, bytes)
    }

    /// The kept manifest or config with `digest`; `None` if there is none.
    /// A copy that does not hash to its digest is an error naming the file.
    pub fn get_meta(&self, digest: &str) -> Result<Option<Vec<u8>>, ChunkCacheError> {
        let path = self.meta_path(digest)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "reading the cached manifest or config")(e)),
        };
        let actual = crate::cache::hex(&Sha256::digest(&bytes));
        if Some(actual.as_str()) != hex_of(digest) {
            return Err(ChunkCacheError::BadRecord {
                path,
                why: format!(
                    "its SHA-256 is {actual}, not the digest it is named by; remove the file"
                ),
            });
        }
        Ok(Some(bytes))
    }

    /// Marks the kept manifest or config `digest` as used by this process
    /// until the pin is dropped, and refreshes its time of last use. `None`
    /// if it is not (or no longer) kept.
    pub fn pin_meta(&self, digest: &str) -> Result<Option<MetaPin>, ChunkCacheError> {
        let path = self.meta_path(digest)?;
        let file = match File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "opening the cached manifest or config")(e)),
        };
        flock(&file, &path, FlockOperation::LockShared)?;
        touch(&path);
        // Prune unlinks under its exclusive lock: once we hold ours, the
        // path names our file or nothing.
        let ours = file
            .metadata()
            .map_err(io_err(&path, "inspecting the cached manifest or config"))?;
        match fs::metadata(&path) {
            Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {
                Ok(Some(MetaPin { _file: file }))
            }
            _ => Ok(None),
        }
    }

    /// Records that `key` resolved to `manifest` now.
    pub fn put_ref(&self, key: &str, manifest: &str) -> Result<(), ChunkCacheError> {
        let record = RefRecord {
            version: REF_RECORD_VERSION,
            key: key.to_owned(),
            manifest: manifest.to_owned(),
            resolved_at: now_secs(),
        };
        let path = self.ref_path(key);
        let mut json =
            serde_json::to_vec_pretty(&record).map_err(|e| ChunkCacheError::BadRecord {
                path: path.clone(),
                why: e.to_string(),
            })?;
        json.push(b'\n');
        write_atomically(&path, &json)
    }

    /// The last recorded resolution of `key`; `None` if there is none. A
    /// record that cannot be used is an error naming the file and field.
    pub fn get_ref(&self, key: &str) -> Result<Option<RefRecord>, ChunkCacheError> {
        let path = self.ref_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "reading the reference record")(e)),
        };
        let bad = |why: String| ChunkCacheError::BadRecord {
            path: path.clone(),
            why,
        };
        let record: RefRecord = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not a reference record: {e}")))?;
        if record.version != REF_RECORD_VERSION {
            return Err(bad(format!(
                "version {} (this ocidisk reads version {REF_RECORD_VERSION})",
                record.version
            )));
        }
        if record.key != key {
            return Err(bad(format!("key {:?} is not {key:?}", record.key)));
        }
        if hex_of(&record.manifest).is_none() {
            return Err(bad(format!(
                "manifest {:?} is not sha256:<64 lowercase hex digits>",
                record.manifest
            )));
        }
        Ok(Some(record))
    }

    /// How many manifests and configs are kept, their bytes, and how many
    /// reference records (for `ocidisk cache list`).
    pub fn meta_summary(&self) -> Result<(usize, u64, usize), ChunkCacheError> {
        let mut count = 0;
        let mut bytes = 0;
        for path in list(&self.meta_dir())? {
            let is_meta = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| hex_of(&format!("sha256:{n}")).is_some());
            if let (true, Ok(m)) = (is_meta, fs::metadata(&path)) {
                count += 1;
                bytes += m.len();
            }
        }
        let refs = list(&self.refs_dir())?
            .iter()
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
            .count();
        Ok((count, bytes, refs))
    }

    /// Storage the kept manifests and configs take, bytes.
    pub fn meta_storage(&self) -> Result<u64, ChunkCacheError> {
        Ok(meta_bytes(&self.meta_files()?))
    }

    /// The kept manifests and configs, least recently used first.
    pub(super) fn meta_files(&self) -> Result<Vec<MetaFile>, ChunkCacheError> {
        let mut out = Vec::new();
        for path in list(&self.meta_dir())? {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let digest = format!("sha256:{name}");
            if hex_of(&digest).is_none() {
                // A temporary file of a writer, or not ours.
                continue;
            }
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path, "inspecting")(e)),
            };
            let used = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            out.push(MetaFile {
                path,
                digest,
                used,
                // At least its length: a file system may keep a small
                // file inline, taking no block of its own.
                allocated: (meta.blocks() * 512).max(meta.len()),
            });
        }
        out.sort_by(|a, b| (a.used, &a.digest).cmp(&(b.used, &b.digest)));
        Ok(out)
    }

    /// Removes those of `files` (from [`meta_files`](Self::meta_files))
    /// no server uses now: those unused for `older_than` seconds, then,
    /// least recently used first, more until `free` bytes of storage are
    /// freed (what `--max-size` still wants once the blobs it may remove
    /// are gone); then the reference records whose manifest is gone.
    pub(super) fn prune_meta(
        &self,
        files: Vec<MetaFile>,
        older_than: Option<u64>,
        free: u64,
        dry_run: bool,
    ) -> Result<MetaPruneReport, ChunkCacheError> {
        let mut report = MetaPruneReport::default();
        let now = now_secs();
        let mut free = free;
        for f in files {
            let old = older_than.is_some_and(|age| now.saturating_sub(f.used) >= age);
            if !old && free == 0 {
                continue;
            }
            let file = match File::open(&f.path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&f.path, "opening")(e)),
            };
            match flock(&file, &f.path, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(ChunkCacheError::InUse { .. }) => {
                    report.kept_in_use.push(f.digest);
                    continue;
                }
                Err(e) => return Err(e),
            }
            if !dry_run {
                remove(&f.path)?;
            }
            report.freed += f.allocated;
            free = free.saturating_sub(f.allocated);
            report.removed.push(f.digest);
        }
        for path in list(&self.refs_dir())? {
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            // A record that cannot be read cannot be followed either.
            let manifest = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<RefRecord>(&b).ok())
                .map(|r| r.manifest);
            let gone = match &manifest {
                Some(m) => {
                    report.removed.contains(m) || self.meta_path(m).map_or(true, |p| !p.exists())
                }
                None => true,
            };
            if gone {
                if !dry_run {
                    remove(&path)?;
                }
                report.removed_refs += 1;
            }
        }
        Ok(report)
    }
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, ChunkCacheError> {
    match fs::read_dir(dir) {
        Ok(listing) => listing
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io_err(dir, "listing the cache directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(dir, "listing the cache directory")(e)),
    }
}

fn remove(path: &Path) -> Result<(), ChunkCacheError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, "removing")(e)),
    }
}

/// Best effort: a file system that refuses the time update only makes
/// prune see an older last use.
fn touch(path: &Path) {
    if let Ok(f) = File::open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// `flock` through rustix, as the layer cache's lock takes it (no unsafe
/// block of our own); a lock another process holds is [`InUse`].
///
/// [`InUse`]: ChunkCacheError::InUse
fn flock(file: &File, path: &Path, op: FlockOperation) -> Result<(), ChunkCacheError> {
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(Errno::WOULDBLOCK) => {
                return Err(ChunkCacheError::InUse {
                    path: path.to_owned(),
                })
            }
            Err(errno) => return Err(io_err(path, "locking")(errno.into())),
        }
    }
}

/// Writes `bytes` to `path` through a synced temporary file renamed into
/// place, then syncs the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ChunkCacheError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir, "creating the cache directory"))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io_err(&tmp, "creating a temporary file"))?;
        file.write_all(bytes).map_err(io_err(&tmp, "writing"))?;
        file.sync_all().map_err(io_err(&tmp, "syncing"))?;
        fs::rename(&tmp, path).map_err(io_err(path, "renaming into place"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir, "syncing directory"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkcache::ChunkCacheSettings;

    fn digest_of(b: &[u8]) -> String {
        format!("sha256:{}", crate::cache::hex(&Sha256::digest(b)))
    }

    #[test]
    fn meta_round_trips_and_refuses_what_does_not_hash() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::new(dir.path(), ChunkCacheSettings::default());
        let body = br#"{"schemaVersion":2}"#;
        let d = digest_of(body);
        assert!(cache.get_meta(&d).unwrap().is_none());
        let e = cache.put_meta(&d, b"other").unwrap_err();
        assert!(matches!(e, ChunkCacheError::DigestMismatch { .. }), "{e}");
        cache.put_meta(&d, body).unwrap();
        cache.put_meta(&d, body).unwrap();
        assert_eq!(cache.get_meta(&d).unwrap().unwrap(), body);
        let leftovers: Vec<_> = list(&cache.meta_dir())
            .unwrap()
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let path = cache.meta_path(&d).unwrap();
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"{\"schemaVersion\":3}").unwrap();
        let e = cache.get_meta(&d).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("not the digest it is named by"), "{e}");
        let e = cache.meta_path("sha256:ABC").unwrap_err().to_string();
        assert!(e.contains("sha256:ABC"), "{e}");
    }

    #[test]
    fn bad_resolution_records_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::new(dir.path(), ChunkCacheSettings::default());
        let key = "h:5000/r:t ref=- platform=linux/amd64";
        let d = digest_of(b"m");
        assert!(cache.get_ref(key).unwrap().is_none());
        cache.put_ref(key, &d).unwrap();
        let rec = cache.get_ref(key).unwrap().unwrap();
        assert_eq!((rec.key.as_str(), rec.manifest.as_str()), (key, d.as_str()));
        assert!(rec.resolved_at > 0);

        let path = cache.ref_path(key);
        let bad = [
            (
                format!(r#"{{"version":2,"key":"{key}","manifest":"{d}","resolved_at":1}}"#),
                "version 2",
            ),
            (
                format!(r#"{{"version":1,"key":"x","manifest":"{d}","resolved_at":1}}"#),
                "key \"x\"",
            ),
            (
                format!(r#"{{"version":1,"key":"{key}","manifest":"md5:1","resolved_at":1}}"#),
                "manifest \"md5:1\"",
            ),
            ("{".to_owned(), "not a reference record"),
        ];
        for (json, says) in bad {
            fs::remove_file(&path).unwrap();
            fs::write(&path, json).unwrap();
            let e = cache.get_ref(key).unwrap_err().to_string();
            assert!(
                e.contains(&path.display().to_string()) && e.contains(says),
                "{e}"
            );
        }
    }
}
