//! Lazy verification end to end: `ocidisk serve` of an image whose
//! `system` payload has one chunk that does not match its chunk hash (the
//! blob was changed after the config was written), read by libblkio over
//! the real vhost-user socket. The bad chunk's range gives an I/O error,
//! never its bytes; the rest of the disk reads right; the log names the
//! payload once.
//!
//! Runs the `ocidisk` binary (built by `ocidisk_tests::cli::ocidisk_binary`).

use ocidisk_tests::blkio_client::{ocidisk_binary, BlkioClient, Server};
use ocidisk_tests::oci_writer::{efi_image, ImageBuilder, OsImage, Payload};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// The `system` partition (and so the payload's first byte) starts here.
const PART: u64 = MIB;
const PAYLOAD: usize = 12 << 20;
/// The chunk whose stored bytes differ from what its hash says.
const BAD: u64 = 5;

fn pattern(len: usize) -> Vec<u8> {
    (0..len / 4)
        .flat_map(|i| (i as u32).to_le_bytes())
        .collect()
}

struct Fixture {
    dir: tempfile::TempDir,
    image: PathBuf,
    layout: PathBuf,
    good: Vec<u8>,
}

impl Fixture {
    /// `system` is stored with byte 100 of chunk [`BAD`] flipped;
    /// `zstd` stores it compressed instead.
    fn new(zstd: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let good = pattern(PAYLOAD);
        let mut bad = good.clone();
        bad[(BAD * MIB + 100) as usize] ^= 0xff;
        let system = Payload::new("system", good.clone());
        let system = if zstd {
            let z = zstd::bulk::compress(&bad, 3).unwrap();
            system.zstd().stored(z)
        } else {
            system.stored(bad)
        };
        let image = dir.path().join("image");
        ImageBuilder::monogon(
            OsImage::new()
                .payload(Payload::new("kernel.efi", efi_image(64 << 10)))
                .payload(system),
        )
        .write(&image)
        .unwrap();
        let layout = dir.path().join("layout.toml");
        std::fs::write(
            &layout,
            "disk_size = \"16MiB\"\n[[partitions]]\nname = \"system\"\ntype = \"linux\"\nsize = \"rest\"\ncontent = \"payload:system\"\n",
        )
        .unwrap();
        Fixture {
            dir,
            image,
            layout,
            good,
        }
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let p = |p: &Path| p.to_str().unwrap().to_owned();
        let mut a = vec![
            "--image".into(),
            p(&self.image),
            "--layout".into(),
            p(&self.layout),
            "--cache".into(),
            p(&self.dir.path().join("cache")),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    fn serve(&self, name: &str, extra: &[&str]) -> (Server, BlkioClient) {
        let socket = self.dir.path().join(format!("{name}.sock"));
        let server = Server::start(&socket, &self.args(extra)).unwrap();
        let client = if extra.contains(&"--readonly") {
            BlkioClient::connect_read_only(&socket, 1, 4 << 20)
        } else {
            BlkioClient::connect(&socket, 1, 4 << 20)
        };
        let client = client.unwrap();
        (server, client)
    }

    /// Runs `ocidisk export` with `extra`; returns whether it succeeded
    /// and its stderr.
    fn export(&self, extra: &[&str]) -> (bool, String) {
        let out = self.dir.path().join("out.raw");
        let _ = std::fs::remove_file(&out);
        let mut args = vec!["export".to_owned()];
        args.extend(self.args(extra));
        args.extend(["--output".into(), out.to_str().unwrap().into()]);
        let o = Command::new(ocidisk_binary().unwrap())
            .args(&args)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into(),
        )
    }
}

/// Reads the disk around the bad chunk through `client`: everything
/// outside it reads right, every read touching it fails.
fn check_reads(f: &Fixture, client: &mut BlkioClient) {
    let q = client.queue();
    let bad = PART + BAD * MIB..PART + (BAD + 1) * MIB;
    for (off, len) in [
        (PART, 4096usize),
        (PART + 3 * MIB, 1 << 20),
        (bad.start - 4096, 4096),
        (bad.end, 4096),
        (PART + 11 * MIB, 1 << 20),
    ] {
        let got = q
            .read(off, len)
            .unwrap_or_else(|e| panic!("read at {off}: {e}"));
        let p = (off - PART) as usize;
        assert!(got == f.good[p..p + len], "wrong bytes at {off}+{len}");
    }
    for (off, len) in [
        (bad.start, 4096usize),
        (bad.start + 64 * 1024, 512),
        (bad.end - 4096, 4096),
        (bad.start - 4096, 8192),
        (bad.start - MIB, 3 << 20),
    ] {
        let e = q
            .read(off, len)
            .expect_err("a read of the bad chunk must fail");
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "read at {off}+{len}: {e}"
        );
    }
}

fn check_log(server: &Server) {
    let log = server
        .wait_for_log(
            "payload chunk does not match its chunk hash",
            1,
            Duration::from_secs(5),
        )
        .unwrap_or_else(|log| panic!("no bad-chunk line in the log:\n{log}"));
    let lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("payload chunk does not match its chunk hash"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one line per bad chunk, not per request:\n{log}"
    );
    assert!(lines[0].contains("payload=system"), "{}", lines[0]);
    assert!(lines[0].contains(&format!("chunk={BAD}")), "{}", lines[0]);
    assert!(
        lines[0].contains(&format!("offset={}", BAD * MIB)),
        "{}",
        lines[0]
    );
}

#[test]
fn lazy_fails_only_the_bad_chunk_on_both_engines() {
    let f = Fixture::new(false);
    for engine in ["uring", "sync"] {
        let (server, mut client) = f.serve(
            engine,
            &["--readonly", "--io-engine", engine, "--verify=lazy"],
        );
        check_reads(&f, &mut client);
        check_log(&server);
        drop(client);
        assert!(server.terminate().unwrap().success());
    }
    // Without --verify a served disk trusts the blob (lazy costs cold
    // random reads a whole chunk each): the stored bytes come back.
    let (server, mut client) = f.serve("default", &["--readonly"]);
    let got = client.queue().read(PART + BAD * MIB, 1 << 20).unwrap();
    let p = (BAD * MIB) as usize;
    assert_ne!(got, f.good[p..p + (1 << 20)], "the stored (bad) bytes");
    drop(client);
    assert!(server.terminate().unwrap().success());
}

#[test]
fn a_copy_up_never_takes_the_bad_chunk() {
    let f = Fixture::new(false);
    let overlay = f.dir.path().join("vm.overlay");
    let (server, mut client) = f.serve(
        "overlay",
        &["--overlay", overlay.to_str().unwrap(), "--verify=lazy"],
    );
    let q = client.queue();
    // A 512-byte write into a block of the bad chunk must copy the block
    // up from the base first: that read fails, so does the write.
    let at = PART + BAD * MIB + 8192;
    let e = q.write(at, &[7u8; 512]).expect_err("the copy-up must fail");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // A whole-block write needs no base and hides the bad bytes under it.
    q.write(at, &[7u8; 4096]).unwrap();
    assert_eq!(q.read(at, 4096).unwrap(), vec![7u8; 4096]);
    check_log(&server);
    drop(client);
    assert!(server.terminate().unwrap().success());
}

#[test]
fn zstd_payloads_are_checked_whole_when_decompressed() {
    // The decompressed cache entry is checked chunk by chunk as it is
    // made: the image does not open at all, in any mode but none.
    let f = Fixture::new(true);
    let (ok, err) = f.export(&["--verify=lazy"]);
    assert!(!ok);
    assert!(err.contains("\"system\""), "{err}");
    assert!(err.contains(&format!("chunk {BAD}")), "{err}");
}

#[test]
fn export_modes() {
    let f = Fixture::new(false);
    // none (export's default): the stored bytes, bad chunk and all.
    let (ok, err) = f.export(&[]);
    assert!(ok, "{err}");
    let raw = std::fs::read(f.dir.path().join("out.raw")).unwrap();
    let at = (PART + BAD * MIB + 100) as usize;
    assert_ne!(raw[at], f.good[(BAD * MIB + 100) as usize]);
    // lazy: export's copy passes the gate, which refuses the bad chunk.
    let (ok, err) = f.export(&["--verify=lazy"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "payload \"system\": chunk {BAD} (bytes {}..{})",
            BAD * MIB,
            (BAD + 1) * MIB
        )),
        "{err}"
    );
    // full, bare or spelled out: refused at open.
    for flag in ["--verify", "--verify=full"] {
        let (ok, err) = f.export(&[flag]);
        assert!(!ok, "{flag}");
        assert!(err.contains("\"system\""), "{flag}: {err}");
    }
    let (ok, err) = f.export(&["--verify=sometimes"]);
    assert!(!ok);
    assert!(err.contains("sometimes"), "{err}");
}

#[test]
fn layers_without_chunk_hashes_are_checked_whole_unless_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");
    let data = pattern(2 << 20);
    ImageBuilder::generic([Payload::new("root", data.clone())])
        .write(&image)
        .unwrap();
    // Damage the layer's blob after the manifest promised its digest.
    let digest = ocidisk_tests::oci_writer::sha256_digest(&data);
    let blob = image
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    let mut stored = data;
    stored[12345] ^= 1;
    std::fs::write(&blob, stored).unwrap();
    let layout = dir.path().join("layout.toml");
    std::fs::write(
        &layout,
        "disk_size = \"8MiB\"\n[[partitions]]\nname = \"root\"\ntype = \"linux\"\nsize = \"rest\"\ncontent = \"layer:0\"\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = dir.path().join("out.raw");
        let _ = std::fs::remove_file(&out);
        let o = Command::new(ocidisk_binary().unwrap())
            .args(["export", "--image", image.to_str().unwrap()])
            .args(["--layout", layout.to_str().unwrap()])
            .args(["--output", out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["--verify=lazy"]);
    assert!(!ok, "a layer without chunk hashes must be checked whole");
    assert!(err.contains("layer 0"), "{err}");
    let (ok, err) = run(&["--verify=lazy", "--trust-unverified"]);
    assert!(ok, "{err}");
}
