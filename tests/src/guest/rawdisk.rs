//! Raw GPT disk images built with the standard tools (sgdisk, mkfs.vfat,
//! mtools): the disk the harness boots before `ocidisk serve` composes one.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{io_err, Result};
use super::tool;

/// What a partition holds.
#[derive(Debug, Clone)]
pub enum Content {
    /// Zeros.
    Empty,
    /// These bytes from the partition's start, zeros after.
    Bytes(Vec<u8>),
    /// A FAT file system (mkfs.vfat) with these files (`EFI/BOOT/BOOTx64.EFI`, host file).
    Fat {
        /// Volume label.
        label: String,
        /// Path inside the file system → host file.
        files: Vec<(String, PathBuf)>,
    },
}

/// One partition of a [`build_gpt_disk`] disk.
#[derive(Debug, Clone)]
pub struct PartitionSpec {
    /// GPT partition name (the guest sees it as `PARTNAME`).
    pub name: String,
    /// sgdisk type code (`ef00` EFI system, `8300` Linux) or a GUID.
    pub type_code: String,
    /// Size in MiB.
    pub size_mib: u64,
    /// What it holds.
    pub content: Content,
}

/// Where a partition ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// GPT partition name.
    pub name: String,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Byte size.
    pub size: u64,
}

/// Creates the raw disk image `path`: a GPT with `parts` in order, each
/// 1 MiB-aligned from 1 MiB, and the disk 1 MiB larger than the partitions
/// need (room for the backup GPT).
pub fn build_gpt_disk(path: &Path, parts: &[PartitionSpec]) -> Result<Vec<PartitionInfo>> {
    const MIB: u64 = 1 << 20;
    let total = (2 + parts.iter().map(|p| p.size_mib).sum::<u64>()) * MIB;
    let file =
        std::fs::File::create(path).map_err(io_err(format!("creating {}", path.display())))?;
    file.set_len(total)
        .map_err(io_err(format!("sizing {}", path.display())))?;
    drop(file);

    let mut sgdisk = Command::new("sgdisk");
    sgdisk.arg("--clear");
    let mut infos = Vec::new();
    let mut start = MIB;
    for (i, p) in parts.iter().enumerate() {
        let n = i + 1;
        let first = start / 512;
        let last = (start + p.size_mib * MIB) / 512 - 1;
        sgdisk
            .arg(format!("--new={n}:{first}:{last}"))
            .arg(format!("--change-name={n}:{}", p.name))
            .arg(format!("--typecode={n}:{}", p.type_code));
        infos.push(PartitionInfo {
            name: p.name.clone(),
            offset: start,
            size: p.size_mib * MIB,
        });
        start += p.size_mib * MIB;
    }
    tool::run(sgdisk.arg(path))?;

    for (p, info) in parts.iter().zip(&infos) {
        match &p.content {
            Content::Empty => {}
            Content::Bytes(data) => write_at(path, info.offset, data)?,
            Content::Fat { label, files } => {
                // mkfs.vfat and mtools both take a byte offset into the disk.
                tool::run(
                    Command::new("mkfs.vfat")
                        .arg("-n")
                        .arg(label)
                        .arg("--offset")
                        .arg((info.offset / 512).to_string())
                        .arg(path)
                        .arg((info.size / 1024).to_string()),
                )?;
                let image = format!("{}@@{}", path.display(), info.offset);
                for (dest, src) in files {
                    let mut dir = String::new();
                    let parts: Vec<&str> = dest.split('/').collect();
                    for d in &parts[..parts.len().saturating_sub(1)] {
                        dir.push('/');
                        dir.push_str(d);
                        let _ = tool::run(
                            Command::new("mmd")
                                .args(["-D", "s", "-i", &image])
                                .arg(format!("::{dir}")),
                        );
                    }
                    tool::run(
                        Command::new("mcopy")
                            .args(["-o", "-i", &image])
                            .arg(src)
                            .arg(format!("::/{dest}")),
                    )?;
                }
            }
        }
    }
    Ok(infos)
}

/// Reads `len` bytes at `offset` of a disk image (e.g. what the guest wrote).
pub fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(io_err(format!("reading {} at {offset}", path.display())))?;
    Ok(buf)
}

fn write_at(path: &Path, offset: u64, data: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.write_all(data))
        .map_err(io_err(format!("writing {} at {offset}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgdisk_and_fsck_accept_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let efi = dir.path().join("x.efi");
        std::fs::write(&efi, b"MZ pretend").unwrap();
        let disk = dir.path().join("disk.raw");
        let infos = build_gpt_disk(
            &disk,
            &[
                PartitionSpec {
                    name: "ESP".into(),
                    type_code: "ef00".into(),
                    size_mib: 40,
                    content: Content::Fat {
                        label: "ESP".into(),
                        files: vec![("EFI/BOOT/BOOTx64.EFI".into(), efi.clone())],
                    },
                },
                PartitionSpec {
                    name: "DATA".into(),
                    type_code: "8300".into(),
                    size_mib: 2,
                    content: Content::Bytes(b"hello".to_vec()),
                },
            ],
        )
        .unwrap();
        assert_eq!(infos[1].offset, 41 << 20);
        let v = tool::run(Command::new("sgdisk").arg("-v").arg(&disk)).unwrap();
        let out = String::from_utf8_lossy(&v.stdout);
        assert!(out.contains("No problems found"), "{out}");
        assert_eq!(read_at(&disk, infos[1].offset, 5).unwrap(), b"hello");
        let image = format!("{}@@{}", disk.display(), infos[0].offset);
        let got = tool::run(Command::new("mtype").args(["-i", &image, "::/EFI/BOOT/BOOTx64.EFI"]))
            .unwrap();
        assert_eq!(got.stdout, b"MZ pretend");
    }
}
