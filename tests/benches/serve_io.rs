//! Benchmark: `ocidisk serve` against qemu-storage-daemon, driven by libblkio.
//!
//! ```text
//! cargo build --release -p ocidisk && cargo bench -p ocidisk-tests --bench serve_io
//! ```
//!
//! One run builds a Monogon-format OCI image whose `system` payload is
//! pseudo-random bytes (512 MiB by default), exports the composed disk as a
//! raw file with `ocidisk export`, and serves the same disk three ways over
//! vhost-user-blk:
//!
//! - `ocidisk`: `ocidisk serve --image DIR --overlay FILE` (release build);
//! - `qsd-raw`: `qemu-storage-daemon` exporting the raw file;
//! - `qsd-qcow2`: `qemu-storage-daemon` exporting a qcow2 overlay backed by
//!   that raw file (what Monogon's launcher used before).
//!
//! Every cell (workload × queue count × server × repetition) gets its own
//! server process, and the write cells a fresh overlay (ocidisk: a new
//! overlay file; qcow2: a new qcow2 file; raw: the data partition's blocks
//! punched out of the raw file), so every repetition starts from the same
//! state. Repetitions interleave the servers, so that the load of other
//! processes on the machine falls on all of them alike; the table quotes
//! medians over repetitions.
//!
//! Reads hit the `system` partition's payload region (so ocidisk reads the
//! blob and the peers the raw file, both warm in the page cache, which the
//! benchmark fills first); writes go to the data partition. With two queues
//! there is one client thread per queue and the queue depth is per queue
//! (QD32 on two queues is 64 requests in flight), like fio's `numjobs`.
//! Sequential workloads give each queue its own half of the region.
//!
//! Environment: `OCIDISK_BENCH_SECS` (measured seconds per cell, default 3),
//! `OCIDISK_BENCH_REPS` (default 3), `OCIDISK_BENCH_PAYLOAD_MIB` (default
//! 512), `OCIDISK_BENCH_DIR` (where the image and disks go; default a
//! temporary directory), `OCIDISK_BENCH_SERVE_ARGS` (extra arguments for
//! every `ocidisk serve`, split at spaces, such as `--helper-threads 0`, to
//! compare settings). A positional argument keeps only the workloads
//! whose name contains it. Progress goes to stderr, the table to stdout.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a quick
//! smoke run on a small image instead: every cell once, briefly, which
//! checks the harness and that all three servers serve the same bytes.

use anyhow::{anyhow, ensure, Context};
use ocidisk_tests::blkio_client::{ocidisk_binary, BlkioClient, ClientQueue, Op};
use ocidisk_tests::guest::{Readiness, VhostUserServer};
use ocidisk_tests::hostfs::run_tool;
use ocidisk_tests::oci_writer::{efi_image, ImageBuilder, OsImage, Payload};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write as _};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// The command that reproduces the table.
const REPRODUCE: &str =
    "cargo build --release -p ocidisk && cargo bench -p ocidisk-tests --bench serve_io";

/// Partition names of the Monogon preset that the workloads use.
const SYSTEM_PARTITION: &str = "METROPOLIS-SYSTEM-A";
const DATA_PARTITION: &str = "METROPOLIS-NODE-DATA";

/// The most bytes one write cell writes, so that a cell stays within the
/// page cache's dirty limits instead of measuring the host's disk.
const WRITE_BUDGET: u64 = 1 << 30;

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
    /// Unmeasured time before it, for reads (caches, thread pools).
    warmup: Duration,
    reps: usize,
    payload_len: usize,
    queue_counts: Vec<usize>,
    filter: Option<String>,
    dir: Option<PathBuf>,
    smoke: bool,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let mut bench = false;
        let mut filter = None;
        for arg in std::env::args().skip(1) {
            if arg == "--bench" {
                bench = true;
            } else if !arg.starts_with('-') {
                filter = Some(arg);
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
        if !bench {
            return Ok(Settings {
                measure: Duration::from_millis(200),
                warmup: Duration::from_millis(50),
                reps: 1,
                payload_len: 16 * MIB,
                queue_counts: vec![1, 2],
                filter,
                dir,
                smoke: true,
            });
        }
        Ok(Settings {
            measure: Duration::from_secs_f64(env_num("OCIDISK_BENCH_SECS", 3.0)?),
            warmup: Duration::from_millis(500),
            reps: env_num("OCIDISK_BENCH_REPS", 3.0)? as usize,
            payload_len: env_num("OCIDISK_BENCH_PAYLOAD_MIB", 512.0)? as usize * MIB,
            queue_counts: vec![1, 2],
            filter,
            dir,
            smoke: false,
        })
    }
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

/// One I/O pattern, run against every server with 1 and 2 queues.
#[derive(Clone, Copy, Debug)]
struct Workload {
    name: &'static str,
    dir: Direction,
    pattern: Pattern,
    block: usize,
    /// Requests in flight per queue.
    depth: usize,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "4k-randread",
        dir: Direction::Read,
        pattern: Pattern::Random,
        block: 4 * KIB,
        depth: 1,
    },
    Workload {
        name: "4k-randread",
        dir: Direction::Read,
        pattern: Pattern::Random,
        block: 4 * KIB,
        depth: 32,
    },
    Workload {
        name: "4k-randwrite",
        dir: Direction::Write,
        pattern: Pattern::Random,
        block: 4 * KIB,
        depth: 32,
    },
    Workload {
        name: "1m-seqread",
        dir: Direction::Read,
        pattern: Pattern::Sequential,
        block: MIB,
        depth: 8,
    },
    Workload {
        name: "1m-seqwrite",
        dir: Direction::Write,
        pattern: Pattern::Sequential,
        block: MIB,
        depth: 8,
    },
];

impl Workload {
    fn label(&self) -> String {
        format!("{} QD{}", self.name, self.depth)
    }
}

// ---------------------------------------------------------------- servers

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    Ocidisk,
    QsdRaw,
    QsdQcow2,
    /// ocidisk with `--metrics` on: what counting every request costs.
    OcidiskMetrics,
}

const PEERS: [Peer; 4] = [
    Peer::Ocidisk,
    Peer::QsdRaw,
    Peer::QsdQcow2,
    Peer::OcidiskMetrics,
];

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Ocidisk => "ocidisk",
            Peer::QsdRaw => "qsd-raw",
            Peer::QsdQcow2 => "qsd-qcow2",
            Peer::OcidiskMetrics => "ocidisk+metrics",
        }
    }
}

/// A byte range of the disk.
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
        let payload = ocidisk_tests::oci_writer::random_bytes(settings.payload_len, 0x0c1d_15c0);
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

    /// Starts `peer` with `queues` queues for one cell, in `cell_dir`
    /// (created fresh: overlays and qcow2 files live there).
    fn start(&self, peer: Peer, queues: usize, cell_dir: &Path) -> anyhow::Result<VhostUserServer> {
        std::fs::create_dir_all(cell_dir)?;
        let socket = cell_dir.join("sock");
        let server = match peer {
            Peer::Ocidisk | Peer::OcidiskMetrics => {
                let queues = queues.to_string();
                let metrics = cell_dir.join("metrics.sock");
                let mut args = vec!["--num-queues", &queues];
                if peer == Peer::OcidiskMetrics {
                    args.extend(["--metrics", metrics.to_str().unwrap_or_default()]);
                }
                args.extend(self.serve_args.iter().map(String::as_str));
                VhostUserServer::ocidisk_serve(
                    &self.ocidisk,
                    &self.image,
                    &cell_dir.join("overlay"),
                    &socket,
                    &args,
                    cell_dir,
                )?
            }
            Peer::QsdRaw => {
                punch_hole(&self.raw, self.data)?;
                let blockdev = format!(
                    "driver=file,node-name=f,filename={},cache.direct=off,aio=threads",
                    qemu_escape(&self.raw)
                );
                qsd(&blockdev, "f", &socket, queues, cell_dir)?
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
                     file.cache.direct=off,file.aio=threads",
                    qemu_escape(&qcow2)
                );
                qsd(&blockdev, "q", &socket, queues, cell_dir)?
            }
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
    dir: &Path,
) -> anyhow::Result<VhostUserServer> {
    let pidfile = dir.join("qsd.pid");
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--blockdev")
        .arg(blockdev)
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e,node-name={node},addr.type=unix,addr.path={},\
             writable=on,num-queues={queues}",
            qemu_escape(socket)
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

/// A path inside a QEMU option string, with its commas doubled.
fn qemu_escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

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

/// Deallocates `region` of `path`, so that raw writes start from the same
/// (unallocated) state in every cell, as overlays and qcow2 files do.
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

/// xorshift64*: fast, and good enough to spread offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
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
    /// system), in µs: what a request costs whatever the scheduling.
    cpu_us: f64,
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
}

/// Where a queue's requests go.
struct Target {
    region: Region,
    pattern: Pattern,
    block: u64,
    next: u64,
    rng: Rng,
}

impl Target {
    fn new(whole: Region, w: &Workload, queue: usize, queues: usize, seed: u64) -> Target {
        let block = w.block as u64;
        let region = match w.pattern {
            // Every queue roams the whole region.
            Pattern::Random => whole,
            // Each queue streams through its own share.
            Pattern::Sequential => {
                let share = (whole.len / queues as u64) / block * block;
                Region {
                    start: whole.start + share * queue as u64,
                    len: share,
                }
            }
        };
        Target {
            region,
            pattern: w.pattern,
            block,
            next: 0,
            rng: Rng(seed | 1),
        }
    }

    fn offset(&mut self) -> u64 {
        let blocks = self.region.len / self.block;
        let i = match self.pattern {
            Pattern::Random => self.rng.next() % blocks,
            Pattern::Sequential => {
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
    let end = if submitted_bytes >= budget {
        last_done.min(deadline)
    } else {
        deadline
    };
    Ok(QueueResult {
        ops,
        elapsed: end.saturating_duration_since(measure_from),
        latencies_ns,
    })
}

/// Runs `w` over `client`'s queues, one thread each.
fn run_cell(
    client: &mut BlkioClient,
    fixture: &Fixture,
    w: &Workload,
    settings: &Settings,
    seed: u64,
    server_pid: u32,
) -> anyhow::Result<Sample> {
    let queues = client.queues.len();
    let (region, warmup, budget) = match w.dir {
        Direction::Read => (fixture.system, settings.warmup, u64::MAX),
        Direction::Write => (fixture.data, Duration::ZERO, WRITE_BUDGET / queues as u64),
    };
    let barrier = Barrier::new(queues + 1);
    let mut server_cpu = Duration::ZERO;
    let results: Vec<anyhow::Result<QueueResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = client
            .queues
            .iter_mut()
            .enumerate()
            .map(|(i, q)| {
                let barrier = &barrier;
                let target = Target::new(region, w, i, queues, seed ^ (i as u64 + 1) << 32);
                s.spawn(move || {
                    let write_data =
                        ocidisk_tests::oci_writer::random_bytes(w.depth * w.block, seed ^ i as u64);
                    q.buf()[..write_data.len()].copy_from_slice(&write_data);
                    barrier.wait();
                    let start = Instant::now();
                    let measure_from = start + warmup;
                    let deadline = measure_from + settings.measure;
                    drive_queue(q, w, target, measure_from, deadline, budget)
                })
            })
            .collect();
        barrier.wait();
        // The server's CPU time over the measured window, which the client
        // threads share (they start at the barrier too).
        let start = Instant::now();
        std::thread::sleep(warmup);
        let before = cpu_time(server_pid);
        std::thread::sleep(
            (start + warmup + settings.measure).saturating_duration_since(Instant::now()),
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
    let mut latencies = Vec::new();
    for r in results {
        let r = r?;
        ops += r.ops;
        ensure!(
            r.ops > 0 && !r.elapsed.is_zero(),
            "no request completed in time"
        );
        iops += r.ops as f64 / r.elapsed.as_secs_f64();
        latencies.extend_from_slice(&r.latencies_ns);
    }
    latencies.sort_unstable();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)] as f64;
    Ok(Sample {
        iops,
        mbps: iops * w.block as f64 / 1e6,
        p50_us: pct(50) / 1e3,
        p99_us: pct(99) / 1e3,
        cpu_us: server_cpu.as_secs_f64() * 1e6 / ops as f64,
    })
}

/// One cell end to end: a fresh server, a client, the workload.
fn measure(
    fixture: &Fixture,
    settings: &Settings,
    peer: Peer,
    w: &Workload,
    queues: usize,
    cell: usize,
) -> anyhow::Result<Sample> {
    let cell_dir = fixture.root.join(format!("cell-{cell}"));
    if matches!(w.dir, Direction::Write) {
        // Every write cell starts with no writeback pending, whoever wrote
        // last.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        recycle_page_cache(&fixture.root, WRITE_BUDGET)?;
    }
    let server = fixture.start(peer, queues, &cell_dir)?;
    let buf_len = (w.depth * w.block).next_multiple_of(2 * MIB);
    let pid = server
        .pid()
        .ok_or_else(|| anyhow!("{} exited at once", peer.name()))?;
    let sample = (|| {
        let mut client = BlkioClient::connect(server.socket(), queues, buf_len)?;
        fixture.check_contents(&mut client)?;
        run_cell(&mut client, fixture, w, settings, cell as u64, pid)
    })();
    let log = server.log();
    let status = match w.dir {
        // A clean stop flushes (fsyncs) up to a gigabyte of writes to the
        // host's disk, which would slow the next cells down; the files are
        // thrown away anyway, so the server is killed instead.
        Direction::Write => {
            drop(server);
            // The raw file outlives the cell: drop its dirty pages now, or
            // their writeback would throttle whichever server writes next
            // (the qcow2 and overlay files go with the cell's directory).
            if peer == Peer::QsdRaw {
                punch_hole(&fixture.raw, fixture.data)?;
            }
            None
        }
        Direction::Read => Some(server.stop()),
    };
    let sample =
        sample.with_context(|| format!("{} {}: server log:\n{log}", peer.name(), w.label()))?;
    if let (Peer::Ocidisk | Peer::OcidiskMetrics, Some(status)) = (peer, status) {
        let status = status?;
        ensure!(
            status.success(),
            "ocidisk serve exited with {status}:\n{log}"
        );
    }
    // Dirty pages of deleted files are dropped, not written back.
    std::fs::remove_dir_all(&cell_dir)
        .with_context(|| format!("removing {}", cell_dir.display()))?;
    Ok(sample)
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

/// The medians of one (workload, queues, peer) row.
struct Row {
    iops: f64,
    iops_min: f64,
    iops_max: f64,
    mbps: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
}

impl Row {
    fn of(samples: &[Sample]) -> Row {
        let get = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<_>>();
        let iops = get(|s| s.iops);
        Row {
            iops_min: iops.iter().copied().fold(f64::INFINITY, f64::min),
            iops_max: iops.iter().copied().fold(0.0, f64::max),
            iops: median(iops),
            mbps: median(get(|s| s.mbps)),
            p50: median(get(|s| s.p50_us)),
            p99: median(get(|s| s.p99_us)),
            cpu_us: median(get(|s| s.cpu_us)),
        }
    }
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The markdown report: the command, the full table and the ratios.
fn report(
    settings: &Settings,
    fixture: &Fixture,
    cases: &[(Workload, usize)],
    rows: &[[Row; 4]],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Reproduce: `{REPRODUCE}`\n");
    let _ = writeln!(
        out,
        "{} s measured per cell ({} ms warm-up for reads), median of {} runs; \
         {} MiB system payload, warm page cache; QD is per queue, one client \
         thread per queue; MB/s = 10^6 B/s; latency from submission to \
         completion as the libblkio client sees it.\n",
        settings.measure.as_secs_f64(),
        settings.warmup.as_millis(),
        settings.reps,
        fixture.payload.len() / MIB
    );
    let _ = writeln!(
        out,
        "| workload | queues | server | IOPS (min–max) | MB/s | p50 µs | p99 µs | server CPU µs/req | ocidisk ÷ server |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for ((w, queues), row) in cases.iter().zip(rows) {
        for (peer, r) in PEERS.iter().zip(row) {
            let ratio = if matches!(peer, Peer::Ocidisk | Peer::OcidiskMetrics) {
                "—".to_owned()
            } else {
                format!("{:.2}×", row[0].iops / r.iops)
            };
            let _ = writeln!(
                out,
                "| {} | {queues} | {} | {} ({}–{}) | {} | {} | {} | {} | {ratio} |",
                w.label(),
                peer.name(),
                fmt_num(r.iops),
                fmt_num(r.iops_min),
                fmt_num(r.iops_max),
                fmt_num(r.mbps),
                fmt_num(r.p50),
                fmt_num(r.p99),
                fmt_num(r.cpu_us),
            );
        }
    }
    let _ = writeln!(
        out,
        "\nTargets (median IOPS ratios): reads ≥ 1.2× qsd-raw, 4 KiB random \
         writes ≥ 1.5× qsd-qcow2, nothing below 1.0× qsd-raw.\n"
    );
    let _ = writeln!(
        out,
        "| workload | queues | ocidisk ÷ qsd-raw | ocidisk ÷ qsd-qcow2 | target | met | metrics on ÷ off: IOPS | CPU/req |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for ((w, queues), row) in cases.iter().zip(rows) {
        let vs_raw = row[0].iops / row[1].iops;
        let vs_qcow2 = row[0].iops / row[2].iops;
        let metrics_cost = row[3].iops / row[0].iops;
        let metrics_cpu = row[3].cpu_us / row[0].cpu_us;
        let (target, met) = match (w.dir, w.block) {
            (Direction::Read, _) => ("≥ 1.2× raw", vs_raw >= 1.2),
            (Direction::Write, b) if b == 4 * KIB => {
                ("≥ 1.5× qcow2, ≥ 1.0× raw", vs_qcow2 >= 1.5 && vs_raw >= 1.0)
            }
            (Direction::Write, _) => ("≥ 1.0× raw", vs_raw >= 1.0),
        };
        let _ = writeln!(
            out,
            "| {} | {queues} | {vs_raw:.2}× | {vs_qcow2:.2}× | {target} | {} | {metrics_cost:.3} | {metrics_cpu:.3} |",
            w.label(),
            if met { "yes" } else { "**no**" }
        );
    }
    out
}

// ---------------------------------------------------------------- main

fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    for tool in ["qemu-storage-daemon", "qemu-img"] {
        run_tool(Command::new(tool).arg("--version"))
            .with_context(|| format!("{tool} is needed (installed by .ci/install-deps)"))?;
    }
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

    let cases: Vec<(Workload, usize)> = WORKLOADS
        .iter()
        .filter(|w| {
            settings
                .filter
                .as_deref()
                .is_none_or(|f| w.label().contains(f))
        })
        .flat_map(|w| settings.queue_counts.iter().map(move |&q| (*w, q)))
        .collect();
    ensure!(!cases.is_empty(), "no workload matches the filter");
    // samples[case][peer] over repetitions.
    let mut samples: Vec<[Vec<Sample>; 4]> = cases.iter().map(|_| Default::default()).collect();
    let mut cell = 0;
    for rep in 0..settings.reps {
        for (c, (w, queues)) in cases.iter().enumerate() {
            for (p, peer) in PEERS.iter().enumerate() {
                let s = measure(&fixture, &settings, *peer, w, *queues, cell)?;
                eprintln!(
                    "serve_io: rep {}/{} {:<16} q{} {:<9} {:>9.0} IOPS {:>8.1} MB/s p50 {:>7.1} µs p99 {:>8.1} µs CPU {:>6.2} µs/req",
                    rep + 1,
                    settings.reps,
                    w.label(),
                    queues,
                    peer.name(),
                    s.iops,
                    s.mbps,
                    s.p50_us,
                    s.p99_us,
                    s.cpu_us
                );
                samples[c][p].push(s);
                cell += 1;
            }
        }
    }
    let rows: Vec<[Row; 4]> = samples
        .iter()
        .map(|per_peer| per_peer.each_ref().map(|s| Row::of(s)))
        .collect();
    if settings.smoke {
        eprintln!("serve_io: smoke run (no --bench): the figures below mean nothing");
    }
    print!("{}", report(&settings, &fixture, &cases, &rows));
    eprintln!("serve_io: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
