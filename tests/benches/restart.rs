//! Benchmark: a guest's disk server killed under load, `ocidisk serve`
//! beside qemu-storage-daemon.
//!
//! ```text
//! cargo build --release -p ocidisk && cargo bench -p ocidisk-tests --bench restart
//! ```
//!
//! The scenario of tests/tests/guest_restart.rs with SIGKILLs only: a QEMU
//! guest (`reconnect-ms=200`) runs `guest-io-check` (6 workers, verified
//! O_DIRECT 4 KiB-block writes and reads) on the first 32 MiB of the data
//! partition while the host kills the server `OCIDISK_RESTART_KILLS` times
//! (default 50) and starts it again on the same socket after 0.1–1 s:
//!
//! - `ocidisk serve` on the sample image (monogon preset, 5 GiB) with an
//!   overlay (the release build, or `OCIDISK_BIN`);
//! - `qemu-storage-daemon` exporting the same disk as a raw file (`ocidisk
//!   export`), `cache.direct=off`, 4 queues.
//!
//! Both runs use the same seed (`OCIDISK_RESTART_SEED`, else the clock), so
//! the same kill timing. Printed as a markdown table: kills survived (the
//! guest's I/O came back), guest-visible errors (the guest's failure
//! reports: I/O errors, lost or corrupt blocks, hangs over 30 s), and the
//! time from the new server's start to the guest's next completed I/O.
//! A run that stops early (a hang) says why under the table.
//!
//! Environment: `OCIDISK_RESTART_KILLS` (default 50), `OCIDISK_RESTART_SEED`,
//! `OCIDISK_RESTART_SERVERS=ocidisk|qsd` (one of them only),
//! `OCIDISK_RESTART_VERBOSE=1` (each restart, guest failure and failure
//! report on stderr), `OCIDISK_RESTART_KEEP=1` (keep the logs),
//! `OCIDISK_RESTART_DEADLINE_SECS` (per server; default 240 + 6 per kill).

use std::process::Command;

use ocidisk_tests::blkio_client::ocidisk_bench_binary;
use ocidisk_tests::guest::restart::{self, Backend, Outcome, Plan, Scenario};
use ocidisk_tests::guest::{Accel, Assets};
use ocidisk_tests::sample::{build_sample_image, DATA};

const DATA_OFFSET: u64 = 4_458_496 * 512;
const LAYOUT_ARGS: &[&str] = &["--layout", "monogon", "--disk-size", "5GiB"];

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let assets = match Assets::locate() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("restart bench: skipped: {e}");
            return;
        }
    };
    let ocidisk = ocidisk_bench_binary().unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::Builder::new()
        .prefix("restart-bench-")
        .tempdir()
        .unwrap();
    let dir = Dir(Some(dir));
    let guest_io_check = restart::build_guest_io_check(env!("CARGO_TARGET_TMPDIR").as_ref())
        .unwrap_or_else(|e| panic!("building guest-io-check: {e}"));
    let sample = build_sample_image(&assets, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let raw = dir.path().join("disk.raw");
    let out = Command::new(&ocidisk)
        .arg("export")
        .arg("--image")
        .arg(&sample.image)
        .args(LAYOUT_ARGS)
        .arg("--output")
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ocidisk export: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let plan = Plan::from_env(50, 0, 0);
    let mut plan = plan;
    if std::env::var_os("OCIDISK_RESTART_DEADLINE_SECS").is_none() {
        plan.deadline = std::time::Duration::from_secs(240 + 6 * plan.events.len() as u64);
    }
    let kills = plan.events.len();
    let backends = [
        Backend::Ocidisk {
            bins: vec![ocidisk.clone()],
            image: sample.image.clone(),
            overlay: dir.path().join("vm.overlay"),
            layout: LAYOUT_ARGS.iter().map(|s| s.to_string()).collect(),
            args: vec!["--num-queues".to_string(), "2".to_string()],
        },
        Backend::Qsd { disk: raw },
    ];
    eprintln!(
        "restart bench ({}): {kills} kills per server, seed {}",
        Accel::detect().as_str(),
        plan.seed
    );
    let mut results: Vec<(String, Outcome)> = Vec::new();
    // OCIDISK_RESTART_SERVERS=ocidisk or =qsd runs one of them.
    let only = std::env::var("OCIDISK_RESTART_SERVERS").ok();
    for backend in backends {
        let short = match backend {
            Backend::Ocidisk { .. } => "ocidisk",
            Backend::Qsd { .. } => "qsd",
        };
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|x| x.trim() == short))
        {
            continue;
        }
        let workdir = dir.path().join(match backend {
            Backend::Ocidisk { .. } => "ocidisk",
            Backend::Qsd { .. } => "qsd",
        });
        std::fs::create_dir_all(&workdir).unwrap();
        let name = backend.name().to_string();
        eprintln!("--- {name}: {}", backend.describe());
        let scenario = Scenario {
            workdir,
            assets: assets.clone(),
            guest_io_check: guest_io_check.clone(),
            backend,
            partition: DATA.to_string(),
            partition_offset: DATA_OFFSET,
            blocks: 8192,
            workers: 6,
            cpus: 2,
            num_queues: 2,
            reconnect_ms: 200,
            plan: plan.clone(),
            verbose: std::env::var_os("OCIDISK_RESTART_VERBOSE").is_some(),
        };
        let outcome = restart::run(&scenario);
        if !outcome.failures.is_empty() && std::env::var_os("OCIDISK_RESTART_VERBOSE").is_some() {
            eprintln!("{}", outcome.failure_report());
        }
        eprintln!(
            "{name}: {} of {kills} kills survived, {} guest-visible failures, {:.0} s",
            outcome.kills_survived(),
            outcome.guest_failure_count,
            outcome.elapsed.as_secs_f64()
        );
        results.push((name, outcome));
    }

    println!();
    println!(
        "Guest I/O across {kills} SIGKILLs of its disk server ({}, seed {}, 6 workers, \
         32 MiB of the data partition, reconnect-ms=200, down 0.1–1 s)",
        Accel::detect().as_str(),
        plan.seed
    );
    println!();
    println!(
        "| server | kills survived | first failure after kill | guest-visible errors | \
         resume median | resume p99 | resume max | guest ops | result |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (name, o) in &results {
        let t = o.resume_times();
        println!(
            "| {name} | {}/{kills} | {} | {} | {} | {} | {} | {} | {} |",
            o.kills_survived(),
            o.first_failed_restart()
                .map_or("-".to_string(), |i| format!("#{i}")),
            o.guest_failure_count,
            restart::fmt_opt(restart::percentile(&t, 50.0)),
            restart::fmt_opt(restart::percentile(&t, 99.0)),
            restart::fmt_opt(t.last().copied()),
            o.ops,
            if o.failures.is_empty() {
                "pass"
            } else {
                "FAIL"
            },
        );
    }
    for (name, o) in &results {
        if !o.failures.is_empty() {
            println!();
            println!("{name}:");
            for f in o.failures.iter().take(5) {
                println!("- {}", f.lines().next().unwrap_or(""));
            }
            for f in o.guest_failures.iter().take(5) {
                println!("  - guest: {f}");
            }
            for k in o.kernel_complaints.iter().take(3) {
                println!("  - guest kernel: {k}");
            }
        }
    }
}

/// The bench's directory: kept when `OCIDISK_RESTART_KEEP` is set.
struct Dir(Option<tempfile::TempDir>);

impl Dir {
    fn path(&self) -> &std::path::Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if std::env::var_os("OCIDISK_RESTART_KEEP").is_some() {
            if let Some(d) = self.0.take() {
                eprintln!("restart bench: logs kept in {}", d.keep().display());
            }
        }
    }
}
