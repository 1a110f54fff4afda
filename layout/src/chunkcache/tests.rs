//! The record's states and the fill protocol within one process; the
//! cross-process cases (one fetch for ten processes, a filler killed
//! mid-chunk) are in tests/tests/chunk_cache.rs.

use super::record::{Record, ABSENT, PRESENT, VERIFIED};
use super::*;
use crate::cache::hex;
use sha2::Sha256;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::AtomicU32;
use std::sync::Mutex;

/// A blob in memory, with faults to inject per attempt.
#[derive(Debug, Default)]
struct MemFetch {
    data: Vec<u8>,
    calls: AtomicU32,
    /// What the next calls do, front first: `Some(err)` fails, `None`
    /// corrupts the bytes; once empty, calls succeed.
    faults: Mutex<Vec<Option<FetchError>>>,
    /// Offsets whose next fetch fails for good (once each).
    fail_once_at: Mutex<Vec<u64>>,
    /// Offsets fetched, in order.
    log: Mutex<Vec<u64>>,
}

impl ChunkFetch for MemFetch {
    fn fetch(&self, offset: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.log.lock().unwrap().push(offset);
        {
            let mut fail = self.fail_once_at.lock().unwrap();
            if let Some(i) = fail.iter().position(|&o| o == offset) {
                fail.remove(i);
                return Err(FetchError::Permanent(format!("injected at {offset}")));
            }
        }
        let start = offset as usize;
        buf.copy_from_slice(&self.data[start..start + buf.len()]);
        let mut faults = self.faults.lock().unwrap();
        if faults.is_empty() {
            return Ok(());
        }
        match faults.remove(0) {
            Some(e) => Err(e),
            None => {
                buf[0] ^= 0xff;
                Ok(())
            }
        }
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn spec(data: &[u8], chunk: u64, hashed: bool) -> BlobSpec {
    BlobSpec {
        digest: format!("sha256:{}", hex(&Sha256::digest(data))),
        size: data.len() as u64,
        chunk_hashes: hashed.then(|| ChunkHashes {
            chunk_size: chunk,
            hashes: data
                .chunks(chunk as usize)
                .map(|c| Sha256::digest(c).into())
                .collect(),
        }),
        name: "payload \"system\"".to_owned(),
    }
}

fn quick() -> ChunkCacheSettings {
    ChunkCacheSettings {
        max_attempts: 3,
        retry_delay: Duration::from_millis(1),
        ..ChunkCacheSettings::default()
    }
}

fn fetcher(data: &[u8]) -> Arc<MemFetch> {
    Arc::new(MemFetch {
        data: data.to_vec(),
        ..MemFetch::default()
    })
}

#[test]
fn record_is_created_once_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, dat) = (dir.path().join("r"), dir.path().join("d"));
    let r = Record::open(&rec, &dat, 10_000, Some(4096), 1 << 20).unwrap();
    assert_eq!((r.chunks(), r.chunk_size()), (3, 4096));
    assert_eq!(std::fs::metadata(&dat).unwrap().len(), 10_000);
    assert_eq!(r.state(1), ABSENT);
    {
        let _l = r.lock_chunk(1).unwrap();
        r.set(1, VERIFIED).unwrap();
        r.set(2, PRESENT).unwrap();
    }
    // A second handle (as another process would have) sees the states,
    // and adopts the record's chunk size when it has no hashes.
    let again = Record::open(&rec, &dat, 10_000, None, 1 << 20).unwrap();
    assert_eq!(
        (again.state(0), again.state(1), again.state(2)),
        (ABSENT, VERIFIED, PRESENT)
    );
    again.set(0, VERIFIED).unwrap();
    assert_eq!(r.state(0), VERIFIED);
    // An unknown state byte reads as absent (to a handle that has not
    // seen the chunk verified: one that has keeps it, as states only rise
    // while a blob is in use).
    again.set(0, 77).unwrap();
    let third = Record::open(&rec, &dat, 10_000, None, 1 << 20).unwrap();
    assert_eq!(third.state(0), ABSENT);
    assert_eq!(r.state(0), VERIFIED);
    drop((r, again, third));

    let e = Record::open(&rec, &dat, 10_001, None, 1 << 20).unwrap_err();
    assert!(e.to_string().contains("10000 bytes, not 10001"), "{e}");
    let e = Record::open(&rec, &dat, 10_000, Some(1 << 20), 1 << 20).unwrap_err();
    assert!(e.to_string().contains("chunk size 4096"), "{e}");
    std::fs::write(
        &rec,
        b"garbage garbage garbage garbage garbage garbage garbage garbage!!",
    )
    .unwrap();
    let e = Record::open(&rec, &dat, 10_000, None, 1 << 20).unwrap_err();
    assert!(e.to_string().contains("bad magic"), "{e}");
}

#[test]
fn hashed_chunks_are_fetched_once_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(dir.path(), quick());
    let d = data(10_000);
    let f = fetcher(&d);
    let blob = cache.open_blob(spec(&d, 4096, true), f.clone()).unwrap();
    let file = blob.blob_file().unwrap();
    assert!(file.is_gated());
    let mut buf = vec![0u8; 100];
    file.ensure(5000, 100).unwrap();
    file.file().read_exact_at(&mut buf, 5000).unwrap();
    assert_eq!(buf, d[5000..5100]);
    assert_eq!(f.calls.load(Ordering::SeqCst), 1);
    file.ensure(4096, 4096).unwrap();
    assert_eq!(f.calls.load(Ordering::SeqCst), 1);
    let s = blob.status();
    assert_eq!((s.chunks, s.verified, s.present), (3, 1, 0));
    let t = cache.counters().totals();
    // Chunk 1 was fetched by this process: reading it again is no hit.
    assert_eq!((t.fetches, t.bytes, t.hits, t.misses), (1, 4096, 0, 1));
    // A second cache on the same directory (another process) sees it.
    let other = ChunkCache::new(dir.path(), quick());
    let f2 = fetcher(&d);
    let b2 = other.open_blob(spec(&d, 4096, true), f2.clone()).unwrap();
    b2.ensure_range(4096, 1).unwrap();
    b2.ensure_range(4097, 1).unwrap();
    assert_eq!(f2.calls.load(Ordering::SeqCst), 0);
    assert_eq!(other.counters().totals().hits, 1, "one hit per chunk");
    b2.fetch_all().unwrap();
    assert_eq!(f2.calls.load(Ordering::SeqCst), 2);
    assert_eq!(std::fs::read(blob.path()).unwrap(), d);
    let e = b2.ensure_range(9_999, 2).unwrap_err();
    assert!(matches!(e, ChunkCacheError::OutOfRange { .. }), "{e}");
}

#[test]
fn faults_are_retried_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(dir.path(), quick());
    let d = data(8192);
    let f = fetcher(&d);
    let blob = cache.open_blob(spec(&d, 4096, true), f.clone()).unwrap();
    // Two bad attempts (an error, wrong bytes), then a good one.
    *f.faults.lock().unwrap() = vec![Some(FetchError::Transient("503".into())), None];
    blob.ensure_range(0, 10).unwrap();
    assert_eq!(f.calls.load(Ordering::SeqCst), 3);
    assert_eq!(cache.counters().totals().retries, 2);
    // Three bad attempts: the read fails, naming blob and range, and the
    // chunk stays absent (nothing was written).
    *f.faults.lock().unwrap() = vec![None, None, None];
    let e = blob.ensure_range(4096, 10).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&blob.spec().digest), "{msg}");
    assert!(msg.contains("bytes 4096..8192"), "{msg}");
    assert!(msg.contains("after 3 attempt(s)"), "{msg}");
    assert!(msg.contains("wrong bytes"), "{msg}");
    let mut buf = [1u8; 16];
    blob.blob_file()
        .unwrap()
        .file()
        .read_exact_at(&mut buf, 4096)
        .unwrap();
    assert_eq!(buf, [0u8; 16], "nothing unverified was written");
    // A permanent error is not retried.
    *f.faults.lock().unwrap() = vec![Some(FetchError::Permanent("404".into()))];
    let before = f.calls.load(Ordering::SeqCst);
    let e = blob.ensure_range(4096, 10).unwrap_err();
    assert!(e.to_string().contains("after 1 attempt(s): 404"), "{e}");
    assert_eq!(f.calls.load(Ordering::SeqCst), before + 1);
    // A source resting after an outage: no retry, no wait, and the
    // failure counts like any other.
    *f.faults.lock().unwrap() = vec![Some(FetchError::Unavailable("resting".into()))];
    let before = f.calls.load(Ordering::SeqCst);
    let failures = cache.counters().totals().failures;
    let e = blob.ensure_range(4096, 10).unwrap_err();
    assert!(e.to_string().contains("after 1 attempt(s): resting"), "{e}");
    assert_eq!(f.calls.load(Ordering::SeqCst), before + 1);
    assert_eq!(cache.counters().totals().failures, failures + 1);
    // The fault is gone: the next read fetches it.
    blob.ensure_range(4096, 10).unwrap();
    assert_eq!(blob.status().verified, 2);
    // Through the gate, the error is an io::Error with the same words.
    let io = io::Error::from(ChunkCacheError::BadSpec {
        digest: "d".into(),
        why: "w".into(),
    });
    assert_eq!(io.to_string(), "blob d: w");
}

#[test]
fn unhashed_blobs_are_served_only_once_checked_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(3 * DEFAULT_CHUNK_SIZE as usize + 5);
    let cache = ChunkCache::new(dir.path(), quick());
    let f = fetcher(&d);
    let blob = cache.open_blob(spec(&d, 0, false), f.clone()).unwrap();
    assert_eq!(blob.chunk_size(), DEFAULT_CHUNK_SIZE);
    // One byte asked: the whole blob is fetched and checked first.
    blob.ensure_range(10, 1).unwrap();
    assert_eq!(f.calls.load(Ordering::SeqCst), 4);
    assert_eq!(blob.status().verified, 4);

    // Wrong bytes in a blob without chunk hashes: found only whole, and
    // then every chunk is absent again.
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(dir.path(), quick());
    let f = fetcher(&d);
    *f.faults.lock().unwrap() = vec![None];
    let blob = cache.open_blob(spec(&d, 0, false), f.clone()).unwrap();
    let e = blob.ensure_range(0, 1).unwrap_err();
    assert!(matches!(e, ChunkCacheError::DigestMismatch { .. }), "{e}");
    assert_eq!(blob.status().present + blob.status().verified, 0);
    blob.ensure_range(0, 1).unwrap();

    // Trusted: a chunk is served as soon as it is present. A later opener
    // with chunk hashes keeps its own copy (see `paths`), so it fetches and
    // verifies the chunk itself rather than adopting unchecked bytes.
    let dir = tempfile::tempdir().unwrap();
    let trusting = ChunkCache::new(
        dir.path(),
        ChunkCacheSettings {
            trust_unverified: true,
            ..quick()
        },
    );
    let f = fetcher(&d);
    let blob = trusting.open_blob(spec(&d, 0, false), f.clone()).unwrap();
    blob.ensure_range(DEFAULT_CHUNK_SIZE, 1).unwrap();
    assert_eq!(f.calls.load(Ordering::SeqCst), 1);
    assert_eq!(blob.status().present, 1);
    let strict = ChunkCache::new(dir.path(), quick());
    let f2 = fetcher(&d);
    let hashed = strict
        .open_blob(spec(&d, DEFAULT_CHUNK_SIZE, true), f2.clone())
        .unwrap();
    hashed.ensure_range(DEFAULT_CHUNK_SIZE, 1).unwrap();
    assert_eq!(f2.calls.load(Ordering::SeqCst), 1);
    assert_eq!(hashed.status().verified, 1);
}

#[test]
fn bad_specs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(dir.path(), quick());
    let d = data(100);
    let mut s = spec(&d, 10, true);
    s.digest = "sha256:XYZ".into();
    let e = cache.open_blob(s, fetcher(&d)).unwrap_err();
    assert!(e.to_string().contains("64 lower-case hex"), "{e}");
    let mut s = spec(&d, 10, true);
    s.size = 101;
    let e = cache.open_blob(s, fetcher(&d)).unwrap_err();
    assert!(e.to_string().contains("10 chunk hashes"), "{e}");
}

/// One image's chunk hashes never vouch for another's: a second list for
/// the same blob digest gets its own copy and record, so a chunk verified
/// under the first list is fetched and checked again under the second, and
/// a list that the registry's bytes fail is refused rather than trusted.
#[test]
fn chunks_verified_under_one_hash_list_are_not_trusted_under_another() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(dir.path(), quick());
    let d = data(8192);
    let good = spec(&d, 4096, true);
    let f = fetcher(&d);
    let blob = cache.open_blob(good.clone(), f.clone()).unwrap();
    blob.ensure_range(0, 8192).unwrap();
    assert_eq!(f.calls.load(Ordering::SeqCst), 2);

    // Another config claims other bytes for chunk 0 of the same blob.
    let mut lying = good.clone();
    let mut hashes = good.chunk_hashes.clone().unwrap();
    let mut list = hashes.hashes.to_vec();
    list[0] = Sha256::digest(b"not these bytes").into();
    hashes.hashes = list.into();
    lying.chunk_hashes = Some(hashes);
    assert_ne!(cache.paths(&good), cache.paths(&lying));
    let f2 = fetcher(&d);
    let other = cache.open_blob(lying, f2.clone()).unwrap();
    let e = other.ensure_range(0, 1).unwrap_err();
    assert!(e.to_string().contains("chunk 0"), "{e}");
    other.ensure_range(4096, 1).unwrap();
    assert!(
        f2.calls.load(Ordering::SeqCst) >= 2,
        "checked anew, not trusted"
    );
    // The first list's copy is untouched and still served.
    blob.ensure_range(0, 8192).unwrap();
    assert_eq!(std::fs::read(blob.path()).unwrap(), d);
}

/// `entries` reports each blob's chunks and use; `prune` removes the least
/// recently used blobs down to the limit, never one a process has open.
#[test]
fn prune_removes_old_blobs_but_never_one_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(dir.path(), quick());
    let (a, b) = (data(8192), data(12_288)[4096..].to_vec());
    let held = cache.open_blob(spec(&a, 4096, true), fetcher(&a)).unwrap();
    held.fetch_all().unwrap();
    {
        let other = cache.open_blob(spec(&b, 4096, false), fetcher(&b)).unwrap();
        other.fetch_all().unwrap();
    }
    let entries = cache.entries().unwrap();
    assert_eq!(entries.len(), 2);
    let by = |d: &[u8]| {
        let digest = format!("sha256:{}", hex(&Sha256::digest(d)));
        entries.iter().find(|e| e.digest == digest).unwrap().clone()
    };
    let (ea, eb) = (by(&a), by(&b));
    assert!(ea.in_use && !eb.in_use, "{entries:?}");
    assert_eq!((ea.chunks, ea.verified, ea.present), (2, 2, 0));
    assert_eq!(eb.verified, eb.chunks);
    assert!(ea.allocated >= 8192 && eb.allocated >= 8192);

    let dry = cache
        .prune(&PrunePolicy {
            max_bytes: Some(0),
            dry_run: true,
            ..PrunePolicy::default()
        })
        .unwrap();
    assert_eq!((dry.removed.len(), dry.kept_in_use.len()), (1, 1));
    assert!(eb.path.exists(), "a dry run removes nothing");

    let report = cache
        .prune(&PrunePolicy {
            max_bytes: Some(0),
            ..PrunePolicy::default()
        })
        .unwrap();
    assert_eq!(report.removed[0].digest, eb.digest);
    assert_eq!(report.kept_in_use[0].digest, ea.digest);
    assert!(!eb.path.exists() && !eb.record.exists());
    assert!(ea.path.exists());
    // The held blob still serves, and goes once let go.
    held.ensure_range(0, 8192).unwrap();
    drop(held);
    let report = cache
        .prune(&PrunePolicy {
            older_than: Some(Duration::ZERO),
            ..PrunePolicy::default()
        })
        .unwrap();
    assert_eq!(report.removed.len(), 1);
    assert!(cache.entries().unwrap().is_empty());
}

/// `prune` with a size limit: blobs first (least recently used, never one
/// in use), then, while still over, the kept manifests and configs no
/// server pins, least recently used first, with the resolution records
/// that point at them; a dry run says the same and removes nothing.
#[test]
fn prune_to_a_size_removes_unused_manifests_after_the_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(dir.path(), quick());
    let (a, b) = (data(8192), data(12_288)[4096..].to_vec());
    let held = cache.open_blob(spec(&a, 4096, true), fetcher(&a)).unwrap();
    held.fetch_all().unwrap();
    {
        let other = cache.open_blob(spec(&b, 4096, false), fetcher(&b)).unwrap();
        other.fetch_all().unwrap();
    }
    // Three manifests, last used an hour, a minute and a second ago (the
    // oldest goes first), each with a resolution record; the middle one a
    // live server pins.
    let now = std::time::SystemTime::now();
    let metas: Vec<(String, String)> = [3600, 60, 1]
        .iter()
        .enumerate()
        .map(|(i, &age)| {
            let body = format!(r#"{{"schemaVersion":2,"n":{i}}}"#);
            let digest = format!("sha256:{}", hex(&Sha256::digest(body.as_bytes())));
            cache.put_meta(&digest, body.as_bytes()).unwrap();
            std::fs::File::open(cache.meta_path(&digest).unwrap())
                .unwrap()
                .set_modified(now - Duration::from_secs(age))
                .unwrap();
            let key = format!("h:5000/r:t{i} ref=- platform=linux/amd64");
            cache.put_ref(&key, &digest).unwrap();
            (digest, key)
        })
        .collect();
    let (oldest, pinned, newest) = (&metas[0], &metas[1], &metas[2]);
    let pin = cache.pin_meta(&pinned.0).unwrap().unwrap();
    // The pin refreshed its time of use; put it back between the others.
    std::fs::File::open(cache.meta_path(&pinned.0).unwrap())
        .unwrap()
        .set_modified(now - Duration::from_secs(60))
        .unwrap();
    let meta_bytes = cache.meta_storage().unwrap();
    assert!(meta_bytes > 0);
    let blob_bytes: u64 = cache.entries().unwrap().iter().map(|e| e.allocated).sum();
    let held_bytes = cache
        .entries()
        .unwrap()
        .iter()
        .find(|e| e.in_use)
        .unwrap()
        .allocated;
    let each = meta_bytes / 3;

    // A limit the unused blob's removal meets: no manifest goes.
    let limit = held_bytes + meta_bytes;
    let report = cache
        .prune(&PrunePolicy {
            max_bytes: Some(limit),
            dry_run: true,
            ..PrunePolicy::default()
        })
        .unwrap();
    assert_eq!(report.removed.len(), 1);
    assert!(report.metadata.removed.is_empty(), "{report:?}");
    assert_eq!(report.remaining, held_bytes + meta_bytes);
    assert_eq!(report.freed, blob_bytes - held_bytes);

    // One manifest's worth less: the oldest unused one goes too (in a dry
    // run, only said).
    let report = cache
        .prune(&PrunePolicy {
            max_bytes: Some(limit - 1),
            dry_run: true,
            ..PrunePolicy::default()
        })
        .unwrap();
    assert_eq!(report.metadata.removed, [oldest.0.as_str()]);
    assert_eq!(report.metadata.removed_refs, 1);
    assert!(cache.meta_path(&oldest.0).unwrap().exists(), "dry run");
    assert!(cache.get_ref(&oldest.1).unwrap().is_some(), "dry run");

    // Nothing may stay: every blob and manifest not in use goes, the
    // pinned one and the held blob stay, and only their records remain.
    let report = cache
        .prune(&PrunePolicy {
            max_bytes: Some(0),
            ..PrunePolicy::default()
        })
        .unwrap();
    let mut removed = report.metadata.removed.clone();
    removed.sort();
    let mut want = vec![oldest.0.clone(), newest.0.clone()];
    want.sort();
    assert_eq!(removed, want);
    assert_eq!(report.metadata.kept_in_use, [pinned.0.as_str()]);
    assert_eq!(report.metadata.removed_refs, 2);
    assert_eq!(report.metadata.freed, 2 * each);
    assert_eq!(report.remaining, held_bytes + each);
    assert!(cache.get_meta(&oldest.0).unwrap().is_none());
    assert!(cache.get_meta(&newest.0).unwrap().is_none());
    assert!(cache.get_meta(&pinned.0).unwrap().is_some());
    assert!(cache.get_ref(&oldest.1).unwrap().is_none());
    assert!(cache.get_ref(&newest.1).unwrap().is_none());
    assert_eq!(
        cache.get_ref(&pinned.1).unwrap().unwrap().manifest,
        pinned.0
    );
    assert_eq!(cache.entries().unwrap().len(), 1);

    // Let go, the last one goes as well.
    drop(pin);
    drop(held);
    let report = cache
        .prune(&PrunePolicy {
            max_bytes: Some(0),
            ..PrunePolicy::default()
        })
        .unwrap();
    assert_eq!(report.metadata.removed, [pinned.0.as_str()]);
    assert_eq!(report.remaining, 0);
    assert_eq!(cache.meta_summary().unwrap(), (0, 0, 0));
}

/// A record truncated by someone else while the blob is open: chunks this
/// process saw verified keep being served, the others fail naming the
/// record, before any fetch, and nothing crashes (the record is not
/// mapped, so there is no SIGBUS to take).
#[test]
fn a_truncated_record_fails_new_chunks_and_keeps_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(dir.path(), quick());
    let d = data(5 * 4096 + 17);
    let fetch = fetcher(&d);
    let s = spec(&d, 4096, true);
    let (_, record) = cache.paths(&s);
    let blob = cache.open_blob(s, fetch.clone()).unwrap();
    blob.ensure_range(0, 4096).unwrap();
    assert_eq!(fetch.calls.load(Ordering::SeqCst), 1);

    std::fs::OpenOptions::new()
        .write(true)
        .open(&record)
        .unwrap()
        .set_len(10)
        .unwrap();
    blob.ensure_range(100, 3996).unwrap();
    let e = blob.ensure_range(3 * 4096, 1).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&record.display().to_string()), "{msg}");
    assert!(msg.contains("10 bytes long, not 70"), "{msg}");
    assert_eq!(
        fetch.calls.load(Ordering::SeqCst),
        1,
        "no fetch for a broken record"
    );
    assert_eq!(
        std::fs::metadata(&record).unwrap().len(),
        10,
        "not grown back"
    );
}

fn with_readahead(window: u64) -> ChunkCacheSettings {
    ChunkCacheSettings {
        readahead: window,
        ..quick()
    }
}

/// Waits until `blob` has `n` verified chunks (readahead runs in the
/// background); fails after 10 s.
fn wait_verified(blob: &CachedBlob, n: u64) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while blob.status().verified < n {
        assert!(
            std::time::Instant::now() < until,
            "{:?}, waiting for {n} verified",
            blob.status()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sequential_reads_fetch_ahead_and_each_chunk_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(dir.path(), with_readahead(3));
    let d = data(32 * 4096);
    let f = fetcher(&d);
    let blob = cache.open_blob(spec(&d, 4096, true), f.clone()).unwrap();
    // Chunks 0, 1, 2 read in order: the walk is sequential at chunk 2, so
    // 3, 4, 5 come in the background without a read of them.
    for c in 0..3u64 {
        blob.ensure_range(c * 4096 + 100, 200).unwrap();
    }
    wait_verified(&blob, 6);
    // (Chunk 2's own fetch may come after those it set off.)
    let mut fetched: Vec<u64> = f.log.lock().unwrap().clone();
    fetched.sort_unstable();
    assert_eq!(fetched, (0..6).map(|c| c * 4096).collect::<Vec<u64>>());
    // Reading on to the end fetches every chunk exactly once.
    for c in 3..32u64 {
        blob.ensure_range(c * 4096, 4096).unwrap();
    }
    wait_verified(&blob, 32);
    std::thread::sleep(Duration::from_millis(50));
    let mut all = f.log.lock().unwrap().clone();
    all.sort_unstable();
    all.dedup();
    assert_eq!(f.calls.load(Ordering::SeqCst) as usize, all.len());
    assert_eq!(all.len(), 32);
}

#[test]
fn random_reads_fetch_nothing_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(dir.path(), with_readahead(8));
    let d = data(2048 * 4096);
    let f = fetcher(&d);
    let blob = cache.open_blob(spec(&d, 4096, true), f.clone()).unwrap();
    // A pseudo-random walk over few of the chunks (so that anything read
    // ahead would show), with a single adjacent step now and then.
    let mut x = 12345u64;
    let mut prev = 0;
    let mut read = std::collections::BTreeSet::new();
    for i in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let c = if i % 10 == 1 {
            (prev + 1) % 2048
        } else {
            x % 2048
        };
        blob.ensure_range(c * 4096 + 8, 512).unwrap();
        read.insert(c);
        prev = c;
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(f.calls.load(Ordering::SeqCst) as usize, read.len());
    assert_eq!(blob.status().verified as usize, read.len());
}

#[test]
fn a_failed_readahead_leaves_the_read_to_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::new(dir.path(), with_readahead(2));
    let d = data(8 * 4096);
    let f = fetcher(&d);
    let blob = cache.open_blob(spec(&d, 4096, true), f.clone()).unwrap();
    f.fail_once_at.lock().unwrap().push(4 * 4096);
    for c in 0..3u64 {
        blob.ensure_range(c * 4096, 4096).unwrap();
    }
    // Chunk 3 arrives ahead; chunk 4's background fetch fails (logged only).
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while f.fail_once_at.lock().unwrap().len() == 1 || blob.status().verified < 4 {
        assert!(std::time::Instant::now() < until, "{:?}", blob.status());
        std::thread::sleep(Duration::from_millis(5));
    }
    // The reader's own read of chunk 4 fetches it and gets it right.
    blob.ensure_range(4 * 4096, 4096).unwrap();
    let fetches_of_4 = f
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|&&o| o == 4 * 4096)
        .count();
    assert!(fetches_of_4 >= 2, "{:?}", f.log.lock().unwrap());
    assert!(blob.status().verified >= 5);
}

#[test]
fn a_sequential_walk_over_cached_chunks_fetches_nothing_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(16 * 4096);
    // Chunks 0..4 cached by an earlier reader without readahead.
    {
        let plain = ChunkCache::new(dir.path(), quick());
        let blob = plain.open_blob(spec(&d, 4096, true), fetcher(&d)).unwrap();
        blob.ensure_range(0, 4 * 4096).unwrap();
    }
    let cache = ChunkCache::new(dir.path(), with_readahead(4));
    let f = fetcher(&d);
    let blob = cache.open_blob(spec(&d, 4096, true), f.clone()).unwrap();
    for c in 0..4u64 {
        blob.ensure_range(c * 4096, 4096).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        f.calls.load(Ordering::SeqCst),
        0,
        "{:?}",
        f.log.lock().unwrap()
    );
    // Walking on past them, it misses, and reads ahead from there.
    blob.ensure_range(4 * 4096, 4096).unwrap();
    wait_verified(&blob, 9);
}
