//! Benchmark: `ocidisk serve` against qemu-storage-daemon and fio, driven by
//! libblkio.
//!
//! ```text
//! cargo build --release -p ocidisk && cargo bench -p ocidisk-tests --bench serve_io
//! ```
//!
//! One run builds a Monogon-format OCI image whose `system` payload is
//! pseudo-random bytes (512 MiB by default), exports the composed disk as a
//! raw file with `ocidisk export`, and serves the same disk over
//! vhost-user-blk with:
//!
//! - `ocidisk`: `ocidisk serve --image DIR --overlay FILE` (release build);
//! - `qsd-raw`: `qemu-storage-daemon` exporting the raw file with
//!   `aio=threads` (QEMU's default);
//! - `qsd-raw-uring`: the same with `aio=io_uring` (the benchmark checks that
//!   the process holds an io_uring after the cell);
//! - `qsd-raw-native`: the same with `aio=native` (Linux AIO; QEMU allows it
//!   with `cache.direct=on` only, so only in the `direct` group);
//! - `qsd-qcow2`: qemu-storage-daemon exporting a qcow2 overlay backed by
//!   that raw file (what Monogon's launcher used before);
//! - `ocidisk+metrics`: ocidisk with `--metrics` (what counting costs);
//! - `fio`, the limit: no server and no virtqueue, fio with
//!   `--ioengine=io_uring` on the files themselves (the `system` blob for
//!   reads, a sparse scratch file next to the cells' overlays for writes),
//!   same block size and QD, `numjobs` = queues, as threads of one process.
//!
//! The cells come in groups, each printed as its own markdown table with
//! the command that reproduces it and ocidisk's ratio to each peer (of the
//! medians over repetitions):
//!
//! - `warm`: 4 KiB random reads QD1 and QD32, 4 KiB random writes QD32 and
//!   1 MiB sequential reads and writes QD8, on 1 and 2 queues, reads from a
//!   warm page cache (the benchmark reads the blob and the raw file first);
//! - `cold`: the page cache dropped (`sync; echo 3 >
//!   /proc/sys/vm/drop_caches`) before every cell, and only the first
//!   `OCIDISK_BENCH_COLD_SECS` measured, without warm-up: 4 KiB random reads
//!   QD32 on 1 and 2 queues, 1 MiB sequential reads QD8 and 4 KiB random
//!   reads QD1 on 1 queue. Each queue (fio job) reads its own share of the
//!   payload at most once (random reads in a shuffled order), so no read
//!   hits a block an earlier read brought in; a cell whose share runs out
//!   first ends there (marked "ran out"). On the development VM 4 KiB reads
//!   at QD32 reach 65–90k IOPS, more than 512 MiB in 1.5 s: set
//!   `OCIDISK_BENCH_PAYLOAD_MIB=1000` (the preset's system partition holds
//!   at most 1 GiB) for the cold cells. 1 MiB reads (1–1.6 GB/s) run out
//!   of even that in under a second; their IOPS are over the time taken.
//!   Needs root; skipped with a line on stderr otherwise. The smoke run
//!   does not drop the machine's caches;
//! - `writethrough`: 4 KiB random writes QD32 on 1 queue with the write
//!   cache off: `ocidisk serve --writethrough`, qemu-storage-daemon
//!   `writethrough=on` on the export, fio `--fdatasync=1`. libblkio
//!   negotiates `CONFIG_WCE` but never writes the WCE byte, so the servers
//!   keep the mode they start in; the client checks that they report
//!   write-through (libblkio's `flush-needed` is false);
//! - `flush`: 4 KiB random reads QD1 on queue 0 (warm) while queue 1 writes
//!   `OCIDISK_BENCH_FLUSH_MIB` MiB as 1 MiB writes QD8 to the data partition
//!   and then sends one FLUSH: read latency alone, while writing, and while
//!   the flush runs (reads in flight at any time of the phase);
//! - `direct`: 4 KiB random reads QD32 on 1 queue with O_DIRECT:
//!   `ocidisk serve --direct`, qemu-storage-daemon `cache.direct=on` with
//!   `aio=io_uring` and `aio=native`, fio `--direct=1`;
//! - `variants`: 4 KiB random reads QD1 on 1 queue, warm, `ocidisk serve`
//!   as is against it with the extra arguments of each variant in
//!   `OCIDISK_BENCH_VARIANTS` (default `--poll-us 32`): IOPS, p50 and CPU
//!   per request.
//!
//! Flags that `ocidisk serve` does not have yet (`--direct`, `--poll-us`,
//! `--io-engine`): a server that refuses its command line (clap's
//! "unexpected argument" or "invalid value") is skipped for the rest of the
//! run with a line on stderr, and its rows say "skipped"; nothing needs to
//! be switched on once the flags exist. fio missing (`apt-get install fio`;
//! `.ci/install-deps` installs it) likewise skips the fio rows.
//!
//! Every cell (workload × queue count × server × repetition) gets its own
//! server process, and the write cells a fresh overlay (ocidisk: a new
//! overlay file; qcow2: a new qcow2 file; raw: the data partition's blocks
//! punched out of the raw file; fio: a new scratch file), so every
//! repetition starts from the same state. Repetitions interleave the
//! servers, so that the load of other processes on the machine falls on
//! all of them alike; the tables quote medians over repetitions. The
//! server CPU column is the CPU time all of a server's threads spend per
//! request over the measured window (`/proc/PID/task/*/schedstat`); for fio
//! it is all its threads but the main one (which parses and sets up) from
//! start to exit (`wait4`), submission side and io_uring workers included.
//!
//! Reads hit the `system` partition's payload region (so ocidisk reads the
//! blob and the peers the raw file); writes go to the data partition. With
//! two queues there is one client thread per queue and the queue depth is
//! per queue (QD32 on two queues is 64 requests in flight), like fio's
//! `numjobs`. Sequential workloads give each queue its own half of the
//! region.
//!
//! Environment: `OCIDISK_BENCH_SECS` (measured seconds per cell, default 3),
//! `OCIDISK_BENCH_COLD_SECS` (measured seconds per cold cell, default 1.5),
//! `OCIDISK_BENCH_REPS` (default 3), `OCIDISK_BENCH_PAYLOAD_MIB` (default
//! 512), `OCIDISK_BENCH_FLUSH_MIB` (what the `flush` cell writes before it
//! flushes, default 256), `OCIDISK_BENCH_VARIANTS` (the `variants` group's
//! `ocidisk serve` argument lists, `;` between variants, e.g.
//! `--poll-us 32;--io-engine sync;--io-engine uring`), `OCIDISK_BENCH_DIR`
//! (where the image and disks go; default a temporary directory),
//! `OCIDISK_BENCH_SERVE_ARGS` (extra arguments for every `ocidisk serve`,
//! split at spaces, such as `--helper-threads 0`, to compare settings),
//! `OCIDISK_BIN` (the `ocidisk` binary; default the build's own).
//!
//! Positional arguments select cells: a cell runs if all words of one of
//! them occur in `GROUP WORKLOAD QDn qQUEUES SERVER`, e.g. `cold`,
//! `1m-seqwrite`, `"warm fio"` or `qsd-raw-uring`; the group's ocidisk
//! server runs with any selected cell, for the ratios. A full run takes
//! about 18 minutes on the two-core development VM: `warm` about 13, the
//! other groups together about 4.5.
//! Progress goes to stderr, the tables to stdout.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a quick
//! smoke run on a small image instead: every cell once, briefly, which
//! checks the harness and that all servers serve the same bytes.

use anyhow::{anyhow, bail, ensure, Context};
use ocidisk_tests::blkio_client::{ocidisk_binary, BlkioClient, ClientQueue, Op};
use ocidisk_tests::guest::{Readiness, VhostUserServer};
use ocidisk_tests::hostfs::run_tool;
use ocidisk_tests::oci_writer::{efi_image, random_bytes, ImageBuilder, OsImage, Payload};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// The command that reproduces the tables; each table adds its group.
const REPRODUCE: &str =
    "cargo build --release -p ocidisk && cargo bench -p ocidisk-tests --bench serve_io";

/// Partition names of the Monogon preset that the workloads use.
const SYSTEM_PARTITION: &str = "METROPOLIS-SYSTEM-A";
const DATA_PARTITION: &str = "METROPOLIS-NODE-DATA";

/// The most bytes one write cell writes, so that a cell stays within the
/// page cache's dirty limits instead of measuring the host's disk.
const WRITE_BUDGET: u64 = 1 << 30;

/// The `variants` group's `ocidisk serve` arguments without
/// `OCIDISK_BENCH_VARIANTS`.
const DEFAULT_VARIANTS: &str = "--poll-us 32";

/// The writes of the `flush` cell, before its FLUSH.
const FLUSH_WRITE_BLOCK: usize = MIB;
const FLUSH_WRITE_DEPTH: usize = 8;

fn main() {
    if let Err(err) = run() {
        eprintln!("serve_io: {err:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- settings

/// What one run measures.
struct Settings {
    /// Measured time per cell.
    measure: Duration,
    /// Unmeasured time before it, for warm reads (caches, thread pools).
    warmup: Duration,
    /// Measured time of a cold cell, from the first request.
    cold_measure: Duration,
    /// Whether cold cells drop the page cache (root, and not the smoke run).
    drop_caches: bool,
    /// The most bytes a write cell writes (also what it recycles first).
    write_budget: u64,
    /// What the `flush` cell writes before its FLUSH.
    flush_bytes: u64,
    /// How long the `flush` cell's reader runs alone first.
    flush_idle: Duration,
    reps: usize,
    payload_len: usize,
    queue_counts: Vec<usize>,
    /// Extra `ocidisk serve` arguments, one list per variant.
    variants: Vec<Vec<String>>,
    /// Positional arguments; a cell runs if one of them matches.
    filters: Vec<String>,
    dir: Option<PathBuf>,
    smoke: bool,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let mut bench = false;
        let mut filters = Vec::new();
        for arg in std::env::args().skip(1) {
            if arg == "--bench" {
                bench = true;
            } else if !arg.starts_with('-') {
                filters.push(arg);
            }
        }
        let env_num = |name: &str, default: f64| -> anyhow::Result<f64> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n > 0.0)
                    .ok_or_else(|| anyhow!("{name}={v:?} is not a positive number")),
                Err(_) => Ok(default),
            }
        };
        let dir = std::env::var_os("OCIDISK_BENCH_DIR").map(PathBuf::from);
        let variants = parse_variants(
            &std::env::var("OCIDISK_BENCH_VARIANTS").unwrap_or_else(|_| DEFAULT_VARIANTS.into()),
        );
        // SAFETY: geteuid takes no arguments and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !bench {
            return Ok(Settings {
                measure: Duration::from_millis(200),
                warmup: Duration::from_millis(50),
                cold_measure: Duration::from_millis(200),
                // The smoke run runs among other tests: it leaves the
                // machine's caches alone and checks the harness only.
                drop_caches: false,
                write_budget: 64 << 20,
                flush_bytes: 8 << 20,
                flush_idle: Duration::from_millis(50),
                reps: 1,
                payload_len: 16 * MIB,
                queue_counts: vec![1, 2],
                variants,
                filters,
                dir,
                smoke: true,
            });
        }
        Ok(Settings {
            measure: Duration::from_secs_f64(env_num("OCIDISK_BENCH_SECS", 3.0)?),
            warmup: Duration::from_millis(500),
            cold_measure: Duration::from_secs_f64(env_num("OCIDISK_BENCH_COLD_SECS", 1.5)?),
            drop_caches: root,
            write_budget: WRITE_BUDGET,
            flush_bytes: env_num("OCIDISK_BENCH_FLUSH_MIB", 256.0)? as u64 * MIB as u64,
            flush_idle: Duration::from_millis(500),
            reps: env_num("OCIDISK_BENCH_REPS", 3.0)? as usize,
            payload_len: env_num("OCIDISK_BENCH_PAYLOAD_MIB", 512.0)? as usize * MIB,
            queue_counts: vec![1, 2],
            variants,
            filters,
            dir,
            smoke: false,
        })
    }
}

/// `--poll-us 32;--io-engine sync` → `[["--poll-us", "32"], ["--io-engine", "sync"]]`.
fn parse_variants(spec: &str) -> Vec<Vec<String>> {
    spec.split(';')
        .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Whether a positional argument selects the cell described by `cell`: all
/// of one argument's words occur in it.
fn selected(filters: &[String], cell: &str) -> bool {
    filters.is_empty()
        || filters
            .iter()
            .any(|f| f.split_whitespace().all(|word| cell.contains(word)))
}

// ---------------------------------------------------------------- workloads

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    Read,
    Write,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pattern {
    Random,
    Sequential,
}

/// One I/O pattern.
#[derive(Clone, Copy, Debug)]
struct Workload {
    name: &'static str,
    dir: Direction,
    pattern: Pattern,
    block: usize,
    /// Requests in flight per queue.
    depth: usize,
}

const RANDREAD_QD1: Workload = Workload {
    name: "4k-randread",
    dir: Direction::Read,
    pattern: Pattern::Random,
    block: 4 * KIB,
    depth: 1,
};
const RANDREAD_QD32: Workload = Workload {
    depth: 32,
    ..RANDREAD_QD1
};
const RANDWRITE_QD32: Workload = Workload {
    name: "4k-randwrite",
    dir: Direction::Write,
    ..RANDREAD_QD32
};
const SEQREAD_QD8: Workload = Workload {
    name: "1m-seqread",
    dir: Direction::Read,
    pattern: Pattern::Sequential,
    block: MIB,
    depth: 8,
};
const SEQWRITE_QD8: Workload = Workload {
    name: "1m-seqwrite",
    dir: Direction::Write,
    ..SEQREAD_QD8
};
/// The `flush` cell's reads (its writes are `FLUSH_WRITE_*`).
const READ_DURING_FLUSH: Workload = Workload {
    name: "4k-randread-during-flush",
    ..RANDREAD_QD1
};

/// The `warm` group's workloads, each on 1 and 2 queues.
const WORKLOADS: &[Workload] = &[
    RANDREAD_QD1,
    RANDREAD_QD32,
    RANDWRITE_QD32,
    SEQREAD_QD8,
    SEQWRITE_QD8,
];

impl Workload {
    fn label(&self) -> String {
        format!("{} QD{}", self.name, self.depth)
    }
}

// ---------------------------------------------------------------- servers

/// qemu-storage-daemon's `aio=` for the raw file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Aio {
    Threads,
    IoUring,
    Native,
}

/// Who serves (or, for fio, reads) the disk in a cell.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Peer {
    /// `ocidisk serve` with these arguments besides the cell's own.
    Ocidisk(Vec<String>),
    /// ocidisk with `--metrics` on: what counting every request costs.
    OcidiskMetrics,
    QsdRaw(Aio),
    QsdQcow2,
    /// fio with io_uring on the files: the limit.
    Fio,
}

impl Peer {
    fn ocidisk() -> Peer {
        Peer::Ocidisk(Vec::new())
    }

    fn name(&self) -> String {
        match self {
            Peer::Ocidisk(args) if args.is_empty() => "ocidisk".into(),
            Peer::Ocidisk(args) => format!("ocidisk {}", args.join(" ")),
            Peer::OcidiskMetrics => "ocidisk+metrics".into(),
            Peer::QsdRaw(Aio::Threads) => "qsd-raw".into(),
            Peer::QsdRaw(Aio::IoUring) => "qsd-raw-uring".into(),
            Peer::QsdRaw(Aio::Native) => "qsd-raw-native".into(),
            Peer::QsdQcow2 => "qsd-qcow2".into(),
            Peer::Fio => "fio".into(),
        }
    }

    fn is_ocidisk(&self) -> bool {
        matches!(self, Peer::Ocidisk(_) | Peer::OcidiskMetrics)
    }
}

// ---------------------------------------------------------------- groups

/// How a group's servers and the page cache are set up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Reads from a warm page cache; buffered writes, write cache on.
    Warm,
    /// Page cache dropped before each cell; only the first seconds count.
    Cold,
    /// Write cache off: every write durable when it completes.
    WriteThrough,
    /// Reads queue 0 while queue 1 writes and then flushes.
    FlushLatency,
    /// O_DIRECT on the files.
    Direct,
}

/// One workload on some queues, against the group's peers.
struct Case {
    w: Workload,
    queues: usize,
    /// Whether each of the group's peers runs (the filters).
    runs: Vec<bool>,
}

/// Cells measured and printed together; the first peer is the reference
/// that the ratios divide.
struct Group {
    key: &'static str,
    title: &'static str,
    mode: Mode,
    peers: Vec<Peer>,
    cases: Vec<Case>,
}

/// The groups of a run: all, minus what cannot run here, minus what the
/// filters leave out.
fn groups(settings: &Settings, have_fio: bool) -> Vec<Group> {
    let ocidisk = Peer::ocidisk;
    let (threads, uring) = (Peer::QsdRaw(Aio::Threads), Peer::QsdRaw(Aio::IoUring));
    let warm_cases: Vec<(Workload, usize)> = WORKLOADS
        .iter()
        .flat_map(|w| settings.queue_counts.iter().map(move |&q| (*w, q)))
        .collect();
    let mut variants = vec![ocidisk()];
    variants.extend(settings.variants.iter().cloned().map(Peer::Ocidisk));
    let all = [
        (
            "warm",
            "Warm page cache",
            Mode::Warm,
            vec![
                ocidisk(),
                threads.clone(),
                uring.clone(),
                Peer::QsdQcow2,
                Peer::OcidiskMetrics,
                Peer::Fio,
            ],
            warm_cases,
        ),
        (
            "cold",
            "Cold page cache",
            Mode::Cold,
            vec![ocidisk(), threads.clone(), uring.clone(), Peer::Fio],
            vec![
                (RANDREAD_QD32, 1),
                (RANDREAD_QD32, 2),
                (SEQREAD_QD8, 1),
                (RANDREAD_QD1, 1),
            ],
        ),
        (
            "writethrough",
            "Write cache off (write-through)",
            Mode::WriteThrough,
            vec![ocidisk(), threads.clone(), uring.clone(), Peer::Fio],
            vec![(RANDWRITE_QD32, 1)],
        ),
        (
            "flush",
            "Read latency during a flush",
            Mode::FlushLatency,
            vec![ocidisk(), threads, uring],
            vec![(READ_DURING_FLUSH, 2)],
        ),
        (
            "direct",
            "O_DIRECT",
            Mode::Direct,
            vec![
                ocidisk(),
                Peer::QsdRaw(Aio::IoUring),
                Peer::QsdRaw(Aio::Native),
                Peer::Fio,
            ],
            vec![(RANDREAD_QD32, 1)],
        ),
        (
            "variants",
            "ocidisk variants (OCIDISK_BENCH_VARIANTS)",
            Mode::Warm,
            variants,
            vec![(RANDREAD_QD1, 1)],
        ),
    ];
    let mut out = Vec::new();
    for (key, title, mode, mut peers, cases) in all {
        if mode == Mode::Cold && !settings.drop_caches && !settings.smoke {
            eprintln!("serve_io: not root: skipping the cold cells (they drop the page cache)");
            continue;
        }
        if !have_fio {
            peers.retain(|p| *p != Peer::Fio);
        }
        if peers.len() < 2 {
            continue;
        }
        let cases: Vec<Case> = cases
            .into_iter()
            .filter_map(|(w, queues)| {
                let mut runs: Vec<bool> = peers
                    .iter()
                    .map(|p| {
                        let cell = format!("{key} {} q{queues} {}", w.label(), p.name());
                        selected(&settings.filters, &cell)
                    })
                    .collect();
                // The reference runs with any other, for the ratios.
                runs[0] |= runs.iter().any(|&r| r);
                runs[0].then_some(Case { w, queues, runs })
            })
            .collect();
        if !cases.is_empty() {
            out.push(Group {
                key,
                title,
                mode,
                peers,
                cases,
            });
        }
    }
    out
}

// ---------------------------------------------------------------- fixture

/// A byte range of the disk (or of a file).
#[derive(Clone, Copy, Debug)]
struct Region {
    start: u64,
    len: u64,
}

/// The image, its raw export and what the workloads address.
struct Fixture {
    root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    ocidisk: PathBuf,
    image: PathBuf,
    raw: PathBuf,
    blob: PathBuf,
    payload: Vec<u8>,
    disk_size: u64,
    /// Extra arguments for `ocidisk serve`.
    serve_args: Vec<String>,
    /// The system payload's bytes on the disk.
    system: Region,
    /// The data partition.
    data: Region,
}

impl Fixture {
    fn build(settings: &Settings) -> anyhow::Result<Fixture> {
        let ocidisk = ocidisk_binary()?;
        let (root, tmp) = match &settings.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let tmp = tempfile::tempdir_in(dir)?;
                (tmp.path().to_owned(), Some(tmp))
            }
            None => {
                let tmp = tempfile::tempdir()?;
                (tmp.path().to_owned(), Some(tmp))
            }
        };
        let payload = random_bytes(settings.payload_len, 0x0c1d_15c0);
        let image = root.join("image");
        let built = ImageBuilder::monogon(
            OsImage::new()
                .payload(Payload::new("kernel.efi", efi_image(4 * MIB)))
                .payload(Payload::new("system", payload.clone())),
        )
        .write(&image)
        .context("writing the benchmark image")?;
        let blob = built.layer("system").blob.real_path().to_owned();

        let raw = root.join("disk.raw");
        run_tool(
            Command::new(&ocidisk)
                .arg("export")
                .arg("--image")
                .arg(&image)
                .arg("--output")
                .arg(&raw),
        )?;
        let inspect = run_tool(
            Command::new(&ocidisk)
                .arg("inspect")
                .arg("--image")
                .arg(&image)
                .arg("--json"),
        )?;
        let report: serde_json::Value =
            serde_json::from_slice(&inspect).context("parsing ocidisk inspect --json")?;
        let partition = |name: &str| -> anyhow::Result<Region> {
            let parts = report["partitions"]
                .as_array()
                .ok_or_else(|| anyhow!("ocidisk inspect --json has no partitions"))?;
            let p = parts
                .iter()
                .find(|p| p["name"] == name)
                .ok_or_else(|| anyhow!("no partition {name} in ocidisk inspect"))?;
            let first = p["first_lba"]
                .as_u64()
                .ok_or_else(|| anyhow!("partition {name}: no first_lba"))?;
            let size = p["size"]
                .as_u64()
                .ok_or_else(|| anyhow!("partition {name}: no size"))?;
            Ok(Region {
                start: first * 512,
                len: size,
            })
        };
        let system_part = partition(SYSTEM_PARTITION)?;
        ensure!(
            system_part.len >= payload.len() as u64,
            "the system payload does not fit its partition"
        );
        let system = Region {
            start: system_part.start,
            len: payload.len() as u64 & !(MIB as u64 - 1),
        };
        let data = partition(DATA_PARTITION)?;
        ensure!(
            data.len >= settings.flush_bytes,
            "the data partition ({} MiB) is smaller than OCIDISK_BENCH_FLUSH_MIB",
            data.len >> 20
        );
        let disk_size = report["size"]
            .as_u64()
            .ok_or_else(|| anyhow!("ocidisk inspect --json has no size"))?;
        Ok(Fixture {
            root,
            _tmp: tmp,
            ocidisk,
            image,
            raw,
            blob,
            payload,
            disk_size,
            serve_args: std::env::var("OCIDISK_BENCH_SERVE_ARGS")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            system,
            data,
        })
    }

    /// Reads the blob and the raw file's system region once, so that every
    /// server reads from the page cache.
    fn warm_page_cache(&self) -> anyhow::Result<()> {
        read_range(&self.blob, 0, self.payload.len() as u64)?;
        read_range(&self.raw, self.system.start, self.payload.len() as u64)?;
        Ok(())
    }

    /// The file and range that `peer` reads the system payload from.
    fn read_source(&self, peer: &Peer) -> (&Path, Region) {
        if matches!(peer, Peer::QsdRaw(_) | Peer::QsdQcow2) {
            (&self.raw, self.system)
        } else {
            let blob = Region {
                start: 0,
                len: self.system.len,
            };
            (&self.blob, blob)
        }
    }

    /// The arguments of `ocidisk serve` for `peer` in `mode`.
    fn ocidisk_args(&self, peer: &Peer, mode: Mode, queues: usize, cell_dir: &Path) -> Vec<String> {
        let mut args = vec!["--num-queues".to_owned(), queues.to_string()];
        match mode {
            Mode::WriteThrough => args.push("--writethrough".into()),
            Mode::Direct => args.push("--direct".into()),
            Mode::Warm | Mode::Cold | Mode::FlushLatency => {}
        }
        match peer {
            Peer::Ocidisk(extra) => args.extend(extra.iter().cloned()),
            Peer::OcidiskMetrics => {
                args.push("--metrics".into());
                args.push(cell_dir.join("metrics.sock").display().to_string());
            }
            _ => {}
        }
        args.extend(self.serve_args.iter().cloned());
        args
    }

    /// Starts `peer` with `queues` queues for one cell, in `cell_dir`
    /// (overlays and qcow2 files live there).
    fn start(
        &self,
        peer: &Peer,
        mode: Mode,
        queues: usize,
        cell_dir: &Path,
    ) -> anyhow::Result<VhostUserServer> {
        let socket = cell_dir.join("sock");
        let writethrough = mode == Mode::WriteThrough;
        let server = match peer {
            Peer::Ocidisk(_) | Peer::OcidiskMetrics => {
                let args = self.ocidisk_args(peer, mode, queues, cell_dir);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                VhostUserServer::ocidisk_serve(
                    &self.ocidisk,
                    &self.image,
                    &cell_dir.join("overlay"),
                    &socket,
                    &args,
                    cell_dir,
                )?
            }
            Peer::QsdRaw(aio) => {
                punch_hole(&self.raw, self.data)?;
                let (aio, direct) = match aio {
                    Aio::Threads => ("threads", mode == Mode::Direct),
                    Aio::IoUring => ("io_uring", mode == Mode::Direct),
                    // QEMU refuses Linux AIO on the page cache.
                    Aio::Native => ("native", true),
                };
                let blockdev = format!(
                    "driver=file,node-name=f,filename={},cache.direct={},aio={aio}",
                    qemu_escape(&self.raw),
                    on_off(direct)
                );
                qsd(&blockdev, "f", &socket, queues, writethrough, cell_dir)?
            }
            Peer::QsdQcow2 => {
                let qcow2 = cell_dir.join("node.qcow2");
                run_tool(
                    Command::new("qemu-img")
                        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                        .arg(&self.raw)
                        .arg(&qcow2),
                )?;
                let blockdev = format!(
                    "driver=qcow2,node-name=q,file.driver=file,file.filename={},\
                     file.cache.direct={},file.aio=threads",
                    qemu_escape(&qcow2),
                    on_off(mode == Mode::Direct)
                );
                qsd(&blockdev, "q", &socket, queues, writethrough, cell_dir)?
            }
            Peer::Fio => bail!("fio is not a server"),
        };
        Ok(server)
    }

    /// Checks that a server serves the disk: its size and some of the
    /// system payload's blocks.
    fn check_contents(&self, client: &mut BlkioClient) -> anyhow::Result<()> {
        ensure!(
            client.capacity() == self.disk_size,
            "capacity {} is not the composed disk's {}",
            client.capacity(),
            self.disk_size
        );
        let blocks = self.system.len / 4096;
        for i in [0, 1, blocks / 3, blocks - 1] {
            let got = client.queue().read(self.system.start + i * 4096, 4096)?;
            let at = (i * 4096) as usize;
            ensure!(
                got == self.payload[at..at + 4096],
                "block {i} of the system payload reads back wrong"
            );
        }
        Ok(())
    }
}

/// Starts qemu-storage-daemon exporting `node` of `blockdev`.
fn qsd(
    blockdev: &str,
    node: &str,
    socket: &Path,
    queues: usize,
    writethrough: bool,
    dir: &Path,
) -> anyhow::Result<VhostUserServer> {
    let pidfile = dir.join("qsd.pid");
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--blockdev")
        .arg(blockdev)
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e,node-name={node},addr.type=unix,addr.path={},\
             writable=on,num-queues={queues},writethrough={}",
            qemu_escape(socket),
            on_off(writethrough)
        ))
        .arg("--pidfile")
        .arg(&pidfile);
    Ok(VhostUserServer::spawn(
        "qemu-storage-daemon",
        cmd,
        socket,
        Readiness::FileExists(pidfile),
        &dir.join("server.log"),
    )?)
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// A path inside a QEMU option string, with its commas doubled.
fn qemu_escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// Whether `ocidisk serve` refused its command line: clap's messages for a
/// flag or value that this build does not know (yet).
fn refused_arguments(err: &str) -> bool {
    err.contains("unexpected argument") || err.contains("invalid value")
}

/// Whether process `pid` holds an io_uring, which qemu-storage-daemon sets
/// up (lazily) only if `aio=io_uring` really is in use.
fn holds_io_uring(pid: u32) -> anyhow::Result<bool> {
    let dir = format!("/proc/{pid}/fd");
    for fd in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // A descriptor closed while listing does not matter.
        let Ok(target) = std::fs::read_link(fd?.path()) else {
            continue;
        };
        if target.to_string_lossy().contains("io_uring") {
            return Ok(true);
        }
    }
    Ok(false)
}

// ---------------------------------------------------------------- page cache

/// Reads `len` bytes of `path` at `offset` and throws them away.
fn read_range(path: &Path, offset: u64, len: u64) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    let copied = std::io::copy(&mut f.take(len), &mut std::io::sink())
        .with_context(|| format!("reading {}", path.display()))?;
    ensure!(copied == len, "{} is shorter than expected", path.display());
    Ok(())
}

/// Writes back and drops the whole page cache, so that a cold cell reads
/// from the disk.
fn drop_page_cache() -> anyhow::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("writing /proc/sys/vm/drop_caches (the cold cells need root)")
}

/// The fraction of `region` of `path` in the page cache, from mincore(2)
/// on a mapping of it that is never touched.
fn cached_fraction(path: &Path, region: Region) -> anyhow::Result<f64> {
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let start = region.start / page * page;
    let len = (region.start + region.len - start) as usize;
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a new read-only mapping of an open file, which nothing
    // dereferences; unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            start as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mapping {}", path.display()));
    }
    let mut resident = vec![0u8; len.div_ceil(page as usize)];
    // SAFETY: `addr` and `len` are the mapping above; `resident` has a byte
    // for each of its pages.
    let rc = unsafe { libc::mincore(addr, len, resident.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmaps the mapping made above, which nothing else uses.
    unsafe { libc::munmap(addr, len) };
    if rc != 0 {
        return Err(err).with_context(|| format!("mincore on {}", path.display()));
    }
    let cached = resident.iter().filter(|&&b| b & 1 != 0).count();
    Ok(cached as f64 / resident.len() as f64)
}

/// Writes `len` bytes to a scratch file and deletes it, so that the next
/// `len` bytes of page cache come from memory this kernel freed a moment
/// ago. On a VM that reports free memory to its host (virtio-balloon free
/// page reporting, as on the development machine), memory idle for a while
/// is handed back, and the first writer to touch it again pays for the
/// host's page faults: a server writing 1 MiB requests into fresh memory
/// ran at a fifth of its speed into recycled memory. qemu-storage-daemon's
/// raw file gets recycled memory anyway (its region is punched before each
/// cell), so without this the write cells compared memory, not servers.
fn recycle_page_cache(dir: &Path, len: u64) -> anyhow::Result<()> {
    let path = dir.join("recycle.tmp");
    let chunk = vec![0x5au8; MIB];
    let mut f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    for _ in 0..len.div_ceil(MIB as u64) {
        f.write_all(&chunk)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(f);
    // Its dirty pages are dropped, not written back.
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// Deallocates `region` of `path`, so that raw writes start from the same
/// (unallocated) state in every cell, as overlays and qcow2 files do.
fn punch_hole(path: &Path, region: Region) -> anyhow::Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: fallocate on an open descriptor; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            region.start as libc::off_t,
            region.len as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("punching a hole in {}", path.display()));
    }
    Ok(())
}

// ---------------------------------------------------------------- a cell

/// What one cell measured.
#[derive(Clone, Debug)]
struct Sample {
    iops: f64,
    mbps: f64,
    p50_us: f64,
    p99_us: f64,
    /// The server's CPU time per request (all its threads, user and
    /// system), in µs: what a request costs whatever the scheduling. NaN
    /// where not measured.
    cpu_us: f64,
    /// Whether the measurement ended before its time because every block of
    /// the region had been read (cold cells).
    ran_out: bool,
    /// The `flush` cell's figures.
    flush: Option<FlushStats>,
}

/// What the `flush` cell measured besides the reads during the flush
/// (which are the sample's p50 and p99).
#[derive(Clone, Copy, Debug)]
struct FlushStats {
    idle_p50_us: f64,
    idle_p99_us: f64,
    writing_p50_us: f64,
    writing_p99_us: f64,
    flushing_max_us: f64,
    /// Reads in flight at some time during the flush.
    flushing_reads: f64,
    flush_ms: f64,
    write_mbps: f64,
}

/// One cell: a workload on some queues against one peer, in a group's mode.
struct CellSpec<'a> {
    mode: Mode,
    peer: &'a Peer,
    w: Workload,
    queues: usize,
    /// Numbers the cell's directory and seeds its offsets.
    index: usize,
    dir: PathBuf,
}

/// Where and how long a cell's queues do I/O.
struct Plan {
    region: Region,
    warmup: Duration,
    measure: Duration,
    /// The most bytes one queue submits (`u64::MAX`: no limit).
    budget: u64,
    /// Each queue covers its own share of the region, each block at most
    /// once (cold reads: no read may hit what an earlier one cached).
    once: bool,
}

impl Plan {
    fn new(spec: &CellSpec, fixture: &Fixture, settings: &Settings) -> Plan {
        let queues = spec.queues as u64;
        match (spec.w.dir, spec.mode) {
            (Direction::Write, _) => Plan {
                region: fixture.data,
                warmup: Duration::ZERO,
                measure: settings.measure,
                budget: settings.write_budget / queues,
                once: false,
            },
            (Direction::Read, Mode::Cold) => Plan {
                region: fixture.system,
                warmup: Duration::ZERO,
                measure: settings.cold_measure,
                budget: share_len(fixture.system.len, spec.queues, spec.w.block),
                once: true,
            },
            (Direction::Read, _) => Plan {
                region: fixture.system,
                warmup: settings.warmup,
                measure: settings.measure,
                budget: u64::MAX,
                once: false,
            },
        }
    }
}

/// The bytes of a region of `len` that each of `queues` gets, in whole
/// blocks.
fn share_len(len: u64, queues: usize, block: usize) -> u64 {
    (len / queues as u64) / block as u64 * block as u64
}

/// The CPU time of all threads of process `pid` so far, from each thread's
/// `schedstat` (nanoseconds on a CPU). A thread that exits between two
/// readings takes its time with it; the servers' threads live as long as
/// the connection.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may exit between listing and reading: it counts no more.
        let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("unexpected schedstat {stat:?}"))?;
    }
    Ok(Duration::from_nanos(ns))
}

/// What one queue's thread measured.
struct QueueResult {
    ops: u64,
    elapsed: Duration,
    latencies_ns: Vec<u64>,
    ran_out: bool,
}

/// Where a queue's requests go.
struct Target {
    region: Region,
    pattern: Pattern,
    block: u64,
    next: u64,
    rng: fastrand::Rng,
    /// Block numbers in the order to read them, for a region covered once.
    order: Option<Vec<u32>>,
}

impl Target {
    fn new(
        whole: Region,
        w: &Workload,
        queue: usize,
        queues: usize,
        seed: u64,
        once: bool,
    ) -> Target {
        let block = w.block as u64;
        let region = if w.pattern == Pattern::Random && !once {
            // Every queue roams the whole region.
            whole
        } else {
            // Each queue streams through its own share.
            let share = share_len(whole.len, queues, w.block);
            Region {
                start: whole.start + share * queue as u64,
                len: share,
            }
        };
        let mut rng = fastrand::Rng::with_seed(seed);
        let order = (once && w.pattern == Pattern::Random).then(|| {
            // Fisher–Yates: random order, no block twice.
            let mut order: Vec<u32> = (0..(region.len / block) as u32).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.usize(..=i));
            }
            order
        });
        Target {
            region,
            pattern: w.pattern,
            block,
            next: 0,
            rng,
            order,
        }
    }

    fn offset(&mut self) -> u64 {
        let blocks = self.region.len / self.block;
        let i = match (&self.order, self.pattern) {
            (Some(order), _) => {
                let i = order[(self.next % blocks) as usize];
                self.next += 1;
                u64::from(i)
            }
            (None, Pattern::Random) => self.rng.u64(..blocks),
            (None, Pattern::Sequential) => {
                let i = self.next;
                self.next = (self.next + 1) % blocks;
                i
            }
        };
        self.region.start + i * self.block
    }
}

/// Drives one queue: keeps `depth` requests in flight until `deadline` (or
/// until `budget` bytes are submitted), counting those submitted after
/// `measure_from` and completed by `deadline`.
fn drive_queue(
    q: &mut ClientQueue,
    w: &Workload,
    mut target: Target,
    measure_from: Instant,
    deadline: Instant,
    budget: u64,
) -> anyhow::Result<QueueResult> {
    let block = w.block;
    let mut submitted_at = vec![measure_from; w.depth];
    let mut latencies_ns = Vec::with_capacity(1 << 20);
    let mut ops = 0u64;
    let mut submitted_bytes = 0u64;
    let mut last_done = measure_from;
    let mut submit = |q: &mut ClientQueue, slot: usize, at: &mut [Instant]| {
        let offset = target.offset();
        let buf = slot * block;
        let op = match w.dir {
            Direction::Read => Op::Read {
                offset,
                buf,
                len: block,
            },
            Direction::Write => Op::Write {
                offset,
                buf,
                len: block,
            },
        };
        at[slot] = Instant::now();
        q.submit(op, slot);
    };
    for slot in 0..w.depth {
        submit(q, slot, &mut submitted_at);
        submitted_bytes += block as u64;
    }
    let mut done = Vec::with_capacity(w.depth);
    while q.in_flight() > 0 {
        done.clear();
        q.reap(1, &mut done)?;
        let now = Instant::now();
        for (slot, result) in done.drain(..) {
            result.with_context(|| format!("{} request failed", w.name))?;
            let started = submitted_at
                .get(slot)
                .copied()
                .ok_or_else(|| anyhow!("completion for unknown slot {slot}"))?;
            if started >= measure_from && now <= deadline {
                ops += 1;
                latencies_ns.push(now.duration_since(started).as_nanos() as u64);
                last_done = now;
            }
            if now < deadline && submitted_bytes < budget {
                submit(q, slot, &mut submitted_at);
                submitted_bytes += block as u64;
            }
        }
    }
    // A budget that ran out early ends the measurement at the last request.
    let ran_out = submitted_bytes >= budget && last_done < deadline;
    let end = if ran_out { last_done } else { deadline };
    Ok(QueueResult {
        ops,
        elapsed: end.saturating_duration_since(measure_from),
        latencies_ns,
        ran_out,
    })
}

/// The 50th and 99th percentile of `ns`, in µs (NaN if empty).
fn percentiles_us(mut ns: Vec<u64>) -> (f64, f64) {
    if ns.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    ns.sort_unstable();
    let pct = |p: usize| ns[(ns.len() * p / 100).min(ns.len() - 1)] as f64 / 1e3;
    (pct(50), pct(99))
}

/// Runs `w` over `client`'s queues as `plan` says, one thread each.
fn run_cell(
    client: &mut BlkioClient,
    w: &Workload,
    plan: &Plan,
    seed: u64,
    server_pid: u32,
) -> anyhow::Result<Sample> {
    let queues = client.queues.len();
    let barrier = Barrier::new(queues + 1);
    let mut server_cpu = Duration::ZERO;
    let results: Vec<anyhow::Result<QueueResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = client
            .queues
            .iter_mut()
            .enumerate()
            .map(|(i, q)| {
                let barrier = &barrier;
                let queue_seed = seed ^ (i as u64 + 1) << 32;
                let target = Target::new(plan.region, w, i, queues, queue_seed, plan.once);
                s.spawn(move || {
                    let write_data = random_bytes(w.depth * w.block, seed ^ i as u64);
                    q.buf()[..write_data.len()].copy_from_slice(&write_data);
                    barrier.wait();
                    let start = Instant::now();
                    let measure_from = start + plan.warmup;
                    let deadline = measure_from + plan.measure;
                    drive_queue(q, w, target, measure_from, deadline, plan.budget)
                })
            })
            .collect();
        barrier.wait();
        // The server's CPU time over the measured window, which the client
        // threads share (they start at the barrier too).
        let start = Instant::now();
        std::thread::sleep(plan.warmup);
        let before = cpu_time(server_pid);
        std::thread::sleep(
            (start + plan.warmup + plan.measure).saturating_duration_since(Instant::now()),
        );
        if let (Ok(before), Ok(after)) = (before, cpu_time(server_pid)) {
            server_cpu = after.saturating_sub(before);
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a client thread panicked")))
            })
            .collect()
    });
    let mut iops = 0.0;
    let mut ops = 0;
    let mut ran_out = false;
    let mut latencies = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        let r = r?;
        ops += r.ops;
        if r.ops == 0 || r.elapsed.is_zero() {
            // Slow, not broken (a hung server fails the client's request
            // timeout): qemu-storage-daemon with aio=io_uring has held a
            // queue's 1 MiB reads for longer than the smoke run's 150 ms
            // window, and write-through ocidisk completed none of 32 writes
            // in 200 ms. The cell counts the queue as doing no I/O.
            eprintln!(
                "serve_io: warning: queue {i} completed no request in the measured {:?}",
                plan.measure
            );
            continue;
        }
        iops += r.ops as f64 / r.elapsed.as_secs_f64();
        // Write budgets end cells early too, by design; only a cold read
        // running out of data means the payload was too small.
        ran_out |= r.ran_out && plan.once;
        latencies.extend_from_slice(&r.latencies_ns);
    }
    if ops == 0 {
        eprintln!("serve_io: warning: no request completed in the measured window");
    }
    let (p50_us, p99_us) = percentiles_us(latencies);
    Ok(Sample {
        iops,
        mbps: iops * w.block as f64 / 1e6,
        p50_us,
        p99_us,
        cpu_us: server_cpu.as_secs_f64() * 1e6 / ops as f64,
        ran_out,
        flush: None,
    })
}

// ---------------------------------------------------------------- the flush cell

/// When the `flush` cell's writer started writing, sent its FLUSH and saw
/// it complete.
struct FlushTimeline {
    writes_from: Instant,
    flush_from: Instant,
    flush_done: Instant,
}

/// A read of the `flush` cell: when it was submitted and how long it took.
type TimedRead = (Instant, Duration);

/// Queue 0 reads 4 KiB blocks of the system payload at random, one at a
/// time, while queue 1 (after `flush_idle`) writes `flush_bytes` to the data
/// partition and flushes: how much a flush of that much dirty data delays
/// reads, which a guest sees as stalls.
fn run_flush_cell(
    client: &mut BlkioClient,
    fixture: &Fixture,
    settings: &Settings,
    seed: u64,
) -> anyhow::Result<Sample> {
    let [reader_q, writer_q] = client.queues.as_mut_slice() else {
        bail!("the flush cell needs exactly 2 queues");
    };
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (reads, timeline) = std::thread::scope(|s| {
        let stop = &stop;
        let reader = s.spawn(move || read_until(reader_q, fixture.system, seed, stop));
        let timeline = write_then_flush(writer_q, fixture.data, settings, seed);
        // Also when the writer failed: the reader would read forever.
        stop.store(true, Ordering::Relaxed);
        let reads = reader
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the reader thread panicked")));
        (reads, timeline)
    });
    let (reads, t) = (reads?, timeline?);
    // Reads in flight at any time of [from, to).
    let during = |from: Instant, to: Instant| -> Vec<u64> {
        reads
            .iter()
            .filter(|(at, took)| *at < to && *at + *took >= from)
            .map(|(_, took)| took.as_nanos() as u64)
            .collect()
    };
    let idle = during(started, t.writes_from);
    let writing = during(t.writes_from, t.flush_from);
    let flushing = during(t.flush_from, t.flush_done);
    let flushing_max_us = flushing.iter().copied().max().unwrap_or(0) as f64 / 1e3;
    let flushing_reads = flushing.len() as f64;
    let (idle_p50_us, idle_p99_us) = percentiles_us(idle);
    let (writing_p50_us, writing_p99_us) = percentiles_us(writing);
    let (p50_us, p99_us) = percentiles_us(flushing);
    let iops = reads.len() as f64 / started.elapsed().as_secs_f64();
    let writing_secs = t.flush_from.duration_since(t.writes_from).as_secs_f64();
    Ok(Sample {
        iops,
        mbps: iops * READ_DURING_FLUSH.block as f64 / 1e6,
        p50_us,
        p99_us,
        cpu_us: f64::NAN,
        ran_out: false,
        flush: Some(FlushStats {
            idle_p50_us,
            idle_p99_us,
            writing_p50_us,
            writing_p99_us,
            flushing_max_us,
            flushing_reads,
            flush_ms: t.flush_done.duration_since(t.flush_from).as_secs_f64() * 1e3,
            write_mbps: settings.flush_bytes as f64 / writing_secs / 1e6,
        }),
    })
}

/// Reads random 4 KiB blocks of `region` at QD1 until `stop`.
fn read_until(
    q: &mut ClientQueue,
    region: Region,
    seed: u64,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<TimedRead>> {
    let block = READ_DURING_FLUSH.block;
    let blocks = region.len / block as u64;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut reads = Vec::with_capacity(1 << 20);
    while !stop.load(Ordering::Relaxed) {
        let offset = region.start + rng.u64(..blocks) * block as u64;
        let at = Instant::now();
        q.run(Op::Read {
            offset,
            buf: 0,
            len: block,
        })
        .context("a read of the flush cell")?;
        reads.push((at, at.elapsed()));
    }
    Ok(reads)
}

/// Waits `settings.flush_idle`, writes `settings.flush_bytes` to the start
/// of `region` in 1 MiB writes at QD8, then flushes.
fn write_then_flush(
    q: &mut ClientQueue,
    region: Region,
    settings: &Settings,
    seed: u64,
) -> anyhow::Result<FlushTimeline> {
    let block = FLUSH_WRITE_BLOCK;
    let data = random_bytes(FLUSH_WRITE_DEPTH * block, seed);
    q.buf()[..data.len()].copy_from_slice(&data);
    let count = settings.flush_bytes / block as u64;
    let submit = |q: &mut ClientQueue, i: u64, slot: usize| {
        q.submit(
            Op::Write {
                offset: region.start + i * block as u64,
                buf: slot * block,
                len: block,
            },
            slot,
        )
    };
    std::thread::sleep(settings.flush_idle);
    let writes_from = Instant::now();
    let mut next = 0;
    while next < count.min(FLUSH_WRITE_DEPTH as u64) {
        submit(q, next, next as usize);
        next += 1;
    }
    let mut done = Vec::with_capacity(FLUSH_WRITE_DEPTH);
    while q.in_flight() > 0 {
        done.clear();
        q.reap(1, &mut done)?;
        for (slot, result) in done.drain(..) {
            result.context("a write of the flush cell")?;
            if next < count {
                submit(q, next, slot);
                next += 1;
            }
        }
    }
    let flush_from = Instant::now();
    q.flush().context("the flush cell's FLUSH")?;
    Ok(FlushTimeline {
        writes_from,
        flush_from,
        flush_done: Instant::now(),
    })
}

// ---------------------------------------------------------------- fio

/// What fio reported for one cell.
struct FioResult {
    iops: f64,
    bytes_per_sec: f64,
    p50_ns: f64,
    p99_ns: f64,
    total_ios: u64,
}

/// fio's arguments for the cell, on `file` (the region starts at its
/// offset 0), as close to what the client does as fio allows.
fn fio_args(spec: &CellSpec, plan: &Plan, file: &Path) -> Vec<String> {
    let w = &spec.w;
    let rw = match (w.dir, w.pattern) {
        (Direction::Read, Pattern::Random) => "randread",
        (Direction::Read, Pattern::Sequential) => "read",
        (Direction::Write, Pattern::Random) => "randwrite",
        (Direction::Write, Pattern::Sequential) => "write",
    };
    let mut args: Vec<String> = [
        "--name=limit",
        "--output-format=json",
        // Jobs as threads of one process, whose CPU time wait4 reports.
        "--thread",
        "--group_reporting",
        "--ioengine=io_uring",
        // fio would otherwise drop the file's cached pages first.
        "--invalidate=0",
        "--randrepeat=0",
        // A sparse scratch file, as a fresh overlay is.
        "--fallocate=none",
        "--lat_percentiles=1",
        "--percentile_list=50:99",
    ]
    .map(String::from)
    .into();
    args.extend([
        format!(
            "--filename={}",
            file.display().to_string().replace(':', "\\:")
        ),
        format!("--rw={rw}"),
        format!("--bs={}", w.block),
        format!("--iodepth={}", w.depth),
        format!("--numjobs={}", spec.queues),
        format!("--runtime={}ms", plan.measure.as_millis().max(1)),
    ]);
    // Each job its own share where each client queue has its own.
    if plan.once || w.pattern == Pattern::Sequential {
        let share = share_len(plan.region.len, spec.queues, w.block);
        args.push(format!("--size={share}"));
        args.push(format!("--offset_increment={share}"));
    } else {
        args.push(format!("--size={}", plan.region.len));
    }
    if plan.budget == u64::MAX {
        args.push("--time_based".into());
    } else if !plan.once {
        args.push(format!("--io_size={}", plan.budget));
    }
    match spec.mode {
        Mode::WriteThrough => args.push("--fdatasync=1".into()),
        Mode::Direct => args.push("--direct=1".into()),
        Mode::Warm | Mode::Cold | Mode::FlushLatency => {}
    }
    args
}

/// Runs fio for the cell: the blob for reads, a new sparse scratch file
/// as large as the data partition for writes.
fn run_fio(fixture: &Fixture, spec: &CellSpec, plan: &Plan) -> anyhow::Result<Sample> {
    let file = match spec.w.dir {
        Direction::Read => fixture.blob.clone(),
        Direction::Write => {
            let scratch = spec.dir.join("fio.scratch");
            File::create(&scratch)
                .and_then(|f| f.set_len(plan.region.len))
                .with_context(|| format!("creating {}", scratch.display()))?;
            scratch
        }
    };
    let json = spec.dir.join("fio.json");
    let log_path = spec.dir.join("fio.log");
    let log = File::create(&log_path)?;
    let mut cmd = Command::new("fio");
    cmd.args(fio_args(spec, plan, &file))
        .arg(format!("--output={}", json.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let (status, cpu) = run_measuring_cpu(&mut cmd, plan.measure + Duration::from_secs(60))?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    ensure!(status.success(), "fio exited with {status}:\n{log}");
    let report = std::fs::read(&json).with_context(|| format!("reading {}", json.display()))?;
    let r = parse_fio(&report, spec.w.dir).with_context(|| format!("fio's log:\n{log}"))?;
    ensure!(r.total_ios > 0, "fio completed no request:\n{log}");
    // A job reading its share once stops at its end, as a client queue
    // does: the cell ran out if the jobs read (nearly) all of the region.
    let read_all = r.total_ios * spec.w.block as u64 >= plan.region.len * 99 / 100;
    Ok(Sample {
        iops: r.iops,
        mbps: r.bytes_per_sec / 1e6,
        p50_us: r.p50_ns / 1e3,
        p99_us: r.p99_ns / 1e3,
        cpu_us: cpu.as_secs_f64() * 1e6 / r.total_ios as f64,
        ran_out: plan.once && read_all,
        flush: None,
    })
}

/// Reads fio's `--output-format=json` report for one group of jobs.
fn parse_fio(report: &[u8], dir: Direction) -> anyhow::Result<FioResult> {
    // fio may print notes before the JSON.
    let from = report
        .iter()
        .position(|&b| b == b'{')
        .ok_or_else(|| anyhow!("fio wrote no JSON"))?;
    let report: serde_json::Value =
        serde_json::from_slice(&report[from..]).context("parsing fio's JSON")?;
    let job = &report["jobs"][0];
    ensure!(job.is_object(), "fio's JSON has no job");
    let error = job["error"].as_i64().unwrap_or(0);
    ensure!(error == 0, "fio reports error {error}");
    let side = &job[match dir {
        Direction::Read => "read",
        Direction::Write => "write",
    }];
    let num = |v: &serde_json::Value, what: &str| {
        v.as_f64()
            .ok_or_else(|| anyhow!("fio's JSON has no {what}"))
    };
    let pct = &side["lat_ns"]["percentile"];
    Ok(FioResult {
        iops: num(&side["iops"], "iops")?,
        bytes_per_sec: num(&side["bw_bytes"], "bw_bytes")?,
        p50_ns: num(&pct["50.000000"], "50th percentile")?,
        p99_ns: num(&pct["99.000000"], "99th percentile")?,
        total_ios: side["total_ios"]
            .as_u64()
            .ok_or_else(|| anyhow!("fio's JSON has no total_ios"))?,
    })
}

/// Runs `cmd` to its end (killing it after `timeout`) and returns its exit
/// status and the CPU time (user and system) its threads spent besides
/// the main one: wait4(2) reports all of them, io_uring workers included,
/// and the main thread's own time (fio: parsing and setting up, about
/// 150 ms, as much as a short cell's I/O) is read from its `schedstat` as
/// late as possible and taken off.
fn run_measuring_cpu(
    cmd: &mut Command,
    timeout: Duration,
) -> anyhow::Result<(ExitStatus, Duration)> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {program} (installed by .ci/install-deps)"))?;
    let pid = child.id() as libc::pid_t;
    let main_thread = format!("/proc/{pid}/task/{pid}/schedstat");
    let mut main_cpu = Duration::ZERO;
    let started = Instant::now();
    let mut killed = false;
    loop {
        // Before wait4: once reaped, the thread's figures are gone.
        if let Some(ns) = std::fs::read_to_string(&main_thread)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
        {
            main_cpu = Duration::from_nanos(ns);
        }
        let mut status = 0;
        // SAFETY: rusage is plain data; all zeros is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child, which `child` never waits for
        // (it is only killed, before it is reaped); valid out-pointers.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == pid {
            ensure!(!killed, "{program} did not finish within {timeout:?}");
            let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
            let cpu = time(usage.ru_utime) + time(usage.ru_stime);
            return Ok((ExitStatus::from_raw(status), cpu.saturating_sub(main_cpu)));
        }
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("waiting for {program}"));
            }
        }
        if !killed && started.elapsed() > timeout {
            let _ = child.kill();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------- measuring

/// What came of one cell.
enum Outcome {
    Measured(Sample),
    /// The peer cannot run here (an `ocidisk serve` flag this build lacks).
    Unsupported(String),
}

/// One cell end to end: the page cache as the mode wants it, a fresh server
/// (or fio), a client, the workload.
fn measure(fixture: &Fixture, settings: &Settings, spec: &CellSpec) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(&spec.dir)
        .with_context(|| format!("creating {}", spec.dir.display()))?;
    prepare_page_cache(fixture, settings, spec)?;
    let plan = Plan::new(spec, fixture, settings);
    let outcome = match spec.peer {
        Peer::Fio => Outcome::Measured(
            run_fio(fixture, spec, &plan).with_context(|| format!("fio {}", spec.w.label()))?,
        ),
        _ => measure_server(fixture, settings, spec, &plan)?,
    };
    // Dirty pages of deleted files are dropped, not written back.
    std::fs::remove_dir_all(&spec.dir)
        .with_context(|| format!("removing {}", spec.dir.display()))?;
    Ok(outcome)
}

/// Sets the page cache up for the cell: no writeback pending and recycled
/// memory before writes, nothing cached before cold reads.
fn prepare_page_cache(
    fixture: &Fixture,
    settings: &Settings,
    spec: &CellSpec,
) -> anyhow::Result<()> {
    let writes = match (spec.mode, spec.w.dir) {
        (Mode::FlushLatency, _) => Some(settings.flush_bytes),
        (_, Direction::Write) => Some(settings.write_budget),
        (_, Direction::Read) => None,
    };
    if let Some(len) = writes {
        // Every write cell starts with no writeback pending, whoever wrote
        // last.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        recycle_page_cache(&fixture.root, len)?;
    }
    if spec.mode == Mode::Cold && settings.drop_caches {
        drop_page_cache()?;
    }
    Ok(())
}

/// One cell against a server.
fn measure_server(
    fixture: &Fixture,
    settings: &Settings,
    spec: &CellSpec,
    plan: &Plan,
) -> anyhow::Result<Outcome> {
    let peer = spec.peer;
    let server = match fixture.start(peer, spec.mode, spec.queues, &spec.dir) {
        Ok(server) => server,
        Err(err) if peer.is_ocidisk() && refused_arguments(&format!("{err:#}")) => {
            let err = format!("{err:#}");
            let why = err
                .lines()
                .find(|l| refused_arguments(l))
                .unwrap_or_default()
                .trim();
            let args = fixture.ocidisk_args(peer, spec.mode, spec.queues, &spec.dir);
            return Ok(Outcome::Unsupported(format!(
                "`ocidisk serve {}` refused its arguments: {why}",
                args.join(" ")
            )));
        }
        Err(err) => return Err(err.context(format!("starting {}", peer.name()))),
    };
    let flush_cell = spec.mode == Mode::FlushLatency;
    let buf_len = if flush_cell {
        FLUSH_WRITE_DEPTH * FLUSH_WRITE_BLOCK
    } else {
        spec.w.depth * spec.w.block
    }
    .next_multiple_of(2 * MIB);
    let pid = server
        .pid()
        .ok_or_else(|| anyhow!("{} exited at once", peer.name()))?;
    let seed = spec.index as u64;
    let sample = (|| {
        let mut client = BlkioClient::connect(server.socket(), spec.queues, buf_len)?;
        fixture.check_contents(&mut client)?;
        check_mode(fixture, settings, spec, &client)?;
        let sample = if flush_cell {
            run_flush_cell(&mut client, fixture, settings, seed)?
        } else {
            run_cell(&mut client, &spec.w, plan, seed, pid)?
        };
        if *peer == Peer::QsdRaw(Aio::IoUring) {
            ensure!(
                holds_io_uring(pid)?,
                "qemu-storage-daemon with aio=io_uring holds no io_uring after the cell"
            );
        }
        Ok(sample)
    })();
    let log = server.log();
    let status = if spec.w.dir == Direction::Write || flush_cell {
        // A clean stop flushes (fsyncs) up to a gigabyte of writes to the
        // host's disk, which would slow the next cells down; the files are
        // thrown away anyway, so the server is killed instead.
        drop(server);
        // The raw file outlives the cell: drop its dirty pages now, or
        // their writeback would throttle whichever server writes next
        // (the qcow2 and overlay files go with the cell's directory).
        if matches!(peer, Peer::QsdRaw(_)) {
            punch_hole(&fixture.raw, fixture.data)?;
        }
        None
    } else {
        Some(server.stop())
    };
    let sample: anyhow::Result<Sample> = sample;
    let sample = sample
        .with_context(|| format!("{} {}: server log:\n{log}", peer.name(), spec.w.label()))?;
    if let (true, Some(status)) = (peer.is_ocidisk(), status) {
        let status = status?;
        ensure!(
            status.success(),
            "ocidisk serve exited with {status}:\n{log}"
        );
    }
    Ok(Outcome::Measured(sample))
}

/// Checks that the server runs in the cell's mode, where the client can
/// tell: write-through reported to the driver, nothing cached before a
/// cold cell (a warning: the server may have read ahead on its own).
fn check_mode(
    fixture: &Fixture,
    settings: &Settings,
    spec: &CellSpec,
    client: &BlkioClient,
) -> anyhow::Result<()> {
    match spec.mode {
        Mode::WriteThrough => ensure!(
            client.flush_needed() == Some(false),
            "{} does not report write-through to the driver (flush-needed: {:?})",
            spec.peer.name(),
            client.flush_needed()
        ),
        Mode::Cold if settings.drop_caches => {
            let (file, region) = fixture.read_source(spec.peer);
            let cached = cached_fraction(file, region)?;
            if cached > 0.01 {
                eprintln!(
                    "serve_io: warning: {:.1}% of {} cached at the start of a cold cell ({})",
                    cached * 100.0,
                    file.display(),
                    spec.peer.name()
                );
            }
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------- report

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The medians of one (case, peer) cell over repetitions.
struct Row {
    iops: f64,
    iops_min: f64,
    iops_max: f64,
    mbps: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
    ran_out: bool,
    flush: Option<FlushStats>,
}

impl Row {
    /// `None` without samples (filtered out or skipped).
    fn of(samples: &[Sample]) -> Option<Row> {
        if samples.is_empty() {
            return None;
        }
        let get = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        let iops: Vec<f64> = samples.iter().map(|s| s.iops).collect();
        let flushes: Vec<FlushStats> = samples.iter().filter_map(|s| s.flush).collect();
        let flush = (!flushes.is_empty()).then(|| {
            let get = |f: fn(&FlushStats) -> f64| median(flushes.iter().map(f).collect());
            FlushStats {
                idle_p50_us: get(|f| f.idle_p50_us),
                idle_p99_us: get(|f| f.idle_p99_us),
                writing_p50_us: get(|f| f.writing_p50_us),
                writing_p99_us: get(|f| f.writing_p99_us),
                flushing_max_us: get(|f| f.flushing_max_us),
                flushing_reads: get(|f| f.flushing_reads),
                flush_ms: get(|f| f.flush_ms),
                write_mbps: get(|f| f.write_mbps),
            }
        });
        Some(Row {
            iops_min: iops.iter().copied().fold(f64::INFINITY, f64::min),
            iops_max: iops.iter().copied().fold(0.0, f64::max),
            iops: median(iops),
            mbps: get(|s| s.mbps),
            p50: get(|s| s.p50_us),
            p99: get(|s| s.p99_us),
            cpu_us: get(|s| s.cpu_us),
            ran_out: samples.iter().any(|s| s.ran_out),
            flush,
        })
    }
}

fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        "—".to_owned()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// `a ÷ b` as a ratio cell, or a dash where either is missing.
fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".to_owned(),
    }
}

/// What a table's rows hold: `rows[case][peer]`.
type Rows = Vec<Vec<Option<Row>>>;

/// The markdown report: per group, the command, what the cells do, the
/// table and the ratios.
fn report(settings: &Settings, fixture: &Fixture, groups: &[Group], rows: &[Rows]) -> String {
    let mut out = String::new();
    for (group, rows) in groups.iter().zip(rows) {
        let _ = writeln!(out, "### {} (`{}`)\n", group.title, group.key);
        let _ = writeln!(out, "Reproduce: `{REPRODUCE} -- {}`\n", group.key);
        let _ = writeln!(out, "{}\n", legend(settings, fixture, group));
        match group.mode {
            Mode::FlushLatency => flush_tables(&mut out, group, rows),
            _ => {
                iops_table(&mut out, group, rows);
                match group.key {
                    "warm" => warm_ratios(&mut out, group, rows),
                    "variants" => variant_ratios(&mut out, group, rows),
                    _ => peer_ratios(&mut out, group, rows),
                }
            }
        }
        out.push('\n');
    }
    out
}

/// What a group's cells do, for the text above its table.
fn legend(settings: &Settings, fixture: &Fixture, group: &Group) -> String {
    let secs = settings.measure.as_secs_f64();
    let mut common = format!(
        "median of {} runs; {} MiB system payload; QD is per queue, one client thread per \
         queue (fio: one job per queue, io_uring, as threads of one process); MB/s = 10^6 B/s; \
         latency from submission to completion as the libblkio client (fio) sees it",
        settings.reps,
        fixture.payload.len() / MIB
    );
    if group.mode != Mode::FlushLatency {
        common.push_str(
            "; CPU per request: all the server's threads over the measured window (fio: its \
             threads but the main one, from start to exit, io_uring workers and submission \
             included)",
        );
    }
    let what = match group.mode {
        Mode::Warm if group.key == "variants" => format!(
            "`ocidisk serve` with each variant's extra arguments against the default; \
             {secs} s measured per cell ({} ms warm-up), warm page cache",
            settings.warmup.as_millis()
        ),
        Mode::Warm => format!(
            "{secs} s measured per cell ({} ms warm-up for reads), warm page cache",
            settings.warmup.as_millis()
        ),
        Mode::Cold => format!(
            "Page cache dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every \
             cell{}, the first {} s measured, no warm-up; each queue (fio job) reads its own \
             share of the payload, each block at most once (random reads in a shuffled \
             order); \"ran out\" marks cells that read their whole share before the time was \
             up (raise OCIDISK_BENCH_PAYLOAD_MIB)",
            if settings.drop_caches {
                ""
            } else {
                " (not in this smoke run)"
            },
            settings.cold_measure.as_secs_f64()
        ),
        Mode::WriteThrough => format!(
            "Write cache off: `ocidisk serve --writethrough`, qemu-storage-daemon \
             `writethrough=on` on the export (both checked to report write-through to the \
             driver), fio `--fdatasync=1` (an fdatasync after every write; fio counts the \
             write when it completes, before its fdatasync); {secs} s per cell"
        ),
        Mode::Direct => format!(
            "O_DIRECT: `ocidisk serve --direct`, qemu-storage-daemon `cache.direct=on` \
             (`aio=io_uring`, `aio=native`), fio `--direct=1`; {secs} s measured per cell \
             ({} ms warm-up)",
            settings.warmup.as_millis()
        ),
        Mode::FlushLatency => format!(
            "Two queues: queue 0 reads 4 KiB blocks at random, QD1, warm page cache; after \
             {} ms, queue 1 writes {} MiB to the data partition in 1 MiB writes at QD{} and \
             then sends one FLUSH. Read latency of the reads in flight while queue 1 is idle, \
             while it writes and while its flush runs",
            settings.flush_idle.as_millis(),
            settings.flush_bytes >> 20,
            FLUSH_WRITE_DEPTH
        ),
    };
    format!("{what}; {common}.")
}

/// The main table: one line per case and peer.
fn iops_table(out: &mut String, group: &Group, rows: &Rows) {
    let _ = writeln!(
        out,
        "| workload | queues | server | IOPS (min–max) | MB/s | p50 µs | p99 µs | server CPU µs/req | {} ÷ server |",
        group.peers[0].name()
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for (case, row) in group.cases.iter().zip(rows) {
        let reference = row[0].as_ref();
        for ((peer, r), runs) in group.peers.iter().zip(row).zip(&case.runs) {
            let label = case.w.label();
            let queues = case.queues;
            let name = peer.name();
            let Some(r) = r else {
                if *runs {
                    let _ = writeln!(out, "| {label} | {queues} | {name} | skipped | | | | | |");
                }
                continue;
            };
            let ratio = if peer.is_ocidisk() {
                "—".to_owned()
            } else {
                fmt_ratio(reference.map(|r| r.iops), Some(r.iops))
            };
            let _ = writeln!(
                out,
                "| {label} | {queues} | {name} | {} ({}–{}){} | {} | {} | {} | {} | {ratio} |",
                fmt_num(r.iops),
                fmt_num(r.iops_min),
                fmt_num(r.iops_max),
                if r.ran_out { ", ran out" } else { "" },
                fmt_num(r.mbps),
                fmt_num(r.p50),
                fmt_num(r.p99),
                fmt_num(r.cpu_us),
            );
        }
    }
}

/// The IOPS of `name`'s row, if it ran.
fn iops_of(group: &Group, row: &[Option<Row>], name: &str) -> Option<f64> {
    let p = group.peers.iter().position(|p| p.name() == name)?;
    row[p].as_ref().map(|r| r.iops)
}

/// ocidisk ÷ each other peer, IOPS.
fn peer_ratios(out: &mut String, group: &Group, rows: &Rows) {
    let others: Vec<String> = group.peers[1..].iter().map(Peer::name).collect();
    let _ = write!(out, "\n| workload | queues |");
    for name in &others {
        let _ = write!(out, " {} ÷ {name} |", group.peers[0].name());
    }
    let _ = writeln!(out, "\n|---|---|{}", "---|".repeat(others.len()));
    for (case, row) in group.cases.iter().zip(rows) {
        let _ = write!(out, "| {} | {} |", case.w.label(), case.queues);
        let reference = row[0].as_ref().map(|r| r.iops);
        for name in &others {
            let _ = write!(
                out,
                " {} |",
                fmt_ratio(reference, iops_of(group, row, name))
            );
        }
        out.push('\n');
    }
}

/// ocidisk ÷ each peer, the targets the warm cells are held to, and what
/// metrics cost.
fn warm_ratios(out: &mut String, group: &Group, rows: &Rows) {
    let _ = writeln!(
        out,
        "\nTargets (median IOPS ratios): reads ≥ 1.2× qsd-raw, 4 KiB random \
         writes ≥ 1.5× qsd-qcow2, nothing below 1.0× qsd-raw.\n"
    );
    let _ = writeln!(
        out,
        "| workload | queues | ocidisk ÷ qsd-raw | ÷ qsd-raw-uring | ÷ qsd-qcow2 | ÷ fio | target | met | metrics on ÷ off: IOPS | CPU/req |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for (case, row) in group.cases.iter().zip(rows) {
        let iops = |name: &str| iops_of(group, row, name);
        let ocidisk = iops("ocidisk");
        let ratio = |name: &str| match (ocidisk, iops(name)) {
            (Some(a), Some(b)) => Some(a / b),
            _ => None,
        };
        let (vs_raw, vs_qcow2) = (ratio("qsd-raw"), ratio("qsd-qcow2"));
        let (target, met) = match (case.w.dir, case.w.block) {
            (Direction::Read, _) => ("≥ 1.2× raw", vs_raw.map(|r| r >= 1.2)),
            (Direction::Write, b) if b == 4 * KIB => (
                "≥ 1.5× qcow2, ≥ 1.0× raw",
                vs_qcow2.zip(vs_raw).map(|(q, r)| q >= 1.5 && r >= 1.0),
            ),
            (Direction::Write, _) => ("≥ 1.0× raw", vs_raw.map(|r| r >= 1.0)),
        };
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let metrics = group
            .peers
            .iter()
            .position(|p| *p == Peer::OcidiskMetrics)
            .and_then(|p| row[p].as_ref());
        let (metrics_iops, metrics_cpu) = match (metrics, row[0].as_ref()) {
            (Some(m), Some(o)) => (
                format!("{:.3}", m.iops / o.iops),
                format!("{:.3}", m.cpu_us / o.cpu_us),
            ),
            _ => ("—".to_owned(), "—".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {target} | {met} | {metrics_iops} | {metrics_cpu} |",
            case.w.label(),
            case.queues,
            fmt_ratio(ocidisk, iops("qsd-raw")),
            fmt_ratio(ocidisk, iops("qsd-raw-uring")),
            fmt_ratio(ocidisk, iops("qsd-qcow2")),
            fmt_ratio(ocidisk, iops("fio")),
        );
    }
}

/// Each variant ÷ the default: IOPS, p50 latency and CPU per request.
fn variant_ratios(out: &mut String, group: &Group, rows: &Rows) {
    let _ = writeln!(
        out,
        "\n| workload | queues | variant | IOPS ÷ default | p50 ÷ default | CPU/req ÷ default |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (case, row) in group.cases.iter().zip(rows) {
        let default = row[0].as_ref();
        for (peer, r) in group.peers.iter().zip(row).skip(1) {
            let r = r.as_ref();
            let of = |f: fn(&Row) -> f64| fmt_ratio(r.map(f), default.map(f));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                case.w.label(),
                case.queues,
                peer.name(),
                of(|r| r.iops),
                of(|r| r.p50),
                of(|r| r.cpu_us),
            );
        }
    }
}

/// A `flush` cell's row and its flush figures, if it ran.
fn flush_of(r: &Option<Row>) -> Option<(&Row, FlushStats)> {
    r.as_ref().and_then(|r| Some((r, r.flush?)))
}

/// The `flush` group: read latency by phase, and ocidisk ÷ each peer.
fn flush_tables(out: &mut String, group: &Group, rows: &Rows) {
    let _ = writeln!(
        out,
        "| server | reads alone p50 / p99 µs | while writing p50 / p99 µs | while flushing p50 / p99 / max µs | reads during the flush | flush ms | write MB/s |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for row in rows {
        for (peer, r) in group.peers.iter().zip(row) {
            let Some((r, f)) = flush_of(r) else {
                let _ = writeln!(out, "| {} | skipped | | | | | |", peer.name());
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {} / {} | {} / {} | {} / {} / {} | {} | {} | {} |",
                peer.name(),
                fmt_num(f.idle_p50_us),
                fmt_num(f.idle_p99_us),
                fmt_num(f.writing_p50_us),
                fmt_num(f.writing_p99_us),
                fmt_num(r.p50),
                fmt_num(r.p99),
                fmt_num(f.flushing_max_us),
                fmt_num(f.flushing_reads),
                fmt_num(f.flush_ms),
                fmt_num(f.write_mbps),
            );
        }
        let reference = flush_of(&row[0]);
        let _ = writeln!(
            out,
            "\nocidisk ÷ peer (lower is better): read p99 while flushing, flush time.\n"
        );
        let _ = writeln!(out, "| peer | p99 while flushing | flush time |");
        let _ = writeln!(out, "|---|---|---|");
        for (peer, r) in group.peers.iter().zip(row).skip(1) {
            let r = flush_of(r);
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                peer.name(),
                fmt_ratio(reference.map(|(r, _)| r.p99), r.map(|(r, _)| r.p99)),
                fmt_ratio(
                    reference.map(|(_, f)| f.flush_ms),
                    r.map(|(_, f)| f.flush_ms)
                ),
            );
        }
    }
}

// ---------------------------------------------------------------- main

/// Whether fio can run here; says so on stderr if not.
fn have_fio() -> bool {
    match run_tool(Command::new("fio").arg("--version")) {
        Ok(_) => true,
        Err(err) => {
            eprintln!("serve_io: skipping the fio limit: {err:#} (apt-get install fio)");
            false
        }
    }
}

fn log_sample(
    rep: usize,
    settings: &Settings,
    group: &Group,
    case: &Case,
    peer: &Peer,
    s: &Sample,
) {
    let cell = format!(
        "serve_io: rep {}/{} {:<12} {:<24} q{} {:<22}",
        rep + 1,
        settings.reps,
        group.key,
        case.w.label(),
        case.queues,
        peer.name()
    );
    match s.flush {
        Some(f) => eprintln!(
            "{cell} reads p99 alone {:.1} µs, writing {:.1} µs, flushing {:.1} µs (max {:.0} µs, {} reads); flush {:.0} ms",
            f.idle_p99_us,
            f.writing_p99_us,
            s.p99_us,
            f.flushing_max_us,
            f.flushing_reads,
            f.flush_ms
        ),
        None => eprintln!(
            "{cell} {:>9.0} IOPS {:>8.1} MB/s p50 {:>7.1} µs p99 {:>8.1} µs CPU {:>6.2} µs/req{}",
            s.iops,
            s.mbps,
            s.p50_us,
            s.p99_us,
            s.cpu_us,
            if s.ran_out { " (ran out of data)" } else { "" }
        ),
    }
}

fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    for tool in ["qemu-storage-daemon", "qemu-img"] {
        run_tool(Command::new(tool).arg("--version"))
            .with_context(|| format!("{tool} is needed (installed by .ci/install-deps)"))?;
    }
    let groups = groups(&settings, have_fio());
    ensure!(!groups.is_empty(), "no cell matches the filter");
    let started = Instant::now();
    eprintln!(
        "serve_io: building a {} MiB image…",
        settings.payload_len / MIB
    );
    let fixture = Fixture::build(&settings)?;
    fixture.warm_page_cache()?;
    eprintln!(
        "serve_io: {} ready in {:.1} s ({}; system payload at {}+{}, data partition at {}+{})",
        fixture.root.display(),
        started.elapsed().as_secs_f64(),
        fixture.ocidisk.display(),
        fixture.system.start,
        fixture.system.len,
        fixture.data.start,
        fixture.data.len,
    );

    // samples[group][case][peer] over repetitions.
    let mut samples: Vec<Vec<Vec<Vec<Sample>>>> = groups
        .iter()
        .map(|g| {
            g.cases
                .iter()
                .map(|_| vec![Vec::new(); g.peers.len()])
                .collect()
        })
        .collect();
    let mut unsupported = HashSet::new();
    let mut cache_dropped = false;
    let mut cell = 0;
    for rep in 0..settings.reps {
        for (g, group) in groups.iter().enumerate() {
            // Cold cells leave the page cache cold; the warm ones fill it
            // again first.
            if group.mode == Mode::Cold {
                cache_dropped = true;
            } else if cache_dropped {
                fixture.warm_page_cache()?;
                cache_dropped = false;
            }
            for (c, case) in group.cases.iter().enumerate() {
                for (p, peer) in group.peers.iter().enumerate() {
                    // What a group refused (say `--direct`) others may take.
                    let key = (group.key, peer.name());
                    if !case.runs[p] || unsupported.contains(&key) {
                        continue;
                    }
                    let spec = CellSpec {
                        mode: group.mode,
                        peer,
                        w: case.w,
                        queues: case.queues,
                        index: cell,
                        dir: fixture.root.join(format!("cell-{cell}")),
                    };
                    cell += 1;
                    match measure(&fixture, &settings, &spec)? {
                        Outcome::Measured(s) => {
                            log_sample(rep, &settings, group, case, peer, &s);
                            samples[g][c][p].push(s);
                        }
                        Outcome::Unsupported(why) => {
                            eprintln!(
                                "serve_io: skipping {} in {} from now on: {why}",
                                peer.name(),
                                group.key
                            );
                            unsupported.insert(key);
                        }
                    }
                }
            }
        }
    }
    let rows: Vec<Rows> = samples
        .iter()
        .map(|cases| {
            cases
                .iter()
                .map(|peers| peers.iter().map(|s| Row::of(s)).collect())
                .collect()
        })
        .collect();
    if settings.smoke {
        eprintln!("serve_io: smoke run (no --bench): the figures below mean nothing");
    }
    print!("{}", report(&settings, &fixture, &groups, &rows));
    eprintln!("serve_io: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
