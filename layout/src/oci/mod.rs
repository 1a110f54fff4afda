//! Reading an OCI image layout: `oci-layout`, `index.json` and the blobs
//! under `blobs/sha256/`.
//!
//! [`Image::open`] selects one manifest, checks what is cheap to check
//! (every referenced blob exists, is a regular file, possibly through a
//! symlink, and has its descriptor's size; the manifest and config match
//! their digests), parses a Monogon OS image config when there is one, and
//! makes every layer's uncompressed bytes available as a [`Content`]:
//! uncompressed blobs in place, zstd layers through the [`crate::cache`].
//! [`OpenOptions::verify`] additionally hashes every layer in full.
//!
//! Nothing here writes to the image directory: blobs are opened read-only.
//!
//! The descriptors, index and manifest are oci-spec types. Its types are
//! lenient enough for Monogon's quirk (the index.json descriptor's
//! `artifactType` is the config media type: oci-spec keeps any media type);
//! the Monogon config has no oci-spec type and is parsed in [`crate::monogon`].

mod blob;
mod error;
mod select;
mod verify;

pub use blob::{BlobData, MAX_JSON};
pub use error::ImageError;
pub use select::MAX_DEPTH;

use crate::cache::{Cache, Compressed, ZstdLayer};
use crate::lazy_verify::PayloadGate;
use crate::monogon::{self, Config};
use crate::source::{Content, Source};
use blob::{parse_json, read_file, sha256_hex, Blobs};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, OciLayout};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// The only `imageLayoutVersion` understood.
pub const LAYOUT_VERSION: &str = "1.0.0";

/// Layer media types mapped into a disk as they are.
const RAW_TYPES: &[&str] = &[
    monogon::MEDIA_TYPE_UNCOMPRESSED,
    "application/vnd.oci.image.layer.v1.tar",
];
/// Layer media types decompressed into the cache.
const ZSTD_TYPES: &[&str] = &[
    monogon::MEDIA_TYPE_ZSTD,
    "application/vnd.oci.image.layer.v1.tar+zstd",
];
const SUPPORTED_GENERIC: &str = "application/octet-stream, application/zstd, application/vnd.oci.image.layer.v1.tar, application/vnd.oci.image.layer.v1.tar+zstd";
const SUPPORTED_MONOGON: &str = "application/octet-stream, application/zstd";

/// How to open an image.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Which manifest: `None` = the only one; `sha256:<hex>` = by digest;
    /// anything else = by `org.opencontainers.image.ref.name`. Nested image
    /// indexes are followed.
    pub reference: Option<String>,
    /// Also hash every layer in full (its digest, and for Monogon images
    /// every chunk hash).
    pub verify: bool,
    /// Check each chunk of a Monogon payload against its chunk hash the
    /// first time it is read (see [`crate::lazy_verify`]); layers without
    /// chunk hashes are then hashed in full at open, unless
    /// `trust_unverified`. Ignored with `verify`.
    pub lazy: bool,
    /// With `lazy`: serve layers that have no chunk hashes without
    /// checking their digest first.
    pub trust_unverified: bool,
    /// Where decompressed zstd layers are kept. `None` =
    /// `$XDG_CACHE_HOME/ocidisk`, else `$HOME/.cache/ocidisk`.
    pub cache_dir: Option<PathBuf>,
}

/// Selects a layer of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerRef {
    /// By its position in the manifest, from 0.
    Index(usize),
    /// By its digest, `sha256:<hex>`.
    Digest(String),
}

impl FromStr for LayerRef {
    type Err = std::convert::Infallible;

    /// A decimal number is an index; anything else a digest.
    fn from_str(s: &str) -> Result<LayerRef, Self::Err> {
        Ok(match s.parse::<usize>() {
            Ok(i) => LayerRef::Index(i),
            Err(_) => LayerRef::Digest(s.to_owned()),
        })
    }
}

impl std::fmt::Display for LayerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerRef::Index(i) => write!(f, "{i}"),
            LayerRef::Digest(d) => f.write_str(d),
        }
    }
}

/// A manifest and its config as fetched from elsewhere (a registry), for
/// [`Image::from_fetched`].
#[derive(Clone, Debug)]
pub struct Fetched<'a> {
    /// Where the image's files are kept ([`Image::dir`]): for a registry
    /// image, the cache directory.
    pub dir: &'a Path,
    /// The manifest's digest, `sha256:<hex>`, as the reference pinned it.
    pub manifest_digest: &'a str,
    /// The manifest's bytes exactly as served.
    pub manifest: &'a [u8],
    /// The name the manifest was selected by (a tag), if any.
    pub ref_name: Option<String>,
    /// The config blob's bytes.
    pub config: &'a [u8],
}

/// One layer whose blob [`Image::from_fetched`] asks for.
#[derive(Clone, Copy, Debug)]
pub struct LayerRequest<'a> {
    /// Its position in the manifest.
    pub index: usize,
    /// How errors name it, e.g. `layer 1 ("system") sha256:…`.
    pub what: &'a str,
    /// Its descriptor (digest checked to be sha256, media type supported).
    pub desc: &'a Descriptor,
    /// Whether it is zstd-compressed (its blob is then read whole, from
    /// the start, to be decompressed).
    pub compressed: bool,
    /// In a Monogon OS image, the payload it holds (with its chunk hashes).
    pub payload: Option<&'a monogon::Payload>,
}

/// A layer's blob as an opener yields it.
#[derive(Clone, Debug)]
pub struct LayerBlob {
    /// The blob's bytes.
    pub data: BlobData,
    /// Every read of the file checks what it reads itself (a chunk cache
    /// file behind a [`crate::source::ChunkGate`] that verifies chunks, or
    /// the whole blob's digest, before serving them).
    pub checked_on_read: bool,
}

/// One layer of the selected manifest, with its uncompressed bytes.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Its position in the manifest, from 0.
    pub index: usize,
    /// Its digest as listed, `sha256:<hex>`.
    pub digest: String,
    /// Its media type as listed.
    pub media_type: String,
    /// In a Monogon OS image, the name of the payload it holds.
    pub payload_name: Option<String>,
    /// Its uncompressed bytes: a read-only file (the blob itself or its
    /// decompressed copy in the cache) or inline bytes.
    pub content: Content,
}

/// An opened OCI image: one selected manifest and its layers.
#[derive(Debug)]
pub struct Image {
    dir: PathBuf,
    manifest_digest: String,
    manifest: ImageManifest,
    ref_name: Option<String>,
    artifact_type: Option<String>,
    config_digest: String,
    config: Vec<u8>,
    monogon: Option<Config>,
    layers: Vec<Layer>,
}

impl Image {
    /// Opens the image layout at `dir` and selects a manifest (see
    /// [`OpenOptions`]). Checks every blob the manifest references; with
    /// `verify`, hashes every layer too.
    pub fn open(dir: &Path, opts: &OpenOptions) -> Result<Image, ImageError> {
        let blobs = Blobs::new(dir);

        let layout_path = dir.join("oci-layout");
        let layout: OciLayout = parse_json(
            &read_file(&layout_path, |path| ImageError::NotALayout { path })?,
            &layout_path.display().to_string(),
        )?;
        if layout.image_layout_version() != LAYOUT_VERSION {
            return Err(ImageError::LayoutVersion {
                path: layout_path,
                found: layout.image_layout_version().clone(),
            });
        }

        let index_path = dir.join("index.json");
        let index: ImageIndex = parse_json(
            &read_file(&index_path, |path| ImageError::MissingIndex { path })?,
            &index_path.display().to_string(),
        )?;
        let selected = select::select(&blobs, &index, &index_path, opts.reference.as_deref())?;
        let manifest_digest = selected.desc.digest().to_string();

        let what = format!("manifest {manifest_digest}");
        let manifest_bytes = blobs.read_checked(&what, &selected.desc)?;
        let manifest: ImageManifest = parse_json(&manifest_bytes, &what)?;
        let config_desc = manifest.config();
        let config_what = format!("config {}", config_desc.digest());
        let config = blobs.read_checked(&config_what, config_desc)?;
        let fetched = Fetched {
            dir,
            manifest_digest: &manifest_digest,
            manifest: &manifest_bytes,
            ref_name: selected.ref_name,
            config: &config,
        };
        Image::from_fetched(&fetched, opts, &mut |req: &LayerRequest<'_>| {
            Ok(LayerBlob {
                data: blobs.open(req.what, req.desc)?,
                checked_on_read: false,
            })
        })
    }

    /// Builds an image from a manifest and config fetched elsewhere (a
    /// registry), with the same checks as [`Image::open`]: the manifest must
    /// hash to `manifest_digest` and the config to the manifest's config
    /// descriptor (both are always verified, since the disk's metadata is
    /// generated from them), the Monogon config must match the layers.
    /// `open_layer` yields each layer's blob; a blob whose reads check
    /// themselves ([`LayerBlob::checked_on_read`], a chunk cache's file) is
    /// not gated or hashed again, except in full with
    /// [`OpenOptions::verify`].
    pub fn from_fetched(
        fetched: &Fetched<'_>,
        opts: &OpenOptions,
        open_layer_blob: &mut dyn FnMut(&LayerRequest<'_>) -> Result<LayerBlob, ImageError>,
    ) -> Result<Image, ImageError> {
        let manifest_digest = fetched.manifest_digest.to_owned();
        let what = format!("manifest {manifest_digest}");
        let actual = blob::sha256_of(fetched.manifest);
        if manifest_digest.strip_prefix("sha256:") != Some(actual.as_str()) {
            return Err(ImageError::DigestMismatch {
                what: what.clone(),
                path: "the fetched manifest".to_owned(),
                actual,
            });
        }
        let manifest: ImageManifest = parse_json(fetched.manifest, &what)?;
        if let Some(mt) = manifest.media_type() {
            if !select::is_manifest(mt.as_ref()) {
                return Err(ImageError::MediaType {
                    what,
                    field: "mediaType",
                    found: mt.to_string(),
                    expected: "application/vnd.oci.image.manifest.v1+json".to_owned(),
                });
            }
        }

        let config_desc = manifest.config();
        let config_digest = config_desc.digest().to_string();
        let config_what = format!("config {config_digest}");
        let config_hex = sha256_hex(&config_what, config_desc)?;
        blob::check_bytes(
            &config_what,
            config_desc,
            config_hex,
            "the fetched config",
            fetched.config,
        )?;
        let config = fetched.config.to_vec();

        let artifact_type = manifest.artifact_type().as_ref().map(|t| t.to_string());
        let config_type = config_desc.media_type().to_string();
        let is_monogon = artifact_type.as_deref() == Some(monogon::ARTIFACT_TYPE)
            || config_type == monogon::CONFIG_MEDIA_TYPE;
        let monogon = if is_monogon {
            if config_type != monogon::CONFIG_MEDIA_TYPE {
                return Err(ImageError::MediaType {
                    what: config_what,
                    field: "mediaType",
                    found: config_type,
                    expected: monogon::CONFIG_MEDIA_TYPE.to_owned(),
                });
            }
            let cfg = Config::parse(&config, &config_what)?;
            if cfg.payloads.len() != manifest.layers().len() {
                return Err(ImageError::PayloadCount {
                    file: config_what,
                    payloads: cfg.payloads.len(),
                    layers: manifest.layers().len(),
                });
            }
            Some(cfg)
        } else {
            None
        };

        let mut cache: Option<Cache> = None;
        let mut layers = Vec::with_capacity(manifest.layers().len());
        for (index, desc) in manifest.layers().iter().enumerate() {
            let payload = monogon.as_ref().and_then(|c| c.payloads.get(index));
            let (layer, what, blob, compressed, checked_on_read) =
                open_layer(open_layer_blob, index, desc, payload, opts, &mut cache)?;
            let hashed = payload.is_some_and(|p| !p.chunk_hashes.is_empty());
            let empty = layer.content.len == 0;
            // A blob that checks its own reads (a chunk cache's) has been
            // or will be checked by its source; only `verify` hashes it again.
            let whole = opts.verify
                || (!checked_on_read && opts.lazy && !hashed && !empty && !opts.trust_unverified);
            if whole {
                let hex = desc.digest().digest();
                verify::layer(&what, hex, &blob, &layer.content, compressed, payload)?;
            }
            let mut layer = layer;
            if opts.lazy && !opts.verify && !checked_on_read {
                if let Some(p) = payload.filter(|_| hashed) {
                    layer.content = lazy_gate(&layer.content, p)?;
                }
            }
            layers.push(layer);
        }

        Ok(Image {
            dir: fetched.dir.to_owned(),
            manifest_digest,
            manifest,
            ref_name: fetched.ref_name.clone(),
            artifact_type,
            config_digest,
            config,
            monogon,
            layers,
        })
    }

    /// The image layout directory; for an image built with
    /// [`Image::from_fetched`] (a registry's), the cache directory its
    /// blobs are kept in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The selected manifest's digest, `sha256:<hex>`.
    pub fn manifest_digest(&self) -> &str {
        &self.manifest_digest
    }

    /// The selected manifest.
    pub fn manifest(&self) -> &ImageManifest {
        &self.manifest
    }

    /// The ref name the manifest (or the index it was selected through) has.
    pub fn ref_name(&self) -> Option<&str> {
        self.ref_name.as_deref()
    }

    /// The manifest's `artifactType`.
    pub fn artifact_type(&self) -> Option<&str> {
        self.artifact_type.as_deref()
    }

    /// The config's digest, `sha256:<hex>`.
    pub fn config_digest(&self) -> &str {
        &self.config_digest
    }

    /// The config's bytes (digest-checked).
    pub fn config_bytes(&self) -> &[u8] {
        &self.config
    }

    /// The layers, in manifest order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// A layer by index or digest (the first layer with that digest).
    pub fn layer(&self, sel: &LayerRef) -> Result<&Layer, ImageError> {
        match sel {
            LayerRef::Index(i) => self.layers.get(*i).ok_or(ImageError::NoSuchLayerIndex {
                index: *i,
                count: self.layers.len(),
            }),
            LayerRef::Digest(d) => self
                .layers
                .iter()
                .find(|l| &l.digest == d)
                .ok_or_else(|| ImageError::NoSuchLayerDigest { digest: d.clone() }),
        }
    }

    /// The layer holding the Monogon payload called `name`.
    pub fn payload(&self, name: &str) -> Result<&Layer, ImageError> {
        if self.monogon.is_none() {
            return Err(ImageError::NotMonogon {
                name: name.to_owned(),
            });
        }
        self.layers
            .iter()
            .find(|l| l.payload_name.as_deref() == Some(name))
            .ok_or_else(|| ImageError::PayloadNotFound {
                name: name.to_owned(),
                available: self
                    .layers
                    .iter()
                    .filter_map(|l| l.payload_name.as_deref())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The Monogon OS image config, if this is a Monogon OS image.
    pub fn monogon(&self) -> Option<&Config> {
        self.monogon.as_ref()
    }
}

/// The same content read through a [`PayloadGate`] that checks each chunk
/// on its first read. Inline payloads were checked against their digest
/// when decoded.
fn lazy_gate(content: &Content, payload: &monogon::Payload) -> Result<Content, ImageError> {
    let Source::File { file, offset: 0 } = &content.source else {
        return Ok(content.clone());
    };
    let io = |source| ImageError::Io {
        path: file.path().to_owned(),
        op: "opening for lazy verification",
        source,
    };
    let gate = PayloadGate::new(payload, file.file().try_clone().map_err(io)?, file.path());
    let gated = file.try_clone().map_err(io)?.with_gate(Arc::new(gate));
    Ok(Content::file(Arc::new(gated)))
}

/// Checks one layer's blob and makes its uncompressed bytes available.
/// Returns the layer, its description for errors, its blob as stored and
/// whether that is compressed.
fn open_layer(
    open_layer_blob: &mut dyn FnMut(&LayerRequest<'_>) -> Result<LayerBlob, ImageError>,
    index: usize,
    desc: &Descriptor,
    payload: Option<&monogon::Payload>,
    opts: &OpenOptions,
    cache: &mut Option<Cache>,
) -> Result<(Layer, String, BlobData, bool, bool), ImageError> {
    let digest = desc.digest().to_string();
    let what = match payload {
        Some(p) => format!("layer {index} ({:?}) {digest}", p.name),
        None => format!("layer {index} {digest}"),
    };
    sha256_hex(&what, desc)?;
    let media_type = desc.media_type().to_string();
    let (raw, zstd, supported) = if payload.is_some() {
        (
            media_type == monogon::MEDIA_TYPE_UNCOMPRESSED,
            media_type == monogon::MEDIA_TYPE_ZSTD,
            SUPPORTED_MONOGON,
        )
    } else {
        (
            RAW_TYPES.contains(&media_type.as_str()),
            ZSTD_TYPES.contains(&media_type.as_str()),
            SUPPORTED_GENERIC,
        )
    };
    if !raw && !zstd {
        return Err(ImageError::LayerMediaType {
            what,
            media_type,
            supported,
        });
    }
    let LayerBlob {
        data,
        checked_on_read,
    } = open_layer_blob(&LayerRequest {
        index,
        what: &what,
        desc,
        compressed: zstd,
        payload,
    })?;
    let content = if raw {
        if let Some(p) = payload {
            if p.size != desc.size() {
                return Err(ImageError::PayloadSize {
                    what,
                    name: p.name.clone(),
                    payload_size: p.size,
                    layer_size: desc.size(),
                });
            }
        }
        match &data {
            BlobData::File(f) => Content::file(f.clone()),
            BlobData::Inline(b) => Content::inline(b.clone()),
        }
    } else {
        let cache = match cache {
            Some(c) => c,
            None => cache.insert(Cache::new(match &opts.cache_dir {
                Some(d) => d.clone(),
                None => Cache::default_dir()?,
            })),
        };
        let compressed = match &data {
            BlobData::File(f) => Compressed::File(f),
            BlobData::Inline(b) => Compressed::Bytes(b),
        };
        Content::file(cache.decompressed(&ZstdLayer {
            what: &what,
            digest: &digest,
            compressed,
            payload,
        })?)
    };
    let layer = Layer {
        index,
        digest,
        media_type,
        payload_name: payload.map(|p| p.name.clone()),
        content,
    };
    Ok((layer, what, data, zstd, checked_on_read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::blob::sha256_of;
    use serde_json::json;
    use std::fs;

    /// Writes a blob; returns its descriptor JSON.
    fn blob(dir: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let hex = sha256_of(bytes);
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
    }

    /// A generic (non-Monogon) layout: one manifest per entry of `layers`,
    /// each named by its ref name.
    fn layout(dir: &Path, manifests: &[(&str, &[u8])]) -> Vec<String> {
        let mut entries = Vec::new();
        let mut digests = Vec::new();
        for (name, layer) in manifests {
            let config = blob(dir, "application/vnd.oci.image.config.v1+json", b"{}");
            let layer = blob(dir, "application/octet-stream", layer);
            let m = json!({"schemaVersion": 2, "config": config, "layers": [layer]});
            let mut d = blob(
                dir,
                "application/vnd.oci.image.manifest.v1+json",
                m.to_string().as_bytes(),
            );
            d["annotations"] = json!({ "org.opencontainers.image.ref.name": name });
            digests.push(d["digest"].as_str().unwrap().to_owned());
            entries.push(d);
        }
        let index = json!({"schemaVersion": 2, "manifests": entries});
        fs::write(dir.join("index.json"), index.to_string()).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        digests
    }

    fn by(r: &str) -> OpenOptions {
        OpenOptions {
            reference: Some(r.to_owned()),
            ..OpenOptions::default()
        }
    }

    #[test]
    fn selects_by_name_and_digest() {
        let d = tempfile::tempdir().unwrap();
        let digests = layout(d.path(), &[("one", b"first"), ("two", b"second layer")]);
        for (r, want) in [("one", 0), ("two", 1), (&digests[0], 0), (&digests[1], 1)] {
            let img = Image::open(d.path(), &by(r)).unwrap();
            assert_eq!(img.manifest_digest(), digests[want]);
            assert_eq!(img.layers()[0].content.len, [5, 12][want]);
        }
        let e = Image::open(d.path(), &OpenOptions::default()).unwrap_err();
        assert!(
            matches!(e, ImageError::AmbiguousManifest { count: 2, .. }),
            "{e}"
        );
        let e = Image::open(d.path(), &by("three")).unwrap_err();
        assert!(e.to_string().contains("\"one\""), "{e}");
    }

    #[test]
    fn verify_hashes_generic_layers() {
        let d = tempfile::tempdir().unwrap();
        layout(d.path(), &[("one", b"first")]);
        let verify = OpenOptions {
            verify: true,
            ..OpenOptions::default()
        };
        Image::open(d.path(), &verify).unwrap();
        let hex = sha256_of(b"first");
        fs::write(d.path().join("blobs/sha256").join(&hex), b"FIRST").unwrap();
        Image::open(d.path(), &OpenOptions::default()).unwrap();
        let e = Image::open(d.path(), &verify).unwrap_err();
        assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    }

    #[test]
    fn layer_refs_parse() {
        assert_eq!("3".parse::<LayerRef>(), Ok(LayerRef::Index(3)));
        assert_eq!(
            "sha256:ab".parse::<LayerRef>(),
            Ok(LayerRef::Digest("sha256:ab".to_owned()))
        );
        assert_eq!(LayerRef::Index(3).to_string(), "3");
    }
}
