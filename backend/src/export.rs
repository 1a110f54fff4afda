//! `ocidisk export`: the composed disk (plus an overlay's writes) as a raw
//! image, for debugging and interop with `qemu-img`, `sgdisk` and friends.
//!
//! Blob extents are copied with `copy_file_range`, so file systems that can
//! share extents (XFS, btrfs) reflink them instead of copying; zero extents
//! stay holes. The file is byte-identical to what the block map reads.

use crate::image_args::ImageArgs;
use anyhow::{bail, Context as _};
use layout::{BlockMap, Source};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// Arguments of `ocidisk export`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    image: ImageArgs,
    /// Seeds the disk and partition GUIDs when no overlay is given.
    #[arg(long, value_name = "TEXT", default_value = "", conflicts_with = "overlay")]
    disk_id: String,
    /// Include the writes of this VM overlay (and use its disk id).
    #[arg(long, value_name = "FILE")]
    overlay: Option<PathBuf>,
    /// The raw image to write.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let disk = args.image.compose(&args.disk_id)?;
    let out = create_output(&args.output, args.force)?;
    write_map(&disk.map, &out).with_context(|| format!("writing {}", args.output.display()))?;
    out.sync_all()
        .with_context(|| format!("syncing {}", args.output.display()))?;
    Ok(())
}

/// Creates the output file. An existing file is only replaced with `force`,
/// and then unlinked first: a symlink to a blob must never be written
/// through.
fn create_output(path: &Path, force: bool) -> anyhow::Result<File> {
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (use --force to replace an existing file)",
                path.display()
            )
        })
}

/// Writes every non-zero extent of `map` to `out` at its disk offset.
pub fn write_map(map: &BlockMap, out: &File) -> anyhow::Result<()> {
    out.set_len(map.size())?;
    for extent in map.extents() {
        match &extent.source {
            Source::Zero => {}
            Source::Bytes { data, offset } => {
                let bytes = data
                    .get(*offset..*offset + extent.len as usize)
                    .context("generated extent shorter than its length")?;
                out.write_all_at(bytes, extent.start)?;
            }
            Source::File { file, offset } => {
                copy_range(file.file(), *offset, out, extent.start, extent.len)
                    .with_context(|| format!("copying from {}", file.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Copies `len` bytes between files, in the kernel where it can.
fn copy_range(src: &File, src_off: u64, dst: &File, dst_off: u64, len: u64) -> anyhow::Result<()> {
    let (mut off_in, mut off_out) = (src_off as libc::loff_t, dst_off as libc::loff_t);
    let mut left = len;
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        // SAFETY: plain syscall on two open descriptors; the offsets are
        // locals the kernel updates.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                chunk,
                0,
            )
        };
        if n > 0 {
            left -= n as u64;
            continue;
        }
        if n == 0 {
            bail!("file ends at {off_in}, {left} bytes before the extent does");
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // Not supported between these files: copy through memory.
            Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => {
                return copy_through_memory(src, off_in as u64, dst, off_out as u64, left)
            }
            _ => return Err(err.into()),
        }
    }
    Ok(())
}

fn copy_through_memory(
    src: &File,
    mut src_off: u64,
    dst: &File,
    mut dst_off: u64,
    mut left: u64,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], src_off)?;
        dst.write_all_at(&buf[..n], dst_off)?;
        src_off += n as u64;
        dst_off += n as u64;
        left -= n as u64;
    }
    Ok(())
}
