//! What one `ocidisk serve` costs a cluster launcher: nothing written but
//! the overlay's header and map at launch, and a small resident set while a
//! frontend does I/O (issue 5, "Many nodes from one image").
//!
//! Runs the `ocidisk` binary, brought up to date by
//! `ocidisk_tests::cli::ocidisk_binary`.

use ocidisk_tests::blkio_client::{BlkioClient, Server};
use ocidisk_tests::oci_writer::{
    efi_image, random_bytes, snapshot, ImageBuilder, OsImage, Payload,
};
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// The `monogon` preset's disk.
const DISK_SIZE: u64 = 5 << 30;
/// Where the preset puts METROPOLIS-SYSTEM-A (LBA 264192) and
/// METROPOLIS-NODE-DATA (LBA 4458496).
const SYSTEM_A_OFFSET: u64 = 264_192 * 512;
const DATA_OFFSET: u64 = 4_458_496 * 512;
const SYSTEM_SIZE: usize = 32 << 20;
const KERNEL_SIZE: usize = 8 << 20;
/// The budget for one serving process, page cache excluded.
const RSS_BUDGET: u64 = 16 * MIB;
/// What the overlay of a 5 GiB disk may allocate before any guest write:
/// its header and map, not payload.
const OVERLAY_AT_LAUNCH_BUDGET: u64 = MIB;
const BUF: usize = 1 << 20;

/// The `key: value kB` fields of `/proc/PID/status` (or `smaps_rollup`), in bytes.
fn proc_kib_fields(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let kib = rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
            Some((key.to_owned(), kib * 1024))
        })
        .collect()
}

/// `write_bytes` of `/proc/PID/io`: what the process caused to be written
/// to storage (counted when it dirties the page cache).
fn write_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/io: {e}"));
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no write_bytes in /proc/{pid}/io:\n{io}"))
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("listing {}: {e}", dir.display()),
    };
    names.sort();
    names
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / MIB as f64)
}

#[test]
fn serve_writes_no_payload_at_launch_and_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");
    let cache = dir.path().join("cache");
    let node = dir.path().join("node");
    std::fs::create_dir(&node).unwrap();
    let system = random_bytes(SYSTEM_SIZE, 0x5eed);
    ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("kernel.efi", efi_image(KERNEL_SIZE)))
            .payload(Payload::new("system", system.clone())),
    )
    .write(&image)
    .unwrap();
    let image_before = snapshot(&image).unwrap();
    let overlay = node.join("node.overlay");
    let socket = node.join("node.sock");

    let started = Instant::now();
    let server = Server::start(
        &socket,
        &[
            "--image".as_ref(),
            image.as_os_str(),
            "--layout".as_ref(),
            "monogon".as_ref(),
            "--cache".as_ref(),
            cache.as_os_str(),
            "--overlay".as_ref(),
            overlay.as_os_str(),
            "--num-queues".as_ref(),
            "1".as_ref(),
            "--queue-size".as_ref(),
            "256".as_ref(),
        ],
    )
    .unwrap();
    let start_to_ready = started.elapsed();
    let pid = server.pid().unwrap();

    // Ready: the socket is in place, and it was made without copying payload.
    assert!(
        std::fs::metadata(&socket).unwrap().file_type().is_socket(),
        "{} is not a socket after `ready`",
        socket.display()
    );
    let written_at_launch = write_bytes(pid);
    let meta = std::fs::metadata(&overlay).unwrap();
    let overlay_allocated = meta.blocks() * 512;
    eprintln!(
        "start to ready {:.1} ms; overlay {} allocated of {} apparent; \
         the process wrote {} (write_bytes)",
        start_to_ready.as_secs_f64() * 1e3,
        mib(overlay_allocated),
        mib(meta.len()),
        mib(written_at_launch)
    );
    assert!(
        start_to_ready < Duration::from_secs(10),
        "ocidisk took {start_to_ready:?} to get ready"
    );
    assert!(
        overlay_allocated < OVERLAY_AT_LAUNCH_BUDGET,
        "the new overlay of a 5 GiB disk allocates {} on disk (budget {}): more than header and map",
        mib(overlay_allocated),
        mib(OVERLAY_AT_LAUNCH_BUDGET)
    );
    assert!(
        written_at_launch < OVERLAY_AT_LAUNCH_BUDGET,
        "ocidisk serve wrote {} before any I/O (budget {})",
        mib(written_at_launch),
        mib(OVERLAY_AT_LAUNCH_BUDGET)
    );
    assert_eq!(
        names_in(&node),
        ["node.overlay", "node.sock"],
        "only the overlay and the socket appear in the node's directory"
    );
    assert!(
        names_in(&cache).is_empty(),
        "an uncompressed image needs no cache, yet {} holds {:?}",
        cache.display(),
        names_in(&cache)
    );
    assert_eq!(
        snapshot(&image).unwrap(),
        image_before,
        "the image directory changed"
    );

    // A frontend connects and does I/O on every kind of extent: generated
    // GPT, the system payload, zeros, and writes to the data partition.
    let mut client = BlkioClient::connect(&socket, 1, BUF).unwrap();
    assert_eq!(client.capacity(), DISK_SIZE);
    let q = client.queue();
    let gpt = q.read(512, 512).unwrap();
    assert_eq!(&gpt[..8], b"EFI PART", "LBA 1 is not a GPT header");
    for (i, chunk) in system.chunks(BUF).enumerate() {
        let got = q
            .read(SYSTEM_A_OFFSET + (i * BUF) as u64, chunk.len())
            .unwrap();
        assert!(got == chunk, "system payload differs in MiB {i}");
    }
    let zeros = q.read(SYSTEM_A_OFFSET + SYSTEM_SIZE as u64, BUF).unwrap();
    assert!(zeros.iter().all(|&b| b == 0), "system A after the payload");
    let block = random_bytes(BUF, 7);
    for i in 0..16u64 {
        // Scattered 4 KiB writes, then a 1 MiB one: several map entries.
        let off = DATA_OFFSET + i * 64 * MIB;
        q.write(off, &block[..4096]).unwrap();
    }
    q.write(DATA_OFFSET + 3 * MIB, &block).unwrap();
    q.flush().unwrap();
    assert_eq!(q.read(DATA_OFFSET + 3 * MIB, BUF).unwrap(), block);
    assert_eq!(
        q.read(DATA_OFFSET + 15 * 64 * MIB, 4096).unwrap(),
        &block[..4096]
    );

    // The resident set while connected, without the page cache of mapped
    // files: anonymous memory plus shared memory (the frontend's memory the
    // backend touched).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let f = proc_kib_fields(&status);
    let field = |k: &str| {
        *f.get(k)
            .unwrap_or_else(|| panic!("no {k} in /proc/{pid}/status:\n{status}"))
    };
    let (rss, file, anon, shmem) = (
        field("VmRSS"),
        field("RssFile"),
        field("RssAnon"),
        field("RssShmem"),
    );
    let own = rss - file;
    eprintln!(
        "RSS while connected: VmRSS {} − RssFile {} = {} (RssAnon {} + RssShmem {}); VmHWM {}; threads {}",
        mib(rss),
        mib(file),
        mib(own),
        mib(anon),
        mib(shmem),
        mib(field("VmHWM")),
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .unwrap_or("?")
            .trim()
    );
    if own >= RSS_BUDGET {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .unwrap_or_else(|e| format!("(cannot read smaps_rollup: {e})"));
        panic!(
            "ocidisk serve's RSS without file pages is {} (budget {}):\n{status}\n{rollup}",
            mib(own),
            mib(RSS_BUDGET)
        );
    }
    drop(client);
    let exit = server.terminate().unwrap();
    assert!(exit.success(), "ocidisk serve exited with {exit}");
}

#[test]
fn proc_fields_are_parsed_in_bytes() {
    let f = proc_kib_fields("Name:\tocidisk\nVmRSS:\t  5120 kB\nRssFile:\t1024 kB\nThreads:\t3\n");
    assert_eq!(f.get("VmRSS"), Some(&(5 << 20)));
    assert_eq!(f.get("RssFile"), Some(&(1 << 20)));
    assert_eq!(f.len(), 2, "{f:?}");
}
