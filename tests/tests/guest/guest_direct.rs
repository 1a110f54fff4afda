//! Direct kernel boot (`-kernel/-initrd`) of Debian's kernel on a disk served
//! over vhost-user-blk: the guest sees the GPT, reads and writes partitions.

use std::time::Instant;

use ocidisk_tests::guest::rawdisk::{build_gpt_disk, Content, PartitionSpec};
use ocidisk_tests::guest::{Assets, InitramfsBuilder, VhostUserServer, VmConfig};
use sha2::{Digest, Sha256};

/// Deterministic, incompressible-looking bytes for a partition payload.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64: cheap and reproducible.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Fixture {
    dir: tempfile::TempDir,
    assets: Assets,
    disk: std::path::PathBuf,
    system: Vec<u8>,
}

fn fixture() -> Fixture {
    let assets = Assets::locate().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let hello = dir.path().join("hello.txt");
    std::fs::write(&hello, "hello from the host\n").unwrap();
    let system = payload(3 << 20, 7);
    let disk = dir.path().join("disk.raw");
    build_gpt_disk(
        &disk,
        &[
            PartitionSpec {
                name: "ESP".into(),
                type_code: "ef00".into(),
                size_mib: 40,
                content: Content::Fat {
                    label: "TESTESP".into(),
                    files: vec![
                        ("EFI/BOOT/hello.txt".into(), hello.clone()),
                        ("readme.txt".into(), hello),
                    ],
                },
            },
            PartitionSpec {
                name: "METROPOLIS-SYSTEM-A".into(),
                type_code: "8300".into(),
                size_mib: 4,
                content: Content::Bytes(system.clone()),
            },
            PartitionSpec {
                name: "METROPOLIS-NODE-DATA".into(),
                type_code: "8300".into(),
                size_mib: 16,
                content: Content::Empty,
            },
        ],
    )
    .unwrap();
    Fixture {
        dir,
        assets,
        disk,
        system,
    }
}

impl Fixture {
    fn boot(&self, name: &str, script: &str) -> ocidisk_tests::guest::GuestRun {
        let initrd = self.dir.path().join(format!("{name}.cpio"));
        InitramfsBuilder::new(&self.assets)
            .script(script)
            .write(&initrd)
            .unwrap();
        let socket = self.dir.path().join(format!("{name}.sock"));
        let server =
            VhostUserServer::qemu_storage_daemon(&self.disk, &socket, self.dir.path()).unwrap();
        let started = Instant::now();
        let run = VmConfig::direct(&socket, &self.assets.vmlinuz, &initrd)
            .run(self.dir.path())
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "{name}: boot to poweroff {:.1} s (guest uptime at init {} s, at end {} s)",
            started.elapsed().as_secs_f64(),
            run.get("uptime_at_init").unwrap_or("?"),
            run.get("uptime_at_end").unwrap_or("?"),
        );
        let status = server.stop().unwrap();
        assert!(status.success() || status.code().is_none(), "{status}");
        run
    }
}

#[test]
fn guest_sees_partitions_by_name_reads_them_and_mounts_the_esp() {
    let f = fixture();
    let script = format!(
        r#"
for p in ESP METROPOLIS-SYSTEM-A METROPOLIS-NODE-DATA; do report "dev_$p" "$(part_dev $p)"; done
sys=$(part_dev METROPOLIS-SYSTEM-A)
report system_sha256 "$(dd if=$sys bs=1M count={mib} 2>/dev/null | sha256sum | cut -d' ' -f1)"
report system_size "$(cat /sys/class/block/${{sys#/dev/}}/size)"
mkdir -p /mnt/esp
mount -t vfat -o ro "$(part_dev ESP)" /mnt/esp
report esp_files "$(cd /mnt/esp && find . -type f | sort | tr '\n' ' ')"
report esp_hello "$(cat /mnt/esp/EFI/BOOT/hello.txt)"
umount /mnt/esp
"#,
        mib = f.system.len() >> 20
    );
    let run = f.boot("read", &script);
    assert_eq!(run.get("dev_ESP").unwrap(), "/dev/vda1", "{}", run.console);
    assert_eq!(run.get("dev_METROPOLIS-SYSTEM-A").unwrap(), "/dev/vda2");
    assert_eq!(run.get("dev_METROPOLIS-NODE-DATA").unwrap(), "/dev/vda3");
    assert_eq!(
        run.get("system_sha256").unwrap(),
        hex(&Sha256::digest(&f.system))
    );
    assert_eq!(
        run.get("system_size").unwrap(),
        (4u64 << 20 >> 9).to_string()
    );
    assert_eq!(
        run.get("esp_files").unwrap().trim(),
        "./EFI/BOOT/hello.txt ./readme.txt"
    );
    assert_eq!(run.get("esp_hello").unwrap(), "hello from the host");
}

#[test]
fn a_file_written_and_synced_survives_a_new_vm_and_server() {
    let f = fixture();
    let first = f.boot(
        "write",
        r#"
data=$(part_dev METROPOLIS-NODE-DATA)
mkdosfs -n NODEDATA "$data" >/dev/null
mkdir -p /mnt/data
mount -t vfat "$data" /mnt/data
echo "written by boot one" > /mnt/data/marker.txt
sync
umount /mnt/data
report wrote yes
"#,
    );
    assert_eq!(first.get("wrote").unwrap(), "yes");
    // A new qemu-storage-daemon and a new QEMU: only the disk carries state.
    let second = f.boot(
        "reread",
        r#"
mkdir -p /mnt/data
mount -t vfat -o ro "$(part_dev METROPOLIS-NODE-DATA)" /mnt/data
report marker "$(cat /mnt/data/marker.txt)"
"#,
    );
    assert_eq!(second.get("marker").unwrap(), "written by boot one");
}

#[test]
fn a_failing_guest_script_fails_the_run_with_the_console() {
    let f = fixture();
    let initrd = f.dir.path().join("fail.cpio");
    InitramfsBuilder::new(&f.assets)
        .script("report before yes\npart_dev NO-SUCH-PARTITION-NAME-XYZ\nreport after yes\n")
        .write(&initrd)
        .unwrap();
    let socket = f.dir.path().join("fail.sock");
    let _server = VhostUserServer::qemu_storage_daemon(&f.disk, &socket, f.dir.path()).unwrap();
    let err = VmConfig::direct(&socket, &f.assets.vmlinuz, &initrd)
        .run(f.dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("test script failed with status 1"), "{err}");
    assert!(err.contains("OCIDISK before=yes"), "{err}");
    assert!(err.contains("no partition named NO-SUCH"), "{err}");
    assert!(!err.contains("OCIDISK after=yes"), "{err}");
}

#[test]
fn a_hung_guest_is_killed_at_the_time_limit() {
    let f = fixture();
    let initrd = f.dir.path().join("hang.cpio");
    InitramfsBuilder::new(&f.assets)
        .script("report hanging yes\nsleep 1000\n")
        .write(&initrd)
        .unwrap();
    let socket = f.dir.path().join("hang.sock");
    let _server = VhostUserServer::qemu_storage_daemon(&f.disk, &socket, f.dir.path()).unwrap();
    let mut vm = VmConfig::direct(&socket, &f.assets.vmlinuz, &initrd);
    // Long enough to reach the script on a loaded CI machine (boots take 5–25 s).
    vm.timeout = std::time::Duration::from_secs(40);
    let started = Instant::now();
    let err = vm.run(f.dir.path()).unwrap_err().to_string();
    assert!(started.elapsed() < std::time::Duration::from_secs(55));
    assert!(err.contains("did not finish within 40s"), "{err}");
    assert!(err.contains("OCIDISK hanging=yes"), "{err}");
}

#[test]
fn a_module_that_fails_to_load_fails_the_run() {
    let f = fixture();
    let initrd = f.dir.path().join("badmod.cpio");
    // erofs needs crc32c_generic loaded first (a soft dependency): without it
    // libcrc32c's init fails in the guest.
    InitramfsBuilder::new(&f.assets)
        .module("erofs")
        .script("report ran yes\n")
        .write(&initrd)
        .unwrap();
    let socket = f.dir.path().join("badmod.sock");
    let _server = VhostUserServer::qemu_storage_daemon(&f.disk, &socket, f.dir.path()).unwrap();
    let err = VmConfig::direct(&socket, &f.assets.vmlinuz, &initrd)
        .run(f.dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kernel modules failed to load in the guest: libcrc32c.ko erofs.ko"),
        "{err}"
    );
}
