//! ocidisk, the library behind the `ocidisk` binary: a vhost-user-blk
//! device whose disk is composed from an OCI image, with a copy-on-write
//! overlay per VM.
//!
//! - [`vhost_user`]: the protocol — messages, guest memory, virtqueue
//!   workers, the inflight region;
//! - [`device`]: the virtio-blk device — chains, typed requests, their
//!   execution and the I/O engines;
//! - [`disk`]: what the device serves (the composed image, its overlay);
//! - [`metrics`]: request counters, latency histograms and traces;
//! - [`fuzzing`]: what the fuzz targets run;
//! - the commands: [`serve`], [`inspect`], [`export`], [`pull`],
//!   [`overlay_cmd`], [`stats_cmd`], [`trace_cmd`] (with [`image_args`], how
//!   they name an image, and [`registry_args`], how they reach a registry).

// Module docs walk through their private helpers too; those links resolve
// under `cargo doc --document-private-items`, which is how to read them.
#![allow(rustdoc::private_intra_doc_links)]

pub mod cache_cmd;
pub mod device;
pub mod disk;
pub mod export;
pub mod fuzzing;
pub mod image_args;
pub mod inspect;
pub mod metrics;
pub mod overlay_cmd;
pub mod pull;
pub mod registry_args;
pub mod remote_image;
pub mod serve;
pub mod stats_cmd;
pub mod trace_cmd;
pub mod vhost_user;
