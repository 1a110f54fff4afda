//! The vhost-user protocol, owned by ocidisk: the frontend's messages, guest
//! memory, the virtqueues' worker threads and the inflight region.
//!
//! ocidisk speaks the protocol itself rather than through rust-vmm's
//! vhost-user-backend, because both surviving a restart and surviving a
//! hostile frontend need what that crate keeps private: answering the
//! inflight messages, checking memory regions before mapping them, refusing
//! ring sizes and eventfds it would misuse, stopping a broken ring instead
//! of spinning on it, and stopping queues before the socket closes. The
//! `vhost` crate still frames the messages.
//!
//! - [`connection`]: what each message does to the device;
//! - [`memory`]: guest memory regions, checked against their files;
//! - [`vring`]: one virtqueue, its eventfds and its inflight part;
//! - [`worker`]: the thread of a running queue;
//! - [`inflight`]: the region that lets a new process resume the requests a
//!   previous one left in flight.

pub mod connection;
pub mod inflight;
pub mod memory;
pub mod vring;
pub mod worker;

use crate::device::{BlkBackend, GuestMemory};
use connection::Connection;
use rustix::event::{poll, PollFd, PollFlags};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use vhost::vhost_user::{BackendReqHandler, Error as VhostError};

/// How long a frontend may take to send the rest of a message it started,
/// or to take a reply: longer means it is wedged, and the backend moves on.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a connection ended.
#[derive(Debug)]
pub enum Ended {
    /// The frontend closed the socket.
    Disconnected,
    /// The backend was told to stop.
    Stopped,
    /// The frontend broke the protocol or asked for what the device refuses.
    Failed(VhostError),
}

/// One frontend's connection, from its first message to its end.
pub struct Session {
    handler: BackendReqHandler<Mutex<Connection>>,
    connection: Arc<Mutex<Connection>>,
    socket: UnixStream,
    busy: Arc<Busy>,
}

/// Whether the session is inside a message, and since when.
struct Busy {
    epoch: Instant,
    /// Milliseconds since `epoch` when the current message started, plus
    /// one (so that a message at the epoch is not "idle"); 0 between
    /// messages.
    since: AtomicU64,
}

impl Busy {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }
}

/// Cuts a session that is stuck inside one message: the vhost crate
/// retries a socket that would block for ever, so a frontend that stops
/// mid-message or stops reading replies would hold the backend — and its
/// SIGTERM — hostage. Only a stop uses this; a session between messages
/// sees the stop itself and finishes gracefully.
#[derive(Clone)]
pub struct Watchdog {
    socket: Arc<UnixStream>,
    busy: Arc<Busy>,
}

impl Watchdog {
    /// Shuts the socket down if the session has been inside one message
    /// for `patience` or longer; true if it did.
    pub fn cut_if_stuck(&self, patience: Duration) -> bool {
        let since = self.busy.since.load(Ordering::SeqCst);
        if since == 0 || self.busy.now().saturating_sub(since) < patience.as_millis() as u64 {
            return false;
        }
        tracing::warn!("the frontend is stuck in the middle of a message; cutting the connection");
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        true
    }
}

impl Session {
    /// Serves the device `backend` (with guest memory `mem`) to the
    /// frontend at the other end of `socket`.
    pub fn new(socket: UnixStream, backend: Arc<BlkBackend>, mem: GuestMemory) -> io::Result<Self> {
        socket.set_read_timeout(Some(MESSAGE_TIMEOUT))?;
        socket.set_write_timeout(Some(MESSAGE_TIMEOUT))?;
        let connection = Arc::new(Mutex::new(Connection::new(backend, mem)?));
        let handler = BackendReqHandler::from_stream(socket.try_clone()?, Arc::clone(&connection));
        Ok(Self {
            handler,
            connection,
            socket,
            busy: Arc::new(Busy::new()),
        })
    }

    /// What a stop uses to cut this session if a frontend holds it inside
    /// a message.
    pub fn watchdog(&self) -> io::Result<Watchdog> {
        Ok(Watchdog {
            socket: Arc::new(self.socket.try_clone()?),
            busy: Arc::clone(&self.busy),
        })
    }

    /// Handles messages until the frontend disconnects, breaks the
    /// protocol, or `stop` becomes readable.
    pub fn run(&mut self, stop: BorrowedFd<'_>) -> Ended {
        loop {
            match wait_for(self.socket.as_fd(), stop) {
                Ok(false) => return Ended::Stopped,
                Ok(true) => {}
                Err(err) => return Ended::Failed(VhostError::SocketError(err)),
            }
            self.busy.since.store(self.busy.now(), Ordering::SeqCst);
            let handled = self.handler.handle_request();
            self.busy.since.store(0, Ordering::SeqCst);
            match handled {
                Ok(()) => {}
                // A request the device refused: the frontend heard so if it
                // asked for replies, and the connection goes on — unless it
                // waits for a reply with a payload, which a refusal leaves
                // unsent.
                Err(VhostError::ReqHandlerError(err)) => {
                    let unanswered = self
                        .connection
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take_unanswered();
                    if unanswered {
                        return Ended::Failed(VhostError::ReqHandlerError(err));
                    }
                }
                Err(VhostError::Disconnected | VhostError::PartialMessage) => {
                    return Ended::Disconnected
                }
                Err(err) => return Ended::Failed(err),
            }
        }
    }

    /// Stops every queue once it has finished what it has in flight, so
    /// that the frontend finds each request it made available either
    /// answered or still available.
    pub fn stop_queues(&self) {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop_all();
    }
}

/// Waits until `fd` is readable (true) or `stop` is (false; checked
/// first, so a stop wins over more work).
pub fn wait_for(fd: BorrowedFd<'_>, stop: BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [fd, stop].map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN));
    loop {
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
        if !fds[1].revents().is_empty() {
            return Ok(false);
        }
        if !fds[0].revents().is_empty() {
            return Ok(true);
        }
    }
}
