//! Helpers shared by the `trace_*` and `prometheus_*` tests: a small disk
//! with three named partitions served by the real `ocidisk serve`, a
//! libblkio workload with a known shape, the `ocidisk` CLI, and where test
//! artefacts (plots, screenshots) are kept.

#![allow(dead_code)]

use ocidisk_tests::blkio_client::{ocidisk_binary, BlkioClient, Op, Server};
use ocidisk_tests::cli::CommandExt as _;
use ocidisk_tests::oci_writer::{efi_image, ImageBuilder, OsImage, Payload};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const MIB: u64 = 1 << 20;
/// The disk: `boot` (4 MiB, empty), `system` (16 MiB, the payload), `data`
/// (the rest), 1 MiB aligned from 1 MiB.
pub const DISK_SIZE: u64 = 32 * MIB;
pub const BOOT: (u64, u64) = (MIB, 5 * MIB);
pub const SYSTEM: (u64, u64) = (5 * MIB, 21 * MIB);
/// `data` ends before the backup GPT (the last 1 MiB is not allocated,
/// since partitions are whole MiB).
pub const DATA_START: u64 = 21 * MIB;

/// A served disk in a temporary directory.
pub struct Disk {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub layout: PathBuf,
    pub overlay: PathBuf,
    pub socket: PathBuf,
}

impl Disk {
    pub fn new() -> Disk {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("image");
        ImageBuilder::monogon(
            OsImage::new()
                .payload(Payload::new("kernel.efi", efi_image(64 << 10)))
                .payload(Payload::new("system", vec![0x5a; 12 << 20])),
        )
        .write(&image)
        .expect("image");
        let layout = dir.path().join("layout.toml");
        std::fs::write(
            &layout,
            r#"
            disk_size = "32MiB"
            [[partitions]]
            name = "boot"
            type = "linux"
            size = "4MiB"
            [[partitions]]
            name = "system"
            type = "linux"
            size = "16MiB"
            content = "payload:system"
            [[partitions]]
            name = "data"
            type = "linux"
            size = "rest"
            "#,
        )
        .expect("layout");
        Disk {
            overlay: dir.path().join("vm.overlay"),
            socket: dir.path().join("disk.sock"),
            image,
            layout,
            dir,
        }
    }

    /// `ocidisk serve` of this disk with `extra` arguments.
    pub fn serve(&self, extra: &[&str]) -> Server {
        let mut args: Vec<String> = [
            "--image",
            path(&self.image),
            "--layout",
            path(&self.layout),
            "--overlay",
            path(&self.overlay),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::start(&self.socket, &args).expect("ocidisk serve")
    }

    pub fn connect(&self) -> BlkioClient {
        BlkioClient::connect(&self.socket, 1, 1 << 20).expect("libblkio connect")
    }
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// What [`workload`] sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub write_bytes: u64,
    pub flushes: u64,
    pub discards: u64,
}

/// A workload of known shape, for `duration` (at least one round):
/// sequential 64 KiB reads through `system`, 4 KiB writes scattered over
/// `data`, a flush after every 8 writes and a 1 MiB discard in `data` now
/// and then, with `pause` between rounds.
pub fn workload(client: &mut BlkioClient, duration: Duration, pause: Duration) -> Sent {
    let q = client.queue();
    let mut sent = Sent::default();
    let start = Instant::now();
    let mut round = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    while round == 0 || start.elapsed() < duration {
        for i in 0..4 {
            let off = SYSTEM.0 + ((round * 4 + i) * 65536) % (SYSTEM.1 - SYSTEM.0);
            q.read(off, 65536).expect("read");
            sent.reads += 1;
            sent.read_bytes += 65536;
        }
        for _ in 0..2 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let blocks = (DISK_SIZE - 2 * MIB - DATA_START) / 4096;
            let off = DATA_START + (seed >> 33) % blocks * 4096;
            q.write(off, &[round as u8; 4096]).expect("write");
            sent.writes += 1;
            sent.write_bytes += 4096;
            if sent.writes % 8 == 0 {
                q.flush().expect("flush");
                sent.flushes += 1;
            }
        }
        if round % 16 == 15 {
            q.run(Op::Discard {
                offset: DATA_START + (round / 16 % 8) * MIB,
                len: MIB,
            })
            .expect("discard");
            sent.discards += 1;
        }
        round += 1;
        std::thread::sleep(pause);
    }
    sent
}

/// Runs the `ocidisk` binary.
pub fn ocidisk(args: &[&str]) -> Output {
    Command::new(ocidisk_binary().expect("ocidisk binary"))
        .args(args)
        .output()
        .expect("running ocidisk")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `ocidisk ARGS`, which must succeed; returns stdout.
pub fn ocidisk_ok(args: &[&str]) -> String {
    ocidisk_tests::cli::ocidisk().args(args).run_ok().stdout
}

/// `target/test-artefacts/NAME`, created: what a test keeps for people to
/// look at (plots, screenshots).
pub fn artefact_dir(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> -> target/
    let target = exe.ancestors().nth(3).expect("target directory");
    let dir = target.join("test-artefacts").join(name);
    std::fs::create_dir_all(&dir).expect("artefact dir");
    dir
}

/// The first binary of `names` on PATH, or `None` with a printed reason.
pub fn tool(names: &[&str], why: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    eprintln!(
        "SKIPPED: {} not installed ({why}; .ci/install-deps installs it)",
        names.join(" / ")
    );
    None
}

/// A TCP port free on localhost right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
