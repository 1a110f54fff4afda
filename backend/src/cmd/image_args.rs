//! Arguments that select an image and a layout, shared by the commands that
//! compose a disk.

use crate::cmd::registry_args::RegistryArgs;
use crate::remote_image::{self, RemoteCounters};
use anyhow::Context as _;
use clap::Args;
use layout::cache::Cache;
use layout::chunkcache::CachedBlob;
use layout::compose::{compose, ComposeOptions, Disk};
use layout::oci::{Image, OpenOptions};
use layout::spec::{parse_content, ContentSpec, LayoutSpec, MonogonPreset, SpecError};
use overlay::{CreateOptions, OpenOptions as OverlayOpenOptions, Overlay, OverlayError};
use registry::ImageRef;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Which image, which manifest, and how to lay the disk out.
#[derive(Args, Debug, Clone)]
pub struct ImageArgs {
    /// The image: an OCI image layout directory (holds `oci-layout` and
    /// `index.json`), `oci:DIR[:REF]`, or a registry image
    /// `docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX]`, whose blobs are fetched
    /// into the chunk cache under `--cache` as they are read.
    #[arg(long, value_name = "REF")]
    pub image: String,
    /// Manifest to use when the index has several: a ref name
    /// (`org.opencontainers.image.ref.name`) or `sha256:<hex>`.
    #[arg(long = "ref", value_name = "R")]
    pub reference: Option<String>,
    /// `monogon` (the built-in preset) or a TOML layout file.
    #[arg(long, value_name = "monogon|FILE", default_value = "monogon")]
    pub layout: String,
    /// Disk size, e.g. `5GiB` (the layout's own size by default).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub disk_size: Option<u64>,
    /// The A/B loader to install as `EFI/BOOT/BOOTx64.EFI` (monogon preset);
    /// without it the kernel payload boots directly.
    #[arg(long, value_name = "FILE")]
    pub abloader: Option<PathBuf>,
    /// Another file on the ESP (monogon preset; repeatable), e.g.
    /// `metropolis/parameters.pb=file:params.pb`. CONTENT is `file:PATH`,
    /// `inline:TEXT`, `base64:DATA` or `payload:NAME`.
    #[arg(long = "esp-file", value_name = "PATH=CONTENT")]
    pub esp_files: Vec<String>,
    /// Where decompressed zstd payloads and the chunks of registry images
    /// are cached, shared by every ocidisk on the host
    /// (default `$XDG_CACHE_HOME/ocidisk`).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// How payloads are checked: `full` hashes every layer at start (bare
    /// `--verify` means full), `lazy` checks each 1 MiB chunk of a Monogon
    /// payload against its chunk hash the first time it is read (a chunk
    /// that fails gives the guest an I/O error, never its bytes), `none`
    /// trusts the files. [default: none]. Lazy is not the default: a cold
    /// 4 KiB random read then reads and hashes its whole 1 MiB chunk, which
    /// cost 60× in IOPS (docs/PERFORMANCE.md).
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "full"
    )]
    pub verify: Option<VerifyMode>,
    /// With `--verify=lazy`: serve layers that carry no chunk hashes
    /// without first checking their digest in full.
    #[arg(long)]
    pub trust_unverified: bool,
    /// How a `docker://` image's registry is reached.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The counters of a registry image once opened (for `/metrics`).
    #[arg(skip)]
    pub remote: Arc<OnceLock<RemoteCounters>>,
    /// A registry image's layers as chunk cache blobs once opened (for
    /// `pull --prefetch`, which maps disk reads to their chunks).
    #[arg(skip)]
    pub remote_blobs: Arc<OnceLock<Vec<Arc<CachedBlob>>>>,
}

/// How payloads are verified (`--verify`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VerifyMode {
    /// Trust the blobs (the manifest and config are always checked).
    #[default]
    None,
    /// Check each chunk on its first read.
    Lazy,
    /// Hash every layer at start.
    Full,
}

fn parse_size(s: &str) -> Result<u64, String> {
    layout::spec::parse_size(s).map_err(|e| e.to_string())
}

impl ImageArgs {
    /// Opens the image and reads the layout description.
    pub fn open(&self) -> anyhow::Result<(Image, LayoutSpec)> {
        let mode = self.verify.unwrap_or_default();
        let mut opts = OpenOptions {
            reference: self.reference.clone(),
            verify: mode == VerifyMode::Full,
            lazy: mode == VerifyMode::Lazy,
            trust_unverified: self.trust_unverified,
            cache_dir: self.cache.clone(),
        };
        let image = match ImageRef::parse(&self.image).context("--image")? {
            ImageRef::Layout { dir, reference } => {
                if let Some(r) = reference {
                    if opts.reference.as_ref().is_some_and(|given| *given != r) {
                        anyhow::bail!(
                            "--image {} names manifest {r:?} and --ref another; give one",
                            self.image
                        );
                    }
                    opts.reference = Some(r);
                }
                Image::open(&dir, &opts)
                    .with_context(|| format!("opening image {}", dir.display()))?
            }
            ImageRef::Registry(r) => {
                let cache_dir = match &self.cache {
                    Some(d) => d.clone(),
                    None => Cache::default_dir()?,
                };
                let (image, counters, blobs) = remote_image::open_blobs(
                    &r,
                    self.reference.as_deref(),
                    self.registry.client_options()?,
                    self.registry.retries.saturating_add(1),
                    &cache_dir,
                    &opts,
                    self.registry.readahead,
                )?;
                // Opened once per command; a second open keeps the first
                // counters, which every blob of the host's cache shares.
                let _ = self.remote.set(counters);
                let _ = self.remote_blobs.set(blobs);
                image
            }
        };
        let spec = if self.layout == "monogon" {
            let mut preset = MonogonPreset {
                abloader: self.abloader.clone(),
                esp_files: self.esp_files()?,
                ..MonogonPreset::default()
            };
            if let Some(size) = self.disk_size {
                preset.disk_size = size;
            }
            // arm64 images boot from BOOTAA64.EFI.
            if let Some(config) = image.monogon() {
                match config.product_info.efi_boot_file() {
                    Some(name) => preset.efi_boot_file = name.to_owned(),
                    None => tracing::warn!(
                        architecture = config.product_info.architecture(),
                        "unknown architecture in the image's variant; booting {}",
                        preset.efi_boot_file
                    ),
                }
            }
            LayoutSpec::monogon_checked(&preset).map_err(|e| self.name_esp_file(e))?
        } else {
            if self.abloader.is_some() {
                anyhow::bail!("--abloader applies to the monogon preset only; name the loader in the layout file");
            }
            if !self.esp_files.is_empty() {
                anyhow::bail!("--esp-file applies to the monogon preset only; list the file in the layout file's fat32 table");
            }
            LayoutSpec::from_file(std::path::Path::new(&self.layout), self.disk_size)?
        };
        Ok((image, spec))
    }

    /// The `--esp-file` options as ESP files; `file:` paths are relative to
    /// the working directory.
    fn esp_files(&self) -> anyhow::Result<Vec<(String, ContentSpec)>> {
        self.esp_files
            .iter()
            .map(|arg| {
                let (path, content) = arg.split_once('=').with_context(|| {
                    format!("--esp-file {arg:?}: give PATH=CONTENT, e.g. metropolis/parameters.pb=file:params.pb")
                })?;
                let content = parse_content(content, Path::new(""))
                    .with_context(|| format!("--esp-file {arg:?}"))?;
                Ok((path.to_owned(), content))
            })
            .collect()
    }

    /// Names the `--esp-file` option a preset error is about, if any.
    fn name_esp_file(&self, err: SpecError) -> anyhow::Error {
        let which = match &err {
            SpecError::Field { field, .. } => field
                .strip_prefix("esp_files[")
                .and_then(|rest| rest.split_once(']'))
                .and_then(|(j, _)| j.parse::<usize>().ok())
                .and_then(|j| self.esp_files.get(j)),
            _ => None,
        };
        match which {
            Some(arg) => anyhow::Error::new(err).context(format!("--esp-file {arg:?}")),
            None => err.into(),
        }
    }

    /// Composes the disk that `disk_id` (which seeds its GUIDs) sees.
    pub fn compose(&self, disk_id: &str) -> anyhow::Result<Disk> {
        let (image, spec) = self.open()?;
        compose_for(&image, &spec, disk_id, &self.origin())
    }

    /// How the layout is named in errors: its file, or the preset.
    fn origin(&self) -> String {
        if self.layout == "monogon" {
            layout::spec::MONOGON_ORIGIN.to_owned()
        } else {
            self.layout.clone()
        }
    }
}

/// Composes the disk `disk_id` sees from an image already opened; errors
/// name the layout by `origin` (its file, or the preset).
fn compose_for(
    image: &Image,
    spec: &LayoutSpec,
    disk_id: &str,
    origin: &str,
) -> anyhow::Result<Disk> {
    let opts = ComposeOptions {
        disk_id: disk_id.to_owned(),
    };
    compose(image, spec, &opts).with_context(|| origin.to_owned())
}

/// A composed disk and the VM overlay that belongs to it.
pub struct VmDisk {
    /// The disk composed from the image.
    pub disk: Disk,
    /// The overlay that keeps the VM's writes to it.
    pub overlay: Overlay,
}

impl ImageArgs {
    /// Opens the overlay at `path` over the disk this image composes, using
    /// the disk id the overlay stores (so the VM sees the same GUIDs on
    /// every start). With `create`, an overlay that does not exist is made.
    pub fn open_overlay(
        &self,
        path: &Path,
        create: bool,
        opts: &OverlayOpenOptions,
        shadow_dir: Option<&Path>,
    ) -> anyhow::Result<VmDisk> {
        // Opened once: with --verify, opening hashes every payload.
        let (image, spec) = self.open()?;
        let header = match Overlay::read_header(path) {
            Ok(header) => header,
            Err(OverlayError::Io { source, .. })
                if create && source.kind() == std::io::ErrorKind::NotFound =>
            {
                create_overlay(&image, &spec, path, &self.origin())?;
                Overlay::read_header(path)?
            }
            Err(err) => return Err(err.into()),
        };
        let disk = compose_for(&image, &spec, &header.disk_id.to_string(), &self.origin())?;
        let overlay =
            Overlay::open_with_shadow(path, &disk.identity, disk.map.size(), opts, shadow_dir)?;
        if let Some(overlay::ShadowStatus::Adopted {
            path: shadow,
            changed_pages,
        }) = overlay.shadow_status()
        {
            tracing::info!(
                shadow = %shadow.display(),
                changed_pages,
                "took over the block states of a process that ended without flushing"
            );
        }
        Ok(VmDisk { disk, overlay })
    }
}

/// Creates an overlay for the disk `image` and `spec` compose. Another
/// process creating the same overlay at the same moment is not an error: one
/// wins, and both then open the winner's file.
fn create_overlay(
    image: &Image,
    spec: &LayoutSpec,
    path: &Path,
    origin: &str,
) -> anyhow::Result<()> {
    // The identity and size do not depend on the disk id, which the
    // overlay makes; compose once to learn them (it takes well under a
    // millisecond).
    let disk = compose_for(image, spec, "", origin)?;
    let opts = CreateOptions {
        disk_size: disk.map.size(),
        base: disk.identity,
    };
    match Overlay::create(path, &opts) {
        Ok(_) => {
            tracing::info!(overlay = %path.display(), "created overlay");
            Ok(())
        }
        Err(OverlayError::AlreadyExists { .. }) => Ok(()),
        Err(err) => Err(err.into()),
    }
}
