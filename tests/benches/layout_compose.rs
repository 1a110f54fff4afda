//! Benchmark: composing Monogon's 5 GiB test-node disk, and exporting it
//! as a raw image against the peers a launcher would otherwise use.
//!
//! Reproduce with:
//!
//! ```text
//! cargo build --release -p ocidisk && cargo bench -p ocidisk-tests --bench layout_compose
//! ```
//!
//! It writes a Monogon-format OCI image with realistic payloads (a 300 MiB
//! `system` of incompressible bytes, a 40 MiB `kernel.efi`) to a temporary
//! directory under `$OCIDISK_BENCH_DIR` (default: the system's temporary
//! directory; pick a directory on the file system you care about, e.g.
//! XFS or btrfs for reflinks), then measures:
//!
//! - opening the image, building the `monogon` preset and composing the
//!   block map (what `ocidisk serve` does at start, without `--verify`),
//!   and composing alone; and what the map holds in memory;
//! - `ocidisk export` of that disk (the real binary: `$OCIDISK_BIN`, else
//!   `target/release/ocidisk`, else `target/debug/ocidisk`) against
//!   `cp --reflink=auto` of a prebuilt raw image of the same disk (what
//!   Monogon's launcher did per node) and `qemu-img create -f qcow2 -b`
//!   (what it did before), with the bytes each output allocates on disk.
//!
//! Figures are medians; the peers run interleaved with `ocidisk export` so
//! that load from other processes hits them alike.

use anyhow::{ensure, Context, Result};
use layout::compose::{compose, ComposeOptions, Disk};
use layout::oci::{Image, OpenOptions};
use layout::spec::{LayoutSpec, MonogonPreset};
use layout::{Extent, Source};
use ocidisk_tests::blkio_client::ocidisk_bench_binary;
use ocidisk_tests::hostfs::{bench_dir, run_tool, syncfs, FsInfo};
use ocidisk_tests::oci_writer::{efi_image, random_bytes, ImageBuilder, OsImage, Payload};
use std::collections::HashSet;
use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const REPRODUCE: &str =
    "cargo build --release -p ocidisk && cargo bench -p ocidisk-tests --bench layout_compose";
const MIB: usize = 1 << 20;
/// Monogon's erofs + dm-verity system image is a few hundred MiB.
const SYSTEM_SIZE: usize = 300 * MIB;
/// A unified kernel image with its initramfs.
const KERNEL_SIZE: usize = 40 * MIB;
/// Runs of the compose measurements (they take well under a millisecond).
const COMPOSE_RUNS: usize = 25;
/// Runs of each export (each writes a few hundred MiB).
const EXPORT_RUNS: usize = 5;
const DISK_ID: &str = "node-1";

fn main() -> Result<()> {
    println!("reproduce: `{REPRODUCE}`\n");
    let ocidisk = ocidisk_bench_binary()?;
    let tmp = bench_dir("ocidisk-bench-")?;
    let dir = tmp.path();
    let image_dir = dir.join("image");
    let cache_dir = dir.join("cache");

    eprintln!("writing the image to {} …", image_dir.display());
    write_image(&image_dir)?;
    let fs = FsInfo::probe(dir)?;

    let (compose_rows, memory) = measure_compose(&image_dir, &cache_dir)?;
    let export_rows = measure_exports(&ocidisk, &image_dir, &cache_dir, dir)?;

    println!(
        "image: `system` {} MiB of random bytes, `kernel.efi` {} MiB, uncompressed; \
         disk: the `monogon` preset, 5 GiB",
        SYSTEM_SIZE / MIB,
        KERNEL_SIZE / MIB
    );
    println!(
        "directory: {} on {} (reflinks: {}); binary: {}\n",
        dir.display(),
        fs.name,
        if fs.reflink { "yes" } else { "no" },
        ocidisk.display()
    );
    print_compose(&compose_rows, &memory);
    print_exports(&export_rows, &compose_rows[0]);
    Ok(())
}

/// Writes the Monogon-format image; the payload bytes are dropped again
/// before anything is measured.
fn write_image(dir: &Path) -> Result<()> {
    let os = OsImage::new()
        .payload(Payload::new("kernel.efi", efi_image(KERNEL_SIZE)))
        .payload(Payload::new("system", random_bytes(SYSTEM_SIZE, 0x5eed)));
    ImageBuilder::monogon(os).write(dir)?;
    Ok(())
}

/// One measured step: its name and one duration per run.
struct Row {
    name: String,
    times: Vec<Duration>,
    note: String,
}

impl Row {
    fn median(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        match t.len() {
            0 => Duration::ZERO,
            n if n % 2 == 1 => t[n / 2],
            n => (t[n / 2 - 1] + t[n / 2]) / 2,
        }
    }

    fn min(&self) -> Duration {
        self.times.iter().copied().min().unwrap_or_default()
    }

    fn max(&self) -> Duration {
        self.times.iter().copied().max().unwrap_or_default()
    }
}

/// What the composed map holds in memory.
struct Memory {
    extents: usize,
    extent_bytes: usize,
    generated_bytes: u64,
    unique_buffers: usize,
    unique_buffer_bytes: usize,
}

impl Memory {
    fn of(disk: &Disk) -> Memory {
        let extents = disk.map.extents();
        // Extents of one generated buffer (both FAT copies share one, and
        // a buffer may be split around file data) count it once.
        let mut seen = HashSet::new();
        let mut unique_buffer_bytes = 0;
        for e in extents {
            if let Source::Bytes { data, .. } = &e.source {
                if seen.insert(data.as_ptr() as usize) {
                    unique_buffer_bytes += data.len();
                }
            }
        }
        Memory {
            extents: extents.len(),
            extent_bytes: std::mem::size_of_val(extents),
            generated_bytes: disk.map.summary().generated_bytes,
            unique_buffers: seen.len(),
            unique_buffer_bytes,
        }
    }
}

fn open_options(cache_dir: &Path) -> OpenOptions {
    OpenOptions {
        cache_dir: Some(cache_dir.to_owned()),
        ..OpenOptions::default()
    }
}

fn node() -> ComposeOptions {
    ComposeOptions {
        disk_id: DISK_ID.to_owned(),
    }
}

fn measure_compose(image_dir: &Path, cache_dir: &Path) -> Result<(Vec<Row>, Memory)> {
    let opts = open_options(cache_dir);
    let mut full = Row {
        name: "open image + `monogon` preset + compose".to_owned(),
        times: Vec::new(),
        note: "what `ocidisk serve` does at start (no `--verify`)".to_owned(),
    };
    let mut alone = Row {
        name: "compose alone".to_owned(),
        times: Vec::new(),
        note: "image opened, preset built once".to_owned(),
    };
    // One untimed round warms the page cache and the allocator.
    let image = Image::open(image_dir, &opts)?;
    let spec = LayoutSpec::monogon(&MonogonPreset::default());
    let disk = compose(&image, &spec, &node())?;
    ensure!(disk.map.size() == 5 << 30, "the preset is not 5 GiB");
    let memory = Memory::of(&disk);
    drop(disk);

    for _ in 0..COMPOSE_RUNS {
        let t = Instant::now();
        let image = Image::open(black_box(image_dir), &opts)?;
        let spec = LayoutSpec::monogon(&MonogonPreset::default());
        let disk = compose(&image, &spec, &node())?;
        full.times.push(t.elapsed());
        black_box(&disk);

        let t = Instant::now();
        let disk = compose(black_box(&image), &spec, &node())?;
        alone.times.push(t.elapsed());
        black_box(&disk);
    }
    Ok((vec![full, alone], memory))
}

/// A peer (or `ocidisk export`) that makes a node's disk file.
struct Maker {
    name: &'static str,
    note: &'static str,
    output: PathBuf,
    /// The commands to run, in order, for one disk.
    commands: Vec<Command>,
    /// Whether to fsync the output after the commands (timed).
    fsync: bool,
}

struct ExportRow {
    row: Row,
    allocated: u64,
    apparent: u64,
}

fn measure_exports(
    ocidisk: &Path,
    image_dir: &Path,
    cache_dir: &Path,
    dir: &Path,
) -> Result<Vec<ExportRow>> {
    let export = |output: &Path| {
        let mut c = Command::new(ocidisk);
        c.arg("export")
            .arg("--image")
            .arg(image_dir)
            .arg("--cache")
            .arg(cache_dir)
            .args(["--disk-id", DISK_ID, "--output"])
            .arg(output)
            .env("RUST_LOG", "warn");
        c
    };
    let prebuilt = dir.join("prebuilt.img");
    run_tool(&mut export(&prebuilt))?;

    let out = |name: &str| dir.join(name);
    let cp = |output: &Path| {
        let mut c = Command::new("cp");
        c.arg("--reflink=auto").arg(&prebuilt).arg(output);
        c
    };
    let mut makers = vec![
        Maker {
            name: "`ocidisk export`",
            note: "from the OCI image; includes process start, compose and fsync",
            output: out("export.img"),
            commands: vec![export(&out("export.img"))],
            fsync: false,
        },
        Maker {
            name: "`cp --reflink=auto` of a prebuilt raw image",
            note: "no fsync",
            output: out("cp.img"),
            commands: vec![cp(&out("cp.img"))],
            fsync: false,
        },
        Maker {
            name: "`cp --reflink=auto` + fsync",
            note: "as durable as `ocidisk export`",
            output: out("cp-fsync.img"),
            commands: vec![cp(&out("cp-fsync.img"))],
            fsync: true,
        },
        Maker {
            name: "`qemu-img create -f qcow2 -b prebuilt.img -F raw`",
            note: "an overlay over the prebuilt image",
            output: out("node.qcow2"),
            commands: vec![{
                let mut c = Command::new("qemu-img");
                c.args(["create", "-q", "-f", "qcow2", "-b"])
                    .arg(&prebuilt)
                    .args(["-F", "raw"])
                    .arg(out("node.qcow2"));
                c
            }],
            fsync: false,
        },
    ];
    let mut rows: Vec<ExportRow> = makers
        .iter()
        .map(|m| ExportRow {
            row: Row {
                name: m.name.to_owned(),
                times: Vec::new(),
                note: m.note.to_owned(),
            },
            allocated: 0,
            apparent: 0,
        })
        .collect();

    for _ in 0..EXPORT_RUNS {
        for (m, r) in makers.iter_mut().zip(&mut rows) {
            remove_if_present(&m.output)?;
            // Start every run with the previous runs' writes on disk, so no
            // run pays for another's writeback.
            syncfs(dir)?;
            let t = Instant::now();
            for c in &mut m.commands {
                run_tool(c)?;
            }
            if m.fsync {
                File::open(&m.output)?.sync_all()?;
            }
            r.row.times.push(t.elapsed());
            let meta = std::fs::metadata(&m.output)?;
            r.allocated = meta.blocks() * 512;
            r.apparent = meta.len();
        }
    }
    // The export must be the prebuilt image, byte for byte (cmp stops at
    // the first difference and reads holes quickly).
    run_tool(Command::new("cmp").arg(&prebuilt).arg(out("export.img")))?;
    for m in &makers {
        remove_if_present(&m.output)?;
    }
    Ok(rows)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.3} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

fn print_compose(rows: &[Row], m: &Memory) {
    println!("| compose the map | runs | median | min | max | note |");
    println!("|---|---:|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            r.times.len(),
            ms(r.median()),
            ms(r.min()),
            ms(r.max()),
            r.note
        );
    }
    println!();
    println!("| the map in memory | bytes |");
    println!("|---|---:|");
    println!(
        "| {} extents × {} B (`size_of::<Extent>()`) | {} |",
        m.extents,
        std::mem::size_of::<Extent>(),
        m.extent_bytes
    );
    println!(
        "| generated bytes the disk reads (`summary().generated_bytes`) | {} |",
        m.generated_bytes
    );
    println!(
        "| generated bytes held: {} unique buffers (both FATs share one) | {} |",
        m.unique_buffers, m.unique_buffer_bytes
    );
    println!(
        "| total: extents + unique buffers | {} ({}) |",
        m.extent_bytes + m.unique_buffer_bytes,
        mib((m.extent_bytes + m.unique_buffer_bytes) as u64)
    );
    println!();
}

fn print_exports(rows: &[ExportRow], compose: &Row) {
    let base = rows
        .iter()
        .find(|r| r.row.name.starts_with("`cp"))
        .map(|r| r.row.median())
        .unwrap_or_default();
    println!(
        "| make a node's 5 GiB disk | runs | median | min | max | vs `cp` | allocated on disk | note |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let ratio = if base.is_zero() {
            "–".to_owned()
        } else {
            format!("{:.2}×", r.row.median().as_secs_f64() / base.as_secs_f64())
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} of {} | {} |",
            r.row.name,
            r.row.times.len(),
            ms(r.row.median()),
            ms(r.row.min()),
            ms(r.row.max()),
            ratio,
            mib(r.allocated),
            mib(r.apparent),
            r.row.note
        );
    }
    println!(
        "| (for scale) {} | {} | {} | | | {} | 0 (a map, not a file) | nothing written |",
        compose.name,
        compose.times.len(),
        ms(compose.median()),
        if base.is_zero() {
            "–".to_owned()
        } else {
            format!(
                "{:.5}×",
                compose.median().as_secs_f64() / base.as_secs_f64()
            )
        }
    );
}
