//! The TOML layout file: its shape as written, and turning it into a
//! [`LayoutSpec`].

use crate::spec::error::{Problem, SizeError, SpecError};
use crate::spec::parse::{parse_content, parse_size, parse_type};
use crate::spec::{ContentSpec, LayoutSpec, PartitionSpec, Size};
use serde::Deserialize;
use std::path::Path;

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
