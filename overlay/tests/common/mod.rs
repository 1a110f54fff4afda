// `&Vec<u8>` is a sized `ReadAt`, which `&dyn ReadAt` needs.
#![allow(clippy::ptr_arg)]
//! Shared by the overlay's tests: a storage that forgets what was not
//! synced, a small deterministic random source, and test fixtures.
#![allow(dead_code)]

use blockio::{IoBuf, IoBufMut};
use overlay::storage::{FileId, Storage};
use std::io;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Seeded randomness for test data (fastrand's generator): reproducible
/// from a seed, so a failing case replays.
pub struct Rng(fastrand::Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(fastrand::Rng::with_seed(seed))
    }
    pub fn next(&mut self) -> u64 {
        self.0.u64(..)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.0.u64(..n)
        }
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.0.fill(&mut v);
        v
    }
}

/// A new overlay file of `blocks` blocks over a base named `name`, in a
/// directory of its own (removed when the returned guard drops).
pub fn fresh_overlay(blocks: u64, name: &str) -> (tempfile::TempDir, overlay::Overlay) {
    let dir = tempfile::tempdir().unwrap();
    let ov = overlay::Overlay::create(
        &dir.path().join("ov"),
        &overlay::CreateOptions {
            disk_size: blocks * BS,
            base: identity(name),
        },
    )
    .unwrap();
    (dir, ov)
}

pub fn identity(name: &str) -> blockio::BaseIdentity {
    blockio::BaseIdentity {
        manifest_digest: format!("sha256:{name}"),
        layout_hash: [name.len() as u8; 32],
    }
}

/// Splits `data` into up to four buffers at random points, so requests
/// exercise the scatter-list cursors.
pub fn split<'a>(data: &'a [u8], rng: &mut Rng) -> Vec<IoBuf<'a>> {
    let mut cuts: Vec<usize> = (0..rng.below(4))
        .map(|_| rng.below(data.len() as u64 + 1) as usize)
        .collect();
    cuts.push(0);
    cuts.push(data.len());
    cuts.sort();
    cuts.windows(2)
        .map(|w| IoBuf::new(&data[w[0]..w[1]]))
        .collect()
}

/// Reads the whole disk through `ov`.
pub fn read_all(ov: &overlay::Overlay, base: &Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    let mut out = vec![0u8; base.len()];
    let len = out.len();
    let cut = rng.below(len as u64) as usize;
    let (a, b) = out.split_at_mut(cut);
    ov.read(0, &mut [IoBufMut::new(a), IoBufMut::new(b)], base)
        .expect("reading the whole disk");
    assert_eq!(out.len(), len);
    out
}

#[derive(Clone)]
enum Op {
    Write(u64, Vec<u8>),
    Punch(u64, u64),
    SetLen(u64),
}

struct Inner {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Op>,
}

/// A file in memory that keeps, on a simulated crash, what was synced plus
/// a random subset of later writes, some of them torn at sector boundaries.
/// After `die_after` mutating calls (writes, punches, syncs) every call
/// fails: the crash happens at that instant.
///
/// It says it is the file with inode `id` (for shadow maps); the storages a
/// crash returns are the same file.
pub struct MemStorage {
    inner: Mutex<Inner>,
    die_after: AtomicI64,
    id: u64,
    on_death: Mutex<Option<DeathHook>>,
}

/// Runs at the instant the storage dies (see [`MemStorage::on_death`]).
pub type DeathHook = Box<dyn FnOnce() + Send>;

/// Inode numbers of new `MemStorage`s.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn apply(buf: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(off, data) => {
            let end = *off as usize + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*off as usize..end].copy_from_slice(data);
        }
        Op::Punch(off, len) => {
            let end = ((off + len) as usize).min(buf.len());
            if (*off as usize) < end {
                buf[*off as usize..end].fill(0);
            }
        }
        Op::SetLen(len) => buf.resize(*len as usize, 0),
    }
}

fn dead() -> io::Error {
    io::Error::other("simulated crash")
}

impl MemStorage {
    pub fn new() -> Arc<MemStorage> {
        Self::from_bytes(Vec::new(), NEXT_ID.fetch_add(1, Ordering::SeqCst))
    }

    fn from_bytes(bytes: Vec<u8>, id: u64) -> Arc<MemStorage> {
        Arc::new(MemStorage {
            inner: Mutex::new(Inner {
                durable: bytes.clone(),
                current: bytes,
                pending: Vec::new(),
            }),
            die_after: AtomicI64::new(i64::MAX),
            id,
            on_death: Mutex::new(None),
        })
    }

    /// The file after the process using it died now, the host running on:
    /// every completed operation is there (in the page cache), synced or
    /// not, and stays unsynced.
    pub fn process_crash(&self) -> Arc<MemStorage> {
        let inner = self.inner.lock().unwrap();
        let mut durable = inner.durable.clone();
        for op in &inner.pending {
            apply(&mut durable, op);
        }
        let pending = inner.pending.iter().map(Op::clone).collect();
        Arc::new(MemStorage {
            inner: Mutex::new(Inner {
                durable: inner.durable.clone(),
                current: durable,
                pending,
            }),
            die_after: AtomicI64::new(i64::MAX),
            id: self.id,
            on_death: Mutex::new(None),
        })
    }

    /// The same bytes, as another file (another inode).
    pub fn copy_as_another_file(&self) -> Arc<MemStorage> {
        let bytes = self.snapshot();
        let copy = Self::new();
        copy.replace(bytes);
        copy
    }

    /// Crash after `n` more mutating calls.
    pub fn die_after(&self, n: i64) {
        self.die_after.store(n, Ordering::SeqCst);
    }

    /// Runs `hook` when the storage dies, before the failing call returns:
    /// a process crash simulated by a dying storage can save there what the
    /// process left (its shadow map), since the overlay carries on after
    /// the failure where a killed process would not.
    pub fn on_death(&self, hook: DeathHook) {
        *self.on_death.lock().unwrap() = Some(hook);
    }

    fn tick(&self) -> io::Result<()> {
        if self.die_after.fetch_sub(1, Ordering::SeqCst) <= 0 {
            self.die_after.store(0, Ordering::SeqCst);
            if let Some(hook) = self.on_death.lock().unwrap().take() {
                hook();
            }
            return Err(dead());
        }
        Ok(())
    }

    fn alive(&self) -> io::Result<()> {
        if self.die_after.load(Ordering::SeqCst) <= 0 {
            return Err(dead());
        }
        Ok(())
    }

    /// The file as the disk holds it after a crash now: synced bytes plus a
    /// random subset of unsynced operations, applied in order, writes
    /// possibly torn into sectors.
    pub fn crash(&self, rng: &mut Rng) -> Arc<MemStorage> {
        let inner = self.inner.lock().unwrap();
        let mut bytes = inner.durable.clone();
        for op in &inner.pending {
            match (op, rng.below(3)) {
                (_, 0) => {}
                (Op::Write(off, data), 1) => {
                    // Torn: each 512-byte piece independently.
                    let mut at = 0usize;
                    while at < data.len() {
                        let n = (512 - ((*off as usize + at) % 512)).min(data.len() - at);
                        if rng.below(2) == 0 {
                            apply(
                                &mut bytes,
                                &Op::Write(*off + at as u64, data[at..at + n].to_vec()),
                            );
                        }
                        at += n;
                    }
                }
                (op, _) => apply(&mut bytes, op),
            }
        }
        Self::from_bytes(bytes, self.id)
    }

    /// The file after the harshest crash now: exactly what was synced,
    /// every later write, punch and resize lost.
    pub fn crash_losing_unsynced(&self) -> Arc<MemStorage> {
        Self::from_bytes(self.inner.lock().unwrap().durable.clone(), self.id)
    }

    /// A crash in one of two modes: `harsh` drops every unsynced operation
    /// ([`crash_losing_unsynced`](Self::crash_losing_unsynced)), otherwise a
    /// random subset survives ([`crash`](Self::crash)).
    pub fn crash_with(&self, harsh: bool, rng: &mut Rng) -> Arc<MemStorage> {
        if harsh {
            self.crash_losing_unsynced()
        } else {
            self.crash(rng)
        }
    }

    /// The current bytes (what a read sees).
    pub fn snapshot(&self) -> Vec<u8> {
        self.inner.lock().unwrap().current.clone()
    }

    /// Replaces the bytes, durably (for corrupting a file in tests).
    pub fn replace(&self, bytes: Vec<u8>) {
        let mut inner = self.inner.lock().unwrap();
        inner.durable = bytes.clone();
        inner.current = bytes;
        inner.pending.clear();
    }

    fn push(&self, op: Op) -> io::Result<()> {
        self.tick()?;
        let mut inner = self.inner.lock().unwrap();
        apply(&mut inner.current, &op);
        inner.pending.push(op);
        Ok(())
    }
}

impl Storage for MemStorage {
    fn file_len(&self) -> io::Result<u64> {
        self.alive()?;
        Ok(self.inner.lock().unwrap().current.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.push(Op::SetLen(len))
    }
    fn read_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()> {
        self.alive()?;
        let inner = self.inner.lock().unwrap();
        let mut at = offset as usize;
        for b in bufs.iter_mut() {
            let end = at + b.len();
            if end > inner.current.len() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"));
            }
            b.copy_from(&inner.current[at..end]);
            at = end;
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, bufs: &mut [IoBuf<'_>]) -> io::Result<()> {
        let data: Vec<u8> = bufs.iter().flat_map(|b| b.to_vec()).collect();
        self.push(Op::Write(offset, data))
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.push(Op::Punch(offset, len))
    }
    fn sync_data(&self) -> io::Result<()> {
        self.tick()?;
        let mut inner = self.inner.lock().unwrap();
        let inner = &mut *inner;
        for op in inner.pending.drain(..) {
            apply(&mut inner.durable, &op);
        }
        Ok(())
    }
    fn allocated(&self) -> io::Result<u64> {
        Ok(0)
    }
    fn file_id(&self) -> io::Result<Option<FileId>> {
        Ok(Some(FileId {
            dev: 0,
            ino: self.id,
            born: 0,
        }))
    }
}

/// The disk as a model sees it: what a write, zero or discard does.
pub struct Model {
    pub disk: Vec<u8>,
}

pub const BS: u64 = 4096;

impl Model {
    pub fn write(&mut self, off: u64, data: &[u8]) {
        self.disk[off as usize..off as usize + data.len()].copy_from_slice(data);
    }
    /// The whole blocks of `[off, off + len)` (the disk's short last block
    /// counts when the range reaches the end).
    pub fn full_blocks(&self, off: u64, len: u64) -> (u64, u64) {
        let end = off + len;
        let size = self.disk.len() as u64;
        let first = (off.div_ceil(BS) * BS).min(end);
        let last = if end == size { end } else { end / BS * BS };
        (first, last.max(first))
    }
    pub fn write_zeroes(&mut self, off: u64, len: u64) {
        self.disk[off as usize..(off + len) as usize].fill(0);
    }
    pub fn discard(&mut self, off: u64, len: u64) -> (u64, u64) {
        let (a, b) = self.full_blocks(off, len);
        self.disk[a as usize..b as usize].fill(0);
        (a, b)
    }
}

/// What the disk may read as after a crash: `disk`, except that bytes in a
/// range of `since` may hold the value that range gives them instead.
pub struct Expect {
    /// The disk as the crash must keep it (at the last flush, for a host
    /// crash; after every completed request, for a process crash).
    pub disk: Vec<u8>,
    /// Ranges given new values since (including by the request in flight).
    pub since: Vec<(u64, Vec<u8>)>,
}

impl Expect {
    /// Checks `actual`, naming the case as `what` if a byte is wrong.
    pub fn check(&self, actual: &[u8], what: &str) {
        let mut bad = Vec::new();
        for (c, chunk) in actual.chunks(4096).enumerate() {
            let at = c * 4096;
            // Most of a big disk is unchanged: skip equal chunks quickly.
            if chunk == &self.disk[at..at + chunk.len()] {
                continue;
            }
            for (j, &a) in chunk.iter().enumerate() {
                let i = (at + j) as u64;
                if a == self.disk[i as usize] {
                    continue;
                }
                let ok = self.since.iter().any(|(off, data)| {
                    i >= *off && i < off + data.len() as u64 && data[(i - off) as usize] == a
                });
                if !ok {
                    bad.push(i);
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{what}: {} bytes hold values the disk may not hold, first at {:?}",
            bad.len(),
            &bad[..bad.len().min(8)]
        );
    }
}

/// Storage holding a new overlay of `size` bytes for the base identity
/// `name` (synced).
pub fn new_storage(size: u64, name: &str) -> Arc<MemStorage> {
    let storage = MemStorage::new();
    let create = overlay::CreateOptions {
        disk_size: size,
        base: identity(name),
    };
    overlay::Overlay::write_new(&*storage, std::path::Path::new("mem.overlay"), &create).unwrap();
    storage
}
