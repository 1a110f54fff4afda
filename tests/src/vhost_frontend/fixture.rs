//! A small served disk for hostile-frontend tests, and the checks every
//! test ends with: the backend exits within 5 s of SIGTERM, no blob of the
//! image changed, and the overlay holds exactly the writes the test meant
//! to make (compared byte for byte through `ocidisk export`, and by its
//! allocation through `ocidisk overlay info`).

use super::backend::Backend;
use crate::blkio_client::ocidisk_binary;
use crate::oci_writer::{efi_image, ImageBuilder, OsImage, Payload};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The disk's size.
pub const DISK_SIZE: u64 = 16 << 20;
/// Where the `system` partition (and its position pattern) starts.
pub const PART_START: u64 = 1 << 20;
/// How long SIGTERM may take to end the backend, whatever a frontend did.
pub const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// Bytes that tell their position: the u32 at each 4-byte offset is
/// offset / 4.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len / 4)
        .flat_map(|i| ((offset / 4) as u32 + i as u32).to_le_bytes())
        .collect()
}

/// An image, a layout, an overlay and a socket in a temporary directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub layout: PathBuf,
    pub overlay: PathBuf,
    pub socket: PathBuf,
    /// Serve with `--readonly` (no overlay).
    pub read_only: bool,
    blobs: Vec<(PathBuf, Vec<u8>)>,
    /// The disk as served before the test wrote anything.
    pub pristine: Vec<u8>,
    /// What the test wrote successfully, in order.
    writes: Vec<(u64, Vec<u8>)>,
    extra: Vec<String>,
}

fn hash_blobs(image: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let dir = image.join("blobs/sha256");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("blobs directory")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let bytes = std::fs::read(&p).expect("read blob");
        out.push((p, Sha256::digest(&bytes).to_vec()));
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Fixture {
    /// Builds the image (a GPT and one partition holding a position
    /// pattern), starts the backend once to create the overlay, stops it,
    /// records the pristine disk, and starts it again with `extra`
    /// arguments.
    pub fn start(extra: &[&str]) -> (Self, Backend) {
        Self::start_with(false, extra)
    }

    /// The same disk served `--readonly`.
    pub fn start_read_only(extra: &[&str]) -> (Self, Backend) {
        Self::start_with(true, extra)
    }

    fn start_with(read_only: bool, extra: &[&str]) -> (Self, Backend) {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        ImageBuilder::monogon(
            OsImage::new()
                .payload(Payload::new("kernel.efi", efi_image(64 << 10)))
                .payload(Payload::new("system", pattern(0, 12 << 20))),
        )
        .write(&image)
        .unwrap();
        let layout = dir.path().join("layout.toml");
        std::fs::write(
            &layout,
            r#"
            disk_size = "16MiB"
            [[partitions]]
            name = "system"
            type = "linux"
            size = "rest"
            content = "payload:system"
            "#,
        )
        .unwrap();
        let blobs = hash_blobs(&image);
        for (p, h) in &blobs {
            let name = p.file_name().unwrap().to_string_lossy();
            assert_eq!(
                name,
                hex(h),
                "the test image's blob {} is not its digest",
                p.display()
            );
        }
        let mut fx = Self {
            image,
            layout,
            overlay: dir.path().join("vm.overlay"),
            socket: dir.path().join("ocidisk.sock"),
            read_only,
            blobs,
            pristine: Vec::new(),
            writes: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        if !read_only {
            // Create the overlay, so that export can show the disk it serves.
            let mut b = fx.serve();
            b.terminate_within(EXIT_WITHIN).unwrap();
        }
        fx.pristine = fx.export().unwrap();
        assert_eq!(fx.pristine.len() as u64, DISK_SIZE);
        assert_eq!(
            &fx.pristine[PART_START as usize..PART_START as usize + 64],
            &pattern(0, 64)[..],
            "the partition does not start where the test expects"
        );
        let b = fx.serve();
        (fx, b)
    }

    fn base_args(&self) -> Vec<String> {
        let mut args = vec![
            "--image".to_string(),
            self.image.display().to_string(),
            "--layout".to_string(),
            self.layout.display().to_string(),
        ];
        if self.read_only {
            args.extend(["--readonly".into(), "--disk-id".into(), "hostile".into()]);
        } else {
            args.extend(["--overlay".into(), self.overlay.display().to_string()]);
        }
        args
    }

    /// Starts the backend on the fixture's socket.
    pub fn serve(&self) -> Backend {
        let mut args = self.base_args();
        args.extend(self.extra.iter().cloned());
        Backend::start(&self.socket, &args).unwrap()
    }

    /// The served disk as `ocidisk export` writes it (the backend must not
    /// be running).
    pub fn export(&self) -> Result<Vec<u8>, String> {
        let out = self.dir.path().join("export.raw");
        let mut cmd = Command::new(ocidisk_binary().map_err(|e| e.to_string())?);
        cmd.arg("export")
            .arg("--image")
            .arg(&self.image)
            .arg("--layout")
            .arg(&self.layout)
            .arg("--output")
            .arg(&out)
            .arg("--force");
        if self.read_only {
            cmd.args(["--disk-id", "hostile"]);
        } else {
            cmd.arg("--overlay").arg(&self.overlay);
        }
        let o = cmd.output().map_err(|e| format!("export: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "ocidisk export failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let bytes = std::fs::read(&out).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&out);
        Ok(bytes)
    }

    /// Records a write the test made (and the backend completed with OK).
    pub fn record_write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }

    /// The bytes the disk should hold at `offset..offset+len` now.
    pub fn expected(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut disk = self.pristine[offset as usize..offset as usize + len].to_vec();
        for (o, d) in &self.writes {
            let (s, e) = (
                *o.max(&offset),
                (o + d.len() as u64).min(offset + len as u64),
            );
            if s < e {
                disk[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&d[(s - o) as usize..(e - o) as usize]);
            }
        }
        disk
    }

    /// The end of every test: SIGTERM ends the backend within 5 s, the
    /// blobs are unchanged, and the disk (and the overlay's allocation)
    /// holds exactly the recorded writes.
    pub fn finish(&self, mut backend: Backend) -> Result<(), String> {
        backend.terminate_within(EXIT_WITHIN)?;
        drop(backend);
        self.check_disk()
    }

    /// The blob and disk checks of [`finish`](Self::finish), for a backend
    /// that is already gone.
    pub fn check_disk(&self) -> Result<(), String> {
        let now = hash_blobs(&self.image);
        if now != self.blobs {
            return Err("a blob of the image changed (its sha256 or the set of blobs)".into());
        }
        if self.read_only {
            if self.overlay.exists() {
                return Err("a read-only backend created an overlay".into());
            }
        } else {
            self.check_allocation()?;
        }
        let disk = self.export()?;
        let want = self.expected(0, DISK_SIZE as usize);
        if disk != want {
            let first = disk
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            let last = disk
                .iter()
                .zip(&want)
                .rposition(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "the disk does not hold what the test wrote: it differs from byte {first} \
                 (sector {}) to byte {last}",
                first / 512
            ));
        }
        Ok(())
    }

    /// With no recorded writes, the overlay allocated nothing.
    fn check_allocation(&self) -> Result<(), String> {
        if !self.writes.is_empty() {
            return Ok(());
        }
        let o = Command::new(ocidisk_binary().map_err(|e| e.to_string())?)
            .args(["overlay", "info", "--json"])
            .arg(&self.overlay)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!(
                "ocidisk overlay info failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).map_err(|e| format!("overlay info: {e}"))?;
        let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        let blocks = n("blocks_written") + n("blocks_zero");
        if blocks != 0 {
            return Err(format!(
                "the overlay has {blocks} block(s) written or zeroed, but the test wrote nothing"
            ));
        }
        Ok(())
    }
}
