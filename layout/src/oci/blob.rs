//! Finding, checking and reading the blobs of an OCI image layout.

use super::ImageError;
use crate::cache::hex;
use crate::source::BlobFile;
use base64::Engine as _;
use oci_spec::image::{Descriptor, DigestAlgorithm};
use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest JSON document (index, manifest, config) read into memory.
pub const MAX_JSON: u64 = 16 << 20;

/// The bytes a descriptor points to: a blob file or its inline data.
#[derive(Clone, Debug)]
pub enum BlobData {
    /// A blob file, opened read-only, of exactly the descriptor's size.
    File(Arc<BlobFile>),
    /// The descriptor's inline `data`, already checked against its digest.
    Inline(Arc<[u8]>),
}

impl BlobData {
    /// Where the bytes are, for messages.
    pub fn describe(&self) -> String {
        match self {
            BlobData::File(f) => f.path().display().to_string(),
            BlobData::Inline(_) => "inline data".to_owned(),
        }
    }
}

/// The blobs of an image layout directory.
#[derive(Clone, Copy, Debug)]
pub struct Blobs<'a> {
    dir: &'a Path,
}

/// The hex part of a descriptor's digest, which must be sha256.
pub fn sha256_hex<'d>(what: &str, desc: &'d Descriptor) -> Result<&'d str, ImageError> {
    let digest = desc.digest();
    match digest.algorithm() {
        // oci-spec has checked that it is 64 lower-case hex digits.
        DigestAlgorithm::Sha256 => Ok(digest.digest()),
        other => Err(ImageError::BadDigest {
            what: what.to_owned(),
            digest: digest.to_string(),
            why: format!(
                "unsupported algorithm {:?}; only sha256 is supported",
                other.as_ref()
            ),
        }),
    }
}

/// Hex SHA-256 of bytes.
pub fn sha256_of(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

impl<'a> Blobs<'a> {
    /// The blobs of the layout at `dir`.
    pub fn new(dir: &'a Path) -> Blobs<'a> {
        Blobs { dir }
    }

    /// Where the blob with this sha256 hex digest is.
    pub fn path(&self, hex: &str) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(hex)
    }

    /// The bytes of `desc`: its inline data when it has some (checked against
    /// the size and digest), else its blob file (opened read-only after
    /// checking that it is a regular file of the descriptor's size).
    pub fn open(&self, what: &str, desc: &Descriptor) -> Result<BlobData, ImageError> {
        let hex = sha256_hex(what, desc)?;
        if let Some(data) = desc.data() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| ImageError::InlineData {
                    what: what.to_owned(),
                    why: e.to_string(),
                })?;
            check_bytes(what, desc, hex, "inline data", &bytes)?;
            return Ok(BlobData::Inline(bytes.into()));
        }
        let path = self.path(hex);
        // Stat (following symlinks) before opening: opening a FIFO would block.
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::MissingBlob {
                    what: what.to_owned(),
                    path,
                })
            }
            Err(source) => {
                return Err(ImageError::Io {
                    path,
                    op: "inspecting blob",
                    source,
                })
            }
        };
        if !meta.is_file() {
            return Err(ImageError::NotRegular {
                what: what.to_owned(),
                path,
            });
        }
        let file = BlobFile::open(&path).map_err(|source| ImageError::Io {
            path: path.clone(),
            op: "opening blob",
            source,
        })?;
        if file.len() != desc.size() {
            return Err(ImageError::SizeMismatch {
                what: what.to_owned(),
                path: path.display().to_string(),
                expected: desc.size(),
                actual: file.len(),
            });
        }
        Ok(BlobData::File(Arc::new(file)))
    }

    /// Reads a small blob (a JSON document) into memory and checks its digest.
    pub fn read_checked(&self, what: &str, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
        if desc.size() > MAX_JSON {
            return Err(ImageError::TooLarge {
                what: what.to_owned(),
                size: desc.size(),
                max: MAX_JSON,
            });
        }
        let hex = sha256_hex(what, desc)?.to_owned();
        let (bytes, path) = match self.open(what, desc)? {
            // Already checked.
            BlobData::Inline(b) => return Ok(b.to_vec()),
            BlobData::File(f) => {
                let mut bytes = Vec::with_capacity(desc.size() as usize);
                // Read one byte more than expected to notice a file that grew.
                f.file()
                    .take(desc.size() + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|source| ImageError::Io {
                        path: f.path().to_owned(),
                        op: "reading blob",
                        source,
                    })?;
                (bytes, f.path().display().to_string())
            }
        };
        check_bytes(what, desc, &hex, &path, &bytes)?;
        Ok(bytes)
    }
}

/// Checks that `bytes`, read from `path`, have the size and sha256 `hex`
/// digest that `desc` promises.
pub(crate) fn check_bytes(
    what: &str,
    desc: &Descriptor,
    hex: &str,
    path: &str,
    bytes: &[u8],
) -> Result<(), ImageError> {
    if bytes.len() as u64 != desc.size() {
        return Err(ImageError::SizeMismatch {
            what: what.to_owned(),
            path: path.to_owned(),
            expected: desc.size(),
            actual: bytes.len() as u64,
        });
    }
    let actual = sha256_of(bytes);
    if actual != hex {
        return Err(ImageError::DigestMismatch {
            what: what.to_owned(),
            path: path.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// Reads a whole small file that is not a blob (`oci-layout`, `index.json`).
pub fn read_file(
    path: &Path,
    missing: impl FnOnce(PathBuf) -> ImageError,
) -> Result<Vec<u8>, ImageError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing(path.to_owned())),
        Err(source) => {
            return Err(ImageError::Io {
                path: path.to_owned(),
                op: "inspecting",
                source,
            })
        }
    };
    if !meta.is_file() {
        return Err(ImageError::Io {
            path: path.to_owned(),
            op: "reading",
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    if meta.len() > MAX_JSON {
        return Err(ImageError::TooLarge {
            what: path.display().to_string(),
            size: meta.len(),
            max: MAX_JSON,
        });
    }
    fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_owned(),
        op: "reading",
        source,
    })
}

/// Parses a JSON document; `file` names it in errors.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    file: &str,
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        file: file.to_owned(),
        source,
    })
}
