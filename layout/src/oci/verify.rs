//! Full verification of a layer (`OpenOptions::verify`): its digest, and for
//! Monogon payloads every chunk hash of the uncompressed bytes.

use super::blob::BlobData;
use super::ImageError;
use crate::cache::hex;
use crate::monogon::{ChunkVerifier, Payload};
use crate::source::{BlobFile, Content, Source};
use sha2::{Digest as _, Sha256};
use std::io;
use std::os::unix::fs::FileExt as _;

const BLOCK: usize = 1 << 20;

/// Calls `f` with consecutive blocks of the first `len` bytes of `file`.
fn for_each_block(
    file: &BlobFile,
    len: u64,
    mut f: impl FnMut(&[u8]) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    // A gated file (a cache blob) may not hold its bytes yet.
    file.ensure(0, len).map_err(|source| ImageError::Io {
        path: file.path().to_owned(),
        op: "reading",
        source,
    })?;
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    while pos < len {
        let want = (len - pos).min(BLOCK as u64) as usize;
        let n = match file.file().read_at(&mut buf[..want], pos) {
            Ok(0) => {
                return Err(ImageError::Io {
                    path: file.path().to_owned(),
                    op: "reading",
                    source: io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"),
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ImageError::Io {
                    path: file.path().to_owned(),
                    op: "reading",
                    source,
                })
            }
        };
        f(&buf[..n])?;
        pos += n as u64;
    }
    Ok(())
}

/// Hashes a layer in full; the first mismatch is the error.
///
/// `blob` is the layer as stored, `content` its uncompressed bytes (the same
/// file for an uncompressed layer, which is then read once for both checks).
pub fn layer(
    what: &str,
    expected_hex: &str,
    blob: &BlobData,
    content: &Content,
    compressed: bool,
    payload: Option<&Payload>,
) -> Result<(), ImageError> {
    let bad_chunk = |path: &str| {
        let (what, path) = (what.to_owned(), path.to_owned());
        move |source| ImageError::BadChunk {
            what: what.clone(),
            path: path.clone(),
            source,
        }
    };
    let mut chunks = payload.map(ChunkVerifier::new);
    // Inline data was checked against the digest when it was decoded.
    if let BlobData::File(f) = blob {
        let path = f.path().display().to_string();
        let on_chunk = bad_chunk(&path);
        let mut hasher = Sha256::new();
        for_each_block(f, f.len(), |b| {
            hasher.update(b);
            match chunks.as_mut() {
                Some(c) if !compressed => c.update(b).map_err(&on_chunk),
                _ => Ok(()),
            }
        })?;
        let actual = hex(&hasher.finalize());
        if actual != expected_hex {
            return Err(ImageError::DigestMismatch {
                what: what.to_owned(),
                path,
                actual,
            });
        }
        if !compressed {
            return match chunks {
                Some(c) => c.finish().map_err(on_chunk),
                None => Ok(()),
            };
        }
    }
    let Some(mut c) = chunks else {
        return Ok(());
    };
    match &content.source {
        Source::File { file, offset: 0 } => {
            let on_chunk = bad_chunk(&file.path().display().to_string());
            for_each_block(file, content.len, |b| c.update(b).map_err(&on_chunk))?;
            c.finish().map_err(on_chunk)
        }
        Source::Bytes {
            data, offset: 0, ..
        } => {
            let on_chunk = bad_chunk("inline data");
            c.update(data).map_err(&on_chunk)?;
            c.finish().map_err(on_chunk)
        }
        // Layers are always whole files or whole byte buffers.
        _ => Ok(()),
    }
}
