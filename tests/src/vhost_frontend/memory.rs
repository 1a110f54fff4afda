//! Guest memory the test owns: memfds mapped in the test process, each at a
//! guest-physical address, filled with a canary pattern. Every write the
//! test makes goes to a shadow copy too, and the test names the ranges the
//! device may write (used rings, device-writable buffers), so
//! [`GuestMemory::check`] finds any byte the backend changed elsewhere.

use super::conn::RegionDesc;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Mutex;

/// The canary byte at `offset` of a region.
pub fn canary(offset: usize) -> u8 {
    ((offset as u32).wrapping_mul(2_654_435_761) >> 24) as u8 ^ 0xa5
}

/// One memfd, mapped shared in this process.
pub struct Region {
    pub gpa: u64,
    pub len: usize,
    ptr: *mut u8,
    /// The memfd (the backend maps it too).
    pub file: File,
    shadow: Mutex<Vec<u8>>,
    /// Offsets the device may write.
    allowed: Mutex<Vec<Range<usize>>>,
}

// SAFETY: the mapping lives as long as the region; accesses go through
// volatile/atomic operations or copies, and the shadow is locked.
unsafe impl Send for Region {}
// SAFETY: as for Send: shared access is volatile, atomic or a copy, and the
// shadow is behind its mutex.
unsafe impl Sync for Region {}

/// Creates a memfd of `len` bytes.
pub fn memfd(name: &str, len: u64) -> io::Result<File> {
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: memfd_create with a valid C string.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new fd we own.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len)?;
    Ok(file)
}

impl Region {
    /// A new region of `len` bytes (a multiple of the page size) at `gpa`,
    /// filled with the canary.
    pub fn new(gpa: u64, len: usize) -> io::Result<Self> {
        let file = memfd("ocidisk-test-guest", len as u64)?;
        // SAFETY: mapping a memfd of `len` bytes; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = ptr as *mut u8;
        let shadow: Vec<u8> = (0..len).map(canary).collect();
        // SAFETY: `ptr` maps `len` writable bytes.
        unsafe { std::ptr::copy_nonoverlapping(shadow.as_ptr(), ptr, len) };
        Ok(Self {
            gpa,
            len,
            ptr,
            file,
            shadow: Mutex::new(shadow),
            allowed: Mutex::new(Vec::new()),
        })
    }

    /// The address the frontend tells the backend the region has in its own
    /// address space (the real mapping's address).
    pub fn user_addr(&self) -> u64 {
        self.ptr as u64
    }

    /// The region as SET_MEM_TABLE/ADD_MEM_REG describe it.
    pub fn desc(&self) -> RegionDesc {
        RegionDesc {
            gpa: self.gpa,
            size: self.len as u64,
            user_addr: self.user_addr(),
            mmap_offset: 0,
        }
    }

    fn contains(&self, gpa: u64, len: usize) -> bool {
        gpa >= self.gpa && gpa - self.gpa + len as u64 <= self.len as u64
    }

    /// The mapping's current bytes at `off..off+len` (a copy; the device may
    /// be writing concurrently).
    fn snapshot(&self, off: usize, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        // SAFETY: the range is inside the mapping (callers check).
        unsafe {
            for (i, b) in out.iter_mut().enumerate() {
                *b = std::ptr::read_volatile(self.ptr.add(off + i));
            }
        }
        out
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Guest memory: one or more regions.
pub struct GuestMemory {
    pub regions: Vec<Region>,
}

impl GuestMemory {
    /// One region of `len` bytes at `gpa`.
    pub fn new(gpa: u64, len: usize) -> io::Result<Self> {
        Ok(Self {
            regions: vec![Region::new(gpa, len)?],
        })
    }

    fn find(&self, gpa: u64, len: usize) -> (&Region, usize) {
        for r in &self.regions {
            if r.contains(gpa, len) {
                return (r, (gpa - r.gpa) as usize);
            }
        }
        panic!("test bug: {gpa:#x}+{len} is not inside the test's guest memory")
    }

    /// Whether `gpa..gpa+len` lies inside one region.
    pub fn contains(&self, gpa: u64, len: usize) -> bool {
        self.regions.iter().any(|r| r.contains(gpa, len))
    }

    /// The frontend-side address of `gpa`.
    pub fn user_addr(&self, gpa: u64) -> u64 {
        let (r, off) = self.find(gpa, 0);
        r.user_addr() + off as u64
    }

    /// Writes `bytes` at `gpa` (and into the shadow).
    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        let (r, off) = self.find(gpa, bytes.len());
        let mut shadow = r.shadow.lock().unwrap();
        shadow[off..off + bytes.len()].copy_from_slice(bytes);
        // SAFETY: inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), r.ptr.add(off), bytes.len()) };
        fence(Ordering::SeqCst);
    }

    /// Reads `len` bytes at `gpa`.
    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        fence(Ordering::SeqCst);
        let (r, off) = self.find(gpa, len);
        r.snapshot(off, len)
    }

    /// Stores a ring index (a 2-byte aligned u16) with release ordering.
    pub fn store_u16(&self, gpa: u64, v: u16) {
        let (r, off) = self.find(gpa, 2);
        assert_eq!(off % 2, 0);
        r.shadow.lock().unwrap()[off..off + 2].copy_from_slice(&v.to_le_bytes());
        // SAFETY: aligned and inside the mapping.
        let a = unsafe { &*(r.ptr.add(off) as *const AtomicU16) };
        a.store(v.to_le(), Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Loads a ring index with acquire ordering.
    pub fn load_u16(&self, gpa: u64) -> u16 {
        let (r, off) = self.find(gpa, 2);
        assert_eq!(off % 2, 0);
        // SAFETY: aligned and inside the mapping.
        let a = unsafe { &*(r.ptr.add(off) as *const AtomicU16) };
        u16::from_le(a.load(Ordering::Acquire))
    }

    /// Lets the device write `gpa..gpa+len` (the part inside the test's
    /// memory).
    pub fn allow(&self, gpa: u64, len: u64) {
        for r in &self.regions {
            let start = gpa.max(r.gpa);
            let end = gpa.saturating_add(len).min(r.gpa + r.len as u64);
            if start < end {
                r.allowed
                    .lock()
                    .unwrap()
                    .push((start - r.gpa) as usize..(end - r.gpa) as usize);
            }
        }
    }

    /// Checks that every byte outside the allowed ranges holds what the test
    /// put there: an error lists where the backend wrote.
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for r in &self.regions {
            let shadow = r.shadow.lock().unwrap();
            let mut allowed = r.allowed.lock().unwrap().clone();
            allowed.sort_by_key(|a| a.start);
            let now = r.snapshot(0, r.len);
            let mut ai = 0;
            let mut bad = 0usize;
            let mut first: Option<(usize, u8, u8)> = None;
            let mut last = 0usize;
            let mut i = 0;
            while i < r.len {
                while ai < allowed.len() && allowed[ai].end <= i {
                    ai += 1;
                }
                if ai < allowed.len() && allowed[ai].start <= i {
                    // Skip to the end of the overlapping allowed ranges.
                    let mut end = allowed[ai].end;
                    let mut j = ai + 1;
                    while j < allowed.len() && allowed[j].start <= end {
                        end = end.max(allowed[j].end);
                        j += 1;
                    }
                    i = end;
                    continue;
                }
                if now[i] != shadow[i] {
                    bad += 1;
                    first.get_or_insert((i, shadow[i], now[i]));
                    last = i;
                }
                i += 1;
            }
            if let Some((off, want, got)) = first {
                problems.push(format!(
                    "region at gpa {:#x}: {bad} byte(s) changed outside the device-writable \
                     buffers, first at gpa {:#x} (was {want:#04x}, now {got:#04x}), last at {:#x}",
                    r.gpa,
                    r.gpa + off as u64,
                    r.gpa + last as u64
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}
