//! Copy-up granularity, pinned by counting the bytes a write reads from the
//! base: an aligned write reads nothing, an unaligned one at most one 4 KiB
//! block per unaligned end.

// Test code: a failed unwrap is a failed test, with its line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the test failing"
)]

mod common;

use blockio::{IoBuf, IoBufMut, ReadAt};
use common::{fresh_overlay, BS};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// A base of constant bytes that counts what is read from it.
struct CountingBase {
    size: u64,
    read: AtomicU64,
}

impl CountingBase {
    fn take(&self) -> u64 {
        self.read.swap(0, Ordering::SeqCst)
    }
}

impl ReadAt for CountingBase {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_vectored_at(&self, _offset: u64, bufs: &mut [IoBufMut<'_>]) -> io::Result<()> {
        for b in bufs.iter_mut() {
            b.fill(0xba);
            self.read.fetch_add(b.len() as u64, Ordering::SeqCst);
        }
        Ok(())
    }
}

#[test]
fn copy_up_reads_at_most_one_block_per_unaligned_end() {
    let size = 1024 * BS;
    let (_dir, ov) = fresh_overlay(1024, "granularity");
    let base = CountingBase {
        size,
        read: AtomicU64::new(0),
    };
    let data = vec![7u8; 1 << 20];
    let write = |off: u64, len: usize| {
        ov.write(off, &[IoBuf::new(&data[..len])], &base).unwrap();
        base.take()
    };
    // Aligned: no copy-up at all, 4 KiB or 1 MiB.
    assert_eq!(write(10 * BS, 4096), 0, "aligned 4 KiB");
    assert_eq!(write(256 * BS, 1 << 20), 0, "aligned 1 MiB");
    // Inside one fresh block: that block, once.
    assert_eq!(write(600 * BS + 100, 1000), 4096, "inside one block");
    // The same block again: already written, nothing to copy.
    assert_eq!(
        write(600 * BS + 2000, 1000),
        0,
        "rewrite of a written block"
    );
    // Straddling two fresh blocks, unaligned at both ends: one block per end.
    let n = write(700 * BS + 3000, 2000);
    assert!(n <= 8192, "straddling two blocks read {n}");
    assert_eq!(n, 8192, "both ends copied up");
    // A long unaligned write: still only its two end blocks.
    assert_eq!(write(800 * BS + 1, 64 * 4096), 8192, "long unaligned write");
    // Unaligned at one end only: one block.
    assert_eq!(write(900 * BS, 4096 + 512), 4096, "unaligned tail only");
}
