//! What lazy verification costs a served disk: `ocidisk serve --readonly`
//! of a Monogon image whose `system` payload fills the disk, with
//! `--verify=lazy` against `--verify=none`, driven by libblkio.
//!
//! - first read: the whole payload read once in 1 MiB requests (QD8), in
//!   a warm page cache, so that the difference is the hashing of each chunk
//!   on its first read;
//! - warm: 4 KiB random reads, QD32, one queue, after every chunk was read
//!   (and so verified) once: what a checked chunk costs per request.
//!
//! `cargo build --release -p ocidisk && cargo bench -p ocidisk-tests --bench verify_lazy`
//! (`OCIDISK_BENCH_SECS`, default 3, per warm cell; `OCIDISK_BENCH_ROUNDS`,
//! default 3, interleaved rounds; the median is printed). About a minute.

use blockio::IoBufMut;
use ocidisk_tests::blkio_client::{ocidisk_bench_binary, BlkioClient, Op, Server};
use ocidisk_tests::oci_writer::{efi_image, ImageBuilder, OsImage, Payload};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const PAYLOAD_MIB: u64 = 256;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing to filter.
    std::env::set_var("OCIDISK_BIN", ocidisk_bench_binary()?);
    let secs = env("OCIDISK_BENCH_SECS", 3);
    let rounds = env("OCIDISK_BENCH_ROUNDS", 3);
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("image");
    let data: Vec<u8> = (0..PAYLOAD_MIB * MIB / 8)
        .flat_map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes())
        .collect();
    ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("kernel.efi", efi_image(64 << 10)))
            .payload(Payload::new("system", data)),
    )
    .write(&image)?;
    let layout = dir.path().join("layout.toml");
    std::fs::write(
        &layout,
        format!(
            "disk_size = \"{}MiB\"\n[[partitions]]\nname = \"system\"\ntype = \"linux\"\nsize = \"rest\"\ncontent = \"payload:system\"\n",
            PAYLOAD_MIB + 2
        ),
    )?;
    let mut first: Vec<(&str, f64)> = Vec::new();
    let mut warm: Vec<(&str, f64)> = Vec::new();
    for _ in 0..rounds {
        for mode in ["none", "lazy"] {
            let socket = dir.path().join(format!("{mode}.sock"));
            let args = [
                "--image".to_owned(),
                image.display().to_string(),
                "--layout".into(),
                layout.display().to_string(),
                "--readonly".into(),
                format!("--verify={mode}"),
                "--helper-threads".into(),
                "0".into(),
            ];
            let server = Server::start(&socket, &args)?;
            let mut client = BlkioClient::connect_read_only(&socket, 1, 8 << 20)?;
            let q = client.queue();
            // First read of every chunk, 1 MiB requests, QD8.
            let began = Instant::now();
            let mut done = Vec::new();
            let (mut next, end) = (MIB, (PAYLOAD_MIB + 1) * MIB);
            let mut inflight = 0;
            while next < end || inflight > 0 {
                while inflight < 8 && next < end {
                    let slot = (next / MIB % 8) as usize;
                    q.submit(
                        Op::Read {
                            offset: next,
                            buf: slot * MIB as usize,
                            len: MIB as usize,
                        },
                        slot,
                    );
                    next += MIB;
                    inflight += 1;
                }
                done.clear();
                q.reap(1, &mut done)?;
                for (_, r) in &done {
                    r.as_ref()
                        .map_err(|e| anyhow::anyhow!("read failed: {e}"))?;
                }
                inflight -= done.len();
            }
            let mibs = PAYLOAD_MIB as f64 / began.elapsed().as_secs_f64();
            first.push((mode, mibs));
            // Warm 4 KiB random reads, QD32.
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            let mut rand = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let blocks = PAYLOAD_MIB * MIB / 4096;
            let began = Instant::now();
            let stop = began + Duration::from_secs(secs);
            let (mut ios, mut inflight) = (0u64, 0usize);
            loop {
                let more = Instant::now() < stop;
                while more && inflight < 32 {
                    let offset = MIB + rand() % blocks * 4096;
                    q.submit(
                        Op::Read {
                            offset,
                            buf: inflight * 4096,
                            len: 4096,
                        },
                        inflight,
                    );
                    inflight += 1;
                }
                if inflight == 0 {
                    break;
                }
                done.clear();
                q.reap(1, &mut done)?;
                for (_, r) in &done {
                    r.as_ref()
                        .map_err(|e| anyhow::anyhow!("read failed: {e}"))?;
                }
                // Slots are reused in any order: the data is not checked.
                inflight -= done.len();
                ios += done.len() as u64;
            }
            warm.push((mode, ios as f64 / began.elapsed().as_secs_f64()));
            drop(client);
            server.terminate()?;
        }
    }
    let median = |v: &[(&str, f64)], mode: &str| {
        let mut x: Vec<f64> = v.iter().filter(|(m, _)| *m == mode).map(|p| p.1).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    println!("| cell | --verify=none | --verify=lazy | lazy ÷ none |");
    println!("|---|---:|---:|---:|");
    let (n, l) = (median(&first, "none"), median(&first, "lazy"));
    println!(
        "| first read of {PAYLOAD_MIB} MiB, 1 MiB QD8 (MiB/s) | {n:.0} | {l:.0} | {:.2} |",
        l / n
    );
    let (n, l) = (median(&warm, "none"), median(&warm, "lazy"));
    println!(
        "| warm 4 KiB random read QD32, 1 queue (IOPS) | {:.1}k | {:.1}k | {:.3} |",
        n / 1e3,
        l / 1e3,
        l / n
    );
    println!("all runs: first {first:?}\nwarm {warm:?}");
    in_process(&image)?;
    Ok(())
}

/// The gate's own cost per read, without the vhost-user round trip whose
/// noise hides it above: 4 KiB reads of random offsets of the payload
/// through `Source::read_vectored_at` (the sync engine's path), from the
/// page cache, with and without the lazy gate (every chunk checked
/// first).
fn in_process(image: &std::path::Path) -> anyhow::Result<()> {
    use layout::oci::{Image, OpenOptions};
    let open = |lazy| -> anyhow::Result<layout::Content> {
        let img = Image::open(
            image,
            &OpenOptions {
                lazy,
                ..OpenOptions::default()
            },
        )?;
        Ok(img.payload("system")?.content.clone())
    };
    let (plain, gated) = (open(false)?, open(true)?);
    let len = plain.len;
    let mut buf = vec![0u8; 4096];
    // Check every chunk once (and warm the page cache).
    for off in (0..len).step_by(MIB as usize) {
        gated
            .source
            .read_vectored_at(off, &mut [IoBufMut::new(&mut buf)])?;
    }
    let n = 2_000_000u64;
    let mut ns = Vec::new();
    for _ in 0..5 {
        for (name, c) in [("none", &plain), ("lazy", &gated)] {
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let began = Instant::now();
            for _ in 0..n {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let off = rng % (len / 4096) * 4096;
                c.source
                    .read_vectored_at(off, &mut [IoBufMut::new(&mut buf)])?;
            }
            ns.push((name, began.elapsed().as_nanos() as f64 / n as f64));
        }
    }
    let median = |mode: &str| {
        let mut x: Vec<f64> = ns.iter().filter(|(m, _)| *m == mode).map(|p| p.1).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    // The gate alone: what every read of a checked chunk adds.
    let layout::Source::File { file, .. } = &gated.source else {
        anyhow::bail!("the payload is not a file");
    };
    let calls = 20_000_000u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let began = Instant::now();
    for _ in 0..calls {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        file.ensure(std::hint::black_box(rng % (len / 4096) * 4096), 4096)?;
    }
    let gate_ns = began.elapsed().as_nanos() as f64 / calls as f64;
    println!("| in process: the gate alone, per 4 KiB read of a checked chunk (ns) | – | {gate_ns:.1} | – |");
    let (a, b) = (median("none"), median("lazy"));
    println!(
        "| in process: 4 KiB random pread through the source (ns/read) | {a:.0} | {b:.0} | {:.3} |",
        b / a
    );
    Ok(())
}
