//! `ocidisk trace …`: what a guest did to its disk, read from a request
//! trace written by `ocidisk serve --trace FILE` (format:
//! `backend/src/metrics/TRACE.md`).
//!
//! - [`summarize`]: the access pattern as tables (types, sizes, sequential
//!   share, partitions, hot regions);
//! - [`plot`]: the same as one page of pictures (SVG or PNG);
//! - [`compare`]: two runs side by side with the relative change;
//! - [`partitions`]: the partition table that names regions, from the
//!   trace's header or from `ocidisk inspect --json`.

pub mod compare;
pub mod partitions;
pub mod plot;
pub mod summarize;

use crate::metrics::ReqKind;

/// `ocidisk trace` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the access pattern of a request trace.
    Summarize(summarize::SummarizeArgs),
    /// Draw a request trace: offsets, throughput, IOPS, latency, queue
    /// depth and request sizes over time, as SVG or PNG.
    Plot(plot::PlotArgs),
    /// Compare two request traces per request type.
    Compare(compare::CompareArgs),
}

/// Runs an `ocidisk trace` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Summarize(args) => summarize::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Compare(args) => compare::run(args),
    }
}

/// Request-size buckets: a request is counted in the first bound ≥ its
/// size; larger ones in a last bucket.
pub const SIZE_BOUNDS: [u64; 12] = [
    512,
    1 << 10,
    2 << 10,
    4 << 10,
    8 << 10,
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
];

/// The size bucket of a request of `len` bytes (`SIZE_BOUNDS.len()` for
/// more than the last bound).
pub fn size_bucket(len: u64) -> usize {
    SIZE_BOUNDS
        .iter()
        .position(|&b| len <= b)
        .unwrap_or(SIZE_BOUNDS.len())
}

/// Kinds whose requests have a disk range.
pub fn ranged(kind: ReqKind) -> bool {
    matches!(
        kind,
        ReqKind::Read | ReqKind::Write | ReqKind::Discard | ReqKind::WriteZeroes
    )
}
