//! Benchmark: launching a test cluster's nodes from one Monogon-format image.
//!
//! Reproduce with:
//!
//! ```text
//! cargo build --release -p ocidisk && cargo bench -p ocidisk-tests --bench cluster_launch
//! ```
//!
//! Part 1, *prepare N node disks* (N = 1, 10, 50; `NODES=1,10` to change),
//! from an image with a 300 MiB pseudo-random `system` and a 40 MiB
//! `kernel.efi` (the `monogon` preset, 5 GiB disks). All N per method are
//! started at once, as a launcher would:
//!
//! - `ocidisk serve` ×N (1 queue of 256), each with a new overlay, until each
//!   printed `ready`; also each process's start-to-ready;
//! - `qemu-img create -f qcow2 -b base.raw -F raw` ×N over a prebuilt raw
//!   image (`ocidisk export` of the same disk), until all exited;
//! - `cp --reflink=never base.raw` ×N (sparse: holes stay holes);
//! - `cp --reflink=always base.raw` ×N where the file system can share
//!   extents (a `FICLONE` probe decides; otherwise the row says so).
//!
//! For each: wall time; the `syncfs` that follows (the copies' data reaching
//! the disk); bytes written, measured two ways: the allocated blocks
//! (`st_blocks`) the node directory gained, and the processes' own
//! `write_bytes` (`/proc/PID/io` of the running servers; for the tools,
//! which exit, the `RUSAGE_CHILDREN` block-output count, which Linux keeps
//! from the same counter); and the servers' resident memory without the
//! page cache (`VmRSS − RssFile` = anonymous + shared memory).
//!
//! Part 2, *boot 3 VMs at once* from the sample image (the harness's UKI
//! whose init prints `OCIDISK boot=ok` on the serial console), through OVMF
//! from the disk's ESP as Monogon nodes boot: ocidisk (3 `serve` + 3 QEMU
//! with `vhost-user-blk-pci`) against QEMU's built-in `virtio-blk-pci` on a
//! qcow2 snapshot per node and on a raw copy per node. Times are from the
//! start of preparing the disks to the guest's init (and to its power-off,
//! after it checked the system partition and formatted its data partition).
//!
//! Knobs: `OCIDISK_BENCH_DIR` (where the work directory goes; default the
//! system's temporary directory), `RUNS` (prepare runs, default 3),
//! `BOOT_RUNS` (default 3), `BOOT_TIMEOUT` (seconds per boot, default 900),
//! `PARTS` (`prepare,boot`), `OCIDISK_BIN`, `OCIDISK_ACCEL`.

use anyhow::{bail, ensure, Context, Result};
use ocidisk_tests::blkio_client::ocidisk_bench_binary;
use ocidisk_tests::guest::{Accel, Assets, OVMF_CODE, OVMF_VARS};
use ocidisk_tests::hostfs::{bench_dir, run_tool, syncfs, FsInfo};
use ocidisk_tests::oci_writer::{efi_image, random_bytes, ImageBuilder, OsImage, Payload};
use ocidisk_tests::sample::build_sample_image;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const REPRODUCE: &str =
    "cargo build --release -p ocidisk && cargo bench -p ocidisk-tests --bench cluster_launch";
const MIB: u64 = 1 << 20;
const SYSTEM_SIZE: usize = 300 << 20;
const KERNEL_SIZE: usize = 40 << 20;
/// How long N servers may take to get ready, or N tools to finish.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(600);
/// VMs booted at once in part 2.
const VMS: usize = 3;

fn main() -> Result<()> {
    println!("reproduce: `{REPRODUCE}`\n");
    let ocidisk = ocidisk_bench_binary()?;
    let tmp = bench_dir("ocidisk-cluster-")?;
    let work = tmp.path();
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "prepare,boot".to_owned());
    let fs = FsInfo::probe(work)?;
    println!(
        "work directory {} on {} (reflinks: {}); ocidisk: {}; {} CPUs\n",
        work.display(),
        fs.name,
        if fs.reflink { "yes" } else { "no" },
        ocidisk.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if parts.split(',').any(|p| p == "prepare") {
        let nodes = env_list("NODES", &[1, 10, 50])?;
        let runs = env_num("RUNS", 3)?;
        prepare::run(&ocidisk, work, &fs, &nodes, runs)?;
    }
    if parts.split(',').any(|p| p == "boot") {
        let runs = env_num("BOOT_RUNS", 3)?;
        let timeout = Duration::from_secs(env_num("BOOT_TIMEOUT", 900)? as u64);
        boot::run(&ocidisk, work, runs, timeout)?;
    }
    Ok(())
}

fn env_num(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn env_list(name: &str, default: &[usize]) -> Result<Vec<usize>> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .with_context(|| format!("{name}={v:?}: {s:?} is not a number"))
            })
            .collect(),
        Err(_) => Ok(default.to_vec()),
    }
}

/// Children that are killed and reaped when dropped, so that an error or a
/// timeout leaves no server or VM running.
#[derive(Default)]
struct Children(Vec<Child>);

impl Children {
    /// SIGTERM to all, then wait up to 10 s each, then SIGKILL.
    fn terminate(&mut self) {
        for c in &self.0 {
            // SAFETY: signalling a child we started and have not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        for mut c in self.0.drain(..) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for mut c in self.0.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `ocidisk serve` for each `(overlay, socket)` at once and waits
/// until every one printed `ready`. Returns the servers and, per server, the
/// time from its spawn to its ready line. Logs go to `logs`.
fn start_servers(
    ocidisk: &Path,
    image: &Path,
    cache: &Path,
    nodes: &[(PathBuf, PathBuf)],
    logs: &Path,
    timeout: Duration,
) -> Result<(Children, Vec<Duration>)> {
    let mut children = Children::default();
    let (tx, rx) = mpsc::channel::<(usize, Instant)>();
    let mut spawned = Vec::with_capacity(nodes.len());
    for (i, (overlay, socket)) in nodes.iter().enumerate() {
        let log = logs.join(format!("serve-{i}.log"));
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let t = Instant::now();
        let mut child = Command::new(ocidisk)
            .arg("serve")
            .arg("--image")
            .arg(image)
            .args(["--layout", "monogon", "--cache"])
            .arg(cache)
            .arg("--overlay")
            .arg(overlay)
            .arg("--socket")
            .arg(socket)
            .args(["--num-queues", "1", "--queue-size", "256"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", ocidisk.display()))?;
        spawned.push(t);
        let stdout = child.stdout.take().context("stdout is not piped")?;
        children.0.push(child);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ready socket=") {
                    let _ = tx.send((i, Instant::now()));
                }
            }
        });
    }
    drop(tx);
    let mut ready = vec![None; nodes.len()];
    let deadline = Instant::now() + timeout;
    while ready.iter().any(Option::is_none) {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((i, at)) => ready[i] = Some(at - spawned[i]),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        for (i, c) in children.0.iter_mut().enumerate() {
            if ready[i].is_none() {
                if let Ok(Some(status)) = c.try_wait() {
                    let log = std::fs::read_to_string(logs.join(format!("serve-{i}.log")))
                        .unwrap_or_default();
                    bail!("ocidisk serve #{i} exited with {status} before it was ready:\n{log}");
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} ocidisk serve processes were not ready after {timeout:?}",
                ready.iter().filter(|r| r.is_none()).count(),
                nodes.len()
            );
        }
    }
    Ok((children, ready.into_iter().flatten().collect()))
}

/// The fields of `/proc/PID/status` given in kB, in bytes.
fn proc_status(pid: u32) -> Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let kib = rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
            Some((key.to_owned(), kib * 1024))
        })
        .collect())
}

/// `write_bytes` of `/proc/PID/io`.
fn proc_write_bytes(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .with_context(|| format!("reading /proc/{pid}/io"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no write_bytes in /proc/{pid}/io"))
}

/// Bytes written by reaped children so far (Linux fills `ru_oublock` from
/// the same `write_bytes` counter, in 512-byte units).
fn children_write_bytes() -> Result<u64> {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we pass.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    Ok(ru.ru_oublock as u64 * 512)
}

/// Allocated bytes (`st_blocks × 512`) of every file under `dir`.
fn allocated(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let m = e?.metadata()?;
        total += if m.is_dir() { 0 } else { m.blocks() * 512 };
    }
    Ok(total)
}

/// Empties `dir` (files only) and waits until the removals reached the disk.
fn clear(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    syncfs(dir)
}

/// Runs `cmds` all at once and waits until all exited successfully.
fn run_concurrently(cmds: Vec<Command>, timeout: Duration) -> Result<()> {
    let mut children = Children::default();
    let mut described = Vec::new();
    for mut c in cmds {
        described.push(format!("{c:?}"));
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {c:?} (installed by .ci/install-deps)"))?;
        children.0.push(child);
    }
    let deadline = Instant::now() + timeout;
    for (i, c) in children.0.iter_mut().enumerate() {
        let status = loop {
            if let Some(status) = c.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("{} did not finish within {timeout:?}", described[i]);
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = c.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("{} failed ({status}): {}", described[i], err.trim());
        }
    }
    // All reaped: nothing left to kill.
    children.0.clear();
    Ok(())
}

fn median(values: &[Duration]) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

fn median_u64(values: &[u64]) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => 0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn mib(bytes: u64) -> String {
    let m = bytes as f64 / MIB as f64;
    if m < 10.0 {
        format!("{m:.2} MiB")
    } else {
        format!("{m:.0} MiB")
    }
}

/// `ocidisk export --image IMAGE --cache CACHE --output OUT`: the raw image
/// of the same disk that `serve` composes (the peers' prebuilt image).
fn export(ocidisk: &Path, image: &Path, cache: &Path, out: &Path) -> Result<()> {
    run_tool(
        Command::new(ocidisk)
            .arg("export")
            .arg("--image")
            .arg(image)
            .args(["--layout", "monogon", "--cache"])
            .arg(cache)
            .arg("--output")
            .arg(out)
            .env("RUST_LOG", "warn"),
    )?;
    Ok(())
}

/// The per-node commands that make a node's disk file from `base`.
fn qcow2_snapshot(base: &Path, out: &Path) -> Command {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(base)
        .args(["-F", "raw"])
        .arg(out);
    c
}

fn copy(base: &Path, out: &Path, reflink: &str) -> Command {
    let mut c = Command::new("cp");
    c.arg(format!("--reflink={reflink}")).arg(base).arg(out);
    c
}

mod prepare {
    //! Part 1: making N node disks.

    use super::*;

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Method {
        Ocidisk,
        Qcow2,
        Copy,
        Reflink,
    }

    impl Method {
        const ALL: [Method; 4] = [
            Method::Ocidisk,
            Method::Qcow2,
            Method::Copy,
            Method::Reflink,
        ];

        fn name(self) -> &'static str {
            match self {
                Method::Ocidisk => "`ocidisk serve` ×N until ready",
                Method::Qcow2 => "`qemu-img create -f qcow2 -b base.raw -F raw` ×N",
                Method::Copy => "`cp --reflink=never base.raw` ×N",
                Method::Reflink => "`cp --reflink=always base.raw` ×N",
            }
        }
    }

    /// One run of one method for N nodes.
    struct Sample {
        wall: Duration,
        syncfs: Duration,
        allocated: u64,
        write_bytes: u64,
        /// Servers only: Σ (VmRSS − RssFile), Σ VmRSS.
        rss_own: u64,
        rss_total: u64,
        start_to_ready: Vec<Duration>,
    }

    pub fn run(
        ocidisk: &Path,
        work: &Path,
        fs: &FsInfo,
        nodes: &[usize],
        runs: usize,
    ) -> Result<()> {
        let image = work.join("image");
        let cache = work.join("cache");
        let logs = work.join("logs");
        let dir = work.join("nodes");
        for d in [&logs, &dir] {
            std::fs::create_dir_all(d)?;
        }
        eprintln!("writing the image to {} …", image.display());
        ImageBuilder::monogon(
            OsImage::new()
                .payload(Payload::new("kernel.efi", efi_image(KERNEL_SIZE)))
                .payload(Payload::new("system", random_bytes(SYSTEM_SIZE, 0x5eed))),
        )
        .write(&image)?;
        let base = work.join("base.raw");
        export(ocidisk, &image, &cache, &base)?;
        syncfs(work)?;

        let mut results: Vec<(usize, Method, Vec<Sample>)> = Vec::new();
        for &n in nodes {
            let mut samples: Vec<Vec<Sample>> = Method::ALL.iter().map(|_| Vec::new()).collect();
            for r in 0..runs {
                // Rotate the order so that no method always runs after the
                // heaviest one's writeback.
                for k in 0..Method::ALL.len() {
                    let i = (k + r) % Method::ALL.len();
                    let m = Method::ALL[i];
                    if m == Method::Reflink && !fs.reflink {
                        continue;
                    }
                    eprintln!("N={n} run {}/{runs}: {m:?}", r + 1);
                    let s = one(m, n, ocidisk, &image, &cache, &base, &dir, &logs)?;
                    samples[i].push(s);
                }
            }
            for (m, s) in Method::ALL.into_iter().zip(samples) {
                results.push((n, m, s));
            }
        }
        print(&results, fs, runs);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn one(
        m: Method,
        n: usize,
        ocidisk: &Path,
        image: &Path,
        cache: &Path,
        base: &Path,
        dir: &Path,
        logs: &Path,
    ) -> Result<Sample> {
        clear(dir)?;
        let written_before = children_write_bytes()?;
        let mut sample = Sample {
            wall: Duration::ZERO,
            syncfs: Duration::ZERO,
            allocated: 0,
            write_bytes: 0,
            rss_own: 0,
            rss_total: 0,
            start_to_ready: Vec::new(),
        };
        let mut servers = Children::default();
        let t = Instant::now();
        match m {
            Method::Ocidisk => {
                let nodes: Vec<(PathBuf, PathBuf)> = (0..n)
                    .map(|i| {
                        (
                            dir.join(format!("node{i}.overlay")),
                            dir.join(format!("node{i}.sock")),
                        )
                    })
                    .collect();
                let (children, ready) =
                    start_servers(ocidisk, image, cache, &nodes, logs, PREPARE_TIMEOUT)?;
                sample.wall = t.elapsed();
                servers = children;
                sample.start_to_ready = ready;
            }
            Method::Qcow2 | Method::Copy | Method::Reflink => {
                let cmds = (0..n)
                    .map(|i| match m {
                        Method::Qcow2 => qcow2_snapshot(base, &dir.join(format!("node{i}.qcow2"))),
                        Method::Copy => copy(base, &dir.join(format!("node{i}.raw")), "never"),
                        _ => copy(base, &dir.join(format!("node{i}.raw")), "always"),
                    })
                    .collect();
                run_concurrently(cmds, PREPARE_TIMEOUT)?;
                sample.wall = t.elapsed();
            }
        }
        let t = Instant::now();
        syncfs(dir)?;
        sample.syncfs = t.elapsed();
        sample.allocated = allocated(dir)?;
        if m == Method::Ocidisk {
            for c in &servers.0 {
                let status = proc_status(c.id())?;
                let get = |k: &str| status.get(k).copied().unwrap_or(0);
                sample.rss_total += get("VmRSS");
                sample.rss_own += get("VmRSS").saturating_sub(get("RssFile"));
                sample.write_bytes += proc_write_bytes(c.id())?;
            }
            servers.terminate();
        } else {
            sample.write_bytes = children_write_bytes()? - written_before;
        }
        check_outputs(m, n, dir)?;
        Ok(sample)
    }

    /// Every node got its disk file (a wrong benchmark is worse than none).
    fn check_outputs(m: Method, n: usize, dir: &Path) -> Result<()> {
        for i in 0..n {
            let (name, min_len) = match m {
                Method::Ocidisk => (format!("node{i}.overlay"), 4096),
                Method::Qcow2 => (format!("node{i}.qcow2"), 4096),
                Method::Copy | Method::Reflink => (format!("node{i}.raw"), 5 << 30),
            };
            let p = dir.join(&name);
            let len = std::fs::metadata(&p)
                .with_context(|| format!("{m:?} made no {}", p.display()))?
                .len();
            ensure!(len >= min_len, "{} is only {len} bytes", p.display());
        }
        Ok(())
    }

    fn print(results: &[(usize, Method, Vec<Sample>)], fs: &FsInfo, runs: usize) {
        println!(
            "### Preparing N node disks (5 GiB `monogon` disks; `system` {} MiB random, \
             `kernel.efi` {} MiB; medians of {runs} runs)\n",
            SYSTEM_SIZE >> 20,
            KERNEL_SIZE >> 20
        );
        println!(
            "All N started at once. *written*: allocated blocks the node directory gained \
             (`st_blocks`) / the processes' `write_bytes` (servers: `/proc/PID/io` once \
             ready; tools: `RUSAGE_CHILDREN` after they exited). *RSS*: Σ over the servers \
             of `VmRSS − RssFile` (anonymous + shared, page cache excluded), and Σ `VmRSS` \
             in brackets; qcow2 and raw disks have no server (QEMU's block layer serves them).\n"
        );
        println!("| N | method | wall | then `syncfs` | written: allocated | written: `write_bytes` | servers' RSS |");
        println!("|---:|---|---:|---:|---:|---:|---:|");
        for (n, m, samples) in results {
            if samples.is_empty() {
                println!(
                    "| {n} | {} | not supported on {} (no reflinks) | | | | |",
                    m.name(),
                    fs.name
                );
                continue;
            }
            let wall: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
            let sync: Vec<Duration> = samples.iter().map(|s| s.syncfs).collect();
            let alloc: Vec<u64> = samples.iter().map(|s| s.allocated).collect();
            let wb: Vec<u64> = samples.iter().map(|s| s.write_bytes).collect();
            let rss = if *m == Method::Ocidisk {
                let own: Vec<u64> = samples.iter().map(|s| s.rss_own).collect();
                let total: Vec<u64> = samples.iter().map(|s| s.rss_total).collect();
                format!("{} ({})", mib(median_u64(&own)), mib(median_u64(&total)))
            } else {
                "–".to_owned()
            };
            println!(
                "| {n} | {} | {} | {} | {} | {} | {rss} |",
                m.name(),
                ms(median(&wall)),
                ms(median(&sync)),
                mib(median_u64(&alloc)),
                mib(median_u64(&wb)),
            );
        }
        println!();
        println!("| N | `ocidisk serve` start to ready, per process: median | p90 | max | per-server RSS (median) |");
        println!("|---:|---:|---:|---:|---:|");
        for (n, m, samples) in results {
            if *m != Method::Ocidisk || samples.is_empty() {
                continue;
            }
            let mut all: Vec<Duration> = samples
                .iter()
                .flat_map(|s| s.start_to_ready.iter().copied())
                .collect();
            all.sort();
            let p90 = all
                .get((all.len() * 9).div_ceil(10).saturating_sub(1))
                .copied()
                .unwrap_or_default();
            let per: Vec<u64> = samples.iter().map(|s| s.rss_own / *n as u64).collect();
            println!(
                "| {n} | {} | {} | {} | {} |",
                ms(median(&all)),
                ms(p90),
                ms(all.last().copied().unwrap_or_default()),
                mib(median_u64(&per))
            );
        }
        println!();
    }
}

mod boot {
    //! Part 2: three VMs booting at once from the same image.

    use super::*;

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Config {
        Ocidisk,
        Qcow2,
        Raw,
    }

    impl Config {
        const ALL: [Config; 3] = [Config::Ocidisk, Config::Qcow2, Config::Raw];

        fn name(self) -> &'static str {
            match self {
                Config::Ocidisk => "ocidisk: `serve` + `vhost-user-blk-pci`",
                Config::Qcow2 => "QEMU `virtio-blk-pci` on a qcow2 snapshot per node",
                Config::Raw => "QEMU `virtio-blk-pci` on a raw copy per node",
            }
        }
    }

    /// One launch of 3 VMs, all times from the start of preparing disks.
    struct Launch {
        disks_ready: Duration,
        init: Vec<Duration>,
        done: Vec<Duration>,
    }

    pub fn run(ocidisk: &Path, work: &Path, runs: usize, timeout: Duration) -> Result<()> {
        let accel = Accel::detect();
        let assets = Assets::locate()?;
        let dir = work.join("boot");
        let nodes = dir.join("nodes");
        let logs = dir.join("logs");
        for d in [&nodes, &logs] {
            std::fs::create_dir_all(d)?;
        }
        eprintln!("building the sample image in {} …", dir.display());
        let sample = build_sample_image(&assets, &dir)?;
        let cache = dir.join("cache");
        let base = dir.join("base.raw");
        export(ocidisk, &sample.image, &cache, &base)?;
        syncfs(&dir)?;

        let mut launches: Vec<Vec<Launch>> = Config::ALL.iter().map(|_| Vec::new()).collect();
        for r in 0..runs {
            for k in 0..Config::ALL.len() {
                let i = (k + r) % Config::ALL.len();
                let c = Config::ALL[i];
                eprintln!(
                    "boot run {}/{runs}: {c:?} ×{VMS} ({}) …",
                    r + 1,
                    accel.as_str()
                );
                clear(&nodes)?;
                let l = launch(
                    c,
                    ocidisk,
                    &sample.image,
                    &cache,
                    &base,
                    &nodes,
                    &logs,
                    accel,
                    timeout,
                )?;
                eprintln!(
                    "  init at {:?}, done at {:?}",
                    l.init.iter().map(|d| secs(*d)).collect::<Vec<_>>(),
                    l.done.iter().map(|d| secs(*d)).collect::<Vec<_>>()
                );
                launches[i].push(l);
            }
        }
        clear(&nodes)?;

        println!(
            "### Booting {VMS} VMs at once from the sample image ({}, 1 vCPU and 512 MiB each, \
             UEFI: OVMF boots the UKI from the ESP; medians of {runs} runs)\n",
            accel.as_str().to_uppercase()
        );
        println!(
            "Times from the start of preparing the {VMS} disks; *init*: the guest's init \
             printed `OCIDISK boot=ok` on the serial console; *done*: the guest checked its \
             system partition against the payload, formatted its data partition and powered \
             off. Median over the runs of the median / slowest of the {VMS} VMs; *best run*: \
             the fastest run's median VM (other load on the host only ever slows a run).\n"
        );
        println!("| disks | disks ready | to init: median VM | (best run) | to init: slowest VM | to power-off: slowest VM | init vs ocidisk |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let stat = |ls: &[Launch], f: &dyn Fn(&Launch) -> Duration| {
            median(&ls.iter().map(f).collect::<Vec<_>>())
        };
        let init_med = |l: &Launch| median(&l.init);
        let ocidisk_init = stat(&launches[0], &init_med);
        for (c, ls) in Config::ALL.into_iter().zip(&launches) {
            let med = stat(ls, &init_med);
            let best = ls.iter().map(init_med).min().unwrap_or_default();
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.2}× |",
                c.name(),
                ms(stat(ls, &|l| l.disks_ready)),
                secs(med),
                secs(best),
                secs(stat(ls, &|l| l
                    .init
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or_default())),
                secs(stat(ls, &|l| l
                    .done
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or_default())),
                med.as_secs_f64() / ocidisk_init.as_secs_f64().max(f64::MIN_POSITIVE)
            );
        }
        println!();
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        c: Config,
        ocidisk: &Path,
        image: &Path,
        cache: &Path,
        base: &Path,
        nodes: &Path,
        logs: &Path,
        accel: Accel,
        timeout: Duration,
    ) -> Result<Launch> {
        let t0 = Instant::now();
        let mut servers = Children::default();
        let disks: Vec<Disk> = match c {
            Config::Ocidisk => {
                let pairs: Vec<(PathBuf, PathBuf)> = (0..VMS)
                    .map(|i| {
                        (
                            nodes.join(format!("node{i}.overlay")),
                            nodes.join(format!("node{i}.sock")),
                        )
                    })
                    .collect();
                let (children, _) =
                    start_servers(ocidisk, image, cache, &pairs, logs, PREPARE_TIMEOUT)?;
                servers = children;
                pairs.into_iter().map(|(_, s)| Disk::VhostUser(s)).collect()
            }
            Config::Qcow2 => {
                let files: Vec<PathBuf> = (0..VMS)
                    .map(|i| nodes.join(format!("node{i}.qcow2")))
                    .collect();
                run_concurrently(
                    files.iter().map(|f| qcow2_snapshot(base, f)).collect(),
                    PREPARE_TIMEOUT,
                )?;
                files
                    .into_iter()
                    .map(|file| Disk::Drive {
                        file,
                        format: "qcow2",
                    })
                    .collect()
            }
            Config::Raw => {
                let files: Vec<PathBuf> = (0..VMS)
                    .map(|i| nodes.join(format!("node{i}.raw")))
                    .collect();
                run_concurrently(
                    files.iter().map(|f| copy(base, f, "never")).collect(),
                    PREPARE_TIMEOUT,
                )?;
                files
                    .into_iter()
                    .map(|file| Disk::Drive {
                        file,
                        format: "raw",
                    })
                    .collect()
            }
        };
        let disks_ready = t0.elapsed();

        let mut vms = Children::default();
        let mut consoles = Vec::new();
        for (i, disk) in disks.iter().enumerate() {
            // A fresh file: a console left by the previous launch would
            // show its marker before this guest even started.
            let console = logs.join(format!("console-{c:?}-{i}.log"));
            match std::fs::remove_file(&console) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", console.display()))
                }
                _ => {}
            }
            let vars = nodes.join(format!("OVMF_VARS-{i}.fd"));
            std::fs::copy(OVMF_VARS, &vars)
                .with_context(|| format!("copying {OVMF_VARS} (package ovmf)"))?;
            let qemu_log = logs.join(format!("qemu-{i}.log"));
            let log = File::create(&qemu_log)?;
            let child = qemu(disk, &vars, &console, accel)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting qemu-system-x86_64 (installed by .ci/install-deps)")?;
            vms.0.push(child);
            consoles.push(console);
        }

        let mut init = vec![None; VMS];
        let mut done = vec![None; VMS];
        while done.iter().any(Option::is_none) {
            for i in 0..VMS {
                if done[i].is_some() {
                    continue;
                }
                let text = std::fs::read(&consoles[i])
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if init[i].is_none() && text.contains("OCIDISK boot=ok") {
                    init[i] = Some(t0.elapsed());
                }
                if let Some(status) = vms.0[i].try_wait()? {
                    let reports = ocidisk_tests::guest::parse_reports(&text);
                    let ok = status.success()
                        && reports.get("done").map(String::as_str) == Some("0")
                        && reports.get("system_matches_payload").map(String::as_str) == Some("yes");
                    if !ok || init[i].is_none() {
                        let qemu_log = std::fs::read_to_string(logs.join(format!("qemu-{i}.log")))
                            .unwrap_or_default();
                        bail!(
                            "{c:?} VM {i} exited with {status} without a good report:\n\
                             --- qemu ---\n{qemu_log}\n--- console ---\n{text}"
                        );
                    }
                    done[i] = Some(t0.elapsed());
                }
            }
            if t0.elapsed() > timeout {
                bail!(
                    "{c:?}: {} of {VMS} VMs did not power off within {timeout:?} (consoles in {})",
                    done.iter().filter(|d| d.is_none()).count(),
                    logs.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        servers.terminate();
        Ok(Launch {
            disks_ready,
            init: init.into_iter().flatten().collect(),
            done: done.into_iter().flatten().collect(),
        })
    }

    enum Disk {
        VhostUser(PathBuf),
        Drive { file: PathBuf, format: &'static str },
    }

    /// QEMU as the harness's `VmConfig` starts it (q35, memfd memory shared
    /// with a vhost-user backend, OVMF, serial to a file), with the disk
    /// either on a vhost-user socket or in QEMU's own block layer.
    fn qemu(disk: &Disk, vars: &Path, console: &Path, accel: Accel) -> Command {
        let esc = |p: &Path| p.display().to_string().replace(',', ",,");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-machine", "q35,memory-backend=mem"])
            .args(["-accel", accel.as_str()])
            .args(["-cpu", if accel == Accel::Kvm { "host" } else { "max" }])
            .args(["-m", "512M"])
            .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
            .args(["-smp", "1"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(["-serial", &format!("file:{}", console.display())])
            .args([
                "-drive",
                &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            ])
            .args([
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", esc(vars)),
            ]);
        match disk {
            Disk::VhostUser(socket) => {
                cmd.args(["-chardev", &format!("socket,id=c0,path={}", esc(socket))])
                    .args([
                        "-device",
                        "vhost-user-blk-pci,chardev=c0,num-queues=1,disable-legacy=on,bootindex=1",
                    ]);
            }
            Disk::Drive { file, format } => {
                cmd.args([
                    "-drive",
                    &format!("file={},format={format},if=none,id=d", esc(file)),
                ])
                .args([
                    "-device",
                    "virtio-blk-pci,drive=d,num-queues=1,disable-legacy=on,bootindex=1",
                ]);
            }
        }
        cmd
    }
}
