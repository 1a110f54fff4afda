//! Benchmark: a first boot straight from a registry, against copying the
//! image first and against a warm local layout.
//!
//! ```text
//! cargo build --release -p ocidisk && cargo bench -p ocidisk-tests --bench registry_boot
//! ```
//!
//! The sample Monogon image (the harness's UKI and system payload) is
//! pushed with skopeo to Debian's `docker-registry` on loopback, with the
//! fault proxy in front of it counting the body bytes it forwards. Each
//! cell boots one QEMU guest through OVMF from the disk `ocidisk serve`
//! composes (the `monogon` preset, 5 GiB, a new overlay), and measures the
//! time from the start of the cell to the guest init's `OCIDISK boot=ok`
//! on the serial console (and to its power-off, after its test script
//! read and checked the system partition):
//!
//! - *node 1*: `serve --image docker://…` with an empty chunk cache; bytes
//!   through the proxy (layer chunks; manifest and config apart) and bytes
//!   the guest read from the base image (the server's `--stats-json`);
//! - *skopeo + serve*: `skopeo copy docker://… oci:DIR` of the whole image,
//!   then `serve --image DIR` (the time includes the copy);
//! - *warm local*: `serve --image DIR` of the local layout, in the page
//!   cache;
//! - *node 2*: `serve --image docker://…` on node 1's cache;
//! - *prefetched*: `pull --prefetch` of node 1's `--trace` into an empty
//!   cache, then `serve` on it (the time includes the pull).
//!
//! Every cell runs `OCIDISK_BENCH_REPS` times (3 by default); the table
//! gives medians and the ratios the issue sets as targets: bytes fetched ≤
//! 1.5 × bytes read (plus manifest and config), time to init from an empty
//! cache ≤ 1.3 × from a warm local layout, node 2 fetches 0 bytes.
//! `BOOT_TIMEOUT` (seconds per boot, default 600), `OCIDISK_BIN`,
//! `OCIDISK_ACCEL` as for the other guest benchmarks.

use anyhow::{bail, ensure, Context, Result};
use ocidisk_tests::blkio_client::ocidisk_bench_binary;
use ocidisk_tests::guest::{Assets, VhostUserServer, VmConfig};
use ocidisk_tests::registry::proxy::Proxy;
use ocidisk_tests::registry::Registry;
use ocidisk_tests::sample::{build_sample_image, SAMPLE_REF};
use std::path::Path;
use std::time::{Duration, Instant};

const REPRODUCE: &str =
    "cargo build --release -p ocidisk && cargo bench -p ocidisk-tests --bench registry_boot";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one boot measured.
#[derive(Clone, Copy, Debug, Default)]
struct Boot {
    /// From the start of the cell to the guest's init.
    to_init: Duration,
    /// From the start of the cell to QEMU's exit.
    to_off: Duration,
    /// Bytes the guest read from the base image (not the overlay).
    read: u64,
    /// Body bytes through the proxy: layer chunks (with a Range) and the
    /// rest (manifests, configs, skopeo's whole blobs).
    ranged: u64,
    whole: u64,
}

struct Bench {
    ocidisk: std::path::PathBuf,
    work: tempfile::TempDir,
    timeout: Duration,
    runs: u64,
}

impl Bench {
    /// Serves `image` on `cache`, boots a guest from it and waits for its
    /// power-off; times count from `started`.
    fn boot(
        &mut self,
        name: &str,
        image: &str,
        cache: &Path,
        extra: &[&str],
        started: Instant,
    ) -> Result<Boot> {
        self.runs += 1;
        let work = self.work.path();
        let tag = format!("{name}-{}", self.runs);
        let socket = work.join(format!("{tag}.sock"));
        let stats = work.join(format!("{tag}.stats.json"));
        let cache_s = cache.to_str().context("UTF-8 path")?;
        let stats_s = stats.to_str().context("UTF-8 path")?;
        let mut args = vec![
            "--layout",
            "monogon",
            "--disk-size",
            "5GiB",
            "--cache",
            cache_s,
            "--stats-json",
            stats_s,
        ];
        args.extend_from_slice(extra);
        let server = VhostUserServer::ocidisk_serve(
            &self.ocidisk,
            Path::new(image),
            &work.join(format!("{tag}.overlay")),
            &socket,
            &args,
            work,
        )?;
        let mut cfg = VmConfig::uefi(&socket);
        cfg.timeout = self.timeout;
        let mut vm = cfg.spawn(work)?;
        let mut to_init = None;
        let mut done = None;
        let status = loop {
            for line in vm.read_console() {
                if to_init.is_none() && line.contains("OCIDISK boot=ok") {
                    to_init = Some(started.elapsed());
                }
                if let Some(at) = line.find("OCIDISK done=") {
                    done = Some(line[at + 13..].trim().to_owned());
                }
            }
            if let Some(status) = vm.try_wait()? {
                break status;
            }
            if vm.over_time() {
                let logs = vm.logs();
                vm.kill();
                bail!("{tag}: no power-off within {:?}\n{logs}", self.timeout);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let to_off = started.elapsed();
        for line in vm.read_console() {
            if let Some(at) = line.find("OCIDISK done=") {
                done = Some(line[at + 13..].trim().to_owned());
            }
        }
        let log = server.log();
        let st = server.stop()?;
        ensure!(st.success(), "{tag}: ocidisk serve exited with {st}\n{log}");
        ensure!(
            status.success() && done.as_deref() == Some("0"),
            "{tag}: the guest failed (QEMU {status}, done={done:?})\n{}",
            vm.logs()
        );
        let to_init = to_init.with_context(|| format!("{tag}: no init marker\n{}", vm.logs()))?;
        // The JSON `--stats-json` writes: `queues[].base_read_bytes`.
        let snap: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&stats).with_context(|| format!("reading {}", stats.display()))?,
        )
        .with_context(|| format!("parsing {}", stats.display()))?;
        let read = snap["queues"]
            .as_array()
            .with_context(|| format!("{}: no queues", stats.display()))?
            .iter()
            .map(|q| q["base_read_bytes"].as_u64().unwrap_or(0))
            .sum();
        Ok(Boot {
            to_init,
            to_off,
            read,
            ..Boot::default()
        })
    }
}

fn median_by<T: Copy, K: Ord + Copy>(v: &[T], key: impl Fn(&T) -> K) -> K {
    let mut k: Vec<K> = v.iter().map(key).collect();
    k.sort();
    k[k.len() / 2]
}

/// The medians of a cell's runs.
fn median(v: &[Boot]) -> Boot {
    Boot {
        to_init: median_by(v, |b| b.to_init),
        to_off: median_by(v, |b| b.to_off),
        read: median_by(v, |b| b.read),
        ranged: median_by(v, |b| b.ranged),
        whole: median_by(v, |b| b.whole),
    }
}

fn main() -> Result<()> {
    println!("reproduce: `{REPRODUCE}`\n");
    let reps = env_num("OCIDISK_BENCH_REPS", 3).max(1);
    let assets = Assets::locate()?;
    let mut bench = Bench {
        ocidisk: ocidisk_bench_binary()?,
        work: tempfile::tempdir()?,
        timeout: Duration::from_secs(env_num("BOOT_TIMEOUT", 600)),
        runs: 0,
    };
    let sample = build_sample_image(&assets, &bench.work.path().join("sample"))?;
    let reg = Registry::start_plain()?;
    reg.push(&sample.image, Some(SAMPLE_REF), "os/sample:v1")?;
    let proxy = Proxy::start(&reg.addr)?;
    let remote = format!("docker://{}/os/sample:v1", proxy.addr);
    let image_bytes: u64 = std::fs::read_dir(sample.image.join("blobs/sha256"))?
        .map(|e| Ok(e?.metadata()?.len()))
        .sum::<Result<u64>>()?;

    let (mut node1, mut node2, mut copied, mut local) = (vec![], vec![], vec![], vec![]);
    let mut prefetched = vec![];
    for rep in 0..reps {
        let work = bench.work.path().to_owned();
        let cache = work.join(format!("cache-{rep}"));
        let trace = work.join(format!("node1-{rep}.trace"));
        let trace_s = trace.to_str().context("UTF-8 path")?.to_owned();
        for (cell, out) in [(1, &mut node1), (2, &mut node2)] {
            proxy.forget();
            // Node 1 records its reads for the prefetch cell.
            let extra: &[&str] = if cell == 1 {
                &["--trace", &trace_s]
            } else {
                &[]
            };
            let mut b = bench.boot(
                &format!("node{cell}"),
                &remote,
                &cache,
                extra,
                Instant::now(),
            )?;
            (b.ranged, b.whole) = proxy.body_bytes();
            out.push(b);
        }

        // `pull --prefetch` of node 1's trace into an empty cache, then a
        // boot on it: the time counts the pull.
        proxy.forget();
        let started = Instant::now();
        let pf_cache = work.join(format!("cache-prefetched-{rep}"));
        let st = std::process::Command::new(&bench.ocidisk)
            .args([
                "pull",
                &remote,
                "--prefetch",
                &trace_s,
                "--disk-size",
                "5GiB",
                "--cache",
            ])
            .arg(&pf_cache)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running ocidisk pull --prefetch")?;
        ensure!(st.success(), "ocidisk pull --prefetch failed: {st}");
        let mut b = bench.boot("prefetched", &remote, &pf_cache, &[], started)?;
        (b.ranged, b.whole) = proxy.body_bytes();
        prefetched.push(b);

        proxy.forget();
        let started = Instant::now();
        let dir = work.join(format!("copied-{rep}"));
        let st = std::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{}/os/sample:v1", proxy.addr))
            .arg(format!("oci:{}:v1", dir.display()))
            .status()
            .context("running skopeo")?;
        ensure!(st.success(), "skopeo copy failed: {st}");
        let mut b = bench.boot(
            "copied",
            dir.to_str().context("UTF-8 path")?,
            &work.join(format!("cache-copied-{rep}")),
            &[],
            started,
        )?;
        (b.ranged, b.whole) = proxy.body_bytes();
        copied.push(b);

        let image = sample.image.to_str().context("UTF-8 path")?;
        let b = bench.boot(
            "local",
            image,
            &work.join(format!("cache-local-{rep}")),
            &[],
            Instant::now(),
        )?;
        local.push(b);
    }

    let (n1, n2, cp, lo) = (
        median(&node1),
        median(&node2),
        median(&copied),
        median(&local),
    );
    let pf = median(&prefetched);
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    println!(
        "registry_boot: the sample image ({image_bytes} bytes of blobs), UEFI boot under {}, \
         loopback docker-registry behind the fault proxy, ocidisk {}; median of {reps}\n",
        ocidisk_tests::guest::Accel::detect().as_str(),
        bench.ocidisk.display()
    );
    println!("| cell | time to init | time to power-off | layer bytes fetched | manifest + config (or whole blobs) | bytes the guest read |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (what, b) in [
        ("node 1: registry, empty cache", n1),
        ("skopeo copy + serve of the copy", cp),
        ("warm local layout", lo),
        ("node 2: registry, node 1's cache", n2),
        ("pull --prefetch (node 1's trace) + serve", pf),
    ] {
        println!(
            "| {what} | {} | {} | {} | {} | {} |",
            secs(b.to_init),
            secs(b.to_off),
            b.ranged,
            b.whole,
            b.read
        );
    }
    let fetched_ratio = n1.ranged as f64 / n1.read.max(1) as f64;
    let init_ratio = n1.to_init.as_secs_f64() / lo.to_init.as_secs_f64();
    let copy_ratio = cp.to_init.as_secs_f64() / lo.to_init.as_secs_f64();
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    println!("\n| target | measured | |");
    println!("|---|---:|---|");
    println!(
        "| node 1 layer bytes fetched ≤ 1.5 × bytes read (+ {} bytes manifest + config) | {fetched_ratio:.2} × | {} |",
        n1.whole,
        verdict(fetched_ratio <= 1.5)
    );
    println!(
        "| time to init, empty cache ≤ 1.3 × warm local | {init_ratio:.2} × | {} |",
        verdict(init_ratio <= 1.3)
    );
    println!(
        "| node 2 fetches 0 layer bytes | {} bytes | {} |",
        n2.ranged,
        verdict(n2.ranged == 0)
    );
    println!(
        "| (for comparison) skopeo copy + serve, time to init ÷ warm local | {copy_ratio:.2} × | |"
    );
    Ok(())
}
