//! A synchronous client for the OCI distribution API, and image references
//! in skopeo's transport syntax.
//!
//! # Why ureq and not oci-client
//!
//! The backend runs one thread per virtqueue and fetches a missing chunk on
//! the thread that needs it; a blocking client fits that, an async one
//! would bring a tokio runtime into every server just to block on it.
//! `oci-client` is async-only (tokio + reqwest), follows redirects itself
//! (so whether `Authorization` goes to a blob store is not ours to decide),
//! and hides the answers a chunk fetcher needs to see: a `200` to a `Range`
//! request, the `Content-Range` of a `206`, a body cut short that can be
//! resumed. `ureq` 3 is a small, maintained blocking HTTP/1.1 client on
//! rustls; what the distribution API adds on top (bearer-token challenges,
//! manifest media types, digest checks) is a few hundred lines here, each
//! covered by tests against the real `docker-registry`.
//!
//! # What it does
//!
//! - [`ImageRef::parse`]: `oci:DIR[:REF]`, a bare directory, or
//!   `docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX]`.
//! - [`Client::resolve`]: a reference to one image manifest (through image
//!   indexes, by `--ref` or platform, linux/amd64 by default) and its
//!   config; manifests, indexes and configs are always checked against
//!   their digests.
//! - [`Client::read_range`]: a byte range of a blob (`Range`; a registry
//!   answering `200` is read up to the range), for chunked, lazy fetching.
//! - [`Client::get_blob`] / [`Client::get_blob_to_file`]: a whole blob,
//!   streamed, its digest checked.
//! - [`pull_to_layout`]: an image into an OCI image layout directory, each
//!   blob verified before it takes its place (what `ocidisk pull` runs).
//! - [`RemoteBlob`]: one blob as a handle to read ranges of (what a chunk
//!   cache fills its chunks from).
//! - Authentication: `Basic`, or `Bearer` tokens from the registry's token
//!   endpoint, renewed when the registry answers 401 to one in use;
//!   credentials from [`ClientOptions::credentials`] or the auth files
//!   skopeo reads ([`credentials`]).
//! - TLS with the system's CA store plus [`ClientOptions::extra_ca`]; plain
//!   HTTP only for loopback registries and
//!   [`ClientOptions::insecure_registries`].
//! - Redirects (to blob storage): `Authorization` is sent only to the
//!   registry's own scheme, host and port.
//! - Transient failures (connection, timeout, 5xx, 429, a body cut short,
//!   a corrupt manifest or config) are retried with exponential backoff,
//!   each retry logged with `tracing`; [`ClientStats`] counts fetches,
//!   bytes, retries and failures for `/metrics`.
//! - A registry that gave a chunk fetch no answer rests: further chunk
//!   fetches from it fail at once for a few seconds, then one asks again
//!   ([`outage`]).

pub mod challenge;
mod client;
pub mod credentials;
pub mod digest;
mod error;
mod fetch;
pub mod manifest;
mod options;
pub mod outage;
pub mod pull;
pub mod reference;
mod remote_blob;
mod stats;

pub use client::Client;
pub use credentials::Credentials;
pub use digest::Digest;
pub use error::{At, RegistryError};
pub use fetch::{FetchedManifest, ResolvedImage};
pub use options::{ClientOptions, Platform};
pub use outage::rfc3339;
pub use pull::{pull_to_layout, PullError, PullReport};
pub use reference::{ImageRef, RefError, RegistryRef, Target};
pub use remote_blob::RemoteBlob;
pub use stats::{ClientStats, StatsSnapshot};
