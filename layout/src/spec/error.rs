//! What can be wrong with a layout, named by field.

use crate::spec::TYPE_ALIASES;
use std::path::PathBuf;
use thiserror::Error;

/// A layout that cannot be read or does not describe a disk.
#[derive(Debug, Error)]
pub enum SpecError {
    /// The layout file cannot be read.
    #[error("reading the layout file {}", file.display())]
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
    #[error(transparent)]
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
