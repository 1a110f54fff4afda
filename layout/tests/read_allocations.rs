//! The read path of a block map allocates nothing, whatever the number of
//! buffers in a request (the device allows up to the queue size less two).
//! In its own test binary: it replaces the global allocator to count.

use blockio::IoBufMut;
use blockio::ReadAt as _;
use layout::blockmap::BlockMapBuilder;
use layout::source::{BlobFile, Content, Source};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write as _;
use std::sync::Arc;

/// Counts the allocations of the thread that is counting.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: the allocator also runs while thread locals are torn down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: our caller upholds alloc's contract; System gets it as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: `ptr` came from this allocator, i.e. from System, with
        // `layout`; the caller upholds realloc's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from System with `layout` (see realloc).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    COUNT.with(|c| c.get())
}

#[test]
fn a_64_segment_read_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 + i / 4096) as u8).collect();
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    let blob = Arc::new(BlobFile::open(&path).unwrap());
    let generated: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8 | 1).collect();
    let size = 4u64 << 20;
    let mut b = BlockMapBuilder::new(size);
    b.place("meta", 0, Content::bytes(generated.clone()))
        .place("blob", 1 << 20, Content::file(blob.clone()))
        .place(
            "blob tail",
            3 << 20,
            Content {
                source: Source::File {
                    file: blob,
                    offset: 4096,
                },
                len: 100_000,
            },
        );
    let map = b.build().unwrap();
    let mut flat = vec![0u8; size as usize];
    flat[..8192].copy_from_slice(&generated);
    flat[1 << 20..2 << 20].copy_from_slice(&data);
    flat[3 << 20..(3 << 20) + 100_000].copy_from_slice(&data[4096..4096 + 100_000]);

    // 64 segments of 4 KiB + 1 byte, so that pieces start and end inside
    // buffers: all within one blob extent, then across every kind of
    // extent (generated, zeros, blob, zeros, blob, zeros).
    for offset in [(1 << 20) + 17, 4000, (2 << 20) - 70_000, (3 << 20) - 5] {
        let mut out = vec![0xA5u8; 64 * 4097];
        let len = out.len();
        let mut bufs: Vec<IoBufMut> = out.chunks_mut(4097).map(IoBufMut::new).collect();
        assert_eq!(bufs.len(), 64);
        let mut result = Ok(());
        let n = allocations(|| result = map.read_vectored_at(offset, &mut bufs));
        result.unwrap();
        assert_eq!(n, 0, "{n} allocations reading 64 segments at {offset}");
        drop(bufs);
        let want = &flat[offset as usize..offset as usize + len];
        assert!(out == want, "wrong bytes at {offset}");
    }

    // The counter counts: the same read through a copy of the list does
    // allocate.
    let mut out = vec![0u8; 64 * 4097];
    let n = allocations(|| {
        let mut bufs: Vec<IoBufMut> = out.chunks_mut(4097).map(IoBufMut::new).collect();
        map.read_vectored_at(1 << 20, &mut bufs).unwrap();
    });
    assert!(n > 0);
}
