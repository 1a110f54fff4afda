//! What a disk is made of: its size and its partitions, each with a name, a
//! type, a size and a content.
//!
//! A [`LayoutSpec`] comes from the built-in `monogon` preset
//! ([`LayoutSpec::monogon`], exactly the disk Monogon's installer writes for
//! a test node) or from a TOML layout file ([`LayoutSpec::from_file`]):
//!
//! ```toml
//! disk_size = "4GiB"              # or a number of bytes; --disk-size overrides it
//!
//! [[partitions]]
//! name = "ESP"
//! type = "esp"                    # a GUID or an alias (see TYPE_ALIASES)
//! size = "256MiB"
//! [partitions.fat32]
//! label = "BOOT"
//! files = [
//!   { path = "EFI/BOOT/BOOTX64.EFI", content = "payload:kernel.efi" },
//!   { path = "loader/params", content = "file:params.bin" },  # relative to this file
//!   { path = "node.txt", content = "inline:node=1" },           # UTF-8 text
//!   { path = "node.pb", content = "base64:CgRub2Rl" },          # bytes
//! ]
//!
//! [[partitions]]
//! name = "root"
//! type = "linux-root-x86-64"
//! size = "rest"                   # the largest free gap, in whole MiB
//! content = "layer:1"             # or layer:sha256:…, payload:NAME, file:PATH, empty
//! ```
//!
//! Placement is Monogon's: partitions are placed in order, first fit, each
//! start rounded up to 1 MiB; sizes are rounded up to whole 512-byte blocks;
//! a `rest` partition takes the largest free gap at the time it is placed,
//! rounded down to whole MiB (so it is usually listed last).
//!
//! [`LayoutSpec::canonical`] serializes a spec without the disk id; its
//! SHA-256 ([`LayoutSpec::layout_hash`]) identifies the layout of a base
//! disk.

mod canonical;
mod error;
mod file;
mod parse;
mod place;
#[cfg(test)]
mod tests;
mod validate;

pub use crate::monogon::preset::{MonogonPreset, MONOGON_ORIGIN};
pub use error::{Problem, SizeError, SpecError};
pub use parse::{parse_content, parse_size, parse_type};

use crate::gpt::SECTOR_SIZE;
pub use crate::oci::LayerRef;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use uuid::Uuid;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;
/// Partition starts are aligned to this many bytes.
pub const ALIGNMENT: u64 = MIB;
/// The disk size of the `monogon` preset unless told otherwise.
pub const MONOGON_DISK_SIZE: u64 = 5 * GIB;

/// The EFI system partition type.
pub const ESP_TYPE: Uuid = Uuid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
/// Monogon's system partition A type.
pub const METROPOLIS_SYSTEM_A_TYPE: Uuid = Uuid::from_u128(0xee96054b_f6d0_4267_aaaa_724b2afea74c);
/// Monogon's system partition B type.
pub const METROPOLIS_SYSTEM_B_TYPE: Uuid = Uuid::from_u128(0xee96054b_f6d0_4267_bbbb_724b2afea74c);
/// Monogon's node data partition type.
pub const METROPOLIS_DATA_TYPE: Uuid = Uuid::from_u128(0x9eeec464_6885_414a_b278_4305c51f7966);

/// Partition type aliases a layout file may use instead of a GUID
/// (compared case-insensitively).
pub const TYPE_ALIASES: &[(&str, Uuid)] = &[
    ("esp", ESP_TYPE),
    (
        "bios-boot",
        Uuid::from_u128(0x21686148_6449_6E6F_744E_656564454649),
    ),
    (
        "xbootldr",
        Uuid::from_u128(0xBC13C2FF_59E6_4262_A352_B275FD6F7172),
    ),
    (
        "linux",
        Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4),
    ),
    (
        "linux-root-x86-64",
        Uuid::from_u128(0x4F68BCE3_E8CD_4DB1_96E7_FBCAF984B709),
    ),
    (
        "linux-root-arm64",
        Uuid::from_u128(0xB921B045_1DF0_41C3_AF44_4C6F280D3FAE),
    ),
    (
        "linux-usr-x86-64",
        Uuid::from_u128(0x8484680C_9521_48C6_9C11_B0720656F69E),
    ),
    (
        "linux-usr-arm64",
        Uuid::from_u128(0xB0E01050_EE5F_4390_949A_9101B17104E9),
    ),
    (
        "linux-home",
        Uuid::from_u128(0x933AC7E1_2EB4_4F13_B844_0E14E2AEF915),
    ),
    (
        "linux-srv",
        Uuid::from_u128(0x3B8F8425_20E0_4F3B_907F_1A25A76F98E8),
    ),
    (
        "linux-var",
        Uuid::from_u128(0x4D21B016_B534_45C2_A9FB_5C16E091FD2D),
    ),
    (
        "linux-lvm",
        Uuid::from_u128(0xE6D6D379_F507_44C2_A23C_238F2A3DF928),
    ),
    (
        "linux-raid",
        Uuid::from_u128(0xA19D880F_05FC_4D3B_A006_743F0F84911E),
    ),
    (
        "swap",
        Uuid::from_u128(0x0657FD6D_A4AB_43C4_84E5_0933C84B4F4F),
    ),
    (
        "microsoft-basic-data",
        Uuid::from_u128(0xEBD0A0A2_B9E5_4433_87C0_68B6B72699C7),
    ),
    ("metropolis-system-a", METROPOLIS_SYSTEM_A_TYPE),
    ("metropolis-system-b", METROPOLIS_SYSTEM_B_TYPE),
    ("metropolis-data", METROPOLIS_DATA_TYPE),
];

/// A disk: its size and its partitions, in table order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutSpec {
    /// The disk size in bytes (a multiple of 512).
    pub disk_size: u64,
    /// The partitions; entry 1 first.
    pub partitions: Vec<PartitionSpec>,
}

/// One partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSpec {
    /// The GPT partition name (1 to 36 UTF-16 code units, unique).
    pub name: String,
    /// The partition type GUID.
    pub type_guid: Uuid,
    /// How big it is.
    pub size: Size,
    /// What it holds.
    pub content: ContentSpec,
}

/// The size of a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// This many bytes, rounded up to whole blocks.
    Bytes(u64),
    /// The largest free gap when the partition is placed, in whole MiB.
    Rest,
}

/// What a partition, or a file in a FAT32 partition, holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentSpec {
    /// Nothing: a partition of zeros, or an empty file.
    Empty,
    /// A payload of a Monogon image, by name.
    Payload(String),
    /// A layer of the image.
    Layer(LayerRef),
    /// A host file (opened read-only when the disk is composed).
    File(PathBuf),
    /// Bytes given inline, e.g. small per-node files.
    Inline(Arc<[u8]>),
    /// A FAT32 file system with these files, in insertion order. Paths are
    /// `/`-separated and relative to the root; a file's content cannot be
    /// a file system itself.
    Fat32 {
        /// The volume label (empty for none).
        label: String,
        /// `(path in the file system, content)`.
        files: Vec<(String, ContentSpec)>,
    },
}

impl fmt::Display for ContentSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentSpec::Empty => write!(f, "empty"),
            ContentSpec::Payload(name) => write!(f, "payload:{name}"),
            ContentSpec::Layer(LayerRef::Index(i)) => write!(f, "layer:{i}"),
            ContentSpec::Layer(LayerRef::Digest(d)) => write!(f, "layer:{d}"),
            ContentSpec::File(path) => write!(f, "file:{}", path.display()),
            ContentSpec::Inline(data) => write!(f, "inline ({} bytes)", data.len()),
            ContentSpec::Fat32 { label, files } => {
                write!(f, "fat32 {label:?} ({} files)", files.len())
            }
        }
    }
}

/// Where a partition was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// First block, inclusive.
    pub first_lba: u64,
    /// Last block, inclusive.
    pub last_lba: u64,
}

impl Placement {
    /// Byte offset of the partition on the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR_SIZE
    }

    /// Size of the partition in bytes.
    pub fn len(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR_SIZE
    }

    /// Whether the partition is empty (never, for a placed partition).
    pub fn is_empty(&self) -> bool {
        self.last_lba < self.first_lba
    }
}
