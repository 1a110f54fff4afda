//! `ocidisk cache list` and `ocidisk cache prune`: the host's shared cache
//! of registry blobs, filled chunk by chunk by every server on the host.
//!
//! Prune never removes a blob a running server has open: every server holds
//! a shared lock on the blob's record while it has it open, and prune
//! removes a blob only under an exclusive lock it takes without waiting.
//! The manifests and configs kept for starting without the registry are
//! locked the same way by the servers that opened them; prune removes them
//! by age only (they take a few KiB), and with them the tag resolutions
//! that pointed at them.

use anyhow::{bail, Context as _};
use layout::chunkcache::{ChunkCache, ChunkCacheSettings, Entry, PrunePolicy};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// `ocidisk cache …`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// List the cached blobs, least recently used first.
    List(ListArgs),
    /// Remove blobs not used for a while, or the least recently used ones
    /// beyond a size; never a blob a running server has open. The manifests
    /// and configs kept for starting without the registry go by age only.
    Prune(PruneArgs),
}

/// Arguments of `ocidisk cache list`.
#[derive(clap::Args)]
pub struct ListArgs {
    /// The cache directory (default `$XDG_CACHE_HOME/ocidisk`).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `ocidisk cache prune`.
#[derive(clap::Args)]
pub struct PruneArgs {
    /// The cache directory (default `$XDG_CACHE_HOME/ocidisk`).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Remove blobs no server has opened for this long: e.g. `30m`, `12h`,
    /// `7d` (a number alone is seconds).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    older_than: Option<Duration>,
    /// Then remove the least recently used blobs until the cache takes at
    /// most this much storage, e.g. `20GiB`; then, if still over, the least
    /// recently used manifests and configs no server uses.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: Option<u64>,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    layout::spec::parse_size(s).map_err(|e| e.to_string())
}

/// `90`, `90s`, `30m`, `12h`, `7d`.
fn parse_age(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not an age like 90s, 30m, 12h or 7d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is one of s, m, h, d")),
    };
    n.checked_mul(unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

fn open(dir: Option<PathBuf>) -> anyhow::Result<ChunkCache> {
    let dir = match dir {
        Some(dir) => dir,
        None => layout::cache::Cache::default_dir().context("finding the cache directory")?,
    };
    Ok(ChunkCache::new(dir, ChunkCacheSettings::default()))
}

/// Runs `ocidisk cache …`.
pub fn run(command: Command) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::List(args) => {
            let cache = open(args.cache)?;
            let entries = cache
                .entries()
                .with_context(|| format!("listing {}", cache.dir().display()))?;
            if args.json {
                serde_json::to_writer_pretty(&mut out, &entries)?;
                writeln!(out)?;
            } else {
                print_table(&mut out, &entries)?;
                let (meta, bytes, refs) = cache
                    .meta_summary()
                    .with_context(|| format!("listing {}", cache.dir().display()))?;
                if meta + refs > 0 {
                    writeln!(
                        out,
                        "and {meta} manifest(s) and config(s) ({bytes} bytes), {refs} resolution record(s), kept for starting without the registry"
                    )?;
                }
            }
        }
        Command::Prune(args) => {
            if args.older_than.is_none() && args.max_size.is_none() {
                bail!("say what to prune: --older-than AGE, --max-size SIZE, or both");
            }
            let cache = open(args.cache)?;
            let policy = PrunePolicy {
                older_than: args.older_than,
                max_bytes: args.max_size,
                dry_run: args.dry_run,
            };
            let report = cache
                .prune(&policy)
                .with_context(|| format!("pruning {}", cache.dir().display()))?;
            if args.json {
                serde_json::to_writer_pretty(&mut out, &report)?;
                writeln!(out)?;
            } else {
                let verb = if args.dry_run {
                    "would remove"
                } else {
                    "removed"
                };
                for e in &report.removed {
                    writeln!(out, "{verb} {} ({} bytes)", e.digest, e.allocated)?;
                }
                for e in &report.kept_in_use {
                    writeln!(out, "kept {} (in use)", e.digest)?;
                }
                let meta = &report.metadata;
                for d in &meta.removed {
                    writeln!(out, "{verb} manifest or config {d}")?;
                }
                for d in &meta.kept_in_use {
                    writeln!(out, "kept manifest or config {d} (in use)")?;
                }
                if !meta.removed.is_empty() || meta.removed_refs > 0 {
                    writeln!(
                        out,
                        "{verb} {} manifest(s) and config(s), {} resolution record(s)",
                        meta.removed.len(),
                        meta.removed_refs
                    )?;
                }
                writeln!(
                    out,
                    "{verb} {} blob(s); {} bytes freed, {} bytes remain",
                    report.removed.len(),
                    report.freed,
                    report.remaining
                )?;
            }
        }
    }
    Ok(())
}

fn print_table(out: &mut impl std::io::Write, entries: &[Entry]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<71} {:>12} {:>12} {:>15} {:>6}",
        "blob", "size", "stored", "chunks ok/all", "in use"
    )?;
    for e in entries {
        writeln!(
            out,
            "{:<71} {:>12} {:>12} {:>15} {:>6}",
            e.digest,
            e.size,
            e.allocated,
            format!("{}/{}", e.verified, e.chunks),
            if e.in_use { "yes" } else { "no" }
        )?;
    }
    Ok(())
}
