//! Support code for the end-to-end tests.

pub mod guest;
pub mod oci_writer;
pub mod sample;
pub mod uki;
