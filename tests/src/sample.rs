//! The sample OS image the README demo boots: a Monogon-style `system`
//! payload (an erofs root file system) and a `kernel.efi` payload (a unified
//! kernel image whose init reports what the guest sees of its disk).

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::guest::rawdisk::{build_gpt_disk, Content, PartitionInfo, PartitionSpec};
use crate::guest::{run_tool, Assets, Error, InitramfsBuilder, Result, DEFAULT_CMDLINE};
use crate::oci_writer::{ImageBuilder, OsImage, Payload};
use crate::uki::{build_uki, UkiSpec};

/// Monogon's partition names, which the sample guest looks for.
pub const ESP: &str = "ESP";
/// The system partition the firmware's A/B loader would pick first.
pub const SYSTEM_A: &str = "METROPOLIS-SYSTEM-A";
/// The other system slot (empty).
pub const SYSTEM_B: &str = "METROPOLIS-SYSTEM-B";
/// The node's data partition (zeros until the node formats it).
pub const DATA: &str = "METROPOLIS-NODE-DATA";

/// The greeting stored in the system payload, which the guest prints.
pub const GREETING: &str = "hello from the ocidisk sample system payload";

/// Size of `usr/share/ocidisk/noise`, a pseudo-random file that makes the
/// system payload span several 1 MiB hash chunks and many pages, so reading
/// it back exercises more than one tiny extent.
pub const NOISE_LEN: usize = 3 << 20;

/// The files of the sample system payload, as the guest's `find . -type f | sort` lists them.
pub const SYSTEM_FILES: &str =
    "./etc/greeting ./etc/os-release ./usr/share/ocidisk/README ./usr/share/ocidisk/noise";

/// The sample payloads on disk.
#[derive(Debug, Clone)]
pub struct SamplePayloads {
    /// The `system` payload: an erofs image.
    pub system: PathBuf,
    /// The `kernel.efi` payload: a unified kernel image.
    pub kernel_efi: PathBuf,
    /// Hex SHA-256 of the system payload, which the guest checks.
    pub system_sha256: String,
    /// The system payload's size in bytes (a multiple of erofs's 4 KiB block).
    pub system_len: u64,
    /// Hex SHA-256 of the `kernel.efi` payload.
    pub kernel_efi_sha256: String,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic bytes that do not compress (xorshift64), so payload digests
/// are the same on every build.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The sample guest's report script. `{size}` and `{sha}` are the system
/// payload's, so the guest can tell whether the partition starts with it.
fn sample_script(size: u64, sha: &str) -> String {
    format!(
        r#"
report efi_booted "$([ -d /sys/firmware/efi ] && echo yes || echo no)"
report partitions "$(for u in /sys/class/block/vda*/uevent; do n=$(sed -n 's/^PARTNAME=//p' $u); [ -n "$n" ] && printf '%s=%s ' "$(sed -n 's/^DEVNAME=//p' $u)" "$n"; done)"
sys=$(part_dev {SYSTEM_A})
got=$(dd if=$sys bs=4096 count=$(({size} / 4096)) 2>/dev/null | sha256sum | cut -d' ' -f1)
report system_sha256 "$got"
[ "$got" = "{sha}" ] && report system_matches_payload yes || report system_matches_payload no
mkdir -p /mnt/system /mnt/esp /mnt/data
mount -t erofs -o ro "$sys" /mnt/system
report system_files "$(cd /mnt/system && find . -type f | sort | tr '\n' ' ')"
report greeting "$(cat /mnt/system/etc/greeting)"
umount /mnt/system
mount -t vfat -o ro "$(part_dev {ESP})" /mnt/esp
report esp_files "$(cd /mnt/esp && find . -type f | sort | tr '\n' ' ')"
umount /mnt/esp
data=$(part_dev {DATA})
mount -t vfat "$data" /mnt/data 2>/dev/null || {{ mkdosfs -n NODEDATA "$data" >/dev/null && mount -t vfat "$data" /mnt/data; }}
n=$(( $(cat /mnt/data/boot-count 2>/dev/null || echo 0) + 1 ))
echo $n > /mnt/data/boot-count
sync
umount /mnt/data
report boot_count "$n"
"#
    )
}

/// Builds the sample payloads into `dir` (`system.erofs`, `kernel.efi`).
pub fn build_sample_payloads(assets: &Assets, dir: &Path) -> Result<SamplePayloads> {
    let io = |what: String| move |source| Error::Io { what, source };
    let tree = dir.join("system-tree");
    std::fs::create_dir_all(tree.join("etc"))
        .map_err(io(format!("creating {}", tree.display())))?;
    std::fs::create_dir_all(tree.join("usr/share/ocidisk"))
        .map_err(io(format!("creating {}", tree.display())))?;
    let files: [(&str, String); 3] = [
        ("etc/greeting", format!("{GREETING}\n")),
        (
            "etc/os-release",
            "ID=ocidisk-sample\nNAME=\"ocidisk sample\"\n".to_string(),
        ),
        (
            "usr/share/ocidisk/README",
            "A tiny root file system standing in for Monogon's system payload.\n".to_string(),
        ),
    ];
    for (rel, text) in &files {
        let p = tree.join(rel);
        std::fs::write(&p, text).map_err(io(format!("writing {}", p.display())))?;
    }
    let noise = tree.join("usr/share/ocidisk/noise");
    std::fs::write(&noise, pseudo_random(NOISE_LEN, 0x6f63_6964))
        .map_err(io(format!("writing {}", noise.display())))?;
    let system = dir.join("system.erofs");
    // Fixed timestamp and UUID: the same inputs give the same payload digest.
    run_tool(
        Command::new("mkfs.erofs")
            .args(["--quiet", "--all-root", "-T0", "-U"])
            .arg("6f636964-6973-6b00-0000-73616d706c65")
            .arg(&system)
            .arg(&tree),
    )?;
    let system_bytes =
        std::fs::read(&system).map_err(io(format!("reading {}", system.display())))?;
    let system_sha256 = sha256_hex(&system_bytes);

    let initrd = dir.join("sample-initrd.cpio");
    InitramfsBuilder::new(assets)
        // libcrc32c (erofs's dependency) asks the crypto API for "crc32c", a
        // soft dependency modules.dep does not list, and the guest has no
        // modprobe for the kernel to call: load the implementation first.
        .module("crc32c_generic")
        .module("erofs")
        .script(&sample_script(system_bytes.len() as u64, &system_sha256))
        .write(&initrd)?;
    let kernel_efi = dir.join("kernel.efi");
    build_uki(
        &UkiSpec {
            stub: assets.efi_stub.clone(),
            kernel: assets.vmlinuz.clone(),
            initrd,
            cmdline: DEFAULT_CMDLINE.to_string(),
            os_release: "ID=ocidisk-sample\nNAME=\"ocidisk sample\"\n".to_string(),
        },
        dir,
        &kernel_efi,
    )?;
    let kernel_efi_sha256 = sha256_hex(
        &std::fs::read(&kernel_efi).map_err(io(format!("reading {}", kernel_efi.display())))?,
    );
    Ok(SamplePayloads {
        system,
        kernel_efi,
        system_sha256,
        system_len: system_bytes.len() as u64,
        kernel_efi_sha256,
    })
}

/// The ref name of the sample image's manifest in its `index.json`.
pub const SAMPLE_REF: &str = "ocidisk-sample";

/// A written sample image.
#[derive(Debug, Clone)]
pub struct SampleImage {
    /// The OCI image layout directory (`--image` of `ocidisk`).
    pub image: PathBuf,
    /// Its manifest digest.
    pub manifest_digest: String,
    /// The payloads it was made from.
    pub payloads: SamplePayloads,
}

/// Builds the sample payloads into `dir/payloads` and writes them as a
/// Monogon-format OCI image layout (uncompressed layers, `kernel.efi` then
/// `system`, as Monogon's build writes them) to `dir/image`.
pub fn build_sample_image(assets: &Assets, dir: &Path) -> Result<SampleImage> {
    let payload_dir = dir.join("payloads");
    std::fs::create_dir_all(&payload_dir).map_err(|source| Error::Io {
        what: format!("creating {}", payload_dir.display()),
        source,
    })?;
    let payloads = build_sample_payloads(assets, &payload_dir)?;
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| Error::Io {
            what: format!("reading {}", p.display()),
            source,
        })
    };
    let os = OsImage::new()
        .ref_name(SAMPLE_REF)
        .payload(Payload::new("kernel.efi", read(&payloads.kernel_efi)?))
        .payload(Payload::new("system", read(&payloads.system)?));
    let image = dir.join("image");
    let built = ImageBuilder::monogon(os)
        .write(&image)
        .map_err(|e| Error::Failed {
            what: format!("writing the sample OCI image to {}: {e:#}", image.display()),
            log: String::new(),
        })?;
    Ok(SampleImage {
        image,
        manifest_digest: built.manifest_digest().to_string(),
        payloads,
    })
}

/// A small raw disk in Monogon's partition order with the sample payloads
/// (ESP 64 MiB with the UKI as `EFI/BOOT/BOOTx64.EFI` and
/// `EFI/metropolis/boot-a.efi`, system A/B 16 MiB, data 64 MiB): what the
/// demo serves with qemu-storage-daemon where `ocidisk serve` is not available.
pub fn build_sample_raw_disk(payloads: &SamplePayloads, path: &Path) -> Result<Vec<PartitionInfo>> {
    let system = std::fs::read(&payloads.system).map_err(|source| Error::Io {
        what: format!("reading {}", payloads.system.display()),
        source,
    })?;
    let part = |name: &str, type_code: &str, size_mib, content| PartitionSpec {
        name: name.to_string(),
        type_code: type_code.to_string(),
        size_mib,
        content,
    };
    build_gpt_disk(
        path,
        &[
            part(
                ESP,
                "ef00",
                64,
                Content::Fat {
                    label: "MNGN_BOOT".to_string(),
                    files: vec![
                        (
                            "EFI/BOOT/BOOTx64.EFI".to_string(),
                            payloads.kernel_efi.clone(),
                        ),
                        (
                            "EFI/metropolis/boot-a.efi".to_string(),
                            payloads.kernel_efi.clone(),
                        ),
                    ],
                },
            ),
            part(
                SYSTEM_A,
                "ee96054b-f6d0-4267-aaaa-724b2afea74c",
                16,
                Content::Bytes(system),
            ),
            part(
                SYSTEM_B,
                "ee96054b-f6d0-4267-bbbb-724b2afea74c",
                16,
                Content::Empty,
            ),
            part(
                DATA,
                "9eeec464-6885-414a-b278-4305c51f7966",
                64,
                Content::Empty,
            ),
        ],
    )
}
