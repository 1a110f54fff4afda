//! A per-VM copy-on-write overlay file for ocidisk.
//!
//! The guest's writes land in the overlay; everything it has not written
//! reads from a read-only base, any [`blockio::ReadAt`]. The file holds a
//! header (what the overlay is for), a map of two bits per 4 KiB block (from
//! the base, written, or zero) stored as checksummed pages in two copies,
//! and a sparse data area where block `i` always lives at the same offset.
//! `FORMAT.md` describes the bytes and why a crash at any instant leaves a
//! consistent disk. With a shadow directory
//! ([`Overlay::open_with_shadow`]), the map lives in a file on tmpfs, so a
//! crash of the process (not of the host) loses no completed request.
//!
//! ```
//! # use blockio::{IoBuf, IoBufMut};
//! # let dir = tempfile::tempdir().unwrap();
//! use overlay::{CreateOptions, Overlay};
//! let base = vec![7u8; 1 << 20];
//! let identity = blockio::BaseIdentity { manifest_digest: "sha256:00".into(), layout_hash: [0; 32] };
//! let path = dir.path().join("vm.overlay");
//! let ov = Overlay::create(&path, &CreateOptions { disk_size: 1 << 20, base: identity }).unwrap();
//! ov.write(100, &[IoBuf::new(b"hello")], &base).unwrap();
//! ov.flush().unwrap();
//! let mut buf = [0u8; 8];
//! ov.read(98, &mut [IoBufMut::new(&mut buf)], &base).unwrap();
//! assert_eq!(&buf, b"\x07\x07hello\x07");
//! ```

mod error;
mod files;
mod format;
mod header;
mod map;
mod options;
mod overlay;
mod shadow;
pub mod storage;
mod stripes;

pub use error::OverlayError;
pub use format::{BLOCK_SIZE, VERSION};
pub use header::{Change, Header, Usage};
pub use options::{CreateOptions, OpenOptions};
pub use overlay::Overlay;
pub use shadow::{ShadowStatus, DEFAULT_SHADOW_DIR};
