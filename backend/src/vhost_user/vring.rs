//! One virtqueue as the device sees it: the split ring in guest memory, the
//! frontend's kick, call and error eventfds, and the queue's part of the
//! inflight region.
//!
//! The ring belongs to the guest, which may write anything into it. Every
//! way it can be broken — an available index more than a ring ahead of the
//! device's, rings outside guest memory, a head the ring cannot hold — ends
//! in [`Vring::pop`] or [`Vring::add_used`] noticing once, logging one line,
//! telling the frontend through the error eventfd and stopping the queue for
//! good (until the frontend sets it up again). A broken ring is never
//! retried: retrying is what used to spin a worker at full speed.

use super::inflight::{InflightError, InflightQueue};
use crate::device::request::Request;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write as _};
use std::sync::atomic::Ordering;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// One virtqueue.
pub struct Vring {
    index: u16,
    queue: Queue,
    /// The frontend's eventfds (checked to be eventfds, non-blocking).
    kick: Option<File>,
    call: Option<File>,
    err: Option<File>,
    /// Whether the frontend enabled the ring (SET_VRING_ENABLE).
    enabled: bool,
    /// Whether the ring runs: it starts with its kick fd and stops at
    /// GET_VRING_BASE.
    started: bool,
    /// Set once the ring was found broken; nothing touches it afterwards.
    broken: bool,
    inflight: Option<InflightQueue>,
    /// Heads a previous process left in flight, to run before the ring's
    /// new requests, oldest first.
    resubmit: VecDeque<u16>,
}

impl Vring {
    /// Queue `index`, of at most `max_size` entries, not yet set up.
    pub fn new(index: u16, max_size: u16) -> io::Result<Self> {
        let queue = Queue::new(max_size).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self {
            index,
            queue,
            kick: None,
            call: None,
            err: None,
            enabled: false,
            started: false,
            broken: false,
            inflight: None,
            resubmit: VecDeque::new(),
        })
    }

    /// Sets the ring's size; only powers of two up to the maximum, as the
    /// split ring's layout requires.
    pub fn set_size(&mut self, size: u32) -> Result<(), String> {
        let max = self.queue.max_size();
        let ok = u16::try_from(size)
            .ok()
            .filter(|s| s.is_power_of_two() && *s <= max);
        match ok {
            Some(size) if self.queue.try_set_size(size).is_ok() => Ok(()),
            _ => Err(format!(
                "queue {}: size {size} is not a power of two of at most {max}",
                self.index
            )),
        }
    }

    /// Sets where the rings lie in guest memory.
    pub fn set_addresses(&mut self, desc: u64, avail: u64, used: u64) {
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(desc);
        self.queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(avail);
        self.queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(used);
        self.queue.set_used_ring_address(lo, hi);
    }

    /// Sets where the device takes the next request from the available
    /// ring.
    pub fn set_base(&mut self, base: u16) {
        self.queue.set_next_avail(base);
    }

    /// Where the device would take its next request.
    pub fn base(&self) -> u16 {
        self.queue.next_avail()
    }

    /// Turns EVENT_IDX on or off.
    pub fn set_event_idx(&mut self, on: bool) {
        self.queue.set_event_idx(on);
    }

    /// Whether the driver asked for EVENT_IDX.
    pub fn event_idx(&self) -> bool {
        self.queue.event_idx_enabled()
    }

    /// Sets the eventfd the driver kicks when it adds requests.
    pub fn set_kick(&mut self, kick: Option<File>) {
        self.kick = kick;
    }

    /// The eventfd the driver kicks, if the frontend sent one.
    pub fn kick(&self) -> Option<&File> {
        self.kick.as_ref()
    }

    /// Sets the eventfd that tells the driver requests completed.
    pub fn set_call(&mut self, call: Option<File>) {
        self.call = call;
    }

    /// Sets the eventfd that tells the frontend the ring is broken.
    pub fn set_err(&mut self, err: Option<File>) {
        self.err = err;
    }

    /// Enables or disables the ring (SET_VRING_ENABLE).
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    /// Whether [`start`](Self::start) ran since the ring was last stopped.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Whether requests may be taken from the ring now.
    pub fn runnable(&self) -> bool {
        self.started && self.enabled && !self.broken
    }

    /// Starts the ring over `mem`: checks that its parts lie in guest
    /// memory, resumes from the inflight region if there is one, and tells
    /// the driver about everything already on the used ring — a previous
    /// process may have died between putting a request there and saying
    /// so, and with EVENT_IDX the driver would then wait forever.
    pub fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        inflight: Option<InflightQueue>,
    ) -> Result<(), InflightError> {
        self.started = true;
        self.broken = false;
        self.resubmit.clear();
        self.queue.set_ready(true);
        if !self.queue.is_valid(mem) {
            self.mark_broken("its rings do not lie in guest memory");
            return Ok(());
        }
        let used = match self.queue.used_idx(mem, Ordering::Acquire) {
            Ok(used) => used.0,
            Err(err) => {
                self.mark_broken(format_args!("cannot read the used index: {err}"));
                return Ok(());
            }
        };
        // The used ring is where the driver last saw the device; continue
        // there (a new driver starts at 0 on both sides).
        self.queue.set_next_used(used);
        self.inflight = inflight;
        if let Some(inflight) = &mut self.inflight {
            // A fresh region keeps the base the frontend set; one a previous
            // backend used says where that backend was.
            let Some(resume) = inflight.start(used, self.queue.size())? else {
                self.signal();
                return Ok(());
            };
            if !resume.resubmit.is_empty() {
                tracing::info!(
                    queue = self.index,
                    requests = resume.resubmit.len(),
                    "resubmitting the requests a previous backend left in flight"
                );
            }
            self.queue.set_next_avail(resume.next_avail);
            self.resubmit = resume.resubmit.into();
        }
        self.signal();
        Ok(())
    }

    /// Stops the ring (GET_VRING_BASE, reset, disconnect): the frontend
    /// takes it back, with its eventfds.
    pub fn stop(&mut self) {
        self.started = false;
        self.queue.set_ready(false);
        self.kick = None;
        self.call = None;
        self.inflight = None;
        self.resubmit.clear();
    }

    /// Forgets everything the frontend set (RESET_DEVICE, RESET_OWNER).
    pub fn reset(&mut self) {
        self.stop();
        self.queue.reset();
        self.err = None;
        self.enabled = false;
        self.broken = false;
    }

    /// Takes the next request: first what a previous backend left in
    /// flight, then the available ring. `None` when there is nothing, or
    /// when the ring is broken (which this notices and reports once).
    pub fn pop(&mut self, mem: &GuestMemoryMmap) -> Option<Request> {
        if !self.runnable() {
            return None;
        }
        let table = GuestAddress(self.queue.desc_table());
        let size = self.queue.size();
        if let Some(head) = self.resubmit.pop_front() {
            return Some(Request::walk(mem, table, size, head));
        }
        let head = match self.next_head(mem) {
            Ok(Some(head)) => head,
            Ok(None) => return None,
            Err(why) => {
                self.mark_broken(why);
                return None;
            }
        };
        if let Some(inflight) = &mut self.inflight {
            inflight.begin(head);
        }
        Some(Request::walk(mem, table, size, head))
    }

    /// Takes the next head from the available ring, if the driver made one
    /// available; an error if the ring cannot be what a driver wrote.
    fn next_head(&mut self, mem: &GuestMemoryMmap) -> Result<Option<u16>, String> {
        let ring = GuestAddress(self.queue.avail_ring());
        let size = self.queue.size();
        let next = self.queue.next_avail();
        let avail = self
            .queue
            .avail_idx(mem, Ordering::Acquire)
            .map_err(|e| format!("cannot read its available index: {e}"))?
            .0;
        let pending = avail.wrapping_sub(next);
        if pending == 0 {
            return Ok(None);
        }
        if pending > size {
            return Err(format!(
                "its available index {avail} is {pending} entries ahead of the device's {next}, \
                 in a ring of {size}"
            ));
        }
        let slot = ring
            .checked_add(4 + 2 * u64::from(next % size))
            .ok_or("its available ring lies past the address space")?;
        let head: u16 = mem
            .load(slot, Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|e| format!("cannot read its available ring: {e}"))?;
        self.queue.set_next_avail(next.wrapping_add(1));
        Ok(Some(head))
    }

    /// Whether the driver made requests available that the device has not
    /// taken (false for a ring that is not running).
    pub fn has_available(&self, mem: &GuestMemoryMmap) -> bool {
        self.runnable()
            && (!self.resubmit.is_empty()
                || self
                    .queue
                    .avail_idx(mem, Ordering::Acquire)
                    .is_ok_and(|idx| idx.0 != self.queue.next_avail()))
    }

    /// Puts a completed request on the used ring; false if it could not
    /// (the ring stopped or broke meanwhile, or the head is not the ring's).
    pub fn add_used(&mut self, mem: &GuestMemoryMmap, head: u16, len: u32) -> bool {
        // A ring the frontend took back is no longer ours to write; its
        // requests stay in the inflight region for the next start.
        if !self.started || self.broken {
            return false;
        }
        if let Some(inflight) = &mut self.inflight {
            inflight.pre_put(head);
        }
        match self.queue.add_used(mem, head, len) {
            Ok(()) => {
                if let Some(inflight) = &mut self.inflight {
                    inflight.post_put(head, self.queue.next_used());
                }
                true
            }
            Err(err) => {
                tracing::debug!(queue = self.index, head, "cannot complete request: {err}");
                false
            }
        }
    }

    /// Stops the driver's notifications (EVENT_IDX) while the device drains.
    pub fn disable_notification(&mut self, mem: &GuestMemoryMmap) {
        if self.runnable() {
            // An error means the ring left guest memory; popping notices.
            let _ = self.queue.disable_notification(mem);
        }
    }

    /// Asks for notifications again; true if requests arrived meanwhile.
    pub fn enable_notification(&mut self, mem: &GuestMemoryMmap) -> bool {
        self.runnable() && self.queue.enable_notification(mem).unwrap_or(false)
    }

    /// Tells the driver about new used entries if it wants to hear.
    pub fn notify(&mut self, mem: &GuestMemoryMmap) {
        if self.broken || !self.started {
            return;
        }
        if self.queue.needs_notification(mem).unwrap_or(true) {
            self.signal();
        }
    }

    /// Writes the call eventfd. Never blocks: the fd is non-blocking, and a
    /// full counter means the driver has a notification pending anyway.
    pub fn signal(&self) {
        if let Some(call) = &self.call {
            signal_eventfd(call);
        }
    }

    /// Stops the ring for good and says why, once.
    fn mark_broken(&mut self, why: impl std::fmt::Display) {
        if self.broken {
            return;
        }
        self.broken = true;
        tracing::error!(
            queue = self.index,
            "the driver broke the virtqueue ({why}); stopping it until the frontend sets it up again"
        );
        // QEMU reports a write to the error eventfd as "vhost vring error".
        if let Some(err) = &self.err {
            signal_eventfd(err);
        }
    }
}

/// Adds 1 to an eventfd's counter without blocking.
pub fn signal_eventfd(fd: &File) {
    match (&*fd).write(&1u64.to_ne_bytes()) {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
        Err(err) => tracing::debug!("cannot write an eventfd: {err}"),
    }
}
