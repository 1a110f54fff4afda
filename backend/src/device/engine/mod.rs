//! How a queue's requests reach the disk.
//!
//! Two engines, one chosen per process:
//!
//! - **io_uring** ([`queue::AsyncQueue`] on a [`ring::Ring`] per queue, with a
//!   [`syncer::Syncer`] for group commit): many requests in flight per
//!   queue, completed as the kernel finishes them; reads the page cache
//!   holds complete at once on the queue's thread.
//! - **blocking**: each queue thread carries out one request after another
//!   with `preadv`/`pwritev`/`fdatasync` (and shares large reads with
//!   helper threads). It is the fallback where io_uring is missing,
//!   disabled (`kernel.io_uring_disabled`) or filtered (seccomp).

pub mod queue;
pub mod ring;
pub mod syncer;

use std::time::Duration;

/// Which engine `ocidisk serve` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// io_uring if this process may use it, else blocking calls.
    Auto,
    /// io_uring; fail to start without it.
    Uring,
    /// Blocking calls on each queue's thread.
    Sync,
}

/// The engine a device runs, and its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Whether queues run on io_uring (else blocking calls).
    pub uring: bool,
    /// How long a queue thread keeps polling its ring and virtqueue after
    /// the last thing it did, before it sleeps.
    pub poll: Duration,
    /// With `--direct`, the alignment the disk's `O_DIRECT` files need;
    /// transfers that meet it use them.
    pub direct: Option<blockio::DirectAlign>,
}

impl EngineConfig {
    /// Blocking calls, no polling: what unit tests and the fallback use.
    pub fn blocking() -> EngineConfig {
        EngineConfig {
            uring: false,
            poll: Duration::ZERO,
            direct: None,
        }
    }

    /// Resolves `choice` on this machine; says once in the log when it
    /// falls back.
    pub fn resolve(
        choice: EngineChoice,
        poll: Duration,
        direct: Option<blockio::DirectAlign>,
    ) -> std::io::Result<EngineConfig> {
        let uring = match choice {
            EngineChoice::Sync => false,
            EngineChoice::Uring => {
                ring::probe()?;
                true
            }
            EngineChoice::Auto => match ring::probe() {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(
                        "io_uring is not available ({err}); serving with blocking calls"
                    );
                    false
                }
            },
        };
        Ok(EngineConfig {
            uring,
            poll,
            direct,
        })
    }
}
