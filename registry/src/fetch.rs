//! What a client fetches: manifests (always verified against their
//! digest), an image resolved through its index to one manifest and its
//! config (verified), byte ranges of blobs, and whole blobs streamed with
//! their digest checked.

use crate::client::{Client, Repo};
use crate::digest::{Digest, Hasher};
use crate::error::{At, RegistryError};
use crate::manifest::{self, Descriptor, ImageManifest, Index, Selector};
use crate::reference::{RegistryRef, Target};
use base64::Engine as _;
use std::io::{Read, Seek, Write};

/// A manifest or index as fetched, its digest verified.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The sha256 of `bytes`.
    pub digest: Digest,
    /// Its media type (from Content-Type, or the JSON's `mediaType`).
    pub media_type: String,
    /// The bytes exactly as served (the digest covers them).
    pub bytes: Vec<u8>,
}

/// An image reference resolved to one manifest, with its config.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference pinned to the manifest's digest.
    pub reference: RegistryRef,
    /// The index the reference named, if it named one (the outermost).
    pub index: Option<FetchedManifest>,
    /// The chosen image manifest.
    pub manifest: FetchedManifest,
    /// The manifest, parsed.
    pub parsed: ImageManifest,
    /// The config blob, its digest and size verified.
    pub config: Vec<u8>,
}

/// How deep indexes may nest before resolution gives up.
const MAX_INDEX_DEPTH: usize = 8;
/// The read buffer of streamed blobs.
const COPY_BUF: usize = 256 << 10;

fn repo(r: &RegistryRef) -> Repo<'_> {
    Repo {
        registry: &r.registry,
        repository: &r.repository,
    }
}

impl Client {
    /// Fetches the manifest or index `r` names, by tag or digest. By
    /// digest, the bytes must hash to it; by tag, to the registry's
    /// `Docker-Content-Digest` if it sends one.
    pub fn get_manifest(&self, r: &RegistryRef) -> Result<FetchedManifest, RegistryError> {
        match &r.target {
            Target::Tag(t) => self.manifest(r, t, None, None),
            Target::Digest(d) => self.manifest(r, &d.to_string(), Some(d), None),
        }
    }

    fn manifest(
        &self,
        r: &RegistryRef,
        reference: &str,
        expect: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<FetchedManifest, RegistryError> {
        let repo = repo(r);
        let at = repo.at(format!("manifest {reference}"));
        let limit = self.opts.max_manifest_size;
        self.with_retries(&at, true, || {
            let url = self.url(&repo, &at, &format!("manifests/{reference}"))?;
            let mut resp =
                self.get_once(&repo, &at, &url, &[("Accept", manifest::ACCEPT.to_owned())])?;
            if resp.status().as_u16() != 200 {
                return Err(Client::status_error(&at, &mut resp));
            }
            let header_digest = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
            let bytes = read_body(&mut resp, &at, limit)?;
            self.count_bytes(bytes.len() as u64);
            let actual = Digest::of(&bytes);
            let expected = match (expect, &header_digest) {
                (Some(d), _) => Some(d.clone()),
                (None, Some(h)) => Some(Digest::parse(h).map_err(|e| RegistryError::BadResponse {
                    at: at.clone(),
                    reason: format!("Docker-Content-Digest: {e}"),
                })?),
                (None, None) => None,
            };
            if let Some(expected) = expected {
                if expected != actual {
                    return Err(RegistryError::DigestMismatch {
                        at: at.clone(),
                        expected,
                        actual,
                    });
                }
            }
            if let Some(s) = size {
                if s != bytes.len() as u64 {
                    return Err(RegistryError::SizeMismatch {
                        at: at.clone(),
                        expected: s,
                        actual: bytes.len() as u64,
                    });
                }
            }
            let media_type = match content_type.filter(|t| {
                manifest::is_index(t) || manifest::is_manifest(t)
            }) {
                Some(t) => t,
                None => json_media_type(&bytes).ok_or_else(|| RegistryError::BadResponse {
                    at: at.clone(),
                    reason: "neither an OCI/Docker image manifest nor an index (by Content-Type and mediaType)".into(),
                })?,
            };
            Ok(FetchedManifest {
                digest: actual,
                media_type,
                bytes,
            })
        })
    }

    /// Resolves `r` to one image manifest and fetches its config. An index
    /// is resolved by `selector` (a ref name or digest of an entry, as
    /// `--ref`) or else by the client's platform, through nested indexes.
    pub fn resolve(
        &self,
        r: &RegistryRef,
        selector: Option<&str>,
    ) -> Result<ResolvedImage, RegistryError> {
        let top = self.get_manifest(r)?;
        let mut index = None;
        let mut current = top;
        for depth in 0.. {
            if !manifest::is_index(&current.media_type) {
                break;
            }
            let at = repo(r).at(format!("index {}", current.digest));
            if depth >= MAX_INDEX_DEPTH {
                return Err(RegistryError::BadResponse {
                    at,
                    reason: format!("indexes nest deeper than {MAX_INDEX_DEPTH}"),
                });
            }
            let parsed: Index =
                serde_json::from_slice(&current.bytes).map_err(|e| RegistryError::BadResponse {
                    at: at.clone(),
                    reason: format!("not an image index: {e}"),
                })?;
            let sel = match selector {
                Some(s) => Selector::Ref(s),
                None => Selector::Platform(&self.opts.platform),
            };
            let desc = manifest::select(&parsed, &sel)
                .map_err(|reason| RegistryError::BadResponse {
                    at: at.clone(),
                    reason,
                })?
                .clone();
            let digest = Digest::parse(&desc.digest).map_err(|e| RegistryError::BadResponse {
                at: at.clone(),
                reason: format!("entry: {e}"),
            })?;
            let next = self.manifest(r, &digest.to_string(), Some(&digest), Some(desc.size))?;
            if index.is_none() {
                index = Some(current);
            }
            current = next;
        }
        if let (Some(s), None) = (selector, &index) {
            if *s != current.digest.to_string() {
                return Err(RegistryError::BadResponse {
                    at: repo(r).at(format!("manifest {}", r.target)),
                    reason: format!(
                        "reference {s:?} given, but this is a single manifest, not an index"
                    ),
                });
            }
        }
        let at = repo(r).at(format!("manifest {}", current.digest));
        let parsed: ImageManifest =
            serde_json::from_slice(&current.bytes).map_err(|e| RegistryError::BadResponse {
                at: at.clone(),
                reason: format!("not an image manifest: {e}"),
            })?;
        let config = self.config(r, &parsed.config)?;
        Ok(ResolvedImage {
            reference: r.with_target(Target::Digest(current.digest.clone())),
            index,
            manifest: current,
            parsed,
            config,
        })
    }

    /// The config blob of a manifest: inline `data` or fetched; verified.
    fn config(&self, r: &RegistryRef, desc: &Descriptor) -> Result<Vec<u8>, RegistryError> {
        let at = repo(r).at(format!("config {}", desc.digest));
        let digest = Digest::parse(&desc.digest).map_err(|e| RegistryError::BadResponse {
            at: at.clone(),
            reason: e.to_string(),
        })?;
        if let Some(data) = &desc.data {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| RegistryError::BadResponse {
                    at: at.clone(),
                    reason: format!("inline data is not base64: {e}"),
                })?;
            check(&at, &digest, Some(desc.size), &bytes)?;
            return Ok(bytes);
        }
        self.blob_bytes(
            r,
            "config",
            &digest,
            Some(desc.size),
            self.opts.max_manifest_size,
        )
    }

    /// A small blob (a config) in memory, at most `limit` bytes, its digest
    /// (and size, if given) verified; a corrupt copy is fetched again.
    pub fn get_blob_bytes(
        &self,
        r: &RegistryRef,
        digest: &Digest,
        size: Option<u64>,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        self.blob_bytes(r, "blob", digest, size, limit)
    }

    fn blob_bytes(
        &self,
        r: &RegistryRef,
        what: &str,
        digest: &Digest,
        size: Option<u64>,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let repo = repo(r);
        let at = repo.at(format!("{what} {digest}"));
        if let Some(s) = size.filter(|s| *s > limit) {
            return Err(RegistryError::TooLarge {
                at,
                limit: limit.min(s),
            });
        }
        self.with_retries(&at, true, || {
            let url = self.url(&repo, &at, &format!("blobs/{digest}"))?;
            let mut resp = self.get_once(&repo, &at, &url, &[])?;
            if resp.status().as_u16() != 200 {
                return Err(Client::status_error(&at, &mut resp));
            }
            let bytes = read_body(&mut resp, &at, limit)?;
            self.count_bytes(bytes.len() as u64);
            check(&at, digest, size, &bytes)?;
            Ok(bytes)
        })
    }

    /// Fills `buf` with the blob's bytes from `offset` with `Range`
    /// requests. A registry that answers 200 (the whole blob) is read up to
    /// the range; a body cut short is resumed where it stopped. The bytes
    /// are not verified here (only a whole blob has a digest): callers check
    /// them against chunk hashes.
    pub fn read_range(
        &self,
        r: &RegistryRef,
        digest: &Digest,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), RegistryError> {
        if buf.is_empty() {
            return Ok(());
        }
        let repo = repo(r);
        let end = offset + buf.len() as u64 - 1;
        let at = repo.at(format!("blob {digest} bytes {offset}-{end}"));
        let mut filled = 0usize;
        self.with_retries(&at, false, || {
            let start = offset + filled as u64;
            let url = self.url(&repo, &at, &format!("blobs/{digest}"))?;
            let mut resp = self.get_once(
                &repo,
                &at,
                &url,
                &[("Range", format!("bytes={start}-{end}"))],
            )?;
            let skip = match resp.status().as_u16() {
                206 => {
                    check_content_range(&at, &resp, start)?;
                    0
                }
                200 => start,
                _ => return Err(Client::status_error(&at, &mut resp)),
            };
            let mut reader = resp.body_mut().as_reader();
            self.skip_body(&at, &mut reader, skip, skip + buf.len() as u64)?;
            while filled < buf.len() {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => {
                        return Err(RegistryError::Truncated {
                            at: at.clone(),
                            expected: buf.len() as u64,
                            got: filled as u64,
                        })
                    }
                    Ok(n) => {
                        filled += n;
                        self.count_bytes(n as u64);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(RegistryError::Body {
                            at: at.clone(),
                            got: filled as u64,
                            source,
                        })
                    }
                }
            }
            Ok(())
        })
    }

    /// Streams a whole blob to `out`, resuming with `Range` after a body
    /// cut short, and checks its digest (and `size`, if given) at the end.
    /// On a mismatch `out` has received wrong bytes: the caller discards
    /// them ([`Client::get_blob_to_file`] does, and fetches again).
    /// Returns the blob's size.
    pub fn get_blob(
        &self,
        r: &RegistryRef,
        digest: &Digest,
        size: Option<u64>,
        out: &mut dyn Write,
    ) -> Result<u64, RegistryError> {
        let repo = repo(r);
        let at = repo.at(format!("blob {digest}"));
        let mut hasher = Hasher::new();
        let mut written = 0u64;
        let mut buf = vec![0u8; COPY_BUF];
        self.with_retries(&at, false, || {
            let url = self.url(&repo, &at, &format!("blobs/{digest}"))?;
            let range = [("Range", format!("bytes={written}-"))];
            let headers: &[(&str, String)] = if written > 0 { &range } else { &[] };
            let mut resp = self.get_once(&repo, &at, &url, headers)?;
            let skip = match resp.status().as_u16() {
                200 => written,
                206 if written > 0 => {
                    check_content_range(&at, &resp, written)?;
                    0
                }
                _ => return Err(Client::status_error(&at, &mut resp)),
            };
            let mut reader = resp.body_mut().as_reader();
            self.skip_body(&at, &mut reader, skip, size.unwrap_or(skip))?;
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(RegistryError::Body {
                            at: at.clone(),
                            got: written,
                            source,
                        })
                    }
                };
                self.count_bytes(n as u64);
                if size.is_some_and(|s| written + n as u64 > s) {
                    return Err(RegistryError::SizeMismatch {
                        at: at.clone(),
                        expected: size.unwrap_or(0),
                        actual: written + n as u64,
                    });
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .map_err(|source| RegistryError::Write {
                        at: at.clone(),
                        source,
                    })?;
                written += n as u64;
            }
            if let Some(s) = size.filter(|s| written < *s) {
                return Err(RegistryError::Truncated {
                    at: at.clone(),
                    expected: s,
                    got: written,
                });
            }
            Ok(())
        })?;
        let actual = hasher.finish();
        if actual != *digest {
            crate::stats::ClientStats::add(&self.stats().failures, 1);
            return Err(RegistryError::DigestMismatch {
                at,
                expected: digest.clone(),
                actual,
            });
        }
        Ok(written)
    }

    /// [`Client::get_blob`] into a file, which is emptied first and again
    /// before each further attempt after a digest or size mismatch (bounded
    /// by the client's retries), so it never ends up holding wrong bytes
    /// after an `Ok`.
    pub fn get_blob_to_file(
        &self,
        r: &RegistryRef,
        digest: &Digest,
        size: Option<u64>,
        file: &mut std::fs::File,
    ) -> Result<u64, RegistryError> {
        let at = repo(r).at(format!("blob {digest}"));
        let mut attempt = 0;
        loop {
            file.set_len(0)
                .and_then(|()| file.rewind())
                .map_err(|source| RegistryError::Write {
                    at: at.clone(),
                    source,
                })?;
            let mut w = std::io::BufWriter::with_capacity(COPY_BUF, &mut *file);
            let res = self.get_blob(r, digest, size, &mut w).and_then(|n| {
                w.flush().map_err(|source| RegistryError::Write {
                    at: at.clone(),
                    source,
                })?;
                Ok(n)
            });
            drop(w);
            match res {
                Err(
                    e @ (RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. }),
                ) if attempt < self.opts.retries => {
                    attempt += 1;
                    crate::stats::ClientStats::add(&self.stats().retries, 1);
                    tracing::warn!(what = %at, attempt, error = %blockio::error_chain(&e), "blob arrived corrupt; fetching it again");
                }
                Err(e) => {
                    let _ = file.set_len(0);
                    return Err(e);
                }
                Ok(n) => return Ok(n),
            }
        }
    }
}

impl Client {
    /// Reads and drops the first `skip` bytes of a body: what a registry
    /// that answered a `Range` request with the whole blob (`200`) sent
    /// before the range. A body that ends first is
    /// [`RegistryError::Truncated`], reported against `expected` bytes.
    fn skip_body(
        &self,
        at: &At,
        reader: &mut impl Read,
        skip: u64,
        expected: u64,
    ) -> Result<(), RegistryError> {
        let skipped =
            std::io::copy(&mut reader.take(skip), &mut std::io::sink()).map_err(|source| {
                RegistryError::Body {
                    at: at.clone(),
                    got: 0,
                    source,
                }
            })?;
        self.count_bytes(skipped);
        if skipped < skip {
            return Err(RegistryError::Truncated {
                at: at.clone(),
                expected,
                got: skipped,
            });
        }
        Ok(())
    }
}

fn read_body(
    resp: &mut ureq::http::Response<ureq::Body>,
    at: &At,
    limit: u64,
) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    let got = resp
        .body_mut()
        .as_reader()
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|source| RegistryError::Body {
            at: at.clone(),
            got: out.len() as u64,
            source,
        })?;
    if got as u64 > limit {
        return Err(RegistryError::TooLarge {
            at: at.clone(),
            limit,
        });
    }
    Ok(out)
}

fn check(at: &At, digest: &Digest, size: Option<u64>, bytes: &[u8]) -> Result<(), RegistryError> {
    if let Some(s) = size.filter(|s| *s != bytes.len() as u64) {
        return Err(RegistryError::SizeMismatch {
            at: at.clone(),
            expected: s,
            actual: bytes.len() as u64,
        });
    }
    let actual = Digest::of(bytes);
    if actual != *digest {
        return Err(RegistryError::DigestMismatch {
            at: at.clone(),
            expected: digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// A 206 must be for the bytes asked for.
fn check_content_range(
    at: &At,
    resp: &ureq::http::Response<ureq::Body>,
    start: u64,
) -> Result<(), RegistryError> {
    let Some(cr) = resp
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let got = cr
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('-'))
        .and_then(|(s, _)| s.trim().parse::<u64>().ok());
    if got != Some(start) {
        return Err(RegistryError::BadResponse {
            at: at.clone(),
            reason: format!("asked for bytes from {start}, got Content-Range {cr:?}"),
        });
    }
    Ok(())
}

fn json_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct M {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let m: M = serde_json::from_slice(bytes).ok()?;
    match m.media_type {
        Some(t) if manifest::is_index(&t) || manifest::is_manifest(&t) => Some(t),
        Some(_) => None,
        // OCI allows leaving mediaType out; the shape tells.
        None if m.manifests.is_some() => Some(manifest::OCI_INDEX.to_owned()),
        None if m.config.is_some() => Some(manifest::OCI_MANIFEST.to_owned()),
        None => None,
    }
}
