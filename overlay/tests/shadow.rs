//! The shadow map with real files and real processes.
//!
//! A child process (this test binary, re-run with `OVERLAY_SHADOW_CHILD`
//! set) serves a fixed script of requests through an overlay with a shadow
//! map and is killed with SIGKILL at a chosen storage operation, before or
//! after it runs, or after the whole script. It logs each request that
//! returned (page-cache writes survive the kill). The parent then reopens
//! the overlay with the same shadow directory: every completed request must
//! be there, the one in flight may or may not; the next flush must put all
//! of it in the file's map.
//!
//! The rest: shadow maps that do not match are never used and never panic;
//! reset and rebase; clean closes; read-only opens.

// Test code: a failed unwrap is a failed test, with its line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the test failing"
)]

use blockio::{IoBuf, IoBufMut};
use overlay::storage::{FileId, FileStorage, Storage};
use overlay::{CreateOptions, OpenOptions, Overlay, ShadowStatus};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const BS: u64 = 4096;
/// Two map pages.
const BLOCKS: u64 = 16128 + 64;
const SIZE: u64 = BLOCKS * BS;
const P: u64 = 16128;
const CHILD_ENV: &str = "OVERLAY_SHADOW_CHILD";

/// Seeded randomness (fastrand's generator), reproducible from a seed.
struct Rng(fastrand::Rng);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(fastrand::Rng::with_seed(seed))
    }
    fn bytes(&mut self, n: u64) -> Vec<u8> {
        let mut v = vec![0u8; n as usize];
        self.0.fill(&mut v);
        v
    }
}

/// The base: a pattern, computed rather than stored.
struct Base;

fn base_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b1) >> 13) as u8
}

impl blockio::ReadAt for Base {
    fn size(&self) -> u64 {
        SIZE
    }
    fn read_vectored_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()> {
        let mut at = offset;
        for b in bufs.iter_mut() {
            let bytes: Vec<u8> = (at..at + b.len() as u64).map(base_byte).collect();
            at += b.copy_from(&bytes) as u64;
        }
        Ok(())
    }
}

fn identity(name: &str) -> blockio::BaseIdentity {
    blockio::BaseIdentity {
        manifest_digest: format!("sha256:{name}"),
        layout_hash: [7; 32],
    }
}

#[derive(Clone)]
enum Op {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    Discard(u64, u64),
    Flush,
}

/// The child's requests: writes whole and partial (copy-ups), over two map
/// pages, write-zeroes and discards, overwrites, two flushes.
fn script() -> Vec<Op> {
    let mut rng = Rng::new(99);
    vec![
        Op::Write(2 * BS, rng.bytes(3 * BS)),
        Op::Write(8 * BS + 100, rng.bytes(2 * BS + 50)),
        Op::Zero(4 * BS + 100, 5 * BS - 93),
        Op::Discard((P + 2) * BS - 300, 3 * BS + 305),
        Op::Write((P - 1) * BS, rng.bytes(2 * BS)),
        Op::Flush,
        Op::Write(3 * BS + 10, rng.bytes(100)),
        Op::Discard(8 * BS, 2 * BS),
        Op::Zero(20 * BS, 2 * BS),
        Op::Write((P + 12) * BS + 5, rng.bytes(300)),
        Op::Flush,
        Op::Write(30 * BS, rng.bytes(BS)),
        Op::Zero(40 * BS + 7, 9),
    ]
}

/// The disk as the script leaves it: blocks that differ from the base.
#[derive(Clone, Default)]
struct Model {
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl Model {
    fn byte(&self, i: u64) -> u8 {
        match self.blocks.get(&(i / BS)) {
            Some(b) => b[(i % BS) as usize],
            None => base_byte(i),
        }
    }
    fn set(&mut self, i: u64, v: u8) {
        let block = self
            .blocks
            .entry(i / BS)
            .or_insert_with(|| (i / BS * BS..(i / BS + 1) * BS).map(base_byte).collect());
        block[(i % BS) as usize] = v;
    }
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Write(off, data) => {
                for (j, &v) in data.iter().enumerate() {
                    self.set(off + j as u64, v);
                }
            }
            Op::Zero(off, len) => (*off..off + len).for_each(|i| self.set(i, 0)),
            Op::Discard(off, len) => {
                let end = off + len;
                let first = off.div_ceil(BS) * BS;
                let last = if end == SIZE { end } else { end / BS * BS };
                (first..last.max(first)).for_each(|i| self.set(i, 0));
            }
            Op::Flush => {}
        }
    }
}

/// The byte ranges the script touches, a block wider on each side.
fn checked_ranges() -> Vec<(u64, u64)> {
    let mut out = vec![(0, BS), (SIZE - BS, SIZE)];
    for op in script() {
        let (off, len) = match op {
            Op::Write(off, data) => (off, data.len() as u64),
            Op::Zero(off, len) | Op::Discard(off, len) => (off, len),
            Op::Flush => continue,
        };
        out.push((
            (off / BS).saturating_sub(1) * BS,
            ((off + len).div_ceil(BS) + 1).min(BLOCKS) * BS,
        ));
    }
    out
}

fn read_range(ov: &Overlay, (from, to): (u64, u64)) -> Vec<u8> {
    let mut buf = vec![0u8; (to - from) as usize];
    ov.read(from, &mut [IoBufMut::new(&mut buf)], &Base)
        .unwrap();
    buf
}

/// Every checked byte holds its value in one of `models`.
fn check(ov: &Overlay, models: &[&Model], what: &str) {
    for range in checked_ranges() {
        let got = read_range(ov, range);
        for (j, &v) in got.iter().enumerate() {
            let i = range.0 + j as u64;
            assert!(
                models.iter().any(|m| m.byte(i) == v),
                "{what}: byte {i} (block {}) is {v}, expected {:?}",
                i / BS,
                models.iter().map(|m| m.byte(i)).collect::<Vec<_>>()
            );
        }
    }
}

/// A storage that kills its process with SIGKILL at its `die_at`-th
/// mutating operation, before or after running it.
struct Killing {
    inner: FileStorage,
    calls: AtomicU64,
    die_at: u64,
    after: bool,
}

impl Killing {
    fn step<T>(&self, op: impl FnOnce() -> T) -> T {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n == self.die_at && !self.after {
            kill_self();
        }
        let r = op();
        if n == self.die_at && self.after {
            kill_self();
        }
        r
    }
}

fn kill_self() -> ! {
    // SAFETY: signals our own process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL returned");
}

impl Storage for Killing {
    fn file_len(&self) -> io::Result<u64> {
        self.inner.file_len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.step(|| self.inner.set_len(len))
    }
    fn read_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()> {
        self.inner.read_at(offset, bufs)
    }
    fn write_at(&self, offset: u64, bufs: &mut [IoBuf<'_>]) -> io::Result<()> {
        self.step(|| self.inner.write_at(offset, bufs))
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.step(|| self.inner.punch_hole(offset, len))
    }
    fn sync_data(&self) -> io::Result<()> {
        self.step(|| self.inner.sync_data())
    }
    fn allocated(&self) -> io::Result<u64> {
        self.inner.allocated()
    }
    fn file_id(&self) -> io::Result<Option<FileId>> {
        FileId::of(self.inner.file()).map(Some)
    }
}

/// The child: runs the script through an overlay whose storage kills the
/// process at operation `die_at`, logging each request that returned; if
/// it gets through, it kills itself at the end.
#[test]
fn shadow_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // Only runs as a child of the tests below.
    };
    let parts: Vec<&str> = spec.splitn(5, '|').collect();
    let [die_at, when, path, shm, log] = parts[..] else {
        panic!("bad spec {spec}");
    };
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: plain system call on a descriptor we own.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
    let storage = Killing {
        inner: FileStorage::new(file),
        calls: AtomicU64::new(0),
        die_at: die_at.parse().unwrap(),
        after: when == "after",
    };
    let ov = Overlay::open_on_with_shadow(
        Box::new(storage),
        Path::new(path),
        &identity("a"),
        SIZE,
        &OpenOptions::default(),
        Some(Path::new(shm)),
    )
    .unwrap();
    let mut log = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    for (i, op) in script().iter().enumerate() {
        match op {
            Op::Write(off, data) => ov.write(*off, &[IoBuf::new(data)], &Base).unwrap(),
            Op::Zero(off, len) => ov.write_zeroes(*off, *len, &Base).unwrap(),
            Op::Discard(off, len) => ov.discard(*off, *len, &Base).unwrap(),
            Op::Flush => ov.flush().unwrap(),
        }
        writeln!(log, "done {i}").unwrap();
    }
    writeln!(log, "end").unwrap();
    kill_self();
}

/// A fresh overlay (base "a") and a shadow directory in a new temporary
/// directory.
struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    shm: PathBuf,
    log: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.overlay");
    let shm = dir.path().join("shm");
    std::fs::create_dir(&shm).unwrap();
    let log = dir.path().join("log");
    std::fs::File::create(&log).unwrap();
    let create = CreateOptions {
        disk_size: SIZE,
        base: identity("a"),
    };
    drop(Overlay::create(&path, &create).unwrap());
    Setup {
        path,
        shm,
        log,
        _dir: dir,
    }
}

/// Runs the child until it is killed; returns how many requests completed
/// and whether it got through the script.
fn run_child(s: &Setup, die_at: u64, after: bool) -> (usize, bool) {
    let spec = format!(
        "{die_at}|{}|{}|{}|{}",
        if after { "after" } else { "before" },
        s.path.display(),
        s.shm.display(),
        s.log.display()
    );
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "shadow_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "child: {status}");
    let log = std::fs::read_to_string(&s.log).unwrap();
    let done = log.lines().filter(|l| l.starts_with("done")).count();
    (done, log.lines().any(|l| l == "end"))
}

fn open(s: &Setup, shadow: Option<&Path>, opts: &OpenOptions) -> Overlay {
    Overlay::open_with_shadow(&s.path, &identity("a"), SIZE, opts, shadow).unwrap()
}

fn models(done: usize) -> (Model, Model) {
    let ops = script();
    let mut before = Model::default();
    ops[..done].iter().for_each(|op| before.apply(op));
    let mut after = before.clone();
    if let Some(op) = ops.get(done) {
        after.apply(op);
    }
    (before, after)
}

/// Tests run one at a time: a child being spawned holds copies of the
/// other threads' descriptors until it execs, and with them their overlay
/// locks, so another test's reopen could find its file busy.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

/// kill -9 at every storage operation of the script (each data write,
/// copy-up, hole punch, each step of each flush), before and after it runs:
/// reopened with the shadow map, every request that returned is there, the
/// one in flight is there or not, byte by byte. The next flush puts them
/// in the file's map: opened without the shadow map they are all there.
#[test]
fn kill_9_at_every_step_keeps_every_completed_request() {
    let _serial = serial();
    let mut finished = false;
    let mut die_at = 0;
    while !finished {
        for after in [false, true] {
            let s = setup();
            let (done, end) = run_child(&s, die_at, after);
            finished |= end;
            let what = format!("killed at operation {die_at} (after: {after}), {done} done");
            let ov = open(&s, Some(&s.shm), &OpenOptions::default());
            assert!(
                matches!(
                    ov.shadow_status(),
                    Some(ShadowStatus::Adopted { .. } | ShadowStatus::Fresh { .. })
                ),
                "{what}: {:?}",
                ov.shadow_status()
            );
            let (before, after_op) = models(done);
            check(&ov, &[&before, &after_op], &what);
            let seen = Model {
                blocks: checked_ranges()
                    .into_iter()
                    .flat_map(|r| {
                        let bytes = read_range(&ov, r);
                        (r.0 / BS..r.1 / BS)
                            .map(move |b| {
                                let at = ((b * BS - r.0) as usize, ((b + 1) * BS - r.0) as usize);
                                (b, bytes[at.0..at.1].to_vec())
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect(),
            };
            ov.flush().unwrap();
            drop(ov);
            assert!(dir_is_empty(&s.shm), "{what}: a clean close removes it");
            let ov = open(&s, None, &OpenOptions::default());
            check(
                &ov,
                &[&seen],
                &format!("{what}, flushed, without the shadow map"),
            );
        }
        die_at += 1;
        assert!(die_at < 100, "the child never got through the script");
    }
}

/// A child that ran the whole script and was killed: the shadow map holds
/// the last two requests, the file's map does not.
fn killed_after_script() -> Setup {
    let s = setup();
    let (done, end) = run_child(&s, u64::MAX, false);
    assert!(end && done == script().len());
    s
}

fn shadow_file(s: &Setup) -> PathBuf {
    let files: Vec<_> = std::fs::read_dir(&s.shm)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

fn full_model() -> Model {
    models(script().len()).0
}

/// What the file's map says: the script up to its last flush.
fn flushed_model() -> Model {
    let ops = script();
    let last_flush = ops.iter().rposition(|op| matches!(op, Op::Flush)).unwrap();
    models(last_flush + 1).0
}

#[test]
fn a_killed_writers_states_are_adopted_by_writers_and_readers() {
    let _serial = serial();
    let s = killed_after_script();
    let shadow = shadow_file(&s);
    let name = shadow.file_name().unwrap().to_string_lossy().into_owned();
    let header = Overlay::read_header(&s.path).unwrap();
    assert!(
        name.starts_with(&format!("ocidisk-overlay-{}-", header.disk_id)) && name.ends_with(".map"),
        "{name}"
    );
    let bytes = std::fs::read(&shadow).unwrap();
    // Without the shadow map: the file's map, as of the last flush.
    let ov = Overlay::inspect(&s.path).unwrap();
    check(&ov, &[&flushed_model()], "inspect");
    assert!(ov.shadow_status().is_none());
    drop(ov);
    let ov = open(&s, None, &OpenOptions::default());
    check(&ov, &[&flushed_model()], "open without a shadow directory");
    drop(ov);
    assert_eq!(std::fs::read(&shadow).unwrap(), bytes, "left alone");
    // A read-only open (export) uses it and leaves it alone.
    let ro = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    let ov = open(&s, Some(&s.shm), &ro);
    assert_eq!(
        ov.shadow_status(),
        Some(&ShadowStatus::Adopted {
            path: shadow.clone(),
            changed_pages: 1
        })
    );
    check(&ov, &[&full_model()], "read-only with the shadow map");
    drop(ov);
    assert_eq!(std::fs::read(&shadow).unwrap(), bytes, "read-only wrote it");
    // A writer adopts it; a close with unflushed states keeps it.
    let ov = open(&s, Some(&s.shm), &OpenOptions::default());
    assert!(matches!(
        ov.shadow_status(),
        Some(ShadowStatus::Adopted {
            changed_pages: 1,
            ..
        })
    ));
    check(&ov, &[&full_model()], "writer with the shadow map");
    drop(ov);
    assert!(shadow.exists(), "dirty states keep the shadow map");
    let ov = open(&s, Some(&s.shm), &OpenOptions::default());
    check(&ov, &[&full_model()], "adopted again");
    ov.flush().unwrap();
    drop(ov);
    assert!(!shadow.exists(), "a clean close removes it");
    let ov = open(&s, None, &OpenOptions::default());
    check(&ov, &[&full_model()], "flushed");
}

/// Every kind of shadow map that does not match: refused with a reason
/// naming it, never a panic; the disk is the file's map; a writer replaces
/// it with a good one.
#[test]
fn mismatched_shadow_maps_are_never_adopted() {
    let _serial = serial();
    let s = killed_after_script();
    let shadow = shadow_file(&s);
    let good = std::fs::read(&shadow).unwrap();
    let field = |at: usize| u64::from_ne_bytes(good[at..at + 8].try_into().unwrap());
    let words = field(64) as usize;
    let with = |at: usize, v: u64| {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        b
    };
    let word_at = |w: usize| 4096 + 8 * w;
    // The last word describes blocks far past the disk's end (16192 blocks).
    let past_end = with(word_at(words - 1), 1);
    let invalid_state = with(word_at(0), field(4096) | 3);
    let seq_at = word_at(words);
    type Case<'a> = (&'static str, Box<dyn Fn(&Path) + 'a>, &'static str);
    let write = |bytes: Vec<u8>| -> Box<dyn Fn(&Path) + '_> {
        Box::new(move |p: &Path| std::fs::write(p, &bytes).unwrap())
    };
    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 1;
        write(b)
    };
    let cases: Vec<Case> = vec![
        ("boot", flip(80), "another boot"),
        ("disk id", flip(16), "another overlay"),
        ("device", flip(32), "another file"),
        ("inode", flip(40), "another file"),
        ("birth", flip(48), "another file"),
        ("generation", write(with(56, field(56) + 1)), "generation"),
        ("pages", write(with(72, field(72) + 1)), "map pages"),
        ("magic", flip(0), "magic"),
        ("version", write(with(8, 2)), "version"),
        ("flush marker", write(with(96, 7)), "flush marker"),
        ("reserved", flip(200), "reserved"),
        ("state 3", write(invalid_state), "invalid state 3"),
        ("past the end", write(past_end), "although the disk has"),
        (
            "sequence number",
            write(with(seq_at, field(seq_at) + 3)),
            "written without it",
        ),
        (
            "truncated",
            write(good[..good.len() / 2].to_vec()),
            "bytes long",
        ),
        ("empty", write(Vec::new()), "bytes long"),
        ("longer", write([&good[..], &[0; 8]].concat()), "bytes long"),
        (
            "writable by others",
            Box::new(|p: &Path| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::write(p, &good).unwrap();
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666)).unwrap();
            }),
            "writable by others",
        ),
        (
            "symlink",
            Box::new(|p: &Path| {
                let target = p.with_extension("target");
                std::fs::write(&target, &good).unwrap();
                std::os::unix::fs::symlink(&target, p).unwrap();
            }),
            "cannot open it",
        ),
    ];
    for (name, make, because) in &cases {
        for read_only in [true, false] {
            let _ = std::fs::remove_file(&shadow);
            make(&shadow);
            let opts = OpenOptions {
                read_only,
                ..OpenOptions::default()
            };
            let ov = open(&s, Some(&s.shm), &opts);
            match ov.shadow_status() {
                Some(ShadowStatus::Rejected { path, reason }) => {
                    assert_eq!(path, &shadow);
                    assert!(
                        reason.contains(&*shadow.to_string_lossy()) && reason.contains(because),
                        "{name}: {reason}"
                    );
                }
                other => panic!("{name} (read-only: {read_only}): {other:?}"),
            }
            check(&ov, &[&flushed_model()], name);
            drop(ov);
            if read_only {
                continue;
            }
            // Replaced by a good one, which the clean close removed; the
            // symlink's target is untouched.
            assert!(shadow.symlink_metadata().is_err(), "{name}");
            if *name == "symlink" {
                let target = shadow.with_extension("target");
                assert_eq!(std::fs::read(&target).unwrap(), good);
                std::fs::remove_file(target).unwrap();
            }
        }
    }
    // A good one is still adopted (the cases above changed only it).
    std::fs::write(&shadow, &good).unwrap();
    let ov = open(&s, Some(&s.shm), &OpenOptions::default());
    assert!(matches!(
        ov.shadow_status(),
        Some(ShadowStatus::Adopted { .. })
    ));
    check(&ov, &[&full_model()], "the good one");
}

/// Writers that do not use the shadow map: one that changes no state (an
/// overwrite) leaves it valid; one that flushes a state change makes it
/// older than the file's map, and it is refused.
#[test]
fn a_flush_without_the_shadow_map_makes_it_stale() {
    let _serial = serial();
    let s = killed_after_script();
    let overwrite = Op::Write(3 * BS, vec![0xab; 4096]);
    let first_write = Op::Write(60 * BS, vec![0xef; 4096]);
    let run = |op: &Op| {
        let ov = open(&s, None, &OpenOptions::default());
        if let Op::Write(off, data) = op {
            ov.write(*off, &[IoBuf::new(data)], &Base).unwrap();
        }
        ov.flush().unwrap();
    };
    run(&overwrite);
    let ro = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    let ov = open(&s, Some(&s.shm), &ro);
    assert!(matches!(
        ov.shadow_status(),
        Some(ShadowStatus::Adopted { .. })
    ));
    let mut want = full_model();
    want.apply(&overwrite);
    check(&ov, &[&want], "after an overwrite without the shadow map");
    drop(ov);
    run(&first_write);
    let ov = open(&s, Some(&s.shm), &OpenOptions::default());
    assert!(
        matches!(ov.shadow_status(), Some(ShadowStatus::Rejected { reason, .. }) if reason.contains("written without it")),
        "{:?}",
        ov.shadow_status()
    );
    let mut want = flushed_model();
    want.apply(&overwrite);
    want.apply(&first_write);
    check(&ov, &[&want], "after a state change without the shadow map");
}

/// Reset removes the shadow map (else it could bring the old states back
/// over the pristine file).
#[test]
fn reset_removes_the_shadow_map() {
    let _serial = serial();
    let s = killed_after_script();
    let shadow = shadow_file(&s);
    Overlay::reset_with_shadow(&s.path, Some(&s.shm)).unwrap();
    assert!(!shadow.exists());
    let ov = open(&s, Some(&s.shm), &OpenOptions::default());
    assert!(matches!(
        ov.shadow_status(),
        Some(ShadowStatus::Fresh { .. })
    ));
    check(&ov, &[&Model::default()], "after reset");
}

/// A rebase by a writer with the shadow map keeps the adopted states
/// (flushed first) and binds the shadow map to the new generation; one
/// without it leaves a shadow map of the old generation, which is refused.
#[test]
fn rebase_keeps_adopted_states_and_rebinds_the_shadow_map() {
    let _serial = serial();
    let rebase = OpenOptions {
        rebase: true,
        ..OpenOptions::default()
    };
    let s = killed_after_script();
    let shadow = shadow_file(&s);
    let ov =
        Overlay::open_with_shadow(&s.path, &identity("b"), SIZE, &rebase, Some(&s.shm)).unwrap();
    assert!(matches!(
        ov.shadow_status(),
        Some(ShadowStatus::Adopted { .. })
    ));
    assert_eq!(ov.header().generation, 2);
    check(&ov, &[&full_model()], "rebased");
    let bytes = std::fs::read(&shadow).unwrap();
    assert_eq!(u64::from_ne_bytes(bytes[56..64].try_into().unwrap()), 2);
    // New states after the rebase, not flushed: the close keeps them.
    ov.write(50 * BS, &[IoBuf::new(&[0xcd; 4096])], &Base)
        .unwrap();
    drop(ov);
    let mut want = full_model();
    want.apply(&Op::Write(50 * BS, vec![0xcd; 4096]));
    let ov = Overlay::open_with_shadow(
        &s.path,
        &identity("b"),
        SIZE,
        &OpenOptions::default(),
        Some(&s.shm),
    )
    .unwrap();
    assert!(matches!(
        ov.shadow_status(),
        Some(ShadowStatus::Adopted { .. })
    ));
    check(&ov, &[&want], "after the rebase");
    drop(ov);

    let s = killed_after_script();
    let ov = Overlay::open(&s.path, &identity("b"), SIZE, &rebase).unwrap();
    drop(ov);
    let ov = Overlay::open_with_shadow(
        &s.path,
        &identity("b"),
        SIZE,
        &OpenOptions::default(),
        Some(&s.shm),
    )
    .unwrap();
    assert!(
        matches!(ov.shadow_status(), Some(ShadowStatus::Rejected { reason, .. }) if reason.contains("generation")),
        "{:?}",
        ov.shadow_status()
    );
    check(&ov, &[&flushed_model()], "rebased without the shadow map");
}

/// A clean close (every state flushed) removes the shadow map, in every
/// way an overlay comes to be opened; a writer needs a shadow directory it
/// can write, and says which.
#[test]
fn clean_close_removes_the_shadow_map() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let shm = dir.path().join("shm");
    std::fs::create_dir(&shm).unwrap();
    let path = dir.path().join("vm.overlay");
    let create = CreateOptions {
        disk_size: SIZE,
        base: identity("a"),
    };
    let ov = Overlay::create_with_shadow(&path, &create, Some(&shm)).unwrap();
    assert!(matches!(
        ov.shadow_status(),
        Some(ShadowStatus::Fresh { .. })
    ));
    assert!(!dir_is_empty(&shm));
    drop(ov);
    assert!(dir_is_empty(&shm), "nothing written: removed");
    let ov = Overlay::open_with_shadow(
        &path,
        &identity("a"),
        SIZE,
        &OpenOptions::default(),
        Some(&shm),
    )
    .unwrap();
    ov.write(0, &[IoBuf::new(&[1; 4096])], &Base).unwrap();
    ov.flush().unwrap();
    ov.write(0, &[IoBuf::new(&[2; 4096])], &Base).unwrap();
    drop(ov);
    assert!(dir_is_empty(&shm), "an overwrite changes no state");
    let missing = dir.path().join("missing");
    let err = Overlay::open_with_shadow(
        &path,
        &identity("a"),
        SIZE,
        &OpenOptions::default(),
        Some(&missing),
    )
    .err()
    .expect("no shadow directory");
    assert!(
        err.to_string().contains(&*missing.to_string_lossy()),
        "{err}"
    );
}
