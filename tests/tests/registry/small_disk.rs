//! The image most registry tests serve: a Monogon-format image with a
//! `system` payload of twelve chunks and a bit, pushed to a fresh
//! `docker-registry` as `os/node:v1`, and a 20 MiB layout of both payloads
//! so that a test can read the whole disk.

use ocidisk_tests::oci_writer::BuiltImage;
use ocidisk_tests::registry::{small_image, Registry};
use std::path::{Path, PathBuf};

pub const MIB: u64 = 1 << 20;
/// The `system` payload's size: twelve chunks and a bit.
pub const SYSTEM: usize = (12 << 20) + 4321;
/// Where the `system` partition starts on [`LAYOUT`]'s disk.
pub const SYSTEM_PART: u64 = 2 * MIB;
/// A small disk of both payloads, so that a test can read all of it.
pub const LAYOUT: &str = r#"disk_size = "20MiB"
[[partitions]]
name = "kernel"
type = "linux"
size = "1MiB"
content = "payload:kernel.efi"
[[partitions]]
name = "system"
type = "linux"
size = "rest"
content = "payload:system"
"#;

/// A temporary path as the command-line argument it becomes.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// The image (its payload bytes drawn from `seed`) pushed to a registry of
/// its own, and [`LAYOUT`] written beside it.
pub struct Pushed {
    pub dir: tempfile::TempDir,
    pub reg: Registry,
    pub img: BuiltImage,
    pub layout: PathBuf,
}

pub fn push(seed: u64) -> Pushed {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start_plain().unwrap();
    let img = small_image(&dir.path().join("src"), SYSTEM, seed, "v1").unwrap();
    reg.push(&img.dir, None, "os/node:v1").unwrap();
    let layout = dir.path().join("layout.toml");
    std::fs::write(&layout, LAYOUT).unwrap();
    Pushed {
        dir,
        reg,
        img,
        layout,
    }
}
