//! virtio-blk requests as the driver framed them: what a descriptor chain
//! asks for, before anything is done about it.
//!
//! A request is a byte stream spread over the chain's descriptors (see
//! [`chain`](super::chain) for how the streams are walked):
//!
//! ```text
//!  device-readable                          device-writable
//! [ header (16 bytes) | data-out ... ]     [ data-in ... | status (1 byte) ]
//! ```
//!
//! The header says the [`RequestType`] and the first sector; data-out is
//! what a write (or a discard/write-zeroes segment list) carries; data-in is
//! where a read (or GET_ID) puts its bytes; the status is the last writable
//! byte.
//!
//! This module knows the format and nothing of the disk: [`Request`] reads
//! the header and the segment lists and maps the data streams to guest
//! memory, and [`RequestError`] says what can be wrong with a request and
//! which status byte the driver gets for it. Carrying a request out is
//! [`execute`](super::execute)'s job. Every chain gets an answer: a
//! malformed request (too short, data in the wrong direction, out of range,
//! outside guest memory, ...) completes with `VIRTIO_BLK_S_IOERR` (or
//! `VIRTIO_BLK_S_UNSUPP` for an unknown type or flag) and touches nothing;
//! only a chain without any writable byte for the status cannot carry a
//! status, and is returned to the driver with a used length of 0.
//!
//! The request-handling types live in three modules, but the engines and
//! the backend name them all from here.

pub use super::chain::{GuestIoVecs, GuestIoVecsOut};
pub use super::execute::{Action, Begun, ReadOutcome, RequestContext, MAX_BATCH};

use super::chain::{
    guest_iovecs, guest_iovecs_out, read_stream, write_stream, Chain, Defect, MemoryError,
    MAX_DESCRIPTORS, MAX_SLICES,
};
use crate::device::config::{MAX_DISCARD_SECTORS, MAX_DISCARD_SEG};
use std::io;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Bytes in a request header (`struct virtio_blk_outhdr`).
const HEADER_LEN: usize = 16;
/// Bytes in one discard/write-zeroes segment (`struct virtio_blk_discard_write_zeroes`).
const SEGMENT_LEN: usize = 16;

/// The status byte values.
pub(super) const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
pub(super) const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub(super) const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// A request's type, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// `VIRTIO_BLK_T_IN`: read from the disk.
    In,
    /// `VIRTIO_BLK_T_OUT`: write to the disk.
    Out,
    /// `VIRTIO_BLK_T_FLUSH`: make completed writes durable.
    Flush,
    /// `VIRTIO_BLK_T_GET_ID`: the serial number.
    GetId,
    /// `VIRTIO_BLK_T_DISCARD`: forget ranges of the disk.
    Discard,
    /// `VIRTIO_BLK_T_WRITE_ZEROES`: zero ranges of the disk.
    WriteZeroes,
    /// Any other value, kept so that errors and traces can name it.
    Unsupported(u32),
}

impl RequestType {
    /// The type a header's `type` field names.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            other => Self::Unsupported(other),
        }
    }

    /// The header's `type` field: the inverse of [`from_raw`](Self::from_raw).
    pub fn raw(self) -> u32 {
        match self {
            Self::In => VIRTIO_BLK_T_IN,
            Self::Out => VIRTIO_BLK_T_OUT,
            Self::Flush => VIRTIO_BLK_T_FLUSH,
            Self::GetId => VIRTIO_BLK_T_GET_ID,
            Self::Discard => VIRTIO_BLK_T_DISCARD,
            Self::WriteZeroes => VIRTIO_BLK_T_WRITE_ZEROES,
            Self::Unsupported(raw) => raw,
        }
    }
}

/// Why a request failed. Each maps to the status byte the driver gets.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A device-readable descriptor follows a device-writable one.
    #[error("a device-readable descriptor follows a device-writable one")]
    Misordered,
    /// The chain is longer than [`MAX_DESCRIPTORS`].
    #[error("the chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// A descriptor's range wraps around the guest address space.
    #[error("descriptor {addr:#x}+{len} wraps around the address space")]
    AddressOverflow {
        /// The descriptor's guest address.
        addr: u64,
        /// The descriptor's length.
        len: u32,
    },
    /// A descriptor index beyond its table.
    #[error("descriptor index {0} lies beyond its table")]
    BadIndex(u16),
    /// A descriptor outside guest memory.
    #[error("descriptor {0} lies outside guest memory")]
    UnreadableDescriptor(u16),
    /// The chain visits more descriptors than its table holds.
    #[error("the chain loops")]
    Loop,
    /// A malformed indirect descriptor table.
    #[error("an indirect table that is empty, not whole descriptors, nested or followed by more")]
    BadIndirect,
    /// No device-writable byte to put the status in: the request is not
    /// carried out, since its outcome could not be reported.
    #[error("the chain has no device-writable byte for the status")]
    NoStatus,
    /// The readable part is shorter than a request header.
    #[error("the chain has {0} device-readable bytes, fewer than the 16-byte header")]
    HeaderTooShort(u64),
    /// A request that only reads from the driver has device-writable data.
    #[error("request type {kind} carries {len} bytes of device-writable data")]
    UnexpectedDataIn {
        /// The request type.
        kind: u32,
        /// The number of unexpected bytes.
        len: u64,
    },
    /// A request that only writes to the driver has device-readable data.
    #[error("request type {kind} carries {len} bytes of device-readable data")]
    UnexpectedDataOut {
        /// The request type.
        kind: u32,
        /// The number of unexpected bytes.
        len: u64,
    },
    /// Read or write data that is not a whole number of sectors.
    #[error("the data length {0} is not a multiple of 512 bytes")]
    UnalignedLength(u64),
    /// A range that does not lie within the disk.
    #[error("sector {sector} + {len} bytes lies outside the disk of {size} bytes")]
    OutOfRange {
        /// The first sector.
        sector: u64,
        /// The length in bytes.
        len: u64,
        /// The disk size in bytes.
        size: u64,
    },
    /// A modification of a read-only disk.
    #[error("request type {0} modifies a read-only disk")]
    ReadOnly(u32),
    /// A request type the device does not implement.
    #[error("unsupported request type {0}")]
    UnsupportedType(u32),
    /// A discard/write-zeroes segment list that is empty or not a whole
    /// number of 16-byte segments.
    #[error("a segment list of {0} bytes is not a non-empty array of 16-byte segments")]
    BadSegmentList(u64),
    /// More discard/write-zeroes segments than `max_discard_seg`.
    #[error("{0} segments exceed the limit of {MAX_DISCARD_SEG}")]
    TooManySegments(u64),
    /// A segment larger than `max_discard_sectors`.
    #[error("a segment of {0} sectors exceeds the limit of {MAX_DISCARD_SECTORS}")]
    SegmentTooLarge(u32),
    /// Segment flags the device does not know (or UNMAP on a discard).
    #[error("unsupported segment flags {0:#x}")]
    UnsupportedFlags(u32),
    /// A data range outside guest memory.
    #[error("guest memory {addr:#x}+{len} is not mapped")]
    BadAddress {
        /// The guest address.
        addr: u64,
        /// The length in bytes.
        len: u64,
    },
    /// Data spread over more than [`MAX_SLICES`] memory slices.
    #[error("the data spans more than {MAX_SLICES} memory slices")]
    TooManySlices,
    /// The disk failed.
    #[error("I/O error")]
    Io(#[from] io::Error),
}

impl RequestError {
    /// The status byte the driver gets for this error.
    pub fn status(&self) -> u8 {
        match self {
            Self::UnsupportedType(_) | Self::UnsupportedFlags(_) => S_UNSUPP,
            _ => S_IOERR,
        }
    }
}

impl From<Defect> for RequestError {
    fn from(defect: Defect) -> Self {
        match defect {
            Defect::Misordered => Self::Misordered,
            Defect::TooManyDescriptors => Self::TooManyDescriptors,
            Defect::AddressOverflow { addr, len } => Self::AddressOverflow { addr, len },
            Defect::BadIndex { index } => Self::BadIndex(index),
            Defect::Unreadable { index } => Self::UnreadableDescriptor(index),
            Defect::Loop => Self::Loop,
            Defect::BadIndirect => Self::BadIndirect,
        }
    }
}

impl From<MemoryError> for RequestError {
    fn from(err: MemoryError) -> Self {
        match err {
            MemoryError::Unmapped { addr, len } => Self::BadAddress { addr, len },
            MemoryError::TooManySlices => Self::TooManySlices,
        }
    }
}

/// How a chain was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The chain's head descriptor index, for the used ring.
    pub head: u16,
    /// Bytes written into device-writable memory (data-in plus status), for
    /// the used ring.
    pub used_len: u32,
    /// The status written, or `None` if the chain had no place for one.
    pub status: Option<u8>,
    /// What was asked, as far as the chain said it.
    pub summary: Summary,
}

/// What a request asked for, for metrics and traces: its type, where, and
/// how many bytes it covered (data moved for reads, writes and GET_ID; the
/// summed segment lengths for discard and write-zeroes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The request type, or `None` if the chain had no readable header.
    pub kind: Option<RequestType>,
    /// Byte offset on the disk (the header's sector × 512).
    pub offset: u64,
    /// Bytes covered.
    pub len: u64,
    /// Bytes of a read that came from the base disk.
    pub base_bytes: u64,
    /// Bytes of a read that the overlay answered.
    pub overlay_bytes: u64,
}

/// A request as its descriptor chain describes it, not yet carried out.
pub struct Request {
    head: u16,
    chain: Chain,
}

/// What the header and the chain's shape say about a request; nothing in it
/// has been checked against the disk yet.
pub(super) struct Parsed {
    /// The header's type.
    pub(super) kind: RequestType,
    /// The header's first sector.
    pub(super) sector: u64,
    /// Bytes of data-out after the header.
    pub(super) data_out: u64,
    /// Bytes of data-in before the status byte.
    pub(super) data_in: u64,
}

impl Request {
    /// Walks the chain at `head` of the descriptor table at `table` (of
    /// `queue_size` entries). Reads no guest memory but the descriptors
    /// themselves; problems are kept for the answer.
    pub fn walk(mem: &GuestMemoryMmap, table: GuestAddress, queue_size: u16, head: u16) -> Self {
        Self {
            head,
            chain: Chain::walk(mem, table, queue_size, head),
        }
    }

    /// The request `chain` holds, walked by virtio-queue's iterator (tests
    /// build chains with its mock queue).
    #[cfg(test)]
    pub fn new<M>(chain: virtio_queue::DescriptorChain<M>) -> Self
    where
        M: std::ops::Deref<Target = GuestMemoryMmap>,
    {
        Self {
            head: chain.head_index(),
            chain: Chain::collect(chain),
        }
    }

    /// The chain's head descriptor index, for the used ring.
    pub(super) fn head(&self) -> u16 {
        self.head
    }

    /// The bytes the device may write into guest memory: a read's data
    /// plus the status byte. What decides whether a read is worth sharing
    /// with the helper threads.
    pub fn writable_len(&self) -> u64 {
        self.chain.writable_len
    }

    /// Checks the chain's shape and reads the header: what every request
    /// needs before its type matters. A chain without a usable status byte
    /// is refused before any guest memory is read, since nothing done for
    /// it could be reported.
    pub(super) fn parse(&self, mem: &GuestMemoryMmap) -> Result<Parsed, RequestError> {
        let chain = &self.chain;
        if let Some(defect) = chain.defect {
            return Err(defect.into());
        }
        match chain.status_addr {
            Some(addr) if GuestMemoryBackend::check_range(mem, addr, 1) => {}
            _ => return Err(RequestError::NoStatus),
        }
        if chain.readable_len < HEADER_LEN as u64 {
            return Err(RequestError::HeaderTooShort(chain.readable_len));
        }
        let mut header = [0u8; HEADER_LEN];
        read_stream(mem, chain.readable(), 0, &mut header)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes([
            header[8], header[9], header[10], header[11], header[12], header[13], header[14],
            header[15],
        ]);
        Ok(Parsed {
            kind: RequestType::from_raw(kind),
            sector,
            data_out: chain.readable_len - HEADER_LEN as u64,
            // The status byte was found, so the writable stream has at least
            // one byte whenever a status can be written at all.
            data_in: chain.writable_len.saturating_sub(1),
        })
    }

    /// Bytes `[skip, skip + len)` of the data-in stream as buffers in guest
    /// memory.
    pub fn data_in_range<'m>(
        &self,
        mem: &'m GuestMemoryMmap,
        skip: u64,
        len: u64,
    ) -> Result<GuestIoVecs<'m>, RequestError> {
        Ok(guest_iovecs(mem, self.chain.writable(), skip, len)?)
    }

    /// `len` bytes of the data-out stream after the header (a write's
    /// data) as buffers in guest memory.
    pub fn data_out<'m>(
        &self,
        mem: &'m GuestMemoryMmap,
        len: u64,
    ) -> Result<GuestIoVecsOut<'m>, RequestError> {
        Ok(guest_iovecs_out(
            mem,
            self.chain.readable(),
            HEADER_LEN as u64,
            len,
        )?)
    }

    /// Copies `bytes` to the start of the data-in stream: for answers the
    /// device makes up itself (GET_ID) rather than reads from the disk.
    pub(super) fn write_data_in(
        &self,
        mem: &GuestMemoryMmap,
        bytes: &[u8],
    ) -> Result<(), RequestError> {
        Ok(write_stream(mem, self.chain.writable(), 0, bytes)?)
    }

    /// Reads the discard/write-zeroes segment list of `len` bytes after the
    /// header.
    pub(super) fn segments(
        &self,
        mem: &GuestMemoryMmap,
        len: u64,
    ) -> Result<Segments, RequestError> {
        if len == 0 || !len.is_multiple_of(SEGMENT_LEN as u64) {
            return Err(RequestError::BadSegmentList(len));
        }
        let count = len / SEGMENT_LEN as u64;
        if count > u64::from(MAX_DISCARD_SEG) {
            return Err(RequestError::TooManySegments(count));
        }
        let mut raw = [0u8; SEGMENT_LEN * MAX_DISCARD_SEG as usize];
        read_stream(
            mem,
            self.chain.readable(),
            HEADER_LEN as u64,
            &mut raw[..len as usize],
        )?;
        Ok(Segments {
            raw,
            len: len as usize,
        })
    }

    /// Writes the status byte; `false` if the chain has no place for it.
    pub(super) fn write_status(&self, mem: &GuestMemoryMmap, status: u8) -> bool {
        self.chain
            .status_addr
            .is_some_and(|addr| mem.write_obj(status, addr).is_ok())
    }
}

impl Parsed {
    /// Fails if the request carries data-out, for types that have none.
    pub(super) fn no_data_out(&self) -> Result<(), RequestError> {
        match self.data_out {
            0 => Ok(()),
            len => Err(RequestError::UnexpectedDataOut {
                kind: self.kind.raw(),
                len,
            }),
        }
    }

    /// Fails if the request has room for data-in, for types that have none.
    pub(super) fn no_data_in(&self) -> Result<(), RequestError> {
        match self.data_in {
            0 => Ok(()),
            len => Err(RequestError::UnexpectedDataIn {
                kind: self.kind.raw(),
                len,
            }),
        }
    }
}

/// One discard/write-zeroes segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Segment {
    pub(super) sector: u64,
    pub(super) num_sectors: u32,
    pub(super) flags: u32,
}

/// A discard/write-zeroes segment list, copied out of guest memory first so
/// that the guest cannot change a segment between its check and its use.
pub(super) struct Segments {
    raw: [u8; SEGMENT_LEN * MAX_DISCARD_SEG as usize],
    len: usize,
}

impl Segments {
    /// The segments, in the driver's order.
    pub(super) fn iter(&self) -> impl Iterator<Item = Segment> + '_ {
        self.raw[..self.len].chunks_exact(SEGMENT_LEN).map(|s| {
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&s[0..8]);
            Segment {
                sector: u64::from_le_bytes(sector),
                num_sectors: u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
                flags: u32::from_le_bytes([s[12], s[13], s[14], s[15]]),
            }
        })
    }
}
