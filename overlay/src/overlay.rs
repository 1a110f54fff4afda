//! The overlay: its state, and creating, opening and resetting it.

mod load;
mod requests;

use crate::error::OverlayError;
use crate::format::{self, BlockState, Geometry, RawHeader, BLOCK_SIZE, SLOT_SIZE};
use crate::map::Map;
use crate::shadow::{self, Shadow, ShadowStatus};
use crate::storage::{FileId, FileStorage, Storage};
use crate::stripes::Stripes;
use blockio::{BaseIdentity, IoBuf};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use uuid::Uuid;

use crate::error::io_err;
use crate::files::{open_locked, sync_dir, TempFile};
use crate::header::{Change, Header, Usage};
use crate::options::{CreateOptions, OpenOptions};
use load::{bind, check_len, load_header, load_map, map_from_shadow, write_pristine};

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
            .write_at((1 - slot) as u64 * SLOT_SIZE, &mut [IoBuf::new(&bytes)])
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
