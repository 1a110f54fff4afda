//! Process crashes with a shadow map, simulated: the overlay runs on a
//! storage that dies after a random number of operations, and the process
//! "dies" then (the overlay is forgotten: no destructor runs). The file keeps
//! every completed operation (the page cache survives a process) and the
//! shadow map survives in its directory. Reopening with it must show every
//! request that completed, flushed or not; a flush must then make them
//! durable, so that a host crash after it (the shadow map gone with the
//! tmpfs) keeps exactly them. A host crash *without* that flush falls back
//! to the contract of `tests/crash.rs`.

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
use overlay::{OpenOptions, Overlay, ShadowStatus};
use std::path::Path;
use std::sync::Arc;

fn open(storage: &Arc<MemStorage>, size: u64, shadow: Option<&Path>) -> Overlay {
    Overlay::open_on_with_shadow(
        Box::new(storage.clone()),
        Path::new("mem.overlay"),
        &identity("shadow"),
        size,
        &OpenOptions::default(),
        shadow,
    )
    .expect("reopening")
}

/// Runs random requests until the storage dies. Completed requests go to
/// `model` (and, for a flush, to `flushed`); returns the values the request
/// in flight at the death would give, if one was.
fn run_until_death(
    ov: &Overlay,
    base: &Vec<u8>,
    model: &mut Model,
    flushed: &mut Vec<u8>,
    since_flush: &mut Vec<(u64, Vec<u8>)>,
    rng: &mut Rng,
) -> Option<Vec<(u64, Vec<u8>)>> {
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
        let (result, gives) = match rng.below(10) {
            0..=5 => {
                let data = rng.bytes(len as usize);
                let r = ov.write(off, &split(&data, rng), base);
                if r.is_ok() {
                    model.write(off, &data);
                }
                (r, vec![(off, data)])
            }
            6 => {
                let r = ov.write_zeroes(off, len, base);
                if r.is_ok() {
                    model.write_zeroes(off, len);
                }
                (r, vec![(off, vec![0; len as usize])])
            }
            7 => {
                let (a, b) = model.full_blocks(off, len);
                let r = ov.discard(off, len, base);
                if r.is_ok() {
                    model.discard(off, len);
                }
                (r, vec![(a, vec![0; (b - a) as usize])])
            }
            _ => {
                let r = ov.flush();
                if r.is_ok() {
                    flushed.copy_from_slice(&model.disk);
                    since_flush.clear();
                }
                (r, Vec::new())
            }
        };
        match result {
            Ok(()) => since_flush.extend(gives),
            Err(e) => {
                let msg = blockio::error_chain(&e).to_string();
                assert!(msg.contains("simulated crash"), "{msg}");
                since_flush.extend(gives.iter().cloned());
                return Some(gives);
            }
        }
    }
    None
}

/// The shadow map of `ov`: saved when `storage` dies (the instant the
/// process is killed), put back by [`Frozen::restore`] after it is gone.
struct Frozen {
    path: std::path::PathBuf,
    bytes: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl Frozen {
    fn at_death(ov: &Overlay, storage: &MemStorage) -> Frozen {
        let path = match ov.shadow_status() {
            Some(
                ShadowStatus::Fresh { path }
                | ShadowStatus::Adopted { path, .. }
                | ShadowStatus::Rejected { path, .. },
            ) => path.clone(),
            None => panic!("no shadow map"),
        };
        let bytes = Arc::new(std::sync::Mutex::new(None));
        let (p, b) = (path.clone(), bytes.clone());
        storage.on_death(Box::new(move || {
            *b.lock().unwrap() = Some(std::fs::read(&p).unwrap());
        }));
        Frozen { path, bytes }
    }

    /// Kills the process: `ov` is forgotten (no destructor runs) and its
    /// shadow map is put back as it was at the storage's death.
    fn kill(self, ov: Overlay) {
        std::mem::forget(ov);
        if let Some(bytes) = self.bytes.lock().unwrap().take() {
            std::fs::write(&self.path, bytes).unwrap();
        }
    }
}

fn shadow_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

fn process_crash_rounds(seed: u64, blocks: u64) {
    let mut rng = Rng::new(seed);
    let size = blocks * BS - rng.below(8) * 512;
    let base = rng.bytes(size as usize);
    let mut storage = new_storage(size, "shadow");
    let shm = tempfile::tempdir().unwrap();
    let mut model = Model { disk: base.clone() };
    for round in 0..5 {
        let ov = open(&storage, size, Some(shm.path()));
        assert!(
            read_all(&ov, &base, &mut rng) == model.disk,
            "seed {seed} round {round}: reopen"
        );
        let mut flushed = model.disk.clone();
        let mut since_flush = Vec::new();
        let frozen = Frozen::at_death(&ov, &storage);
        storage.die_after(rng.below(120) as i64);
        let in_flight = run_until_death(
            &ov,
            &base,
            &mut model,
            &mut flushed,
            &mut since_flush,
            &mut rng,
        );
        storage.die_after(0);
        // kill -9: no destructor, no flush; the page cache and the shadow
        // map stay.
        frozen.kill(ov);
        storage = storage.process_crash();
        let ov = open(&storage, size, Some(shm.path()));
        assert!(
            !matches!(ov.shadow_status(), Some(ShadowStatus::Rejected { .. })),
            "seed {seed} round {round}: {:?}",
            ov.shadow_status()
        );
        let actual = read_all(&ov, &base, &mut rng);
        Expect {
            disk: model.disk.clone(),
            since: in_flight.unwrap_or_default(),
        }
        .check(
            &actual,
            &format!("seed {seed} round {round}: after the process crash"),
        );
        model.disk = actual;
        if round % 2 == 0 {
            // A host crash now, before any flush: the shadow map is gone
            // with the tmpfs, and the file holds what was flushed (and maybe
            // more), as without a shadow map.
            std::mem::forget(ov);
            storage = storage.crash_with(round % 4 == 0, &mut rng);
            for f in shadow_files(shm.path()) {
                std::fs::remove_file(f).unwrap();
            }
            let ov = open(&storage, size, Some(shm.path()));
            assert!(matches!(
                ov.shadow_status(),
                Some(ShadowStatus::Fresh { .. })
            ));
            let actual = read_all(&ov, &base, &mut rng);
            Expect {
                disk: flushed,
                since: since_flush,
            }
            .check(&actual, &format!("seed {seed} round {round}: host crash"));
            model.disk = actual;
            drop(ov);
            continue;
        }
        // The new process's first flush makes all of it durable: a host
        // crash right after keeps it exactly, without the shadow map.
        ov.flush().unwrap();
        drop(ov);
        assert!(
            shadow_files(shm.path()).is_empty(),
            "a clean close removes the shadow map"
        );
        storage = storage.crash_losing_unsynced();
        let ov = open(&storage, size, None);
        assert!(
            read_all(&ov, &base, &mut rng) == model.disk,
            "seed {seed} round {round}: host crash after the flush"
        );
    }
}

#[test]
fn process_crashes_at_random_instants_keep_every_completed_request() {
    for seed in 0..60 {
        process_crash_rounds(seed, 1 + seed % 23);
    }
}

#[test]
fn process_crashes_across_several_map_pages() {
    for seed in 2000..2001 {
        process_crash_rounds(seed, 16128 + 40);
    }
}

/// A crash of the process at every storage operation of a flush (before
/// its first sync, between the page writes, before its second sync, after):
/// every request completed before it survives, and the next process's
/// flush makes them durable.
#[test]
fn process_crash_at_every_step_of_a_flush() {
    let blocks = 16128 + 40;
    let size = blocks * BS;
    let base: Vec<u8> = (0..size).map(|i| (i * 7 / 4096) as u8).collect();
    for die in 0..8 {
        let mut rng = Rng::new(die);
        let shm = tempfile::tempdir().unwrap();
        let storage = new_storage(size, "shadow");
        let ov = open(&storage, size, Some(shm.path()));
        let mut model = Model { disk: base.clone() };
        for block in [3, 16127, 16128, blocks - 2] {
            let data = rng.bytes(BS as usize + 300);
            ov.write(block * BS + 9, &split(&data, &mut rng), &base)
                .unwrap();
            model.write(block * BS + 9, &data);
        }
        ov.flush().unwrap();
        for block in [5, 16130] {
            let data = rng.bytes(2 * BS as usize);
            ov.write(block * BS, &split(&data, &mut rng), &base)
                .unwrap();
            model.write(block * BS, &data);
            ov.discard((block + 10) * BS, BS, &base).unwrap();
            model.discard((block + 10) * BS, BS);
        }
        // Two dirty pages: sync, write, write, sync.
        let frozen = Frozen::at_death(&ov, &storage);
        storage.die_after(die as i64);
        let finished = ov.flush().is_ok();
        frozen.kill(ov);
        let storage = storage.process_crash();
        let ov = open(&storage, size, Some(shm.path()));
        assert!(
            read_all(&ov, &base, &mut rng) == model.disk,
            "step {die} (flush finished: {finished}): {:?}",
            ov.shadow_status()
        );
        ov.flush().unwrap();
        std::mem::forget(ov);
        let after = storage.crash_losing_unsynced();
        let ov = open(&after, size, None);
        assert!(
            read_all(&ov, &base, &mut rng) == model.disk,
            "step {die}: host crash after the next flush"
        );
    }
}

/// The shadow map's boot id differs (a shadow directory that is no tmpfs,
/// after a reboot): it is refused, and the disk is what the file holds, as
/// after any host crash.
#[test]
fn a_shadow_map_of_another_boot_is_refused() {
    for seed in 0..20 {
        let mut rng = Rng::new(seed);
        let size = (1 + seed % 9) * BS;
        let base = rng.bytes(size as usize);
        let storage = new_storage(size, "shadow");
        let shm = tempfile::tempdir().unwrap();
        let ov = open(&storage, size, Some(shm.path()));
        let mut model = Model { disk: base.clone() };
        let mut flushed = model.disk.clone();
        let mut since_flush = Vec::new();
        storage.die_after(rng.below(60) as i64);
        run_until_death(
            &ov,
            &base,
            &mut model,
            &mut flushed,
            &mut since_flush,
            &mut rng,
        );
        storage.die_after(0);
        std::mem::forget(ov);
        let crashed = storage.crash_with(seed % 2 == 0, &mut rng);
        let files = shadow_files(shm.path());
        assert_eq!(files.len(), 1);
        let mut bytes = std::fs::read(&files[0]).unwrap();
        // The boot id: bytes 80..96 of the header.
        bytes[80] ^= 0xff;
        std::fs::write(&files[0], &bytes).unwrap();
        let ov = open(&crashed, size, Some(shm.path()));
        match ov.shadow_status() {
            Some(ShadowStatus::Rejected { reason, .. }) => {
                assert!(reason.contains("another boot"), "{reason}");
                assert!(reason.contains(&*files[0].to_string_lossy()), "{reason}");
            }
            other => panic!("seed {seed}: {other:?}"),
        }
        Expect {
            disk: flushed,
            since: since_flush,
        }
        .check(&read_all(&ov, &base, &mut rng), &format!("seed {seed}"));
    }
}

/// The same bytes in another file (another inode): its shadow map is not
/// the copy's.
#[test]
fn a_copy_of_the_file_does_not_find_the_shadow_map() {
    let mut rng = Rng::new(5);
    let size = 8 * BS;
    let base = rng.bytes(size as usize);
    let storage = new_storage(size, "shadow");
    let shm = tempfile::tempdir().unwrap();
    let ov = open(&storage, size, Some(shm.path()));
    ov.write(BS, &[blockio::IoBuf::new(&[9; 4096])], &base)
        .unwrap();
    std::mem::forget(ov);
    let copy = storage.process_crash().copy_as_another_file();
    let ov = open(&copy, size, Some(shm.path()));
    assert!(matches!(
        ov.shadow_status(),
        Some(ShadowStatus::Fresh { .. })
    ));
    assert!(read_all(&ov, &base, &mut rng) == base);
}

/// A sync that failed (not a crash: the overlay saw the error) may have
/// lost data whose states are set: a later open refuses that writer's
/// shadow map and keeps to the file's last flushed map.
#[test]
fn a_failed_sync_makes_the_shadow_map_unusable() {
    let mut rng = Rng::new(8);
    let size = 8 * BS;
    let base = rng.bytes(size as usize);
    let storage = new_storage(size, "shadow");
    let shm = tempfile::tempdir().unwrap();
    let ov = open(&storage, size, Some(shm.path()));
    ov.write(BS, &[blockio::IoBuf::new(&[9; 4096])], &base)
        .unwrap();
    storage.die_after(0);
    assert!(ov.flush().is_err());
    assert!(ov.flush().is_err(), "poisoned");
    drop(ov);
    let ov = open(&storage.process_crash(), size, Some(shm.path()));
    match ov.shadow_status() {
        Some(ShadowStatus::Rejected { reason, .. }) => {
            assert!(reason.contains("sync of the overlay fail"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(read_all(&ov, &base, &mut rng) == base);
}
