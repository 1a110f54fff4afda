//! `ocidisk serve|inspect|export --image docker://…` end to end: the real
//! binary against Debian's `docker-registry` on loopback (images pushed
//! with skopeo), read by libblkio over the real vhost-user socket, with the
//! fault proxy between ocidisk and the registry where a test needs to see
//! or disturb the requests.
//!
//! Runs the `ocidisk` binary (built by `ocidisk_tests::cli::ocidisk_binary`).

use super::small_disk::{push, s, Pushed, MIB, SYSTEM, SYSTEM_PART};
use layout::chunkcache::{BlobSpec, ChunkCache, ChunkCacheError, ChunkCacheSettings, ChunkHashes};
use layout::monogon::Config;
use ocidisk_tests::blkio_client::{BlkioClient, Server};
use ocidisk_tests::cli::CommandExt as _;
use ocidisk_tests::oci_writer::BuiltImage;
use ocidisk_tests::registry::proxy::{Fault, Proxy};
use ocidisk_tests::registry::Registry;
use registry::{Client, ClientOptions, Digest, ImageRef, RemoteBlob};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

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
        } = push(7);
        Fixture {
            dir,
            reg,
            img,
            layout,
        }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn remote(&self, addr: &str) -> String {
        format!("docker://{addr}/os/node:v1")
    }

    fn args(&self, image: &str, cache: &Path, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--image".into(),
            image.into(),
            "--layout".into(),
            s(&self.layout).into(),
            "--cache".into(),
            s(cache).into(),
            "--readonly".into(),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    }

    fn serve(
        &self,
        name: &str,
        image: &str,
        cache: &Path,
        extra: &[&str],
    ) -> (Server, BlkioClient) {
        let socket = self.dir.path().join(format!("{name}.sock"));
        let server = Server::start(&socket, &self.args(image, cache, extra)).unwrap();
        let client = BlkioClient::connect_read_only(&socket, 1, 4 << 20).unwrap();
        (server, client)
    }

    /// The `system` payload's bytes as pushed.
    fn system(&self) -> Vec<u8> {
        let digest = &self.img.layer("system").blob.digest;
        std::fs::read(self.img.dir.join("blobs/sha256").join(&digest[7..])).unwrap()
    }
}

fn read_all(client: &mut BlkioClient) -> Vec<u8> {
    let cap = client.capacity();
    let q = client.queue();
    let mut out = Vec::with_capacity(cap as usize);
    let mut off = 0;
    while off < cap {
        let len = (cap - off).min(4 << 20) as usize;
        out.extend(
            q.read(off, len)
                .unwrap_or_else(|e| panic!("read at {off}: {e}")),
        );
        off += len as u64;
    }
    out
}

/// Range requests for blobs the proxy forwarded: the layers' chunks (the
/// manifest and the config are fetched whole on every start, without one).
fn blob_requests(proxy: &Proxy) -> usize {
    proxy
        .seen()
        .iter()
        .filter(|r| r.target.contains("/blobs/") && r.range.is_some())
        .count()
}

/// The registry client as the chunk cache's fetcher: a payload's chunks
/// arrive checked against their hashes; a missing blob fails at once
/// (permanent), a dropped connection only after the cache's attempts, the
/// later ones refused at once while the registry rests.
#[test]
fn remote_blob_fills_the_chunk_cache() {
    let f = Fixture::new();
    let proxy = Proxy::start(&f.reg.addr).unwrap();
    let client = Arc::new(Client::new(ClientOptions::default().for_chunk_cache()).unwrap());
    let ImageRef::Registry(r) = ImageRef::parse(&f.remote(&proxy.addr)).unwrap() else {
        panic!("a registry reference");
    };
    let resolved = client.resolve(&r, None).unwrap();
    let config = Config::parse(&resolved.config, "config").unwrap();
    let payload = config.payloads.iter().find(|p| p.name == "system").unwrap();
    let digest = f.img.layer("system").blob.digest.clone();
    let settings = ChunkCacheSettings {
        max_attempts: 2,
        retry_delay: Duration::from_millis(10),
        ..ChunkCacheSettings::default()
    };
    let cache = ChunkCache::new(f.cache(), settings);
    let spec = |digest: &str| BlobSpec {
        digest: digest.to_owned(),
        size: SYSTEM as u64,
        chunk_hashes: Some(ChunkHashes {
            chunk_size: payload.hash_chunk_size,
            hashes: payload.chunk_hashes.clone().into(),
        }),
        name: "payload \"system\"".into(),
    };
    let remote = RemoteBlob::new(
        Arc::clone(&client),
        &resolved.reference,
        Digest::parse(&digest).unwrap(),
        SYSTEM as u64,
    );
    let blob = cache.open_blob(spec(&digest), Arc::new(remote)).unwrap();
    let file = blob.blob_file().unwrap();
    let want = f.system();
    file.ensure(3 * MIB, 2 * MIB).unwrap();
    let mut got = vec![0u8; 2 * MIB as usize];
    std::os::unix::fs::FileExt::read_exact_at(file.file(), &mut got, 3 * MIB).unwrap();
    assert!(got == want[3 * MIB as usize..5 * MIB as usize]);
    assert_eq!(blob.status().verified, 2);
    assert_eq!(cache.counters().totals().fetches, 2);

    // Connections dropped: the first cache attempt asks the registry (the
    // client retries once) and finds it unreachable; the second fails at
    // once, naming blob, range and the outage, as does a fetch of another
    // chunk meanwhile.
    proxy.add("/blobs/", Fault::Drop, None);
    proxy.forget();
    let e = blob.ensure_range(8 * MIB, 1).unwrap_err();
    assert!(
        matches!(e, ChunkCacheError::Fetch { attempts: 2, offset, .. } if offset == 8 * MIB),
        "{e}"
    );
    assert_eq!(blob_requests(&proxy), 2, "1 cache attempt × (1 + 1 retry)");
    let text = blockio::error_chain(&e).to_string();
    assert!(
        text.contains("unreachable since 20") && text.contains(&digest),
        "{text}"
    );
    let e = blob.ensure_range(9 * MIB, 1).unwrap_err();
    assert!(
        matches!(e, ChunkCacheError::Fetch { attempts: 1, .. }),
        "{e}"
    );
    assert_eq!(blob_requests(&proxy), 2, "no request while it rests");
    proxy.clear();

    // A blob the registry does not have: permanent, one attempt (a client
    // of its own: the one above rests from the registry for a while).
    let client = Arc::new(Client::new(ClientOptions::default().for_chunk_cache()).unwrap());
    let missing = format!("sha256:{}", "ab".repeat(32));
    let remote = RemoteBlob::new(
        Arc::clone(&client),
        &resolved.reference,
        Digest::parse(&missing).unwrap(),
        SYSTEM as u64,
    );
    let blob = cache.open_blob(spec(&missing), Arc::new(remote)).unwrap();
    let e = blob.ensure_range(0, 1).unwrap_err();
    assert!(
        matches!(e, ChunkCacheError::Fetch { attempts: 1, .. }),
        "{e}"
    );
    assert!(blockio::error_chain(&e).to_string().contains("404"), "{e}");
}

/// Serving from the registry with an empty cache gives the same disk,
/// byte for byte, as serving the local layout; `inspect --json` says the
/// same; a second server on the same cache fetches no blob bytes.
#[test]
fn serve_from_a_registry_matches_the_local_layout() {
    let f = Fixture::new();
    let proxy = Proxy::start(&f.reg.addr).unwrap();
    let remote = f.remote(&proxy.addr);
    let local_cache = f.dir.path().join("local-cache");

    let (server, mut client) = f.serve("local", s(&f.img.dir), &local_cache, &[]);
    let local = read_all(&mut client);
    drop(client);
    assert!(server.terminate().unwrap().success());

    let (server, mut client) = f.serve("remote", &remote, &f.cache(), &[]);
    let served = read_all(&mut client);
    assert!(
        served == local,
        "the registry image's disk differs from the local one"
    );
    assert_eq!(
        served[SYSTEM_PART as usize..SYSTEM_PART as usize + SYSTEM],
        f.system()[..]
    );
    drop(client);
    assert!(server.terminate().unwrap().success());
    let fetched = blob_requests(&proxy);
    assert!(
        fetched >= 13,
        "{fetched} blob requests for 13 chunks and a kernel"
    );

    // A second server on the same cache: the manifest and config, but no
    // layer bytes.
    proxy.forget();
    let (server, mut client) = f.serve("second", &remote, &f.cache(), &[]);
    assert!(read_all(&mut client) == local);
    drop(client);
    assert!(server.terminate().unwrap().success());
    assert_eq!(blob_requests(&proxy), 0, "{:#?}", proxy.seen());

    // The monogon preset's disk, described the same from both places.
    let inspect = |image: &str, cache: &Path| -> serde_json::Value {
        let args: Vec<String> = [
            "inspect",
            "--image",
            image,
            "--cache",
            s(cache),
            "--json",
            "--disk-id",
            "n1",
        ]
        .map(String::from)
        .to_vec();
        ocidisk_tests::cli::ocidisk().args(&args).run_json()
    };
    let empty = f.dir.path().join("empty-cache");
    assert_eq!(
        inspect(&remote, &empty),
        inspect(&format!("oci:{}:v1", s(&f.img.dir)), &local_cache)
    );
}

/// A chunk stored wrong in the registry: the guest gets EIO for its range
/// and never its bytes, the rest of the disk reads right, the log names
/// the payload and the offset. Then the registry goes away: what is cached
/// keeps being served, the rest fails with EIO after bounded retries.
#[test]
fn a_bad_chunk_and_a_lost_registry_fail_only_what_they_must() {
    let f = Fixture::new();
    let bad_chunk = 5u64;
    let digest = f.img.layer("system").blob.digest.clone();
    let stored = f.reg.blob_path(&digest).unwrap();
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[(bad_chunk * MIB + 100) as usize] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let good = f.system();

    let proxy = Proxy::start(&f.reg.addr).unwrap();
    let (server, mut client) = f.serve(
        "bad",
        &f.remote(&proxy.addr),
        &f.cache(),
        &["--registry-retries", "1"],
    );
    let q = client.queue();
    let bad = SYSTEM_PART + bad_chunk * MIB..SYSTEM_PART + (bad_chunk + 1) * MIB;
    for off in [
        SYSTEM_PART,
        SYSTEM_PART + 3 * MIB,
        bad.start - 4096,
        bad.end,
    ] {
        let got = q
            .read(off, 4096)
            .unwrap_or_else(|e| panic!("read at {off}: {e}"));
        let p = (off - SYSTEM_PART) as usize;
        assert!(got == good[p..p + 4096], "wrong bytes at {off}");
    }
    for (off, len) in [
        (bad.start, 4096usize),
        (bad.end - 512, 512),
        (bad.start - 4096, 8192),
    ] {
        let e = q
            .read(off, len)
            .expect_err("a read of the bad chunk must fail");
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "read at {off}+{len}: {e}"
        );
    }
    let line = format!(
        "fetching bytes {}..{} failed",
        bad_chunk * MIB,
        (bad_chunk + 1) * MIB
    );
    let log = server
        .wait_for_log(&line, 1, Duration::from_secs(5))
        .unwrap_or_else(|log| panic!("no failed-fetch line in the log:\n{log}"));
    let l = log.lines().find(|l| l.contains(&line)).unwrap();
    assert!(
        l.contains("payload \\\"system\\\"") || l.contains("payload \"system\""),
        "{l}"
    );
    assert!(l.contains("does not match its chunk hash"), "{l}");

    // The registry is gone (every connection dropped): cached chunks are
    // still served, an uncached one fails after the bounded attempts.
    proxy.add("/", Fault::Drop, None);
    let got = q.read(SYSTEM_PART + 3 * MIB, 4096).unwrap();
    assert!(got == good[3 * MIB as usize..3 * MIB as usize + 4096]);
    let e = q
        .read(SYSTEM_PART + 9 * MIB, 4096)
        .expect_err("uncached, registry gone");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let off = 9 * MIB;
    server
        .wait_for_log(
            &format!(
                "fetching bytes {off}..{} failed after 2 attempt(s)",
                off + MIB
            ),
            1,
            Duration::from_secs(5),
        )
        .unwrap_or_else(|log| panic!("no failed-fetch line for the lost registry:\n{log}"));
    drop(client);
    assert!(server.terminate().unwrap().success());
}

/// `GET url` with curl; the body.
fn get(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", url])
        .output()
        .expect("curl (installed by .ci/install-deps)");
    assert!(out.status.success(), "curl {url}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the one sample of `name` in a scrape.
fn value(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{scrape}"))
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no value"))
}

/// `/metrics` of a disk served from a registry counts the chunks fetched,
/// their bytes, retries, failures, fetch time and cache hits, and
/// `promtool check metrics` accepts it.
#[test]
fn metrics_count_registry_fetches_and_cache_hits() {
    let f = Fixture::new();
    let proxy = Proxy::start(&f.reg.addr).unwrap();
    let port = ocidisk_tests::registry::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let remote = f.remote(&proxy.addr);
    // Readahead off: the counts below are of the reads' own fetches.
    let extra = [
        "--metrics",
        addr.as_str(),
        "--registry-retries",
        "1",
        "--registry-readahead",
        "0",
    ];
    let (server, mut client) = f.serve("metrics", &remote, &f.cache(), &extra);
    let q = client.queue();
    // Chunks 0..=2 of `system`, one of them with a failed first attempt.
    proxy.add("/blobs/", Fault::Status(503), Some(1));
    q.read(SYSTEM_PART, 3 * MIB as usize).unwrap();
    q.read(SYSTEM_PART + MIB, 4096).unwrap();
    let scrape = get(&format!("http://{addr}/metrics"));
    assert_eq!(value(&scrape, "ocidisk_registry_chunk_fetches_total"), 3.0);
    assert_eq!(
        value(&scrape, "ocidisk_registry_chunk_fetch_bytes_total"),
        (3 * MIB) as f64
    );
    // Pieces of the 3 MiB read run on helper threads at once: each that
    // finds its chunk missing counts a miss, though one fetch fills it.
    assert!(value(&scrape, "ocidisk_registry_cache_misses_total") >= 3.0);
    assert!(value(&scrape, "ocidisk_registry_chunk_fetch_seconds_total") > 0.0);
    // The 503 is retried by the client (one retry), not the cache.
    assert_eq!(
        value(&scrape, "ocidisk_registry_request_retries_total"),
        1.0
    );
    assert!(value(&scrape, "ocidisk_registry_received_bytes_total") >= (3 * MIB) as f64);
    assert_eq!(
        value(&scrape, "ocidisk_registry_chunk_fetch_failures_total"),
        0.0
    );

    // A lost registry: one chunk fails after two cache attempts, the
    // second refused without a request (the registry is resting).
    proxy.add("/blobs/", Fault::Drop, None);
    q.read(SYSTEM_PART + 8 * MIB, 4096)
        .expect_err("registry gone");
    let scrape = get(&format!("http://{addr}/metrics"));
    assert_eq!(
        value(&scrape, "ocidisk_registry_chunk_fetch_failures_total"),
        1.0
    );
    assert_eq!(
        value(&scrape, "ocidisk_registry_chunk_fetch_retries_total"),
        1.0
    );
    assert_eq!(
        value(&scrape, "ocidisk_registry_request_failures_total"),
        1.0
    );
    drop(client);
    assert!(server.terminate().unwrap().success());

    // A second server finds the three chunks in the cache: hits, no fetch.
    proxy.clear();
    let (server, mut client) = f.serve("metrics2", &remote, &f.cache(), &extra);
    client.queue().read(SYSTEM_PART, 3 * MIB as usize).unwrap();
    let scrape = get(&format!("http://{addr}/metrics"));
    assert_eq!(value(&scrape, "ocidisk_registry_cache_hits_total"), 3.0);
    assert_eq!(value(&scrape, "ocidisk_registry_chunk_fetches_total"), 0.0);

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (installed by .ci/install-deps)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), scrape.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(client);
    assert!(server.terminate().unwrap().success());
}

/// A zstd image from the registry: its layers are fetched whole into the
/// chunk cache (digest-checked), decompressed once, and `export` writes the
/// same disk as from the local layout; `--verify=full` from the registry
/// works too.
#[test]
fn zstd_images_and_export_from_a_registry() {
    use ocidisk_tests::oci_writer::{efi_image, ImageBuilder, OsImage, Payload};
    let f = Fixture::new();
    let system: Vec<u8> = (0..SYSTEM as u32).map(|i| (i % 251) as u8).collect();
    let img = ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("kernel.efi", efi_image(64 * 1024)).zstd())
            .payload(Payload::new("system", system).zstd()),
    )
    .write(&f.dir.path().join("zsrc"))
    .unwrap();
    f.reg.push(&img.dir, None, "os/z:v1").unwrap();
    let remote = format!("docker://{}/os/z:v1", f.reg.addr);
    let export = |image: &str, cache: &Path, out: &str, extra: &[&str]| -> Vec<u8> {
        let out = f.dir.path().join(out);
        let mut args = vec!["export".to_owned()];
        args.extend(
            f.args(image, cache, extra)
                .into_iter()
                .filter(|a| a != "--readonly"),
        );
        args.extend(["--output".into(), s(&out).into()]);
        ocidisk_tests::cli::ocidisk().args(&args).run_ok();
        std::fs::read(out).unwrap()
    };
    let local = export(
        s(&img.dir),
        &f.dir.path().join("local-cache"),
        "local.raw",
        &[],
    );
    let from_registry = export(&remote, &f.cache(), "remote.raw", &[]);
    assert!(
        from_registry == local,
        "the zstd image exports differently from the registry"
    );
    // The compressed blobs are in the chunk cache, complete.
    for layer in ["kernel.efi", "system"] {
        let digest = &img.layer(layer).blob.digest;
        let cached = f.cache().join("chunks/sha256").join(&digest[7..]);
        let stored = std::fs::read(img.dir.join("blobs/sha256").join(&digest[7..])).unwrap();
        assert!(std::fs::read(&cached).unwrap() == stored, "{layer}");
    }
    let full = export(
        &remote,
        &f.dir.path().join("cache2"),
        "full.raw",
        &["--verify=full"],
    );
    assert!(full == local);
}

/// `ocidisk pull REF` without `--output` fills the chunk cache: a server
/// started afterwards on it fetches no layer bytes, a second pull fetches
/// nothing.
#[test]
fn pull_fills_the_chunk_cache() {
    let f = Fixture::new();
    let proxy = Proxy::start(&f.reg.addr).unwrap();
    let remote = f.remote(&proxy.addr);
    let pull = || -> String {
        let args: Vec<String> = ["pull", remote.as_str(), "--cache", s(&f.cache())]
            .map(String::from)
            .to_vec();
        ocidisk_tests::cli::ocidisk().args(&args).run_ok().stdout
    };
    let said = pull();
    // 13 chunks of `system`, 1 of `kernel.efi`.
    assert!(said.contains("14 chunks fetched"), "{said}");
    assert!(said.contains(f.img.manifest_digest()), "{said}");
    assert_eq!(blob_requests(&proxy), 14);
    let said = pull();
    assert!(
        said.contains("0 chunks fetched (0 bytes), 14 already cached"),
        "{said}"
    );

    proxy.forget();
    let (server, mut client) = f.serve("pulled", &remote, &f.cache(), &[]);
    let disk = read_all(&mut client);
    assert!(disk[SYSTEM_PART as usize..SYSTEM_PART as usize + SYSTEM] == f.system()[..]);
    drop(client);
    assert!(server.terminate().unwrap().success());
    assert_eq!(blob_requests(&proxy), 0);
}

/// Faults a registry recovers from never reach the guest: a token that
/// expires while serving is renewed (with `--creds`), a body cut short and
/// a slow answer are fetched again or waited for; the bytes are right.
#[test]
fn recoverable_faults_while_serving_give_the_right_bytes() {
    let f = Fixture::new();
    let proxy = Proxy::start_bearer(&f.reg.addr, Some("user:secret")).unwrap();
    let (server, mut client) = f.serve(
        "bearer",
        &f.remote(&proxy.addr),
        &f.cache(),
        &["--creds", "user:secret", "--registry-timeout", "5"],
    );
    let good = f.system();
    let q = client.queue();
    let mut check = |chunk: u64| {
        let off = SYSTEM_PART + chunk * MIB + 512;
        let got = q
            .read(off, 8192)
            .unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        let p = (chunk * MIB + 512) as usize;
        assert!(got == good[p..p + 8192], "wrong bytes in chunk {chunk}");
    };
    check(0);
    let issued = proxy.tokens_issued();
    proxy.expire_tokens();
    check(1);
    assert!(
        proxy.tokens_issued() > issued,
        "the expired token was not renewed"
    );
    proxy.add("/blobs/", Fault::Truncate(1000), Some(1));
    check(2);
    proxy.add(
        "/blobs/",
        Fault::Delay(Duration::from_millis(1500)),
        Some(1),
    );
    check(3);
    drop(client);
    assert!(server.terminate().unwrap().success());
}

/// Ten servers started together on one empty cache, all reading the same
/// chunks at once: each chunk crosses the network once.
#[test]
fn ten_servers_on_one_cache_fetch_each_chunk_once() {
    let f = Fixture::new();
    let proxy = Proxy::start(&f.reg.addr).unwrap();
    let remote = f.remote(&proxy.addr);
    let servers: Vec<(Server, BlkioClient)> = (0..10)
        // Readahead off: exactly the chunks read are fetched (a server
        // that exits mid-readahead leaves its chunk to the next one).
        .map(|i| {
            f.serve(
                &format!("n{i}"),
                &remote,
                &f.cache(),
                &["--registry-readahead", "0"],
            )
        })
        .collect();
    let good = f.system();
    std::thread::scope(|scope| {
        let handles: Vec<_> = servers
            .into_iter()
            .map(|(server, mut client)| {
                let good = &good;
                scope.spawn(move || {
                    let got = client
                        .queue()
                        .read(SYSTEM_PART, 4 * MIB as usize)
                        .expect("read of chunks 0..4");
                    assert!(got == good[..4 * MIB as usize]);
                    drop(client);
                    assert!(server.terminate().unwrap().success());
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    let ranges: Vec<String> = proxy
        .seen()
        .iter()
        .filter(|r| r.target.contains("/blobs/"))
        .filter_map(|r| r.range.clone())
        .collect();
    assert_eq!(ranges.len(), 4, "one request per chunk: {ranges:?}");
}

/// kill -9 of a server while it fetches a chunk (the registry is slow to
/// answer): a restart on the same cache serves what was fetched before
/// without asking the registry again, and fetches the interrupted chunk
/// afresh, with the right bytes.
#[test]
fn a_server_killed_mid_fetch_resumes_without_refetching() {
    let f = Fixture::new();
    let proxy = Proxy::start(&f.reg.addr).unwrap();
    let remote = f.remote(&proxy.addr);
    let good = f.system();
    // Readahead off: the only fetch after the first read is the one the
    // kill interrupts.
    let no_ra = ["--registry-readahead", "0"];
    let (server, mut client) = f.serve("first", &remote, &f.cache(), &no_ra);
    let got = client.queue().read(SYSTEM_PART, 3 * MIB as usize).unwrap();
    assert!(got == good[..3 * MIB as usize]);

    proxy.add("/blobs/", Fault::Delay(Duration::from_secs(5)), Some(1));
    // Its read fails once the server is killed under it, but libblkio
    // notices only after its own 20 s timeout: the thread is left to end
    // with the test process.
    std::thread::spawn(move || {
        let _ = client.queue().read(SYSTEM_PART + 5 * MIB, 4096);
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !proxy.seen().iter().any(|r| {
        r.fault
            .as_ref()
            .is_some_and(|f| matches!(f, Fault::Delay(_)))
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the chunk fetch never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill().unwrap();
    proxy.clear();
    proxy.forget();

    let (server, mut client) = f.serve("second", &remote, &f.cache(), &no_ra);
    let q = client.queue();
    let got = q.read(SYSTEM_PART, 3 * MIB as usize).unwrap();
    assert!(got == good[..3 * MIB as usize]);
    let got = q.read(SYSTEM_PART + 5 * MIB, 4096).unwrap();
    assert!(got == good[5 * MIB as usize..5 * MIB as usize + 4096]);
    let ranges: Vec<String> = proxy
        .seen()
        .iter()
        .filter(|r| r.target.contains("/blobs/"))
        .filter_map(|r| r.range.clone())
        .collect();
    assert_eq!(
        ranges,
        [format!("bytes={}-{}", 5 * MIB, 6 * MIB - 1)],
        "only the interrupted chunk is fetched again"
    );
    drop(client);
    assert!(server.terminate().unwrap().success());
}

/// The chunk record truncated under a running server (by a user, a
/// repair): the server does not die of SIGBUS; the chunks it had read keep
/// reading right, new ones give the guest EIO and the log names the record.
#[test]
fn a_record_truncated_under_a_running_server_fails_only_new_chunks() {
    let f = Fixture::new();
    let (mut server, mut client) = f.serve("trunc", &f.remote(&f.reg.addr), &f.cache(), &[]);
    let good = f.system();
    let q = client.queue();
    let got = q.read(SYSTEM_PART, 2 * MIB as usize).unwrap();
    assert!(got == good[..2 * MIB as usize]);

    let digest = &f.img.layer("system").blob.digest;
    let records: Vec<PathBuf> = std::fs::read_dir(f.cache().join("chunks/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(&digest[7..]) && name.ends_with(".chunks")
        })
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&records[0])
        .unwrap()
        .set_len(0)
        .unwrap();

    let got = q.read(SYSTEM_PART + 4096, 4096).unwrap();
    assert!(got == good[4096..8192]);
    let e = q
        .read(SYSTEM_PART + 6 * MIB, 4096)
        .expect_err("a new chunk of a truncated record");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let name = records[0].display().to_string();
    server
        .wait_for_log(&name, 1, Duration::from_secs(5))
        .unwrap_or_else(|log| panic!("the log does not name the record:\n{log}"));
    assert!(server.is_running(), "the server survived");
    drop(client);
    assert!(server.terminate().unwrap().success());
}
