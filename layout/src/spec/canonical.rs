//! The canonical text of a layout and its hash, which identify a base disk.

use crate::oci::LayerRef;
use crate::spec::{ContentSpec, LayoutSpec, Size};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

impl LayoutSpec {
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
