//! The vhost-user-blk device.
//!
//! - [`config`]: feature bits, limits and the `virtio_blk_config` space;
//! - [`chain`]: walks a descriptor chain into its device-readable and
//!   device-writable byte streams and maps them to guest memory;
//! - [`request`]: the typed request: header, type, segment lists, errors and
//!   the status each maps to (and the names the engines use);
//! - [`execute`]: carries a request out on a
//!   [`BlockDevice`](crate::disk::BlockDevice) and writes its status;
//! - [`engine`]: how a queue's requests reach the disk (io_uring, or
//!   blocking calls);
//! - [`parallel`]: helper threads that share large transfers;
//! - [`backend`]: [`BlkBackend`], the device that runs each
//!   virtqueue on its own worker thread.

pub mod backend;
pub mod chain;
pub mod config;
pub mod engine;
pub mod execute;
pub mod parallel;
pub mod request;

pub use backend::{BlkBackend, GuestMemory, Stats};
pub use config::DeviceConfig;
