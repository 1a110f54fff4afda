//! One thread per running virtqueue. It sleeps in epoll on three
//! descriptors — the queue's kick eventfd, its io_uring's completion eventfd
//! and a control eventfd of its own — and never blocks anywhere else: the
//! kick and call eventfds are checked to be eventfds and made non-blocking
//! before a worker sees them, so no frontend can wedge it, and stopping it
//! takes as long as the requests it has in flight.

use crate::device::BlkBackend;
use crate::vhost_user::vring::Vring;
use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const KICK: u64 = 0;
const RING: u64 = 1;
const CONTROL: u64 = 2;

/// What the connection tells a worker.
struct Control {
    /// Written to wake the worker (it then looks at `stop` and at whether
    /// its ring was enabled or disabled).
    event: EventFd,
    stop: AtomicBool,
}

/// A running queue's thread.
pub struct Worker {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread of queue `index`, whose ring has its kick fd.
    pub fn start(
        index: usize,
        backend: Arc<BlkBackend>,
        vring: Arc<Mutex<Vring>>,
    ) -> io::Result<Worker> {
        let kick = vring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kick()
            .ok_or_else(|| io::Error::other("the queue has no kick eventfd"))?
            .try_clone()?;
        let control = Arc::new(Control {
            event: EventFd::new(EFD_NONBLOCK)?,
            stop: AtomicBool::new(false),
        });
        let epoll = Epoll::new()?;
        let add = |fd: RawFd, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(kick.as_raw_fd(), KICK)?;
        add(control.event.as_raw_fd(), CONTROL)?;
        if let Some(ring) = backend.ring_fd(index) {
            add(ring, RING)?;
        }
        let thread = {
            let control = Arc::clone(&control);
            std::thread::Builder::new()
                .name(format!("queue-{index}"))
                .spawn(move || run(index, &backend, &vring, &epoll, &kick, &control))?
        };
        Ok(Worker {
            control,
            thread: Some(thread),
        })
    }

    /// Makes the worker look at its ring again (it was enabled).
    pub fn wake(&self) {
        // Never blocks: a full counter already says "look".
        let _ = self.control.event.write(1);
    }

    /// Stops the thread once it has finished what it has in flight.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("a queue thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The thread's loop: process, sleep, repeat; on stop, finish what is in
/// flight.
fn run(
    index: usize,
    backend: &BlkBackend,
    vring: &Mutex<Vring>,
    epoll: &Epoll,
    kick: &File,
    control: &Control,
) {
    let lock = || vring.lock().unwrap_or_else(PoisonError::into_inner);
    let mut events = [EpollEvent::default(); 3];
    loop {
        if control.stop.load(Ordering::SeqCst) {
            backend.quiesce(index, &mut lock());
            return;
        }
        // A new ring may hold requests (or a previous backend's leftovers)
        // before any kick: look before sleeping, every time.
        backend.process(index, &mut lock());
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::error!(
                    queue = index,
                    "the queue's epoll failed: {err}; stopping it"
                );
                backend.quiesce(index, &mut lock());
                return;
            }
        };
        for event in &events[..n] {
            match event.data() {
                KICK => drain(kick),
                CONTROL => {
                    let _ = control.event.read();
                }
                // The engine clears its own eventfd when it reaps.
                _ => {}
            }
        }
    }
}

/// Empties an eventfd's counter (never blocks: the fd is non-blocking).
fn drain(fd: &File) {
    let mut buf = [0u8; 8];
    let _ = (&*fd).read(&mut buf);
}

/// Checks that `file` is an eventfd and makes it non-blocking, so that
/// neither reading a kick nor writing a call can ever block a worker. A
/// pipe or a socket in its place is refused.
pub fn checked_eventfd(file: File, what: &str) -> Result<File, String> {
    let fd = file.as_raw_fd();
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|e| format!("cannot inspect the {what} fd: {e}"))?;
    if target.as_os_str() != "anon_inode:[eventfd]" {
        return Err(format!(
            "the {what} fd is not an eventfd but {}",
            target.display()
        ));
    }
    // SAFETY: fcntl on a descriptor we own, without pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(format!(
            "cannot make the {what} fd non-blocking: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    #[test]
    fn only_eventfds_are_taken() {
        let (r, _w) = std::io::pipe().unwrap();
        let pipe = File::from(std::os::fd::OwnedFd::from(r));
        let err = checked_eventfd(pipe, "kick").unwrap_err();
        assert!(err.contains("not an eventfd"), "{err}");
        // SAFETY: plain syscall.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor.
        let file = checked_eventfd(unsafe { File::from_raw_fd(fd) }, "call").unwrap();
        // SAFETY: fcntl without pointers.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        // A full read of an empty non-blocking eventfd returns at once.
        drain(&file);
    }
}
