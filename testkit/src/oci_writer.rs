//! Writes OCI image layouts for tests: Monogon-format OS images with named
//! payloads, and the realistic payloads to put in them.
//!
//! This writer is independent of the `layout` crate's reader on purpose, so
//! that a test compares two implementations of the format.
//!
//! # Quick start
//!
//! ```no_run
//! use ocidisk_testkit::oci_writer::{ImageBuilder, OsImage, Payload};
//! # fn main() -> anyhow::Result<()> {
//! let root = tempfile::tempdir()?;
//! // A Monogon OS image with `kernel.efi` (a PE/EFI-looking file) and
//! // `system` (a real erofs image from mkfs.erofs), uncompressed.
//! let built = ImageBuilder::monogon(OsImage::sample()?).write(&root.path().join("image"))?;
//! println!("{} at {}", built.manifest_digest(), built.dir.display());
//! let system = built.layer("system"); // its digest, blob path and bytes
//! # let _ = system; Ok(()) }
//! ```
//!
//! # What can be built
//!
//! - [`Payload`]: one named payload; uncompressed or [`Payload::zstd`] (one
//!   frame with content size), or [`Payload::inline`] (its bytes in the
//!   layer descriptor's `data`, no blob file written). For bad-input tests:
//!   [`Payload::stored`] replaces the stored bytes (the digest follows them,
//!   so the image is consistent but the content is wrong), and
//!   [`Payload::media_type`] overrides the media type.
//! - [`OsImage`]: one manifest of the Monogon format. Its config lists the
//!   payloads with their chunk hashes ([`OsImage::hash_chunk_size`], 1 MiB by
//!   default); [`OsImage::ref_name`] names it in the index;
//!   [`OsImage::edit_config`] and [`OsImage::edit_manifest`] change the JSON
//!   before it is hashed (e.g. a bad `format_version`, a duplicate name).
//! - [`ImageBuilder::generic`]: a plain OCI image (not Monogon's format):
//!   an OCI image config and `…layer.v1.tar` (or `+zstd`) layers, whose
//!   payload names are only the test's labels.
//! - [`ImageBuilder`]: the layout. Several manifests ([`ImageBuilder::image`]),
//!   Bazel-style blobs that are relative symlinks to files outside the layout
//!   ([`ImageBuilder::bazel_symlinks`]), all manifests behind a nested index
//!   ([`ImageBuilder::nested_index`]), and [`ImageBuilder::edit_index`] for
//!   `index.json` itself.
//! - [`BuiltImage`]: what was written: every manifest's digest and, for each
//!   blob, its digest, size, path in the layout and symlink target.
//!
//! Helpers for tests that damage an image: [`flip_byte`], [`snapshot`] (to
//! check that opening an image wrote nothing).

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// The artifact type of a Monogon OS image manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.monogon.os.image.v1";
/// The media type of a Monogon OS image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.monogon.os.image.config.v1+json";
/// The media type of an uncompressed payload.
pub const MEDIA_TYPE_UNCOMPRESSED: &str = "application/octet-stream";
/// The media type of a zstd payload.
pub const MEDIA_TYPE_ZSTD: &str = "application/zstd";
/// The media type of a plain OCI image config.
pub const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The media type of a plain (uncompressed) OCI layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// The media type of a zstd-compressed OCI layer.
pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI image manifest media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The annotation that names a manifest in an index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Monogon's chunk size for payload hashes.
pub const DEFAULT_HASH_CHUNK_SIZE: u64 = 1 << 20;

/// `sha256:<hex>` of bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of each `chunk_size` chunk of `data`, unpadded standard base64,
/// as Monogon's config writes them.
pub fn chunk_hashes(data: &[u8], chunk_size: u64) -> Vec<String> {
    data.chunks(chunk_size.max(1) as usize)
        .map(|c| base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(c)))
        .collect()
}

/// How a payload is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// As is (`application/octet-stream`).
    #[default]
    None,
    /// One zstd frame with its content size (`application/zstd`).
    Zstd,
}

/// One payload of a Monogon OS image.
#[derive(Clone, Debug)]
pub struct Payload {
    /// Its name in the config.
    pub name: String,
    /// Its (uncompressed) bytes.
    pub data: Vec<u8>,
    /// How it is stored.
    pub compression: Compression,
    /// Whether the stored bytes go inline in the layer descriptor's `data`
    /// (no blob file is then written).
    pub inline: bool,
    /// Bytes stored instead of the (compressed) data; the layer digest and
    /// size follow them. For corrupt-content tests.
    pub stored: Option<Vec<u8>>,
    /// A media type instead of the one `compression` implies.
    pub media_type: Option<String>,
}

impl Payload {
    /// An uncompressed payload.
    pub fn new(name: &str, data: impl Into<Vec<u8>>) -> Payload {
        Payload {
            name: name.to_owned(),
            data: data.into(),
            compression: Compression::None,
            inline: false,
            stored: None,
            media_type: None,
        }
    }

    /// Stores it as one zstd frame (with content size).
    pub fn zstd(mut self) -> Payload {
        self.compression = Compression::Zstd;
        self
    }

    /// Puts its stored bytes inline in the descriptor; writes no blob.
    pub fn inline(mut self) -> Payload {
        self.inline = true;
        self
    }

    /// Stores `bytes` as the layer instead of the (compressed) data.
    pub fn stored(mut self, bytes: impl Into<Vec<u8>>) -> Payload {
        self.stored = Some(bytes.into());
        self
    }

    /// Lists the layer with this media type.
    pub fn media_type(mut self, media_type: &str) -> Payload {
        self.media_type = Some(media_type.to_owned());
        self
    }

    fn stored_bytes(&self) -> Result<Vec<u8>> {
        if let Some(s) = &self.stored {
            return Ok(s.clone());
        }
        Ok(match self.compression {
            Compression::None => self.data.clone(),
            // Single-shot compression knows the size, so the frame header
            // carries it, as Monogon's writer does.
            Compression::Zstd => zstd::bulk::compress(&self.data, 3)
                .with_context(|| format!("compressing payload {}", self.name))?,
        })
    }

    fn layer_media_type(&self, generic: bool) -> String {
        self.media_type.clone().unwrap_or_else(|| {
            match (self.compression, generic) {
                (Compression::None, false) => MEDIA_TYPE_UNCOMPRESSED,
                (Compression::Zstd, false) => MEDIA_TYPE_ZSTD,
                (Compression::None, true) => OCI_LAYER_TAR,
                (Compression::Zstd, true) => OCI_LAYER_TAR_ZSTD,
            }
            .to_owned()
        })
    }
}

type Edit = Arc<dyn Fn(&mut Value) + Send + Sync>;

/// One manifest of the Monogon OS image format.
#[derive(Clone)]
pub struct OsImage {
    /// The payloads, one per layer, in order.
    pub payloads: Vec<Payload>,
    /// The `org.opencontainers.image.ref.name` of its index entry.
    pub ref_name: Option<String>,
    /// The chunk size of the payload hashes.
    pub hash_chunk_size: u64,
    /// `product_info.variant` (its first `-` part is the architecture).
    pub variant: String,
    /// Whether the config goes inline in the manifest's config descriptor
    /// (no config blob file is then written).
    pub inline_config: bool,
    /// A plain OCI image rather than Monogon's format (see
    /// [`ImageBuilder::generic`]).
    pub generic: bool,
    edit_config: Vec<Edit>,
    edit_manifest: Vec<Edit>,
}

impl Default for OsImage {
    fn default() -> Self {
        OsImage::new()
    }
}

impl OsImage {
    /// An image without payloads; 1 MiB hash chunks; variant `x86_64`.
    pub fn new() -> OsImage {
        OsImage {
            payloads: Vec::new(),
            ref_name: None,
            hash_chunk_size: DEFAULT_HASH_CHUNK_SIZE,
            variant: "x86_64".to_owned(),
            inline_config: false,
            generic: false,
            edit_config: Vec::new(),
            edit_manifest: Vec::new(),
        }
    }

    /// Monogon's two payloads, uncompressed: `kernel.efi` ([`efi_image`] of
    /// 64 KiB + 123 bytes) and `system` ([`sample_erofs`]).
    pub fn sample() -> Result<OsImage> {
        Ok(OsImage::new()
            .payload(Payload::new("kernel.efi", efi_image(64 * 1024 + 123)))
            .payload(Payload::new("system", sample_erofs()?)))
    }

    /// The same, stored as zstd.
    pub fn sample_zstd() -> Result<OsImage> {
        Ok(OsImage::new()
            .payload(Payload::new("kernel.efi", efi_image(64 * 1024 + 123)).zstd())
            .payload(Payload::new("system", sample_erofs()?).zstd()))
    }

    /// Adds a payload (the next layer).
    pub fn payload(mut self, p: Payload) -> OsImage {
        self.payloads.push(p);
        self
    }

    /// Names the manifest in its index.
    pub fn ref_name(mut self, name: &str) -> OsImage {
        self.ref_name = Some(name.to_owned());
        self
    }

    /// Sets the chunk size of the payload hashes.
    pub fn hash_chunk_size(mut self, size: u64) -> OsImage {
        self.hash_chunk_size = size;
        self
    }

    /// Sets `product_info.variant`.
    pub fn variant(mut self, variant: &str) -> OsImage {
        self.variant = variant.to_owned();
        self
    }

    /// Puts the config inline in its descriptor.
    pub fn inline_config(mut self) -> OsImage {
        self.inline_config = true;
        self
    }

    /// Changes the config JSON before it is hashed.
    pub fn edit_config(mut self, f: impl Fn(&mut Value) + Send + Sync + 'static) -> OsImage {
        self.edit_config.push(Arc::new(f));
        self
    }

    /// Changes the manifest JSON before it is hashed.
    pub fn edit_manifest(mut self, f: impl Fn(&mut Value) + Send + Sync + 'static) -> OsImage {
        self.edit_manifest.push(Arc::new(f));
        self
    }

    /// The config JSON as it will be written (before edits).
    pub fn config_json(&self) -> Value {
        if self.generic {
            let diff_ids: Vec<String> = self
                .payloads
                .iter()
                .map(|p| sha256_digest(&p.data))
                .collect();
            return json!({
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            });
        }
        let payloads: Vec<Value> = self
            .payloads
            .iter()
            .map(|p| {
                let hashes = if p.data.is_empty() {
                    Value::Null
                } else {
                    json!(chunk_hashes(&p.data, self.hash_chunk_size))
                };
                json!({
                    "name": p.name,
                    "size": p.data.len(),
                    "hash_chunk_size": self.hash_chunk_size,
                    "chunk_hashes_sha256": hashes,
                })
            })
            .collect();
        json!({
            "format_version": "1",
            "product_info": {
                "id": "metropolis-node",
                "name": "Metropolis Node",
                "version": "0.1.0-test",
                "variant": self.variant,
                "commit_hash": "0123456789abcdef0123456789abcdef01234567",
                "commit_date": "2025-01-01T00:00:00Z",
                "build_tree_dirty": false,
                "components": [{"id": "linux", "version": "6.12.0"}],
            },
            "payloads": payloads,
        })
    }
}

/// A blob as written.
#[derive(Clone, Debug)]
pub struct BuiltBlob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// `blobs/sha256/<hex>` in the layout; `None` when only inline.
    pub path: Option<PathBuf>,
    /// The file the blob symlinks to (Bazel style), if it is a symlink.
    pub target: Option<PathBuf>,
}

impl BuiltBlob {
    /// The blob's path in the layout. Panics (test code) if it is inline.
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("blob has a file") // test helper
    }

    /// The file holding the bytes: the symlink target, else the blob path.
    pub fn real_path(&self) -> &Path {
        self.target.as_deref().unwrap_or_else(|| self.path())
    }
}

/// A payload layer as written.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    /// The payload name.
    pub name: String,
    /// The layer's media type.
    pub media_type: String,
    /// The payload's uncompressed bytes.
    pub data: Vec<u8>,
    /// The stored blob.
    pub blob: BuiltBlob,
}

/// A manifest as written.
#[derive(Clone, Debug)]
pub struct BuiltManifest {
    /// Its ref name, if any.
    pub ref_name: Option<String>,
    /// The manifest blob (its digest is the manifest digest).
    pub manifest: BuiltBlob,
    /// The config blob.
    pub config: BuiltBlob,
    /// The layers, in order.
    pub layers: Vec<BuiltLayer>,
}

impl BuiltManifest {
    /// The manifest digest, `sha256:<hex>`.
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }
}

/// An image layout as written.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// The layout directory.
    pub dir: PathBuf,
    /// Where symlinked blobs point (Bazel's output tree), if any.
    pub outputs: Option<PathBuf>,
    /// The manifests, in the order they were added.
    pub manifests: Vec<BuiltManifest>,
    /// The nested index blob, if the manifests are behind one.
    pub nested_index: Option<BuiltBlob>,
}

impl BuiltImage {
    /// The first manifest's digest.
    pub fn manifest_digest(&self) -> &str {
        self.manifests[0].digest()
    }

    /// The first manifest's layer holding payload `name`. Panics (test code)
    /// if there is none.
    pub fn layer(&self, name: &str) -> &BuiltLayer {
        self.manifests[0]
            .layers
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no payload {name}")) // test helper
    }
}

/// Writes an OCI image layout holding one or more [`OsImage`]s.
#[derive(Clone, Default)]
pub struct ImageBuilder {
    images: Vec<OsImage>,
    symlinks: bool,
    nested: Option<Option<String>>,
    edit_index: Vec<Edit>,
}

impl ImageBuilder {
    /// A layout without manifests yet.
    pub fn new() -> ImageBuilder {
        ImageBuilder::default()
    }

    /// A layout with one manifest.
    pub fn monogon(image: OsImage) -> ImageBuilder {
        ImageBuilder::new().image(image)
    }

    /// A layout with one plain OCI image (not Monogon's format): an OCI
    /// image config and one `…layer.v1.tar` layer per payload (`+zstd` for
    /// [`Payload::zstd`]), in order; payload names only label the layers
    /// for [`BuiltImage::layer`].
    pub fn generic(layers: impl IntoIterator<Item = Payload>) -> ImageBuilder {
        let mut image = OsImage::new();
        image.generic = true;
        image.payloads.extend(layers);
        ImageBuilder::new().image(image)
    }

    /// Adds a manifest.
    pub fn image(mut self, image: OsImage) -> ImageBuilder {
        self.images.push(image);
        self
    }

    /// Writes every blob (manifests, configs, layers) to a Bazel-style output
    /// tree `<dir>-bazel-out/` next to the layout, and makes
    /// `blobs/sha256/<hex>` a relative symlink to it
    /// (`../../../<dirname>-bazel-out/<file>`).
    pub fn bazel_symlinks(mut self) -> ImageBuilder {
        self.symlinks = true;
        self
    }

    /// Lists the manifests in a nested image index, which `index.json`
    /// lists (with this ref name, if any).
    pub fn nested_index(mut self, ref_name: Option<&str>) -> ImageBuilder {
        self.nested = Some(ref_name.map(str::to_owned));
        self
    }

    /// Changes `index.json` before it is written.
    pub fn edit_index(mut self, f: impl Fn(&mut Value) + Send + Sync + 'static) -> ImageBuilder {
        self.edit_index.push(Arc::new(f));
        self
    }

    /// Writes the layout to `dir` (created; it must not exist or be empty).
    pub fn write(&self, dir: &Path) -> Result<BuiltImage> {
        if dir.exists() {
            ensure!(
                fs::read_dir(dir)?.next().is_none(),
                "{} is not empty",
                dir.display()
            );
        }
        fs::create_dir_all(dir.join("blobs/sha256"))?;
        let outputs = if self.symlinks {
            let name = dir
                .file_name()
                .context("image directory has no name")?
                .to_string_lossy()
                .into_owned();
            let out = dir.with_file_name(format!("{name}-bazel-out"));
            fs::create_dir_all(&out)?;
            Some((out, name))
        } else {
            None
        };
        let w = BlobWriter {
            dir,
            outputs: outputs.as_ref(),
        };

        let mut manifests = Vec::new();
        let mut entries = Vec::new();
        for image in &self.images {
            let mut layer_descs = Vec::new();
            let mut layers = Vec::new();
            for p in &image.payloads {
                let stored = p.stored_bytes()?;
                let media_type = p.layer_media_type(image.generic);
                let blob = w.blob(&stored, !p.inline, &format!("payload-{}", p.name))?;
                let mut desc = json!({
                    "mediaType": media_type,
                    "digest": blob.digest,
                    "size": blob.size,
                });
                if p.inline {
                    desc["data"] = json!(b64(&stored));
                }
                layer_descs.push(desc);
                layers.push(BuiltLayer {
                    name: p.name.clone(),
                    media_type,
                    data: p.data.clone(),
                    blob,
                });
            }

            let mut config = image.config_json();
            for e in &image.edit_config {
                e(&mut config);
            }
            let config_bytes = to_bytes(&config)?;
            let config_blob = w.blob(&config_bytes, !image.inline_config, "config.json")?;
            let config_media_type = if image.generic {
                OCI_CONFIG_MEDIA_TYPE
            } else {
                CONFIG_MEDIA_TYPE
            };
            let mut config_desc = json!({
                "mediaType": config_media_type,
                "digest": config_blob.digest,
                "size": config_blob.size,
            });
            if image.inline_config {
                config_desc["data"] = json!(b64(&config_bytes));
            }

            let mut manifest = json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": config_desc,
                "layers": layer_descs,
            });
            if !image.generic {
                manifest["artifactType"] = json!(ARTIFACT_TYPE);
            }
            for e in &image.edit_manifest {
                e(&mut manifest);
            }
            let manifest_bytes = to_bytes(&manifest)?;
            let manifest_blob = w.blob(&manifest_bytes, true, "manifest.json")?;

            // Monogon's quirk: the index entry's artifactType is the config
            // media type.
            let mut entry = json!({
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": manifest_blob.digest,
                "size": manifest_blob.size,
            });
            if !image.generic {
                entry["artifactType"] = json!(CONFIG_MEDIA_TYPE);
            }
            if let Some(r) = &image.ref_name {
                entry["annotations"] = json!({ REF_NAME: r });
            }
            entries.push(entry);
            manifests.push(BuiltManifest {
                ref_name: image.ref_name.clone(),
                manifest: manifest_blob,
                config: config_blob,
                layers,
            });
        }

        let mut nested_index = None;
        if let Some(ref_name) = &self.nested {
            let nested = json!({
                "schemaVersion": 2,
                "mediaType": INDEX_MEDIA_TYPE,
                "manifests": entries,
            });
            let bytes = to_bytes(&nested)?;
            let blob = w.blob(&bytes, true, "nested-index.json")?;
            let mut entry = json!({
                "mediaType": INDEX_MEDIA_TYPE,
                "digest": blob.digest,
                "size": blob.size,
            });
            if let Some(r) = ref_name {
                entry["annotations"] = json!({ REF_NAME: r });
            }
            entries = vec![entry];
            nested_index = Some(blob);
        }

        let mut index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": entries,
        });
        for e in &self.edit_index {
            e(&mut index);
        }
        fs::write(dir.join("index.json"), to_bytes(&index)?)?;
        fs::write(
            dir.join("oci-layout"),
            b"{\"imageLayoutVersion\": \"1.0.0\"}\n",
        )?;
        Ok(BuiltImage {
            dir: dir.to_owned(),
            outputs: outputs.map(|(o, _)| o),
            manifests,
            nested_index,
        })
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn to_bytes(v: &Value) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(v)?;
    b.push(b'\n');
    Ok(b)
}

struct BlobWriter<'a> {
    dir: &'a Path,
    outputs: Option<&'a (PathBuf, String)>,
}

impl BlobWriter<'_> {
    /// Writes a blob (unless `file` is false) and describes it.
    fn blob(&self, bytes: &[u8], file: bool, label: &str) -> Result<BuiltBlob> {
        let digest = sha256_digest(bytes);
        let hex = &digest["sha256:".len()..];
        let mut blob = BuiltBlob {
            digest: digest.clone(),
            size: bytes.len() as u64,
            path: None,
            target: None,
        };
        if !file {
            return Ok(blob);
        }
        let path = self.dir.join("blobs/sha256").join(hex);
        match self.outputs {
            None => {
                // Identical blobs share a file, as in any layout.
                if !path.exists() {
                    fs::write(&path, bytes)?;
                }
            }
            Some((out, dir_name)) => {
                let file_name = format!("{label}-{}", &hex[..12]);
                let target = out.join(&file_name);
                fs::write(&target, bytes)?;
                if fs::symlink_metadata(&path).is_err() {
                    let rel = PathBuf::from(format!("../../../{dir_name}-bazel-out/{file_name}"));
                    std::os::unix::fs::symlink(&rel, &path)?;
                }
                blob.target = Some(target);
            }
        }
        blob.path = Some(path);
        Ok(blob)
    }
}

/// A PE32+/EFI-application-looking file of `size` bytes (at least 512):
/// DOS header `MZ`, `PE\0\0` signature, x86-64 machine, EFI application
/// subsystem, then a recognizable non-zero pattern. Not executable.
pub fn efi_image(size: usize) -> Vec<u8> {
    let size = size.max(512);
    let mut b: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] | 1)
        .collect();
    b[..0x80].fill(0);
    b[0..2].copy_from_slice(b"MZ");
    b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes()); // e_lfanew
    let pe = 0x80;
    b[pe..pe + 24].fill(0);
    b[pe..pe + 4].copy_from_slice(b"PE\0\0");
    b[pe + 4..pe + 6].copy_from_slice(&0x8664u16.to_le_bytes()); // machine
    b[pe + 6..pe + 8].copy_from_slice(&1u16.to_le_bytes()); // sections
    b[pe + 20..pe + 22].copy_from_slice(&240u16.to_le_bytes()); // optional header size
    b[pe + 22..pe + 24].copy_from_slice(&0x0022u16.to_le_bytes()); // characteristics
    let opt = pe + 24;
    b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes()); // PE32+
    b[opt + 68..opt + 70].copy_from_slice(&10u16.to_le_bytes()); // EFI application
    b
}

/// A real erofs image (from `mkfs.erofs`) of `dir`, reproducible (fixed
/// timestamp and UUID, all files owned by root).
pub fn erofs_image_of(dir: &Path) -> Result<Vec<u8>> {
    let out = tempfile::NamedTempFile::new()?;
    let status = Command::new("mkfs.erofs")
        .args([
            "--quiet",
            "-T0",
            "-U6f1d9a3e-0c4b-4f7e-9d2a-1b3c5d7e9f00",
            "--all-root",
        ])
        .arg(out.path())
        .arg(dir)
        .status()
        .context("running mkfs.erofs (installed by .ci/install-deps; package erofs-utils)")?;
    if !status.success() {
        bail!("mkfs.erofs failed: {status}");
    }
    let bytes = fs::read(out.path())?;
    ensure!(
        bytes.get(1024..1028) == Some(&0xE0F5_E1E2u32.to_le_bytes()[..]),
        "mkfs.erofs wrote no erofs superblock"
    );
    Ok(bytes)
}

/// A small root file system as a real erofs image: `etc/os-release`,
/// `bin/hello`, a 300 KiB `usr/lib/data.bin` with a non-repeating pattern,
/// and a symlink (a few hundred KiB in all, several 64 KiB chunks).
pub fn sample_erofs() -> Result<Vec<u8>> {
    let tree = tempfile::tempdir()?;
    let root = tree.path();
    for d in ["etc", "bin", "usr/lib"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::write(
        root.join("etc/os-release"),
        "ID=metropolis\nNAME=\"Metropolis Node\"\n",
    )?;
    fs::write(root.join("bin/hello"), b"#!/bin/sh\necho hello\n")?;
    let data: Vec<u8> = (0..300 * 1024u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 13) as u8)
        .collect();
    fs::write(root.join("usr/lib/data.bin"), data)?;
    std::os::unix::fs::symlink("../bin/hello", root.join("etc/hello"))?;
    erofs_image_of(root)
}

/// Flips the bits of the byte at `offset` of a file (through symlinks):
/// same size, different content.
pub fn flip_byte(path: &Path, offset: u64) -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    let f = fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset)?;
    b[0] ^= 0xff;
    f.write_all_at(&b, offset)?;
    Ok(())
}

/// One entry of a [`snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the snapshot root.
    pub path: PathBuf,
    /// `d`, `f`, `l` or `?`.
    pub kind: char,
    /// Size in bytes.
    pub len: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Symlink target.
    pub link: Option<PathBuf>,
}

/// Every entry under `root` (not following symlinks), sorted: compare two
/// snapshots to check that nothing was created, removed or written.
pub fn snapshot(root: &Path) -> Result<Vec<Entry>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) -> Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let path = e.path();
            let m = fs::symlink_metadata(&path)?;
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                'd'
            } else if ft.is_file() {
                'f'
            } else if ft.is_symlink() {
                'l'
            } else {
                '?'
            };
            out.push(Entry {
                path: path.strip_prefix(root)?.to_owned(),
                kind,
                len: m.len(),
                mode: m.mode(),
                mtime: (m.mtime(), m.mtime_nsec()),
                link: ft.is_symlink().then(|| fs::read_link(&path)).transpose()?,
            });
            if ft.is_dir() {
                walk(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Deterministic, incompressible bytes: payloads that cost as much to copy
/// and hash as real ones, the same for every run of a seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0; len];
    fastrand::Rng::with_seed(seed).fill(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_consistent_monogon_layout() -> Result<()> {
        let root = tempfile::tempdir()?;
        let built = ImageBuilder::monogon(OsImage::sample_zstd()?.ref_name("node"))
            .bazel_symlinks()
            .write(&root.path().join("image"))?;
        let m = &built.manifests[0];
        // Every blob's content matches its digest, through the symlinks.
        for b in [&m.manifest, &m.config]
            .into_iter()
            .chain(m.layers.iter().map(|l| &l.blob))
        {
            let bytes = fs::read(b.path())?;
            assert_eq!(sha256_digest(&bytes), b.digest);
            assert_eq!(bytes.len() as u64, b.size);
            assert!(fs::symlink_metadata(b.path())?.file_type().is_symlink());
            assert!(fs::read_link(b.path())?.is_relative());
        }
        // One frame, with its content size.
        let system = built.layer("system");
        let z = fs::read(system.blob.path())?;
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&z).ok().flatten(),
            Some(system.data.len() as u64)
        );
        assert_eq!(zstd::bulk::decompress(&z, system.data.len())?, system.data);
        let index: Value = serde_json::from_slice(&fs::read(built.dir.join("index.json"))?)?;
        assert_eq!(index["manifests"][0]["artifactType"], CONFIG_MEDIA_TYPE);
        assert_eq!(index["manifests"][0]["annotations"][REF_NAME], "node");
        Ok(())
    }

    #[test]
    fn efi_looks_like_pe() {
        let e = efi_image(4096);
        assert_eq!(&e[..2], b"MZ");
        assert_eq!(&e[0x80..0x84], b"PE\0\0");
        assert_eq!(e.len(), 4096);
    }

    #[test]
    fn snapshot_sees_writes() -> Result<()> {
        let d = tempfile::tempdir()?;
        fs::write(d.path().join("a"), b"x")?;
        let before = snapshot(d.path())?;
        assert_eq!(before, snapshot(d.path())?);
        fs::write(d.path().join("b"), b"")?;
        assert_ne!(before, snapshot(d.path())?);
        Ok(())
    }
}
