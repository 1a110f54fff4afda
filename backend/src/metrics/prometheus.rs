//! The Prometheus text exposition format (version 0.0.4) of a [`Snapshot`].
//!
//! Every family has `# HELP` and `# TYPE` lines; counters end in `_total`;
//! latency is a histogram in seconds with cumulative `le` buckets (a fixed
//! 1-2.5-5 ladder from 1 µs to 60 s, then `+Inf`), `_sum` and `_count`.
//! Every series carries the disk's `serial` and `socket`; per-queue series
//! add `queue`, per-request-type series add `type`.

use super::{HistogramSnapshot, KindSnapshot, QueueSnapshot, RegistrySnapshot, Snapshot};
use std::fmt::Write as _;

/// The content type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram bucket bounds in ns. Bounds fall inside internal buckets only
/// approximately, so a value within 0.78 % below a bound may be counted in
/// the next bucket up (never in a lower one).
const LE_NS: [u64; 25] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    20_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds from ns, formatted so that Prometheus parses it back exactly
/// enough (Rust's shortest round-trip float formatting).
fn seconds(ns: u64) -> String {
    format!("{:?}", ns as f64 / 1e9)
}

/// A counter family over request kinds: name, help, which counter.
type KindFamily = (&'static str, &'static str, fn(&KindSnapshot) -> u64);
/// A family over queues: name, type, help, which value.
type QueueFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&QueueSnapshot) -> u64,
);

struct Writer {
    out: String,
    disk: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample; `extra` is either empty or a label list ending in a comma.
    fn sample(&mut self, name: &str, extra: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{name}{{{extra}{}}} {value}", self.disk);
    }

    fn histogram(&mut self, name: &str, extra: &str, h: &HistogramSnapshot) {
        // The buckets are the truth; `count` is read separately and may be a
        // request ahead, and Prometheus wants +Inf == _count.
        let count: u64 = h.buckets.iter().map(|&(_, n)| n).sum();
        for le in LE_NS {
            let labels = format!("{extra}le=\"{}\",", seconds(le));
            self.sample(&format!("{name}_bucket"), &labels, h.count_at_most(le));
        }
        self.sample(
            &format!("{name}_bucket"),
            &format!("{extra}le=\"+Inf\","),
            count,
        );
        self.sample(&format!("{name}_sum"), extra, seconds(h.sum_ns));
        self.sample(&format!("{name}_count"), extra, count);
    }
}

/// Renders a snapshot in the text exposition format.
pub fn render(s: &Snapshot) -> String {
    let mut w = Writer {
        out: String::with_capacity(64 * 1024),
        disk: format!(
            "serial=\"{}\",socket=\"{}\"",
            escape(&s.serial),
            escape(&s.socket)
        ),
    };
    let queue = |q: u32| format!("queue=\"{q}\",");
    let per_kind = |q: u32, kind: &str| format!("queue=\"{q}\",type=\"{kind}\",");

    let counters: [KindFamily; 3] = [
        ("ocidisk_requests_total", "Requests completed.", |k| {
            k.requests
        }),
        (
            "ocidisk_request_bytes_total",
            "Bytes of requests completed successfully.",
            |k| k.bytes,
        ),
        (
            "ocidisk_request_errors_total",
            "Requests completed with an error or unsupported status.",
            |k| k.errors,
        ),
    ];
    for (name, help, get) in counters {
        w.family(name, "counter", help);
        for q in &s.queues {
            for k in &q.kinds {
                w.sample(name, &per_kind(q.queue, k.kind.name()), get(k));
            }
        }
    }

    let name = "ocidisk_request_duration_seconds";
    w.family(
        name,
        "histogram",
        "Time from taking a request off its queue to completing it.",
    );
    for q in &s.queues {
        for k in &q.kinds {
            w.histogram(name, &per_kind(q.queue, k.kind.name()), &k.latency);
        }
    }

    let queue_series: [QueueFamily; 4] = [
        (
            "ocidisk_in_flight_requests",
            "gauge",
            "Requests being processed.",
            |q| q.in_flight,
        ),
        (
            "ocidisk_in_flight_requests_max",
            "gauge",
            "Most requests seen in flight at once.",
            |q| q.max_in_flight,
        ),
        (
            "ocidisk_base_read_bytes_total",
            "counter",
            "Bytes read from the base image.",
            |q| q.base_read_bytes,
        ),
        (
            "ocidisk_overlay_read_bytes_total",
            "counter",
            "Bytes read from the copy-on-write overlay.",
            |q| q.overlay_read_bytes,
        ),
    ];
    for (name, kind, help, get) in queue_series {
        w.family(name, kind, help);
        for q in &s.queues {
            w.sample(name, &queue(q.queue), get(q));
        }
    }

    let name = "ocidisk_overlay_allocated_bytes";
    w.family(
        name,
        "gauge",
        "Bytes of data allocated in the overlay file.",
    );
    w.sample(name, "", s.overlay_allocated_bytes);

    let name = "ocidisk_uptime_seconds";
    w.family(name, "gauge", "Seconds since the metrics were created.");
    w.sample(name, "", seconds(s.uptime_ns));

    if let Some(t) = &s.trace {
        let name = "ocidisk_trace_records_total";
        w.family(name, "counter", "Requests written to the trace.");
        w.sample(name, "", t.records);
        let name = "ocidisk_trace_dropped_records_total";
        w.family(
            name,
            "counter",
            "Requests left out of the trace because its writer fell behind.",
        );
        w.sample(name, "", t.dropped);
    }
    if let Some(r) = &s.registry {
        registry_families(&mut w, r);
    }
    w.out
}

/// The families of a disk served from a registry: what its chunk cache
/// fetched (the mean fetch latency is `rate(…_seconds_total) /
/// rate(…_fetches_total)`), how often reads found chunks ready, and what
/// the registry client did.
fn registry_families(w: &mut Writer, r: &RegistrySnapshot) {
    let counters: [(&str, &str, u64); 11] = [
        (
            "ocidisk_registry_chunk_fetches_total",
            "Chunks fetched from the registry into the host cache and verified.",
            r.chunk_fetches,
        ),
        (
            "ocidisk_registry_chunk_fetch_bytes_total",
            "Bytes of chunks fetched from the registry into the host cache.",
            r.chunk_bytes,
        ),
        (
            "ocidisk_registry_chunk_fetch_retries_total",
            "Chunk fetches that failed and were tried again.",
            r.chunk_retries,
        ),
        (
            "ocidisk_registry_chunk_fetch_failures_total",
            "Chunks that could not be fetched within the attempt budget (their reads failed).",
            r.chunk_failures,
        ),
        (
            "ocidisk_registry_cache_hits_total",
            "Chunks found ready in the host cache (each counted once per process).",
            r.cache_hits,
        ),
        (
            "ocidisk_registry_cache_misses_total",
            "Chunks a read found missing from the host cache.",
            r.cache_misses,
        ),
        (
            "ocidisk_registry_requests_total",
            "Registry requests that succeeded (manifests, configs, blob ranges).",
            r.requests,
        ),
        (
            "ocidisk_registry_received_bytes_total",
            "Body bytes received from the registry, failed attempts included.",
            r.received_bytes,
        ),
        (
            "ocidisk_registry_request_retries_total",
            "Registry requests repeated after a transient failure.",
            r.request_retries,
        ),
        (
            "ocidisk_registry_request_failures_total",
            "Registry requests that failed for good.",
            r.request_failures,
        ),
        (
            "ocidisk_registry_token_fetches_total",
            "Tokens fetched from the registry's token endpoint.",
            r.token_fetches,
        ),
    ];
    for (name, help, value) in counters {
        w.family(name, "counter", help);
        w.sample(name, "", value);
    }
    let name = "ocidisk_registry_chunk_fetch_seconds_total";
    w.family(
        name,
        "counter",
        "Time spent in successful chunk fetches (divide by the fetches for the mean).",
    );
    w.sample(name, "", seconds(r.chunk_fetch_micros.saturating_mul(1000)));
}

#[cfg(test)]
mod tests {
    use super::super::{DiskMetrics, Done, Labels, ReqKind, Status};
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// A sample line split into name, labels and value, strictly.
    fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
        let open = line.find('{').expect("labels");
        let name = &line[..open];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[open + 1..];
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').expect("label =");
            let lname = &rest[..eq];
            assert!(
                lname.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line:?}"
            );
            rest = rest[eq + 1..].strip_prefix('"').expect("quoted value");
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next().expect("unterminated label value");
                match c {
                    '\\' => match chars.next().expect("escape").1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => panic!("bad escape \\{c} in {line:?}"),
                    },
                    '"' => break i,
                    '\n' => panic!("raw newline in {line:?}"),
                    c => value.push(c),
                }
            };
            assert!(
                labels.insert(lname.to_string(), value).is_none(),
                "dup label {line:?}"
            );
            rest = &rest[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        let value = rest.strip_prefix(' ').expect("space before value");
        let v = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        (name.to_string(), labels, v)
    }

    fn sample_metrics() -> Snapshot {
        let m = DiskMetrics::new(
            2,
            Labels {
                serial: "we\"ird\\serial\nx".into(),
                socket: "/run/vm 1/disk.sock".into(),
            },
        );
        for (q, kind, n) in [
            (0, ReqKind::Read, 50),
            (1, ReqKind::Write, 7),
            (1, ReqKind::Flush, 3),
        ] {
            for i in 0..n {
                let s = m.queue(q).start();
                let status = if i == 0 && kind == ReqKind::Write {
                    Status::IoErr
                } else {
                    Status::Ok
                };
                m.queue(q).finish(
                    s,
                    Done {
                        kind,
                        offset: i * 4096,
                        len: 4096,
                        status,
                    },
                );
            }
        }
        m.queue(0).add_base_read(1000);
        let mut snap = m.snapshot();
        snap.registry = Some(RegistrySnapshot {
            chunk_fetches: 3,
            chunk_fetch_micros: 1500,
            cache_hits: 2,
            ..RegistrySnapshot::default()
        });
        snap
    }

    #[test]
    fn output_parses_back_line_by_line() {
        let snap = sample_metrics();
        let text = render(&snap);
        assert!(text.ends_with('\n'));
        let mut helped = BTreeSet::new();
        let mut typed = BTreeMap::new();
        // (series without le) -> list of (le, count)
        let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<String, f64> = BTreeMap::new();
        let mut samples = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("help text");
                assert!(!help.is_empty());
                assert!(helped.insert(name.to_string()), "HELP twice for {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("type");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(helped.contains(name), "TYPE before HELP for {name}");
                assert!(typed.insert(name.to_string(), kind.to_string()).is_none());
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let (name, labels, value) = parse_sample(line);
            samples += 1;
            assert_eq!(labels["serial"], "we\"ird\\serial\nx");
            assert_eq!(labels["socket"], "/run/vm 1/disk.sock");
            // Every sample belongs to a family declared before it.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(&name);
            let kind = typed
                .get(family)
                .unwrap_or_else(|| panic!("undeclared {name}"));
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} without _total");
            }
            assert!(value >= 0.0, "{line}");
            let mut key_labels = labels.clone();
            let le = key_labels.remove("le");
            let key = format!("{family}{key_labels:?}");
            if name.ends_with("_bucket") {
                let le = match le.as_deref() {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => v.parse().expect("le number"),
                    None => panic!("bucket without le: {line}"),
                };
                buckets.entry(key).or_default().push((le, value));
            } else if name.ends_with("_count") {
                counts.insert(key, value);
            }
        }
        assert!(samples > 100);
        assert!(!buckets.is_empty());
        for (key, b) in &buckets {
            assert!(
                b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{key} not cumulative"
            );
            let last = b.last().unwrap();
            assert_eq!(last.0, f64::INFINITY, "{key} must end with +Inf");
            assert_eq!(Some(&last.1), counts.get(key), "{key}: +Inf != _count");
        }
        // Spot values.
        assert!(text.contains("ocidisk_requests_total{queue=\"0\",type=\"read\","));
        let line = text
            .lines()
            .find(|l| l.starts_with("ocidisk_request_errors_total{queue=\"1\",type=\"write\""))
            .unwrap();
        assert!(line.ends_with(" 1"), "{line}");
        let reads = text
            .lines()
            .find(|l| {
                l.starts_with("ocidisk_request_duration_seconds_count{queue=\"0\",type=\"read\"")
            })
            .unwrap();
        assert!(reads.ends_with(" 50"), "{reads}");
        let line = text
            .lines()
            .find(|l| l.starts_with("ocidisk_registry_chunk_fetch_seconds_total{"))
            .unwrap();
        assert!(line.ends_with(" 0.0015"), "{line}");
        let line = text
            .lines()
            .find(|l| l.starts_with("ocidisk_registry_cache_hits_total{"))
            .unwrap();
        assert!(line.ends_with(" 2"), "{line}");
    }
}
