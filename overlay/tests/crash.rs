//! Crash tests: the overlay runs on a storage that dies after a random number
//! of operations (inside a write, between a flush's syncs, while writing map
//! pages...) and then keeps only what was synced plus a random, possibly
//! torn, subset of the rest, or (alternately, deterministically) exactly
//! what was synced. Reopening must succeed, every flushed write must
//! be there, and every byte must hold a value it had at the last completed
//! flush or was given since.

// Test code: a failed unwrap is a failed test, with its line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the test failing"
)]
// `&Vec<u8>` is a sized `ReadAt`, which `&dyn ReadAt` needs.
#![allow(clippy::ptr_arg)]

mod common;

use common::{identity, new_storage, read_all, split, Expect, MemStorage, Model, Rng, BS};
use overlay::storage::Storage;
use overlay::{CreateOptions, OpenOptions, Overlay};
use std::path::Path;
use std::sync::Arc;

fn open(storage: &Arc<MemStorage>, size: u64) -> Overlay {
    Overlay::open_on(
        Box::new(storage.clone()),
        Path::new("mem.overlay"),
        &identity("crash"),
        size,
        &OpenOptions::default(),
    )
    .expect("reopening after a crash")
}

/// Runs random requests until the storage dies; returns whether it died.
fn run_until_death(
    ov: &Overlay,
    base: &Vec<u8>,
    model: &mut Model,
    expect: &mut Expect,
    rng: &mut Rng,
) -> bool {
    let size = base.len() as u64;
    for _ in 0..200 {
        let off = rng.below(size);
        let mut len = rng.below((size - off).min(3 * BS + 100)) + 1;
        let off = if rng.below(2) == 0 {
            len = (len.div_ceil(BS) * BS).min(size - off / BS * BS);
            off / BS * BS
        } else {
            off
        };
        let result = match rng.below(10) {
            0..=5 => {
                let data = rng.bytes(len as usize);
                expect.since.push((off, data.clone()));
                let r = ov.write(off, &split(&data, rng), base);
                if r.is_ok() {
                    model.write(off, &data);
                }
                r
            }
            6 => {
                expect.since.push((off, vec![0; len as usize]));
                let r = ov.write_zeroes(off, len, base);
                if r.is_ok() {
                    model.write_zeroes(off, len);
                }
                r
            }
            7 => {
                let (a, b) = model.full_blocks(off, len);
                expect.since.push((a, vec![0; (b - a) as usize]));
                let r = ov.discard(off, len, base);
                if r.is_ok() {
                    model.discard(off, len);
                }
                r
            }
            _ => {
                let r = ov.flush();
                if r.is_ok() {
                    expect.disk.copy_from_slice(&model.disk);
                    expect.since.clear();
                }
                r
            }
        };
        if let Err(e) = result {
            let msg = blockio::error_chain(&e).to_string();
            assert!(msg.contains("simulated crash"), "{msg}");
            return true;
        }
    }
    false
}

fn crash_rounds(seed: u64, blocks: u64) {
    let mut rng = Rng::new(seed);
    let size = blocks * BS - rng.below(8) * 512;
    let base = rng.bytes(size as usize);
    let mut storage = new_storage(size, "crash");
    let mut model = Model { disk: base.clone() };
    for round in 0..6 {
        let ov = open(&storage, size);
        // Reopening gives exactly what we read before the crash.
        assert!(
            read_all(&ov, &base, &mut rng) == model.disk,
            "round {round}: reopen"
        );
        let mut expect = Expect {
            disk: model.disk.clone(),
            since: Vec::new(),
        };
        storage.die_after(rng.below(120) as i64);
        let died = run_until_death(&ov, &base, &mut model, &mut expect, &mut rng);
        if !died {
            storage.die_after(0);
        }
        drop(ov);
        storage = storage.crash_with(round % 2 == 1, &mut rng);
        let ov = open(&storage, size);
        let actual = read_all(&ov, &base, &mut rng);
        expect.check(&actual, &format!("round {round}"));
        // The header survived untouched and the disk is usable again.
        assert_eq!(ov.header().disk_size, size);
        model.disk = actual;
    }
}

#[test]
fn crashes_at_random_instants_lose_nothing_flushed() {
    for seed in 0..80 {
        crash_rounds(seed, 1 + seed % 23);
    }
}

#[test]
fn crashes_across_several_map_pages() {
    for seed in 1000..1002 {
        crash_rounds(seed, 16128 + 40);
    }
}

/// A crash at every single storage operation of one flush-heavy sequence.
#[test]
fn crash_at_every_step_of_a_flush() {
    for die in 0..40 {
        let mut rng = Rng::new(die);
        let size = 40 * BS;
        let base = rng.bytes(size as usize);
        let storage = new_storage(size, "crash");
        let ov = open(&storage, size);
        let mut model = Model { disk: base.clone() };
        for i in 0..10u64 {
            let data = rng.bytes(BS as usize + 100);
            ov.write(i * 3 * BS + 50, &split(&data, &mut rng), &base)
                .unwrap();
            model.write(i * 3 * BS + 50, &data);
        }
        ov.flush().unwrap();
        let flushed = model.disk.clone();
        let mut expect = Expect {
            disk: flushed,
            since: Vec::new(),
        };
        for i in 0..10u64 {
            let data = rng.bytes(2 * BS as usize);
            ov.write(i * 3 * BS + 7, &[blockio::IoBuf::new(&data)], &base)
                .unwrap();
            model.write(i * 3 * BS + 7, &data);
            expect.since.push((i * 3 * BS + 7, data));
            ov.discard(i * 3 * BS + BS, BS, &base).unwrap();
            model.discard(i * 3 * BS + BS, BS);
            expect.since.push((i * 3 * BS + BS, vec![0; BS as usize]));
        }
        storage.die_after(die as i64);
        if ov.flush().is_ok() {
            // The flush finished before the crash point: it all counts.
            expect.disk = model.disk.clone();
            expect.since.clear();
        }
        drop(ov);
        for trial in 0..4 {
            let crashed = storage.crash_with(trial == 0, &mut rng);
            let ov = open(&crashed, size);
            expect.check(&read_all(&ov, &base, &mut rng), &format!("trial {trial}"));
        }
        let _ = storage.sync_data();
    }
}

/// Blocks spanning two map pages.
const PAGES_BLOCKS: u64 = 16128 + 40;

/// A big base quickly (random bytes cost too much at this size).
fn pattern(size: u64) -> Vec<u8> {
    (0..size)
        .map(|i| (i.wrapping_mul(0x9e37_79b1) >> 13) as u8)
        .collect()
}

/// An overlay with flushed writes in each of its map pages; returns its
/// storage, the base and the flushed disk.
fn written_overlay(seed: u64) -> (Arc<MemStorage>, Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let size = PAGES_BLOCKS * BS;
    let base = pattern(size);
    let storage = new_storage(size, "crash");
    let ov = open(&storage, size);
    let mut model = Model { disk: base.clone() };
    for block in [3, 16127, 16128, PAGES_BLOCKS - 2] {
        let data = rng.bytes(BS as usize + 300);
        ov.write(block * BS + 9, &split(&data, &mut rng), &base)
            .unwrap();
        model.write(block * BS + 9, &data);
    }
    ov.discard(5 * BS, 2 * BS, &base).unwrap();
    model.discard(5 * BS, 2 * BS);
    ov.flush().unwrap();
    (storage, base, model.disk)
}

/// Reset builds the pristine file apart and syncs it; the rename that
/// commits it (see `Overlay::reset`) happens only once that returned. So a
/// crash at any step of the build leaves the old file, untouched, and a
/// finished build survives any crash whole.
#[test]
fn crash_at_every_step_of_a_reset_leaves_old_or_pristine() {
    let (old, base, flushed) = written_overlay(7);
    let size = base.len() as u64;
    let old_bytes = old.snapshot();
    let disk_id = open(&old, size).header().disk_id;
    let mut finished = false;
    for die in 0..20 {
        let new = MemStorage::new();
        new.die_after(die);
        let committed = Overlay::reset_into(&*old, &*new, Path::new("mem.overlay")).is_ok();
        assert!(
            old.snapshot() == old_bytes,
            "step {die}: reset wrote the old file"
        );
        let mut rng = Rng::new(die as u64);
        for harsh in [true, false] {
            let disk = if committed {
                new.crash_with(harsh, &mut rng)
            } else {
                old.crash_with(harsh, &mut rng)
            };
            let ov = open(&disk, size);
            let actual = read_all(&ov, &base, &mut rng);
            let want = if committed { &base } else { &flushed };
            assert!(
                actual == *want,
                "step {die}: committed {committed}, harsh {harsh}"
            );
            assert_eq!(ov.header().disk_id, disk_id, "step {die}");
            assert_eq!(ov.header().generation, 1, "step {die}");
        }
        if committed {
            finished = true;
            break;
        }
    }
    assert!(finished, "no crash point was after the build");
}

/// A reset through the real file: same disk id, pristine contents, and the
/// lock of a served overlay keeps it out.
#[test]
fn reset_replaces_the_file_and_respects_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.overlay");
    let base = vec![5u8; (PAGES_BLOCKS * BS) as usize];
    let create = CreateOptions {
        disk_size: base.len() as u64,
        base: identity("crash"),
    };
    let ov = Overlay::create(&path, &create).unwrap();
    let disk_id = ov.header().disk_id;
    ov.write(16128 * BS, &[blockio::IoBuf::new(&[1; 8192])], &base)
        .unwrap();
    ov.flush().unwrap();
    assert!(matches!(
        Overlay::reset(&path),
        Err(overlay::OverlayError::Busy { .. })
    ));
    drop(ov);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::Permissions::from_mode(0o600);
    std::fs::set_permissions(&path, mode).unwrap();
    Overlay::reset(&path).unwrap();
    let after = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(after & 0o777, 0o600, "reset keeps the permissions");
    let ov = Overlay::open(
        &path,
        &create.base,
        create.disk_size,
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(ov.header().disk_id, disk_id);
    assert_eq!(ov.usage().unwrap().blocks_written, 0);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["vm.overlay"], "no temporary file left");
}

/// A create or reset killed midway leaves its full-size temporary file; the
/// next create or reset of that path removes it (its process is gone), and
/// leaves alone one whose process still runs.
#[test]
fn stale_temporary_files_of_dead_processes_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.overlay");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = dir.path().join(format!(".vm.overlay.tmp-{dead}-123"));
    let live = dir
        .path()
        .join(format!(".vm.overlay.tmp-{}-456", std::process::id()));
    let other = dir.path().join(format!(".other.tmp-{dead}-123"));
    for f in [&stale, &live, &other] {
        std::fs::File::create(f).unwrap().set_len(1 << 30).unwrap();
    }
    let create = CreateOptions {
        disk_size: 1 << 20,
        base: identity("crash"),
    };
    drop(Overlay::create(&path, &create).unwrap());
    assert!(!stale.exists(), "the dead process's file is gone");
    assert!(live.exists(), "a live process's file is kept");
    assert!(
        other.exists(),
        "another overlay's file is not ours to remove"
    );
    std::fs::File::create(&stale).unwrap();
    Overlay::reset(&path).unwrap();
    assert!(!stale.exists(), "reset removes it too");
}

/// A crash at every step of creating an overlay: the file is either not a
/// valid overlay yet (creation builds it under a temporary name, so the
/// real path never appears) or, once `write_new` returned, fully valid.
#[test]
fn crash_at_every_step_of_creation() {
    let size = PAGES_BLOCKS * BS;
    let base = pattern(size);
    let create = CreateOptions {
        disk_size: size,
        base: identity("crash"),
    };
    let mut finished = false;
    for die in 0..20 {
        let storage = MemStorage::new();
        storage.die_after(die);
        let done = Overlay::write_new(&*storage, Path::new("mem.overlay"), &create).is_ok();
        let mut rng = Rng::new(die as u64);
        for harsh in [true, false] {
            let disk = storage.crash_with(harsh, &mut rng);
            if done {
                let ov = open(&disk, size);
                assert!(read_all(&ov, &base, &mut rng) == base, "step {die}");
            }
        }
        if done {
            finished = true;
            break;
        }
    }
    assert!(finished);
}

/// A crash at every step of a rebase's header write: the overlay reopens
/// with the old or the new identity, and the flushed data is intact.
#[test]
fn crash_at_every_step_of_a_rebase() {
    let (storage, base, flushed) = written_overlay(11);
    let size = base.len() as u64;
    let (old_id, new_id) = (identity("crash"), identity("rebased"));
    let rebase = OpenOptions {
        rebase: true,
        ..OpenOptions::default()
    };
    let mut saw = [false; 2];
    for die in 0..6 {
        let mut rng = Rng::new(die as u64);
        let disk = storage.crash_losing_unsynced();
        disk.die_after(die);
        let done = Overlay::open_on(
            Box::new(disk.clone()),
            Path::new("mem.overlay"),
            &new_id,
            size,
            &rebase,
        )
        .is_ok();
        for harsh in [true, false] {
            let after = disk.crash_with(harsh, &mut rng);
            let reopen = |id| {
                Overlay::open_on(
                    Box::new(after.clone()),
                    Path::new("mem.overlay"),
                    id,
                    size,
                    &OpenOptions::default(),
                )
            };
            let (ov, rebased) = match reopen(&old_id) {
                Ok(ov) => (ov, false),
                Err(_) => (reopen(&new_id).expect("old or new identity"), true),
            };
            assert!(!done || rebased, "step {die}: a finished rebase was lost");
            assert_eq!(ov.header().generation, 1 + u64::from(rebased));
            assert!(read_all(&ov, &base, &mut rng) == flushed, "step {die}");
            saw[usize::from(rebased)] = true;
        }
    }
    assert_eq!(saw, [true, true]);
}

/// Write-through: every completed request survives a crash without a flush.
#[test]
fn writethrough_writes_survive_a_crash_without_flush() {
    for seed in 0..12 {
        let mut rng = Rng::new(seed);
        let size = (3 + seed % 5) * BS - 512 * (seed % 3);
        let base = rng.bytes(size as usize);
        let storage = new_storage(size, "crash");
        let ov = Overlay::open_on(
            Box::new(storage.clone()),
            Path::new("mem.overlay"),
            &identity("crash"),
            size,
            &OpenOptions {
                writethrough: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        let mut model = Model { disk: base.clone() };
        for step in 0..30 {
            let off = rng.below(size);
            let len = rng.below((size - off).min(2 * BS + 100)) + 1;
            match rng.below(4) {
                0 | 1 => {
                    let data = rng.bytes(len as usize);
                    ov.write(off, &split(&data, &mut rng), &base).unwrap();
                    model.write(off, &data);
                }
                2 => {
                    ov.write_zeroes(off, len, &base).unwrap();
                    model.write_zeroes(off, len);
                }
                _ => {
                    ov.discard(off, len, &base).unwrap();
                    model.discard(off, len);
                }
            }
            let crashed = storage.crash_with(step % 2 == 0, &mut rng);
            let reopened = open(&crashed, size);
            assert!(
                read_all(&reopened, &base, &mut rng) == model.disk,
                "seed {seed} step {step}"
            );
        }
    }
}
