//! A guest that keeps doing verified I/O while its disk's server is killed,
//! stopped and replaced under it (issue 10).
//!
//! The guest runs `guest-io-check` (tests/src/bin/guest-io-check.rs, built
//! here as a static executable and put into the busybox initramfs) on one
//! partition of the disk; QEMU's chardev reconnects (`reconnect-ms`) to the
//! server's socket. The host, following a [`Plan`], stops the server
//! (SIGKILL, SIGTERM, or SIGTERM and a start of "another build"), waits a
//! random 0.1–1 s, starts a server again on the same socket (and overlay),
//! and times how long the guest's I/O takes to move again: from the new
//! server's start to the first `OCIDISK progress=N` line on the serial
//! console with a larger N than before. At the end the host tells the
//! guest to stop over its second serial port; the guest reads its whole
//! region back, and once the last server stopped (SIGTERM) the host reads
//! the region of the disk at rest (`ocidisk export --overlay`, or the raw
//! file) and compares digests.
//!
//! [`run`] never panics on what the guest or the servers do: everything is
//! collected in an [`Outcome`], whose [`Outcome::failures`] a test asserts
//! empty. Everything is bounded in time: a guest request in flight longer
//! than the watchdog is reported by the guest, no progress for
//! [`Plan::resume_timeout`] after a restart ends the run, and the whole run
//! has [`Plan::deadline`]; QEMU and the server are killed on the way out.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::assets::Assets;
use super::error::{io_err, Result};
use super::initramfs::InitramfsBuilder;
pub use super::qemu::RunningVm;
use super::qemu::VmConfig;
use super::server::VhostUserServer;
use super::tool;

/// The guest workload's source; [`build_guest_io_check`] compiles it.
pub const GUEST_IO_CHECK_SOURCE: &str = include_str!("../bin/guest-io-check.rs");

/// Compiles `guest-io-check` with `rustc` (`$RUSTC` or the one on `PATH`)
/// as a static executable (`-C target-feature=+crt-static`, glibc's static
/// libc), so that it runs in a busybox initramfs. The result is cached in
/// `cache_dir` under a name derived from the source and reused.
pub fn build_guest_io_check(cache_dir: &Path) -> Result<PathBuf> {
    let hash = hex(&Sha256::digest(GUEST_IO_CHECK_SOURCE.as_bytes()))[..16].to_string();
    std::fs::create_dir_all(cache_dir)
        .map_err(io_err(format!("creating {}", cache_dir.display())))?;
    let out = cache_dir.join(format!("guest-io-check-{hash}"));
    if out.is_file() {
        return Ok(out);
    }
    let src = cache_dir.join(format!("guest-io-check-{hash}.rs"));
    std::fs::write(&src, GUEST_IO_CHECK_SOURCE)
        .map_err(io_err(format!("writing {}", src.display())))?;
    // Another test process may build the same file: build aside, rename.
    let tmp = cache_dir.join(format!("guest-io-check-{hash}.{}.tmp", std::process::id()));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    tool::run(
        Command::new(rustc)
            .args(["--edition", "2021", "-O", "--crate-name", "guest_io_check"])
            .args(["-C", "target-feature=+crt-static", "-C", "strip=symbols"])
            .arg("-o")
            .arg(&tmp)
            .arg(&src),
    )?;
    std::fs::rename(&tmp, &out).map_err(io_err(format!("renaming {}", tmp.display())))?;
    Ok(out)
}

/// How to stop the server before starting the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM: an orderly stop (it must exit 0), same binary again.
    Term,
    /// SIGTERM, then the other binary of [`Backend::Ocidisk`] (an upgrade).
    Upgrade,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Kill => "SIGKILL",
            Stop::Term => "SIGTERM",
            Stop::Upgrade => "upgrade",
        }
    }
}

/// The disk's server.
#[derive(Debug, Clone)]
pub enum Backend {
    /// `ocidisk serve --image IMAGE --overlay OVERLAY LAYOUT… ARGS…`,
    /// alternating between `bins` at each [`Stop::Upgrade`] (a single
    /// binary is fine).
    Ocidisk {
        /// The binaries; the first serves first.
        bins: Vec<PathBuf>,
        /// The OCI image layout.
        image: PathBuf,
        /// The VM's overlay (kept across restarts).
        overlay: PathBuf,
        /// The disk's layout (`--layout monogon --disk-size 5GiB`), which
        /// `ocidisk export` takes too.
        layout: Vec<String>,
        /// Further arguments of `serve` (queues, …).
        args: Vec<String>,
    },
    /// qemu-storage-daemon exporting a raw file (the peer to compare with).
    Qsd {
        /// The raw disk image.
        disk: PathBuf,
    },
}

impl Backend {
    /// A short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Ocidisk { .. } => "ocidisk serve",
            Backend::Qsd { .. } => "qemu-storage-daemon",
        }
    }

    /// Starts server number `which` (an index into the binaries) on `socket`.
    pub fn start(&self, which: usize, socket: &Path, workdir: &Path) -> Result<VhostUserServer> {
        match self {
            Backend::Ocidisk {
                bins,
                image,
                overlay,
                layout,
                args,
            } => {
                let args: Vec<&str> = layout.iter().chain(args).map(String::as_str).collect();
                VhostUserServer::ocidisk_serve(
                    &bins[which % bins.len()],
                    image,
                    overlay,
                    socket,
                    &args,
                    workdir,
                )
            }
            Backend::Qsd { disk } => VhostUserServer::qemu_storage_daemon(disk, socket, workdir),
        }
    }

    /// Reads `len` bytes at `offset` of the disk as it is at rest (no
    /// server running): `ocidisk export --overlay` into `workdir`, or the
    /// raw file.
    pub fn read_back(&self, offset: u64, len: usize, workdir: &Path) -> Result<Vec<u8>> {
        let file = match self {
            Backend::Ocidisk {
                bins,
                image,
                overlay,
                layout,
                ..
            } => {
                let raw = workdir.join("read-back.raw");
                tool::run(
                    Command::new(&bins[0])
                        .arg("export")
                        .arg("--image")
                        .arg(image)
                        .arg("--overlay")
                        .arg(overlay)
                        .args(layout)
                        .arg("--force")
                        .arg("--output")
                        .arg(&raw),
                )?;
                raw
            }
            Backend::Qsd { disk } => disk.clone(),
        };
        let data = super::rawdisk::read_at(&file, offset, len);
        if matches!(self, Backend::Ocidisk { .. }) {
            let _ = std::fs::remove_file(&file);
        }
        data
    }

    /// A description of how the server is started, for reports.
    pub fn describe(&self) -> String {
        match self {
            Backend::Ocidisk {
                bins,
                image,
                overlay,
                layout,
                args,
            } => format!(
                "{} serve --image {} --socket SOCK --overlay {} {} {}",
                bins[0].display(),
                image.display(),
                overlay.display(),
                layout.join(" "),
                args.join(" ")
            ),
            Backend::Qsd { disk } => format!(
                "qemu-storage-daemon --blockdev driver=file,filename={},cache.direct=off \
                 --export type=vhost-user-blk,writable=on,num-queues=4,addr.path=SOCK",
                disk.display()
            ),
        }
    }
}

/// What happens to the server, and when.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The stops, in order; each is followed by a start.
    pub events: Vec<Stop>,
    /// How long the guest's I/O runs before each stop (uniform, ms).
    pub run_ms: (u64, u64),
    /// How long the server stays down (uniform, ms).
    pub down_ms: (u64, u64),
    /// No completed guest I/O for this long after a restart is a hang.
    pub resume_timeout: Duration,
    /// The guest's per-request watchdog.
    pub watchdog: Duration,
    /// The whole run, boot to poweroff.
    pub deadline: Duration,
    /// For the random times and the guest's workload.
    pub seed: u64,
}

impl Plan {
    /// `kills` SIGKILLs, then `terms` SIGTERMs, then `upgrades` upgrades,
    /// with the default timing and a seed from the clock.
    pub fn new(kills: usize, terms: usize, upgrades: usize) -> Plan {
        let mut events = vec![Stop::Kill; kills];
        events.extend(std::iter::repeat_n(Stop::Term, terms));
        events.extend(std::iter::repeat_n(Stop::Upgrade, upgrades));
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Plan {
            events,
            run_ms: (300, 2000),
            down_ms: (100, 1000),
            resume_timeout: Duration::from_secs(35),
            watchdog: Duration::from_secs(30),
            deadline: Duration::from_secs(420),
            seed,
        }
    }

    /// Like [`Plan::new`], with counts from the environment where set:
    /// `OCIDISK_RESTART_KILLS`, `OCIDISK_RESTART_TERMS`,
    /// `OCIDISK_RESTART_UPGRADES`, and `OCIDISK_RESTART_SEED`,
    /// `OCIDISK_RESTART_DEADLINE_SECS`.
    pub fn from_env(kills: usize, terms: usize, upgrades: usize) -> Plan {
        let env = |name: &str| -> Option<u64> {
            let v = std::env::var(name).ok()?;
            Some(
                v.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{name}={v:?}: not a number: {e}")),
            )
        };
        let mut plan = Plan::new(
            env("OCIDISK_RESTART_KILLS").map_or(kills, |n| n as usize),
            env("OCIDISK_RESTART_TERMS").map_or(terms, |n| n as usize),
            env("OCIDISK_RESTART_UPGRADES").map_or(upgrades, |n| n as usize),
        );
        if let Some(seed) = env("OCIDISK_RESTART_SEED") {
            plan.seed = seed;
        }
        if let Some(secs) = env("OCIDISK_RESTART_DEADLINE_SECS") {
            plan.deadline = Duration::from_secs(secs);
        }
        plan
    }
}

/// One run: the disk, the guest and the plan.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Logs, sockets and the initramfs go here.
    pub workdir: PathBuf,
    /// The guest kernel and modules.
    pub assets: Assets,
    /// The static `guest-io-check` ([`build_guest_io_check`]).
    pub guest_io_check: PathBuf,
    /// The disk's server.
    pub backend: Backend,
    /// The GPT name of the partition the guest writes.
    pub partition: String,
    /// That partition's byte offset on the disk (for the host's read-back).
    pub partition_offset: u64,
    /// 4 KiB blocks the guest uses from the partition's start.
    pub blocks: u64,
    /// The guest's concurrent workers.
    pub workers: u64,
    /// vCPUs and virtqueues.
    pub cpus: u32,
    /// Virtqueues of the disk.
    pub num_queues: u16,
    /// QEMU's `reconnect-ms`.
    pub reconnect_ms: u32,
    /// What happens to the server.
    pub plan: Plan,
    /// Prints each restart on stderr as it happens.
    pub verbose: bool,
}

/// One stop and start of the server.
#[derive(Debug, Clone)]
pub struct Restart {
    /// 1-based.
    pub index: usize,
    /// How the server was stopped.
    pub stop: Stop,
    /// Guest operations completed before the stop.
    pub ops_before: u64,
    /// How long the server was down before the new one was started.
    pub down: Duration,
    /// From starting the new server to its readiness.
    pub ready: Option<Duration>,
    /// From starting the new server to the guest's next completed I/O.
    pub resumed: Option<Duration>,
    /// Guest failure reports that arrived between this stop and the next.
    pub guest_failures: usize,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The restarts done, in order.
    pub restarts: Vec<Restart>,
    /// Why the run failed, one entry per problem; empty: it passed.
    pub failures: Vec<String>,
    /// The guest's `fail=…` lines, in order (the first few of each kind).
    pub guest_failures: Vec<String>,
    /// How many failures the guest found (I/O errors, bad blocks, hangs).
    pub guest_failure_count: u64,
    /// The guest's other `OCIDISK key=value` reports (the last of each key).
    pub reports: BTreeMap<String, String>,
    /// Guest kernel lines about I/O errors or hung tasks.
    pub kernel_complaints: Vec<String>,
    /// From QEMU's start to the guest's first completed I/O.
    pub boot: Option<Duration>,
    /// The whole run.
    pub elapsed: Duration,
    /// The guest's operations completed, as last reported.
    pub ops: u64,
    /// The run's directory (logs), and the seed, for the failure message.
    pub workdir: PathBuf,
    /// The plan's seed.
    pub seed: u64,
    /// Tails of logs worth reading when it failed.
    pub logs: String,
}

impl Outcome {
    /// Kills the guest did not notice: those before the first restart
    /// after which the guest found a failure or its I/O did not come back.
    pub fn kills_survived(&self) -> usize {
        self.restarts
            .iter()
            .take_while(|r| r.resumed.is_some() && r.guest_failures == 0)
            .filter(|r| r.stop == Stop::Kill)
            .count()
    }

    /// The first restart (1-based) after which the guest found a failure
    /// or its I/O did not come back.
    pub fn first_failed_restart(&self) -> Option<usize> {
        self.restarts
            .iter()
            .find(|r| r.resumed.is_none() || r.guest_failures > 0)
            .map(|r| r.index)
    }

    /// The resume times, sorted.
    pub fn resume_times(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.restarts.iter().filter_map(|r| r.resumed).collect();
        v.sort();
        v
    }

    /// One line per restart and a median/p99 line.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "  #  stop      down(s)  ready(s)  resumed(s)  ops before  guest failures\n",
        );
        let secs =
            |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.3}", d.as_secs_f64()));
        for r in &self.restarts {
            s.push_str(&format!(
                "{:>3}  {:<8}  {:>7.3}  {:>8}  {:>10}  {:>10}  {:>14}\n",
                r.index,
                r.stop.name(),
                r.down.as_secs_f64(),
                secs(r.ready),
                secs(r.resumed),
                r.ops_before,
                r.guest_failures
            ));
        }
        let times = self.resume_times();
        s.push_str(&format!(
            "time to resume over {} restarts: median {}, p99 {}, max {}\n",
            times.len(),
            fmt_opt(percentile(&times, 50.0)),
            fmt_opt(percentile(&times, 99.0)),
            fmt_opt(times.last().copied()),
        ));
        s
    }

    /// The failure report a test panics with.
    pub fn failure_report(&self) -> String {
        let mut s = format!(
            "{} problem(s) (seed {}, rerun with OCIDISK_RESTART_SEED={}; logs in {}{}):\n",
            self.failures.len(),
            self.seed,
            self.seed,
            self.workdir.display(),
            if std::env::var_os("OCIDISK_RESTART_KEEP").is_some() {
                ", kept"
            } else {
                ", deleted: set OCIDISK_RESTART_KEEP=1 to keep them"
            }
        );
        for f in &self.failures {
            s.push_str(&format!("- {f}\n"));
        }
        if !self.guest_failures.is_empty() {
            s.push_str(&format!(
                "guest failure reports ({} failures found; the first {} of each kind shown):\n",
                self.guest_failure_count, 20
            ));
            for f in self.guest_failures.iter().take(60) {
                s.push_str(&format!("  {f}\n"));
            }
        }
        if !self.kernel_complaints.is_empty() {
            s.push_str("guest kernel:\n");
            for f in self.kernel_complaints.iter().take(20) {
                s.push_str(&format!("  {f}\n"));
            }
        }
        s.push_str(&self.table());
        s.push_str(&self.logs);
        s
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Seconds with three decimals, or `-`.
pub fn fmt_opt(d: Option<Duration>) -> String {
    d.map_or("-".to_string(), |d| format!("{:.3} s", d.as_secs_f64()))
}

/// A random time in `[lo, hi]` ms.
fn random_ms(rng: &mut fastrand::Rng, (lo, hi): (u64, u64)) -> Duration {
    Duration::from_millis(rng.u64(lo..=hi.max(lo)))
}

/// The guest's console, read as it grows.
struct Console {
    vm: RunningVm,
    progress: u64,
    progress_at: Instant,
    io_started: bool,
    fails: Vec<String>,
    reports: BTreeMap<String, String>,
    kernel: Vec<String>,
    exited: bool,
    verbose: bool,
    /// The guest's count of failures (it reports only the first of each kind).
    fail_count: u64,
}

impl Console {
    /// Reads what arrived; returns the number of new guest failure lines.
    fn pump(&mut self) -> usize {
        let before = (self.fails.len(), self.fail_count);
        // Read the console after seeing the exit, so nothing is missed.
        if !self.exited && matches!(self.vm.try_wait(), Ok(Some(_))) {
            self.exited = true;
        }
        for line in self.vm.read_console() {
            if let Some(at) = line.find("OCIDISK ") {
                let rest = &line[at + "OCIDISK ".len()..];
                let Some((k, v)) = rest.split_once('=') else {
                    continue;
                };
                match k {
                    "progress" => {
                        let mut words = v.split_whitespace();
                        if let Some(f) = words
                            .clone()
                            .find_map(|w| w.strip_prefix("fails="))
                            .and_then(|f| f.parse::<u64>().ok())
                        {
                            self.fail_count = self.fail_count.max(f);
                        }
                        if let Some(Ok(n)) = words.next().map(str::parse::<u64>) {
                            if n > self.progress || !self.io_started {
                                self.progress_at = Instant::now();
                            }
                            self.progress = self.progress.max(n);
                            self.io_started = true;
                        }
                    }
                    "fail" => {
                        if self.verbose && self.fails.len() < 50 {
                            eprintln!("  guest: {rest}");
                        }
                        self.fails.push(rest.to_string())
                    }
                    _ => {
                        if k == "io_started" {
                            self.io_started = true;
                        }
                        self.reports.insert(k.to_string(), v.to_string());
                    }
                }
            } else if line.contains("I/O error")
                || line.contains("blocked for more than")
                || line.contains("virtio_blk")
                || line.contains("Buffer I/O")
                || line.contains("Kernel panic")
                || line.contains("BUG:")
            {
                self.kernel.push(line);
            }
        }
        // Reported lines, or the guest's count where it stopped reporting.
        (self.fails.len() - before.0).max((self.fail_count - before.1) as usize)
    }

    /// Pumps for `d`, or until `until` holds.
    fn pump_for(&mut self, d: Duration, mut until: impl FnMut(&Console) -> bool) -> usize {
        let end = Instant::now() + d;
        let mut new = 0;
        loop {
            new += self.pump();
            if until(self) || Instant::now() >= end {
                return new;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Runs a scenario: boots the guest, restarts the server as planned,
/// lets the guest verify everything and compares digests.
pub fn run(sc: &Scenario) -> Outcome {
    let started = Instant::now();
    let mut out = Outcome {
        workdir: sc.workdir.clone(),
        seed: sc.plan.seed,
        ..Outcome::default()
    };
    if let Err(e) = run_inner(sc, &mut out, started) {
        out.failures.push(e.to_string());
    }
    out.elapsed = started.elapsed();
    out
}

fn run_inner(sc: &Scenario, out: &mut Outcome, started: Instant) -> Result<()> {
    let plan = &sc.plan;
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let socket = sc.workdir.join("disk.sock");
    let control = sc.workdir.join("control.sock");
    let initrd = sc.workdir.join("restart.cpio");
    let script = format!(
        r#"
dev=$(part_dev {part})
report io_dev "$dev"
/bin/guest-io-check --dev "$dev" --blocks {blocks} --workers {workers} \
  --watchdog-secs {watchdog} --seed {seed} --control /dev/ttyS1 --max-secs {max_secs}
"#,
        part = sc.partition,
        blocks = sc.blocks,
        workers = sc.workers,
        watchdog = plan.watchdog.as_secs().max(1),
        seed = plan.seed % 1_000_000_007,
        max_secs = plan.deadline.as_secs(),
    );
    let program = std::fs::read(&sc.guest_io_check)
        .map_err(io_err(format!("reading {}", sc.guest_io_check.display())))?;
    InitramfsBuilder::new(&sc.assets)
        .script(&script)
        .file("bin/guest-io-check", 0o755, program)
        .write(&initrd)?;

    let mut which = 0usize;
    let mut server = Some(sc.backend.start(which, &socket, &sc.workdir)?);
    let mut vm = VmConfig::direct(&socket, &sc.assets.vmlinuz, &initrd);
    vm.cpus = sc.cpus;
    vm.num_queues = sc.num_queues;
    vm.reconnect_ms = Some(sc.reconnect_ms);
    vm.timeout = plan.deadline;
    vm.extra_args = vec![
        "-chardev".into(),
        format!(
            "socket,id=ctl,path={},server=on,wait=off",
            control.display()
        ),
        "-serial".into(),
        "chardev:ctl".into(),
    ];
    let mut con = Console {
        vm: vm.spawn(&sc.workdir)?,
        progress: 0,
        progress_at: Instant::now(),
        io_started: false,
        fails: Vec::new(),
        reports: BTreeMap::new(),
        kernel: Vec::new(),
        exited: false,
        verbose: sc.verbose,
        fail_count: 0,
    };
    let server_logs = |server: &Option<VhostUserServer>| {
        server
            .as_ref()
            .map(|s| format!("\n--- last server log ---\n{}", tail(&s.log(), 40)))
            .unwrap_or_default()
    };
    let finish = |con: &mut Console, out: &mut Outcome| {
        con.pump();
        out.guest_failures = con.fails.clone();
        let lines = con
            .fails
            .iter()
            .filter(|f| !f.contains("not reported"))
            .count();
        out.guest_failure_count = con.fail_count.max(lines as u64);
        out.reports = con.reports.clone();
        out.kernel_complaints = con.kernel.clone();
        out.ops = con.progress;
    };
    let deadline = started + plan.deadline;

    // Boot: up to 3 minutes for the first completed I/O (TCG).
    let boot_limit = Duration::from_secs(180).min(plan.deadline);
    con.pump_for(boot_limit, |c| c.progress > 0 || c.vm_exited());
    if con.progress == 0 {
        finish(&mut con, out);
        out.failures.push(format!(
            "the guest did not start its I/O within {boot_limit:?}"
        ));
        out.logs = format!("{}{}", tail(&con.vm.logs(), 80), server_logs(&server));
        return Ok(());
    }
    out.boot = Some(con.vm.elapsed());
    let mut ctl = connect_control(&control)?;

    let mut fatal = false;
    for (i, &stop) in plan.events.iter().enumerate() {
        let index = i + 1;
        if Instant::now() + Duration::from_secs(20) > deadline {
            out.failures.push(format!(
                "the run's time limit ({:?}) left no room for restart {index} of {}",
                plan.deadline,
                plan.events.len()
            ));
            break;
        }
        // Let the guest's I/O run, and check that it does.
        let run_for = random_ms(&mut rng, plan.run_ms);
        let new_fails = con.pump_for(run_for, Console::over);
        if con.vm_exited() {
            out.failures.push(format!(
                "QEMU exited before restart {index}: {}",
                con.vm.qemu_log()
            ));
            fatal = true;
            break;
        }
        if con.hung() {
            out.failures.push(format!(
                "the guest reported requests hanging before restart {index}"
            ));
            if let Some(last) = out.restarts.last_mut() {
                last.guest_failures += new_fails;
            }
            fatal = true;
            break;
        }
        if let Some(last) = out.restarts.last_mut() {
            last.guest_failures += new_fails;
        }
        let mut new_fails = 0;
        let stall = con.progress_at.elapsed();
        if stall > plan.resume_timeout {
            out.failures.push(format!(
                "no guest I/O completed for {:.1} s before restart {index}",
                stall.as_secs_f64()
            ));
            fatal = true;
            break;
        }
        let ops_before = con.progress;
        let old = server.take().expect("a server runs between restarts");
        match stop {
            Stop::Kill => {
                old.kill()?;
            }
            Stop::Term | Stop::Upgrade => {
                let log = old.log_path().to_path_buf();
                match old.stop() {
                    Ok(status) if status.success() => {}
                    Ok(status) => out.failures.push(format!(
                        "restart {index}: {} exited with {status} after SIGTERM (log {})\n{}",
                        sc.backend.name(),
                        log.display(),
                        tail(&std::fs::read_to_string(&log).unwrap_or_default(), 20)
                    )),
                    Err(e) => out.failures.push(format!("restart {index}: {e}")),
                }
                if stop == Stop::Upgrade {
                    which += 1;
                }
            }
        }
        let down = random_ms(&mut rng, plan.down_ms);
        new_fails += con.pump_for(down, |_| false);
        // Whatever completed before the stop has been printed by now (the
        // guest prints progress every 20 ms).
        let baseline = con.progress;
        let t0 = Instant::now();
        let (backend, sock, dir) = (sc.backend.clone(), socket.clone(), sc.workdir.clone());
        let starting = std::thread::spawn(move || backend.start(which, &sock, &dir));
        while !starting.is_finished() {
            new_fails += con.pump();
            std::thread::sleep(Duration::from_millis(2));
        }
        let ready = t0.elapsed();
        match starting.join() {
            Ok(Ok(s)) => server = Some(s),
            Ok(Err(e)) => {
                out.failures.push(format!(
                    "restart {index}: the new server did not start: {e}"
                ));
                fatal = true;
            }
            Err(_) => {
                out.failures
                    .push(format!("restart {index}: starting the server panicked"));
                fatal = true;
            }
        }
        let mut restart = Restart {
            index,
            stop,
            ops_before,
            down,
            ready: server.as_ref().map(|_| ready),
            resumed: None,
            guest_failures: 0,
        };
        if !fatal {
            new_fails += con.pump_for(plan.resume_timeout, |c| c.progress > baseline || c.over());
            if con.hung() {
                out.failures.push(format!(
                    "restart {index} ({}): the guest reported requests hanging",
                    stop.name()
                ));
                fatal = true;
                if con.progress > baseline {
                    restart.resumed = Some(con.progress_at.saturating_duration_since(t0));
                }
            } else if con.progress > baseline {
                restart.resumed = Some(con.progress_at.saturating_duration_since(t0));
            } else {
                out.failures.push(format!(
                    "restart {index} ({}): the guest's I/O did not move within {:?} of the \
                     new server's start (stuck at {baseline} operations)",
                    stop.name(),
                    plan.resume_timeout
                ));
                fatal = true;
            }
        }
        restart.guest_failures = new_fails;
        if sc.verbose {
            eprintln!(
                "restart {index}/{} {}: down {:.2} s, ready after {}, I/O resumed after {}, \
                 {} ops before{}",
                plan.events.len(),
                stop.name(),
                down.as_secs_f64(),
                fmt_opt(restart.ready),
                fmt_opt(restart.resumed),
                ops_before,
                if new_fails > 0 {
                    format!(", {new_fails} guest failure report(s)")
                } else {
                    String::new()
                }
            );
        }
        out.restarts.push(restart);
        if fatal {
            break;
        }
    }

    if fatal {
        // The guest's watchdog may still have something to say.
        con.pump_for(Duration::from_secs(2), |c| c.vm_exited());
        finish(&mut con, out);
        out.failures.push(format!(
            "gave up after restart {} of {}",
            out.restarts.len(),
            plan.events.len()
        ));
        out.logs = format!(
            "\n--- console (tail, without progress) ---\n{}\n--- qemu (tail) ---\n{}{}",
            console_tail(&con.vm, 60),
            tail(&con.vm.qemu_log(), 20),
            server_logs(&server)
        );
        con.vm.kill();
        return Ok(());
    }

    // A last stretch of I/O through the last server, then the final pass.
    con.pump_for(Duration::from_secs(1), |_| false);
    let _ = ctl.write_all(b"stop\n");
    let stuck = loop {
        con.pump_for(Duration::from_secs(1), Console::over);
        if con.vm_exited() {
            break None;
        }
        if con.hung() {
            // The rest of the watchdog's reports, then give up.
            con.pump_for(Duration::from_secs(2), Console::vm_exited);
            break Some("the guest reported requests hanging after it was told to stop".into());
        }
        if con.progress_at.elapsed() > plan.resume_timeout {
            break Some(format!(
                "the guest's I/O stalled for {:?} after it was told to stop",
                plan.resume_timeout
            ));
        }
        if Instant::now() >= deadline {
            break Some(format!(
                "the guest did not finish within the run's time limit ({:?})",
                plan.deadline
            ));
        }
    };
    finish(&mut con, out);
    if let Some(why) = stuck {
        out.failures.push(why);
        out.logs = format!(
            "\n--- console (tail, without progress) ---\n{}\n--- qemu (tail) ---\n{}{}",
            console_tail(&con.vm, 60),
            tail(&con.vm.qemu_log(), 20),
            server_logs(&server)
        );
        con.vm.kill();
        return Ok(());
    }
    let r = &out.reports;
    if r.get("done").map(String::as_str) != Some("0") {
        out.failures.push(format!(
            "the guest's script ended with status {}",
            r.get("done")
                .map_or("(none: no done report)", String::as_str)
        ));
    }
    if r.get("io_result").map(String::as_str) != Some("ok") {
        out.failures.push(format!(
            "the guest's I/O check failed: {}; final read-back: {}",
            r.get("io_summary").map_or("(no summary)", String::as_str),
            r.get("final_verify").map_or("(none)", String::as_str)
        ));
    }
    if !con.fails.is_empty() && r.get("io_result").map(String::as_str) == Some("ok") {
        out.failures
            .push("the guest reported failures but io_result=ok".to_string());
    }
    let last_log = server.as_ref().map(|s| s.log_path().to_path_buf());
    if let Some(s) = server.take() {
        match s.stop() {
            Ok(st) if st.success() => {}
            Ok(st) => out
                .failures
                .push(format!("the last server exited with {st} after SIGTERM")),
            Err(e) => out.failures.push(format!("stopping the last server: {e}")),
        }
    }
    // The disk at rest (the overlay after SIGTERM) must be what the guest last read.
    if let (Some(digest), Some(blocks)) = (r.get("final_digest"), config_blocks(r)) {
        match host_digest(sc, blocks) {
            Ok(host) if &host == digest => {}
            Ok(host) => out.failures.push(format!(
                "after the run, the disk at rest holds other data than the guest last read: \
                 digest {host}, the guest's {digest}"
            )),
            Err(e) => out.failures.push(format!("host read-back: {e}")),
        }
    }
    if !out.failures.is_empty() {
        out.logs = format!(
            "\n--- console (tail, without progress) ---\n{}\n--- qemu (tail) ---\n{}\n\
             --- last server log: {} ---\n{}",
            console_tail(&con.vm, 60),
            tail(&con.vm.qemu_log(), 20),
            last_log
                .as_ref()
                .map_or("-".into(), |p| p.display().to_string()),
            last_log
                .as_ref()
                .map(|p| tail(&std::fs::read_to_string(p).unwrap_or_default(), 30))
                .unwrap_or_default()
        );
    }
    Ok(())
}

impl Console {
    /// Whether QEMU exited (the guest powered off or QEMU failed).
    fn vm_exited(&self) -> bool {
        self.exited
    }

    /// Whether the guest's watchdog reported a request hanging.
    fn hung(&self) -> bool {
        self.fails.iter().any(|f| f.starts_with("fail=hang"))
    }

    /// Whether to stop waiting: QEMU exited or the guest reported a hang.
    fn over(&self) -> bool {
        self.vm_exited() || self.hung()
    }
}

/// Connects to QEMU's listening control chardev (the guest's ttyS1).
fn connect_control(path: &Path) -> Result<UnixStream> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= end => {
                return Err(io_err(format!("connecting to {}", path.display()))(e))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The number of blocks the guest used, from its `io_config` report.
fn config_blocks(r: &BTreeMap<String, String>) -> Option<u64> {
    r.get("io_config")?
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("blocks:"))?
        .parse()
        .ok()
}

/// Reads the guest's region as the disk is at rest ([`Backend::read_back`])
/// and computes the guest's final digest over it.
fn host_digest(sc: &Scenario, blocks: u64) -> Result<String> {
    let data = sc
        .backend
        .read_back(sc.partition_offset, (blocks * 4096) as usize, &sc.workdir)?;
    let gens: Vec<(u64, u64)> = data
        .chunks(4096)
        .enumerate()
        .map(|(i, b)| (i as u64, block_gen(b)))
        .collect();
    Ok(format!("{:016x}", digest(&gens)))
}

// The block format of guest-io-check, for the host's read-back.
const MAGIC: u64 = 0x31_4b_53_49_44_49_43_4f;

fn checksum(words: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

/// The generation a 4 KiB block holds: 0 for zeros, `u64::MAX` if corrupt.
pub fn block_gen(block: &[u8]) -> u64 {
    let w: Vec<u64> = block
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    if w.iter().all(|&x| x == 0) {
        0
    } else if w[0] != MAGIC || checksum(&w[..511]) != w[511] {
        u64::MAX
    } else {
        w[2]
    }
}

fn digest(gens: &[(u64, u64)]) -> u64 {
    let words: Vec<u64> = gens.iter().flat_map(|&(b, g)| [b, g]).collect();
    checksum(&words)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The console's last lines, without the progress lines.
fn console_tail(vm: &RunningVm, lines: usize) -> String {
    let text = std::fs::read(vm.console_path())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("OCIDISK progress="))
        .collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=10).map(Duration::from_secs).collect();
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_secs(5)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_secs(10)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn zero_and_garbage_blocks() {
        assert_eq!(block_gen(&[0u8; 4096]), 0);
        let mut b = [0u8; 4096];
        b[0] = 1;
        assert_eq!(block_gen(&b), u64::MAX);
    }
}
