//! Writing a resolved image into an OCI image layout directory: the
//! manifest, its config and every layer blob, each checked against its
//! digest before it takes its place (written to a temporary name, synced,
//! renamed), so a blob present in the layout is a verified blob and a pull
//! that is interrupted or repeated fetches only what is missing. The
//! layout's `index.json` gains (or updates) an entry for the manifest.

use crate::client::Client;
use crate::digest::Digest;
use crate::error::RegistryError;
use crate::fetch::ResolvedImage;
use crate::manifest::REF_NAME;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A pull that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Fetching from the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The layout directory could not be written.
    #[error("{path}: {op}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The layout directory holds something that is not an OCI layout.
    #[error("{path}: {reason}")]
    Layout {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// The manifest written.
    pub manifest: String,
    /// Blobs fetched now (layers; the manifest and config are always
    /// written from what was resolved).
    pub fetched_blobs: usize,
    /// Their bytes.
    pub fetched_bytes: u64,
    /// Layer blobs already in the layout, not fetched again.
    pub present_blobs: usize,
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> PullError + 'a {
    move |source| PullError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// Writes `image` into the OCI layout at `dir` (created if needed), its
/// index entry named `ref_name` (an entry of that name, or of that digest,
/// is replaced).
pub fn pull_to_layout(
    client: &Client,
    image: &ResolvedImage,
    dir: &Path,
    ref_name: Option<&str>,
) -> Result<PullReport, PullError> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io(&blobs, "creating"))?;
    let layout_file = dir.join("oci-layout");
    if !layout_file.exists() {
        write_atomic(&layout_file, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
    let mut report = PullReport {
        manifest: image.manifest.digest.to_string(),
        ..PullReport::default()
    };
    for layer in &image.parsed.layers {
        let digest = Digest::parse(&layer.digest).map_err(|e| RegistryError::BadResponse {
            at: crate::error::At::new(
                &image.reference.registry,
                &image.reference.repository,
                format!("manifest {}", image.manifest.digest),
            ),
            reason: format!("layer: {e}"),
        })?;
        let path = blobs.join(digest.hex());
        // Only verified blobs are ever renamed into place.
        if fs::metadata(&path).is_ok_and(|m| m.len() == layer.size) {
            report.present_blobs += 1;
            continue;
        }
        let tmp = blobs.join(format!(".{}.{}.partial", digest.hex(), std::process::id()));
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp, "creating"))?;
        let res = client.get_blob_to_file(&image.reference, &digest, Some(layer.size), &mut f);
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        f.sync_all().map_err(io(&tmp, "syncing"))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io(&path, "renaming into place"))?;
        report.fetched_blobs += 1;
        report.fetched_bytes += n;
    }
    let config_digest = Digest::of(&image.config);
    write_atomic(&blobs.join(config_digest.hex()), &image.config)?;
    write_atomic(
        &blobs.join(image.manifest.digest.hex()),
        &image.manifest.bytes,
    )?;
    update_index(dir, image, ref_name)?;
    sync_dir(&blobs)?;
    sync_dir(dir)?;
    Ok(report)
}

fn update_index(
    dir: &Path,
    image: &ResolvedImage,
    ref_name: Option<&str>,
) -> Result<(), PullError> {
    let path = dir.join("index.json");
    let mut index: serde_json::Value = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| PullError::Layout {
            path: path.clone(),
            reason: format!("not JSON: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::manifest::OCI_INDEX,
            "manifests": [],
        }),
        Err(e) => return Err(io(&path, "reading")(e)),
    };
    let digest = image.manifest.digest.to_string();
    let manifests = index
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .ok_or_else(|| PullError::Layout {
            path: path.clone(),
            reason: "no \"manifests\" array".into(),
        })?;
    manifests.retain(|m| {
        let same_digest = m.get("digest").and_then(|d| d.as_str()) == Some(digest.as_str());
        let same_name = ref_name.is_some()
            && m.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(|n| n.as_str())
                == ref_name;
        !same_digest && !same_name
    });
    let mut entry = serde_json::json!({
        "mediaType": image.manifest.media_type,
        "digest": digest,
        "size": image.manifest.bytes.len(),
    });
    if let Some(t) = &image.parsed.artifact_type {
        entry["artifactType"] = t.clone().into();
    }
    if let Some(n) = ref_name {
        entry["annotations"] = serde_json::json!({ REF_NAME: n });
    }
    manifests.push(entry);
    let text = serde_json::to_vec_pretty(&index).map_err(|e| PullError::Layout {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&path, &text)
}

/// Writes `data` to a temporary name beside `path`, syncs it and renames
/// it over `path`: readers see the old file or the new one, never a part.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), PullError> {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}.partial", std::process::id()));
    let mut f = File::create(&tmp).map_err(io(&tmp, "creating"))?;
    f.write_all(data).map_err(io(&tmp, "writing"))?;
    f.sync_all().map_err(io(&tmp, "syncing"))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(path, "renaming into place"))
}

fn sync_dir(dir: &Path) -> Result<(), PullError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "syncing the directory"))
}
