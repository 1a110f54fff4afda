//! Where the regions of the file system lie, and the sectors that say so:
//! boot sector, FSInfo and their backups.
//!
//! The geometry is Monogon's installer's: 512-byte sectors, one sector per
//! cluster, 8 reserved sectors (boot sector at 0, FSInfo at 1, their
//! backups at 6 and 7), two FATs of `(total + 2 + 129) / 130` sectors, the
//! root directory at cluster 2.

/// Bytes per sector, and per cluster.
pub const SECTOR: u64 = 512;
/// Sectors before the first FAT.
pub const RESERVED_SECTORS: u64 = 8;
/// Number of FATs.
pub const NUM_FATS: u64 = 2;
/// The sector of the FSInfo structure.
const FSINFO_SECTOR: u16 = 1;
/// The sector of the backup boot sector (its FSInfo copy follows it).
pub const BACKUP_BOOT_SECTOR: u64 = 6;
/// The media descriptor: a fixed disk.
pub const MEDIA: u8 = 0xF8;
/// The cluster of the root directory.
pub const ROOT_CLUSTER: u32 = 2;
/// Fewer clusters than this make a FAT16 by definition.
pub const MIN_CLUSTERS: u64 = 65525;
/// The most clusters dosfstools accepts for FAT32 (the FAT specification
/// allows a few more; the lower limit keeps every tool happy).
pub const MAX_CLUSTERS: u64 = (1 << 28) - 16;

/// The layout of a FAT32 file system of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Total sectors.
    pub total_sectors: u32,
    /// Sectors per FAT.
    pub fat_sectors: u32,
    /// Data clusters (numbered from 2).
    pub clusters: u32,
}

impl Geometry {
    /// The geometry for `total` sectors, or `None` when the cluster count is
    /// outside FAT32's range.
    pub fn for_sectors(total: u64) -> Option<Geometry> {
        let total_sectors = u32::try_from(total).ok()?;
        let fat_sectors = fat_sectors(total);
        let clusters = total.checked_sub(RESERVED_SECTORS + NUM_FATS * fat_sectors)?;
        if !(MIN_CLUSTERS..=MAX_CLUSTERS).contains(&clusters) {
            return None;
        }
        Some(Geometry {
            total_sectors,
            fat_sectors: u32::try_from(fat_sectors).ok()?,
            clusters: u32::try_from(clusters).ok()?,
        })
    }

    /// Byte offset of the first FAT.
    pub fn fat_offset(&self, index: u64) -> u64 {
        (RESERVED_SECTORS + index * u64::from(self.fat_sectors)) * SECTOR
    }

    /// Byte offset of cluster 2, the first data cluster.
    pub fn data_offset(&self) -> u64 {
        self.fat_offset(NUM_FATS)
    }

    /// Byte offset of `cluster` (≥ 2).
    pub fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset() + u64::from(cluster - 2) * SECTOR
    }

    /// Total size in bytes.
    pub fn size(&self) -> u64 {
        u64::from(self.total_sectors) * SECTOR
    }
}

/// Sectors per FAT for `total` sectors, `(total + 2 + 129) / 130`: the split of the non-reserved space
/// where each FAT sector (128 entries) describes 128 data sectors, counting
/// the two reserved entries. Always enough: 128 F ≥ total − 8 − 2 F + 2.
pub fn fat_sectors(total: u64) -> u64 {
    (total + 2).div_ceil(130)
}

/// The smallest and largest sizes in bytes that make a valid FAT32 with
/// this geometry (sizes in between are valid too, save a few sectors just
/// above the smallest where one more FAT sector costs a cluster).
pub fn size_limits() -> (u64, u64) {
    let clusters = |t: u64| t.saturating_sub(RESERVED_SECTORS + NUM_FATS * fat_sectors(t));
    // 130 sectors add 128 clusters: start just below and walk up or down.
    let mut lo = MIN_CLUSTERS * 130 / 128;
    while clusters(lo) < MIN_CLUSTERS {
        lo += 1;
    }
    while lo > 0 && clusters(lo - 1) >= MIN_CLUSTERS {
        lo -= 1;
    }
    let mut hi = (MAX_CLUSTERS * 130 / 128 + 300).min(u64::from(u32::MAX));
    while clusters(hi) > MAX_CLUSTERS {
        hi -= 1;
    }
    (lo * SECTOR, hi * SECTOR)
}

/// The boot sector (sector 0, copied to sector 6).
pub fn boot_sector(geo: &Geometry, volume_id: u32, label: &[u8; 11]) -> [u8; 512] {
    let mut s = [0u8; 512];
    // `jmp $; nop`: nothing should boot this volume.
    s[0..3].copy_from_slice(&[0xEB, 0xFE, 0x90]);
    s[3..11].copy_from_slice(b"MONOGON\0");
    s[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    s[13] = 1; // sectors per cluster
    s[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    s[16] = NUM_FATS as u8;
    // Root entry count, 16-bit total and FAT size stay 0: FAT32.
    s[21] = MEDIA;
    // CHS geometry for int 13h, unused by anything modern. Monogon's
    // installer leaves it 0, but mtools then refuses the volume ("zero
    // number of heads or sectors"), so say 63 sectors × 255 heads, the usual
    // fixed-disk translation. Hidden sectors stay 0 as Monogon writes them.
    s[24..26].copy_from_slice(&63u16.to_le_bytes());
    s[26..28].copy_from_slice(&255u16.to_le_bytes());
    s[32..36].copy_from_slice(&geo.total_sectors.to_le_bytes());
    s[36..40].copy_from_slice(&geo.fat_sectors.to_le_bytes());
    // Flags 0: the FATs are mirrored. Version 0.0.
    s[44..48].copy_from_slice(&ROOT_CLUSTER.to_le_bytes());
    s[48..50].copy_from_slice(&FSINFO_SECTOR.to_le_bytes());
    s[50..52].copy_from_slice(&(BACKUP_BOOT_SECTOR as u16).to_le_bytes());
    s[66] = 0x29; // extended boot signature: the next three fields are valid
    s[67..71].copy_from_slice(&volume_id.to_le_bytes());
    s[71..82].copy_from_slice(label);
    s[82..90].copy_from_slice(b"FAT32   ");
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// The FSInfo sector (sector 1, copied to sector 7).
pub fn fsinfo_sector(free_clusters: u32, next_free: u32) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    s[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    s[488..492].copy_from_slice(&free_clusters.to_le_bytes());
    s[492..496].copy_from_slice(&next_free.to_le_bytes());
    s[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monogon_esp_geometry() {
        // 128 MiB, as DESIGN.md says: 2017 sectors per FAT.
        let g = Geometry::for_sectors(128 * 1024 * 2).unwrap();
        assert_eq!(g.fat_sectors, 2017);
        assert_eq!(g.data_offset(), (8 + 2 * 2017) * 512);
        assert_eq!(g.clusters, 262144 - 8 - 2 * 2017);
        // Every cluster plus the two reserved entries has a FAT entry.
        assert!(u64::from(g.clusters) + 2 <= u64::from(g.fat_sectors) * 128);
    }

    #[test]
    fn limits_are_tight() {
        let (lo, hi) = size_limits();
        assert!(Geometry::for_sectors(lo / 512).is_some());
        assert!(Geometry::for_sectors(lo / 512 - 1).is_none());
        assert!(Geometry::for_sectors(hi / 512).is_some());
        assert!(Geometry::for_sectors(hi / 512 + 1).is_none());
        // About 32 MiB to 130 GiB with 512-byte clusters.
        assert!((32 << 20..33 << 20).contains(&lo), "{lo}");
        assert!((129 << 30..131 << 30).contains(&hi), "{hi}");
    }

    #[test]
    fn fat_always_covers_the_clusters() {
        let (lo, hi) = size_limits();
        for t in (lo / 512..lo / 512 + 2000).chain(hi / 512 - 2000..=hi / 512) {
            if let Some(g) = Geometry::for_sectors(t) {
                assert!(u64::from(g.clusters) + 2 <= u64::from(g.fat_sectors) * 128);
            }
        }
    }
}
