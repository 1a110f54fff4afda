//! The vhost-user side of the device: [`BlkBackend`] implements
//! [`VhostUserBackend`] for one frontend connection.
//!
//! All methods take `&self`; the state the frontend changes (acked features,
//! write-back, guest memory) sits behind atomics and a lock that is taken once
//! per batch of requests, so that every virtqueue runs on its own worker
//! thread without contention.

use crate::device::config::{DeviceConfig, WCE_OFFSET};
use crate::device::request::RequestContext;
use crate::disk::BlockDevice;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_FLUSH};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// Guest memory as the vhost-user daemon shares it with the backend.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Request counters of one connection, for the log line at disconnect.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests completed.
    pub requests: AtomicU64,
    /// Requests completed with an error status (or no status at all).
    pub errors: AtomicU64,
}

/// A virtio-blk device for one vhost-user connection.
pub struct BlkBackend {
    disk: Arc<dyn BlockDevice>,
    config: DeviceConfig,
    mem: RwLock<GuestMemory>,
    event_idx: AtomicBool,
    writeback: AtomicBool,
    stats: Stats,
}

impl BlkBackend {
    /// A device serving `disk` as `config` describes, with `mem` the guest
    /// memory the daemon fills in.
    pub fn new(disk: Arc<dyn BlockDevice>, config: DeviceConfig, mem: GuestMemory) -> Self {
        let writeback = !config.writethrough;
        disk.set_writeback(writeback);
        Self {
            disk,
            config,
            mem: RwLock::new(mem),
            event_idx: AtomicBool::new(false),
            writeback: AtomicBool::new(writeback),
            stats: Stats::default(),
        }
    }

    /// The connection's request counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The guest's current write-back setting.
    pub fn writeback(&self) -> bool {
        self.writeback.load(Ordering::Relaxed)
    }

    fn set_writeback(&self, on: bool) {
        self.writeback.store(on, Ordering::Relaxed);
        self.disk.set_writeback(on);
    }

    fn memory(&self) -> GuestMemory {
        // A poisoned lock still holds a valid memory map.
        self.mem.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Completes every available request of `vring`, then notifies the
    /// driver once if it wants to be.
    fn process_queue(&self, vring: &VringRwLock<GuestMemory>) {
        let atomic = self.memory();
        let mem = atomic.memory();
        let ctx = RequestContext {
            disk: &*self.disk,
            serial: &self.config.serial,
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        let mut completed = false;
        loop {
            if event_idx {
                // Errors here mean the ring is outside guest memory; popping
                // will find nothing then, so the loop ends.
                let _ = queue.disable_notification(&*mem);
            }
            while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
                let done = ctx.process(&mem, chain);
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                if done.status != Some(0) {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                match queue.add_used(&*mem, done.head, done.used_len) {
                    Ok(()) => completed = true,
                    Err(err) => tracing::debug!(head = done.head, "cannot complete request: {err}"),
                }
            }
            // With EVENT_IDX, re-enabling notifications reports requests
            // that arrived meanwhile: process them before sleeping.
            if !event_idx || !queue.enable_notification(&*mem).unwrap_or(false) {
                break;
            }
        }
        if completed && queue.needs_notification(&*mem).unwrap_or(true) {
            if let Err(err) = state.signal_used_queue() {
                tracing::debug!("cannot notify the driver: {err}");
            }
        }
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock<GuestMemory>;

    fn num_queues(&self) -> usize {
        usize::from(self.config.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.config.queue_size)
    }

    fn features(&self) -> u64 {
        self.config.features()
    }

    fn acked_features(&self, features: u64) {
        // Without FLUSH the driver cannot make writes durable, so every
        // write must be; with FLUSH but without CONFIG_WCE it keeps the
        // device's initial mode.
        let writeback = if features & (1 << VIRTIO_BLK_F_FLUSH) == 0 {
            false
        } else if features & (1 << VIRTIO_BLK_F_CONFIG_WCE) == 0 {
            !self.config.writethrough
        } else {
            self.writeback()
        };
        self.set_writeback(writeback);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn reset_device(&self) {
        self.set_writeback(!self.config.writethrough);
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // The vhost-user message bounds `size`; this bounds it again so a
        // broken frontend cannot make the backend allocate much.
        self.config
            .read_config(self.writeback(), offset, size.min(4096))
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only the write-back byte is writable; writes elsewhere are ignored
        // as the spec asks of read-only fields.
        let wce = (WCE_OFFSET as u64)
            .checked_sub(u64::from(offset))
            .and_then(|i| buf.get(usize::try_from(i).ok()?));
        if let Some(&wce) = wce {
            self.set_writeback(wce != 0);
        }
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemory) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = mem;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker thread per queue, so queues run in parallel.
        (0..self.config.num_queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Each worker thread gets its own event, so that the daemon can stop
        // them when the connection ends. Without one they would never exit.
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(err) => {
                tracing::error!("cannot create a worker exit event: {err}");
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        // Each thread owns one queue, so its event is always 0; anything else
        // is ignored rather than treated as fatal.
        if let Some(vring) = vrings.get(usize::from(device_event)) {
            self.process_queue(vring);
        }
        Ok(())
    }
}
