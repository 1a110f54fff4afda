//! A frontend session: the usual setup sequence, step by step, over a
//! [`Conn`], guest memory and queues the test owns; and virtio-blk I/O.

use super::conn::{self, feature, proto, req, Answer, Conn};
use super::memory::GuestMemory;
use super::ring::{blk, Alloc, Queue, Used};
use super::WAIT;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

/// Where the default guest memory starts (so that guest-physical address 0
/// is outside it).
pub const GPA: u64 = 0x4000_0000;
/// Each queue's rings take this much, from the start of memory.
pub const QUEUE_STRIDE: u64 = 0x2_0000;
/// Buffers come from here on (relative to the memory's start).
pub const DATA_OFFSET: u64 = 1 << 20;

/// How a session sets itself up.
#[derive(Clone, Debug)]
pub struct Options {
    /// Queues to lay out and set up.
    pub queues: u16,
    pub queue_size: u16,
    pub event_idx: bool,
    pub indirect: bool,
    /// Protocol features to ack (those the backend offers).
    pub protocol: u64,
    /// Guest memory size (one region at [`GPA`]).
    pub mem_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queues: 1,
            queue_size: 256,
            event_idx: true,
            indirect: true,
            protocol: proto::MQ | proto::REPLY_ACK | proto::CONFIG | proto::CONFIGURE_MEM_SLOTS,
            mem_size: 8 << 20,
        }
    }
}

/// One step of the setup sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    SetOwner,
    GetFeatures,
    GetProtocolFeatures,
    SetProtocolFeatures,
    GetQueueNum,
    GetConfig,
    SetFeatures,
    SetMemTable,
    VringNum(u16),
    VringAddr(u16),
    VringBase(u16),
    VringCall(u16),
    VringKick(u16),
    VringEnable(u16),
}

/// The whole setup sequence for `queues` queues, in QEMU's order.
pub fn standard_steps(queues: u16) -> Vec<Step> {
    let mut s = vec![
        Step::GetFeatures,
        Step::GetProtocolFeatures,
        Step::SetProtocolFeatures,
        Step::GetQueueNum,
        Step::SetOwner,
        Step::GetConfig,
        Step::SetFeatures,
        Step::SetMemTable,
    ];
    for q in 0..queues {
        s.extend([
            Step::VringNum(q),
            Step::VringBase(q),
            Step::VringAddr(q),
            Step::VringKick(q),
            Step::VringCall(q),
            Step::VringEnable(q),
        ]);
    }
    s
}

/// A chain segment for [`Session::submit`].
#[derive(Clone, Debug)]
pub enum Seg {
    /// A device-readable buffer holding these bytes.
    Out(Vec<u8>),
    /// A device-writable buffer of this many bytes (prefilled with 0xff).
    In(u32),
    /// A descriptor as given: address, length, device-writable. Nothing is
    /// allocated and nothing opened to the device.
    Raw(u64, u32, bool),
}

/// A completed virtio-blk request.
#[derive(Debug)]
pub struct BlkDone {
    /// The status byte, or None if the device left it untouched.
    pub status: Option<u8>,
    /// The device-writable data (without the status byte).
    pub data: Vec<u8>,
    pub used: Used,
}

/// A frontend session.
pub struct Session {
    pub conn: Conn,
    pub mem: GuestMemory,
    pub queues: Vec<Queue>,
    pub opts: Options,
    /// The backend's feature bits, and the ones acked.
    pub offered: u64,
    pub acked: u64,
    /// The backend's protocol features, and the ones acked.
    pub offered_protocol: u64,
    pub protocol: u64,
    pub alloc: Alloc,
}

fn fail(what: &str, a: Answer) -> String {
    format!("{what}: {a:?}")
}

impl Session {
    /// Connects and lays out memory and queues, sending nothing.
    pub fn connect(socket: &Path, opts: Options) -> Result<Self, String> {
        let conn = Conn::connect(socket).map_err(|e| format!("connect: {e}"))?;
        let mem = GuestMemory::new(GPA, opts.mem_size).map_err(|e| format!("memory: {e}"))?;
        assert!(u64::from(opts.queues) * QUEUE_STRIDE <= DATA_OFFSET);
        let queues = (0..opts.queues)
            .map(|q| {
                Queue::new(
                    &mem,
                    q.into(),
                    opts.queue_size,
                    GPA + u64::from(q) * QUEUE_STRIDE,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("queue: {e}"))?;
        let alloc = Alloc::new(GPA + DATA_OFFSET, GPA + opts.mem_size as u64);
        Ok(Self {
            conn,
            mem,
            queues,
            opts,
            offered: 0,
            acked: 0,
            offered_protocol: 0,
            protocol: 0,
            alloc,
        })
    }

    /// Connects and runs the whole setup.
    pub fn start(socket: &Path, opts: Options) -> Result<Self, String> {
        let mut s = Self::connect(socket, opts)?;
        s.setup()?;
        Ok(s)
    }

    /// Runs the whole setup sequence, failing on any refusal.
    pub fn setup(&mut self) -> Result<(), String> {
        for step in standard_steps(self.opts.queues) {
            let a = self.step(step);
            if !a.ok() {
                return Err(fail(&format!("{step:?}"), a));
            }
        }
        Ok(())
    }

    /// The features this session acks: what the backend offers, minus the
    /// ring features the options leave out.
    pub fn features_to_ack(&self) -> u64 {
        let mut f = self.offered;
        if !self.opts.event_idx {
            f &= !feature::RING_EVENT_IDX;
        }
        if !self.opts.indirect {
            f &= !feature::RING_INDIRECT_DESC;
        }
        f
    }

    /// Runs one setup step.
    pub fn step(&mut self, step: Step) -> Answer {
        match step {
            Step::SetOwner => self.conn.call(req::SET_OWNER, &[], &[]),
            Step::GetFeatures => {
                let a = self.conn.call(req::GET_FEATURES, &[], &[]);
                if let Answer::Reply(m) = &a {
                    self.offered = m.u64().unwrap_or(0);
                }
                a
            }
            Step::GetProtocolFeatures => {
                let a = self.conn.call(req::GET_PROTOCOL_FEATURES, &[], &[]);
                if let Answer::Reply(m) = &a {
                    self.offered_protocol = m.u64().unwrap_or(0);
                }
                a
            }
            Step::SetProtocolFeatures => {
                self.protocol = self.offered_protocol & self.opts.protocol;
                let a = self.conn.call(
                    req::SET_PROTOCOL_FEATURES,
                    &conn::u64_body(self.protocol),
                    &[],
                );
                self.conn.reply_ack = self.protocol & proto::REPLY_ACK != 0;
                a
            }
            Step::GetQueueNum => self.conn.call(req::GET_QUEUE_NUM, &[], &[]),
            Step::GetConfig => {
                self.conn
                    .call(req::GET_CONFIG, &conn::config_body(0, 60, 0, &[0; 60]), &[])
            }
            Step::SetFeatures => {
                self.acked = self.features_to_ack();
                self.conn
                    .call(req::SET_FEATURES, &conn::u64_body(self.acked), &[])
            }
            Step::SetMemTable => self.set_mem_table(),
            Step::VringNum(q) => self.vring_num(q.into(), self.opts.queue_size.into()),
            Step::VringAddr(q) => self.vring_addr(q),
            Step::VringBase(q) => self.vring_base(q.into(), 0),
            Step::VringCall(q) => {
                let fd = self.queues[usize::from(q)].call.as_raw_fd();
                self.vring_fd(req::SET_VRING_CALL, q.into(), Some(fd))
            }
            Step::VringKick(q) => {
                let fd = self.queues[usize::from(q)].kick.as_raw_fd();
                self.vring_fd(req::SET_VRING_KICK, q.into(), Some(fd))
            }
            Step::VringEnable(q) => self.vring_enable(q.into(), true),
        }
    }

    /// SET_MEM_TABLE with all of the test's regions.
    pub fn set_mem_table(&self) -> Answer {
        let descs: Vec<_> = self.mem.regions.iter().map(|r| r.desc()).collect();
        let fds: Vec<RawFd> = self
            .mem
            .regions
            .iter()
            .map(|r| r.file.as_raw_fd())
            .collect();
        self.conn.call(
            req::SET_MEM_TABLE,
            &conn::mem_table(descs.len() as u32, &descs),
            &fds,
        )
    }

    pub fn vring_num(&self, q: u32, num: u32) -> Answer {
        self.conn
            .call(req::SET_VRING_NUM, &conn::vring_state(q, num), &[])
    }

    pub fn vring_base(&self, q: u32, base: u32) -> Answer {
        self.conn
            .call(req::SET_VRING_BASE, &conn::vring_state(q, base), &[])
    }

    pub fn vring_enable(&self, q: u32, on: bool) -> Answer {
        self.conn.call(
            req::SET_VRING_ENABLE,
            &conn::vring_state(q, u32::from(on)),
            &[],
        )
    }

    /// SET_VRING_ADDR with queue `q`'s rings, as frontend addresses.
    pub fn vring_addr(&self, q: u16) -> Answer {
        let queue = &self.queues[usize::from(q)];
        self.conn.call(
            req::SET_VRING_ADDR,
            &conn::vring_addr(
                q.into(),
                0,
                self.mem.user_addr(queue.desc),
                self.mem.user_addr(queue.used),
                self.mem.user_addr(queue.avail),
                0,
            ),
            &[],
        )
    }

    /// SET_VRING_KICK/CALL/ERR for queue `index` with `fd` (or the no-fd
    /// bit).
    pub fn vring_fd(&self, request: u32, index: u64, fd: Option<RawFd>) -> Answer {
        match fd {
            Some(fd) => self.conn.call(request, &conn::u64_body(index), &[fd]),
            None => self
                .conn
                .call(request, &conn::u64_body(index | 1 << 8), &[]),
        }
    }

    /// Writes a chain of segments into queue `q`, publishes and kicks it.
    /// Returns the guest addresses of the segments.
    pub fn submit(&mut self, q: usize, segs: &[Seg]) -> Vec<(u64, u32)> {
        let parts = self.place(segs);
        let triples: Vec<(u64, u32, bool)> = parts.iter().map(|&(a, l, w)| (a, l, w)).collect();
        let queue = &mut self.queues[q];
        let head = queue.add_chain(&self.mem, &triples);
        queue.publish(&self.mem, head);
        let _ = queue.kick();
        parts.iter().map(|&(a, l, _)| (a, l)).collect()
    }

    /// Allocates and fills the buffers of `segs`.
    pub fn place(&mut self, segs: &[Seg]) -> Vec<(u64, u32, bool)> {
        segs.iter()
            .map(|s| match s {
                Seg::Out(bytes) => {
                    let a = self.alloc.alloc(bytes.len() as u64);
                    self.mem.write(a, bytes);
                    (a, bytes.len() as u32, false)
                }
                Seg::In(len) => {
                    let a = self.alloc.alloc(u64::from(*len));
                    self.mem.write(a, &vec![0xff; *len as usize]);
                    self.mem.allow(a, u64::from(*len));
                    (a, *len, true)
                }
                Seg::Raw(a, l, w) => (*a, *l, *w),
            })
            .collect()
    }

    /// Waits for `n` used elements on queue `q`.
    pub fn complete(&mut self, q: usize, n: u16) -> Result<Vec<Used>, String> {
        self.complete_within(q, n, WAIT)
    }

    pub fn complete_within(&mut self, q: usize, n: u16, t: Duration) -> Result<Vec<Used>, String> {
        self.queues[q].wait_used(&self.mem, n, t).map_err(|got| {
            format!(
                "queue {q}: {} of {n} request(s) completed within {t:?}",
                got.len()
            )
        })
    }

    /// Runs a request made of `segs` on queue `q` whose status is the last
    /// byte of the last segment (which must be device-writable), and
    /// returns the status and the other device-writable bytes.
    pub fn run(&mut self, q: usize, segs: &[Seg]) -> Result<BlkDone, String> {
        let parts = self.submit(q, segs);
        let used = self.complete(q, 1)?;
        let (sa, sl) = *parts.last().unwrap();
        let status_addr = sa + u64::from(sl) - 1;
        let status = if self.mem.contains(status_addr, 1) {
            match self.mem.read(status_addr, 1)[0] {
                0xff => None,
                s => Some(s),
            }
        } else {
            None
        };
        let mut data = Vec::new();
        let n = segs.len() - 1;
        for (seg, &(a, l)) in segs[..n].iter().zip(&parts[..n]) {
            if let Seg::In(_) = seg {
                data.extend(self.mem.read(a, l as usize));
            }
        }
        if let Seg::In(l) = segs[n] {
            if l > 1 {
                data.extend(self.mem.read(sa, l as usize - 1));
            }
        }
        Ok(BlkDone {
            status,
            data,
            used: used[0],
        })
    }

    /// A virtio-blk request: header, data out (if any), data in (if any),
    /// status.
    pub fn blk(
        &mut self,
        q: usize,
        ty: u32,
        sector: u64,
        out: &[u8],
        in_len: u32,
    ) -> Result<BlkDone, String> {
        let mut segs = vec![Seg::Out(blk::header(ty, sector))];
        if !out.is_empty() {
            segs.push(Seg::Out(out.to_vec()));
        }
        if in_len > 0 {
            segs.push(Seg::In(in_len));
        }
        segs.push(Seg::In(1));
        self.run(q, &segs)
    }

    /// Reads `len` bytes at byte `offset` (sector aligned) and insists on
    /// success.
    pub fn read(&mut self, q: usize, offset: u64, len: u32) -> Result<Vec<u8>, String> {
        let done = self.blk(q, blk::T_IN, offset / 512, &[], len)?;
        if done.status != Some(blk::S_OK) {
            return Err(format!("read at {offset}: status {:?}", done.status));
        }
        Ok(done.data)
    }

    /// Writes `data` at byte `offset` and insists on success.
    pub fn write(&mut self, q: usize, offset: u64, data: &[u8]) -> Result<(), String> {
        let done = self.blk(q, blk::T_OUT, offset / 512, data, 0)?;
        if done.status != Some(blk::S_OK) {
            return Err(format!("write at {offset}: status {:?}", done.status));
        }
        Ok(())
    }
}
