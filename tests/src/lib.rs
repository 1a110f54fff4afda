//! Support code for the end-to-end tests.
pub mod oci_writer;
