//! One frontend connection: the vhost-user messages that set up guest
//! memory and the virtqueues, and the worker threads of the running queues.
//!
//! The `vhost` crate reads and frames the messages
//! ([`vhost::vhost_user::BackendReqHandler`]); what they mean for this device is decided here.
//! Every value a frontend sends is checked before it is used: queue indexes
//! and sizes, memory regions against their files, eventfds against being
//! eventfds, inflight regions against their layout. A refused message is
//! logged with its reason and answered with a failure if the frontend asked
//! for replies (REPLY_ACK); the connection goes on. A message that breaks
//! the protocol's framing ends the connection, and the backend waits for
//! the next frontend.

use super::inflight::{InflightQueue, InflightRegion};
use super::memory::{Memory, RegionInfo, MAX_MEM_SLOTS};
use super::vring::Vring;
use super::worker::{checked_eventfd, Worker};
use crate::device::{BlkBackend, GuestMemory};
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Error as VhostError, GpuBackend, Result as VhostResult, VhostUserBackendReqHandlerMut,
    VhostUserVirtioFeatures,
};
use vhost::VhostUserMemoryRegionBase;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

/// The protocol features this backend implements.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
}

/// The device's side of one frontend connection.
pub struct Connection {
    backend: Arc<BlkBackend>,
    /// Guest memory as the queues see it (shared with `backend`).
    mem: GuestMemory,
    memory: Memory,
    vrings: Vec<Arc<Mutex<Vring>>>,
    workers: Vec<Option<Worker>>,
    inflight: Option<Arc<InflightRegion>>,
    acked_features: u64,
    acked_protocol_features: u64,
    /// Set when a refused message expected a reply with a payload: the
    /// vhost crate then sends nothing, so the frontend would wait for ever;
    /// the connection must end instead.
    unanswered: bool,
}

/// Logs why a message is refused and turns it into the protocol's error.
fn refuse(what: impl std::fmt::Display) -> VhostError {
    tracing::warn!("refusing the frontend's request: {what}");
    VhostError::ReqHandlerError(io::Error::other(what.to_string()))
}

impl Connection {
    /// A connection to the device `backend`, whose guest memory is `mem`.
    pub fn new(backend: Arc<BlkBackend>, mem: GuestMemory) -> io::Result<Self> {
        let max = backend.max_queue_size();
        let vrings = (0..backend.num_queues())
            .map(|i| {
                let index = u16::try_from(i).map_err(io::Error::other)?;
                Ok(Arc::new(Mutex::new(Vring::new(index, max)?)))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let workers = vrings.iter().map(|_| None).collect();
        Ok(Self {
            backend,
            mem,
            memory: Memory::default(),
            vrings,
            workers,
            inflight: None,
            acked_features: 0,
            acked_protocol_features: 0,
            unanswered: false,
        })
    }

    /// Whether the last refusal left the frontend without the reply it
    /// waits for (and so must end the connection).
    pub fn take_unanswered(&mut self) -> bool {
        std::mem::take(&mut self.unanswered)
    }

    /// Refuses a message that expects a reply with a payload.
    fn refuse_unanswered(&mut self, what: impl std::fmt::Display) -> VhostError {
        self.unanswered = true;
        refuse(what)
    }

    fn vring(&self, index: u32) -> VhostResult<&Arc<Mutex<Vring>>> {
        self.vrings
            .get(index as usize)
            .ok_or_else(|| refuse(format_args!("there is no queue {index}")))
    }

    fn lock(vring: &Mutex<Vring>) -> std::sync::MutexGuard<'_, Vring> {
        vring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops queue `index`'s worker (after it finished what it has in
    /// flight) and the ring.
    fn stop_queue(&mut self, index: usize) {
        if let Some(worker) = self.workers.get_mut(index).and_then(Option::take) {
            worker.stop();
        }
        if let Some(vring) = self.vrings.get(index) {
            Self::lock(vring).stop();
        }
    }

    /// Stops every queue: on a reset, a disconnect or a graceful stop.
    pub fn stop_all(&mut self) {
        for index in 0..self.vrings.len() {
            self.stop_queue(index);
        }
    }

    /// Starts queue `index` if it has what it needs: guest memory and a
    /// kick eventfd.
    fn start_queue(&mut self, index: usize) -> VhostResult<()> {
        if self.memory.is_empty() {
            return Err(refuse(format_args!(
                "queue {index} started before any guest memory was set"
            )));
        }
        let inflight = self.inflight_queue(index)?;
        let vring = Arc::clone(&self.vrings[index]);
        {
            let mut ring = Self::lock(&vring);
            let mem = self.mem.memory();
            ring.start(&mem, inflight)
                .map_err(|e| refuse(format_args!("queue {index}: {e}")))?;
        }
        let worker = Worker::start(index, Arc::clone(&self.backend), vring)
            .map_err(VhostError::ReqHandlerError)?;
        self.workers[index] = Some(worker);
        Ok(())
    }

    /// Queue `index`'s part of the inflight region, if the frontend set one
    /// up.
    fn inflight_queue(&self, index: usize) -> VhostResult<Option<InflightQueue>> {
        let negotiated =
            self.acked_protocol_features & VhostUserProtocolFeatures::INFLIGHT_SHMFD.bits() != 0;
        let (true, Some(region)) = (negotiated, &self.inflight) else {
            return Ok(None);
        };
        let queue = u16::try_from(index)
            .ok()
            .and_then(|i| region.queue(i))
            .ok_or_else(|| {
                refuse(format_args!(
                    "the inflight region has {} queues, not queue {index}",
                    region.num_queues()
                ))
            })?;
        Ok(Some(queue))
    }

    fn publish(&mut self, mem: GuestMemoryMmap) {
        // Queues pick the new table up at their next request.
        self.mem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(mem);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl VhostUserBackendReqHandlerMut for Connection {
    fn set_owner(&mut self) -> VhostResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostResult<()> {
        self.reset_device()?;
        self.acked_protocol_features = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> VhostResult<()> {
        self.stop_all();
        for vring in &self.vrings {
            Self::lock(vring).reset();
        }
        self.acked_features = 0;
        self.backend.reset_device();
        Ok(())
    }

    fn get_features(&mut self) -> VhostResult<u64> {
        Ok(self.backend.features())
    }

    fn set_features(&mut self, features: u64) -> VhostResult<()> {
        let unknown = features & !self.backend.features();
        if unknown != 0 {
            return Err(refuse(format_args!(
                "features {unknown:#x} were not offered"
            )));
        }
        self.acked_features = features;
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        // Without VHOST_USER_F_PROTOCOL_FEATURES there is no
        // SET_VRING_ENABLE: every ring is enabled from the start.
        let enable_all = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0;
        for (vring, worker) in self.vrings.iter().zip(&self.workers) {
            let mut ring = Self::lock(vring);
            ring.set_event_idx(event_idx);
            if enable_all {
                ring.set_enabled(true);
            }
            if let Some(worker) = worker {
                worker.wake();
            }
        }
        self.backend.acked_features(features);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> VhostResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let table = regions.iter().zip(files).map(|(r, f)| (info(r), f));
        let mem = self.memory.set_table(table).map_err(refuse)?;
        self.publish(mem);
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostResult<()> {
        let vring = self.vring(index)?;
        let mut ring = Self::lock(vring);
        if ring.started() {
            return Err(refuse(format_args!(
                "queue {index}: its size changed while it runs"
            )));
        }
        ring.set_size(num).map_err(refuse)
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostResult<()> {
        let gpa = |va: u64, what: &str| {
            self.memory
                .to_guest(va)
                .map_err(|e| refuse(format_args!("queue {index}: its {what}: {e}")))
        };
        let (desc, avail, used) = (
            gpa(descriptor, "descriptor table")?,
            gpa(available, "available ring")?,
            gpa(used, "used ring")?,
        );
        let vring = self.vring(index)?;
        let mut ring = Self::lock(vring);
        if ring.started() {
            return Err(refuse(format_args!(
                "queue {index}: its addresses changed while it runs"
            )));
        }
        ring.set_addresses(desc, avail, used);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostResult<()> {
        let base = u16::try_from(base).map_err(|_| {
            refuse(format_args!(
                "queue {index}: base {base} is not a ring index"
            ))
        })?;
        let vring = self.vring(index)?;
        let mut ring = Self::lock(vring);
        if ring.started() {
            return Err(refuse(format_args!(
                "queue {index}: its base changed while it runs"
            )));
        }
        ring.set_base(base);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostResult<VhostUserVringState> {
        if index as usize >= self.vrings.len() {
            return Err(self.refuse_unanswered(format_args!("there is no queue {index}")));
        }
        // The frontend takes the ring back: answer only once every request
        // taken from it is on the used ring.
        self.stop_queue(index as usize);
        let base = Self::lock(&self.vrings[index as usize]).base();
        Ok(VhostUserVringState::new(index, u32::from(base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let index = usize::from(index);
        self.vring(index as u32)?;
        let Some(fd) = fd else {
            return Err(refuse(format_args!(
                "queue {index}: polling without a kick eventfd is not supported"
            )));
        };
        let kick = checked_eventfd(fd, "kick").map_err(refuse)?;
        // A new kick fd for a running ring restarts its worker on it.
        if let Some(worker) = self.workers[index].take() {
            worker.stop();
        }
        Self::lock(&self.vrings[index]).set_kick(Some(kick));
        self.start_queue(index)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let vring = self.vring(u32::from(index))?;
        let call = fd
            .map(|fd| checked_eventfd(fd, "call"))
            .transpose()
            .map_err(refuse)?;
        Self::lock(vring).set_call(call);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let vring = self.vring(u32::from(index))?;
        let err = fd
            .map(|fd| checked_eventfd(fd, "error"))
            .transpose()
            .map_err(refuse)?;
        Self::lock(vring).set_err(err);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VhostResult<VhostUserProtocolFeatures> {
        Ok(protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostResult<()> {
        self.acked_protocol_features = features & protocol_features().bits();
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostResult<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostResult<()> {
        let vring = self.vring(index)?;
        Self::lock(vring).set_enabled(enable);
        if let Some(Some(worker)) = self.workers.get(index as usize) {
            worker.wake();
        }
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<Vec<u8>> {
        Ok(self.backend.get_config(offset, size))
    }

    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<()> {
        self.backend.set_config(offset, buf);
        Ok(())
    }

    fn set_gpu_socket(&mut self, _gpu: GpuBackend) -> VhostResult<()> {
        Err(refuse("GPU_SET_SOCKET: not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostResult<File> {
        Err(refuse("GET_SHARED_OBJECT: no shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        request: &VhostUserInflight,
    ) -> VhostResult<(VhostUserInflight, File)> {
        let queues = usize::from(request.num_queues);
        if queues == 0 || queues > self.vrings.len() {
            return Err(self.refuse_unanswered(format_args!(
                "GET_INFLIGHT_FD for {queues} queues; the device has {}",
                self.vrings.len()
            )));
        }
        if request.queue_size == 0 || request.queue_size > self.backend.max_queue_size() {
            return Err(self.refuse_unanswered(format_args!(
                "GET_INFLIGHT_FD for queues of {}; at most {}",
                request.queue_size,
                self.backend.max_queue_size()
            )));
        }
        let (region, file, size) =
            InflightRegion::create(request.num_queues, request.queue_size).map_err(refuse)?;
        self.inflight = Some(region);
        let reply = VhostUserInflight {
            mmap_size: size,
            mmap_offset: 0,
            num_queues: request.num_queues,
            queue_size: request.queue_size,
        };
        Ok((reply, file))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VhostResult<()> {
        let region = InflightRegion::from_file(
            file,
            inflight.mmap_size,
            inflight.mmap_offset,
            inflight.num_queues,
            inflight.queue_size,
        )
        .map_err(refuse)?;
        self.inflight = Some(region);
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VhostResult<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        file: File,
        _postcopy: Option<bool>,
    ) -> VhostResult<Option<VhostUserMemoryRegionBase>> {
        let mem = self.memory.add(info(region), file).map_err(refuse)?;
        self.publish(mem);
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostResult<()> {
        let mem = self
            .memory
            .remove(region.guest_phys_addr, region.memory_size)
            .map_err(refuse)?;
        // Requests in flight keep their view of the old table (and so the
        // region's mapping) until they complete.
        self.publish(mem);
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostResult<Option<File>> {
        Err(refuse("SET_DEVICE_STATE_FD: no state to migrate"))
    }

    fn check_device_state(&mut self) -> VhostResult<()> {
        Err(refuse("CHECK_DEVICE_STATE: no state to migrate"))
    }

    fn get_shmem_config(&mut self) -> VhostResult<VhostUserShMemConfig> {
        Err(refuse("GET_SHMEM_CONFIG: no shared memory"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostResult<()> {
        Err(refuse("SET_LOG_BASE: no dirty logging"))
    }
}

/// A memory region as [`Memory`] takes it.
fn info(region: &VhostUserMemoryRegion) -> RegionInfo {
    RegionInfo {
        guest_phys_addr: region.guest_phys_addr,
        memory_size: region.memory_size,
        user_addr: region.user_addr,
        mmap_offset: region.mmap_offset,
    }
}
