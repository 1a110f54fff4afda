//! `ocidisk inspect` and `ocidisk export` as a user runs them: the real
//! binary (built by `cargo nextest run --workspace`, or `$OCIDISK_BIN`), a
//! Monogon-format image, and the standard disk tools on what it writes.

use ocidisk_testkit::layout_support;

use anyhow::{ensure, Context, Result};
use layout::compose::{compose, ComposeOptions, Disk};
use layout::oci::{Image, OpenOptions};
use layout::spec::{LayoutSpec, MonogonPreset, GIB};
use layout::Source;
use layout_support::*;
use ocidisk_tests::blkio_client::ocidisk_binary;
use ocidisk_tests::cli::CommandExt as _;
use ocidisk_tests::oci_writer::{flip_byte, BuiltImage, ImageBuilder, OsImage};
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// An image in a temporary directory, and a cache beside it (so nothing
/// is written under the user's home).
struct Fixture {
    dir: tempfile::TempDir,
    built: BuiltImage,
}

impl Fixture {
    fn new(os: OsImage) -> Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let built = ImageBuilder::monogon(os).write(&dir.path().join("image"))?;
        Ok(Fixture { dir, built })
    }

    fn sample() -> Result<Fixture> {
        Fixture::new(OsImage::sample()?)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ocidisk <command> --image … --cache …` followed by `extra`.
    fn args(&self, command: &str, extra: &[&str]) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            command.into(),
            "--image".into(),
            self.built.dir.clone().into(),
            "--cache".into(),
            self.path("cache").into(),
        ];
        a.extend(extra.iter().map(OsString::from));
        a
    }

    /// The disk composed in-process, as the binary should compose it.
    fn compose(&self, spec: &LayoutSpec, disk_id: &str) -> Result<Disk> {
        let image = Image::open(
            &self.built.dir,
            &OpenOptions {
                cache_dir: Some(self.path("cache")),
                ..OpenOptions::default()
            },
        )?;
        Ok(compose(
            &image,
            spec,
            &ComposeOptions {
                disk_id: disk_id.to_owned(),
            },
        )?)
    }
}

fn preset() -> LayoutSpec {
    LayoutSpec::monogon(&MonogonPreset::default())
}

/// What a run of the binary printed.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn ocidisk<I, S>(args: I) -> Result<Run>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(ocidisk_binary()?);
    cmd.args(args).stdin(Stdio::null());
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs the binary, which must succeed; returns its stdout.
fn succeeds<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let ran = Command::new(ocidisk_binary()?)
        .args(args)
        .stdin(Stdio::null())
        .try_run_ok()?;
    Ok(ran.stdout)
}

/// Runs the binary, which must fail the way a user error fails: exit code
/// 1, no panic, one `ocidisk: ` line on stderr that contains every one of
/// `needles`. Returns stderr.
fn fails<I, S>(args: I, needles: &[&str]) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let r = ocidisk(args)?;
    ensure!(
        r.status.code() == Some(1),
        "expected exit code 1, got {}; stdout: {}; stderr: {}",
        r.status,
        r.stdout,
        r.stderr
    );
    ensure!(
        r.stderr.starts_with("ocidisk: "),
        "stderr does not start with `ocidisk: `: {:?}",
        r.stderr
    );
    ensure!(!r.stderr.contains("panicked"), "it panicked: {}", r.stderr);
    for n in needles {
        ensure!(
            r.stderr.contains(n),
            "stderr does not mention {n:?}: {}",
            r.stderr
        );
    }
    Ok(r.stderr)
}

/// Runs both `inspect` and `export` with the same (bad) arguments: both
/// must fail as [`fails`] says, and `export` must leave no output behind.
fn both_fail(f: &Fixture, image: &Path, extra: &[&str], needles: &[&str]) -> Result<()> {
    let output = f.path("never-written.img");
    let common = |command: &str| -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            command.into(),
            "--image".into(),
            image.into(),
            "--cache".into(),
            f.path("cache").into(),
        ];
        a.extend(extra.iter().map(OsString::from));
        a
    };
    fails(common("inspect"), needles)?;
    let mut export = common("export");
    export.extend(["--output".into(), output.clone().into()]);
    fails(export, needles)?;
    ensure!(
        std::fs::symlink_metadata(&output).is_err(),
        "a failed export left {} behind",
        output.display()
    );
    Ok(())
}

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

/// One partition row of the `inspect` table: index, name, type, first and
/// last LBA.
type TableRow = (usize, String, String, u64, u64);

/// The partition rows of the table.
fn table_rows(table: &str) -> Result<Vec<TableRow>> {
    let mut lines = table
        .lines()
        .skip_while(|l| !l.trim_start().starts_with('#'));
    let header = lines.next().context("no table header")?;
    ensure!(header.contains("first LBA"), "unexpected header {header:?}");
    let mut rows = Vec::new();
    for line in lines.take_while(|l| !l.trim().is_empty()) {
        let w: Vec<&str> = line.split_whitespace().collect();
        ensure!(w.len() >= 7, "short row {line:?}");
        rows.push((
            w[0].parse()?,
            w[1].to_owned(),
            w[2].to_owned(),
            w[3].parse()?,
            w[4].parse()?,
        ));
    }
    Ok(rows)
}

#[test]
fn inspect_table_lists_the_monogon_partitions() -> Result<()> {
    let f = Fixture::sample()?;
    let out = succeeds(f.args("inspect", &[]))?;
    ensure!(
        out.starts_with("disk 5 GiB (10485760 sectors of 512 bytes)"),
        "{out}"
    );
    ensure!(out.contains(f.built.manifest_digest()), "{out}");
    let rows = table_rows(&out)?;
    assert_eq!(rows.len(), 4, "{out}");
    for (i, (row, want)) in rows.iter().zip(MONOGON).enumerate() {
        assert_eq!(row.0, i + 1, "{out}");
        assert_eq!(row.1, want.0, "{out}");
        assert_eq!(row.2, want.1, "{out}");
        assert_eq!((row.3, row.4), (want.2, want.3), "{out}");
    }
    // The content column says what each partition holds.
    let system = out.lines().find(|l| l.contains("METROPOLIS-SYSTEM-A"));
    ensure!(
        system.is_some_and(|l| l.contains("system")),
        "no system payload in {out}"
    );
    ensure!(out.contains("MNGN_BOOT"), "no ESP label in {out}");
    ensure!(out.contains("extents:"), "no extent summary in {out}");
    Ok(())
}

#[test]
fn inspect_json_matches_the_composed_disk() -> Result<()> {
    let f = Fixture::sample()?;
    let report = json(&succeeds(
        f.args("inspect", &["--json", "--disk-id", "n1"]),
    )?)?;
    let disk = f.compose(&preset(), "n1")?;

    assert_eq!(report["size"], 5 * GIB);
    assert_eq!(report["sectors"], 5 * GIB / 512);
    assert_eq!(report["manifest_digest"], f.built.manifest_digest());
    assert_eq!(
        report["disk_guid"],
        disk.disk_guid.to_string().to_uppercase()
    );
    let hash: String = disk
        .identity
        .layout_hash
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(report["layout_hash"], hash);

    let parts = report["partitions"].as_array().context("no partitions")?;
    assert_eq!(parts.len(), 4);
    for ((p, want), info) in parts.iter().zip(MONOGON).zip(&disk.partitions) {
        assert_eq!(p["index"], info.index);
        assert_eq!(p["name"], want.0);
        assert_eq!(p["type_guid"], want.1);
        assert_eq!(p["first_lba"], want.2);
        assert_eq!(p["last_lba"], want.3);
        assert_eq!(p["size"], (want.3 - want.2 + 1) * 512);
        assert_eq!(p["guid"], info.guid.to_string().to_uppercase());
        assert_eq!(p["content"], info.content.as_str());
    }
    // JSON keeps digests whole; the system partition names its layer.
    let system = &f.built.layer("system").blob.digest;
    ensure!(
        parts[1]["content"]
            .as_str()
            .is_some_and(|c| c.contains(system.as_str())),
        "{}",
        parts[1]
    );

    let summary = disk.map.summary();
    let e = &report["extents"];
    assert_eq!(e["count"], summary.extents);
    assert_eq!(e["file_bytes"], summary.file_bytes);
    assert_eq!(e["generated_bytes"], summary.generated_bytes);
    assert_eq!(e["inline_bytes"], 0);
    assert_eq!(e["zero_bytes"], summary.zero_bytes);
    assert_eq!(
        summary.file_bytes + summary.generated_bytes + summary.zero_bytes,
        5 * GIB
    );
    // The file bytes are the payloads: the system partition plus the
    // kernel twice in the ESP (boot-a.efi and the removable-media loader).
    let kernel = f.built.layer("kernel.efi").data.len() as u64;
    let system_len = f.built.layer("system").data.len() as u64;
    assert_eq!(summary.file_bytes, system_len + 2 * kernel);

    // The table says the same.
    let table = succeeds(f.args("inspect", &["--disk-id", "n1"]))?;
    ensure!(
        table.contains(report["disk_guid"].as_str().unwrap_or("?")),
        "{table}"
    );
    Ok(())
}

/// The disk GUID and every partition GUID of `inspect --json`.
fn guids(f: &Fixture, disk_id: Option<&str>) -> Result<Vec<String>> {
    let mut extra = vec!["--json"];
    if let Some(id) = disk_id {
        extra.extend(["--disk-id", id]);
    }
    let r = json(&succeeds(f.args("inspect", &extra))?)?;
    let mut g = vec![r["disk_guid"].as_str().context("disk_guid")?.to_owned()];
    for p in r["partitions"].as_array().context("partitions")? {
        g.push(p["guid"].as_str().context("guid")?.to_owned());
    }
    Ok(g)
}

#[test]
fn disk_id_seeds_the_guids() -> Result<()> {
    let f = Fixture::sample()?;
    let a = guids(&f, Some("node-a"))?;
    let b = guids(&f, Some("node-b"))?;
    let default = guids(&f, None)?;
    assert_eq!(a.len(), 5);
    // The same id gives the same GUIDs, run after run.
    assert_eq!(a, guids(&f, Some("node-a"))?);
    assert_eq!(default, guids(&f, None)?);
    // Different ids share none: not the disk's, not any partition's.
    for (x, y) in [(&a, &b), (&a, &default), (&b, &default)] {
        for g in x {
            ensure!(!y.contains(g), "{g} is in both {x:?} and {y:?}");
        }
    }
    // Within a disk, all five differ.
    let mut unique = a.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 5, "{a:?}");
    Ok(())
}

/// Compares the file with the map over the whole disk, in chunks.
fn assert_same_bytes(map: &layout::BlockMap, file: &File) -> Result<()> {
    assert_eq!(file.metadata()?.len(), map.size());
    const CHUNK: u64 = 8 << 20;
    let mut want = vec![0u8; CHUNK as usize];
    let mut got = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while pos < map.size() {
        let n = (map.size() - pos).min(CHUNK) as usize;
        map.read_at(pos, &mut want[..n])?;
        file.read_exact_at(&mut got[..n], pos)?;
        if want[..n] != got[..n] {
            let at = (0..n).find(|&i| want[i] != got[i]).unwrap_or(0);
            anyhow::bail!(
                "the export differs from read_at at byte {}: {:#04x} instead of {:#04x}",
                pos + at as u64,
                got[at],
                want[at]
            );
        }
        pos += n as u64;
    }
    Ok(())
}

#[test]
fn export_is_the_composed_disk_byte_for_byte() -> Result<()> {
    let f = Fixture::sample()?;
    let out = f.path("node.img");
    let stdout = succeeds(f.args(
        "export",
        &["--disk-id", "node-1", "--output", path_str(&out)?],
    ))?;
    assert_eq!(stdout, "", "export prints nothing on success");
    let disk = f.compose(&preset(), "node-1")?;
    let file = File::open(&out)?;
    assert_same_bytes(&disk.map, &file)?;
    sgdisk_verify(&out)?;

    // Zero extents are holes (their whole file-system blocks, at least).
    const BLOCK: u64 = 4096;
    for e in disk.map.extents() {
        if !matches!(e.source, Source::Zero) {
            continue;
        }
        let (start, end) = (e.start.div_ceil(BLOCK) * BLOCK, e.end() / BLOCK * BLOCK);
        if start < end {
            ensure!(
                !has_data(&file, start, end)?,
                "zeros at {start}..{end} were written, not left as a hole"
            );
        }
    }
    // So the file takes about what its non-zero bytes take: the payloads
    // and the generated metadata, each rounded to file-system blocks.
    let s = disk.map.summary();
    let data = s.file_bytes + s.generated_bytes;
    let allocated = file.metadata()?.blocks() * 512;
    let slack = s.extents as u64 * 2 * BLOCK + (1 << 20);
    ensure!(
        allocated >= s.file_bytes && allocated <= data + slack,
        "{allocated} bytes allocated for {data} bytes of data in a {} byte disk",
        disk.map.size()
    );
    Ok(())
}

#[test]
fn export_of_a_zstd_image_fills_the_given_cache() -> Result<()> {
    let f = Fixture::new(OsImage::sample_zstd()?)?;
    let out = f.path("node.img");
    succeeds(f.args("export", &["--output", path_str(&out)?]))?;
    let cached = std::fs::read_dir(f.path("cache"))
        .context("export did not use the --cache directory")?
        .count();
    ensure!(cached > 0, "nothing in the cache");
    let disk = f.compose(&preset(), "")?;
    assert_same_bytes(&disk.map, &File::open(&out)?)?;
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 temporary path")
}

#[test]
fn export_refuses_an_existing_output_without_force() -> Result<()> {
    let f = Fixture::sample()?;
    let out = f.path("node.img");
    std::fs::write(&out, b"keep me")?;
    fails(
        f.args("export", &["--output", path_str(&out)?]),
        &[path_str(&out)?, "--force"],
    )?;
    assert_eq!(std::fs::read(&out)?, b"keep me");

    // With --force it is replaced by the disk.
    succeeds(f.args("export", &["--output", path_str(&out)?, "--force"]))?;
    assert_eq!(std::fs::metadata(&out)?.len(), 5 * GIB);
    sgdisk_verify(&out)?;
    Ok(())
}

#[test]
fn export_force_replaces_a_symlink_instead_of_writing_through_it() -> Result<()> {
    let f = Fixture::sample()?;
    // A copy of a blob stands in for the blob a careless output path might
    // point at.
    let victim = f.path("blob-copy");
    std::fs::copy(f.built.layer("system").blob.path(), &victim)?;
    let before = std::fs::read(&victim)?;
    let mtime = std::fs::metadata(&victim)?.modified()?;
    let out = f.path("node.img");
    std::os::unix::fs::symlink(&victim, &out)?;

    // Without --force the symlink counts as an existing file.
    fails(
        f.args("export", &["--output", path_str(&out)?]),
        &[path_str(&out)?],
    )?;
    succeeds(f.args("export", &["--output", path_str(&out)?, "--force"]))?;

    let meta = std::fs::symlink_metadata(&out)?;
    ensure!(meta.file_type().is_file(), "the output is still a symlink");
    assert_eq!(meta.len(), 5 * GIB);
    assert_eq!(
        std::fs::read(&victim)?,
        before,
        "the symlink's target changed"
    );
    assert_eq!(std::fs::metadata(&victim)?.modified()?, mtime);
    Ok(())
}

#[test]
fn layout_file_describes_another_disk() -> Result<()> {
    let f = Fixture::sample()?;
    let layout = f.path("small.toml");
    std::fs::write(
        &layout,
        r#"
        disk_size = "64MiB"
        [[partitions]]
        name = "boot"
        type = "esp"
        size = "40MiB"
        [partitions.fat32]
        label = "SMALL"
        files = [{ path = "EFI/BOOT/BOOTX64.EFI", content = "payload:kernel.efi" }]
        [[partitions]]
        name = "root"
        type = "linux"
        size = "8MiB"
        content = "payload:system"
        [[partitions]]
        name = "scratch"
        type = "linux"
        size = "rest"
        "#,
    )?;
    let l = path_str(&layout)?;
    let report = json(&succeeds(f.args("inspect", &["--layout", l, "--json"]))?)?;
    assert_eq!(report["size"], 64u64 << 20);
    let names: Vec<&str> = report["partitions"]
        .as_array()
        .context("partitions")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["boot", "root", "scratch"]);
    assert_eq!(report["partitions"][1]["first_lba"], 41 * 2048);

    let out = f.path("small.img");
    succeeds(f.args("export", &["--layout", l, "--output", path_str(&out)?]))?;
    sgdisk_verify(&out)?;
    let spec = LayoutSpec::from_file(&layout, None)?;
    let disk = f.compose(&spec, "")?;
    assert_same_bytes(&disk.map, &File::open(&out)?)?;

    // The root partition starts with the payload; the loader is in the ESP.
    let system = &f.built.layer("system").data;
    let mut root = vec![0u8; system.len()];
    File::open(&out)?.read_exact_at(&mut root, 41 * (1 << 20))?;
    ensure!(&root == system, "root partition is not the system payload");
    let esp = f.path("esp.img");
    extract(&out, 1 << 20, 40 << 20, &esp)?;
    fsck_fat(&esp)?;
    let loader = mcopy(&esp, "EFI/BOOT/BOOTX64.EFI", f.dir.path())?;
    ensure!(loader == f.built.layer("kernel.efi").data, "loader differs");

    // --disk-size overrides the file's size.
    let report = json(&succeeds(f.args(
        "inspect",
        &["--layout", l, "--json", "--disk-size", "128MiB"],
    ))?)?;
    assert_eq!(report["size"], 128u64 << 20);
    Ok(())
}

#[test]
fn verify_names_the_damaged_payload() -> Result<()> {
    let f = Fixture::new(OsImage::sample()?.hash_chunk_size(64 * 1024))?;
    let blob = f.built.layer("system").blob.path().to_owned();
    flip_byte(&blob, 70_000)?;
    // Sizes still match, so the cheap checks pass…
    succeeds(f.args("inspect", &[]))?;
    // …and --verify finds the bad chunk, naming the payload and where.
    both_fail(
        &f,
        &f.built.dir,
        &["--verify"],
        &["\"system\"", "chunk 1", "65536..131072"],
    )?;
    Ok(())
}

#[test]
fn missing_image_directory() -> Result<()> {
    let f = Fixture::sample()?;
    let missing = f.path("no-such-image");
    both_fail(&f, &missing, &[], &[path_str(&missing)?])
}

#[test]
fn missing_index_json() -> Result<()> {
    let f = Fixture::sample()?;
    std::fs::remove_file(f.built.dir.join("index.json"))?;
    both_fail(
        &f,
        &f.built.dir,
        &[],
        &["index.json", path_str(&f.built.dir)?],
    )
}

/// An error two causes deep (the command's context, the image error, the
/// I/O error under it) prints each cause once, in order, on one line: no
/// library error repeats its source in its own message.
#[test]
fn each_cause_is_printed_once() -> Result<()> {
    let f = Fixture::sample()?;
    let index = f.built.dir.join("index.json");
    std::fs::remove_file(&index)?;
    std::fs::create_dir(&index)?;
    let index = path_str(&index)?;
    let stderr = fails(
        f.args("inspect", &[]),
        &["opening image", index, "reading", "not a regular file"],
    )?;
    ensure!(
        stderr.lines().count() == 1,
        "more than one line: {stderr:?}"
    );
    for part in [index, "not a regular file"] {
        ensure!(
            stderr.matches(part).count() == 1,
            "{part:?} appears more than once: {stderr:?}"
        );
    }
    // The chain, outermost first, joined with ": ".
    let at = |part: &str| stderr.find(part);
    ensure!(
        at("opening image") < at(&format!("{index}: reading"))
            && at(&format!("{index}: reading: ")) < at("not a regular file"),
        "causes out of order: {stderr:?}"
    );
    Ok(())
}

/// A layout file of one empty partition, for options that apply to the
/// monogon preset only.
fn plain_layout_file(f: &Fixture) -> Result<PathBuf> {
    let layout = f.path("l.toml");
    std::fs::write(
        &layout,
        "disk_size = \"8MiB\"\n[[partitions]]\nname = \"x\"\ntype = \"linux\"\nsize = \"rest\"\n",
    )?;
    Ok(layout)
}

#[test]
fn bad_layout_files() -> Result<()> {
    let f = Fixture::sample()?;
    // (file name, contents or None for no file, what the error must say
    // besides the file's path)
    let cases: &[(&str, Option<&str>, &[&str])] = &[
        // Not TOML.
        ("syntax.toml", Some("disk_size = \"64MiB\"\n[[partitions]\nname = 1\n"), &[]),
        // TOML, but a field is wrong.
        (
            "field.toml",
            Some("disk_size = \"64MiB\"\n[[partitions]]\nname = \"x\"\ntype = \"no-such-type\"\nsize = \"1MiB\"\n"),
            &["partitions[0].type", "no-such-type"],
        ),
        // A payload the image does not have.
        (
            "payload.toml",
            Some("disk_size = \"64MiB\"\n[[partitions]]\nname = \"x\"\ntype = \"linux\"\nsize = \"1MiB\"\ncontent = \"payload:nope\"\n"),
            &["partition 1 (x): partitions[0].content", "\"nope\""],
        ),
        // A FAT32 file whose layer is not there.
        (
            "fat.toml",
            Some("disk_size = \"64MiB\"\n[[partitions]]\nname = \"esp\"\ntype = \"esp\"\nsize = \"40MiB\"\nfat32 = { label = \"B\", files = [ { path = \"a\", content = \"empty\" }, { path = \"b\", content = \"layer:7\" } ] }\n"),
            &["partitions[0].fat32.files[1].content", "7"],
        ),
        // A content too large for its partition.
        (
            "large.toml",
            Some("disk_size = \"64MiB\"\n[[partitions]]\nname = \"a\"\ntype = \"linux\"\nsize = \"1MiB\"\n[[partitions]]\nname = \"b\"\ntype = \"linux\"\nsize = \"100KiB\"\ncontent = \"payload:system\"\n"),
            &["partition 2 (b): partitions[1].content", "larger than"],
        ),
        // No such file.
        ("missing.toml", None, &[]),
    ];
    for (name, contents, says) in cases {
        let path = f.path(name);
        if let Some(contents) = contents {
            std::fs::write(&path, contents)?;
        }
        let path = path_str(&path)?;
        let mut needles = vec![path];
        needles.extend_from_slice(says);
        both_fail(&f, &f.built.dir, &["--layout", path], &needles)
            .with_context(|| format!("layout file {name}"))?;
    }
    Ok(())
}

#[test]
fn unknown_ref() -> Result<()> {
    let f = Fixture::new(OsImage::sample()?.ref_name("node"))?;
    both_fail(
        &f,
        &f.built.dir,
        &["--ref", "no-such-ref"],
        &["no-such-ref", "index.json", "node"],
    )
}

#[test]
fn disk_too_small_for_the_preset() -> Result<()> {
    let f = Fixture::sample()?;
    // ESP + two system partitions alone need more than 2 GiB.
    both_fail(
        &f,
        &f.built.dir,
        &["--disk-size", "2GiB"],
        &["do not fit", "partition"],
    )?;
    // Not a size at all: clap rejects it (its usage errors exit with 2),
    // naming the value.
    let r = ocidisk(f.args("inspect", &["--disk-size", "5GB"]))?;
    ensure!(!r.status.success() && !r.stderr.contains("panicked"));
    ensure!(r.stderr.contains("5GB"), "{}", r.stderr);
    Ok(())
}

#[test]
fn missing_abloader() -> Result<()> {
    let f = Fixture::sample()?;
    let loader = f.path("no-such-loader.efi");
    both_fail(
        &f,
        &f.built.dir,
        &["--abloader", path_str(&loader)?],
        &[path_str(&loader)?],
    )
}

#[test]
fn abloader_goes_to_the_removable_media_path() -> Result<()> {
    let f = Fixture::sample()?;
    let loader = f.path("abloader.efi");
    let bytes = ocidisk_tests::oci_writer::efi_image(5000);
    std::fs::write(&loader, &bytes)?;
    let out = f.path("node.img");
    succeeds(f.args(
        "export",
        &[
            "--abloader",
            path_str(&loader)?,
            "--output",
            path_str(&out)?,
        ],
    ))?;
    let disk = f.compose(
        &LayoutSpec::monogon(&MonogonPreset {
            abloader: Some(loader.clone()),
            ..MonogonPreset::default()
        }),
        "",
    )?;
    assert_same_bytes(&disk.map, &File::open(&out)?)?;
    let esp = f.path("esp.img");
    extract(&out, 1 << 20, 128 << 20, &esp)?;
    ensure!(mcopy(&esp, "EFI/BOOT/BOOTx64.EFI", f.dir.path())? == bytes);
    // With a layout file the loader belongs in the file: a clear error.
    let layout = plain_layout_file(&f)?;
    both_fail(
        &f,
        &f.built.dir,
        &[
            "--layout",
            path_str(&layout)?,
            "--abloader",
            path_str(&loader)?,
        ],
        &["--abloader"],
    )
}

/// Runs `inspect` with stdout a pipe whose reading end is already closed,
/// so that its first write fails with EPIPE (Rust ignores SIGPIPE).
#[test]
fn esp_files_go_on_the_esp() -> Result<()> {
    let f = Fixture::sample()?;
    let host: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let host_path = f.path("params.bin");
    std::fs::write(&host_path, &host)?;
    let from_file = format!("metropolis/parameters.pb=file:{}", path_str(&host_path)?);
    let files = [
        "--esp-file",
        &from_file,
        "--esp-file",
        "node.txt=inline:node=3",
        "--esp-file",
        "EFI/node/blob.bin=base64:AAEC/w==",
        "--esp-file",
        "EFI/metropolis/boot-b.efi=payload:kernel.efi",
    ];
    let out = f.path("node.img");
    let mut args = files.to_vec();
    args.extend(["--output", path_str(&out)?]);
    succeeds(f.args("export", &args))?;
    sgdisk_verify(&out)?;
    let esp = f.path("esp.img");
    extract(&out, 1 << 20, 128 << 20, &esp)?;
    fsck_fat(&esp)?;
    let kernel = &f.built.layer("kernel.efi").data;
    for (path, want) in [
        ("metropolis/parameters.pb", &host[..]),
        ("node.txt", b"node=3"),
        ("EFI/node/blob.bin", &[0, 1, 2, 255]),
        ("EFI/metropolis/boot-b.efi", kernel),
        ("EFI/metropolis/boot-a.efi", kernel),
    ] {
        ensure!(mcopy(&esp, path, f.dir.path())? == want, "{path} differs");
    }

    // inspect lists them, and composes the same disk export wrote.
    let mut args = files.to_vec();
    args.push("--json");
    let report = json(&succeeds(f.args("inspect", &args))?)?;
    let esp_content = report["partitions"][0]["content"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        esp_content.contains("metropolis/parameters.pb") && esp_content.contains("node.txt"),
        "{esp_content}"
    );
    let plain = json(&succeeds(f.args("inspect", &["--json"]))?)?;
    ensure!(report["partitions"][1] == plain["partitions"][1]);
    Ok(())
}

#[test]
fn bad_esp_files() -> Result<()> {
    let f = Fixture::sample()?;
    let dir = &f.built.dir;
    for (arg, needles) in [
        (
            "x.bin=base64:not base64!",
            &["--esp-file", "not valid base64"][..],
        ),
        ("no-equals-sign", &["--esp-file", "PATH=CONTENT"][..]),
        ("x=nothing:1", &["--esp-file", "inline:TEXT"][..]),
        (
            "EFI/BOOT/bootx64.efi=inline:x",
            &["--esp-file", "esp_files[0].path", "already a file"][..],
        ),
        (
            "EFI/metropolis=inline:x",
            &["--esp-file", "esp_files[0].path", "already a file"][..],
        ),
        ("a/b?c=inline:x", &["--esp-file", "'?'", "FAT names"][..]),
        ("dir/name.=inline:x", &["--esp-file", "\"name.\""][..]),
        ("x=payload:nope", &["nope"][..]),
    ] {
        both_fail(&f, dir, &["--esp-file", arg], needles)?;
    }
    let long = format!("{}=inline:x", "n".repeat(300));
    both_fail(
        &f,
        dir,
        &["--esp-file", &long],
        &["--esp-file", "300 UTF-16"],
    )?;
    let missing = f.path("missing.pb");
    let arg = format!("p.pb=file:{}", path_str(&missing)?);
    both_fail(&f, dir, &["--esp-file", &arg], &[path_str(&missing)?])?;
    // With a layout file, the files belong in the file.
    let layout = plain_layout_file(&f)?;
    both_fail(
        &f,
        dir,
        &["--layout", path_str(&layout)?, "--esp-file", "a=inline:b"],
        &["--esp-file applies to the monogon preset only"],
    )
}

#[test]
fn inline_layer_data_is_counted_as_inline() -> Result<()> {
    // A layer given as the descriptor's `data` is the image's bytes, not
    // metadata ocidisk generated.
    let kernel = ocidisk_tests::oci_writer::efi_image(3000);
    let f = Fixture::new(
        OsImage::new()
            .payload(ocidisk_tests::oci_writer::Payload::new("kernel.efi", kernel.clone()).inline())
            .payload(ocidisk_tests::oci_writer::Payload::new(
                "system",
                vec![1u8; 5000],
            )),
    )?;
    let report = json(&succeeds(f.args("inspect", &["--json"]))?)?;
    let e = &report["extents"];
    // The kernel, twice in the ESP.
    assert_eq!(e["inline_bytes"], 2 * kernel.len() as u64);
    assert_eq!(e["file_bytes"], 5000);
    let disk = f.compose(&preset(), "")?;
    let summary = disk.map.summary();
    assert_eq!(e["generated_bytes"], summary.generated_bytes);
    assert_eq!(
        summary.file_bytes + summary.generated_bytes + summary.inline_bytes + summary.zero_bytes,
        5 * GIB
    );
    let table = succeeds(f.args("inspect", &[]))?;
    ensure!(table.contains(" inline, "), "{table}");
    Ok(())
}

fn inspect_into_closed_pipe(f: &Fixture, extra: &[&str]) -> Result<Run> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    let out = Command::new(ocidisk_binary()?)
        .args(f.args("inspect", extra))
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()?;
    Ok(Run {
        status: out.status,
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[test]
fn a_closed_pipe_is_not_an_error() -> Result<()> {
    let f = Fixture::sample()?;
    for extra in [&[][..], &["--json"][..]] {
        let r = inspect_into_closed_pipe(&f, extra)?;
        ensure!(
            r.status.success() && r.stderr.is_empty(),
            "inspect {extra:?} into a closed pipe: {}: {}",
            r.status,
            r.stderr
        );
    }
    // And as people write it.
    let mut args = vec![ocidisk_binary()?.into_os_string()];
    args.extend(f.args("inspect", &[]));
    let out = Command::new("bash")
        .args(["-c", "set -o pipefail; \"$@\" | head -1", "bash"])
        .args(&args)
        .try_run_ok()?;
    ensure!(out.stdout.starts_with("disk 5 GiB"), "{out}");
    Ok(())
}
