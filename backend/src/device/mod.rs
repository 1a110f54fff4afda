//! The vhost-user-blk device.
//!
//! - [`config`]: feature bits, limits and the `virtio_blk_config` space;
//! - [`request`]: parses a request from a descriptor chain, carries it out on
//!   a [`BlockDevice`](crate::disk::BlockDevice) and writes its status;
//! - [`parallel`]: helper threads that share large transfers;
//! - [`backend`]: [`BlkBackend`], the `VhostUserBackend` that runs each
//!   virtqueue on its own worker thread.

pub mod backend;
pub mod config;
pub mod engine;
pub mod parallel;
pub mod request;

pub use backend::{BlkBackend, GuestMemory, Stats};
pub use config::DeviceConfig;
