//! What the host's file system can do, for benchmarks that compare copies
//! with reflinks, and the host-side chores the benchmarks share.

use anyhow::{bail, Context as _, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh directory for a benchmark's files, removed when dropped: under
/// `$OCIDISK_BENCH_DIR` if set (to measure another file system), else under
/// the system's temporary directory.
pub fn bench_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let base = match std::env::var_os("OCIDISK_BENCH_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .with_context(|| format!("creating a directory in {}", base.display()))
}

/// The file system of the work directory, and whether it can share extents
/// between files (tried with `FICLONE`, not guessed from the name).
pub struct FsInfo {
    /// Its name (`ext4`, `xfs`, …) or type number.
    pub name: String,
    /// Whether `FICLONE` works between two files in it.
    pub reflink: bool,
}

impl FsInfo {
    /// Probes the file system of `dir` (writes and removes two small files).
    pub fn probe(dir: &Path) -> Result<FsInfo> {
        let d = File::open(dir)?;
        // SAFETY: an all-zero statfs is a valid value for fstatfs to fill.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: fstatfs fills the struct we pass; the descriptor is open.
        if unsafe { libc::fstatfs(d.as_raw_fd(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error()).context("fstatfs");
        }
        let name = match st.f_type as u64 {
            0xef53 => "ext4".to_owned(),
            0x5846_5342 => "xfs".to_owned(),
            0x9123_683e => "btrfs".to_owned(),
            0x0102_1994 => "tmpfs".to_owned(),
            0x2fc1_2fc1 => "zfs".to_owned(),
            0x794c_7630 => "overlayfs".to_owned(),
            other => format!("file system type {other:#x}"),
        };
        let src_path = dir.join("reflink-probe.src");
        let dst_path = dir.join("reflink-probe.dst");
        std::fs::write(&src_path, vec![7u8; 4096])?;
        let src = File::open(&src_path)?;
        let dst = File::create(&dst_path)?;
        // SAFETY: FICLONE takes the source descriptor as its argument.
        let reflink = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0;
        std::fs::remove_file(&src_path)?;
        std::fs::remove_file(&dst_path)?;
        Ok(FsInfo { name, reflink })
    }
}

/// Writes everything the file system holding `dir` has cached back to disk.
pub fn syncfs(dir: &Path) -> Result<()> {
    let d = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: syncfs on an open descriptor.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("syncfs");
    }
    Ok(())
}

/// Runs a host tool; returns its stdout or fails with its stderr.
pub fn run_tool(cmd: &mut Command) -> Result<Vec<u8>> {
    let what = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("running {what} (installed by .ci/install-deps)"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}
