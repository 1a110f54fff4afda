//! Carrying a [`Request`] out on a [`BlockDevice`] and answering it: the
//! last step of a request, from its type to the syscall and the status byte.
//!
//! A request runs in three steps, so that an engine can do the slow middle
//! one its own way:
//!
//! 1. [`RequestContext::begin`] parses the request, checks it against the
//!    disk, and carries out at once what needs no I/O (GET_ID) or is quick
//!    (discard, write-zeroes). What is left is an [`Action`]: a read, a
//!    write or a flush.
//! 2. The action runs: with blocking calls on this thread
//!    ([`RequestContext::run_blocking`]), with a read cut into pieces that
//!    helper threads share ([`RequestContext::complete_shared`]), or on an
//!    io_uring ([`engine`](super::engine)). A read's pieces are folded into
//!    a [`ReadOutcome`].
//! 3. [`RequestContext::end`] writes the status and says what to put on the
//!    used ring.
//!
//! [`RequestContext::complete`] does all three for one request.
//!
//! Data moves between the disk and guest memory directly: the data ranges
//! are turned into buffers over the mapped guest memory
//! ([`blockio::IoBufMut`] and [`blockio::IoBuf`]: address and length, never
//! a Rust slice, since the guest may touch them) and handed to the disk,
//! which `preadv`s/`pwritev`s into or out of them. Scatter lists live on the
//! stack ([`SmallVec`]) unless a request has more than
//! [`INLINE_SEGMENTS`](crate::device::chain::INLINE_SEGMENTS) memory slices.

use crate::device::config::{MAX_DISCARD_SECTORS, SECTOR_SHIFT, SERIAL_LEN};
use crate::device::parallel::Helpers;
use crate::device::request::{Completion, Request, RequestError, RequestType, Summary, S_OK};
use crate::disk::{BlockDevice, ReadSources};
use smallvec::SmallVec;
use std::ops::Range;
use std::sync::Mutex;
use virtio_bindings::virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
use vm_memory::GuestMemoryMmap;

/// The most requests the device hands to
/// [`RequestContext::complete_shared`] at once, all kept on the stack there
/// (more would work, on the heap). Sixteen 1 MiB reads keep a few cores busy
/// for milliseconds; more would only delay the first completion.
pub const MAX_BATCH: usize = 16;

/// What is left to do of a request once it has been parsed and checked:
/// the part an engine may carry out asynchronously.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing but writing the status (the request failed, or was done
    /// while it was parsed: GET_ID).
    None,
    /// Read `len` bytes at disk `offset` into the data-in stream.
    Read {
        /// Where on the disk it starts.
        offset: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// Write the data-out stream (after the header), `len` bytes, at disk
    /// `offset`.
    Write {
        /// Where on the disk it starts.
        offset: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// Make every completed write durable.
    Flush,
    /// The request changed the disk while it was parsed (discard,
    /// write-zeroes); with the write cache off it completes only once that
    /// change is durable.
    Changed,
}

/// A request parsed and checked, its outcome so far, and what is left to do.
pub struct Begun {
    result: Result<u64, RequestError>,
    summary: Summary,
    action: Action,
}

impl Begun {
    /// What is left to do.
    pub fn action(&self) -> Action {
        self.action
    }

    /// Records that the action failed: the request gets an error status.
    pub fn fail(&mut self, err: RequestError) {
        self.result = Err(err);
        self.action = Action::None;
    }

    /// The read's disk offset and length, `(0, 0)` if there is nothing to
    /// read.
    fn transfer(&self) -> (u64, u64) {
        match self.action {
            Action::Read { offset, len } => (offset, len),
            _ => (0, 0),
        }
    }
}

/// The pieces of a read's transfer, folded: where their bytes came from, or
/// the first error.
#[derive(Default)]
pub struct ReadOutcome(Option<Result<ReadSources, RequestError>>);

impl ReadOutcome {
    /// Counts one piece's outcome.
    pub fn add(&mut self, piece: Result<ReadSources, RequestError>) {
        self.0 = Some(match self.0.take() {
            None => piece,
            Some(Ok(a)) => piece.map(|b| ReadSources {
                base: a.base + b.base,
                overlay: a.overlay + b.overlay,
            }),
            Some(Err(e)) => Err(e),
        });
    }
}

/// What the device needs to carry out requests.
pub struct RequestContext<'a> {
    /// The disk.
    pub disk: &'a dyn BlockDevice,
    /// The serial number for GET_ID.
    pub serial: &'a [u8; SERIAL_LEN],
}

impl RequestContext<'_> {
    /// Carries out `request` and writes its status. Never fails: the outcome
    /// goes to the driver.
    pub fn complete(&self, mem: &GuestMemoryMmap, request: &Request) -> Completion {
        let mut begun = self.begin(mem, request);
        self.run_blocking(mem, request, &mut begun);
        let mut read = ReadOutcome::default();
        if let Action::Read { len, .. } = begun.action {
            if len > 0 {
                read.add(self.read_piece(mem, request, &begun, 0..len));
            }
        }
        self.end(mem, request, begun, read)
    }

    /// Carries out `requests` (each with the guest memory view it was popped
    /// under) as [`complete`](Self::complete) does, with the reads' data
    /// transfers cut into pieces that this thread and `helpers` share; then
    /// calls `done(i, completion)` for each request in order.
    pub fn complete_shared(
        &self,
        helpers: &Helpers,
        requests: &[(&GuestMemoryMmap, &Request)],
        mut done: impl FnMut(usize, Completion),
    ) {
        let begun: SmallVec<[Begun; MAX_BATCH]> = requests
            .iter()
            .map(|&(mem, request)| {
                let mut begun = self.begin(mem, request);
                self.run_blocking(mem, request, &mut begun);
                begun
            })
            .collect();
        let transfers: SmallVec<[(u64, u64); MAX_BATCH]> =
            begun.iter().map(Begun::transfer).collect();
        let outcomes: SmallVec<[Mutex<ReadOutcome>; MAX_BATCH]> =
            begun.iter().map(|_| Mutex::default()).collect();
        helpers.for_each_piece(&transfers, |i, range| {
            let piece = self.read_piece(requests[i].0, requests[i].1, &begun[i], range);
            let mut outcome = outcomes[i].lock().unwrap_or_else(|e| e.into_inner());
            outcome.add(piece);
        });
        for (i, (begun, outcome)) in begun.into_iter().zip(outcomes).enumerate() {
            let outcome = outcome.into_inner().unwrap_or_else(|e| e.into_inner());
            done(i, self.end(requests[i].0, requests[i].1, begun, outcome));
        }
    }

    /// Parses and checks `request` and carries out what needs no I/O
    /// (GET_ID) or is quick (discard, write-zeroes); reads, writes and
    /// flushes are left as the [`Begun::action`], for the caller to carry
    /// out and then [`end`](Self::end).
    pub fn begin(&self, mem: &GuestMemoryMmap, request: &Request) -> Begun {
        let mut summary = Summary::default();
        let mut action = Action::None;
        let result = self.start(mem, request, &mut summary, &mut action);
        if result.is_err() {
            action = Action::None;
        }
        Begun {
            result,
            summary,
            action,
        }
    }

    /// [`begin`](Self::begin)'s work; returns the number of data-in bytes
    /// written. Fills `summary` as soon as the header is known, so that
    /// failed requests are counted under their type too. A read's data
    /// transfer is not done here but described in `action`.
    fn start(
        &self,
        mem: &GuestMemoryMmap,
        request: &Request,
        summary: &mut Summary,
        action: &mut Action,
    ) -> Result<u64, RequestError> {
        let parsed = request.parse(mem)?;
        let (kind, sector, data_out, data_in) =
            (parsed.kind, parsed.sector, parsed.data_out, parsed.data_in);
        *summary = Summary {
            kind: Some(kind),
            offset: sector.saturating_mul(1 << SECTOR_SHIFT),
            ..Summary::default()
        };
        let disk = self.disk;
        match kind {
            RequestType::In => {
                parsed.no_data_out()?;
                let offset = self.data_range(sector, data_in)?;
                summary.len = data_in;
                *action = Action::Read {
                    offset,
                    len: data_in,
                };
                Ok(data_in)
            }
            RequestType::Out => {
                parsed.no_data_in()?;
                if disk.read_only() {
                    return Err(RequestError::ReadOnly(kind.raw()));
                }
                let offset = self.data_range(sector, data_out)?;
                summary.len = data_out;
                *action = Action::Write {
                    offset,
                    len: data_out,
                };
                Ok(0)
            }
            RequestType::Flush => {
                parsed.no_data_out()?;
                parsed.no_data_in()?;
                *action = Action::Flush;
                Ok(0)
            }
            RequestType::GetId => {
                parsed.no_data_out()?;
                let n = data_in.min(SERIAL_LEN as u64);
                summary.len = n;
                request.write_data_in(mem, &self.serial[..n as usize])?;
                Ok(n)
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                parsed.no_data_in()?;
                if disk.read_only() {
                    return Err(RequestError::ReadOnly(kind.raw()));
                }
                // The header's sector means nothing here; the trace and
                // metrics place the request at its first segment.
                let (offset, len) = self.discard_or_zero(mem, request, kind, data_out)?;
                summary.offset = offset;
                summary.len = len;
                *action = Action::Changed;
                Ok(0)
            }
            RequestType::Unsupported(raw) => Err(RequestError::UnsupportedType(raw)),
        }
    }

    /// Checks a read or write range; returns its byte offset.
    fn data_range(&self, sector: u64, len: u64) -> Result<u64, RequestError> {
        if !len.is_multiple_of(1 << SECTOR_SHIFT) {
            return Err(RequestError::UnalignedLength(len));
        }
        disk_range(sector, len, self.disk.size())
    }

    /// Reads, checks and carries out a discard or write-zeroes segment list
    /// of `len` bytes; returns the byte offset of its first segment and the
    /// bytes it covers. All segments are checked
    /// before the first is carried out, so that a bad list changes nothing.
    fn discard_or_zero(
        &self,
        mem: &GuestMemoryMmap,
        request: &Request,
        kind: RequestType,
        len: u64,
    ) -> Result<(u64, u64), RequestError> {
        let segments = request.segments(mem, len)?;
        let zero = kind == RequestType::WriteZeroes;
        let allowed_flags = if zero {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        let size = self.disk.size();
        let mut covered = 0u64;
        for seg in segments.iter() {
            if seg.flags & !allowed_flags != 0 {
                return Err(RequestError::UnsupportedFlags(seg.flags));
            }
            if seg.num_sectors > MAX_DISCARD_SECTORS {
                return Err(RequestError::SegmentTooLarge(seg.num_sectors));
            }
            disk_range(seg.sector, u64::from(seg.num_sectors) << SECTOR_SHIFT, size)?;
            covered += u64::from(seg.num_sectors) << SECTOR_SHIFT;
        }
        for seg in segments.iter() {
            let offset = seg.sector << SECTOR_SHIFT;
            let len = u64::from(seg.num_sectors) << SECTOR_SHIFT;
            if len == 0 {
                continue;
            }
            if zero {
                let unmap = seg.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
                self.disk.write_zeroes(offset, len, unmap)?;
            } else {
                self.disk.discard(offset, len)?;
            }
        }
        let first = segments
            .iter()
            .next()
            .map_or(0, |seg| seg.sector << SECTOR_SHIFT);
        Ok((first, covered))
    }

    /// Carries out a begun request's write or flush with blocking calls on
    /// this thread. Reads are left to the caller (they may be shared out in
    /// pieces); a change made while parsing needs nothing more here, since
    /// a disk in write-through mode made it durable already.
    pub fn run_blocking(&self, mem: &GuestMemoryMmap, request: &Request, begun: &mut Begun) {
        let result = match begun.action {
            Action::Write { offset, len } => self.write_now(mem, request, offset, len),
            Action::Flush => self.disk.flush().map_err(RequestError::from),
            Action::None | Action::Read { .. } | Action::Changed => return,
        };
        match result {
            Ok(()) => begun.action = Action::None,
            Err(err) => begun.fail(err),
        }
    }

    /// Writes the data-out stream at disk `offset` with one blocking call.
    pub fn write_now(
        &self,
        mem: &GuestMemoryMmap,
        request: &Request,
        offset: u64,
        len: u64,
    ) -> Result<(), RequestError> {
        if len == 0 {
            return Ok(());
        }
        let bufs = request.data_out(mem, len)?;
        self.disk.write(offset, &bufs)?;
        Ok(())
    }

    /// Reads bytes `range` of `begun`'s pending read into their place in
    /// guest memory.
    fn read_piece(
        &self,
        mem: &GuestMemoryMmap,
        request: &Request,
        begun: &Begun,
        range: Range<u64>,
    ) -> Result<ReadSources, RequestError> {
        match begun.action {
            Action::Read { offset, .. } => self.read_into(mem, request, offset, range),
            _ => Ok(ReadSources::default()),
        }
    }

    /// Reads bytes `range` of a read at disk `offset` into their place in the
    /// request's data-in stream.
    fn read_into(
        &self,
        mem: &GuestMemoryMmap,
        request: &Request,
        offset: u64,
        range: Range<u64>,
    ) -> Result<ReadSources, RequestError> {
        let len = range.end.saturating_sub(range.start);
        let mut bufs = request.data_in_range(mem, range.start, len)?;
        Ok(self.disk.read(offset + range.start, &mut bufs)?)
    }

    /// Writes the status of a request [`begin`](Self::begin) started;
    /// `read` holds the pieces of its read's transfer, if it had one.
    pub fn end(
        &self,
        mem: &GuestMemoryMmap,
        request: &Request,
        begun: Begun,
        read: ReadOutcome,
    ) -> Completion {
        let Begun {
            mut result,
            mut summary,
            ..
        } = begun;
        match read.0 {
            Some(Ok(sources)) => {
                summary.base_bytes = sources.base;
                summary.overlay_bytes = sources.overlay;
            }
            Some(Err(err)) => result = Err(err),
            None => {}
        }
        let head = request.head();
        if let Err(err) = &result {
            tracing::debug!(head, "request failed: {}", blockio::error_chain(err));
        }
        let (status, data_in) = match result {
            Ok(n) => (S_OK, n),
            Err(err) => (err.status(), 0),
        };
        if request.write_status(mem, status) {
            Completion {
                head,
                // At most the writable length, which the chain iterator keeps
                // within `u32`.
                used_len: u32::try_from(data_in + 1).unwrap_or(u32::MAX),
                status: Some(status),
                summary,
            }
        } else {
            tracing::debug!(head, "request has no writable status byte");
            Completion {
                head,
                used_len: 0,
                status: None,
                summary,
            }
        }
    }
}

/// Checks that `len` bytes from `sector` lie within a disk of `size` bytes
/// and returns the byte offset.
fn disk_range(sector: u64, len: u64, size: u64) -> Result<u64, RequestError> {
    let out_of_range = || RequestError::OutOfRange { sector, len, size };
    let offset = sector
        .checked_mul(1 << SECTOR_SHIFT)
        .ok_or_else(out_of_range)?;
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(offset),
        _ => Err(out_of_range()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::chain::MAX_DESCRIPTORS;
    use crate::device::config::MAX_DISCARD_SEG;
    use crate::device::request::{S_IOERR, S_UNSUPP};
    use crate::disk::memory::MemoryDisk;
    use std::sync::atomic::Ordering;
    use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    };
    use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const DISK_SIZE: usize = 64 * 1024;
    /// Two guest memory regions meet here, so a descriptor can span both.
    const REGION_SPLIT: u64 = 0x8_0000;
    const MEM_END: u64 = 0x10_0000;
    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;
    const SERIAL: &[u8; SERIAL_LEN] = b"ocidisk-serial-00001";

    /// A descriptor: guest address, length, device-writable.
    type D = (u64, u32, bool);
    /// A discard/write-zeroes segment: sector, number of sectors, flags.
    type Seg = (u64, u32, u32);

    struct Harness {
        mem: GuestMemoryMmap,
        disk: MemoryDisk,
        helpers: Option<Helpers>,
    }

    impl Harness {
        fn new() -> Self {
            Self::with_disk_size(DISK_SIZE)
        }

        fn with_disk_size(size: usize) -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[
                (GuestAddress(0), REGION_SPLIT as usize),
                (
                    GuestAddress(REGION_SPLIT),
                    (MEM_END - REGION_SPLIT) as usize,
                ),
            ])
            .unwrap();
            // A recognizable disk: byte i holds i / 512 (the sector number).
            let disk = MemoryDisk::new(size, 0);
            for (i, b) in disk.data.lock().unwrap().iter_mut().enumerate() {
                *b = (i / 512) as u8;
            }
            Self {
                mem,
                disk,
                helpers: None,
            }
        }

        fn read_only() -> Self {
            let mut h = Self::new();
            h.disk.read_only = true;
            h
        }

        fn header(&self, kind: u32, sector: u64) {
            let mut hdr = [0u8; 16];
            hdr[0..4].copy_from_slice(&kind.to_le_bytes());
            hdr[8..16].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
        }

        fn raw(addr: u64, len: u32, write: bool) -> RawDescriptor {
            let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
        }

        /// Runs a chain; the summary is checked on its own
        /// (`summarized`), so the outcome compares without it.
        fn run_raw(&self, descs: &[RawDescriptor]) -> Completion {
            Completion {
                summary: Summary::default(),
                ..self.run_summarized(descs)
            }
        }

        fn run_summarized(&self, descs: &[RawDescriptor]) -> Completion {
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            let queue = MockSplitQueue::new(&self.mem, 256);
            let chain = queue.build_desc_chain(descs).unwrap();
            let ctx = RequestContext {
                disk: &self.disk,
                serial: SERIAL,
            };
            let request = Request::new(chain);
            let Some(helpers) = &self.helpers else {
                return ctx.complete(&self.mem, &request);
            };
            let mut completion = None;
            ctx.complete_shared(helpers, &[(&self.mem, &request)], |_, c| {
                completion = Some(c)
            });
            completion.expect("complete_shared completes every request")
        }

        fn run(&self, descs: &[D]) -> Completion {
            Completion {
                summary: Summary::default(),
                ..self.run_with_summary(descs)
            }
        }

        fn run_with_summary(&self, descs: &[D]) -> Completion {
            let raw: Vec<_> = descs.iter().map(|&(a, l, w)| Self::raw(a, l, w)).collect();
            self.run_summarized(&raw)
        }

        /// A request with the usual framing: header, data, status.
        fn request(&self, kind: u32, sector: u64, data: Option<D>) -> Completion {
            self.request_descs(kind, sector, data.as_slice())
        }

        /// A request with the header, `data` and the status.
        fn request_descs(&self, kind: u32, sector: u64, data: &[D]) -> Completion {
            self.header(kind, sector);
            let mut descs = vec![(HDR, 16, false)];
            descs.extend_from_slice(data);
            descs.push((STATUS, 1, true));
            self.run(&descs)
        }

        fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0u8; len];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            buf
        }

        fn status(&self) -> u8 {
            self.mem.read_obj(GuestAddress(STATUS)).unwrap()
        }

        fn disk(&self) -> Vec<u8> {
            self.disk.data.lock().unwrap().clone()
        }

        fn modifications(&self) -> usize {
            self.disk.modifications.load(Ordering::SeqCst)
        }

        fn segments(&self, addr: u64, segs: &[Seg]) -> u32 {
            let mut raw = Vec::new();
            for &(sector, n, flags) in segs {
                raw.extend_from_slice(&sector.to_le_bytes());
                raw.extend_from_slice(&n.to_le_bytes());
                raw.extend_from_slice(&flags.to_le_bytes());
            }
            self.mem.write_slice(&raw, GuestAddress(addr)).unwrap();
            raw.len() as u32
        }
    }

    fn sectors(first: u8, count: usize) -> Vec<u8> {
        (0..count)
            .flat_map(|s| std::iter::repeat_n(first + s as u8, 512))
            .collect()
    }

    fn ok(head: u16, used_len: u32) -> Completion {
        Completion {
            head,
            used_len,
            status: Some(S_OK),
            summary: Summary::default(),
        }
    }

    fn failed(status: u8) -> Completion {
        Completion {
            head: 0,
            used_len: 1,
            status: Some(status),
            summary: Summary::default(),
        }
    }

    #[test]
    fn summaries_say_what_was_asked_and_where_the_bytes_came_from() {
        let h = Harness::new();
        h.header(VIRTIO_BLK_T_IN, 3);
        let done = h.run_with_summary(&[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)]);
        assert_eq!(
            done.summary,
            Summary {
                kind: Some(RequestType::In),
                offset: 3 * 512,
                len: 1024,
                base_bytes: 1024,
                overlay_bytes: 0,
            }
        );
        // A failed request still says what it was.
        h.header(VIRTIO_BLK_T_OUT, u64::MAX / 512);
        let done = h.run_with_summary(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
        assert_eq!(done.status, Some(S_IOERR));
        assert_eq!(done.summary.kind, Some(RequestType::Out));
        // No header: no type.
        let done = h.run_with_summary(&[(HDR, 8, false), (STATUS, 1, true)]);
        assert_eq!(done.summary.kind, None);
    }

    #[test]
    fn read() {
        let h = Harness::new();
        let done = h.request(VIRTIO_BLK_T_IN, 3, Some((DATA, 1024, true)));
        assert_eq!(done, ok(0, 1025));
        assert_eq!(h.status(), S_OK);
        assert_eq!(h.guest(DATA, 1024), sectors(3, 2));
    }

    #[test]
    fn large_reads_in_pieces_on_helper_threads() {
        // 512 KiB from an unaligned sector, over two descriptors of odd
        // lengths, the second across the two memory regions.
        let first = (0x4_0000, 200_000);
        let second = (REGION_SPLIT - 1000, 324_288);
        let sector = 100;
        for helpers in [None, Some(3)] {
            let mut h = Harness::with_disk_size(1 << 20);
            h.helpers = helpers.map(|n| Helpers::new(n).unwrap());
            h.header(VIRTIO_BLK_T_IN, sector);
            let done = h.run_with_summary(&[
                (HDR, 16, false),
                (first.0, first.1, true),
                (second.0, second.1, true),
                (STATUS, 1, true),
            ]);
            assert_eq!(done.status, Some(S_OK), "helpers {helpers:?}");
            assert_eq!(done.used_len, 512 * 1024 + 1);
            assert_eq!(done.summary.base_bytes, 512 * 1024);
            let mut got = h.guest(first.0, first.1 as usize);
            got.extend(h.guest(second.0, second.1 as usize));
            let start = sector as usize * 512;
            assert!(
                got == h.disk()[start..start + 512 * 1024],
                "helpers {helpers:?}"
            );

            // The same with the end of the second descriptor outside guest
            // memory: the piece that maps it fails, the request fails.
            h.header(VIRTIO_BLK_T_IN, sector);
            let done = h.run(&[
                (HDR, 16, false),
                (first.0, first.1, true),
                (MEM_END - 100_000, 324_288, true),
                (STATUS, 1, true),
            ]);
            assert_eq!(done, failed(S_IOERR), "helpers {helpers:?}");
        }
    }

    #[test]
    fn read_of_the_last_sector_and_of_nothing() {
        let h = Harness::new();
        let last = (DISK_SIZE / 512 - 1) as u64;
        assert_eq!(
            h.request(VIRTIO_BLK_T_IN, last, Some((DATA, 512, true))),
            ok(0, 513)
        );
        assert_eq!(h.request(VIRTIO_BLK_T_IN, 5, None), ok(0, 1));
    }

    #[test]
    fn write_across_descriptors_and_memory_regions() {
        let h = Harness::new();
        let data: Vec<u8> = (0..1536u32).map(|i| (i * 7) as u8).collect();
        let across = REGION_SPLIT - 700;
        h.mem.write_slice(&data[..512], GuestAddress(DATA)).unwrap();
        h.mem
            .write_slice(&data[512..], GuestAddress(across))
            .unwrap();
        h.header(VIRTIO_BLK_T_OUT, 10);
        let done = h.run(&[
            (HDR, 16, false),
            (DATA, 512, false),
            (across, 1024, false),
            (STATUS, 1, true),
        ]);
        assert_eq!(done, ok(0, 1));
        assert_eq!(h.status(), S_OK);
        assert_eq!(&h.disk()[10 * 512..13 * 512], &data[..]);
    }

    #[test]
    fn overlapping_descriptors_are_served_in_order() {
        // A driver may point several descriptors at the same memory; the
        // device then fills (or reads) it once per descriptor, in order.
        // Guest memory is never a `&mut [u8]`, so the aliasing is no
        // concern of the process's.
        let h = Harness::new();
        let done = h.request_descs(
            VIRTIO_BLK_T_IN,
            3,
            &[(DATA, 512, true), (DATA + 256, 512, true)],
        );
        assert_eq!(done, ok(0, 1025));
        let mut expected = sectors(3, 1)[..256].to_vec();
        expected.extend(sectors(4, 1));
        assert_eq!(h.guest(DATA, 768), expected);

        // The same memory written out twice lands twice on the disk.
        let data: Vec<u8> = (0..512u32).map(|i| (i * 3) as u8).collect();
        h.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        let done = h.request_descs(
            VIRTIO_BLK_T_OUT,
            20,
            &[(DATA, 512, false), (DATA, 512, false)],
        );
        assert_eq!(done, ok(0, 1));
        assert_eq!(&h.disk()[20 * 512..21 * 512], &data[..]);
        assert_eq!(&h.disk()[21 * 512..22 * 512], &data[..]);
    }

    #[test]
    fn any_framing_is_accepted() {
        // Header split in two, data and status sharing one descriptor.
        let h = Harness::new();
        h.header(VIRTIO_BLK_T_IN, 2);
        let done = h.run(&[(HDR, 5, false), (HDR + 5, 11, true), (DATA, 513, true)]);
        // The second descriptor is writable, so the header is 5 bytes short.
        assert_eq!(done, failed(S_IOERR));

        let h = Harness::new();
        h.header(VIRTIO_BLK_T_IN, 2);
        let done = h.run(&[(HDR, 5, false), (HDR + 5, 11, false), (DATA, 513, true)]);
        assert_eq!(done, ok(0, 513));
        assert_eq!(h.guest(DATA, 512), sectors(2, 1));
        assert_eq!(h.guest(DATA + 512, 1), [S_OK]);

        // Header and write data in one descriptor.
        let h = Harness::new();
        h.header(VIRTIO_BLK_T_OUT, 1);
        h.mem
            .write_slice(&[0xab; 512], GuestAddress(HDR + 16))
            .unwrap();
        let done = h.run(&[(HDR, 16 + 512, false), (STATUS, 1, true)]);
        assert_eq!(done, ok(0, 1));
        assert_eq!(&h.disk()[512..1024], &[0xab; 512][..]);
    }

    #[test]
    fn chain_too_short_for_the_header() {
        let h = Harness::new();
        h.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            h.run(&[(HDR, 15, false), (STATUS, 1, true)]),
            failed(S_IOERR)
        );
        assert_eq!(h.status(), S_IOERR);
        assert_eq!(h.run(&[(STATUS, 1, true)]), failed(S_IOERR));
    }

    #[test]
    fn chain_without_a_status_byte() {
        let h = Harness::new();
        h.header(VIRTIO_BLK_T_OUT, 0);
        let done = h.run(&[(HDR, 16, false), (DATA, 512, false)]);
        assert_eq!(
            done,
            Completion {
                head: 0,
                used_len: 0,
                status: None,
                summary: Summary::default(),
            }
        );
        assert_eq!(h.modifications(), 0);
        // The status descriptor is device-readable: nowhere to answer.
        let done = h.run(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, false)]);
        assert_eq!(done.status, None);
        assert_eq!(h.status(), 0xff);
        assert_eq!(h.modifications(), 0);
    }

    #[test]
    fn readable_descriptor_after_a_writable_one() {
        let h = Harness::new();
        h.header(VIRTIO_BLK_T_IN, 0);
        // The "status" is readable and follows writable data: the status
        // goes to the last writable byte, and nothing is read.
        let done = h.run(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, false)]);
        assert_eq!(done, failed(S_IOERR));
        assert_eq!(h.guest(DATA + 511, 1), [S_IOERR]);
    }

    #[test]
    fn status_descriptor_larger_than_one_byte() {
        // A 4-byte status descriptor on a flush: 3 bytes of data-in that a
        // flush does not have.
        let h = Harness::new();
        h.header(VIRTIO_BLK_T_FLUSH, 0);
        let done = h.run(&[(HDR, 16, false), (STATUS, 4, true)]);
        assert_eq!(done, failed(S_IOERR));
        assert_eq!(h.guest(STATUS + 3, 1), [S_IOERR]);
        assert_eq!(h.disk.flushes.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn data_in_the_wrong_direction() {
        let h = Harness::new();
        // A read whose data buffer is device-readable.
        let done = h.request(VIRTIO_BLK_T_IN, 0, Some((DATA, 512, false)));
        assert_eq!(done, failed(S_IOERR));
        // A write whose data buffer is device-writable.
        let done = h.request(VIRTIO_BLK_T_OUT, 0, Some((DATA, 512, true)));
        assert_eq!(done, failed(S_IOERR));
        // Discard and write-zeroes with a writable segment list.
        let len = h.segments(DATA, &[(0, 1, 0)]);
        let done = h.request(VIRTIO_BLK_T_DISCARD, 0, Some((DATA, len, true)));
        assert_eq!(done, failed(S_IOERR));
        let done = h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((DATA, len, true)));
        assert_eq!(done, failed(S_IOERR));
        // GET_ID with readable data.
        let done = h.request(VIRTIO_BLK_T_GET_ID, 0, Some((DATA, 20, false)));
        assert_eq!(done, failed(S_IOERR));
        assert_eq!(h.modifications(), 0);
    }

    #[test]
    fn ranges_past_the_end() {
        let h = Harness::new();
        let sectors = (DISK_SIZE / 512) as u64;
        for (kind, write) in [(VIRTIO_BLK_T_IN, true), (VIRTIO_BLK_T_OUT, false)] {
            for sector in [sectors, sectors - 1, u64::MAX, u64::MAX / 512, 1 << 55] {
                let done = h.request(kind, sector, Some((DATA, 1024, write)));
                assert_eq!(done, failed(S_IOERR), "type {kind} sector {sector}");
            }
        }
        // A zero-length read just past the end is still out of range.
        assert_eq!(
            h.request(VIRTIO_BLK_T_IN, sectors + 1, None),
            failed(S_IOERR)
        );
        assert_eq!(h.modifications(), 0);
    }

    #[test]
    fn partial_sectors() {
        let h = Harness::new();
        assert_eq!(
            h.request(VIRTIO_BLK_T_IN, 0, Some((DATA, 100, true))),
            failed(S_IOERR)
        );
        assert_eq!(
            h.request(VIRTIO_BLK_T_OUT, 0, Some((DATA, 513, false))),
            failed(S_IOERR)
        );
        assert_eq!(h.modifications(), 0);
    }

    #[test]
    fn writes_on_a_read_only_disk() {
        let h = Harness::read_only();
        let before = h.disk();
        assert_eq!(
            h.request(VIRTIO_BLK_T_OUT, 0, Some((DATA, 512, false))),
            failed(S_IOERR)
        );
        let len = h.segments(DATA, &[(0, 8, 0)]);
        assert_eq!(
            h.request(VIRTIO_BLK_T_DISCARD, 0, Some((DATA, len, false))),
            failed(S_IOERR)
        );
        assert_eq!(
            h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((DATA, len, false))),
            failed(S_IOERR)
        );
        assert_eq!(h.disk(), before);
        // Reads and flushes still work.
        assert_eq!(
            h.request(VIRTIO_BLK_T_IN, 0, Some((DATA, 512, true))),
            ok(0, 513)
        );
        assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, None), ok(0, 1));
    }

    #[test]
    fn unknown_types_are_unsupported() {
        let h = Harness::new();
        for kind in [2, 3, 5, 10, 14, 15, 16, 0x8000_0000, u32::MAX] {
            assert_eq!(h.request(kind, 0, None), failed(S_UNSUPP), "type {kind}");
        }
    }

    #[test]
    fn data_outside_guest_memory() {
        let h = Harness::new();
        for addr in [MEM_END, MEM_END - 256, u64::MAX - 1023] {
            let done = h.request(VIRTIO_BLK_T_IN, 0, Some((addr, 512, true)));
            assert_eq!(done, failed(S_IOERR), "read into {addr:#x}");
            let done = h.request(VIRTIO_BLK_T_OUT, 0, Some((addr, 512, false)));
            assert_eq!(done, failed(S_IOERR), "write from {addr:#x}");
        }
        // The header itself outside guest memory.
        let done = h.run(&[(MEM_END + 4096, 16, false), (STATUS, 1, true)]);
        assert_eq!(done, failed(S_IOERR));
        assert_eq!(h.modifications(), 0);
    }

    #[test]
    fn descriptor_wrapping_around_the_address_space() {
        let h = Harness::new();
        let done = h.request(VIRTIO_BLK_T_OUT, 0, Some((u64::MAX - 10, 512, false)));
        assert_eq!(done, failed(S_IOERR));
        assert_eq!(h.modifications(), 0);
    }

    #[test]
    fn status_outside_guest_memory() {
        let h = Harness::new();
        h.header(VIRTIO_BLK_T_FLUSH, 0);
        let done = h.run(&[(HDR, 16, false), (MEM_END + 10, 1, true)]);
        assert_eq!(done.used_len, 0);
        assert_eq!(done.status, None);
        assert_eq!(h.disk.flushes.load(Ordering::SeqCst), 0);
        // A write whose outcome cannot be reported is not carried out.
        h.header(VIRTIO_BLK_T_OUT, 0);
        let done = h.run(&[(HDR, 16, false), (DATA, 512, false), (MEM_END, 1, true)]);
        assert_eq!(done.status, None);
        assert_eq!(h.modifications(), 0);
    }

    #[test]
    fn flush() {
        let h = Harness::new();
        assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, None), ok(0, 1));
        assert_eq!(h.disk.flushes.load(Ordering::SeqCst), 1);
        // A flush carrying data is malformed and does not flush.
        assert_eq!(
            h.request(VIRTIO_BLK_T_FLUSH, 0, Some((DATA, 512, false))),
            failed(S_IOERR)
        );
        assert_eq!(h.disk.flushes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn get_id() {
        let h = Harness::new();
        assert_eq!(
            h.request(VIRTIO_BLK_T_GET_ID, 0, Some((DATA, 20, true))),
            ok(0, 21)
        );
        assert_eq!(h.guest(DATA, 20), SERIAL);
        // A short buffer gets what fits.
        h.mem.write_slice(&[0; 20], GuestAddress(DATA)).unwrap();
        assert_eq!(
            h.request(VIRTIO_BLK_T_GET_ID, 0, Some((DATA, 8, true))),
            ok(0, 9)
        );
        assert_eq!(h.guest(DATA, 9), b"ocidisk-\0");
    }

    #[test]
    fn discard_and_write_zeroes() {
        let h = Harness::new();
        let len = h.segments(DATA, &[(2, 2, 0), (8, 1, 0)]);
        let done = h.request(VIRTIO_BLK_T_DISCARD, 0, Some((DATA, len, false)));
        assert_eq!(done, ok(0, 1));
        let disk = h.disk();
        assert!(disk[2 * 512..4 * 512].iter().all(|&b| b == 0));
        assert!(disk[8 * 512..9 * 512].iter().all(|&b| b == 0));
        assert_eq!(&disk[4 * 512..8 * 512], &sectors(4, 4)[..]);

        let len = h.segments(DATA, &[(20, 3, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]);
        let done = h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((DATA, len, false)));
        assert_eq!(done, ok(0, 1));
        assert!(h.disk.last_unmap.load(Ordering::SeqCst));
        assert!(h.disk()[20 * 512..23 * 512].iter().all(|&b| b == 0));
        let len = h.segments(DATA, &[(30, 1, 0)]);
        let done = h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((DATA, len, false)));
        assert_eq!(done, ok(0, 1));
        assert!(!h.disk.last_unmap.load(Ordering::SeqCst));
    }

    #[test]
    fn malformed_segment_lists_change_nothing() {
        let h = Harness::new();
        let before = h.disk();
        let last = (DISK_SIZE / 512) as u64;
        let cases: Vec<(u32, Vec<Seg>, u8)> = vec![
            // The second segment is past the end: the first must not run.
            (VIRTIO_BLK_T_DISCARD, vec![(0, 1, 0), (last, 1, 0)], S_IOERR),
            (
                VIRTIO_BLK_T_WRITE_ZEROES,
                vec![(0, 1, 0), (last - 1, 2, 0)],
                S_IOERR,
            ),
            (VIRTIO_BLK_T_DISCARD, vec![(u64::MAX, 1, 0)], S_IOERR),
            (
                VIRTIO_BLK_T_DISCARD,
                vec![(0, MAX_DISCARD_SECTORS + 1, 0)],
                S_IOERR,
            ),
            // UNMAP is for write-zeroes only; unknown flags for both.
            (
                VIRTIO_BLK_T_DISCARD,
                vec![(0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)],
                S_UNSUPP,
            ),
            (
                VIRTIO_BLK_T_WRITE_ZEROES,
                vec![(0, 1, 0), (1, 1, 2)],
                S_UNSUPP,
            ),
            // One segment more than max_discard_seg.
            (
                VIRTIO_BLK_T_DISCARD,
                vec![(0, 1, 0); MAX_DISCARD_SEG as usize + 1],
                S_IOERR,
            ),
        ];
        for (kind, segs, status) in cases {
            let len = h.segments(DATA, &segs);
            let done = h.request(kind, 0, Some((DATA, len, false)));
            assert_eq!(done, failed(status), "type {kind}: {segs:?}");
        }
        // Lists that are not whole segments, or empty.
        h.segments(DATA, &[(0, 1, 0), (1, 1, 0)]);
        for len in [17, 8, 31] {
            let done = h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((DATA, len, false)));
            assert_eq!(done, failed(S_IOERR), "list of {len} bytes");
        }
        assert_eq!(h.request(VIRTIO_BLK_T_DISCARD, 0, None), failed(S_IOERR));
        assert_eq!(h.modifications(), 0);
        assert_eq!(h.disk(), before);
    }

    #[test]
    fn too_many_descriptors() {
        let h = Harness::new();
        h.header(VIRTIO_BLK_T_IN, 0);
        // An indirect table of header + MAX_DESCRIPTORS one-sector buffers +
        // status: one descriptor too many.
        let count = MAX_DESCRIPTORS + 2;
        let table = 0x4_0000u64;
        for i in 0..count {
            let (addr, len, flags) = match i {
                0 => (HDR, 16, 0),
                i if i == count - 1 => (STATUS, 1, VRING_DESC_F_WRITE),
                _ => (DATA, 512, VRING_DESC_F_WRITE),
            };
            let next_flag = if i + 1 < count { 1 } else { 0 }; // VRING_DESC_F_NEXT
            let desc = SplitDescriptor::new(addr, len, (flags | next_flag) as u16, i as u16 + 1);
            h.mem
                .write_obj(
                    RawDescriptor::from(desc),
                    GuestAddress(table + 16 * i as u64),
                )
                .unwrap();
        }
        let head = RawDescriptor::from(SplitDescriptor::new(
            table,
            (16 * count) as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        ));
        assert_eq!(h.run_raw(&[head]), failed(S_IOERR));
        assert_eq!(h.status(), S_IOERR);
    }

    #[test]
    fn every_malformed_header_is_answered() {
        // Arbitrary headers over arbitrary framings never panic, and every
        // chain with a writable byte gets a status.
        let h = Harness::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let kind = [0, 1, 4, 8, 11, 13, next() as u32][next() as usize % 7];
            h.header(kind, next() % 200);
            let data_len = [0u32, 1, 16, 512, 1024, 4096][next() as usize % 6];
            let data_write = next() % 2 == 0;
            let done = h.run(&[
                (HDR, 16, false),
                (DATA, data_len, data_write),
                (STATUS, 1, true),
            ]);
            assert!(done.status.is_some());
            assert_eq!(Some(h.status()), done.status);
        }
    }
}
