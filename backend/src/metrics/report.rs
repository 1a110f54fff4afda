//! The totals a run leaves behind (`--stats-json FILE`): counters and
//! latency percentiles per request type, overall and per queue, in a shape
//! test harnesses can compare between runs without knowing the histogram.

use super::{HistogramSnapshot, KindSnapshot, Snapshot, TraceTotals};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::Path;

/// Version of the [`StatsReport`] JSON.
pub const REPORT_FORMAT: u32 = 1;

/// Latency percentiles in ns (each is the top of its histogram bucket, at
/// most 0.78 % above the exact value; `max` is exact).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Mean.
    pub mean_ns: f64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest.
    pub max_ns: u64,
}

impl Latency {
    /// The percentiles of a histogram.
    pub fn of(h: &HistogramSnapshot) -> Self {
        Latency {
            mean_ns: h.mean(),
            p50_ns: h.quantile(0.5),
            p90_ns: h.quantile(0.9),
            p99_ns: h.quantile(0.99),
            p999_ns: h.quantile(0.999),
            max_ns: h.max_ns,
        }
    }
}

/// One request type's totals.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KindTotals {
    /// Requests completed.
    pub requests: u64,
    /// Bytes of the requests that succeeded.
    pub bytes: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Latency percentiles.
    pub latency: Latency,
}

impl KindTotals {
    fn of(k: &KindSnapshot) -> Self {
        KindTotals {
            requests: k.requests,
            bytes: k.bytes,
            errors: k.errors,
            latency: Latency::of(&k.latency),
        }
    }
}

/// One queue's totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueTotals {
    /// The virtqueue index.
    pub queue: u32,
    /// The highest in-flight depth seen.
    pub max_in_flight: u64,
    /// Bytes read from the base image.
    pub base_read_bytes: u64,
    /// Bytes read from the overlay.
    pub overlay_read_bytes: u64,
    /// Totals per request type name (`read`, `write`, ...).
    pub kinds: BTreeMap<String, KindTotals>,
}

/// What `--stats-json` writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// [`REPORT_FORMAT`].
    pub format: u32,
    /// The disk's serial.
    pub serial: String,
    /// The vhost-user socket.
    pub socket: String,
    /// Seconds the metrics were collected for.
    pub uptime_s: f64,
    /// Totals over all queues per request type name.
    pub totals: BTreeMap<String, KindTotals>,
    /// Bytes read from the base image.
    pub base_read_bytes: u64,
    /// Bytes read from the overlay.
    pub overlay_read_bytes: u64,
    /// Bytes the overlay has allocated.
    pub overlay_allocated_bytes: u64,
    /// Request trace counters, when tracing.
    pub trace: Option<TraceTotals>,
    /// Per-queue totals.
    pub queues: Vec<QueueTotals>,
}

impl StatsReport {
    /// The report of a snapshot.
    pub fn of(s: &Snapshot) -> Self {
        let by_name = |kinds: &[KindSnapshot]| {
            kinds
                .iter()
                .map(|k| (k.kind.name().to_string(), KindTotals::of(k)))
                .collect()
        };
        StatsReport {
            format: REPORT_FORMAT,
            serial: s.serial.clone(),
            socket: s.socket.clone(),
            uptime_s: s.uptime_ns as f64 / 1e9,
            totals: by_name(&s.totals()),
            base_read_bytes: s.base_read_bytes(),
            overlay_read_bytes: s.overlay_read_bytes(),
            overlay_allocated_bytes: s.overlay_allocated_bytes,
            trace: s.trace.clone(),
            queues: s
                .queues
                .iter()
                .map(|q| QueueTotals {
                    queue: q.queue,
                    max_in_flight: q.max_in_flight,
                    base_read_bytes: q.base_read_bytes,
                    overlay_read_bytes: q.overlay_read_bytes,
                    kinds: by_name(&q.kinds),
                })
                .collect(),
        }
    }
}

/// Writes the [`StatsReport`] of `snapshot` to `path` atomically: to a
/// temporary file beside it, synced, then renamed over `path`, so a reader
/// sees the old file or the whole new one, never a part.
pub fn write_stats_json(path: &Path, snapshot: &Snapshot) -> io::Result<()> {
    let report = StatsReport::of(snapshot);
    let mut text = serde_json::to_vec_pretty(&report).map_err(io::Error::other)?;
    text.push(b'\n');
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("stats file {} has no file name", path.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing stats to {}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::{DiskMetrics, Done, Labels, ReqKind, Status};
    use super::*;

    #[test]
    fn writes_totals_atomically_and_replaces_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.json");
        fs::write(&path, "old").unwrap();
        let m = DiskMetrics::new(
            2,
            Labels {
                serial: "node1".into(),
                socket: "/s".into(),
            },
        );
        for q in 0..2 {
            let s = m.queue(q).start();
            m.queue(q).finish(
                s,
                Done {
                    kind: ReqKind::Read,
                    offset: 0,
                    len: 4096,
                    status: Status::Ok,
                },
            );
        }
        write_stats_json(&path, &m.snapshot()).unwrap();
        let back: StatsReport = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back.serial, "node1");
        assert_eq!(back.totals["read"].requests, 2);
        assert_eq!(back.totals["read"].bytes, 8192);
        assert_eq!(back.queues.len(), 2);
        assert_eq!(back.queues[1].kinds["read"].requests, 1);
        assert!(back.totals["read"].latency.p50_ns > 0);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn unwritable_path_is_an_error_naming_it() {
        let m = DiskMetrics::new(1, Labels::default());
        let err =
            write_stats_json(Path::new("/nonexistent-dir/stats.json"), &m.snapshot()).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir/stats.json"),
            "{err}"
        );
        let err = write_stats_json(Path::new("/"), &m.snapshot()).unwrap_err();
        assert!(err.to_string().contains("no file name"), "{err}");
    }
}
