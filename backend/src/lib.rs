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
//! - [`remote_image`]: an image served straight from a registry;
//! - [`fuzzing`]: what the fuzz targets run;
//! - [`cmd`]: the commands of the binary, one module each.

// Module docs walk through their private helpers too; those links resolve
// under `cargo doc --document-private-items`, which is how to read them.
#![allow(rustdoc::private_intra_doc_links)]

pub mod cmd;
pub mod device;
pub mod disk;
pub mod fuzzing;
pub mod metrics;
pub mod prefetch;
pub mod remote_image;
pub mod vhost_user;
