//! How the commands that reach a registry are told to connect: credentials,
//! extra CA, insecure registries, retries and timeouts, platform.

use anyhow::Context as _;
use clap::Args;
use registry::{ClientOptions, Credentials, Platform};
use std::path::PathBuf;
use std::time::Duration;

/// Registry connection settings.
#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// `USER:PASSWORD` for the registry (otherwise the auth files skopeo
    /// reads: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
    /// ~/.config/containers/auth.json, ~/.docker/config.json).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    /// A PEM file of CA certificates trusted besides the system's.
    #[arg(long = "tls-ca", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// A registry (`host` or `host:port`) that may be reached over plain
    /// HTTP (repeatable; localhost, 127.0.0.1 and ::1 always may).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Retries of a failed registry request (with exponential backoff).
    #[arg(long = "registry-retries", value_name = "N", default_value_t = 4)]
    pub retries: u32,
    /// Seconds without progress before a registry request fails.
    #[arg(
        long = "registry-timeout",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    pub timeout: u64,
    /// Chunks of a registry blob fetched ahead, on a few background
    /// threads, when reads walk it sequentially (a read of chunk k after
    /// reads of k-2 and k-1); 0 disables. Random reads never trigger it.
    #[arg(
        long = "registry-readahead",
        value_name = "CHUNKS",
        default_value_t = 4
    )]
    pub readahead: u64,
    /// The platform chosen from an image index, `OS/ARCH[/VARIANT]`.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", default_value = "linux/amd64")]
    pub platform: String,
}

impl RegistryArgs {
    /// The client options these arguments say.
    pub fn client_options(&self) -> anyhow::Result<ClientOptions> {
        let credentials = self
            .creds
            .as_deref()
            .map(Credentials::parse)
            .transpose()
            .context("--creds")?;
        let mut parts = self.platform.split('/');
        let platform = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(os), Some(arch), variant, None) if !os.is_empty() && !arch.is_empty() => {
                Platform {
                    os: os.to_owned(),
                    architecture: arch.to_owned(),
                    variant: variant.filter(|v| !v.is_empty()).map(str::to_owned),
                }
            }
            _ => anyhow::bail!(
                "--platform {:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64",
                self.platform
            ),
        };
        anyhow::ensure!(
            self.timeout > 0,
            "--registry-timeout must be at least 1 second"
        );
        Ok(ClientOptions {
            credentials,
            extra_ca: self.tls_ca.clone(),
            insecure_registries: self.insecure_registries.clone(),
            retries: self.retries,
            read_timeout: Duration::from_secs(self.timeout),
            platform,
            ..ClientOptions::default()
        })
    }
}
