//! Lazy verification of a local Monogon payload: each chunk is checked
//! against its `chunk_hashes_sha256` entry the first time any byte of it is
//! read, and a chunk that fails is never served.
//!
//! [`PayloadGate`] is the [`ChunkGate`] of the payload's blob file (or of
//! its decompressed copy in the cache: the chunk hashes are over the
//! uncompressed bytes, so both are checked the same way). A chunk's state
//! is one atomic byte: unknown, good or bad. Two readers that find a chunk
//! unknown at once may both hash it; they reach the same verdict, and only
//! the one whose compare-and-swap records a bad verdict logs it, so the log
//! has one line per bad chunk, not one per request.

use crate::monogon::{BadChunk, Payload};
use crate::source::ChunkGate;
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

const UNKNOWN: u8 = 0;
const GOOD: u8 = 1;
const BAD: u8 = 2;

/// Checks a payload's chunks on first read (see the module documentation).
#[derive(Debug)]
pub struct PayloadGate {
    payload: Payload,
    /// The file the chunks are read from for hashing (its own descriptor).
    file: File,
    path: PathBuf,
    states: Box<[AtomicU8]>,
}

impl PayloadGate {
    /// A gate for `payload`, whose uncompressed bytes are `file` (opened
    /// from `path`, which names it in errors) from byte 0.
    pub fn new(payload: &Payload, file: File, path: &Path) -> PayloadGate {
        PayloadGate {
            payload: payload.clone(),
            file,
            path: path.to_owned(),
            states: (0..payload.chunk_hashes.len())
                .map(|_| AtomicU8::new(UNKNOWN))
                .collect(),
        }
    }

    /// How many chunks have been checked and found good, and bad.
    pub fn checked(&self) -> (usize, usize) {
        let count = |want| {
            self.states
                .iter()
                .filter(|s| s.load(Ordering::Relaxed) == want)
                .count()
        };
        (count(GOOD), count(BAD))
    }

    fn bad(&self, chunk: usize) -> io::Error {
        let offset = chunk as u64 * self.payload.hash_chunk_size;
        let end = (offset + self.payload.hash_chunk_size).min(self.payload.size);
        let err = BadChunk {
            payload: self.payload.name.clone(),
            chunk,
            offset,
            end,
        };
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{err} (read from {})", self.path.display()),
        )
    }

    /// Reads and hashes one chunk; records and returns the verdict.
    fn check(&self, chunk: usize) -> io::Result<u8> {
        let cs = self.payload.hash_chunk_size;
        let offset = chunk as u64 * cs;
        let len = (self.payload.size - offset).min(cs) as usize;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "payload {:?}: reading chunk {chunk} from {} to check it: {e}",
                    self.payload.name,
                    self.path.display()
                ),
            )
        })?;
        let good = Sha256::digest(&buf).as_slice() == self.payload.chunk_hashes[chunk];
        let verdict = if good { GOOD } else { BAD };
        let state = &self.states[chunk];
        match state.compare_exchange(UNKNOWN, verdict, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) if !good => {
                tracing::error!(
                    payload = %self.payload.name,
                    chunk,
                    offset,
                    end = offset + len as u64,
                    file = %self.path.display(),
                    "payload chunk does not match its chunk hash; reads of it fail"
                );
                Ok(BAD)
            }
            Ok(_) => Ok(verdict),
            // Another reader decided first; its verdict stands.
            Err(now) => Ok(now),
        }
    }
}

impl ChunkGate for PayloadGate {
    fn ensure(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.payload.size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "payload {:?}: bytes {offset}..{} lie outside its {} bytes",
                        self.payload.name,
                        offset.saturating_add(len),
                        self.payload.size
                    ),
                )
            })?;
        let cs = self.payload.hash_chunk_size;
        for chunk in (offset / cs) as usize..end.div_ceil(cs) as usize {
            let state = match self.states[chunk].load(Ordering::Acquire) {
                UNKNOWN => self.check(chunk)?,
                s => s,
            };
            if state != GOOD {
                return Err(self.bad(chunk));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(data: &[u8], chunk: u64) -> (tempfile::TempDir, PathBuf, Payload) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, data).unwrap();
        let payload = Payload {
            name: "system".into(),
            size: data.len() as u64,
            hash_chunk_size: chunk,
            chunk_hashes: data
                .chunks(chunk as usize)
                .map(|c| Sha256::digest(c).into())
                .collect(),
        };
        (dir, path, payload)
    }

    #[test]
    fn states_go_unknown_to_good_or_bad_once() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let (_dir, path, payload) = setup(&data, 4096);
        // Corrupt chunk 1 after the hashes were taken.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"X", 5000).unwrap();
        let gate = PayloadGate::new(&payload, File::open(&path).unwrap(), &path);
        assert_eq!(gate.checked(), (0, 0));
        gate.ensure(0, 10).unwrap();
        gate.ensure(4095, 1).unwrap();
        assert_eq!(gate.checked(), (1, 0));
        gate.ensure(8192, 10_000 - 8192).unwrap();
        assert_eq!(gate.checked(), (2, 0));
        for (off, len) in [(4096, 1), (4000, 200), (0, 10_000)] {
            let e = gate.ensure(off, len).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            let msg = e.to_string();
            assert!(
                msg.contains("payload \"system\": chunk 1 (bytes 4096..8192)"),
                "{msg}"
            );
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        assert_eq!(gate.checked(), (2, 1));
        // The verdict stays even if the file is repaired: a bad chunk is
        // never served by this process.
        f.write_all_at(&data[5000..5001], 5000).unwrap();
        assert!(gate.ensure(4096, 1).is_err());
        let e = gate.ensure(9_999, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        gate.ensure(10_000, 0).unwrap();
    }

    #[test]
    fn a_file_cut_short_is_an_error_not_a_verdict() {
        let data = vec![9u8; 8192];
        let (_dir, path, payload) = setup(&data, 4096);
        let gate = PayloadGate::new(&payload, File::open(&path).unwrap(), &path);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(5000)
            .unwrap();
        let e = gate.ensure(4096, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("reading chunk 1"), "{e}");
        assert_eq!(gate.checked(), (0, 0));
    }

    #[test]
    fn concurrent_first_readers_agree() {
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        let (_dir, path, payload) = setup(&data, 4096);
        let gate = std::sync::Arc::new(PayloadGate::new(
            &payload,
            File::open(&path).unwrap(),
            &path,
        ));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let g = gate.clone();
                std::thread::spawn(move || g.ensure(0, 64 * 1024).unwrap())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gate.checked(), (16, 0));
    }
}
