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
    NotALayout {
        /// The directory.
        path: PathBuf,
    },
    /// The directory has no `index.json`.
    #[error("{path}: missing; an OCI image layout needs index.json")]
    MissingIndex {
        /// The index.json that is not there.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("{path}: {op}")]
    Io {
        /// The file or directory at fault.
        path: PathBuf,
        /// What was being done with it, e.g. `reading`.
        op: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A JSON document (a file or a blob) does not parse.
    #[error("{file}: bad JSON")]
    Json {
        /// The document that does not parse: a file's path or a blob's description.
        file: String,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// `oci-layout` names a version other than 1.0.0.
    #[error("{path}: imageLayoutVersion is {found:?}; only \"1.0.0\" is supported")]
    LayoutVersion {
        /// The oci-layout file.
        path: PathBuf,
        /// The value found instead.
        found: String,
    },
    /// The index lists no manifest.
    #[error("{path}: lists no image manifest")]
    NoManifest {
        /// The index.json.
        path: PathBuf,
    },
    /// Several manifests and no reference to choose one.
    #[error("{path}: lists {count} manifests; choose one by ref name or digest: {candidates}")]
    AmbiguousManifest {
        /// The index.json.
        path: PathBuf,
        /// How many the index lists.
        count: usize,
        /// The manifests it lists, to choose from.
        candidates: String,
    },
    /// No manifest matches the reference.
    #[error("{path}: no manifest matches reference {reference:?}; available: {candidates}")]
    RefNotFound {
        /// The index.json.
        path: PathBuf,
        /// The ref name or digest that was asked for.
        reference: String,
        /// The manifests it lists, to choose from.
        candidates: String,
    },
    /// The reference matches several different manifests.
    #[error("{path}: reference {reference:?} matches several manifests: {candidates}")]
    RefAmbiguous {
        /// The index.json.
        path: PathBuf,
        /// The ref name or digest that was asked for.
        reference: String,
        /// The manifests it lists, to choose from.
        candidates: String,
    },
    /// Image indexes nested too deeply.
    #[error("{what}: image indexes nested more than {max} deep")]
    TooDeep {
        /// The descriptor at fault, e.g. `layer 2` and its digest.
        what: String,
        /// The deepest nesting followed.
        max: usize,
    },
    /// A digest is malformed or uses an algorithm other than sha256.
    #[error("{what}: digest {digest:?}: {why}")]
    BadDigest {
        /// The descriptor at fault, e.g. `layer 2` and its digest.
        what: String,
        /// The digest as written.
        digest: String,
        /// What is wrong with the digest.
        why: String,
    },
    /// A referenced blob does not exist (or is a dangling symlink).
    #[error("{what}: blob {path} is missing")]
    MissingBlob {
        /// The descriptor at fault, e.g. `layer 2` and its digest.
        what: String,
        /// Where the blob should be.
        path: PathBuf,
    },
    /// A referenced blob is not a regular file.
    #[error("{what}: blob {path} is not a regular file")]
    NotRegular {
        /// The descriptor at fault, e.g. `layer 2` and its digest.
        what: String,
        /// The blob's path.
        path: PathBuf,
    },
    /// A blob's size differs from its descriptor's.
    #[error("{what}: blob {path} has {actual} bytes; the descriptor says {expected}")]
    SizeMismatch {
        /// The descriptor at fault, e.g. `layer 2` and its digest.
        what: String,
        /// The blob's file.
        path: String,
        /// What the descriptor says.
        expected: u64,
        /// What the blob has.
        actual: u64,
    },
    /// A blob's content does not have the digest of its descriptor.
    #[error("{what}: content of {path} has digest sha256:{actual}")]
    DigestMismatch {
        /// The descriptor at fault, e.g. `layer 2` and its digest.
        what: String,
        /// The blob's file.
        path: String,
        /// The hex SHA-256 of what the file holds.
        actual: String,
    },
    /// A descriptor's inline `data` is not valid base64.
    #[error("{what}: inline data is not valid base64: {why}")]
    InlineData {
        /// The descriptor at fault, e.g. `layer 2` and its digest.
        what: String,
        /// The decoder's complaint.
        why: String,
    },
    /// A JSON blob too large to read into memory.
    #[error("{what}: {size} bytes is too large for a JSON document (at most {max})")]
    TooLarge {
        /// The descriptor at fault, e.g. `layer 2` and its digest.
        what: String,
        /// The document's size in bytes.
        size: u64,
        /// The most bytes read into memory for one document.
        max: u64,
    },
    /// A document or descriptor of an unexpected media type.
    #[error("{what}: {field} is {found:?}; expected {expected}")]
    MediaType {
        /// The descriptor at fault, e.g. `layer 2` and its digest.
        what: String,
        /// The field that has the wrong media type.
        field: &'static str,
        /// The value found instead.
        found: String,
        /// The media types accepted here.
        expected: String,
    },
    /// A layer of a media type this reader cannot map into a disk.
    #[error("{what}: unsupported layer media type {media_type:?}; supported: {supported}")]
    LayerMediaType {
        /// The descriptor at fault, e.g. `layer 2` and its digest.
        what: String,
        /// The layer's media type.
        media_type: String,
        /// The media types this reader maps.
        supported: &'static str,
    },
    /// The Monogon OS image config is invalid.
    #[error(transparent)]
    Monogon(#[from] ConfigError),
    /// The Monogon config has a different number of payloads than the
    /// manifest has layers.
    #[error("{file}: {payloads} payloads, but the manifest has {layers} layers")]
    PayloadCount {
        /// The Monogon OS image config.
        file: String,
        /// Payloads the config lists.
        payloads: usize,
        /// Layers the manifest lists.
        layers: usize,
    },
    /// An uncompressed payload whose layer size differs from its size in the
    /// config.
    #[error("{what}: payload {name:?} has size {payload_size} in the config, but the layer has {layer_size} bytes")]
    PayloadSize {
        /// The layer, with its digest.
        what: String,
        /// The payload's name.
        name: String,
        /// The payload's size in the config.
        payload_size: u64,
        /// The layer blob's size.
        layer_size: u64,
    },
    /// A layer's blob could not be had from the chunk cache (a registry
    /// image: opening its cache file, or fetching a blob read whole).
    #[error("{what}: reading its blob through the chunk cache")]
    ChunkCache {
        /// The descriptor at fault, e.g. `layer 2` and its digest.
        what: String,
        /// What the chunk cache could not do.
        #[source]
        source: crate::chunkcache::ChunkCacheError,
    },
    /// A zstd layer could not be decompressed into the cache.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A payload chunk does not match its hash (found by `verify`).
    #[error("{what} ({path}): checking its chunks")]
    BadChunk {
        /// The payload, with its layer.
        what: String,
        /// The file the chunk was read from.
        path: String,
        /// Which chunk, and where it lies.
        #[source]
        source: BadChunk,
    },
    /// No layer has this index.
    #[error("layer {index}: no such layer; the image has {count} layers")]
    NoSuchLayerIndex {
        /// The 0-based layer index asked for.
        index: usize,
        /// Layers the image has.
        count: usize,
    },
    /// No layer has this digest.
    #[error("layer {digest}: no layer has this digest")]
    NoSuchLayerDigest {
        /// The digest asked for.
        digest: String,
    },
    /// The image has no payload of this name.
    #[error("payload {name:?} not found; the image has: {available}")]
    PayloadNotFound {
        /// The payload's name.
        name: String,
        /// The payload names the image has.
        available: String,
    },
    /// Payloads are looked up by name in an image that is not a Monogon OS
    /// image.
    #[error("payload {name:?}: the image is not a Monogon OS image, so its layers have no names")]
    NotMonogon {
        /// The payload's name.
        name: String,
    },
}
