//! `preadv`/`pwritev` that finish the job.

use crate::{IoBuf, IoBufMut};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The most buffers one `preadv`/`pwritev` call takes (`IOV_MAX` on Linux).
pub(crate) const IOV_MAX: usize = 1024;

/// What `O_DIRECT` asks of the transfers on a file: buffer addresses
/// aligned to `mem` bytes, file offsets and lengths to `offset` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectAlign {
    /// Alignment of each buffer's address in memory.
    pub mem: u64,
    /// Alignment of the file offset and of each buffer's length.
    pub offset: u64,
}

impl DirectAlign {
    /// No requirement: the identity of [`max`](Self::max).
    pub const NONE: DirectAlign = DirectAlign { mem: 1, offset: 1 };

    /// What to assume when the file system does not say (kernels before
    /// 6.1, file systems that do not report it): 4 KiB covers every logical
    /// block size disks use today, 512 bytes every DMA alignment.
    pub const FALLBACK: DirectAlign = DirectAlign {
        mem: 512,
        offset: 4096,
    };

    /// What `file`'s file system asks, from `statx(STATX_DIOALIGN)`; the
    /// [`FALLBACK`](Self::FALLBACK) when it does not say.
    pub fn of(file: &File) -> DirectAlign {
        // SAFETY: statx only writes into `stx`, a plain-data struct for
        // which all zeros is a valid value.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: an empty path with AT_EMPTY_PATH names the open
        // descriptor; `stx` is valid for writes.
        let rc = unsafe {
            libc::statx(
                file.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_DIOALIGN,
                &mut stx,
            )
        };
        let reported = rc == 0
            && stx.stx_mask & libc::STATX_DIOALIGN != 0
            && stx.stx_dio_mem_align != 0
            && stx.stx_dio_offset_align != 0;
        if !reported {
            return DirectAlign::FALLBACK;
        }
        DirectAlign {
            mem: u64::from(stx.stx_dio_mem_align),
            offset: u64::from(stx.stx_dio_offset_align),
        }
    }

    /// The stricter of both, for transfers that may go to either file.
    pub fn max(self, other: DirectAlign) -> DirectAlign {
        DirectAlign {
            mem: self.mem.max(other.mem),
            offset: self.offset.max(other.offset),
        }
    }

    /// Whether a transfer at file `offset` into or from `bufs` (address and
    /// length of each) meets these alignments.
    pub fn allows(&self, offset: u64, mut bufs: impl Iterator<Item = (usize, usize)>) -> bool {
        offset.is_multiple_of(self.offset)
            && bufs.all(|(addr, len)| {
                (addr as u64).is_multiple_of(self.mem) && (len as u64).is_multiple_of(self.offset)
            })
    }
}

/// Reads exactly `total_len_mut(bufs)` bytes from `file` at `offset` into
/// `bufs`, retrying short reads and `EINTR`. Reaching the end of the file
/// first is an [`io::ErrorKind::UnexpectedEof`] error naming the offset.
pub fn pread_exact_vectored(
    file: &File,
    offset: u64,
    mut bufs: &mut [IoBufMut<'_>],
) -> io::Result<()> {
    IoBufMut::advance_slices(&mut bufs, 0);
    let fd = file.as_raw_fd();
    transfer_all(
        bufs,
        offset,
        // SAFETY: every buffer is valid for writes for the duration of the
        // call (`IoBufMut`'s contract).
        |bufs, cnt, off| unsafe { libc::preadv(fd, IoBufMut::as_iovecs(bufs).as_ptr(), cnt, off) },
        IoBufMut::advance_slices,
        |offset| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file ends before offset {offset}"),
            )
        },
    )
}

/// Writes all of `bufs` to `file` at `offset`, retrying short writes and
/// `EINTR`.
pub fn pwrite_all_vectored(file: &File, offset: u64, mut bufs: &mut [IoBuf<'_>]) -> io::Result<()> {
    IoBuf::advance_slices(&mut bufs, 0);
    let fd = file.as_raw_fd();
    transfer_all(
        bufs,
        offset,
        // SAFETY: every buffer is valid for reads for the duration of the
        // call (`IoBuf`'s contract).
        |bufs, cnt, off| unsafe { libc::pwritev(fd, IoBuf::as_iovecs(bufs).as_ptr(), cnt, off) },
        IoBuf::advance_slices,
        |_| io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing"),
    )
}

/// Calls `syscall` on the first `IOV_MAX` buffers at the current offset
/// until every buffer is done, advancing past short transfers and retrying
/// `EINTR`; a transfer of nothing is `on_zero(offset)`.
fn transfer_all<T>(
    mut bufs: &mut [T],
    mut offset: u64,
    syscall: impl Fn(&[T], libc::c_int, libc::off_t) -> isize,
    advance: fn(&mut &mut [T], usize),
    on_zero: impl Fn(u64) -> io::Error,
) -> io::Result<()> {
    while !bufs.is_empty() {
        let cnt = bufs.len().min(IOV_MAX) as libc::c_int;
        match syscall(bufs, cnt, offset as libc::off_t) {
            n if n > 0 => {
                offset += n as u64;
                advance(&mut bufs, n as usize);
            }
            0 => return Err(on_zero(offset)),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

/// Fills every buffer with zeros.
pub fn zero_fill(bufs: &mut [IoBufMut<'_>]) {
    for buf in bufs {
        buf.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_and_writes_across_buffers() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7u8; 100]).unwrap();
        let (a, b) = ([1u8; 3], [2u8; 1500]);
        pwrite_all_vectored(&file, 10, &mut [IoBuf::new(&a), IoBuf::new(&b)]).unwrap();
        let (mut x, mut y) = ([0u8; 12], [0u8; 1500]);
        pread_exact_vectored(
            &file,
            1,
            &mut [IoBufMut::new(&mut x), IoBufMut::new(&mut y)],
        )
        .unwrap();
        assert_eq!(&x[..9], &[7u8; 9]);
        assert_eq!(&x[9..], &[1u8; 3]);
        assert_eq!(&y[..1499], &[2u8; 1499][..]);
        assert_eq!(y[1499], 2);
    }

    #[test]
    fn short_file_is_unexpected_eof() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7u8; 100]).unwrap();
        let mut buf = [0u8; 50];
        let err = pread_exact_vectored(&file, 80, &mut [IoBufMut::new(&mut buf)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("100"), "{err}");
    }

    #[test]
    fn empty_lists_do_nothing() {
        let file = tempfile::tempfile().unwrap();
        pread_exact_vectored(&file, 0, &mut []).unwrap();
        pwrite_all_vectored(&file, 0, &mut []).unwrap();
        let mut empty = [0u8; 0];
        pread_exact_vectored(&file, 5, &mut [IoBufMut::new(&mut empty)]).unwrap();
    }

    #[test]
    fn the_file_system_reports_powers_of_two() {
        // On the file system the sources (and benchmarks) live on, not /tmp.
        let file = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let align = DirectAlign::of(&file);
        for value in [align.mem, align.offset] {
            assert!(value.is_power_of_two() && value <= 1 << 16, "{align:?}");
        }
    }

    #[test]
    fn allows_checks_offset_addresses_and_lengths() {
        let a = DirectAlign {
            mem: 512,
            offset: 4096,
        };
        assert!(a.allows(8192, [(1024, 4096), (512, 8192)].into_iter()));
        assert!(!a.allows(512, [(1024, 4096)].into_iter()), "offset");
        assert!(!a.allows(4096, [(1000, 4096)].into_iter()), "address");
        assert!(!a.allows(4096, [(1024, 512)].into_iter()), "length");
        assert!(DirectAlign::NONE.allows(3, [(7, 5)].into_iter()));
        assert_eq!(
            DirectAlign::NONE.max(a).max(DirectAlign {
                mem: 4096,
                offset: 512
            }),
            DirectAlign {
                mem: 4096,
                offset: 4096
            }
        );
    }
}
