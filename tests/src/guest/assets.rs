//! Where the guest's kernel, modules and EFI stub live.
//!
//! `.ci/install-deps` unpacks Debian's `linux-image-amd64` and `systemd-boot-efi`
//! into one directory (never installing them on the host); the tests find it
//! through `OCIDISK_TEST_ASSETS` or the default below.

use std::path::{Path, PathBuf};

use super::error::{io_err, Error, Result};

/// Default assets directory, as `.ci/install-deps` fills it.
pub const DEFAULT_ASSETS_DIR: &str = "/var/cache/ocidisk-test-assets";

/// The unpacked guest kernel and its companions.
#[derive(Debug, Clone)]
pub struct Assets {
    /// The assets directory.
    pub dir: PathBuf,
    /// The kernel image (bzImage, also a PE/EFI application).
    pub vmlinuz: PathBuf,
    /// The kernel's modules tree (`lib/modules/<release>`), with `modules.dep`.
    pub modules: PathBuf,
    /// systemd's EFI stub, the front of a unified kernel image.
    pub efi_stub: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-amd64`.
    pub kernel_release: String,
}

impl Assets {
    /// Finds the assets in `$OCIDISK_TEST_ASSETS` or [`DEFAULT_ASSETS_DIR`];
    /// the error says to run `.ci/install-deps` when they are missing.
    pub fn locate() -> Result<Assets> {
        let dir = std::env::var_os("OCIDISK_TEST_ASSETS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ASSETS_DIR));
        Assets::in_dir(&dir)
    }

    /// Checks that `dir` holds a complete set of assets.
    pub fn in_dir(dir: &Path) -> Result<Assets> {
        let missing = |what: &str| Error::AssetsMissing {
            dir: dir.to_path_buf(),
            missing: what.to_string(),
        };
        // `complete` is written last by install-deps: without it the rest may be partial.
        for name in [
            "complete",
            "vmlinuz",
            "modules/modules.dep",
            "linuxx64.efi.stub",
        ] {
            if !dir.join(name).is_file() {
                return Err(missing(name));
            }
        }
        let release_file = dir.join("kernel-release");
        let kernel_release = std::fs::read_to_string(&release_file)
            .map_err(io_err(format!("reading {}", release_file.display())))?
            .trim()
            .to_string();
        Ok(Assets {
            dir: dir.to_path_buf(),
            vmlinuz: dir.join("vmlinuz"),
            modules: dir.join("modules"),
            efi_stub: dir.join("linuxx64.efi.stub"),
            kernel_release,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_dir_says_to_run_install_deps() {
        let dir = tempfile::tempdir().unwrap();
        let err = Assets::in_dir(&dir.path().join("nope")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(".ci/install-deps"), "{msg}");
        assert!(msg.contains("complete"), "{msg}");
    }

    #[test]
    fn partial_dir_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("complete"), "x").unwrap();
        std::fs::write(dir.path().join("vmlinuz"), "x").unwrap();
        let msg = Assets::in_dir(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("modules/modules.dep"), "{msg}");
    }
}
