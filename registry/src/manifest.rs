//! Manifests and image indexes as far as fetching needs them, in OCI's and
//! Docker's (schema 2) media types, and choosing a manifest from an index.

use crate::options::Platform;
use serde::Deserialize;
use std::collections::BTreeMap;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_INDEX: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The Accept header of a manifest request: every type this client reads.
pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
/// The annotation naming a manifest in an index (`--ref`).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Whether a media type is an image index / manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_INDEX
}

/// Whether a media type is an image manifest.
pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// A content descriptor.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the content.
    pub media_type: String,
    /// Its digest, as written (checked where it is used).
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Inline content (base64), if the descriptor embeds it.
    #[serde(default)]
    pub data: Option<String>,
    /// The platform of an index entry.
    #[serde(default)]
    pub platform: Option<DescPlatform>,
    /// Annotations.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The artifact type of an index entry.
    #[serde(default)]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    fn ref_name(&self) -> Option<&str> {
        self.annotations.as_ref()?.get(REF_NAME).map(String::as_str)
    }
}

/// The `platform` of an index entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct DescPlatform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `v8`.
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image index or manifest list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The entries.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// The media type, if the manifest states it.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The artifact type (Monogon's OS images set one).
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers (Monogon: the payloads), in order.
    pub layers: Vec<Descriptor>,
}

/// Which manifest of an index to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector<'a> {
    /// An entry by digest or by its `org.opencontainers.image.ref.name`.
    Ref(&'a str),
    /// The entry for this platform; an index of one entry without platform
    /// information stands for any platform.
    Platform(&'a Platform),
}

/// Picks the entry of `index` that `sel` designates; `Err` says why none
/// (or why not one) does, listing the candidates.
pub fn select<'i>(index: &'i Index, sel: &Selector<'_>) -> Result<&'i Descriptor, String> {
    let entries: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| is_manifest(&d.media_type) || is_index(&d.media_type))
        .collect();
    let list = || {
        entries
            .iter()
            .map(|d| {
                let mut s = d.digest.clone();
                if let Some(p) = &d.platform {
                    s += &format!(" ({}/{}", p.os, p.architecture);
                    if let Some(v) = &p.variant {
                        s += &format!("/{v}");
                    }
                    s += ")";
                }
                if let Some(r) = d.ref_name() {
                    s += &format!(" ref {r:?}");
                }
                s
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let matched: Vec<&Descriptor> = match sel {
        Selector::Ref(r) if r.starts_with("sha256:") => {
            entries.iter().copied().filter(|d| d.digest == *r).collect()
        }
        Selector::Ref(r) => entries
            .iter()
            .copied()
            .filter(|d| d.ref_name() == Some(r))
            .collect(),
        Selector::Platform(p) => {
            if entries.len() == 1 && entries[0].platform.is_none() {
                entries.clone()
            } else {
                entries
                    .iter()
                    .copied()
                    .filter(|d| {
                        d.platform.as_ref().is_some_and(|dp| {
                            dp.os == p.os
                                && dp.architecture == p.architecture
                                && p.variant
                                    .as_ref()
                                    .is_none_or(|v| dp.variant.as_ref() == Some(v))
                        })
                    })
                    .collect()
            }
        }
    };
    let what = match sel {
        Selector::Ref(r) => format!("reference {r:?}"),
        Selector::Platform(p) => format!("platform {p}"),
    };
    match matched.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no manifest for {what} in the index (it has: {})",
            list()
        )),
        many => {
            // The same manifest listed twice is one answer.
            if many.iter().all(|d| d.digest == many[0].digest) {
                Ok(many[0])
            } else {
                Err(format!(
                    "{} manifests match {what} in the index: {}",
                    many.len(),
                    list()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(json: &str) -> Index {
        serde_json::from_str(json).unwrap()
    }

    const TWO: &str = r#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
      "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:aa", "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"},
         "annotations": {"org.opencontainers.image.ref.name": "node"}},
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": "sha256:bb", "size": 1,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}
      ]}"#;

    #[test]
    fn by_platform_ref_and_digest() {
        let i = index(TWO);
        let amd = Platform::default();
        assert_eq!(
            select(&i, &Selector::Platform(&amd)).unwrap().digest,
            "sha256:aa"
        );
        let arm = Platform {
            architecture: "arm64".into(),
            variant: Some("v8".into()),
            ..Platform::default()
        };
        assert_eq!(
            select(&i, &Selector::Platform(&arm)).unwrap().digest,
            "sha256:bb"
        );
        assert_eq!(
            select(&i, &Selector::Ref("node")).unwrap().digest,
            "sha256:aa"
        );
        assert_eq!(
            select(&i, &Selector::Ref("sha256:bb")).unwrap().digest,
            "sha256:bb"
        );
    }

    #[test]
    fn misses_list_the_candidates() {
        let i = index(TWO);
        let s390 = Platform {
            architecture: "s390x".into(),
            ..Platform::default()
        };
        let e = select(&i, &Selector::Platform(&s390)).unwrap_err();
        assert!(e.contains("platform linux/s390x"), "{e}");
        assert!(e.contains("sha256:bb (linux/arm64/v8)"), "{e}");
        let e = select(&i, &Selector::Ref("other")).unwrap_err();
        assert!(e.contains("reference \"other\""), "{e}");
        assert!(e.contains("ref \"node\""), "{e}");
    }

    #[test]
    fn single_entry_without_platform_is_any_platform() {
        let i = index(
            r#"{"schemaVersion": 2, "manifests": [
              {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:cc", "size": 1}]}"#,
        );
        assert_eq!(
            select(&i, &Selector::Platform(&Platform::default()))
                .unwrap()
                .digest,
            "sha256:cc"
        );
    }
}
