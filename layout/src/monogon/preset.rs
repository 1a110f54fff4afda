//! The built-in `monogon` layout: exactly the disk Monogon's installer
//! writes for a test node.

use crate::spec::{
    ContentSpec, LayoutSpec, PartitionSpec, Size, SpecError, ESP_TYPE, GIB, METROPOLIS_DATA_TYPE,
    METROPOLIS_SYSTEM_A_TYPE, METROPOLIS_SYSTEM_B_TYPE, MIB, MONOGON_DISK_SIZE,
};
use std::path::PathBuf;

/// How the `monogon` preset is named in errors.
pub const MONOGON_ORIGIN: &str = "monogon preset";
/// The files the `monogon` preset's ESP has before
/// [`MonogonPreset::esp_files`].
const MONOGON_ESP_FILES: usize = 2;

/// Options of the built-in `monogon` preset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonogonPreset {
    /// The disk size in bytes; [`MONOGON_DISK_SIZE`] by default.
    pub disk_size: u64,
    /// The A/B loader to install as the removable-media boot file; the
    /// `kernel.efi` payload when `None`.
    pub abloader: Option<PathBuf>,
    /// The file name of the removable-media boot file in `EFI/BOOT/`, by
    /// architecture: `BOOTx64.EFI` (the default) or `BOOTAA64.EFI`.
    pub efi_boot_file: String,
    /// More files for the ESP, after the preset's own (per-node files such
    /// as `metropolis/parameters.pb`): `(path, content)`.
    pub esp_files: Vec<(String, ContentSpec)>,
}

impl Default for MonogonPreset {
    fn default() -> MonogonPreset {
        MonogonPreset {
            disk_size: MONOGON_DISK_SIZE,
            abloader: None,
            efi_boot_file: "BOOTx64.EFI".to_owned(),
            esp_files: Vec::new(),
        }
    }
}

impl LayoutSpec {
    /// The `monogon` preset: Monogon's test-node disk.
    pub fn monogon(preset: &MonogonPreset) -> LayoutSpec {
        let kernel = || ContentSpec::Payload("kernel.efi".to_owned());
        let loader = match &preset.abloader {
            Some(path) => ContentSpec::File(path.clone()),
            None => kernel(),
        };
        LayoutSpec {
            disk_size: preset.disk_size,
            partitions: vec![
                PartitionSpec {
                    name: "ESP".to_owned(),
                    type_guid: ESP_TYPE,
                    size: Size::Bytes(128 * MIB),
                    content: ContentSpec::Fat32 {
                        label: "MNGN_BOOT".to_owned(),
                        // Monogon's installer places boot-a.efi first, then
                        // the loader; the order decides cluster placement.
                        files: [
                            ("EFI/metropolis/boot-a.efi".to_owned(), kernel()),
                            (format!("EFI/BOOT/{}", preset.efi_boot_file), loader),
                        ]
                        .into_iter()
                        .chain(preset.esp_files.iter().cloned())
                        .collect(),
                    },
                },
                PartitionSpec {
                    name: "METROPOLIS-SYSTEM-A".to_owned(),
                    type_guid: METROPOLIS_SYSTEM_A_TYPE,
                    size: Size::Bytes(GIB),
                    content: ContentSpec::Payload("system".to_owned()),
                },
                PartitionSpec {
                    name: "METROPOLIS-SYSTEM-B".to_owned(),
                    type_guid: METROPOLIS_SYSTEM_B_TYPE,
                    size: Size::Bytes(GIB),
                    content: ContentSpec::Empty,
                },
                PartitionSpec {
                    name: "METROPOLIS-NODE-DATA".to_owned(),
                    type_guid: METROPOLIS_DATA_TYPE,
                    size: Size::Rest,
                    content: ContentSpec::Empty,
                },
            ],
        }
    }

    /// The `monogon` preset, validated; an error in one of
    /// [`MonogonPreset::esp_files`] names it as `esp_files[N]` rather than
    /// by its place in the ESP's file list.
    pub fn monogon_checked(preset: &MonogonPreset) -> Result<LayoutSpec, SpecError> {
        let spec = LayoutSpec::monogon(preset);
        match spec.validate(MONOGON_ORIGIN) {
            Ok(()) => Ok(spec),
            Err(SpecError::Field {
                origin,
                field,
                problem,
            }) => {
                let extra = field
                    .strip_prefix("partitions[0].fat32.files[")
                    .and_then(|rest| rest.split_once(']'))
                    .and_then(|(j, tail)| Some((j.parse::<usize>().ok()?, tail)))
                    .filter(|(j, _)| *j >= MONOGON_ESP_FILES);
                let field = match extra {
                    Some((j, tail)) => format!("esp_files[{}]{tail}", j - MONOGON_ESP_FILES),
                    None => field,
                };
                Err(SpecError::Field {
                    origin,
                    field,
                    problem,
                })
            }
            Err(e) => Err(e),
        }
    }
}
