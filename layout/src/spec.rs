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

use crate::gpt::{self, SECTOR_SIZE};
pub use crate::oci::LayerRef;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use uuid::Uuid;

/// How the `monogon` preset is named in errors.
pub const MONOGON_ORIGIN: &str = "monogon preset";
/// The files the `monogon` preset's ESP has before
/// [`MonogonPreset::esp_files`].
const MONOGON_ESP_FILES: usize = 2;

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

/// Options of the built-in `monogon` preset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonogonPreset {
    /// The disk size in bytes; [`MONOGON_DISK_SIZE`] by default.
    pub disk_size: u64,
    /// The A/B loader to install as the removable-media boot file; the
    /// `kernel.efi` payload when `None`.
    pub abloader: Option<PathBuf>,
    /// The file name of the removable-media boot file in `EFI/BOOT/`, by
    /// architecture: `BOOTx64.EFI` (the default) or `BOOTAA64.EFI`.
    pub efi_boot_file: String,
    /// More files for the ESP, after the preset's own (per-node files such
    /// as `metropolis/parameters.pb`): `(path, content)`.
    pub esp_files: Vec<(String, ContentSpec)>,
}

impl Default for MonogonPreset {
    fn default() -> MonogonPreset {
        MonogonPreset {
            disk_size: MONOGON_DISK_SIZE,
            abloader: None,
            efi_boot_file: "BOOTx64.EFI".to_owned(),
            esp_files: Vec::new(),
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

/// A layout that cannot be read or does not describe a disk.
#[derive(Debug, Error)]
pub enum SpecError {
    /// The layout file cannot be read.
    #[error("{}: {source}", file.display())]
    Read {
        /// The layout file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The layout file is not valid TOML for a layout (syntax, unknown
    /// fields, wrong types); the message has the line and column.
    #[error("{}: {message}", file.display())]
    Toml {
        /// The layout file.
        file: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A field has a bad value.
    #[error("{origin}: {field}: {problem}")]
    Field {
        /// The layout file, or `monogon preset`, or `layout`.
        origin: String,
        /// The field, e.g. `partitions[2].size`.
        field: String,
        /// What is wrong with it.
        problem: Problem,
    },
}

/// What is wrong with a field of a layout.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Problem {
    /// Not a size.
    #[error("{0}")]
    BadSize(#[from] SizeError),
    /// No disk size in the file nor given otherwise.
    #[error("missing: give disk_size in the layout or --disk-size")]
    MissingDiskSize,
    /// The disk size is not a whole number of blocks or too small for a GPT.
    #[error("{0} bytes is not a multiple of 512 or too small for a GPT")]
    BadDiskSize(u64),
    /// A partition of zero bytes.
    #[error("a partition cannot be empty")]
    ZeroSize,
    /// Neither a GUID nor a known alias.
    #[error("unknown partition type {0:?}: give a GUID or one of {aliases}", aliases = alias_list())]
    UnknownType(String),
    /// The nil GUID, which marks unused entries.
    #[error("the nil GUID marks an unused GPT entry")]
    NilType,
    /// An empty partition name.
    #[error("a partition needs a name")]
    EmptyName,
    /// A name with a NUL character, which would end it early in the table.
    #[error("{0:?} contains a NUL character")]
    NulInName(String),
    /// A name longer than a GPT entry holds.
    #[error("{name:?} is {units} UTF-16 units long, a GPT entry holds 36")]
    NameTooLong {
        /// The name.
        name: String,
        /// Its length in UTF-16 units.
        units: usize,
    },
    /// A name used twice.
    #[error("{name:?} is also the name of partition {first}")]
    DuplicateName {
        /// The name.
        name: String,
        /// 1-based number of the partition that has it first.
        first: usize,
    },
    /// More partitions than a GPT holds.
    #[error("{0} partitions: a GPT holds at most 128")]
    TooManyPartitions(usize),
    /// A second `rest` partition.
    #[error("only one partition can have size \"rest\"; partition {first} has it already")]
    MultipleRest {
        /// 1-based number of the first `rest` partition.
        first: usize,
    },
    /// A partition that does not fit.
    #[error(
        "{need} bytes do not fit: the largest free gap (after 1 MiB alignment) is {largest} bytes \
         (a \"rest\" partition takes the largest gap when it is placed, so list it last)"
    )]
    DoesNotFit {
        /// Bytes needed.
        need: u64,
        /// Bytes in the largest aligned free gap.
        largest: u64,
    },
    /// Content that is larger than its partition.
    #[error("{content} is {len} bytes, larger than the partition's {size}")]
    ContentTooLarge {
        /// The content.
        content: String,
        /// Its length.
        len: u64,
        /// The partition's size.
        size: u64,
    },
    /// A content string that cannot be parsed.
    #[error("{0}")]
    BadContent(String),
    /// Both `content` and `fat32` given.
    #[error("give either content or a [fat32] table, not both")]
    ContentAndFat32,
    /// A FAT32 file whose content is a file system.
    #[error("a file in a FAT32 file system cannot itself be a FAT32 file system")]
    NestedFat32,
    /// A bad path in a FAT32 file system.
    #[error("{path:?}: {why}")]
    BadPath {
        /// The path.
        path: String,
        /// Why it is bad.
        why: &'static str,
    },
    /// A path component that cannot be a FAT long name.
    #[error("{path:?}: {component:?} {why}")]
    BadFileName {
        /// The path.
        path: String,
        /// The component.
        component: String,
        /// Why it cannot be a FAT name.
        why: String,
    },
    /// A bad FAT32 volume label.
    #[error("{0:?}: a FAT volume label is up to 11 ASCII characters (empty for none)")]
    BadLabel(String),
}

fn alias_list() -> String {
    let names: Vec<&str> = TYPE_ALIASES.iter().map(|(n, _)| *n).collect();
    names.join(", ")
}

/// A size string that cannot be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number with an optional unit.
    #[error(
        "{0:?} is not a size: give bytes or a number with a binary unit \
         (KiB, MiB, GiB, TiB; or K, M, G, T)"
    )]
    Syntax(String),
    /// A decimal unit, which would be ambiguous.
    #[error("{0:?}: decimal units (kB, MB, GB, TB) are ambiguous here, use KiB, MiB, GiB, TiB")]
    DecimalUnit(String),
    /// Too large for 64 bits.
    #[error("{0:?} is too large")]
    Overflow(String),
}

/// Parses a size: a number of bytes, optionally with a binary unit
/// (`512MiB`, `5GiB`, `4 G`, `1048576`, `1.5GiB` is not accepted).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err(SizeError::Syntax(text.to_owned()));
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "kb" | "mb" | "gb" | "tb" => return Err(SizeError::DecimalUnit(text.to_owned())),
        _ => return Err(SizeError::Syntax(text.to_owned())),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_owned()))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(text.to_owned()))
}

/// Parses a partition type: a GUID or an alias from [`TYPE_ALIASES`].
pub fn parse_type(text: &str) -> Result<Uuid, Problem> {
    let t = text.trim();
    if let Some((_, guid)) = TYPE_ALIASES
        .iter()
        .find(|(alias, _)| alias.eq_ignore_ascii_case(t))
    {
        return Ok(*guid);
    }
    match Uuid::try_parse(t) {
        Ok(guid) if guid.is_nil() => Err(Problem::NilType),
        Ok(guid) => Ok(guid),
        Err(_) => Err(Problem::UnknownType(text.to_owned())),
    }
}

/// Parses a content string; `base` is the directory `file:` paths are
/// relative to.
pub fn parse_content(text: &str, base: &Path) -> Result<ContentSpec, Problem> {
    let bad = |why: &str| Problem::BadContent(format!("{text:?}: {why}"));
    let (kind, arg) = text.split_once(':').unwrap_or((text, ""));
    match kind {
        "empty" if arg.is_empty() && !text.contains(':') => Ok(ContentSpec::Empty),
        "payload" if !arg.is_empty() => Ok(ContentSpec::Payload(arg.to_owned())),
        "layer" => {
            if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
                let index = arg
                    .parse()
                    .map_err(|_| bad("the layer index is too large"))?;
                Ok(ContentSpec::Layer(LayerRef::Index(index)))
            } else if is_digest(arg) {
                Ok(ContentSpec::Layer(LayerRef::Digest(arg.to_owned())))
            } else {
                Err(bad("give layer:INDEX or layer:sha256:<64 hex digits>"))
            }
        }
        "file" if !arg.is_empty() => Ok(ContentSpec::File(base.join(arg))),
        "payload" | "file" => Err(bad("missing the name after the colon")),
        "inline" if text.contains(':') => Ok(ContentSpec::Inline(Arc::from(arg.as_bytes()))),
        "base64" if text.contains(':') => {
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD
                .decode(arg.trim())
                .map_err(|e| bad(&format!("not valid base64: {e}")))?;
            Ok(ContentSpec::Inline(data.into()))
        }
        _ => Err(bad(
            "give empty, payload:NAME, layer:INDEX, layer:sha256:…, file:PATH, inline:TEXT or base64:DATA",
        )),
    }
}

/// Whether `s` is a digest we can look layers up by.
fn is_digest(s: &str) -> bool {
    match s.split_once(':') {
        Some(("sha256", hex)) => {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        Some(("sha512", hex)) => {
            hex.len() == 128 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        _ => false,
    }
}

// The layout file as written, before its values are checked.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayout {
    disk_size: Option<RawSize>,
    #[serde(default)]
    partitions: Vec<RawPartition>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartition {
    name: String,
    #[serde(rename = "type")]
    type_: String,
    size: RawSize,
    content: Option<String>,
    fat32: Option<RawFat32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFat32 {
    label: String,
    #[serde(default)]
    files: Vec<RawFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: String,
    content: String,
}

impl LayoutSpec {
    /// The `monogon` preset: Monogon's test-node disk.
    pub fn monogon(preset: &MonogonPreset) -> LayoutSpec {
        let kernel = || ContentSpec::Payload("kernel.efi".to_owned());
        let loader = match &preset.abloader {
            Some(path) => ContentSpec::File(path.clone()),
            None => kernel(),
        };
        LayoutSpec {
            disk_size: preset.disk_size,
            partitions: vec![
                PartitionSpec {
                    name: "ESP".to_owned(),
                    type_guid: ESP_TYPE,
                    size: Size::Bytes(128 * MIB),
                    content: ContentSpec::Fat32 {
                        label: "MNGN_BOOT".to_owned(),
                        // Monogon's installer places boot-a.efi first, then
                        // the loader; the order decides cluster placement.
                        files: [
                            ("EFI/metropolis/boot-a.efi".to_owned(), kernel()),
                            (format!("EFI/BOOT/{}", preset.efi_boot_file), loader),
                        ]
                        .into_iter()
                        .chain(preset.esp_files.iter().cloned())
                        .collect(),
                    },
                },
                PartitionSpec {
                    name: "METROPOLIS-SYSTEM-A".to_owned(),
                    type_guid: METROPOLIS_SYSTEM_A_TYPE,
                    size: Size::Bytes(GIB),
                    content: ContentSpec::Payload("system".to_owned()),
                },
                PartitionSpec {
                    name: "METROPOLIS-SYSTEM-B".to_owned(),
                    type_guid: METROPOLIS_SYSTEM_B_TYPE,
                    size: Size::Bytes(GIB),
                    content: ContentSpec::Empty,
                },
                PartitionSpec {
                    name: "METROPOLIS-NODE-DATA".to_owned(),
                    type_guid: METROPOLIS_DATA_TYPE,
                    size: Size::Rest,
                    content: ContentSpec::Empty,
                },
            ],
        }
    }

    /// The `monogon` preset, validated; an error in one of
    /// [`MonogonPreset::esp_files`] names it as `esp_files[N]` rather than
    /// by its place in the ESP's file list.
    pub fn monogon_checked(preset: &MonogonPreset) -> Result<LayoutSpec, SpecError> {
        let spec = LayoutSpec::monogon(preset);
        match spec.validate(MONOGON_ORIGIN) {
            Ok(()) => Ok(spec),
            Err(SpecError::Field {
                origin,
                field,
                problem,
            }) => {
                let extra = field
                    .strip_prefix("partitions[0].fat32.files[")
                    .and_then(|rest| rest.split_once(']'))
                    .and_then(|(j, tail)| Some((j.parse::<usize>().ok()?, tail)))
                    .filter(|(j, _)| *j >= MONOGON_ESP_FILES);
                let field = match extra {
                    Some((j, tail)) => format!("esp_files[{}]{tail}", j - MONOGON_ESP_FILES),
                    None => field,
                };
                Err(SpecError::Field {
                    origin,
                    field,
                    problem,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Reads a TOML layout file. `disk_size`, when given (`--disk-size`),
    /// overrides the file's.
    pub fn from_file(path: &Path, disk_size: Option<u64>) -> Result<LayoutSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            file: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        LayoutSpec::from_toml(&text, path, base, disk_size)
    }

    /// Parses a TOML layout. `file` names it in errors; `file:` paths are
    /// relative to `base`.
    pub fn from_toml(
        text: &str,
        file: &Path,
        base: &Path,
        disk_size: Option<u64>,
    ) -> Result<LayoutSpec, SpecError> {
        let raw: RawLayout = toml::from_str(text).map_err(|e| SpecError::Toml {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let origin = file.display().to_string();
        let field = |field: String, problem: Problem| SpecError::Field {
            origin: origin.clone(),
            field,
            problem,
        };
        let disk_size = match (disk_size, raw.disk_size) {
            (Some(size), _) => size,
            (None, Some(raw)) => raw_size(&raw).map_err(|p| field("disk_size".into(), p))?,
            (None, None) => return Err(field("disk_size".into(), Problem::MissingDiskSize)),
        };
        let mut partitions = Vec::with_capacity(raw.partitions.len());
        for (i, p) in raw.partitions.into_iter().enumerate() {
            let at = |name: &str| format!("partitions[{i}].{name}");
            let type_guid = parse_type(&p.type_).map_err(|e| field(at("type"), e))?;
            let size = match &p.size {
                RawSize::Text(t) if t.trim().eq_ignore_ascii_case("rest") => Size::Rest,
                raw => Size::Bytes(raw_size(raw).map_err(|e| field(at("size"), e))?),
            };
            let content = match (p.content, p.fat32) {
                (Some(_), Some(_)) => return Err(field(at("content"), Problem::ContentAndFat32)),
                (Some(c), None) => parse_content(&c, base).map_err(|e| field(at("content"), e))?,
                (None, None) => ContentSpec::Empty,
                (None, Some(fat)) => {
                    let mut files = Vec::with_capacity(fat.files.len());
                    for (j, f) in fat.files.into_iter().enumerate() {
                        let content = parse_content(&f.content, base)
                            .map_err(|e| field(at(&format!("fat32.files[{j}].content")), e))?;
                        files.push((f.path, content));
                    }
                    ContentSpec::Fat32 {
                        label: fat.label,
                        files,
                    }
                }
            };
            partitions.push(PartitionSpec {
                name: p.name,
                type_guid,
                size,
                content,
            });
        }
        let spec = LayoutSpec {
            disk_size,
            partitions,
        };
        spec.validate(&origin)?;
        Ok(spec)
    }

    /// Checks what can be checked without the image: the disk size, names,
    /// types, sizes, FAT32 paths and labels, inline contents, and that the
    /// partitions fit. `origin` names the layout in errors.
    pub fn validate(&self, origin: &str) -> Result<(), SpecError> {
        let field = |field: String, problem: Problem| SpecError::Field {
            origin: origin.to_owned(),
            field,
            problem,
        };
        if !self.disk_size.is_multiple_of(SECTOR_SIZE)
            || self.disk_size / SECTOR_SIZE < gpt::MIN_DISK_BLOCKS
        {
            return Err(field(
                "disk_size".into(),
                Problem::BadDiskSize(self.disk_size),
            ));
        }
        if self.partitions.len() > gpt::MAX_PARTITIONS {
            return Err(field(
                "partitions".into(),
                Problem::TooManyPartitions(self.partitions.len()),
            ));
        }
        let mut rest = None;
        for (i, p) in self.partitions.iter().enumerate() {
            let at = |name: &str| format!("partitions[{i}].{name}");
            let units = p.name.encode_utf16().count();
            if units == 0 {
                return Err(field(at("name"), Problem::EmptyName));
            }
            if p.name.contains('\0') {
                return Err(field(at("name"), Problem::NulInName(p.name.clone())));
            }
            if units > gpt::MAX_NAME_UNITS {
                let name = p.name.clone();
                return Err(field(at("name"), Problem::NameTooLong { name, units }));
            }
            if let Some(first) = self.partitions[..i].iter().position(|q| q.name == p.name) {
                let name = p.name.clone();
                let problem = Problem::DuplicateName {
                    name,
                    first: first + 1,
                };
                return Err(field(at("name"), problem));
            }
            if p.type_guid.is_nil() {
                return Err(field(at("type"), Problem::NilType));
            }
            match p.size {
                Size::Bytes(0) => return Err(field(at("size"), Problem::ZeroSize)),
                Size::Rest => match rest {
                    Some(first) => {
                        return Err(field(at("size"), Problem::MultipleRest { first }));
                    }
                    None => rest = Some(i + 1),
                },
                Size::Bytes(_) => {}
            }
            validate_content(&p.content, true).map_err(|(f, e)| {
                let name = if f.is_empty() {
                    at("content")
                } else {
                    at(&format!("fat32.{f}"))
                };
                field(name, e)
            })?;
        }
        let placed = self.place_in(origin)?;
        for (i, (p, place)) in self.partitions.iter().zip(&placed).enumerate() {
            if let ContentSpec::Inline(data) = &p.content {
                if data.len() as u64 > place.len() {
                    let problem = Problem::ContentTooLarge {
                        content: p.content.to_string(),
                        len: data.len() as u64,
                        size: place.len(),
                    };
                    return Err(field(format!("partitions[{i}].content"), problem));
                }
            }
        }
        Ok(())
    }

    /// Places the partitions (see the module documentation).
    pub fn place(&self) -> Result<Vec<Placement>, SpecError> {
        self.place_in("layout")
    }

    fn place_in(&self, origin: &str) -> Result<Vec<Placement>, SpecError> {
        let blocks = self.disk_size / SECTOR_SIZE;
        let align = ALIGNMENT / SECTOR_SIZE;
        // Half-open block ranges already taken, sorted.
        let mut taken: Vec<(u64, u64)> = Vec::with_capacity(self.partitions.len());
        let mut placed = Vec::with_capacity(self.partitions.len());
        let usable_end = gpt::last_usable_lba(blocks) + 1;
        for (i, p) in self.partitions.iter().enumerate() {
            // Free gaps, each with its start rounded up to the alignment
            // (gaps that vanish by rounding are dropped).
            let mut gaps = Vec::with_capacity(taken.len() + 1);
            let mut pos = gpt::FIRST_USABLE_LBA;
            for &(start, end) in taken.iter().chain([(usable_end, usable_end)].iter()) {
                let aligned = pos.div_ceil(align) * align;
                if aligned < start {
                    gaps.push((aligned, start - aligned));
                }
                pos = pos.max(end);
            }
            let largest = gaps.iter().map(|g| g.1).max().unwrap_or(0);
            let need = match p.size {
                Size::Bytes(n) => n.div_ceil(SECTOR_SIZE),
                Size::Rest => largest / align * align,
            };
            let Some(&(start, _)) = gaps.iter().find(|g| need > 0 && g.1 >= need) else {
                return Err(SpecError::Field {
                    origin: origin.to_owned(),
                    field: format!("partitions[{i}].size"),
                    problem: Problem::DoesNotFit {
                        need: match p.size {
                            Size::Bytes(n) => n,
                            Size::Rest => align * SECTOR_SIZE,
                        },
                        largest: largest * SECTOR_SIZE,
                    },
                });
            };
            let end = start + need;
            let at = taken.partition_point(|t| t.0 < start);
            taken.insert(at, (start, end));
            placed.push(Placement {
                first_lba: start,
                last_lba: end - 1,
            });
        }
        Ok(placed)
    }

    /// The canonical serialization of the spec: everything that decides the
    /// disk's bytes except the image and the disk id. Host files are named
    /// by path, inline contents by their SHA-256.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "ocidisk layout v1");
        let _ = writeln!(out, "disk_size {}", self.disk_size);
        for p in &self.partitions {
            let size = match p.size {
                Size::Bytes(n) => n.to_string(),
                Size::Rest => "rest".to_owned(),
            };
            let _ = writeln!(
                out,
                "partition {} type {} size {size}",
                quote(&p.name),
                p.type_guid.hyphenated()
            );
            write_canonical_content(&mut out, &p.content);
        }
        out
    }

    /// SHA-256 of [`canonical`](Self::canonical).
    pub fn layout_hash(&self) -> [u8; 32] {
        Sha256::digest(self.canonical().as_bytes()).into()
    }
}

/// A JSON string literal: an unambiguous, stable quoting.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn write_canonical_content(out: &mut String, content: &ContentSpec) {
    let _ = match content {
        ContentSpec::Empty => writeln!(out, "content empty"),
        ContentSpec::Payload(name) => writeln!(out, "content payload {}", quote(name)),
        ContentSpec::Layer(LayerRef::Index(i)) => writeln!(out, "content layer index {i}"),
        ContentSpec::Layer(LayerRef::Digest(d)) => {
            writeln!(out, "content layer digest {}", quote(d))
        }
        ContentSpec::File(path) => {
            let path = path.to_string_lossy();
            writeln!(out, "content file {}", quote(&path))
        }
        ContentSpec::Inline(data) => {
            let hash = Sha256::digest(data);
            let mut hex = String::with_capacity(64);
            for b in hash {
                let _ = write!(hex, "{b:02x}");
            }
            writeln!(out, "content inline {} sha256 {hex}", data.len())
        }
        ContentSpec::Fat32 { label, files } => {
            let _ = writeln!(
                out,
                "content fat32 label {} files {}",
                quote(label),
                files.len()
            );
            for (path, content) in files {
                let _ = writeln!(out, "file {}", quote(path));
                write_canonical_content(out, content);
            }
            Ok(())
        }
    };
}

/// Converts a raw size; rejects zero-length strings and `rest` (which only
/// a partition size may be, handled by the caller).
fn raw_size(raw: &RawSize) -> Result<u64, Problem> {
    match raw {
        RawSize::Bytes(n) => {
            u64::try_from(*n).map_err(|_| Problem::BadSize(SizeError::Syntax(n.to_string())))
        }
        RawSize::Text(t) => Ok(parse_size(t)?),
    }
}

/// Checks a content; on error returns the sub-field (empty for the content
/// itself, `files[j].…` inside a FAT32 table) and the problem.
fn validate_content(content: &ContentSpec, top: bool) -> Result<(), (String, Problem)> {
    match content {
        ContentSpec::Fat32 { .. } if !top => Err((String::new(), Problem::NestedFat32)),
        ContentSpec::Fat32 { label, files } => {
            if label.len() > 11 || !label.is_ascii() {
                return Err(("label".into(), Problem::BadLabel(label.clone())));
            }
            for (j, (path, file)) in files.iter().enumerate() {
                let at = |f: &str| format!("files[{j}].{f}");
                check_fat_path(path).map_err(|problem| (at("path"), problem))?;
                let clash = files[..j].iter().any(|(other, _)| clashes(other, path));
                if clash {
                    let path = path.clone();
                    let why = "is already a file or directory (FAT names ignore case)";
                    return Err((at("path"), Problem::BadPath { path, why }));
                }
                validate_content(file, false).map_err(|(_, e)| (at("content"), e))?;
            }
            Ok(())
        }
        ContentSpec::Payload(name) if name.is_empty() => Err((
            String::new(),
            Problem::BadContent("an empty payload name".into()),
        )),
        ContentSpec::File(path) if path.as_os_str().is_empty() => Err((
            String::new(),
            Problem::BadContent("an empty file path".into()),
        )),
        ContentSpec::Layer(LayerRef::Digest(d)) if !is_digest(d) => Err((
            String::new(),
            Problem::BadContent(format!("{d:?} is not a sha256 or sha512 digest")),
        )),
        _ => Ok(()),
    }
}

fn check_fat_path(path: &str) -> Result<(), Problem> {
    let bad = |why| {
        let path = path.to_owned();
        Err(Problem::BadPath { path, why })
    };
    if path.is_empty() {
        return bad("an empty path");
    }
    if path.starts_with('/') || path.ends_with('/') {
        return bad("a path is relative to the root and names a file");
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return bad("empty, . and .. components are not allowed");
        }
        // Checked here too (the FAT32 builder checks again) so that the
        // error names the layout's field, before any image is opened.
        crate::fat32::check_long_name(part).map_err(|why| Problem::BadFileName {
            path: path.to_owned(),
            component: part.to_owned(),
            why: why.to_string(),
        })?;
    }
    Ok(())
}

/// Whether two FAT paths name the same file, or one is a directory the
/// other needs to be a file (case-insensitively, as FAT compares names).
fn clashes(a: &str, b: &str) -> bool {
    let a = a.to_lowercase();
    let b = b.to_lowercase();
    a == b || b.starts_with(&format!("{a}/")) || a.starts_with(&format!("{b}/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FILE: &str = "/cfg/layout.toml";

    fn parse(text: &str) -> Result<LayoutSpec, SpecError> {
        LayoutSpec::from_toml(text, Path::new(FILE), Path::new("/cfg"), None)
    }

    /// The error of `text`, which must name the file and `field`.
    fn field_error(text: &str, field: &str) -> Problem {
        match parse(text) {
            Err(e @ SpecError::Field { .. }) => {
                let msg = e.to_string();
                assert!(msg.starts_with(&format!("{FILE}: {field}: ")), "{msg}");
                let SpecError::Field { problem, .. } = e else {
                    unreachable!()
                };
                problem
            }
            other => panic!("expected an error in {field}, got {other:?}"),
        }
    }

    fn toml_error(text: &str) -> String {
        match parse(text) {
            Err(e @ SpecError::Toml { .. }) => {
                let msg = e.to_string();
                assert!(msg.starts_with(FILE), "{msg}");
                msg
            }
            other => panic!("expected a TOML error, got {other:?}"),
        }
    }

    fn lbas(spec: &LayoutSpec) -> Vec<(u64, u64)> {
        spec.place()
            .unwrap()
            .iter()
            .map(|p| (p.first_lba, p.last_lba))
            .collect()
    }

    #[test]
    fn monogon_preset_matches_the_installer() {
        let spec = LayoutSpec::monogon(&MonogonPreset::default());
        spec.validate("monogon preset").unwrap();
        assert_eq!(spec.disk_size, 5 * GIB);
        assert_eq!(
            lbas(&spec),
            [
                (2048, 264191),
                (264192, 2361343),
                (2361344, 4458495),
                (4458496, 10483711)
            ]
        );
        let names: Vec<&str> = spec.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ESP",
                "METROPOLIS-SYSTEM-A",
                "METROPOLIS-SYSTEM-B",
                "METROPOLIS-NODE-DATA"
            ]
        );
        assert_eq!(
            spec.partitions[0].type_guid.to_string(),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
        assert_eq!(
            spec.partitions[1].type_guid.to_string(),
            "ee96054b-f6d0-4267-aaaa-724b2afea74c"
        );
        assert_eq!(
            spec.partitions[2].type_guid.to_string(),
            "ee96054b-f6d0-4267-bbbb-724b2afea74c"
        );
        assert_eq!(
            spec.partitions[3].type_guid.to_string(),
            "9eeec464-6885-414a-b278-4305c51f7966"
        );
        assert_eq!(
            spec.partitions[1].content,
            ContentSpec::Payload("system".into())
        );
        assert_eq!(spec.partitions[2].content, ContentSpec::Empty);
        let ContentSpec::Fat32 { label, files } = &spec.partitions[0].content else {
            panic!("the ESP is FAT32");
        };
        assert_eq!(label, "MNGN_BOOT");
        let kernel = ContentSpec::Payload("kernel.efi".into());
        assert_eq!(
            files,
            &[
                ("EFI/metropolis/boot-a.efi".to_owned(), kernel.clone()),
                ("EFI/BOOT/BOOTx64.EFI".to_owned(), kernel),
            ]
        );

        let with_loader = LayoutSpec::monogon(&MonogonPreset {
            abloader: Some("/x/loader.efi".into()),
            efi_boot_file: "BOOTAA64.EFI".into(),
            ..MonogonPreset::default()
        });
        let ContentSpec::Fat32 { files, .. } = &with_loader.partitions[0].content else {
            panic!("the ESP is FAT32");
        };
        assert_eq!(
            files[1],
            (
                "EFI/BOOT/BOOTAA64.EFI".to_owned(),
                ContentSpec::File("/x/loader.efi".into())
            )
        );
        assert_ne!(spec.layout_hash(), with_loader.layout_hash());
    }

    #[test]
    fn production_sizes_from_a_layout_file() {
        let spec = parse(
            r#"
            disk_size = "16GiB"
            [[partitions]]
            name = "ESP"
            type = "ESP"
            size = "384MiB"
            [partitions.fat32]
            label = "MNGN_BOOT"
            files = [
              { path = "EFI/metropolis/boot-a.efi", content = "payload:kernel.efi" },
              { path = "EFI/BOOT/BOOTx64.EFI", content = "file:loader.efi" },
            ]
            [[partitions]]
            name = "METROPOLIS-SYSTEM-A"
            type = "metropolis-system-a"
            size = "4GiB"
            content = "payload:system"
            [[partitions]]
            name = "METROPOLIS-SYSTEM-B"
            type = "ee96054b-f6d0-4267-bbbb-724b2afea74c"
            size = "4 G"
            content = "empty"
            [[partitions]]
            name = "METROPOLIS-NODE-DATA"
            type = "metropolis-data"
            size = "rest"
            "#,
        )
        .unwrap();
        let n = 16 * GIB / 512;
        let data_start = 2048 + 786432 + 2 * 8388608;
        let data_blocks = (n - 33 - data_start) / 2048 * 2048;
        assert_eq!(
            lbas(&spec),
            [
                (2048, 788479),
                (788480, 9177087),
                (9177088, 17565695),
                (data_start, data_start + data_blocks - 1)
            ]
        );
        let ContentSpec::Fat32 { files, .. } = &spec.partitions[0].content else {
            panic!("FAT32");
        };
        // file: paths are relative to the layout file.
        assert_eq!(files[1].1, ContentSpec::File("/cfg/loader.efi".into()));
        assert_eq!(spec.partitions[3].content, ContentSpec::Empty);
        assert_eq!(spec.partitions[2].type_guid, METROPOLIS_SYSTEM_B_TYPE);
    }

    #[test]
    fn disk_size_given_outside_overrides_the_file() {
        let text = "disk_size = 1048576000\n[[partitions]]\nname = \"a\"\ntype = \"linux\"\nsize = \"rest\"\n";
        assert_eq!(parse(text).unwrap().disk_size, 1048576000);
        let spec =
            LayoutSpec::from_toml(text, Path::new(FILE), Path::new("/"), Some(64 * MIB)).unwrap();
        assert_eq!(spec.disk_size, 64 * MIB);
        assert_eq!(lbas(&spec), [(2048, 2048 + 62 * 2048 - 1)]);
        let no_size = "[[partitions]]\nname = \"a\"\ntype = \"linux\"\nsize = \"rest\"\n";
        assert_eq!(field_error(no_size, "disk_size"), Problem::MissingDiskSize);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5GiB"), Ok(5 * GIB));
        assert_eq!(parse_size("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_size(" 4 g "), Ok(4 * GIB));
        assert_eq!(parse_size("7"), Ok(7));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size("3kib"), Ok(3072));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        for bad in ["", "GiB", "1.5GiB", "-1", "5 GiBs", "five", "0x10"] {
            assert!(
                matches!(parse_size(bad), Err(SizeError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(parse_size("5GB"), Err(SizeError::DecimalUnit(_))));
        assert!(matches!(
            parse_size("16777216TiB"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn types_and_contents() {
        assert_eq!(parse_type("esp"), Ok(ESP_TYPE));
        assert_eq!(
            parse_type("Linux-Root-X86-64").unwrap().to_string(),
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
        );
        assert_eq!(
            parse_type("swap").unwrap().to_string(),
            "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
        );
        assert_eq!(
            parse_type("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            Ok(ESP_TYPE)
        );
        assert_eq!(parse_type("efi"), Err(Problem::UnknownType("efi".into())));
        assert_eq!(
            parse_type("00000000-0000-0000-0000-000000000000"),
            Err(Problem::NilType)
        );

        let base = Path::new("/b");
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(parse_content("empty", base), Ok(ContentSpec::Empty));
        assert_eq!(
            parse_content("payload:system", base),
            Ok(ContentSpec::Payload("system".into()))
        );
        assert_eq!(
            parse_content("layer:3", base),
            Ok(ContentSpec::Layer(LayerRef::Index(3)))
        );
        assert_eq!(
            parse_content(&format!("layer:{digest}"), base),
            Ok(ContentSpec::Layer(LayerRef::Digest(digest.clone())))
        );
        assert_eq!(
            parse_content("file:a/b.img", base),
            Ok(ContentSpec::File("/b/a/b.img".into()))
        );
        assert_eq!(
            parse_content("file:/abs.img", base),
            Ok(ContentSpec::File("/abs.img".into()))
        );
        assert_eq!(
            parse_content("inline:node=1:a", base),
            Ok(ContentSpec::Inline(b"node=1:a".to_vec().into()))
        );
        assert_eq!(
            parse_content("inline:", base),
            Ok(ContentSpec::Inline(Vec::new().into()))
        );
        assert_eq!(
            parse_content("base64:AAEC/w==", base),
            Ok(ContentSpec::Inline(vec![0, 1, 2, 255].into()))
        );
        let err = parse_content("base64:not base64!", base).unwrap_err();
        assert!(err.to_string().contains("not valid base64"), "{err}");
        for bad in [
            "",
            "inline",
            "base64",
            "base64:AAE",
            "empty:",
            "nothing",
            "payload:",
            "file:",
            "layer:",
            "layer:-1",
            "layer:x",
            "layer:sha256:abc",
            "layer:99999999999999999999999",
            "Payload:system",
        ] {
            assert!(
                matches!(parse_content(bad, base), Err(Problem::BadContent(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn esp_files_of_the_monogon_preset() {
        let preset = |files: &[(&str, &str)]| MonogonPreset {
            esp_files: files
                .iter()
                .map(|(p, c)| (p.to_string(), parse_content(c, Path::new("")).unwrap()))
                .collect(),
            ..MonogonPreset::default()
        };
        let spec = LayoutSpec::monogon_checked(&preset(&[(
            "metropolis/parameters.pb",
            "base64:CgRub2Rl",
        )]))
        .unwrap();
        let ContentSpec::Fat32 { files, .. } = &spec.partitions[0].content else {
            panic!("the ESP is FAT32");
        };
        assert_eq!(files.len(), 3);
        assert_eq!(
            files[2],
            (
                "metropolis/parameters.pb".to_owned(),
                ContentSpec::Inline(b"\n\x04node".to_vec().into())
            )
        );
        // Extra files change the layout hash; none keeps the preset's.
        assert_ne!(
            spec.layout_hash(),
            LayoutSpec::monogon(&MonogonPreset::default()).layout_hash()
        );
        assert_eq!(
            LayoutSpec::monogon(&preset(&[])).layout_hash(),
            LayoutSpec::monogon(&MonogonPreset::default()).layout_hash()
        );

        // A clash with the preset's own files, and bad names, are named by
        // their place among the extra files.
        let err = LayoutSpec::monogon_checked(&preset(&[
            ("a", "inline:x"),
            ("efi/boot/bootx64.efi", "inline:x"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("monogon preset: esp_files[1].path") && err.contains("already a file"),
            "{err}"
        );
        for (bad, why) in [
            ("a/b*c", "'*'"),
            ("x/EFI", "already a file"),
            ("EFI/metropolis/boot-a.efi/x", "already a file"),
            ("trailing.", "ends with a space or a dot"),
        ] {
            let err = LayoutSpec::monogon_checked(&preset(&[("x", "inline:"), (bad, "inline:")]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("esp_files[1].path") && err.contains(why),
                "{bad}: {err}"
            );
        }
        let long = "n".repeat(256);
        let err = LayoutSpec::monogon_checked(&preset(&[(&long, "inline:")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("esp_files[0].path") && err.contains("256 UTF-16"),
            "{err}"
        );
    }

    const ONE: &str = "disk_size = \"64MiB\"\n";

    fn with_parts(parts: &[&str]) -> String {
        let mut text = ONE.to_owned();
        for p in parts {
            text.push_str("[[partitions]]\n");
            text.push_str(p);
            text.push('\n');
        }
        text
    }

    #[test]
    fn bad_toml_and_unknown_fields() {
        let msg = toml_error("disk_size = \"64MiB\"\n[[partitions]\n");
        assert!(msg.contains("line 2"), "{msg}");
        let msg = toml_error("disk_size = \"64MiB\"\ndisk_sise = 1\n");
        assert!(msg.contains("disk_sise"), "{msg}");
        let msg = toml_error(&with_parts(&[
            "name = \"a\"\ntype = \"linux\"\nsize = \"1MiB\"\nsizes = 1",
        ]));
        assert!(msg.contains("sizes"), "{msg}");
        let msg = toml_error(&with_parts(&[
            "name = \"a\"\ntype = \"esp\"\nsize = \"8MiB\"\nfat32 = { label = \"A\", files = [{ path = \"x\", content = \"empty\", mode = 1 }] }",
        ]));
        assert!(msg.contains("mode"), "{msg}");
        let msg = toml_error(&with_parts(&["name = \"a\"\nsize = \"1MiB\""]));
        assert!(msg.contains("type"), "{msg}");
        let msg = toml_error(&with_parts(&[
            "name = 3\ntype = \"linux\"\nsize = \"1MiB\"",
        ]));
        assert!(msg.contains("name") || msg.contains("string"), "{msg}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let p = |size: &str| format!("name = \"a\"\ntype = \"linux\"\nsize = {size}");
        assert!(matches!(
            field_error(&with_parts(&[&p("\"12 parsecs\"")]), "partitions[0].size"),
            Problem::BadSize(SizeError::Syntax(_))
        ));
        assert_eq!(
            field_error(&with_parts(&[&p("0")]), "partitions[0].size"),
            Problem::ZeroSize
        );
        assert!(matches!(
            field_error(&with_parts(&[&p("-5")]), "partitions[0].size"),
            Problem::BadSize(SizeError::Syntax(_))
        ));
        assert!(toml_error(&with_parts(&[&p("1.5")])).contains("line"));
        assert!(matches!(
            field_error(
                &with_parts(&["name = \"a\\u0000b\"\ntype = \"linux\"\nsize = 1"]),
                "partitions[0].name"
            ),
            Problem::NulInName(_)
        ));
        assert!(matches!(
            field_error("disk_size = \"lots\"\n", "disk_size"),
            Problem::BadSize(_)
        ));
        assert_eq!(
            field_error("disk_size = 1000\n", "disk_size"),
            Problem::BadDiskSize(1000)
        );
        assert_eq!(
            field_error("disk_size = 1024\n", "disk_size"),
            Problem::BadDiskSize(1024)
        );
        assert_eq!(
            field_error(
                &with_parts(&["name = \"a\"\ntype = \"ext4\"\nsize = \"1MiB\""]),
                "partitions[0].type"
            ),
            Problem::UnknownType("ext4".into())
        );
        let msg = parse(&with_parts(&[
            "name = \"a\"\ntype = \"ext4\"\nsize = \"1MiB\"",
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("linux-root-x86-64"),
            "lists the aliases: {msg}"
        );
        assert_eq!(
            field_error(
                &with_parts(&["name = \"\"\ntype = \"linux\"\nsize = \"1MiB\""]),
                "partitions[0].name"
            ),
            Problem::EmptyName
        );
        let long = format!(
            "name = \"{}\"\ntype = \"linux\"\nsize = \"1MiB\"",
            "n".repeat(37)
        );
        assert!(matches!(
            field_error(&with_parts(&[&long]), "partitions[0].name"),
            Problem::NameTooLong { units: 37, .. }
        ));
        let fits = format!(
            "name = \"{}\"\ntype = \"linux\"\nsize = \"1MiB\"",
            "n".repeat(36)
        );
        parse(&with_parts(&[&fits])).unwrap();
        let a = "name = \"a\"\ntype = \"linux\"\nsize = \"1MiB\"";
        let b = "name = \"b\"\ntype = \"linux\"\nsize = \"1MiB\"";
        assert_eq!(
            field_error(&with_parts(&[a, b, a]), "partitions[2].name"),
            Problem::DuplicateName {
                name: "a".into(),
                first: 1
            }
        );
        let rest = |n: &str| format!("name = \"{n}\"\ntype = \"linux\"\nsize = \"rest\"");
        assert_eq!(
            field_error(
                &with_parts(&[&rest("x"), a, &rest("y")]),
                "partitions[2].size"
            ),
            Problem::MultipleRest { first: 1 }
        );
        let both = "name = \"a\"\ntype = \"esp\"\nsize = \"8MiB\"\ncontent = \"empty\"\nfat32 = { label = \"A\" }";
        assert_eq!(
            field_error(&with_parts(&[both]), "partitions[0].content"),
            Problem::ContentAndFat32
        );
        let content = "name = \"a\"\ntype = \"linux\"\nsize = \"1MiB\"\ncontent = \"blob:x\"";
        assert!(matches!(
            field_error(&with_parts(&[content]), "partitions[0].content"),
            Problem::BadContent(_)
        ));
        let fat = |files: &str| {
            format!("name = \"a\"\ntype = \"esp\"\nsize = \"8MiB\"\nfat32 = {{ label = \"A\", files = [{files}] }}")
        };
        assert!(matches!(
            field_error(
                &with_parts(&[&fat("{ path = \"x\", content = \"nope\" }")]),
                "partitions[0].fat32.files[0].content"
            ),
            Problem::BadContent(_)
        ));
        for bad in [
            "\"\"",
            "\"/x\"",
            "\"x/\"",
            "\"a//b\"",
            "\"a/../b\"",
            "\"./a\"",
        ] {
            let text = with_parts(&[&fat(&format!("{{ path = {bad}, content = \"empty\" }}"))]);
            assert!(
                matches!(
                    field_error(&text, "partitions[0].fat32.files[0].path"),
                    Problem::BadPath { .. }
                ),
                "{bad}"
            );
        }
        for (first, second) in [("A/b", "a/B"), ("a", "a/b"), ("a/b", "A")] {
            let files = format!(
                "{{ path = \"{first}\", content = \"empty\" }}, {{ path = \"{second}\", content = \"empty\" }}"
            );
            assert!(matches!(
                field_error(
                    &with_parts(&[&fat(&files)]),
                    "partitions[0].fat32.files[1].path"
                ),
                Problem::BadPath { .. }
            ));
        }
        for label in ["\"TWELVE_CHARS\"", "\"ÄÖÜ\""] {
            let text = with_parts(&[&format!(
                "name = \"a\"\ntype = \"esp\"\nsize = \"8MiB\"\nfat32 = {{ label = {label} }}"
            )]);
            assert!(matches!(
                field_error(&text, "partitions[0].fat32.label"),
                Problem::BadLabel(_)
            ));
        }
    }

    #[test]
    fn partitions_that_do_not_fit() {
        // 64 MiB disk: 62 MiB usable after alignment and the backup GPT.
        let p =
            |n: &str, size: &str| format!("name = \"{n}\"\ntype = \"linux\"\nsize = \"{size}\"");
        let ok = parse(&with_parts(&[&p("a", "62MiB")])).unwrap();
        assert_eq!(lbas(&ok), [(2048, 2048 + 62 * 2048 - 1)]);
        let problem = field_error(&with_parts(&[&p("a", "63MiB")]), "partitions[0].size");
        assert_eq!(
            problem,
            Problem::DoesNotFit {
                need: 63 * MIB,
                largest: 63 * MIB - 33 * 512
            }
        );
        // A rest partition takes the largest gap, so nothing fits after it.
        assert!(matches!(
            field_error(
                &with_parts(&[&p("a", "rest"), &p("b", "1MiB")]),
                "partitions[1].size"
            ),
            Problem::DoesNotFit { .. }
        ));
        // ... and a rest partition needs at least 1 MiB.
        assert_eq!(
            field_error(
                &with_parts(&[&p("a", "62MiB"), &p("b", "rest")]),
                "partitions[1].size"
            ),
            Problem::DoesNotFit {
                need: MIB,
                largest: 2015 * 512
            }
        );
        // Sizes are rounded up to blocks and starts up to MiB.
        let odd = parse(&with_parts(&[&p("a", "1000"), &p("b", "1MiB")])).unwrap();
        assert_eq!(lbas(&odd), [(2048, 2049), (4096, 6143)]);
    }

    #[test]
    fn too_many_partitions() {
        let parts: Vec<String> = (0..129)
            .map(|i| format!("name = \"p{i}\"\ntype = \"linux\"\nsize = \"1KiB\""))
            .collect();
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let text = with_parts(&refs).replace("64MiB", "1GiB");
        assert_eq!(
            field_error(&text, "partitions"),
            Problem::TooManyPartitions(129)
        );
        let text = with_parts(&refs[..128]).replace("64MiB", "1GiB");
        assert_eq!(parse(&text).unwrap().place().unwrap().len(), 128);
    }

    #[test]
    fn api_only_errors() {
        let mut spec = LayoutSpec {
            disk_size: 8 * MIB,
            partitions: vec![PartitionSpec {
                name: "a".into(),
                type_guid: ESP_TYPE,
                size: Size::Bytes(MIB),
                content: ContentSpec::Inline(vec![1u8; MIB as usize + 1].into()),
            }],
        };
        let err = spec.validate("layout").unwrap_err();
        let SpecError::Field {
            field,
            problem: Problem::ContentTooLarge { len, size, .. },
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(
            (field.as_str(), *len, *size),
            ("partitions[0].content", MIB + 1, MIB)
        );
        spec.partitions[0].content = ContentSpec::Fat32 {
            label: "L".into(),
            files: vec![(
                "x".into(),
                ContentSpec::Fat32 {
                    label: "M".into(),
                    files: vec![],
                },
            )],
        };
        let err = spec.validate("layout").unwrap_err().to_string();
        assert_eq!(err, "layout: partitions[0].fat32.files[0].content: a file in a FAT32 file system cannot itself be a FAT32 file system");
        spec.partitions[0].content = ContentSpec::Empty;
        spec.partitions[0].type_guid = Uuid::nil();
        assert!(spec
            .validate("layout")
            .unwrap_err()
            .to_string()
            .contains("partitions[0].type"));
    }

    #[test]
    fn canonical_form_is_stable() {
        let spec = LayoutSpec {
            disk_size: 8 * MIB,
            partitions: vec![
                PartitionSpec {
                    name: "E\"S\nP".into(),
                    type_guid: ESP_TYPE,
                    size: Size::Bytes(2 * MIB),
                    content: ContentSpec::Fat32 {
                        label: "L".into(),
                        files: vec![
                            ("a/b".into(), ContentSpec::Inline(b"hi".to_vec().into())),
                            ("c".into(), ContentSpec::File("/h/c".into())),
                        ],
                    },
                },
                PartitionSpec {
                    name: "r".into(),
                    type_guid: METROPOLIS_DATA_TYPE,
                    size: Size::Rest,
                    content: ContentSpec::Layer(LayerRef::Index(2)),
                },
            ],
        };
        // This text is hashed into every overlay's base identity: changing
        // it makes existing overlays refuse to open.
        assert_eq!(
            spec.canonical(),
            "ocidisk layout v1\n\
             disk_size 8388608\n\
             partition \"E\\\"S\\nP\" type c12a7328-f81f-11d2-ba4b-00a0c93ec93b size 2097152\n\
             content fat32 label \"L\" files 2\n\
             file \"a/b\"\n\
             content inline 2 sha256 8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4\n\
             file \"c\"\n\
             content file \"/h/c\"\n\
             partition \"r\" type 9eeec464-6885-414a-b278-4305c51f7966 size rest\n\
             content layer index 2\n"
        );
        let mut other = spec.clone();
        other.partitions[1].content = ContentSpec::Layer(LayerRef::Index(3));
        assert_ne!(spec.layout_hash(), other.layout_hash());
        let mut other = spec.clone();
        other.disk_size += 512;
        assert_ne!(spec.layout_hash(), other.layout_hash());
        assert_eq!(spec.layout_hash(), spec.clone().layout_hash());
    }

    proptest! {
        /// Whatever fits is placed aligned, in the usable range, without
        /// overlap and at least as large as asked; the GPT accepts it.
        #[test]
        fn placement_is_sound(
            disk_mib in 3u64..256,
            sizes in prop::collection::vec(prop_oneof![
                (1u64..40 * MIB).prop_map(Size::Bytes),
                Just(Size::Rest),
            ], 0..8),
        ) {
            let mut saw_rest = false;
            let partitions: Vec<PartitionSpec> = sizes
                .into_iter()
                .filter(|s| !(matches!(s, Size::Rest) && std::mem::replace(&mut saw_rest, true)))
                .enumerate()
                .map(|(i, size)| PartitionSpec {
                    name: format!("p{i}"),
                    type_guid: ESP_TYPE,
                    size,
                    content: ContentSpec::Empty,
                })
                .collect();
            let spec = LayoutSpec { disk_size: disk_mib * MIB, partitions };
            let Ok(placed) = spec.place() else { return Ok(()) };
            let blocks = spec.disk_size / 512;
            let mut parts = Vec::new();
            for (i, (p, at)) in spec.partitions.iter().zip(&placed).enumerate() {
                prop_assert_eq!(at.first_lba % 2048, 0);
                prop_assert!(at.first_lba >= gpt::FIRST_USABLE_LBA);
                prop_assert!(at.last_lba <= gpt::last_usable_lba(blocks));
                match p.size {
                    Size::Bytes(n) => prop_assert_eq!(at.len(), n.div_ceil(512) * 512),
                    Size::Rest => prop_assert_eq!(at.len() % MIB, 0),
                }
                parts.push(gpt::GptPartition {
                    name: p.name.clone(),
                    type_guid: p.type_guid,
                    guid: Uuid::from_u128(i as u128 + 1),
                    first_lba: at.first_lba,
                    last_lba: at.last_lba,
                });
            }
            // The GPT builder checks overlap and range independently.
            prop_assert!(gpt::build(spec.disk_size, Uuid::from_u128(9), &parts).is_ok());
        }
    }
}
