//! Zeroing and discarding whole blocks give the file's space back to the
//! host (`fallocate` punch-hole).

// Test code: a failed unwrap is a failed test, with its line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the test failing"
)]

mod common;

use blockio::IoBuf;
use common::{fresh_overlay, BS};
use overlay::Overlay;

const MIB: u64 = 1 << 20;

/// Writes 1 MiB, flushes, then releases it with `release`; returns the
/// allocation after the write and after the release.
fn allocated_around(release: impl Fn(&Overlay, &Vec<u8>)) -> (u64, u64) {
    let size = 1024 * BS;
    let (_dir, ov) = fresh_overlay(1024, "space");
    let base = vec![1u8; size as usize];
    ov.write(MIB, &[IoBuf::new(&vec![9u8; MIB as usize])], &base)
        .unwrap();
    ov.flush().unwrap();
    let written = ov.usage().unwrap().allocated_bytes;
    release(&ov, &base);
    ov.flush().unwrap();
    let usage = ov.usage().unwrap();
    assert_eq!(usage.blocks_written, 0);
    assert_eq!(usage.blocks_zero, 256);
    (written, usage.allocated_bytes)
}

fn assert_released(what: &str, (written, after): (u64, u64)) {
    // The header and map stay allocated; the megabyte of data must go
    // (give or take file system metadata).
    assert!(
        written >= after + MIB - 64 * 1024,
        "{what}: {written} bytes allocated after the write, {after} after releasing 1 MiB"
    );
}

#[test]
fn discard_releases_the_space() {
    assert_released(
        "discard",
        allocated_around(|ov, base| ov.discard(MIB, MIB, base).unwrap()),
    );
}

#[test]
fn write_zeroes_releases_the_space() {
    assert_released(
        "write_zeroes",
        allocated_around(|ov, base| ov.write_zeroes(MIB, MIB, base).unwrap()),
    );
}
