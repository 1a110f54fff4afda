//! What can go wrong talking to a registry. Every error names the registry,
//! the repository and the object (manifest reference, blob digest, byte
//! range) it concerns, and the HTTP status where there is one.

use crate::credentials::CredentialsError;
use crate::digest::Digest;
use std::fmt;
use std::path::PathBuf;

/// The object a request was for: `registry/repository: object`. Boxed, so
/// that errors stay small on the success path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At(Box<AtParts>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct AtParts {
    registry: String,
    repository: String,
    object: String,
}

impl At {
    /// `registry/repository: object`.
    pub fn new(registry: &str, repository: &str, object: impl Into<String>) -> At {
        At(Box::new(AtParts {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            object: object.into(),
        }))
    }

    /// `host[:port]`.
    pub fn registry(&self) -> &str {
        &self.0.registry
    }

    /// The repository path.
    pub fn repository(&self) -> &str {
        &self.0.repository
    }

    /// `manifest TAG`, `blob sha256:…`, `blob sha256:… bytes A-B`, …
    pub fn object(&self) -> &str {
        &self.0.object
    }

    /// The same repository, another object.
    pub fn with_object(&self, object: impl Into<String>) -> At {
        At::new(self.registry(), self.repository(), object)
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}: {}",
            self.0.registry, self.0.repository, self.0.object
        )
    }
}

fn with_detail(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(": {d}")
    }
}

/// An error of the registry client.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// An HTTP status that is neither success nor handled (404, 401 have
    /// their own variants); `detail` is the registry's error code and
    /// message when it sent one.
    #[error("{at}: HTTP {status}{}", with_detail(.detail))]
    Status {
        /// What was asked for.
        at: At,
        /// The HTTP status.
        status: u16,
        /// The registry's explanation, if any.
        detail: String,
        /// How long the registry asked to wait (`Retry-After`, in seconds).
        retry_after: Option<std::time::Duration>,
    },
    /// The manifest or blob does not exist (HTTP 404).
    #[error("{at}: not found (HTTP 404){}", with_detail(.detail))]
    NotFound {
        /// What was asked for.
        at: At,
        /// The registry's explanation, if any.
        detail: String,
    },
    /// Authentication failed: no credentials for a registry that wants
    /// them, credentials rejected, or a token endpoint that refused.
    #[error("{at}: unauthorized (HTTP {status}): {reason}")]
    Unauthorized {
        /// What was asked for.
        at: At,
        /// The HTTP status of the refusal.
        status: u16,
        /// What was tried and refused.
        reason: String,
    },
    /// No HTTP answer: connection refused or reset, DNS, timeout, TLS.
    #[error("{at}: requesting {url}")]
    Transport {
        /// What was asked for.
        at: At,
        /// The URL being requested.
        url: String,
        /// ureq's error.
        source: Box<ureq::Error>,
    },
    /// The body ended before its length.
    #[error("{at}: body ended after {got} of {expected} bytes")]
    Truncated {
        /// What was asked for.
        at: At,
        /// Bytes expected.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// Reading the body failed part way.
    #[error("{at}: reading the body failed after {got} bytes")]
    Body {
        /// What was asked for.
        at: At,
        /// Bytes received before the failure.
        got: u64,
        /// The read error.
        source: std::io::Error,
    },
    /// Content whose sha256 is not the digest it was asked for by.
    #[error("{at}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was asked for.
        at: At,
        /// The digest asked for.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// Content whose size is not its descriptor's.
    #[error("{at}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What was asked for.
        at: At,
        /// The descriptor's size.
        expected: u64,
        /// What arrived.
        actual: u64,
    },
    /// A manifest or config larger than the limit.
    #[error("{at}: larger than the {limit}-byte limit")]
    TooLarge {
        /// What was asked for.
        at: At,
        /// The limit.
        limit: u64,
    },
    /// Plain HTTP to a registry that is neither loopback nor declared
    /// insecure.
    #[error("{registry}: speaks plain HTTP only, which is allowed only for localhost or a registry declared insecure ({reason})")]
    InsecureRefused {
        /// The registry.
        registry: String,
        /// Why HTTPS failed.
        reason: String,
    },
    /// An answer that does not make sense: bad JSON, an index without the
    /// wanted platform, a bad redirect, a Content-Range for other bytes.
    #[error("{at}: {reason}")]
    BadResponse {
        /// What was asked for.
        at: At,
        /// What is wrong.
        reason: String,
    },
    /// A range that does not lie within the blob.
    #[error("{at}: outside the blob's {size} bytes")]
    OutOfRange {
        /// The blob and range asked for.
        at: At,
        /// The blob's size.
        size: u64,
    },
    /// Writing a streamed body to its destination failed.
    #[error("{at}: writing the body")]
    Write {
        /// What was asked for.
        at: At,
        /// The write error.
        source: std::io::Error,
    },
    /// A transient failure that persisted through every retry.
    #[error("gave up after {attempts} attempts")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        source: Box<RegistryError>,
    },
    /// Not requested: the registry gave no answer moments ago, and chunk
    /// fetches from it fail at once until its rest is over (see
    /// [`FIRST_REST`](crate::outage::FIRST_REST)).
    #[error(
        "{at}: not requested: registry {} unreachable since {since}, next attempt in {} s; it failed with: {cause}",
        .at.registry(),
        .retry_in.as_secs_f64().ceil()
    )]
    Unreachable {
        /// What would have been asked for.
        at: At,
        /// When the registry was first found unreachable
        /// (`YYYY-MM-DDTHH:MM:SSZ`).
        since: String,
        /// How long until a fetch asks the registry again.
        retry_in: std::time::Duration,
        /// The failure that started the outage.
        cause: String,
    },
    /// Credentials could not be read.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The extra CA file cannot be used.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl RegistryError {
    /// Whether another attempt may succeed. Corrupt content counts as
    /// transient only where the caller can throw the bytes away.
    pub(crate) fn is_transient(&self, corrupt_too: bool) -> bool {
        match self {
            RegistryError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            RegistryError::Transport { source, .. } => !matches!(
                **source,
                ureq::Error::BadUri(_) | ureq::Error::Tls(_) | ureq::Error::InvalidProxyUrl
            ),
            RegistryError::Truncated { .. } | RegistryError::Body { .. } => true,
            RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. } => {
                corrupt_too
            }
            _ => false,
        }
    }

    /// Whether the registry gave no answer worth the name: no connection,
    /// a timeout, a `5xx`, `408` or `429` (also after the client's
    /// retries). A refusal, a missing object, a cut or corrupt body are
    /// answers; a client that stops asking a registry for a while after a
    /// failure (see [`crate::outage`]) stops only for these.
    pub fn is_no_answer(&self) -> bool {
        match self.last() {
            e @ (RegistryError::Transport { .. } | RegistryError::Status { .. }) => {
                e.is_transient(false)
            }
            RegistryError::Body { source, .. } => source.kind() == std::io::ErrorKind::TimedOut,
            _ => false,
        }
    }

    /// Whether a later attempt may succeed where this one failed (for a
    /// caller with its own retry budget, like a chunk cache: a timeout, a
    /// dropped connection, a 5xx or 429, a short body; also after this
    /// client gave up on such a failure). A missing blob, a refusal, a bad
    /// answer are not. A caller that retries itself should give the client
    /// few or no retries of its own, or the attempts multiply.
    pub fn is_retryable(&self) -> bool {
        self.last().is_transient(false)
    }

    /// The wait the registry asked for before another attempt.
    pub(crate) fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status of the failure, if it had one.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Status { status, .. } | RegistryError::Unauthorized { status, .. } => {
                Some(*status)
            }
            RegistryError::NotFound { .. } => Some(404),
            RegistryError::GaveUp { source, .. } => source.status(),
            _ => None,
        }
    }

    /// The error of the last attempt (itself unless retries gave up).
    pub fn last(&self) -> &RegistryError {
        match self {
            RegistryError::GaveUp { source, .. } => source.last(),
            e => e,
        }
    }
}
