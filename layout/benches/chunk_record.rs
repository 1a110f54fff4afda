//! What a warm read costs the chunk cache: `CachedBlob::ensure_range` of
//! 4 KiB at random offsets of a blob whose every chunk is verified (the
//! check every read of a registry image makes before it touches the blob
//! file). One thread, then two threads on one blob.
//!
//! `cargo bench -p layout --bench chunk_record` (`OCIDISK_BENCH_ROUNDS`,
//! default 5; the median is printed, in ns per check).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a failed setup ends the run"
)]

use layout::chunkcache::{BlobSpec, ChunkCache, ChunkCacheSettings, ChunkFetch, FetchError};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::time::Instant;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 256 * MIB;
const CHECKS: u64 = 20_000_000;

#[derive(Debug)]
struct Zeros;

impl ChunkFetch for Zeros {
    fn fetch(&self, _offset: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        buf.fill(0);
        Ok(())
    }
}

fn main() {
    let rounds: usize = std::env::var("OCIDISK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = ChunkCache::new(dir.path(), ChunkCacheSettings::default());
    let mut hasher = Sha256::new();
    let zeros = vec![0u8; MIB as usize];
    for _ in 0..SIZE / MIB {
        hasher.update(&zeros);
    }
    let digest = format!("sha256:{:x}", hasher.finalize());
    let spec = BlobSpec {
        digest,
        size: SIZE,
        chunk_hashes: None,
        name: "bench".into(),
    };
    let blob = cache.open_blob(spec, Arc::new(Zeros)).expect("open blob");
    blob.fetch_all().expect("fill the blob");
    let run = |threads: u64| -> f64 {
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let blob = &blob;
                s.spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                    for _ in 0..CHECKS / threads {
                        // xorshift64: a cheap random 4 KiB-aligned offset.
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let off = (x % (SIZE / 4096)) * 4096;
                        blob.ensure_range(off, 4096).expect("warm check");
                    }
                });
            }
        });
        start.elapsed().as_nanos() as f64 / CHECKS as f64
    };
    println!("| threads | ns per 4 KiB check (median of {rounds}) |");
    println!("|---|---|");
    for threads in [1, 2] {
        let mut v: Vec<f64> = (0..rounds).map(|_| run(threads)).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        println!("| {threads} | {:.2} |", v[v.len() / 2]);
    }
}
