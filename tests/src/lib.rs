//! Support code for the end-to-end tests.

pub mod blkio_client;
pub mod guest;
pub mod hostfs;
pub mod oci_writer;
pub mod registry;
pub mod sample;
pub mod uki;
pub mod vhost_frontend;
