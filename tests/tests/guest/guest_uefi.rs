//! UEFI boot, as Monogon nodes boot: OVMF finds `EFI/BOOT/BOOTx64.EFI` on the
//! ESP of a disk served over vhost-user-blk, and that file is a unified kernel
//! image (systemd's stub + Debian's kernel + the harness's initramfs).

use std::time::Instant;

use ocidisk_tests::guest::rawdisk::{build_gpt_disk, Content, PartitionSpec};
use ocidisk_tests::guest::{Assets, InitramfsBuilder, VhostUserServer, VmConfig, DEFAULT_CMDLINE};
use ocidisk_tests::uki::{build_uki, pe_layout, UkiSpec};

#[test]
fn ovmf_boots_the_uki_from_the_esp_and_reaches_its_init() {
    let assets = Assets::locate().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    InitramfsBuilder::new(&assets)
        .script(
            r#"
report marker uki-init-reached
report cmdline "$(cat /proc/cmdline)"
report esp "$(part_dev ESP)"
report efi_booted "$([ -d /sys/firmware/efi ] && echo yes || echo no)"
"#,
        )
        .write(&initrd)
        .unwrap();
    let uki = dir.path().join("kernel.efi");
    let cmdline = format!("{DEFAULT_CMDLINE} ocidisk.uki=1");
    build_uki(
        &UkiSpec {
            stub: assets.efi_stub.clone(),
            kernel: assets.vmlinuz.clone(),
            initrd,
            cmdline: cmdline.clone(),
            os_release: "ID=ocidisk-test\nNAME=\"ocidisk test\"\n".into(),
        },
        dir.path(),
        &uki,
    )
    .unwrap();
    // The result is still a PE image, with our sections after the stub's,
    // and the same inputs give the same bytes (payload digests stay stable).
    let bytes = std::fs::read(&uki).unwrap();
    let again = dir.path().join("again.efi");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    build_uki(
        &UkiSpec {
            stub: assets.efi_stub.clone(),
            kernel: assets.vmlinuz.clone(),
            initrd: dir.path().join("initrd.cpio"),
            cmdline: cmdline.clone(),
            os_release: "ID=ocidisk-test\nNAME=\"ocidisk test\"\n".into(),
        },
        dir.path(),
        &again,
    )
    .unwrap();
    assert!(
        std::fs::read(&again).unwrap() == bytes,
        "UKI build is not reproducible"
    );
    let stub_layout =
        pe_layout(&assets.efi_stub, &std::fs::read(&assets.efi_stub).unwrap()).unwrap();
    let uki_layout = pe_layout(&uki, &bytes).unwrap();
    assert!(uki_layout.end_rva > stub_layout.end_rva + bytes.len() as u64 / 2);

    let disk = dir.path().join("disk.raw");
    build_gpt_disk(
        &disk,
        &[
            PartitionSpec {
                name: "ESP".into(),
                type_code: "ef00".into(),
                size_mib: 64,
                content: Content::Fat {
                    label: "MNGN_BOOT".into(),
                    files: vec![("EFI/BOOT/BOOTx64.EFI".into(), uki)],
                },
            },
            PartitionSpec {
                name: "METROPOLIS-NODE-DATA".into(),
                type_code: "8300".into(),
                size_mib: 4,
                content: Content::Empty,
            },
        ],
    )
    .unwrap();
    let socket = dir.path().join("uefi.sock");
    let server = VhostUserServer::qemu_storage_daemon(&disk, &socket, dir.path()).unwrap();
    let started = Instant::now();
    let run = VmConfig::uefi(&socket)
        .run(dir.path())
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "uefi: boot to poweroff {:.1} s (guest uptime at init {} s)",
        started.elapsed().as_secs_f64(),
        run.get("uptime_at_init").unwrap_or("?")
    );
    server.stop().unwrap();
    assert_eq!(run.get("marker").unwrap(), "uki-init-reached");
    assert!(
        run.get("cmdline").unwrap().contains("ocidisk.uki=1"),
        "{}",
        run.console
    );
    assert_eq!(run.get("esp").unwrap(), "/dev/vda1");
    assert_eq!(run.get("efi_booted").unwrap(), "yes");
}
