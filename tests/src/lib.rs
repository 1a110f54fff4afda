//! Support code for the end-to-end tests.

pub mod blkio_client;
pub mod cli;
pub mod guest;
pub mod hostfs;
pub mod registry;
pub mod sample;
pub mod uki;
pub mod vhost_frontend;

/// The OCI image writer lives in `ocidisk-testkit` (layout's tests use it
/// too); re-exported so `ocidisk_tests::oci_writer` keeps working.
pub use ocidisk_testkit::oci_writer;
