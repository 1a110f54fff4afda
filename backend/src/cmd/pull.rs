//! `ocidisk pull`: an image from a registry into the host's chunk cache
//! (so that `serve --image docker://…` starts with everything there and
//! fetches nothing), or with `--output` into an OCI image layout
//! directory, every blob checked against its digest, so that `inspect`,
//! `export` and `serve --image DIR` can use it. Blobs (or chunks) already
//! there are not fetched again.

use crate::cmd::registry_args::RegistryArgs;
use anyhow::Context as _;
use registry::{Client, ImageRef, Target};
use std::path::PathBuf;

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
        let report = crate::remote_image::fill_cache(
            &r,
            args.reference.as_deref(),
            args.registry.client_options()?,
            args.registry.retries.saturating_add(1),
            &cache,
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
