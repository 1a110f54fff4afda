//! The device's identity: feature bits, limits and the `virtio_blk_config`
//! space the driver reads.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// The logical block size: sector numbers in requests count these.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Physical blocks are 4 KiB: `2^PHYSICAL_BLOCK_EXP` logical blocks.
pub const PHYSICAL_BLOCK_EXP: u8 = 3;
/// The largest segment (one descriptor) the driver should send.
pub const SIZE_MAX: u32 = 4 << 20;
/// The most sectors one discard or write-zeroes segment may cover (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// The most segments one discard or write-zeroes request may carry.
pub const MAX_DISCARD_SEG: u32 = 32;
/// The alignment, in sectors, the driver should split discards at (the
/// physical block). Only a hint: the device accepts any whole sectors.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 1 << PHYSICAL_BLOCK_EXP;
/// The largest virtqueue the device accepts.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// The most virtqueues the device offers: one worker thread each, and
/// `queues_per_thread` has one bit per queue in a `u64`.
pub const MAX_QUEUES: u16 = 64;
/// Bytes in the serial number returned by `VIRTIO_BLK_T_GET_ID`.
pub const SERIAL_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// The offset of the `writeback` (WCE) byte in `virtio_blk_config`.
pub const WCE_OFFSET: usize = 32;
/// Bytes of `virtio_blk_config` up to and including the write-zeroes fields.
pub const CONFIG_LEN: usize = 60;

/// The vhost-user feature bit that enables protocol feature negotiation.
const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;

/// What the device is, fixed for the life of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Disk size in bytes, a multiple of [`SECTOR_SIZE`].
    pub size: u64,
    /// Whether the disk refuses writes.
    pub read_only: bool,
    /// The number of virtqueues, 1..=[`MAX_QUEUES`].
    pub num_queues: u16,
    /// The largest queue size the driver may choose, a power of two up to
    /// [`MAX_QUEUE_SIZE`].
    pub queue_size: u16,
    /// The serial number, zero-padded.
    pub serial: [u8; SERIAL_LEN],
    /// Start in write-through mode (the guest may change it).
    pub writethrough: bool,
}

/// A configuration value the device cannot offer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The number of queues is 0 or above [`MAX_QUEUES`].
    #[error("the number of queues must be between 1 and {MAX_QUEUES}, not {0}")]
    NumQueues(u32),
    /// The queue size is not a power of two in range.
    #[error("the queue size must be a power of two between 4 and {MAX_QUEUE_SIZE}, not {0}")]
    QueueSize(u32),
    /// The serial number is longer than the 20 bytes virtio-blk has for it.
    #[error("the serial number {0:?} is longer than {SERIAL_LEN} bytes")]
    SerialTooLong(String),
    /// The disk size is not a whole number of sectors.
    #[error("the disk size {0} is not a multiple of {SECTOR_SIZE} bytes")]
    Size(u64),
}

impl DeviceConfig {
    /// Checks the values a user chose and builds the configuration.
    pub fn new(
        size: u64,
        read_only: bool,
        num_queues: u32,
        queue_size: u32,
        serial: &str,
        writethrough: bool,
    ) -> Result<Self, ConfigError> {
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(ConfigError::Size(size));
        }
        if num_queues == 0 || num_queues > u32::from(MAX_QUEUES) {
            return Err(ConfigError::NumQueues(num_queues));
        }
        if !(4..=u32::from(MAX_QUEUE_SIZE)).contains(&queue_size) || !queue_size.is_power_of_two() {
            return Err(ConfigError::QueueSize(queue_size));
        }
        let mut id = [0u8; SERIAL_LEN];
        let bytes = serial.as_bytes();
        if bytes.len() > SERIAL_LEN {
            return Err(ConfigError::SerialTooLong(serial.to_owned()));
        }
        id[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            size,
            read_only,
            num_queues: num_queues as u16,
            queue_size: queue_size as u16,
            serial: id,
            writethrough,
        })
    }

    /// The most data segments one request may carry (`seg_max`).
    pub fn seg_max(&self) -> u32 {
        u32::from(self.queue_size) - 2
    }

    /// The virtio feature bits the device offers.
    pub fn features(&self) -> u64 {
        let mut bits = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_RING_F_INDIRECT_DESC,
            VHOST_USER_F_PROTOCOL_FEATURES,
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_TOPOLOGY,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_CONFIG_WCE,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
            VIRTIO_BLK_F_MQ,
        ]
        .iter()
        .fold(0u64, |acc, bit| acc | 1 << bit);
        if self.read_only {
            bits |= 1 << VIRTIO_BLK_F_RO;
        }
        bits
    }

    /// The `virtio_blk_config` space (little-endian), with the given
    /// write-back setting.
    pub fn config_space(&self, writeback: bool) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |offset: usize, bytes: &[u8]| {
            c[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0, &(self.size >> SECTOR_SHIFT).to_le_bytes()); // capacity
        put(8, &SIZE_MAX.to_le_bytes()); // size_max
        put(12, &self.seg_max().to_le_bytes()); // seg_max
                                                // 16..20: geometry, not offered.
        put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        put(24, &[PHYSICAL_BLOCK_EXP]); // physical_block_exp
        put(25, &[0]); // alignment_offset
        put(26, &(1u16 << PHYSICAL_BLOCK_EXP).to_le_bytes()); // min_io_size
        put(28, &0u32.to_le_bytes()); // opt_io_size
        put(WCE_OFFSET, &[u8::from(writeback)]); // writeback
        put(34, &self.num_queues.to_le_bytes()); // num_queues
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &MAX_DISCARD_SEG.to_le_bytes()); // max_discard_seg
        put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &MAX_DISCARD_SEG.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
        c
    }

    /// The bytes `[offset, offset + size)` of the config space; bytes past the
    /// fields the device knows read as zero, because the frontend asks for its
    /// own (possibly newer, longer) `virtio_blk_config`.
    pub fn read_config(&self, writeback: bool, offset: u32, size: u32) -> Vec<u8> {
        let space = self.config_space(writeback);
        let mut out = vec![0u8; size as usize];
        let start = offset as usize;
        if start < CONFIG_LEN {
            let n = (CONFIG_LEN - start).min(out.len());
            out[..n].copy_from_slice(&space[start..start + n]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DeviceConfig {
        DeviceConfig::new(1 << 30, false, 2, 256, "serial-1", false).unwrap()
    }

    #[test]
    fn refuses_bad_values() {
        assert_eq!(
            DeviceConfig::new(1000, false, 1, 256, "", false),
            Err(ConfigError::Size(1000))
        );
        assert_eq!(
            DeviceConfig::new(512, false, 0, 256, "", false),
            Err(ConfigError::NumQueues(0))
        );
        assert_eq!(
            DeviceConfig::new(512, false, 65, 256, "", false),
            Err(ConfigError::NumQueues(65))
        );
        assert_eq!(
            DeviceConfig::new(512, false, 1, 100, "", false),
            Err(ConfigError::QueueSize(100))
        );
        assert_eq!(
            DeviceConfig::new(512, false, 1, 2048, "", false),
            Err(ConfigError::QueueSize(2048))
        );
        assert!(matches!(
            DeviceConfig::new(512, false, 1, 256, "123456789012345678901", false),
            Err(ConfigError::SerialTooLong(_))
        ));
        let c = DeviceConfig::new(512, false, 1, 256, "12345678901234567890", false).unwrap();
        assert_eq!(&c.serial, b"12345678901234567890");
    }

    #[test]
    fn config_space_fields() {
        let c = config().config_space(true);
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 1 << 21);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 254);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
        assert_eq!(c[24], 3);
        assert_eq!(c[WCE_OFFSET], 1);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 2);
        assert_ne!(u32::from_le_bytes(c[36..40].try_into().unwrap()), 0);
        assert_ne!(u32::from_le_bytes(c[40..44].try_into().unwrap()), 0);
        assert_ne!(u32::from_le_bytes(c[48..52].try_into().unwrap()), 0);
        assert_ne!(u32::from_le_bytes(c[52..56].try_into().unwrap()), 0);
        assert_eq!(c[56], 1);
        assert_eq!(config().config_space(false)[WCE_OFFSET], 0);
    }

    #[test]
    fn read_config_pads_and_clips() {
        let c = config();
        assert_eq!(c.read_config(true, 0, 8), (1u64 << 21).to_le_bytes());
        assert_eq!(c.read_config(true, 32, 1), [1]);
        let long = c.read_config(true, 0, 96);
        assert_eq!(long.len(), 96);
        assert!(long[CONFIG_LEN..].iter().all(|&b| b == 0));
        assert_eq!(c.read_config(true, 200, 4), [0; 4]);
        assert_eq!(c.read_config(true, u32::MAX, 2), [0; 2]);
    }

    #[test]
    fn read_only_feature() {
        let mut c = config();
        assert_eq!(c.features() & (1 << VIRTIO_BLK_F_RO), 0);
        c.read_only = true;
        assert_ne!(c.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(c.features() & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(c.features() & (1 << VHOST_USER_F_PROTOCOL_FEATURES), 0);
    }
}
