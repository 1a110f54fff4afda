//! Every bad input to `Image::open` is a clear error naming the file or field,
//! never a panic, and never a write into the image directory.

use layout::cache::CacheError;
use layout::monogon::ConfigError;
use layout::oci::{Image, ImageError, OpenOptions};
use ocidisk_testkit::oci_writer::{
    flip_byte, sha256_digest, snapshot, BuiltImage, ImageBuilder, OsImage, Payload,
};
use serde_json::Value;
use std::fs;
use std::path::Path;

struct Fixture {
    root: tempfile::TempDir,
    built: BuiltImage,
}

fn build(b: ImageBuilder) -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let built = b.write(&root.path().join("image")).unwrap();
    Fixture { root, built }
}

fn sample() -> Fixture {
    build(ImageBuilder::monogon(OsImage::sample().unwrap()))
}

impl Fixture {
    fn dir(&self) -> &Path {
        &self.built.dir
    }

    /// Opens, expecting an error; checks that the image tree is unchanged.
    fn open_err_with(&self, mut o: OpenOptions) -> ImageError {
        o.cache_dir.get_or_insert(self.root.path().join("cache"));
        let image_tree = self.dir();
        let before = snapshot(image_tree).unwrap();
        let e = match Image::open(image_tree, &o) {
            Ok(_) => panic!("opened a bad image"),
            Err(e) => e,
        };
        assert_eq!(
            before,
            snapshot(image_tree).unwrap(),
            "the image dir changed"
        );
        e
    }

    fn open_err(&self) -> ImageError {
        self.open_err_with(OpenOptions::default())
    }

    fn open_ref_err(&self, r: &str) -> ImageError {
        self.open_err_with(OpenOptions {
            reference: Some(r.to_owned()),
            ..OpenOptions::default()
        })
    }

    fn verify_err(&self) -> ImageError {
        self.open_err_with(OpenOptions {
            verify: true,
            ..OpenOptions::default()
        })
    }

    fn open_ok(&self) {
        Image::open(
            self.dir(),
            &OpenOptions {
                cache_dir: Some(self.root.path().join("cache")),
                ..OpenOptions::default()
            },
        )
        .unwrap();
    }

    fn edit_index(&self, f: impl FnOnce(&mut Value)) {
        let p = self.dir().join("index.json");
        let mut v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        fs::write(p, serde_json::to_vec(&v).unwrap()).unwrap();
    }

    /// Adds a blob with these bytes; returns its digest.
    fn add_blob(&self, bytes: &[u8]) -> String {
        let d = sha256_digest(bytes);
        fs::write(
            self.dir().join("blobs/sha256").join(&d["sha256:".len()..]),
            bytes,
        )
        .unwrap();
        d
    }
}

fn has(e: &ImageError, parts: &[&str]) {
    let s = blockio::error_chain(e).to_string();
    // Shown with --nocapture, to read the messages users get.
    eprintln!("error: {s}");
    for p in parts {
        assert!(s.contains(p), "{s:?} does not mention {p:?}");
    }
}

#[test]
fn missing_oci_layout() {
    let f = sample();
    fs::remove_file(f.dir().join("oci-layout")).unwrap();
    let e = f.open_err();
    assert!(matches!(e, ImageError::NotALayout { .. }), "{e}");
    has(&e, &["oci-layout"]);
}

#[test]
fn missing_index() {
    let f = sample();
    fs::remove_file(f.dir().join("index.json")).unwrap();
    let e = f.open_err();
    assert!(matches!(e, ImageError::MissingIndex { .. }), "{e}");
    has(&e, &["index.json"]);
}

#[test]
fn not_a_directory() {
    let root = tempfile::tempdir().unwrap();
    let e = Image::open(&root.path().join("nothing"), &OpenOptions::default()).unwrap_err();
    assert!(matches!(e, ImageError::NotALayout { .. }), "{e}");
}

#[test]
fn bad_json_names_the_file() {
    for (file, bytes) in [
        ("index.json", &b"{\"manifests\": ["[..]),
        ("oci-layout", b"imageLayoutVersion"),
        (
            "index.json",
            b"{\"schemaVersion\": 2, \"manifests\": [{\"digest\": 5}]}",
        ),
    ] {
        let f = sample();
        fs::write(f.dir().join(file), bytes).unwrap();
        let e = f.open_err();
        assert!(matches!(e, ImageError::Json { .. }), "{e}");
        has(&e, &[file, "bad JSON"]);
    }
}

#[test]
fn bad_json_in_a_manifest_blob() {
    let f = sample();
    let d = f.add_blob(b"this is not a manifest");
    f.edit_index(|v| {
        v["manifests"][0]["digest"] = d.clone().into();
        v["manifests"][0]["size"] = 22.into();
    });
    let e = f.open_err();
    assert!(matches!(e, ImageError::Json { .. }), "{e}");
    has(&e, &["manifest", &d]);
}

#[test]
fn bad_json_in_the_config() {
    let f = build(ImageBuilder::monogon(
        OsImage::sample()
            .unwrap()
            .edit_config(|c| *c = "a string".into()),
    ));
    let e = f.open_err();
    assert!(
        matches!(e, ImageError::Monogon(ConfigError::Json { .. })),
        "{e}"
    );
    has(&e, &["config", &f.built.manifests[0].config.digest]);
}

#[test]
fn wrong_layout_version() {
    let f = sample();
    fs::write(
        f.dir().join("oci-layout"),
        b"{\"imageLayoutVersion\": \"2.0.0\"}",
    )
    .unwrap();
    let e = f.open_err();
    assert!(matches!(e, ImageError::LayoutVersion { .. }), "{e}");
    has(&e, &["oci-layout", "2.0.0"]);
}

#[test]
fn no_manifests() {
    let f = sample();
    f.edit_index(|v| v["manifests"] = Value::Array(vec![]));
    let e = f.open_err();
    assert!(matches!(e, ImageError::NoManifest { .. }), "{e}");
    has(&e, &["index.json"]);
}

fn two() -> Fixture {
    build(
        ImageBuilder::new()
            .image(
                OsImage::new()
                    .payload(Payload::new("system", vec![1; 10]))
                    .ref_name("a"),
            )
            .image(
                OsImage::new()
                    .payload(Payload::new("system", vec![2; 10]))
                    .ref_name("b"),
            ),
    )
}

#[test]
fn several_manifests_without_a_reference() {
    let f = two();
    let e = f.open_err();
    assert!(
        matches!(e, ImageError::AmbiguousManifest { count: 2, .. }),
        "{e}"
    );
    has(&e, &["index.json", "\"a\"", "\"b\""]);
}

#[test]
fn reference_not_found() {
    let f = two();
    for r in [
        "c",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let e = f.open_ref_err(r);
        assert!(matches!(e, ImageError::RefNotFound { .. }), "{e}");
        has(&e, &[r, "\"a\"", "\"b\""]);
    }
}

#[test]
fn missing_blobs() {
    let f = sample();
    let m = &f.built.manifests[0];
    for (blob, what) in [
        (&m.layers[1].blob, "layer 1"),
        (&m.config, "config"),
        (&m.manifest, "manifest"),
    ] {
        let f = sample();
        let _ = m;
        let blob_path = f.dir().join("blobs/sha256").join(&blob.digest[7..]);
        fs::remove_file(&blob_path).unwrap();
        let e = f.open_err();
        assert!(matches!(e, ImageError::MissingBlob { .. }), "{e}");
        has(&e, &[what, &blob_path.display().to_string()]);
    }
}

#[test]
fn dangling_bazel_symlink() {
    let f = build(ImageBuilder::monogon(OsImage::sample().unwrap()).bazel_symlinks());
    let l = f.built.layer("system");
    fs::remove_file(l.blob.real_path()).unwrap();
    let e = f.open_err();
    assert!(matches!(e, ImageError::MissingBlob { .. }), "{e}");
    has(&e, &["\"system\"", &l.blob.digest]);
}

#[test]
fn blob_that_is_not_a_file() {
    // A directory, and a FIFO (which must not hang the opener).
    let f = sample();
    let p = f.built.layer("system").blob.path().to_owned();
    fs::remove_file(&p).unwrap();
    fs::create_dir(&p).unwrap();
    let e = f.open_err();
    assert!(matches!(e, ImageError::NotRegular { .. }), "{e}");
    fs::remove_dir(&p).unwrap();
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0);
    let e = f.open_err();
    assert!(matches!(e, ImageError::NotRegular { .. }), "{e}");
    has(&e, &[&p.display().to_string()]);
}

#[test]
fn short_and_long_blobs() {
    for delta in [-1i64, 1] {
        let f = build(ImageBuilder::monogon(OsImage::sample().unwrap()).bazel_symlinks());
        let l = f.built.layer("system");
        let len = (l.blob.size as i64 + delta) as u64;
        fs::OpenOptions::new()
            .write(true)
            .open(l.blob.real_path())
            .unwrap()
            .set_len(len)
            .unwrap();
        let e = f.open_err();
        assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}");
        has(
            &e,
            &[&len.to_string(), &l.blob.size.to_string(), "\"system\""],
        );
    }
    // A manifest blob that grew.
    let f = sample();
    let p = f.built.manifests[0].manifest.path().to_owned();
    let mut b = fs::read(&p).unwrap();
    b.push(b'\n');
    fs::write(&p, b).unwrap();
    let e = f.open_err();
    assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}");
    has(&e, &["manifest"]);
}

#[test]
fn manifest_and_config_digest_mismatch() {
    let f = sample();
    flip_byte(f.built.manifests[0].manifest.path(), 10).unwrap();
    let e = f.open_err();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    has(&e, &["manifest", f.built.manifest_digest()]);

    let f = sample();
    flip_byte(f.built.manifests[0].config.path(), 10).unwrap();
    let e = f.open_err();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    has(&e, &["config", &f.built.manifests[0].config.digest]);
}

#[test]
fn unsupported_digest_algorithms() {
    let f = sample();
    f.edit_index(|v| v["manifests"][0]["digest"] = format!("sha512:{}", "a".repeat(128)).into());
    let e = f.open_err();
    assert!(matches!(e, ImageError::BadDigest { .. }), "{e}");
    has(&e, &["sha512", "only sha256"]);

    let f = build(ImageBuilder::monogon(
        OsImage::sample().unwrap().edit_manifest(|m| {
            m["layers"][0]["digest"] = "md5:0123456789abcdef".into();
        }),
    ));
    let e = f.open_err();
    assert!(matches!(e, ImageError::BadDigest { .. }), "{e}");
    has(&e, &["layer 0", "md5"]);

    // Malformed digests are JSON errors from oci-spec's digest type.
    let f = sample();
    f.edit_index(|v| v["manifests"][0]["digest"] = "sha256:xyz".into());
    let e = f.open_err();
    assert!(matches!(e, ImageError::Json { .. }), "{e}");
    has(&e, &["index.json"]);
}

#[test]
fn unknown_format_version() {
    let f = build(ImageBuilder::monogon(
        OsImage::sample()
            .unwrap()
            .edit_config(|c| c["format_version"] = "2".into()),
    ));
    let e = f.open_err();
    assert!(
        matches!(e, ImageError::Monogon(ConfigError::FormatVersion { .. })),
        "{e}"
    );
    has(&e, &["format_version", "\"2\"", "config"]);
}

#[test]
fn bad_payload_names() {
    for name in [
        "",
        ".hidden",
        "_x",
        "trailing.",
        "a/b",
        "sp ace",
        &"n".repeat(81),
    ] {
        let f = build(ImageBuilder::monogon(
            OsImage::new().payload(Payload::new(name, vec![1u8; 10])),
        ));
        let e = f.open_err();
        assert!(
            matches!(e, ImageError::Monogon(ConfigError::BadName { .. })),
            "{name}: {e}"
        );
        has(&e, &["payloads[0].name", &format!("{name:?}")]);
    }
}

#[test]
fn duplicate_payload_names() {
    let f = build(ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("system", vec![1u8; 10]))
            .payload(Payload::new("system", vec![2u8; 10])),
    ));
    let e = f.open_err();
    assert!(
        matches!(
            e,
            ImageError::Monogon(ConfigError::DuplicateName { index: 1, .. })
        ),
        "{e}"
    );
    has(&e, &["payloads[1]", "\"system\"", "twice"]);
}

#[test]
fn payload_and_layer_counts_differ() {
    for more_payloads in [true, false] {
        let f = build(ImageBuilder::monogon(
            OsImage::sample().unwrap().edit_config(move |c| {
                let p = c["payloads"].as_array_mut().unwrap();
                if more_payloads {
                    let mut extra = p[0].clone();
                    extra["name"] = "extra".into();
                    p.push(extra);
                } else {
                    p.pop();
                }
            }),
        ));
        let e = f.open_err();
        assert!(matches!(e, ImageError::PayloadCount { .. }), "{e}");
        has(&e, &["config", "payloads", "layers"]);
    }
}

#[test]
fn payload_size_differs_from_layer_size() {
    let f = build(ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("system", vec![1u8; 1000]))
            .edit_config(|c| c["payloads"][0]["size"] = 1001.into()),
    ));
    let e = f.open_err();
    assert!(matches!(e, ImageError::PayloadSize { .. }), "{e}");
    has(&e, &["\"system\"", "1001", "1000"]);
}

#[test]
fn chunk_size_and_hash_count() {
    let f = build(ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("system", vec![1u8; 10]))
            .hash_chunk_size((16 << 20) + 1),
    ));
    let e = f.open_err();
    assert!(
        matches!(e, ImageError::Monogon(ConfigError::ChunkSize { .. })),
        "{e}"
    );
    let f = build(ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("system", vec![1u8; 10]))
            .edit_config(|c| c["payloads"][0]["chunk_hashes_sha256"] = Value::Null),
    ));
    let e = f.open_err();
    assert!(
        matches!(e, ImageError::Monogon(ConfigError::ChunkCount { .. })),
        "{e}"
    );
    has(&e, &["\"system\"", "needs 1"]);
}

#[test]
fn unknown_layer_media_type() {
    let f = build(ImageBuilder::monogon(OsImage::new().payload(
        Payload::new("system", vec![1u8; 10]).media_type("application/gzip"),
    )));
    let e = f.open_err();
    assert!(matches!(e, ImageError::LayerMediaType { .. }), "{e}");
    has(&e, &["layer 0", "\"system\"", "application/gzip"]);
}

#[test]
fn wrong_manifest_and_config_media_types() {
    let f = build(ImageBuilder::monogon(
        OsImage::sample().unwrap().edit_manifest(|m| {
            m["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
        }),
    ));
    let e = f.open_err();
    assert!(matches!(e, ImageError::MediaType { .. }), "{e}");
    has(&e, &["manifest", "mediaType"]);
    let f = build(ImageBuilder::monogon(
        OsImage::sample().unwrap().edit_manifest(|m| {
            m["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        }),
    ));
    let e = f.open_err();
    assert!(matches!(e, ImageError::MediaType { .. }), "{e}");
    has(
        &e,
        &["config", "application/vnd.monogon.os.image.config.v1+json"],
    );
}

#[test]
fn bad_chunk_is_found_by_verify() {
    let f = build(ImageBuilder::monogon(
        OsImage::sample().unwrap().hash_chunk_size(4096),
    ));
    let l = f.built.layer("system");
    flip_byte(l.blob.path(), 3 * 4096 + 17).unwrap();
    // Cheap opening does not read the payload ...
    f.open_ok();
    // ... verification finds the chunk.
    let e = f.verify_err();
    match &e {
        ImageError::BadChunk { source, .. } => {
            assert_eq!(
                (source.payload.as_str(), source.offset),
                ("system", 3 * 4096)
            )
        }
        _ => panic!("{e}"),
    }
    has(&e, &["\"system\"", "12288", "layer 1"]);
}

#[test]
fn bad_layer_digest_is_found_by_verify() {
    // A generic image has no chunk hashes; the full digest catches it.
    let f = build(ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("disk", vec![7u8; 9000]))
            .edit_manifest(|m| {
                m.as_object_mut().unwrap().remove("artifactType");
                m["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
            }),
    ));
    flip_byte(f.built.layer("disk").blob.path(), 8000).unwrap();
    f.open_ok();
    let e = f.verify_err();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    has(&e, &["layer 0", &f.built.layer("disk").blob.digest]);
}

#[test]
fn bad_chunk_in_a_zstd_payload() {
    let f = build(ImageBuilder::monogon(
        OsImage::sample_zstd()
            .unwrap()
            .hash_chunk_size(4096)
            .edit_config(|c| {
                c["payloads"][1]["chunk_hashes_sha256"][2] =
                    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
            }),
    ));
    let e = f.open_err();
    match &e {
        ImageError::Cache(CacheError::BadChunk { source, .. }) => {
            assert_eq!((source.payload.as_str(), source.offset), ("system", 8192))
        }
        _ => panic!("{e}"),
    }
    has(&e, &["\"system\"", "8192"]);
    // The bad payload left nothing in the cache (kernel.efi's entry is fine).
    let hex = &f.built.layer("system").blob.digest[7..];
    let names: Vec<_> = fs::read_dir(f.root.path().join("cache/zstd/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(hex))
        .collect();
    assert_eq!(names, vec![format!("{hex}.lock")]);
}

#[test]
fn corrupt_zstd() {
    let data = vec![5u8; 100_000];
    let z = zstd::bulk::compress(&data, 3).unwrap();
    let mut garbled = z.clone();
    let mid = garbled.len() / 2;
    garbled[mid..].iter_mut().for_each(|b| *b ^= 0x5a);
    for stored in [
        b"not zstd at all".to_vec(),
        z[..z.len() / 2].to_vec(),
        garbled,
        [&z[..], b"trailing junk"].concat(),
    ] {
        let f = build(ImageBuilder::monogon(
            OsImage::new().payload(Payload::new("system", data.clone()).zstd().stored(stored)),
        ));
        let e = f.open_err();
        assert!(matches!(e, ImageError::Cache(_)), "{e}");
        has(&e, &["layer", &f.built.layer("system").blob.digest]);
    }
}

#[test]
fn bad_inline_data() {
    let f = build(ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("params", b"hello".to_vec()).inline())
            .edit_manifest(|m| m["layers"][0]["data"] = "aGVsbG8h".into()),
    ));
    let e = f.open_err();
    assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}");
    has(&e, &["inline data", "\"params\""]);
    let f = build(ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("params", b"hello".to_vec()).inline())
            .edit_manifest(|m| m["layers"][0]["data"] = "aGVsbG9=".into()),
    ));
    let e = f.open_err();
    assert!(
        matches!(
            e,
            ImageError::InlineData { .. } | ImageError::DigestMismatch { .. }
        ),
        "{e}"
    );
    let f = build(ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("params", b"hello".to_vec()).inline())
            .edit_manifest(|m| m["layers"][0]["data"] = "aGVsbG0=".into()),
    ));
    let e = f.open_err();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    has(&e, &["inline data"]);
    let f = build(ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("params", b"hello".to_vec()).inline())
            .edit_manifest(|m| m["layers"][0]["data"] = "!!!".into()),
    ));
    let e = f.open_err();
    assert!(matches!(e, ImageError::InlineData { .. }), "{e}");
    has(&e, &["base64"]);
}

#[test]
fn payload_not_found() {
    let f = sample();
    let img = Image::open(f.dir(), &OpenOptions::default()).unwrap();
    let e = img.payload("kernel").unwrap_err();
    assert!(matches!(e, ImageError::PayloadNotFound { .. }), "{e}");
    has(&e, &["\"kernel\"", "kernel.efi", "system"]);
}

#[test]
fn deeply_nested_indexes() {
    // Each level is an index listing the previous one.
    let f = sample();
    let mut entry: Value =
        serde_json::from_slice::<Value>(&fs::read(f.dir().join("index.json")).unwrap()).unwrap()
            ["manifests"][0]
            .clone();
    for _ in 0..=layout::oci::MAX_DEPTH {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry]});
        let bytes = serde_json::to_vec(&index).unwrap();
        let d = f.add_blob(&bytes);
        entry = serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": d, "size": bytes.len(),
        });
    }
    f.edit_index(|v| v["manifests"] = Value::Array(vec![entry.clone()]));
    let e = f.open_err();
    assert!(matches!(e, ImageError::TooDeep { .. }), "{e}");
}
