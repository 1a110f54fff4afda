//! `ocidisk stats ADDR`: a live, iostat-like view of a served disk's guest
//! I/O, read from the `/metrics.json` endpoint of `ocidisk serve --metrics`.
//!
//! Every interval it takes a snapshot and prints what happened since the
//! previous one: per request type IOPS, MB/s, latency percentiles of the
//! requests completed in the interval, errors, and the requests in flight.

use crate::metrics::http;
use crate::metrics::units;
use crate::metrics::{HistogramFormat, KindSnapshot, ReqKind, Snapshot, SNAPSHOT_FORMAT};
use anyhow::{bail, ensure, Context as _};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::time::Duration;

/// Arguments of `ocidisk stats`.
#[derive(clap::Args)]
pub struct Args {
    /// The metrics address of `ocidisk serve --metrics`: IP:PORT, or a unix
    /// socket path (`unix:PATH` or any path with a `/`).
    addr: String,
    /// Print one sample (the activity over one interval) and exit.
    #[arg(long)]
    once: bool,
    /// Print JSON, one object per line per sample.
    #[arg(long)]
    json: bool,
    /// Seconds between samples (0.01 to 3600).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    interval: f64,
    /// Stop after this many samples (default: until interrupted).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// One request type over one interval.
#[derive(Serialize, Debug, PartialEq)]
pub struct KindRate {
    /// Requests completed in the interval.
    pub requests: u64,
    /// Requests per second.
    pub iops: f64,
    /// Bytes of successful requests.
    pub bytes: u64,
    /// Bytes per second / 1e6.
    pub mb_per_s: f64,
    /// Failed requests.
    pub errors: u64,
    /// Latency of the interval's requests.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Upper bound of the largest (within 0.78 %).
    pub max_ns: u64,
}

/// One sample: the activity between two snapshots.
#[derive(Serialize, Debug, PartialEq)]
pub struct Sample {
    /// The disk's serial.
    pub serial: String,
    /// Its vhost-user socket.
    pub socket: String,
    /// Server uptime at the end of the interval, seconds.
    pub uptime_s: f64,
    /// Length of the interval by the server's clock, seconds.
    pub interval_s: f64,
    /// Requests in flight at the end of the interval, over all queues.
    pub in_flight: u64,
    /// Bytes read from the base image in the interval.
    pub base_read_bytes: u64,
    /// Bytes read from the overlay in the interval.
    pub overlay_read_bytes: u64,
    /// Bytes the overlay has allocated.
    pub overlay_allocated_bytes: u64,
    /// Every request type by name.
    pub kinds: BTreeMap<String, KindRate>,
}

/// The activity between `a` and `b`, two snapshots of the same metrics.
pub fn sample(a: &Snapshot, b: &Snapshot) -> Sample {
    let secs = (b.uptime_ns.saturating_sub(a.uptime_ns) as f64 / 1e9).max(1e-9);
    let (ta, tb) = (a.totals(), b.totals());
    let kinds = tb
        .iter()
        .map(|kb| {
            let d = match ta.iter().find(|k| k.kind == kb.kind) {
                Some(ka) => kb.since(ka),
                None => kb.clone(),
            };
            (kb.kind.name().to_string(), rate(&d, secs))
        })
        .collect();
    Sample {
        serial: b.serial.clone(),
        socket: b.socket.clone(),
        uptime_s: b.uptime_ns as f64 / 1e9,
        interval_s: secs,
        in_flight: b.in_flight(),
        base_read_bytes: b.base_read_bytes().saturating_sub(a.base_read_bytes()),
        overlay_read_bytes: b
            .overlay_read_bytes()
            .saturating_sub(a.overlay_read_bytes()),
        overlay_allocated_bytes: b.overlay_allocated_bytes,
        kinds,
    }
}

fn rate(d: &KindSnapshot, secs: f64) -> KindRate {
    KindRate {
        requests: d.requests,
        iops: d.requests as f64 / secs,
        bytes: d.bytes,
        mb_per_s: d.bytes as f64 / secs / 1e6,
        errors: d.errors,
        p50_ns: d.latency.quantile(0.5),
        p99_ns: d.latency.quantile(0.99),
        max_ns: d.latency.max_ns,
    }
}

/// Reads one snapshot from the server.
fn fetch(addr: &str) -> anyhow::Result<Snapshot> {
    let r = http::get(addr, "/metrics.json", Duration::from_secs(5))
        .with_context(|| format!("reading metrics from {addr}"))?;
    ensure!(
        r.status == 200,
        "{addr}/metrics.json answered HTTP {}",
        r.status
    );
    let s: Snapshot = serde_json::from_slice(&r.body)
        .with_context(|| format!("{addr}/metrics.json is not an ocidisk metrics snapshot"))?;
    ensure!(
        s.format == SNAPSHOT_FORMAT,
        "{addr} serves snapshot format {}, this ocidisk reads {SNAPSHOT_FORMAT}",
        s.format
    );
    ensure!(
        s.histogram == HistogramFormat::current(),
        "{addr} buckets its histograms differently ({:?}) from this ocidisk",
        s.histogram
    );
    Ok(s)
}

/// Runs `ocidisk stats`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if !(args.interval.is_finite() && (0.01..=3600.0).contains(&args.interval)) {
        bail!(
            "--interval {} is out of range (0.01 to 3600 seconds)",
            args.interval
        );
    }
    let interval = Duration::from_secs_f64(args.interval);
    let count = if args.once {
        1
    } else {
        args.count.unwrap_or(u64::MAX)
    };
    match watch(&args, interval, count) {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn watch(args: &Args, interval: Duration, count: u64) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    let mut prev = fetch(&args.addr)?;
    let mut printed = 0;
    while printed < count {
        std::thread::sleep(interval);
        let next = fetch(&args.addr)?;
        if !next.same_origin(&prev) {
            eprintln!("ocidisk stats: {} restarted; starting over", args.addr);
            prev = next;
            continue;
        }
        let s = sample(&prev, &next);
        if args.json {
            serde_json::to_writer(&mut out, &s)?;
            writeln!(out)?;
        } else {
            print_table(&mut out, &s, printed == 0)?;
        }
        out.flush()?;
        prev = next;
        printed += 1;
    }
    Ok(())
}

fn print_table(out: &mut impl io::Write, s: &Sample, first: bool) -> io::Result<()> {
    if first {
        writeln!(out, "disk {:?} on {}", s.serial, s.socket)?;
    }
    writeln!(
        out,
        "\nup {:.1}s  in flight {}  read from base {}  from overlay {}  overlay allocated {}",
        s.uptime_s,
        s.in_flight,
        units::bytes(s.base_read_bytes),
        units::bytes(s.overlay_read_bytes),
        units::bytes(s.overlay_allocated_bytes)
    )?;
    writeln!(
        out,
        "{:<13} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "type", "IOPS", "MB/s", "p50", "p99", "max", "errors"
    )?;
    for kind in ReqKind::ALL {
        let Some(k) = s.kinds.get(kind.name()) else {
            continue;
        };
        // The common types always show; the rare ones only when they happen.
        let always = matches!(kind, ReqKind::Read | ReqKind::Write | ReqKind::Flush);
        if !always && k.requests == 0 {
            continue;
        }
        let lat = |ns: u64| {
            if k.requests == 0 {
                "-".to_string()
            } else {
                units::duration_ns(ns)
            }
        };
        writeln!(
            out,
            "{:<13} {:>10.1} {:>9.2} {:>9} {:>9} {:>9} {:>7}",
            kind.name(),
            k.iops,
            k.mb_per_s,
            lat(k.p50_ns),
            lat(k.p99_ns),
            lat(k.max_ns),
            k.errors
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{DiskMetrics, Done, Labels, Status};

    #[test]
    fn a_sample_is_the_difference_of_two_snapshots() {
        let m = DiskMetrics::new(2, Labels::default());
        let record = |q: usize, kind, len, status| {
            let s = m.queue(q).start();
            m.queue(q).finish(
                s,
                Done {
                    kind,
                    offset: 0,
                    len,
                    status,
                },
            );
        };
        record(0, ReqKind::Read, 4096, Status::Ok);
        let a = m.snapshot();
        for q in 0..2 {
            record(q, ReqKind::Read, 8192, Status::Ok);
            record(q, ReqKind::Write, 512, Status::IoErr);
        }
        let _held = m.queue(1).start();
        m.queue(0).add_base_read(100);
        let mut b = m.snapshot();
        b.uptime_ns = a.uptime_ns + 2_000_000_000; // a 2 s interval
        let s = sample(&a, &b);
        assert_eq!(s.interval_s, 2.0);
        let read = &s.kinds["read"];
        assert_eq!((read.requests, read.bytes, read.errors), (2, 16384, 0));
        assert_eq!(read.iops, 1.0);
        assert!((read.mb_per_s - 16384.0 / 2.0 / 1e6).abs() < 1e-12);
        assert!(read.p50_ns > 0 && read.p50_ns <= read.max_ns);
        let write = &s.kinds["write"];
        assert_eq!((write.requests, write.bytes, write.errors), (2, 0, 2));
        assert_eq!(s.kinds["flush"].requests, 0);
        assert_eq!(s.in_flight, 1);
        assert_eq!(s.base_read_bytes, 100);
        assert_eq!(s.kinds.len(), ReqKind::ALL.len());

        let mut text = Vec::new();
        print_table(&mut text, &s, true).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("read") && text.contains("write") && !text.contains("get_id"),
            "{text}"
        );
    }
}
