//! Reduces a trace to what the plot draws, in memory bounded by the
//! picture's size (not the trace's): per-interval counts, bytes, latency
//! histograms and mean queue depth; an offset × time grid of cells the size
//! of a few pixels; request-size counts. Two passes over the file: the first
//! finds the time span, the second fills the bins.

use super::super::{ranged, size_bucket, SIZE_BOUNDS};
use crate::metrics::trace::{Entry, Header, TraceReader};
use crate::metrics::ReqKind;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The request types the plot draws, in legend order.
pub const KINDS: [ReqKind; 5] = [
    ReqKind::Read,
    ReqKind::Write,
    ReqKind::Flush,
    ReqKind::Discard,
    ReqKind::WriteZeroes,
];

/// Latency buckets: 4 per octave from 256 ns up to 2^32 ns (4.29 s, the
/// largest latency a trace stores); faster requests go in the first.
pub const LAT_PER_OCTAVE: usize = 4;
/// log2 of the lower bound of the first latency bucket.
pub const LAT_MIN_LOG2: usize = 8;
/// Number of latency buckets.
pub const LAT_BUCKETS: usize = (32 - LAT_MIN_LOG2) * LAT_PER_OCTAVE;

/// The latency bucket of `ns`.
pub fn lat_bucket(ns: u64) -> usize {
    if ns < 1 << LAT_MIN_LOG2 {
        return 0;
    }
    let b = ((ns as f64).log2() - LAT_MIN_LOG2 as f64) * LAT_PER_OCTAVE as f64;
    (b as usize).min(LAT_BUCKETS - 1)
}

/// The lower bound of latency bucket `i`, ns.
pub fn lat_bucket_low(i: usize) -> f64 {
    2f64.powf(LAT_MIN_LOG2 as f64 + i as f64 / LAT_PER_OCTAVE as f64)
}

/// Where a kind's counters live.
fn slot(kind: ReqKind) -> Option<usize> {
    KINDS.iter().position(|k| *k == kind)
}

/// What the first pass learns.
#[derive(Clone, Debug)]
pub struct Extent {
    /// The trace's header.
    pub header: Header,
    /// First request's start, ns since the trace began.
    pub first_ns: u64,
    /// From the first start to the last completion, ns (at least 1).
    pub span_ns: u64,
    /// One past the highest byte any request touched.
    pub max_end: u64,
    /// Requests.
    pub requests: u64,
}

/// Opens `path` and reads it once for its extent.
pub fn scan(path: &Path) -> anyhow::Result<Extent> {
    let mut reader = TraceReader::open(path)?;
    let header = reader.header().clone();
    let (mut first, mut last, mut max_end, mut requests) = (u64::MAX, 0u64, 0u64, 0u64);
    for e in reader.by_ref() {
        let Entry::Request(r) = e? else { continue };
        let Some(kind) = ReqKind::from_code(r.kind) else {
            continue;
        };
        requests += 1;
        first = first.min(r.time_ns);
        last = last.max(r.time_ns.saturating_add(r.latency_ns));
        if ranged(kind) {
            max_end = max_end.max(r.offset.saturating_add(r.len));
        }
    }
    if requests == 0 {
        first = 0;
    }
    Ok(Extent {
        header,
        first_ns: first,
        span_ns: last.saturating_sub(first).max(1),
        max_end,
        requests,
    })
}

/// How finely to aggregate.
#[derive(Clone, Copy, Debug)]
pub struct Resolution {
    /// Time intervals (one per few pixels of the time axis).
    pub bins: usize,
    /// The time every axis spans, ns (the longer run's, when comparing).
    pub span_ns: u64,
    /// Columns of the offset × time grid.
    pub cols: usize,
    /// Rows of the offset × time grid.
    pub rows: usize,
}

/// Per-interval figures of one kind.
#[derive(Clone, Debug)]
pub struct KindBins {
    /// Requests started in each interval.
    pub count: Vec<u64>,
    /// Bytes of those.
    pub bytes: Vec<u64>,
    /// Latency histogram of each interval (`bins × LAT_BUCKETS`).
    pub lat: Vec<u32>,
}

/// A whole trace reduced for plotting.
#[derive(Clone, Debug)]
pub struct Aggregate {
    /// The trace file.
    pub path: PathBuf,
    /// What the first pass found.
    pub extent: Extent,
    /// The resolution of everything below.
    pub res: Resolution,
    /// The offset axis runs from 0 to this (the disk's size, or the highest
    /// byte touched when the trace does not know it).
    pub disk_extent: u64,
    /// Per kind in [`KINDS`] order.
    pub kinds: Vec<KindBins>,
    /// Latency histogram of every request of every kind, per interval.
    pub lat_all: Vec<u32>,
    /// Mean requests in flight in each interval.
    pub depth: Vec<f64>,
    /// Offset grid: per cell (row-major, row 0 = offset 0) the requests of
    /// each kind in [`KINDS`] order that started there.
    pub grid: Vec<[u32; 5]>,
    /// Flushes started in each grid column (they have no offset).
    pub flush_cols: Vec<u32>,
    /// Request sizes: per kind, per bucket of [`SIZE_BOUNDS`] (plus one).
    pub sizes: Vec<Vec<u64>>,
    /// Requests the writer dropped (marker records).
    pub dropped: u64,
    /// File offset and length of an incomplete last record.
    pub truncated: Option<(u64, usize)>,
}

impl Aggregate {
    /// Width of an interval, ns.
    pub fn bin_ns(&self) -> f64 {
        self.res.span_ns as f64 / self.res.bins as f64
    }

    /// Whether the trace has requests of `KINDS[i]`.
    pub fn has(&self, i: usize) -> bool {
        self.kinds[i].count.iter().any(|&c| c > 0)
    }
}

/// Reads `path` a second time and fills the bins.
pub fn aggregate(path: &Path, extent: &Extent, res: Resolution) -> anyhow::Result<Aggregate> {
    let reader = TraceReader::open(path)?;
    aggregate_from(reader, path, extent, res)
}

/// [`aggregate`] from an open reader.
pub fn aggregate_from<R: Read>(
    mut reader: TraceReader<R>,
    path: &Path,
    extent: &Extent,
    res: Resolution,
) -> anyhow::Result<Aggregate> {
    let bins = res.bins.max(1);
    let (cols, rows) = (res.cols.max(1), res.rows.max(1));
    let disk_extent = if extent.header.disk_size > 0 {
        extent.header.disk_size.max(extent.max_end)
    } else {
        extent.max_end.max(1)
    };
    let bin_ns = res.span_ns.max(1) as f64 / bins as f64;
    let col_ns = res.span_ns.max(1) as f64 / cols as f64;
    let mut kinds = vec![
        KindBins {
            count: vec![0; bins],
            bytes: vec![0; bins],
            lat: vec![0; bins * LAT_BUCKETS],
        };
        KINDS.len()
    ];
    let mut lat_all = vec![0u32; bins * LAT_BUCKETS];
    // Time in flight within each interval (ns) for partly covered
    // intervals, and a difference array of whole intervals covered.
    let mut partial = vec![0f64; bins];
    let mut whole = vec![0i64; bins + 1];
    let mut grid = vec![[0u32; 5]; cols * rows];
    let mut flush_cols = vec![0u32; cols];
    let mut sizes = vec![vec![0u64; SIZE_BOUNDS.len() + 1]; KINDS.len()];
    let mut dropped = 0u64;

    for e in reader.by_ref() {
        let r = match e? {
            Entry::Dropped { count, .. } => {
                dropped = dropped.saturating_add(count);
                continue;
            }
            Entry::Request(r) => r,
        };
        let Some(kind) = ReqKind::from_code(r.kind) else {
            continue;
        };
        let start = r.time_ns.saturating_sub(extent.first_ns) as f64;
        let end = start + r.latency_ns as f64;
        let bin = ((start / bin_ns) as usize).min(bins - 1);
        let lb = lat_bucket(r.latency_ns);
        lat_all[bin * LAT_BUCKETS + lb] = lat_all[bin * LAT_BUCKETS + lb].saturating_add(1);

        // Queue depth: the request's time in flight, spread over the
        // intervals it covers, in O(1).
        let last = ((end / bin_ns) as usize).min(bins - 1);
        if last == bin {
            partial[bin] += end - start;
        } else {
            partial[bin] += (bin + 1) as f64 * bin_ns - start;
            partial[last] += (end - last as f64 * bin_ns).min(bin_ns);
            whole[bin + 1] += 1;
            whole[last] -= 1;
        }

        let Some(k) = slot(kind) else { continue };
        let kb = &mut kinds[k];
        kb.count[bin] += 1;
        kb.bytes[bin] = kb.bytes[bin].saturating_add(r.len);
        kb.lat[bin * LAT_BUCKETS + lb] = kb.lat[bin * LAT_BUCKETS + lb].saturating_add(1);
        let col = ((start / col_ns) as usize).min(cols - 1);
        if kind == ReqKind::Flush {
            flush_cols[col] = flush_cols[col].saturating_add(1);
        }
        if ranged(kind) {
            if r.len > 0 {
                sizes[k][size_bucket(r.len)] += 1;
            }
            let row = ((r.offset as f64 / disk_extent as f64 * rows as f64) as usize).min(rows - 1);
            let cell = &mut grid[row * cols + col][k];
            *cell = cell.saturating_add(1);
        }
    }
    let mut depth = Vec::with_capacity(bins);
    let mut covered = 0i64;
    for i in 0..bins {
        covered += whole[i];
        depth.push((partial[i] + covered as f64 * bin_ns) / bin_ns);
    }
    let truncated = reader
        .truncated_at()
        .map(|at| (at, reader.truncated_tail()));
    Ok(Aggregate {
        path: path.to_owned(),
        extent: extent.clone(),
        res: Resolution {
            bins,
            cols,
            rows,
            ..res
        },
        disk_extent,
        kinds,
        lat_all,
        depth,
        grid,
        flush_cols,
        sizes,
        dropped,
        truncated,
    })
}

/// The `q` quantile of a latency histogram row, ns (the bucket's
/// geometric middle), or `None` for an empty row.
pub fn lat_quantile(row: &[u32], q: f64) -> Option<f64> {
    let total: u64 = row.iter().map(|&c| u64::from(c)).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, &c) in row.iter().enumerate() {
        seen += u64::from(c);
        if seen >= rank {
            return Some((lat_bucket_low(i) * lat_bucket_low(i + 1)).sqrt());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::trace::{Record, TraceWriter};

    fn write(dir: &Path, recs: &[Record]) -> PathBuf {
        let path = dir.join("t.trace");
        let w = TraceWriter::create(&path, 1, 1 << 20).unwrap();
        for r in recs {
            w.queue(0).record(r);
        }
        w.close().unwrap();
        path
    }

    fn rec(t: u64, kind: ReqKind, offset: u64, len: u64, lat: u64) -> Record {
        Record {
            time_ns: t,
            offset,
            len,
            latency_ns: lat,
            queue: 0,
            kind: kind.code(),
            status: 0,
        }
    }

    #[test]
    fn bins_counts_bytes_depth_and_grid() {
        let dir = tempfile::tempdir().unwrap();
        // Span 0..1000 ns over 10 intervals of 100 ns.
        let recs = [
            rec(0, ReqKind::Read, 0, 4096, 1000), // in flight the whole span
            rec(150, ReqKind::Write, 512 << 10, 8192, 100), // 150..250
            rec(900, ReqKind::Flush, 0, 0, 50),
        ];
        let path = write(dir.path(), &recs);
        let ext = scan(&path).unwrap();
        assert_eq!((ext.span_ns, ext.requests), (1000, 3));
        let res = Resolution {
            bins: 10,
            span_ns: ext.span_ns,
            cols: 10,
            rows: 2,
        };
        let a = aggregate(&path, &ext, res).unwrap();
        assert_eq!(a.disk_extent, 1 << 20);
        assert_eq!(a.kinds[0].count[0], 1);
        assert_eq!(a.kinds[1].count[1], 1);
        assert_eq!(a.kinds[1].bytes[1], 8192);
        assert_eq!(a.kinds[2].count[9], 1);
        let want = [1.0, 1.5, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.5];
        for (got, want) in a.depth.iter().zip(want) {
            assert!((got - want).abs() < 1e-9, "{:?}", a.depth);
        }
        // The read is in the bottom row, the write (at half the disk) in
        // the top one; the flush only in the flush strip.
        assert_eq!(a.grid[0][0], 1);
        assert_eq!(a.grid[10 + 1][1], 1);
        assert_eq!(a.flush_cols[9], 1);
        assert_eq!(a.sizes[0][size_bucket(4096)], 1);
        assert!(a.has(0) && a.has(2) && !a.has(3));
    }

    #[test]
    fn latency_buckets_and_quantiles() {
        assert_eq!(lat_bucket(0), 0);
        assert_eq!(lat_bucket(u64::from(u32::MAX)), LAT_BUCKETS - 1);
        assert!(lat_bucket(1_000_000) > lat_bucket(1_000));
        let mut row = vec![0u32; LAT_BUCKETS];
        row[lat_bucket(10_000)] = 99;
        row[lat_bucket(1_000_000)] = 1;
        let p50 = lat_quantile(&row, 0.5).unwrap();
        let p99 = lat_quantile(&row, 0.99).unwrap();
        let p100 = lat_quantile(&row, 1.0).unwrap();
        assert!((8_000.0..12_000.0).contains(&p50), "{p50}");
        assert!((8_000.0..12_000.0).contains(&p99), "{p99}");
        assert!((800_000.0..1_200_000.0).contains(&p100), "{p100}");
        assert_eq!(lat_quantile(&[0; LAT_BUCKETS], 0.5), None);
    }
}
