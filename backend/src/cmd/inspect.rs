//! `ocidisk inspect`: the partition table and where the disk's bytes come from.

use crate::cmd::image_args::ImageArgs;
use layout::compose::Disk;
use serde::Serialize;
use std::io::Write as _;

/// Arguments of `ocidisk inspect`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    image: ImageArgs,
    /// Seeds the disk and partition GUIDs (an overlay stores its own).
    #[arg(long, value_name = "TEXT", default_value = "")]
    disk_id: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    size: u64,
    sectors: u64,
    disk_guid: String,
    manifest_digest: &'a str,
    layout_hash: String,
    partitions: Vec<PartitionReport<'a>>,
    extents: ExtentReport,
}

#[derive(Serialize)]
struct PartitionReport<'a> {
    index: usize,
    name: &'a str,
    type_guid: String,
    guid: String,
    first_lba: u64,
    last_lba: u64,
    size: u64,
    content: &'a str,
}

#[derive(Serialize)]
struct ExtentReport {
    count: usize,
    file_bytes: u64,
    generated_bytes: u64,
    inline_bytes: u64,
    zero_bytes: u64,
}

/// Runs `ocidisk inspect`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let disk = args.image.compose(&args.disk_id)?;
    let report = report(&disk);
    let mut out = std::io::stdout().lock();
    if args.json {
        // Rendered first and written as plain I/O: serde_json's writer
        // error hides the io::Error (its `source()` skips it), so a closed
        // pipe (`| head`) would not be recognised as one in `main`.
        let text = serde_json::to_string_pretty(&report)?;
        writeln!(out, "{text}")?;
    } else {
        print_table(&mut out, &report)?;
    }
    Ok(())
}

fn report(disk: &Disk) -> Report<'_> {
    let summary = disk.map.summary();
    let hash: String = disk
        .identity
        .layout_hash
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Report {
        size: disk.map.size(),
        sectors: disk.map.size() / 512,
        disk_guid: disk.disk_guid.to_string().to_uppercase(),
        manifest_digest: &disk.identity.manifest_digest,
        layout_hash: hash,
        partitions: disk
            .partitions
            .iter()
            .map(|p| PartitionReport {
                index: p.index,
                name: &p.name,
                type_guid: p.type_guid.to_string().to_uppercase(),
                guid: p.guid.to_string().to_uppercase(),
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                size: p.size,
                content: &p.content,
            })
            .collect(),
        extents: ExtentReport {
            count: summary.extents,
            file_bytes: summary.file_bytes,
            generated_bytes: summary.generated_bytes,
            inline_bytes: summary.inline_bytes,
            zero_bytes: summary.zero_bytes,
        },
    }
}

fn print_table(out: &mut impl std::io::Write, r: &Report<'_>) -> std::io::Result<()> {
    writeln!(
        out,
        "disk {} ({} sectors of 512 bytes), GUID {}",
        human(r.size),
        r.sectors,
        r.disk_guid
    )?;
    writeln!(out, "image {}", r.manifest_digest)?;
    writeln!(out)?;
    writeln!(
        out,
        "{:>2}  {:<22} {:<36}  {:>10}  {:>10}  {:>9}  content",
        "#", "name", "type", "first LBA", "last LBA", "size"
    )?;
    for p in &r.partitions {
        writeln!(
            out,
            "{:>2}  {:<22} {:<36}  {:>10}  {:>10}  {:>9}  {}",
            p.index,
            p.name,
            p.type_guid,
            p.first_lba,
            p.last_lba,
            human(p.size),
            shorten_digests(p.content)
        )?;
    }
    writeln!(out)?;
    let e = &r.extents;
    // Inline bytes are rare; mention them only when there are some.
    let inline = if e.inline_bytes > 0 {
        format!(", {} inline", human(e.inline_bytes))
    } else {
        String::new()
    };
    writeln!(
        out,
        "{} extents: {} from blobs and files{inline}, {} generated, {} zeros",
        e.count,
        human(e.file_bytes),
        human(e.generated_bytes),
        human(e.zero_bytes)
    )
}

/// A byte count in the largest binary unit that keeps it at least 1.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Shortens every `sha256:<64 hex>` in `text` to its first 12 hex digits,
/// so the table stays readable; `--json` keeps them whole.
fn shorten_digests(text: &str) -> String {
    const PREFIX: &str = "sha256:";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let (head, tail) = rest.split_at(at + PREFIX.len());
        out.push_str(head);
        let hex_len = tail.bytes().take_while(u8::is_ascii_hexdigit).count();
        if hex_len == 64 {
            out.push_str(&tail[..12]);
            out.push('…');
            rest = &tail[64..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_shortened_in_tables() {
        let d = "a".repeat(64);
        assert_eq!(
            shorten_digests(&format!("layer 0 sha256:{d}, x sha256:abc")),
            "layer 0 sha256:aaaaaaaaaaaa…, x sha256:abc"
        );
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(128 << 20), "128 MiB");
        assert_eq!(human(3_084_865_536), "2.9 GiB");
    }
}
