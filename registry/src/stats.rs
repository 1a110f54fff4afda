//! Counters of what a client did, for the backend's `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Plain atomic counters, updated as requests complete; read them with
/// [`ClientStats::snapshot`] (or the fields, relaxed).
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Fetches that succeeded (manifests, configs, blobs, ranges).
    pub fetches: AtomicU64,
    /// Body bytes received (all attempts, including discarded ones).
    pub bytes: AtomicU64,
    /// Attempts repeated after a transient failure.
    pub retries: AtomicU64,
    /// Fetches that failed for good.
    pub failures: AtomicU64,
    /// Tokens fetched from a token endpoint (first ones and renewals).
    pub token_fetches: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`ClientStats::fetches`].
    pub fetches: u64,
    /// See [`ClientStats::bytes`].
    pub bytes: u64,
    /// See [`ClientStats::retries`].
    pub retries: u64,
    /// See [`ClientStats::failures`].
    pub failures: u64,
    /// See [`ClientStats::token_fetches`].
    pub token_fetches: u64,
}

impl ClientStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            fetches: r(&self.fetches),
            bytes: r(&self.bytes),
            retries: r(&self.retries),
            failures: r(&self.failures),
            token_fetches: r(&self.token_fetches),
        }
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
