//! `Overlay::changes`: the runs that no longer read from the base.

// Test code: a failed unwrap is a failed test, with its line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the test failing"
)]

use blockio::{BaseIdentity, IoBuf};
use overlay::{Change, CreateOptions, Overlay, BLOCK_SIZE};

#[test]
fn changes_list_written_and_zeroed_runs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let size = 1 << 20;
    let base = vec![9u8; size as usize];
    let identity = BaseIdentity {
        manifest_digest: "sha256:00".into(),
        layout_hash: [1; 32],
    };
    let ov = Overlay::create(
        &dir.path().join("vm.overlay"),
        &CreateOptions {
            disk_size: size,
            base: identity,
        },
    )
    .unwrap();
    assert_eq!(ov.changes(), vec![]);

    // An unaligned write covers two blocks; a zeroed run follows a gap; the
    // last block is written.
    ov.write(BLOCK_SIZE + 100, &[IoBuf::new(&[1; 4096])], &base)
        .unwrap();
    ov.write_zeroes(8 * BLOCK_SIZE, 3 * BLOCK_SIZE, &base)
        .unwrap();
    ov.write(size - 512, &[IoBuf::new(&[2; 512])], &base)
        .unwrap();
    assert_eq!(
        ov.changes(),
        vec![
            Change {
                offset: BLOCK_SIZE,
                len: 2 * BLOCK_SIZE,
                zero: false
            },
            Change {
                offset: 8 * BLOCK_SIZE,
                len: 3 * BLOCK_SIZE,
                zero: true
            },
            Change {
                offset: size - BLOCK_SIZE,
                len: BLOCK_SIZE,
                zero: false
            },
        ]
    );
}
