//! `ocidisk export`: the composed disk (plus an overlay's writes) as a raw
//! image, for debugging and interop with `qemu-img`, `sgdisk` and friends.
//! See [`layout::export`] for how the bytes are copied.

use crate::image_args::ImageArgs;
use anyhow::Context as _;
use std::fs::{File, OpenOptions};
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
    layout::export::write_raw(&disk.map, &out)?;
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
