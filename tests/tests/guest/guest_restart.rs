//! Issue 10: a guest that never notices its disk's backend crash, restart
//! or upgrade.
//!
//! A QEMU guest (direct boot, busybox initramfs) runs `guest-io-check` on the
//! first 32 MiB of the data partition (`METROPOLIS-NODE-DATA`, disk offset
//! 4458496 × 512) of the sample image served by `ocidisk serve` with an
//! overlay: 6 workers writing self-describing 4 KiB blocks with O_DIRECT
//! (1–16 per write, an fdatasync after ~10 % of writes) and reading them
//! back against the last generation they saw complete. Meanwhile the host
//! kills the server with SIGKILL (20 times), stops it with SIGTERM (3), and
//! replaces it by another build (2, a copy of the binary at another path or
//! `OCIDISK_UPGRADE_BIN`), each time starting it again on the same socket
//! and overlay after 0.1–1 s; QEMU reconnects (`reconnect-ms=200`).
//!
//! Passes when the guest saw no I/O error, no request in flight over 30 s,
//! no lost, misplaced or corrupt block, its final read-back matched, and a
//! fresh server afterwards serves the same blocks. Prints each restart's
//! time until the guest's I/O moved again, and the median and p99.
//!
//! Environment: `OCIDISK_RESTART_KILLS`, `_TERMS`, `_UPGRADES` (counts;
//! `OCIDISK_RESTART_KILLS=1 OCIDISK_RESTART_TERMS=0 OCIDISK_RESTART_UPGRADES=0`
//! for a single kill), `OCIDISK_RESTART_SEED` (reproduce the timing),
//! `OCIDISK_RESTART_DEADLINE_SECS` (whole run, default 420),
//! `OCIDISK_RESTART_KEEP=1` (keep the logs), `OCIDISK_UPGRADE_BIN`,
//! `OCIDISK_REQUIRE_GUEST=1` (fail instead of skipping without QEMU or the
//! guest assets).
//!
//! Needs `.ci/install-deps` (the binary is built by `ocidisk_binary`).
//! `cargo test -p ocidisk-tests --test guest -- guest_restart:: --nocapture`

use std::path::PathBuf;

use ocidisk_tests::blkio_client::ocidisk_binary;
use ocidisk_tests::guest::restart::{self, Backend, Plan, Scenario};
use ocidisk_tests::guest::{Accel, Assets};
use ocidisk_tests::sample::{build_sample_image, DATA};

/// The data partition of the monogon preset at 5 GiB (DESIGN.md's table).
const DATA_OFFSET: u64 = 4_458_496 * 512;
const LAYOUT_ARGS: &[&str] = &["--layout", "monogon", "--disk-size", "5GiB"];
/// 32 MiB of the partition, in 4 KiB blocks.
const BLOCKS: u64 = 8192;
const WORKERS: u64 = 6;

/// The guest assets, or `None` (with a message) when this machine cannot
/// boot a guest: then the test is skipped unless `OCIDISK_REQUIRE_GUEST` is set.
fn guest_assets() -> Option<Assets> {
    let why = match (
        Assets::locate(),
        std::process::Command::new("qemu-system-x86_64")
            .arg("--version")
            .output(),
    ) {
        (Ok(assets), Ok(out)) if out.status.success() => return Some(assets),
        (Err(e), _) => e.to_string(),
        (_, Err(e)) => format!("cannot run qemu-system-x86_64: {e}"),
        (_, Ok(out)) => format!("qemu-system-x86_64 --version: {}", out.status),
    };
    if std::env::var_os("OCIDISK_REQUIRE_GUEST").is_some() {
        panic!("{why}");
    }
    eprintln!("skipping: no guest can boot here: {why}");
    None
}

#[test]
fn guest_io_survives_server_kills_restarts_and_upgrades() {
    let Some(assets) = guest_assets() else {
        return;
    };
    let ocidisk = ocidisk_binary().unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::Builder::new()
        .prefix("guest-restart-")
        .tempdir()
        .unwrap();
    let guest_io_check = restart::build_guest_io_check(env!("CARGO_TARGET_TMPDIR").as_ref())
        .unwrap_or_else(|e| panic!("building guest-io-check: {e}"));
    let sample = build_sample_image(&assets, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    // "Another build": OCIDISK_UPGRADE_BIN, or the same binary at another path.
    let upgrade = match std::env::var_os("OCIDISK_UPGRADE_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let p = dir.path().join("other-build/ocidisk");
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::copy(&ocidisk, &p).unwrap();
            p
        }
    };
    let plan = Plan::from_env(20, 3, 2);
    let scenario = Scenario {
        workdir: dir.path().to_path_buf(),
        assets,
        guest_io_check,
        backend: Backend::Ocidisk {
            bins: vec![ocidisk, upgrade],
            image: sample.image.clone(),
            overlay: dir.path().join("vm.overlay"),
            layout: LAYOUT_ARGS.iter().map(|s| s.to_string()).collect(),
            args: vec!["--num-queues".to_string(), "2".to_string()],
        },
        partition: DATA.to_string(),
        partition_offset: DATA_OFFSET,
        blocks: BLOCKS,
        workers: WORKERS,
        cpus: 2,
        num_queues: 2,
        reconnect_ms: 200,
        plan,
        verbose: true,
    };
    eprintln!(
        "guest_restart ({}): {} restarts, seed {}; server: {}",
        Accel::detect().as_str(),
        scenario.plan.events.len(),
        scenario.plan.seed,
        scenario.backend.describe()
    );
    let outcome = restart::run(&scenario);
    eprintln!(
        "{}guest: {} operations, {} failures found, {}; boot to first I/O {}, whole run {:.1} s",
        outcome.table(),
        outcome.ops,
        outcome.guest_failure_count,
        outcome
            .reports
            .get("io_summary")
            .map_or("(no summary)", String::as_str),
        restart::fmt_opt(outcome.boot),
        outcome.elapsed.as_secs_f64()
    );
    if !outcome.failures.is_empty() {
        if std::env::var_os("OCIDISK_RESTART_KEEP").is_some() {
            let _ = dir.keep();
        }
        panic!("{}", outcome.failure_report());
    }
    assert_eq!(
        outcome.restarts.len(),
        scenario.plan.events.len(),
        "every planned restart happened"
    );
}
