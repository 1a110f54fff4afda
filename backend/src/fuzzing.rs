//! What the fuzz targets (`fuzz/fuzz_targets/`) run, kept in the library so
//! that the unit tests replay the committed corpus on every run, with stable
//! Rust, and the fuzzer only has to find new inputs.
//!
//! - [`virtqueue`]: a guest's side of the split ring — descriptor table,
//!   available ring, request headers and data, all taken from the input —
//!   drained by the device on an in-memory disk;
//! - [`protocol`]: a frontend's byte stream of vhost-user messages (without
//!   file descriptors) into a connection.
//!
//! Both hold the device to what a hostile guest or frontend may expect: an
//! answer or a refusal, never a panic, a hang or a write outside the
//! buffers and rings it was given.

use crate::device::{BlkBackend, DeviceConfig, GuestMemory};
use crate::disk::memory::MemoryDisk;
use crate::vhost_user::vring::Vring;
use crate::vhost_user::Session;
use std::io::Write as _;
use std::os::fd::AsRawFd;
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
    session.run(stop.as_raw_fd());
    session.stop_queues();
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
}
