//! Registry faults, injected by a proxy between the client and the real
//! `docker-registry`: dropped connections, 5xx, a very slow registry,
//! truncated bodies, corrupted bytes, an unreachable registry. Each either
//! succeeds after bounded retries (counted in the stats) or fails with an
//! error naming the registry, repository, object and cause.

use ocidisk_tests::oci_writer::BuiltImage;
use ocidisk_tests::registry::proxy::{Fault, Proxy};
use ocidisk_tests::registry::{free_port, small_image, Registry};
use registry::{Client, ClientOptions, Digest, ImageRef, RegistryError, RegistryRef};
use std::time::Duration;

fn rref(s: &str) -> RegistryRef {
    match ImageRef::parse(s).expect("test reference parses") {
        ImageRef::Registry(r) => r,
        other => panic!("not a registry reference: {other:?}"),
    }
}

fn opts() -> ClientOptions {
    ClientOptions {
        auth_files: Some(Vec::new()),
        retries: 3,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        read_timeout: Duration::from_millis(700),
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

struct Setup {
    reg: Registry,
    img: BuiltImage,
    proxy: Proxy,
    r: RegistryRef,
    client: Client,
}

fn setup() -> Setup {
    let reg = Registry::start_plain().unwrap();
    let img = small_image(&reg.dir.path().join("src"), 3 << 20, 11, "v1").unwrap();
    reg.push(&img.dir, None, "os/node:v1").unwrap();
    let proxy = Proxy::start(&reg.addr).unwrap();
    let r = rref(&format!("docker://{}/os/node:v1", proxy.addr));
    let client = Client::new(opts()).unwrap();
    Setup {
        reg,
        img,
        proxy,
        r,
        client,
    }
}

impl Setup {
    fn system(&self) -> (Digest, &[u8]) {
        let l = self.img.layer("system");
        (Digest::parse(&l.blob.digest).unwrap(), &l.data)
    }

    fn read(&self, off: usize, len: usize) -> Result<Vec<u8>, RegistryError> {
        let (d, data) = self.system();
        let mut buf = vec![0u8; len];
        self.client.read_range(&self.r, &d, off as u64, &mut buf)?;
        assert!(buf == data[off..off + len], "wrong bytes for {off}+{len}");
        Ok(buf)
    }
}

#[test]
fn dropped_connections_are_retried_then_given_up() {
    let s = setup();
    s.proxy.add("/blobs/", Fault::Drop, Some(2));
    s.read(4096, 8192).unwrap();
    let st = s.client.stats().snapshot();
    assert_eq!(st.retries, 2);
    assert_eq!(st.failures, 0);

    s.proxy.add("/blobs/", Fault::Drop, None);
    let e = s.read(0, 100).unwrap_err();
    assert!(
        matches!(e, RegistryError::GaveUp { attempts: 4, .. }),
        "{e}"
    );
    let msg = blockio::error_chain(&e).to_string();
    eprintln!("the error: {msg}");
    let (d, _) = s.system();
    assert!(
        msg.contains(&format!("{}/os/node: blob {d} bytes 0-99", s.proxy.addr)),
        "{msg}"
    );
    assert!(msg.contains("gave up after 4 attempts"), "{msg}");
    assert!(
        e.is_retryable(),
        "a caller with its own budget may try later"
    );
    assert_eq!(s.client.stats().snapshot().failures, 1);
}

#[test]
fn server_errors_are_retried_then_given_up_naming_the_status() {
    let s = setup();
    s.proxy.add("/manifests/", Fault::Status(503), Some(1));
    s.proxy.add("/blobs/", Fault::Status(500), Some(2));
    s.client.resolve(&s.r, None).unwrap();
    s.read(0, 10).unwrap();
    assert_eq!(s.client.stats().snapshot().retries, 3);

    s.proxy.add("/blobs/", Fault::Status(502), None);
    let e = s.read(0, 10).unwrap_err();
    assert_eq!(e.status(), Some(502));
    let msg = blockio::error_chain(&e).to_string();
    eprintln!("the error: {msg}");
    assert!(
        msg.contains("HTTP 502: INJECTED fault proxy answered 502"),
        "{msg}"
    );
    assert!(msg.contains("gave up after 4 attempts"), "{msg}");
    assert_eq!(
        s.proxy
            .seen()
            .iter()
            .filter(|r| r.fault == Some(Fault::Status(502)))
            .count(),
        4
    );
}

#[test]
fn client_errors_other_than_auth_are_not_retried() {
    let s = setup();
    s.proxy.add("/blobs/", Fault::Status(403), None);
    let e = s.read(0, 10).unwrap_err();
    assert!(
        matches!(e, RegistryError::Unauthorized { status: 403, .. }),
        "{e}"
    );
    s.proxy.clear();
    s.proxy.add("/blobs/", Fault::Status(400), None);
    let e = s.read(0, 10).unwrap_err();
    assert!(
        matches!(e, RegistryError::Status { status: 400, .. }),
        "{e}"
    );
    assert_eq!(s.client.stats().snapshot().retries, 0);
}

#[test]
fn a_very_slow_registry_times_out_and_is_retried() {
    let s = setup();
    // Slower than the 700 ms read timeout, once.
    s.proxy.add(
        "/blobs/",
        Fault::Delay(Duration::from_millis(2500)),
        Some(1),
    );
    s.read(0, 4096).unwrap();
    assert_eq!(s.client.stats().snapshot().retries, 1);

    s.proxy
        .add("/blobs/", Fault::Delay(Duration::from_millis(2500)), None);
    let e = s.read(0, 4096).unwrap_err();
    let msg = blockio::error_chain(&e).to_string();
    eprintln!("the error: {msg}");
    assert!(
        msg.contains("timeout") || msg.contains("timed out"),
        "{msg}"
    );
    assert!(
        matches!(e, RegistryError::GaveUp { attempts: 4, .. }),
        "{e}"
    );
}

#[test]
fn a_truncated_range_is_resumed_where_it_stopped() {
    let s = setup();
    s.proxy.add("/blobs/", Fault::Truncate(1000), Some(1));
    s.read(1 << 20, 1 << 20).unwrap();
    let ranges: Vec<String> = s
        .proxy
        .seen()
        .iter()
        .filter_map(|r| r.range.clone())
        .collect();
    let start = 1u64 << 20;
    let end = (2u64 << 20) - 1;
    assert_eq!(
        ranges,
        vec![
            format!("bytes={start}-{end}"),
            format!("bytes={}-{end}", start + 1000)
        ]
    );
    assert_eq!(s.client.stats().snapshot().retries, 1);

    s.proxy.add("/blobs/", Fault::Truncate(10), None);
    let e = s.read(0, 4096).unwrap_err();
    assert!(
        matches!(
            e.last(),
            RegistryError::Body { .. } | RegistryError::Truncated { .. }
        ),
        "{e}"
    );
}

#[test]
fn a_truncated_whole_blob_is_resumed_and_its_digest_checked() {
    let s = setup();
    let (d, data) = s.system();
    s.proxy.add("/blobs/", Fault::Truncate(300_000), Some(1));
    let mut out = Vec::new();
    s.client
        .get_blob(&s.r, &d, Some(data.len() as u64), &mut out)
        .unwrap();
    assert!(out == data);
    let seen = s.proxy.seen();
    assert_eq!(seen.last().unwrap().range.as_deref(), Some("bytes=300000-"));
}

#[test]
fn corrupt_manifests_and_configs_are_refetched_or_refused() {
    let s = setup();
    let m = &s.img.manifests[0];
    // Once: the mismatch is seen and the manifest fetched again.
    s.proxy.add("/manifests/", Fault::Corrupt(20), Some(1));
    let got = s.client.resolve(&s.r, None).unwrap();
    assert_eq!(got.manifest.digest.to_string(), m.digest());
    assert_eq!(s.client.stats().snapshot().retries, 1);

    // Always: never accepted, by tag (against Docker-Content-Digest) or by
    // digest.
    s.proxy.add("/manifests/", Fault::Corrupt(20), None);
    let e = s.client.resolve(&s.r, None).unwrap_err();
    assert!(
        matches!(e.last(), RegistryError::DigestMismatch { .. }),
        "{e}"
    );
    assert!(
        blockio::error_chain(&e)
            .to_string()
            .contains(&format!("expected {}", m.digest())),
        "{e}"
    );
    let e = s.client.resolve(&got.reference, None).unwrap_err();
    assert!(
        blockio::error_chain(&e)
            .to_string()
            .contains(&format!("manifest {}: digest mismatch", m.digest())),
        "{e}"
    );

    s.proxy.clear();
    s.proxy.add(&m.config.digest, Fault::Corrupt(3), None);
    let e = s.client.resolve(&s.r, None).unwrap_err();
    let msg = blockio::error_chain(&e).to_string();
    eprintln!("the error: {msg}");
    assert!(
        msg.contains(&format!("config {}: digest mismatch", m.config.digest)),
        "{msg}"
    );
}

#[test]
fn a_corrupt_whole_blob_is_never_accepted() {
    let s = setup();
    let (d, data) = s.system();
    s.proxy.add("/blobs/", Fault::Corrupt(123_456), Some(1));
    let mut out = Vec::new();
    let e = s.client.get_blob(&s.r, &d, None, &mut out).unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    assert!(
        blockio::error_chain(&e)
            .to_string()
            .contains(&format!("blob {d}: digest mismatch")),
        "{e}"
    );

    // Into a file: fetched again, and the file ends up right.
    s.proxy.add("/blobs/", Fault::Corrupt(123_456), Some(1));
    let path = s.reg.dir.path().join("blob");
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    s.client
        .get_blob_to_file(&s.r, &d, Some(data.len() as u64), &mut f)
        .unwrap();
    assert!(std::fs::read(&path).unwrap() == data);

    // Always corrupt: an error, and the file is left empty.
    s.proxy.add("/blobs/", Fault::Corrupt(5), None);
    let e = s
        .client
        .get_blob_to_file(&s.r, &d, Some(data.len() as u64), &mut f)
        .unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

#[test]
fn an_unreachable_registry_gives_up_after_bounded_retries() {
    let port = free_port().unwrap();
    let r = rref(&format!("docker://127.0.0.1:{port}/os/node:v1"));
    let client = Client::new(opts()).unwrap();
    let e = client.resolve(&r, None).unwrap_err();
    assert!(
        matches!(e, RegistryError::GaveUp { attempts: 4, .. }),
        "{e}"
    );
    let msg = blockio::error_chain(&e).to_string();
    eprintln!("the error: {msg}");
    assert!(
        msg.contains(&format!("127.0.0.1:{port}/os/node: manifest v1")),
        "{msg}"
    );
    assert!(msg.contains("Connection refused"), "{msg}");
    let st = client.stats().snapshot();
    assert_eq!((st.retries, st.failures, st.fetches), (3, 1, 0));
}

#[test]
fn a_rate_limited_registry_is_asked_again_after_its_retry_after() {
    let s = setup();
    let client = Client::new(ClientOptions {
        backoff_max: Duration::from_secs(3),
        ..opts()
    })
    .unwrap();
    s.proxy.add("/blobs/", Fault::Status(429), Some(1));
    let (d, data) = s.system();
    let mut buf = vec![0u8; 100];
    let t = std::time::Instant::now();
    client.read_range(&s.r, &d, 0, &mut buf).unwrap();
    // A lower bound, not a performance figure: the client slept as told
    // (1 s) rather than its own 10 ms.
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(buf == data[..100]);
    assert_eq!(client.stats().snapshot().retries, 1);
}
