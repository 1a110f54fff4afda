//! `ocidisk export`: the composed disk (plus an overlay's writes) as a raw
//! image, for debugging and interop with `qemu-img`, `sgdisk` and friends.
//! See [`layout::export`] for how the bytes are copied.

use crate::cmd::image_args::ImageArgs;
use anyhow::Context as _;
use blockio::IoBufMut;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// Arguments of `ocidisk export`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    image: ImageArgs,
    /// Seeds the disk and partition GUIDs when no overlay is given.
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "",
        conflicts_with = "overlay"
    )]
    disk_id: String,
    /// Include the writes of this VM overlay (and use its disk id). The
    /// overlay must not be being served: the backend's lock refuses it, so
    /// the export never mixes states of a disk in use.
    #[arg(long, value_name = "FILE")]
    overlay: Option<PathBuf>,
    /// The raw image to write.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
}

/// Runs `ocidisk export`.
pub fn run(args: Args) -> anyhow::Result<()> {
    // Open everything before creating the output, so a bad argument leaves
    // no file behind.
    let (disk, overlay) = match &args.overlay {
        None => (args.image.compose(&args.disk_id)?, None),
        Some(path) => {
            let opts = overlay::OpenOptions {
                read_only: true,
                ..overlay::OpenOptions::default()
            };
            // A backend killed before its last flush left its block states
            // in the shadow map: the export sees what its guest saw.
            let shadow = Path::new(overlay::DEFAULT_SHADOW_DIR);
            let vm = args.image.open_overlay(path, false, &opts, Some(shadow))?;
            (vm.disk, Some(vm.overlay))
        }
    };
    let out = create_output(&args.output, args.force)?;
    layout::export::write_raw(&disk.map, &out)?;
    if let Some(overlay) = &overlay {
        apply_overlay(overlay, &disk.map, &out).with_context(|| {
            format!("writing the overlay's changes to {}", args.output.display())
        })?;
    }
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

/// Writes over the exported base what the VM changed: its written blocks,
/// and zeros (as holes) where it zeroed or discarded.
fn apply_overlay(
    overlay: &overlay::Overlay,
    base: &layout::BlockMap,
    out: &File,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for change in overlay.changes() {
        if change.zero {
            punch_hole(out, change.offset, change.len)?;
            continue;
        }
        let mut done = 0;
        while done < change.len {
            let n = (change.len - done).min(buf.len() as u64) as usize;
            let at = change.offset + done;
            overlay.read(at, &mut [IoBufMut::new(&mut buf[..n])], base)?;
            out.write_all_at(&buf[..n], at)?;
            done += n as u64;
        }
    }
    Ok(())
}

/// Makes `[offset, offset + len)` of `file` read as zeros, releasing the
/// space where the file system can.
fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use rustix::fs::FallocateFlags;
    let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    match rustix::fs::fallocate(file, flags, offset, len) {
        Ok(()) => return Ok(()),
        // No holes here: write the zeros.
        Err(rustix::io::Errno::OPNOTSUPP) => {}
        Err(errno) => return Err(errno.into()),
    }
    let zeros = vec![0u8; (1 << 20).min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}
