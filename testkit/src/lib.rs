//! Test fixtures shared by the crates' integration tests (`layout/tests/`)
//! and the end-to-end tests (`ocidisk-tests`). What is here needs neither
//! the `ocidisk` binary nor the backend library, so a library's tests can
//! use it without building the backend.
//!
//! A fixture that cannot do its job panics: that is a failed test, which is
//! what a test helper should give, so unwrap and expect are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cmd;
pub mod layout_support;
pub mod oci_writer;
