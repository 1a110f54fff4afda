//! `ocidisk trace summarize FILE`: the access pattern recorded by
//! `ocidisk serve --trace FILE` — what kinds of requests, how large, how
//! sequential, and which parts of the disk are hot (named by partition: from
//! the trace's header, or from `ocidisk inspect --json` for traces written
//! before the header recorded the partition table).

use super::partitions::Partitions;
use super::{ranged, size_bucket, SIZE_BOUNDS};
use crate::metrics::report::Latency;
use crate::metrics::trace::{Entry, TraceReader};
use crate::metrics::{units, AtomicHistogram, ReqKind};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};

/// Arguments of `ocidisk trace summarize`.
#[derive(clap::Args)]
pub struct SummarizeArgs {
    /// The trace file.
    file: PathBuf,
    /// The disk's partition table, as printed by `ocidisk inspect --json`,
    /// to name hot regions by partition (instead of the table the trace's
    /// header records).
    #[arg(long, value_name = "FILE")]
    layout_json: Option<PathBuf>,
    /// How many hot regions to list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// Runs `ocidisk trace summarize`.
pub fn run(args: SummarizeArgs) -> anyhow::Result<()> {
    let reader = TraceReader::open(&args.file)?;
    let partitions = match &args.layout_json {
        Some(p) => Partitions::load(p)?,
        None => header_partitions(&reader)?,
    };
    let summary = summarize(reader, &partitions, args.top)?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        print_summary(&mut out, &args.file, &summary)?;
    }
    Ok(())
}

/// Size of a hot region.
const REGION: u64 = 1 << 20;
/// A request spanning more regions than this is counted in the first this
/// many (only a corrupt trace has one: guests split I/O far smaller).
const MAX_REGIONS_PER_REQUEST: u64 = 4096;

/// The partition table a trace's header records (none in version 1).
pub fn header_partitions<R: Read>(reader: &TraceReader<R>) -> anyhow::Result<Partitions> {
    Partitions::new(reader.header().partitions.clone()).map_err(|e| {
        anyhow::anyhow!(
            "trace {}: partition table in the header: {e}",
            reader.path().display()
        )
    })
}

/// One request type in the trace.
#[derive(Serialize, Debug, Default, Clone, PartialEq)]
pub struct KindSummary {
    /// Requests.
    pub requests: u64,
    /// Bytes covered.
    pub bytes: u64,
    /// Requests that did not complete OK.
    pub errors: u64,
    /// Latency (latencies of 4.29 s or more are stored as 4.29 s).
    pub latency: Latency,
    /// Requests that started where the previous ranged request on the same
    /// queue ended.
    pub sequential_requests: u64,
    /// Bytes of those.
    pub sequential_bytes: u64,
}

/// A size bucket.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SizeBucket {
    /// Requests of at most this many bytes (and more than the previous
    /// bucket's); `null` for the last bucket, "larger than 1 MiB".
    pub max_bytes: Option<u64>,
    /// Requests by type name.
    pub requests: BTreeMap<String, u64>,
}

/// Requests within one partition (by their start offset).
#[derive(Serialize, Debug, Default, Clone, PartialEq)]
pub struct PartitionSummary {
    /// Partition index, or `null` for bytes outside every partition.
    pub index: Option<u32>,
    /// Partition name ("-" outside partitions).
    pub name: String,
    /// Ranged requests starting in it.
    pub requests: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
}

/// A 1 MiB region and the reads and writes that touched it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Region {
    /// Byte offset of the region.
    pub offset: u64,
    /// The partition holding it, if any.
    pub partition: Option<String>,
    /// Reads and writes touching it.
    pub requests: u64,
    /// Bytes read from it.
    pub read_bytes: u64,
    /// Bytes written to it.
    pub write_bytes: u64,
}

/// What `trace summarize` reports.
#[derive(Serialize, Debug)]
pub struct Summary {
    /// Size of the traced disk (0 if the trace does not say).
    pub disk_size: u64,
    /// Virtqueues of the traced disk.
    pub num_queues: u16,
    /// Wall-clock start of the trace, ns since the Unix epoch.
    pub start_unix_ns: u64,
    /// From the first request's start to the last one's completion, seconds.
    pub duration_s: f64,
    /// Requests in the trace.
    pub requests: u64,
    /// Requests the writer dropped (marker records).
    pub dropped: u64,
    /// Records of an unknown type (skipped).
    pub unknown_records: u64,
    /// Bytes of an incomplete last record (a writer that did not close).
    pub truncated_tail_bytes: usize,
    /// File offset of that incomplete record.
    pub truncated_at: Option<u64>,
    /// Per request type name.
    pub kinds: BTreeMap<String, KindSummary>,
    /// Request sizes of reads, writes, discards and write-zeroes.
    pub sizes: Vec<SizeBucket>,
    /// Requests per partition, outside-partition last; empty without a layout.
    pub partitions: Vec<PartitionSummary>,
    /// The busiest regions by bytes read and written.
    pub hot_regions: Vec<Region>,
}

#[derive(Default)]
struct RegionCount {
    requests: u64,
    read: u64,
    write: u64,
}

/// Reads a whole trace and summarizes it.
pub fn summarize<R: Read>(
    mut reader: TraceReader<R>,
    partitions: &Partitions,
    top: usize,
) -> anyhow::Result<Summary> {
    let header = reader.header().clone();
    let mut kinds: BTreeMap<ReqKind, (KindSummary, AtomicHistogram)> = BTreeMap::new();
    let mut sizes = vec![BTreeMap::<String, u64>::new(); SIZE_BOUNDS.len() + 1];
    let mut prev_end: HashMap<u16, u64> = HashMap::new();
    let mut regions: HashMap<u64, RegionCount> = HashMap::new();
    let mut per_part: BTreeMap<Option<usize>, PartitionSummary> = BTreeMap::new();
    let (mut requests, mut dropped, mut unknown) = (0u64, 0u64, 0u64);
    let (mut first, mut last) = (u64::MAX, 0u64);

    for entry in reader.by_ref() {
        let r = match entry? {
            Entry::Dropped { count, .. } => {
                dropped = dropped.saturating_add(count);
                continue;
            }
            Entry::Request(r) => r,
        };
        let Some(kind) = ReqKind::from_code(r.kind) else {
            unknown += 1;
            continue;
        };
        requests += 1;
        first = first.min(r.time_ns);
        last = last.max(r.time_ns.saturating_add(r.latency_ns));
        let (k, hist) = kinds
            .entry(kind)
            .or_insert_with(|| (KindSummary::default(), AtomicHistogram::new()));
        k.requests += 1;
        k.bytes = k.bytes.saturating_add(r.len);
        k.errors += u64::from(r.status != 0);
        hist.record(r.latency_ns);
        if !ranged(kind) {
            continue;
        }
        let end = r.offset.saturating_add(r.len);
        if prev_end.insert(r.queue, end) == Some(r.offset) {
            k.sequential_requests += 1;
            k.sequential_bytes = k.sequential_bytes.saturating_add(r.len);
        }
        if r.len > 0 {
            let bucket = size_bucket(r.len);
            *sizes[bucket].entry(kind.name().to_string()).or_default() += 1;
        }
        let (read, write) = match kind {
            ReqKind::Read => (r.len, 0),
            ReqKind::Write => (0, r.len),
            _ => (0, 0),
        };
        if !partitions.is_empty() {
            let idx = partitions.position(r.offset);
            let p = per_part.entry(idx).or_default();
            p.requests += 1;
            p.read_bytes = p.read_bytes.saturating_add(read);
            p.write_bytes = p.write_bytes.saturating_add(write);
        }
        if matches!(kind, ReqKind::Read | ReqKind::Write) && r.len > 0 {
            let first_region = r.offset / REGION;
            let last_region = (end - 1) / REGION;
            let last_region = last_region.min(first_region + MAX_REGIONS_PER_REQUEST - 1);
            for region in first_region..=last_region {
                let lo = r.offset.max(region * REGION);
                let hi = end.min((region + 1).saturating_mul(REGION));
                let c = regions.entry(region).or_default();
                c.requests += 1;
                if kind == ReqKind::Read {
                    c.read += hi - lo;
                } else {
                    c.write += hi - lo;
                }
            }
        }
    }

    let mut hot: Vec<(u64, RegionCount)> = regions.into_iter().collect();
    hot.sort_by(|a, b| {
        (b.1.read + b.1.write, b.1.requests, a.0).cmp(&(a.1.read + a.1.write, a.1.requests, b.0))
    });
    hot.truncate(top);
    let hot_regions = hot
        .into_iter()
        .map(|(region, c)| {
            let offset = region * REGION;
            Region {
                offset,
                partition: partitions.find(offset).map(|p| p.name.clone()),
                requests: c.requests,
                read_bytes: c.read,
                write_bytes: c.write,
            }
        })
        .collect();
    let partitions_out = per_part
        .into_iter()
        .map(|(idx, mut s)| {
            match idx.and_then(|i| partitions.list().get(i)) {
                Some(p) => {
                    s.index = Some(p.index);
                    s.name = p.name.clone();
                }
                None => s.name = "-".into(),
            }
            s
        })
        // Partitions in table order, the outside-everything entry last.
        .fold(Vec::new(), |mut v: Vec<PartitionSummary>, s| {
            if s.index.is_none() {
                v.push(s);
            } else {
                let at = v.iter().position(|x| x.index.is_none()).unwrap_or(v.len());
                v.insert(at, s);
            }
            v
        });

    Ok(Summary {
        disk_size: header.disk_size,
        num_queues: header.num_queues,
        start_unix_ns: header.start_unix_ns,
        duration_s: if requests == 0 {
            0.0
        } else {
            last.saturating_sub(first) as f64 / 1e9
        },
        requests,
        dropped,
        unknown_records: unknown,
        truncated_tail_bytes: reader.truncated_tail(),
        truncated_at: reader.truncated_at(),
        kinds: kinds
            .into_iter()
            .map(|(kind, (mut k, hist))| {
                k.latency = Latency::of(&hist.snapshot());
                (kind.name().to_string(), k)
            })
            .collect(),
        sizes: sizes
            .into_iter()
            .enumerate()
            .map(|(i, requests)| SizeBucket {
                max_bytes: SIZE_BOUNDS.get(i).copied(),
                requests,
            })
            .collect(),
        partitions: partitions_out,
        hot_regions,
    })
}

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

fn print_summary(out: &mut impl io::Write, file: &Path, s: &Summary) -> io::Result<()> {
    writeln!(
        out,
        "trace {}: {} requests over {:.3} s, {} queue(s), disk {}",
        file.display(),
        s.requests,
        s.duration_s,
        s.num_queues,
        units::bytes(s.disk_size)
    )?;
    if s.dropped > 0 {
        writeln!(
            out,
            "warning: {} requests were dropped by the trace writer (not in this summary)",
            s.dropped
        )?;
    }
    if s.unknown_records > 0 {
        writeln!(
            out,
            "warning: {} records of unknown type skipped",
            s.unknown_records
        )?;
    }
    if s.truncated_tail_bytes > 0 {
        writeln!(
            out,
            "warning: the trace ends with {} bytes of an incomplete record at byte {} (ignored)",
            s.truncated_tail_bytes,
            s.truncated_at.unwrap_or(0)
        )?;
    }

    writeln!(
        out,
        "\n{:<13} {:>10} {:>11} {:>7} {:>9} {:>9} {:>9} {:>9}  {:>10} {:>10}",
        "type", "requests", "bytes", "errors", "mean", "p50", "p99", "max", "seq (req)", "seq (B)"
    )?;
    for kind in ReqKind::ALL {
        let Some(k) = s.kinds.get(kind.name()) else {
            continue;
        };
        let (seq_r, seq_b) = if ranged(kind) {
            (
                share(k.sequential_requests, k.requests),
                share(k.sequential_bytes, k.bytes),
            )
        } else {
            ("-".into(), "-".into())
        };
        writeln!(
            out,
            "{:<13} {:>10} {:>11} {:>7} {:>9} {:>9} {:>9} {:>9}  {:>10} {:>10}",
            kind.name(),
            k.requests,
            units::bytes(k.bytes),
            k.errors,
            units::duration_ns(k.latency.mean_ns as u64),
            units::duration_ns(k.latency.p50_ns),
            units::duration_ns(k.latency.p99_ns),
            units::duration_ns(k.latency.max_ns),
            seq_r,
            seq_b
        )?;
    }

    let columns: Vec<&str> = ReqKind::ALL
        .iter()
        .filter(|k| ranged(**k) && s.kinds.contains_key(k.name()))
        .map(|k| k.name())
        .collect();
    if !columns.is_empty() {
        write!(out, "\n{:<12}", "size")?;
        for c in &columns {
            write!(out, " {c:>13}")?;
        }
        writeln!(out)?;
        let mut lower = 0;
        for b in &s.sizes {
            let label = match b.max_bytes {
                Some(max) => format!("≤ {}", units::bytes(max)),
                None => format!("> {}", units::bytes(lower)),
            };
            lower = b.max_bytes.unwrap_or(lower);
            if b.requests.is_empty() {
                continue;
            }
            write!(out, "{label:<12}")?;
            for c in &columns {
                write!(out, " {:>13}", b.requests.get(*c).copied().unwrap_or(0))?;
            }
            writeln!(out)?;
        }
    }

    if !s.partitions.is_empty() {
        writeln!(
            out,
            "\n{:<28} {:>10} {:>11} {:>11}",
            "partition", "requests", "read", "written"
        )?;
        for p in &s.partitions {
            let name = match p.index {
                Some(i) => format!("{i} {}", p.name),
                None => "(outside partitions)".into(),
            };
            writeln!(
                out,
                "{name:<28} {:>10} {:>11} {:>11}",
                p.requests,
                units::bytes(p.read_bytes),
                units::bytes(p.write_bytes)
            )?;
        }
    }

    if !s.hot_regions.is_empty() {
        writeln!(out, "\nhot 1 MiB regions (by bytes read and written)")?;
        writeln!(
            out,
            "{:<14} {:<24} {:>10} {:>11} {:>11}",
            "offset", "partition", "requests", "read", "written"
        )?;
        for r in &s.hot_regions {
            writeln!(
                out,
                "{:<14} {:<24} {:>10} {:>11} {:>11}",
                format!("{:#x}", r.offset),
                r.partition.as_deref().unwrap_or("-"),
                r.requests,
                units::bytes(r.read_bytes),
                units::bytes(r.write_bytes)
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::trace::{Record, TraceDisk, TraceWriter, KIND_DROPPED};

    const MIB: u64 = 1 << 20;

    fn layout() -> Partitions {
        Partitions::parse(
            br#"{"size": 5368709120, "partitions": [
                {"index": 2, "name": "SYSTEM", "first_lba": 264192, "last_lba": 2361343, "type_guid": "x"},
                {"index": 1, "name": "ESP", "first_lba": 2048, "last_lba": 264191}
            ]}"#,
        )
        .unwrap()
    }

    fn rec(queue: u16, kind: ReqKind, offset: u64, len: u64) -> Record {
        Record {
            time_ns: 0,
            offset,
            len,
            latency_ns: 10_000,
            queue,
            kind: kind.code(),
            status: 0,
        }
    }

    /// Writes records through the real writer (its header holding the
    /// partition table), then summarizes the file naming partitions from
    /// that header.
    fn summarize_records(recs: &[Record], extra: &[u8]) -> Summary {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.trace");
        let disk = TraceDisk {
            size: 5 << 30,
            label: "node-1".into(),
            partitions: layout().list().to_vec(),
        };
        let w = TraceWriter::create_for(&path, 2, &disk).unwrap();
        for r in recs {
            w.queue(r.queue).record(r);
        }
        assert_eq!(w.close().unwrap().dropped, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(extra);
        let reader = TraceReader::new(&bytes[..], &path).unwrap();
        let partitions = header_partitions(&reader).unwrap();
        summarize(reader, &partitions, 3).unwrap()
    }

    #[test]
    fn summarizes_a_synthetic_trace() {
        let esp = 2048 * 512;
        let system = 264192 * 512;
        let mut recs = Vec::new();
        // Queue 0: 8 sequential 64 KiB reads through the ESP (first is random).
        for i in 0..8 {
            recs.push(rec(0, ReqKind::Read, esp + i * 65536, 65536));
        }
        // Queue 1: 4 KiB writes in SYSTEM, alternating far apart: random.
        for i in 0..4 {
            recs.push(rec(
                1,
                ReqKind::Write,
                system + (i % 2) * 100 * MIB + i * 4096,
                4096,
            ));
        }
        // A read crossing a region boundary, in the GPT area (no partition).
        recs.push(rec(1, ReqKind::Read, MIB - 512, 1024));
        recs.push(rec(0, ReqKind::Flush, 0, 0));
        recs.push(Record {
            status: 1,
            ..rec(0, ReqKind::Discard, system, 8 * MIB)
        });
        // A marker for 5 dropped records and an unknown kind, written raw.
        let mut extra = Record {
            kind: KIND_DROPPED,
            ..rec(0, ReqKind::Read, 0, 5)
        }
        .encode()
        .to_vec();
        extra.extend_from_slice(
            &Record {
                kind: 42,
                ..rec(0, ReqKind::Read, 0, 1)
            }
            .encode(),
        );
        extra.extend_from_slice(&[0; 7]);

        let s = summarize_records(&recs, &extra);
        assert_eq!(s.requests, 15);
        assert_eq!(
            (s.dropped, s.unknown_records, s.truncated_tail_bytes),
            (5, 1, 7)
        );
        assert_eq!((s.num_queues, s.disk_size), (2, 5 << 30));
        let read = &s.kinds["read"];
        assert_eq!((read.requests, read.bytes), (9, 8 * 65536 + 1024));
        assert_eq!(read.sequential_requests, 7);
        assert_eq!(read.latency.p50_ns, 10_000);
        let write = &s.kinds["write"];
        assert_eq!((write.requests, write.sequential_requests), (4, 0));
        assert_eq!(s.kinds["discard"].errors, 1);
        assert!(!s.kinds.contains_key("get_id"));

        // Sizes: 1 KiB read, 4 KiB writes, 64 KiB reads, > 1 MiB discard.
        let at = |max: Option<u64>| {
            &s.sizes
                .iter()
                .find(|b| b.max_bytes == max)
                .unwrap()
                .requests
        };
        assert_eq!(at(Some(1024))["read"], 1);
        assert_eq!(at(Some(4096))["write"], 4);
        assert_eq!(at(Some(65536))["read"], 8);
        assert_eq!(at(None)["discard"], 1);

        // Partitions in table order, outside last.
        let names: Vec<&str> = s.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ESP", "SYSTEM", "-"]);
        assert_eq!(s.partitions[0].read_bytes, 8 * 65536);
        assert_eq!(
            (s.partitions[1].requests, s.partitions[1].write_bytes),
            (5, 4 * 4096)
        );

        // Hot regions: the ESP's first MiB (512 KiB read, plus the half of
        // the crossing read) leads; two regions of SYSTEM tie, lower first.
        assert_eq!(s.hot_regions.len(), 3);
        assert_eq!(s.hot_regions[0].offset, esp);
        assert_eq!(s.hot_regions[0].partition.as_deref(), Some("ESP"));
        assert_eq!(s.hot_regions[0].read_bytes, 8 * 65536 + 512);
        assert_eq!(s.hot_regions[1].offset, system);
        assert_eq!(s.hot_regions[2].offset, system + 100 * MIB);
        assert_eq!(s.hot_regions[1].write_bytes, 2 * 4096);
        assert_eq!(s.hot_regions[1].partition.as_deref(), Some("SYSTEM"));

        let mut text = Vec::new();
        print_summary(&mut text, Path::new("t.trace"), &s).unwrap();
        let text = String::from_utf8(text).unwrap();
        for want in [
            "15 requests",
            "5 requests were dropped",
            "1 ESP",
            "hot 1 MiB regions",
            "77.8%",
            // 128 header bytes (label and partition table), 17 records.
            "incomplete record at byte 672",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
    }

    #[test]
    fn boundary_crossing_reads_are_split_between_regions() {
        let s = summarize_records(&[rec(0, ReqKind::Read, MIB - 512, 1024)], &[]);
        let mut got: Vec<(u64, u64)> = s
            .hot_regions
            .iter()
            .map(|r| (r.offset, r.read_bytes))
            .collect();
        got.sort();
        assert_eq!(got, [(0, 512), (MIB, 512)]);
        // A corrupt huge length neither hangs nor overflows.
        let s = summarize_records(&[rec(0, ReqKind::Write, u64::MAX - 10, u64::MAX)], &[]);
        assert_eq!(s.requests, 1);
    }

    #[test]
    fn empty_trace_summarizes_to_nothing() {
        let s = summarize_records(&[], &[]);
        assert_eq!((s.requests, s.duration_s), (0, 0.0));
        assert!(s.hot_regions.is_empty() && s.partitions.is_empty());
    }
}
