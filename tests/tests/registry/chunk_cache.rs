//! The shared chunk cache across processes, with a real file as the
//! "remote" behind a file-backed `ChunkFetch` that can misbehave: ten
//! processes asking for one chunk at once cause one fetch; a fetcher
//! killed with SIGKILL mid-chunk leaves nothing a reader takes for data,
//! and the next process fetches the chunk and reads it right; a partly
//! filled blob survives; faults are retried within the budget and then
//! fail naming blob and range.
//!
//! The other processes are this test binary itself, run with
//! `CHUNK_CACHE_CHILD` set (see [`child`]).

use layout::chunkcache::{
    BlobSpec, ChunkCache, ChunkCacheSettings, ChunkFetch, ChunkHashes, FetchError,
};
use sha2::{Digest as _, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHUNK: u64 = 1 << 20;
const SIZE: u64 = 4 * CHUNK + 4096;

/// What the remote does wrong on its next calls.
#[derive(Clone, Debug, PartialEq)]
enum Fault {
    WrongBytes,
    Short,
    Fail,
    /// Blocks reading this FIFO (until killed).
    Block(PathBuf),
}

/// A blob served from a real file; every call appends `offset` to `log`.
#[derive(Debug)]
struct FileFetch {
    remote: File,
    log: PathBuf,
    delay: Duration,
    faults: Mutex<Vec<Fault>>,
    calls: AtomicU32,
}

impl FileFetch {
    fn new(remote: &Path, log: &Path, delay: Duration, faults: Vec<Fault>) -> FileFetch {
        FileFetch {
            remote: File::open(remote).unwrap(),
            log: log.to_owned(),
            delay,
            faults: Mutex::new(faults),
            calls: AtomicU32::new(0),
        }
    }
}

impl ChunkFetch for FileFetch {
    fn fetch(&self, offset: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut log = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
            .map_err(|e| FetchError::Transient(e.to_string()))?;
        writeln!(log, "{offset}").map_err(|e| FetchError::Transient(e.to_string()))?;
        std::thread::sleep(self.delay);
        let fault = {
            let mut f = self.faults.lock().unwrap();
            (!f.is_empty()).then(|| f.remove(0))
        };
        if let Some(Fault::Block(fifo)) = &fault {
            // Opening a FIFO for reading waits for a writer; none comes.
            let mut f = File::open(fifo).map_err(|e| FetchError::Transient(e.to_string()))?;
            let _ = f.read(&mut [0u8; 1]);
            return Err(FetchError::Transient("unblocked".into()));
        }
        if fault == Some(Fault::Fail) {
            return Err(FetchError::Transient("503 Service Unavailable".into()));
        }
        let n = if fault == Some(Fault::Short) {
            buf.len() / 2
        } else {
            buf.len()
        };
        self.remote
            .read_exact_at(&mut buf[..n], offset)
            .map_err(|e| FetchError::Permanent(e.to_string()))?;
        if fault == Some(Fault::Short) {
            return Err(FetchError::Transient(format!(
                "short body: {n} of {} bytes",
                buf.len()
            )));
        }
        if fault == Some(Fault::WrongBytes) {
            buf[7] ^= 0x55;
        }
        Ok(())
    }
}

fn remote_bytes() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 31 % 255) as u8).collect()
}

fn spec(data: &[u8]) -> BlobSpec {
    BlobSpec {
        digest: format!("sha256:{}", hex(&Sha256::digest(data))),
        size: data.len() as u64,
        chunk_hashes: Some(ChunkHashes {
            chunk_size: CHUNK,
            hashes: data
                .chunks(CHUNK as usize)
                .map(|c| Sha256::digest(c).into())
                .collect(),
        }),
        name: "payload \"system\"".into(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn settings() -> ChunkCacheSettings {
    ChunkCacheSettings {
        max_attempts: 3,
        retry_delay: Duration::from_millis(5),
        ..ChunkCacheSettings::default()
    }
}

/// A cache dir, the remote file and the fetch log.
struct Fixture {
    dir: tempfile::TempDir,
    data: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data = remote_bytes();
        std::fs::write(dir.path().join("remote"), &data).unwrap();
        Fixture { dir, data }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn fetcher(&self, delay: Duration, faults: Vec<Fault>) -> Arc<FileFetch> {
        Arc::new(FileFetch::new(
            &self.path("remote"),
            &self.path("fetch.log"),
            delay,
            faults,
        ))
    }
    fn fetches_of(&self, offset: u64) -> usize {
        std::fs::read_to_string(self.path("fetch.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == offset.to_string())
            .count()
    }
    /// Starts this binary as a child that reads `chunk` once `go` exists.
    fn spawn_child(&self, chunk: u64, mode: &str) -> Child {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "chunk_cache::child", "--nocapture"])
            .env("CHUNK_CACHE_CHILD", self.dir.path())
            .env("CHUNK_CACHE_CHUNK", chunk.to_string())
            .env("CHUNK_CACHE_MODE", mode)
            .spawn()
            .unwrap()
    }
}

/// Not a test of its own: the body of the child processes the other tests
/// start. Without `CHUNK_CACHE_CHILD` it does nothing.
#[test]
fn child() {
    let Some(dir) = std::env::var_os("CHUNK_CACHE_CHILD") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let chunk: u64 = std::env::var("CHUNK_CACHE_CHUNK").unwrap().parse().unwrap();
    let mode = std::env::var("CHUNK_CACHE_MODE").unwrap();
    let data = remote_bytes();
    let faults = match mode.as_str() {
        "block" => vec![Fault::Block(dir.join("fifo"))],
        _ => vec![],
    };
    let fetch = Arc::new(FileFetch::new(
        &dir.join("remote"),
        &dir.join("fetch.log"),
        Duration::from_millis(300),
        faults,
    ));
    let cache = ChunkCache::new(dir.join("cache"), settings());
    let blob = cache.open_blob(spec(&data), fetch).unwrap();
    let file = blob.blob_file().unwrap();
    // Everyone starts together.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("go").exists() {
        assert!(Instant::now() < deadline, "no go");
        std::thread::sleep(Duration::from_millis(2));
    }
    let off = chunk * CHUNK;
    let len = CHUNK.min(SIZE - off);
    file.ensure(off, len).unwrap();
    let mut buf = vec![0u8; len as usize];
    file.file().read_exact_at(&mut buf, off).unwrap();
    assert!(
        buf == data[off as usize..(off + len) as usize],
        "wrong bytes"
    );
}

fn wait_ok(mut c: Child) {
    let status = c.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
}

#[test]
fn ten_processes_one_fetch() {
    let f = Fixture::new();
    let children: Vec<_> = (0..10).map(|_| f.spawn_child(2, "read")).collect();
    // Let them all open the cache (racing to create the record), then go.
    std::thread::sleep(Duration::from_millis(300));
    File::create(f.path("go")).unwrap();
    for c in children {
        wait_ok(c);
    }
    assert_eq!(f.fetches_of(2 * CHUNK), 1, "one fetch for ten readers");
    assert_eq!(f.fetches_of(0), 0);
    // The same in one process: eight threads, one fetch.
    let cache = ChunkCache::new(f.path("cache"), settings());
    let fetch = f.fetcher(Duration::from_millis(200), vec![]);
    let blob = cache.open_blob(spec(&f.data), fetch.clone()).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let b = blob.clone();
            std::thread::spawn(move || b.ensure_range(3 * CHUNK + 5, 10).unwrap())
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(fetch.calls.load(Ordering::SeqCst), 1);
    assert_eq!(blob.status().verified, 2);
}

#[test]
fn a_fetcher_killed_mid_chunk_leaves_nothing_and_the_next_one_fetches() {
    let f = Fixture::new();
    let fifo = f.path("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    File::create(f.path("go")).unwrap();
    let mut stuck = f.spawn_child(1, "block");
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.fetches_of(CHUNK) == 0 {
        assert!(Instant::now() < deadline, "the child never fetched");
        std::thread::sleep(Duration::from_millis(10));
    }
    // It holds the chunk's lock and is inside its fetch: a reader here
    // would wait. Kill it there.
    std::thread::sleep(Duration::from_millis(400));
    stuck.kill().unwrap();
    stuck.wait().unwrap();
    let cache = ChunkCache::new(f.path("cache"), settings());
    let probe = cache.open_blob(
        spec(&f.data),
        f.fetcher(Duration::ZERO, vec![Fault::Fail; 3]),
    );
    let probe = probe.unwrap();
    assert_eq!(
        probe.status().verified,
        0,
        "the killed fetch marked nothing"
    );
    // The next process fetches it again and reads it right.
    wait_ok(f.spawn_child(1, "read"));
    assert_eq!(f.fetches_of(CHUNK), 2);
    assert_eq!(
        probe.status().verified,
        1,
        "seen at once through the shared record"
    );

    // A restart keeps what was fetched: a remote that always fails still
    // serves chunk 1, and fails chunk 0 naming the blob and the range.
    drop(probe);
    let cache = ChunkCache::new(f.path("cache"), settings());
    let fetch = f.fetcher(Duration::ZERO, vec![Fault::Fail; 10]);
    let blob = cache.open_blob(spec(&f.data), fetch.clone()).unwrap();
    blob.ensure_range(CHUNK, CHUNK).unwrap();
    assert_eq!(fetch.calls.load(Ordering::SeqCst), 0);
    let e = blob.ensure_range(0, 1).unwrap_err().to_string();
    assert!(e.contains(&spec(&f.data).digest), "{e}");
    assert!(e.contains(&format!("bytes 0..{CHUNK}")), "{e}");
    assert!(e.contains("503"), "{e}");
    assert_eq!(fetch.calls.load(Ordering::SeqCst), 3, "bounded attempts");
}

#[test]
fn faults_are_retried_then_fail_never_serving_wrong_bytes() {
    let f = Fixture::new();
    let cache = ChunkCache::new(f.path("cache"), settings());
    // Each fault once, then the good bytes: the read succeeds.
    for fault in [Fault::WrongBytes, Fault::Short, Fault::Fail] {
        let fetch = f.fetcher(Duration::ZERO, vec![fault.clone()]);
        let blob = cache.open_blob(spec(&f.data), fetch.clone()).unwrap();
        let chunk = match fault {
            Fault::WrongBytes => 0,
            Fault::Short => 1,
            _ => 2,
        };
        blob.ensure_range(chunk * CHUNK, 1).unwrap();
        assert_eq!(fetch.calls.load(Ordering::SeqCst), 2, "{fault:?}");
    }
    // Wrong bytes every time: the read fails after the budget, the cache
    // file keeps zeros where the chunk goes, the counters say so.
    let fetch = f.fetcher(Duration::ZERO, vec![Fault::WrongBytes; 3]);
    let blob = cache.open_blob(spec(&f.data), fetch.clone()).unwrap();
    let file = blob.blob_file().unwrap();
    let e = file.ensure(3 * CHUNK, 100).unwrap_err();
    assert!(e.to_string().contains("wrong bytes"), "{e}");
    let mut buf = vec![1u8; 100];
    file.file().read_exact_at(&mut buf, 3 * CHUNK).unwrap();
    assert_eq!(buf, vec![0u8; 100]);
    let t = cache.counters().totals();
    assert_eq!((t.fetches, t.failures), (3, 1), "{t:?}");
    assert_eq!(t.retries, 3 + 2, "{t:?}");
    // The whole blob, then, for `ocidisk pull`; and an ordered prefetch.
    blob.fetch_all().unwrap();
    assert_eq!(std::fs::read(blob.path()).unwrap(), f.data);
    blob.prefetch(&[4 * CHUNK..SIZE + 100, 0..1]).unwrap();
}

#[test]
fn a_block_map_over_a_cached_blob_fetches_what_it_reads() {
    let f = Fixture::new();
    let cache = ChunkCache::new(f.path("cache"), settings());
    let fetch = f.fetcher(Duration::ZERO, vec![]);
    let blob = cache.open_blob(spec(&f.data), fetch.clone()).unwrap();
    let file = Arc::new(blob.blob_file().unwrap());
    let disk = SIZE + 2 * CHUNK;
    let mut b = layout::BlockMapBuilder::new(disk);
    b.place("blob", CHUNK, layout::Content::file(file));
    let map = b.build().unwrap();
    // The map's own read path (the sync engine's) fetches chunk 2 only.
    let mut buf = vec![0u8; 4096];
    map.read_at(CHUNK + 2 * CHUNK + 100, &mut buf).unwrap();
    assert!(buf == f.data[(2 * CHUNK + 100) as usize..][..4096]);
    assert_eq!(fetch.calls.load(Ordering::SeqCst), 1);
    // export's copy_file_range passes the gate too: the whole blob.
    let out = tempfile::tempfile().unwrap();
    layout::export::write_raw(&map, &out).unwrap();
    let mut got = vec![0u8; SIZE as usize];
    out.read_exact_at(&mut got, CHUNK).unwrap();
    assert!(got == f.data, "export differs");
    assert_eq!(fetch.calls.load(Ordering::SeqCst), 5);
    // A remote that fails: the map's read fails naming blob and range.
    let bad = ChunkCache::new(f.path("other-cache"), settings());
    let failing = f.fetcher(Duration::ZERO, vec![Fault::Fail; 3]);
    let blob = bad.open_blob(spec(&f.data), failing).unwrap();
    let mut b = layout::BlockMapBuilder::new(disk);
    b.place(
        "blob",
        CHUNK,
        layout::Content::file(Arc::new(blob.blob_file().unwrap())),
    );
    let map = b.build().unwrap();
    let e = map.read_at(CHUNK, &mut buf).unwrap_err().to_string();
    assert!(e.contains("bytes 0..1048576") && e.contains("503"), "{e}");
}

/// `ocidisk cache list` shows what this process filled and holds open;
/// `ocidisk cache prune` leaves the blob this (live) process has open and
/// removes it once let go; bad arguments are errors naming them.
#[test]
fn cache_list_and_prune_never_remove_a_blob_in_use() {
    let f = Fixture::new();
    let cache_dir = f.path("cache");
    let cache = ChunkCache::new(&cache_dir, settings());
    let held = cache
        .open_blob(spec(&f.data), f.fetcher(Duration::ZERO, Vec::new()))
        .unwrap();
    held.ensure_range(0, 1).unwrap();
    let other = remote_bytes()[..3 * CHUNK as usize].to_vec();
    std::fs::write(f.path("remote"), &other).unwrap();
    {
        let blob = cache
            .open_blob(spec(&other), f.fetcher(Duration::ZERO, Vec::new()))
            .unwrap();
        blob.fetch_all().unwrap();
    }
    let ocidisk = ocidisk_tests::blkio_client::ocidisk_binary().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&ocidisk)
            .args(args)
            .arg("--cache")
            .arg(&cache_dir)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        (out.status.success(), stdout, stderr)
    };
    let (ok, stdout, stderr) = run(&["cache", "list", "--json"]);
    assert!(ok, "{stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{stdout}");
    let held_digest = spec(&f.data).digest;
    let other_digest = spec(&other).digest;
    for e in list {
        let held = e["digest"] == held_digest.as_str();
        assert_eq!(e["in_use"], held, "{e}");
        assert_eq!(e["verified"], if held { 1 } else { 3 }, "{e}");
    }

    let (ok, stdout, stderr) = run(&["cache", "prune", "--max-size", "0"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("removed {other_digest}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("kept {held_digest} (in use)")),
        "{stdout}"
    );
    assert!(held.path().exists());
    held.ensure_range(0, 1).unwrap();
    drop(held);
    let (ok, stdout, stderr) = run(&["cache", "prune", "--older-than", "0s"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("removed 1 blob(s)"), "{stdout}");
    let (_, stdout, _) = run(&["cache", "list"]);
    assert_eq!(stdout.lines().count(), 1, "only the heading: {stdout}");

    let (ok, _, stderr) = run(&["cache", "prune"]);
    assert!(!ok && stderr.contains("--older-than"), "{stderr}");
    let (ok, _, stderr) = run(&["cache", "prune", "--older-than", "3 weeks"]);
    assert!(!ok && stderr.contains("3 weeks"), "{stderr}");
}
