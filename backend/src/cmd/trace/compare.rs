//! `ocidisk trace compare A B`: two runs side by side per request type —
//! IOPS, MB/s, latency percentiles, size mix and sequential share — with
//! B's value relative to A's (before and after a change, or ocidisk against
//! another backend traced the same way).

use super::partitions::Partitions;
use super::summarize::{summarize, KindSummary, Summary};
use super::SIZE_BOUNDS;
use crate::metrics::trace::TraceReader;
use crate::metrics::{units, ReqKind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Arguments of `ocidisk trace compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// The first (baseline) trace.
    a: PathBuf,
    /// The second trace, compared against the first.
    b: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One run of one request type.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct KindRun {
    /// Requests.
    pub requests: u64,
    /// Requests per second over the whole run.
    pub iops: f64,
    /// Bytes per second over the whole run, in MB (10^6 bytes).
    pub mb_per_s: f64,
    /// Mean latency, ns.
    pub mean_ns: f64,
    /// Median latency, ns.
    pub p50_ns: u64,
    /// 90th percentile, ns.
    pub p90_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Share of requests that continued the previous one on their queue
    /// (0 to 1; `null` for types without a disk range).
    pub sequential_share: Option<f64>,
    /// Share of requests per size bucket (by `max_bytes`, `null` for the
    /// last, "larger than 1 MiB"); empty for types without a disk range.
    pub size_mix: Vec<SizeShare>,
}

/// The share of a type's requests in one size bucket.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SizeShare {
    /// Requests of at most this many bytes (`null`: larger than 1 MiB).
    pub max_bytes: Option<u64>,
    /// Share of the type's requests, 0 to 1.
    pub share: f64,
}

/// B relative to A: `b / a` for each figure (`null` where A's is 0).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Ratios {
    /// IOPS of B over A's.
    pub iops: Option<f64>,
    /// MB/s of B over A's.
    pub mb_per_s: Option<f64>,
    /// Mean latency of B over A's.
    pub mean: Option<f64>,
    /// Median latency of B over A's.
    pub p50: Option<f64>,
    /// 90th percentile of B over A's.
    pub p90: Option<f64>,
    /// 99th percentile of B over A's.
    pub p99: Option<f64>,
    /// 99.9th percentile of B over A's.
    pub p999: Option<f64>,
    /// Sequential share of B over A's.
    pub sequential_share: Option<f64>,
}

/// One request type in both runs.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct KindCompare {
    /// The first run (`null` if it has none of this type).
    pub a: Option<KindRun>,
    /// The second run.
    pub b: Option<KindRun>,
    /// B relative to A (`null` unless both have this type).
    pub ratio: Option<Ratios>,
}

/// A run as a whole.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Run {
    /// The trace file.
    pub file: PathBuf,
    /// Requests in it.
    pub requests: u64,
    /// From the first request's start to the last one's completion, s.
    pub duration_s: f64,
    /// Requests the writer dropped.
    pub dropped: u64,
    /// Size of the disk.
    pub disk_size: u64,
}

/// What `trace compare` reports.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The first run.
    pub a: Run,
    /// The second run.
    pub b: Run,
    /// Per request type name, the types either run has.
    pub kinds: BTreeMap<String, KindCompare>,
}

/// Runs `ocidisk trace compare`.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let c = compare_files(&args.a, &args.b)?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &c)?;
        writeln!(out)?;
    } else {
        print_comparison(&mut out, &c)?;
    }
    Ok(())
}

/// Reads and compares two trace files.
pub fn compare_files(a: &Path, b: &Path) -> anyhow::Result<Comparison> {
    let sa = summarize(TraceReader::open(a)?, &Partitions::default(), 0)?;
    let sb = summarize(TraceReader::open(b)?, &Partitions::default(), 0)?;
    Ok(compare(a, &sa, b, &sb))
}

fn ratio(b: f64, a: f64) -> Option<f64> {
    (a > 0.0 && a.is_finite() && b.is_finite()).then(|| b / a)
}

fn kind_run(kind: ReqKind, k: &KindSummary, s: &Summary) -> KindRun {
    let per_s = |x: f64| {
        if s.duration_s > 0.0 {
            x / s.duration_s
        } else {
            0.0
        }
    };
    let ranged = super::ranged(kind);
    let size_mix = if ranged && k.requests > 0 {
        s.sizes
            .iter()
            .filter_map(|b| {
                let n = b.requests.get(kind.name()).copied().unwrap_or(0);
                (n > 0).then(|| SizeShare {
                    max_bytes: b.max_bytes,
                    share: n as f64 / k.requests as f64,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    KindRun {
        requests: k.requests,
        iops: per_s(k.requests as f64),
        mb_per_s: per_s(k.bytes as f64) / 1e6,
        mean_ns: k.latency.mean_ns,
        p50_ns: k.latency.p50_ns,
        p90_ns: k.latency.p90_ns,
        p99_ns: k.latency.p99_ns,
        p999_ns: k.latency.p999_ns,
        sequential_share: (ranged && k.requests > 0)
            .then(|| k.sequential_requests as f64 / k.requests as f64),
        size_mix,
    }
}

/// Compares two summaries.
pub fn compare(a_file: &Path, a: &Summary, b_file: &Path, b: &Summary) -> Comparison {
    let run = |file: &Path, s: &Summary| Run {
        file: file.to_owned(),
        requests: s.requests,
        duration_s: s.duration_s,
        dropped: s.dropped,
        disk_size: s.disk_size,
    };
    let mut kinds = BTreeMap::new();
    for kind in ReqKind::ALL {
        let ka = a.kinds.get(kind.name()).map(|k| kind_run(kind, k, a));
        let kb = b.kinds.get(kind.name()).map(|k| kind_run(kind, k, b));
        if ka.is_none() && kb.is_none() {
            continue;
        }
        let ratio = match (&ka, &kb) {
            (Some(x), Some(y)) => Some(Ratios {
                iops: ratio(y.iops, x.iops),
                mb_per_s: ratio(y.mb_per_s, x.mb_per_s),
                mean: ratio(y.mean_ns, x.mean_ns),
                p50: ratio(y.p50_ns as f64, x.p50_ns as f64),
                p90: ratio(y.p90_ns as f64, x.p90_ns as f64),
                p99: ratio(y.p99_ns as f64, x.p99_ns as f64),
                p999: ratio(y.p999_ns as f64, x.p999_ns as f64),
                sequential_share: x
                    .sequential_share
                    .zip(y.sequential_share)
                    .and_then(|(x, y)| ratio(y, x)),
            }),
            _ => None,
        };
        kinds.insert(
            kind.name().to_string(),
            KindCompare {
                a: ka,
                b: kb,
                ratio,
            },
        );
    }
    Comparison {
        a: run(a_file, a),
        b: run(b_file, b),
        kinds,
    }
}

/// `+12.5%`, `-40.0%`, or `-` without a ratio.
fn change(r: Option<f64>) -> String {
    match r {
        Some(r) => format!("{:+.1}%", (r - 1.0) * 100.0),
        None => "-".into(),
    }
}

fn size_label(max: Option<u64>) -> String {
    match max {
        Some(m) => format!("≤{}", units::bytes(m)),
        None => format!(">{}", units::bytes(SIZE_BOUNDS[SIZE_BOUNDS.len() - 1])),
    }
}

/// The two or three largest size buckets: `4.0 KiB 80%, 64.0 KiB 20%`.
fn mix(m: &[SizeShare]) -> String {
    let mut v: Vec<&SizeShare> = m.iter().collect();
    v.sort_by(|x, y| y.share.total_cmp(&x.share));
    let parts: Vec<String> = v
        .iter()
        .take(3)
        .map(|s| format!("{} {:.0}%", size_label(s.max_bytes), s.share * 100.0))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn print_comparison(out: &mut impl io::Write, c: &Comparison) -> io::Result<()> {
    for (tag, r) in [("A", &c.a), ("B", &c.b)] {
        writeln!(
            out,
            "{tag}: {} — {} requests over {:.3} s, disk {}{}",
            r.file.display(),
            r.requests,
            r.duration_s,
            units::bytes(r.disk_size),
            if r.dropped > 0 {
                format!(" ({} dropped by the writer)", r.dropped)
            } else {
                String::new()
            }
        )?;
    }
    for (name, k) in &c.kinds {
        writeln!(out, "\n{name:<13} {:>14} {:>14} {:>10}", "A", "B", "B vs A")?;
        let ratio = k.ratio.as_ref();
        let num = |x: Option<&KindRun>, f: &dyn Fn(&KindRun) -> String| {
            x.map(f).unwrap_or_else(|| "-".into())
        };
        let (a, b) = (k.a.as_ref(), k.b.as_ref());
        let rows: [(&str, String, String, Option<f64>); 9] = [
            (
                "requests",
                num(a, &|r| r.requests.to_string()),
                num(b, &|r| r.requests.to_string()),
                a.zip(b)
                    .and_then(|(x, y)| self::ratio(y.requests as f64, x.requests as f64)),
            ),
            (
                "IOPS",
                num(a, &|r| format!("{:.1}", r.iops)),
                num(b, &|r| format!("{:.1}", r.iops)),
                ratio.and_then(|r| r.iops),
            ),
            (
                "MB/s",
                num(a, &|r| format!("{:.2}", r.mb_per_s)),
                num(b, &|r| format!("{:.2}", r.mb_per_s)),
                ratio.and_then(|r| r.mb_per_s),
            ),
            (
                "mean",
                num(a, &|r| units::duration_ns(r.mean_ns as u64)),
                num(b, &|r| units::duration_ns(r.mean_ns as u64)),
                ratio.and_then(|r| r.mean),
            ),
            (
                "p50",
                num(a, &|r| units::duration_ns(r.p50_ns)),
                num(b, &|r| units::duration_ns(r.p50_ns)),
                ratio.and_then(|r| r.p50),
            ),
            (
                "p90",
                num(a, &|r| units::duration_ns(r.p90_ns)),
                num(b, &|r| units::duration_ns(r.p90_ns)),
                ratio.and_then(|r| r.p90),
            ),
            (
                "p99",
                num(a, &|r| units::duration_ns(r.p99_ns)),
                num(b, &|r| units::duration_ns(r.p99_ns)),
                ratio.and_then(|r| r.p99),
            ),
            (
                "p99.9",
                num(a, &|r| units::duration_ns(r.p999_ns)),
                num(b, &|r| units::duration_ns(r.p999_ns)),
                ratio.and_then(|r| r.p999),
            ),
            (
                "sequential",
                num(a, &|r| {
                    r.sequential_share
                        .map_or("-".into(), |s| format!("{:.1}%", s * 100.0))
                }),
                num(b, &|r| {
                    r.sequential_share
                        .map_or("-".into(), |s| format!("{:.1}%", s * 100.0))
                }),
                ratio.and_then(|r| r.sequential_share),
            ),
        ];
        for (label, x, y, r) in rows {
            writeln!(out, "  {label:<11} {x:>14} {y:>14} {:>10}", change(r))?;
        }
        if a.is_some_and(|r| !r.size_mix.is_empty()) || b.is_some_and(|r| !r.size_mix.is_empty()) {
            writeln!(out, "  sizes A: {}", num(a, &|r| mix(&r.size_mix)))?;
            writeln!(out, "  sizes B: {}", num(b, &|r| mix(&r.size_mix)))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::trace::{Record, TraceWriter};

    /// A trace of `n` reads of `len` bytes, one every `gap_ns`, each taking
    /// `lat_ns`, sequential when `seq`.
    fn trace(
        dir: &Path,
        name: &str,
        n: u64,
        len: u64,
        gap_ns: u64,
        lat_ns: u64,
        seq: bool,
    ) -> PathBuf {
        let path = dir.join(name);
        let w = TraceWriter::create(&path, 1, 1 << 30).unwrap();
        for i in 0..n {
            w.queue(0).record(&Record {
                time_ns: i * gap_ns,
                offset: if seq {
                    i * len
                } else {
                    (i * 7919 % 1000) * 65536
                },
                len,
                latency_ns: lat_ns,
                queue: 0,
                kind: ReqKind::Read.code(),
                status: 0,
            });
        }
        w.close().unwrap();
        path
    }

    #[test]
    fn ratios_of_two_known_runs() {
        let dir = tempfile::tempdir().unwrap();
        // A: 1000 sequential 4 KiB reads, one per 1 ms, 100 µs each.
        // B: 1000 random 16 KiB reads, one per 0.5 ms, 50 µs each.
        let a = trace(dir.path(), "a", 1000, 4096, 1_000_000, 100_000, true);
        let b = trace(dir.path(), "b", 1000, 16384, 500_000, 50_000, false);
        let c = compare_files(&a, &b).unwrap();
        let r = c.kinds["read"].ratio.as_ref().unwrap();
        // Durations: 999 gaps + one latency.
        let (da, db) = (0.999 + 0.0001, 0.4995 + 0.00005);
        assert!((r.iops.unwrap() - da / db).abs() < 1e-9, "{r:?}");
        assert!((r.mb_per_s.unwrap() - 4.0 * da / db).abs() < 1e-9);
        // The histogram keeps three significant digits.
        assert!((r.p50.unwrap() - 0.5).abs() < 0.01, "{r:?}");
        assert!((r.p99.unwrap() - 0.5).abs() < 0.01);
        let ka = c.kinds["read"].a.as_ref().unwrap();
        assert_eq!(ka.sequential_share, Some(0.999));
        assert_eq!(
            ka.size_mix,
            [SizeShare {
                max_bytes: Some(4096),
                share: 1.0
            }]
        );
        let kb = c.kinds["read"].b.as_ref().unwrap();
        assert!(kb.sequential_share.unwrap() < 0.01);
        assert_eq!(kb.size_mix[0].max_bytes, Some(16384));
        let mut text = Vec::new();
        print_comparison(&mut text, &c).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("-50.0%"), "{text}");
        assert!(text.contains("≤16.0 KiB 100%"), "{text}");
    }

    #[test]
    fn a_type_only_one_run_has_gets_no_ratio() {
        let dir = tempfile::tempdir().unwrap();
        let a = trace(dir.path(), "a", 10, 4096, 1000, 1000, true);
        let path = dir.path().join("w");
        let w = TraceWriter::create(&path, 1, 0).unwrap();
        w.queue(0).record(&Record {
            time_ns: 0,
            offset: 0,
            len: 512,
            latency_ns: 10,
            queue: 0,
            kind: ReqKind::Write.code(),
            status: 0,
        });
        w.close().unwrap();
        let c = compare_files(&a, &path).unwrap();
        assert!(c.kinds["read"].b.is_none() && c.kinds["read"].ratio.is_none());
        assert!(c.kinds["write"].a.is_none());
    }
}
