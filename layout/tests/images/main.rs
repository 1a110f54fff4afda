//! The layout crate's integration tests in one binary (one link instead of
//! eight; nextest still runs each test in its own process): OCI images
//! written by `ocidisk_testkit::oci_writer` opened, composed into disks and
//! checked with the real disk tools. Each module was once its own binary;
//! a test's name is `<module>::<test>`.
//!
//! `read_allocations` stays its own binary: it replaces the global
//! allocator.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed setup is a failed test"
)]

mod fat32_images;
mod layout_file;
mod layout_monogon;
mod layout_proptest;
mod oci_cache_default;
mod oci_errors;
mod oci_mutations;
mod oci_open;
