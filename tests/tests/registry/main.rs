//! The registry client and `ocidisk` against Debian's real `docker-registry`
//! on loopback (images pushed with skopeo, faults injected by the proxy in
//! `ocidisk_tests::registry::proxy`), and the caches an image fills: the
//! shared chunk cache across processes and the decompressed-layer cache.
//!
//! One binary instead of one per file (one link; nextest still runs each
//! test in its own process). Each module was once its own binary; a test's
//! name is `<module>::<test>`, e.g.
//! `cargo nextest run -p ocidisk-tests --test registry -E 'test(/^registry_pull::/)'`.

mod chunk_cache;
mod oci_cache;
mod registry_auth;
mod registry_client;
mod registry_faults;
mod registry_offline;
mod registry_prefetch;
mod registry_pull;
mod registry_serve;
mod small_disk;
