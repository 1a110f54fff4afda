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
//! [`Chain::walk`] reads the descriptors (not the memory they point at)
//! and keeps what is structurally wrong with them as a [`Defect`] instead of
//! failing, because even a broken chain must be answered with a status.
//! [`guest_iovecs`] and [`guest_iovecs_out`] map a stream range to
//! buffers (address and length, never a Rust slice) so that the disk can
//! `preadv`/`pwritev` straight into or out of guest memory; [`read_stream`]
//! and [`write_stream`] copy the few small pieces the device itself reads or
//! writes (the header, a segment list, the serial number).
//!
//! This is the only place that turns guest memory into host buffers, so
//! the limits that bound that work ([`MAX_DESCRIPTORS`], [`MAX_SLICES`])
//! and the `unsafe` blocks that wrap the addresses live here too.

use blockio::{IoBuf, IoBufMut};
use smallvec::SmallVec;
use virtio_queue::desc::split::Descriptor;
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
    /// A descriptor index beyond its table.
    BadIndex { index: u16 },
    /// A descriptor outside guest memory.
    Unreadable { index: u16 },
    /// The chain visits more descriptors than its table holds.
    Loop,
    /// An indirect table that is empty, not whole descriptors, nested, or
    /// followed by more descriptors.
    BadIndirect,
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
    /// Walks the chain that starts at descriptor `head` of the descriptor
    /// table at `table` (of `queue_size` entries), following an indirect
    /// table if the chain refers to one, and sorts its descriptors into the
    /// two streams. Reads no guest memory but the descriptors themselves.
    ///
    /// Lengths add up in 64 bits, so no combination of descriptor lengths
    /// can end the walk early: a chain that has a status byte keeps it.
    pub(super) fn walk(
        mem: &GuestMemoryMmap,
        table: GuestAddress,
        queue_size: u16,
        head: u16,
    ) -> Self {
        let mut c = Chain {
            spans: SmallVec::new(),
            readable: 0,
            readable_len: 0,
            writable_len: 0,
            status_addr: None,
            defect: None,
        };
        let mut table = table;
        let mut entries = u32::from(queue_size);
        let mut index = head;
        let mut indirect = false;
        // A chain visits each entry of its table at most once; one more
        // descriptor than the table holds means it loops.
        let mut budget = entries;
        loop {
            if u32::from(index) >= entries {
                c.defect.get_or_insert(Defect::BadIndex { index });
                break;
            }
            let Some(desc) = read_descriptor(mem, table, index) else {
                c.defect.get_or_insert(Defect::Unreadable { index });
                break;
            };
            if budget == 0 {
                c.defect.get_or_insert(Defect::Loop);
                break;
            }
            budget -= 1;
            if desc.refers_to_indirect_table() {
                // An indirect table may only be the whole chain's single
                // entry of the queue's table (and never nest).
                let len = desc.len();
                if indirect || desc.has_next() || len == 0 || len % 16 != 0 {
                    c.defect.get_or_insert(Defect::BadIndirect);
                    break;
                }
                indirect = true;
                table = desc.addr();
                entries = len / 16;
                budget = entries;
                index = 0;
                continue;
            }
            c.add(desc.addr().0, desc.len(), desc.is_write_only());
            if !desc.has_next() {
                break;
            }
            index = desc.next();
        }
        c
    }

    /// Sorts `chain`'s descriptors into the two streams, as virtio-queue's
    /// iterator walks them (tests build chains with its mock queue).
    #[cfg(test)]
    pub(super) fn collect<M>(chain: virtio_queue::DescriptorChain<M>) -> Self
    where
        M: std::ops::Deref<Target = GuestMemoryMmap>,
    {
        let mut c = Chain {
            spans: SmallVec::new(),
            readable: 0,
            readable_len: 0,
            writable_len: 0,
            status_addr: None,
            defect: None,
        };
        for desc in chain {
            c.add(desc.addr().0, desc.len(), desc.is_write_only());
        }
        c
    }

    /// Adds one descriptor to its stream.
    fn add(&mut self, addr: u64, len: u32, writable: bool) {
        if len == 0 {
            return;
        }
        let Some(last) = addr.checked_add(u64::from(len) - 1) else {
            self.defect
                .get_or_insert(Defect::AddressOverflow { addr, len });
            return;
        };
        if writable {
            self.writable_len += u64::from(len);
            self.status_addr = Some(GuestAddress(last));
        } else if self.writable_len > 0 {
            self.defect.get_or_insert(Defect::Misordered);
            return;
        } else {
            self.readable_len += u64::from(len);
        }
        if self.spans.len() == MAX_DESCRIPTORS {
            self.defect.get_or_insert(Defect::TooManyDescriptors);
            return;
        }
        if !writable {
            self.readable += 1;
        }
        self.spans.push(Span { addr, len });
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

/// Descriptor `index` of the table at `table`, if guest memory holds it.
fn read_descriptor(mem: &GuestMemoryMmap, table: GuestAddress, index: u16) -> Option<Descriptor> {
    let addr = GuestAddress(table.0.checked_add(u64::from(index) * 16)?);
    mem.read_obj::<Descriptor>(addr).ok()
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

/// A scatter list over guest memory to fill, on the stack for common
/// requests.
pub type GuestIoVecs<'m> = SmallVec<[IoBufMut<'m>; INLINE_SEGMENTS]>;
/// A scatter list over guest memory to write out.
pub type GuestIoVecsOut<'m> = SmallVec<[IoBuf<'m>; INLINE_SEGMENTS]>;

/// Maps `[skip, skip + len)` of a stream of spans to buffers in guest
/// memory, for the disk to fill. The caller has checked that the stream
/// holds that many bytes.
pub(super) fn guest_iovecs<'m>(
    mem: &'m GuestMemoryMmap,
    spans: &[Span],
    skip: u64,
    len: u64,
) -> Result<GuestIoVecs<'m>, MemoryError> {
    let mut iovecs = GuestIoVecs::new();
    for_each_slice(mem, spans, skip, len, |ptr, n| {
        // SAFETY: see `for_each_slice`: `ptr` and `n` lie in one region of
        // `mem`, mapped for `'m`, and guest memory is never a Rust
        // reference, which is all `IoBufMut` asks.
        iovecs.push(unsafe { IoBufMut::from_raw_parts(ptr, n) });
    })?;
    Ok(iovecs)
}

/// Maps `[skip, skip + len)` of a stream of spans to buffers in guest
/// memory, for the disk to write out.
pub(super) fn guest_iovecs_out<'m>(
    mem: &'m GuestMemoryMmap,
    spans: &[Span],
    skip: u64,
    len: u64,
) -> Result<GuestIoVecsOut<'m>, MemoryError> {
    let mut iovecs = GuestIoVecsOut::new();
    for_each_slice(mem, spans, skip, len, |ptr, n| {
        // SAFETY: as in `guest_iovecs`.
        iovecs.push(unsafe { IoBuf::from_raw_parts(ptr, n) });
    })?;
    Ok(iovecs)
}

/// Calls `push` with the host address and length of each piece of guest
/// memory that `[skip, skip + len)` of a stream maps to, at most
/// [`MAX_SLICES`] of them.
///
/// The addresses lie inside one region of `mem` each, which vm-memory
/// bounds-checked, and stay mapped while `mem` lives: regions are unmapped
/// only when it is dropped. The guest shares that memory and may change it
/// at any time (a driver that breaks the rule that buffers belong to the
/// device until used, or overlapping descriptors); that is why the
/// addresses become `IoBufMut`/`IoBuf`, which never claim exclusive access,
/// and never slices.
fn for_each_slice(
    mem: &GuestMemoryMmap,
    spans: &[Span],
    skip: u64,
    len: u64,
    mut push: impl FnMut(*mut u8, usize),
) -> Result<(), MemoryError> {
    let mut count = 0usize;
    for (addr, n) in SubRanges::new(spans, skip, len) {
        let bad = || MemoryError::Unmapped {
            addr: addr.0,
            len: n,
        };
        // `n` fits in `usize`: it is at most one descriptor's `u32` length.
        for slice in GuestMemoryBackend::get_slices(mem, addr, n as usize) {
            let slice = slice.map_err(|_| bad())?;
            if count == MAX_SLICES {
                return Err(MemoryError::TooManySlices);
            }
            count += 1;
            push(slice.ptr_guard_mut().as_ptr(), slice.len());
        }
    }
    Ok(())
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
