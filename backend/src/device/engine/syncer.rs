//! Group commit: one thread makes the disk durable for every queue.
//!
//! FLUSH requests, and with the write cache off every write, wait for a
//! flush of the disk (an overlay flush is two `fdatasync`s around the map
//! pages). Queue threads hand them to the syncer instead of blocking, so
//! that reads queued behind a FLUSH do not wait for it, and everything
//! handed over while one flush runs shares the next one: with 32 writes in
//! flight, one flush makes all of them durable.
//!
//! Correctness rests on one ordering: a request is handed over only after
//! its own write completed (and, for an overlay, was marked in the map), and
//! a flush covers every write completed before it starts. So a FLUSH
//! covers every write that completed before the FLUSH arrived, and a
//! write-through write is durable when it completes.

use crate::disk::BlockDevice;
use std::io;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use vmm_sys_util::eventfd::EventFd;

/// Where the syncer returns a queue's requests: their table slots and the
/// flush's outcome, with an eventfd that wakes the queue's thread.
pub struct Inbox {
    done: Mutex<Vec<(u32, Result<(), String>)>>,
    event: EventFd,
}

impl Inbox {
    /// An inbox that signals `event` when something arrives.
    pub fn new(event: EventFd) -> Inbox {
        Inbox {
            done: Mutex::new(Vec::new()),
            event,
        }
    }

    /// Moves what has arrived into `out`.
    pub fn take(&self, out: &mut Vec<(u32, Result<(), String>)>) {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        out.append(&mut done);
    }

    /// Whether anything has arrived.
    pub fn is_empty(&self) -> bool {
        self.done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

struct State {
    /// `(queue, slot)` of each request waiting for the next flush.
    waiting: Vec<(usize, u32)>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    disk: Arc<dyn BlockDevice>,
    inboxes: Box<[Arc<Inbox>]>,
}

/// The group-commit thread of one device.
pub struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread; queue `i` gets its results in `inboxes[i]`.
    pub fn start(disk: Arc<dyn BlockDevice>, inboxes: Box<[Arc<Inbox>]>) -> io::Result<Syncer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                waiting: Vec::new(),
                stop: false,
            }),
            wake: Condvar::new(),
            disk,
            inboxes,
        });
        let thread = std::thread::Builder::new()
            .name("ocidisk-sync".into())
            .stack_size(256 * 1024)
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&shared)
            })?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Asks for a flush on behalf of `slot` of queue `queue`; its outcome
    /// arrives in that queue's inbox.
    pub fn request(&self, queue: usize, slot: u32) {
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.waiting.push((queue, slot));
        self.shared.wake.notify_one();
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        {
            let mut state = self
                .shared
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.stop = true;
            self.shared.wake.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared) {
    let mut batch = Vec::new();
    loop {
        {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            while state.waiting.is_empty() && !state.stop {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.waiting.is_empty() {
                return;
            }
            std::mem::swap(&mut batch, &mut state.waiting);
        }
        // Everything taken above completed its own I/O before it was
        // handed over, so this one flush covers all of it.
        let outcome = shared
            .disk
            .flush()
            .map_err(|e| blockio::error_chain(&e).to_string());
        if let Err(err) = &outcome {
            tracing::warn!("flushing the disk failed: {err}");
        }
        let mut signalled = vec![false; shared.inboxes.len()];
        for (queue, slot) in batch.drain(..) {
            let Some(inbox) = shared.inboxes.get(queue) else {
                continue;
            };
            inbox
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((slot, outcome.clone()));
            signalled[queue] = true;
        }
        for (inbox, _) in shared.inboxes.iter().zip(&signalled).filter(|(_, &s)| s) {
            if let Err(err) = inbox.event.write(1) {
                tracing::warn!("cannot wake a queue after a flush: {err}");
            }
        }
    }
}
