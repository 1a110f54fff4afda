//! Unified kernel images: systemd's EFI stub with the kernel, initramfs,
//! command line and os-release appended as PE sections, so that firmware
//! boots the whole thing as one EFI application (`EFI/BOOT/BOOTx64.EFI`).
//!
//! The stub finds its payload by section name. The new sections must lie in
//! the image's address space after the stub's own sections, each on a
//! section-aligned virtual address, which is why the stub's PE headers are
//! read here instead of using fixed addresses that a newer stub could overlap.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::guest::{run_tool, Error, Result};

/// What goes into a unified kernel image.
#[derive(Debug, Clone)]
pub struct UkiSpec {
    /// systemd's `linuxx64.efi.stub`.
    pub stub: PathBuf,
    /// The kernel (a bzImage).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
    /// The `.osrel` text (os-release format), shown by boot menus.
    pub os_release: String,
}

/// Layout facts of a PE image that section placement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeLayout {
    /// `ImageBase` from the optional header.
    pub image_base: u64,
    /// `SectionAlignment` from the optional header.
    pub section_alignment: u64,
    /// The first relative virtual address after every existing section.
    pub end_rva: u64,
}

/// Reads the layout of a PE32+ image.
pub fn pe_layout(file: &Path, data: &[u8]) -> Result<PeLayout> {
    let bad = |what: &str| Error::BadPe {
        file: file.to_path_buf(),
        what: what.to_string(),
    };
    let u16_at = |off: usize| -> Result<u64> {
        data.get(off..off + 2)
            .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or_else(|| bad("truncated headers"))
    };
    let u32_at = |off: usize| -> Result<u64> {
        data.get(off..off + 4)
            .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .ok_or_else(|| bad("truncated headers"))
    };
    if data.get(0..2) != Some(b"MZ") {
        return Err(bad("no MZ signature"));
    }
    let pe = u32_at(0x3c)? as usize;
    if data.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(bad("no PE signature"));
    }
    let coff = pe + 4;
    let sections = u16_at(coff + 2)? as usize;
    let opt_size = u16_at(coff + 16)? as usize;
    let opt = coff + 20;
    if u16_at(opt)? != 0x20b {
        return Err(bad("not a PE32+ image"));
    }
    let image_base = u32_at(opt + 24)? | (u32_at(opt + 28)? << 32);
    let section_alignment = u32_at(opt + 32)?;
    if section_alignment == 0 || !section_alignment.is_power_of_two() {
        return Err(bad("section alignment is not a power of two"));
    }
    let table = opt + opt_size;
    let mut end_rva = 0;
    for i in 0..sections {
        let s = table + i * 40;
        let virtual_size = u32_at(s + 8)?;
        let rva = u32_at(s + 12)?;
        let raw_size = u32_at(s + 16)?;
        end_rva = end_rva.max(rva + virtual_size.max(raw_size));
    }
    Ok(PeLayout {
        image_base,
        section_alignment,
        end_rva,
    })
}

/// Where each payload section goes: `(name, file, absolute VMA)`, in order,
/// each starting on a page- and section-aligned address after the previous.
pub fn place_sections(
    layout: PeLayout,
    sections: &[(&str, PathBuf, u64)],
) -> Vec<(String, PathBuf, u64)> {
    let align = layout.section_alignment.max(4096);
    let up = |x: u64| x.div_ceil(align) * align;
    let mut rva = up(layout.end_rva);
    let mut out = Vec::new();
    for (name, path, len) in sections {
        out.push((name.to_string(), path.clone(), layout.image_base + rva));
        rva = up(rva + len);
    }
    out
}

/// Builds the unified kernel image `out` with objcopy. `workdir` receives
/// the small `.osrel` and `.cmdline` section files.
pub fn build_uki(spec: &UkiSpec, workdir: &Path, out: &Path) -> Result<()> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| Error::Io {
            what: format!("reading {}", p.display()),
            source,
        })
    };
    let write = |p: &Path, data: &[u8]| {
        std::fs::write(p, data).map_err(|source| Error::Io {
            what: format!("writing {}", p.display()),
            source,
        })
    };
    let stub = read(&spec.stub)?;
    let layout = pe_layout(&spec.stub, &stub)?;
    let osrel = workdir.join("uki-osrel");
    let cmdline = workdir.join("uki-cmdline");
    write(&osrel, spec.os_release.as_bytes())?;
    // The stub passes the section as is; a trailing NUL keeps older stubs
    // from reading past it.
    let mut cmd_bytes = spec.cmdline.clone().into_bytes();
    cmd_bytes.push(0);
    write(&cmdline, &cmd_bytes)?;
    let len = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|source| Error::Io {
                what: format!("reading the size of {}", p.display()),
                source,
            })
    };
    let sections = [
        (".osrel", osrel.clone(), len(&osrel)?),
        (".cmdline", cmdline.clone(), len(&cmdline)?),
        (".initrd", spec.initrd.clone(), len(&spec.initrd)?),
        (".linux", spec.kernel.clone(), len(&spec.kernel)?),
    ];
    let mut objcopy = Command::new("objcopy");
    for (name, path, vma) in place_sections(layout, &sections) {
        objcopy
            .arg("--add-section")
            .arg(format!("{name}={}", path.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={vma:#x}"));
    }
    objcopy.arg(&spec.stub).arg(out);
    run_tool(&mut objcopy)?;
    let mut image = read(out)?;
    clear_timestamp(out, &mut image)?;
    write(out, &image)
}

/// Zeroes the COFF `TimeDateStamp` that objcopy sets to the current time
/// (it ignores `SOURCE_DATE_EPOCH` for PE), so the same inputs give the same
/// image and the same payload digest. The optional header's `CheckSum`, which
/// covers the stamp, becomes 0 too: "no checksum", which firmware accepts.
pub fn clear_timestamp(file: &Path, data: &mut [u8]) -> Result<()> {
    pe_layout(file, data)?;
    let pe = data
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(0);
    let coff = pe + 4;
    let checksum = coff + 20 + 64;
    for field in [coff + 4..coff + 8, checksum..checksum + 4] {
        data.get_mut(field)
            .ok_or_else(|| Error::BadPe {
                file: file.to_path_buf(),
                what: "truncated headers".to_string(),
            })?
            .fill(0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_follow_the_stub_aligned() {
        let layout = PeLayout {
            image_base: 0x1_0000_0000,
            section_alignment: 0x200,
            end_rva: 0x19134,
        };
        let placed = place_sections(
            layout,
            &[(".osrel", "a".into(), 10), (".linux", "b".into(), 0x1001)],
        );
        assert_eq!(placed[0].2, 0x1_0001_a000);
        assert_eq!(placed[1].2, 0x1_0001_b000);
    }

    #[test]
    fn clearing_the_timestamp_rejects_non_pe_input() {
        let mut data = b"not a PE file".to_vec();
        assert!(clear_timestamp(Path::new("x"), &mut data).is_err());
        assert_eq!(data, b"not a PE file");
    }

    #[test]
    fn non_pe_files_are_rejected_by_name() {
        let p = Path::new("stub.efi");
        for data in [&b""[..], b"MZ", b"ELF\x7f........"] {
            let err = pe_layout(p, data).unwrap_err().to_string();
            assert!(err.starts_with("stub.efi: "), "{err}");
        }
        let mut bad_lfanew = vec![0u8; 64];
        bad_lfanew[..2].copy_from_slice(b"MZ");
        bad_lfanew[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(pe_layout(p, &bad_lfanew).is_err());
    }
}
