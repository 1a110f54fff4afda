//! What an overlay says about itself: its header, its allocation, and the
//! runs the guest changed.

use crate::format::{Geometry, RawHeader, BLOCK_SIZE, VERSION};
use blockio::BaseIdentity;
use uuid::Uuid;

/// An overlay's header: what it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version of the file.
    pub version: u32,
    /// Bytes of the virtual disk.
    pub disk_size: u64,
    /// Bytes per block (copy-up and map granularity).
    pub granularity: u32,
    /// Random id made at creation; the base derives the disk's GUIDs from it.
    pub disk_id: Uuid,
    /// The base the overlay belongs to.
    pub base: BaseIdentity,
    /// How many times the header was written (1 at creation, +1 per rebase).
    pub generation: u64,
    /// Blocks of the disk.
    pub blocks: u64,
    /// Pages of the on-disk map (each stored twice).
    pub map_pages: u64,
    /// Where data block 0 lives in the file.
    pub data_offset: u64,
    /// The file's length (the data area is sparse).
    pub file_len: u64,
}

impl Header {
    pub(crate) fn from_raw(raw: RawHeader) -> Header {
        let g = Geometry::new(raw.disk_size);
        Header {
            version: VERSION,
            disk_size: raw.disk_size,
            granularity: BLOCK_SIZE as u32,
            disk_id: raw.disk_id,
            base: raw.base,
            generation: raw.generation,
            blocks: g.blocks,
            map_pages: g.map_pages,
            data_offset: g.data_offset,
            file_len: g.file_len(),
        }
    }
}

/// How much of the disk an overlay holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Blocks of the disk.
    pub blocks: u64,
    /// Blocks written (data stored in the overlay).
    pub blocks_written: u64,
    /// Blocks zeroed or discarded (no data stored).
    pub blocks_zero: u64,
    /// The file's apparent length.
    pub file_len: u64,
    /// Bytes the host has allocated for the file.
    pub allocated_bytes: u64,
}

/// A run of the disk that the guest changed (see [`Overlay::changes`](crate::Overlay::changes)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// Disk offset of the first byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// True if the run reads as zeros (write-zeroes or discard), false if
    /// it holds written data.
    pub zero: bool,
}
