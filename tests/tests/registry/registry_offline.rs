//! A registry image keeps being served when the registry is gone: the real
//! `ocidisk` binary against Debian's `docker-registry` (and the fault
//! proxy), restarted on a cache filled while the registry was reachable.
//! Also: uncached chunks fail at once while the registry is down, a tag of
//! an index is recorded per platform, prune by age and by size keeps what
//! a live server needs, manifest resolution keeps the user's full retry
//! setting, and an empty payload is served.
//!
//! Needs the `ocidisk` binary: `cargo build -p ocidisk` first.

use super::small_disk::{push, s, Pushed, MIB, SYSTEM, SYSTEM_PART};
use layout::chunkcache::ChunkCacheSettings;
use ocidisk_tests::blkio_client::{ocidisk_binary, BlkioClient, Server};
use ocidisk_tests::oci_writer::BuiltImage;
use ocidisk_tests::registry::proxy::{Fault, Proxy};
use ocidisk_tests::registry::{small_image, Registry};
use registry::ClientOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Fixture {
    dir: tempfile::TempDir,
    reg: Option<Registry>,
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
            reg: Some(reg),
            img,
            layout,
        }
    }

    fn reg(&self) -> &Registry {
        self.reg.as_ref().expect("the registry is running")
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn args(&self, image: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--image".into(),
            image.into(),
            "--layout".into(),
            s(&self.layout).into(),
            "--cache".into(),
            s(&self.cache()).into(),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    }

    fn serve(&self, name: &str, image: &str, extra: &[&str]) -> (Server, BlkioClient) {
        let socket = self.dir.path().join(format!("{name}.sock"));
        let mut args = self.args(image, extra);
        args.push("--readonly".into());
        let server = Server::start(&socket, &args).unwrap();
        let client = BlkioClient::connect_read_only(&socket, 1, 4 << 20).unwrap();
        (server, client)
    }

    /// The disk served from the local layout.
    fn local_disk(&self) -> Vec<u8> {
        let socket = self.dir.path().join("local.sock");
        let cache = self.dir.path().join("local-cache");
        let args = [
            "--image",
            s(&self.img.dir),
            "--layout",
            s(&self.layout),
            "--cache",
            s(&cache),
            "--readonly",
        ];
        let server = Server::start(&socket, &args).unwrap();
        let mut client = BlkioClient::connect_read_only(&socket, 1, 4 << 20).unwrap();
        let disk = read_all(&mut client);
        drop(client);
        assert!(server.terminate().unwrap().success());
        disk
    }

    /// `ocidisk CMD --image IMAGE …` (inspect, export).
    fn run(&self, cmd: &str, image: &str, extra: &[&str]) -> std::process::Output {
        let mut args = vec![cmd.to_owned()];
        args.extend(self.args(image, extra));
        ocidisk(&args)
    }

    fn pull(&self, image: &str) {
        let args: Vec<String> = ["pull", image, "--cache", s(&self.cache())]
            .map(String::from)
            .to_vec();
        let o = ocidisk(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

fn ocidisk(args: &[String]) -> std::process::Output {
    Command::new(ocidisk_binary().expect("cargo build -p ocidisk"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
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

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `inspect --json`'s manifest digest.
fn inspected_digest(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", stderr(o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["manifest_digest"].as_str().unwrap().to_owned()
}

/// The main case: the cache filled by `pull`, the registry stopped, `serve`
/// starts on the same cache, says once that it serves the tag as last
/// resolved (naming the error, the tag, the digest and when), and the whole
/// disk reads as the local layout's. `export` and `inspect` (also by
/// digest) work too; an image never cached fails saying so.
#[test]
fn a_restart_without_the_registry_serves_the_cache() {
    let mut f = Fixture::new();
    let local = f.local_disk();
    let addr = f.reg().addr.clone();
    let image = format!("docker://{addr}/os/node:v1");
    f.pull(&image);
    let digest = f.img.manifest_digest().to_owned();

    // The registry is gone: connections to its port are refused.
    f.reg = None;
    let (server, mut client) = f.serve("offline", &image, &["--registry-retries", "1"]);
    let served = read_all(&mut client);
    assert!(
        served == local,
        "the offline disk differs from the local one"
    );
    let log = server.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("registry unreachable"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning line:\n{log}");
    let w = warnings[0];
    eprintln!("the warning: {w}");
    assert!(w.contains("WARN"), "{w}");
    assert!(w.contains("tag v1"), "{w}");
    assert!(w.contains(&digest), "{w}");
    assert!(w.contains("resolved_at=20"), "{w}");
    assert!(
        w.contains(&addr) && (w.contains("Connection refused") || w.contains("connection refused")),
        "names the registry error: {w}"
    );
    drop(client);
    assert!(server.terminate().unwrap().success());

    let out = f.dir.path().join("offline.raw");
    let o = f.run("export", &image, &["--output", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == local);

    let by_digest = format!("docker://{addr}/os/node@{digest}");
    let o = f.run(
        "inspect",
        &by_digest,
        &["--json", "--registry-retries", "0"],
    );
    assert_eq!(inspected_digest(&o), digest);
    assert!(
        stderr(&o).contains("registry unreachable"),
        "{}",
        stderr(&o)
    );

    let o = f.run(
        "inspect",
        &format!("docker://{addr}/os/other:v1"),
        &["--registry-retries", "0"],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    eprintln!("the error: {e}");
    assert!(
        e.contains(&format!("registry {addr} is unreachable")),
        "{e}"
    );
    assert!(
        e.contains(&format!("nothing is cached for {addr}/os/other:v1")),
        "{e}"
    );
}

/// A cache filled only by what a first server read; the registry then
/// refuses every connection (the proxy drops them): a second server starts,
/// the cached ranges read right and the others give the guest EIO after
/// the bounded attempts.
#[test]
fn a_partly_filled_cache_serves_what_it_holds() {
    let f = Fixture::new();
    let local = f.local_disk();
    let proxy = Proxy::start(&f.reg().addr).unwrap();
    let image = format!("docker://{}/os/node:v1", proxy.addr);
    let cached = SYSTEM_PART..SYSTEM_PART + 3 * MIB;
    {
        // Exactly these chunks cached: no readahead past them.
        let (server, mut client) = f.serve("first", &image, &["--registry-readahead", "0"]);
        let q = client.queue();
        q.read(cached.start, (cached.end - cached.start) as usize)
            .unwrap();
        drop(client);
        assert!(server.terminate().unwrap().success());
    }

    proxy.add("/", Fault::Drop, None);
    let (server, mut client) = f.serve("second", &image, &["--registry-retries", "1"]);
    assert!(server.log().contains("registry unreachable"));
    let q = client.queue();
    // The GPT (generated from the manifest and config) and the cached chunks.
    for (off, len) in [
        (0, 64 * 1024),
        (cached.start, (cached.end - cached.start) as usize),
    ] {
        let got = q
            .read(off, len)
            .unwrap_or_else(|e| panic!("read at {off}: {e}"));
        assert!(
            got == local[off as usize..off as usize + len],
            "wrong bytes at {off}"
        );
    }
    for off in [cached.end, SYSTEM_PART + 9 * MIB] {
        let e = q.read(off, 4096).expect_err("uncached, registry gone");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "read at {off}: {e}");
    }
    drop(client);
    assert!(server.terminate().unwrap().success());
}

/// What one uncached chunk cost a read before the fetcher remembered an
/// outage, with a registry that refuses connections at once: the cache's
/// waits between its `retries + 1` attempts, and in each attempt the
/// chunk client's wait before its own retry (the same settings `serve`
/// builds from `--registry-retries`).
fn chunk_retry_budget(retries: u32) -> Duration {
    let cache = ChunkCacheSettings::default();
    let client = ClientOptions {
        retries,
        ..ClientOptions::default()
    }
    .for_chunk_cache();
    let attempts = retries + 1;
    let mut waits = Duration::ZERO;
    let mut delay = cache.retry_delay;
    for _ in 1..attempts {
        waits += delay;
        delay = (delay * 2).min(cache.max_retry_delay);
    }
    let mut client_waits = Duration::ZERO;
    let mut delay = client.backoff_initial;
    for _ in 0..client.retries {
        client_waits += delay;
        delay = (delay * 2).min(client.backoff_max);
    }
    waits + client_waits * attempts
}

/// The registry dies under a running server: the first uncached chunk
/// finds it unreachable, the next ones fail with EIO at once (not after
/// their retries each), with one warning for the outage; the registry
/// back on its port, reads succeed again once the rest is over, with one
/// line saying so.
#[test]
fn uncached_chunks_fail_fast_while_the_registry_is_down() {
    const RETRIES: u32 = 4;
    const N: u64 = 8;
    let mut f = Fixture::new();
    let addr = f.reg().addr.clone();
    let image = format!("docker://{addr}/os/node:v1");
    let retries = RETRIES.to_string();
    // No readahead: each read fetches its own chunk and nothing else.
    let (server, mut client) = f.serve(
        "outage",
        &image,
        &["--registry-retries", &retries, "--registry-readahead", "0"],
    );
    let q = client.queue();
    let system = f.img.layer("system");
    let digest = system.blob.digest.clone();

    f.reg.as_mut().unwrap().stop();
    let began = Instant::now();
    for k in 0..N {
        let off = SYSTEM_PART + k * MIB;
        let e = q.read(off, 4096).expect_err("uncached, registry gone");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "chunk {k}: {e}");
    }
    let took = began.elapsed();
    let budget = chunk_retry_budget(RETRIES);
    eprintln!("{N} uncached chunks failed in {took:?}; one chunk's retries: {budget:?}");
    // Before, every chunk spent `budget`: N of them N times as much.
    assert!(
        took < 2 * budget,
        "{N} reads took {took:?}; each chunk's retries alone take {budget:?}"
    );
    let log = server.log();
    let outage = format!("registry {addr} is unreachable: chunk fetches");
    assert_eq!(
        log.matches(&outage).count(),
        1,
        "one warning for the outage:\n{log}"
    );
    let down = log
        .lines()
        .find(|l| l.contains(&outage))
        .unwrap_or_default();
    assert!(down.contains("WARN"), "{down}");
    // The first chunk's failure names the blob, the range and since when.
    let first = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains(&format!("fetching bytes 0..{MIB}")))
        .unwrap_or_else(|| panic!("no failure line for chunk 0:\n{log}"));
    assert!(first.contains(&digest), "{first}");
    assert!(
        first.contains(&format!("blob {digest} bytes 0+{MIB}")),
        "{first}"
    );
    assert!(
        first.contains(&format!("registry {addr} unreachable since 20")),
        "{first}"
    );
    // The others failed quietly: one error line, not one per chunk.
    let errors = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("fetching bytes"))
        .count();
    assert!(errors < N as usize / 2, "{errors} error lines:\n{log}");

    // Back on the same port: a read succeeds once a fetch asks again (the
    // rest is at most MAX_REST); the reads before that fail at once.
    f.reg.as_mut().unwrap().start_again().unwrap();
    let deadline = Instant::now() + registry::outage::MAX_REST + Duration::from_secs(30);
    let off = SYSTEM_PART + 5 * MIB;
    let got = loop {
        match q.read(off, 4096) {
            Ok(got) => break got,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                assert!(
                    Instant::now() < deadline,
                    "no read succeeded after the registry came back:\n{}",
                    server.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert!(got == system.data[5 * MIB as usize..5 * MIB as usize + 4096]);
    for k in 0..N {
        let off = SYSTEM_PART + k * MIB;
        let got = q
            .read(off, 4096)
            .unwrap_or_else(|e| panic!("chunk {k}: {e}"));
        let p = (k * MIB) as usize;
        assert!(got == system.data[p..p + 4096], "wrong bytes in chunk {k}");
    }
    let log = server.log();
    let back = format!("registry {addr} answers again");
    assert_eq!(log.matches(&back).count(), 1, "{log}");
    assert!(
        log.lines().any(|l| l.contains(&back) && l.contains("INFO")),
        "{log}"
    );
    assert_eq!(log.matches(&outage).count(), 1, "{log}");
    drop(client);
    assert!(server.terminate().unwrap().success());
}

/// A cached manifest that no longer hashes to its digest is an error
/// naming the file, not an image built from it.
#[test]
fn a_corrupted_cached_manifest_is_refused_naming_the_file() {
    let mut f = Fixture::new();
    let image = format!("docker://{}/os/node:v1", f.reg().addr);
    f.pull(&image);
    f.reg = None;
    let digest = f.img.manifest_digest().to_owned();
    let path = f.cache().join("meta/sha256").join(&digest[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x20;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();

    let o = f.run("inspect", &image, &["--registry-retries", "0"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    eprintln!("the error: {e}");
    assert!(e.contains(s(&path)), "names the file: {e}");
    assert!(e.contains("not the digest it is named by"), "{e}");
}

/// While the registry answers, a tag is resolved again on every start: a
/// tag pushed to a new image is followed (and offline, the newest
/// resolution is used). A 404 is an answer: no fallback to the cache.
#[test]
fn a_repushed_tag_is_followed_while_the_registry_answers() {
    let mut f = Fixture::new();
    let image = format!("docker://{}/os/node:v1", f.reg().addr);
    let first = inspected_digest(&f.run("inspect", &image, &["--json"]));
    assert_eq!(first, f.img.manifest_digest());

    let second_img = small_image(&f.dir.path().join("src2"), SYSTEM, 8, "v1").unwrap();
    f.reg().push(&second_img.dir, None, "os/node:v1").unwrap();
    let second = inspected_digest(&f.run("inspect", &image, &["--json"]));
    assert_eq!(second, second_img.manifest_digest());
    assert_ne!(first, second);

    let o = f.run(
        "inspect",
        &format!("docker://{}/os/node:v2", f.reg().addr),
        &[],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("not found (HTTP 404)"), "{e}");
    assert!(!e.contains("unreachable"), "{e}");

    f.reg = None;
    let o = f.run("inspect", &image, &["--json", "--registry-retries", "0"]);
    assert_eq!(inspected_digest(&o), second);
}

/// Resolution gets the user's whole retry budget (`--registry-retries`,
/// 4 by default), not the chunk fetches' single retry: two 503s on the
/// manifest and the server still starts, with an empty cache.
#[test]
fn manifest_resolution_retries_as_configured() {
    let f = Fixture::new();
    let proxy = Proxy::start(&f.reg().addr).unwrap();
    proxy.add("/manifests/", Fault::Status(503), Some(2));
    let image = format!("docker://{}/os/node:v1", proxy.addr);
    let (server, mut client) = f.serve("retry", &image, &[]);
    let manifest_requests = proxy
        .seen()
        .iter()
        .filter(|r| r.target.contains("/manifests/"))
        .count();
    assert_eq!(manifest_requests, 3);
    let got = client.queue().read(SYSTEM_PART, 4096).unwrap();
    let p = f.img.layer("system");
    assert!(got == p.data[..4096]);
    assert!(!server.log().contains("registry unreachable"));
    drop(client);
    assert!(server.terminate().unwrap().success());
}

/// A payload of zero bytes pushed to a registry: `serve` and `export` open
/// it (no chunk to fetch, no range `0-(-1)` asked for), a partition of it
/// reads as zeros and a file of it on the ESP is empty, as from the local
/// layout.
#[test]
fn an_empty_payload_from_a_registry_is_served() {
    use ocidisk_tests::oci_writer::{efi_image, ImageBuilder, OsImage, Payload};
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start_plain().unwrap();
    let img = ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("kernel.efi", efi_image(64 * 1024 + 123)))
            .payload(Payload::new("empty", Vec::new()))
            .payload(Payload::new("system", vec![7u8; 3 << 20]))
            .ref_name("v1"),
    )
    .write(&dir.path().join("src"))
    .unwrap();
    reg.push(&img.dir, None, "os/empty:v1").unwrap();
    let layout = dir.path().join("layout.toml");
    std::fs::write(
        &layout,
        r#"disk_size = "48MiB"
[[partitions]]
name = "esp"
type = "esp"
size = "36MiB"
fat32 = { label = "E", files = [ { path = "empty.bin", content = "payload:empty" }, { path = "k.efi", content = "payload:kernel.efi" } ] }
[[partitions]]
name = "empty"
type = "linux"
size = "1MiB"
content = "payload:empty"
[[partitions]]
name = "system"
type = "linux"
size = "rest"
content = "payload:system"
"#,
    )
    .unwrap();
    let proxy = Proxy::start(&reg.addr).unwrap();
    let export = |image: &str, cache: &str, out: &str, extra: &[&str]| -> Vec<u8> {
        let out = dir.path().join(out);
        let mut args: Vec<String> = [
            "export",
            "--image",
            image,
            "--layout",
            s(&layout),
            "--cache",
            s(&dir.path().join(cache)),
            "--output",
            s(&out),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|x| x.to_string()));
        let o = ocidisk(&args);
        assert!(o.status.success(), "export {image}: {}", stderr(&o));
        std::fs::read(&out).unwrap()
    };
    let local = export(s(&img.dir), "local-cache", "local.raw", &[]);
    let remote = format!("docker://{}/os/empty:v1", proxy.addr);
    assert!(export(&remote, "cache", "remote.raw", &[]) == local);
    for verify in ["--verify=full", "--verify=lazy"] {
        let cache = format!("cache{verify}");
        let out = format!("{verify}.raw");
        assert!(export(&remote, &cache, &out, &[verify]) == local);
    }
    let empty_digest = img.layer("empty").blob.digest.clone();
    let ranged: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|r| r.target.contains(&empty_digest))
        .collect();
    assert!(
        ranged.is_empty(),
        "nothing to fetch for 0 bytes: {ranged:?}"
    );

    let socket = dir.path().join("empty.sock");
    let args: Vec<String> = [
        "--image",
        remote.as_str(),
        "--layout",
        s(&layout),
        "--cache",
        s(&dir.path().join("cache")),
        "--readonly",
    ]
    .map(String::from)
    .to_vec();
    let server = Server::start(&socket, &args).unwrap();
    let mut client = BlkioClient::connect_read_only(&socket, 1, 4 << 20).unwrap();
    assert!(read_all(&mut client) == local);
    drop(client);
    assert!(server.terminate().unwrap().success());

    // A manifest that lists another blob with size 0: nothing would ever
    // be fetched and checked, so the digest is refused at once.
    let manifest = &img.manifests[0].manifest;
    let bytes = std::fs::read(img.dir.join("blobs/sha256").join(&manifest.digest[7..])).unwrap();
    let kernel = &img.layer("kernel.efi").blob.digest;
    let bad = String::from_utf8(bytes)
        .unwrap()
        .replace(&empty_digest, kernel);
    reg.put_manifest(
        "os/empty",
        "bad",
        "application/vnd.oci.image.manifest.v1+json",
        bad.as_bytes(),
    )
    .unwrap();
    let out = dir.path().join("bad.raw");
    let args: Vec<String> = [
        "export",
        "--image",
        &format!("docker://{}/os/empty:bad", reg.addr),
        "--layout",
        s(&layout),
        "--cache",
        s(&dir.path().join("cache")),
        "--output",
        s(&out),
    ]
    .map(String::from)
    .to_vec();
    let o = ocidisk(&args);
    assert!(!o.status.success());
    let e = stderr(&o);
    eprintln!("the error: {e}");
    assert!(e.contains(&format!("(\"empty\") {kernel}")), "{e}");
    assert!(e.contains("a blob of 0 bytes"), "{e}");
}

/// A cache holding two images: `os/node:v1`, served by a live server, and
/// `os/other:v1`, only pulled.
struct TwoImages {
    f: Fixture,
    other: BuiltImage,
    image: String,
    other_image: String,
    server: Server,
    client: BlkioClient,
}

impl TwoImages {
    fn new() -> Self {
        let f = Fixture::new();
        let addr = f.reg().addr.clone();
        let other = small_image(&f.dir.path().join("src2"), 1 << 20, 9, "v1").unwrap();
        f.reg().push(&other.dir, None, "os/other:v1").unwrap();
        let image = format!("docker://{addr}/os/node:v1");
        let other_image = format!("docker://{addr}/os/other:v1");
        f.pull(&other_image);
        let (server, client) = f.serve("live", &image, &[]);
        TwoImages {
            f,
            other,
            image,
            other_image,
            server,
            client,
        }
    }
}

/// Stops the registry; then `image` (whose manifest and config a prune
/// kept) still opens from the cache, and `other_image` does not.
fn offline_only_the_live_image_starts(f: &mut Fixture, image: &str, other_image: &str) {
    f.reg = None;
    let o = f.run("inspect", image, &["--registry-retries", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = f.run("inspect", other_image, &["--registry-retries", "0"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("nothing is cached for"),
        "{}",
        stderr(&o)
    );
}

/// Runs `ocidisk cache ARGS --cache DIR`, insists on success, returns stdout.
fn cache_command(dir: &Path, args: &[&str]) -> String {
    let mut a: Vec<String> = vec!["cache".into()];
    a.extend(args.iter().map(|x| x.to_string()));
    a.extend(["--cache".to_owned(), s(dir).to_owned()]);
    let o = ocidisk(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A prune report that kept the live server's manifest and config, removed
/// the other image's two and its one resolution record.
fn assert_pruned_all_but_live(pruned: &str, live: [&str; 2], gone: [&str; 2]) {
    for d in live {
        assert!(
            pruned.contains(&format!("kept manifest or config {d} (in use)")),
            "{pruned}"
        );
    }
    for d in gone {
        assert!(
            pruned.contains(&format!("removed manifest or config {d}")),
            "{pruned}"
        );
    }
    assert!(
        pruned.contains("removed 2 manifest(s) and config(s), 1 resolution record(s)"),
        "{pruned}"
    );
}

/// `cache prune --older-than` removes the manifests and configs of images
/// no server uses (and the resolutions that pointed at them), never those
/// of a live server; `cache list` counts them.
#[test]
fn prune_keeps_the_manifest_of_a_live_server() {
    let TwoImages {
        mut f,
        other,
        image,
        other_image,
        server,
        client,
    } = TwoImages::new();
    let cache_dir = f.cache();
    let cache = |args: &[&str]| cache_command(&cache_dir, args);
    let listed = cache(&["list"]);
    assert!(
        listed.contains("and 4 manifest(s) and config(s)")
            && listed.contains("2 resolution record(s)"),
        "{listed}"
    );
    let pruned = cache(&["prune", "--older-than", "0s"]);
    eprintln!("{pruned}");
    assert_pruned_all_but_live(
        &pruned,
        [f.img.manifest_digest(), &f.img.manifests[0].config.digest],
        [other.manifest_digest(), &other.manifests[0].config.digest],
    );
    drop(client);
    assert!(server.terminate().unwrap().success());

    offline_only_the_live_image_starts(&mut f, &image, &other_image);

    let pruned = cache(&["prune", "--older-than", "0s"]);
    assert!(
        pruned.contains("removed 2 manifest(s) and config(s), 1 resolution record(s)"),
        "{pruned}"
    );
    let listed = cache(&["list"]);
    assert!(!listed.contains("manifest(s)"), "{listed}");
}

/// `cache prune --max-size 0` removes every blob and kept manifest and
/// config no server uses (blobs first), and the resolutions that pointed
/// at them, never those of a live server, whose image still starts
/// offline afterwards.
#[test]
fn prune_to_a_size_keeps_the_manifest_of_a_live_server() {
    let TwoImages {
        mut f,
        other,
        image,
        other_image,
        server,
        client,
    } = TwoImages::new();
    let cache_dir = f.cache();
    let cache = |args: &[&str]| cache_command(&cache_dir, args);
    let pruned = cache(&["prune", "--max-size", "0", "--dry-run"]);
    assert!(
        pruned.contains("would remove 2 manifest(s) and config(s), 1 resolution record(s)"),
        "{pruned}"
    );
    assert!(
        cache(&["list"]).contains("and 4 manifest(s) and config(s)"),
        "a dry run removes nothing"
    );
    let pruned = cache(&["prune", "--max-size", "0"]);
    eprintln!("{pruned}");
    assert_pruned_all_but_live(
        &pruned,
        [f.img.manifest_digest(), &f.img.manifests[0].config.digest],
        [other.manifest_digest(), &other.manifests[0].config.digest],
    );
    // The other image's own blobs went first (the live server's are open,
    // among them the kernel both images share).
    let live_blobs: Vec<&str> = f.img.manifests[0]
        .layers
        .iter()
        .map(|l| l.blob.digest.as_str())
        .collect();
    let own: Vec<&str> = other.manifests[0]
        .layers
        .iter()
        .map(|l| l.blob.digest.as_str())
        .filter(|d| !live_blobs.contains(d))
        .collect();
    assert!(!own.is_empty());
    for d in own {
        assert!(pruned.contains(&format!("removed {d} (")), "{pruned}");
    }
    let listed = cache(&["list"]);
    assert!(
        listed.contains("and 2 manifest(s) and config(s)")
            && listed.contains("1 resolution record(s)"),
        "{listed}"
    );
    drop(client);
    assert!(server.terminate().unwrap().success());

    offline_only_the_live_image_starts(&mut f, &image, &other_image);
}

/// A tag of an image index resolves per `--platform`: `pull` with two
/// platforms keeps two resolution records (the key names the platform),
/// and with the registry gone each platform starts from its own manifest
/// (`inspect`, and `serve` reading the payload of its own image).
#[test]
fn a_tag_record_follows_the_platform() {
    use ocidisk_tests::oci_writer::{INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
    let mut f = Fixture::new();
    let addr = f.reg().addr.clone();
    let arm = small_image(&f.dir.path().join("src-arm"), SYSTEM, 8, "v1").unwrap();
    f.reg().push(&arm.dir, None, "os/node:arm64").unwrap();
    let entry = |img: &BuiltImage, arch: &str| {
        serde_json::json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": img.manifests[0].digest(),
            "size": img.manifests[0].manifest.size,
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [entry(&f.img, "amd64"), entry(&arm, "arm64")],
    });
    f.reg()
        .put_manifest(
            "os/node",
            "multi",
            INDEX_MEDIA_TYPE,
            &serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    let image = format!("docker://{addr}/os/node:multi");
    let platforms = [("linux/amd64", &f.img), ("linux/arm64", &arm)];
    for (platform, img) in platforms {
        let args: Vec<String> = [
            "pull",
            image.as_str(),
            "--cache",
            s(&f.cache()),
            "--platform",
            platform,
        ]
        .map(String::from)
        .to_vec();
        let o = ocidisk(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = f.run("inspect", &image, &["--json", "--platform", platform]);
        assert_eq!(inspected_digest(&o), img.manifest_digest(), "{platform}");
    }
    let mut records: Vec<(String, String)> = std::fs::read_dir(f.cache().join("refs"))
        .unwrap()
        .map(|e| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            let field = |k: &str| v[k].as_str().unwrap().to_owned();
            (field("key"), field("manifest"))
        })
        .collect();
    records.sort();
    assert_eq!(records.len(), 2, "one record per platform: {records:?}");
    for ((key, manifest), (platform, img)) in records.iter().zip(platforms) {
        assert!(key.contains(&format!("platform={platform}")), "{key}");
        assert_eq!(manifest, img.manifest_digest(), "{key}");
    }

    f.reg = None;
    for (platform, img) in platforms {
        let o = f.run(
            "inspect",
            &image,
            &["--json", "--platform", platform, "--registry-retries", "0"],
        );
        assert_eq!(inspected_digest(&o), img.manifest_digest(), "{platform}");
        assert!(stderr(&o).contains(img.manifest_digest()), "{}", stderr(&o));

        let name = platform.replace('/', "-");
        let (server, mut client) = f.serve(
            &name,
            &image,
            &["--platform", platform, "--registry-retries", "0"],
        );
        let got = client
            .queue()
            .read(SYSTEM_PART, 2 * MIB as usize)
            .unwrap_or_else(|e| panic!("{platform}: {e}"));
        let system = &img.layer("system").data;
        assert!(
            got == system[..2 * MIB as usize],
            "{platform}: not its own image's bytes"
        );
        drop(client);
        assert!(server.terminate().unwrap().success());
    }
}
