//! Opening well-formed OCI image layouts: Monogon images stored uncompressed,
//! as zstd, as Bazel-style symlinks and inline; manifest selection by ref name
//! and digest, through nested indexes. Opening never writes to the image.

use anyhow::Result;
use blockio::IoBufMut;
use layout::oci::{Image, ImageError, LayerRef, OpenOptions};
use layout::source::{Content, Source};
use ocidisk_testkit::oci_writer::{
    snapshot, BuiltImage, ImageBuilder, OsImage, Payload, ARTIFACT_TYPE,
};
use std::path::Path;

fn read_content(c: &Content) -> Vec<u8> {
    let mut buf = vec![0u8; c.len as usize];
    c.source
        .read_vectored_at(0, &mut [IoBufMut::new(&mut buf)])
        .unwrap();
    buf
}

fn opts(cache: &Path) -> OpenOptions {
    OpenOptions {
        cache_dir: Some(cache.to_owned()),
        ..OpenOptions::default()
    }
}

/// Opens (plain and verified) and checks that the layout did not change.
fn open_both(built: &BuiltImage, o: &OpenOptions) -> Result<Image> {
    let dir = &built.dir;
    let before = snapshot(dir.parent().unwrap())?;
    let img = Image::open(dir, o)?;
    Image::open(
        dir,
        &OpenOptions {
            verify: true,
            ..o.clone()
        },
    )?;
    let cache = o.cache_dir.as_deref();
    let mut after = snapshot(dir.parent().unwrap())?;
    // The cache may live next to the image; only the image tree must be equal.
    let strip = |v: &mut Vec<ocidisk_testkit::oci_writer::Entry>| {
        if let Some(rel) = cache.and_then(|c| c.strip_prefix(dir.parent().unwrap()).ok()) {
            v.retain(|e| !e.path.starts_with(rel));
        }
    };
    let mut before = before;
    strip(&mut before);
    strip(&mut after);
    assert_eq!(before, after, "opening changed the image directory");
    Ok(img)
}

fn check_payloads(img: &Image, built: &BuiltImage, manifest: usize) {
    let m = &built.manifests[manifest];
    assert_eq!(img.manifest_digest(), m.digest());
    assert_eq!(img.layers().len(), m.layers.len());
    for (i, l) in m.layers.iter().enumerate() {
        let got = img.payload(&l.name).unwrap();
        assert_eq!(got.index, i);
        assert_eq!(got.digest, l.blob.digest);
        assert_eq!(got.media_type, l.media_type);
        assert_eq!(got.payload_name.as_deref(), Some(l.name.as_str()));
        assert_eq!(got.content.len, l.data.len() as u64);
        assert_eq!(read_content(&got.content), l.data, "payload {}", l.name);
    }
}

#[test]
fn uncompressed_payloads_are_mapped_in_place() -> Result<()> {
    let root = tempfile::tempdir()?;
    let built = ImageBuilder::monogon(OsImage::sample()?).write(&root.path().join("image"))?;
    let img = open_both(&built, &opts(&root.path().join("cache")))?;
    check_payloads(&img, &built, 0);
    assert_eq!(img.artifact_type(), Some(ARTIFACT_TYPE));
    assert_eq!(img.dir(), built.dir);
    let cfg = img.monogon().unwrap();
    assert_eq!(cfg.format_version, "1");
    assert_eq!(cfg.product_info.efi_boot_file(), Some("BOOTx64.EFI"));
    // The content is the blob file itself, and no cache was needed.
    let system = img.payload("system")?;
    match &system.content.source {
        Source::File { file, offset: 0 } => {
            assert_eq!(file.path(), built.layer("system").blob.path())
        }
        s => panic!("system is not the blob file: {s:?}"),
    }
    assert!(!root.path().join("cache").exists());
    // The erofs superblock is where the kernel looks for it.
    assert_eq!(
        &read_content(&system.content)[1024..1028],
        &[0xe2, 0xe1, 0xf5, 0xe0]
    );
    Ok(())
}

#[test]
fn zstd_payloads_are_decompressed_into_the_cache() -> Result<()> {
    let root = tempfile::tempdir()?;
    let cache = root.path().join("cache");
    let built = ImageBuilder::monogon(OsImage::sample_zstd()?.hash_chunk_size(64 * 1024))
        .write(&root.path().join("image"))?;
    let img = open_both(&built, &opts(&cache))?;
    check_payloads(&img, &built, 0);
    for l in img.layers() {
        match &l.content.source {
            Source::File { file, .. } => assert!(file.path().starts_with(&cache)),
            s => panic!("not a cache file: {s:?}"),
        }
    }
    Ok(())
}

#[test]
fn bazel_symlinked_blobs_are_followed() -> Result<()> {
    let root = tempfile::tempdir()?;
    let built = ImageBuilder::monogon(
        OsImage::sample()?
            .payload(Payload::new("extra.zst", vec![9u8; 100_000]).zstd())
            .hash_chunk_size(4096),
    )
    .bazel_symlinks()
    .write(&root.path().join("image"))?;
    assert!(built.outputs.is_some());
    let img = open_both(&built, &opts(&root.path().join("cache")))?;
    check_payloads(&img, &built, 0);
    Ok(())
}

#[test]
fn inline_data_is_used() -> Result<()> {
    let root = tempfile::tempdir()?;
    let built = ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("params.pb", b"node parameters".to_vec()).inline())
            .payload(Payload::new("small.zst", vec![3u8; 5000]).zstd().inline())
            .payload(Payload::new(
                "kernel.efi",
                ocidisk_testkit::oci_writer::efi_image(4096),
            ))
            .inline_config(),
    )
    .write(&root.path().join("image"))?;
    // Neither the inline layers nor the config have blob files.
    let m = &built.manifests[0];
    assert!(m.config.path.is_none() && m.layers[0].blob.path.is_none());
    let img = open_both(&built, &opts(&root.path().join("cache")))?;
    check_payloads(&img, &built, 0);
    assert!(matches!(
        img.payload("params.pb")?.content.source,
        Source::Bytes { .. }
    ));
    Ok(())
}

#[test]
fn empty_payloads() -> Result<()> {
    let root = tempfile::tempdir()?;
    let built = ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("empty", Vec::new()))
            .payload(Payload::new("empty.zst", Vec::new()).zstd()),
    )
    .write(&root.path().join("image"))?;
    let img = open_both(&built, &opts(&root.path().join("cache")))?;
    check_payloads(&img, &built, 0);
    Ok(())
}

fn two_images() -> Result<(OsImage, OsImage)> {
    Ok((
        OsImage::new()
            .payload(Payload::new("system", vec![1u8; 1000]))
            .ref_name("a"),
        OsImage::new()
            .payload(Payload::new("system", vec![2u8; 2000]))
            .ref_name("b"),
    ))
}

#[test]
fn manifests_are_selected_by_ref_name_and_digest() -> Result<()> {
    let root = tempfile::tempdir()?;
    let (a, b) = two_images()?;
    let built = ImageBuilder::new()
        .image(a)
        .image(b)
        .write(&root.path().join("image"))?;
    let cache = root.path().join("cache");
    for (i, reference) in [
        (0, "a".to_owned()),
        (1, "b".to_owned()),
        (0, built.manifests[0].digest().to_owned()),
        (1, built.manifests[1].digest().to_owned()),
    ] {
        let o = OpenOptions {
            reference: Some(reference.clone()),
            ..opts(&cache)
        };
        let img = open_both(&built, &o)?;
        check_payloads(&img, &built, i);
        assert_eq!(img.ref_name(), Some(["a", "b"][i]), "{reference}");
    }
    Ok(())
}

#[test]
fn nested_indexes_are_followed() -> Result<()> {
    let root = tempfile::tempdir()?;
    let (a, b) = two_images()?;
    let built = ImageBuilder::new()
        .image(a)
        .image(b)
        .nested_index(Some("release"))
        .bazel_symlinks()
        .write(&root.path().join("image"))?;
    let cache = root.path().join("cache");
    let by = |r: &str| OpenOptions {
        reference: Some(r.to_owned()),
        ..opts(&cache)
    };
    check_payloads(&open_both(&built, &by("b"))?, &built, 1);
    check_payloads(
        &open_both(&built, &by(built.manifests[0].digest()))?,
        &built,
        0,
    );
    // The nested index's name designates two manifests: ambiguous.
    let e = Image::open(&built.dir, &by("release")).unwrap_err();
    assert!(matches!(e, ImageError::RefAmbiguous { .. }), "{e}");
    assert!(
        e.to_string().contains("\"a\"") && e.to_string().contains("\"b\""),
        "{e}"
    );

    // A nested index with one manifest: found with no reference, by the
    // index's name and by the index's digest.
    let root = tempfile::tempdir()?;
    let cache = root.path().join("cache");
    let by = |r: &str| OpenOptions {
        reference: Some(r.to_owned()),
        ..opts(&cache)
    };
    let built = ImageBuilder::monogon(OsImage::sample()?)
        .nested_index(Some("release"))
        .write(&root.path().join("image"))?;
    check_payloads(&open_both(&built, &opts(&cache))?, &built, 0);
    let img = open_both(&built, &by("release"))?;
    assert_eq!(img.ref_name(), Some("release"));
    let nested = built.nested_index.as_ref().unwrap().digest.clone();
    check_payloads(&open_both(&built, &by(&nested))?, &built, 0);
    Ok(())
}

#[test]
fn layers_by_index_and_digest() -> Result<()> {
    let root = tempfile::tempdir()?;
    let built = ImageBuilder::monogon(OsImage::sample()?).write(&root.path().join("image"))?;
    let img = Image::open(&built.dir, &opts(root.path()))?;
    let sys = built.layer("system");
    assert_eq!(img.layer(&LayerRef::Index(1))?.digest, sys.blob.digest);
    assert_eq!(
        img.layer(&LayerRef::Digest(sys.blob.digest.clone()))?.index,
        1
    );
    assert_eq!("1".parse::<LayerRef>()?, LayerRef::Index(1));
    let e = img.layer(&LayerRef::Index(2)).unwrap_err();
    assert!(e.to_string().contains("2 layers"), "{e}");
    let e = img
        .layer(&LayerRef::Digest("sha256:00".to_owned()))
        .unwrap_err();
    assert!(matches!(e, ImageError::NoSuchLayerDigest { .. }), "{e}");
    Ok(())
}

#[test]
fn generic_images_have_unnamed_layers() -> Result<()> {
    let root = tempfile::tempdir()?;
    let built = ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("disk", vec![7u8; 3000]))
            .payload(Payload::new("disk2", vec![8u8; 4000]).zstd())
            .edit_manifest(|m| {
                m.as_object_mut().unwrap().remove("artifactType");
                m["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
            }),
    )
    .write(&root.path().join("image"))?;
    let img = open_both(&built, &opts(&root.path().join("cache")))?;
    assert!(img.monogon().is_none());
    assert_eq!(img.artifact_type(), None);
    assert_eq!(img.layers()[0].payload_name, None);
    assert_eq!(read_content(&img.layers()[1].content), vec![8u8; 4000]);
    let e = img.payload("disk").unwrap_err();
    assert!(matches!(e, ImageError::NotMonogon { .. }), "{e}");
    Ok(())
}
