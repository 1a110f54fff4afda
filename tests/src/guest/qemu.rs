//! Launching QEMU with the disk on a vhost-user-blk socket, collecting the
//! guest's serial console, and enforcing a hard time limit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::error::{io_err, Error, Result};
use super::tool;

/// OVMF firmware code (read-only pflash) on Debian.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF variable store template; each VM gets a writable copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// QEMU's emulator: slow, but runs everywhere.
    Tcg,
}

impl Accel {
    /// `OCIDISK_ACCEL=kvm|tcg` if set; otherwise KVM only where it really works:
    /// `/dev/kvm` exists, is not the PVM flavour (which cannot run OVMF or stock
    /// kernels), and creating a VM on it succeeds.
    pub fn detect() -> Accel {
        match std::env::var("OCIDISK_ACCEL").as_deref() {
            Ok("kvm") => return Accel::Kvm,
            Ok("tcg") => return Accel::Tcg,
            _ => {}
        }
        if Path::new("/sys/module/kvm_pvm").exists() || !kvm_creates_vm() {
            Accel::Tcg
        } else {
            Accel::Kvm
        }
    }

    /// The value of QEMU's `-accel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Probes `/dev/kvm`: the API version is the stable one and `KVM_CREATE_VM` works.
fn kvm_creates_vm() -> bool {
    use std::os::fd::AsRawFd;
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    let Ok(kvm) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        return false;
    };
    // SAFETY: both ioctls take an integer argument and touch no memory of ours.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version != 12 {
        return false;
    }
    // SAFETY: as above; a returned fd is closed right away.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return false;
    }
    // SAFETY: `vm` is a file descriptor we own and nothing else uses.
    unsafe { libc::close(vm) };
    true
}

/// How the guest starts.
#[derive(Debug, Clone)]
pub enum Boot {
    /// QEMU loads the kernel and initramfs itself (`-kernel/-initrd/-append`).
    Direct {
        /// The kernel image.
        kernel: PathBuf,
        /// The initramfs.
        initrd: PathBuf,
        /// The kernel command line.
        cmdline: String,
    },
    /// OVMF boots from the disk's EFI system partition (`EFI/BOOT/BOOTx64.EFI`).
    Uefi,
}

/// The kernel command line for a direct boot with the harness's init.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// One VM: the disk on a vhost-user socket and how to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// How the guest starts.
    pub boot: Boot,
    /// The vhost-user-blk server's socket.
    pub socket: PathBuf,
    /// Virtqueues of the disk.
    pub num_queues: u16,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// The hard time limit: QEMU is killed after it.
    pub timeout: Duration,
    /// How guest code runs.
    pub accel: Accel,
    /// Extra QEMU arguments.
    pub extra_args: Vec<String>,
    /// QEMU reconnects to the socket this often (milliseconds) after the
    /// server goes away (`reconnect-ms` on the chardev); `None`: it does not.
    pub reconnect_ms: Option<u32>,
}

impl VmConfig {
    /// A direct-boot VM with defaults: 1 queue, 512 MiB, 1 vCPU, 60 s, detected accelerator.
    pub fn direct(socket: &Path, kernel: &Path, initrd: &Path) -> VmConfig {
        VmConfig::new(
            socket,
            Boot::Direct {
                kernel: kernel.to_path_buf(),
                initrd: initrd.to_path_buf(),
                cmdline: DEFAULT_CMDLINE.to_string(),
            },
        )
    }

    /// A UEFI VM (OVMF, boot from the disk's ESP) with the same defaults.
    pub fn uefi(socket: &Path) -> VmConfig {
        VmConfig::new(socket, Boot::Uefi)
    }

    fn new(socket: &Path, boot: Boot) -> VmConfig {
        VmConfig {
            boot,
            socket: socket.to_path_buf(),
            num_queues: 1,
            memory_mib: 512,
            cpus: 1,
            timeout: Duration::from_secs(60),
            accel: Accel::detect(),
            extra_args: Vec::new(),
            reconnect_ms: None,
        }
    }

    /// Boots the VM once and waits for it to power off. `workdir` receives the
    /// console log (`console-<n>.log`) and, for UEFI, the variable store.
    ///
    /// Fails, with the console in the error, when QEMU fails, the time limit
    /// passes, a kernel module did not load, or the guest's init did not
    /// report `done` with status 0.
    pub fn run(&self, workdir: &Path) -> Result<GuestRun> {
        let (mut cmd, console, qemu_log) = self.command(workdir)?;
        let log_file = std::fs::File::create(&qemu_log)
            .map_err(io_err(format!("creating {}", qemu_log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(io_err(format!("duplicating {}", qemu_log.display())))?;
        let command_line = tool::describe(&cmd);
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|source| Error::ToolMissing {
                tool: "qemu-system-x86_64".to_string(),
                source,
            })?;
        let logs = || {
            format!(
                "{command_line}\n--- qemu ---\n{}\n--- console ---\n{}",
                read_lossy(&qemu_log),
                read_lossy(&console)
            )
        };
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() >= self.timeout => {
                    // A hung guest must not hang the test run.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Timeout {
                        what: "QEMU".to_string(),
                        after: self.timeout,
                        log: logs(),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(io_err("waiting for QEMU")(e)),
            }
        };
        let elapsed = started.elapsed();
        if !status.success() {
            return Err(Error::Failed {
                what: format!("QEMU exited with {status}"),
                log: logs(),
            });
        }
        let text = read_lossy(&console);
        let run = GuestRun {
            reports: parse_reports(&text),
            console: text,
            elapsed,
        };
        if let Some(modules) = run.reports.get("insmod_failed") {
            return Err(Error::Failed {
                what: format!("kernel modules failed to load in the guest:{modules}"),
                log: logs(),
            });
        }
        match run.reports.get("done").map(String::as_str) {
            Some("0") => Ok(run),
            Some(st) => Err(Error::Failed {
                what: format!("the guest's test script failed with status {st}"),
                log: logs(),
            }),
            None => Err(Error::Failed {
                what: "the guest powered off without reporting done".to_string(),
                log: logs(),
            }),
        }
    }

    /// Starts the VM and returns at once: the caller reads the console as it
    /// grows ([`RunningVm::read_console`]) and must enforce the time limit
    /// itself ([`RunningVm::over_time`]); dropping the handle kills QEMU.
    pub fn spawn(&self, workdir: &Path) -> Result<RunningVm> {
        let (mut cmd, console, qemu_log) = self.command(workdir)?;
        let log_file = std::fs::File::create(&qemu_log)
            .map_err(io_err(format!("creating {}", qemu_log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(io_err(format!("duplicating {}", qemu_log.display())))?;
        let command_line = tool::describe(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|source| Error::ToolMissing {
                tool: "qemu-system-x86_64".to_string(),
                source,
            })?;
        Ok(RunningVm {
            child: Some(child),
            console,
            qemu_log,
            command_line,
            started: Instant::now(),
            timeout: self.timeout,
            read_at: 0,
            partial: String::new(),
        })
    }

    /// The QEMU command line, the console file and QEMU's own log file.
    fn command(&self, workdir: &Path) -> Result<(Command, PathBuf, PathBuf)> {
        let n = next_run_number();
        let console = workdir.join(format!("console-{n}.log"));
        let qemu_log = workdir.join(format!("qemu-{n}.log"));
        let mut cmd = Command::new("qemu-system-x86_64");
        let mem = format!("{}M", self.memory_mib);
        cmd.args(["-machine", "q35,memory-backend=mem"])
            .args(["-accel", self.accel.as_str()])
            .args(["-m", &mem])
            .args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            ])
            .args(["-smp", &self.cpus.to_string()])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(["-serial", &format!("file:{}", console.display())])
            .args([
                "-chardev",
                &format!(
                    "socket,id=c0,path={}{}",
                    self.socket.display(),
                    self.reconnect_ms
                        .map(|ms| format!(",reconnect-ms={ms}"))
                        .unwrap_or_default()
                ),
            ])
            .args([
                "-device",
                &format!(
                    "vhost-user-blk-pci,chardev=c0,num-queues={},disable-legacy=on,bootindex=1",
                    self.num_queues
                ),
            ]);
        if self.accel == Accel::Kvm {
            cmd.args(["-cpu", "host"]);
        } else {
            cmd.args(["-cpu", "max"]);
        }
        match &self.boot {
            Boot::Direct {
                kernel,
                initrd,
                cmdline,
            } => {
                cmd.arg("-kernel")
                    .arg(kernel)
                    .arg("-initrd")
                    .arg(initrd)
                    .args(["-append", cmdline]);
            }
            Boot::Uefi => {
                let vars = workdir.join(format!("OVMF_VARS-{n}.fd"));
                for f in [OVMF_CODE, OVMF_VARS] {
                    if !Path::new(f).is_file() {
                        return Err(Error::AssetsMissing {
                            dir: PathBuf::from("/usr/share/OVMF"),
                            missing: format!("{f} (package ovmf)"),
                        });
                    }
                }
                std::fs::copy(OVMF_VARS, &vars)
                    .map_err(io_err(format!("copying {OVMF_VARS} to {}", vars.display())))?;
                cmd.args([
                    "-drive",
                    &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
                ])
                .args([
                    "-drive",
                    &format!("if=pflash,format=raw,unit=1,file={}", opt_value(&vars)),
                ]);
            }
        }
        cmd.args(&self.extra_args);
        Ok((cmd, console, qemu_log))
    }
}

/// A finished boot.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// Everything the guest printed on its serial console.
    pub console: String,
    /// The `OCIDISK key=value` lines; a later line wins over an earlier one.
    pub reports: BTreeMap<String, String>,
    /// From starting QEMU to its exit.
    pub elapsed: Duration,
}

impl GuestRun {
    /// The reported value of `key`; the error carries the console.
    pub fn get(&self, key: &str) -> Result<&str> {
        self.reports
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::Failed {
                what: format!("the guest did not report {key}"),
                log: self.console.clone(),
            })
    }
}

/// A VM started with [`VmConfig::spawn`], whose console is read as it
/// grows. Dropping it kills QEMU.
#[derive(Debug)]
pub struct RunningVm {
    child: Option<std::process::Child>,
    console: PathBuf,
    qemu_log: PathBuf,
    command_line: String,
    started: Instant,
    timeout: Duration,
    read_at: u64,
    partial: String,
}

impl RunningVm {
    /// The complete lines the guest printed since the last call (without
    /// line ends); a line still being written waits for the next call.
    pub fn read_console(&mut self) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut bytes = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.console) {
            if f.seek(SeekFrom::Start(self.read_at)).is_ok() {
                let _ = f.read_to_end(&mut bytes);
            }
        }
        self.read_at += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut lines = Vec::new();
        while let Some(at) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=at).collect();
            lines.push(line.trim_end_matches(['\r', '\n']).to_string());
        }
        lines
    }

    /// QEMU's exit status once it exited.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait().map_err(io_err("waiting for QEMU")),
            None => Ok(None),
        }
    }

    /// Whether the VM's time limit passed.
    pub fn over_time(&self) -> bool {
        self.started.elapsed() >= self.timeout
    }

    /// Since QEMU started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Kills QEMU (if it still runs) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The command line, QEMU's log and the whole console, for error messages.
    pub fn logs(&self) -> String {
        format!(
            "{}\n--- qemu ---\n{}\n--- console ---\n{}",
            self.command_line,
            read_lossy(&self.qemu_log),
            read_lossy(&self.console)
        )
    }

    /// The console file.
    pub fn console_path(&self) -> &Path {
        &self.console
    }

    /// QEMU's own log (stdout and stderr).
    pub fn qemu_log(&self) -> String {
        read_lossy(&self.qemu_log)
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Collects `OCIDISK key=value` lines. Kernel messages may share a line with
/// ours on the console, so the marker is searched anywhere in the line.
pub fn parse_reports(console: &str) -> BTreeMap<String, String> {
    let mut reports = BTreeMap::new();
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        let Some(at) = line.find("OCIDISK ") else {
            continue;
        };
        let rest = &line[at + "OCIDISK ".len()..];
        if let Some((k, v)) = rest.split_once('=') {
            if !k.is_empty() && !k.contains(char::is_whitespace) {
                reports.insert(k.to_string(), v.to_string());
            }
        }
    }
    reports
}

/// A path as a value in QEMU's `key=value,…` options, where a comma is written twice.
fn opt_value(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// Distinct log names for the boots of one test.
fn next_run_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_in_paths_are_escaped_for_qemu() {
        assert_eq!(opt_value(Path::new("/tmp/a,b/s.sock")), "/tmp/a,,b/s.sock");
    }

    #[test]
    fn reports_are_parsed_anywhere_in_a_line() {
        let console = "[    1.0] virtio_blk\r\nOCIDISK boot=ok\r\n[ 2.0] xOCIDISK a=b=c\nOCIDISK bad\nOCIDISK  x=1\nOCIDISK done=0\n";
        let r = parse_reports(console);
        assert_eq!(r.get("boot").map(String::as_str), Some("ok"));
        assert_eq!(r.get("a").map(String::as_str), Some("b=c"));
        assert_eq!(r.get("done").map(String::as_str), Some("0"));
        assert_eq!(r.len(), 3, "{r:?}");
    }
}
