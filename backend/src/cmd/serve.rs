//! `ocidisk serve`: serves a disk over a vhost-user-blk socket until told to
//! stop.
//!
//! The socket is created once and kept for the life of the process: one
//! frontend at a time is served (QEMU, cloud-hypervisor, libblkio); when it
//! disconnects (guest reboot, QEMU restart or crash) the disk is flushed and
//! the next frontend is accepted on the same socket. SIGTERM or SIGINT, idle
//! or connected, ends the connection, flushes the disk, removes the socket
//! and exits 0.
//!
//! Ready means listening: the socket is bound and listening under a temporary
//! name, given its mode, and only then renamed into place, so a launcher that
//! waits for the path never connects too early. `ready socket=PATH` on stdout
//! says the same to launchers that read lines.
//!
//! Signals are blocked in every thread before the first one starts and taken
//! by one thread with `sigwait`, by hand rather than with signal-hook: no
//! handler ever runs, so no thread is interrupted mid-syscall (io_uring
//! waits, vhost-user reads) and nothing needs to be async-signal-safe.
//! signal-hook's handler-and-pipe design would bring back exactly that, for
//! the sake of the three small `unsafe` blocks in `Signals`.
//!
//! They are blocked once the disk is open, not at the start: opening it
//! (a registry's manifest with its retries, a large layout) may take long,
//! and until a device exists there is nothing to flush, so a SIGTERM or a
//! Ctrl-C then should end the process at once, as it does by default. The
//! only threads that exist earlier, the chunk cache's readahead threads,
//! block every signal themselves (`layout::chunkcache::readahead`).

use crate::cmd::image_args::ImageArgs;
use crate::device::engine::{EngineChoice, EngineConfig};
use crate::device::parallel::Helpers;
use crate::device::{BlkBackend, DeviceConfig, GuestMemory, Stats};
use crate::disk::{BlockDevice, OverlayDisk, ReadOnlyDisk};
use crate::metrics::trace::{TraceDisk, TracePartition};
use crate::metrics::{self, DiskMetrics, Labels, TraceWriter};
use crate::vhost_user::{wait_for, Ended, Session, Watchdog};
use anyhow::{bail, Context};
use std::io::{self, Write};
use std::os::fd::{AsFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Arguments of `ocidisk serve`.
#[derive(clap::Args)]
pub struct Args {
    /// The image and layout to serve.
    #[command(flatten)]
    pub image: ImageArgs,
    /// The VM's overlay file, which keeps what the guest writes: created if
    /// it does not exist, reopened (same disk, same GUIDs) if it does.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "readonly",
        conflicts_with = "readonly"
    )]
    pub overlay: Option<PathBuf>,
    /// Serve the composed disk read-only, without an overlay (the device
    /// offers VIRTIO_BLK_F_RO).
    #[arg(long)]
    pub readonly: bool,
    /// Seeds the GUIDs of a `--readonly` disk (an overlay keeps its own id).
    #[arg(long, value_name = "TEXT", default_value = "", requires = "readonly")]
    pub disk_id: String,
    /// Open an overlay made for another image or layout, keeping its writes
    /// over the new base.
    #[arg(long, requires = "overlay")]
    pub rebase: bool,
    /// Where the overlay's block states live between flushes (a tmpfs: they
    /// survive this process, so a restarted backend finds every write the
    /// guest saw complete, and vanish with a reboot, after which only
    /// flushed writes count). See overlay/FORMAT.md, "the shadow map".
    #[arg(long, value_name = "DIR", default_value = overlay::DEFAULT_SHADOW_DIR, requires = "overlay")]
    pub shadow_dir: Option<PathBuf>,
    /// How to serve: socket, queues, engine, metrics.
    #[command(flatten)]
    pub serve: ServeOptions,
}

/// How the device is offered, independent of what it serves.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeOptions {
    /// The vhost-user socket to listen on. A stale socket left by a dead
    /// process is replaced; one that a live process accepts on is refused.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Virtqueues to offer; each runs on its own thread.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub num_queues: u32,
    /// The largest virtqueue size the frontend may choose (a power of two).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub queue_size: u32,
    /// The serial number the guest sees (up to 20 bytes).
    #[arg(long, default_value = "", value_name = "ID")]
    pub serial: String,
    /// Start in write-through mode: every write is durable before it
    /// completes (the guest may switch to write-back).
    #[arg(long)]
    pub writethrough: bool,
    /// The socket's permissions, in octal.
    #[arg(long, default_value = "0600", value_name = "MODE", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// Serve guest I/O metrics (Prometheus text at /metrics, JSON at
    /// /metrics.json) on a loopback address like `127.0.0.1:9100` or a unix
    /// socket path.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Write the I/O totals as JSON to FILE when the process exits.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// Record every request in FILE (format: backend/src/metrics/TRACE.md).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// How many threads copy large reads (256 KiB or more) at once, the
    /// queue's own thread included [default: one per CPU; 0 or 1: the queue
    /// thread alone].
    #[arg(long, value_name = "N")]
    pub helper_threads: Option<usize>,
    /// How queues reach the disk: `uring` keeps many requests in flight per
    /// queue on an io_uring, `sync` makes one blocking call at a time,
    /// `auto` uses io_uring where this process may.
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto, value_name = "ENGINE")]
    pub io_engine: EngineChoice,
    /// After its last request, a queue's thread keeps polling its ring and
    /// virtqueue this many microseconds before it sleeps: lower latency at
    /// low queue depth, for CPU time (io_uring engine only).
    #[arg(long, default_value_t = 0, value_name = "US")]
    pub poll_us: u64,
    /// Read the image's blobs and read and write the overlay with O_DIRECT
    /// (bypassing the host's page cache), where a request's buffers are
    /// aligned for it (io_uring engine only).
    #[arg(long)]
    pub direct: bool,
    /// The counters of a registry image's fetching, for `/metrics` (set by
    /// `serve` when the image is a `docker://` reference).
    #[arg(skip)]
    pub registry: Option<crate::remote_image::RemoteCounters>,
}

impl ServeOptions {
    /// The helper threads for large transfers, unless there is nothing to
    /// share them with.
    fn helpers(&self) -> anyhow::Result<Option<Arc<Helpers>>> {
        let helpers = match self.helper_threads {
            None => Helpers::for_this_machine(),
            Some(0 | 1) => Ok(None),
            Some(n) => Helpers::new(n).map(Some),
        };
        Ok(helpers
            .context("cannot start the helper threads")?
            .map(Arc::new))
    }

    /// The engine the queues run on; `direct` is what the disk's
    /// `O_DIRECT` files need, when `--direct` opened them.
    fn engine(&self, direct: Option<blockio::DirectAlign>) -> anyhow::Result<EngineConfig> {
        let poll = std::time::Duration::from_micros(self.poll_us);
        let engine = EngineConfig::resolve(self.io_engine, poll, direct)
            .context("cannot use io_uring (--io-engine uring)")?;
        if self.direct && !engine.uring {
            bail!("--direct needs the io_uring engine");
        }
        tracing::info!(
            engine = if engine.uring { "io_uring" } else { "blocking" },
            poll_us = self.poll_us,
            direct = self.direct,
            direct_mem_align = direct.map(|a| a.mem),
            direct_offset_align = direct.map(|a| a.offset),
            "I/O engine"
        );
        Ok(engine)
    }

    /// The metrics the device records into, if anything asked for them;
    /// a trace's header describes `disk` (its partition table included).
    fn disk_metrics(&self, disk: &TraceDisk) -> anyhow::Result<Option<Arc<DiskMetrics>>> {
        if self.metrics.is_none() && self.stats_json.is_none() && self.trace.is_none() {
            return Ok(None);
        }
        let queues = self.num_queues as usize;
        let labels = Labels {
            serial: self.serial.clone(),
            socket: self.socket.display().to_string(),
        };
        Ok(Some(match &self.trace {
            None => DiskMetrics::new(queues, labels),
            Some(path) => {
                let trace = TraceWriter::create_for(path, queues, disk)
                    .with_context(|| format!("cannot create the trace {}", path.display()))?;
                DiskMetrics::with_trace(queues, labels, trace)
            }
        }))
    }
}

/// Parses an octal permission mode such as `0600`, `600` or `0o660`.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!("{s:?} is not an octal permission mode like 0600")),
    }
}

/// Runs `ocidisk serve`.
pub fn run(mut args: Args) -> anyhow::Result<()> {
    let mut direct = None;
    let partitions;
    let disk: Arc<dyn BlockDevice> = match &args.overlay {
        None => {
            let disk = args.image.compose(&args.disk_id)?;
            partitions = trace_partitions(&disk.partitions);
            if args.serve.direct {
                direct = Some(disk.map.open_direct()?);
            }
            Arc::new(ReadOnlyDisk::new(disk.map)?)
        }
        Some(path) => {
            let opts = overlay::OpenOptions {
                rebase: args.rebase,
                writethrough: args.serve.writethrough,
                read_only: false,
            };
            let shadow = args.shadow_dir.as_deref();
            let vm = args.image.open_overlay(path, true, &opts, shadow)?;
            partitions = trace_partitions(&vm.disk.partitions);
            tracing::info!(
                overlay = %path.display(),
                disk_id = %vm.overlay.header().disk_id,
                "opened overlay"
            );
            let disk = OverlayDisk::new(vm.disk.map, vm.overlay)?;
            if args.serve.direct {
                direct = Some(disk.open_direct()?);
            }
            Arc::new(disk)
        }
    };
    // A registry image's fetching shows in /metrics.
    args.serve.registry = args.image.remote.get().cloned();
    serve_device(disk, &partitions, &args.serve, direct)
}

/// The partition table as a trace header records it.
pub(crate) fn trace_partitions(parts: &[layout::PartitionInfo]) -> Vec<TracePartition> {
    parts
        .iter()
        .map(|p| TracePartition {
            index: p.index as u32,
            name: p.name.clone(),
            start: p.first_lba.saturating_mul(layout::gpt::SECTOR_SIZE),
            end: p
                .last_lba
                .saturating_add(1)
                .saturating_mul(layout::gpt::SECTOR_SIZE),
        })
        .collect()
}

/// Serves `device` on `opts.socket` until SIGTERM or SIGINT; `partitions`
/// (the device's partition table) goes into the header of a `--trace`;
/// `direct` is the alignment its `O_DIRECT` files need, if `--direct`
/// opened them.
pub fn serve_device(
    device: Arc<dyn BlockDevice>,
    partitions: &[TracePartition],
    opts: &ServeOptions,
    direct: Option<blockio::DirectAlign>,
) -> anyhow::Result<()> {
    let config = DeviceConfig::new(
        device.size(),
        device.read_only(),
        opts.num_queues,
        opts.queue_size,
        &opts.serial,
        opts.writethrough,
    )?;
    // Before any thread of the device exists, so that every thread inherits
    // the mask and only the signal thread ever sees these signals (earlier
    // threads mask themselves; the module doc says why this is not done
    // earlier).
    let signals = Signals::block()?;
    let engine = opts.engine(direct)?;
    let (wake_rx, wake_tx) = UnixStream::pair().context("cannot create a wake-up channel")?;
    let shared = Arc::new(Shared {
        terminated: AtomicBool::new(false),
        wake: wake_tx,
        watchdog: Mutex::new(None),
    });
    signals.spawn_waiter(Arc::clone(&shared))?;
    let helpers = opts.helpers()?;

    let metrics = opts.disk_metrics(&TraceDisk {
        size: config.size,
        label: opts.serial.clone(),
        partitions: partitions.to_vec(),
    })?;
    let _metrics_server = match (&opts.metrics, &metrics) {
        (Some(addr), Some(m)) => {
            let server = metrics::serve_http(addr, Arc::clone(m))
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            tracing::info!(addr = %server.local_addr(), "serving metrics");
            Some(server)
        }
        _ => None,
    };
    if let (Some(m), Some(r)) = (&metrics, &opts.registry) {
        let r = r.clone();
        m.set_registry(move || r.metrics());
    }
    if let Some(m) = &metrics {
        spawn_allocation_gauge(Arc::clone(&device), Arc::clone(m), Arc::clone(&shared));
    }

    let socket = SocketFile::bind_or_inherit(&opts.socket, opts.socket_mode)?;
    tracing::info!(
        socket = %opts.socket.display(),
        size = config.size,
        read_only = config.read_only,
        queues = config.num_queues,
        "listening"
    );
    {
        let mut out = io::stdout().lock();
        writeln!(out, "ready socket={}", opts.socket.display())?;
        out.flush()?;
    }

    let result = serve_loop(
        &device,
        &config,
        engine,
        &metrics,
        &helpers,
        &shared,
        &socket.listener,
        &wake_rx,
    );
    // Whatever ended the loop, leave the disk durable and the path free.
    let flushed = device.flush().context("cannot flush the disk");
    drop(socket);
    let reported = report_metrics(metrics.as_deref(), opts);
    result?;
    flushed?;
    reported?;
    tracing::info!("flushed the disk and removed the socket; exiting");
    Ok(())
}

/// Keeps the overlay-allocation gauge current, once a second, until the
/// process terminates.
fn spawn_allocation_gauge(
    device: Arc<dyn BlockDevice>,
    metrics: Arc<DiskMetrics>,
    shared: Arc<Shared>,
) {
    std::thread::spawn(move || {
        while !shared.terminated.load(Ordering::SeqCst) {
            if let Some(bytes) = device.allocated_bytes() {
                metrics.set_overlay_allocated(bytes);
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
}

/// Closes the trace and writes the totals file, as asked.
fn report_metrics(metrics: Option<&DiskMetrics>, opts: &ServeOptions) -> anyhow::Result<()> {
    let Some(metrics) = metrics else {
        return Ok(());
    };
    if let Some(totals) = metrics.close_trace().context("cannot finish the trace")? {
        tracing::info!(?totals, "trace written");
    }
    if let Some(path) = &opts.stats_json {
        metrics::write_stats_json(path, &metrics.snapshot())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Accepts and serves frontends one after another until termination.
#[allow(clippy::too_many_arguments)]
fn serve_loop(
    device: &Arc<dyn BlockDevice>,
    config: &DeviceConfig,
    engine: EngineConfig,
    metrics: &Option<Arc<DiskMetrics>>,
    helpers: &Option<Arc<Helpers>>,
    shared: &Shared,
    listener: &UnixListener,
    wake: &UnixStream,
) -> anyhow::Result<()> {
    loop {
        // A frontend connecting (true) or a signal arriving (false).
        if !wait_for(listener.as_fd(), wake.as_fd())? || shared.terminated.load(Ordering::SeqCst) {
            tracing::info!("terminating on signal");
            return Ok(());
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!("cannot accept a frontend: {err}");
                // Do not spin if accepting keeps failing (say, out of file
                // descriptors); the pending connection waits in the backlog.
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let mem: GuestMemory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = Arc::new(
            BlkBackend::new(Arc::clone(device), config.clone(), mem.clone())
                .with_metrics(metrics.clone())
                .with_helpers(helpers.clone())
                .with_engine(engine)
                .context("cannot set up the I/O engine")?,
        );
        let mut session = Session::new(stream, Arc::clone(&backend), mem)
            .context("cannot set up the connection")?;
        tracing::info!("frontend connected");
        shared.set_watchdog(Some(session.watchdog()?));
        let ended = session.run(wake.as_fd());
        shared.set_watchdog(None);
        // Every request taken from the rings is answered before the socket
        // closes and before the disk is flushed: the frontend (or the next
        // backend) then finds each one either done or still available.
        session.stop_queues();
        let Stats { requests, errors } = backend.stats();
        match &ended {
            Ended::Disconnected => tracing::info!(requests, errors, "frontend disconnected"),
            Ended::Stopped => tracing::info!(requests, errors, "stopping the connection"),
            Ended::Failed(err) => {
                tracing::warn!(requests, errors, "frontend connection failed: {err}")
            }
        }
        let flushed = device
            .flush()
            .context("cannot flush the disk after the frontend disconnected");
        drop(session);
        flushed?;
        if shared.terminated.load(Ordering::SeqCst) {
            tracing::info!("terminating on signal");
            return Ok(());
        }
    }
}

/// State shared between the serve loop and the signal thread.
struct Shared {
    terminated: AtomicBool,
    /// Wakes the serve loop, whether it waits for a frontend or serves one:
    /// once written it stays readable.
    wake: UnixStream,
    /// The session being served, to cut it if a frontend holds it inside a
    /// message when a stop comes.
    watchdog: Mutex<Option<Watchdog>>,
}

impl Shared {
    fn terminate(&self) {
        self.terminated.store(true, Ordering::SeqCst);
        let _ = (&self.wake).write(&[1]);
    }

    fn set_watchdog(&self, watchdog: Option<Watchdog>) {
        *self.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = watchdog;
    }

    /// After a stop: cuts the session if it stays stuck inside one message
    /// for a second (a frontend that stopped mid-message or stopped
    /// reading replies); a session between messages stops by itself.
    fn cut_stuck_sessions(&self) {
        for _ in 0..50 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let slot = self.watchdog.lock().unwrap_or_else(|e| e.into_inner());
            match slot.as_ref() {
                None => return,
                Some(w) if w.cut_if_stuck(std::time::Duration::from_secs(1)) => return,
                Some(_) => {}
            }
        }
    }
}

/// SIGTERM and SIGINT, blocked in every thread and taken by one.
struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    /// Blocks SIGTERM and SIGINT in the calling thread (and so in every
    /// thread it starts afterwards).
    fn block() -> io::Result<Self> {
        // SAFETY: `sigset_t` is plain data; sigemptyset initializes it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
        let rc = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(Self { set })
    }

    /// Starts the thread that waits for the signals and terminates `shared`.
    fn spawn_waiter(self, shared: Arc<Shared>) -> io::Result<()> {
        std::thread::Builder::new()
            .name("signals".to_owned())
            .spawn(move || loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `self.set` is an initialized sigset_t and `sig` a
                // valid out-pointer.
                let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
                if rc == 0 {
                    // Terminate first: logging may fail (a closed stderr)
                    // and must not stand between a signal and a clean exit.
                    shared.terminate();
                    tracing::info!(signal = sig, "received a termination signal");
                    shared.cut_stuck_sessions();
                }
            })
            .map(drop)
    }
}

/// The listening socket and its path, removed again when dropped (if it is
/// still ours).
struct SocketFile {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file, to recognize it at removal;
    /// `None` for a socket inherited from the launcher, which stays.
    id: Option<(u64, u64)>,
}

impl SocketFile {
    /// The listening socket a launcher handed over (systemd's socket
    /// activation: `LISTEN_PID` is this process and `LISTEN_FDS` is 1, the
    /// socket is fd 3), or else a new one bound at `path`.
    ///
    /// An inherited socket outlives this process: frontends that connect
    /// while no backend runs wait in its backlog, which is what lets a new
    /// binary replace a running one under a live VM.
    fn bind_or_inherit(path: &Path, mode: u32) -> anyhow::Result<Self> {
        match inherited_listener()? {
            Some(listener) => {
                tracing::info!(socket = %path.display(), "serving on the inherited socket (fd 3)");
                Ok(Self {
                    listener,
                    path: path.to_owned(),
                    id: None,
                })
            }
            None => Self::bind(path, mode),
        }
    }

    /// Binds a listening socket at `path` with permissions `mode`, replacing
    /// a stale socket file and refusing a live one.
    fn bind(path: &Path, mode: u32) -> anyhow::Result<Self> {
        check_existing(path)?;
        let listener = match temp_path(path) {
            Some(temp) => {
                let _ = std::fs::remove_file(&temp);
                match bind_with_mode(&temp, mode) {
                    Ok(listener) => {
                        // rename() replaces a stale socket atomically.
                        std::fs::rename(&temp, path).with_context(|| {
                            let _ = std::fs::remove_file(&temp);
                            format!("cannot move the socket into place at {}", path.display())
                        })?;
                        listener
                    }
                    // The temporary name is longer than the path and may not
                    // fit in a socket address: bind in place instead.
                    Err(_) => bind_in_place(path, mode)?,
                }
            }
            None => bind_in_place(path, mode)?,
        };
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("cannot stat the socket {}", path.display()))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            id: Some((meta.dev(), meta.ino())),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let Some(id) = self.id else {
            return;
        };
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == id => {
                if let Err(err) = std::fs::remove_file(&self.path) {
                    tracing::warn!("cannot remove the socket {}: {err}", self.path.display());
                }
            }
            _ => tracing::warn!(
                "the socket {} was replaced or removed by someone else; leaving it",
                self.path.display()
            ),
        }
    }
}

/// The listening socket passed by systemd-style socket activation, if
/// this process was given one.
fn inherited_listener() -> anyhow::Result<Option<UnixListener>> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    let Some(count) = std::env::var("LISTEN_FDS").ok().filter(|_| ours) else {
        return Ok(None);
    };
    if count != "1" {
        bail!("LISTEN_FDS={count}: ocidisk serve takes exactly one socket");
    }
    const FD: RawFd = 3;
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `listening` and `len` are valid out-pointers of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            FD,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || listening == 0 {
        bail!("LISTEN_FDS=1, but fd 3 is not a listening socket");
    }
    // SAFETY: fd 3 was handed to this process to own (LISTEN_PID), and
    // nothing else in it uses that descriptor.
    let listener = unsafe { <UnixListener as std::os::fd::FromRawFd>::from_raw_fd(FD) };
    // Set close-on-exec, as every descriptor this process opens has.
    // SAFETY: fcntl without pointers on a descriptor we own.
    unsafe { libc::fcntl(FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(Some(listener))
}

/// Refuses a path that a live process accepts on or that is not a socket;
/// a stale socket (nobody listening) may be replaced.
fn check_existing(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("cannot stat {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        );
    }
    match UnixStream::connect(path) {
        Ok(_) => bail!(
            "the socket {} is in use: another process is serving on it",
            path.display()
        ),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "replacing a stale socket");
            Ok(())
        }
        Err(err) => Err(err).with_context(|| {
            format!(
                "cannot tell whether the socket {} is still in use",
                path.display()
            )
        }),
    }
}

/// A temporary name next to `path`, for binding before the rename.
fn temp_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_string_lossy();
    Some(path.with_file_name(format!(".{name}.{}.tmp", std::process::id())))
}

/// Binds `path` directly (after removing a stale socket there).
fn bind_in_place(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| format!("cannot remove stale {}", path.display()))
        }
    }
    bind_with_mode(path, mode).with_context(|| format!("cannot listen on {}", path.display()))
}

/// Binds and listens on `path`, created with permissions `mode` (no window
/// in which it has others).
fn bind_with_mode(path: &Path, mode: u32) -> io::Result<UnixListener> {
    // The umask is process-wide; only the signal thread runs now, and it
    // creates no files.
    use rustix::fs::Mode;
    let old = rustix::process::umask(Mode::from_bits_truncate(!mode & 0o777));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound?;
    // The umask can only take bits away; set the mode exactly.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o644"), Ok(0o644));
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("1777").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn socket_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let socket = SocketFile::bind(&path, 0o640).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        // Live: refused, and the error says why.
        let err = SocketFile::bind(&path, 0o600).err().unwrap();
        assert!(err.to_string().contains("in use"), "{err:#}");
        drop(socket);
        assert!(!path.exists());
        // Stale: a socket file nobody listens on is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let socket = SocketFile::bind(&path, 0o600).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(socket);
        // Not a socket: refused, and left alone.
        std::fs::write(&path, b"precious").unwrap();
        let err = SocketFile::bind(&path, 0o600).err().unwrap();
        assert!(err.to_string().contains("not a socket"), "{err:#}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }
}
