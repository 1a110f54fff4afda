//! One queue's io_uring: submission with backpressure, completion through
//! an eventfd that the queue's worker thread waits on.

use io_uring::{cqueue, opcode, types, IoUring, Probe};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// An io_uring owned by one queue's worker thread.
pub struct Ring {
    ring: IoUring,
    /// Signalled by the kernel whenever a completion is posted (and by the
    /// syncer when it finishes something for this queue).
    event: EventFd,
    /// Operations submitted (or queued for submission) and not yet reaped.
    in_flight: usize,
}

/// What one operation does; the ring fills in the rest.
pub enum Io<'a> {
    /// `preadv` into `iovecs` from `fd` at `offset`.
    Read {
        /// The file to read.
        fd: RawFd,
        /// Where in it to start.
        offset: u64,
        /// The buffers to fill, in order.
        iovecs: &'a [libc::iovec],
    },
    /// `pwritev` from `iovecs` to `fd` at `offset`.
    Write {
        /// The file to write.
        fd: RawFd,
        /// Where in it to start.
        offset: u64,
        /// The buffers to write, in order.
        iovecs: &'a [libc::iovec],
    },
}

impl Ring {
    /// A ring of `entries` submission slots (a power of two), with an
    /// eventfd registered for its completions.
    pub fn new(entries: u32) -> io::Result<Ring> {
        let ring = IoUring::new(entries)?;
        let event = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        Ok(Ring {
            ring,
            event,
            in_flight: 0,
        })
    }

    /// The eventfd that becomes readable when completions are posted.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// The same eventfd, borrowed for `poll` (vmm-sys-util's `EventFd` does
    /// not implement `AsFd`).
    pub fn event_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `self.event` owns the descriptor and outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.event.as_raw_fd()) }
    }

    /// Operations not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues `io` under `user_data`, submitting what is queued first if
    /// the submission queue is full.
    ///
    /// # Safety
    ///
    /// The buffers the iovecs point to must stay valid (and, for reads,
    /// unaliased by Rust references) until the operation's completion is
    /// reaped; the iovec array itself only until the next
    /// [`submit`](Self::submit) returns (the kernel copies it then: every
    /// kernel with `IORING_FEAT_SUBMIT_STABLE`, 5.5 on).
    pub unsafe fn push(&mut self, io: Io<'_>, user_data: u64) -> io::Result<()> {
        let entry = match io {
            Io::Read { fd, offset, iovecs } => {
                opcode::Readv::new(types::Fd(fd), iovecs.as_ptr(), iov_count(iovecs)?)
                    .offset(offset)
                    .build()
            }
            Io::Write { fd, offset, iovecs } => {
                opcode::Writev::new(types::Fd(fd), iovecs.as_ptr(), iov_count(iovecs)?)
                    .offset(offset)
                    .build()
            }
        }
        .user_data(user_data);
        loop {
            // SAFETY: the caller keeps the buffers valid until completion
            // and the iovec array until the next submit.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                break;
            }
            self.submit()?;
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Hands every queued operation to the kernel.
    pub fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The kernel is short of memory for completions; it takes
                // the rest once some have been reaped.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Clears the eventfd, so that the next completion wakes the thread again.
    pub fn clear_event(&self) {
        // Nothing to read (EAGAIN) is as good as reading it.
        let _ = self.event.read();
    }

    /// Takes every posted completion: `(user_data, result)`.
    pub fn reap(&mut self, mut each: impl FnMut(u64, i32)) -> usize {
        let mut n = 0;
        // Collect first: `each` may push new operations.
        let done: smallvec::SmallVec<[cqueue::Entry; 64]> = self.ring.completion().collect();
        for cqe in done {
            self.in_flight = self.in_flight.saturating_sub(1);
            n += 1;
            each(cqe.user_data(), cqe.result());
        }
        n
    }

    /// Whether completions are waiting to be reaped.
    pub fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Submits and blocks until at least one completion is posted.
    pub fn wait(&mut self) -> io::Result<()> {
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn iov_count(iovecs: &[libc::iovec]) -> io::Result<u32> {
    u32::try_from(iovecs.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Checks that this process may use io_uring with the operations the
/// engine needs: it may be missing (old kernel), disabled
/// (`kernel.io_uring_disabled`) or filtered (seccomp).
pub fn probe() -> io::Result<()> {
    let ring = IoUring::new(2)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::Readv::CODE, "READV"),
        (opcode::Writev::CODE, "WRITEV"),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel's io_uring lacks {name}"),
            ));
        }
    }
    Ok(())
}
