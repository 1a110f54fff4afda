//! One blob of one repository as a thing to read ranges of: what a chunk
//! cache holds per remote blob, to fill its chunks from.

use crate::client::Client;
use crate::digest::Digest;
use crate::error::{At, RegistryError};
use crate::reference::RegistryRef;
use layout::chunkcache::{ChunkFetch, FetchError};
use std::sync::Arc;

/// A blob in a registry, with its size from the manifest.
#[derive(Debug, Clone)]
pub struct RemoteBlob {
    client: Arc<Client>,
    image: RegistryRef,
    digest: Digest,
    size: u64,
}

impl RemoteBlob {
    /// Blob `digest` of `size` bytes in `image`'s repository.
    pub fn new(client: Arc<Client>, image: &RegistryRef, digest: Digest, size: u64) -> RemoteBlob {
        RemoteBlob {
            client,
            image: image.clone(),
            digest,
            size,
        }
    }

    /// The blob's digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The blob's size (from its descriptor).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The client it fetches with (and whose stats count it).
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// Fills `buf` from `offset` (see [`Client::read_range`]); a range
    /// beyond the blob's size is an error, not a short read.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), RegistryError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(RegistryError::OutOfRange {
                at: At::new(
                    &self.image.registry,
                    &self.image.repository,
                    format!("blob {} bytes {offset}+{}", self.digest, buf.len()),
                ),
                size: self.size,
            });
        }
        self.client
            .read_range(&self.image, &self.digest, offset, buf)
    }

    /// The whole blob into `file`, digest-checked (see
    /// [`Client::get_blob_to_file`]).
    pub fn fetch_to_file(&self, file: &mut std::fs::File) -> Result<u64, RegistryError> {
        self.client
            .get_blob_to_file(&self.image, &self.digest, Some(self.size), file)
    }
}

/// The chunk cache fills a remote blob's chunks through this: a failure the
/// registry client calls retryable (timeout, dropped connection, `5xx`,
/// `429`, a short body, also after the client's own retries gave up) is
/// [`FetchError::Transient`], so the cache spends its own attempt budget on
/// it; anything else (missing blob, refusal, a range outside the blob) is
/// [`FetchError::Permanent`] and fails the read at once. Give the client
/// few retries of its own (see [`ClientOptions::for_chunk_cache`]), or the
/// attempts multiply.
///
/// [`ClientOptions::for_chunk_cache`]: crate::ClientOptions::for_chunk_cache
impl ChunkFetch for RemoteBlob {
    fn fetch(&self, offset: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        self.read_at(offset, buf).map_err(|e| {
            // The chunk cache keeps only this text: the causes go with it.
            let text = blockio::error_chain(&e).to_string();
            if e.is_retryable() {
                FetchError::Transient(text)
            } else {
                FetchError::Permanent(text)
            }
        })
    }
}
