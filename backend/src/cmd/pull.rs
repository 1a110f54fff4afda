//! `ocidisk pull`: an image from a registry into the host's chunk cache
//! (so that `serve --image docker://…` starts with everything there and
//! fetches nothing), or with `--output` into an OCI image layout
//! directory, every blob checked against its digest, so that `inspect`,
//! `export` and `serve --image DIR` can use it. Blobs (or chunks) already
//! there are not fetched again. Into the cache, `--jobs` chunks are in
//! flight at once; `--prefetch TRACE` fetches only what a recorded boot
//! read, in the order it read it (see [`crate::prefetch`]).

use crate::cmd::image_args::ImageArgs;
use crate::cmd::registry_args::RegistryArgs;
use anyhow::Context as _;
use layout::chunkcache::fetch_chunks;
use registry::{Client, ImageRef, RegistryRef, Target};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Arguments of `ocidisk pull`.
#[derive(clap::Args)]
pub struct Args {
    /// The image: `docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX]`.
    #[arg(value_name = "REF")]
    image: String,
    /// The OCI image layout directory to write (created if needed; other
    /// images in it stay). Without it, the image's layers are fetched into
    /// the chunk cache (`--cache`).
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// The cache directory shared by every ocidisk on the host (default
    /// `$XDG_CACHE_HOME/ocidisk`); without `--output`, where the layers go.
    #[arg(long, value_name = "DIR", conflicts_with = "output")]
    cache: Option<PathBuf>,
    /// The manifest to take from an image index: a ref name
    /// (`org.opencontainers.image.ref.name`) or `sha256:<hex>` (otherwise
    /// by `--platform`).
    #[arg(long = "ref", value_name = "R")]
    reference: Option<String>,
    /// The name of the manifest in the layout's `index.json` (for `--ref`
    /// of the other commands); the tag by default.
    #[arg(long, value_name = "NAME")]
    ref_name: Option<String>,
    /// Fetch only the chunks a recorded `serve --trace FILE` run read, in
    /// the order it first read them (so that a first boot finds what it
    /// needs first). Give the layout arguments that serve had.
    #[arg(long, value_name = "TRACE", conflicts_with = "output")]
    prefetch: Option<PathBuf>,
    /// Chunks fetched at once (into the chunk cache).
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: u32,
    /// With `--prefetch`: the layout serve had, `monogon` or a TOML file.
    #[arg(
        long,
        value_name = "monogon|FILE",
        default_value = "monogon",
        requires = "prefetch"
    )]
    layout: String,
    /// With `--prefetch`: the disk size serve had.
    #[arg(long, value_name = "SIZE", requires = "prefetch")]
    disk_size: Option<String>,
    /// With `--prefetch`: the A/B loader serve had (monogon preset).
    #[arg(long, value_name = "FILE", requires = "prefetch")]
    abloader: Option<PathBuf>,
    /// With `--prefetch`: the ESP files serve had (monogon preset).
    #[arg(long = "esp-file", value_name = "PATH=CONTENT", requires = "prefetch")]
    esp_files: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Runs `ocidisk pull`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let r = match ImageRef::parse(&args.image)? {
        ImageRef::Registry(r) => r,
        ImageRef::Layout { dir, .. } => anyhow::bail!(
            "{}: pull takes a registry reference (docker://HOST/REPO[:TAG|@DIGEST]); {} is a local layout already",
            args.image,
            dir.display()
        ),
    };
    let Some(output) = &args.output else {
        let cache = match &args.cache {
            Some(d) => d.clone(),
            None => layout::cache::Cache::default_dir()?,
        };
        if let Some(trace) = &args.prefetch {
            return prefetch(&args, &r, trace, &cache);
        }
        let report = crate::remote_image::fill_cache(
            &r,
            args.reference.as_deref(),
            args.registry.client_options()?,
            args.registry.retries.saturating_add(1),
            &cache,
            args.jobs as usize,
        )?;
        println!(
            "pulled {} into the cache {}: manifest {}, {} layers, {} chunks fetched ({} bytes), {} already cached",
            r,
            cache.display(),
            report.manifest,
            report.layers,
            report.fetched_chunks,
            report.fetched_bytes,
            report.cached_chunks
        );
        return Ok(());
    };
    let client = Client::new(args.registry.client_options()?)?;
    let image = client
        .resolve(&r, args.reference.as_deref())
        .with_context(|| format!("resolving {r}"))?;
    let ref_name = args.ref_name.clone().or(match &r.target {
        Target::Tag(t) => Some(t.clone()),
        Target::Digest(_) => None,
    });
    let report = registry::pull_to_layout(&client, &image, output, ref_name.as_deref())
        .with_context(|| format!("pulling {r} into {}", output.display()))?;
    let stats = client.stats().snapshot();
    println!(
        "pulled {} into {}: manifest {}, {} blobs fetched ({} bytes), {} already present; {} bytes received, {} retries",
        r,
        output.display(),
        report.manifest,
        report.fetched_blobs,
        report.fetched_bytes,
        report.present_blobs,
        stats.bytes,
        stats.retries
    );
    Ok(())
}

/// `pull --prefetch TRACE`: composes the disk serve would (its layout
/// arguments), maps the trace's reads to chunks and fetches them in
/// first-read order, `--jobs` at once.
fn prefetch(args: &Args, r: &RegistryRef, trace: &Path, cache: &Path) -> anyhow::Result<()> {
    let disk_size = args
        .disk_size
        .as_deref()
        .map(layout::spec::parse_size)
        .transpose()
        .context("--disk-size")?;
    let image_args = ImageArgs {
        image: args.image.clone(),
        reference: args.reference.clone(),
        layout: args.layout.clone(),
        disk_size,
        abloader: args.abloader.clone(),
        esp_files: args.esp_files.clone(),
        cache: Some(cache.to_owned()),
        verify: None,
        trust_unverified: false,
        registry: args.registry.clone(),
        remote: Default::default(),
        remote_blobs: Default::default(),
    };
    // The disk id only seeds GUIDs; where each byte comes from does not
    // depend on it.
    let disk = image_args.compose("")?;
    let blobs = image_args.remote_blobs.get().cloned().unwrap_or_default();
    let partitions = crate::cmd::serve::trace_partitions(&disk.partitions);
    let plan = crate::prefetch::plan(trace, &disk, &partitions, &blobs)?;
    if plan.dropped > 0 {
        tracing::warn!(
            trace = %trace.display(),
            dropped = plan.dropped,
            "the traced server dropped records: their reads are not prefetched"
        );
    }
    let report = fetch_chunks(&plan.chunks, args.jobs as usize)
        .with_context(|| format!("prefetching {r} into {}", cache.display()))?;
    // Blobs checked only whole: their digest, now that every chunk is in.
    let mut touched: Vec<&Arc<layout::chunkcache::CachedBlob>> = Vec::new();
    for c in &plan.chunks {
        if !c.blob.has_chunk_hashes() && !touched.iter().any(|b| Arc::ptr_eq(b, &c.blob)) {
            touched.push(&c.blob);
        }
    }
    for blob in touched {
        blob.fetch_all()
            .with_context(|| format!("checking {} in {}", blob.spec().digest, cache.display()))?;
    }
    let bytes = image_args
        .remote
        .get()
        .map(|c| c.cache.totals().bytes)
        .unwrap_or(0);
    println!(
        "prefetched {} into the cache {} in the order trace {} (disk {:?}) read it: {} reads of {} bytes ({} not from a registry blob), {} chunks: {} fetched ({} bytes), {} already cached",
        r,
        cache.display(),
        trace.display(),
        plan.label,
        plan.reads,
        plan.read_bytes,
        plan.unbacked_bytes,
        plan.chunks.len(),
        report.fetched,
        bytes,
        report.cached
    );
    Ok(())
}
