//! One blob of one repository as a thing to read ranges of: what a chunk
//! cache holds per remote blob, to fill its chunks from.

use crate::client::Client;
use crate::digest::Digest;
use crate::error::{At, RegistryError};
use crate::outage::{self, Admit};
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
                at: self.at(offset, buf.len()),
                size: self.size,
            });
        }
        self.client
            .read_range(&self.image, &self.digest, offset, buf)
    }

    /// `len` bytes at `offset` of this blob, for errors.
    fn at(&self, offset: u64, len: usize) -> At {
        At::new(
            &self.image.registry,
            &self.image.repository,
            format!("blob {} bytes {offset}+{len}", self.digest),
        )
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
/// A registry that gave no answer ([`RegistryError::is_no_answer`]) rests
/// (see [`crate::outage`]): until a fetch asks it again, every fetch from
/// it is [`FetchError::Unavailable`] at once, naming the blob, the range
/// and since when the registry is unreachable.
///
/// [`ClientOptions::for_chunk_cache`]: crate::ClientOptions::for_chunk_cache
impl ChunkFetch for RemoteBlob {
    fn fetch(&self, offset: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        let registry = &self.image.registry;
        let outages = self.client.outages();
        let admitted = outages.admit(registry);
        if let Admit::Refuse(r) = admitted {
            let e = RegistryError::Unreachable {
                at: self.at(offset, buf.len()),
                since: outage::wall_time(r.since),
                retry_in: r.retry_in,
                cause: r.cause,
            };
            return Err(FetchError::Unavailable(e.to_string()));
        }
        let result = self.read_at(offset, buf);
        match &result {
            // Asked nothing: says nothing about the registry.
            Err(RegistryError::OutOfRange { .. }) => {}
            Err(e) if e.is_no_answer() => {
                outages.failed(
                    registry,
                    &admitted,
                    &blockio::error_chain(e.last()).to_string(),
                );
            }
            _ => outages.answered(registry),
        }
        result.map_err(|e| {
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
