//! `ocidisk pull` as a user runs it: the real binary against the real
//! `docker-registry`, the sample Monogon image pushed with skopeo. The
//! pulled layout composes the same disk as the original (and its payloads
//! verify); a second pull fetches nothing; a blob that arrives corrupt
//! every time fails the pull, naming it, and leaves nothing in its place.

use ocidisk_tests::blkio_client::ocidisk_binary;
use ocidisk_tests::cli::CommandExt as _;
use ocidisk_tests::oci_writer::{BuiltImage, ImageBuilder, OsImage};
use ocidisk_tests::registry::proxy::{Fault, Proxy};
use ocidisk_tests::registry::Registry;
use std::path::Path;
use std::process::{Command, Output};

fn ocidisk(args: &[&str]) -> Output {
    Command::new(ocidisk_binary().expect("the ocidisk binary"))
        .args(args)
        .output()
        .expect("running ocidisk")
}

fn ok(args: &[&str]) -> String {
    ocidisk_tests::cli::ocidisk().args(args).run_ok().stdout
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

fn push(reg: &Registry, os: OsImage, repo_tag: &str) -> BuiltImage {
    let img = ImageBuilder::monogon(os)
        .write(&reg.dir.path().join("src"))
        .unwrap();
    reg.push(&img.dir, None, repo_tag).unwrap();
    img
}

fn inspect(dir: &Path, cache: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "inspect",
        "--image",
        s(dir),
        "--cache",
        s(cache),
        "--json",
        "--disk-id",
        "n1",
    ];
    args.extend_from_slice(extra);
    ocidisk_tests::cli::ocidisk().args(&args).run_json()
}

#[test]
fn pull_writes_a_layout_that_composes_the_same_disk() {
    let reg = Registry::start_plain().unwrap();
    let img = push(&reg, OsImage::sample().unwrap(), "os/node:v1");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("pulled");
    let cache = work.path().join("cache");
    let reference = format!("docker://{}/os/node:v1", reg.addr);

    let said = ok(&["pull", &reference, "--output", s(&out)]);
    assert!(said.contains("2 blobs fetched"), "{said}");
    assert!(said.contains(img.manifest_digest()), "{said}");

    let original = inspect(&img.dir, &cache, &[]);
    let pulled = inspect(&out, &cache, &["--verify", "--ref", "v1"]);
    assert_eq!(pulled, original);

    // Everything is there: nothing is fetched again.
    let said = ok(&["pull", &reference, "--output", s(&out)]);
    assert!(
        said.contains("0 blobs fetched (0 bytes), 2 already present"),
        "{said}"
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
}

#[test]
fn pull_of_a_zstd_image_by_digest() {
    let reg = Registry::start_plain().unwrap();
    let img = push(&reg, OsImage::sample_zstd().unwrap(), "os/node:z");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("pulled");
    let cache = work.path().join("cache");
    let reference = format!("docker://{}/os/node@{}", reg.addr, img.manifest_digest());
    ok(&[
        "pull",
        &reference,
        "--output",
        s(&out),
        "--ref-name",
        "node",
    ]);
    let pulled = inspect(&out, &cache, &["--verify", "--ref", "node"]);
    assert_eq!(pulled, inspect(&img.dir, &cache, &[]));
}

#[test]
fn a_blob_corrupt_every_time_fails_the_pull_and_leaves_nothing() {
    let reg = Registry::start_plain().unwrap();
    let img = push(&reg, OsImage::sample().unwrap(), "os/node:v1");
    let proxy = Proxy::start(&reg.addr).unwrap();
    let system = &img.layer("system").blob.digest;
    proxy.add(system, Fault::Corrupt(4096), None);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("pulled");
    let reference = format!("docker://{}/os/node:v1", proxy.addr);
    let r = ocidisk(&[
        "pull",
        &reference,
        "--output",
        s(&out),
        "--registry-retries",
        "2",
    ]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains(&format!("blob {system}: digest mismatch")),
        "{err}"
    );
    assert!(
        err.contains("fetching it again"),
        "the refetches are logged: {err}"
    );
    let hex = system.strip_prefix("sha256:").unwrap();
    let left: Vec<String> = std::fs::read_dir(out.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.iter().any(|n| n.contains(hex)), "{left:?}");
    assert!(!out.join("index.json").exists());
    // Fetched 3 times: the first try and 2 retries.
    let gets = proxy
        .seen()
        .iter()
        .filter(|r| r.target.contains(system.as_str()))
        .count();
    assert_eq!(gets, 3);
}

#[test]
fn pull_refuses_what_it_cannot_pull() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("x");
    let r = ocidisk(&["pull", "oci:/some/dir", "--output", s(&out)]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("pull takes a registry reference"), "{err}");

    let r = ocidisk(&["pull", "docker://alpine", "--output", s(&out)]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("HOST[:PORT]/REPO"), "{err}");

    let r = ocidisk(&[
        "pull",
        "docker://127.0.0.1:1/a",
        "--output",
        s(&out),
        "--platform",
        "linux",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("--platform \"linux\""), "{err}");

    let r = ocidisk(&[
        "pull",
        "docker://127.0.0.1:1/a",
        "--output",
        s(&out),
        "--creds",
        "nocolon",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("--creds") && err.contains("USER:PASSWORD"),
        "{err}"
    );
}
