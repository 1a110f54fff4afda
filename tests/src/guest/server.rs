//! The vhost-user-blk server a VM connects to, as a child process: today
//! `qemu-storage-daemon` exporting a raw file, tomorrow `ocidisk serve`. Both
//! are a command, a socket and a way to tell that the server is ready.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::error::{io_err, Error, Result};
use super::tool;

/// How to tell that a server accepts connections.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// A file appears (qemu-storage-daemon writes its `--pidfile` after its
    /// exports listen).
    FileExists(PathBuf),
    /// A line on stdout starts with this text (`ocidisk serve` prints
    /// `ready socket=PATH`).
    StdoutLine(String),
}

/// A running vhost-user-blk server. Dropping it kills the process.
#[derive(Debug)]
pub struct VhostUserServer {
    name: String,
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

/// How long a server may take to get ready or to stop.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl VhostUserServer {
    /// Starts `cmd`, whose socket is `socket`, and waits until `ready`. Its
    /// stderr (and stdout) go to `log`, which errors quote.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        socket: &Path,
        ready: Readiness,
        log: &Path,
    ) -> Result<VhostUserServer> {
        let log_file =
            std::fs::File::create(log).map_err(io_err(format!("creating {}", log.display())))?;
        let stderr = log_file
            .try_clone()
            .map_err(io_err(format!("duplicating {}", log.display())))?;
        let stdout = match ready {
            Readiness::StdoutLine(_) => Stdio::piped(),
            Readiness::FileExists(_) => Stdio::from(
                log_file
                    .try_clone()
                    .map_err(io_err(format!("duplicating {}", log.display())))?,
            ),
        };
        let command_line = tool::describe(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| Error::ToolMissing {
                tool: cmd.get_program().to_string_lossy().into_owned(),
                source,
            })?;
        let mut server = VhostUserServer {
            name: name.to_string(),
            child: Some(child),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        };
        server.wait_ready(ready, log_file, &command_line)?;
        Ok(server)
    }

    /// Exports the raw disk image `disk` read-write on `socket` with
    /// qemu-storage-daemon; its log and pid file go to `workdir`.
    pub fn qemu_storage_daemon(disk: &Path, socket: &Path, workdir: &Path) -> Result<Self> {
        let n = unique();
        let pidfile = workdir.join(format!("qsd-{n}.pid"));
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f,filename={},cache.direct=off",
                disk.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on,num-queues=4",
                socket.display()
            ))
            .arg("--pidfile")
            .arg(&pidfile);
        VhostUserServer::spawn(
            "qemu-storage-daemon",
            cmd,
            socket,
            Readiness::FileExists(pidfile),
            &workdir.join(format!("qsd-{n}.log")),
        )
    }

    /// Serves an OCI image with `ocidisk serve` (the binary at `ocidisk`):
    /// `ocidisk serve --image IMAGE --socket SOCKET --overlay OVERLAY EXTRA…`,
    /// ready when it prints `ready socket=`; its log goes to `workdir`.
    pub fn ocidisk_serve(
        ocidisk: &Path,
        image: &Path,
        overlay: &Path,
        socket: &Path,
        extra: &[&str],
        workdir: &Path,
    ) -> Result<Self> {
        let mut cmd = Command::new(ocidisk);
        cmd.arg("serve")
            .arg("--image")
            .arg(image)
            .arg("--socket")
            .arg(socket)
            .arg("--overlay")
            .arg(overlay)
            .args(extra)
            // The log is a file that errors quote: no terminal colour codes.
            .env("NO_COLOR", "1");
        VhostUserServer::spawn(
            "ocidisk serve",
            cmd,
            socket,
            Readiness::StdoutLine("ready socket=".to_string()),
            &workdir.join(format!("ocidisk-serve-{}.log", unique())),
        )
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The socket a frontend connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asks the server to stop (SIGTERM) and waits for it; kills it if it
    /// takes longer than 10 s. Returns its exit status.
    pub fn stop(mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(Error::Failed {
                what: format!("{} was already stopped", self.name),
                log: self.log(),
            });
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if started.elapsed() > STOP_TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Timeout {
                        what: format!("{} stopping after SIGTERM", self.name),
                        after: STOP_TIMEOUT,
                        log: self.log(),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(io_err(format!("waiting for {}", self.name))(e)),
            }
        }
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it; its
    /// socket file stays behind. Returns its exit status.
    pub fn kill(mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(Error::Failed {
                what: format!("{} was already stopped", self.name),
                log: self.log(),
            });
        };
        child
            .kill()
            .and_then(|()| child.wait())
            .map_err(io_err(format!("killing {}", self.name)))
    }

    /// The file the server's stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn wait_ready(
        &mut self,
        ready: Readiness,
        log_file: std::fs::File,
        command_line: &str,
    ) -> Result<()> {
        // A stdout watcher sends the ready line, then keeps copying stdout to
        // the log so the server never blocks on a full pipe.
        let (tx, rx) = mpsc::channel::<()>();
        if let Readiness::StdoutLine(prefix) = &ready {
            let stdout = self.child.as_mut().and_then(|c| c.stdout.take());
            if let Some(stdout) = stdout {
                let prefix = prefix.clone();
                let mut log_file = log_file;
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        let _ = writeln!(log_file, "{line}");
                        if line.starts_with(&prefix) {
                            let _ = tx.send(());
                        }
                    }
                });
            }
        }
        let started = Instant::now();
        loop {
            let is_ready = match &ready {
                Readiness::FileExists(path) => path.exists(),
                Readiness::StdoutLine(_) => rx.try_recv().is_ok(),
            };
            if is_ready {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::Failed {
                        what: format!("{command_line}\nexited with {status} before it was ready"),
                        log: self.log(),
                    });
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(Error::Timeout {
                    what: format!("{command_line} getting ready"),
                    after: READY_TIMEOUT,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for VhostUserServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_readiness_and_stop() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo starting; sleep 0.2; echo 'ready socket=x'; exec sleep 30",
        ]);
        let s = VhostUserServer::spawn(
            "sh",
            cmd,
            &dir.path().join("x"),
            Readiness::StdoutLine("ready socket=".into()),
            &dir.path().join("log"),
        )
        .unwrap();
        let status = s.stop().unwrap();
        assert_eq!(status.code(), None, "killed by SIGTERM");
    }

    #[test]
    fn early_exit_is_an_error_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo cannot bind >&2; exit 1"]);
        let err = VhostUserServer::spawn(
            "sh",
            cmd,
            &dir.path().join("x"),
            Readiness::FileExists(dir.path().join("never")),
            &dir.path().join("log"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cannot bind") && err.contains("before it was ready"),
            "{err}"
        );
    }
}
