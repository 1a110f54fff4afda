//! `guest-io-check --dev DEV --blocks N [options]`: verified block I/O under
//! load, run inside a test guest while the host kills and restarts the
//! disk's backend (tests/tests/guest/guest_restart.rs).
//!
//! Several workers each own a contiguous stripe of the first N 4 KiB blocks
//! of DEV and, until told to stop, write runs of 1–16 self-describing blocks
//! with `O_DIRECT` (an `fdatasync` after about one write in ten) and read
//! runs back, checking every block against the last generation the worker
//! wrote there and saw complete. Then each worker reads its whole stripe
//! once more. Everything is reported on stdout (the serial console) as
//! `OCIDISK key=value` lines:
//!
//! - `progress=N fails=F`: N operations completed without an I/O error so
//!   far and F failures found, printed at most every `--progress-ms` when
//!   either changed; the host times restarts with it;
//! - `fail=KIND …`: `io_error`, `lost` (an older generation or zeros where a
//!   completed write should be), `newer`, `misplaced` (another block's
//!   data), `corrupt` (bad magic or checksum), `hang` (a request in flight
//!   longer than `--watchdog-secs`); at most `--max-reports` per kind;
//! - at the end `io_summary=…`, `final_verify=ok|fail …`,
//!   `final_digest=HEX` (over every block's number and generation as read
//!   in the final pass) and `io_result=ok|fail`; the exit status is 0 only
//!   for `ok`.
//!
//! It stops when a line containing `stop` arrives on `--control` (the
//! guest's second serial port, default `/dev/ttyS1`) or after `--max-secs`.
//!
//! Only `std`: the tests compile it with plain `rustc` as a static
//! executable (`-C target-feature=+crt-static`) for the busybox initramfs.
//! It is also a bin of the tests crate, so `cargo build` checks it and it
//! can be run on the host against a file or loop device.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Block size: every block carries its own header and checksum.
const BS: usize = 4096;
const WORDS: usize = BS / 8;
/// "OCIDISK1", little-endian, in the first word of every written block.
const MAGIC: u64 = 0x31_4b_53_49_44_49_43_4f;
/// `O_DIRECT` on x86_64 (std has no constant for it).
const O_DIRECT: i32 = 0o40000;
/// Longest run of blocks in one request.
const MAX_RUN: u64 = 16;

/// What the workers are doing; a stop request ends the random phase.
static STOP: AtomicBool = AtomicBool::new(false);
/// Operations completed without an error (reads, writes, syncs, final-pass
/// reads).
static OPS: AtomicU64 = AtomicU64::new(0);
static START: Mutex<Option<Instant>> = Mutex::new(None);
/// Serializes whole lines on the console.
static OUT: Mutex<()> = Mutex::new(());

fn say(line: &str) {
    let _g = OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "OCIDISK {line}");
    let _ = out.flush();
}

fn now_ms() -> u64 {
    let start = START.lock().unwrap().unwrap_or_else(Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

#[derive(Clone, Debug)]
struct Opts {
    dev: String,
    blocks: u64,
    workers: u64,
    read_pct: u64,
    sync_pct: u64,
    watchdog_secs: u64,
    progress_ms: u64,
    max_secs: u64,
    max_reports: u64,
    seed: u64,
    control: String,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        dev: String::new(),
        blocks: 8192,
        workers: 6,
        read_pct: 50,
        sync_pct: 10,
        watchdog_secs: 30,
        progress_ms: 20,
        max_secs: 900,
        max_reports: 20,
        seed: 1,
        control: "/dev/ttyS1".to_string(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().ok_or_else(|| format!("{a} needs a value"));
        let num = |s: String| {
            s.parse::<u64>()
                .map_err(|e| format!("{a}: {s:?} is not a number: {e}"))
        };
        match a.as_str() {
            "--dev" => o.dev = v()?,
            "--blocks" => o.blocks = num(v()?)?,
            "--workers" => o.workers = num(v()?)?,
            "--read-pct" => o.read_pct = num(v()?)?,
            "--sync-pct" => o.sync_pct = num(v()?)?,
            "--watchdog-secs" => o.watchdog_secs = num(v()?)?,
            "--progress-ms" => o.progress_ms = num(v()?)?,
            "--max-secs" => o.max_secs = num(v()?)?,
            "--max-reports" => o.max_reports = num(v()?)?,
            "--seed" => o.seed = num(v()?)?,
            "--control" => o.control = v()?,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.dev.is_empty() {
        return Err("--dev is required".into());
    }
    if o.workers == 0 || o.blocks < o.workers * MAX_RUN {
        return Err(format!(
            "--blocks {} must give each of {} workers at least {MAX_RUN} blocks",
            o.blocks, o.workers
        ));
    }
    Ok(o)
}

/// splitmix64: the workers' random numbers and the blocks' fill. Written
/// here rather than taken from a crate because the guest binary is built
/// with a bare `rustc` (std only, static), without Cargo.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A checksum of words: FNV-1a over 64-bit words, with a final mix.
fn checksum(words: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

/// A 4 KiB-aligned buffer for O_DIRECT.
struct Buf {
    ptr: *mut u8,
    len: usize,
}
// SAFETY: the buffer is plain memory owned by one thread at a time.
unsafe impl Send for Buf {}
impl Buf {
    fn new(len: usize) -> Buf {
        let layout = std::alloc::Layout::from_size_align(len, BS).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Buf { ptr, len }
    }
    fn bytes(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.len);
        // SAFETY: ptr is valid for self.len bytes and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }
    fn word(&self, block: usize, i: usize) -> u64 {
        assert!((block * WORDS + i) * 8 < self.len);
        // SAFETY: in bounds (checked) and 8-byte aligned (4 KiB-aligned base).
        u64::from_le(unsafe { *(self.ptr as *const u64).add(block * WORDS + i) })
    }
    fn words(&mut self, block: usize) -> &mut [u64] {
        assert!((block + 1) * BS <= self.len);
        // SAFETY: in bounds, aligned, exclusive through &mut self.
        unsafe { std::slice::from_raw_parts_mut((self.ptr as *mut u64).add(block * WORDS), WORDS) }
    }
}
impl Drop for Buf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, BS).unwrap();
        // SAFETY: allocated with this layout in Buf::new.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

/// Fills block `i` of `buf` as disk block `block`, generation `gen`.
fn fill(buf: &mut Buf, i: usize, block: u64, gen: u64, worker: u64, first: u64, n: u64) {
    let w = buf.words(i);
    w[0] = MAGIC;
    w[1] = block;
    w[2] = gen;
    w[3] = worker | (n << 32);
    w[4] = first;
    let mut rng = Rng(block.wrapping_mul(0x1000_0000_01b3) ^ gen.rotate_left(32) ^ worker);
    for x in w[5..WORDS - 1].iter_mut() {
        *x = rng.next();
    }
    w[WORDS - 1] = checksum(&w[..WORDS - 1]);
    for x in w.iter_mut() {
        *x = x.to_le();
    }
}

/// What a read block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Zero,
    Block { block: u64, gen: u64 },
    Corrupt { magic: u64, block: u64, gen: u64 },
}

fn decode(buf: &Buf, i: usize) -> Seen {
    let w: Vec<u64> = (0..WORDS).map(|k| buf.word(i, k)).collect();
    if w.iter().all(|&x| x == 0) {
        return Seen::Zero;
    }
    if w[0] != MAGIC || checksum(&w[..WORDS - 1]) != w[WORDS - 1] {
        return Seen::Corrupt {
            magic: w[0],
            block: w[1],
            gen: w[2],
        };
    }
    Seen::Block {
        block: w[1],
        gen: w[2],
    }
}

/// The generation a block holds: 0 for zeros.
fn seen_gen(s: Seen) -> Option<u64> {
    match s {
        Seen::Zero => Some(0),
        Seen::Block { gen, .. } => Some(gen),
        Seen::Corrupt { .. } => None,
    }
}

/// Failure counts, shared so the summary and the watchdog see them.
#[derive(Default)]
struct Fails {
    io_error: AtomicU64,
    lost: AtomicU64,
    newer: AtomicU64,
    misplaced: AtomicU64,
    corrupt: AtomicU64,
    hang: AtomicU64,
}

impl Fails {
    fn counter(&self, kind: &str) -> &AtomicU64 {
        match kind {
            "io_error" => &self.io_error,
            "lost" => &self.lost,
            "newer" => &self.newer,
            "misplaced" => &self.misplaced,
            "corrupt" => &self.corrupt,
            _ => &self.hang,
        }
    }
    fn total(&self) -> u64 {
        [
            &self.io_error,
            &self.lost,
            &self.newer,
            &self.misplaced,
            &self.corrupt,
            &self.hang,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
    /// Counts a failure and reports it unless `max` of its kind were reported.
    fn report(&self, max: u64, kind: &str, detail: &str) {
        let n = self.counter(kind).fetch_add(1, Ordering::Relaxed);
        if n < max {
            say(&format!("fail={kind} {detail} t_ms={}", now_ms()));
        } else if n == max {
            say(&format!(
                "fail={kind} (further {kind} failures not reported)"
            ));
        }
    }
}

/// One worker's operation in flight, for the watchdog.
#[derive(Default)]
struct Slot {
    /// now_ms() when the operation started; 0 when idle.
    started_ms: AtomicU64,
    /// kind (0 read, 1 write, 2 sync, 3 final read) | count << 8 | block << 16.
    what: AtomicU64,
    /// The start time already reported as hung.
    reported: AtomicU64,
}

fn describe(what: u64) -> String {
    let kind = ["read", "write", "sync", "final_read"][(what & 0xff) as usize % 4];
    format!(
        "op={kind} block={} count={}",
        what >> 16,
        (what >> 8) & 0xff
    )
}

#[derive(Default, Clone)]
struct Stats {
    reads: u64,
    writes: u64,
    syncs: u64,
    blocks_read: u64,
    blocks_written: u64,
    max_latency_ms: u64,
    final_bad: u64,
    /// (block, generation) as read in the final pass, in block order.
    final_gens: Vec<(u64, u64)>,
}

struct Worker {
    id: u64,
    file: File,
    first: u64,
    len: u64,
    /// Last completed generation per block of the stripe (0: never written).
    gen: Vec<u64>,
    /// A generation a failed write may or may not have left (either is fine).
    maybe: Vec<Option<u64>>,
    /// Generations up to this one were covered by a completed fdatasync.
    synced: u64,
    next_gen: u64,
    buf: Buf,
    rng: Rng,
    opts: Opts,
    fails: Arc<Fails>,
    slot: Arc<Slot>,
    stats: Stats,
}

impl Worker {
    fn begin(&self, kind: u64, block: u64, count: u64) -> u64 {
        self.slot
            .what
            .store(kind | (count << 8) | (block << 16), Ordering::Relaxed);
        let t = now_ms();
        self.slot.started_ms.store(t, Ordering::Release);
        t
    }

    /// Ends the operation begun at `t`; only a successful one is progress.
    fn end(&mut self, t: u64, ok: bool) {
        self.slot.started_ms.store(0, Ordering::Release);
        let lat = now_ms().saturating_sub(t);
        self.stats.max_latency_ms = self.stats.max_latency_ms.max(lat);
        if ok {
            OPS.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn run(&mut self) {
        while !STOP.load(Ordering::Relaxed) {
            let n = 1 + self.rng.below(MAX_RUN);
            let start = self.rng.below(self.len - n + 1);
            if self.rng.below(100) < self.opts.read_pct {
                self.read(start, n, "run", 0);
            } else {
                self.write(start, n);
                if self.rng.below(100) < self.opts.sync_pct {
                    self.sync();
                }
            }
        }
    }

    fn write(&mut self, start: u64, n: u64) {
        let gen = self.next_gen;
        self.next_gen += 1;
        let abs = self.first + start;
        for i in 0..n {
            fill(&mut self.buf, i as usize, abs + i, gen, self.id, abs, n);
        }
        let t = self.begin(1, abs, n);
        let r = self
            .file
            .write_all_at(self.buf.bytes((n as usize) * BS), abs * BS as u64);
        self.end(t, r.is_ok());
        match r {
            Ok(()) => {
                for i in 0..n {
                    let k = (start + i) as usize;
                    self.gen[k] = gen;
                    self.maybe[k] = None;
                }
                self.stats.writes += 1;
                self.stats.blocks_written += n;
            }
            Err(e) => {
                for i in 0..n {
                    self.maybe[(start + i) as usize] = Some(gen);
                }
                self.fails.report(
                    self.opts.max_reports,
                    "io_error",
                    &format!(
                        "worker={} op=write block={abs} count={n} gen={gen} err={e}",
                        self.id
                    ),
                );
            }
        }
    }

    fn sync(&mut self) {
        let upto = self.next_gen - 1;
        let t = self.begin(2, self.first, 0);
        let r = self.file.sync_data();
        self.end(t, r.is_ok());
        match r {
            Ok(()) => {
                self.synced = upto;
                self.stats.syncs += 1;
            }
            Err(e) => self.fails.report(
                self.opts.max_reports,
                "io_error",
                &format!("worker={} op=fdatasync err={e}", self.id),
            ),
        }
    }

    /// Reads `n` blocks from stripe block `start` and checks each; `phase`
    /// names the pass in reports. Returns the number of bad blocks.
    fn read(&mut self, start: u64, n: u64, phase: &str, kind: u64) -> u64 {
        let abs = self.first + start;
        let t = self.begin(kind, abs, n);
        let r = self
            .file
            .read_exact_at(self.buf.bytes((n as usize) * BS), abs * BS as u64);
        self.end(t, r.is_ok());
        if let Err(e) = r {
            self.fails.report(
                self.opts.max_reports,
                "io_error",
                &format!(
                    "worker={} op=read phase={phase} block={abs} count={n} err={e}",
                    self.id
                ),
            );
            return n;
        }
        self.stats.reads += 1;
        self.stats.blocks_read += n;
        let mut bad = 0;
        for i in 0..n {
            let k = (start + i) as usize;
            let block = abs + i;
            let want = self.gen[k];
            let seen = decode(&self.buf, i as usize);
            if phase == "final" {
                self.stats
                    .final_gens
                    .push((block, seen_gen(seen).unwrap_or(u64::MAX)));
            }
            let ok = match seen {
                Seen::Zero => want == 0 || self.maybe[k] == Some(0),
                Seen::Block { block: b, gen } => {
                    b == block && (gen == want || self.maybe[k] == Some(gen))
                }
                Seen::Corrupt { .. } => false,
            };
            if ok {
                continue;
            }
            bad += 1;
            let flushed = if want == 0 {
                "never_written"
            } else if want <= self.synced {
                "yes"
            } else {
                "no"
            };
            let (kind, got) = match seen {
                Seen::Zero => ("lost", "zeros".to_string()),
                Seen::Block { block: b, gen } if b != block => {
                    ("misplaced", format!("block {b} gen {gen}"))
                }
                Seen::Block { gen, .. } if gen < want => ("lost", format!("gen {gen}")),
                Seen::Block { gen, .. } => ("newer", format!("gen {gen}")),
                Seen::Corrupt { magic, block, gen } => (
                    "corrupt",
                    format!("magic {magic:#x} header block {block} gen {gen}"),
                ),
            };
            self.fails.report(
                self.opts.max_reports,
                kind,
                &format!(
                    "worker={} phase={phase} block={block} expected_gen={want} got={got} \
                     flushed={flushed}",
                    self.id
                ),
            );
        }
        bad
    }

    /// Reads the whole stripe, 16 blocks at a time.
    fn final_pass(&mut self) {
        let mut at = 0;
        while at < self.len {
            let n = MAX_RUN.min(self.len - at);
            self.stats.final_bad += self.read(at, n, "final", 3);
            at += n;
        }
    }
}

fn main() -> ExitCode {
    *START.lock().unwrap() = Some(Instant::now());
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("guest-io-check: {e}");
            say(&format!("fail=usage {e}"));
            return ExitCode::from(2);
        }
    };
    let fails = Arc::new(Fails::default());
    let per = opts.blocks / opts.workers;
    let mut slots = Vec::new();
    let mut handles = Vec::new();
    say(&format!(
        "io_config=dev:{} blocks:{} workers:{} read_pct:{} sync_pct:{} watchdog_secs:{}",
        opts.dev,
        per * opts.workers,
        opts.workers,
        opts.read_pct,
        opts.sync_pct,
        opts.watchdog_secs
    ));
    for id in 0..opts.workers {
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(O_DIRECT)
            .open(&opts.dev)
        {
            Ok(f) => f,
            Err(e) => {
                say(&format!("fail=usage cannot open {}: {e}", opts.dev));
                return ExitCode::from(2);
            }
        };
        let slot = Arc::new(Slot::default());
        slots.push(Arc::clone(&slot));
        let mut w = Worker {
            id,
            file,
            first: id * per,
            len: per,
            gen: vec![0; per as usize],
            maybe: vec![None; per as usize],
            synced: 0,
            next_gen: 1,
            buf: Buf::new(MAX_RUN as usize * BS),
            rng: Rng(opts.seed.wrapping_mul(1_000_003) ^ (id + 1).wrapping_mul(0x9e37_79b9)),
            opts: opts.clone(),
            fails: Arc::clone(&fails),
            slot,
            stats: Stats::default(),
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn(move || {
                    w.run();
                    w.final_pass();
                    w.stats
                })
                .expect("spawning a worker"),
        );
    }
    say("io_started=1");

    // Progress on the console, for the host to time restarts.
    {
        let ms = opts.progress_ms.max(1);
        let fails = Arc::clone(&fails);
        std::thread::spawn(move || {
            let mut last = (u64::MAX, u64::MAX);
            loop {
                let now = (OPS.load(Ordering::Relaxed), fails.total());
                if now != last {
                    say(&format!("progress={} fails={}", now.0, now.1));
                    last = now;
                }
                std::thread::sleep(Duration::from_millis(ms));
            }
        });
    }
    // The watchdog: a request in flight too long is a hang.
    {
        let fails = Arc::clone(&fails);
        let limit = opts.watchdog_secs * 1000;
        let max = opts.max_reports;
        let slots = slots.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = now_ms();
            for (id, s) in slots.iter().enumerate() {
                let t = s.started_ms.load(Ordering::Acquire);
                if t != 0
                    && now.saturating_sub(t) > limit
                    && s.reported.load(Ordering::Relaxed) != t
                {
                    s.reported.store(t, Ordering::Relaxed);
                    let what = describe(s.what.load(Ordering::Relaxed));
                    fails.report(
                        max,
                        "hang",
                        &format!("worker={id} {what} in_flight_secs={}", (now - t) / 1000),
                    );
                }
            }
        });
    }
    // The host says when to stop on the control port; --max-secs bounds it.
    {
        let control = opts.control.clone();
        std::thread::spawn(move || match File::open(&control) {
            Ok(mut f) => {
                let mut seen = Vec::new();
                let mut buf = [0u8; 64];
                loop {
                    match f.read(&mut buf) {
                        Ok(0) => std::thread::sleep(Duration::from_millis(50)),
                        Ok(n) => {
                            seen.extend_from_slice(&buf[..n]);
                            if seen.windows(4).any(|w| w == b"stop") {
                                say("stop_reason=control");
                                STOP.store(true, Ordering::Relaxed);
                                return;
                            }
                            if seen.len() > 4096 {
                                seen.drain(..seen.len() - 8);
                            }
                        }
                        Err(e) => {
                            say(&format!("control_error={e}"));
                            return;
                        }
                    }
                }
            }
            Err(e) => say(&format!("control_error=cannot open {control}: {e}")),
        });
    }
    {
        let max = Duration::from_secs(opts.max_secs);
        std::thread::spawn(move || {
            std::thread::sleep(max);
            if !STOP.swap(true, Ordering::Relaxed) {
                say("stop_reason=max_secs");
            }
        });
    }

    let mut total = Stats::default();
    let mut gens = Vec::new();
    for h in handles {
        let s = h.join().expect("a worker panicked");
        total.reads += s.reads;
        total.writes += s.writes;
        total.syncs += s.syncs;
        total.blocks_read += s.blocks_read;
        total.blocks_written += s.blocks_written;
        total.max_latency_ms = total.max_latency_ms.max(s.max_latency_ms);
        total.final_bad += s.final_bad;
        gens.extend(s.final_gens);
    }
    gens.sort_unstable();
    let digest = final_digest(&gens);
    let f = &fails;
    say(&format!(
        "io_summary=writes:{} reads:{} syncs:{} blocks_written:{} blocks_read:{} \
         max_latency_ms:{} io_error:{} lost:{} newer:{} misplaced:{} corrupt:{} hang:{}",
        total.writes,
        total.reads,
        total.syncs,
        total.blocks_written,
        total.blocks_read,
        total.max_latency_ms,
        f.io_error.load(Ordering::Relaxed),
        f.lost.load(Ordering::Relaxed),
        f.newer.load(Ordering::Relaxed),
        f.misplaced.load(Ordering::Relaxed),
        f.corrupt.load(Ordering::Relaxed),
        f.hang.load(Ordering::Relaxed),
    ));
    if total.final_bad == 0 {
        say(&format!("final_verify=ok blocks={}", gens.len()));
    } else {
        say(&format!(
            "final_verify=fail bad={} blocks={}",
            total.final_bad,
            gens.len()
        ));
    }
    say(&format!("final_digest={digest:016x}"));
    let ok = f.total() == 0 && total.final_bad == 0;
    say(&format!("io_result={}", if ok { "ok" } else { "fail" }));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A digest of (block, generation) pairs in block order; the host computes
/// the same over the blocks it reads back (`u64::MAX` for a corrupt block).
fn final_digest(gens: &[(u64, u64)]) -> u64 {
    let words: Vec<u64> = gens.iter().flat_map(|&(b, g)| [b, g]).collect();
    checksum(&words)
}
