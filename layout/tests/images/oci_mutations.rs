//! Damaged metadata never panics: random byte changes and truncations of
//! `index.json`, the manifest, the config and a layout file make opening
//! the image and composing a disk return an error or a disk, never a panic.
//! The manifest and config are re-hashed after they are damaged (and the
//! documents that point at them updated), so that their parsers, not just
//! the digest check, see the damage. `OCI_MUTATION_CASES=N` runs N image
//! cases (and 4N layout cases) instead of 96 (and 512).

use anyhow::{Context as _, Result};
use layout::compose::{compose, ComposeOptions};
use layout::oci::{Image, OpenOptions};
use layout::spec::{LayoutSpec, MonogonPreset};
use ocidisk_testkit::oci_writer::{efi_image, sha256_digest, ImageBuilder, OsImage, Payload};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;
use std::cell::Cell;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
enum Damage {
    /// Replaces the byte at this position (modulo the length).
    Set(usize, u8),
    /// Keeps this many bytes (modulo the length + 1).
    Truncate(usize),
}

fn damage(bytes: &mut Vec<u8>, what: &[Damage]) {
    for d in what {
        match *d {
            Damage::Set(at, b) if !bytes.is_empty() => {
                let at = at % bytes.len();
                bytes[at] = b;
            }
            Damage::Set(..) => {}
            Damage::Truncate(keep) => {
                let keep = keep % (bytes.len() + 1);
                bytes.truncate(keep);
            }
        }
    }
}

fn damages() -> impl Strategy<Value = Vec<Damage>> {
    prop::collection::vec(
        prop_oneof![
            4 => (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Damage::Set(a, b)),
            // Characters that keep the text close to JSON or TOML, so more
            // damage gets past the syntax to the fields.
            4 => (any::<usize>(), prop::sample::select(b"0123456789aefz-.\"\\:[]{}, \n".to_vec()))
                .prop_map(|(a, b)| Damage::Set(a, b)),
            1 => any::<usize>().prop_map(Damage::Truncate),
        ],
        1..4,
    )
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Writes `bytes` as a blob; returns its digest and size.
fn put_blob(dir: &Path, bytes: &[u8]) -> Result<(String, usize)> {
    let digest = sha256_digest(bytes);
    std::fs::write(blob_path(dir, &digest), bytes)?;
    Ok((digest, bytes.len()))
}

fn read_json(path: &Path) -> Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

/// Points the index's (first) manifest at a new manifest blob.
fn repoint_index(dir: &Path, digest: &str, size: usize) -> Result<()> {
    let mut index = read_json(&dir.join("index.json"))?;
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(())
}

/// Which document to damage.
#[derive(Clone, Copy, Debug)]
enum Target {
    Index,
    Manifest,
    Config,
}

fn write_damaged(root: &Path, target: Target, what: &[Damage]) -> Result<PathBuf> {
    let dir = root.join("image");
    let built = ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("kernel.efi", efi_image(5000)))
            .payload(Payload::new("system", vec![7u8; 70_000]).zstd()),
    )
    .write(&dir)?;
    let manifest_digest = built.manifest_digest().to_owned();
    match target {
        Target::Index => {
            let mut bytes = std::fs::read(dir.join("index.json"))?;
            damage(&mut bytes, what);
            std::fs::write(dir.join("index.json"), bytes)?;
        }
        Target::Manifest => {
            let mut bytes = std::fs::read(blob_path(&dir, &manifest_digest))?;
            damage(&mut bytes, what);
            let (digest, size) = put_blob(&dir, &bytes)?;
            repoint_index(&dir, &digest, size)?;
        }
        Target::Config => {
            let mut manifest = read_json(&blob_path(&dir, &manifest_digest))?;
            let config_digest = manifest["config"]["digest"]
                .as_str()
                .context("config digest")?
                .to_owned();
            let mut bytes = std::fs::read(blob_path(&dir, &config_digest))?;
            damage(&mut bytes, what);
            let (digest, size) = put_blob(&dir, &bytes)?;
            manifest["config"]["digest"] = digest.into();
            manifest["config"]["size"] = size.into();
            let (digest, size) = put_blob(&dir, &serde_json::to_vec(&manifest)?)?;
            repoint_index(&dir, &digest, size)?;
        }
    }
    Ok(dir)
}

/// Whether the image opened.
fn open_and_compose(dir: &Path, cache: &Path, verify: bool) -> bool {
    let opts = OpenOptions {
        cache_dir: Some(cache.to_owned()),
        verify,
        ..OpenOptions::default()
    };
    match Image::open(dir, &opts) {
        Ok(image) => {
            let spec = LayoutSpec::monogon(&MonogonPreset::default());
            let _ = compose(
                &image,
                &spec,
                &ComposeOptions {
                    disk_id: "fuzz".into(),
                },
            );
            true
        }
        Err(_) => false,
    }
}

#[test]
fn damaged_image_metadata_is_an_error_not_a_panic() {
    let mut runner = TestRunner::new(Config {
        cases: std::env::var("OCI_MUTATION_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(96),
        failure_persistence: None,
        ..Config::default()
    });
    let target = prop_oneof![
        Just(Target::Index),
        Just(Target::Manifest),
        Just(Target::Config)
    ];
    let (opened, refused) = (Cell::new(0), Cell::new(0));
    runner
        .run(
            &(target, damages(), any::<bool>()),
            |(target, what, verify)| {
                let root = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
                let dir = write_damaged(root.path(), target, &what)
                    .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
                let count = if open_and_compose(&dir, &root.path().join("cache"), verify) {
                    &opened
                } else {
                    &refused
                };
                count.set(count.get() + 1);
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    // Both outcomes happen, or the damage misses what it should test.
    eprintln!("{} opened, {} refused", opened.get(), refused.get());
    assert!(opened.get() > 0 && refused.get() > 0);
}

const LAYOUT: &str = r#"
disk_size = "64MiB"
[[partitions]]
name = "ESP"
type = "esp"
size = "40MiB"
fat32 = { label = "BOOT", files = [
  { path = "EFI/BOOT/BOOTX64.EFI", content = "payload:kernel.efi" },
  { path = "node/id", content = "inline:node=1" },
  { path = "node/pb", content = "base64:AAEC" },
] }
[[partitions]]
name = "root"
type = "linux"
size = "1MiB"
content = "layer:1"
[[partitions]]
name = "rest"
type = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
size = "rest"
"#;

#[test]
fn damaged_layout_files_are_an_error_not_a_panic() -> Result<()> {
    let root = tempfile::tempdir()?;
    let built = ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("kernel.efi", efi_image(5000)))
            .payload(Payload::new("system", vec![7u8; 70_000])),
    )
    .write(&root.path().join("image"))?;
    let image = Image::open(
        &built.dir,
        &OpenOptions {
            cache_dir: Some(root.path().join("cache")),
            ..OpenOptions::default()
        },
    )?;
    let opts = ComposeOptions {
        disk_id: "fuzz".into(),
    };
    // The undamaged layout composes, so damage is what makes cases fail.
    let spec = LayoutSpec::from_toml(LAYOUT, Path::new("l.toml"), root.path(), None)?;
    compose(&image, &spec, &opts)?;

    let mut runner = TestRunner::new(Config {
        cases: std::env::var("OCI_MUTATION_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(512, |n: u32| n * 4),
        failure_persistence: None,
        ..Config::default()
    });
    let (parsed, refused) = (Cell::new(0), Cell::new(0));
    runner
        .run(&damages(), |what| {
            let mut bytes = LAYOUT.as_bytes().to_vec();
            damage(&mut bytes, &what);
            // Layout files are read as UTF-8; damage that breaks it is an
            // error of its own, so only text reaches the parser.
            let text = String::from_utf8_lossy(&bytes);
            match LayoutSpec::from_toml(&text, Path::new("l.toml"), root.path(), None) {
                Ok(spec) => {
                    let _ = compose(&image, &spec, &opts);
                    parsed.set(parsed.get() + 1);
                }
                Err(_) => refused.set(refused.get() + 1),
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{} parsed, {} refused", parsed.get(), refused.get());
    assert!(parsed.get() > 0 && refused.get() > 0);
    Ok(())
}
