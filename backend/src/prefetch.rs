//! `ocidisk pull --prefetch TRACE`: the chunks of a registry image's blobs
//! that a recorded `serve --trace` run read, in the order it first read
//! them. Each read's disk range goes through the same composed disk that
//! `serve` builds (so pull takes serve's layout arguments); the parts of it
//! that a registry blob backs become chunks, the rest (GPT, FAT32
//! metadata, zero fill, local files) is skipped. What the overlay held at
//! the time cannot be known from the trace: those reads are prefetched
//! too, which costs bytes but never correctness.

use crate::metrics::trace::{Entry, TracePartition, TraceReader};
use crate::metrics::ReqKind;
use anyhow::Context as _;
use layout::chunkcache::{CachedBlob, ChunkRef};
use layout::{Disk, Source};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// The chunks to fetch, and what the trace held.
#[derive(Debug, Default)]
pub struct Plan {
    /// Every chunk the trace's reads touched, once, in first-read order.
    pub chunks: Vec<ChunkRef>,
    /// Read requests in the trace.
    pub reads: u64,
    /// Bytes they read.
    pub read_bytes: u64,
    /// Of those, bytes no registry blob backs (generated, zero, local).
    pub unbacked_bytes: u64,
    /// Records the tracing server dropped (their reads are not known).
    pub dropped: u64,
    /// The traced disk's label (its serial), for the report.
    pub label: String,
}

/// Reads the trace at `trace` and maps its reads through `disk` (composed
/// from the image whose layers are `blobs`, with the layout `serve` had)
/// to chunks. A trace of another disk (size or partition table differs)
/// is an error naming the file and the difference.
pub fn plan(
    trace: &Path,
    disk: &Disk,
    partitions: &[TracePartition],
    blobs: &[Arc<CachedBlob>],
) -> anyhow::Result<Plan> {
    let reader = TraceReader::open(trace)?;
    let header = reader.header().clone();
    let size = disk.map.size();
    if header.disk_size != size {
        anyhow::bail!(
            "trace {}: recorded a disk of {} bytes (label {:?}), but this image and layout compose {size} bytes: \
             a trace of another disk? Give pull the --layout and --disk-size that serve had",
            trace.display(),
            header.disk_size,
            header.label
        );
    }
    // Version 1 traces carry no partition table: the size is all we can check.
    if !header.partitions.is_empty() && header.partitions != partitions {
        let differ = header
            .partitions
            .iter()
            .zip(partitions)
            .find(|(a, b)| a != b)
            .map(|(a, b)| {
                format!(
                    "partition {} is {:?} at bytes {}..{} in the trace, {:?} at {}..{} here",
                    a.index, a.name, a.start, a.end, b.name, b.start, b.end
                )
            })
            .unwrap_or_else(|| {
                format!(
                    "the trace has {} partitions, this layout {}",
                    header.partitions.len(),
                    partitions.len()
                )
            });
        anyhow::bail!(
            "trace {} (label {:?}) is of another disk: {differ}",
            trace.display(),
            header.label
        );
    }

    let by_path: HashMap<&Path, usize> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| (b.path(), i))
        .collect();
    let mut seen: HashSet<(usize, u64)> = HashSet::new();
    let mut plan = Plan {
        label: header.label.clone(),
        ..Plan::default()
    };
    let mut push = |plan: &mut Plan, i: usize, chunk: u64| {
        if seen.insert((i, chunk)) {
            plan.chunks.push(ChunkRef {
                blob: Arc::clone(&blobs[i]),
                chunk,
            });
        }
    };
    let read = ReqKind::Read.code();
    for (n, entry) in reader.enumerate() {
        let r = match entry.with_context(|| format!("reading trace {}", trace.display()))? {
            Entry::Request(r) => r,
            Entry::Dropped { count, .. } => {
                plan.dropped += count;
                continue;
            }
        };
        if r.kind != read {
            continue;
        }
        let end = r.offset.checked_add(r.len).filter(|&e| e <= size);
        if end.is_none() {
            anyhow::bail!(
                "trace {}: record {n} reads bytes {}..{} past the end of the {size}-byte disk",
                trace.display(),
                r.offset,
                r.offset.saturating_add(r.len)
            );
        }
        plan.reads += 1;
        plan.read_bytes += r.len;
        for (extent, at, len) in disk.map.segments(r.offset, r.len) {
            let (file, offset) = match &extent.source {
                Source::File { file, offset } => (file, *offset),
                _ => {
                    plan.unbacked_bytes += len;
                    continue;
                }
            };
            let Some(&i) = by_path.get(file.path()) else {
                plan.unbacked_bytes += len;
                continue;
            };
            let blob = &blobs[i];
            if !blob.has_chunk_hashes() {
                // Checked only whole: serve fetched all of it on the first
                // read, and so does the prefetch, at the same point.
                for chunk in 0..blob.chunks() {
                    push(&mut plan, i, chunk);
                }
                continue;
            }
            let cs = blob.chunk_size();
            let start = (offset + at).min(blob.spec().size);
            let stop = (offset + at + len).min(blob.spec().size);
            for chunk in start / cs..stop.div_ceil(cs) {
                push(&mut plan, i, chunk);
            }
        }
    }
    Ok(plan)
}
