//! Opening an image straight from a registry (`--image docker://…`): the
//! manifest and config are fetched and verified, every layer becomes a blob
//! of the host's chunk cache (under `--cache`), filled chunk by chunk as the
//! guest reads it and checked against the Monogon payload's chunk hashes
//! when it has them, or as a whole against its digest otherwise. zstd
//! layers cannot be entered in the middle: they are fetched whole (into the
//! same cache, so every server on the host shares the download) and then
//! decompressed once, as local ones are.

use anyhow::Context as _;
use layout::chunkcache::{
    fetch_chunks, BlobSpec, CachedBlob, ChunkCache, ChunkCacheSettings, ChunkHashes, ChunkRef,
    FetchCounters, FetchTotals,
};
use layout::oci::{BlobData, Fetched, Image, ImageError, LayerBlob, LayerRequest, OpenOptions};
use registry::{Client, ClientStats, Digest, RegistryRef, RemoteBlob, StatsSnapshot, Target};
use std::path::Path;
use std::sync::Arc;

/// What a registry image's fetching has done so far: the chunk cache's
/// counters and the registry client's, for `/metrics` and for tests.
#[derive(Clone, Debug)]
pub struct RemoteCounters {
    /// Chunks fetched into the cache, hits, misses, failures, latency.
    pub cache: Arc<FetchCounters>,
    /// Requests to the registry, bytes received, retries, failures.
    pub client: Arc<ClientStats>,
}

impl RemoteCounters {
    /// Both sets of counters now.
    pub fn snapshot(&self) -> (FetchTotals, StatsSnapshot) {
        (self.cache.totals(), self.client.snapshot())
    }

    /// The counters as `/metrics` reports them.
    pub fn metrics(&self) -> crate::metrics::RegistrySnapshot {
        let (c, r) = self.snapshot();
        crate::metrics::RegistrySnapshot {
            chunk_fetches: c.fetches,
            chunk_bytes: c.bytes,
            chunk_retries: c.retries,
            chunk_failures: c.failures,
            chunk_fetch_micros: c.fetch_micros,
            cache_hits: c.hits,
            cache_misses: c.misses,
            requests: r.fetches,
            received_bytes: r.bytes,
            request_retries: r.retries,
            request_failures: r.failures,
            token_fetches: r.token_fetches,
        }
    }
}

/// Opens `r` from its registry with the client `client_opts` make, its
/// blobs cached under `cache_dir`; `attempts` bounds the fetches of each
/// chunk before a read of it fails.
pub fn open(
    r: &RegistryRef,
    manifest_ref: Option<&str>,
    client_opts: registry::ClientOptions,
    attempts: u32,
    cache_dir: &Path,
    opts: &OpenOptions,
) -> anyhow::Result<(Image, RemoteCounters)> {
    let (image, counters, _) =
        open_blobs(r, manifest_ref, client_opts, attempts, cache_dir, opts, 0)?;
    Ok((image, counters))
}

/// What [`fill_cache`] did.
#[derive(Clone, Debug)]
pub struct FillReport {
    /// The manifest's digest.
    pub manifest: String,
    /// Layers in the image.
    pub layers: usize,
    /// Chunks fetched now, and their bytes.
    pub fetched_chunks: u64,
    pub fetched_bytes: u64,
    /// Chunks that were in the cache already.
    pub cached_chunks: u64,
}

/// Fetches every layer of `r` into the chunk cache under `cache_dir`
/// (`ocidisk pull` without `--output`): every chunk checked against its
/// hash, blobs without chunk hashes against their digest, zstd layers
/// decompressed into the cache too, with `jobs` chunks in flight. A server
/// started afterwards on the same cache fetches no layer bytes.
pub fn fill_cache(
    r: &RegistryRef,
    manifest_ref: Option<&str>,
    client_opts: registry::ClientOptions,
    attempts: u32,
    cache_dir: &Path,
    jobs: usize,
) -> anyhow::Result<FillReport> {
    let opts = OpenOptions {
        cache_dir: Some(cache_dir.to_owned()),
        ..OpenOptions::default()
    };
    let (image, counters, blobs) =
        open_blobs(r, manifest_ref, client_opts, attempts, cache_dir, &opts, 0)?;
    let chunks: u64 = blobs.iter().map(|b| b.status().chunks).sum();
    // Every chunk, `jobs` at once; then each blob's whole check (for those
    // without chunk hashes) and a sync of its record.
    let all: Vec<ChunkRef> = blobs
        .iter()
        .flat_map(|b| {
            (0..b.chunks()).map(|chunk| ChunkRef {
                blob: Arc::clone(b),
                chunk,
            })
        })
        .collect();
    fetch_chunks(&all, jobs)
        .with_context(|| format!("fetching {} into {}", r, cache_dir.display()))?;
    for blob in &blobs {
        blob.fetch_all()
            .with_context(|| format!("fetching {} into {}", r, cache_dir.display()))?;
    }
    let totals = counters.cache.totals();
    Ok(FillReport {
        manifest: image.manifest_digest().to_owned(),
        layers: image.layers().len(),
        fetched_chunks: totals.fetches,
        fetched_bytes: totals.bytes,
        // zstd layers were fetched while opening: count from the totals.
        cached_chunks: chunks.saturating_sub(totals.fetches),
    })
}

/// [`open`], also yielding every layer's cached blob (for `pull
/// --prefetch`, which maps a trace's reads to their chunks); `readahead`
/// chunks are fetched ahead of sequential reads (0: none).
pub fn open_blobs(
    r: &RegistryRef,
    manifest_ref: Option<&str>,
    client_opts: registry::ClientOptions,
    attempts: u32,
    cache_dir: &Path,
    opts: &OpenOptions,
    readahead: u64,
) -> anyhow::Result<(Image, RemoteCounters, Vec<Arc<CachedBlob>>)> {
    let client = Arc::new(Client::new(client_opts.for_chunk_cache()).context("registry client")?);
    let resolved = client
        .resolve(r, manifest_ref)
        .with_context(|| format!("resolving {r}"))?;
    let settings = ChunkCacheSettings {
        max_attempts: attempts.max(1),
        trust_unverified: opts.trust_unverified,
        readahead,
        ..ChunkCacheSettings::default()
    };
    let cache = ChunkCache::new(cache_dir, settings);
    let counters = RemoteCounters {
        cache: Arc::clone(cache.counters()),
        client: Arc::clone(client.stats()),
    };
    let manifest_digest = resolved.manifest.digest.to_string();
    let fetched = Fetched {
        dir: cache_dir,
        manifest_digest: &manifest_digest,
        manifest: &resolved.manifest.bytes,
        ref_name: match &r.target {
            Target::Tag(t) => Some(t.clone()),
            Target::Digest(_) => manifest_ref.map(str::to_owned),
        },
        config: &resolved.config,
    };
    let mut blobs = Vec::new();
    let image = Image::from_fetched(&fetched, opts, &mut |req: &LayerRequest<'_>| {
        let (layer, blob) = open_layer(&client, &resolved.reference, &cache, opts, req)?;
        blobs.push(blob);
        Ok(layer)
    })
    .with_context(|| format!("opening image {r} (manifest {manifest_digest})"))?;
    Ok((image, counters, blobs))
}

/// One layer as a chunk cache blob whose missing chunks come from the
/// registry.
fn open_layer(
    client: &Arc<Client>,
    image: &RegistryRef,
    cache: &ChunkCache,
    opts: &OpenOptions,
    req: &LayerRequest<'_>,
) -> Result<(LayerBlob, Arc<CachedBlob>), ImageError> {
    let cache_err = |source| ImageError::ChunkCache {
        what: req.what.to_owned(),
        source,
    };
    let digest_str = req.desc.digest().to_string();
    let digest = Digest::parse(&digest_str).map_err(|e| ImageError::BadDigest {
        what: req.what.to_owned(),
        digest: digest_str.clone(),
        why: e.to_string(),
    })?;
    let size = req.desc.size();
    // Chunk hashes cover the uncompressed payload: only an uncompressed
    // layer's chunks can be checked one by one.
    let chunk_hashes = req
        .payload
        .filter(|p| !req.compressed && !p.chunk_hashes.is_empty())
        .map(|p| ChunkHashes {
            chunk_size: p.hash_chunk_size,
            hashes: p.chunk_hashes.clone().into(),
        });
    let spec = BlobSpec {
        digest: digest_str,
        size,
        chunk_hashes,
        name: match req.payload {
            Some(p) => format!("payload {:?}", p.name),
            None => format!("layer {}", req.index),
        },
    };
    let remote = RemoteBlob::new(Arc::clone(client), image, digest, size);
    let blob = cache.open_blob(spec, Arc::new(remote)).map_err(cache_err)?;
    // A zstd stream is read from its start to its end: fetch it whole
    // (its digest checked) before it is decompressed. With `verify`, every
    // layer is fetched now so that it can be hashed in full.
    if req.compressed || opts.verify {
        blob.fetch_all().map_err(cache_err)?;
    }
    let file = blob.blob_file().map_err(cache_err)?;
    let layer = LayerBlob {
        data: BlobData::File(Arc::new(file)),
        checked_on_read: true,
    };
    Ok((layer, blob))
}
