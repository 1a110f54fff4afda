//! Model-based test: random sequences of writes, zeroes, discards, flushes,
//! reopens and resets through a real overlay file, compared after every step
//! with a plain in-memory disk over a random base.

// Test code: a failed unwrap is a failed test, with its line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the test failing"
)]

mod common;

use blockio::IoBufMut;
use common::{identity, read_all, split, Model, Rng, BS};
use overlay::{CreateOptions, OpenOptions, Overlay};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Write { off: u64, len: u64, aligned: bool },
    WriteZeroes { off: u64, len: u64 },
    Discard { off: u64, len: u64 },
    Read { off: u64, len: u64 },
    Flush,
    Reopen,
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    let pos = (any::<u64>(), any::<u64>());
    prop_oneof![
        6 => (pos, any::<bool>()).prop_map(|((off, len), aligned)| Op::Write { off, len, aligned }),
        2 => pos.prop_map(|(off, len)| Op::WriteZeroes { off, len }),
        2 => pos.prop_map(|(off, len)| Op::Discard { off, len }),
        2 => pos.prop_map(|(off, len)| Op::Read { off, len }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Reset),
    ]
}

/// Maps raw numbers onto a range of the disk: mostly short (within a few
/// blocks), aligned to 4 KiB when asked, sometimes reaching the end.
///
/// With a `focus` (a block), offsets fall within 64 blocks of it and every
/// fifth range is a large run of up to 160 blocks.
fn range(size: u64, off: u64, len: u64, aligned: bool, focus: Option<u64>) -> (u64, u64) {
    let mut o = match focus {
        Some(block) => ((block - 64) * BS + off % (128 * BS)).min(size - 1),
        None => off % size,
    };
    let longest = match focus {
        Some(_) if len.is_multiple_of(5) => 160 * BS,
        _ => 3 * BS + 700,
    };
    let max = (size - o).min(longest);
    let mut l = len % max + 1;
    if aligned {
        o = o / BS * BS;
        l = (l.div_ceil(BS) * BS).min(size - o);
    }
    if len.is_multiple_of(17) {
        l = size - o; // to the very end, including a short last block
    }
    (o, l)
}

fn run(blocks: u64, short_tail: u64, seed: u64, ops: Vec<Op>) {
    run_focused(blocks, short_tail, seed, ops, None)
}

/// [`run`], with every range near block `focus` if given; then only the
/// disk from 224 blocks before it is compared after each step (the rest
/// never changes), and the whole disk at the end.
fn run_focused(blocks: u64, short_tail: u64, seed: u64, ops: Vec<Op>, focus: Option<u64>) {
    let size = blocks * BS - short_tail * 512;
    let mut rng = Rng::new(seed);
    let base = rng.bytes(size as usize);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.overlay");
    let id = identity("model");
    let create = CreateOptions {
        disk_size: size,
        base: id.clone(),
    };
    let mut ov = Overlay::create(&path, &create).unwrap();
    let disk_id = ov.header().disk_id;
    let mut model = Model { disk: base.clone() };
    let checked = focus.map_or(0, |b| ((b - 224) * BS) as usize);
    for op in ops {
        let step = format!("{op:?}");
        match op {
            Op::Write { off, len, aligned } => {
                let (o, l) = range(size, off, len, aligned, focus);
                let data = rng.bytes(l as usize);
                ov.write(o, &split(&data, &mut rng), &base).unwrap();
                model.write(o, &data);
            }
            Op::WriteZeroes { off, len } => {
                let (o, l) = range(size, off, len, false, focus);
                ov.write_zeroes(o, l, &base).unwrap();
                model.write_zeroes(o, l);
            }
            Op::Discard { off, len } => {
                let (o, l) = range(size, off, len, false, focus);
                ov.discard(o, l, &base).unwrap();
                model.discard(o, l);
            }
            Op::Read { off, len } => {
                let (o, l) = range(size, off, len, false, focus);
                let mut buf = vec![0u8; l as usize];
                let cut = rng.below(l) as usize;
                let (a, b) = buf.split_at_mut(cut);
                ov.read(o, &mut [IoBufMut::new(a), IoBufMut::new(b)], &base)
                    .unwrap();
                assert_eq!(
                    buf,
                    model.disk[o as usize..(o + l) as usize],
                    "read {o}+{l}"
                );
            }
            Op::Flush => ov.flush().unwrap(),
            Op::Reopen => {
                ov.flush().unwrap();
                drop(ov);
                ov = Overlay::open(&path, &id, size, &OpenOptions::default()).unwrap();
            }
            Op::Reset => {
                drop(ov);
                Overlay::reset(&path).unwrap();
                ov = Overlay::open(&path, &id, size, &OpenOptions::default()).unwrap();
                assert_eq!(ov.usage().unwrap().blocks_written, 0);
                model.disk.copy_from_slice(&base);
            }
        }
        let mut disk = vec![0u8; size as usize - checked];
        ov.read(checked as u64, &mut [IoBufMut::new(&mut disk)], &base)
            .unwrap();
        assert!(disk == model.disk[checked..], "after {step}");
    }
    assert_eq!(
        ov.header().disk_id,
        disk_id,
        "the disk id survives everything"
    );
    ov.flush().unwrap();
    drop(ov);
    let ov = Overlay::open(
        &path,
        &id,
        size,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        read_all(&ov, &base, &mut rng) == model.disk,
        "after the final reopen"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn overlay_matches_a_plain_disk(
        blocks in 1u64..40,
        short_tail in 0u64..8,
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run(blocks, short_tail, seed, ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Around the boundary of map pages 0 and 1 (block 16128), with large
    /// runs that cross it.
    #[test]
    fn overlay_matches_at_a_map_page_boundary(
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..30),
    ) {
        run_focused(16128 + 300, 0, seed, ops, Some(16128));
    }
}

/// A disk spanning several map pages, so page boundaries and partial last
/// pages are exercised.
#[test]
fn overlay_matches_across_map_pages() {
    let mut rng = Rng::new(7);
    let ops: Vec<Op> = (0..60)
        .map(|i| match i % 9 {
            0..=4 => Op::Write {
                off: rng.next(),
                len: rng.next(),
                aligned: i % 2 == 0,
            },
            5 => Op::WriteZeroes {
                off: rng.next(),
                len: rng.next(),
            },
            6 => Op::Discard {
                off: rng.next(),
                len: rng.next(),
            },
            7 => Op::Flush,
            _ => Op::Reopen,
        })
        .collect();
    run(16128 * 2 + 5, 3, 99, ops);
}
