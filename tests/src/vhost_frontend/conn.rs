//! The vhost-user socket, spoken raw: a 12-byte header (request, flags,
//! size, little-endian u32s), the payload, and file descriptors as
//! `SCM_RIGHTS` ancillary data. Anything may be sent, including messages no
//! real frontend would write.

use super::WAIT;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Request codes (frontend to backend).
pub mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const GET_INFLIGHT_FD: u32 = 31;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const RESET_DEVICE: u32 = 34;
    pub const VRING_KICK: u32 = 35;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
}

/// Header flags.
pub mod flags {
    /// The protocol version, in the low two bits.
    pub const VERSION: u32 = 1;
    pub const REPLY: u32 = 1 << 2;
    pub const NEED_REPLY: u32 = 1 << 3;
}

/// Protocol feature bits.
pub mod proto {
    pub const MQ: u64 = 1 << 0;
    pub const LOG_SHMFD: u64 = 1 << 1;
    pub const REPLY_ACK: u64 = 1 << 3;
    pub const BACKEND_REQ: u64 = 1 << 5;
    pub const CONFIG: u64 = 1 << 9;
    pub const INFLIGHT_SHMFD: u64 = 1 << 12;
    pub const RESET_DEVICE: u64 = 1 << 13;
    pub const CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
    pub const DEVICE_STATE: u64 = 1 << 19;
}

/// Virtio feature bits the tests care about.
pub mod feature {
    pub const BLK_SIZE_MAX: u64 = 1 << 1;
    pub const BLK_SEG_MAX: u64 = 1 << 2;
    pub const BLK_GEOMETRY: u64 = 1 << 4;
    pub const BLK_RO: u64 = 1 << 5;
    pub const BLK_BLK_SIZE: u64 = 1 << 6;
    pub const BLK_FLUSH: u64 = 1 << 9;
    pub const BLK_TOPOLOGY: u64 = 1 << 10;
    pub const BLK_CONFIG_WCE: u64 = 1 << 11;
    pub const BLK_MQ: u64 = 1 << 12;
    pub const BLK_DISCARD: u64 = 1 << 13;
    pub const BLK_WRITE_ZEROES: u64 = 1 << 14;
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const VERSION_1: u64 = 1 << 32;
    pub const IN_ORDER: u64 = 1 << 35;
}

/// Whether the backend answers `request` with a reply of its own (so
/// `NEED_REPLY` adds no acknowledgement).
pub fn has_reply(request: u32) -> bool {
    matches!(
        request,
        req::GET_FEATURES
            | req::GET_PROTOCOL_FEATURES
            | req::GET_QUEUE_NUM
            | req::GET_VRING_BASE
            | req::GET_CONFIG
            | req::GET_INFLIGHT_FD
            | req::GET_MAX_MEM_SLOTS
    )
}

/// The 12-byte message header.
pub fn header(request: u32, flags: u32, size: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0..4].copy_from_slice(&request.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..12].copy_from_slice(&size.to_le_bytes());
    h
}

/// A `u64` body (features, queue index with the no-fd bit, ...).
pub fn u64_body(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// A `vhost_vring_state` body.
pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
    let mut b = index.to_le_bytes().to_vec();
    b.extend_from_slice(&num.to_le_bytes());
    b
}

/// A `vhost_vring_addr` body (addresses in the frontend's address space).
pub fn vring_addr(index: u32, flags: u32, desc: u64, used: u64, avail: u64, log: u64) -> Vec<u8> {
    let mut b = index.to_le_bytes().to_vec();
    b.extend_from_slice(&flags.to_le_bytes());
    for v in [desc, used, avail, log] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

/// One memory region as the frontend describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionDesc {
    pub gpa: u64,
    pub size: u64,
    pub user_addr: u64,
    pub mmap_offset: u64,
}

impl RegionDesc {
    fn bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, v) in [self.gpa, self.size, self.user_addr, self.mmap_offset]
            .iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// A `SET_MEM_TABLE` body: `num_regions` (which may differ from the number
/// of regions that follow), padding, the regions.
pub fn mem_table(num_regions: u32, regions: &[RegionDesc]) -> Vec<u8> {
    let mut b = num_regions.to_le_bytes().to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    for r in regions {
        b.extend_from_slice(&r.bytes());
    }
    b
}

/// An `ADD_MEM_REG`/`REM_MEM_REG` body: padding and one region.
pub fn single_region(region: &RegionDesc) -> Vec<u8> {
    let mut b = 0u64.to_le_bytes().to_vec();
    b.extend_from_slice(&region.bytes());
    b
}

/// A `GET_CONFIG`/`SET_CONFIG` body: offset, size, flags, then the bytes.
pub fn config_body(offset: u32, size: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = offset.to_le_bytes().to_vec();
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// A `vhost_user_inflight` body (24 bytes with its tail padding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inflight {
    pub mmap_size: u64,
    pub mmap_offset: u64,
    pub num_queues: u16,
    pub queue_size: u16,
}

impl Inflight {
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = self.mmap_size.to_le_bytes().to_vec();
        b.extend_from_slice(&self.mmap_offset.to_le_bytes());
        b.extend_from_slice(&self.num_queues.to_le_bytes());
        b.extend_from_slice(&self.queue_size.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b
    }

    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < 20 {
            return None;
        }
        Some(Self {
            mmap_size: u64::from_le_bytes(b[0..8].try_into().ok()?),
            mmap_offset: u64::from_le_bytes(b[8..16].try_into().ok()?),
            num_queues: u16::from_le_bytes(b[16..18].try_into().ok()?),
            queue_size: u16::from_le_bytes(b[18..20].try_into().ok()?),
        })
    }
}

/// A message from the backend.
#[derive(Debug)]
pub struct Msg {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Msg {
    /// The payload as a `u64`, if it is one.
    pub fn u64(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.payload.get(..8)?.try_into().ok()?))
    }
}

/// What came of a message.
#[derive(Debug)]
pub enum Answer {
    /// The `REPLY_ACK` acknowledgement: 0 for success.
    Ack(u64),
    /// The message's own reply.
    Reply(Msg),
    /// Nothing was expected, and nothing came back (so far).
    NoReply,
    /// The backend closed the connection (before or instead of answering).
    Closed,
    /// No answer within [`WAIT`].
    Timeout,
    /// A reply that does not belong to the message, or another error.
    Bad(String),
}

impl Answer {
    /// Accepted: acknowledged with 0, answered, or (without REPLY_ACK) sent.
    pub fn ok(&self) -> bool {
        matches!(self, Answer::Ack(0) | Answer::Reply(_) | Answer::NoReply)
    }

    /// Refused cleanly: a non-zero acknowledgement, or the connection closed.
    pub fn refused(&self) -> bool {
        matches!(self, Answer::Ack(v) if *v != 0) || matches!(self, Answer::Closed)
    }

    /// Answered at all (accepted or refused), as opposed to a timeout or
    /// garbage.
    pub fn clean(&self) -> bool {
        self.ok() || self.refused()
    }

    /// The reply, or an error naming `what`.
    pub fn reply(self, what: &str) -> Result<Msg, String> {
        match self {
            Answer::Reply(m) => Ok(m),
            other => Err(format!("{what}: expected a reply, got {other:?}")),
        }
    }

    /// Ok if accepted, else an error naming `what`.
    pub fn expect_ok(self, what: &str) -> Result<Self, String> {
        if self.ok() {
            Ok(self)
        } else {
            Err(format!("{what}: expected success, got {self:?}"))
        }
    }
}

/// One connection to the backend.
pub struct Conn {
    sock: UnixStream,
    /// Whether REPLY_ACK was negotiated: then every message without a reply
    /// of its own is sent with NEED_REPLY and its acknowledgement awaited.
    pub reply_ack: bool,
}

fn closed_kind(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}

fn timeout_kind(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The outcome of reading one message.
#[derive(Debug)]
pub enum Recv {
    Msg(Msg),
    Closed,
    Timeout,
    Error(String),
}

impl Conn {
    /// Connects to `socket` (retrying for a moment while the backend comes
    /// back to accept).
    pub fn connect(socket: &Path) -> io::Result<Self> {
        let deadline = Instant::now() + WAIT;
        let sock = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        sock.set_read_timeout(Some(WAIT))?;
        sock.set_write_timeout(Some(WAIT))?;
        Ok(Self {
            sock,
            reply_ack: false,
        })
    }

    /// The socket, for tests that shut down one direction or poll it.
    pub fn stream(&self) -> &UnixStream {
        &self.sock
    }

    /// Changes how long sends and receives may block.
    pub fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.sock.set_read_timeout(Some(t))?;
        self.sock.set_write_timeout(Some(t))
    }

    /// Sends `bytes` with `fds` attached to the first chunk.
    pub fn send_raw(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let mut sent = 0usize;
        let mut first = true;
        while first || sent < bytes.len() {
            let rest = &bytes[sent..];
            let mut iov = libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            };
            // u64 for the alignment cmsghdr needs.
            let mut cmsg_buf = [0u64; 64];
            // SAFETY: msghdr is plain data; every pointer set below stays
            // valid for the sendmsg call.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if first && !fds.is_empty() {
                let data_len = std::mem::size_of_val(fds) as u32;
                // SAFETY: CMSG_* compute sizes and pointers within
                // `cmsg_buf`, which is large enough for up to 64 fds.
                unsafe {
                    let space = libc::CMSG_SPACE(data_len) as usize;
                    assert!(space <= std::mem::size_of_val(&cmsg_buf), "too many fds");
                    msg.msg_control = cmsg_buf.as_mut_ptr() as *mut libc::c_void;
                    msg.msg_controllen = space as _;
                    let cmsg = libc::CMSG_FIRSTHDR(&msg);
                    (*cmsg).cmsg_level = libc::SOL_SOCKET;
                    (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
                    std::ptr::copy_nonoverlapping(
                        fds.as_ptr() as *const u8,
                        libc::CMSG_DATA(cmsg),
                        data_len as usize,
                    );
                }
            }
            // SAFETY: `msg` points to valid buffers for the call.
            let n = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            sent += n as usize;
            first = false;
        }
        Ok(())
    }

    /// Sends one message.
    pub fn send(&self, request: u32, flags: u32, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let mut bytes = header(request, flags, payload.len() as u32).to_vec();
        bytes.extend_from_slice(payload);
        self.send_raw(&bytes, fds)
    }

    /// Reads exactly `buf.len()` bytes, collecting any fds that come along.
    fn recv_exact(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let rest = &mut buf[got..];
            let mut iov = libc::iovec {
                iov_base: rest.as_mut_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            };
            let mut cmsg_buf = [0u64; 64];
            // SAFETY: as in send_raw.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg_buf.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
            // SAFETY: `msg` points to valid buffers for the call.
            let n =
                unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // SAFETY: walking the control messages recvmsg filled in.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_SOCKET
                        && (*cmsg).cmsg_type == libc::SCM_RIGHTS
                    {
                        let data = libc::CMSG_DATA(cmsg);
                        let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                        for i in 0..len / 4 {
                            let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                            fds.push(OwnedFd::from_raw_fd(fd));
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                }
            }
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got += n as usize;
        }
        Ok(())
    }

    /// Reads one message from the backend.
    pub fn recv(&self) -> Recv {
        let mut hdr = [0u8; 12];
        let mut fds = Vec::new();
        let classify = |e: io::Error| {
            if closed_kind(&e) {
                Recv::Closed
            } else if timeout_kind(&e) {
                Recv::Timeout
            } else {
                Recv::Error(e.to_string())
            }
        };
        if let Err(e) = self.recv_exact(&mut hdr, &mut fds) {
            return classify(e);
        }
        let request = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        if size > 1 << 20 {
            return Recv::Error(format!("reply to {request} claims {size} bytes"));
        }
        let mut payload = vec![0u8; size];
        if let Err(e) = self.recv_exact(&mut payload, &mut fds) {
            return classify(e);
        }
        Recv::Msg(Msg {
            request,
            flags,
            payload,
            fds,
        })
    }

    /// Whether the backend has closed the connection: waits up to `within`
    /// for end-of-file, reading (and dropping) anything it still sends.
    pub fn wait_closed(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        let mut sock = &self.sock;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = self.sock.set_read_timeout(Some(WAIT));
                return false;
            }
            let _ = self
                .sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if closed_kind(&e) => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    if Instant::now() >= deadline {
                        let _ = self.sock.set_read_timeout(Some(WAIT));
                        return false;
                    }
                }
            }
        }
    }

    /// Sends a message with explicit header flags and waits for what the
    /// flags ask for: the message's own reply, an acknowledgement
    /// (NEED_REPLY), or nothing.
    pub fn call_flags(&self, request: u32, hflags: u32, payload: &[u8], fds: &[RawFd]) -> Answer {
        if let Err(e) = self.send(request, hflags, payload, fds) {
            return if closed_kind(&e) {
                Answer::Closed
            } else if timeout_kind(&e) {
                Answer::Timeout
            } else {
                Answer::Bad(format!("send: {e}"))
            };
        }
        let native = has_reply(request);
        if !native && hflags & flags::NEED_REPLY == 0 {
            return Answer::NoReply;
        }
        match self.recv() {
            Recv::Msg(m) => {
                if m.request != request || m.flags & flags::REPLY == 0 {
                    return Answer::Bad(format!(
                        "reply {} flags {:#x} to request {request}",
                        m.request, m.flags
                    ));
                }
                if native {
                    Answer::Reply(m)
                } else {
                    match m.u64() {
                        Some(v) if m.payload.len() == 8 => Answer::Ack(v),
                        _ => Answer::Bad(format!("ack of {} bytes", m.payload.len())),
                    }
                }
            }
            Recv::Closed => Answer::Closed,
            Recv::Timeout => Answer::Timeout,
            Recv::Error(e) => Answer::Bad(e),
        }
    }

    /// Sends a message the usual way: NEED_REPLY on messages without a reply
    /// of their own once REPLY_ACK is negotiated.
    pub fn call(&self, request: u32, payload: &[u8], fds: &[RawFd]) -> Answer {
        let need = if self.reply_ack && !has_reply(request) {
            flags::NEED_REPLY
        } else {
            0
        };
        self.call_flags(request, flags::VERSION | need, payload, fds)
    }

    /// Like [`call`](Self::call), but always asks for an acknowledgement
    /// (tests that need to know whether a message was refused negotiate
    /// REPLY_ACK first).
    pub fn call_ack(&self, request: u32, payload: &[u8], fds: &[RawFd]) -> Answer {
        let need = if has_reply(request) {
            0
        } else {
            flags::NEED_REPLY
        };
        self.call_flags(request, flags::VERSION | need, payload, fds)
    }

    /// `GET_FEATURES`, as a liveness probe of the connection: the feature
    /// bits, or None if the backend does not answer.
    pub fn ping(&self) -> Option<u64> {
        match self.call(req::GET_FEATURES, &[], &[]) {
            Answer::Reply(m) => m.u64(),
            _ => None,
        }
    }
}
