//! Descriptor chains and the guest memory they point at: the first step of
//! a request, before anything about virtio-blk is known.
//!
//! A chain's descriptors form two byte streams: the device-readable
//! descriptors (which come first) and the device-writable ones. The driver
//! may split either stream wherever it likes, so the device must not assume
//! a framing; everything above this module addresses the streams by byte
//! offset, and only here are offsets turned into descriptors and guest
//! addresses.
//!
//! [`Chain::collect`] reads the descriptors (not the memory they point at)
//! and keeps what is structurally wrong with them as a [`Defect`] instead of
//! failing, because even a broken chain must be answered with a status.
//! [`guest_iovecs`] maps a stream range to host buffers so that the disk can
//! `preadv`/`pwritev` straight into or out of guest memory; [`read_stream`]
//! and [`write_stream`] copy the few small pieces the device itself reads or
//! writes (the header, a segment list, the serial number).
//!
//! This is the only place that turns guest memory into host slices, so the
//! limits that bound that work ([`MAX_DESCRIPTORS`], [`MAX_SLICES`]) and
//! its one `unsafe` block live here too.

use smallvec::SmallVec;
use std::io::IoSliceMut;
use std::ops::Deref;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Descriptors a chain may have. Linux sends at most `seg_max + 2`, and
/// `seg_max` is below the largest queue size; more is a broken driver.
pub const MAX_DESCRIPTORS: usize = 4096;
/// Memory slices one request's data may map to (descriptors, each split
/// where guest memory regions end).
pub const MAX_SLICES: usize = 8192;
/// Memory slices kept on the stack; larger requests allocate once.
pub const INLINE_SEGMENTS: usize = 32;
/// Descriptors kept on the stack while parsing a chain.
const INLINE_DESCRIPTORS: usize = 16;

/// One descriptor's guest memory range.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    addr: u64,
    len: u32,
}

/// A chain's descriptors, sorted into the readable and writable streams.
pub(super) struct Chain {
    /// Readable spans first, then writable ones.
    spans: SmallVec<[Span; INLINE_DESCRIPTORS]>,
    /// How many of `spans` are readable.
    readable: usize,
    /// Bytes in the readable stream.
    pub(super) readable_len: u64,
    /// Bytes in the writable stream.
    pub(super) writable_len: u64,
    /// Where the status byte goes: the last byte of the last writable
    /// descriptor, kept even when the chain is otherwise malformed.
    pub(super) status_addr: Option<GuestAddress>,
    /// The first structural problem found, if any.
    pub(super) defect: Option<Defect>,
}

/// A chain's structural problems, found while collecting its descriptors.
#[derive(Debug, Clone, Copy)]
pub(super) enum Defect {
    /// A device-readable descriptor follows a device-writable one.
    Misordered,
    /// More than [`MAX_DESCRIPTORS`] descriptors.
    TooManyDescriptors,
    /// A descriptor's range wraps around the guest address space.
    AddressOverflow { addr: u64, len: u32 },
}

/// Why a range of a stream cannot be used as guest memory.
#[derive(Debug, Clone, Copy)]
pub(super) enum MemoryError {
    /// Part of the range is not guest memory.
    Unmapped { addr: u64, len: u64 },
    /// The range maps to more than [`MAX_SLICES`] memory slices.
    TooManySlices,
}

impl Chain {
    /// Sorts `chain`'s descriptors into the two streams. Reads no guest
    /// memory but the descriptors themselves.
    pub(super) fn collect<M>(chain: DescriptorChain<M>) -> Self
    where
        M: Deref<Target = GuestMemoryMmap>,
    {
        let mut c = Chain {
            spans: SmallVec::new(),
            readable: 0,
            readable_len: 0,
            writable_len: 0,
            status_addr: None,
            defect: None,
        };
        // The iterator ends at the last descriptor, at a loop (its length is
        // bounded by the queue or table size), or at a descriptor it cannot
        // read; a truncated chain is then simply too short.
        for desc in chain {
            let (addr, len) = (desc.addr().0, desc.len());
            if len == 0 {
                continue;
            }
            let Some(last) = addr.checked_add(u64::from(len) - 1) else {
                c.defect
                    .get_or_insert(Defect::AddressOverflow { addr, len });
                continue;
            };
            if desc.is_write_only() {
                c.writable_len += u64::from(len);
                c.status_addr = Some(GuestAddress(last));
            } else if c.writable_len > 0 {
                c.defect.get_or_insert(Defect::Misordered);
                continue;
            } else {
                c.readable += 1;
                c.readable_len += u64::from(len);
            }
            if c.spans.len() == MAX_DESCRIPTORS {
                c.defect.get_or_insert(Defect::TooManyDescriptors);
                continue;
            }
            c.spans.push(Span { addr, len });
        }
        c
    }

    /// The device-readable stream.
    pub(super) fn readable(&self) -> &[Span] {
        &self.spans[..self.readable]
    }

    /// The device-writable stream.
    pub(super) fn writable(&self) -> &[Span] {
        &self.spans[self.readable..]
    }
}

/// Walks `[skip, skip + len)` of a stream of spans as guest ranges.
struct SubRanges<'a> {
    spans: std::slice::Iter<'a, Span>,
    skip: u64,
    left: u64,
}

impl<'a> SubRanges<'a> {
    fn new(spans: &'a [Span], skip: u64, len: u64) -> Self {
        Self {
            spans: spans.iter(),
            skip,
            left: len,
        }
    }
}

impl Iterator for SubRanges<'_> {
    type Item = (GuestAddress, u64);

    fn next(&mut self) -> Option<Self::Item> {
        while self.left > 0 {
            let span = self.spans.next()?;
            let span_len = u64::from(span.len);
            if self.skip >= span_len {
                self.skip -= span_len;
                continue;
            }
            let start = std::mem::take(&mut self.skip);
            let n = (span_len - start).min(self.left);
            self.left -= n;
            // Cannot overflow: `Chain::collect` checked `addr + len - 1`.
            return Some((GuestAddress(span.addr + start), n));
        }
        None
    }
}

/// A scatter list over guest memory, on the stack for common requests.
pub type GuestIoVecs<'m> = SmallVec<[IoSliceMut<'m>; INLINE_SEGMENTS]>;

/// Maps `[skip, skip + len)` of a stream of spans to host buffers in guest
/// memory. The caller has checked that the stream holds that many bytes.
pub(super) fn guest_iovecs<'m>(
    mem: &'m GuestMemoryMmap,
    spans: &[Span],
    skip: u64,
    len: u64,
) -> Result<GuestIoVecs<'m>, MemoryError> {
    let mut iovecs = GuestIoVecs::new();
    for (addr, n) in SubRanges::new(spans, skip, len) {
        let bad = || MemoryError::Unmapped {
            addr: addr.0,
            len: n,
        };
        // `n` fits in `usize`: it is at most one descriptor's `u32` length.
        for slice in GuestMemoryBackend::get_slices(mem, addr, n as usize) {
            let slice = slice.map_err(|_| bad())?;
            if iovecs.len() == MAX_SLICES {
                return Err(MemoryError::TooManySlices);
            }
            let ptr = slice.ptr_guard_mut().as_ptr();
            // SAFETY: `ptr` and `slice.len()` describe memory inside one
            // region of `mem`, which vm-memory bounds-checked, and which stays
            // mapped for `'m` because regions are unmapped only when `mem` is
            // dropped. The memory is shared with the guest, which may touch it
            // concurrently; that only happens if the driver breaks the virtio
            // rule that buffers belong to the device until they are used, and
            // then only garbles bytes of that guest's own request: this
            // process never interprets the data it moves, only hands it to
            // `preadv`/`pwritev` (or, in tests, copies it). Overlapping
            // descriptors alias the same way, with the same consequence.
            let buf = unsafe { std::slice::from_raw_parts_mut(ptr, slice.len()) };
            iovecs.push(IoSliceMut::new(buf));
        }
    }
    Ok(iovecs)
}

/// Copies `buf.len()` bytes from offset `skip` of a stream into `buf`.
pub(super) fn read_stream(
    mem: &GuestMemoryMmap,
    spans: &[Span],
    skip: u64,
    buf: &mut [u8],
) -> Result<(), MemoryError> {
    let mut pos = 0usize;
    for (addr, n) in SubRanges::new(spans, skip, buf.len() as u64) {
        let n = n as usize;
        mem.read_slice(&mut buf[pos..pos + n], addr)
            .map_err(|_| MemoryError::Unmapped {
                addr: addr.0,
                len: n as u64,
            })?;
        pos += n;
    }
    Ok(())
}

/// Copies `buf` to offset `skip` of a stream.
pub(super) fn write_stream(
    mem: &GuestMemoryMmap,
    spans: &[Span],
    skip: u64,
    buf: &[u8],
) -> Result<(), MemoryError> {
    let mut pos = 0usize;
    for (addr, n) in SubRanges::new(spans, skip, buf.len() as u64) {
        let n = n as usize;
        mem.write_slice(&buf[pos..pos + n], addr)
            .map_err(|_| MemoryError::Unmapped {
                addr: addr.0,
                len: n as u64,
            })?;
        pos += n;
    }
    Ok(())
}
