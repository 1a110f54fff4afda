//! `ocidisk pull --prefetch TRACE` end to end: a server records a trace
//! while libblkio reads a scattered set of ranges from an empty cache; a
//! pull with that trace into a second empty cache, through the fault proxy
//! (which records every request's target and Range), fetches exactly the
//! chunks that run read, in the order it first read them; a server on that
//! cache then serves the same reads without fetching a chunk. A trace of
//! another disk, or a file that is no trace, is refused with a clear error.
//! And what helps a first boot while serving: readahead of a sequential
//! walk, which random reads never trigger.
//!
//! Needs the `ocidisk` binary: `cargo build -p ocidisk` first.

use super::small_disk::{push, s, Pushed, LAYOUT, MIB, SYSTEM_PART};
use ocidisk_tests::blkio_client::{ocidisk_binary, BlkioClient, Server};
use ocidisk_tests::oci_writer::BuiltImage;
use ocidisk_tests::registry::proxy::Proxy;
use ocidisk_tests::registry::Registry;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The reads, in order: (disk offset, length) and the `system` chunks
/// each first touches. GPT and the zero fill past the payload's end touch
/// none; a repeated chunk is not fetched twice.
const READS: &[(u64, usize, &[u64])] = &[
    (0, 4096, &[]),
    (SYSTEM_PART + 5 * MIB + 512, 4096, &[5]),
    (SYSTEM_PART + MIB - 2048, 4096, &[0, 1]),
    (SYSTEM_PART + 9 * MIB, 65536, &[9]),
    (SYSTEM_PART + 5 * MIB + 8192, 4096, &[]),
    (SYSTEM_PART + 12 * MIB + 512, 3584, &[12]),
    (SYSTEM_PART + 14 * MIB, 4096, &[]),
    (SYSTEM_PART + 3 * MIB, 8192, &[3]),
];

struct Fixture {
    dir: tempfile::TempDir,
    reg: Registry,
    img: BuiltImage,
    layout: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let Pushed {
            dir,
            reg,
            img,
            layout,
        } = push(11);
        Fixture {
            dir,
            reg,
            img,
            layout,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Serves the image through `addr` on `cache`, reads [`READS`], and
    /// stops; returns what each read gave.
    fn serve_and_read(&self, name: &str, addr: &str, cache: &Path, extra: &[&str]) -> Vec<Vec<u8>> {
        let socket = self.path(&format!("{name}.sock"));
        let image = format!("docker://{addr}/os/node:v1");
        let mut args = vec![
            "--image",
            &image,
            "--layout",
            s(&self.layout),
            "--cache",
            s(cache),
            "--readonly",
            "--serial",
            "node-1",
        ];
        args.extend_from_slice(extra);
        let server = Server::start(&socket, &args).unwrap();
        let mut client = BlkioClient::connect_read_only(&socket, 1, 1 << 20).unwrap();
        let got = READS
            .iter()
            .map(|&(off, len, _)| {
                client
                    .queue()
                    .read(off, len)
                    .unwrap_or_else(|e| panic!("read at {off}: {e}"))
            })
            .collect();
        drop(client);
        let status = server.terminate().unwrap();
        assert!(status.success(), "{status:?}");
        got
    }

    /// The byte offsets of the `system` blob's chunks the proxy was asked
    /// for with a Range, in order.
    fn system_chunk_requests(&self, proxy: &Proxy) -> Vec<u64> {
        let system = &self.img.layer("system").blob.digest;
        let mut out = Vec::new();
        for r in proxy.seen() {
            if !r.target.contains("/blobs/") {
                continue;
            }
            let Some(range) = &r.range else { continue };
            assert!(
                r.target.contains(system.as_str()),
                "only the system payload is read: {} {range}",
                r.target
            );
            let start: u64 = range
                .strip_prefix("bytes=")
                .and_then(|x| x.split('-').next())
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("Range {range:?}"));
            out.push(start / MIB);
        }
        out
    }

    fn pull(&self, addr: &str, cache: &Path, trace: &Path, extra: &[&str]) -> Output {
        let image = format!("docker://{addr}/os/node:v1");
        let mut args = vec![
            "pull",
            &image,
            "--cache",
            s(cache),
            "--prefetch",
            s(trace),
            "--layout",
            s(&self.layout),
        ];
        args.extend_from_slice(extra);
        Command::new(ocidisk_binary().expect("cargo build -p ocidisk"))
            .args(&args)
            .output()
            .unwrap()
    }
}

fn expected_chunks() -> Vec<u64> {
    READS.iter().flat_map(|r| r.2.iter().copied()).collect()
}

#[test]
fn prefetch_fetches_what_a_traced_run_read_in_its_order() {
    let f = Fixture::new();
    let trace = f.path("boot.trace");

    // The recorded run, from an empty cache, through a proxy of its own
    // so that its fetches can be compared with the prefetch's.
    let first = Proxy::start(&f.reg.addr).unwrap();
    let cold = f.serve_and_read(
        "cold",
        &first.addr,
        &f.path("cache1"),
        &["--trace", s(&trace)],
    );
    assert_eq!(f.system_chunk_requests(&first), expected_chunks());

    // Prefetch into a second empty cache, one chunk at a time: exactly
    // those chunks, in first-read order.
    let proxy = Proxy::start(&f.reg.addr).unwrap();
    let cache = f.path("cache2");
    let out = f.pull(&proxy.addr, &cache, &trace, &["--jobs", "1"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(f.system_chunk_requests(&proxy), expected_chunks());
    let n = expected_chunks().len();
    assert!(
        said.contains(&format!("{n} chunks: {n} fetched")) && said.contains("0 already cached"),
        "{said}"
    );
    assert!(said.contains("\"node-1\""), "names the traced disk: {said}");

    // Again, with chunks in flight: nothing left to fetch.
    proxy.forget();
    let out = f.pull(&proxy.addr, &cache, &trace, &[]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        said.contains(&format!("0 fetched (0 bytes), {n} already cached")),
        "{said}"
    );
    assert!(f.system_chunk_requests(&proxy).is_empty());

    // A server on the prefetched cache reads the same bytes, fetching no
    // chunk.
    proxy.forget();
    let warm = f.serve_and_read("warm", &proxy.addr, &cache, &[]);
    assert_eq!(warm, cold);
    assert_eq!(f.system_chunk_requests(&proxy), Vec::<u64>::new());
}

#[test]
fn prefetch_with_several_jobs_fetches_the_same_chunks() {
    let f = Fixture::new();
    let trace = f.path("boot.trace");
    f.serve_and_read(
        "cold",
        &f.reg.addr,
        &f.path("cache1"),
        &["--trace", s(&trace)],
    );
    let proxy = Proxy::start(&f.reg.addr).unwrap();
    let out = f.pull(&proxy.addr, &f.path("cache2"), &trace, &["--jobs", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got = f.system_chunk_requests(&proxy);
    got.sort_unstable();
    let mut want = expected_chunks();
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn a_trace_of_another_disk_or_no_trace_is_refused() {
    let f = Fixture::new();
    let trace = f.path("boot.trace");
    f.serve_and_read(
        "cold",
        &f.reg.addr,
        &f.path("cache1"),
        &["--trace", s(&trace)],
    );
    let cache = f.path("cache2");

    // Another size.
    let out = f.pull(&f.reg.addr, &cache, &trace, &["--disk-size", "30MiB"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(s(&trace))
            && err.contains(&(20 * MIB).to_string())
            && err.contains(&(30 * MIB).to_string()),
        "{err}"
    );

    // Same size, another partition table.
    let other = f.path("other.toml");
    std::fs::write(&other, LAYOUT.replace("size = \"1MiB\"", "size = \"2MiB\"")).unwrap();
    let image = format!("docker://{}/os/node:v1", f.reg.addr);
    let out = Command::new(ocidisk_binary().unwrap())
        .args([
            "pull",
            &image,
            "--cache",
            s(&cache),
            "--prefetch",
            s(&trace),
            "--layout",
            s(&other),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is of another disk") && err.contains("\"kernel\""),
        "{err}"
    );

    // Not a trace; no such file.
    let out = f.pull(&f.reg.addr, &cache, &f.layout, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(s(&f.layout)) && err.contains("not an ocidisk trace"),
        "{err}"
    );
    let missing = f.path("missing.trace");
    let out = f.pull(&f.reg.addr, &cache, &missing, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(s(&missing)), "{err}");
}

/// Serving: a sequential walk over a registry blob's chunks has the next
/// ones (`--registry-readahead`, 4 by default) fetched before it reads
/// them; random reads fetch exactly the chunks they read.
#[test]
fn serve_reads_ahead_of_a_sequential_walk_and_never_of_random_reads() {
    let f = Fixture::new();
    let proxy = Proxy::start(&f.reg.addr).unwrap();
    let image = format!("docker://{}/os/node:v1", proxy.addr);
    let serve = |name: &str, cache: &Path| {
        let socket = f.path(&format!("{name}.sock"));
        let args = [
            "--image",
            &image,
            "--layout",
            s(&f.layout),
            "--cache",
            s(cache),
            "--readonly",
        ];
        let server = Server::start(&socket, &args).unwrap();
        let client = BlkioClient::connect_read_only(&socket, 1, 1 << 20).unwrap();
        (server, client)
    };
    let fetched = |proxy: &Proxy| {
        let mut c = f.system_chunk_requests(proxy);
        c.sort_unstable();
        c
    };

    // Chunks 0, 1, 2 read one after the other: 3 to 6 follow unasked.
    let (server, mut client) = serve("seq", &f.path("cache-seq"));
    for c in 0..3 {
        client.queue().read(SYSTEM_PART + c * MIB, 4096).unwrap();
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while fetched(&proxy) != (0..7).collect::<Vec<u64>>() {
        assert!(
            std::time::Instant::now() < until,
            "readahead did not fetch chunks 3..=6: {:?}",
            fetched(&proxy)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // They are served from the cache: no more fetches.
    for c in 3..7 {
        client.queue().read(SYSTEM_PART + c * MIB, 4096).unwrap();
    }
    drop(client);
    assert!(server.terminate().unwrap().success());

    // Random reads on a new cache: exactly the chunks read.
    proxy.forget();
    let (server, mut client) = serve("random", &f.path("cache-random"));
    let order = [9u64, 3, 7, 0, 11, 5, 1, 10];
    for c in order {
        client
            .queue()
            .read(SYSTEM_PART + c * MIB + 8192, 4096)
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut want = order.to_vec();
    want.sort_unstable();
    assert_eq!(fetched(&proxy), want);
    drop(client);
    assert!(server.terminate().unwrap().success());
}
