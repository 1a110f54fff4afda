//! Disks described by TOML layout files: every kind of content, production
//! sizes, and every error a layout file can cause at compose time.

use ocidisk_testkit::layout_support;

use anyhow::Result;
use layout::compose::{compose, ComposeError, ComposeOptions};
use layout::oci::{Image, OpenOptions};
use layout::spec::{LayoutSpec, SpecError, GIB, MIB};
use layout_support::*;
use ocidisk_testkit::oci_writer::{
    efi_image, snapshot, BuiltImage, ImageBuilder, OsImage, Payload,
};
use std::path::{Path, PathBuf};

struct Fixture {
    dir: tempfile::TempDir,
    built: BuiltImage,
    image: Image,
}

/// An image with a kernel, a 3 MiB "rootfs" and a small zstd "extra".
fn fixture() -> Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let rootfs: Vec<u8> = (0..3 * MIB as u32 + 77).map(|i| (i % 253) as u8).collect();
    let extra: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8 + 1).collect();
    let os = OsImage::new()
        .payload(Payload::new("kernel.efi", efi_image(40_000)))
        .payload(Payload::new("rootfs", rootfs))
        .payload(Payload::new("extra", extra).zstd());
    let built = ImageBuilder::monogon(os).write(&dir.path().join("image"))?;
    let image = open_with_cache(&built, dir.path())?;
    Ok(Fixture { dir, built, image })
}

/// Opens `built` with its zstd cache in `dir`.
fn open_with_cache(built: &BuiltImage, dir: &Path) -> Result<Image> {
    Ok(Image::open(
        &built.dir,
        &OpenOptions {
            cache_dir: Some(dir.join("cache")),
            ..OpenOptions::default()
        },
    )?)
}

fn write_layout(dir: &Path, text: &str) -> Result<PathBuf> {
    let path = dir.join("layout.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn node() -> ComposeOptions {
    ComposeOptions {
        disk_id: "vm-7".to_owned(),
    }
}

#[test]
fn every_kind_of_content() -> Result<()> {
    let f = fixture()?;
    let params = b"console=ttyS0\n".to_vec();
    std::fs::write(f.dir.path().join("params.txt"), &params)?;
    let blob: Vec<u8> = (0..1000u32).map(|i| (i % 100) as u8 + 1).collect();
    std::fs::create_dir(f.dir.path().join("host"))?;
    std::fs::write(f.dir.path().join("host/blob.bin"), &blob)?;
    let extra_digest = f.built.layer("extra").blob.digest.clone();
    let layout = write_layout(
        f.dir.path(),
        &format!(
            r#"
            disk_size = "128MiB"
            [[partitions]]
            name = "EFI"
            type = "esp"
            size = "40MiB"
            [partitions.fat32]
            label = "BOOT"
            files = [
              {{ path = "EFI/BOOT/BOOTX64.EFI", content = "payload:kernel.efi" }},
              {{ path = "cfg/params.txt", content = "file:params.txt" }},
              {{ path = "empty.txt", content = "empty" }},
              {{ path = "node/id.txt", content = "inline:node=7, ü" }},
              {{ path = "node/parameters.pb", content = "base64:AAEC/w==" }},
            ]
            [[partitions]]
            name = "root"
            type = "linux-root-x86-64"
            size = "8MiB"
            content = "layer:1"
            [[partitions]]
            name = "blob"
            type = "linux"
            size = "1MiB"
            content = "file:host/blob.bin"
            [[partitions]]
            name = "extra"
            type = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
            size = "2MiB"
            content = "layer:{extra_digest}"
            [[partitions]]
            name = "swap"
            type = "swap"
            size = "4MiB"
            [[partitions]]
            name = "home"
            type = "linux-home"
            size = "rest"
            "#
        ),
    )?;
    let spec = LayoutSpec::from_file(&layout, None)?;
    let disk = compose(&f.image, &spec, &node())?;
    let raw = f.dir.path().join("disk.img");
    let exported = export_raw(&disk.map, &raw)?;
    sgdisk_verify(&raw)?;

    let table = sfdisk_json(&raw)?;
    let parts = table["partitions"].as_array().cloned().unwrap_or_default();
    let linux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    let expect = [
        (
            "EFI",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            2048,
            40 * 2048,
        ),
        (
            "root",
            "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            41 * 2048,
            8 * 2048,
        ),
        ("blob", linux, 49 * 2048, 2048),
        ("extra", linux, 50 * 2048, 2 * 2048),
        (
            "swap",
            "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
            52 * 2048,
            4 * 2048,
        ),
        // The rest: up to the backup GPT, rounded down to whole MiB.
        (
            "home",
            "933AC7E1-2EB4-4F13-B844-0E14E2AEF915",
            56 * 2048,
            71 * 2048,
        ),
    ];
    assert_eq!(parts.len(), expect.len());
    for (p, (name, ty, start, size)) in parts.iter().zip(expect) {
        assert_eq!(
            (p["name"].as_str(), p["type"].as_str()),
            (Some(name), Some(ty))
        );
        assert_eq!(
            (p["start"].as_u64(), p["size"].as_u64()),
            (Some(start), Some(size))
        );
    }

    let at = |i: usize| disk.partitions[i].first_lba * 512;
    let rootfs = f.built.layer("rootfs").data.clone();
    assert_eq!(read(&disk.map, at(1), rootfs.len() as u64)?, rootfs);
    assert!(read(
        &disk.map,
        at(1) + rootfs.len() as u64,
        8 * MIB - rootfs.len() as u64
    )?
    .iter()
    .all(|&b| b == 0));
    assert_eq!(read(&disk.map, at(2), MIB)?[..1000], blob[..]);
    assert!(read(&disk.map, at(2) + 1000, MIB - 1000)?
        .iter()
        .all(|&b| b == 0));
    let extra = f.built.layer("extra").data.clone();
    assert_eq!(read(&disk.map, at(3), extra.len() as u64)?, extra);
    for i in [4, 5] {
        assert_zero_range(&disk.map, at(i), disk.partitions[i].size);
    }
    assert!(!has_data(
        &exported,
        at(4),
        at(5) + disk.partitions[5].size
    )?);

    let esp = f.dir.path().join("esp.img");
    extract(&raw, at(0), disk.partitions[0].size, &esp)?;
    fsck_fat(&esp)?;
    let kernel = f.built.layer("kernel.efi").data.clone();
    assert_eq!(mcopy(&esp, "EFI/BOOT/BOOTX64.EFI", f.dir.path())?, kernel);
    assert_eq!(mcopy(&esp, "cfg/params.txt", f.dir.path())?, params);
    assert_eq!(mcopy(&esp, "empty.txt", f.dir.path())?, b"");
    assert_eq!(
        mcopy(&esp, "node/id.txt", f.dir.path())?,
        "node=7, ü".as_bytes()
    );
    assert_eq!(
        mcopy(&esp, "node/parameters.pb", f.dir.path())?,
        [0, 1, 2, 255]
    );
    assert!(
        disk.partitions[0].content.contains("cfg/params.txt"),
        "{}",
        disk.partitions[0].content
    );
    Ok(())
}

#[test]
fn production_sizes() -> Result<()> {
    let f = fixture()?;
    let layout = write_layout(
        f.dir.path(),
        r#"
        disk_size = "16GiB"
        [[partitions]]
        name = "ESP"
        type = "esp"
        size = "384MiB"
        fat32 = { label = "MNGN_BOOT", files = [
          { path = "EFI/metropolis/boot-a.efi", content = "payload:kernel.efi" },
          { path = "EFI/BOOT/BOOTx64.EFI", content = "payload:kernel.efi" },
        ] }
        [[partitions]]
        name = "METROPOLIS-SYSTEM-A"
        type = "metropolis-system-a"
        size = "4GiB"
        content = "payload:rootfs"
        [[partitions]]
        name = "METROPOLIS-SYSTEM-B"
        type = "metropolis-system-b"
        size = "4GiB"
        [[partitions]]
        name = "METROPOLIS-NODE-DATA"
        type = "metropolis-data"
        size = "rest"
        "#,
    )?;
    let spec = LayoutSpec::from_file(&layout, None)?;
    let disk = compose(&f.image, &spec, &node())?;
    let lbas: Vec<(u64, u64)> = disk
        .partitions
        .iter()
        .map(|p| (p.first_lba, p.last_lba))
        .collect();
    let data_start = 2048 + 384 * 2048 + 2 * 4 * 1024 * 2048;
    let blocks = 16 * GIB / 512;
    let data_blocks = (blocks - 33 - data_start) / 2048 * 2048;
    assert_eq!(
        lbas,
        [
            (2048, 788479),
            (788480, 9177087),
            (9177088, 17565695),
            (data_start, data_start + data_blocks - 1)
        ]
    );
    let raw = f.dir.path().join("disk.img");
    export_raw(&disk.map, &raw)?;
    sgdisk_verify(&raw)?;
    let esp = f.dir.path().join("esp.img");
    extract(&raw, 2048 * 512, 384 * MIB, &esp)?;
    fsck_fat(&esp)?;

    // --disk-size overrides the file's size.
    let spec = LayoutSpec::from_file(&layout, Some(10 * GIB))?;
    assert_eq!(compose(&f.image, &spec, &node())?.map.size(), 10 * GIB);
    Ok(())
}

/// Composes `partitions` (TOML) on a 64 MiB disk and returns the error.
fn compose_error(f: &Fixture, partitions: &str) -> ComposeError {
    let text = format!("disk_size = \"64MiB\"\n{partitions}");
    let layout = write_layout(f.dir.path(), &text).expect("write layout");
    let spec = LayoutSpec::from_file(&layout, None).expect("a valid layout");
    match compose(&f.image, &spec, &node()) {
        Ok(_) => panic!("composing {partitions} succeeded"),
        Err(e) => e,
    }
}

#[test]
fn compose_errors_name_the_partition() -> Result<()> {
    let f = fixture()?;
    let before = snapshot(&f.built.dir)?;
    let part = |content: &str, size: &str| {
        format!("[[partitions]]\nname = \"p\"\ntype = \"linux\"\nsize = \"{size}\"\n{content}\n")
    };

    let err = compose_error(&f, &part("content = \"payload:rootfs\"", "2MiB"));
    let ComposeError::ContentTooLarge {
        index: 1,
        len,
        size,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!((*len, *size), (3 * MIB + 77, 2 * MIB));
    assert!(
        blockio::error_chain(&err)
            .to_string()
            .contains("partition 1 (p): partitions[0].content"),
        "{err}"
    );

    let err = compose_error(&f, &part("content = \"payload:nope\"", "2MiB"));
    assert!(matches!(err, ComposeError::Image { index: 1, .. }), "{err}");
    assert!(
        blockio::error_chain(&err).to_string().contains("nope"),
        "{err}"
    );
    assert!(
        blockio::error_chain(&err)
            .to_string()
            .contains("partitions[0].content"),
        "{err}"
    );
    let err = compose_error(&f, &part("content = \"layer:3\"", "2MiB"));
    assert!(matches!(err, ComposeError::Image { .. }), "{err}");
    let digest = format!("layer:sha256:{}", "0".repeat(64));
    let err = compose_error(&f, &part(&format!("content = \"{digest}\""), "2MiB"));
    assert!(matches!(err, ComposeError::Image { .. }), "{err}");

    let err = compose_error(&f, &part("content = \"file:missing.bin\"", "2MiB"));
    let ComposeError::HostFile { path, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(path, &f.dir.path().join("missing.bin"));

    // FAT32 needs about 33 MiB with 512-byte clusters.
    let fat =
        "fat32 = { label = \"X\", files = [{ path = \"k\", content = \"payload:kernel.efi\" }] }";
    let err = compose_error(&f, &part(fat, "8MiB"));
    assert!(matches!(err, ComposeError::Fat32 { index: 1, .. }), "{err}");
    assert!(
        blockio::error_chain(&err)
            .to_string()
            .contains("partitions[0].fat32:"),
        "{err}"
    );
    // A FAT32 file that is missing from the image.
    let fat = "fat32 = { label = \"X\", files = [{ path = \"k\", content = \"payload:gone\" }] }";
    let err = compose_error(&f, &part(fat, "40MiB"));
    assert!(matches!(err, ComposeError::Image { index: 1, .. }), "{err}");
    assert!(
        blockio::error_chain(&err)
            .to_string()
            .contains("partitions[0].fat32.files[0].content"),
        "{err}"
    );
    // Files larger than the file system.
    let files: Vec<String> = (0..12)
        .map(|i| format!("{{ path = \"f{i}\", content = \"payload:rootfs\" }}"))
        .collect();
    let big = format!(
        "fat32 = {{ label = \"X\", files = [{}] }}",
        files.join(", ")
    );
    let err = compose_error(&f, &part(&big, "34MiB"));
    assert!(matches!(err, ComposeError::Fat32 { index: 1, .. }), "{err}");

    // Nothing was written into the image.
    assert_eq!(snapshot(&f.built.dir)?, before);
    Ok(())
}

#[test]
fn layout_file_errors_name_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("none.toml");
    let err = LayoutSpec::from_file(&missing, None).unwrap_err();
    assert!(matches!(err, SpecError::Read { .. }));
    // What was being done and the file, then the I/O error.
    let chain = blockio::error_chain(&err).to_string();
    assert!(
        chain.starts_with(&format!("reading the layout file {}: ", missing.display())),
        "{chain}"
    );

    let layout = write_layout(dir.path(), "disk_size = \"5GiB\"\n[[partitions]]\nname = \"a\"\ntype = \"linux\"\nsize = \"rest\"\ncolour = \"red\"\n")?;
    let err = LayoutSpec::from_file(&layout, None).unwrap_err();
    let err = blockio::error_chain(&err).to_string();
    assert!(
        err.starts_with(&layout.display().to_string()) && err.contains("colour"),
        "{err}"
    );

    let layout = write_layout(
        dir.path(),
        "disk_size = \"5GiB\"\n[[partitions]]\nname = \"a\"\ntype = \"linux\"\nsize = \"huge\"\n",
    )?;
    let err = LayoutSpec::from_file(&layout, None).unwrap_err();
    let err = blockio::error_chain(&err).to_string();
    assert!(
        err.contains("partitions[0].size") && err.contains("huge"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_generic_image_by_layer_index_and_digest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let disk_image: Vec<u8> = (0..2 * MIB as u32 + 333).map(|i| (i % 241) as u8).collect();
    let loader = efi_image(30_000);
    let built = ImageBuilder::generic([
        Payload::new("rootfs", disk_image.clone()),
        Payload::new("loader", loader.clone()).zstd(),
    ])
    .write(&dir.path().join("image"))?;
    let image = open_with_cache(&built, dir.path())?;
    assert!(image.monogon().is_none(), "a plain OCI image");
    let loader_digest = built.layer("loader").blob.digest.clone();
    let layout = write_layout(
        dir.path(),
        &format!(
            r#"
            disk_size = "64MiB"
            [[partitions]]
            name = "boot"
            type = "esp"
            size = "40MiB"
            fat32 = {{ label = "GENERIC", files = [
              {{ path = "EFI/BOOT/BOOTX64.EFI", content = "layer:{loader_digest}" }},
            ] }}
            [[partitions]]
            name = "root"
            type = "linux"
            size = "rest"
            content = "layer:0"
            "#
        ),
    )?;
    let spec = LayoutSpec::from_file(&layout, None)?;
    let disk = compose(&image, &spec, &node())?;
    let raw = dir.path().join("disk.img");
    let exported = export_raw(&disk.map, &raw)?;
    sgdisk_verify(&raw)?;
    let root = &disk.partitions[1];
    assert_eq!(
        read_file(&exported, root.first_lba * 512, disk_image.len() as u64)?,
        disk_image
    );
    let esp = dir.path().join("esp.img");
    extract(&raw, disk.partitions[0].first_lba * 512, 40 * MIB, &esp)?;
    fsck_fat(&esp)?;
    assert_eq!(mcopy(&esp, "EFI/BOOT/BOOTX64.EFI", dir.path())?, loader);

    // Its layers have no names.
    let spec = LayoutSpec::from_toml(
        "disk_size = \"64MiB\"\n[[partitions]]\nname = \"p\"\ntype = \"linux\"\nsize = \"rest\"\ncontent = \"payload:rootfs\"\n",
        Path::new("generic.toml"),
        dir.path(),
        None,
    )?;
    let err = compose(&image, &spec, &node()).unwrap_err();
    let msg = blockio::error_chain(&err).to_string();
    assert!(
        msg.contains("not a Monogon OS image") && msg.contains("rootfs"),
        "{msg}"
    );
    Ok(())
}
