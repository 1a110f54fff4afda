//! Opening an image straight from a registry (`--image docker://…`): the
//! manifest and config are fetched and verified, every layer becomes a blob
//! of the host's chunk cache (under `--cache`), filled chunk by chunk as the
//! guest reads it and checked against the Monogon payload's chunk hashes
//! when it has them, or as a whole against its digest otherwise. zstd
//! layers cannot be entered in the middle: they are fetched whole (into the
//! same cache, so every server on the host shares the download) and then
//! decompressed once, as local ones are.
//!
//! The verified manifest and config are kept in the cache too, with the
//! last resolution of the reference, so that when the registry cannot be
//! reached (no connection, timeouts, 5xx after the retries) the image opens
//! from them and every chunk already cached keeps being served. A refusal
//! or a missing image (401, 403, 404) is an answer and stays an error.

use anyhow::Context as _;
use layout::chunkcache::{
    fetch_chunks, BlobSpec, CachedBlob, ChunkCache, ChunkCacheSettings, ChunkHashes, ChunkRef,
    FetchCounters, FetchTotals, MetaPin,
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
    /// Keeps `cache prune` from removing the cached manifest and config
    /// while this server runs (they are what a restart without the
    /// registry opens the image from).
    _pins: Arc<Vec<MetaPin>>,
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
    /// Chunks fetched now.
    pub fetched_chunks: u64,
    /// Bytes those chunks hold.
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
    let platform = client_opts.platform.to_string();
    // Resolution gets the user's full retry setting; chunk fetches one
    // retry, the cache counting its own attempts.
    let resolver = Client::new(client_opts).context("registry client")?;
    let client = Arc::new(resolver.for_chunk_cache());
    let settings = ChunkCacheSettings {
        max_attempts: attempts.max(1),
        trust_unverified: opts.trust_unverified,
        readahead,
        ..ChunkCacheSettings::default()
    };
    let cache = ChunkCache::new(cache_dir, settings);
    let resolved = resolve(&resolver, &cache, r, manifest_ref, &platform)?;
    let counters = RemoteCounters {
        cache: Arc::clone(cache.counters()),
        client: Arc::clone(client.stats()),
        _pins: Arc::new(resolved.pins),
    };
    let manifest_digest = resolved.manifest_digest;
    let fetched = Fetched {
        dir: cache_dir,
        manifest_digest: &manifest_digest,
        manifest: &resolved.manifest,
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

/// The digest of zero bytes.
const EMPTY_SHA256: &str =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

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
    // An empty blob has no chunk to fetch and so nothing the cache would
    // ever check: its digest can only be the empty string's.
    if size == 0 && digest_str != EMPTY_SHA256 {
        return Err(ImageError::DigestMismatch {
            what: req.what.to_owned(),
            path: "a blob of 0 bytes (its size in the manifest)".to_owned(),
            actual: EMPTY_SHA256
                .strip_prefix("sha256:")
                .unwrap_or(EMPTY_SHA256)
                .to_owned(),
        });
    }
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

/// An image's manifest and config, from the registry or the cache.
struct Resolved {
    /// The reference pinned to the manifest's digest.
    reference: RegistryRef,
    manifest_digest: String,
    manifest: Vec<u8>,
    config: Vec<u8>,
    /// The cached manifest and config, held for as long as the image is.
    pins: Vec<MetaPin>,
}

/// What a resolution is recorded under: the reference and everything that
/// selects a manifest from an index.
fn resolution_key(r: &RegistryRef, manifest_ref: Option<&str>, platform: &str) -> String {
    format!(
        "{r} ref={} platform={platform}",
        manifest_ref.unwrap_or("-")
    )
}

/// Resolves `r` at its registry and keeps what it resolved to in `cache`;
/// when the registry cannot be reached, opens it from what was kept.
fn resolve(
    client: &Client,
    cache: &ChunkCache,
    r: &RegistryRef,
    manifest_ref: Option<&str>,
    platform: &str,
) -> anyhow::Result<Resolved> {
    let key = resolution_key(r, manifest_ref, platform);
    let (reference, manifest_digest, manifest, config) = match client.resolve(r, manifest_ref) {
        Ok(resolved) => {
            let digest = resolved.manifest.digest.to_string();
            let keep = || -> Result<(), layout::chunkcache::ChunkCacheError> {
                cache.put_meta(&digest, &resolved.manifest.bytes)?;
                cache.put_meta(&resolved.parsed.config.digest, &resolved.config)?;
                cache.put_ref(&key, &digest)
            };
            keep().with_context(|| {
                format!(
                    "keeping the manifest and config of {r} in {}",
                    cache.dir().display()
                )
            })?;
            (
                resolved.reference,
                digest,
                resolved.manifest.bytes,
                resolved.config,
            )
        }
        // Only a registry that gave no answer: a refusal or a missing
        // image is the registry's word and must not be papered over.
        Err(e) if e.is_retryable() => from_cache(cache, r, &key, &e)?,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("resolving {r}"))),
    };
    let config_digest = config_digest(&manifest, &manifest_digest)?;
    let mut pins = Vec::new();
    for digest in [&manifest_digest, &config_digest] {
        if let Some(pin) = cache
            .pin_meta(digest)
            .with_context(|| format!("marking {digest} of {r} in use"))?
        {
            pins.push(pin);
        }
    }
    Ok(Resolved {
        reference,
        manifest_digest,
        manifest,
        config,
        pins,
    })
}

/// The config digest a manifest names (the manifest is checked against its
/// digest before this is trusted: [`Image::from_fetched`] does it).
fn config_digest(manifest: &[u8], manifest_digest: &str) -> anyhow::Result<String> {
    let parsed: registry::manifest::ImageManifest = serde_json::from_slice(manifest)
        .with_context(|| format!("manifest {manifest_digest}: not an image manifest"))?;
    Ok(parsed.config.digest)
}

/// The image as last resolved, from the cache, for a registry that gave no
/// answer (`err`).
fn from_cache(
    cache: &ChunkCache,
    r: &RegistryRef,
    key: &str,
    err: &registry::RegistryError,
) -> anyhow::Result<(RegistryRef, String, Vec<u8>, Vec<u8>)> {
    let nothing = || {
        anyhow::anyhow!(
            "registry {} is unreachable ({err}) and nothing is cached for {r} in {}",
            r.registry,
            cache.dir().display()
        )
    };
    let record = cache.get_ref(key).with_context(|| {
        format!(
            "registry {} is unreachable; reading what was cached for {r}",
            r.registry
        )
    })?;
    let (digest, resolved_at) = match (record, &r.target) {
        (Some(rec), _) => (rec.manifest, Some(rec.resolved_at)),
        // A digest naming an image manifest needs no record.
        (None, Target::Digest(d)) => (d.to_string(), None),
        (None, Target::Tag(_)) => return Err(nothing()),
    };
    let read = |digest: &str| {
        cache.get_meta(digest).with_context(|| {
            format!(
                "registry {} is unreachable; reading the cached copy of {digest} for {r}",
                r.registry
            )
        })
    };
    let Some(manifest) = read(&digest)? else {
        return Err(nothing());
    };
    let config_digest = config_digest(&manifest, &digest)?;
    let Some(config) = read(&config_digest)? else {
        return Err(nothing());
    };
    let pinned = Digest::parse(&digest).with_context(|| format!("cached resolution of {r}"))?;
    if let Target::Tag(tag) = &r.target {
        let when = resolved_at.map_or_else(|| "an unknown time".to_owned(), registry::rfc3339);
        tracing::warn!(
            registry_error = %blockio::error_chain(&err),
            tag = %tag,
            digest = %digest,
            resolved_at = %when,
            "registry unreachable: serving tag {tag} of {r} as it resolved at {when}, {digest}, from the cache",
        );
    } else {
        tracing::warn!(
            registry_error = %blockio::error_chain(&err),
            digest = %digest,
            "registry unreachable: serving {r} from the cache"
        );
    }
    Ok((
        r.with_target(Target::Digest(pinned)),
        digest,
        manifest,
        config,
    ))
}
