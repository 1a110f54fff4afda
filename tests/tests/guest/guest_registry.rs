//! A QEMU guest boots through UEFI (OVMF) from a disk `ocidisk serve`
//! composes straight from a registry image, with an empty cache: Debian's
//! `docker-registry` on loopback, the sample OS image pushed with skopeo,
//! the fault proxy in between to count what crosses the network. The guest
//! sees the right partitions and payloads, each chunk crosses the network
//! once, and a second node on the same host's cache fetches nothing.
//!
//! Needs `.ci/install-deps` (the binary is built by `ocidisk_binary`).

use crate::guest_ocidisk::assert_sample_reports;
use ocidisk_tests::blkio_client::ocidisk_binary;
use ocidisk_tests::guest::{Assets, VhostUserServer, VmConfig};
use ocidisk_tests::registry::proxy::Proxy;
use ocidisk_tests::registry::Registry;
use ocidisk_tests::sample::{build_sample_image, SAMPLE_REF};
use std::path::Path;

#[test]
fn uefi_boot_from_a_registry_image_and_a_second_node_fetches_nothing() {
    let assets = Assets::locate().unwrap_or_else(|e| panic!("{e}"));
    let ocidisk = ocidisk_binary().unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let sample = build_sample_image(&assets, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let reg = Registry::start_plain().unwrap();
    reg.push(&sample.image, Some(SAMPLE_REF), "os/sample:v1")
        .unwrap();
    let proxy = Proxy::start(&reg.addr).unwrap();
    let image = format!("docker://{}/os/sample:v1", proxy.addr);
    let cache = dir.path().join("cache");
    // Two nodes, one after the other, on the host's one cache: the first
    // starts with it empty, the second finds everything the first read.
    for node in 1..=2 {
        proxy.forget();
        let socket = dir.path().join(format!("node{node}.sock"));
        let server = VhostUserServer::ocidisk_serve(
            &ocidisk,
            Path::new(&image),
            &dir.path().join(format!("node{node}.overlay")),
            &socket,
            &[
                "--layout",
                "monogon",
                "--disk-size",
                "5GiB",
                "--cache",
                cache.to_str().unwrap(),
            ],
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let run = VmConfig::uefi(&socket).run(dir.path());
        let log = server.log();
        let status = server.stop().unwrap_or_else(|e| panic!("{e}"));
        let run = run.unwrap_or_else(|e| panic!("{e}\n--- ocidisk serve ---\n{log}"));
        assert_eq!(status.code(), Some(0), "{log}");
        let c = &run.console;
        assert_eq!(run.get("efi_booted").unwrap(), "yes", "{c}");
        // What every boot of the sample checks: partitions, payloads, the
        // ESP's files, one boot on this node's own overlay.
        assert_sample_reports(&run, &sample, 1);

        // Layer bytes come through the proxy as chunk ranges, each once.
        let ranges: Vec<String> = proxy
            .seen()
            .iter()
            .filter(|r| r.target.contains("/blobs/"))
            .filter_map(|r| r.range.as_ref().map(|g| format!("{} {g}", r.target)))
            .collect();
        let mut unique = ranges.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ranges.len(),
            "a chunk fetched twice: {ranges:?}"
        );
        if node == 1 {
            assert!(!ranges.is_empty());
        } else {
            assert_eq!(
                ranges,
                Vec::<String>::new(),
                "the second node fetched layer bytes"
            );
        }
        eprintln!(
            "node {node}: UEFI boot from the registry {:.1} s (QEMU start to poweroff), guest uptime at init {} s, {} chunks fetched",
            run.elapsed.as_secs_f64(),
            run.get("uptime_at_init").unwrap_or("?"),
            ranges.len()
        );
    }
}
