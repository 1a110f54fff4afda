//! `ocidisk overlay info|reset`: look at or reset a per-VM overlay file.

use anyhow::Context;
use overlay::Overlay;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The `ocidisk overlay` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Print an overlay's header, sizes and how much of it is allocated.
    Info {
        /// The overlay file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Forget every write: the disk reads as the pristine base again. Keeps
    /// the disk id and the base identity. Refused while a backend serves it.
    Reset {
        /// The overlay file.
        file: PathBuf,
    },
}

/// Runs an `ocidisk overlay` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Info { file, json } => {
            let ov = Overlay::inspect(&file)?;
            let usage = ov.usage()?;
            let out = if json {
                info_json(&ov, &usage)?
            } else {
                info_text(&ov, &usage)
            };
            print!("{out}");
            Ok(())
        }
        Command::Reset { file } => {
            Overlay::reset(&file).with_context(|| format!("resetting {}", file.display()))?;
            println!("{}: reset to the pristine base", file.display());
            Ok(())
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn info_text(ov: &Overlay, u: &overlay::Usage) -> String {
    let h = ov.header();
    let g = u64::from(h.granularity);
    let mut s = String::new();
    let _ = writeln!(s, "overlay:         {}", ov.path().display());
    let _ = writeln!(s, "format version:  {}", h.version);
    let _ = writeln!(
        s,
        "disk size:       {} bytes ({})",
        h.disk_size,
        mib(h.disk_size)
    );
    let _ = writeln!(s, "granularity:     {} bytes", h.granularity);
    let _ = writeln!(s, "disk id:         {}", h.disk_id);
    let _ = writeln!(s, "base manifest:   {}", h.base.manifest_digest);
    let _ = writeln!(s, "base layout:     {}", hex(&h.base.layout_hash));
    let _ = writeln!(s, "header writes:   {}", h.generation);
    let _ = writeln!(s, "map:             {} pages (x2 copies)", h.map_pages);
    let _ = writeln!(s, "data offset:     {}", h.data_offset);
    let _ = writeln!(s, "blocks:          {}", u.blocks);
    let _ = writeln!(
        s,
        "written:         {} blocks ({})",
        u.blocks_written,
        mib(u.blocks_written * g)
    );
    let _ = writeln!(
        s,
        "zeroed:          {} blocks ({})",
        u.blocks_zero,
        mib(u.blocks_zero * g)
    );
    let _ = writeln!(s, "file length:     {} bytes (sparse)", u.file_len);
    let _ = writeln!(
        s,
        "allocated:       {} bytes ({})",
        u.allocated_bytes,
        mib(u.allocated_bytes)
    );
    s
}

fn info_json(ov: &Overlay, u: &overlay::Usage) -> anyhow::Result<String> {
    let h = ov.header();
    let v = serde_json::json!({
        "path": ov.path().display().to_string(),
        "version": h.version,
        "disk_size": h.disk_size,
        "granularity": h.granularity,
        "disk_id": h.disk_id.to_string(),
        "base": {
            "manifest_digest": h.base.manifest_digest,
            "layout_hash": hex(&h.base.layout_hash),
        },
        "generation": h.generation,
        "map_pages": h.map_pages,
        "data_offset": h.data_offset,
        "blocks": u.blocks,
        "blocks_written": u.blocks_written,
        "blocks_zero": u.blocks_zero,
        "file_len": u.file_len,
        "allocated_bytes": u.allocated_bytes,
    });
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}
