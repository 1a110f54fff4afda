//! The asynchronous engine's write path: writes sent straight to the file
//! at [`Overlay::write_target`], whose data lands and whose
//! [`Overlay::commit_write`] runs in any order relative to each other and
//! to the blocking operations, as completions come off an io_uring.
//! Compared step by step with a plain in-memory disk.

// Test code: a failed unwrap is a failed test, with its line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the test failing"
)]

mod common;

use blockio::{IoBuf, IoBufMut};
use common::{identity, read_all, Model, Rng, BS};
use overlay::{OpenOptions, Overlay};
use std::collections::BTreeSet;

use std::os::unix::fs::FileExt;

const BLOCKS: u64 = 48;

/// A write in flight: its disk range, its bytes, where the file takes
/// them, and whether they have reached the file yet.
struct InFlight {
    off: u64,
    data: Vec<u8>,
    at: u64,
    landed: bool,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

#[test]
fn engine_writes_completing_in_any_order_keep_the_disk_consistent() {
    for seed in 0..120u64 {
        let mut rng = Rng::new(seed);
        let base: Vec<u8> = rng.bytes((BLOCKS * BS) as usize);
        let (dir, ov) = common::fresh_overlay(BLOCKS, "engine");
        let path = dir.path().join("ov");
        let mut ov = Some(ov);
        let mut model = Model { disk: base.clone() };
        // Blocks the overlay holds data for: only those take engine writes.
        let mut written: BTreeSet<u64> = BTreeSet::new();
        let mut pending: Vec<InFlight> = Vec::new();
        for step in 0..300 {
            let o = ov.as_ref().unwrap();
            let busy = |r: (u64, u64), pending: &[InFlight]| {
                pending
                    .iter()
                    .any(|p| overlaps(r, (p.off, p.data.len() as u64)))
            };
            let first = rng.below(BLOCKS);
            let blocks = 1 + rng.below(4.min(BLOCKS - first));
            let whole = (first * BS, blocks * BS);
            match rng.below(9) {
                // A whole-block write, as the engine starts one.
                0..=2 if !busy(whole, &pending) => {
                    let data = rng.bytes(whole.1 as usize);
                    let all_written = (first..first + blocks).all(|b| written.contains(&b));
                    match o.write_target(whole.0, whole.1) {
                        Some((_, _, at)) => {
                            assert!(
                                all_written,
                                "seed {seed} step {step}: target for unwritten blocks"
                            );
                            pending.push(InFlight {
                                off: whole.0,
                                data,
                                at,
                                landed: false,
                            });
                        }
                        None => {
                            assert!(
                                !all_written,
                                "seed {seed} step {step}: no target for written blocks"
                            );
                            o.write(whole.0, &[IoBuf::new(&data)], &base).unwrap();
                            model.write(whole.0, &data);
                            written.extend(first..first + blocks);
                        }
                    }
                }
                // The kernel writes some in-flight write's data.
                3 if !pending.is_empty() => {
                    let i = rng.below(pending.len() as u64) as usize;
                    let p = &mut pending[i];
                    if !p.landed {
                        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                        file.write_all_at(&p.data, p.at).unwrap();
                        p.landed = true;
                    }
                }
                // A landed write completes.
                4 if pending.iter().any(|p| p.landed) => {
                    let landed: Vec<usize> =
                        (0..pending.len()).filter(|&i| pending[i].landed).collect();
                    let i = landed[rng.below(landed.len() as u64) as usize];
                    let p = pending.swap_remove(i);
                    o.commit_write(p.off, p.data.len() as u64).unwrap();
                    model.write(p.off, &p.data);
                }
                // A partial write (a copy-up) or a discard beside them.
                5 | 6 => {
                    let off = rng.below(BLOCKS * BS - 600) / 512 * 512 + 512 * rng.below(2);
                    let len = (512 * (1 + rng.below(10))).min(BLOCKS * BS - off);
                    if busy((off, len), &pending) {
                        continue;
                    }
                    if rng.below(2) == 0 {
                        let data = rng.bytes(len as usize);
                        o.write(off, &[IoBuf::new(&data)], &base).unwrap();
                        model.write(off, &data);
                        written.extend(off / BS..(off + len).div_ceil(BS));
                    } else {
                        o.discard(off, len, &base).unwrap();
                        let (a, b) = model.discard(off, len);
                        for blk in a / BS..b / BS {
                            written.remove(&blk);
                        }
                    }
                }
                // Reads of what is not in flight see every completed write.
                7 => {
                    let (off, len) = (rng.below(BLOCKS * BS - 8192), 8192);
                    if busy((off, len), &pending) {
                        continue;
                    }
                    let mut buf = vec![0u8; len as usize];
                    o.read(off, &mut [IoBufMut::new(&mut buf)], &base).unwrap();
                    assert!(
                        buf[..] == model.disk[off as usize..(off + len) as usize],
                        "seed {seed} step {step}: read at {off}"
                    );
                }
                // A flush, and with nothing in flight a reopen: everything
                // completed before the flush is in the file.
                _ => {
                    o.flush().unwrap();
                    if pending.is_empty() {
                        drop(ov.take());
                        let reopened = Overlay::open(
                            &path,
                            &identity("engine"),
                            BLOCKS * BS,
                            &OpenOptions::default(),
                        )
                        .unwrap();
                        assert!(
                            read_all(&reopened, &base, &mut rng) == model.disk,
                            "seed {seed} step {step}: reopened disk differs"
                        );
                        ov = Some(reopened);
                    }
                }
            }
        }
    }
}

/// A discard racing with an engine write of the same block: whichever
/// order they take, the block reads as one of them (the written bytes or
/// zeros), and reads the same after a flush and a reopen.
#[test]
fn a_discard_racing_an_engine_write_leaves_one_of_them() {
    for land_first in [false, true] {
        let base = vec![0x11u8; (4 * BS) as usize];
        let (dir, ov) = common::fresh_overlay(4, "race");
        let path = dir.path().join("ov");
        ov.write(BS, &[IoBuf::new(&[0x22; BS as usize])], &base)
            .unwrap();
        let (_, _, at) = ov
            .write_target(BS, BS)
            .expect("an overwrite takes a target");
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        if land_first {
            file.write_all_at(&[0x33; BS as usize], at).unwrap();
        }
        ov.discard(BS, BS, &base).unwrap();
        if !land_first {
            file.write_all_at(&[0x33; BS as usize], at).unwrap();
        }
        ov.commit_write(BS, BS).unwrap();
        let mut now = vec![0u8; BS as usize];
        ov.read(BS, &mut [IoBufMut::new(&mut now)], &base).unwrap();
        assert!(
            now == vec![0x33; BS as usize] || now == vec![0; BS as usize],
            "land_first {land_first}: {:#x}",
            now[0]
        );
        ov.flush().unwrap();
        drop(ov);
        let ov = Overlay::open(&path, &identity("race"), 4 * BS, &OpenOptions::default()).unwrap();
        let mut after = vec![0u8; BS as usize];
        ov.read(BS, &mut [IoBufMut::new(&mut after)], &base)
            .unwrap();
        assert_eq!(after, now, "land_first {land_first}");
    }
}
