//! Composes a VM disk from an OCI image, without copying any payload.
//!
//! The result is a [`BlockMap`]: a sorted, gap-free list of extents that
//! covers the whole disk, each one a range of a read-only blob file, bytes
//! generated in memory (MBR, GPT, FAT32 metadata), or zeros.
//!
//! - [`oci`] reads an OCI image layout and selects a manifest;
//! - [`monogon`] understands Monogon's OS image config and its payloads;
//! - [`cache`] decompresses zstd payloads once into a shared cache;
//! - [`source`] says where a run of bytes comes from;
//! - [`blockmap`] is the map and its lookup;
//! - [`gpt`] writes the protective MBR and both GPT copies;
//! - [`fat32`] synthesizes a FAT32 file system whose files point into blobs;
//! - [`spec`] describes a disk's partitions: the `monogon` preset or a TOML file;
//! - [`compose`](mod@compose) turns an image and a spec into a [`Disk`].

pub mod blockmap;
pub mod cache;
pub mod chunkcache;
pub mod compose;
pub mod export;
pub mod fat32;
pub mod gpt;
pub mod lazy_verify;
pub mod monogon;
pub mod oci;
pub mod source;
pub mod spec;

pub use blockmap::{BlockMap, BlockMapBuilder, Extent, MapSummary};
pub use compose::{compose, ComposeError, ComposeOptions, Disk, PartitionInfo};
pub use source::{BlobFile, ChunkGate, Content, Source};
pub use spec::{LayoutSpec, MonogonPreset};
