//! `ocidisk trace plot` on a synthetic trace of 5 million requests (two
//! queues, a Monogon-like partition table, a mix of sequential reads,
//! random reads and writes, flushes and discards over 60 s): wall time and
//! the process's peak RSS, for SVG and PNG output, and the file sizes.
//! Memory should not grow with the trace (the plot aggregates per pixel).
//!
//! ```sh
//! cargo build --release -p ocidisk && cargo bench -p ocidisk-tests --bench trace_plot
//! ```
//! `TRACE_PLOT_REQUESTS=N` changes the request count.

use ocidisk_tests::blkio_client::ocidisk_bench_binary;
use std::io::{BufWriter, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const MIB: u64 = 1 << 20;

/// Writes a version 2 trace (format: backend/src/metrics/TRACE.md).
fn write_trace(path: &Path, n: u64) -> std::io::Result<()> {
    let parts: [(u32, &str, u64, u64); 4] = [
        (1, "ESP", MIB, 129 * MIB),
        (2, "METROPOLIS-SYSTEM-A", 129 * MIB, 1153 * MIB),
        (3, "METROPOLIS-SYSTEM-B", 1153 * MIB, 2177 * MIB),
        (4, "METROPOLIS-NODE-DATA", 2177 * MIB, 5119 * MIB),
    ];
    let label = b"bench-node";
    let mut desc = label.to_vec();
    for (i, name, s, e) in parts {
        desc.extend_from_slice(&s.to_le_bytes());
        desc.extend_from_slice(&e.to_le_bytes());
        desc.extend_from_slice(&i.to_le_bytes());
        desc.extend_from_slice(&(name.len() as u16).to_le_bytes());
        desc.extend_from_slice(name.as_bytes());
    }
    let header_size = (64 + desc.len()).next_multiple_of(8);
    let mut h = vec![0u8; 64];
    h[..8].copy_from_slice(b"OCIDTRC\0");
    h[8..12].copy_from_slice(&2u32.to_le_bytes());
    h[12..16].copy_from_slice(&(header_size as u32).to_le_bytes());
    h[16..20].copy_from_slice(&32u32.to_le_bytes());
    h[20..22].copy_from_slice(&2u16.to_le_bytes());
    h[32..40].copy_from_slice(&(5u64 << 30).to_le_bytes());
    h[40..42].copy_from_slice(&(parts.len() as u16).to_le_bytes());
    h[42..44].copy_from_slice(&(label.len() as u16).to_le_bytes());
    h.extend_from_slice(&desc);
    h.resize(header_size, 0);
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    out.write_all(&h)?;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let step = 60_000_000_000 / n.max(1);
    let mut seq = 129 * MIB;
    for i in 0..n {
        let r = rand();
        let (kind, offset, len) = match r % 100 {
            0..=44 => {
                seq = if seq >= 1153 * MIB {
                    129 * MIB
                } else {
                    seq + 131072
                };
                (0u8, seq, 131072u64)
            }
            45..=69 => (0, MIB + (r >> 20) % (128 * 256) * 4096, 4096),
            70..=96 => (
                1,
                2177 * MIB + (r >> 20) % (2942 * 256) * 4096,
                4096 << (r >> 60 & 3),
            ),
            97..=98 => (2, 0, 0),
            _ => (3, 2177 * MIB + (r >> 20) % 2942 * MIB, MIB),
        };
        let lat = 20_000 + (rand() % 400_000) * (1 + u64::from(kind == 2) * 20);
        let mut rec = [0u8; 32];
        rec[..8].copy_from_slice(&(i * step).to_le_bytes());
        rec[8..16].copy_from_slice(&offset.to_le_bytes());
        rec[16..24].copy_from_slice(&len.to_le_bytes());
        rec[24..28].copy_from_slice(&(lat as u32).to_le_bytes());
        rec[28..30].copy_from_slice(&((i % 2) as u16).to_le_bytes());
        rec[30] = kind;
        out.write_all(&rec)?;
    }
    out.flush()
}

/// Runs `ocidisk ARGS`; wall time (s) and peak RSS (MiB) of the process.
fn measure(bin: &Path, args: &[&str]) -> (f64, f64) {
    let start = Instant::now();
    // Reaped by wait4 below, which also gives the peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ocidisk");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; status and usage are valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let status = std::process::ExitStatus::from_raw(status);
    assert!(status.success(), "ocidisk {args:?}: {status}");
    (secs, usage.ru_maxrss as f64 / 1024.0)
}

fn main() {
    let n: u64 = std::env::var("TRACE_PLOT_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000_000);
    let bin = ocidisk_bench_binary().expect("ocidisk binary");
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("big.trace");
    let t = Instant::now();
    write_trace(&trace, n).expect("writing the trace");
    let size = std::fs::metadata(&trace).map(|m| m.len()).unwrap_or(0);
    println!(
        "trace: {n} requests, {:.0} MiB, written in {:.2} s",
        size as f64 / MIB as f64,
        t.elapsed().as_secs_f64()
    );
    let p = |x: &Path| x.to_str().expect("path").to_owned();
    println!("| output | wall time | peak RSS | file |\n|---|---:|---:|---:|");
    for (name, extra) in [
        ("plot.svg", vec![]),
        ("plot.png", vec![]),
        ("compare.svg", vec!["--compare".to_string(), p(&trace)]),
    ] {
        let out = dir.path().join(name);
        let mut args = vec![
            "trace".to_string(),
            "plot".into(),
            p(&trace),
            "-o".into(),
            p(&out),
        ];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (secs, rss) = measure(&bin, &args);
        let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        println!(
            "| {name} | {secs:.2} s | {rss:.1} MiB | {:.0} KiB |",
            bytes as f64 / 1024.0
        );
    }
    let (secs, rss) = measure(&bin, &["trace", "summarize", &p(&trace), "--json"]);
    println!("| (trace summarize, for scale) | {secs:.2} s | {rss:.1} MiB | - |");
}
