//! Support code for the end-to-end tests.
pub mod blkio_client;
pub mod oci_writer;
