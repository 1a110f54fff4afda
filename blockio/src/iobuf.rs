//! Buffers the I/O path reads into and writes from, without claiming that
//! no one else touches them.
//!
//! A request's data buffers live in guest memory. The guest may write that
//! memory at any time (a driver that breaks the virtio rule that a buffer
//! belongs to the device until it is used, or a hostile one), and
//! descriptors may overlap. A `&mut [u8]` (or `std::io::IoSliceMut`, which
//! holds one) promises the compiler the opposite: exclusive access for its
//! lifetime. So guest memory never becomes a Rust reference here: an
//! [`IoBufMut`] or [`IoBuf`] is an address and a length, laid out as the
//! kernel's `iovec`, and the only things done with it are handing it to a
//! system call or the ring, and copying bytes in or out through raw
//! pointers, never reading them back as Rust values.
//!
//! Buffers made from Rust slices ([`IoBufMut::new`], [`IoBuf::new`]) are
//! safe to make and keep their slice's borrow; guest memory is wrapped with
//! the `unsafe` [`IoBufMut::from_raw_parts`] and [`IoBuf::from_raw_parts`],
//! whose callers vouch that the memory stays mapped.

use std::marker::PhantomData;

/// A buffer to fill: the address and length of memory that may be shared.
///
/// Laid out as `libc::iovec`, so a list of them goes to `preadv` or an
/// io_uring read as it is ([`IoBufMut::as_iovecs`]). It cannot be cloned,
/// so a buffer made from a `&mut [u8]` is that slice's only writer.
#[repr(transparent)]
pub struct IoBufMut<'a> {
    iov: libc::iovec,
    _memory: PhantomData<&'a mut [u8]>,
}

/// A buffer to write out: the address and length of memory that may be
/// shared. Laid out as `libc::iovec`.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct IoBuf<'a> {
    iov: libc::iovec,
    _memory: PhantomData<&'a [u8]>,
}

// SAFETY: an `IoBufMut` is either a `&mut [u8]` (which is `Send`) or
// memory whose creator promised, in `from_raw_parts`' contract, that it
// stays valid for writes from any thread for `'a`.
unsafe impl Send for IoBufMut<'_> {}
// SAFETY: a shared `&IoBufMut` gives out only the address and the length;
// writing needs `&mut` or an `unsafe` system call.
unsafe impl Sync for IoBufMut<'_> {}
// SAFETY: an `IoBuf` is either a `&[u8]` (which is `Send` and `Sync`) or
// memory whose creator promised that it stays valid for reads from any
// thread for `'a`; it is never written through.
unsafe impl Send for IoBuf<'_> {}
// SAFETY: as for `Send`: it only ever reads.
unsafe impl Sync for IoBuf<'_> {}

impl<'a> IoBufMut<'a> {
    /// A buffer over `buf`, which it borrows exclusively for `'a`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        IoBufMut {
            iov: libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
            _memory: PhantomData,
        }
    }

    /// A buffer over `len` bytes at `ptr`.
    ///
    /// # Safety
    /// The memory must be valid for writes of `len` bytes, from any thread,
    /// for `'a`, and no Rust reference to any of it may be live during
    /// `'a`. Others may read or write it concurrently by means the compiler
    /// does not see (a guest, the kernel); what they read is then
    /// unspecified, which is their concern, but never this process's.
    pub unsafe fn from_raw_parts(ptr: *mut u8, len: usize) -> Self {
        IoBufMut {
            iov: libc::iovec {
                iov_base: ptr.cast(),
                iov_len: len,
            },
            _memory: PhantomData,
        }
    }

    /// Its first byte's address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.iov.iov_base.cast()
    }

    /// The same memory for a shorter lifetime, so that a borrowed list can
    /// hand out pieces of its buffers.
    pub fn reborrow(&mut self) -> IoBufMut<'_> {
        IoBufMut {
            iov: self.iov,
            _memory: PhantomData,
        }
    }

    /// Copies the first `len()` bytes of `src` into it (fewer if `src` is
    /// shorter) and returns how many it copied.
    pub fn copy_from(&mut self, src: &[u8]) -> usize {
        let n = self.len().min(src.len());
        // SAFETY: `n` bytes fit both; the buffer is valid for writes (its
        // contract) and `src` for reads. `ptr::copy` allows overlap, which
        // only a caller that broke `from_raw_parts`' contract could cause.
        // Plain rather than volatile writes: this process never reads the
        // bytes back, so there is nothing the compiler could keep stale,
        // and a guest writing the same memory meanwhile garbles only its
        // own request, exactly as it would under a `preadv`.
        unsafe { std::ptr::copy(src.as_ptr(), self.as_ptr(), n) };
        n
    }

    /// Sets every byte to `byte`.
    pub fn fill(&mut self, byte: u8) {
        // SAFETY: the buffer is valid for writes of its length (its
        // contract); plain writes for the reason `copy_from` gives.
        unsafe { std::ptr::write_bytes(self.as_ptr(), byte, self.len()) };
    }
}

impl<'a> IoBuf<'a> {
    /// A buffer over `buf`, which it borrows for `'a`.
    pub fn new(buf: &'a [u8]) -> Self {
        IoBuf {
            iov: libc::iovec {
                iov_base: buf.as_ptr().cast_mut().cast(),
                iov_len: buf.len(),
            },
            _memory: PhantomData,
        }
    }

    /// A buffer over `len` bytes at `ptr`.
    ///
    /// # Safety
    /// The memory must be valid for reads of `len` bytes, from any thread,
    /// for `'a`, and no `&mut` reference to any of it may be live during
    /// `'a`. Others may write it concurrently by means the compiler does
    /// not see (a guest); the bytes read are then unspecified, and are
    /// only ever passed on, never interpreted.
    pub unsafe fn from_raw_parts(ptr: *const u8, len: usize) -> Self {
        IoBuf {
            iov: libc::iovec {
                iov_base: ptr.cast_mut().cast(),
                iov_len: len,
            },
            _memory: PhantomData,
        }
    }

    /// Its first byte's address.
    pub fn as_ptr(&self) -> *const u8 {
        self.iov.iov_base.cast_const().cast()
    }

    /// Copies its first `dst.len()` bytes into `dst` (fewer if it is
    /// shorter) and returns how many it copied.
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let n = self.len().min(dst.len());
        // SAFETY: `n` bytes fit both; the buffer is valid for reads (its
        // contract) and `dst`, a `&mut`, cannot overlap memory the
        // contract forbids references to.
        unsafe { std::ptr::copy(self.as_ptr(), dst.as_mut_ptr(), n) };
        n
    }

    /// Its bytes, copied.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len()];
        self.copy_to(&mut out);
        out
    }
}

/// What both kinds of buffer have: their length, cutting them, and the
/// list as `iovec`s.
macro_rules! iovec_methods {
    ($buf:ident) => {
        impl<'a> $buf<'a> {
            /// Its length in bytes.
            pub fn len(&self) -> usize {
                self.iov.iov_len
            }

            /// Whether it has no bytes.
            pub fn is_empty(&self) -> bool {
                self.iov.iov_len == 0
            }

            /// Splits it in two at `mid`; both halves inherit its contract.
            ///
            /// # Panics
            /// If `mid > self.len()`.
            pub fn split_at(self, mid: usize) -> ($buf<'a>, $buf<'a>) {
                let (head, tail) = split_iov(self.iov, mid);
                let half = |iov| $buf {
                    iov,
                    _memory: PhantomData,
                };
                (half(head), half(tail))
            }

            /// Drops its first `n` bytes.
            ///
            /// # Panics
            /// If `n > self.len()`.
            pub fn advance(&mut self, n: usize) {
                self.iov = split_iov(self.iov, n).1;
            }

            /// Drops the first `n` bytes of a list: whole buffers from the
            /// front (empty ones too), then the start of the next one.
            ///
            /// # Panics
            /// If the list holds fewer than `n` bytes.
            pub fn advance_slices(bufs: &mut &mut [$buf<'a>], mut n: usize) {
                let skip = bufs
                    .iter()
                    .take_while(|b| {
                        let whole = b.len() <= n;
                        if whole {
                            n -= b.len();
                        }
                        whole
                    })
                    .count();
                *bufs = &mut std::mem::take(bufs)[skip..];
                match bufs.first_mut() {
                    Some(first) => first.advance(n),
                    None => assert!(n == 0, "advance past the end of the buffers"),
                }
            }

            /// The list as the kernel's `iovec`s, for `preadv`/`pwritev` and
            /// the ring.
            pub fn as_iovecs<'s>(bufs: &'s [$buf<'_>]) -> &'s [libc::iovec] {
                // SAFETY: the type is `repr(transparent)` over `libc::iovec`.
                unsafe { std::slice::from_raw_parts(bufs.as_ptr().cast(), bufs.len()) }
            }
        }

        impl std::fmt::Debug for $buf<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let name = stringify!($buf);
                write!(f, "{name}({:p}, {})", self.iov.iov_base, self.iov.iov_len)
            }
        }
    };
}

iovec_methods!(IoBufMut);
iovec_methods!(IoBuf);

/// `iov` cut at `mid`: the first `mid` bytes and the rest.
///
/// # Panics
/// If `mid` exceeds its length (callers' lengths are their own
/// arithmetic, never a guest's).
fn split_iov(iov: libc::iovec, mid: usize) -> (libc::iovec, libc::iovec) {
    assert!(mid <= iov.iov_len, "split at {mid} of {}", iov.iov_len);
    let head = libc::iovec {
        iov_base: iov.iov_base,
        iov_len: mid,
    };
    let tail = libc::iovec {
        // Within the buffer (or one past its end), so no wrapping happens;
        // `wrapping_add` only spares an `unsafe` block.
        iov_base: iov.iov_base.cast::<u8>().wrapping_add(mid).cast(),
        iov_len: iov.iov_len - mid,
    };
    (head, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_fill_and_split_stay_in_their_bytes() {
        let mut mem = [0u8; 10];
        {
            let (mut a, mut b) = IoBufMut::new(&mut mem[2..8]).split_at(2);
            assert_eq!(a.copy_from(&[1, 2, 3]), 2);
            b.fill(9);
            b.advance(3);
            assert_eq!(b.copy_from(&[5]), 1);
        }
        assert_eq!(mem, [0, 0, 1, 2, 9, 9, 9, 5, 0, 0]);
    }

    #[test]
    fn advance_slices_skips_whole_buffers_then_part_of_one() {
        let (mut x, mut y, mut z) = ([0u8; 2], [0u8; 3], [0u8; 4]);
        let mut list = [
            IoBufMut::new(&mut x),
            IoBufMut::new(&mut y),
            IoBufMut::new(&mut z),
        ];
        let mut rest: &mut [IoBufMut<'_>] = &mut list;
        IoBufMut::advance_slices(&mut rest, 6);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].len(), 3);
        IoBufMut::advance_slices(&mut rest, 3);
        assert!(rest.is_empty());

        let data = [1u8, 2, 3, 4, 5];
        let mut list = [IoBuf::new(&data[..2]), IoBuf::new(&data[2..])];
        let mut rest: &mut [IoBuf<'_>] = &mut list;
        IoBuf::advance_slices(&mut rest, 2);
        assert_eq!(rest[0].to_vec(), [3, 4, 5]);
    }

    #[test]
    fn iovecs_are_the_buffers() {
        let mut mem = [0u8; 8];
        let ptr = mem.as_mut_ptr();
        let list = [IoBufMut::new(&mut mem[..3])];
        let iov = IoBufMut::as_iovecs(&list);
        assert_eq!((iov[0].iov_base.cast::<u8>(), iov[0].iov_len), (ptr, 3));
    }
}
