//! A small vhost-user frontend of our own, for hostile-frontend tests.
//!
//! Unlike libblkio or a VMM, it can send anything: well-formed messages in
//! any order, malformed ones, stray file descriptors, half messages. It
//! drives split virtqueues over guest memory the test owns (memfds mapped
//! in the test process), so a test can lay out any descriptor chain and
//! check afterwards that the backend wrote nothing outside the buffers it
//! was given.
//!
//! - [`conn`]: the socket and the message format (header, bodies,
//!   `SCM_RIGHTS`), raw bytes included;
//! - [`memory`]: guest memory with a canary pattern and a shadow copy;
//! - [`ring`]: a split virtqueue driver (descriptors, avail and used rings,
//!   kick and call eventfds) and virtio-blk requests;
//! - [`session`]: the usual setup sequence, step by step, and I/O helpers;
//! - [`backend`]: runs `ocidisk serve` with a bounded log and watches its
//!   CPU time, file descriptors and exit;
//! - [`fixture`]: a sample image and overlay, and the end-of-test checks
//!   (blobs unchanged, overlay holding exactly the expected writes).

pub mod backend;
pub mod conn;
pub mod fixture;
pub mod memory;
pub mod ring;
pub mod session;

use std::time::Duration;

/// How long any single wait of the frontend may take (a reply, a used
/// element). Every wait is bounded, so a wedged backend fails the test
/// instead of hanging the runner.
pub const WAIT: Duration = Duration::from_secs(5);
