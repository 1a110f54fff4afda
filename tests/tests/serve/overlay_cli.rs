//! `ocidisk overlay info` and `ocidisk overlay reset` on real files.

use blockio::{IoBuf, IoBufMut};
use ocidisk_tests::cli::CommandExt as _;
use overlay::{CreateOptions, OpenOptions, Overlay};

use std::path::PathBuf;
use std::process::Command;

/// The `ocidisk` binary of this workspace, built if needed.
fn ocidisk() -> PathBuf {
    ocidisk_tests::blkio_client::ocidisk_binary().expect("the ocidisk binary")
}

fn identity() -> blockio::BaseIdentity {
    blockio::BaseIdentity {
        manifest_digest: "sha256:cli".into(),
        layout_hash: [0xab; 32],
    }
}

#[test]
fn info_and_reset() {
    let bin = ocidisk();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.overlay");
    let size = 64 << 20;
    let base = vec![5u8; size as usize];
    let ov = Overlay::create(
        &path,
        &CreateOptions {
            disk_size: size,
            base: identity(),
        },
    )
    .unwrap();
    let disk_id = ov.header().disk_id;
    ov.write(1 << 20, &[IoBuf::new(&[9u8; 3 * 4096])], &base)
        .unwrap();
    ov.write_zeroes(8 << 20, 1 << 20, &base).unwrap();
    ov.flush().unwrap();

    // Info works while the overlay is open for writing.
    let v = Command::new(&bin)
        .args(["overlay", "info", "--json"])
        .arg(&path)
        .run_json();
    assert_eq!(v["disk_size"], size);
    assert_eq!(v["blocks_written"], 3);
    assert_eq!(v["blocks_zero"], 256);
    assert_eq!(v["disk_id"], disk_id.to_string());
    assert_eq!(v["base"]["manifest_digest"], "sha256:cli");
    assert_eq!(v["base"]["layout_hash"], "ab".repeat(32));
    assert!(
        v["allocated_bytes"].as_u64().unwrap() < 2 << 20,
        "creation stays sparse: {v}"
    );
    let text = Command::new(&bin)
        .args(["overlay", "info"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("written:         3 blocks"));

    // Reset is refused while the overlay is in use, and works after.
    let out = Command::new(&bin)
        .args(["overlay", "reset"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    drop(ov);
    Command::new(&bin)
        .args(["overlay", "reset"])
        .arg(&path)
        .run_ok();
    let ov = Overlay::open(&path, &identity(), size, &OpenOptions::default()).unwrap();
    assert_eq!(ov.header().disk_id, disk_id, "reset keeps the disk id");
    let usage = ov.usage().unwrap();
    assert_eq!((usage.blocks_written, usage.blocks_zero), (0, 0));
    let mut buf = vec![0u8; 4096];
    ov.read(1 << 20, &mut [IoBufMut::new(&mut buf)], &base)
        .unwrap();
    assert!(
        buf.iter().all(|&b| b == 5),
        "reads come from the base again"
    );
}

#[test]
fn bad_files_are_named_and_left_alone() {
    let bin = ocidisk();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-an-overlay");
    std::fs::write(&path, b"QFI\xfb this is a qcow2, not an overlay").unwrap();
    for cmd in ["info", "reset"] {
        let out = Command::new(&bin)
            .args(["overlay", cmd])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not-an-overlay") && err.contains("not an ocidisk overlay"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"QFI\xfb this is a qcow2, not an overlay"
    );
    let out = Command::new(&bin)
        .args(["overlay", "info"])
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
}
