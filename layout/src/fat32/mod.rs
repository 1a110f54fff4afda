//! A FAT32 file system synthesized as extents: metadata generated in
//! memory, each file's data pointing straight into its source.
//!
//! [`Fat32Builder`] collects a tree of directories and files and lays it out
//! the way Monogon's installer does (see [`geometry`] for the regions): every
//! file and directory starts on a new cluster, the clusters are allocated
//! contiguously, depth first, in insertion order, starting with the root
//! directory at cluster 2. Because a file's clusters are contiguous and
//! clusters are sectors, its data is one extent of the file system whose
//! source is the file's own [`Content`]: nothing is copied. What is generated
//! stays small: the reserved sectors, the used part of one FAT (both FATs
//! share it), and the directories.

mod dir;
pub mod geometry;
mod names;

use crate::blockmap::Extent;
use crate::source::{Content, Source};
use geometry::{Geometry, SECTOR};
pub(crate) use names::check_long_name;
use names::{ShortName, ShortNames};
use std::collections::HashMap;
use std::sync::Arc;
use thiserror::Error;

pub use names::{LabelProblem, NameProblem};

/// Why a FAT32 file system cannot be built as asked.
#[derive(Debug, Error)]
pub enum Fat32Error {
    /// The size is not a whole number of sectors.
    #[error("FAT32 size {size} is not a multiple of the {SECTOR}-byte sector size")]
    SizeNotSectors {
        /// The size asked for.
        size: u64,
    },
    /// The size gives a cluster count outside FAT32's range.
    #[error(
        "a FAT32 file system of {size} bytes would have {clusters} clusters of {SECTOR} bytes; \
         FAT32 needs {} to {} clusters, i.e. a size from {min} to {max} bytes",
        geometry::MIN_CLUSTERS,
        geometry::MAX_CLUSTERS
    )]
    SizeOutOfRange {
        /// The size asked for.
        size: u64,
        /// The clusters it would have.
        clusters: u64,
        /// The smallest valid size.
        min: u64,
        /// The largest valid size.
        max: u64,
    },
    /// The volume label cannot be used.
    #[error("volume label {label:?} {problem}")]
    Label {
        /// The label asked for.
        label: String,
        /// What is wrong with it.
        problem: LabelProblem,
    },
    /// A path is empty (or just `/`).
    #[error("empty path: the root directory always exists and cannot be added")]
    EmptyPath,
    /// A path has an empty component (`a//b`, `a/`).
    #[error("path {path:?} has an empty component")]
    EmptyComponent {
        /// The path.
        path: String,
    },
    /// A path component is not a valid FAT long name.
    #[error("path {path:?}: name {name:?} {problem}")]
    BadName {
        /// The path.
        path: String,
        /// The offending component.
        name: String,
        /// What is wrong with it.
        problem: NameProblem,
    },
    /// Something of this name (ignoring case) already exists.
    #[error("path {path:?}: {existing:?} already exists (FAT names ignore case)")]
    Duplicate {
        /// The path being added.
        path: String,
        /// The path of what is already there.
        existing: String,
    },
    /// A parent directory of the path is a file.
    #[error("path {path:?}: {file:?} is a file, not a directory")]
    UnderFile {
        /// The path being added.
        path: String,
        /// The file in the way.
        file: String,
    },
    /// A file is larger than FAT32's 32-bit size field allows.
    #[error("file {path:?} is {len} bytes; a FAT32 file holds at most 4294967295 bytes")]
    FileTooLarge {
        /// The path.
        path: String,
        /// Its length.
        len: u64,
    },
    /// A file's content reaches past the end of its source.
    #[error("file {path:?}: its {len} bytes from offset {offset} reach past the end of {source_name} ({available} bytes)")]
    ContentPastEnd {
        /// The path.
        path: String,
        /// The source (a file's path, or "inline bytes").
        source_name: String,
        /// Where the content starts in its source.
        offset: u64,
        /// The content's length.
        len: u64,
        /// The source's length.
        available: u64,
    },
    /// A directory has more entries than FAT allows.
    #[error(
        "directory {path:?} needs {entries} entries, more than the {} a FAT directory may hold",
        dir::MAX_ENTRIES
    )]
    DirectoryTooLarge {
        /// The directory.
        path: String,
        /// The entries it would need (long-name entries included).
        entries: u64,
    },
    /// No unique short name could be made (not reachable within the
    /// directory size limit; kept so no input can panic).
    #[error("directory {path:?}: no free 8.3 short name for {name:?}")]
    NoShortName {
        /// The directory.
        path: String,
        /// The long name.
        name: String,
    },
    /// The files do not fit.
    #[error(
        "{path:?} does not fit: the files and directories up to it need {needed} clusters of \
         {SECTOR} bytes ({} bytes), the file system has {available} ({} bytes)",
        needed * SECTOR,
        available * SECTOR
    )]
    NoSpace {
        /// The first file or directory that does not fit.
        path: String,
        /// Clusters needed up to and including it.
        needed: u64,
        /// Clusters the file system has.
        available: u64,
    },
}

/// A file or directory of the tree being built.
#[derive(Debug)]
struct Node {
    name: String,
    parent: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Dir {
        children: Vec<usize>,
        /// Children by folded name, for case-insensitive lookups.
        by_fold: HashMap<String, usize>,
    },
    File(Content),
}

const ROOT: usize = 0;

/// Collects a tree of files and directories and builds a FAT32 file system
/// of them as extents.
#[derive(Debug)]
pub struct Fat32Builder {
    geometry: Geometry,
    label: Option<ShortName>,
    nodes: Vec<Node>,
}

impl Fat32Builder {
    /// A file system filling `size` bytes (a partition), with this volume
    /// label: up to 11 of `A-Z 0-9 ! # $ % & ' ( ) - @ ^ _ \` { } ~` and
    /// inner spaces; empty for none (`NO NAME`).
    pub fn new(size: u64, label: &str) -> Result<Fat32Builder, Fat32Error> {
        let total = size / SECTOR;
        if total * SECTOR != size {
            return Err(Fat32Error::SizeNotSectors { size });
        }
        let geometry = Geometry::for_sectors(total).ok_or_else(|| {
            let (min, max) = geometry::size_limits();
            let clusters = total.saturating_sub(
                geometry::RESERVED_SECTORS + geometry::NUM_FATS * geometry::fat_sectors(total),
            );
            Fat32Error::SizeOutOfRange {
                size,
                clusters,
                min,
                max,
            }
        })?;
        let label = names::label_field(label).map_err(|problem| Fat32Error::Label {
            label: label.to_owned(),
            problem,
        })?;
        Ok(Fat32Builder {
            geometry,
            label,
            nodes: vec![Node {
                name: String::new(),
                parent: ROOT,
                kind: Kind::Dir {
                    children: Vec::new(),
                    by_fold: HashMap::new(),
                },
            }],
        })
    }

    /// The size of the file system in bytes.
    pub fn size(&self) -> u64 {
        self.geometry.size()
    }

    /// Adds a file at a `/`-separated path (a leading `/` is allowed);
    /// missing parents are created as directories, in insertion order. Names
    /// are compared ignoring case, as FAT does, so `efi/x` goes into an
    /// existing `EFI`. Nothing is added when this fails.
    pub fn add_file(&mut self, path: &str, content: Content) -> Result<(), Fat32Error> {
        if content.len > u64::from(u32::MAX) {
            return Err(Fat32Error::FileTooLarge {
                path: path.to_owned(),
                len: content.len,
            });
        }
        check_content(path, &content)?;
        self.insert(path, Some(content))
    }

    /// Adds a directory at a `/`-separated path, and any missing parents.
    /// Adding a directory that exists already does nothing.
    pub fn add_dir(&mut self, path: &str) -> Result<(), Fat32Error> {
        self.insert(path, None)
    }

    /// Walks `path`, checks every component, then creates what is missing:
    /// directories, and a file at the end if `file` is given.
    fn insert(&mut self, path: &str, file: Option<Content>) -> Result<(), Fat32Error> {
        let rel = path.strip_prefix('/').unwrap_or(path);
        if rel.is_empty() {
            return Err(Fat32Error::EmptyPath);
        }
        let parts: Vec<&str> = rel.split('/').collect();
        for name in &parts {
            if name.is_empty() {
                return Err(Fat32Error::EmptyComponent {
                    path: path.to_owned(),
                });
            }
            names::check_long_name(name).map_err(|problem| Fat32Error::BadName {
                path: path.to_owned(),
                name: (*name).to_owned(),
                problem,
            })?;
        }
        // Follow the existing directories; everything after is new.
        let mut at = ROOT;
        let mut depth = 0;
        while let Some(name) = parts.get(depth) {
            let Kind::Dir { by_fold, .. } = &self.nodes[at].kind else {
                break;
            };
            let Some(&child) = by_fold.get(&names::fold(name)) else {
                break;
            };
            let last = depth + 1 == parts.len();
            match &self.nodes[child].kind {
                Kind::Dir { .. } if !(last && file.is_some()) => {}
                Kind::Dir { .. } => {
                    return Err(Fat32Error::Duplicate {
                        path: path.to_owned(),
                        existing: self.path_of(child),
                    })
                }
                Kind::File(_) if last => {
                    return Err(Fat32Error::Duplicate {
                        path: path.to_owned(),
                        existing: self.path_of(child),
                    })
                }
                Kind::File(_) => {
                    return Err(Fat32Error::UnderFile {
                        path: path.to_owned(),
                        file: self.path_of(child),
                    })
                }
            }
            at = child;
            depth += 1;
        }
        let new = parts.len() - depth;
        let mut file = file;
        for (i, name) in parts[depth..].iter().enumerate() {
            let kind = match file.take() {
                Some(content) if i + 1 == new => Kind::File(content),
                other => {
                    file = other;
                    Kind::Dir {
                        children: Vec::new(),
                        by_fold: HashMap::new(),
                    }
                }
            };
            at = self.push_child(at, name, kind);
        }
        Ok(())
    }

    fn push_child(&mut self, parent: usize, name: &str, kind: Kind) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Node {
            name: name.to_owned(),
            parent,
            kind,
        });
        if let Kind::Dir { children, by_fold } = &mut self.nodes[parent].kind {
            children.push(id);
            by_fold.insert(names::fold(name), id);
        }
        id
    }

    /// The full path of a node, `/` for the root.
    fn path_of(&self, mut id: usize) -> String {
        let mut parts = Vec::new();
        while id != ROOT {
            parts.push(self.nodes[id].name.as_str());
            id = self.nodes[id].parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// The whole file system as extents relative to its first byte,
    /// covering `[0, size)` in order: generated metadata
    /// ([`Source::Bytes`]), file data (each file's own source), zeros
    /// elsewhere. The same tree and `volume_id` give the same bytes.
    pub fn build(self, volume_id: u32) -> Result<Vec<Extent>, Fat32Error> {
        let geo = self.geometry;
        let order = self.preorder();

        // Short names and directory sizes (in entries).
        let mut shorts: Vec<ShortName> = vec![[b' '; 11]; self.nodes.len()];
        let mut dir_entries: Vec<u64> = vec![0; self.nodes.len()];
        for &id in &order {
            let Kind::Dir { children, .. } = &self.nodes[id].kind else {
                continue;
            };
            let mut taken = ShortNames::default();
            let mut entries = 2; // `.` and `..`
            if id == ROOT {
                entries = 0;
                if let Some(label) = self.label {
                    taken.reserve(label);
                    entries = 1;
                }
            }
            let child_names = children.iter().map(|&c| self.nodes[c].name.as_str());
            for (&child, short) in children.iter().zip(taken.assign(child_names)) {
                let name = &self.nodes[child].name;
                shorts[child] = short.ok_or_else(|| Fat32Error::NoShortName {
                    path: self.path_of(id),
                    name: name.clone(),
                })?;
                entries += 1 + dir::lfn_entries(name.encode_utf16().count()) as u64;
            }
            if entries > dir::MAX_ENTRIES {
                return Err(Fat32Error::DirectoryTooLarge {
                    path: self.path_of(id),
                    entries,
                });
            }
            dir_entries[id] = entries;
        }

        // Clusters, contiguous, in preorder. The root always gets one, even
        // if empty, since the boot sector names it.
        let mut start: Vec<u32> = vec![0; self.nodes.len()];
        let mut count: Vec<u32> = vec![0; self.nodes.len()];
        let mut next = u64::from(geometry::ROOT_CLUSTER);
        for &id in &order {
            let bytes = match &self.nodes[id].kind {
                Kind::Dir { .. } => (dir_entries[id] * dir::ENTRY as u64).max(1),
                Kind::File(content) => content.len,
            };
            let n = bytes.div_ceil(SECTOR);
            if n == 0 {
                continue;
            }
            let needed = next - 2 + n;
            if needed > u64::from(geo.clusters) {
                return Err(Fat32Error::NoSpace {
                    path: self.path_of(id),
                    needed,
                    available: u64::from(geo.clusters),
                });
            }
            // Both fit in u32: needed ≤ clusters < 2^28.
            start[id] = next as u32;
            count[id] = n as u32;
            next += n;
        }
        let used = next - 2;

        // Directory contents, each padded to its clusters, in one buffer.
        let mut dirs: Vec<u8> = Vec::new();
        let mut dir_offset: Vec<usize> = vec![0; self.nodes.len()];
        for &id in &order {
            let Kind::Dir { children, .. } = &self.nodes[id].kind else {
                continue;
            };
            dir_offset[id] = dirs.len();
            if id == ROOT {
                if let Some(label) = &self.label {
                    dir::push_label(&mut dirs, label);
                }
            } else {
                let parent = self.nodes[id].parent;
                let up = if parent == ROOT { 0 } else { start[parent] };
                dir::push_dots(&mut dirs, start[id], up);
            }
            for &child in children {
                let node = &self.nodes[child];
                let (attr, size) = match &node.kind {
                    Kind::Dir { .. } => (dir::ATTR_DIRECTORY, 0),
                    // Checked on entry to fit 32 bits.
                    Kind::File(content) => (dir::ATTR_FILE, content.len as u32),
                };
                dir::push_named(
                    &mut dirs,
                    &node.name,
                    &shorts[child],
                    attr,
                    start[child],
                    size,
                );
            }
            dirs.resize(dir_offset[id] + count[id] as usize * SECTOR as usize, 0);
        }
        let dirs: Arc<[u8]> = dirs.into();

        // The used part of the FAT: each allocation a chain to the next
        // cluster, ending in end-of-chain. The rest of the FAT is free (0).
        let fat_len = ((next * 4).div_ceil(SECTOR) * SECTOR) as usize;
        let mut fat = vec![0u8; fat_len];
        let mut put = |cluster: u64, value: u32| {
            let at = cluster as usize * 4;
            fat[at..at + 4].copy_from_slice(&value.to_le_bytes());
        };
        put(0, 0x0FFF_FF00 | u32::from(geometry::MEDIA));
        put(1, 0x0FFF_FFFF);
        for &id in &order {
            let (s, n) = (u64::from(start[id]), u64::from(count[id]));
            for c in s..s + n {
                put(c, if c + 1 == s + n { EOC } else { c as u32 + 1 });
            }
        }
        let fat: Arc<[u8]> = fat.into();

        // Boot sector and FSInfo, followed by their backups at 6 and 7.
        let free = u64::from(geo.clusters) - used;
        let next_free = if free > 0 { next as u32 } else { u32::MAX };
        let label = self.label.unwrap_or(*b"NO NAME    ");
        let mut head = Vec::with_capacity(2 * SECTOR as usize);
        head.extend_from_slice(&geometry::boot_sector(&geo, volume_id, &label));
        head.extend_from_slice(&geometry::fsinfo_sector(free as u32, next_free));
        let head: Arc<[u8]> = head.into();

        let mut out = Extents::default();
        out.push(0, bytes(&head, 0), head.len() as u64);
        out.push(
            geometry::BACKUP_BOOT_SECTOR * SECTOR,
            bytes(&head, 0),
            head.len() as u64,
        );
        for i in 0..geometry::NUM_FATS {
            out.push(geo.fat_offset(i), bytes(&fat, 0), fat.len() as u64);
        }
        for &id in &order {
            if count[id] == 0 {
                continue;
            }
            let at = geo.cluster_offset(start[id]);
            match &self.nodes[id].kind {
                Kind::Dir { .. } => out.push(
                    at,
                    bytes(&dirs, dir_offset[id]),
                    u64::from(count[id]) * SECTOR,
                ),
                Kind::File(content) => out.push(at, content.source.clone(), content.len),
            }
        }
        Ok(out.finish(geo.size()))
    }

    /// Every node, parents before children, siblings in insertion order:
    /// the order clusters are allocated in. Iterative, so deep trees cannot
    /// overflow the stack.
    fn preorder(&self) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![ROOT];
        while let Some(id) = stack.pop() {
            order.push(id);
            if let Kind::Dir { children, .. } = &self.nodes[id].kind {
                stack.extend(children.iter().rev());
            }
        }
        order
    }
}

/// The end-of-chain mark Monogon's installer writes.
const EOC: u32 = 0x0FFF_FFF8;

fn bytes(data: &Arc<[u8]>, offset: usize) -> Source {
    Source::Bytes {
        data: data.clone(),
        offset,
        inline: false,
    }
}

/// Checks that a file's content lies within its source, so that reading the
/// file system never runs off the end of a blob or buffer.
fn check_content(path: &str, content: &Content) -> Result<(), Fat32Error> {
    let (source_name, offset, available) = match &content.source {
        Source::File { file, offset } => (file.path().display().to_string(), *offset, file.len()),
        Source::Bytes { data, offset, .. } => {
            ("inline bytes".to_owned(), *offset as u64, data.len() as u64)
        }
        Source::Zero => return Ok(()),
    };
    match offset.checked_add(content.len) {
        Some(end) if end <= available => Ok(()),
        _ => Err(Fat32Error::ContentPastEnd {
            path: path.to_owned(),
            source_name,
            offset,
            len: content.len,
            available,
        }),
    }
}

/// A list of extents built front to back: gaps become zeros, and
/// neighbours that continue each other merge.
#[derive(Default)]
struct Extents {
    list: Vec<Extent>,
    end: u64,
}

impl Extents {
    /// Appends `len` bytes of `source` at `start` (≥ the end so far).
    fn push(&mut self, start: u64, source: Source, len: u64) {
        if start > self.end {
            self.append(self.end, Source::Zero, start - self.end);
        }
        self.append(start, source, len);
    }

    fn append(&mut self, start: u64, source: Source, len: u64) {
        if len == 0 {
            return;
        }
        self.end = start + len;
        if let Some(last) = self.list.last_mut() {
            if continues(last, &source) {
                last.len += len;
                return;
            }
        }
        self.list.push(Extent { start, len, source });
    }

    /// The list, padded with zeros to `size`.
    fn finish(mut self, size: u64) -> Vec<Extent> {
        if size > self.end {
            self.append(self.end, Source::Zero, size - self.end);
        }
        self.list
    }
}

/// Whether `next` continues `last` (placed right after it) from the same
/// source.
fn continues(last: &Extent, next: &Source) -> bool {
    match (&last.source, next) {
        (Source::Zero, Source::Zero) => true,
        (
            Source::Bytes {
                data: a, offset: x, ..
            },
            Source::Bytes {
                data: b, offset: y, ..
            },
        ) => Arc::ptr_eq(a, b) && *x as u64 + last.len == *y as u64,
        (Source::File { file: a, offset: x }, Source::File { file: b, offset: y }) => {
            Arc::ptr_eq(a, b) && x + last.len == *y
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
