//! Why an OCI image could not be opened or a part of it found.

use crate::cache::CacheError;
use crate::monogon::{BadChunk, ConfigError};
use std::io;
use std::path::PathBuf;
use thiserror::Error;

/// An OCI image layout that cannot be used, or a part of it that is not there.
///
/// Every variant names the file, the descriptor (`what` is e.g. `manifest`,
/// `config`, `layer 2`, `nested index`, followed by its digest) or the field
/// at fault.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The directory has no `oci-layout` file.
    #[error("{path}: not an OCI image layout (the oci-layout file is missing)")]
    NotALayout { path: PathBuf },
    /// The directory has no `index.json`.
    #[error("{path}: missing; an OCI image layout needs index.json")]
    MissingIndex { path: PathBuf },
    /// A file could not be read.
    #[error("{path}: {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A JSON document (a file or a blob) does not parse.
    #[error("{file}: bad JSON")]
    Json {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    /// `oci-layout` names a version other than 1.0.0.
    #[error("{path}: imageLayoutVersion is {found:?}; only \"1.0.0\" is supported")]
    LayoutVersion { path: PathBuf, found: String },
    /// The index lists no manifest.
    #[error("{path}: lists no image manifest")]
    NoManifest { path: PathBuf },
    /// Several manifests and no reference to choose one.
    #[error("{path}: lists {count} manifests; choose one by ref name or digest: {candidates}")]
    AmbiguousManifest {
        path: PathBuf,
        count: usize,
        candidates: String,
    },
    /// No manifest matches the reference.
    #[error("{path}: no manifest matches reference {reference:?}; available: {candidates}")]
    RefNotFound {
        path: PathBuf,
        reference: String,
        candidates: String,
    },
    /// The reference matches several different manifests.
    #[error("{path}: reference {reference:?} matches several manifests: {candidates}")]
    RefAmbiguous {
        path: PathBuf,
        reference: String,
        candidates: String,
    },
    /// Image indexes nested too deeply.
    #[error("{what}: image indexes nested more than {max} deep")]
    TooDeep { what: String, max: usize },
    /// A digest is malformed or uses an algorithm other than sha256.
    #[error("{what}: digest {digest:?}: {why}")]
    BadDigest {
        what: String,
        digest: String,
        why: String,
    },
    /// A referenced blob does not exist (or is a dangling symlink).
    #[error("{what}: blob {path} is missing")]
    MissingBlob { what: String, path: PathBuf },
    /// A referenced blob is not a regular file.
    #[error("{what}: blob {path} is not a regular file")]
    NotRegular { what: String, path: PathBuf },
    /// A blob's size differs from its descriptor's.
    #[error("{what}: blob {path} has {actual} bytes; the descriptor says {expected}")]
    SizeMismatch {
        what: String,
        path: String,
        expected: u64,
        actual: u64,
    },
    /// A blob's content does not have the digest of its descriptor.
    #[error("{what}: content of {path} has digest sha256:{actual}")]
    DigestMismatch {
        what: String,
        path: String,
        actual: String,
    },
    /// A descriptor's inline `data` is not valid base64.
    #[error("{what}: inline data is not valid base64: {why}")]
    InlineData { what: String, why: String },
    /// A JSON blob too large to read into memory.
    #[error("{what}: {size} bytes is too large for a JSON document (at most {max})")]
    TooLarge { what: String, size: u64, max: u64 },
    /// A document or descriptor of an unexpected media type.
    #[error("{what}: {field} is {found:?}; expected {expected}")]
    MediaType {
        what: String,
        field: &'static str,
        found: String,
        expected: String,
    },
    /// A layer of a media type this reader cannot map into a disk.
    #[error("{what}: unsupported layer media type {media_type:?}; supported: {supported}")]
    LayerMediaType {
        what: String,
        media_type: String,
        supported: &'static str,
    },
    /// The Monogon OS image config is invalid.
    #[error(transparent)]
    Monogon(#[from] ConfigError),
    /// The Monogon config has a different number of payloads than the
    /// manifest has layers.
    #[error("{file}: {payloads} payloads, but the manifest has {layers} layers")]
    PayloadCount {
        file: String,
        payloads: usize,
        layers: usize,
    },
    /// An uncompressed payload whose layer size differs from its size in the
    /// config.
    #[error("{what}: payload {name:?} has size {payload_size} in the config, but the layer has {layer_size} bytes")]
    PayloadSize {
        what: String,
        name: String,
        payload_size: u64,
        layer_size: u64,
    },
    /// A layer's blob could not be had from the chunk cache (a registry
    /// image: opening its cache file, or fetching a blob read whole).
    #[error("{what}: reading its blob through the chunk cache")]
    ChunkCache {
        what: String,
        #[source]
        source: crate::chunkcache::ChunkCacheError,
    },
    /// A zstd layer could not be decompressed into the cache.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A payload chunk does not match its hash (found by `verify`).
    #[error("{what} ({path}): checking its chunks")]
    BadChunk {
        what: String,
        path: String,
        #[source]
        source: BadChunk,
    },
    /// No layer has this index.
    #[error("layer {index}: no such layer; the image has {count} layers")]
    NoSuchLayerIndex { index: usize, count: usize },
    /// No layer has this digest.
    #[error("layer {digest}: no layer has this digest")]
    NoSuchLayerDigest { digest: String },
    /// The image has no payload of this name.
    #[error("payload {name:?} not found; the image has: {available}")]
    PayloadNotFound { name: String, available: String },
    /// Payloads are looked up by name in an image that is not a Monogon OS
    /// image.
    #[error("payload {name:?}: the image is not a Monogon OS image, so its layers have no names")]
    NotMonogon { name: String },
}
