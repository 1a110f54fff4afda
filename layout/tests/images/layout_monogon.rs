//! The `monogon` preset composed from a Monogon-format OS image, checked
//! with the standard tools: sgdisk, sfdisk, fsck.fat and mtools.

use ocidisk_testkit::layout_support;

use anyhow::Result;
use layout::compose::{compose, ComposeError, ComposeOptions, Disk};
use layout::oci::{Image, OpenOptions};
use layout::spec::{LayoutSpec, MonogonPreset, GIB, MIB};
use layout_support::*;
use ocidisk_testkit::oci_writer::{BuiltImage, ImageBuilder, OsImage, Payload};

struct Fixture {
    dir: tempfile::TempDir,
    built: BuiltImage,
    image: Image,
}

fn fixture(os: OsImage) -> Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let built = ImageBuilder::monogon(os).write(&dir.path().join("image"))?;
    let image = Image::open(
        &built.dir,
        &OpenOptions {
            cache_dir: Some(dir.path().join("cache")),
            ..OpenOptions::default()
        },
    )?;
    Ok(Fixture { dir, built, image })
}

fn node(id: &str) -> ComposeOptions {
    ComposeOptions {
        disk_id: id.to_owned(),
    }
}

fn preset() -> LayoutSpec {
    LayoutSpec::monogon(&MonogonPreset::default())
}

/// The partition table bytes: the first 34 and the last 33 blocks.
fn gpt_bytes(disk: &Disk) -> Result<Vec<u8>> {
    let size = disk.map.size();
    let mut b = read(&disk.map, 0, 34 * 512)?;
    b.extend(read(&disk.map, size - 33 * 512, 33 * 512)?);
    Ok(b)
}

#[test]
fn monogon_preset_is_a_valid_5gib_disk() -> Result<()> {
    let f = fixture(OsImage::sample()?)?;
    let disk = compose(&f.image, &preset(), &node("node-1"))?;
    let size = 5 * GIB;
    assert_eq!(disk.map.size(), size);
    let raw = f.dir.path().join("disk.img");
    let file = export_raw(&disk.map, &raw)?;
    sgdisk_verify(&raw)?;

    // The table as sfdisk reads it: Monogon's installer's LBAs, names, types.
    let table = sfdisk_json(&raw)?;
    assert_eq!(table["label"], "gpt");
    assert_eq!(table["sectorsize"], 512);
    assert_eq!(table["firstlba"], 34);
    assert_eq!(table["lastlba"], size / 512 - 34);
    assert_eq!(
        table["id"].as_str().unwrap_or_default(),
        disk.disk_guid.to_string().to_uppercase()
    );
    let parts = table["partitions"].as_array().cloned().unwrap_or_default();
    assert_eq!(parts.len(), 4);
    for (i, (p, (name, ty, first, last))) in parts.iter().zip(MONOGON).enumerate() {
        assert_eq!(p["name"], name);
        assert_eq!(p["type"], ty);
        assert_eq!(p["start"], first);
        assert_eq!(p["size"], last - first + 1);
        let info = &disk.partitions[i];
        assert_eq!((info.index, info.name.as_str()), (i + 1, name));
        assert_eq!((info.first_lba, info.last_lba), (first, last));
        assert_eq!(info.size, (last - first + 1) * 512);
        assert_eq!(
            p["uuid"].as_str().unwrap_or_default(),
            info.guid.to_string().to_uppercase()
        );
    }

    // System A, in the exported file: the payload from byte 0, zeros after
    // it (a hole past its first MiB).
    let system = f.built.layer("system").data.clone();
    let a = &disk.partitions[1];
    assert_eq!(
        read_file(&file, a.first_lba * 512, system.len() as u64)?,
        system
    );
    let after = a.first_lba * 512 + system.len() as u64;
    let a_end = (a.last_lba + 1) * 512;
    let tail = (a_end - after).min(MIB);
    assert_file_zero(&file, after, after + tail)?;
    assert!(!has_data(
        &file,
        (after + tail).next_multiple_of(4096),
        a_end
    )?);
    assert_zero_range(
        &disk.map,
        after.next_multiple_of(512),
        a_end - after.next_multiple_of(512),
    );
    assert!(a.content.starts_with("payload system"), "{}", a.content);

    // Between the primary GPT and the ESP (LBA 34-2047), and between the
    // last partition and the backup GPT: zeros.
    assert_file_zero(&file, 34 * 512, 2048 * 512)?;
    let data_end = (disk.partitions[3].last_lba + 1) * 512;
    assert!(data_end < size - 33 * 512);
    assert_file_zero(&file, data_end, size - 33 * 512)?;

    // System B and Data: zeros, and holes in the exported file.
    for p in &disk.partitions[2..] {
        let (start, end) = (p.first_lba * 512, (p.last_lba + 1) * 512);
        assert_zero_range(&disk.map, start, end - start);
        assert!(!has_data(&file, start, end)?, "{} has data", p.name);
        assert_eq!(p.content, "empty");
    }

    // The ESP: a clean FAT32 with the kernel at both boot paths.
    let esp = &disk.partitions[0];
    let esp_img = f.dir.path().join("esp.img");
    extract(&raw, esp.first_lba * 512, esp.size, &esp_img)?;
    fsck_fat(&esp_img)?;
    let kernel = f.built.layer("kernel.efi").data.clone();
    assert_eq!(
        mcopy(&esp_img, "EFI/metropolis/boot-a.efi", f.dir.path())?,
        kernel
    );
    assert_eq!(
        mcopy(&esp_img, "EFI/BOOT/BOOTx64.EFI", f.dir.path())?,
        kernel
    );
    let label = run(std::process::Command::new("mlabel")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-i"])
        .arg(&esp_img)
        .arg("::"))?;
    assert!(label.contains("MNGN_BOOT"), "{label}");

    // No payload byte is copied: the map points into the blobs.
    let summary = disk.map.summary();
    assert!(summary.file_bytes >= (system.len() + 2 * kernel.len()) as u64);
    assert!(summary.generated_bytes < 4 * MIB, "{summary:?}");
    assert_eq!(disk.identity.manifest_digest, f.built.manifest_digest());
    Ok(())
}

#[test]
fn guids_follow_the_disk_id() -> Result<()> {
    let f = fixture(OsImage::sample()?)?;
    let one = compose(&f.image, &preset(), &node("node-1"))?;
    let again = compose(&f.image, &preset(), &node("node-1"))?;
    let two = compose(&f.image, &preset(), &node("node-2"))?;
    assert_eq!(gpt_bytes(&one)?, gpt_bytes(&again)?);
    assert_eq!(one.disk_guid, again.disk_guid);
    assert_ne!(one.disk_guid, two.disk_guid);
    let mut guids: Vec<_> = one
        .partitions
        .iter()
        .chain(&two.partitions)
        .map(|p| p.guid)
        .collect();
    guids.push(one.disk_guid);
    guids.push(two.disk_guid);
    let n = guids.len();
    guids.sort();
    guids.dedup();
    assert_eq!(guids.len(), n, "every GUID differs");
    // The identity names the base, not the node.
    assert_eq!(one.identity, two.identity);
    // The whole ESP (FAT volume id included) is stable for a node.
    let esp = &one.partitions[0];
    assert_eq!(
        read(&one.map, esp.first_lba * 512, 8 * MIB)?,
        read(&again.map, esp.first_lba * 512, 8 * MIB)?
    );
    Ok(())
}

#[test]
fn the_abloader_is_the_removable_media_boot_file() -> Result<()> {
    let f = fixture(OsImage::sample()?)?;
    let loader: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let loader_path = f.dir.path().join("abloader.efi");
    std::fs::write(&loader_path, &loader)?;
    let spec = LayoutSpec::monogon(&MonogonPreset {
        abloader: Some(loader_path.clone()),
        ..MonogonPreset::default()
    });
    let disk = compose(&f.image, &spec, &node("n"))?;
    let esp = &disk.partitions[0];
    let raw = f.dir.path().join("disk.img");
    export_raw(&disk.map, &raw)?;
    let esp_img = f.dir.path().join("esp.img");
    extract(&raw, esp.first_lba * 512, esp.size, &esp_img)?;
    fsck_fat(&esp_img)?;
    assert_eq!(
        mcopy(&esp_img, "EFI/BOOT/BOOTx64.EFI", f.dir.path())?,
        loader
    );
    let kernel = f.built.layer("kernel.efi").data.clone();
    assert_eq!(
        mcopy(&esp_img, "EFI/metropolis/boot-a.efi", f.dir.path())?,
        kernel
    );
    assert!(
        esp.content.contains(&loader_path.display().to_string()),
        "{}",
        esp.content
    );

    // A different base: the identity changes with the loader...
    let plain = compose(&f.image, &preset(), &node("n"))?;
    assert_ne!(plain.identity, disk.identity);
    // ...and with the loader's length, though the path is the same.
    std::fs::write(&loader_path, &loader[..1000])?;
    let shorter = compose(&f.image, &spec, &node("n"))?;
    assert_ne!(shorter.identity, disk.identity);
    Ok(())
}

#[test]
fn zstd_payloads_compose_the_same_contents() -> Result<()> {
    let f = fixture(OsImage::sample_zstd()?)?;
    let disk = compose(&f.image, &preset(), &node("n"))?;
    let system = f.built.layer("system").data.clone();
    let a = &disk.partitions[1];
    assert_eq!(
        read(&disk.map, a.first_lba * 512, system.len() as u64)?,
        system
    );
    let raw = f.dir.path().join("disk.img");
    export_raw(&disk.map, &raw)?;
    sgdisk_verify(&raw)?;
    Ok(())
}

#[test]
fn disk_sizes_other_than_the_default() -> Result<()> {
    let f = fixture(OsImage::sample()?)?;
    let spec = |size| {
        LayoutSpec::monogon(&MonogonPreset {
            disk_size: size,
            ..MonogonPreset::default()
        })
    };
    // Just large enough: the data partition gets what is left, in MiB.
    let disk = compose(&f.image, &spec(2200 * MIB), &node("n"))?;
    let data = &disk.partitions[3];
    assert_eq!(data.first_lba, 2177 * 2048);
    assert_eq!(data.size, 22 * MIB);
    let raw = f.dir.path().join("disk.img");
    export_raw(&disk.map, &raw)?;
    sgdisk_verify(&raw)?;

    // Too small: system B does not fit; the error names the field.
    let err = compose(&f.image, &spec(2 * GIB), &node("n")).unwrap_err();
    assert!(matches!(err, ComposeError::Spec(_)), "{err}");
    assert!(
        blockio::error_chain(&err)
            .to_string()
            .contains("partitions[2].size"),
        "{err}"
    );
    // Not a whole number of blocks.
    let err = compose(&f.image, &spec(5 * GIB + 1), &node("n")).unwrap_err();
    assert!(
        blockio::error_chain(&err).to_string().contains("disk_size"),
        "{err}"
    );
    Ok(())
}

#[test]
fn missing_payloads_and_loaders_are_errors_naming_the_partition() -> Result<()> {
    let only_kernel = OsImage::new().payload(Payload::new(
        "kernel.efi",
        ocidisk_testkit::oci_writer::efi_image(4096),
    ));
    let f = fixture(only_kernel)?;
    let before = ocidisk_testkit::oci_writer::snapshot(&f.built.dir)?;
    let err = compose(&f.image, &preset(), &node("n")).unwrap_err();
    assert!(matches!(err, ComposeError::Image { index: 2, .. }), "{err}");
    let msg = blockio::error_chain(&err).to_string();
    assert!(
        msg.contains("METROPOLIS-SYSTEM-A") && msg.contains("system"),
        "{msg}"
    );

    let missing = f.dir.path().join("no-such-loader.efi");
    let spec = LayoutSpec::monogon(&MonogonPreset {
        abloader: Some(missing.clone()),
        ..MonogonPreset::default()
    });
    let err = compose(&f.image, &spec, &node("n")).unwrap_err();
    assert!(
        matches!(err, ComposeError::HostFile { index: 1, .. }),
        "{err}"
    );
    assert!(
        blockio::error_chain(&err)
            .to_string()
            .contains(&missing.display().to_string()),
        "{err}"
    );

    // A directory is not a loader either.
    let spec = LayoutSpec::monogon(&MonogonPreset {
        abloader: Some(f.dir.path().to_owned()),
        ..MonogonPreset::default()
    });
    assert!(matches!(
        compose(&f.image, &spec, &node("n")),
        Err(ComposeError::HostFile { .. })
    ));
    // Composing wrote nothing into the image.
    assert_eq!(ocidisk_testkit::oci_writer::snapshot(&f.built.dir)?, before);
    Ok(())
}

/// Not a check: how long composing the monogon preset's map takes, and how
/// much it generates. `cargo test -p ocidisk-tests --test layout_monogon
/// -- --ignored --nocapture measure`.
#[test]
#[ignore]
fn measure_compose() -> Result<()> {
    let f = fixture(OsImage::sample()?)?;
    let spec = preset();
    let mut times = Vec::new();
    let mut disk = None;
    for _ in 0..31 {
        let t = std::time::Instant::now();
        disk = Some(compose(&f.image, &spec, &node("node-1"))?);
        times.push(t.elapsed());
    }
    times.sort();
    let summary = disk.map(|d| d.map.summary()).unwrap_or_default();
    println!(
        "compose monogon 5 GiB: median {:?} (min {:?}, max {:?}); {} extents, {} generated bytes",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        summary.extents,
        summary.generated_bytes
    );
    Ok(())
}
