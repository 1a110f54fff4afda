//! Bad input: every damaged or mismatched overlay file is refused with a
//! clear error that names the file, and its bytes are left unchanged.

// Test code: a failed unwrap is a failed test, with its line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the test failing"
)]

mod common;

use blockio::IoBuf;
use common::identity;
use overlay::{CreateOptions, OpenOptions, Overlay, OverlayError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const SIZE: u64 = 10 * 4096;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

/// A valid overlay with a few writes; `flushes` of them flushed (each flush
/// writes the map page's other copy).
fn fixture(flushes: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.overlay");
    let base = vec![1u8; SIZE as usize];
    let ov = Overlay::create(
        &path,
        &CreateOptions {
            disk_size: SIZE,
            base: identity("good"),
        },
    )
    .unwrap();
    for i in 0..flushes {
        ov.write(i as u64 * 4096 + 10, &[IoBuf::new(b"data")], &base)
            .unwrap();
        ov.flush().unwrap();
    }
    Fixture { _dir: dir, path }
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// What a damage makes unusable, so which ways of opening must fail.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The header: everything, even reading the header alone.
    Header,
    /// The map or the length: every open, `inspect` and `reset`.
    File,
    /// Only a match against the expected base or size: `open`.
    Open,
}

/// Opens `path` in every way the damage in `scope` forbids (read-write,
/// read-only, rebase; `inspect` and `reset`; the header alone) and checks
/// each attempt fails the same way and writes nothing.
fn refused(
    path: &Path,
    id: &blockio::BaseIdentity,
    size: u64,
    scope: Scope,
    check: impl Fn(&OverlayError),
) {
    let before = std::fs::read(path).unwrap();
    let attempts = [
        OpenOptions::default(),
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
        OpenOptions {
            rebase: true,
            ..Default::default()
        },
    ];
    let mut errors = Vec::new();
    for opts in &attempts {
        match Overlay::open(path, id, size, opts) {
            Ok(_) => panic!("{} opened with {opts:?}", path.display()),
            Err(e) => errors.push(e),
        }
    }
    if scope != Scope::Open {
        match Overlay::inspect(path) {
            Ok(_) => panic!("{} inspected", path.display()),
            Err(e) => errors.push(e),
        }
        match Overlay::reset(path) {
            Ok(()) => panic!("{} reset", path.display()),
            Err(e) => errors.push(e),
        }
    }
    if scope == Scope::Header {
        match Overlay::read_header(path) {
            Ok(_) => panic!("{} header read", path.display()),
            Err(e) => errors.push(e),
        }
    }
    for err in &errors {
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(!err.is_guest_error());
        check(err);
    }
    assert_eq!(std::fs::read(path).unwrap(), before, "the file changed");
    let dir = path.parent().unwrap();
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        1,
        "no temporary file left"
    );
}

fn header_checksum(b: &mut [u8], slot: usize) {
    let s = slot * 4096;
    let sum: [u8; 32] = Sha256::digest(&b[s..s + 4064]).into();
    b[s + 4064..s + 4096].copy_from_slice(&sum);
}

/// Recomputes the checksum of map page slot `slot` (0 or 1) of page 0.
fn page_checksum(b: &mut [u8], slot: usize) {
    let s = 8192 + slot * 4096;
    let mut h = Sha256::new();
    h.update(&b[s..s + 24]);
    h.update([0u8; 32]);
    h.update(&b[s + 56..s + 4096]);
    let sum: [u8; 32] = h.finalize().into();
    b[s + 24..s + 56].copy_from_slice(&sum);
}

#[test]
fn truncated_files() {
    let f = fixture(1);
    let full = std::fs::metadata(&f.path).unwrap().len();
    for len in [full - 1, 3 * 4096, 8192, 4000, 100, 0] {
        let f = fixture(1);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f.path)
            .unwrap()
            .set_len(len)
            .unwrap();
        let scope = if len < 8192 {
            Scope::Header
        } else {
            Scope::File
        };
        refused(&f.path, &identity("good"), SIZE, scope, |e| match e {
            OverlayError::Truncated {
                len: l, expected, ..
            } => {
                assert_eq!(*l, len);
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("{len} bytes, its format needs {expected}")),
                    "{msg}"
                );
            }
            // Too short to hold a whole map page slot: its copies are damaged.
            OverlayError::NotAnOverlay { found, .. } if len == 0 => assert!(found.is_empty()),
            _ => panic!("truncated to {len}: {e}"),
        });
    }
}

#[test]
fn wrong_magic() {
    let f = fixture(1);
    // One copy with the right magic is enough (a bad sector, say).
    edit(&f.path, |b| b[0..8].copy_from_slice(b"QFI\xfb\0\0\0\x03"));
    let ov = Overlay::open(&f.path, &identity("good"), SIZE, &OpenOptions::default()).unwrap();
    assert_eq!(ov.usage().unwrap().blocks_written, 1);
    drop(ov);
    edit(&f.path, |b| {
        b[4096..4104].copy_from_slice(b"QFI\xfb\0\0\0\x03")
    });
    refused(&f.path, &identity("good"), SIZE, Scope::Header, |e| {
        assert!(matches!(e, OverlayError::NotAnOverlay { .. }), "{e}");
        assert!(e.to_string().contains("not an ocidisk overlay"), "{e}");
    });
    assert!(matches!(
        Overlay::read_header(&f.path),
        Err(OverlayError::NotAnOverlay { .. })
    ));
}

#[test]
fn newer_version_is_refused_not_misread() {
    let f = fixture(1);
    edit(&f.path, |b| {
        for slot in 0..2 {
            b[slot * 4096 + 8..slot * 4096 + 12].copy_from_slice(&2u32.to_le_bytes());
        }
    });
    refused(&f.path, &identity("good"), SIZE, Scope::Header, |e| {
        assert!(
            matches!(
                e,
                OverlayError::UnsupportedVersion {
                    version: 2,
                    supported: 1,
                    ..
                }
            ),
            "{e}"
        );
    });
}

#[test]
fn a_map_claiming_blocks_past_the_end() {
    // A fresh overlay: page 0 lives in copy 0 only.
    let f = fixture(0);
    edit(&f.path, |b| {
        // Block 20 of a 10-block disk: payload byte 5, bits 0-1 = written.
        b[8192 + 64 + 5] = 0b01;
        page_checksum(b, 0);
    });
    refused(&f.path, &identity("good"), SIZE, Scope::File, |e| {
        let msg = e.to_string();
        assert!(matches!(e, OverlayError::Corrupt { .. }), "{e}");
        assert!(
            msg.contains("block 20") && msg.contains("10 blocks"),
            "{msg}"
        );
    });
}

#[test]
fn an_invalid_block_state() {
    let f = fixture(0);
    edit(&f.path, |b| {
        b[8192 + 64] = 0b11;
        page_checksum(b, 0);
    });
    refused(&f.path, &identity("good"), SIZE, Scope::File, |e| {
        assert!(e.to_string().contains("invalid state 3"), "{e}");
    });
}

#[test]
fn a_checksum_failure_in_the_only_copy_of_a_map_page() {
    let f = fixture(0);
    edit(&f.path, |b| b[8192 + 100] ^= 0x10);
    refused(&f.path, &identity("good"), SIZE, Scope::File, |e| {
        assert!(e.to_string().contains("map page 0"), "{e}");
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
    });
}

#[test]
fn a_torn_newer_map_copy_falls_back_to_the_older() {
    // Creation writes copy 0, the first flush copy 1, the second copy 0
    // again: tear that newest one.
    let f = fixture(2);
    edit(&f.path, |b| b[8192 + 200] ^= 1);
    let ov = Overlay::open(&f.path, &identity("good"), SIZE, &OpenOptions::default()).unwrap();
    // Copy 0 is from the first flush: one written block.
    assert_eq!(ov.usage().unwrap().blocks_written, 1);
}

#[test]
fn a_header_checksum_failure_in_both_copies() {
    let f = fixture(1);
    let good = std::fs::read(&f.path).unwrap();
    edit(&f.path, |b| {
        b[30] ^= 1;
        b[4096 + 30] ^= 1;
    });
    refused(&f.path, &identity("good"), SIZE, Scope::Header, |e| {
        assert!(e.to_string().contains("header checksum mismatch"), "{e}");
    });
    // One good copy is enough.
    edit(&f.path, |b| {
        b[4096..8192].copy_from_slice(&good[4096..8192])
    });
    Overlay::open(&f.path, &identity("good"), SIZE, &OpenOptions::default()).unwrap();
}

#[test]
fn nonzero_reserved_header_bytes_and_generation_zero() {
    for (at, value) in [(52, 1u8), (16, 0)] {
        let f = fixture(1);
        edit(&f.path, |b| {
            for slot in 0..2 {
                if at == 16 {
                    b[slot * 4096 + 16..slot * 4096 + 24].fill(value);
                } else {
                    b[slot * 4096 + at] = value;
                }
                header_checksum(b, slot);
            }
        });
        refused(&f.path, &identity("good"), SIZE, Scope::Header, |e| {
            assert!(matches!(e, OverlayError::Corrupt { .. }), "{e}");
        });
    }
}

#[test]
fn unknown_header_flags() {
    let f = fixture(1);
    edit(&f.path, |b| {
        for slot in 0..2 {
            b[slot * 4096 + 12] = 1;
            header_checksum(b, slot);
        }
    });
    refused(&f.path, &identity("good"), SIZE, Scope::Header, |e| {
        assert!(e.to_string().contains("unknown header flags"), "{e}");
    });
}

#[test]
fn another_disk_size() {
    let f = fixture(1);
    refused(&f.path, &identity("good"), SIZE + 4096, Scope::Open, |e| {
        assert!(
            matches!(e, OverlayError::DiskSizeMismatch { overlay: SIZE, expected, .. } if *expected == SIZE + 4096),
            "{e}"
        );
    });
}

#[test]
fn another_base_unless_rebase() {
    let f = fixture(1);
    let before = std::fs::read(&f.path).unwrap();
    for read_only in [false, true] {
        let opts = OpenOptions {
            read_only,
            ..Default::default()
        };
        let err = Overlay::open(&f.path, &identity("other-base"), SIZE, &opts)
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(matches!(err, OverlayError::BaseMismatch { .. }), "{msg}");
        assert!(
            msg.contains("sha256:good") && msg.contains("sha256:other-base"),
            "{msg}"
        );
        assert!(msg.contains(&f.path.display().to_string()), "{msg}");
    }
    assert_eq!(std::fs::read(&f.path).unwrap(), before);

    // Rebasing keeps the writes and records the new base.
    let old = Overlay::read_header(&f.path).unwrap();
    let opts = OpenOptions {
        rebase: true,
        ..Default::default()
    };
    let ov = Overlay::open(&f.path, &identity("other-base"), SIZE, &opts).unwrap();
    let base = vec![2u8; SIZE as usize];
    let mut buf = [0u8; 6];
    ov.read(9, &mut [blockio::IoBufMut::new(&mut buf)], &base)
        .unwrap();
    assert_eq!(&buf, b"\x01data\x01", "the copy-up from the old base stays");
    drop(ov);
    let new = Overlay::read_header(&f.path).unwrap();
    assert_eq!(new.base, identity("other-base"));
    assert_eq!(new.disk_id, old.disk_id);
    assert_eq!(new.generation, old.generation + 1);
    Overlay::open(
        &f.path,
        &identity("other-base"),
        SIZE,
        &OpenOptions::default(),
    )
    .unwrap();
}

#[test]
fn rebasing_twice_alternates_the_header_copies() {
    let f = fixture(1);
    let generation = |b: &[u8], slot: usize| {
        u64::from_le_bytes(b[slot * 4096 + 16..slot * 4096 + 24].try_into().unwrap())
    };
    let rebase = OpenOptions {
        rebase: true,
        ..Default::default()
    };
    let disk_id = Overlay::read_header(&f.path).unwrap().disk_id;
    drop(Overlay::open(&f.path, &identity("second"), SIZE, &rebase).unwrap());
    let b = std::fs::read(&f.path).unwrap();
    assert_eq!((generation(&b, 0), generation(&b, 1)), (1, 2));
    drop(Overlay::open(&f.path, &identity("third"), SIZE, &rebase).unwrap());
    let b = std::fs::read(&f.path).unwrap();
    assert_eq!((generation(&b, 0), generation(&b, 1)), (3, 2));
    let h = Overlay::read_header(&f.path).unwrap();
    assert_eq!((h.generation, h.disk_id), (3, disk_id));
    assert_eq!(h.base, identity("third"));
    let ov = Overlay::open(&f.path, &identity("third"), SIZE, &OpenOptions::default()).unwrap();
    assert_eq!(ov.usage().unwrap().blocks_written, 1, "the writes stay");
}

#[test]
fn rebasing_onto_a_digest_too_long_for_the_header_is_refused() {
    let f = fixture(1);
    let long = blockio::BaseIdentity {
        manifest_digest: "x".repeat(256),
        layout_hash: [0; 32],
    };
    let rebase = OpenOptions {
        rebase: true,
        ..Default::default()
    };
    let before = std::fs::read(&f.path).unwrap();
    let err = Overlay::open(&f.path, &long, SIZE, &rebase).err().unwrap();
    assert!(matches!(err, OverlayError::InvalidOptions { .. }), "{err}");
    assert!(err.to_string().contains("cannot rebase"), "{err}");
    assert_eq!(std::fs::read(&f.path).unwrap(), before);
    // Read-only writes no header: rebasing in memory is all it can do.
    let ro = OpenOptions {
        read_only: true,
        ..rebase
    };
    assert_eq!(
        Overlay::open(&f.path, &long, SIZE, &ro)
            .unwrap()
            .header()
            .base,
        long
    );
}

#[test]
fn create_never_clobbers() {
    let f = fixture(1);
    let before = std::fs::read(&f.path).unwrap();
    let err = Overlay::create(
        &f.path,
        &CreateOptions {
            disk_size: SIZE,
            base: identity("x"),
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, OverlayError::AlreadyExists { .. }), "{err}");
    assert_eq!(std::fs::read(&f.path).unwrap(), before);
    let dir = f.path.parent().unwrap();
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        1,
        "no temporary file left"
    );
}

#[test]
fn invalid_create_options() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x");
    for size in [0, 1000, 1 << 60] {
        let err = Overlay::create(
            &path,
            &CreateOptions {
                disk_size: size,
                base: identity("x"),
            },
        )
        .err()
        .unwrap();
        assert!(matches!(err, OverlayError::InvalidOptions { .. }), "{err}");
        assert!(!path.exists());
    }
    let long = blockio::BaseIdentity {
        manifest_digest: "x".repeat(300),
        layout_hash: [0; 32],
    };
    let err = Overlay::create(
        &path,
        &CreateOptions {
            disk_size: 4096,
            base: long,
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, OverlayError::InvalidOptions { .. }), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn one_writer_at_a_time() {
    let f = fixture(1);
    let _ov = Overlay::open(&f.path, &identity("good"), SIZE, &OpenOptions::default()).unwrap();
    let err = Overlay::open(&f.path, &identity("good"), SIZE, &OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, OverlayError::Busy { .. }), "{err}");
    assert!(
        Overlay::inspect(&f.path).is_ok(),
        "info works while serving"
    );
}

#[test]
fn guest_errors() {
    let f = fixture(1);
    let base = vec![0u8; SIZE as usize];
    let ov = Overlay::open(&f.path, &identity("good"), SIZE, &OpenOptions::default()).unwrap();
    let mut buf = [0u8; 8];
    for (off, len) in [(SIZE - 4, 8), (u64::MAX - 2, 8)] {
        let mut b = vec![0u8; len];
        let err = ov
            .read(off, &mut [blockio::IoBufMut::new(&mut b)], &base)
            .unwrap_err();
        assert!(
            err.is_guest_error() && matches!(err, OverlayError::OutOfRange { .. }),
            "{err}"
        );
        let err = ov.write(off, &[IoBuf::new(&b)], &base).unwrap_err();
        assert!(err.is_guest_error(), "{err}");
        assert!(ov
            .write_zeroes(off, len as u64, &base)
            .unwrap_err()
            .is_guest_error());
        assert!(ov
            .discard(off, len as u64, &base)
            .unwrap_err()
            .is_guest_error());
    }
    drop(ov);
    let ro = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let before = std::fs::read(&f.path).unwrap();
    let ov = Overlay::open(&f.path, &identity("good"), SIZE, &ro).unwrap();
    let err = ov.write(0, &[IoBuf::new(&buf)], &base).unwrap_err();
    assert!(
        err.is_guest_error() && matches!(err, OverlayError::ReadOnly { .. }),
        "{err}"
    );
    assert!(ov.write_zeroes(0, 8, &base).unwrap_err().is_guest_error());
    ov.flush().unwrap();
    ov.read(0, &mut [blockio::IoBufMut::new(&mut buf)], &base)
        .unwrap();
    drop(ov);
    assert_eq!(std::fs::read(&f.path).unwrap(), before);
}
