//! The request trace (`--trace FILE`): every request as a fixed-size binary
//! record, in the format documented in `TRACE.md` beside this file.
//!
//! Each queue appends records to its own buffer (a mutex only the queue's
//! worker and, briefly, the trace thread ever take). A full buffer is handed
//! to the trace thread over a bounded channel; when the channel is full
//! because the disk cannot keep up, the buffer's records are dropped and
//! counted — and a marker record saying how many takes their place — rather
//! than making the guest wait. The trace thread also picks up partly filled
//! buffers every second, so the file follows the guest closely.

use std::fs::File;
use std::io::{self, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The first 8 bytes of a trace file.
pub const MAGIC: [u8; 8] = *b"OCIDTRC\0";
/// The format version this code writes (it also reads version 1, which has
/// no disk description after the fixed header).
pub const VERSION: u32 = 2;
/// Size of the fixed part of the file header (version 2 appends the disk
/// description after it; `header_size` covers both).
pub const HEADER_SIZE: usize = 64;
/// The longest partition name or disk label the writer stores, in bytes
/// (GPT names are at most 36 UTF-16 code units, so real ones fit).
pub const MAX_NAME_BYTES: usize = 255;
/// The most partitions the writer stores (GPT tables hold 128).
pub const MAX_PARTITIONS: usize = 1024;
/// Bytes of a partition entry before its name.
const PARTITION_FIXED: usize = 22;
/// Size of a record as written.
pub const RECORD_SIZE: usize = 32;
/// The `kind` of a marker record standing for dropped records.
pub const KIND_DROPPED: u8 = 0xff;

/// Records a queue buffers before handing them to the trace thread.
const BATCH_RECORDS: usize = 1024;
/// Full batches that may wait for the trace thread; past this, drop.
const BACKLOG_BATCHES: usize = 32;
/// How often the trace thread collects partly filled buffers.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// One request as traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// When the request was taken off its queue, ns since the trace started.
    pub time_ns: u64,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Bytes covered (see [`super::Done::len`]); for a marker record, the
    /// number of records dropped.
    pub len: u64,
    /// Time to complete, ns (saturates at `u32::MAX` when stored: 4.29 s).
    pub latency_ns: u64,
    /// The virtqueue.
    pub queue: u16,
    /// [`super::ReqKind::code`], or [`KIND_DROPPED`].
    pub kind: u8,
    /// The virtio status byte.
    pub status: u8,
}

impl Record {
    /// The record's bytes in the file.
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[0..8].copy_from_slice(&self.time_ns.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        let lat = u32::try_from(self.latency_ns).unwrap_or(u32::MAX);
        b[24..28].copy_from_slice(&lat.to_le_bytes());
        b[28..30].copy_from_slice(&self.queue.to_le_bytes());
        b[30] = self.kind;
        b[31] = self.status;
        b
    }

    /// A record from its first [`RECORD_SIZE`] bytes.
    pub fn decode(b: &[u8; RECORD_SIZE]) -> Record {
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        Record {
            time_ns: u64_at(0),
            offset: u64_at(8),
            len: u64_at(16),
            latency_ns: u64::from(u32::from_le_bytes([b[24], b[25], b[26], b[27]])),
            queue: u16::from_le_bytes([b[28], b[29]]),
            kind: b[30],
            status: b[31],
        }
    }
}

/// A partition of the traced disk, as the trace header records it, so that
/// readers can name the regions requests touch without the image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracePartition {
    /// The 1-based partition number.
    pub index: u32,
    /// The GPT name.
    pub name: String,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// What the trace writer records about the disk besides its size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceDisk {
    /// Size of the disk in bytes (0 if unknown).
    pub size: u64,
    /// What the disk is called (its serial), for titles; may be empty.
    pub label: String,
    /// The partition table.
    pub partitions: Vec<TracePartition>,
}

/// What the file header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u32,
    /// Size of each record in the file (≥ [`RECORD_SIZE`]; later versions may
    /// append fields, which this reader skips).
    pub record_size: u32,
    /// Virtqueues of the traced disk.
    pub num_queues: u16,
    /// Wall-clock time of `time_ns` 0, ns since the Unix epoch.
    pub start_unix_ns: u64,
    /// Size of the traced disk in bytes (0 if unknown).
    pub disk_size: u64,
    /// The disk's label (its serial); empty in version 1 traces.
    pub label: String,
    /// The disk's partitions, in table order; empty in version 1 traces.
    pub partitions: Vec<TracePartition>,
    /// Bytes before the first record (where record offsets start).
    pub header_size: u64,
}

/// `s` cut to at most [`MAX_NAME_BYTES`] bytes on a character boundary.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(MAX_NAME_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Header {
    /// The header's bytes: the fixed part, then (version 2) the label and
    /// the partition table, padded to a multiple of 8 bytes.
    fn encode(&self) -> Vec<u8> {
        let label = clip(&self.label);
        let parts = &self.partitions[..self.partitions.len().min(MAX_PARTITIONS)];
        let mut b = vec![0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[16..20].copy_from_slice(&self.record_size.to_le_bytes());
        b[20..22].copy_from_slice(&self.num_queues.to_le_bytes());
        b[24..32].copy_from_slice(&self.start_unix_ns.to_le_bytes());
        b[32..40].copy_from_slice(&self.disk_size.to_le_bytes());
        if self.version >= 2 {
            b[40..42].copy_from_slice(&(parts.len() as u16).to_le_bytes());
            b[42..44].copy_from_slice(&(label.len() as u16).to_le_bytes());
            b.extend_from_slice(label.as_bytes());
            for p in parts {
                let name = clip(&p.name);
                b.extend_from_slice(&p.start.to_le_bytes());
                b.extend_from_slice(&p.end.to_le_bytes());
                b.extend_from_slice(&p.index.to_le_bytes());
                b.extend_from_slice(&(name.len() as u16).to_le_bytes());
                b.extend_from_slice(name.as_bytes());
            }
            b.resize(b.len().next_multiple_of(8), 0);
        }
        let size = b.len() as u32;
        b[12..16].copy_from_slice(&size.to_le_bytes());
        b
    }
}

/// Parses the version 2 disk description (label, partitions) from the
/// header bytes after the fixed part; `base` is their offset in the file.
fn parse_disk_description(
    path: &Path,
    rest: &[u8],
    base: usize,
    num_partitions: usize,
    label_len: usize,
) -> io::Result<(String, Vec<TracePartition>)> {
    let at = |pos: usize, what: String| invalid(path, format!("at byte {}: {what}", base + pos));
    let text = |pos: usize, len: usize, what: &str| -> io::Result<String> {
        let bytes = rest.get(pos..pos + len).ok_or_else(|| {
            at(
                pos,
                format!(
                    "{what} of {len} bytes runs past the header's end (byte {})",
                    base + rest.len()
                ),
            )
        })?;
        String::from_utf8(bytes.to_vec()).map_err(|_| at(pos, format!("{what} is not UTF-8")))
    };
    let label = text(0, label_len, "the disk label")?;
    let mut pos = label_len;
    let mut parts = Vec::with_capacity(num_partitions.min(MAX_PARTITIONS));
    for i in 0..num_partitions {
        let Some(fixed) = rest.get(pos..pos + PARTITION_FIXED) else {
            return Err(at(
                pos,
                format!(
                    "partition entry {i} of {num_partitions} runs past the header's end (byte {})",
                    base + rest.len()
                ),
            ));
        };
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&fixed[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let (start, end) = (u64_at(0), u64_at(8));
        let index = u32::from_le_bytes([fixed[16], fixed[17], fixed[18], fixed[19]]);
        let name_len = usize::from(u16::from_le_bytes([fixed[20], fixed[21]]));
        if start >= end {
            return Err(at(
                pos,
                format!("partition {index}: start {start} is not below end {end}"),
            ));
        }
        let name = text(
            pos + PARTITION_FIXED,
            name_len,
            &format!("partition {index}'s name"),
        )?;
        parts.push(TracePartition {
            index,
            name,
            start,
            end,
        });
        pos += PARTITION_FIXED + name_len;
    }
    Ok((label, parts))
}

/// Counters of a trace: records written to the file and records dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceTotals {
    /// Records written to the file (markers not counted).
    pub records: u64,
    /// Records dropped because the writer fell behind, failed or was closed.
    pub dropped: u64,
}

/// What a queue's worker holds under its buffer lock.
struct QueueBuf {
    data: Vec<u8>,
    closed: bool,
}

enum Msg {
    Batch(Vec<u8>),
    Close,
}

/// Counters shared by the queues and the trace thread.
#[derive(Default)]
struct Counters {
    records: AtomicU64,
    dropped: AtomicU64,
}

/// One queue's side of the trace.
pub struct QueueTrace {
    buf: Mutex<QueueBuf>,
    tx: SyncSender<Msg>,
    counters: Arc<Counters>,
    epoch: Instant,
    queue: u16,
}

impl QueueTrace {
    /// ns from the trace's start to `at`.
    #[inline]
    pub fn since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Appends a record; hands the buffer on when full. Never waits for the
    /// trace thread.
    pub fn record(&self, r: &Record) {
        // A poisoned lock only means another thread panicked mid-push; the
        // buffer is still a byte vector, so keep going.
        let mut b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        if b.closed {
            self.counters.dropped.fetch_add(1, Relaxed);
            return;
        }
        b.data.extend_from_slice(&r.encode());
        if b.data.len() >= BATCH_RECORDS * RECORD_SIZE {
            let full =
                std::mem::replace(&mut b.data, Vec::with_capacity(BATCH_RECORDS * RECORD_SIZE));
            match self.tx.try_send(Msg::Batch(full)) {
                Ok(()) => {}
                Err(TrySendError::Full(Msg::Batch(lost)))
                | Err(TrySendError::Disconnected(Msg::Batch(lost))) => {
                    let n = (lost.len() / RECORD_SIZE) as u64;
                    let n = n - marker_count(&lost);
                    self.counters.dropped.fetch_add(n, Relaxed);
                    let marker = Record {
                        time_ns: self.since_epoch(Instant::now()),
                        offset: 0,
                        len: n,
                        latency_ns: 0,
                        queue: self.queue,
                        kind: KIND_DROPPED,
                        status: 0,
                    };
                    b.data.extend_from_slice(&marker.encode());
                }
                Err(_) => {}
            }
        }
    }

    /// Takes what is buffered; `close` makes later records count as dropped.
    fn take(&self, close: bool) -> Vec<u8> {
        let mut b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        b.closed |= close;
        std::mem::take(&mut b.data)
    }

    /// Like `take`, but gives up at once if the queue's worker holds the lock.
    fn try_take(&self) -> Option<Vec<u8>> {
        let mut b = self.buf.try_lock().ok()?;
        (!b.data.is_empty()).then(|| std::mem::take(&mut b.data))
    }
}

/// Marker records in a batch (they stand for dropped records, not requests).
fn marker_count(batch: &[u8]) -> u64 {
    batch
        .chunks_exact(RECORD_SIZE)
        .filter(|r| r[30] == KIND_DROPPED)
        .count() as u64
}

/// Writes a trace file; created before the device starts, shared by the
/// queues through [`super::DiskMetrics::with_trace`].
pub struct TraceWriter {
    queues: Vec<Arc<QueueTrace>>,
    tx: SyncSender<Msg>,
    counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<io::Result<()>>>>,
    path: PathBuf,
}

impl TraceWriter {
    /// Creates (or truncates) `path`, writes the header and starts the trace
    /// thread; the header knows only the disk's size.
    pub fn create(path: &Path, num_queues: usize, disk_size: u64) -> io::Result<TraceWriter> {
        let disk = TraceDisk {
            size: disk_size,
            ..TraceDisk::default()
        };
        TraceWriter::create_for(path, num_queues, &disk)
    }

    /// Creates (or truncates) `path`, writes the header describing `disk`
    /// (size, label, partition table) and starts the trace thread.
    pub fn create_for(path: &Path, num_queues: usize, disk: &TraceDisk) -> io::Result<TraceWriter> {
        let named =
            |e: io::Error| io::Error::new(e.kind(), format!("trace {}: {e}", path.display()));
        let mut file = File::create(path).map_err(named)?;
        let num_queues = num_queues.clamp(1, usize::from(u16::MAX));
        let epoch = Instant::now();
        let start_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let header = Header {
            version: VERSION,
            record_size: RECORD_SIZE as u32,
            num_queues: num_queues as u16,
            start_unix_ns,
            disk_size: disk.size,
            label: disk.label.clone(),
            partitions: disk.partitions.clone(),
            header_size: 0,
        };
        file.write_all(&header.encode()).map_err(named)?;
        let (tx, rx) = mpsc::sync_channel(BACKLOG_BATCHES);
        let counters = Arc::new(Counters::default());
        let queues: Vec<Arc<QueueTrace>> = (0..num_queues)
            .map(|q| {
                Arc::new(QueueTrace {
                    buf: Mutex::new(QueueBuf {
                        data: Vec::with_capacity(BATCH_RECORDS * RECORD_SIZE),
                        closed: false,
                    }),
                    tx: tx.clone(),
                    counters: counters.clone(),
                    epoch,
                    queue: q as u16,
                })
            })
            .collect();
        let thread = {
            let queues = queues.clone();
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("ocidisk-trace".into())
                .spawn(move || write_loop(file, rx, &queues, &counters))
                .map_err(named)?
        };
        Ok(TraceWriter {
            queues,
            tx,
            counters,
            thread: Mutex::new(Some(thread)),
            path: path.to_owned(),
        })
    }

    /// The trace side of queue `q` (the last queue for an index past it).
    pub fn queue(&self, q: u16) -> Arc<QueueTrace> {
        let i = usize::from(q).min(self.queues.len() - 1);
        self.queues[i].clone()
    }

    /// Records written and dropped so far.
    pub fn totals(&self) -> TraceTotals {
        TraceTotals {
            records: self.counters.records.load(Relaxed),
            dropped: self.counters.dropped.load(Relaxed),
        }
    }

    /// Writes out everything buffered, closes the file and returns the
    /// totals (or the first write error). Later calls return the totals.
    pub fn close(&self) -> io::Result<TraceTotals> {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            // The trace thread drains until it sees Close; a send can only
            // fail if it has already exited, which join reports.
            let _ = self.tx.send(Msg::Close);
            let result = thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("trace thread panicked")));
            result.map_err(|e| {
                io::Error::new(e.kind(), format!("trace {}: {e}", self.path.display()))
            })?;
        }
        Ok(self.totals())
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The trace thread: writes batches as they come, collects partial buffers
/// every [`FLUSH_INTERVAL`], and drains everything on Close. After a write
/// error it keeps draining (counting the records as dropped) so the queues
/// never find the channel full because of it, and reports the error at close.
fn write_loop(
    mut file: File,
    rx: mpsc::Receiver<Msg>,
    queues: &[Arc<QueueTrace>],
    counters: &Counters,
) -> io::Result<()> {
    let mut error: Option<io::Error> = None;
    let mut write = |data: &[u8], error: &mut Option<io::Error>| {
        if data.is_empty() {
            return;
        }
        let requests = (data.len() / RECORD_SIZE) as u64 - marker_count(data);
        if error.is_none() {
            match file.write_all(data) {
                Ok(()) => {
                    counters.records.fetch_add(requests, Relaxed);
                    return;
                }
                Err(e) => *error = Some(e),
            }
        }
        counters.dropped.fetch_add(requests, Relaxed);
    };
    loop {
        match rx.recv_timeout(FLUSH_INTERVAL) {
            Ok(Msg::Batch(data)) => write(&data, &mut error),
            Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                for q in queues {
                    if let Some(data) = q.try_take() {
                        write(&data, &mut error);
                    }
                }
            }
        }
    }
    // Full batches sent before Close come first, then what each queue holds.
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Batch(data) = msg {
            write(&data, &mut error);
        }
    }
    for q in queues {
        let data = q.take(true);
        write(&data, &mut error);
    }
    match error {
        Some(e) => Err(e),
        None => file.sync_data(),
    }
}

/// One entry of a trace file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A request.
    Request(Record),
    /// `count` records of `queue` were dropped around `time_ns`.
    Dropped {
        /// The queue whose records were dropped.
        queue: u16,
        /// When the drop was noticed.
        time_ns: u64,
        /// How many.
        count: u64,
    },
}

/// Reads a trace file record by record.
pub struct TraceReader<R> {
    input: R,
    header: Header,
    path: PathBuf,
    /// Bytes of a partial last record (a writer that crashed mid-write).
    truncated: usize,
    /// File offset of the next record.
    pos: u64,
    done: bool,
    skip: Vec<u8>,
}

impl TraceReader<BufReader<File>> {
    /// Opens a trace file and checks its header.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("trace {}: {e}", path.display())))?;
        TraceReader::new(BufReader::with_capacity(256 * 1024, file), path)
    }
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("trace {}: {what}", path.display()),
    )
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl<R: Read> TraceReader<R> {
    /// Reads and checks the header from `input`; `path` names it in errors.
    pub fn new(mut input: R, path: &Path) -> io::Result<Self> {
        let mut h = [0u8; HEADER_SIZE];
        let got = read_full(&mut input, &mut h).map_err(|e| invalid(path, e))?;
        if got < 8 || h[0..8] != MAGIC {
            return Err(invalid(path, "not an ocidisk trace (bad magic)"));
        }
        if got < HEADER_SIZE {
            return Err(invalid(
                path,
                format!("header truncated at byte {got} of {HEADER_SIZE}"),
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(x)
        };
        let version = u32_at(8);
        if !(1..=VERSION).contains(&version) {
            return Err(invalid(
                path,
                format!("at byte 8: format version {version}, this ocidisk reads 1 to {VERSION}"),
            ));
        }
        let header_size = u32_at(12) as usize;
        if !(HEADER_SIZE..=1 << 20).contains(&header_size) {
            return Err(invalid(
                path,
                format!("at byte 12: header size {header_size} out of range"),
            ));
        }
        let record_size = u32_at(16);
        if (record_size as usize) < RECORD_SIZE || record_size > 4096 {
            return Err(invalid(
                path,
                format!("at byte 16: record size {record_size} out of range"),
            ));
        }
        // Version 2 describes the disk after the fixed part; bytes past
        // what a version describes (a later minor revision) are skipped.
        let mut rest = vec![0u8; header_size - HEADER_SIZE];
        let got = read_full(&mut input, &mut rest).map_err(|e| invalid(path, e))?;
        if got < rest.len() {
            return Err(invalid(
                path,
                format!(
                    "header truncated at byte {} of {header_size}",
                    HEADER_SIZE + got
                ),
            ));
        }
        let (label, partitions) = if version >= 2 {
            let num = usize::from(u16::from_le_bytes([h[40], h[41]]));
            let label_len = usize::from(u16::from_le_bytes([h[42], h[43]]));
            parse_disk_description(path, &rest, HEADER_SIZE, num, label_len)?
        } else {
            (String::new(), Vec::new())
        };
        let header = Header {
            version,
            record_size,
            num_queues: u16::from_le_bytes([h[20], h[21]]),
            start_unix_ns: u64_at(24),
            disk_size: u64_at(32),
            label,
            partitions,
            header_size: header_size as u64,
        };
        Ok(TraceReader {
            input,
            skip: vec![0u8; record_size as usize - RECORD_SIZE],
            header,
            path: path.to_owned(),
            truncated: 0,
            pos: header_size as u64,
            done: false,
        })
    }

    /// The file header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes of an incomplete record at the end of the file (0 if none),
    /// known once iteration has ended.
    pub fn truncated_tail(&self) -> usize {
        self.truncated
    }

    /// File offset of the incomplete last record, if the file ends with one
    /// (known once iteration has ended).
    pub fn truncated_at(&self) -> Option<u64> {
        (self.truncated > 0).then_some(self.pos)
    }

    /// The file this reader reads, as named in errors.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl<R: Read> Iterator for TraceReader<R> {
    type Item = io::Result<Entry>;

    fn next(&mut self) -> Option<io::Result<Entry>> {
        if self.done {
            return None;
        }
        let mut b = [0u8; RECORD_SIZE];
        let got = match read_full(&mut self.input, &mut b) {
            Ok(n) => n,
            Err(e) => {
                self.done = true;
                return Some(Err(invalid(
                    &self.path,
                    format!("at byte {}: {e}", self.pos),
                )));
            }
        };
        if got < RECORD_SIZE {
            self.done = true;
            self.truncated = got;
            return None;
        }
        if !self.skip.is_empty() {
            match read_full(&mut self.input, &mut self.skip) {
                Ok(n) if n == self.skip.len() => {}
                Ok(n) => {
                    self.done = true;
                    self.truncated = RECORD_SIZE + n;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(invalid(
                        &self.path,
                        format!("at byte {}: {e}", self.pos),
                    )));
                }
            }
        }
        self.pos += u64::from(self.header.record_size);
        let r = Record::decode(&b);
        Some(Ok(if r.kind == KIND_DROPPED {
            Entry::Dropped {
                queue: r.queue,
                time_ns: r.time_ns,
                count: r.len,
            }
        } else {
            Entry::Request(r)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64, queue: u16) -> Record {
        Record {
            time_ns: i * 10,
            offset: i * 4096,
            len: 4096,
            latency_ns: 1000 + i,
            queue,
            kind: (i % 7) as u8,
            status: (i % 3) as u8,
        }
    }

    #[test]
    fn record_encoding_round_trips_and_saturates_latency() {
        let r = Record {
            latency_ns: 1 << 40,
            ..rec(5, 3)
        };
        let back = Record::decode(&r.encode());
        assert_eq!(back.latency_ns, u64::from(u32::MAX));
        assert_eq!(
            Record {
                latency_ns: 1005,
                ..back
            },
            rec(5, 3)
        );
    }

    #[test]
    fn writer_and_reader_round_trip_across_queues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.trace");
        let w = TraceWriter::create(&path, 2, 1 << 30).unwrap();
        let n = 3 * BATCH_RECORDS as u64 + 17; // full batches plus a partial one
        std::thread::scope(|s| {
            for q in 0..2u16 {
                let t = w.queue(q);
                s.spawn(move || (0..n).for_each(|i| t.record(&rec(i, q))));
            }
        });
        let totals = w.close().unwrap();
        assert_eq!(totals.records + totals.dropped, 2 * n);
        // After close, records are counted as dropped, not lost or written.
        w.queue(0).record(&rec(0, 0));
        assert_eq!(w.totals().dropped, totals.dropped + 1);

        let mut reader = TraceReader::open(&path).unwrap();
        assert_eq!(reader.header().num_queues, 2);
        assert_eq!(reader.header().disk_size, 1 << 30);
        let mut per_queue = [Vec::new(), Vec::new()];
        let mut dropped = 0;
        for e in reader.by_ref() {
            match e.unwrap() {
                Entry::Request(r) => per_queue[usize::from(r.queue)].push(r),
                Entry::Dropped { count, .. } => dropped += count,
            }
        }
        assert_eq!(reader.truncated_tail(), 0);
        assert_eq!(dropped, totals.dropped);
        assert_eq!(
            (per_queue[0].len() + per_queue[1].len()) as u64,
            totals.records
        );
        if totals.dropped == 0 {
            // Each queue's records are in the file in the order they came.
            for (q, recs) in per_queue.iter().enumerate() {
                let want: Vec<Record> = (0..n).map(|i| rec(i, q as u16)).collect();
                assert_eq!(recs, &want);
            }
        }
    }

    #[test]
    fn a_full_backlog_drops_and_marks_instead_of_blocking() {
        // A queue whose channel has no room: every full batch is dropped.
        let (tx, _rx) = mpsc::sync_channel(0);
        let q = QueueTrace {
            buf: Mutex::new(QueueBuf {
                data: Vec::new(),
                closed: false,
            }),
            tx,
            counters: Arc::new(Counters::default()),
            epoch: Instant::now(),
            queue: 4,
        };
        for i in 0..(2 * BATCH_RECORDS as u64) {
            q.record(&rec(i, 4));
        }
        // The first batch was dropped whole; the second batch held the
        // first marker plus BATCH_RECORDS - 1 requests and was dropped too.
        assert_eq!(
            q.counters.dropped.load(Relaxed),
            2 * BATCH_RECORDS as u64 - 1
        );
        let left = q.take(false);
        assert_eq!(left.len(), 2 * RECORD_SIZE);
        let mut first = [0u8; RECORD_SIZE];
        first.copy_from_slice(&left[..RECORD_SIZE]);
        let marker = Record::decode(&first);
        assert_eq!((marker.kind, marker.queue), (KIND_DROPPED, 4));
        assert_eq!(marker.len, BATCH_RECORDS as u64 - 1);
    }

    fn header(version: u32, partitions: Vec<TracePartition>) -> Header {
        Header {
            version,
            record_size: 32,
            num_queues: 1,
            start_unix_ns: 0,
            disk_size: 0,
            label: if version >= 2 {
                "node-1".into()
            } else {
                String::new()
            },
            partitions,
            header_size: 0,
        }
    }

    fn header_bytes() -> Vec<u8> {
        header(VERSION, Vec::new()).encode()
    }

    fn part(index: u32, name: &str, start: u64, end: u64) -> TracePartition {
        TracePartition {
            index,
            name: name.into(),
            start,
            end,
        }
    }

    #[test]
    fn the_partition_table_round_trips_and_version_1_still_reads() {
        let parts = vec![
            part(1, "ESP", 1 << 20, 129 << 20),
            part(2, "METROPOLIS-SYSTEM-A", 129 << 20, 1153 << 20),
            part(3, &"é".repeat(200), 2 << 30, 3 << 30),
        ];
        let mut bytes = header(VERSION, parts.clone()).encode();
        assert_eq!(bytes.len() % 8, 0);
        bytes.extend_from_slice(&rec(1, 0).encode());
        bytes.extend_from_slice(&[9; 5]);
        let mut r = TraceReader::new(&bytes[..], Path::new("t")).unwrap();
        let h = r.header().clone();
        assert_eq!(h.label, "node-1");
        assert_eq!(h.partitions[..2], parts[..2]);
        // Names are cut at MAX_NAME_BYTES, on a character boundary.
        assert_eq!(h.partitions[2].name, "é".repeat(127));
        assert_eq!(h.header_size, bytes.len() as u64 - 37);
        assert_eq!(r.next().unwrap().unwrap(), Entry::Request(rec(1, 0)));
        assert!(r.next().is_none());
        assert_eq!(r.truncated_at(), Some(h.header_size + 32));

        // A version 1 file: a 64-byte header and no disk description.
        let mut v1 = header(1, Vec::new()).encode();
        assert_eq!(v1.len(), HEADER_SIZE);
        v1.extend_from_slice(&rec(2, 0).encode());
        let mut r = TraceReader::new(&v1[..], Path::new("old")).unwrap();
        assert_eq!((r.header().version, r.header().partitions.len()), (1, 0));
        assert_eq!(r.next().unwrap().unwrap(), Entry::Request(rec(2, 0)));
        assert_eq!(r.truncated_at(), None);
    }

    #[test]
    fn a_bad_partition_table_is_an_error_naming_the_byte() {
        let good = header(VERSION, vec![part(1, "ESP", 4096, 8192)]).encode();
        // The entry starts after the fixed header and the 6-byte label.
        let entry = HEADER_SIZE + 6;
        let cases: Vec<(Vec<u8>, String)> = vec![
            (
                {
                    let mut b = good.clone();
                    b[40] = 3; // three entries announced, one present
                    b
                },
                "partition entry 1 of 3".into(),
            ),
            (
                {
                    let mut b = good.clone();
                    b[entry..entry + 8].copy_from_slice(&9000u64.to_le_bytes());
                    b
                },
                format!("at byte {entry}: partition 1: start 9000"),
            ),
            (
                {
                    let mut b = good.clone();
                    b[entry + 20] = 200; // name longer than the header
                    b
                },
                format!("at byte {}: partition 1's name", entry + 22),
            ),
            (
                {
                    let mut b = good.clone();
                    b[entry + 22] = 0xff;
                    b
                },
                "partition 1's name is not UTF-8".into(),
            ),
            (
                {
                    let mut b = good.clone();
                    b[42] = 250;
                    b
                },
                "at byte 64: the disk label".into(),
            ),
            (
                good[..good.len() - 3].to_vec(),
                "header truncated at byte".into(),
            ),
        ];
        for (bytes, want) in cases {
            let err = TraceReader::new(&bytes[..], Path::new("p.trace"))
                .err()
                .unwrap_or_else(|| panic!("no error for {want}"));
            let msg = err.to_string();
            assert!(
                msg.contains(&want) && msg.contains("p.trace"),
                "{want}: {msg}"
            );
        }
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let p = Path::new("x.trace");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "bad magic"),
            (b"GIF89a..........".to_vec(), "bad magic"),
            (header_bytes()[..20].to_vec(), "header truncated"),
            (
                {
                    let mut h = header_bytes();
                    h[8] = 3;
                    h
                },
                "at byte 8: format version 3",
            ),
            (
                {
                    let mut h = header_bytes();
                    h[16] = 8;
                    h
                },
                "record size 8",
            ),
            (
                {
                    let mut h = header_bytes();
                    h[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
                    h
                },
                "header size",
            ),
        ];
        for (bytes, want) in cases {
            let err = TraceReader::new(&bytes[..], p).err().expect(want);
            let msg = err.to_string();
            assert!(msg.contains(want) && msg.contains("x.trace"), "{msg}");
        }
    }

    #[test]
    fn partial_last_record_and_longer_records_are_handled() {
        let mut bytes = header_bytes();
        bytes[16] = 40; // records of 40 bytes: 8 unknown trailing bytes each
        for i in 0..3 {
            bytes.extend_from_slice(&rec(i, 0).encode());
            bytes.extend_from_slice(&[0xAA; 8]);
        }
        bytes.extend_from_slice(&[1, 2, 3]);
        let mut r = TraceReader::new(&bytes[..], Path::new("t")).unwrap();
        let got: Vec<Entry> = r.by_ref().map(|e| e.unwrap()).collect();
        assert_eq!(
            got,
            (0..3)
                .map(|i| Entry::Request(rec(i, 0)))
                .collect::<Vec<_>>()
        );
        assert_eq!(r.truncated_tail(), 3);
    }
}
