//! The README demo's sample image, booted through OVMF: the guest finds the
//! system payload on its partition, mounts it, and keeps a boot counter on
//! the data partition across two VMs.

use ocidisk_tests::guest::{Assets, VhostUserServer, VmConfig};
use ocidisk_tests::sample::{
    build_sample_image, build_sample_raw_disk, GREETING, SAMPLE_REF, SYSTEM_FILES,
};

#[test]
fn sample_image_boots_and_its_data_partition_persists() {
    let assets = Assets::locate().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let sample = build_sample_image(&assets, dir.path()).unwrap();
    let payloads = &sample.payloads;

    // The OCI layout is what `ocidisk` reads: check it with the layout crate's
    // reader, hashing every chunk.
    let image = layout::oci::Image::open(
        &sample.image,
        &layout::oci::OpenOptions {
            reference: Some(SAMPLE_REF.to_string()),
            verify: true,
            cache_dir: Some(dir.path().join("cache")),
            ..layout::oci::OpenOptions::default()
        },
    )
    .unwrap();
    assert_eq!(image.manifest_digest(), sample.manifest_digest);
    for (name, path) in [
        ("kernel.efi", &payloads.kernel_efi),
        ("system", &payloads.system),
    ] {
        let layer = image.payload(name).unwrap();
        assert_eq!(
            layer.content.len,
            std::fs::metadata(path).unwrap().len(),
            "{name}"
        );
    }
    let disk = dir.path().join("disk.raw");
    build_sample_raw_disk(payloads, &disk).unwrap();

    for boot in 1..=2 {
        let socket = dir.path().join(format!("sample-{boot}.sock"));
        let server = VhostUserServer::qemu_storage_daemon(&disk, &socket, dir.path()).unwrap();
        let run = VmConfig::uefi(&socket)
            .run(dir.path())
            .unwrap_or_else(|e| panic!("{e}"));
        server.stop().unwrap();
        eprintln!("sample boot {boot}: {:.1} s", run.elapsed.as_secs_f64());
        let c = &run.console;
        assert_eq!(
            run.get("partitions").unwrap().trim(),
            "vda1=ESP vda2=METROPOLIS-SYSTEM-A vda3=METROPOLIS-SYSTEM-B vda4=METROPOLIS-NODE-DATA",
            "{c}"
        );
        assert_eq!(run.get("system_sha256").unwrap(), payloads.system_sha256);
        assert_eq!(run.get("system_matches_payload").unwrap(), "yes");
        assert_eq!(run.get("greeting").unwrap(), GREETING);
        assert_eq!(run.get("system_files").unwrap().trim(), SYSTEM_FILES);
        assert_eq!(
            run.get("esp_files").unwrap().trim(),
            "./EFI/BOOT/BOOTx64.EFI ./EFI/metropolis/boot-a.efi"
        );
        assert_eq!(run.get("boot_count").unwrap(), boot.to_string(), "{c}");
    }
}
