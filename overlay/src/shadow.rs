//! The shadow map: the in-memory map kept in a file on tmpfs.
//!
//! A writer keeps its map words in a file mapped `MAP_SHARED`, so every
//! state change is already in the kernel (with no system call) when it is
//! made: it survives a crash of the process, not of the host. A header binds
//! the file to one overlay file, one header generation and one boot of the
//! host; anything that does not match is never used. `FORMAT.md` ("Surviving
//! a process crash") has the layout and the argument.

use crate::format::WORDS_PER_PAGE;
use crate::storage::FileId;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use uuid::Uuid;

/// Where `ocidisk serve` keeps shadow maps unless told otherwise.
pub const DEFAULT_SHADOW_DIR: &str = "/dev/shm";

/// Where the kernel says which boot this is.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

const MAGIC: [u8; 8] = *b"OCIDSHDW";
const VERSION: u32 = 1;
/// Bytes of the header; the words start right after, page-aligned.
const HEADER_LEN: usize = 4096;
/// Header fields (byte offsets; all integers in the host's byte order).
const F_VERSION: usize = 8;
const F_FLAGS: usize = 12;
const F_DISK_ID: usize = 16;
const F_DEV: usize = 32;
const F_INO: usize = 40;
const F_BORN: usize = 48;
const F_GENERATION: usize = 56;
const F_WORDS: usize = 64;
const F_PAGES: usize = 72;
const F_BOOT_ID: usize = 80;
const F_FLUSHING: usize = 96;
const FIELDS_END: usize = 104;
/// The flush marker of a shadow map whose writer saw a sync fail.
const POISONED: u64 = 2;

/// What opening an overlay with a shadow directory found there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShadowStatus {
    /// No shadow map was there (the last writer closed cleanly, or none ever
    /// ran in this boot): the file's map is the map. A writer made a new
    /// shadow map from it.
    Fresh {
        /// The shadow map file.
        path: PathBuf,
    },
    /// A shadow map matching this overlay, header generation and boot was
    /// there: its states are the map. `changed_pages` map pages held states
    /// the file's map lacks (its last writer died before flushing them); a
    /// writer's next flush writes them to the file.
    Adopted {
        /// The shadow map file.
        path: PathBuf,
        /// Map pages whose states differ from the file's map.
        changed_pages: u64,
    },
    /// A shadow map was there but did not match (another boot, file or
    /// generation, a wrong size, invalid states, a file's map written
    /// without it...): it was not used, and a writer replaced it.
    Rejected {
        /// The shadow map file.
        path: PathBuf,
        /// Why, naming the file.
        reason: String,
    },
}

/// What a shadow map must match: this overlay, file, header generation,
/// geometry and boot.
pub(crate) struct Binding {
    pub disk_id: Uuid,
    pub file: FileId,
    pub generation: u64,
    pub pages: u64,
    pub blocks: u64,
    pub boot_id: [u8; 16],
}

impl Binding {
    fn words(&self) -> usize {
        self.pages as usize * WORDS_PER_PAGE
    }

    /// The shadow map file's exact length: header, words, one sequence
    /// number per map page.
    fn file_len(&self) -> usize {
        HEADER_LEN + (self.words() + self.pages as usize) * 8
    }

    /// The header with `magic` (zeros while the file is being built).
    fn header(&self, magic: [u8; 8]) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[..8].copy_from_slice(&magic);
        h[F_VERSION..F_VERSION + 4].copy_from_slice(&VERSION.to_ne_bytes());
        h[F_DISK_ID..F_DISK_ID + 16].copy_from_slice(self.disk_id.as_bytes());
        for (at, v) in [
            (F_DEV, self.file.dev),
            (F_INO, self.file.ino),
            (F_BORN, self.file.born),
            (F_GENERATION, self.generation),
            (F_WORDS, self.words() as u64),
            (F_PAGES, self.pages),
        ] {
            h[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        }
        h[F_BOOT_ID..F_BOOT_ID + 16].copy_from_slice(&self.boot_id);
        h
    }
}

/// This boot's id.
pub(crate) fn boot_id() -> Result<[u8; 16], String> {
    let text = std::fs::read_to_string(BOOT_ID_PATH)
        .map_err(|e| format!("reading the boot id from {BOOT_ID_PATH}: {e}"))?;
    Uuid::parse_str(text.trim())
        .map(|u| *u.as_bytes())
        .map_err(|e| format!("reading the boot id from {BOOT_ID_PATH}: {e}"))
}

/// The shadow map's path for an overlay in `dir`.
pub(crate) fn shadow_path(dir: &Path, disk_id: Uuid, file: &FileId) -> PathBuf {
    dir.join(format!(
        "ocidisk-overlay-{disk_id}-{}-{}.map",
        file.dev, file.ino
    ))
}

/// Removes the shadow map of an overlay, if there is one.
pub(crate) fn remove(dir: &Path, disk_id: Uuid, file: &FileId) -> io::Result<()> {
    match std::fs::remove_file(shadow_path(dir, disk_id, file)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A file mapped shared into memory; unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, accessed through atomics
// (and, before it is shared, by copying the header out).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(file: &File, len: usize, writable: bool) -> io::Result<Mapping> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new mapping of `len` bytes of a descriptor we own; the
        // kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave 0"))?;
        Ok(Mapping { ptr, len })
    }

    /// The 64-bit words `[first, first + n)` of the file.
    pub fn words(&self, first: usize, n: usize) -> &[AtomicU64] {
        assert!(
            (first + n) * 8 <= self.len,
            "shadow map access past its end"
        );
        // SAFETY: in bounds (checked), 8-aligned (the mapping is
        // page-aligned), and the mapping lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>().add(first), n) }
    }

    fn field(&self, at: usize) -> &AtomicU64 {
        &self.words(at / 8, 1)[0]
    }

    /// A copy of the header bytes.
    fn header(&self) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        // SAFETY: the mapping is at least a header long (its length was
        // checked), and nothing writes it meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), h.as_mut_ptr(), HEADER_LEN) };
        h
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped; nothing borrows it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// What a writer found in the shadow directory.
pub(crate) enum Found {
    Nothing,
    Adopted,
    Rejected(String),
}

/// A writer's shadow map, live.
pub(crate) struct Shadow {
    path: PathBuf,
    mapping: Arc<Mapping>,
    words: usize,
    pages: usize,
}

fn u64_at(h: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(h[at..at + 8].try_into().unwrap_or_default())
}

/// Checks a shadow map file before mapping it: a regular file of ours,
/// writable by nobody else, of exactly the right length.
fn check_file(file: &File, b: &Binding) -> Result<(), String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    // SAFETY: no arguments, no failure.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!("owned by uid {}, not by us ({me})", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    if meta.len() != b.file_len() as u64 {
        return Err(format!(
            "{} bytes long, a shadow map of this overlay has {} (truncated or of another size)",
            meta.len(),
            b.file_len()
        ));
    }
    Ok(())
}

/// Checks a mapped shadow map against `b` and the file's map page sequence
/// numbers `file_seqs`.
fn validate(m: &Mapping, b: &Binding, file_seqs: &[u64]) -> Result<(), String> {
    let h = m.header();
    if h[..8] != MAGIC {
        return Err("no shadow map magic (not a shadow map, or its making was interrupted)".into());
    }
    let version = u32::from_ne_bytes(h[F_VERSION..F_VERSION + 4].try_into().unwrap_or_default());
    if version != VERSION {
        return Err(format!("version {version}; this ocidisk reads {VERSION}"));
    }
    let flags = u32::from_ne_bytes(h[F_FLAGS..F_FLAGS + 4].try_into().unwrap_or_default());
    if flags != 0 {
        return Err(format!("unknown flags {flags:#x}"));
    }
    if h[F_BOOT_ID..F_BOOT_ID + 16] != b.boot_id {
        return Err(format!(
            "made during another boot of the host (boot id {}, this boot is {})",
            Uuid::from_slice(&h[F_BOOT_ID..F_BOOT_ID + 16]).unwrap_or_default(),
            Uuid::from_bytes(b.boot_id)
        ));
    }
    if h[F_DISK_ID..F_DISK_ID + 16] != *b.disk_id.as_bytes() {
        return Err(format!(
            "made for another overlay (disk id {})",
            Uuid::from_slice(&h[F_DISK_ID..F_DISK_ID + 16]).unwrap_or_default()
        ));
    }
    let (dev, ino, born) = (u64_at(&h, F_DEV), u64_at(&h, F_INO), u64_at(&h, F_BORN));
    if (dev, ino, born) != (b.file.dev, b.file.ino, b.file.born) {
        return Err(format!(
            "made for another file (device {dev}, inode {ino}, born {born}; the overlay is \
             device {}, inode {}, born {})",
            b.file.dev, b.file.ino, b.file.born
        ));
    }
    let generation = u64_at(&h, F_GENERATION);
    if generation != b.generation {
        return Err(format!(
            "made for header generation {generation}, the overlay's is {} (rebased since)",
            b.generation
        ));
    }
    let (words, pages) = (u64_at(&h, F_WORDS), u64_at(&h, F_PAGES));
    if (words, pages) != (b.words() as u64, b.pages) {
        return Err(format!(
            "describes {pages} map pages ({words} words), the overlay has {}",
            b.pages
        ));
    }
    if h[FIELDS_END..].iter().any(|&x| x != 0) {
        return Err("nonzero reserved header bytes".into());
    }
    let flushing = u64_at(&h, F_FLUSHING);
    if flushing == POISONED {
        return Err(
            "its writer saw a sync of the overlay fail (the kernel may have dropped data)".into(),
        );
    }
    if flushing > 1 {
        return Err(format!("invalid flush marker {flushing}"));
    }
    // The file's map must be the one this shadow map last wrote: a page
    // flushed by someone else (a writer without the shadow map) means the
    // shadow map's states are older than the file's.
    let seqs = m.words(HEADER_LEN / 8 + b.words(), b.pages as usize);
    for (page, (known, &file)) in seqs.iter().zip(file_seqs).enumerate() {
        let known = known.load(SeqCst);
        let in_flush = flushing == 1 && file.checked_add(1) == Some(known);
        if known != file && !in_flush {
            return Err(format!(
                "map page {page} of the file has sequence number {file}, the shadow map last \
                 wrote {known}: the file's map was written without it"
            ));
        }
    }
    let words = m.words(HEADER_LEN / 8, b.words());
    check_states(words.iter().map(|w| w.load(SeqCst)), b.blocks)
}

/// Refuses the state `11` and any state but `00` at or past block `blocks`.
pub(crate) fn check_states(words: impl Iterator<Item = u64>, blocks: u64) -> Result<(), String> {
    const LOW: u64 = 0x5555_5555_5555_5555;
    for (i, w) in words.enumerate() {
        let first = i as u64 * 32;
        let threes = w & (w >> 1) & LOW;
        if threes != 0 {
            let block = first + u64::from(threes.trailing_zeros() / 2);
            return Err(format!("block {block} has the invalid state 3"));
        }
        if first + 32 > blocks {
            let valid = blocks.saturating_sub(first);
            let beyond = if valid == 0 { w } else { w >> (2 * valid) };
            if beyond != 0 {
                let block = first + valid + u64::from(beyond.trailing_zeros() / 2);
                return Err(format!(
                    "block {block} is marked although the disk has {blocks} blocks"
                ));
            }
        }
    }
    Ok(())
}

fn open_flags() -> i32 {
    libc::O_NOFOLLOW | libc::O_CLOEXEC
}

/// Maps the shadow map at `path` and checks it; `Ok(None)` if there is
/// none.
fn try_map(
    path: &Path,
    b: &Binding,
    file_seqs: &[u64],
    writable: bool,
) -> Result<Option<(File, Mapping)>, String> {
    let file = match File::options()
        .read(true)
        .write(writable)
        .custom_flags(open_flags())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    check_file(&file, b)?;
    let mapping =
        Mapping::new(&file, b.file_len(), writable).map_err(|e| format!("cannot map it: {e}"))?;
    validate(&mapping, b, file_seqs)?;
    Ok(Some((file, mapping)))
}

fn rejected(path: &Path, why: String) -> String {
    format!("shadow map {}: {why}", path.display())
}

/// Reads the shadow map in `dir` for a read-only open: never writes it.
/// Returns its words if it matches.
pub(crate) fn read(
    dir: &Path,
    b: &Binding,
    file_seqs: &[u64],
) -> (Option<Vec<u64>>, PathBuf, Option<String>) {
    let path = shadow_path(dir, b.disk_id, &b.file);
    match try_map(&path, b, file_seqs, false) {
        Ok(Some((_, m))) => {
            let words = m.words(HEADER_LEN / 8, b.words());
            let words = words.iter().map(|w| w.load(SeqCst)).collect();
            (Some(words), path, None)
        }
        Ok(None) => (None, path, None),
        Err(why) => {
            let why = rejected(&path, why);
            (None, path, Some(why))
        }
    }
}

impl Shadow {
    /// For a writer holding the overlay's exclusive lock: adopts the shadow
    /// map in `dir` if it matches `b` and the file's map (`file_words`, and
    /// `file_seqs`, each page's newest sequence number), or else replaces it
    /// with one made from the file's map. The error is the system call that
    /// failed making one.
    pub fn open(
        dir: &Path,
        b: &Binding,
        file_words: &[u64],
        file_seqs: &[u64],
    ) -> Result<(Shadow, Found), (String, io::Error)> {
        let path = shadow_path(dir, b.disk_id, &b.file);
        let found = match try_map(&path, b, file_seqs, true) {
            Ok(Some((file, mapping))) => {
                // Its pages were all written when it was made; make sure no
                // write through the mapping can fault on a full tmpfs.
                reserve(&file, b.file_len())
                    .map_err(|e| (format!("reserving shadow map {}", path.display()), e))?;
                let shadow = Shadow {
                    path,
                    mapping: Arc::new(mapping),
                    words: b.words(),
                    pages: b.pages as usize,
                };
                // The file's map is what it is: know its sequence numbers,
                // then say no flush is under way.
                for (known, &seq) in shadow.seqs().iter().zip(file_seqs) {
                    known.store(seq, SeqCst);
                }
                shadow.mapping.field(F_FLUSHING).store(0, SeqCst);
                return Ok((shadow, Found::Adopted));
            }
            Ok(None) => Found::Nothing,
            Err(why) => Found::Rejected(rejected(&path, why)),
        };
        let shadow = Self::make(path, b, file_words, file_seqs)?;
        Ok((shadow, found))
    }

    /// Makes a new shadow map holding the file's map. The magic comes last:
    /// a process killed meanwhile leaves a file that is never adopted.
    fn make(
        path: PathBuf,
        b: &Binding,
        file_words: &[u64],
        file_seqs: &[u64],
    ) -> Result<Shadow, (String, io::Error)> {
        let fail = |what: &str, path: &Path| {
            let what = format!("{what} shadow map {}", path.display());
            move |e| (what, e)
        };
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(fail("removing the old", &path)(e))
            }
            _ => {}
        }
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(open_flags())
            .open(&path)
            .map_err(fail("creating the", &path))?;
        let built = (|| {
            // Written, not just sized: every page is allocated now, so a
            // full tmpfs fails here rather than with SIGBUS later.
            file.write_all_at(&b.header([0; 8]), 0)?;
            let mut at = HEADER_LEN as u64;
            let mut buf = Vec::with_capacity(1 << 20);
            for chunk in file_words.chunks(1 << 17).chain(std::iter::once(file_seqs)) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|w| w.to_ne_bytes()));
                file.write_all_at(&buf, at)?;
                at += buf.len() as u64;
            }
            file.write_all_at(&MAGIC, 0)?;
            warn_if_not_tmpfs(&file, &path);
            Mapping::new(&file, b.file_len(), true)
        })();
        match built {
            Ok(mapping) => Ok(Shadow {
                path,
                mapping: Arc::new(mapping),
                words: b.words(),
                pages: b.pages as usize,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(fail("writing the", &path)(e))
            }
        }
    }

    /// The shadow map file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mapping and where its map words are, for [`Map`](crate::map::Map).
    pub fn map_words(&self) -> (Arc<Mapping>, usize, usize) {
        (self.mapping.clone(), HEADER_LEN / 8, self.words)
    }

    fn seqs(&self) -> &[AtomicU64] {
        self.mapping.words(HEADER_LEN / 8 + self.words, self.pages)
    }

    /// A flush is about to write `pages` (page, new sequence number) to the
    /// file's map. Marks the flush first: until [`end_flush`](Self::end_flush),
    /// a page of the file may hold the old or the new number.
    pub fn begin_flush(&self, pages: impl Iterator<Item = (usize, u64)>) {
        self.mapping.field(F_FLUSHING).store(1, SeqCst);
        let seqs = self.seqs();
        for (page, seq) in pages {
            seqs[page].store(seq, SeqCst);
        }
    }

    /// The flush wrote and synced every page it began with.
    pub fn end_flush(&self) {
        self.mapping.field(F_FLUSHING).store(0, SeqCst);
    }

    /// True unless a flush began and did not end.
    pub fn flush_ended(&self) -> bool {
        self.mapping.field(F_FLUSHING).load(SeqCst) == 0
    }

    /// A sync of the overlay failed: never adopt this shadow map.
    pub fn poison(&self) {
        self.mapping.field(F_FLUSHING).store(POISONED, SeqCst);
    }

    /// The overlay's header now has `generation` (a rebase).
    pub fn set_generation(&self, generation: u64) {
        self.mapping.field(F_GENERATION).store(generation, SeqCst);
    }

    /// Removes the file (a clean close: the file's map holds every state).
    pub fn remove(&self) -> io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// Allocates the whole file, so writes through the mapping never fault on a
/// full file system.
fn reserve(file: &File, len: usize) -> io::Result<()> {
    use rustix::fs::FallocateFlags;
    use rustix::io::Errno;
    match rustix::fs::fallocate(file, FallocateFlags::empty(), 0, len as u64) {
        Ok(()) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// A shadow map on a disk file system still works (a host crash leaves one
/// of an old boot, which is refused), but its pages are written back to the
/// disk now and then: say so.
const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;

fn warn_if_not_tmpfs(file: &File, path: &Path) {
    // SAFETY: an all-zero `statfs` is a valid value of the plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fstatfs` on a descriptor we own, into `st`.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } == 0
        && st.f_type != libc::TMPFS_MAGIC
        && st.f_type != RAMFS_MAGIC
    {
        tracing::warn!(
            shadow = %path.display(),
            "the shadow map is not on tmpfs: its updates will be written back to a disk"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_checked() {
        assert!(check_states([0u64, 0x5555].into_iter(), 64).is_ok());
        let e = check_states([0u64, 0b11 << 6].into_iter(), 64).unwrap_err();
        assert!(e.contains("block 35 "), "{e}");
        let e = check_states([0b10 << 8].into_iter(), 4).unwrap_err();
        assert!(e.contains("block 4 "), "{e}");
        assert!(check_states([0b10 << 6, 0].into_iter(), 4).is_ok());
        let e = check_states([0, 1].into_iter(), 32).unwrap_err();
        assert!(e.contains("block 32 "), "{e}");
    }
}
