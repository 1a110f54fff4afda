//! Helpers shared by the `layout_*` tests (and `ocidisk-tests`' export
//! tests): export a composed disk with the real export path, and run the
//! standard disk tools on the file.

use crate::cmd::CommandExt as _;
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

/// Writes the disk as a raw image with the real export path
/// ([`layout::export::write_raw`]: `copy_file_range`, holes), so the tools
/// below check what `ocidisk export` writes, not a test's own copy.
pub fn export_raw(map: &BlockMap, path: &Path) -> Result<File> {
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    layout::export::write_raw(map, &file)?;
    Ok(file)
}

/// `len` bytes of a file from `offset`.
pub fn read_file(file: &File, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Checks that `[start, end)` of an exported file reads as zeros.
pub fn assert_file_zero(file: &File, start: u64, end: u64) -> Result<()> {
    let bytes = read_file(file, start, end - start)?;
    if let Some(i) = bytes.iter().position(|&b| b != 0) {
        bail!("byte {} of [{start}, {end}) is not zero", start + i as u64);
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

/// Where the first hole at or after `start` begins (`SEEK_HOLE`).
pub fn seek_hole(file: &File, start: u64) -> Result<u64> {
    // SAFETY: lseek on an open descriptor has no memory effects.
    let at = unsafe { libc::lseek(file.as_raw_fd(), start as libc::off_t, libc::SEEK_HOLE) };
    ensure!(at >= 0, "SEEK_HOLE: {}", std::io::Error::last_os_error());
    Ok(at as u64)
}

/// Runs a tool and returns its stdout; fails with the command's report
/// ([`crate::cmd`]) if it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let ran = cmd
        .try_run_ok()
        .context("a disk tool (installed by .ci/install-deps)")?;
    Ok(ran.stdout)
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

/// Copies one partition of an exported disk image into its own file.
pub fn extract(raw: &Path, offset: u64, len: u64, path: &Path) -> Result<()> {
    let src = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let _ = std::fs::remove_file(path);
    let file = File::create(path)?;
    file.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], offset + pos)?;
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
