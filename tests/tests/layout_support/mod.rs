//! Helpers shared by the `layout_*` tests: export a composed disk as a
//! sparse raw file, and run the standard disk tools on it.

#![allow(dead_code)]

use anyhow::{bail, ensure, Context, Result};
use layout::{BlockMap, Source};
use serde_json::Value;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::Path;
use std::process::Command;

/// Monogon's test-node disk (DESIGN.md): name, type GUID, first and last LBA.
pub const MONOGON: [(&str, &str, u64, u64); 4] = [
    ("ESP", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", 2048, 264191),
    (
        "METROPOLIS-SYSTEM-A",
        "EE96054B-F6D0-4267-AAAA-724B2AFEA74C",
        264192,
        2361343,
    ),
    (
        "METROPOLIS-SYSTEM-B",
        "EE96054B-F6D0-4267-BBBB-724B2AFEA74C",
        2361344,
        4458495,
    ),
    (
        "METROPOLIS-NODE-DATA",
        "9EEEC464-6885-414A-B278-4305C51F7966",
        4458496,
        10483711,
    ),
];

/// Writes the disk as a raw image: extents that read as zero are left as
/// holes, everything else is read through the map (the reference reader).
pub fn export_sparse(map: &BlockMap, path: &Path) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(map.size())?;
    let mut buf = vec![0u8; 1 << 20];
    for e in map.extents() {
        if matches!(e.source, Source::Zero) {
            continue;
        }
        let mut pos = e.start;
        while pos < e.end() {
            let n = (e.end() - pos).min(buf.len() as u64) as usize;
            map.read_at(pos, &mut buf[..n])?;
            file.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
        }
    }
    Ok(())
}

/// `len` bytes of the disk from `offset`.
pub fn read(map: &BlockMap, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    map.read_at(offset, &mut buf)?;
    Ok(buf)
}

/// Checks that `[start, start + len)` of the disk is made only of zero
/// extents (cheaper than reading gigabytes of zeros).
pub fn assert_zero_range(map: &BlockMap, start: u64, len: u64) {
    for (extent, _, n) in map.segments(start, len) {
        assert!(
            matches!(extent.source, Source::Zero),
            "bytes {}+{n} of {start}+{len} are not zeros: {:?}",
            extent.start,
            extent.source
        );
    }
}

/// Whether the file has data (not a hole) anywhere in `[start, end)`.
pub fn has_data(file: &File, start: u64, end: u64) -> Result<bool> {
    // SAFETY: lseek on an open descriptor has no memory effects.
    let at = unsafe { libc::lseek(file.as_raw_fd(), start as libc::off_t, libc::SEEK_DATA) };
    if at < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(false);
        }
        bail!("SEEK_DATA: {e}");
    }
    Ok((at as u64) < end)
}

/// Runs a tool and returns its stdout; fails with its output if it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (installed by .ci/install-deps)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// `sgdisk -v` must report no problems.
pub fn sgdisk_verify(path: &Path) -> Result<()> {
    let out = run(Command::new("sgdisk").arg("-v").arg(path))?;
    ensure!(
        out.contains("No problems found"),
        "sgdisk -v {}: {out}",
        path.display()
    );
    Ok(())
}

/// `sfdisk --json`'s partition table.
pub fn sfdisk_json(path: &Path) -> Result<Value> {
    let out = run(Command::new("sfdisk").arg("--json").arg(path))?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["partitiontable"].clone())
}

/// Copies one partition of the disk into its own file.
pub fn extract(map: &BlockMap, offset: u64, len: u64, path: &Path) -> Result<()> {
    let file = File::create(path)?;
    file.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        map.read_at(offset + pos, &mut buf[..n])?;
        file.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// `fsck.fat -n` must find a clean file system.
pub fn fsck_fat(path: &Path) -> Result<()> {
    run(Command::new("fsck.fat").arg("-n").arg(path))?;
    Ok(())
}

/// A file read out of a FAT image with `mcopy`.
pub fn mcopy(image: &Path, path_in_fs: &str, dir: &Path) -> Result<Vec<u8>> {
    let out = dir.join("mcopy.out");
    let _ = std::fs::remove_file(&out);
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-n")
        .arg("-i")
        .arg(image)
        .arg(format!("::{path_in_fs}"))
        .arg(&out))?;
    Ok(std::fs::read(&out)?)
}
