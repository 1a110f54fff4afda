//! The overlay: opening, reading, writing, flushing.

use crate::error::OverlayError;
use crate::format::{
    self, BlockState, Geometry, RawHeader, SlotError, BLOCK_SIZE, SLOT_SIZE, VERSION,
    WORDS_PER_PAGE,
};
use crate::map::Map;
use crate::shadow::{self, Binding, Found, Shadow, ShadowStatus};
use crate::storage::{FileId, FileStorage, Storage};
use crate::stripes::Stripes;
use blockio::{BaseIdentity, IoCursor, IoCursorMut, PieceSink, ReadAt, ReadPiece};
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use uuid::Uuid;

/// What [`Overlay::create`] needs.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Bytes of the virtual disk: a positive multiple of 512.
    pub disk_size: u64,
    /// The base the overlay belongs to.
    pub base: BaseIdentity,
}

/// Where the bytes of a read came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadSources {
    /// Bytes read from the base.
    pub base: u64,
    /// Bytes the overlay answered: written data, or zeros the guest asked
    /// for.
    pub overlay: u64,
}

/// A run of the disk that the guest changed (see [`Overlay::changes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// Disk offset of the first byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// True if the run reads as zeros (write-zeroes or discard), false if
    /// it holds written data.
    pub zero: bool,
}

/// How [`Overlay::open`] treats the file.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Accept an overlay made for another base: its writes are kept over the
    /// new base and the header records the new identity (not with
    /// `read_only`, which writes nothing).
    pub rebase: bool,
    /// Every write is durable before it returns (the guest disabled its
    /// write cache); see [`Overlay::set_writethrough`].
    pub writethrough: bool,
    /// Open without write access; writes fail, nothing is written.
    pub read_only: bool,
}

/// An overlay's header: what it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version of the file.
    pub version: u32,
    /// Bytes of the virtual disk.
    pub disk_size: u64,
    /// Bytes per block (copy-up and map granularity).
    pub granularity: u32,
    /// Random id made at creation; the base derives the disk's GUIDs from it.
    pub disk_id: Uuid,
    /// The base the overlay belongs to.
    pub base: BaseIdentity,
    /// How many times the header was written (1 at creation, +1 per rebase).
    pub generation: u64,
    /// Blocks of the disk.
    pub blocks: u64,
    /// Pages of the on-disk map (each stored twice).
    pub map_pages: u64,
    /// Where data block 0 lives in the file.
    pub data_offset: u64,
    /// The file's length (the data area is sparse).
    pub file_len: u64,
}

impl Header {
    fn from_raw(raw: RawHeader) -> Header {
        let g = Geometry::new(raw.disk_size);
        Header {
            version: VERSION,
            disk_size: raw.disk_size,
            granularity: BLOCK_SIZE as u32,
            disk_id: raw.disk_id,
            base: raw.base,
            generation: raw.generation,
            blocks: g.blocks,
            map_pages: g.map_pages,
            data_offset: g.data_offset,
            file_len: g.file_len(),
        }
    }
}

/// How much of the disk an overlay holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Blocks of the disk.
    pub blocks: u64,
    /// Blocks written (data stored in the overlay).
    pub blocks_written: u64,
    /// Blocks zeroed or discarded (no data stored).
    pub blocks_zero: u64,
    /// The file's apparent length.
    pub file_len: u64,
    /// Bytes the host has allocated for the file.
    pub allocated_bytes: u64,
}

/// Per map page: the newest valid slot's sequence number, and which slot
/// the next flush overwrites (the other one, so the newest survives a torn
/// write).
#[derive(Clone, Copy)]
struct PageSlots {
    seq: u64,
    next: usize,
}

/// A per-VM copy-on-write overlay over a read-only base.
///
/// All I/O methods take `&self`: one thread per virtqueue reads and writes
/// in parallel. See `FORMAT.md` for the file and the durability argument.
pub struct Overlay {
    path: PathBuf,
    storage: Box<dyn Storage>,
    header: Header,
    geo: Geometry,
    map: Map,
    stripes: Stripes,
    /// Held across a whole flush: flushes run one at a time.
    slots: Mutex<Vec<PageSlots>>,
    writethrough: AtomicBool,
    read_only: bool,
    /// Set when `fdatasync` failed: the kernel may have dropped dirty data.
    poisoned: AtomicBool,
    /// The file opened a second time with `O_DIRECT`, once
    /// [`open_direct`](Overlay::open_direct) asked.
    direct: OnceLock<File>,
    /// A writer's shadow map, where `map`'s words live.
    shadow: Option<Shadow>,
    /// What the open found in the shadow directory, if it was given one.
    shadow_status: Option<ShadowStatus>,
}

static ZEROS: [u8; BLOCK_SIZE as usize] = [0; BLOCK_SIZE as usize];

fn io_err(path: &Path, what: impl Into<String>) -> impl FnOnce(io::Error) -> OverlayError + '_ {
    let what = what.into();
    move |source| OverlayError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

fn corrupt(path: &Path, what: String) -> OverlayError {
    OverlayError::Corrupt {
        path: path.to_owned(),
        what,
    }
}

fn describe(e: &SlotError) -> String {
    match e {
        SlotError::Empty => "never written".into(),
        SlotError::Magic => "wrong magic".into(),
        SlotError::Version(v) => format!("version {v}"),
        SlotError::Bad(why) => why.clone(),
    }
}

/// Takes an advisory lock on the file so two processes never write one
/// overlay (the lock dies with the process, so a killed backend leaves none).
fn lock_file(file: &File, path: &Path, exclusive: bool) -> Result<(), OverlayError> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    loop {
        // SAFETY: plain system call on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                return Err(OverlayError::Busy {
                    path: path.to_owned(),
                })
            }
            _ => return Err(io_err(path, "locking the file")(err)),
        }
    }
}

/// Reads and checks the header; returns it and the slot it came from.
fn load_header(storage: &dyn Storage, path: &Path) -> Result<(RawHeader, usize), OverlayError> {
    let len = storage
        .file_len()
        .map_err(io_err(path, "reading the file's length"))?;
    let mut head = vec![0u8; (2 * SLOT_SIZE).min(len) as usize];
    storage
        .read_at(0, &mut [IoSliceMut::new(&mut head)])
        .map_err(io_err(path, "reading the header"))?;
    let not_overlay = || OverlayError::NotAnOverlay {
        path: path.to_owned(),
        found: head[..head.len().min(8)].to_vec(),
    };
    if len < 2 * SLOT_SIZE {
        if head.len() >= 8 && head[..8] != format::HEADER_MAGIC {
            return Err(not_overlay());
        }
        return Err(OverlayError::Truncated {
            path: path.to_owned(),
            len,
            expected: 2 * SLOT_SIZE,
        });
    }
    let slots = [
        format::decode_header(&head[..SLOT_SIZE as usize]),
        format::decode_header(&head[SLOT_SIZE as usize..]),
    ];
    // One copy with our magic is enough to call the file ours: copy 0's
    // magic may be what a crash or a bad sector damaged.
    let ours =
        |s: &Result<RawHeader, SlotError>| !matches!(s, Err(SlotError::Magic | SlotError::Empty));
    if !slots.iter().any(ours) {
        return Err(not_overlay());
    }
    for s in &slots {
        if let Err(SlotError::Version(version)) = s {
            return Err(OverlayError::UnsupportedVersion {
                path: path.to_owned(),
                version: *version,
                supported: VERSION,
            });
        }
    }
    let best = match (&slots[0], &slots[1]) {
        (Ok(a), Ok(b)) if b.generation > a.generation => 1,
        (Ok(_), _) => 0,
        (Err(_), Ok(_)) => 1,
        (Err(a), Err(b)) => {
            return Err(corrupt(
                path,
                format!(
                    "header copy 0: {}; header copy 1: {}",
                    describe(a),
                    describe(b)
                ),
            ))
        }
    };
    let [a, b] = slots;
    let raw = if best == 0 { a } else { b };
    raw.map(|r| (r, best))
        .map_err(|e| corrupt(path, describe(&e)))
}

/// Reads and checks every map page; returns the words and each page's slots.
fn load_map(
    storage: &dyn Storage,
    path: &Path,
    geo: &Geometry,
) -> Result<(Vec<u64>, Vec<PageSlots>), OverlayError> {
    let mut words = Vec::with_capacity(geo.map_pages as usize * WORDS_PER_PAGE);
    let mut slots = Vec::with_capacity(geo.map_pages as usize);
    let mut buf = vec![0u8; 2 * SLOT_SIZE as usize];
    let mut scratch = [Vec::new(), Vec::new()];
    for page in 0..geo.map_pages {
        storage
            .read_at(geo.slot_offset(page, 0), &mut [IoSliceMut::new(&mut buf)])
            .map_err(io_err(path, format!("reading map page {page}")))?;
        let mut found = [Err(SlotError::Empty), Err(SlotError::Empty)];
        for (s, slot) in found.iter_mut().enumerate() {
            scratch[s].clear();
            let bytes = &buf[s * SLOT_SIZE as usize..(s + 1) * SLOT_SIZE as usize];
            *slot = format::decode_page(page, bytes, &mut scratch[s]);
        }
        let chosen = match (&found[0], &found[1]) {
            (Ok(a), Ok(b)) if a == b => {
                return Err(corrupt(
                    path,
                    format!("map page {page}: both copies have sequence number {a}"),
                ))
            }
            (Ok(a), Ok(b)) => usize::from(b > a),
            (Ok(_), Err(_)) => 0,
            (Err(_), Ok(_)) => 1,
            (Err(a), Err(b)) => {
                return Err(corrupt(
                    path,
                    format!(
                        "map page {page}: copy 0: {}; copy 1: {}",
                        describe(a),
                        describe(b)
                    ),
                ))
            }
        };
        // `chosen` is a valid slot.
        let seq = found[chosen].as_ref().copied().unwrap_or_default();
        let first_word = words.len();
        words.extend_from_slice(&scratch[chosen]);
        for (i, &w) in words[first_word..].iter().enumerate() {
            let first_block = (first_word + i) as u64 * 32;
            for j in 0..32u64 {
                let bits = (w >> (2 * j)) & 3;
                let block = first_block + j;
                if bits == 3 {
                    return Err(corrupt(
                        path,
                        format!("map page {page}: block {block} has the invalid state 3"),
                    ));
                }
                if bits != 0 && block >= geo.blocks {
                    return Err(corrupt(
                        path,
                        format!(
                            "map page {page}: block {block} is marked although the disk has {} blocks",
                            geo.blocks
                        ),
                    ));
                }
            }
        }
        slots.push(PageSlots {
            seq,
            next: 1 - chosen,
        });
    }
    Ok((words, slots))
}

/// Refuses a file shorter than its geometry.
fn check_len(storage: &dyn Storage, path: &Path, geo: &Geometry) -> Result<(), OverlayError> {
    let len = storage
        .file_len()
        .map_err(io_err(path, "reading the file's length"))?;
    if len < geo.file_len() {
        return Err(OverlayError::Truncated {
            path: path.to_owned(),
            len,
            expected: geo.file_len(),
        });
    }
    Ok(())
}

/// Writes a fresh overlay with header `raw` (both copies) and an empty map
/// (copy 0 of each page) to `storage`, and syncs it.
fn write_pristine(storage: &dyn Storage, path: &Path, raw: &RawHeader) -> Result<(), OverlayError> {
    let geo = Geometry::new(raw.disk_size);
    let header = format::encode_header(raw);
    let write = |offset: u64, bytes: &[u8]| storage.write_at(offset, &mut [IoSlice::new(bytes)]);
    let result = (|| {
        storage.set_len(geo.file_len())?;
        write(0, &header)?;
        write(SLOT_SIZE, &header)?;
        let mut slot = vec![0u8; SLOT_SIZE as usize];
        let empty = vec![0u64; WORDS_PER_PAGE];
        for page in 0..geo.map_pages {
            format::encode_page(page, 1, &empty, &mut slot);
            write(geo.slot_offset(page, 0), &slot)?;
        }
        storage.sync_data()
    })();
    result.map_err(io_err(path, "writing the new overlay"))
}

/// Opens `path` for reading (and writing if `write`) and locks it
/// (exclusively if `write`). A reset may rename a new file over the path
/// between our open and our lock: then the locked file is not the one the
/// path names, so open again.
fn open_locked(path: &Path, write: bool) -> Result<File, OverlayError> {
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

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename or link in `path`'s directory durable.
fn sync_dir(path: &Path) -> Result<(), OverlayError> {
    let dir = parent_dir(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(path, format!("syncing directory {}", dir.display())))
}

/// A file built next to its final path under the name
/// `.NAME.tmp-PID-NANOS`, removed on drop unless it was renamed into place.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// Creates the file and returns it open, after removing temporary files
    /// of `path` left by processes that died while creating or resetting it
    /// (a host crash or kill -9 would otherwise leave a full-size sparse file
    /// forever).
    fn new(path: &Path) -> Result<(TempFile, File), OverlayError> {
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
    fn forget(mut self) {
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
fn remove_stale_temps(dir: &Path, prefix: &str) {
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

impl Overlay {
    /// Creates an overlay file at `path` for a disk of `opts.disk_size`
    /// bytes over `opts.base`, and opens it. Writes the header and the map
    /// only (the data area is sparse). The file appears complete or not at
    /// all; an existing file is never overwritten.
    pub fn create(path: &Path, opts: &CreateOptions) -> Result<Overlay, OverlayError> {
        Self::create_with_shadow(path, opts, None)
    }

    /// [`create`](Self::create), then opened as
    /// [`open_with_shadow`](Self::open_with_shadow) opens it.
    pub fn create_with_shadow(
        path: &Path,
        opts: &CreateOptions,
        shadow_dir: Option<&Path>,
    ) -> Result<Overlay, OverlayError> {
        let exists = || OverlayError::AlreadyExists {
            path: path.to_owned(),
        };
        if path.symlink_metadata().is_ok() {
            return Err(exists());
        }
        let (tmp, file) = TempFile::new(path)?;
        Self::write_new(&FileStorage::new(file), path, opts)?;
        // Linking fails if `path` appeared meanwhile: never clobber.
        std::fs::hard_link(&tmp.path, path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                exists()
            } else {
                io_err(path, "linking the new file into place")(e)
            }
        })?;
        drop(tmp);
        sync_dir(path)?;
        Self::open_with_shadow(
            path,
            &opts.base,
            opts.disk_size,
            &OpenOptions::default(),
            shadow_dir,
        )
    }

    /// Writes a new overlay's header and map to `storage` and syncs it.
    /// `path` only names it in errors.
    pub fn write_new(
        storage: &dyn Storage,
        path: &Path,
        opts: &CreateOptions,
    ) -> Result<(), OverlayError> {
        let invalid = |reason: String| OverlayError::InvalidOptions {
            path: path.to_owned(),
            reason,
        };
        Geometry::check_disk_size(opts.disk_size).map_err(invalid)?;
        if opts.base.manifest_digest.len() > format::MAX_DIGEST_LEN {
            return Err(invalid(format!(
                "manifest digest is longer than {} bytes",
                format::MAX_DIGEST_LEN
            )));
        }
        let raw = RawHeader {
            generation: 1,
            disk_size: opts.disk_size,
            disk_id: Uuid::new_v4(),
            base: opts.base.clone(),
        };
        write_pristine(storage, path, &raw)
    }

    /// Opens the overlay at `path` for a base with identity `expected` of
    /// `disk_size` bytes. Refuses a file made for another disk size, or for
    /// another base unless `opts.rebase`. Writes nothing unless rebasing.
    ///
    /// The map lives in private memory: states set since the last flush are
    /// lost if the process dies. See
    /// [`open_with_shadow`](Self::open_with_shadow).
    pub fn open(
        path: &Path,
        expected: &BaseIdentity,
        disk_size: u64,
        opts: &OpenOptions,
    ) -> Result<Overlay, OverlayError> {
        Self::open_with_shadow(path, expected, disk_size, opts, None)
    }

    /// [`open`](Self::open), keeping the map in a *shadow map* file in
    /// `shadow_dir` (a tmpfs directory such as [`DEFAULT_SHADOW_DIR`]) so
    /// that every request completed before the process dies (kill -9, a
    /// panic) is there when the overlay is opened again with the same
    /// directory during the same boot, flushed or not; the next flush then
    /// makes it durable. `FORMAT.md` ("Surviving a process crash") has the
    /// details.
    ///
    /// A writer adopts a shadow map that matches the file exactly (same
    /// file, header generation and boot, valid states, the file's map last
    /// written by it), and otherwise makes a new one from the file's map;
    /// [`shadow_status`](Self::shadow_status) says which. Dropping the
    /// overlay when every state is flushed removes the shadow map. A
    /// read-only open uses a matching shadow map's states without writing
    /// it. `None` is [`open`](Self::open).
    ///
    /// [`DEFAULT_SHADOW_DIR`]: crate::DEFAULT_SHADOW_DIR
    pub fn open_with_shadow(
        path: &Path,
        expected: &BaseIdentity,
        disk_size: u64,
        opts: &OpenOptions,
        shadow_dir: Option<&Path>,
    ) -> Result<Overlay, OverlayError> {
        let file = open_locked(path, !opts.read_only)?;
        Self::open_on_with_shadow(
            Box::new(FileStorage::new(file)),
            path,
            expected,
            disk_size,
            opts,
            shadow_dir,
        )
    }

    /// [`open`](Self::open) on any storage; `path` only names it in errors.
    pub fn open_on(
        storage: Box<dyn Storage>,
        path: &Path,
        expected: &BaseIdentity,
        disk_size: u64,
        opts: &OpenOptions,
    ) -> Result<Overlay, OverlayError> {
        Self::open_on_with_shadow(storage, path, expected, disk_size, opts, None)
    }

    /// [`open_with_shadow`](Self::open_with_shadow) on any storage whose
    /// [`file_id`](Storage::file_id) says which file it is (the caller holds
    /// the lock a writer needs); `path` only names it in errors.
    pub fn open_on_with_shadow(
        storage: Box<dyn Storage>,
        path: &Path,
        expected: &BaseIdentity,
        disk_size: u64,
        opts: &OpenOptions,
        shadow_dir: Option<&Path>,
    ) -> Result<Overlay, OverlayError> {
        let (mut raw, slot) = load_header(&*storage, path)?;
        if raw.disk_size != disk_size {
            return Err(OverlayError::DiskSizeMismatch {
                path: path.to_owned(),
                overlay: raw.disk_size,
                expected: disk_size,
            });
        }
        let geo = Geometry::new(raw.disk_size);
        check_len(&*storage, path, &geo)?;
        let (words, slots) = load_map(&*storage, path, &geo)?;
        let rebase = raw.base != *expected;
        if rebase {
            if !opts.rebase {
                return Err(OverlayError::BaseMismatch {
                    path: path.to_owned(),
                    overlay: Box::new(raw.base),
                    expected: Box::new(expected.clone()),
                });
            }
            // Rebasing only in memory would leave a header that refuses
            // the next open: refuse now instead.
            if !opts.read_only && expected.manifest_digest.len() > format::MAX_DIGEST_LEN {
                return Err(OverlayError::InvalidOptions {
                    path: path.to_owned(),
                    reason: format!(
                        "cannot rebase: the manifest digest is longer than {} bytes",
                        format::MAX_DIGEST_LEN
                    ),
                });
            }
        }
        let (map, shadow, shadow_status) = match shadow_dir {
            None => (Map::from_words(words), None, None),
            Some(dir) => {
                let seqs: Vec<u64> = slots.iter().map(|s| s.seq).collect();
                let binding = bind(&*storage, path, &raw, &geo)?;
                let (map, shadow, status) =
                    map_from_shadow(dir, &binding, words, &seqs, opts.read_only, path)?;
                (map, shadow, Some(status))
            }
        };
        let mut overlay = Overlay {
            path: path.to_owned(),
            storage,
            header: Header::from_raw(raw.clone()),
            geo,
            map,
            stripes: Stripes::new(),
            slots: Mutex::new(slots),
            writethrough: AtomicBool::new(opts.writethrough),
            read_only: opts.read_only,
            poisoned: AtomicBool::new(false),
            direct: OnceLock::new(),
            shadow,
            shadow_status,
        };
        if rebase {
            raw.base = expected.clone();
            if !opts.read_only {
                overlay.write_rebased_header(&mut raw, slot)?;
            }
            overlay.header = Header::from_raw(raw);
        }
        Ok(overlay)
    }

    /// Records the new base identity in `raw`'s header (read from `slot`),
    /// with `generation + 1`, in the other slot.
    fn write_rebased_header(&self, raw: &mut RawHeader, slot: usize) -> Result<(), OverlayError> {
        // The shadow map is bound to the header's generation: first make the
        // states it holds beyond the file's map durable in the file, so a
        // crash before it learns the new generation (when it is refused)
        // loses nothing.
        if self.map.any_dirty() {
            self.flush()?;
        }
        raw.generation += 1;
        let bytes = format::encode_header(raw);
        // The other copy: a torn write leaves the current one intact.
        self.storage
            .write_at((1 - slot) as u64 * SLOT_SIZE, &mut [IoSlice::new(&bytes)])
            .and_then(|()| self.storage.sync_data())
            .map_err(io_err(&self.path, "writing the rebased header"))?;
        if let Some(shadow) = &self.shadow {
            shadow.set_generation(raw.generation);
        }
        Ok(())
    }

    /// What the open found in the shadow directory; `None` if it was given
    /// none.
    pub fn shadow_status(&self) -> Option<&ShadowStatus> {
        self.shadow_status.as_ref()
    }

    /// Reads an overlay's header without opening it for I/O and without
    /// writing; the backend reads the disk id before composing the base.
    pub fn read_header(path: &Path) -> Result<Header, OverlayError> {
        let file = File::open(path).map_err(io_err(path, "opening"))?;
        let (raw, _) = load_header(&FileStorage::new(file), path)?;
        Ok(Header::from_raw(raw))
    }

    /// Opens an overlay read-only for whatever base it records, without
    /// locking it (so it works while a backend serves it): for `overlay info`.
    pub fn inspect(path: &Path) -> Result<Overlay, OverlayError> {
        let file = File::open(path).map_err(io_err(path, "opening"))?;
        let storage = Box::new(FileStorage::new(file));
        let (raw, _) = load_header(&*storage, path)?;
        let opts = OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        };
        Self::open_on(storage, path, &raw.base, raw.disk_size, &opts)
    }

    /// Returns the overlay at `path` to the pristine base: every block reads
    /// from the base again and the data area's space is released. Keeps the
    /// disk id and base identity. A crash at any instant leaves either the
    /// old or the pristine disk: the pristine file is built and synced under
    /// a temporary name, then renamed over the old one (while holding the
    /// old file's lock, so no backend serves it meanwhile).
    ///
    /// Also removes the overlay's shadow map from [`DEFAULT_SHADOW_DIR`], if
    /// there is one; see [`reset_with_shadow`](Self::reset_with_shadow).
    ///
    /// [`DEFAULT_SHADOW_DIR`]: crate::DEFAULT_SHADOW_DIR
    pub fn reset(path: &Path) -> Result<(), OverlayError> {
        Self::reset_with_shadow(path, Some(Path::new(shadow::DEFAULT_SHADOW_DIR)))
    }

    /// [`reset`](Self::reset), removing the overlay's shadow map from
    /// `shadow_dir` (a backend killed before flushing leaves one, which
    /// must not bring old states back), or from nowhere if `None`.
    pub fn reset_with_shadow(path: &Path, shadow_dir: Option<&Path>) -> Result<(), OverlayError> {
        // Held until the rename is done: the lock keeps backends away.
        let old = FileStorage::new(open_locked(path, true)?);
        let (tmp, file) = TempFile::new(path)?;
        // The new file replaces the old one: keep its permission bits.
        let mode = old
            .file()
            .metadata()
            .map_err(io_err(path, "reading the file's status"))?
            .permissions();
        std::fs::set_permissions(&tmp.path, mode)
            .map_err(io_err(path, "copying the permissions"))?;
        Self::reset_into(&old, &FileStorage::new(file), path)?;
        if let Some(dir) = shadow_dir {
            // Before the rename: once the pristine file is in place, no
            // shadow map of the old one is left to adopt.
            let (raw, _) = load_header(&old, path)?;
            let id = FileId::of(old.file()).map_err(io_err(path, "reading the file's status"))?;
            shadow::remove(dir, raw.disk_id, &id).map_err(io_err(
                path,
                format!("removing its shadow map from {}", dir.display()),
            ))?;
        }
        std::fs::rename(&tmp.path, path)
            .map_err(io_err(path, "renaming the pristine file into place"))?;
        tmp.forget();
        let result = sync_dir(path);
        drop(old);
        result
    }

    /// Writes to `new` (empty) the pristine version of the overlay in `old`:
    /// the same header (disk id, base, generation), every block from the
    /// base, a sparse data area; syncs `new` and never writes `old`. `old`
    /// must be a valid overlay. [`reset`](Self::reset) then renames `new`
    /// over `old`; this is the part a test can crash.
    pub fn reset_into(
        old: &dyn Storage,
        new: &dyn Storage,
        path: &Path,
    ) -> Result<(), OverlayError> {
        let (raw, _) = load_header(old, path)?;
        let geo = Geometry::new(raw.disk_size);
        check_len(old, path, &geo)?;
        // Refuse a corrupt overlay as open would, rather than paper over it.
        load_map(old, path, &geo)?;
        write_pristine(new, path, &raw)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The overlay file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Switches write-through on (every write durable before it returns) or
    /// off. Writes completed before switching on are made durable by the
    /// next flush or write-through write. Each write-through request runs
    /// its own flush, one at a time under the flush mutex (no group commit).
    pub fn set_writethrough(&self, on: bool) {
        self.writethrough.store(on, Ordering::SeqCst);
    }

    /// Whether write-through is on.
    pub fn writethrough(&self) -> bool {
        self.writethrough.load(Ordering::SeqCst)
    }

    /// How many blocks are written or zero, and the file's host allocation.
    pub fn usage(&self) -> Result<Usage, OverlayError> {
        let (blocks_written, blocks_zero) = self.map.counts();
        let err = io_err(&self.path, "reading the file's size");
        let file_len = self.storage.file_len().map_err(err)?;
        let allocated_bytes = self
            .storage
            .allocated()
            .map_err(io_err(&self.path, "reading the file's allocation"))?;
        Ok(Usage {
            blocks: self.geo.blocks,
            blocks_written,
            blocks_zero,
            file_len,
            allocated_bytes,
        })
    }

    /// The ranges of the disk that no longer read from the base, in disk
    /// order: runs of written blocks and runs of zeroed blocks. For export
    /// and inspection; taken while writes go on, it may already be stale.
    pub fn changes(&self) -> Vec<Change> {
        let mut out = Vec::new();
        let mut block = 0;
        while block < self.geo.blocks {
            let (state, end) = self.map.run(block, self.geo.blocks);
            let kind = match state {
                BlockState::Base => None,
                BlockState::Written => Some(false),
                BlockState::Zero => Some(true),
            };
            if let Some(zero) = kind {
                let (offset, _) = self.block_bounds(block);
                let (_, stop) = self.block_bounds(end - 1);
                out.push(Change {
                    offset,
                    len: stop - offset,
                    zero,
                });
            }
            block = end;
        }
        out
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), OverlayError> {
        blockio::check_range(offset, len, self.geo.disk_size)
            .map(|_| ())
            .map_err(|_| OverlayError::OutOfRange {
                path: self.path.clone(),
                offset,
                len,
                disk_size: self.geo.disk_size,
            })
    }

    fn check_writable(&self) -> Result<(), OverlayError> {
        if self.read_only {
            return Err(OverlayError::ReadOnly {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Disk bytes `[start, end)` of block `b`.
    fn block_bounds(&self, b: u64) -> (u64, u64) {
        let start = b * BLOCK_SIZE;
        (start, (start + BLOCK_SIZE).min(self.geo.disk_size))
    }

    /// Fills `bufs` with the disk's bytes at `offset`: written blocks from
    /// the overlay, zero blocks with zeros, the rest from `base`. Says how
    /// many bytes came from where.
    pub fn read(
        &self,
        offset: u64,
        bufs: &mut [IoSliceMut<'_>],
        base: &dyn ReadAt,
    ) -> Result<ReadSources, OverlayError> {
        let len = blockio::total_len_mut(bufs);
        self.check_range(offset, len)?;
        let mut sources = ReadSources::default();
        if len == 0 {
            return Ok(sources);
        }
        let end = offset + len;
        let end_block = end.div_ceil(BLOCK_SIZE);
        let (state, run_end) = self.map.run(offset / BLOCK_SIZE, end_block);
        if run_end >= end_block {
            // One source for the whole request, the common case: hand the
            // buffers on as they are.
            self.read_run(state, offset, end, bufs, base, &mut sources)?;
            return Ok(sources);
        }
        let mut cursor = IoCursorMut::new(bufs);
        let mut b = offset / BLOCK_SIZE;
        while b < end_block {
            let (state, run_end) = self.map.run(b, end_block);
            let from = offset.max(b * BLOCK_SIZE);
            let to = end.min(run_end * BLOCK_SIZE);
            let mut piece = cursor.take((to - from) as usize);
            self.read_run(state, from, to, &mut piece, base, &mut sources)?;
            b = run_end;
        }
        Ok(sources)
    }

    /// Fills `bufs` with disk bytes `from..to`, all of blocks in `state`.
    fn read_run(
        &self,
        state: BlockState,
        from: u64,
        to: u64,
        bufs: &mut [IoSliceMut<'_>],
        base: &dyn ReadAt,
        sources: &mut ReadSources,
    ) -> Result<(), OverlayError> {
        match state {
            BlockState::Base => {
                sources.base += to - from;
                base.read_vectored_at(from, bufs)
                    .map_err(|source| OverlayError::Base {
                        path: self.path.clone(),
                        offset: from,
                        source,
                    })
            }
            BlockState::Written => {
                sources.overlay += to - from;
                self.storage
                    .read_at(self.geo.data_offset + from, bufs)
                    .map_err(io_err(
                        &self.path,
                        format!("reading disk range {from}..{to}"),
                    ))
            }
            BlockState::Zero => {
                sources.overlay += to - from;
                blockio::zero_fill(bufs);
                Ok(())
            }
        }
    }

    /// Writes `bufs` at `offset`. Data goes to the block's fixed place in the
    /// data area first, then the map says written. A block written partly
    /// for the first time is filled from `base` (or zeros) first.
    pub fn write(
        &self,
        offset: u64,
        bufs: &[IoSlice<'_>],
        base: &dyn ReadAt,
    ) -> Result<(), OverlayError> {
        self.check_writable()?;
        let len = blockio::total_len(bufs);
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let (first, end_block) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
        // Overwriting written blocks cannot race with a copy-up: no lock
        // (but see `write_partial` for a block that stopped being written).
        let guard =
            (!self.map.all_written(first, end_block)).then(|| self.stripes.lock(first, end_block));
        let locked = guard.is_some();
        // Blocks below `full_end` end inside the request (the disk's short
        // last block included).
        let full_end = if end == self.geo.disk_size {
            end_block
        } else {
            end / BLOCK_SIZE
        };
        let mut cursor = IoCursor::new(bufs);
        let mut b = first;
        while b < end_block {
            let (bstart, bend) = self.block_bounds(b);
            let (from, to) = (offset.max(bstart), end.min(bend));
            if from == bstart && to == bend {
                // A run of whole blocks: one pwritev straight from `bufs`.
                let run_to = (full_end * BLOCK_SIZE).min(self.geo.disk_size);
                let mut piece = cursor.take((run_to - from) as usize);
                self.write_data(from, &mut piece)?;
                self.map.set(b, full_end, BlockState::Written);
                b = full_end;
            } else {
                let mut piece = cursor.take((to - from) as usize);
                self.write_partial(b, from, &mut piece, base, locked)?;
                b += 1;
            }
        }
        self.after_write()
    }

    /// Writes `[from, from + len(piece))` inside block `b`, which the request
    /// covers only partly. `locked` says whether the caller holds the block's
    /// stripe lock; it does not when the block was written, but a concurrent
    /// discard may have made it zero since, and a copy-up must not run
    /// unlocked: then it locks and looks again.
    fn write_partial(
        &self,
        b: u64,
        from: u64,
        piece: &mut [IoSlice<'_>],
        base: &dyn ReadAt,
        locked: bool,
    ) -> Result<(), OverlayError> {
        let mut state = self.map.get(b);
        if state == BlockState::Written {
            return self.write_data(from, piece);
        }
        let _guard = (!locked).then(|| self.stripes.lock(b, b + 1));
        if !locked {
            state = self.map.get(b);
            if state == BlockState::Written {
                return self.write_data(from, piece);
            }
        }
        let (bstart, bend) = self.block_bounds(b);
        // Copy-up: the whole block reaches the data area before the map
        // says written, so the map never points at stale data.
        let mut block = [0u8; BLOCK_SIZE as usize];
        let blen = (bend - bstart) as usize;
        if state == BlockState::Base {
            base.read_exact_at(bstart, &mut block[..blen])
                .map_err(|source| OverlayError::Base {
                    path: self.path.clone(),
                    offset: bstart,
                    source,
                })?;
        }
        let mut at = (from - bstart) as usize;
        for p in piece.iter() {
            block[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.write_data(bstart, &mut [IoSlice::new(&block[..blen])])?;
        self.map.set(b, b + 1, BlockState::Written);
        Ok(())
    }

    fn write_data(&self, from: u64, piece: &mut [IoSlice<'_>]) -> Result<(), OverlayError> {
        let len = blockio::total_len(piece);
        self.storage
            .write_at(self.geo.data_offset + from, piece)
            .map_err(io_err(
                &self.path,
                format!("writing disk range {from}+{len}"),
            ))
    }

    fn after_write(&self) -> Result<(), OverlayError> {
        if self.writethrough() {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Makes `[offset, offset + len)` read as zeros. Whole blocks become zero
    /// blocks (no data, space released); the partial blocks at either end
    /// are written with zeros.
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        base: &dyn ReadAt,
    ) -> Result<(), OverlayError> {
        self.zero_range(offset, len, Some(base))
    }

    /// Discards `[offset, offset + len)`: whole blocks become zero blocks (no
    /// data, space released); partial blocks at either end keep their
    /// contents (a discard promises nothing about them).
    pub fn discard(&self, offset: u64, len: u64, base: &dyn ReadAt) -> Result<(), OverlayError> {
        let _ = base;
        self.zero_range(offset, len, None)
    }

    fn zero_range(
        &self,
        offset: u64,
        len: u64,
        partial_base: Option<&dyn ReadAt>,
    ) -> Result<(), OverlayError> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let (first, end_block) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
        let _guard = self.stripes.lock(first, end_block);
        // Whole blocks: from the first block that starts inside the range to
        // the last that ends inside it (the disk's short last block counts).
        let full_first = offset.div_ceil(BLOCK_SIZE);
        let full_end = if end == self.geo.disk_size {
            end_block
        } else {
            end / BLOCK_SIZE
        };
        if full_first < full_end {
            self.map.set(full_first, full_end, BlockState::Zero);
            let (at, n) = (
                self.geo.data_offset + full_first * BLOCK_SIZE,
                (full_end - full_first) * BLOCK_SIZE,
            );
            self.storage
                .punch_hole(at, n)
                .map_err(io_err(&self.path, format!("releasing file range {at}+{n}")))?;
        }
        if let Some(base) = partial_base {
            let mut partial = vec![first];
            if end_block - 1 != first {
                partial.push(end_block - 1);
            }
            for b in partial {
                if b >= full_first && b < full_end {
                    continue;
                }
                let (bstart, bend) = self.block_bounds(b);
                let (from, to) = (offset.max(bstart), end.min(bend));
                if self.map.get(b) != BlockState::Zero {
                    let zeros = &ZEROS[..(to - from) as usize];
                    self.write_partial(b, from, &mut [IoSlice::new(zeros)], base, true)?;
                }
            }
        }
        self.after_write()
    }

    /// Describes how to read `[offset, offset + len)` (see
    /// [`ReadAt::plan_read`]): written runs as pieces of the overlay file,
    /// zero runs as zeros, the rest as `base` plans it. `None` if the
    /// overlay's storage is not a host file. Says how many bytes come from
    /// where.
    ///
    /// A write that completes while the plan is carried out may or may not
    /// be seen, as with any read that runs beside a write.
    pub fn plan_read(
        &self,
        offset: u64,
        len: u64,
        base: &dyn ReadAt,
        sink: &mut PieceSink<'_>,
    ) -> Option<Result<ReadSources, OverlayError>> {
        let file = self.storage.file()?;
        Some(self.plan_runs(file, offset, len, base, sink))
    }

    fn plan_runs(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        base: &dyn ReadAt,
        sink: &mut PieceSink<'_>,
    ) -> Result<ReadSources, OverlayError> {
        self.check_range(offset, len)?;
        let mut sources = ReadSources::default();
        let end = offset + len;
        let end_block = end.div_ceil(BLOCK_SIZE);
        let mut b = offset / BLOCK_SIZE;
        while b < end_block {
            let (state, run_end) = self.map.run(b, end_block);
            let from = offset.max(b * BLOCK_SIZE);
            let to = end.min(run_end * BLOCK_SIZE);
            let n = to - from;
            let result = match state {
                BlockState::Base => {
                    sources.base += n;
                    blockio::plan_or_sync(base, from, n, sink).map_err(|source| {
                        OverlayError::Base {
                            path: self.path.clone(),
                            offset: from,
                            source,
                        }
                    })
                }
                BlockState::Written => {
                    sources.overlay += n;
                    sink(ReadPiece::File {
                        file,
                        direct: self.direct.get(),
                        offset: self.geo.data_offset + from,
                        len: n,
                    })
                    .map_err(io_err(
                        &self.path,
                        format!("reading disk range {from}..{to}"),
                    ))
                }
                BlockState::Zero => {
                    sources.overlay += n;
                    sink(ReadPiece::Zero(n)).map_err(io_err(
                        &self.path,
                        format!("reading disk range {from}..{to}"),
                    ))
                }
            };
            result?;
            b = run_end;
        }
        Ok(sources)
    }

    /// Where a write of `[offset, offset + len)` can go straight into the
    /// overlay file, for engines that issue it themselves: the file (and
    /// its `O_DIRECT` twin, if open) and the file offset. Only for ranges
    /// of whole blocks (the disk's short last block counts as whole) that
    /// are all written already; `None` for anything else, which goes
    /// through [`write`](Self::write).
    ///
    /// Why only overwrites: a first write changes a block's state, and
    /// [`write`](Self::write) orders that change against a copy-up of the
    /// same block (a partial write reading the base) with the block's
    /// stripe lock. A write in flight outside the lock could land between
    /// the copy-up's read of the base and its write, and the copy-up would
    /// then put base bytes back over a completed write. An overwrite of
    /// written blocks needs no copy-up and can race with nothing but other
    /// writes, whose bytes land whole or not at all.
    ///
    /// Once the data write has completed, [`commit_write`](Self::commit_write)
    /// marks the blocks written; until then reads keep seeing the old data,
    /// and a crash loses the write but never exposes a half-written block.
    pub fn write_target(&self, offset: u64, len: u64) -> Option<(&File, Option<&File>, u64)> {
        let end = offset.checked_add(len)?;
        let whole = offset.is_multiple_of(BLOCK_SIZE)
            && (end.is_multiple_of(BLOCK_SIZE) || end == self.geo.disk_size);
        if self.read_only
            || len == 0
            || !whole
            || end > self.geo.disk_size
            || self.poisoned.load(Ordering::SeqCst)
            || !self
                .map
                .all_written(offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE))
        {
            return None;
        }
        let file = self.storage.file()?;
        Some((file, self.direct.get(), self.geo.data_offset + offset))
    }

    /// Marks `[offset, offset + len)` written after its data reached the
    /// file at the place [`write_target`](Self::write_target) gave. Makes
    /// nothing durable: that is the next [`flush`](Self::flush)'s job.
    pub fn commit_write(&self, offset: u64, len: u64) -> Result<(), OverlayError> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if len > 0 {
            let end = offset + len;
            self.map.set(
                offset / BLOCK_SIZE,
                end.div_ceil(BLOCK_SIZE),
                BlockState::Written,
            );
        }
        Ok(())
    }

    /// Opens the overlay file a second time with `O_DIRECT` (through
    /// `/proc/self/fd`, so it is the same file), which
    /// [`plan_read`](Self::plan_read) and [`write_target`](Self::write_target)
    /// then offer, and says what alignment its transfers need. The error
    /// names the file: some file systems refuse `O_DIRECT`.
    pub fn open_direct(&self) -> Result<blockio::DirectAlign, OverlayError> {
        let Some(file) = self.storage.file() else {
            return Ok(blockio::DirectAlign::NONE);
        };
        if let Some(direct) = self.direct.get() {
            return Ok(blockio::DirectAlign::of(direct));
        }
        let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .write(!self.read_only)
            .custom_flags(libc::O_CLOEXEC | libc::O_DIRECT)
            .open(proc_path)
            .map_err(io_err(&self.path, "opening the file with O_DIRECT"))?;
        let align = blockio::DirectAlign::of(&direct);
        let _ = self.direct.set(direct);
        Ok(align)
    }

    /// Makes every write completed before the call durable.
    ///
    /// The dirty map pages are copied *before* the data is synced, so every
    /// map entry written afterwards describes data already on disk, even
    /// with writes running on other threads meanwhile. Each page goes to its
    /// older copy, then a second sync; a torn page leaves the newer copy.
    pub fn flush(&self) -> Result<(), OverlayError> {
        if self.read_only {
            return Ok(());
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(OverlayError::Poisoned {
                path: self.path.clone(),
            });
        }
        let dirty = self.map.take_dirty();
        let restore = |dirty: &[(usize, Vec<u64>)]| {
            for (page, _) in dirty {
                self.map.mark_dirty(*page);
            }
        };
        if let Err(e) = self.storage.sync_data() {
            self.poison();
            restore(&dirty);
            return Err(io_err(&self.path, "syncing data")(e));
        }
        if dirty.is_empty() {
            return Ok(());
        }
        if let Some(shadow) = &self.shadow {
            shadow.begin_flush(dirty.iter().map(|(page, _)| (*page, slots[*page].seq + 1)));
        }
        let mut buf = vec![0u8; SLOT_SIZE as usize];
        for (page, words) in &dirty {
            let s = slots[*page];
            format::encode_page(*page as u64, s.seq + 1, words, &mut buf);
            let at = self.geo.slot_offset(*page as u64, s.next);
            if let Err(e) = self.storage.write_at(at, &mut [IoSlice::new(&buf)]) {
                restore(&dirty);
                return Err(io_err(&self.path, format!("writing map page {page}"))(e));
            }
        }
        if let Err(e) = self.storage.sync_data() {
            self.poison();
            restore(&dirty);
            return Err(io_err(&self.path, "syncing the map")(e));
        }
        for (page, _) in &dirty {
            let s = &mut slots[*page];
            s.seq += 1;
            s.next = 1 - s.next;
        }
        if let Some(shadow) = &self.shadow {
            shadow.end_flush();
        }
        Ok(())
    }
}

impl Overlay {
    /// A sync failed: the kernel may have dropped data whose states are set,
    /// so only the file's last flushed map can be trusted. Refuses further
    /// flushes, and tells the shadow map so that no later open adopts it.
    fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
        if let Some(shadow) = &self.shadow {
            shadow.poison();
        }
    }
}

impl Drop for Overlay {
    /// A clean close removes the shadow map: once every state is in the
    /// file's map (no page dirty, no flush left half done), it holds nothing
    /// the file lacks. Otherwise it stays for the next open to adopt.
    fn drop(&mut self) {
        let Some(shadow) = &self.shadow else {
            return;
        };
        if !self.poisoned.load(Ordering::SeqCst) && !self.map.any_dirty() && shadow.flush_ended() {
            if let Err(e) = shadow.remove() {
                tracing::warn!(
                    shadow = %shadow.path().display(),
                    "cannot remove the shadow map: {e}"
                );
            }
        }
    }
}

/// What a shadow map of the overlay in `storage` must match.
fn bind(
    storage: &dyn Storage,
    path: &Path,
    raw: &RawHeader,
    geo: &Geometry,
) -> Result<Binding, OverlayError> {
    let file = storage
        .file_id()
        .map_err(io_err(path, "reading the file's status"))?
        .ok_or_else(|| OverlayError::InvalidOptions {
            path: path.to_owned(),
            reason: "a shadow map needs the overlay in a host file".into(),
        })?;
    let boot_id = shadow::boot_id().map_err(|why| OverlayError::Io {
        path: path.to_owned(),
        what: "binding the shadow map to this boot".into(),
        source: io::Error::other(why),
    })?;
    Ok(Binding {
        disk_id: raw.disk_id,
        file,
        generation: raw.generation,
        pages: geo.map_pages,
        blocks: geo.blocks,
        boot_id,
    })
}

/// The map, from the shadow map in `dir` if it matches, else from the
/// file's `words` (and, for a writer, a new shadow map holding them).
fn map_from_shadow(
    dir: &Path,
    binding: &Binding,
    words: Vec<u64>,
    seqs: &[u64],
    read_only: bool,
    path: &Path,
) -> Result<(Map, Option<Shadow>, ShadowStatus), OverlayError> {
    let changed = |a: &[u64], b: &[u64]| {
        a.chunks(WORDS_PER_PAGE)
            .zip(b.chunks(WORDS_PER_PAGE))
            .filter(|(x, y)| x != y)
            .count() as u64
    };
    let (map, shadow, status) = if read_only {
        let (found, spath, why) = shadow::read(dir, binding, seqs);
        let status = match (&found, why) {
            (_, Some(reason)) => ShadowStatus::Rejected {
                path: spath,
                reason,
            },
            (Some(adopted), None) => ShadowStatus::Adopted {
                path: spath,
                changed_pages: changed(adopted, &words),
            },
            (None, None) => ShadowStatus::Fresh { path: spath },
        };
        (Map::from_words(found.unwrap_or(words)), None, status)
    } else {
        let (shadow, found) =
            Shadow::open(dir, binding, &words, seqs).map_err(|(what, source)| {
                OverlayError::Io {
                    path: path.to_owned(),
                    what,
                    source,
                }
            })?;
        let (mapping, first, len) = shadow.map_words();
        let map = Map::from_mapping(mapping, first, len);
        let spath = shadow.path().to_owned();
        let status = match found {
            Found::Nothing => ShadowStatus::Fresh { path: spath },
            Found::Adopted => ShadowStatus::Adopted {
                path: spath,
                // Pages the file's map lacks states of: the next flush
                // writes them. The others are in the file's page cache
                // already, and its first sync makes them durable.
                changed_pages: map.mark_differing(&words),
            },
            Found::Rejected(reason) => ShadowStatus::Rejected {
                path: spath,
                reason,
            },
        };
        (map, Some(shadow), status)
    };
    match &status {
        ShadowStatus::Rejected { reason, .. } => {
            tracing::warn!(overlay = %path.display(), "{reason}; not used")
        }
        ShadowStatus::Adopted {
            path: spath,
            changed_pages,
        } if *changed_pages > 0 => tracing::info!(
            overlay = %path.display(),
            shadow = %spath.display(),
            changed_pages,
            "took the unflushed states of a process that died from its shadow map"
        ),
        _ => {}
    }
    Ok((map, shadow, status))
}
