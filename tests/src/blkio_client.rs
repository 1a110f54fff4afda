//! Drives a vhost-user-blk socket with libblkio, and runs `ocidisk serve`.
//!
//! - [`BlkioClient`] connects libblkio's `virtio-blk-vhost-user` driver to a
//!   socket and hands out one [`ClientQueue`] per virtqueue, each with its
//!   own slice of a memory region shared with the backend, so that queues can
//!   be driven from separate threads (tests, benchmarks);
//! - [`Server`] starts the `ocidisk` binary, waits for its `ready` line and
//!   stops it (SIGTERM or SIGKILL), keeping its log.

use anyhow::{anyhow, bail, Context};
use blkio::{Blkio, Blkioq, Completion, ReqFlags};
use std::io::{self, BufRead, BufReader, Read};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one request may take before the client calls the backend hung.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A libblkio connection to a vhost-user-blk socket.
pub struct BlkioClient {
    /// The queues; take them to drive them from other threads.
    pub queues: Vec<ClientQueue>,
    capacity: u64,
    read_only: bool,
    flush_needed: Option<bool>,
    // Dropped last: the queues' memory lives until the queues are dropped too.
    _blkio: Blkio,
}

impl BlkioClient {
    /// Connects to `socket` with `num_queues` queues, each with a buffer of
    /// `buf_len` bytes (a multiple of the page size).
    pub fn connect(socket: &Path, num_queues: usize, buf_len: usize) -> anyhow::Result<Self> {
        Self::connect_with(socket, num_queues, buf_len, false)
    }

    /// Connects like [`connect`](Self::connect), but read-only, which
    /// libblkio requires for a device that offers `VIRTIO_BLK_F_RO`.
    pub fn connect_read_only(
        socket: &Path,
        num_queues: usize,
        buf_len: usize,
    ) -> anyhow::Result<Self> {
        Self::connect_with(socket, num_queues, buf_len, true)
    }

    fn connect_with(
        socket: &Path,
        num_queues: usize,
        buf_len: usize,
        read_only: bool,
    ) -> anyhow::Result<Self> {
        let path = socket
            .to_str()
            .ok_or_else(|| anyhow!("socket path {} is not UTF-8", socket.display()))?;
        let err = |what: &str, e: blkio::Error| anyhow!("libblkio: {what}: {}", e.message());
        let mut blkio = Blkio::new("virtio-blk-vhost-user").map_err(|e| err("new", e))?;
        blkio.set_str("path", path).map_err(|e| err("path", e))?;
        blkio
            .set_bool("read-only", read_only)
            .map_err(|e| err("read-only", e))?;
        blkio.connect().map_err(|e| err("connect", e))?;
        blkio
            .set_i32("num-queues", num_queues as i32)
            .map_err(|e| err("num-queues", e))?;
        let outcome = blkio.start().map_err(|e| err("start", e))?;
        let capacity = blkio.get_u64("capacity").map_err(|e| err("capacity", e))?;
        let read_only = blkio
            .get_bool("read-only")
            .map_err(|e| err("read-only", e))?;
        // The device's write cache as libblkio read it (the WCE byte with
        // CONFIG_WCE); informational, so a libblkio without it is no error.
        let flush_needed = blkio.get_bool("flush-needed").ok();
        let region = blkio
            .alloc_mem_region(buf_len * num_queues)
            .map_err(|e| err("alloc_mem_region", e))?;
        blkio
            .map_mem_region(&region)
            .map_err(|e| err("map_mem_region", e))?;
        let queues = outcome
            .queues
            .into_iter()
            .enumerate()
            .map(|(i, queue)| ClientQueue {
                queue,
                buf: (region.addr + i * buf_len) as *mut u8,
                buf_len,
                in_flight: 0,
            })
            .collect();
        Ok(Self {
            queues,
            capacity,
            read_only,
            flush_needed,
            _blkio: blkio,
        })
    }

    /// The disk size in bytes, as the device reports it.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the device says it is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the device wants flushes (its write cache is on), as
    /// libblkio's `flush-needed` says; `None` if libblkio does not say.
    /// libblkio negotiates `CONFIG_WCE` but never writes the WCE byte, so
    /// this is the mode the device started in.
    pub fn flush_needed(&self) -> Option<bool> {
        self.flush_needed
    }

    /// The first queue.
    pub fn queue(&mut self) -> &mut ClientQueue {
        &mut self.queues[0]
    }
}

/// One virtqueue and its buffer in memory shared with the backend.
pub struct ClientQueue {
    queue: Blkioq,
    buf: *mut u8,
    buf_len: usize,
    in_flight: usize,
}

// SAFETY: `buf` points into a memory region that lives as long as the queue
// (libblkio frees regions only after the `Blkio` and all its queues are
// dropped), and no two queues share a part of it.
unsafe impl Send for ClientQueue {}

/// One request for [`ClientQueue::submit`]: byte ranges on the disk, and
/// buffer offsets within the queue's buffer.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Read `len` bytes at `offset` into the buffer at `buf`.
    Read { offset: u64, buf: usize, len: usize },
    /// Write `len` bytes from the buffer at `buf` to `offset`.
    Write { offset: u64, buf: usize, len: usize },
    /// Flush.
    Flush,
    /// Discard `len` bytes at `offset`.
    Discard { offset: u64, len: u64 },
    /// Zero `len` bytes at `offset`, allowing the device to unmap if `unmap`.
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

impl ClientQueue {
    /// The queue's buffer.
    pub fn buf(&mut self) -> &mut [u8] {
        // SAFETY: see `unsafe impl Send`; `&mut self` makes this the only
        // reference, and the backend only touches the buffer while a request
        // is in flight, which `submit`/`reap` callers keep track of.
        unsafe { std::slice::from_raw_parts_mut(self.buf, self.buf_len) }
    }

    /// The buffer size.
    pub fn buf_len(&self) -> usize {
        self.buf_len
    }

    /// Queues `op` with `user_data`; [`reap`](Self::reap) collects it.
    pub fn submit(&mut self, op: Op, user_data: usize) {
        let check = |buf: usize, len: usize| {
            assert!(
                buf.checked_add(len).is_some_and(|end| end <= self.buf_len),
                "buffer range {buf}+{len} outside the queue's {} bytes",
                self.buf_len
            )
        };
        let none = ReqFlags::empty();
        match op {
            Op::Read { offset, buf, len } => {
                check(buf, len);
                // SAFETY: checked to lie within the buffer.
                let ptr = unsafe { self.buf.add(buf) };
                self.queue.read(offset, ptr, len, user_data, none);
            }
            Op::Write { offset, buf, len } => {
                check(buf, len);
                // SAFETY: checked to lie within the buffer.
                let ptr = unsafe { self.buf.add(buf) };
                self.queue.write(offset, ptr, len, user_data, none);
            }
            Op::Flush => self.queue.flush(user_data, none),
            Op::Discard { offset, len } => self.queue.discard(offset, len, user_data, none),
            Op::WriteZeroes { offset, len, unmap } => {
                let flags = if unmap { none } else { ReqFlags::NO_UNMAP };
                self.queue.write_zeroes(offset, len, user_data, flags)
            }
        }
        self.in_flight += 1;
    }

    /// Submits queued requests and waits for at least `min` completions
    /// (within [`REQUEST_TIMEOUT`]); appends `(user_data, result)` for each.
    pub fn reap(&mut self, min: usize, out: &mut Vec<(usize, io::Result<()>)>) -> io::Result<()> {
        let mut completions = [const { MaybeUninit::<Completion>::uninit() }; 64];
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut got = 0;
        loop {
            let want = min.saturating_sub(got).min(completions.len());
            let mut timeout = deadline.saturating_duration_since(Instant::now());
            let n = self
                .queue
                .do_io(&mut completions, want, Some(&mut timeout), None)
                .map_err(|e| io::Error::other(format!("do_io: {}", e.message())))?;
            for c in &completions[..n] {
                // SAFETY: do_io initialized the first `n` completions.
                let c = unsafe { c.assume_init_read() };
                let result = if c.ret == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-c.ret))
                };
                out.push((c.user_data, result));
            }
            got += n;
            self.in_flight -= n;
            if got >= min {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{got} of {min} requests completed within {REQUEST_TIMEOUT:?}"),
                ));
            }
        }
    }

    /// Runs one request to completion.
    pub fn run(&mut self, op: Op) -> io::Result<()> {
        self.submit(op, 0);
        let mut out = Vec::with_capacity(1);
        self.reap(1, &mut out)?;
        out.pop()
            .map(|(_, r)| r)
            .unwrap_or_else(|| Err(io::Error::other("no completion")))
    }

    /// Reads `len` bytes at `offset` and returns them.
    pub fn read(&mut self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.run(Op::Read {
            offset,
            buf: 0,
            len,
        })?;
        Ok(self.buf()[..len].to_vec())
    }

    /// Writes `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.buf()[..data.len()].copy_from_slice(data);
        self.run(Op::Write {
            offset,
            buf: 0,
            len: data.len(),
        })
    }

    /// Flushes.
    pub fn flush(&mut self) -> io::Result<()> {
        self.run(Op::Flush)
    }

    /// The number of submitted requests not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

/// Where the tests find the `ocidisk` binary (it lives with the command
/// helper now; re-exported for the callers that name it here).
pub use crate::cli::ocidisk_binary;

/// The `ocidisk` binary a benchmark measures: `OCIDISK_BIN`, else the
/// release build in the benchmark's target directory, else the debug build
/// (with a warning on stderr, since its figures mean little).
pub fn ocidisk_bench_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("OCIDISK_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().context("cannot find the benchmark executable")?;
    // target/<profile>/deps/<bench> → target/
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| anyhow!("unexpected benchmark path {}", exe.display()))?;
    for profile in ["release", "debug"] {
        let bin = target.join(profile).join("ocidisk");
        if bin.is_file() {
            if profile == "debug" {
                eprintln!("warning: measuring a debug build of ocidisk; build --release first");
            }
            return Ok(bin);
        }
    }
    bail!(
        "no ocidisk binary in {}/release: run `cargo build --release -p ocidisk` first \
         (or set OCIDISK_BIN)",
        target.display()
    )
}

/// A running `ocidisk serve`.
pub struct Server {
    child: Option<Child>,
    /// The socket it listens on.
    pub socket: PathBuf,
    log: Arc<Mutex<String>>,
}

/// How long `ocidisk serve` may take to become ready or to exit.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(30);

impl Server {
    /// Runs `ocidisk serve --socket SOCKET ARGS...` and waits for its
    /// `ready socket=SOCKET` line.
    pub fn start<S: AsRef<std::ffi::OsStr>>(socket: &Path, args: &[S]) -> anyhow::Result<Self> {
        Self::start_with(Command::new(ocidisk_binary()?), socket, args)
    }

    /// [`start`](Self::start) under `wrapper`, a program that sets
    /// something up and then runs the rest of its command line (e.g.
    /// `deny-io-uring`).
    pub fn start_under<S: AsRef<std::ffi::OsStr>>(
        wrapper: &Path,
        socket: &Path,
        args: &[S],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(wrapper);
        command.arg(ocidisk_binary()?);
        Self::start_with(command, socket, args)
    }

    fn start_with<S: AsRef<std::ffi::OsStr>>(
        mut command: Command,
        socket: &Path,
        args: &[S],
    ) -> anyhow::Result<Self> {
        let mut child = command
            .arg("serve")
            .arg("--socket")
            .arg(socket)
            .args(args)
            // Failed requests are logged at debug: a failing test shows why.
            .env("RUST_LOG", "info,ocidisk::device::request=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start ocidisk")?;
        let log = Arc::new(Mutex::new(String::new()));
        let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
            (Some(o), Some(e)) => (o, e),
            _ => bail!("ocidisk's output is not piped"),
        };
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut stderr = stderr;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&text);
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            child: Some(child),
            socket: socket.to_owned(),
            log,
        };
        let expected = format!("ready socket={}", socket.display());
        match rx.recv_timeout(SERVER_TIMEOUT) {
            Ok(line) if line == expected => Ok(server),
            Ok(line) => bail!("ocidisk printed {line:?}, not {expected:?}"),
            Err(_) => {
                let status = server.wait_exit(Duration::from_secs(1));
                bail!(
                    "ocidisk did not become ready (exit: {status:?}); its log:\n{}",
                    server.log()
                )
            }
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits up to `timeout` until the log holds `needle` at least `count`
    /// times (the log is read asynchronously); returns the log.
    pub fn wait_for_log(
        &self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count {
                return Ok(log);
            }
            if Instant::now() >= deadline {
                return Err(log);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        // SAFETY: kill() with a pid we started and have not reaped.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> anyhow::Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        let status = self.wait_exit(SERVER_TIMEOUT);
        if status.is_some() {
            self.child = None; // reaped
        }
        status.ok_or_else(|| anyhow!("ocidisk did not exit after SIGTERM"))
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("ocidisk serve's log:\n{}", self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
