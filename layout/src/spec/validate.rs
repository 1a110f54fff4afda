//! The rules every layout keeps, whatever it came from.

use crate::gpt::{self, SECTOR_SIZE};
use crate::oci::LayerRef;
use crate::spec::error::{Problem, SpecError};
use crate::spec::parse::is_digest;
use crate::spec::{ContentSpec, LayoutSpec, Size};

impl LayoutSpec {
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
