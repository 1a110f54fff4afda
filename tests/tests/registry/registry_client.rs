//! The registry client against Debian's real `docker-registry`, images
//! pushed with skopeo: resolving tags and digests, image indexes by
//! platform and ref name, byte ranges and whole blobs, 404s, and plain HTTP
//! refused for a registry that is not localhost.

use ocidisk_tests::oci_writer::{BuiltImage, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use ocidisk_tests::registry::proxy::Proxy;
use ocidisk_tests::registry::{small_image, Registry};
use registry::{Client, ClientOptions, Digest, ImageRef, Platform, RegistryError, RegistryRef};
use std::time::Duration;

fn rref(s: &str) -> RegistryRef {
    match ImageRef::parse(s).expect("test reference parses") {
        ImageRef::Registry(r) => r,
        other => panic!("not a registry reference: {other:?}"),
    }
}

fn quick() -> ClientOptions {
    ClientOptions {
        backoff_initial: Duration::from_millis(20),
        ..ClientOptions::default()
    }
}

/// Builds a small image in the registry's temp directory and pushes it.
fn pushed(reg: &Registry, system_len: usize, seed: u64, repo_tag: &str) -> BuiltImage {
    let dir = reg.dir.path().join(format!("src-{seed}"));
    let img = small_image(&dir, system_len, seed, "v1").unwrap();
    reg.push(&img.dir, None, repo_tag).unwrap();
    img
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

#[test]
fn resolves_a_monogon_image_by_tag_and_by_digest() {
    let reg = Registry::start_plain().unwrap();
    let img = pushed(&reg, 3 << 20, 1, "os/node:v1");
    let client = Client::new(quick()).unwrap();
    let r = rref(&format!("docker://{}/os/node:v1", reg.addr));
    let resolved = client.resolve(&r, None).unwrap();
    let m = &img.manifests[0];
    assert_eq!(resolved.manifest.digest.to_string(), m.digest());
    assert_eq!(resolved.manifest.media_type, MANIFEST_MEDIA_TYPE);
    assert!(resolved.index.is_none());
    assert_eq!(resolved.config, std::fs::read(m.config.path()).unwrap());
    assert_eq!(resolved.parsed.layers.len(), 2);
    assert_eq!(
        resolved.parsed.layers[1].digest,
        img.layer("system").blob.digest
    );
    assert_eq!(
        resolved.reference.to_string(),
        format!("{}/os/node@{}", reg.addr, m.digest())
    );

    // By digest: the same manifest, checked against the digest asked for.
    let by_digest = client.resolve(&resolved.reference, None).unwrap();
    assert_eq!(by_digest.manifest.bytes, resolved.manifest.bytes);

    let s = client.stats().snapshot();
    assert_eq!(s.failures, 0);
    assert_eq!(s.retries, 0);
    assert_eq!(s.fetches, 4, "manifest + config, twice");
}

#[test]
fn reads_byte_ranges_and_whole_blobs() {
    let reg = Registry::start_plain().unwrap();
    let img = pushed(&reg, 3 << 20, 2, "os/node:v1");
    let client = Client::new(quick()).unwrap();
    let r = rref(&format!("docker://{}/os/node:v1", reg.addr));
    let system = img.layer("system");
    let d = digest(&system.blob.digest);
    let data = &system.data;

    for (off, len) in [
        (0usize, 4096usize),
        (1 << 20, 1 << 20),
        (12345, 777),
        (data.len() - 100, 100),
    ] {
        let mut buf = vec![0u8; len];
        client.read_range(&r, &d, off as u64, &mut buf).unwrap();
        assert!(buf == data[off..off + len], "range {off}+{len}");
    }
    let before = client.stats().snapshot();
    let mut out = Vec::new();
    let n = client
        .get_blob(&r, &d, Some(data.len() as u64), &mut out)
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert!(out == *data);
    let after = client.stats().snapshot();
    assert_eq!(after.bytes - before.bytes, data.len() as u64);
    assert_eq!(after.fetches - before.fetches, 1);

    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("blob"))
        .unwrap();
    client.get_blob_to_file(&r, &d, None, &mut f).unwrap();
    assert!(std::fs::read(dir.path().join("blob")).unwrap() == *data);
}

#[test]
fn a_registry_that_ignores_range_is_read_up_to_the_range() {
    let reg = Registry::start_plain().unwrap();
    let img = pushed(&reg, 2 << 20, 3, "os/node:v1");
    let proxy = Proxy::start(&reg.addr).unwrap();
    proxy.add(
        "/blobs/",
        ocidisk_tests::registry::proxy::Fault::IgnoreRange,
        None,
    );
    let client = Client::new(quick()).unwrap();
    let r = rref(&format!("docker://{}/os/node:v1", proxy.addr));
    let system = img.layer("system");
    let mut buf = vec![0u8; 5000];
    let off = (1 << 20) + 17;
    client
        .read_range(&r, &digest(&system.blob.digest), off as u64, &mut buf)
        .unwrap();
    assert!(buf == system.data[off..off + 5000]);
    assert_eq!(client.stats().snapshot().retries, 0);
}

#[test]
fn image_index_by_platform_and_by_ref_name() {
    let reg = Registry::start_plain().unwrap();
    let amd = pushed(&reg, 1 << 20, 4, "os/node:amd64");
    let arm = pushed(&reg, 1 << 20, 5, "os/node:arm64");
    let entry = |img: &BuiltImage, arch: &str, variant: Option<&str>, name: &str| {
        let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        serde_json::json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": img.manifests[0].digest(),
            "size": img.manifests[0].manifest.size,
            "platform": platform,
            "annotations": {"org.opencontainers.image.ref.name": name},
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [entry(&arm, "arm64", Some("v8"), "node-arm"), entry(&amd, "amd64", None, "node-amd")],
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    reg.put_manifest("os/node", "multi", INDEX_MEDIA_TYPE, &index_bytes)
        .unwrap();
    let r = rref(&format!("docker://{}/os/node:multi", reg.addr));

    let client = Client::new(quick()).unwrap();
    let got = client.resolve(&r, None).unwrap();
    assert_eq!(got.manifest.digest.to_string(), amd.manifests[0].digest());
    let idx = got.index.expect("the index is kept");
    assert_eq!(idx.bytes, index_bytes);
    assert_eq!(idx.media_type, INDEX_MEDIA_TYPE);

    let got = client.resolve(&r, Some("node-arm")).unwrap();
    assert_eq!(got.manifest.digest.to_string(), arm.manifests[0].digest());
    let got = client.resolve(&r, Some(arm.manifests[0].digest())).unwrap();
    assert_eq!(
        got.config,
        std::fs::read(arm.manifests[0].config.path()).unwrap()
    );

    let arm_client = Client::new(ClientOptions {
        platform: Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        },
        ..quick()
    })
    .unwrap();
    let got = arm_client.resolve(&r, None).unwrap();
    assert_eq!(got.manifest.digest.to_string(), arm.manifests[0].digest());

    let s390 = Client::new(ClientOptions {
        platform: Platform {
            architecture: "s390x".into(),
            ..Platform::default()
        },
        ..quick()
    })
    .unwrap();
    let e = s390.resolve(&r, None).unwrap_err();
    let e = blockio::error_chain(&e).to_string();
    assert!(e.contains("no manifest for platform linux/s390x"), "{e}");
    assert!(e.contains("(linux/arm64/v8)"), "{e}");
    assert!(e.contains(&format!("{}/os/node", reg.addr)), "{e}");

    let e = client.resolve(&r, Some("nope")).unwrap_err();
    let e = blockio::error_chain(&e).to_string();
    assert!(e.contains("reference \"nope\""), "{e}");
}

#[test]
fn missing_manifest_and_blob_are_not_found_without_retries() {
    let reg = Registry::start_plain().unwrap();
    let img = pushed(&reg, 1 << 20, 6, "os/node:v1");
    let client = Client::new(quick()).unwrap();
    let e = client
        .resolve(&rref(&format!("docker://{}/os/node:v2", reg.addr)), None)
        .unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
    assert_eq!(e.status(), Some(404));
    assert!(!e.is_retryable());
    let msg = blockio::error_chain(&e).to_string();
    assert!(
        msg.contains(&format!("{}/os/node: manifest v2", reg.addr)),
        "{msg}"
    );
    assert!(msg.contains("MANIFEST_UNKNOWN"), "{msg}");

    let absent = Digest::of(b"not in the registry");
    let r = rref(&format!("docker://{}/os/node:v1", reg.addr));
    let mut buf = [0u8; 10];
    let e = client.read_range(&r, &absent, 0, &mut buf).unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
    assert!(
        blockio::error_chain(&e)
            .to_string()
            .contains(&format!("blob {absent} bytes 0-9")),
        "{e}"
    );
    // A blob of another repository is not this one's.
    let e = client
        .read_range(
            &rref(&format!("docker://{}/other/repo:v1", reg.addr)),
            &digest(&img.layer("system").blob.digest),
            0,
            &mut buf,
        )
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let s = client.stats().snapshot();
    assert_eq!(s.retries, 0);
    assert_eq!(s.failures, 3);
}

#[test]
fn plain_http_only_for_loopback_or_declared_insecure_registries() {
    let reg = Registry::start_plain().unwrap();
    pushed(&reg, 1 << 20, 7, "os/node:v1");
    // 127.0.0.2 reaches this machine but is not one of the loopback names.
    let proxy = Proxy::start_on("127.0.0.2", &reg.addr).unwrap();
    let r = rref(&format!("docker://{}/os/node:v1", proxy.addr));
    let e = Client::new(quick()).unwrap().resolve(&r, None).unwrap_err();
    assert!(matches!(e, RegistryError::InsecureRefused { .. }), "{e}");
    assert!(
        blockio::error_chain(&e).to_string().contains(&proxy.addr),
        "{e}"
    );

    let client = Client::new(ClientOptions {
        insecure_registries: vec![proxy.addr.clone()],
        ..quick()
    })
    .unwrap();
    client.resolve(&r, None).unwrap();
}

#[test]
fn docker_schema2_manifests_and_manifest_lists() {
    use ocidisk_tests::oci_writer::{ImageBuilder, Payload};
    let reg = Registry::start_plain().unwrap();
    let img = ImageBuilder::generic([Payload::new("rootfs", vec![7u8; 200_000])])
        .write(&reg.dir.path().join("generic"))
        .unwrap();
    reg.push_with(&img.dir, None, "plain/app:v2s2", &["--format", "v2s2"])
        .unwrap();
    let client = Client::new(quick()).unwrap();
    let r = rref(&format!("docker://{}/plain/app:v2s2", reg.addr));
    let got = client.resolve(&r, None).unwrap();
    assert_eq!(got.manifest.media_type, registry::manifest::DOCKER_MANIFEST);
    // skopeo gzips the layer for Docker's format: fetch it whole, checked.
    let layer = &got.parsed.layers[0];
    assert!(layer
        .media_type
        .starts_with("application/vnd.docker.image.rootfs.diff.tar"));
    let mut gz = Vec::new();
    client
        .get_blob(&r, &digest(&layer.digest), Some(layer.size), &mut gz)
        .unwrap();
    assert_eq!(gz.len() as u64, layer.size);

    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": registry::manifest::DOCKER_INDEX,
        "manifests": [{
            "mediaType": registry::manifest::DOCKER_MANIFEST,
            "digest": got.manifest.digest.to_string(),
            "size": got.manifest.bytes.len(),
            "platform": {"os": "linux", "architecture": "amd64"},
        }],
    });
    reg.put_manifest(
        "plain/app",
        "list",
        registry::manifest::DOCKER_INDEX,
        &serde_json::to_vec(&list).unwrap(),
    )
    .unwrap();
    let via_list = client
        .resolve(
            &rref(&format!("docker://{}/plain/app:list", reg.addr)),
            None,
        )
        .unwrap();
    assert_eq!(
        via_list.index.unwrap().media_type,
        registry::manifest::DOCKER_INDEX
    );
    assert_eq!(via_list.manifest.digest, got.manifest.digest);
    assert_eq!(via_list.config, got.config);
}

#[test]
fn one_client_shared_by_many_threads() {
    let reg = Registry::start_plain().unwrap();
    let img = pushed(&reg, 4 << 20, 8, "os/node:v1");
    let gate = Proxy::start_bearer(&reg.addr, None).unwrap();
    let client = Client::new(quick()).unwrap();
    let r = rref(&format!("docker://{}/os/node:v1", gate.addr));
    let system = img.layer("system");
    let d = digest(&system.blob.digest);
    let chunk = 256 << 10;
    std::thread::scope(|s| {
        for t in 0..8usize {
            let (client, r, d, data, gate) = (&client, &r, &d, &system.data, &gate);
            s.spawn(move || {
                for i in 0..data.len() / chunk {
                    if t == 0 && i == 5 {
                        // Tokens expire under every thread's feet.
                        gate.expire_tokens();
                    }
                    let off = ((i + t) % (data.len() / chunk)) * chunk;
                    let mut buf = vec![0u8; chunk];
                    client.read_range(r, d, off as u64, &mut buf).unwrap();
                    assert!(buf == data[off..off + chunk], "thread {t} chunk {i}");
                }
            });
        }
    });
    let s = client.stats().snapshot();
    assert_eq!(s.failures, 0);
    assert_eq!(s.fetches, 8 * 16);
    assert!(s.token_fetches >= 2, "{s:?}");
}

#[test]
fn remote_blob_reads_within_its_size_only() {
    let reg = Registry::start_plain().unwrap();
    let img = pushed(&reg, 1 << 20, 9, "os/node:v1");
    let client = std::sync::Arc::new(Client::new(quick()).unwrap());
    let r = rref(&format!("docker://{}/os/node:v1", reg.addr));
    let system = img.layer("system");
    let blob = registry::RemoteBlob::new(
        client.clone(),
        &r,
        digest(&system.blob.digest),
        system.blob.size,
    );
    let mut buf = vec![0u8; 4096];
    blob.read_at(system.blob.size - 4096, &mut buf).unwrap();
    assert!(buf[..] == system.data[system.data.len() - 4096..]);
    let e = blob.read_at(system.blob.size - 4095, &mut buf).unwrap_err();
    assert!(matches!(e, RegistryError::OutOfRange { .. }), "{e}");
    assert!(
        blockio::error_chain(&e)
            .to_string()
            .contains(&format!("outside the blob's {} bytes", system.blob.size)),
        "{e}"
    );
    let e = blob.read_at(u64::MAX, &mut buf).unwrap_err();
    assert!(matches!(e, RegistryError::OutOfRange { .. }), "{e}");
    assert_eq!(client.stats().snapshot().fetches, 1);
}
