//! The GUID partition table: protective MBR, primary header and entry array
//! at the start of the disk, backup entry array and header at its end.
//!
//! Geometry (512-byte logical blocks, `N` blocks on the disk): the protective
//! MBR in LBA 0 holds one `0xEE` record from LBA 1 over `min(N − 1,
//! 0xFFFFFFFF)` blocks; the primary header is LBA 1, its 128 entries of 128
//! bytes fill LBAs 2–33; partitions may use LBAs 34 to `N − 34`; the backup
//! entries fill `N − 33` to `N − 2` and the backup header is LBA `N − 1`.
//! [`build`] returns exactly two generated extents: LBAs 0–33 and the last
//! 33 LBAs.
//!
//! # Why the `gpt` crate, and how
//!
//! The headers, entry arrays and their CRC32s are written by the `gpt` crate
//! (v4), which fits once three things are arranged:
//!
//! - it writes through a `Read + Write + Seek` device the size of the whole
//!   disk and finds the backup header by seeking to its end. A `Capture`
//!   device provides that without allocating the disk: it keeps only the two
//!   GPT areas and fails any access outside them, so a crate that touched
//!   other sectors would be caught rather than silently ignored;
//! - its `add_partition*` calls give partitions random GUIDs and its own
//!   placement, so we bypass them: [`GptDisk::update_partitions`] takes
//!   complete entries with our deterministic GUIDs and our placement, and
//!   `create_from_device` takes the disk GUID;
//! - it silently truncates names past 36 UTF-16 units, treats a nil type
//!   GUID as an unused slot (which would shift every later entry) and does
//!   not check placement, so [`build`] validates all of that first and the
//!   crate only ever sees a table it writes faithfully.
//!
//! The protective MBR comes from the crate's `ProtectiveMBR` as well.
//!
//! GUIDs are derived (see [`derive_guid`]), never random: the same image and
//! disk id give the same partition table after every restart.

use crate::blockmap::Extent;
use crate::source::Source;
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition_types::{OperatingSystem, Type};
use gpt::{GptConfig, GptDisk};
use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use thiserror::Error;
use uuid::Uuid;

/// Bytes per logical block.
pub const SECTOR_SIZE: u64 = 512;
/// Entries in each partition entry array (and so the most partitions).
pub const MAX_PARTITIONS: usize = 128;
/// Bytes per partition entry.
pub const ENTRY_SIZE: u64 = 128;
/// Blocks each entry array occupies: 128 × 128 bytes.
const ENTRY_ARRAY_BLOCKS: u64 = MAX_PARTITIONS as u64 * ENTRY_SIZE / SECTOR_SIZE;
/// The first block a partition may use: after the MBR, the header and the
/// entry array.
pub const FIRST_USABLE_LBA: u64 = 2 + ENTRY_ARRAY_BLOCKS;
/// Blocks the GPT occupies at the end of the disk: entries and header.
pub const TAIL_BLOCKS: u64 = ENTRY_ARRAY_BLOCKS + 1;
/// The smallest disk with at least one usable block.
pub const MIN_DISK_BLOCKS: u64 = FIRST_USABLE_LBA + 1 + TAIL_BLOCKS;
/// Most UTF-16 code units a partition name can have.
pub const MAX_NAME_UNITS: usize = 36;

/// The last block a partition may use on a disk of `blocks` blocks.
pub fn last_usable_lba(blocks: u64) -> u64 {
    blocks.saturating_sub(TAIL_BLOCKS + 1)
}

/// One partition entry, placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptPartition {
    /// The partition name (at most 36 UTF-16 code units).
    pub name: String,
    /// The partition type GUID; never nil (nil marks an unused entry).
    pub type_guid: Uuid,
    /// The unique partition GUID.
    pub guid: Uuid,
    /// First block, inclusive.
    pub first_lba: u64,
    /// Last block, inclusive.
    pub last_lba: u64,
}

/// A partition table that cannot be written.
#[derive(Debug, Error)]
pub enum GptError {
    /// The disk size is not a whole number of blocks or too small for a GPT.
    #[error(
        "disk size {size} bytes: a GPT disk must be a multiple of {SECTOR_SIZE} bytes \
         and at least {MIN_DISK_BLOCKS} blocks"
    )]
    DiskSize {
        /// The disk size in bytes.
        size: u64,
    },
    /// More partitions than the entry array holds.
    #[error("{count} partitions: a GPT holds at most {MAX_PARTITIONS}")]
    TooManyPartitions {
        /// How many were given.
        count: usize,
    },
    /// A name longer than an entry holds.
    #[error(
        "partition {index} ({name:?}): the name is {units} UTF-16 units long, \
         a GPT entry holds {MAX_NAME_UNITS}"
    )]
    NameTooLong {
        /// 1-based partition number.
        index: usize,
        /// The name.
        name: String,
        /// Its length in UTF-16 code units.
        units: usize,
    },
    /// The nil type GUID, which marks an unused entry.
    #[error("partition {index} ({name:?}): the nil type GUID marks an unused entry")]
    NilType {
        /// 1-based partition number.
        index: usize,
        /// The name.
        name: String,
    },
    /// A partition outside the usable blocks (or ending before it starts).
    #[error(
        "partition {index} ({name:?}): blocks {first_lba}–{last_lba} are not within \
         the usable blocks {first_usable}–{last_usable}"
    )]
    OutOfRange {
        /// 1-based partition number.
        index: usize,
        /// The name.
        name: String,
        /// Its first block.
        first_lba: u64,
        /// Its last block.
        last_lba: u64,
        /// The first usable block of the disk.
        first_usable: u64,
        /// The last usable block of the disk.
        last_usable: u64,
    },
    /// Two partitions share blocks.
    #[error("partition {index} ({name:?}) overlaps partition {other}")]
    Overlap {
        /// 1-based partition number.
        index: usize,
        /// The name.
        name: String,
        /// 1-based number of the partition it overlaps.
        other: usize,
    },
    /// The `gpt` crate failed (after validation this means a bug here).
    #[error("writing the GPT: {0}")]
    Crate(String),
}

/// What a derived GUID identifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuidFor {
    /// The disk GUID in the GPT header.
    Disk,
    /// The unique GUID of the partition with this 1-based number.
    Partition(usize),
}

/// The namespace of ocidisk's name-based (version 5) GUIDs.
const GUID_NAMESPACE: Uuid = Uuid::from_u128(0x6f63_6964_6973_4b00_9a1e_57c2_d30f_8b41);

/// A deterministic GUID (RFC 4122 version 5) for the disk or one of its
/// partitions, from the image's manifest digest and the disk id.
///
/// The same inputs always give the same GUID; any difference in digest, disk
/// id or partition number gives a different one. Fields are length-prefixed,
/// so no two different inputs serialize alike.
pub fn derive_guid(manifest_digest: &str, disk_id: &str, what: GuidFor) -> Uuid {
    let mut name = Vec::with_capacity(64 + manifest_digest.len() + disk_id.len());
    name.extend_from_slice(b"ocidisk gpt guid v1\0");
    for field in [manifest_digest.as_bytes(), disk_id.as_bytes()] {
        name.extend_from_slice(&(field.len() as u64).to_le_bytes());
        name.extend_from_slice(field);
    }
    match what {
        GuidFor::Disk => name.extend_from_slice(b"disk"),
        GuidFor::Partition(index) => {
            name.extend_from_slice(b"partition");
            name.extend_from_slice(&(index as u64).to_le_bytes());
        }
    }
    Uuid::new_v5(&GUID_NAMESPACE, &name)
}

/// Checks a table against the disk before the `gpt` crate sees it.
fn validate(blocks: u64, disk_size: u64, partitions: &[GptPartition]) -> Result<(), GptError> {
    if !disk_size.is_multiple_of(SECTOR_SIZE) || blocks < MIN_DISK_BLOCKS {
        return Err(GptError::DiskSize { size: disk_size });
    }
    if partitions.len() > MAX_PARTITIONS {
        return Err(GptError::TooManyPartitions {
            count: partitions.len(),
        });
    }
    let last_usable = last_usable_lba(blocks);
    for (i, p) in partitions.iter().enumerate() {
        let index = i + 1;
        let units = p.name.encode_utf16().count();
        if units > MAX_NAME_UNITS {
            return Err(GptError::NameTooLong {
                index,
                name: p.name.clone(),
                units,
            });
        }
        if p.type_guid.is_nil() {
            return Err(GptError::NilType {
                index,
                name: p.name.clone(),
            });
        }
        if p.first_lba < FIRST_USABLE_LBA || p.last_lba > last_usable || p.first_lba > p.last_lba {
            return Err(GptError::OutOfRange {
                index,
                name: p.name.clone(),
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                first_usable: FIRST_USABLE_LBA,
                last_usable,
            });
        }
        for (j, q) in partitions[..i].iter().enumerate() {
            if p.first_lba <= q.last_lba && q.first_lba <= p.last_lba {
                return Err(GptError::Overlap {
                    index,
                    name: p.name.clone(),
                    other: j + 1,
                });
            }
        }
    }
    Ok(())
}

/// Generates the protective MBR and both GPT copies for a disk of
/// `disk_size` bytes.
///
/// Partitions are written in the order given (entry 1 first) and must lie
/// within the usable blocks without overlapping. The result is two
/// generated extents: the first 34 blocks and the last 33.
pub fn build(
    disk_size: u64,
    disk_guid: Uuid,
    partitions: &[GptPartition],
) -> Result<Vec<Extent>, GptError> {
    let blocks = disk_size / SECTOR_SIZE;
    validate(blocks, disk_size, partitions)?;
    let crate_err = |e: &dyn std::fmt::Display| GptError::Crate(e.to_string());

    let mut device = Capture::new(disk_size);
    let mbr_blocks = u32::try_from(blocks - 1).unwrap_or(u32::MAX);
    ProtectiveMBR::with_lb_size(mbr_blocks)
        .overwrite_lba0(&mut device)
        .map_err(|e| crate_err(&e))?;

    let mut disk: GptDisk<Capture> = GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(device, Some(disk_guid))
        .map_err(|e| crate_err(&e))?;
    let entries: BTreeMap<u32, gpt::partition::Partition> = partitions
        .iter()
        .zip(1u32..)
        .map(|(p, id)| {
            let entry = gpt::partition::Partition {
                part_type_guid: Type {
                    guid: p.type_guid,
                    os: OperatingSystem::None,
                },
                part_guid: p.guid,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                flags: 0,
                name: p.name.clone(),
            };
            (id, entry)
        })
        .collect();
    disk.update_partitions(entries).map_err(|e| crate_err(&e))?;
    // The crate derives the usable range itself; make sure it agrees with
    // the range the partitions were validated (and placed) against.
    let header = disk.header();
    if header.first_usable != FIRST_USABLE_LBA || header.last_usable != last_usable_lba(blocks) {
        return Err(GptError::Crate(format!(
            "the gpt crate chose usable blocks {}–{}, expected {FIRST_USABLE_LBA}–{}",
            header.first_usable,
            header.last_usable,
            last_usable_lba(blocks)
        )));
    }
    let device = disk.write().map_err(|e| crate_err(&e))?;
    Ok(device.into_extents())
}

/// A disk-sized device that keeps only the two GPT areas, for the `gpt`
/// crate to write into. Reads of never-written bytes there return zeros;
/// any access outside them is an error.
#[derive(Debug)]
struct Capture {
    size: u64,
    pos: u64,
    head: Vec<u8>,
    tail_start: u64,
    tail: Vec<u8>,
}

impl Capture {
    /// Areas for a disk of `size` bytes, at least [`MIN_DISK_BLOCKS`] long.
    fn new(size: u64) -> Capture {
        let tail_len = TAIL_BLOCKS * SECTOR_SIZE;
        Capture {
            size,
            pos: 0,
            head: vec![0; (FIRST_USABLE_LBA * SECTOR_SIZE) as usize],
            tail_start: size - tail_len,
            tail: vec![0; tail_len as usize],
        }
    }

    /// The captured bytes at the current position, `len` long.
    fn window(&mut self, len: usize) -> io::Result<&mut [u8]> {
        let (pos, end) = (self.pos, self.pos.saturating_add(len as u64));
        if end <= self.head.len() as u64 {
            return Ok(&mut self.head[pos as usize..end as usize]);
        }
        if pos >= self.tail_start && end <= self.size {
            let at = (pos - self.tail_start) as usize;
            return Ok(&mut self.tail[at..at + len]);
        }
        Err(io::Error::other(format!(
            "the gpt crate accessed bytes {pos}..{end}, outside the GPT areas"
        )))
    }

    fn into_extents(self) -> Vec<Extent> {
        let head_len = self.head.len() as u64;
        let tail_len = self.tail.len() as u64;
        vec![
            Extent {
                start: 0,
                len: head_len,
                source: Source::Bytes {
                    data: Arc::from(self.head),
                    offset: 0,
                    inline: false,
                },
            },
            Extent {
                start: self.tail_start,
                len: tail_len,
                source: Source::Bytes {
                    data: Arc::from(self.tail),
                    offset: 0,
                    inline: false,
                },
            },
        ]
    }
}

impl Read for Capture {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len();
        buf.copy_from_slice(self.window(n)?);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.window(buf.len())?.copy_from_slice(buf);
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Capture {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    /// CRC32 (IEEE, reflected), written independently of the `gpt` crate.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn le64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// A flat image of a disk whose only contents are `extents`.
    fn flatten(size: u64, extents: &[Extent]) -> Vec<u8> {
        let mut disk = vec![0u8; size as usize];
        for e in extents {
            let Source::Bytes { data, offset, .. } = &e.source else {
                panic!("GPT extents are generated bytes");
            };
            disk[e.start as usize..e.end() as usize]
                .copy_from_slice(&data[*offset..*offset + e.len as usize]);
        }
        disk
    }

    fn part(name: &str, index: usize, first_lba: u64, last_lba: u64) -> GptPartition {
        GptPartition {
            name: name.to_owned(),
            type_guid: Uuid::from_u128(0x0FC6_3DAF_8483_4772_8E79_3D69_D847_7DE4),
            guid: derive_guid("sha256:test", "disk", GuidFor::Partition(index)),
            first_lba,
            last_lba,
        }
    }

    fn sample() -> (u64, Uuid, Vec<GptPartition>) {
        let size = 8 * MIB;
        let guid = derive_guid("sha256:test", "disk", GuidFor::Disk);
        let parts = vec![
            part("ESP", 1, 2048, 4095),
            part("ünïcode-name", 2, 4096, 8191),
            // 36 UTF-16 units: the longest name that fits.
            part(&"x".repeat(36), 3, 8192, last_usable_lba(size / 512)),
        ];
        (size, guid, parts)
    }

    #[test]
    fn layout_and_checksums() {
        let (size, guid, parts) = sample();
        let extents = build(size, guid, &parts).unwrap();
        let n = size / SECTOR_SIZE;
        assert_eq!(extents.len(), 2);
        assert_eq!((extents[0].start, extents[0].len), (0, 34 * 512));
        assert_eq!(
            (extents[1].start, extents[1].len),
            ((n - 33) * 512, 33 * 512)
        );
        let disk = flatten(size, &extents);

        // Protective MBR: one 0xEE record from LBA 1 over the rest of the disk.
        let mbr = &disk[..512];
        assert_eq!(&mbr[510..], &[0x55, 0xAA]);
        assert_eq!(mbr[446 + 4], 0xEE);
        assert_eq!(le32(mbr, 446 + 8), 1);
        assert_eq!(le32(mbr, 446 + 12) as u64, n - 1);
        assert!(mbr[446 + 16..510].iter().all(|&b| b == 0));

        let primary = &disk[512..1024];
        let backup = &disk[(n as usize - 1) * 512..];
        for (hdr, my_lba, alt_lba, entries_lba) in
            [(primary, 1, n - 1, 2), (backup, n - 1, 1, n - 33)]
        {
            assert_eq!(&hdr[..8], b"EFI PART");
            assert_eq!(le32(hdr, 8), 0x0001_0000);
            assert_eq!(le32(hdr, 12), 92);
            assert_eq!(le64(hdr, 24), my_lba);
            assert_eq!(le64(hdr, 32), alt_lba);
            assert_eq!(le64(hdr, 40), 34);
            assert_eq!(le64(hdr, 48), n - 34);
            assert_eq!(Uuid::from_slice_le(&hdr[56..72]).unwrap(), guid);
            assert_eq!(le64(hdr, 72), entries_lba);
            assert_eq!(le32(hdr, 80), 128);
            assert_eq!(le32(hdr, 84), 128);
            let entries = &disk[entries_lba as usize * 512..][..128 * 128];
            assert_eq!(le32(hdr, 88), crc32(entries));
            let mut h = hdr[..92].to_vec();
            h[16..20].fill(0);
            assert_eq!(le32(hdr, 16), crc32(&h));
            assert!(hdr[92..].iter().all(|&b| b == 0));
        }
        assert_eq!(
            disk[2 * 512..34 * 512],
            disk[(n as usize - 33) * 512..(n as usize - 1) * 512]
        );

        // Entries in order, with our GUIDs and names; the rest unused.
        let entries = &disk[1024..];
        for (i, p) in parts.iter().enumerate() {
            let e = &entries[i * 128..][..128];
            assert_eq!(Uuid::from_slice_le(&e[..16]).unwrap(), p.type_guid);
            assert_eq!(Uuid::from_slice_le(&e[16..32]).unwrap(), p.guid);
            assert_eq!(le64(e, 32), p.first_lba);
            assert_eq!(le64(e, 40), p.last_lba);
            let units: Vec<u16> = e[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            assert_eq!(String::from_utf16(&units).unwrap(), p.name);
        }
        assert!(entries[3 * 128..128 * 128].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_gpt_crate_reads_it_back() {
        let (size, guid, parts) = sample();
        let disk = flatten(size, &build(size, guid, &parts).unwrap());
        let read = GptConfig::new()
            .writable(false)
            .only_valid_headers(true)
            .open_from_device(Cursor::new(disk))
            .unwrap();
        assert_eq!(*read.guid(), guid);
        let got: Vec<_> = read.partitions().values().collect();
        assert_eq!(got.len(), parts.len());
        for (g, p) in got.iter().zip(&parts) {
            assert_eq!(g.name, p.name);
            assert_eq!(g.part_guid, p.guid);
            assert_eq!(g.part_type_guid.guid, p.type_guid);
            assert_eq!((g.first_lba, g.last_lba), (p.first_lba, p.last_lba));
        }
    }

    #[test]
    fn sgdisk_finds_no_problems() {
        let (size, guid, parts) = sample();
        let disk = flatten(size, &build(size, guid, &parts).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, &disk).unwrap();
        let out = Command::new("sgdisk")
            .arg("-v")
            .arg(&path)
            .output()
            .expect("sgdisk is needed (installed by .ci/install-deps)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "sgdisk -v failed: {text}");
        assert!(text.contains("No problems found"), "sgdisk -v: {text}");

        // The check can fail: a damaged backup entry array is reported.
        let mut bad = disk;
        let at = bad.len() - 20 * 512;
        bad[at] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let out = Command::new("sgdisk")
            .arg("-v")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("No problems found"), "sgdisk -v: {text}");
    }

    #[test]
    fn huge_disks_cap_the_protective_record() {
        let size = 3 << 40; // 3 TiB: more blocks than 32 bits count.
        let extents = build(size, Uuid::from_u128(1), &[]).unwrap();
        let Source::Bytes { data, .. } = &extents[0].source else {
            panic!("generated")
        };
        assert_eq!(le32(data, 446 + 12), u32::MAX);
        assert_eq!(extents[1].end(), size);
    }

    #[test]
    fn guids_are_deterministic_and_distinct() {
        let a = derive_guid("sha256:aa", "node-1", GuidFor::Disk);
        assert_eq!(a, derive_guid("sha256:aa", "node-1", GuidFor::Disk));
        assert_eq!(a.get_version_num(), 5);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        let others = [
            derive_guid("sha256:aa", "node-2", GuidFor::Disk),
            derive_guid("sha256:ab", "node-1", GuidFor::Disk),
            derive_guid("sha256:aa", "node-1", GuidFor::Partition(1)),
            derive_guid("sha256:aa", "node-1", GuidFor::Partition(2)),
            // Field boundaries matter: the digest/id split is not ambiguous.
            derive_guid("sha256:aanode-1", "", GuidFor::Disk),
        ];
        for (i, g) in others.iter().enumerate() {
            assert_ne!(*g, a, "{i}");
            for h in &others[i + 1..] {
                assert_ne!(g, h);
            }
        }
    }

    #[test]
    fn bad_tables_are_errors() {
        let size = 8 * MIB;
        let last = last_usable_lba(size / 512);
        let g = Uuid::from_u128(7);
        let err = |size, parts: &[GptPartition]| build(size, g, parts).unwrap_err();

        assert!(matches!(err(size + 1, &[]), GptError::DiskSize { .. }));
        assert!(matches!(
            err((MIN_DISK_BLOCKS - 1) * 512, &[]),
            GptError::DiskSize { .. }
        ));
        build(MIN_DISK_BLOCKS * 512, g, &[part("one", 1, 34, 34)]).unwrap();

        let many: Vec<_> = (0..129)
            .map(|i| part("p", i, 34 + i as u64, 34 + i as u64))
            .collect();
        assert!(matches!(
            err(size, &many),
            GptError::TooManyPartitions { count: 129 }
        ));
        let most: Vec<_> = (0..128)
            .map(|i| part("p", i, 34 + i as u64, 34 + i as u64))
            .collect();
        build(size, g, &most).unwrap();

        let e = err(size, &[part(&"x".repeat(37), 1, 2048, 4095)]);
        assert!(matches!(e, GptError::NameTooLong { units: 37, .. }), "{e}");
        // A character outside the BMP takes two units.
        let e = err(
            size,
            &[part(&format!("{}😀", "x".repeat(35)), 1, 2048, 4095)],
        );
        assert!(matches!(e, GptError::NameTooLong { units: 37, .. }), "{e}");

        let mut nil = part("nil", 1, 2048, 4095);
        nil.type_guid = Uuid::nil();
        assert!(matches!(err(size, &[nil]), GptError::NilType { .. }));

        for (first, l) in [(33, 4095), (2048, last + 1), (4096, 4095)] {
            let e = err(size, &[part("r", 1, first, l)]);
            assert!(matches!(e, GptError::OutOfRange { .. }), "{e}");
        }
        let e = err(size, &[part("a", 1, 2048, 4095), part("b", 2, 4095, 5000)]);
        assert!(
            matches!(
                e,
                GptError::Overlap {
                    index: 2,
                    other: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("\"b\""), "{e}");
    }
}
