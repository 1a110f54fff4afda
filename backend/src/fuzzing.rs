//! What the fuzz targets (`fuzz/fuzz_targets/`) run, kept in the library so
//! that the unit tests replay the committed corpus on every run, with stable
//! Rust, and the fuzzer only has to find new inputs.
//!
//! - [`virtqueue`]: a guest's side of the split ring — descriptor table,
//!   available ring, request headers and data, all taken from the input —
//!   drained by the device on an in-memory disk;
//! - [`protocol`]: a frontend's byte stream of vhost-user messages (without
//!   file descriptors) into a connection;
//! - [`layout_file`]: a TOML layout file, parsed, validated, placed and
//!   hashed;
//! - [`oci_image`]: a manifest and a config as a registry would serve them,
//!   opened as an image and, when it is a Monogon OS image, composed into
//!   the `monogon` preset's disk;
//! - [`overlay_file`]: an overlay file's bytes, opened; an overlay that
//!   opens must keep what is written to it across a flush and a reopen.
//!
//! The first two hold the device to what a hostile guest or frontend may
//! expect: an answer or a refusal, never a panic, a hang or a write outside
//! the buffers and rings it was given. The virtio-blk request parser
//! (`device::request`) is driven through [`virtqueue`], which is how a
//! guest reaches it. The last three hold the parsers of what users and
//! registries hand us to the same: an error, never a panic.

use crate::device::{BlkBackend, DeviceConfig, GuestMemory};
use crate::disk::memory::MemoryDisk;
use crate::vhost_user::vring::Vring;
use crate::vhost_user::Session;
use blockio::{IoBuf, IoBufMut};
use std::io::Write as _;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

/// Guest memory of the virtqueue target.
const MEM_SIZE: u64 = 0x1_0000;
/// Where the target's rings lie: the descriptor table (up to 256 entries)
/// from 0, the available ring at 0x1000, the used ring at 0x2000.
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
// The largest used ring (256 entries) fits in guest memory.
const _: () = assert!(USED + 4 + 8 * 256 + 2 <= MEM_SIZE);

/// The disk both targets serve.
fn device(num_queues: u32) -> Option<(Arc<BlkBackend>, GuestMemory)> {
    let disk = Arc::new(MemoryDisk::new(64 * 1024, 0x5a));
    let config = DeviceConfig::new(64 * 1024, false, num_queues, 256, "fuzz", false).ok()?;
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = BlkBackend::new(disk, config, mem.clone());
    Some((Arc::new(backend), mem))
}

/// Drains one virtqueue whose guest memory is `data`: byte 0 chooses the
/// ring size (`1 << (b & 15) % 9`) and EVENT_IDX (`b & 16`), the rest is
/// guest memory from address 0. Returns how many requests were answered.
pub fn virtqueue(data: &[u8]) -> u16 {
    let Some((&control, image)) = data.split_first() else {
        return 0;
    };
    let size = 1u16 << ((control & 15) % 9);
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]) else {
        return 0;
    };
    let image = &image[..image.len().min(MEM_SIZE as usize)];
    if mem.write_slice(image, GuestAddress(0)).is_err() {
        return 0;
    }
    let Some((backend, atomic)) = device(1) else {
        return 0;
    };
    atomic
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .replace(mem.clone());
    let Ok(mut vring) = Vring::new(0, 256) else {
        return 0;
    };
    if vring.set_size(u32::from(size)).is_err() {
        return 0;
    }
    vring.set_addresses(0, AVAIL, USED);
    vring.set_event_idx(control & 16 != 0);
    vring.set_enabled(true);
    if vring.start(&mem, None).is_err() {
        return 0;
    }
    let used = || mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap_or(0);
    let before = used();
    backend.process(0, &mut vring);
    // However broken the requests, the device answered at most a ring's
    // worth of them (the driver's used index is where it starts).
    let answered = used().wrapping_sub(before);
    assert!(
        answered <= size,
        "{answered} used entries in a ring of {size}"
    );
    answered
}

/// Feeds `data` to a connection as a frontend's messages, then hangs up.
pub fn protocol(data: &[u8]) {
    let Ok((ours, mut theirs)) = UnixStream::pair() else {
        return;
    };
    // Replies pile up unread in `theirs`; a socket buffer holds far more
    // than the replies to one input's messages.
    if theirs.write_all(data).is_err() || theirs.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let Some((backend, mem)) = device(2) else {
        return;
    };
    let Ok(mut session) = Session::new(ours, backend, mem) else {
        return;
    };
    // Never readable: the session ends when the messages do.
    let Ok((stop, _keep)) = UnixStream::pair() else {
        return;
    };
    session.run(stop.as_fd());
    session.stop_queues();
}

/// Parses `data` as a layout file the way `--layout FILE` does, then
/// validates, places and hashes it. Returns whether it was accepted.
pub fn layout_file(data: &[u8]) -> bool {
    use layout::LayoutSpec;
    use std::path::Path;
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(spec) = LayoutSpec::from_toml(
        text,
        Path::new("fuzz.toml"),
        Path::new("/nonexistent"),
        None,
    ) else {
        return false;
    };
    if spec.validate("fuzz.toml").is_err() {
        return false;
    }
    let Ok(placements) = spec.place() else {
        return false;
    };
    // Placement keeps partitions inside the disk and apart from each
    // other: what the GPT writer relies on.
    let mut end = 0;
    for p in &placements {
        assert!(p.offset() >= end, "partitions overlap: {placements:?}");
        assert!(p.offset() + p.len() <= spec.disk_size, "{placements:?}");
        end = p.offset() + p.len();
    }
    let _ = spec.canonical();
    let _ = spec.layout_hash();
    true
}

/// Where [`oci_image`]'s input puts the config's digest and size into the
/// manifest, so that the fuzzer reaches past the config's digest check.
pub const CONFIG_DIGEST_MARK: &str = "@CONFIG_DIGEST@";
/// See [`CONFIG_DIGEST_MARK`].
pub const CONFIG_SIZE_MARK: &str = "@CONFIG_SIZE@";

/// Opens an image from a manifest and config as a registry serves them:
/// `data` is the manifest's text, a NUL byte, then the config's bytes; the
/// manifest's [`CONFIG_DIGEST_MARK`] and [`CONFIG_SIZE_MARK`] are replaced
/// by the config's. Every uncompressed layer reads as a run of one byte
/// (none larger than 4 MiB; compressed layers are refused, so nothing is
/// decompressed into a cache). A Monogon OS image that opens is composed
/// into the `monogon` preset's disk. Returns whether the image opened.
pub fn oci_image(data: &[u8]) -> bool {
    use layout::oci::{BlobData, Fetched, Image, ImageError, LayerBlob, OpenOptions};
    use layout::{compose, ComposeOptions, LayoutSpec, MonogonPreset};
    use sha2::{Digest as _, Sha256};
    use std::path::Path;

    let (manifest, config) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(manifest) = std::str::from_utf8(manifest) else {
        return false;
    };
    let config_digest = format!("sha256:{:x}", Sha256::digest(config));
    let manifest = manifest
        .replace(CONFIG_DIGEST_MARK, &config_digest)
        .replace(CONFIG_SIZE_MARK, &config.len().to_string());
    let manifest_digest = format!("sha256:{:x}", Sha256::digest(manifest.as_bytes()));
    let fetched = Fetched {
        dir: Path::new("/nonexistent"),
        manifest_digest: &manifest_digest,
        manifest: manifest.as_bytes(),
        ref_name: None,
        config,
    };
    let opts = OpenOptions {
        cache_dir: Some("/nonexistent".into()),
        ..OpenOptions::default()
    };
    let image = Image::from_fetched(&fetched, &opts, &mut |req| {
        let size = req.desc.size();
        if req.compressed || size > 4 << 20 {
            return Err(ImageError::Io {
                path: "fuzz".into(),
                op: "serving a compressed or large layer",
                source: std::io::Error::other("not in the fuzz target"),
            });
        }
        Ok(LayerBlob {
            data: BlobData::Inline(vec![0x5a; size as usize].into()),
            checked_on_read: true,
        })
    });
    let Ok(image) = image else {
        return false;
    };
    if image.monogon().is_some() {
        let spec = LayoutSpec::monogon(&MonogonPreset::default());
        if let Ok(disk) = compose(&image, &spec, &ComposeOptions::default()) {
            assert_eq!(disk.map.size(), spec.disk_size);
        }
    }
    true
}

/// An overlay file in memory, for [`overlay_file`].
#[derive(Default)]
struct MemoryFile(std::sync::Mutex<Vec<u8>>);

impl MemoryFile {
    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl overlay::storage::Storage for MemoryFile {
    fn file_len(&self) -> std::io::Result<u64> {
        Ok(self.bytes().len() as u64)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        // Bounded: a header may ask for any disk size.
        if len > 64 << 20 {
            return Err(std::io::Error::other("larger than the fuzz target's file"));
        }
        self.bytes().resize(len as usize, 0);
        Ok(())
    }
    fn read_at(&self, offset: u64, bufs: &mut [blockio::IoBufMut<'_>]) -> std::io::Result<()> {
        let bytes = self.bytes();
        let mut at = offset;
        for buf in bufs {
            let end = at
                .checked_add(buf.len() as u64)
                .filter(|&e| e <= bytes.len() as u64)
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
            buf.copy_from(&bytes[at as usize..end as usize]);
            at = end;
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, bufs: &mut [blockio::IoBuf<'_>]) -> std::io::Result<()> {
        let mut bytes = self.bytes();
        let mut at = offset;
        for buf in bufs.iter() {
            let end = at
                .checked_add(buf.len() as u64)
                .filter(|&e| e <= 64 << 20)
                .ok_or_else(|| std::io::Error::other("larger than the fuzz target's file"))?;
            if end as usize > bytes.len() {
                bytes.resize(end as usize, 0);
            }
            buf.copy_to(&mut bytes[at as usize..end as usize]);
            at = end;
        }
        Ok(())
    }
    fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let mut bytes = self.bytes();
        let n = bytes.len() as u64;
        let (start, end) = (offset.min(n), offset.saturating_add(len).min(n));
        bytes[start as usize..end as usize].fill(0);
        Ok(())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn allocated(&self) -> std::io::Result<u64> {
        self.file_len()
    }
}

/// The disk size of [`overlay_file`]'s overlays (its seeds are made for it).
pub const OVERLAY_DISK_SIZE: u64 = 1 << 20;

/// The base identity [`overlay_file`]'s seeds are made for.
pub fn overlay_base() -> blockio::BaseIdentity {
    blockio::BaseIdentity {
        manifest_digest: format!("sha256:{}", "ab".repeat(32)),
        layout_hash: [7; 32],
    }
}

/// A new, empty overlay file of [`overlay_file`]'s geometry: a seed.
pub fn overlay_seed() -> Vec<u8> {
    let file = MemoryFile::default();
    let opts = overlay::CreateOptions {
        disk_size: OVERLAY_DISK_SIZE,
        base: overlay_base(),
    };
    match overlay::Overlay::write_new(&file, std::path::Path::new("seed"), &opts) {
        Ok(()) => std::mem::take(&mut *file.bytes()),
        Err(_) => Vec::new(),
    }
}

/// Opens `data` as an overlay file over a 1 MiB base (rebasing, so that a
/// header for another base is read too). An overlay that opens must serve
/// every byte, take a write, flush, and after a reopen read back what was
/// written: a file that opens is never one that corrupts. Returns whether
/// it opened.
pub fn overlay_file(data: &[u8]) -> bool {
    use overlay::{OpenOptions, Overlay};

    use std::path::Path;
    use std::sync::Arc;

    let file = Arc::new(MemoryFile(std::sync::Mutex::new(data.to_vec())));
    let base: Vec<u8> = (0..OVERLAY_DISK_SIZE).map(|i| (i % 251) as u8).collect();
    let open = || {
        Overlay::open_on(
            Box::new(Arc::clone(&file)),
            Path::new("fuzz.overlay"),
            &overlay_base(),
            OVERLAY_DISK_SIZE,
            &OpenOptions {
                rebase: true,
                ..OpenOptions::default()
            },
        )
    };
    let Ok(ov) = open() else {
        return false;
    };
    let mut disk = vec![0u8; OVERLAY_DISK_SIZE as usize];
    if ov.read(0, &mut [IoBufMut::new(&mut disk)], &base).is_err() {
        return true;
    }
    // A write that straddles blocks, from a spot the input chooses.
    let at = (data.len() as u64 * 4099) % (OVERLAY_DISK_SIZE - 8192);
    let written = [0xc3u8; 6000];
    if ov.write(at, &[IoBuf::new(&written)], &base).is_err() || ov.flush().is_err() {
        return true;
    }
    drop(ov);
    let ov = match open() {
        Ok(ov) => ov,
        Err(e) => panic!("an overlay that took a flushed write does not open again: {e}"),
    };
    let mut back = vec![0u8; written.len()];
    if let Err(e) = ov.read(at, &mut [IoBufMut::new(&mut back)], &base) {
        panic!("reading back a flushed write: {e}");
    }
    assert!(back == written, "a flushed write at {at} reads back wrong");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every input of a committed corpus, then `n` pseudo-random ones.
    fn replay(target: &str, run: fn(&[u8]), n: u64) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut seen = 0;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let input = std::fs::read(entry.path()).unwrap();
                run(&input);
                seen += 1;
            }
        }
        assert!(seen > 0, "no corpus in {}", dir.display());
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..n {
            let len = (i * 97 % 5000) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            run(&input);
        }
    }

    #[test]
    fn virtqueue_corpus() {
        replay(
            "virtqueue",
            |d| {
                virtqueue(d);
            },
            200,
        );
    }

    #[test]
    fn virtqueue_seeds_are_answered() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/virtqueue");
        let answered = |name: &str| virtqueue(&std::fs::read(dir.join(name)).unwrap());
        assert_eq!(answered("read"), 1);
        assert_eq!(answered("write_flush_getid"), 3);
        assert_eq!(answered("discard_indirect"), 1);
        assert_eq!(answered("huge_length"), 1);
        assert_eq!(answered("avail_jump"), 0);
    }

    #[test]
    fn protocol_corpus() {
        replay("protocol", protocol, 200);
    }

    #[test]
    fn layout_file_corpus() {
        replay(
            "layout_file",
            |d| {
                layout_file(d);
            },
            200,
        );
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/layout_file");
        let accepted = |name: &str| layout_file(&std::fs::read(dir.join(name)).unwrap());
        assert!(accepted("readme.toml"));
        assert!(accepted("production.toml"));
        assert!(accepted("tiny.toml"));
        assert!(!accepted("too_big.toml"));
    }

    #[test]
    fn oci_image_corpus() {
        replay(
            "oci_image",
            |d| {
                oci_image(d);
            },
            200,
        );
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/oci_image");
        let opens = |name: &str| oci_image(&std::fs::read(dir.join(name)).unwrap());
        assert!(opens("monogon"));
        assert!(opens("generic"));
        // Its zstd layer is refused by the target, not by the parser.
        assert!(!opens("monogon_zstd"));
    }

    #[test]
    fn overlay_file_corpus() {
        replay(
            "overlay_file",
            |d| {
                overlay_file(d);
            },
            50,
        );
        assert!(overlay_file(&overlay_seed()));
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/overlay_file");
        assert!(overlay_file(&std::fs::read(dir.join("empty")).unwrap()));
        // A header cut short is refused, not read past its end.
        let seed = overlay_seed();
        assert!(!overlay_file(&seed[..100]));
    }

    /// Writes the overlay corpus's seeds (run by hand when the format
    /// changes: `OCIDISK_WRITE_FUZZ_SEEDS=1 cargo test -p ocidisk
    /// write_overlay_seeds`).
    #[test]
    fn write_overlay_seeds() {
        if std::env::var_os("OCIDISK_WRITE_FUZZ_SEEDS").is_none() {
            return;
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/overlay_file");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("empty"), overlay_seed()).unwrap();
    }
}
