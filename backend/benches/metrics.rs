//! Cost of counting a request: `QueueMetrics::start` + `finish` per call, on
//! one thread and on two (each with its own queue, as the device runs them),
//! chained (`start_at` with the previous `finish`'s clock reading: one clock
//! read per request), with and without the request trace, against the same
//! loop with metrics off, and put next to the smallest real request a guest
//! makes (a 4 KiB read from the page cache) as the peer.
//!
//! Run: `cargo bench -p ocidisk --bench metrics`. Prints the median and the
//! minimum of 21 interleaved runs per case.

// Measurement code, not product code: a setup that fails ends the run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a failed setup ends the run"
)]

use ocidisk::metrics::{DiskMetrics, Done, Labels, QueueMetrics, ReqKind, Status, TraceWriter};
use std::hint::black_box;
use std::os::unix::fs::FileExt as _;
use std::sync::Barrier;
use std::time::Instant;

const CALLS: u64 = 200_000;
const RUNS: usize = 21;

fn done(i: u64) -> Done {
    Done {
        kind: ReqKind::Read,
        offset: (i & 0xffff) * 4096,
        len: 4096,
        status: Status::Ok,
    }
}

/// One request's bookkeeping as the device does it: `None` is metrics off.
#[inline(never)]
fn request(q: Option<&QueueMetrics>, i: u64) {
    let started = q.map(QueueMetrics::start);
    black_box(i);
    if let (Some(q), Some(s)) = (q, started) {
        q.finish(s, done(i));
    }
}

/// ns per call of `f` over CALLS calls on each of `threads` threads.
fn per_call(threads: usize, f: impl Fn(usize, u64) + Sync) -> f64 {
    let barrier = Barrier::new(threads);
    let times: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..CALLS {
                        f(t, i);
                    }
                    start.elapsed().as_nanos() as f64 / CALLS as f64
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(f64::NAN))
            .collect()
    });
    times.iter().sum::<f64>() / times.len() as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("ocidisk-metrics-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let data = dir.join("data");
    std::fs::write(&data, vec![7u8; 16 << 20]).expect("data file");
    let file = std::fs::File::open(&data).expect("data file");

    let plain = DiskMetrics::new(2, Labels::default());
    let traced = DiskMetrics::with_trace(
        2,
        Labels::default(),
        TraceWriter::create(&dir.join("t.trace"), 2, 0).expect("trace"),
    );

    let src = vec![1u8; 4096];
    let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut add = |name, v| rows.push((name, v));
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); 9];
    for _ in 0..RUNS {
        runs[0].push(per_call(1, |_, i| request(None, i)));
        runs[1].push(per_call(1, |_, i| request(Some(plain.queue(0)), i)));
        runs[2].push(per_call(2, |t, i| request(Some(plain.queue(t)), i)));
        runs[3].push(per_call(1, |_, i| {
            // The device's loop: each request starts at the previous finish.
            thread_local!(static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) });
            let q = plain.queue(0);
            let at = LAST.get().unwrap_or_else(Instant::now);
            let s = q.start_at(at);
            black_box(i);
            LAST.set(Some(q.finish(s, done(i))));
        }));
        runs[4].push(per_call(1, |_, i| request(Some(traced.queue(0)), i)));
        runs[5].push(per_call(2, |t, i| request(Some(traced.queue(t)), i)));
        runs[6].push(per_call(1, |_, _| {
            let mut dst = [0u8; 4096];
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        }));
        runs[8].push(per_call(1, |_, _| {
            let t = Instant::now();
            black_box(t.elapsed());
        }));
        runs[7].push(per_call(1, |_, i| {
            let mut dst = [0u8; 4096];
            let _ = file.read_at(&mut dst, (i & 0xfff) * 4096);
            black_box(&dst);
        }));
    }
    let names = [
        "metrics off (None)",
        "on, 1 thread",
        "on, 2 threads, own queues",
        "on, 1 thread, chained start_at",
        "on + trace, 1 thread",
        "on + trace, 2 threads, own queues",
        "peer: 4 KiB memcpy",
        "peer: 4 KiB pread, page cache",
        "part: clock read twice",
    ];
    for (name, v) in names.iter().zip(runs) {
        add(*name, v);
    }
    let med: Vec<f64> = rows.iter().map(|(_, v)| median(v.clone())).collect();
    let off = med[0];
    let pread = med[7];
    println!(
        "cost per request (start + finish), median of {RUNS} runs of {CALLS} calls per thread"
    );
    println!("(the machine is shared: min is the least disturbed run)");
    println!(
        "{:<36} {:>10} {:>10} {:>12} {:>18}",
        "case", "median ns", "min ns", "median - off", "% of 4 KiB pread"
    );
    for ((name, v), m) in rows.iter().zip(&med) {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let extra = m - off;
        println!(
            "{name:<36} {m:>10.1} {min:>10.1} {extra:>12.1} {:>17.1}%",
            extra * 100.0 / pread
        );
    }
    let _ = traced.close_trace();
    let _ = std::fs::remove_dir_all(&dir);
}
