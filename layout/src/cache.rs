//! A shared cache of decompressed zstd layers.
//!
//! A zstd layer is decompressed once into `<cache>/zstd/sha256/<hex>`, keyed
//! by the (compressed) layer digest, so that its bytes can be mapped into a
//! disk like an uncompressed blob. Many VMs start at once from the same
//! image, so an entry is created under an exclusive `flock` on
//! `<hex>.lock`: the first opener decompresses while the others wait, then
//! find the entry. The entry is written to a unique temporary name, checked
//! (size, layer digest of the input, Monogon chunk hashes), synced and only
//! then renamed into place, so no reader ever sees a half-written file, even
//! from a process that bypasses the lock. Entries are created read-only
//! (mode 0444) and only ever opened read-only.

use crate::monogon::{BadChunk, ChunkVerifier, Payload};
use crate::source::BlobFile;
use sha2::{Digest as _, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use thiserror::Error;

/// A cache that could not supply a decompressed layer.
#[derive(Debug, Error)]
pub enum CacheError {
    /// Neither `$XDG_CACHE_HOME` nor `$HOME` is set to an absolute path.
    #[error("no cache directory: set XDG_CACHE_HOME or HOME, or pass a cache directory")]
    NoCacheDir,
    /// A file system operation on the cache failed.
    #[error("cache {path}: {op}")]
    Io {
        /// The cache file or directory.
        path: PathBuf,
        /// What was being done with it.
        op: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The compressed layer is not a valid zstd stream.
    #[error("{layer} ({blob}): not a valid zstd stream")]
    Decompress {
        /// The layer, e.g. `layer 2`.
        layer: String,
        /// The compressed blob, by digest.
        blob: String,
        /// The zstd decoder's error.
        #[source]
        source: io::Error,
    },
    /// The first zstd frame does not say how large its content is, and
    /// nothing else does.
    #[error("{layer} ({blob}): the zstd frame header has no content size")]
    NoContentSize {
        /// The layer, e.g. `layer 2`.
        layer: String,
        /// The compressed blob, by digest.
        blob: String,
    },
    /// The decompressed size is not the expected one.
    #[error("{layer} ({blob}): decompresses to {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// The layer, e.g. `layer 2`.
        layer: String,
        /// The compressed blob, by digest.
        blob: String,
        /// The size the config or frame header gives.
        expected: u64,
        /// The size decompression gave (or `more`).
        actual: String,
    },
    /// The compressed bytes do not have the layer's digest.
    #[error("{layer} ({blob}): content has digest sha256:{actual}")]
    DigestMismatch {
        /// The layer, e.g. `layer 2`.
        layer: String,
        /// The compressed blob, by digest.
        blob: String,
        /// The hex SHA-256 of the compressed bytes.
        actual: String,
    },
    /// A decompressed chunk does not match its hash in the config.
    #[error("{layer} ({blob}): checking its chunks")]
    BadChunk {
        /// The layer, e.g. `layer 2`.
        layer: String,
        /// The compressed blob, by digest.
        blob: String,
        /// Which chunk, and where it lies.
        #[source]
        source: BadChunk,
    },
}

/// The largest first-frame header zstd defines (`ZSTD_FRAMEHEADERSIZE_MAX`).
const FRAME_HEADER_MAX: usize = 18;

/// A compressed layer to be decompressed into the cache.
pub struct ZstdLayer<'a> {
    /// How errors name the layer, e.g. `layer 1 ("system") sha256:…`.
    pub what: &'a str,
    /// The layer digest, `sha256:<64 hex>` (already validated).
    pub digest: &'a str,
    /// The compressed bytes.
    pub compressed: Compressed<'a>,
    /// The Monogon payload it holds, whose size and chunk hashes the
    /// decompressed bytes must match; `None` for other images, where the
    /// frame header gives the size.
    pub payload: Option<&'a Payload>,
}

/// Where compressed bytes are.
pub enum Compressed<'a> {
    /// A blob file of the image.
    File(&'a BlobFile),
    /// Bytes inline in the descriptor.
    Bytes(&'a [u8]),
}

impl Compressed<'_> {
    fn describe(&self) -> String {
        match self {
            Compressed::File(f) => f.path().display().to_string(),
            Compressed::Bytes(_) => "inline data".to_owned(),
        }
    }

    fn reader(&self) -> Box<dyn Read + '_> {
        match self {
            // A shared `&File` reads from the file's own position; nothing
            // else reads through this descriptor while it is decompressed.
            Compressed::File(f) => Box::new(ReadFromStart { file: f, pos: 0 }),
            Compressed::Bytes(b) => Box::new(*b),
        }
    }
}

/// Reads a shared file from offset 0 with `pread`, leaving its position alone.
/// A gated blob (a registry blob in the chunk cache) passes its gate first.
struct ReadFromStart<'a> {
    file: &'a BlobFile,
    pos: u64,
}

impl Read for ReadFromStart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt as _;
        let want = (buf.len() as u64).min(self.file.len().saturating_sub(self.pos));
        self.file.ensure(self.pos, want)?;
        let n = self.file.file().read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The cache directory: decompressed layers, created on demand.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache in `dir` (created when first needed).
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// The default cache: `$XDG_CACHE_HOME/ocidisk`, else
    /// `$HOME/.cache/ocidisk` (relative values are ignored, as XDG says).
    pub fn default_dir() -> Result<PathBuf, CacheError> {
        let abs = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
        if let Some(x) = abs(std::env::var_os("XDG_CACHE_HOME")) {
            return Ok(x.join("ocidisk"));
        }
        if let Some(h) = abs(std::env::var_os("HOME")) {
            return Ok(h.join(".cache").join("ocidisk"));
        }
        Err(CacheError::NoCacheDir)
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the decompressed bytes of the layer with this digest live.
    pub fn entry_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        self.dir.join("zstd").join(alg).join(hex)
    }

    /// The decompressed layer, opened read-only: decompressed and checked now
    /// unless an entry of the right size is already there.
    pub fn decompressed(&self, layer: &ZstdLayer<'_>) -> Result<Arc<BlobFile>, CacheError> {
        let blob = layer.compressed.describe();
        let expected = self.expected_size(layer, &blob)?;
        let path = self.entry_path(layer.digest);
        if let Some(f) = open_if_complete(&path, expected)? {
            return Ok(f);
        }
        let parent = path.parent().unwrap_or(&self.dir).to_owned();
        fs::create_dir_all(&parent).map_err(io_err(&parent, "creating directory"))?;
        let lock_path = path.with_extension("lock");
        let _lock = Lock::exclusive(&lock_path)?;
        // Another opener may have finished while we waited for the lock.
        if let Some(f) = open_if_complete(&path, expected)? {
            return Ok(f);
        }
        remove_stale_temps(&parent, &path);
        let tmp = TempFile::create(&parent, &path)?;
        self.fill(layer, &blob, expected, &tmp)?;
        tmp.persist(&path)?;
        sync_dir(&parent)?;
        open_if_complete(&path, expected)?.ok_or_else(|| CacheError::Io {
            path: path.clone(),
            op: "reopening the entry just written",
            source: io::Error::new(io::ErrorKind::NotFound, "entry vanished"),
        })
    }

    fn expected_size(&self, layer: &ZstdLayer<'_>, blob: &str) -> Result<u64, CacheError> {
        let mut header = [0u8; FRAME_HEADER_MAX];
        let mut r = layer.compressed.reader();
        let n = read_up_to(&mut r, &mut header).map_err(|source| CacheError::Decompress {
            layer: layer.what.to_owned(),
            blob: blob.to_owned(),
            source,
        })?;
        let frame = zstd::zstd_safe::get_frame_content_size(&header[..n]).map_err(|_| {
            CacheError::Decompress {
                layer: layer.what.to_owned(),
                blob: blob.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidData, "bad zstd frame header"),
            }
        })?;
        match (frame, layer.payload) {
            (Some(f), Some(p)) if f != p.size => Err(CacheError::SizeMismatch {
                layer: layer.what.to_owned(),
                blob: blob.to_owned(),
                expected: p.size,
                actual: format!("{f} (says the frame header)"),
            }),
            (_, Some(p)) => Ok(p.size),
            (Some(f), None) => Ok(f),
            (None, None) => Err(CacheError::NoContentSize {
                layer: layer.what.to_owned(),
                blob: blob.to_owned(),
            }),
        }
    }

    /// Decompresses into `tmp`, checking the input digest, the output size
    /// and the chunk hashes, then syncs it.
    fn fill(
        &self,
        layer: &ZstdLayer<'_>,
        blob: &str,
        expected: u64,
        tmp: &TempFile,
    ) -> Result<(), CacheError> {
        let layer_name = || layer.what.to_owned();
        let mut input = HashingReader {
            inner: layer.compressed.reader(),
            hasher: Sha256::new(),
        };
        let decompress_err = |source| CacheError::Decompress {
            layer: layer_name(),
            blob: blob.to_owned(),
            source,
        };
        let mut decoder = zstd::stream::read::Decoder::new(&mut input).map_err(decompress_err)?;
        let mut verifier = layer.payload.map(ChunkVerifier::new);
        let mut out = io::BufWriter::with_capacity(1 << 20, &tmp.file);
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = match decoder.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(decompress_err(e)),
            };
            total += n as u64;
            if total > expected {
                // Stop before a hostile stream fills the disk.
                return Err(CacheError::SizeMismatch {
                    layer: layer_name(),
                    blob: blob.to_owned(),
                    expected,
                    actual: format!("more than {expected}"),
                });
            }
            if let Some(v) = verifier.as_mut() {
                v.update(&buf[..n]).map_err(|source| CacheError::BadChunk {
                    layer: layer_name(),
                    blob: blob.to_owned(),
                    source,
                })?;
            }
            out.write_all(&buf[..n])
                .map_err(io_err(&tmp.path, "writing"))?;
        }
        drop(decoder);
        // Trailing bytes after the last frame are part of the digest too.
        io::copy(&mut input, &mut io::sink()).map_err(decompress_err)?;
        if total != expected {
            return Err(CacheError::SizeMismatch {
                layer: layer_name(),
                blob: blob.to_owned(),
                expected,
                actual: total.to_string(),
            });
        }
        if let Some(v) = verifier {
            v.finish().map_err(|source| CacheError::BadChunk {
                layer: layer_name(),
                blob: blob.to_owned(),
                source,
            })?;
        }
        let actual = hex(&input.hasher.finalize());
        if layer.digest.strip_prefix("sha256:") != Some(actual.as_str()) {
            return Err(CacheError::DigestMismatch {
                layer: layer_name(),
                blob: blob.to_owned(),
                actual,
            });
        }
        out.flush().map_err(io_err(&tmp.path, "writing"))?;
        drop(out);
        tmp.file.sync_all().map_err(io_err(&tmp.path, "syncing"))
    }
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn io_err<'p>(path: &'p Path, op: &'static str) -> impl FnOnce(io::Error) -> CacheError + 'p {
    move |source| CacheError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Opens the entry read-only if it exists as a regular file of `size` bytes.
fn open_if_complete(path: &Path, size: u64) -> Result<Option<Arc<BlobFile>>, CacheError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() == size => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, "inspecting the entry")(e)),
    }
    match BlobFile::open(path) {
        Ok(f) if f.len() == size => Ok(Some(Arc::new(f))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, "opening the entry")(e)),
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// An exclusive `flock`, released when dropped (the file closes).
struct Lock {
    _file: File,
}

impl Lock {
    fn exclusive(path: &Path) -> Result<Lock, CacheError> {
        // Read-only is enough for flock, so users who share a cache but
        // not its lock files' owner can still take the lock.
        let file = OpenOptions::new()
            .read(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_CREAT)
            .open(path)
            .map_err(io_err(path, "opening the lock file"))?;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(errno) => return Err(io_err(path, "locking")(errno.into())),
            }
        }
    }
}

/// Removes temporary files an opener that crashed left for this entry.
/// Called under the entry's lock, which every writer holds, so none of them
/// is still being written.
fn remove_stale_temps(dir: &Path, entry: &Path) {
    let Some(stem) = entry.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{stem}.");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            // Best effort: a leftover only costs space.
            let _ = fs::remove_file(e.path());
        }
    }
}

/// A uniquely named file next to the entry, removed unless persisted.
struct TempFile {
    file: File,
    path: PathBuf,
    persisted: bool,
}

impl TempFile {
    fn create(dir: &Path, entry: &Path) -> Result<TempFile, CacheError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let stem = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".{stem}.{}.{n}.tmp", std::process::id()));
            // Read-only mode: nothing may write the entry after it is
            // renamed into place. Our descriptor is writable nevertheless.
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        file,
                        path,
                        persisted: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&path, "creating a temporary file")(e)),
            }
        }
    }

    fn persist(mut self, to: &Path) -> Result<(), CacheError> {
        fs::rename(&self.path, to).map_err(io_err(to, "renaming into place"))?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "syncing directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_digest(data: &[u8]) -> String {
        format!("sha256:{}", hex(&Sha256::digest(data)))
    }

    fn payload(data: &[u8], chunk: u64) -> Payload {
        Payload {
            name: "system".into(),
            size: data.len() as u64,
            hash_chunk_size: chunk,
            chunk_hashes: data
                .chunks(chunk as usize)
                .map(|c| Sha256::digest(c).into())
                .collect(),
        }
    }

    #[test]
    fn decompresses_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let z = zstd::bulk::compress(&data, 3).unwrap();
        let digest = layer_digest(&z);
        let p = payload(&data, 4096);
        let layer = ZstdLayer {
            what: "layer",
            digest: &digest,
            compressed: Compressed::Bytes(&z),
            payload: Some(&p),
        };
        let f = cache.decompressed(&layer).unwrap();
        assert_eq!(fs::read(f.path()).unwrap(), data);
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let first = ino(f.path());
        let g = cache.decompressed(&layer).unwrap();
        assert_eq!(ino(g.path()), first);
        // Read-only, and no temporary files left behind.
        assert!(fs::metadata(f.path()).unwrap().permissions().readonly());
        let names: Vec<_> = fs::read_dir(f.path().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        // Without a payload the frame's content size is used.
        let layer = ZstdLayer {
            payload: None,
            ..layer
        };
        assert_eq!(cache.decompressed(&layer).unwrap().len(), data.len() as u64);
    }

    #[test]
    fn bad_inputs_leave_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let data = vec![5u8; 10_000];
        let z = zstd::bulk::compress(&data, 3).unwrap();
        let digest = layer_digest(&z);
        let good = payload(&data, 1000);

        // Wrong chunk hash.
        let mut bad = good.clone();
        bad.chunk_hashes[3] = [0; 32];
        let e = cache
            .decompressed(&ZstdLayer {
                what: "layer",
                digest: &digest,
                compressed: Compressed::Bytes(&z),
                payload: Some(&bad),
            })
            .unwrap_err();
        assert!(
            matches!(&e, CacheError::BadChunk { source, .. } if source.offset == 3000),
            "{e}"
        );
        // Size in the config differs from the frame header.
        let mut big = good.clone();
        big.size += 1;
        let e = cache
            .decompressed(&ZstdLayer {
                what: "layer",
                digest: &digest,
                compressed: Compressed::Bytes(&z),
                payload: Some(&big),
            })
            .unwrap_err();
        assert!(matches!(e, CacheError::SizeMismatch { .. }), "{e}");
        // Wrong digest of the compressed bytes.
        let other = layer_digest(b"x");
        let e = cache
            .decompressed(&ZstdLayer {
                what: "layer",
                digest: &other,
                compressed: Compressed::Bytes(&z),
                payload: Some(&good),
            })
            .unwrap_err();
        assert!(matches!(e, CacheError::DigestMismatch { .. }), "{e}");
        // Not zstd at all.
        let junk = b"this is not zstd at all, not even close".to_vec();
        let jd = layer_digest(&junk);
        let e = cache
            .decompressed(&ZstdLayer {
                what: "layer",
                digest: &jd,
                compressed: Compressed::Bytes(&junk),
                payload: None,
            })
            .unwrap_err();
        assert!(matches!(e, CacheError::Decompress { .. }), "{e}");
        for d in [&digest, &other, &jd] {
            assert!(!cache.entry_path(d).exists());
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("zstd/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
