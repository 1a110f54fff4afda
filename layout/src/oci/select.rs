//! Choosing one image manifest from `index.json` and the indexes it nests.

use super::blob::{parse_json, sha256_hex, Blobs};
use super::ImageError;
use oci_spec::image::{Descriptor, ImageIndex, ANNOTATION_REF_NAME};
use std::path::Path;

/// How deep image indexes may nest (content addressing rules out cycles,
/// but a deep chain of small blobs could still be built on purpose).
pub const MAX_DEPTH: usize = 8;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
// Docker's formats are JSON-compatible with OCI's for what is read here.
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_INDEX: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Whether a media type is that of an image manifest.
pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_INDEX
}

/// An entry of an index: a manifest, or a nested index with its entries.
#[derive(Debug)]
struct Node {
    desc: Descriptor,
    ref_name: Option<String>,
    children: Option<Vec<Node>>,
}

impl Node {
    fn digest(&self) -> String {
        self.desc.digest().to_string()
    }

    /// The manifests under this entry (itself, if it is one).
    fn manifests<'n>(&'n self, out: &mut Vec<&'n Node>) {
        match &self.children {
            None => out.push(self),
            Some(children) => children.iter().for_each(|c| c.manifests(out)),
        }
    }

    fn find<'n>(&'n self, pred: &dyn Fn(&Node) -> bool, out: &mut Vec<&'n Node>) {
        if pred(self) {
            out.push(self);
        }
        if let Some(children) = &self.children {
            children.iter().for_each(|c| c.find(pred, out));
        }
    }
}

/// The chosen manifest's descriptor and its ref name, if it has one.
pub struct Selected {
    /// The manifest's descriptor, as listed in its index.
    pub desc: Descriptor,
    /// Its `org.opencontainers.image.ref.name`.
    pub ref_name: Option<String>,
}

/// Reads the entries of an index, following nested indexes.
fn entries(blobs: &Blobs<'_>, index: &ImageIndex, depth: usize) -> Result<Vec<Node>, ImageError> {
    let mut nodes = Vec::new();
    for desc in index.manifests() {
        let media_type = desc.media_type().to_string();
        let ref_name = desc
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_REF_NAME))
            .cloned();
        if is_manifest(&media_type) {
            nodes.push(Node {
                desc: desc.clone(),
                ref_name,
                children: None,
            });
        } else if is_index(&media_type) {
            let what = format!("nested index {}", desc.digest());
            if depth >= MAX_DEPTH {
                return Err(ImageError::TooDeep {
                    what,
                    max: MAX_DEPTH,
                });
            }
            let bytes = blobs.read_checked(&what, desc)?;
            let nested: ImageIndex = parse_json(&bytes, &what)?;
            nodes.push(Node {
                desc: desc.clone(),
                ref_name,
                children: Some(entries(blobs, &nested, depth + 1)?),
            });
        }
        // Other entries (signatures, attestations, ...) cannot be selected.
    }
    Ok(nodes)
}

fn describe(nodes: &[&Node]) -> String {
    if nodes.is_empty() {
        return "(none)".to_owned();
    }
    nodes
        .iter()
        .map(|n| match &n.ref_name {
            Some(r) => format!("{r:?} ({})", n.digest()),
            None => n.digest(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves matched entries to exactly one manifest.
fn one(
    matched: &[&Node],
    index_path: &Path,
    reference: &str,
    all: &[&Node],
) -> Result<Selected, ImageError> {
    let mut manifests = Vec::new();
    for m in matched {
        m.manifests(&mut manifests);
    }
    let mut distinct: Vec<&Node> = Vec::new();
    for m in manifests {
        if !distinct.iter().any(|d| d.desc.digest() == m.desc.digest()) {
            distinct.push(m);
        }
    }
    match distinct.as_slice() {
        [] => Err(ImageError::RefNotFound {
            path: index_path.to_owned(),
            reference: reference.to_owned(),
            candidates: describe(all),
        }),
        [m] => Ok(Selected {
            desc: m.desc.clone(),
            // The name it was selected by, if it was selected by name.
            ref_name: m
                .ref_name
                .clone()
                .or_else(|| matched.iter().find_map(|n| n.ref_name.clone())),
        }),
        many => Err(ImageError::RefAmbiguous {
            path: index_path.to_owned(),
            reference: reference.to_owned(),
            candidates: describe(many),
        }),
    }
}

/// Chooses the manifest that `reference` designates in the index at
/// `index_path`: with no reference, the only one; `sha256:<hex>` by digest;
/// any other string by ref name. A reference to a nested index designates
/// that index's only manifest.
pub fn select(
    blobs: &Blobs<'_>,
    index: &ImageIndex,
    index_path: &Path,
    reference: Option<&str>,
) -> Result<Selected, ImageError> {
    let children = entries(blobs, index, 0)?;
    let mut all = Vec::new();
    for c in &children {
        c.manifests(&mut all);
    }
    let Some(reference) = reference else {
        let mut distinct: Vec<&Node> = Vec::new();
        for m in &all {
            if !distinct.iter().any(|d| d.desc.digest() == m.desc.digest()) {
                distinct.push(m);
            }
        }
        return match distinct.as_slice() {
            [] => Err(ImageError::NoManifest {
                path: index_path.to_owned(),
            }),
            [m] => Ok(Selected {
                desc: m.desc.clone(),
                ref_name: m.ref_name.clone(),
            }),
            many => Err(ImageError::AmbiguousManifest {
                path: index_path.to_owned(),
                count: many.len(),
                candidates: describe(many),
            }),
        };
    };
    let mut matched = Vec::new();
    if reference.starts_with("sha256:") {
        for c in &children {
            c.find(&|n| n.digest() == reference, &mut matched);
        }
    } else {
        for c in &children {
            c.find(&|n| n.ref_name.as_deref() == Some(reference), &mut matched);
        }
    }
    let selected = one(&matched, index_path, reference, &all)?;
    sha256_hex(
        &format!("manifest {}", selected.desc.digest()),
        &selected.desc,
    )?;
    Ok(selected)
}
