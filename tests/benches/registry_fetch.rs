//! Benchmark: the registry client against Debian's `docker-registry` on
//! loopback.
//!
//! ```text
//! cargo bench -p ocidisk-tests --bench registry_fetch
//! ```
//!
//! One run pushes a Monogon-format image whose `system` payload is
//! `OCIDISK_BENCH_MIB` MiB (64 by default) of pseudo-random bytes, then
//! measures, in this process (release build):
//!
//! - 1 MiB `Range` reads of the payload, in order, on 1 thread and on 4
//!   threads sharing one client (what a chunk cache does on misses);
//! - the whole payload streamed with its digest checked (`get_blob`);
//! - the image into an OCI layout with `pull_to_layout`, against
//!   `skopeo copy docker://… oci:…` of the same image (a separate process);
//! - `ocidisk pull --cache` (the binary: `cargo build --release -p
//!   ocidisk` first) into an empty chunk cache with 1, 4 and 8 chunks in
//!   flight;
//! - a cold `ocidisk export --image docker://…` of a disk holding the image
//!   (a sequential read of every chunk), with `--registry-readahead` 0, 4
//!   and 8, through the fault proxy (with the layer bytes that crossed it)
//!   and straight to the registry.
//!
//! Each cell runs `OCIDISK_BENCH_REPS` times (3 by default) and prints the
//! median as a markdown table. Times include the registry's own work
//! (reading its storage, which stays in the page cache after the first run).

use ocidisk_tests::registry::{small_image, Registry};
use registry::{Client, ClientOptions, Digest, ImageRef, RegistryRef};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mib = env_num("OCIDISK_BENCH_MIB", 64);
    let reps = env_num("OCIDISK_BENCH_REPS", 3).max(1);
    let reg = Registry::start_plain()?;
    let img = small_image(&reg.dir.path().join("src"), mib << 20, 42, "v1")?;
    reg.push(&img.dir, None, "bench/os:v1")?;
    let r: RegistryRef = match ImageRef::parse(&format!("docker://{}/bench/os:v1", reg.addr))? {
        ImageRef::Registry(r) => r,
        _ => anyhow::bail!("not a registry reference"),
    };
    let client = Client::new(ClientOptions::default())?;
    let system = img.layer("system");
    let d = Digest::parse(&system.blob.digest)?;
    let size = system.blob.size as usize;
    let chunk = 1usize << 20;
    let chunks = size / chunk;

    let mut rows: Vec<(String, Duration, usize)> = Vec::new();
    let mut t1 = Vec::new();
    for _ in 0..reps {
        let mut buf = vec![0u8; chunk];
        let t = Instant::now();
        for i in 0..chunks {
            client.read_range(&r, &d, (i * chunk) as u64, &mut buf)?;
        }
        t1.push(t.elapsed());
    }
    rows.push(("1 MiB ranges, 1 thread".into(), median(t1), chunks * chunk));

    let mut t4 = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        std::thread::scope(|s| -> anyhow::Result<()> {
            let handles: Vec<_> = (0..4)
                .map(|k| {
                    let (client, r, d) = (&client, &r, &d);
                    s.spawn(move || -> Result<(), registry::RegistryError> {
                        let mut buf = vec![0u8; chunk];
                        for i in (k..chunks).step_by(4) {
                            client.read_range(r, d, (i * chunk) as u64, &mut buf)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
            }
            Ok(())
        })?;
        t4.push(t.elapsed());
    }
    rows.push(("1 MiB ranges, 4 threads".into(), median(t4), chunks * chunk));

    let mut tw = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        client.get_blob(&r, &d, Some(size as u64), &mut std::io::sink())?;
        tw.push(t.elapsed());
    }
    rows.push(("whole blob + sha256".into(), median(tw), size));

    let total: usize = img.manifests[0]
        .layers
        .iter()
        .map(|l| l.blob.size as usize)
        .sum();
    let ocidisk = ocidisk_tests::blkio_client::ocidisk_bench_binary()?;
    let reference = format!("docker://{}/bench/os:v1", reg.addr);
    let mut tp = Vec::new();
    let mut ts = Vec::new();
    let mut tj: Vec<(usize, Vec<Duration>)> = [1, 4, 8].iter().map(|&j| (j, Vec::new())).collect();
    for i in 0..reps {
        // `ocidisk pull` into an empty chunk cache: every 1 MiB chunk
        // fetched, checked against its hash and fdatasync'ed, with
        // `--jobs` chunks in flight.
        for (jobs, times) in &mut tj {
            let cache = reg.dir.path().join(format!("cache-{jobs}-{i}"));
            let t = Instant::now();
            let st = std::process::Command::new(&ocidisk)
                .args(["pull", &reference, "--jobs", &jobs.to_string(), "--cache"])
                .arg(&cache)
                .stdout(std::process::Stdio::null())
                .status()?;
            anyhow::ensure!(st.success(), "ocidisk pull --jobs {jobs} failed");
            times.push(t.elapsed());
        }

        let out = reg.dir.path().join(format!("pulled-{i}"));
        let t = Instant::now();
        let image = client.resolve(&r, None)?;
        registry::pull_to_layout(&client, &image, &out, Some("v1"))?;
        tp.push(t.elapsed());

        let out = reg.dir.path().join(format!("skopeo-{i}"));
        let t = Instant::now();
        let st = std::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{}/bench/os:v1", reg.addr))
            .arg(format!("oci:{}:v1", out.display()))
            .status()?;
        anyhow::ensure!(st.success(), "skopeo copy failed");
        ts.push(t.elapsed());
    }
    rows.push(("pull_to_layout (whole image)".into(), median(tp), total));
    rows.push((
        "skopeo copy docker:// oci: (whole image)".into(),
        median(ts),
        total,
    ));
    for (jobs, times) in tj {
        rows.push((
            format!("ocidisk pull --cache, --jobs {jobs} (whole image, chunk by chunk)"),
            median(times),
            total,
        ));
    }

    // A cold `ocidisk export --image docker://…` (a sequential read of the
    // whole disk, every chunk a miss) without and with readahead, through
    // the fault proxy, which counts the layer bytes it forwards.
    let proxy = ocidisk_tests::registry::proxy::Proxy::start(&reg.addr)?;
    let layout = reg.dir.path().join("export.toml");
    std::fs::write(
        &layout,
        format!(
            "disk_size = \"{}MiB\"\n[[partitions]]\nname = \"kernel\"\ntype = \"linux\"\nsize = \"1MiB\"\n\
             content = \"payload:kernel.efi\"\n[[partitions]]\nname = \"system\"\ntype = \"linux\"\n\
             size = \"rest\"\ncontent = \"payload:system\"\n",
            mib + 4
        ),
    )?;
    // Through the proxy (which counts bytes but buffers each answer whole
    // and opens a connection per request), then straight to the registry,
    // where readahead's overlap of round trips can show.
    let mut export_bytes = Vec::new();
    for (via, addr) in [("proxy", &proxy.addr), ("direct", &reg.addr)] {
        let remote = format!("docker://{addr}/bench/os:v1");
        for ra in [0u64, 4, 8] {
            let mut times = Vec::new();
            let mut bytes = Vec::new();
            for i in 0..reps {
                let cache = reg.dir.path().join(format!("export-cache-{via}-{ra}-{i}"));
                let out = reg.dir.path().join(format!("export-{via}-{ra}-{i}.raw"));
                proxy.forget();
                let t = Instant::now();
                let st = std::process::Command::new(&ocidisk)
                    .args([
                        "export",
                        "--image",
                        &remote,
                        "--registry-readahead",
                        &ra.to_string(),
                    ])
                    .arg("--layout")
                    .arg(&layout)
                    .arg("--cache")
                    .arg(&cache)
                    .arg("--output")
                    .arg(&out)
                    .stdout(std::process::Stdio::null())
                    .status()?;
                anyhow::ensure!(
                    st.success(),
                    "ocidisk export --registry-readahead {ra} failed"
                );
                times.push(t.elapsed());
                bytes.push(proxy.body_bytes().0);
                std::fs::remove_file(&out)?;
            }
            if via == "proxy" {
                bytes.sort_unstable();
                export_bytes.push((ra, bytes[bytes.len() / 2]));
            }
            rows.push((
                format!(
                "ocidisk export --image docker://… ({via}), cold cache, --registry-readahead {ra}"
            ),
                median(times),
                (mib + 4) << 20,
            ));
        }
    }

    println!("registry_fetch: {mib} MiB payload, loopback docker-registry, median of {reps}\n");
    println!("| what | time | MiB/s |");
    println!("|---|---:|---:|");
    for (what, t, bytes) in rows {
        let mibs = bytes as f64 / (1 << 20) as f64 / t.as_secs_f64();
        println!(
            "| {what} | {:.1} ms | {mibs:.0} |",
            t.as_secs_f64() * 1000.0
        );
    }
    println!();
    for (ra, b) in export_bytes {
        println!(
            "export with --registry-readahead {ra}: {b} layer bytes through the proxy (median)"
        );
    }
    let s = client.stats().snapshot();
    println!(
        "\nclient: {} fetches, {} bytes, {} retries, {} failures",
        s.fetches, s.bytes, s.retries, s.failures
    );
    Ok(())
}
