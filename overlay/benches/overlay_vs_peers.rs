//! Overlay write and read speed against its peers, in one run on one file
//! system: plain `pwrite` to a raw file, and a qcow2 overlay over the same
//! base driven by `qemu-io`. Same total bytes, same seeded offsets.
//!
//! `cargo bench -p overlay --bench overlay_vs_peers` (env: `RUNS`, default 5;
//! `BENCH_DIR`, default the system temp dir; `DISK_MIB`, default 512).
//! Prints medians with the min–max spread, and ratios of medians, as a table.
//!
//! Writes: each peer starts from a fresh file after `sync`, runs the whole
//! workload and a flush (`fdatasync`, `Overlay::flush`, qemu-io `flush`),
//! peers in rotating order; before each, a scratch file as large as the
//! workload is written and deleted (see `recycle_page_cache`). qemu-io's time is its wall time minus that of a
//! run without writes (start-up, open, exit). Reads of unwritten blocks: a
//! fresh overlay and the base's own `ReadAt` in lockstep, request by request,
//! from a warm page cache.

// Measurement code, not product code: a setup that fails ends the run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a failed setup ends the run"
)]

use blockio::{BaseIdentity, IoBuf, IoBufMut, ReadAt};
use overlay::{CreateOptions, Overlay};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The base disk: a raw file read with `preadv`.
struct FileBase(File, u64);

impl ReadAt for FileBase {
    fn size(&self) -> u64 {
        self.1
    }
    fn read_vectored_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()> {
        blockio::pread_exact_vectored(&self.0, offset, bufs)
    }
}

/// Seeded randomness (fastrand's generator), reproducible from a seed.
struct Rng(fastrand::Rng);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(fastrand::Rng::with_seed(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.u64(..)
    }
}

/// A write workload: block size and the offsets, in order.
struct Workload {
    name: &'static str,
    bs: u64,
    offsets: Vec<u64>,
}

impl Workload {
    fn bytes(&self) -> u64 {
        self.bs * self.offsets.len() as u64
    }
}

fn mibps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / secs
}

/// The median, minimum and maximum of a cell's runs.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(|a, b| a.total_cmp(b));
        Spread {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} ({:.0}–{:.0})", self.median, self.min, self.max)
    }
}

fn identity() -> BaseIdentity {
    BaseIdentity {
        manifest_digest: "sha256:bench".into(),
        layout_hash: [0; 32],
    }
}

/// The workload then `fdatasync` on a fresh sparse raw file, plain `pwrite`.
fn raw_writes(dir: &Path, size: u64, w: &Workload, buf: &[u8]) -> f64 {
    let path = dir.join("raw.img");
    let _ = std::fs::remove_file(&path);
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    file.set_len(size).unwrap();
    settle();
    recycle_page_cache(dir, w.bytes());
    let t = Instant::now();
    for &off in &w.offsets {
        file.write_all_at(&buf[..w.bs as usize], off).unwrap();
    }
    file.sync_data().unwrap();
    t.elapsed().as_secs_f64()
}

/// The workload then a flush on a fresh overlay.
fn overlay_writes(dir: &Path, size: u64, w: &Workload, buf: &[u8], base: &FileBase) -> f64 {
    let path = dir.join("vm.overlay");
    let _ = std::fs::remove_file(&path);
    let ov = Overlay::create(
        &path,
        &CreateOptions {
            disk_size: size,
            base: identity(),
        },
    )
    .unwrap();
    settle();
    recycle_page_cache(dir, w.bytes());
    let t = Instant::now();
    for &off in &w.offsets {
        ov.write(off, &[IoBuf::new(&buf[..w.bs as usize])], base)
            .unwrap();
    }
    ov.flush().unwrap();
    t.elapsed().as_secs_f64()
}

/// Writes back every dirty page first, so no run pays for another's.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Writes `len` bytes to a scratch file in `dir` and deletes it, so the
/// next `len` bytes of page cache a writer takes come from memory the
/// kernel freed a moment ago. On a VM with virtio-balloon free page
/// reporting, memory left idle is handed back to the host and the first
/// write into it pays for the host's page faults (about ten times slower):
/// without this a cell would measure which peer got fresh memory. (The
/// same helper as `recycle_page_cache` in ocidisk-tests' `serve_io` bench,
/// which this crate cannot depend on.)
fn recycle_page_cache(dir: &Path, len: u64) {
    let path = dir.join("recycle.tmp");
    let chunk = vec![0x5au8; 1 << 20];
    let mut f = File::create(&path).unwrap();
    for _ in 0..len.div_ceil(1 << 20) {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    // Its dirty pages are dropped with it, never written back.
    std::fs::remove_file(&path).unwrap();
}

/// Runs `qemu-io` on a fresh qcow2 overlay of `base_path` with `cmds` and
/// returns its wall time.
fn qemu_io(dir: &Path, base_path: &Path, cmds: &[String]) -> f64 {
    let path = dir.join("vm.qcow2");
    let _ = std::fs::remove_file(&path);
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(base_path)
        .args(["-F", "raw"])
        .arg(&path)
        .status()
        .expect("qemu-img is needed (.ci/install-deps installs it)");
    assert!(status.success());
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "qcow2", "-t", "writeback"]);
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    let t = Instant::now();
    let out = cmd
        .arg(&path)
        .output()
        .expect("qemu-io is needed (.ci/install-deps installs it)");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let wrote = text.lines().filter(|l| l.starts_with("wrote ")).count();
    assert_eq!(
        wrote,
        cmds.iter().filter(|c| c.starts_with("write")).count(),
        "{text}"
    );
    secs
}

/// The workload's writes then a flush through `qemu-io`, minus the time
/// `qemu-io` takes to start, open the image, and exit (measured the same
/// way with no writes), so the flush counts as it does for the others.
fn qcow2_writes(dir: &Path, base_path: &Path, w: &Workload) -> f64 {
    let mut cmds: Vec<String> = w
        .offsets
        .iter()
        .map(|off| format!("write -P 0xab {off} {}", w.bs))
        .collect();
    cmds.push("flush".into());
    settle();
    let idle = qemu_io(dir, base_path, &["flush".into()]);
    settle();
    recycle_page_cache(dir, w.bytes());
    qemu_io(dir, base_path, &cmds) - idle
}

/// Reads the workload from two readers in lockstep, each request timed;
/// returns both total times.
fn reads(w: &Workload, a: &dyn Fn(u64, &mut [u8]), b: &dyn Fn(u64, &mut [u8])) -> (f64, f64) {
    let mut buf = vec![0u8; w.bs as usize];
    let (mut ta, mut tb) = (0.0, 0.0);
    let mut time = |f: &dyn Fn(u64, &mut [u8]), off: u64| {
        let t = Instant::now();
        f(off, &mut buf);
        t.elapsed().as_secs_f64()
    };
    for (i, &off) in w.offsets.iter().enumerate() {
        if i % 2 == 0 {
            ta += time(a, off);
            tb += time(b, off);
        } else {
            tb += time(b, off);
            ta += time(a, off);
        }
    }
    (ta, tb)
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let size: u64 = std::env::var("DISK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
        << 20;
    let root = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&root).unwrap();
    let dir = dir.path();

    // The base: real bytes everywhere, so a copy-up has something to read.
    let base_path = dir.join("base.raw");
    {
        let f = File::create(&base_path).unwrap();
        let mut rng = Rng::new(1);
        let chunk: Vec<u8> = (0..1 << 20).map(|_| rng.next() as u8).collect();
        for off in (0..size).step_by(1 << 20) {
            f.write_all_at(&chunk, off).unwrap();
        }
        f.sync_all().unwrap();
    }
    let base = FileBase(File::open(&base_path).unwrap(), size);
    let mut buf = vec![0u8; 1 << 20];
    let mut rng = Rng::new(2);
    buf.iter_mut().for_each(|b| *b = rng.next() as u8);

    let total = 64u64 << 20;
    let random = Workload {
        name: "4 KiB random",
        bs: 4096,
        offsets: (0..total / 4096)
            .map(|_| rng.next() % (size / 4096) * 4096)
            .collect(),
    };
    let seq_total = (256u64 << 20).min(size);
    let sequential = Workload {
        name: "1 MiB sequential",
        bs: 1 << 20,
        offsets: (0..seq_total >> 20).map(|i| i << 20).collect(),
    };

    println!(
        "overlay benchmark: {} MiB disk, {runs} runs, median (min–max), in {}",
        size >> 20,
        root.display()
    );
    println!();
    println!("| write workload | bytes | raw pwrite MiB/s | overlay MiB/s | qcow2 (qemu-io) MiB/s | overlay/raw | overlay/qcow2 |");
    println!("|---|---|---|---|---|---|---|");
    for w in [&random, &sequential] {
        let (mut raw, mut ov, mut q) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            // Rotate the order so no peer always runs first.
            for k in 0..3 {
                match (run + k) % 3 {
                    0 => raw.push(mibps(w.bytes(), raw_writes(dir, size, w, &buf))),
                    1 => ov.push(mibps(w.bytes(), overlay_writes(dir, size, w, &buf, &base))),
                    _ => q.push(mibps(w.bytes(), qcow2_writes(dir, &base_path, w))),
                }
            }
        }
        let (raw, ov, q) = (Spread::of(raw), Spread::of(ov), Spread::of(q));
        println!(
            "| {} + flush | {} MiB | {raw} | {ov} | {q} | {:.2} | {:.2} |",
            w.name,
            w.bytes() >> 20,
            ov.median / raw.median,
            ov.median / q.median
        );
    }

    // Reads of blocks the guest never wrote: through a fresh overlay vs
    // straight from the base (both from the page cache after a warm-up).
    println!();
    println!("| read workload (unwritten blocks) | bytes | base ReadAt (preadv) MiB/s | overlay MiB/s | overlay/base |");
    println!("|---|---|---|---|---|");
    let path = dir.join("read.overlay");
    let ov = Overlay::create(
        &path,
        &CreateOptions {
            disk_size: size,
            base: identity(),
        },
    )
    .unwrap();
    // The backend without an overlay would read the base through the same
    // `ReadAt` (preadv): that is the baseline.
    let direct =
        |off: u64, b: &mut [u8]| base.read_vectored_at(off, &mut [IoBufMut::new(b)]).unwrap();
    let through = |off: u64, b: &mut [u8]| {
        ov.read(off, &mut [IoBufMut::new(b)], &base).unwrap();
    };

    let whole = Workload {
        name: "1 MiB sequential",
        bs: 1 << 20,
        offsets: (0..size >> 20).map(|i| i << 20).collect(),
    };
    reads(&whole, &direct, &direct); // warm the page cache
    for w in [&random, &whole] {
        let (mut d, mut o) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (td, to) = reads(w, &direct, &through);
            d.push(mibps(w.bytes(), td));
            o.push(mibps(w.bytes(), to));
        }
        let (d, o) = (Spread::of(d), Spread::of(o));
        println!(
            "| {} | {} MiB | {d} | {o} | {:.2} |",
            w.name,
            w.bytes() >> 20,
            o.median / d.median
        );
    }
}
