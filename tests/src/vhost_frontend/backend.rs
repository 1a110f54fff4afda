//! Runs `ocidisk serve` for hostile-frontend tests: its log is kept bounded
//! (a backend that logs 750k lines a second must not exhaust the test's
//! memory) and counted, and the process is watched from /proc: CPU time,
//! open file descriptors, threads.

use crate::blkio_client::ocidisk_binary;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How much of the log's start and end is kept.
const LOG_KEEP: usize = 64 << 10;

#[derive(Default)]
struct Log {
    head: String,
    tail: String,
}

/// A running `ocidisk serve`.
pub struct Backend {
    child: Option<Child>,
    pub socket: PathBuf,
    log: Arc<Mutex<Log>>,
    lines: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Backend {
    /// Runs `ocidisk serve --socket SOCKET ARGS...` and waits (10 s at most)
    /// for its `ready` line.
    pub fn start(socket: &Path, args: &[String]) -> Result<Self, String> {
        let bin = ocidisk_binary().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to
        // kill the child if the test thread that started it goes away (a
        // crashed test leaves no backend behind).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .arg("serve")
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start ocidisk: {e}"))?;
        let log = Arc::new(Mutex::new(Log::default()));
        let lines = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let stderr = child.stderr.take().unwrap();
        {
            let (log, lines, bytes) = (log.clone(), lines.clone(), bytes.clone());
            std::thread::spawn(move || {
                let mut stderr = stderr;
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let chunk = &buf[..n];
                    lines.fetch_add(
                        chunk.iter().filter(|&&b| b == b'\n').count() as u64,
                        Ordering::Relaxed,
                    );
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                    let text = String::from_utf8_lossy(chunk);
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    if log.head.len() < LOG_KEEP {
                        log.head.push_str(&text);
                    } else {
                        log.tail.push_str(&text);
                        if log.tail.len() > 2 * LOG_KEEP {
                            let cut = log.tail.len() - LOG_KEEP;
                            let cut = (cut..log.tail.len())
                                .find(|&i| log.tail.is_char_boundary(i))
                                .unwrap_or(log.tail.len());
                            log.tail.drain(..cut);
                        }
                    }
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut backend = Self {
            child: Some(child),
            socket: socket.to_owned(),
            log,
            lines,
            bytes,
        };
        let expected = format!("ready socket={}", socket.display());
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line == expected => Ok(backend),
            other => {
                let status = backend.wait_exit(Duration::from_secs(1));
                Err(format!(
                    "ocidisk did not become ready ({other:?}, exit {status:?}); log:\n{}",
                    backend.log()
                ))
            }
        }
    }

    /// The kept log: its start, and its end if it grew large.
    pub fn log(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.tail.is_empty() {
            log.head.clone()
        } else {
            format!("{}\n[... log cut ...]\n{}", log.head, log.tail)
        }
    }

    /// Lines logged so far.
    pub fn log_lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Bytes logged so far.
    pub fn log_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process still runs; if it died, how.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => Err(format!("the backend died: {}", describe(status))),
            Some(Err(e)) => Err(format!("cannot wait for the backend: {e}")),
            None => Err("the backend was already stopped".into()),
        }
    }

    /// The process's CPU time so far (user + system, all threads).
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the command name, which ends with the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 (1-based), 11 and 12 here.
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(Duration::from_millis(ticks * 1000 / hz))
    }

    /// Open file descriptors.
    pub fn fd_count(&self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.pid()?))
                .ok()?
                .count(),
        )
    }

    /// What each open fd is (for error messages): counts by link target
    /// kind.
    pub fn fd_summary(&self) -> String {
        let Some(pid) = self.pid() else {
            return String::new();
        };
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for e in dir.flatten() {
                let t = std::fs::read_link(e.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let kind = if t.starts_with("anon_inode:") {
                    t.clone()
                } else if let Some(i) = t.find(":[") {
                    t[..i].to_string()
                } else if t.starts_with("/memfd:") {
                    "memfd".to_string()
                } else {
                    "file".to_string()
                };
                *kinds.entry(kind).or_default() += 1;
            }
        }
        format!("{kinds:?}")
    }

    /// Threads of the process.
    pub fn thread_count(&self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/task", self.pid()?))
                .ok()?
                .count(),
        )
    }

    /// CPU time used and lines logged over the next `over`.
    pub fn activity(&self, over: Duration) -> (Duration, u64) {
        let c0 = self.cpu_time().unwrap_or_default();
        let l0 = self.log_lines();
        std::thread::sleep(over);
        let c1 = self.cpu_time().unwrap_or_default();
        (c1.saturating_sub(c0), self.log_lines() - l0)
    }

    /// Fails if the backend is busy while nothing should be happening: more
    /// than 300 ms of CPU or 100 log lines over one second.
    pub fn assert_idle(&mut self, what: &str) -> Result<(), String> {
        self.alive()?;
        let (cpu, lines) = self.activity(Duration::from_secs(1));
        if cpu > Duration::from_millis(300) || lines > 100 {
            return Err(format!(
                "{what}: the backend is busy while idle (spinning?): {cpu:?} of CPU and \
                 {lines} log lines in 1 s; log:\n{}",
                self.log()
            ));
        }
        Ok(())
    }

    pub fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: signalling our own, unreaped child.
            unsafe { libc::kill(pid as libc::pid_t, sig) };
        }
    }

    /// Waits up to `t` for the process to exit.
    pub fn wait_exit(&mut self, t: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + t;
        loop {
            match child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return None,
            }
        }
    }

    /// SIGTERM, and the exit within `t`; on timeout the process is killed
    /// and an error returned.
    pub fn terminate_within(&mut self, t: Duration) -> Result<ExitStatus, String> {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
            return Err(format!(
                "the backend had already exited before SIGTERM: {}",
                describe(status)
            ));
        }
        let start = Instant::now();
        self.signal(libc::SIGTERM);
        match self.wait_exit(t) {
            Some(status) => {
                self.child = None;
                if status.success() {
                    Ok(status)
                } else {
                    Err(format!(
                        "the backend exited with {} after SIGTERM; log:\n{}",
                        describe(status),
                        self.log()
                    ))
                }
            }
            None => {
                self.kill();
                Err(format!(
                    "the backend did not exit within {:?} of SIGTERM (killed); log:\n{}",
                    start.elapsed(),
                    self.log()
                ))
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An exit status in words (signal names for the usual crashes).
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(libc::SIGBUS) => "killed by SIGBUS".into(),
        Some(libc::SIGSEGV) => "killed by SIGSEGV".into(),
        Some(libc::SIGABRT) => "killed by SIGABRT (abort/panic)".into(),
        Some(libc::SIGKILL) => "killed by SIGKILL".into(),
        Some(s) => format!("killed by signal {s}"),
        None => format!("{status}"),
    }
}
