//! A split virtqueue driven by the test, and virtio-blk request formats.

use super::memory::GuestMemory;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

/// virtio-blk request types.
pub mod blk {
    pub const T_IN: u32 = 0;
    pub const T_OUT: u32 = 1;
    pub const T_FLUSH: u32 = 4;
    pub const T_GET_ID: u32 = 8;
    pub const T_DISCARD: u32 = 11;
    pub const T_WRITE_ZEROES: u32 = 13;
    pub const S_OK: u8 = 0;
    pub const S_IOERR: u8 = 1;
    pub const S_UNSUPP: u8 = 2;
    /// The write-zeroes segment flag.
    pub const WZ_UNMAP: u32 = 1;

    /// The 16-byte request header.
    pub fn header(ty: u32, sector: u64) -> Vec<u8> {
        let mut h = ty.to_le_bytes().to_vec();
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&sector.to_le_bytes());
        h
    }

    /// One discard/write-zeroes segment.
    pub fn segment(sector: u64, num_sectors: u32, flags: u32) -> Vec<u8> {
        let mut s = sector.to_le_bytes().to_vec();
        s.extend_from_slice(&num_sectors.to_le_bytes());
        s.extend_from_slice(&flags.to_le_bytes());
        s
    }
}

/// One descriptor.
#[derive(Clone, Copy, Debug, Default)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    pub fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// A used element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub id: u32,
    pub len: u32,
}

/// A non-blocking eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    eventfd_flags(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
}

/// An eventfd with the given flags.
pub fn eventfd_flags(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: eventfd with valid flags.
    let fd = unsafe { libc::eventfd(0, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds `v` to an eventfd counter (or writes 8 bytes to any fd).
pub fn eventfd_write(fd: &OwnedFd, v: u64) -> io::Result<()> {
    let b = v.to_ne_bytes();
    // SAFETY: writing 8 bytes from a valid buffer.
    let n = unsafe { libc::write(fd.as_raw_fd(), b.as_ptr() as *const libc::c_void, 8) };
    if n != 8 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A split virtqueue laid out in guest memory by the test.
pub struct Queue {
    pub index: u32,
    pub size: u16,
    /// Guest-physical addresses of the descriptor table, avail and used rings.
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub kick: OwnedFd,
    pub call: OwnedFd,
    /// The driver's avail index (the next slot it fills).
    pub avail_idx: u16,
    /// The used index the driver has consumed up to.
    pub used_seen: u16,
    next_desc: u16,
}

/// Bytes a queue of `size` needs from its base: descriptor table, avail
/// ring (with used_event), used ring (with avail_event), page-aligned.
pub fn queue_footprint(size: u16) -> u64 {
    let s = u64::from(size);
    let desc = 16 * s;
    let avail = (6 + 2 * s).next_multiple_of(4096);
    let used = (6 + 8 * s).next_multiple_of(4096);
    desc.next_multiple_of(4096) + avail + used
}

impl Queue {
    /// Lays out a queue of `size` entries at `base` (4 KiB aligned): zeroed
    /// avail and used rings, the used ring open to the device.
    pub fn new(mem: &GuestMemory, index: u32, size: u16, base: u64) -> io::Result<Self> {
        let s = u64::from(size);
        let desc = base;
        let avail = base + (16 * s).next_multiple_of(4096);
        let used = avail + (6 + 2 * s).next_multiple_of(4096);
        Self::at(mem, index, size, desc, avail, used)
    }

    /// A queue of `size` entries with its rings exactly where given: zeroed
    /// avail and used rings, the used ring (with avail_event) open to the
    /// device.
    pub fn at(
        mem: &GuestMemory,
        index: u32,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> io::Result<Self> {
        let s = u64::from(size);
        mem.write(avail, &vec![0u8; (6 + 2 * s) as usize]);
        mem.write(used, &vec![0u8; (6 + 8 * s) as usize]);
        mem.allow(used, 6 + 8 * s);
        Ok(Self {
            index,
            size,
            desc,
            avail,
            used,
            kick: eventfd()?,
            call: eventfd()?,
            avail_idx: 0,
            used_seen: 0,
            next_desc: 0,
        })
    }

    /// Writes descriptor `i`.
    pub fn write_desc(&self, mem: &GuestMemory, i: u16, d: Desc) {
        mem.write(self.desc + 16 * u64::from(i), &d.bytes());
    }

    /// Takes `n` consecutive descriptor slots (wrapping), returning the
    /// first.
    pub fn take_descs(&mut self, n: u16) -> u16 {
        let first = self.next_desc;
        self.next_desc = ((u32::from(self.next_desc) + u32::from(n)) % u32::from(self.size)) as u16;
        first
    }

    /// Writes a chain of `(addr, len, device-writable)` buffers into fresh
    /// descriptor slots, linked with NEXT; returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemory, parts: &[(u64, u32, bool)]) -> u16 {
        assert!(!parts.is_empty() && parts.len() <= usize::from(self.size));
        let slots: Vec<u16> = (0..parts.len()).map(|_| self.take_descs(1)).collect();
        for (i, &(addr, len, write)) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let mut flags = if write { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let next = if last { 0 } else { slots[i + 1] };
            self.write_desc(
                mem,
                slots[i],
                Desc {
                    addr,
                    len,
                    flags,
                    next,
                },
            );
        }
        slots[0]
    }

    /// Puts `head` in the avail ring and publishes the new avail index.
    pub fn publish(&mut self, mem: &GuestMemory, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write(self.avail + 4 + 2 * slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store_u16(self.avail + 2, self.avail_idx);
    }

    /// Writes an avail ring entry without publishing it.
    pub fn set_avail_entry(&self, mem: &GuestMemory, slot: u16, head: u16) {
        mem.write(self.avail + 4 + 2 * u64::from(slot), &head.to_le_bytes());
    }

    /// Publishes an arbitrary avail index.
    pub fn set_avail_idx(&mut self, mem: &GuestMemory, idx: u16) {
        self.avail_idx = idx;
        mem.store_u16(self.avail + 2, idx);
    }

    /// Sets the driver's used_event (EVENT_IDX).
    pub fn set_used_event(&self, mem: &GuestMemory, v: u16) {
        mem.store_u16(self.avail + 4 + 2 * u64::from(self.size), v);
    }

    /// Kicks the device.
    pub fn kick(&self) -> io::Result<()> {
        eventfd_write(&self.kick, 1)
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        mem.load_u16(self.used + 2)
    }

    /// Waits up to `timeout` until `count` new used elements appear, and
    /// returns the new ones (possibly fewer on timeout, as an error).
    pub fn wait_used(
        &mut self,
        mem: &GuestMemory,
        count: u16,
        timeout: Duration,
    ) -> Result<Vec<Used>, Vec<Used>> {
        let deadline = Instant::now() + timeout;
        loop {
            let idx = self.used_idx(mem);
            let ready = idx.wrapping_sub(self.used_seen);
            if ready >= count || Instant::now() >= deadline {
                let mut out = Vec::new();
                for _ in 0..ready.min(self.size) {
                    let slot = u64::from(self.used_seen % self.size);
                    let e = mem.read(self.used + 4 + 8 * slot, 8);
                    out.push(Used {
                        id: u32::from_le_bytes(e[0..4].try_into().unwrap()),
                        len: u32::from_le_bytes(e[4..8].try_into().unwrap()),
                    });
                    self.used_seen = self.used_seen.wrapping_add(1);
                }
                return if ready >= count { Ok(out) } else { Err(out) };
            }
            std::thread::sleep(Duration::from_micros(300));
        }
    }
}

/// A bump allocator of guest-physical buffers.
pub struct Alloc {
    pub start: u64,
    pub next: u64,
    pub end: u64,
}

impl Alloc {
    pub fn new(start: u64, end: u64) -> Self {
        Self {
            start,
            next: start,
            end,
        }
    }

    /// `len` bytes aligned to 16 (wrapping to the start when full).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = len.max(1).next_multiple_of(16);
        assert!(len <= self.end - self.start, "test bug: buffer too large");
        if self.next + len > self.end {
            self.next = self.start;
        }
        let a = self.next;
        self.next += len;
        a
    }
}
