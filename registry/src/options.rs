//! Settings of a [`Client`](crate::Client).

use crate::credentials::Credentials;
use std::path::PathBuf;
use std::time::Duration;

/// The platform an image index is resolved for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `os`, e.g. `linux`.
    pub os: String,
    /// `architecture`, e.g. `amd64`.
    pub architecture: String,
    /// `variant`, e.g. `v8`; `None` matches any.
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// How a client connects, authenticates and retries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Credentials given explicitly (`--creds user:password`); when set,
    /// the auth files are not read.
    pub credentials: Option<Credentials>,
    /// Auth files to look credentials up in, in order; `None` means the
    /// files skopeo reads ([`default_auth_files`](crate::credentials::default_auth_files)).
    pub auth_files: Option<Vec<PathBuf>>,
    /// A PEM file of CA certificates trusted besides the system's.
    pub extra_ca: Option<PathBuf>,
    /// Registries (`host` or `host:port`) reached over plain HTTP. Loopback
    /// registries (localhost, 127.0.0.1, ::1) may always use HTTP.
    pub insecure_registries: Vec<String>,
    /// Connecting (including the TLS handshake's TCP part) may take this long.
    pub connect_timeout: Duration,
    /// No byte for this long while waiting for an answer or reading a body
    /// fails the attempt.
    pub read_timeout: Duration,
    /// Attempts after the first for a transient failure (connection, timeout,
    /// 5xx, 429, truncated or corrupt body).
    pub retries: u32,
    /// The wait before the first retry; doubled per retry.
    pub backoff_initial: Duration,
    /// The longest wait between retries.
    pub backoff_max: Duration,
    /// Redirects followed per request (to blob storage, usually one).
    pub max_redirects: u32,
    /// Manifests and indexes larger than this are refused (the distribution
    /// spec suggests registries accept at least 4 MiB).
    pub max_manifest_size: u64,
    /// The platform chosen from an image index.
    pub platform: Platform,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            credentials: None,
            auth_files: None,
            extra_ca: None,
            insecure_registries: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            retries: 4,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            max_redirects: 5,
            max_manifest_size: 4 << 20,
            platform: Platform::default(),
        }
    }
}

impl ClientOptions {
    /// These options for a client that fills a chunk cache, which has its
    /// own attempt budget per chunk: at most one retry here, so a chunk
    /// costs at most `2 × cache attempts` requests rather than their
    /// product with [`retries`](Self::retries).
    pub fn for_chunk_cache(mut self) -> ClientOptions {
        self.retries = self.retries.min(1);
        self
    }
}
