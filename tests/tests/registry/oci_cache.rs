//! The cache of decompressed zstd layers: decompressed once, reused, never
//! seen half-written, even by many openers at once.

use anyhow::Result;
use layout::oci::{Image, ImageError, OpenOptions};
use layout::source::Source;
use ocidisk_tests::oci_writer::{BuiltImage, ImageBuilder, OsImage, Payload};
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

fn opts(cache: &Path) -> OpenOptions {
    OpenOptions {
        cache_dir: Some(cache.to_owned()),
        ..OpenOptions::default()
    }
}

/// The hex digest of the `system` layer: its cache entry's file name.
fn system_hex(built: &BuiltImage) -> String {
    built
        .layer("system")
        .blob
        .digest
        .trim_start_matches("sha256:")
        .to_owned()
}

/// A zstd image with a payload of several MiB (so decompression takes a
/// while and openers overlap).
fn big_zstd_image(root: &Path) -> Result<BuiltImage> {
    let data: Vec<u8> = (0..6u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 & 0x0f)
        .collect();
    ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("system", data).zstd())
            .hash_chunk_size(1 << 20),
    )
    .write(&root.join("image"))
}

fn cache_file(img: &Image, name: &str) -> PathBuf {
    match &img.payload(name).unwrap().content.source {
        Source::File { file, .. } => file.path().to_owned(),
        s => panic!("not a file: {s:?}"),
    }
}

#[test]
fn decompressed_once_then_reused() -> Result<()> {
    let root = tempfile::tempdir()?;
    let built = big_zstd_image(root.path())?;
    let cache = root.path().join("cache");
    let img = Image::open(&built.dir, &opts(&cache))?;
    let path = cache_file(&img, "system");
    let hex = system_hex(&built);
    assert_eq!(path, cache.join("zstd/sha256").join(&hex));
    let m1 = fs::metadata(&path)?;
    assert_eq!(
        m1.permissions().mode() & 0o222,
        0,
        "cache entries are read-only"
    );
    assert_eq!(fs::read(&path)?, built.layer("system").data);

    let img2 = Image::open(&built.dir, &opts(&cache))?;
    let m2 = fs::metadata(cache_file(&img2, "system"))?;
    assert_eq!((m1.ino(), m1.mtime_nsec()), (m2.ino(), m2.mtime_nsec()));
    // Nothing but the entry and its lock file.
    let mut names: Vec<String> = fs::read_dir(cache.join("zstd/sha256"))?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec![hex.clone(), format!("{hex}.lock")]);
    Ok(())
}

#[test]
fn concurrent_openers_all_see_complete_files() -> Result<()> {
    let root = tempfile::tempdir()?;
    let built = Arc::new(big_zstd_image(root.path())?);
    let cache = root.path().join("cache");
    let n = 6;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (built, cache, barrier) = (built.clone(), cache.clone(), barrier.clone());
            std::thread::spawn(move || -> Result<(u64, Vec<u8>)> {
                barrier.wait();
                let img = Image::open(&built.dir, &opts(&cache))?;
                let layer = img.payload("system")?;
                let Source::File { file, .. } = &layer.content.source else {
                    anyhow::bail!("not a file");
                };
                // Read through the descriptor the opener got.
                let mut buf = vec![0u8; layer.content.len as usize];
                std::os::unix::fs::FileExt::read_exact_at(file.file(), &mut buf, 0)?;
                Ok((file.file().metadata()?.ino(), buf))
            })
        })
        .collect();
    let mut inodes = Vec::new();
    for t in threads {
        let (ino, bytes) = t.join().unwrap()?;
        assert!(
            bytes == built.layer("system").data,
            "an opener saw a partial file"
        );
        inodes.push(ino);
    }
    inodes.dedup();
    assert_eq!(inodes.len(), 1, "decompressed more than once: {inodes:?}");
    Ok(())
}

#[test]
fn a_partial_entry_is_replaced() -> Result<()> {
    let root = tempfile::tempdir()?;
    let built = big_zstd_image(root.path())?;
    let cache = root.path().join("cache");
    let hex = system_hex(&built);
    let entry = cache.join("zstd/sha256").join(&hex);
    fs::create_dir_all(entry.parent().unwrap())?;
    fs::write(&entry, b"left over from a crash")?;
    // And a temporary file of an opener that crashed.
    let stale = entry.with_file_name(format!(".{hex}.999.0.tmp"));
    fs::write(&stale, b"partial")?;
    let img = Image::open(&built.dir, &opts(&cache))?;
    assert_eq!(
        fs::read(cache_file(&img, "system"))?,
        built.layer("system").data
    );
    Ok(())
}

#[test]
fn verify_checks_a_reused_entry() -> Result<()> {
    let root = tempfile::tempdir()?;
    let built = big_zstd_image(root.path())?;
    let cache = root.path().join("cache");
    let img = Image::open(&built.dir, &opts(&cache))?;
    let path = cache_file(&img, "system");
    drop(img);
    // Damage the entry in place (same size): a cheap open reuses it,
    // a verified open finds the bad chunk in it.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    ocidisk_tests::oci_writer::flip_byte(&path, (3 << 20) + 5)?;
    Image::open(&built.dir, &opts(&cache))?;
    let e = Image::open(
        &built.dir,
        &OpenOptions {
            verify: true,
            ..opts(&cache)
        },
    )
    .unwrap_err();
    match &e {
        ImageError::BadChunk {
            path: p, source, ..
        } => {
            assert_eq!(source.payload, "system");
            assert_eq!(source.offset, 3 << 20);
            assert!(p.contains(&cache.display().to_string()), "{e}");
        }
        _ => panic!("{e}"),
    }
    Ok(())
}

#[test]
fn cache_dir_that_cannot_be_created() -> Result<()> {
    let root = tempfile::tempdir()?;
    let built = big_zstd_image(root.path())?;
    let blocker = root.path().join("file");
    fs::write(&blocker, b"")?;
    let e = Image::open(&built.dir, &opts(&blocker.join("cache"))).unwrap_err();
    assert!(matches!(e, ImageError::Cache(_)), "{e}");
    assert!(e.to_string().contains("cache"), "{e}");
    Ok(())
}

#[test]
fn concurrent_processes_decompress_once() -> Result<()> {
    // Twenty nodes launched at once are twenty processes, not threads: the
    // cache's lock and rename must hold across processes too.
    let root = tempfile::tempdir()?;
    let data: Vec<u8> = (0..6u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 & 0x0f)
        .collect();
    let built = ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new(
                "kernel.efi",
                ocidisk_tests::oci_writer::efi_image(20_000),
            ))
            .payload(Payload::new("system", data).zstd()),
    )
    .write(&root.path().join("image"))?;
    let cache = root.path().join("cache");
    let bin = ocidisk_tests::blkio_client::ocidisk_binary()?;
    let children: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(&bin)
                .arg("inspect")
                .arg("--json")
                .arg("--image")
                .arg(&built.dir)
                .arg("--cache")
                .arg(&cache)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut outputs = Vec::new();
    for child in children {
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "inspect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(out.stdout);
    }
    assert!(!outputs[0].is_empty());
    assert!(
        outputs.iter().all(|o| o == &outputs[0]),
        "the processes saw different disks"
    );

    // One entry, complete, and nothing else but its lock file.
    let hex = system_hex(&built);
    let mut names: Vec<String> = fs::read_dir(cache.join("zstd/sha256"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    assert_eq!(names, vec![hex.clone(), format!("{hex}.lock")]);
    assert_eq!(
        fs::read(cache.join("zstd/sha256").join(&hex))?,
        built.layer("system").data
    );
    // No temporary files anywhere in the cache.
    let mut all = Vec::new();
    let mut dirs = vec![cache.clone()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                dirs.push(e.path());
            } else {
                all.push(e.path());
            }
        }
    }
    assert_eq!(all.len(), 2, "{all:?}");
    Ok(())
}
