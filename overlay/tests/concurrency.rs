//! Several threads on one overlay, as one worker per virtqueue would be.

// Test code: a failed unwrap is a failed test, with its line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the test failing"
)]
// `&Vec<u8>` is a sized `ReadAt`, which `&dyn ReadAt` needs.
#![allow(clippy::ptr_arg)]

mod common;

use blockio::{IoBuf, IoBufMut};
use common::{fresh_overlay, identity, read_all, split, MemStorage, Rng, BS};
use overlay::{CreateOptions, OpenOptions, Overlay};

use std::path::Path;
use std::sync::Arc;

const THREADS: u64 = 4;

/// A thread's range at its last completed flush, and what it wrote since.
type ThreadState = (Vec<u8>, Vec<(u64, Vec<u8>)>);

/// The disk is cut into 1000-byte units dealt round-robin to the threads,
/// so every block is shared by several threads and its first (copy-up)
/// write races between them. Bytes are disjoint, so the final disk is fully
/// determined: a racing copy-up that clobbered a neighbour would show.
#[test]
fn disjoint_unaligned_ranges_share_blocks() {
    let blocks = 256;
    const UNIT: u64 = 1000;
    for round in 0..6 {
        let (_dir, ov) = fresh_overlay(blocks, "conc");
        let mut rng = Rng::new(round);
        let base = rng.bytes((blocks * BS) as usize);
        let units = blocks * BS / UNIT;
        let written: Vec<Vec<(u64, Vec<u8>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (ov, base) = (&ov, &base);
                    s.spawn(move || {
                        let mut rng = Rng::new(round * 100 + t);
                        let mut mine = Vec::new();
                        // Ascending, like the other threads: they collide.
                        for u in (t..units).step_by(THREADS as usize) {
                            let data = rng.bytes(UNIT as usize);
                            if u % 13 == 5 {
                                ov.write_zeroes(u * UNIT, UNIT, base).unwrap();
                                mine.push((u * UNIT, vec![0; UNIT as usize]));
                            } else {
                                ov.write(u * UNIT, &split(&data, &mut rng), base).unwrap();
                                mine.push((u * UNIT, data));
                            }
                            if u % 50 == 0 {
                                ov.flush().unwrap();
                            }
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let disk = read_all(&ov, &base, &mut rng);
        let mut expected = base.clone();
        for (off, data) in written.iter().flatten() {
            expected[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        let bad = disk.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(
            bad, None,
            "round {round}: concurrent writes clobbered a byte"
        );
    }
}

/// Threads write the same unaligned ranges with their own byte value while
/// a reader watches: no byte ever reads as a value nobody wrote, and no
/// written byte reverts to the base afterwards (the lost-update a racing
/// copy-up would cause).
#[test]
fn overlapping_writes_never_resurrect_the_base() {
    let blocks = 32;
    let (_dir, ov) = fresh_overlay(blocks, "conc");
    let base = vec![0xEEu8; (blocks * BS) as usize];
    let covered: Vec<Vec<(u64, u64)>> = std::thread::scope(|s| {
        let reader = {
            let (ov, base) = (&ov, &base);
            s.spawn(move || {
                let mut rng = Rng::new(9);
                for _ in 0..300 {
                    let off = rng.below(blocks * BS - 3 * BS);
                    let mut buf = vec![0u8; 3 * BS as usize];
                    ov.read(off, &mut [IoBufMut::new(&mut buf)], base).unwrap();
                    assert!(buf
                        .iter()
                        .all(|&b| b == 0xEE || b == 0 || b <= THREADS as u8));
                }
            })
        };
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (ov, base) = (&ov, &base);
                s.spawn(move || {
                    let mut rng = Rng::new(t);
                    let data = vec![t as u8 + 1; 3 * BS as usize];
                    let mut ranges = Vec::new();
                    for i in 0..300 {
                        let off = rng.below(blocks * BS - 3 * BS);
                        let len = rng.below(3 * BS) + 1;
                        if t == 0 && i % 7 == 0 {
                            ov.write_zeroes(off, len, base).unwrap();
                        } else {
                            ov.write(off, &[IoBuf::new(&data[..len as usize])], base)
                                .unwrap();
                        }
                        ranges.push((off, off + len));
                    }
                    ranges
                })
            })
            .collect();
        reader.join().unwrap();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let disk = read_all(&ov, &base, &mut Rng::new(0));
    let mut touched = vec![false; disk.len()];
    for (a, b) in covered.iter().flatten() {
        touched[*a as usize..*b as usize].fill(true);
    }
    for (i, (&byte, &t)) in disk.iter().zip(&touched).enumerate() {
        if t {
            assert!(byte != 0xEE, "byte {i} was written but reads from the base");
        } else {
            assert_eq!(byte, 0xEE, "byte {i} was never written");
        }
    }
}

/// Threads write their own ranges and flush concurrently; then the host
/// crashes. Every write a thread saw completed before its own successful
/// flush began must be there: the flush's snapshot-then-sync order holds
/// with writers running on other threads.
#[test]
fn concurrent_flushes_then_crash() {
    for seed in 0..12 {
        let blocks = 64;
        let size = blocks * BS;
        let mut rng = Rng::new(seed);
        let base = rng.bytes(size as usize);
        let storage = MemStorage::new();
        let path = Path::new("mem");
        Overlay::write_new(
            &*storage,
            path,
            &CreateOptions {
                disk_size: size,
                base: identity("c"),
            },
        )
        .unwrap();
        let open = |s: &Arc<MemStorage>| {
            Overlay::open_on(
                Box::new(s.clone()),
                path,
                &identity("c"),
                size,
                &OpenOptions::default(),
            )
            .unwrap()
        };
        let ov = open(&storage);
        let region = size / THREADS - 1000;
        // Per thread: its range at its last completed flush, and the values
        // it wrote after.
        let states: Vec<ThreadState> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (ov, base) = (&ov, &base);
                    s.spawn(move || {
                        let mut rng = Rng::new(seed * 100 + t);
                        let lo = 500 + t * (region + 300);
                        let mut mine = base[lo as usize..(lo + region) as usize].to_vec();
                        let mut flushed = mine.clone();
                        let mut since = Vec::new();
                        for _ in 0..60 {
                            if rng.below(6) == 0 {
                                ov.flush().unwrap();
                                flushed.copy_from_slice(&mine);
                                since.clear();
                            } else {
                                let off = rng.below(region);
                                let len = rng.below((region - off).min(2 * BS)) + 1;
                                let data = rng.bytes(len as usize);
                                ov.write(lo + off, &split(&data, &mut rng), base).unwrap();
                                mine[off as usize..(off + len) as usize].copy_from_slice(&data);
                                since.push((off, data));
                            }
                        }
                        (flushed, since)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        drop(ov);
        let crashed = storage.crash(&mut rng);
        let disk = read_all(&open(&crashed), &base, &mut rng);
        for (t, (flushed, since)) in states.iter().enumerate() {
            let lo = (500 + t as u64 * (region + 300)) as usize;
            for (i, &f) in flushed.iter().enumerate() {
                let a = disk[lo + i];
                let ok = a == f
                    || since.iter().any(|(off, d)| {
                        let i = i as u64;
                        i >= *off && i < off + d.len() as u64 && d[(i - off) as usize] == a
                    });
                assert!(
                    ok,
                    "seed {seed} thread {t}: byte {} lost a flushed write",
                    lo + i
                );
            }
        }
    }
}

/// A base whose reads of block 0 stop until released, so a copy-up of
/// block 0 stays in progress (holding its stripe lock) as long as the test
/// wants.
struct StallingBase {
    bytes: Vec<u8>,
    entered: std::sync::mpsc::SyncSender<()>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl blockio::ReadAt for StallingBase {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_vectored_at(&self, offset: u64, bufs: &mut [IoBufMut<'_>]) -> std::io::Result<()> {
        if offset < BS {
            let _ = self.entered.send(());
            let _ = self.release.lock().unwrap().recv();
        }
        blockio::ReadAt::read_vectored_at(&&self.bytes, offset, bufs)
    }
}

/// No global lock: while a copy-up of block 0 waits on the base, another
/// thread reads, writes (a copy-up of its own, in another stripe) and
/// flushes block 1280.
#[test]
fn a_stalled_copy_up_does_not_block_other_stripes() {
    use std::sync::mpsc::{channel, sync_channel};
    use std::time::Duration;
    let blocks = 2048;
    let (_dir, ov) = fresh_overlay(blocks, "conc");
    let (entered_tx, entered) = sync_channel(1);
    let (release, release_rx) = channel();
    let base = StallingBase {
        bytes: Rng::new(5).bytes((blocks * BS) as usize),
        entered: entered_tx,
        release: std::sync::Mutex::new(release_rx),
    };
    let other = 1280 * BS;
    std::thread::scope(|s| {
        let stalled = s.spawn(|| ov.write(100, &[IoBuf::new(b"stalled")], &base));
        entered
            .recv_timeout(Duration::from_secs(30))
            .expect("the copy-up reached the base");
        let (done_tx, done) = channel();
        let (ov, base) = (&ov, &base);
        s.spawn(move || {
            let mut buf = [0u8; 16];
            ov.read(other, &mut [IoBufMut::new(&mut buf)], base)
                .unwrap();
            ov.write(other + 7, &[IoBuf::new(b"other")], base).unwrap();
            ov.flush().unwrap();
            ov.read(other, &mut [IoBufMut::new(&mut buf)], base)
                .unwrap();
            done_tx.send(buf).unwrap();
        });
        let got = done.recv_timeout(Duration::from_secs(30));
        release.send(()).unwrap();
        let buf = got.expect("the other stripe's requests finished while block 0 was stalled");
        assert_eq!(&buf[7..12], b"other");
        stalled.join().unwrap().unwrap();
        let mut buf = [0u8; 7];
        ov.read(100, &mut [IoBufMut::new(&mut buf)], base).unwrap();
        assert_eq!(&buf, b"stalled");
    });
}
