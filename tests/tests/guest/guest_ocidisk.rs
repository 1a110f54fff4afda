//! QEMU guests on a disk served by the real `ocidisk serve`: the sample OS
//! image (Monogon's format) composed with the `monogon` preset at 5 GiB, with
//! a per-VM overlay. The guest checks the partition table, the payloads and
//! the ESP; what it writes must survive the VM and the server being stopped
//! and started again.
//!
//! Needs `.ci/install-deps` (the binary is built by `ocidisk_binary`).

use std::path::PathBuf;
use std::process::Command;

use ocidisk_tests::blkio_client::{ocidisk_binary, BlkioClient};
use ocidisk_tests::cli::CommandExt as _;
use ocidisk_tests::guest::{Accel, Assets, GuestRun, InitramfsBuilder, VhostUserServer, VmConfig};
use ocidisk_tests::sample::{
    build_sample_image, sha256_hex, SampleImage, DATA, ESP, GREETING, SYSTEM_A, SYSTEM_B,
    SYSTEM_FILES,
};

/// The monogon preset at 5 GiB, as DESIGN.md's table gives it:
/// (name, first LBA, sectors).
const PARTITIONS: [(&str, u64, u64); 4] = [
    (ESP, 2048, 262_144),
    (SYSTEM_A, 264_192, 2_097_152),
    (SYSTEM_B, 2_361_344, 2_097_152),
    (DATA, 4_458_496, 6_025_216),
];
const DISK_SECTORS: u64 = 10_485_760;
const LAYOUT_ARGS: &[&str] = &["--layout", "monogon", "--disk-size", "5GiB"];

/// Where boot one writes raw bytes over the system payload (a blob extent):
/// 64 KiB from byte 8 KiB of slot A.
const RAW_A_OFFSET: u64 = 8 << 10;
/// Where boot one writes raw bytes into the all-zero slot B: 64 KiB at 512 MiB.
const RAW_B_OFFSET: u64 = 512 << 20;
const RAW_LEN: u64 = 64 << 10;

struct Fixture {
    dir: tempfile::TempDir,
    assets: Assets,
    sample: SampleImage,
    system: Vec<u8>,
    ocidisk: PathBuf,
    overlay: PathBuf,
}

impl Fixture {
    /// Builds the sample image (about 5 s) in a fresh directory: tests run in
    /// separate processes under nextest, so there is nothing to share.
    fn new() -> Fixture {
        let assets = Assets::locate().unwrap_or_else(|e| panic!("{e}"));
        let ocidisk = ocidisk_binary().unwrap_or_else(|e| panic!("{e:#}"));
        let dir = tempfile::tempdir().unwrap();
        let sample = build_sample_image(&assets, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let system = std::fs::read(&sample.payloads.system).unwrap();
        assert_eq!(system.len() as u64, sample.payloads.system_len);
        assert_eq!(
            system.len() % 4096,
            0,
            "erofs images are whole 4 KiB blocks"
        );
        assert!(
            system.len() as u64 > RAW_A_OFFSET + RAW_LEN + 4096,
            "the system payload must extend past the raw write over it"
        );
        let overlay = dir.path().join("vm.overlay");
        Fixture {
            dir,
            assets,
            sample,
            system,
            ocidisk,
            overlay,
        }
    }

    /// Starts `ocidisk serve` on the sample image and the VM's overlay.
    fn serve(&self, name: &str, extra: &[&str]) -> (VhostUserServer, PathBuf) {
        let socket = self.dir.path().join(format!("{name}.sock"));
        let args: Vec<&str> = LAYOUT_ARGS.iter().chain(extra).copied().collect();
        let server = VhostUserServer::ocidisk_serve(
            &self.ocidisk,
            &self.sample.image,
            &self.overlay,
            &socket,
            &args,
            self.dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (server, socket)
    }

    /// Writes an initramfs running `script` (with the harness's helpers).
    fn initrd(&self, name: &str, script: &str) -> PathBuf {
        let initrd = self.dir.path().join(format!("{name}.cpio"));
        InitramfsBuilder::new(&self.assets)
            .script(script)
            .write(&initrd)
            .unwrap_or_else(|e| panic!("{e}"));
        initrd
    }

    /// Boots `vm`, prints its timing, and stops the server, which must exit 0
    /// after flushing the overlay (its SIGTERM contract).
    fn boot_and_stop(&self, name: &str, vm: VmConfig, server: VhostUserServer) -> GuestRun {
        let run = vm.run(self.dir.path());
        let log = server.log();
        let status = server.stop().unwrap_or_else(|e| panic!("{e}"));
        let run = run.unwrap_or_else(|e| panic!("{e}\n--- ocidisk serve ---\n{log}"));
        eprintln!(
            "{name} ({}): QEMU start to poweroff {:.1} s, guest uptime at init {} s, at end {} s",
            vm.accel.as_str(),
            run.elapsed.as_secs_f64(),
            run.get("uptime_at_init").unwrap_or("?"),
            run.get("uptime_at_end").unwrap_or("?"),
        );
        assert_eq!(status.code(), Some(0), "ocidisk serve after SIGTERM\n{log}");
        assert!(
            log.contains("frontend connected") && log.contains("frontend disconnected"),
            "{log}"
        );
        run
    }

    /// Every blob in the image still hashes to its name: the server never
    /// writes to the OCI cache, whatever the guest does.
    fn assert_blobs_intact(&self) {
        let blobs = self.sample.image.join("blobs/sha256");
        let mut n = 0;
        for entry in std::fs::read_dir(&blobs).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(
                sha256_hex(&std::fs::read(&path).unwrap()),
                name,
                "blob {} changed",
                path.display()
            );
            n += 1;
        }
        assert!(n >= 4, "manifest, config and two layers, found {n}");
    }
}

fn sha_of(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

/// What boot one (direct kernel boot) looks at and writes.
fn first_boot_script(system_len: u64, token: &str) -> String {
    format!(
        r#"
for p in {ESP} {SYSTEM_A} {SYSTEM_B} {DATA}; do
  d=$(part_dev $p)
  n=${{d#/dev/}}
  report "part_$p" "$d start=$(cat /sys/class/block/$n/start) size=$(cat /sys/class/block/$n/size)"
done
sectors=$(cat /sys/block/vda/size)
report disk_sectors "$sectors"
report gpt_primary "$(dd if=/dev/vda bs=512 count=34 2>/dev/null | sha256sum | cut -d' ' -f1)"
report gpt_backup "$(dd if=/dev/vda bs=512 skip=$((sectors - 33)) count=33 2>/dev/null | sha256sum | cut -d' ' -f1)"
report esp_by_label "$(findfs LABEL=MNGN_BOOT)"
sys=$(part_dev {SYSTEM_A})
report system_sha256 "$(head -c {system_len} $sys | sha256sum | cut -d' ' -f1)"
report system_after_payload "$(dd if=$sys bs=4096 skip={system_blocks} count=256 2>/dev/null | sha256sum | cut -d' ' -f1)"
report system_b_head "$(head -c 1048576 $(part_dev {SYSTEM_B}) | sha256sum | cut -d' ' -f1)"
report zero_mib "$(head -c 1048576 /dev/zero | sha256sum | cut -d' ' -f1)"
mkdir -p /mnt/esp /mnt/data
mount -t vfat -o ro "$(part_dev {ESP})" /mnt/esp
report esp_files "$(cd /mnt/esp && find . -type f | sort | tr '\n' ' ')"
report esp_bootx64 "$(sha256sum < /mnt/esp/EFI/BOOT/BOOTx64.EFI | cut -d' ' -f1)"
report esp_boot_a "$(sha256sum < /mnt/esp/EFI/metropolis/boot-a.efi | cut -d' ' -f1)"
umount /mnt/esp

data=$(part_dev {DATA})
mkdosfs -n NODEDATA "$data" >/dev/null
mount -t vfat "$data" /mnt/data
echo "{token}" > /mnt/data/marker.txt
sync
umount /mnt/data
report wrote_marker yes

# Raw writes: over the blob-backed system payload, and into the zero slot B.
head -c {raw_len} /dev/urandom > /tmp/raw_a
dd if=/tmp/raw_a of=$sys bs=4096 seek={raw_a_block} conv=notrunc,fsync 2>/dev/null
report raw_a "$(sha256sum < /tmp/raw_a | cut -d' ' -f1)"
head -c {raw_len} /dev/urandom > /tmp/raw_b
dd if=/tmp/raw_b of=$(part_dev {SYSTEM_B}) bs=4096 seek={raw_b_block} conv=notrunc,fsync 2>/dev/null
report raw_b "$(sha256sum < /tmp/raw_b | cut -d' ' -f1)"
"#,
        system_blocks = system_len / 4096,
        raw_len = RAW_LEN,
        raw_a_block = RAW_A_OFFSET / 4096,
        raw_b_block = RAW_B_OFFSET / 4096,
    )
}

/// What boot two (after the server restarted) reads back.
fn second_boot_script(system_len: u64) -> String {
    let after = (RAW_A_OFFSET + RAW_LEN) / 4096;
    format!(
        r#"
sectors=$(cat /sys/block/vda/size)
report gpt_primary "$(dd if=/dev/vda bs=512 count=34 2>/dev/null | sha256sum | cut -d' ' -f1)"
report gpt_backup "$(dd if=/dev/vda bs=512 skip=$((sectors - 33)) count=33 2>/dev/null | sha256sum | cut -d' ' -f1)"
sys=$(part_dev {SYSTEM_A})
report system_before_raw "$(head -c {raw_a_offset} $sys | sha256sum | cut -d' ' -f1)"
report raw_a "$(dd if=$sys bs=4096 skip={raw_a_block} count={raw_blocks} 2>/dev/null | sha256sum | cut -d' ' -f1)"
report system_after_raw "$(dd if=$sys bs=4096 skip={after} count={rest} 2>/dev/null | sha256sum | cut -d' ' -f1)"
report raw_b "$(dd if=$(part_dev {SYSTEM_B}) bs=4096 skip={raw_b_block} count={raw_blocks} 2>/dev/null | sha256sum | cut -d' ' -f1)"
mkdir -p /mnt/data
mount -t vfat -o ro "$(part_dev {DATA})" /mnt/data
report marker "$(cat /mnt/data/marker.txt)"
umount /mnt/data
"#,
        raw_a_offset = RAW_A_OFFSET,
        raw_a_block = RAW_A_OFFSET / 4096,
        raw_b_block = RAW_B_OFFSET / 4096,
        raw_blocks = RAW_LEN / 4096,
        rest = system_len / 4096 - after,
    )
}

/// Direct kernel boot on the composed disk: the GPT and the partitions by
/// name at Monogon's LBAs, the system payload on slot A, the ESP as vfat
/// with the kernel payload under both names; then writes (a file system on
/// the data partition, raw bytes over the payload and into slot B) survive
/// the VM powering off, `ocidisk serve` exiting on SIGTERM, a new server on
/// the same overlay and a new VM, and land where the exported disk says.
#[test]
fn direct_boot_sees_the_composed_disk_and_its_writes_survive_a_server_restart() {
    let f = Fixture::new();
    let len = f.system.len() as u64;
    let payloads = &f.sample.payloads;
    let token = format!("written by boot one of test process {}", std::process::id());

    let (server, socket) = f.serve("direct-1", &[]);
    let initrd = f.initrd("direct-1", &first_boot_script(len, &token));
    let one = f.boot_and_stop(
        "direct boot 1",
        VmConfig::direct(&socket, &f.assets.vmlinuz, &initrd),
        server,
    );
    let c = &one.console;
    for (name, start, size) in PARTITIONS {
        let dev = one
            .get(&format!("part_{name}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            dev.ends_with(&format!("start={start} size={size}")),
            "{name}: {dev}\n{c}"
        );
    }
    assert_eq!(
        one.get("part_ESP").unwrap(),
        "/dev/vda1 start=2048 size=262144"
    );
    assert_eq!(
        one.get("part_METROPOLIS-NODE-DATA")
            .unwrap()
            .split(' ')
            .next(),
        Some("/dev/vda4")
    );
    assert_eq!(one.get("disk_sectors").unwrap(), DISK_SECTORS.to_string());
    assert_eq!(one.get("esp_by_label").unwrap(), "/dev/vda1", "{c}");
    assert_eq!(
        one.get("system_sha256").unwrap(),
        payloads.system_sha256,
        "{c}"
    );
    let zero_mib = sha_of(&vec![0u8; 1 << 20]);
    assert_eq!(one.get("zero_mib").unwrap(), zero_mib);
    assert_eq!(
        one.get("system_after_payload").unwrap(),
        zero_mib,
        "slot A after the payload"
    );
    assert_eq!(one.get("system_b_head").unwrap(), zero_mib, "slot B");
    assert_eq!(
        one.get("esp_files").unwrap().trim(),
        "./EFI/BOOT/BOOTx64.EFI ./EFI/metropolis/boot-a.efi"
    );
    assert_eq!(one.get("esp_bootx64").unwrap(), payloads.kernel_efi_sha256);
    assert_eq!(one.get("esp_boot_a").unwrap(), payloads.kernel_efi_sha256);
    assert_eq!(one.get("wrote_marker").unwrap(), "yes");
    let raw_a = one.get("raw_a").unwrap().to_string();
    let raw_b = one.get("raw_b").unwrap().to_string();
    assert_ne!(raw_a, raw_b, "two independent random blocks");
    f.assert_blobs_intact();

    // A new server on the same overlay, and a new VM.
    let (server, socket) = f.serve("direct-2", &[]);
    let initrd = f.initrd("direct-2", &second_boot_script(len));
    let two = f.boot_and_stop(
        "direct boot 2",
        VmConfig::direct(&socket, &f.assets.vmlinuz, &initrd),
        server,
    );
    let c = &two.console;
    assert_eq!(two.get("marker").unwrap(), token, "{c}");
    assert_eq!(two.get("raw_a").unwrap(), raw_a, "{c}");
    assert_eq!(two.get("raw_b").unwrap(), raw_b, "{c}");
    let a = RAW_A_OFFSET as usize;
    let b = (RAW_A_OFFSET + RAW_LEN) as usize;
    assert_eq!(
        two.get("system_before_raw").unwrap(),
        sha_of(&f.system[..a])
    );
    assert_eq!(two.get("system_after_raw").unwrap(), sha_of(&f.system[b..]));
    // Same disk after a restart: the same GUIDs, so the same GPT bytes.
    assert_eq!(
        two.get("gpt_primary").unwrap(),
        one.get("gpt_primary").unwrap()
    );
    assert_eq!(
        two.get("gpt_backup").unwrap(),
        one.get("gpt_backup").unwrap()
    );
    f.assert_blobs_intact();

    // From the host, through a third server on the same overlay: the
    // guest's bytes are at the disk offsets DESIGN.md's table gives.
    // (`ocidisk export --overlay` would check the same bytes; reading
    // through a server also exercises the backend's read path.)
    let (server, socket) = f.serve("host-read", &[]);
    let mut client = BlkioClient::connect(&socket, 1, 1 << 20).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(client.capacity(), DISK_SECTORS * 512);
    let mut read = |offset: u64, len: u64| {
        client
            .queue()
            .read(offset, len as usize)
            .unwrap_or_else(|e| panic!("reading {len} bytes at {offset}: {e}"))
    };
    let slot_a = PARTITIONS[1].1 * 512;
    let slot_b = PARTITIONS[2].1 * 512;
    assert_eq!(sha_of(&read(slot_a + RAW_A_OFFSET, RAW_LEN)), raw_a);
    assert_eq!(sha_of(&read(slot_b + RAW_B_OFFSET, RAW_LEN)), raw_b);
    assert_eq!(sha_of(&read(0, 34 * 512)), one.get("gpt_primary").unwrap());
    assert_eq!(
        sha_of(&read((DISK_SECTORS - 33) * 512, 33 * 512)),
        one.get("gpt_backup").unwrap()
    );
    let data_boot_sector = read(PARTITIONS[3].1 * 512, 512);
    assert_eq!(&data_boot_sector[3..10], b"mkdosfs", "the guest's mkdosfs");
    assert_eq!(&data_boot_sector[510..], [0x55, 0xaa]);
    drop(client);
    let log = server.log();
    let status = server.stop().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0), "{log}");
}

/// Checks what the sample image's own init reports.
pub(crate) fn assert_sample_reports(run: &GuestRun, sample: &SampleImage, boot_count: u32) {
    let c = &run.console;
    assert_eq!(
        run.get("partitions").unwrap().trim(),
        "vda1=ESP vda2=METROPOLIS-SYSTEM-A vda3=METROPOLIS-SYSTEM-B vda4=METROPOLIS-NODE-DATA",
        "{c}"
    );
    assert_eq!(
        run.get("system_sha256").unwrap(),
        sample.payloads.system_sha256
    );
    assert_eq!(run.get("system_matches_payload").unwrap(), "yes");
    assert_eq!(run.get("greeting").unwrap(), GREETING);
    assert_eq!(run.get("system_files").unwrap().trim(), SYSTEM_FILES);
    assert_eq!(
        run.get("esp_files").unwrap().trim(),
        "./EFI/BOOT/BOOTx64.EFI ./EFI/metropolis/boot-a.efi"
    );
    assert_eq!(
        run.get("boot_count").unwrap(),
        boot_count.to_string(),
        "{c}"
    );
}

/// UEFI boot as Monogon nodes boot: OVMF loads `EFI/BOOT/BOOTx64.EFI` (the
/// `kernel.efi` payload, a UKI, since no A/B loader is given) from the
/// synthesized FAT32 ESP; the UKI's init checks the disk and counts boots on
/// the data partition, which persists across a restarted `ocidisk serve`.
#[test]
fn uefi_boot_from_the_composed_esp_and_the_boot_count_persists() {
    let f = Fixture::new();
    for boot in 1..=2 {
        let (server, socket) = f.serve(&format!("uefi-{boot}"), &[]);
        let run = f.boot_and_stop(
            &format!("UEFI boot {boot}"),
            VmConfig::uefi(&socket),
            server,
        );
        assert_eq!(run.get("efi_booted").unwrap(), "yes", "{}", run.console);
        assert_sample_reports(&run, &f.sample, boot);
    }
    f.assert_blobs_intact();
}

/// Two virtqueues, two vCPUs: the guest's block layer gets two hardware
/// queues and submits on both (one per CPU, pinned with taskset); data
/// written through one queue reads back through the other.
#[test]
fn two_queues_serve_a_guest_with_two_cpus() {
    let f = Fixture::new();
    let script = format!(
        r#"
report mq "$(ls /sys/block/vda/mq | tr '\n' ' ')"
mount -t debugfs debugfs /sys/kernel/debug
b=$(part_dev {SYSTEM_B})
head -c 4194304 /dev/urandom > /tmp/w0
head -c 4194304 /dev/urandom > /tmp/w1
taskset -c 0 dd if=/tmp/w0 of=$b bs=65536 conv=notrunc,fsync 2>/dev/null & p0=$!
taskset -c 1 dd if=/tmp/w1 of=$b bs=65536 seek=64 conv=notrunc,fsync 2>/dev/null & p1=$!
wait $p0
wait $p1
echo 3 > /proc/sys/vm/drop_caches
w0=$(sha256sum < /tmp/w0 | cut -d' ' -f1)
w1=$(sha256sum < /tmp/w1 | cut -d' ' -f1)
r0=$(taskset -c 1 dd if=$b bs=65536 count=64 2>/dev/null | sha256sum | cut -d' ' -f1)
r1=$(taskset -c 0 dd if=$b bs=65536 skip=64 count=64 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$w0" = "$r0" ] && [ "$w1" = "$r1" ] && report readback same || report readback differs
[ "$w0" != "$w1" ] && report distinct yes
# The backend signals completions on each virtqueue's own interrupt
# (virtioN-req.Q); the block layer counts runs of each hardware queue.
grep -E 'virtio[0-9]+-req\.[0-9]+$' /proc/interrupts | while read -r line; do
  report "irq_${{line##*-}}" "$line"
done
for h in /sys/kernel/debug/block/vda/hctx*; do report "run_${{h##*/}}" "$(cat $h/run)"; done
report system_sha256 "$(head -c {len} $(part_dev {SYSTEM_A}) | sha256sum | cut -d' ' -f1)"
"#,
        len = f.system.len()
    );
    let (server, socket) = f.serve("mq", &["--num-queues", "2"]);
    let initrd = f.initrd("mq", &script);
    let mut vm = VmConfig::direct(&socket, &f.assets.vmlinuz, &initrd);
    vm.num_queues = 2;
    vm.cpus = 2;
    let run = f.boot_and_stop("two queues", vm, server);
    let c = &run.console;
    assert_eq!(run.get("mq").unwrap().trim(), "0 1", "{c}");
    assert_eq!(run.get("readback").unwrap(), "same", "{c}");
    assert_eq!(run.get("distinct").unwrap(), "yes");
    for q in 0..2 {
        let runs: u64 = run
            .get(&format!("run_hctx{q}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("hctx{q} runs: {e}\n{c}"));
        assert!(runs > 0, "hardware queue {q} never ran\n{c}");
        // "NN: <count per CPU> PCI-MSIX-… virtioM-req.Q": the counts follow the IRQ number.
        let line = run.get(&format!("irq_req.{q}")).unwrap();
        let irqs: u64 = line
            .split_whitespace()
            .skip(1)
            .map_while(|w| w.parse::<u64>().ok())
            .sum();
        assert!(
            irqs > 0,
            "no completion interrupt on queue {q}: {line}\n{c}"
        );
        eprintln!("queue {q}: {runs} hardware queue runs, {irqs} completion interrupts");
    }
    assert_eq!(
        run.get("system_sha256").unwrap(),
        f.sample.payloads.system_sha256
    );
}

/// Boot time on the same disk bytes: `ocidisk serve` vs qemu-storage-daemon
/// exporting the disk `ocidisk export` writes. A measurement, not a test:
/// `cargo test -p ocidisk-tests --test guest -- --ignored --nocapture`.
#[test]
#[ignore = "measurement: several UEFI boots under TCG, minutes"]
fn measure_boot_time_ocidisk_vs_qemu_storage_daemon() {
    const ROUNDS: usize = 5;
    let f = Fixture::new();
    let raw = f.dir.path().join("peer.raw");
    Command::new(&f.ocidisk)
        .arg("export")
        .arg("--image")
        .arg(&f.sample.image)
        .args(LAYOUT_ARGS)
        .arg("--output")
        .arg(&raw)
        .run_ok();
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut init: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        // Alternate, so machine load drifts affect both alike.
        for (i, peer) in ["ocidisk", "qsd"].into_iter().enumerate() {
            let name = format!("{peer}-{round}");
            let run = if peer == "ocidisk" {
                let (server, socket) = f.serve(&name, &[]);
                f.boot_and_stop(&name, VmConfig::uefi(&socket), server)
            } else {
                let socket = f.dir.path().join(format!("{name}.sock"));
                let server =
                    VhostUserServer::qemu_storage_daemon(&raw, &socket, f.dir.path()).unwrap();
                let run = VmConfig::uefi(&socket).run(f.dir.path());
                server.stop().unwrap();
                let run = run.unwrap_or_else(|e| panic!("{e}"));
                eprintln!(
                    "{name}: QEMU start to poweroff {:.1} s",
                    run.elapsed.as_secs_f64()
                );
                run
            };
            times[i].push(run.elapsed.as_secs_f64());
            init[i].push(
                run.get("uptime_at_init")
                    .unwrap()
                    .parse()
                    .unwrap_or(f64::NAN),
            );
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "UEFI boot of the sample image, median of {ROUNDS} rounds, {}:",
        Accel::detect().as_str()
    );
    println!(
        "{:<22} {:>14} {:>20}",
        "server", "poweroff (s)", "uptime at init (s)"
    );
    for (i, peer) in ["ocidisk serve", "qemu-storage-daemon"]
        .into_iter()
        .enumerate()
    {
        println!(
            "{peer:<22} {:>14.1} {:>20.2}",
            median(&times[i]),
            median(&init[i])
        );
    }
    println!(
        "ratio ocidisk/qsd: {:.2}",
        median(&times[0]) / median(&times[1])
    );
}
