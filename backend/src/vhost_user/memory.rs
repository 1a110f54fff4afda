//! Guest memory as the frontend shares it: one file descriptor per region,
//! mapped into this process, and the frontend's own addresses of each
//! region (the rings' addresses arrive in those).
//!
//! A region is mapped only after its file was checked to hold it: touching
//! a mapping past the end of its file raises SIGBUS, which would end the
//! process on the first request. What the check cannot prevent is the
//! frontend shrinking the file afterwards (an unsealed memfd); then the
//! backend process dies of SIGBUS on its next access to the lost pages.
//! That harms only the frontend's own disk server, and even then nothing
//! durable: the overlay's states change only after a write to it returned,
//! a write from a vanished page fails with EFAULT inside the kernel, and
//! a process crash keeps every completed write (see the overlay's shadow
//! map).

use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::sync::Arc;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};

/// Regions a frontend may add with ADD_MEM_REG (SET_MEM_TABLE carries at
/// most 8).
pub const MAX_MEM_SLOTS: u64 = 256;

/// Why a region cannot be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A region of no bytes.
    #[error("memory region at guest address {gpa:#x}: size 0")]
    Empty {
        /// The region's guest physical address.
        gpa: u64,
    },
    /// A region that reaches past the end of the file that backs it.
    #[error(
        "memory region at guest address {gpa:#x}: {size:#x} bytes at file offset {offset:#x} \
         pass the end of its file of {file_len:#x} bytes"
    )]
    PastEndOfFile {
        /// The region's guest physical address.
        gpa: u64,
        /// Its size in bytes.
        size: u64,
        /// Where it starts in its file.
        offset: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A region whose end does not fit in 64 bits.
    #[error(
        "memory region at guest address {gpa:#x}: {size:#x} bytes wrap around the address space"
    )]
    Wraps {
        /// The region's guest physical address.
        gpa: u64,
        /// Its size in bytes.
        size: u64,
    },
    /// A region backed by something that cannot be mapped safely.
    #[error("memory region at guest address {gpa:#x}: its file is not a regular file or memfd")]
    NotAFile {
        /// The region's guest physical address.
        gpa: u64,
    },
    /// mmap refused the region.
    #[error("memory region at guest address {gpa:#x}: cannot map it: {reason}")]
    Map {
        /// The region's guest physical address.
        gpa: u64,
        /// vm-memory's error, as text.
        reason: String,
    },
    /// The region does not fit with the others (vm-memory refused it).
    #[error("memory region at guest address {gpa:#x}: {reason}")]
    Layout {
        /// The region's guest physical address.
        gpa: u64,
        /// vm-memory's error, as text.
        reason: String,
    },
    /// REM_MEM_REG named a region that is not mapped.
    #[error("no memory region at guest address {gpa:#x} of {size:#x} bytes to remove")]
    NoSuchRegion {
        /// The guest physical address named.
        gpa: u64,
        /// The size named.
        size: u64,
    },
    /// More regions than the slots we announce.
    #[error("more than {MAX_MEM_SLOTS} memory regions")]
    TooMany,
    /// A ring address the frontend gave in its own address space that no
    /// region covers.
    #[error("the frontend address {0:#x} lies in no memory region")]
    UnknownAddress(u64),
}

/// What a frontend says about one region.
#[derive(Debug, Clone, Copy)]
pub struct RegionInfo {
    /// Where the region lies in guest physical memory.
    pub guest_phys_addr: u64,
    /// Its size in bytes.
    pub memory_size: u64,
    /// Where it lies in the frontend's own address space (ring addresses
    /// are given in these).
    pub user_addr: u64,
    /// Where it starts in the file descriptor sent with it.
    pub mmap_offset: u64,
}

/// Guest memory and the frontend's view of where it lies.
#[derive(Default)]
pub struct Memory {
    regions: Vec<(RegionInfo, Arc<GuestRegionMmap>)>,
}

impl Memory {
    /// Replaces every region (SET_MEM_TABLE). All or nothing: a region that
    /// cannot be mapped leaves the old table in place.
    pub fn set_table(
        &mut self,
        regions: impl IntoIterator<Item = (RegionInfo, File)>,
    ) -> Result<GuestMemoryMmap, MemoryError> {
        let mut new = Vec::new();
        for (info, file) in regions {
            new.push((info, map(&info, file)?));
        }
        let mem = build(&new)?;
        self.regions = new;
        Ok(mem)
    }

    /// Adds one region (ADD_MEM_REG).
    pub fn add(&mut self, info: RegionInfo, file: File) -> Result<GuestMemoryMmap, MemoryError> {
        if self.regions.len() as u64 >= MAX_MEM_SLOTS {
            return Err(MemoryError::TooMany);
        }
        let region = map(&info, file)?;
        self.regions.push((info, region));
        match build(&self.regions) {
            Ok(mem) => Ok(mem),
            Err(err) => {
                self.regions.pop();
                Err(err)
            }
        }
    }

    /// Removes the region at `gpa` of `size` bytes (REM_MEM_REG).
    pub fn remove(&mut self, gpa: u64, size: u64) -> Result<GuestMemoryMmap, MemoryError> {
        let i = self
            .regions
            .iter()
            .position(|(r, _)| r.guest_phys_addr == gpa && r.memory_size == size)
            .ok_or(MemoryError::NoSuchRegion { gpa, size })?;
        let removed = self.regions.remove(i);
        match build(&self.regions) {
            Ok(mem) => Ok(mem),
            Err(err) => {
                self.regions.insert(i, removed);
                Err(err)
            }
        }
    }

    /// The guest address of the frontend's address `va`.
    pub fn to_guest(&self, va: u64) -> Result<u64, MemoryError> {
        self.regions
            .iter()
            .find_map(|(r, _)| {
                let off = va.checked_sub(r.user_addr)?;
                (off < r.memory_size).then(|| r.guest_phys_addr + off)
            })
            .ok_or(MemoryError::UnknownAddress(va))
    }

    /// Whether any region is mapped.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

/// Maps `info`'s region from `file` after checking that the file holds it.
fn map(info: &RegionInfo, file: File) -> Result<Arc<GuestRegionMmap>, MemoryError> {
    let gpa = info.guest_phys_addr;
    let size = info.memory_size;
    if size == 0 {
        return Err(MemoryError::Empty { gpa });
    }
    if gpa.checked_add(size - 1).is_none() || info.user_addr.checked_add(size - 1).is_none() {
        return Err(MemoryError::Wraps { gpa, size });
    }
    let meta = file.metadata().map_err(|e| MemoryError::Map {
        gpa,
        reason: e.to_string(),
    })?;
    let ft = meta.file_type();
    // Block devices have no length in their metadata; character devices
    // and sockets cannot be guest RAM.
    if !ft.is_file() || ft.is_block_device() {
        return Err(MemoryError::NotAFile { gpa });
    }
    let file_len = meta.len();
    let end = info.mmap_offset.checked_add(size);
    if end.is_none_or(|end| end > file_len) {
        return Err(MemoryError::PastEndOfFile {
            gpa,
            size,
            offset: info.mmap_offset,
            file_len,
        });
    }
    let len = usize::try_from(size).map_err(|_| MemoryError::Wraps { gpa, size })?;
    let mapping =
        MmapRegion::from_file(FileOffset::new(file, info.mmap_offset), len).map_err(|e| {
            MemoryError::Map {
                gpa,
                reason: e.to_string(),
            }
        })?;
    GuestRegionMmap::new(mapping, GuestAddress(gpa))
        .map(Arc::new)
        .ok_or(MemoryError::Wraps { gpa, size })
}

/// Guest memory of `regions` (which must not overlap).
fn build(regions: &[(RegionInfo, Arc<GuestRegionMmap>)]) -> Result<GuestMemoryMmap, MemoryError> {
    // vm-memory wants the regions in address order.
    let mut sorted: Vec<_> = regions.iter().map(|(_, r)| Arc::clone(r)).collect();
    sorted.sort_by_key(|r| r.start_addr());
    GuestMemoryMmap::from_arc_regions(sorted).map_err(|e| MemoryError::Layout {
        gpa: regions.last().map_or(0, |(r, _)| r.guest_phys_addr),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64) -> File {
        let file = tempfile::tempfile().unwrap();
        file.set_len(len).unwrap();
        file
    }

    fn info(gpa: u64, size: u64, offset: u64) -> RegionInfo {
        RegionInfo {
            guest_phys_addr: gpa,
            memory_size: size,
            user_addr: 0x7000_0000_0000u64.wrapping_add(gpa),
            mmap_offset: offset,
        }
    }

    #[test]
    fn regions_are_checked_against_their_file_before_mapping() {
        let mut mem = Memory::default();
        let err = mem
            .set_table([(info(0, 0x20_0000, 0), memfd(0x10_0000))])
            .unwrap_err();
        assert!(matches!(err, MemoryError::PastEndOfFile { .. }), "{err}");
        let err = mem
            .set_table([(info(0, 0x1000, 0x10_0000), memfd(0x10_0000))])
            .unwrap_err();
        assert!(matches!(err, MemoryError::PastEndOfFile { .. }), "{err}");
        let err = mem
            .set_table([(info(0, 0x1000, u64::MAX), memfd(0x10_0000))])
            .unwrap_err();
        assert!(matches!(err, MemoryError::PastEndOfFile { .. }), "{err}");
        let err = mem
            .set_table([(info(u64::MAX - 10, 0x1000, 0), memfd(0x1000))])
            .unwrap_err();
        assert!(matches!(err, MemoryError::Wraps { .. }), "{err}");
        let err = mem.set_table([(info(0, 0, 0), memfd(0x1000))]).unwrap_err();
        assert!(matches!(err, MemoryError::Empty { .. }), "{err}");
        assert!(mem.is_empty());
        // Overlapping regions are refused and leave the old table.
        mem.set_table([(info(0, 0x1000, 0), memfd(0x1000))])
            .unwrap();
        let err = mem
            .set_table([
                (info(0, 0x2000, 0), memfd(0x2000)),
                (info(0x1000, 0x1000, 0), memfd(0x1000)),
            ])
            .unwrap_err();
        assert!(matches!(err, MemoryError::Layout { .. }), "{err}");
        assert_eq!(mem.to_guest(0x7000_0000_0fff).unwrap(), 0xfff);
    }

    #[test]
    fn regions_come_and_go() {
        let mut mem = Memory::default();
        mem.add(info(0, 0x1000, 0), memfd(0x1000)).unwrap();
        mem.add(info(0x10_0000, 0x2000, 0x1000), memfd(0x3000))
            .unwrap();
        assert_eq!(mem.to_guest(0x7000_0010_1000).unwrap(), 0x10_1000);
        assert!(mem.add(info(0x800, 0x1000, 0), memfd(0x1000)).is_err());
        assert!(mem.remove(0x10_0000, 0x1000).is_err());
        mem.remove(0x10_0000, 0x2000).unwrap();
        assert!(mem.to_guest(0x7000_0010_1000).is_err());
    }
}
