//! Guest I/O metrics of one served disk: what the guest asked for, how much,
//! how fast, and where the bytes came from.
//!
//! The device owns an `Arc<DiskMetrics>` (or `None` when metrics are off)
//! and, on each virtqueue's worker thread, brackets every request:
//!
//! ```ignore
//! let q = metrics.queue(queue_index);
//! let started = q.start();                 // when the chain is popped
//! // ... parse and execute the request ...
//! q.finish(started, Done { kind: ReqKind::Read, offset, len, status: Status::Ok });
//! ```
//!
//! Recording is a few relaxed atomic loads and stores on counters that
//! belong to the queue: each queue has one writer, its worker thread (see
//! `counter.rs` for why that makes read-modify-writes unnecessary), and its
//! counters sit on their own cache lines, so queues do not slow each other
//! down and nothing on the I/O path takes a lock — except the optional
//! request trace, whose per-queue buffer lock is only ever contended by the
//! trace thread's brief swaps (see [`trace`]).
//!
//! Readers take a [`Snapshot`]: served as Prometheus text and JSON by
//! [`serve_http`], written at exit by [`write_stats_json`], and read back by
//! `ocidisk stats`.

mod counter;
pub mod histogram;
pub mod http;
pub mod prometheus;
pub mod report;
pub mod trace;
pub mod units;

pub use histogram::{AtomicHistogram, HistogramSnapshot};
pub use http::serve_http;
pub use report::write_stats_json;
pub use trace::{TraceTotals, TraceWriter};

use counter::Counter;
use serde::{Deserialize, Serialize};
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The type of a virtio-blk request, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReqKind {
    /// VIRTIO_BLK_T_IN.
    Read,
    /// VIRTIO_BLK_T_OUT.
    Write,
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
    /// VIRTIO_BLK_T_DISCARD.
    Discard,
    /// VIRTIO_BLK_T_WRITE_ZEROES.
    WriteZeroes,
    /// VIRTIO_BLK_T_GET_ID.
    GetId,
    /// Any other request type (answered with VIRTIO_BLK_S_UNSUPP), and
    /// requests too malformed to have a type.
    Unsupported,
}

impl ReqKind {
    /// Every kind, in the order they are stored and reported.
    pub const ALL: [ReqKind; 7] = [
        ReqKind::Read,
        ReqKind::Write,
        ReqKind::Flush,
        ReqKind::Discard,
        ReqKind::WriteZeroes,
        ReqKind::GetId,
        ReqKind::Unsupported,
    ];

    /// The name used in labels and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ReqKind::Read => "read",
            ReqKind::Write => "write",
            ReqKind::Flush => "flush",
            ReqKind::Discard => "discard",
            ReqKind::WriteZeroes => "write_zeroes",
            ReqKind::GetId => "get_id",
            ReqKind::Unsupported => "unsupported",
        }
    }

    /// The kind's code in the trace format (its position in [`ReqKind::ALL`]).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The kind of a trace code, if it is one.
    pub fn from_code(code: u8) -> Option<ReqKind> {
        ReqKind::ALL.get(usize::from(code)).copied()
    }
}

/// How a request completed (the virtio-blk status byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// VIRTIO_BLK_S_OK.
    Ok,
    /// VIRTIO_BLK_S_IOERR.
    IoErr,
    /// VIRTIO_BLK_S_UNSUPP.
    Unsupported,
}

impl Status {
    /// The virtio status byte.
    pub fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::IoErr => 1,
            Status::Unsupported => 2,
        }
    }
}

/// A completed request, as the device reports it to [`QueueMetrics::finish`].
#[derive(Clone, Copy, Debug)]
pub struct Done {
    /// The request's type.
    pub kind: ReqKind,
    /// Byte offset on the disk (0 for requests without one).
    pub offset: u64,
    /// Bytes the request covers: data moved for reads, writes and GET_ID,
    /// the range for discard and write-zeroes (summed over its segments), 0
    /// for flush. Counted in the byte totals only when the request succeeded.
    pub len: u64,
    /// How it completed; anything but [`Status::Ok`] counts as an error.
    pub status: Status,
}

/// What names a disk in every exported series.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    /// The disk's serial (what GET_ID returns).
    pub serial: String,
    /// The vhost-user socket path the disk is served on.
    pub socket: String,
}

/// A request in flight, from [`QueueMetrics::start`]; hand it back to
/// [`QueueMetrics::finish`] (dropping it leaves the in-flight gauge raised).
#[must_use = "pass it to QueueMetrics::finish"]
#[derive(Debug)]
pub struct Started {
    at: Instant,
}

/// One request type's counters on one queue.
/// (Requests are the latency histogram's count.)
struct KindCounters {
    bytes: Counter,
    errors: Counter,
    latency: AtomicHistogram,
}

impl KindCounters {
    fn new() -> Self {
        KindCounters {
            bytes: Counter::default(),
            errors: Counter::default(),
            latency: AtomicHistogram::new(),
        }
    }
}

/// The counters of one virtqueue. Aligned to 128 bytes (two cache lines,
/// the unit adjacent-line prefetchers pull in) so that queues updated by
/// different threads never share a line.
///
/// The recording methods are for the queue's worker thread: one thread at a
/// time may record into a queue (each queue runs on its own worker
/// thread). Recording from two threads at once loses counts; it is
/// never unsafe. Any thread may read.
#[repr(align(128))]
pub struct QueueMetrics {
    in_flight: Counter,
    max_in_flight: Counter,
    base_read_bytes: Counter,
    overlay_read_bytes: Counter,
    kinds: [KindCounters; 7],
    trace: Option<Arc<trace::QueueTrace>>,
    index: u16,
}

impl QueueMetrics {
    fn new(index: u16, trace: Option<Arc<trace::QueueTrace>>) -> Self {
        QueueMetrics {
            in_flight: Counter::default(),
            max_in_flight: Counter::default(),
            base_read_bytes: Counter::default(),
            overlay_read_bytes: Counter::default(),
            kinds: std::array::from_fn(|_| KindCounters::new()),
            trace,
            index,
        }
    }

    /// Marks a request as taken off the queue: raises the in-flight gauge and
    /// starts its clock.
    #[inline]
    pub fn start(&self) -> Started {
        self.start_at(Instant::now())
    }

    /// Like [`QueueMetrics::start`] with a clock reading the caller already
    /// has — typically what the previous [`QueueMetrics::finish`] returned,
    /// which saves one clock read per request in a loop that pops and
    /// completes requests one after the other (the time to pop a request
    /// then counts in its latency, which is where it belongs).
    #[inline]
    pub fn start_at(&self, at: Instant) -> Started {
        self.in_flight.add(1);
        self.max_in_flight.raise(self.in_flight.get());
        Started { at }
    }

    /// Counts a completed request (and traces it when tracing is on).
    /// Returns the clock reading it took, for [`QueueMetrics::start_at`].
    #[inline]
    pub fn finish(&self, started: Started, done: Done) -> Instant {
        let now = Instant::now();
        let latency = now.saturating_duration_since(started.at);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let k = &self.kinds[done.kind as usize];
        if done.status == Status::Ok {
            k.bytes.add(done.len);
        } else {
            k.errors.add(1);
        }
        k.latency.record(ns);
        self.in_flight.sub(1);
        if let Some(t) = &self.trace {
            t.record(&trace::Record {
                time_ns: t.since_epoch(started.at),
                offset: done.offset,
                len: done.len,
                latency_ns: ns,
                queue: self.index,
                kind: done.kind.code(),
                status: done.status.code(),
            });
        }
        now
    }

    /// Counts bytes of a read that came from the base image (the block map).
    #[inline]
    pub fn add_base_read(&self, bytes: u64) {
        self.base_read_bytes.add(bytes);
    }

    /// Counts bytes of a read that came from the overlay (guest-written data).
    #[inline]
    pub fn add_overlay_read(&self, bytes: u64) {
        self.overlay_read_bytes.add(bytes);
    }

    fn snapshot(&self) -> QueueSnapshot {
        QueueSnapshot {
            queue: u32::from(self.index),
            in_flight: self.in_flight.get(),
            max_in_flight: self.max_in_flight.get(),
            base_read_bytes: self.base_read_bytes.get(),
            overlay_read_bytes: self.overlay_read_bytes.get(),
            kinds: ReqKind::ALL
                .iter()
                .zip(&self.kinds)
                .map(|(&kind, k)| {
                    let latency = k.latency.snapshot();
                    KindSnapshot {
                        kind,
                        requests: latency.count,
                        bytes: k.bytes.get(),
                        errors: k.errors.get(),
                        latency,
                    }
                })
                .collect(),
        }
    }
}

/// All metrics of one served disk: one [`QueueMetrics`] per virtqueue plus
/// disk-wide gauges. Shared as `Arc<DiskMetrics>` between the queue workers,
/// the HTTP endpoint and the exit path.
pub struct DiskMetrics {
    labels: Labels,
    queues: Box<[QueueMetrics]>,
    overlay_allocated_bytes: Counter,
    trace: Option<TraceWriter>,
    epoch: Instant,
    started_unix_ms: u64,
    /// What a registry image's fetching has done, when the disk comes
    /// from a registry.
    registry: OnceLock<RegistrySource>,
}

impl DiskMetrics {
    /// Metrics for a disk with `num_queues` virtqueues (at least one is
    /// made; queue indices wrap to fit `u16`).
    pub fn new(num_queues: usize, labels: Labels) -> Arc<Self> {
        Self::build(num_queues, labels, None)
    }

    /// Like [`DiskMetrics::new`], also writing every request to `trace`.
    pub fn with_trace(num_queues: usize, labels: Labels, trace: TraceWriter) -> Arc<Self> {
        Self::build(num_queues, labels, Some(trace))
    }

    fn build(num_queues: usize, labels: Labels, trace: Option<TraceWriter>) -> Arc<Self> {
        let queues = (0..num_queues.max(1))
            .map(|i| {
                let index = i as u16;
                QueueMetrics::new(index, trace.as_ref().map(|t| t.queue(index)))
            })
            .collect();
        let started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Arc::new(DiskMetrics {
            labels,
            queues,
            overlay_allocated_bytes: Counter::default(),
            trace,
            epoch: Instant::now(),
            started_unix_ms,
            registry: OnceLock::new(),
        })
    }

    /// The counters of virtqueue `q`. An index past the last queue gets the
    /// last queue's counters, so a device bug cannot panic the metrics.
    #[inline]
    pub fn queue(&self, q: usize) -> &QueueMetrics {
        let last = self.queues.len() - 1; // never empty, see `build`
        &self.queues[q.min(last)]
    }

    /// Number of queues counted.
    #[cfg(test)]
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Sets the overlay's allocated data bytes (a gauge; the overlay glue
    /// calls it whenever allocation changes, or before each snapshot).
    pub fn set_overlay_allocated(&self, bytes: u64) {
        self.overlay_allocated_bytes.set(bytes);
    }

    /// Reports the fetching of a registry image's blobs from now on (once;
    /// later calls are ignored).
    pub fn set_registry(&self, source: impl Fn() -> RegistrySnapshot + Send + Sync + 'static) {
        let _ = self.registry.set(Box::new(source));
    }

    /// Flushes and closes the request trace, if there is one; records that
    /// arrive afterwards are counted as dropped. Call it once at exit.
    pub fn close_trace(&self) -> io::Result<Option<TraceTotals>> {
        self.trace.as_ref().map(TraceWriter::close).transpose()
    }

    /// All counters at this moment.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            format: SNAPSHOT_FORMAT,
            serial: self.labels.serial.clone(),
            socket: self.labels.socket.clone(),
            pid: std::process::id(),
            started_unix_ms: self.started_unix_ms,
            uptime_ns: u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX),
            histogram: HistogramFormat::current(),
            overlay_allocated_bytes: self.overlay_allocated_bytes.get(),
            trace: self.trace.as_ref().map(TraceWriter::totals),
            registry: self.registry.get().map(|r| r()),
            queues: self.queues.iter().map(QueueMetrics::snapshot).collect(),
        }
    }
}

/// Reads the registry counters when a snapshot is taken (kept as a
/// function so that the metrics need not know where they come from).
type RegistrySource = Box<dyn Fn() -> RegistrySnapshot + Send + Sync>;

/// What fetching a registry image's blobs has done: the host chunk
/// cache's counters as this process saw them, and its registry client's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrySnapshot {
    /// Chunks fetched into the cache (and verified where they have hashes).
    pub chunk_fetches: u64,
    /// Their bytes.
    pub chunk_bytes: u64,
    /// Chunk fetch attempts that failed and were tried again.
    pub chunk_retries: u64,
    /// Chunks that could not be fetched within the attempt budget (a read
    /// of them failed).
    pub chunk_failures: u64,
    /// Time spent in successful chunk fetches, in µs.
    pub chunk_fetch_micros: u64,
    /// Chunks first found ready in the cache (counted once each).
    pub cache_hits: u64,
    /// Chunks a read found missing.
    pub cache_misses: u64,
    /// Registry requests that succeeded (manifests, configs, ranges).
    pub requests: u64,
    /// Body bytes received from the registry, every attempt included.
    pub received_bytes: u64,
    /// Registry requests repeated after a transient failure.
    pub request_retries: u64,
    /// Registry requests that failed for good.
    pub request_failures: u64,
    /// Tokens fetched from the registry's token endpoint.
    pub token_fetches: u64,
}

/// Version of the [`Snapshot`] JSON.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// How the histograms of a snapshot are bucketed, so a reader can check it
/// interprets bucket indices the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramFormat {
    /// Unit of the values: always "ns".
    pub unit: String,
    /// log2 of the sub-buckets per power of two.
    pub sub_bucket_bits: u32,
    /// The largest value with its own bucket.
    pub max_trackable_ns: u64,
}

impl HistogramFormat {
    /// The format of this build's histograms.
    pub fn current() -> Self {
        HistogramFormat {
            unit: "ns".into(),
            sub_bucket_bits: histogram::SUB_BUCKET_BITS,
            max_trackable_ns: histogram::MAX_TRACKABLE_NS,
        }
    }
}

/// All counters of a disk at one moment (what `/metrics.json` serves).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_FORMAT`].
    pub format: u32,
    /// The disk's serial.
    pub serial: String,
    /// The vhost-user socket path.
    pub socket: String,
    /// The serving process; with `started_unix_ms` it tells a restarted
    /// server from the same one.
    pub pid: u32,
    /// Wall-clock time the metrics were created, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Monotonic time since the metrics were created, in ns.
    pub uptime_ns: u64,
    /// Bucketing of every histogram.
    pub histogram: HistogramFormat,
    /// Bytes of data the overlay has allocated.
    pub overlay_allocated_bytes: u64,
    /// Request trace counters, when tracing.
    pub trace: Option<TraceTotals>,
    /// Registry and chunk cache counters, when the image comes from a
    /// registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySnapshot>,
    /// One entry per virtqueue.
    pub queues: Vec<QueueSnapshot>,
}

/// One virtqueue's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// The virtqueue index.
    pub queue: u32,
    /// Requests started and not yet finished.
    pub in_flight: u64,
    /// The highest `in_flight` seen.
    pub max_in_flight: u64,
    /// Bytes read from the base image.
    pub base_read_bytes: u64,
    /// Bytes read from the overlay.
    pub overlay_read_bytes: u64,
    /// One entry per request kind, in [`ReqKind::ALL`] order.
    pub kinds: Vec<KindSnapshot>,
}

/// One request kind's counters (on a queue, or summed over queues).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindSnapshot {
    /// The request type.
    pub kind: ReqKind,
    /// Requests completed.
    pub requests: u64,
    /// Bytes of the requests that succeeded.
    pub bytes: u64,
    /// Requests that did not complete with VIRTIO_BLK_S_OK.
    pub errors: u64,
    /// Latency from `start` to `finish`.
    pub latency: HistogramSnapshot,
}

impl KindSnapshot {
    fn empty(kind: ReqKind) -> Self {
        KindSnapshot {
            kind,
            requests: 0,
            bytes: 0,
            errors: 0,
            latency: HistogramSnapshot::default(),
        }
    }

    /// Adds another queue's counters of the same kind.
    pub fn merge(&mut self, other: &KindSnapshot) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
    }

    /// What was counted after `earlier` (the same kind, same queue(s)).
    pub fn since(&self, earlier: &KindSnapshot) -> KindSnapshot {
        KindSnapshot {
            kind: self.kind,
            requests: self.requests.saturating_sub(earlier.requests),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self.latency.since(&earlier.latency),
        }
    }
}

impl Snapshot {
    /// Each kind's counters summed over all queues, in [`ReqKind::ALL`] order.
    pub fn totals(&self) -> Vec<KindSnapshot> {
        ReqKind::ALL
            .iter()
            .map(|&kind| {
                let mut total = KindSnapshot::empty(kind);
                for k in self
                    .queues
                    .iter()
                    .flat_map(|q| &q.kinds)
                    .filter(|k| k.kind == kind)
                {
                    total.merge(k);
                }
                total
            })
            .collect()
    }

    /// Requests in flight over all queues.
    pub fn in_flight(&self) -> u64 {
        self.queues.iter().map(|q| q.in_flight).sum()
    }

    /// Bytes read from the base image over all queues.
    pub fn base_read_bytes(&self) -> u64 {
        self.queues.iter().map(|q| q.base_read_bytes).sum()
    }

    /// Bytes read from the overlay over all queues.
    pub fn overlay_read_bytes(&self) -> u64 {
        self.queues.iter().map(|q| q.overlay_read_bytes).sum()
    }

    /// Whether `earlier` came from the same metrics (same process, not
    /// restarted), so that differences between the two mean something.
    pub fn same_origin(&self, earlier: &Snapshot) -> bool {
        self.pid == earlier.pid
            && self.started_unix_ms == earlier.started_unix_ms
            && self.uptime_ns >= earlier.uptime_ns
            && self.histogram == earlier.histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(kind: ReqKind, len: u64, status: Status) -> Done {
        Done {
            kind,
            offset: 0,
            len,
            status,
        }
    }

    #[test]
    fn counts_per_queue_and_kind() {
        let m = DiskMetrics::new(2, Labels::default());
        let q0 = m.queue(0);
        let a = q0.start();
        let b = q0.start();
        assert_eq!(m.snapshot().queues[0].in_flight, 2);
        q0.finish(a, done(ReqKind::Read, 4096, Status::Ok));
        q0.finish(b, done(ReqKind::Write, 512, Status::IoErr));
        let c = m.queue(1).start();
        m.queue(1).finish(c, done(ReqKind::Read, 8192, Status::Ok));
        m.queue(1).add_base_read(8000);
        m.queue(1).add_overlay_read(192);
        m.set_overlay_allocated(1 << 20);

        let s = m.snapshot();
        assert_eq!(s.queues.len(), 2);
        assert_eq!(s.queues[0].in_flight, 0);
        assert_eq!(s.queues[0].max_in_flight, 2);
        assert_eq!(s.queues[1].max_in_flight, 1);
        let totals = s.totals();
        let read = &totals[0];
        assert_eq!(
            (read.kind, read.requests, read.bytes, read.errors),
            (ReqKind::Read, 2, 12288, 0)
        );
        assert_eq!(read.latency.count, 2);
        let write = &totals[1];
        assert_eq!((write.requests, write.bytes, write.errors), (1, 0, 1));
        assert_eq!(s.base_read_bytes(), 8000);
        assert_eq!(s.overlay_read_bytes(), 192);
        assert_eq!(s.overlay_allocated_bytes, 1 << 20);
        assert!(s.same_origin(&s));
    }

    #[test]
    fn out_of_range_queue_does_not_panic() {
        let m = DiskMetrics::new(0, Labels::default());
        assert_eq!(m.num_queues(), 1);
        let s = m.queue(99).start();
        m.queue(99).finish(s, done(ReqKind::Flush, 0, Status::Ok));
        assert_eq!(m.snapshot().totals()[2].requests, 1);
    }

    #[test]
    fn kind_codes_round_trip() {
        for k in ReqKind::ALL {
            assert_eq!(ReqKind::from_code(k.code()), Some(k));
        }
        assert_eq!(ReqKind::from_code(7), None);
    }

    #[test]
    fn snapshot_json_round_trips() {
        let m = DiskMetrics::new(
            1,
            Labels {
                serial: "s\"1".into(),
                socket: "/tmp/x.sock".into(),
            },
        );
        let s = m.queue(0).start();
        m.queue(0).finish(s, done(ReqKind::GetId, 20, Status::Ok));
        let snap = m.snapshot();
        let text = serde_json::to_string(&snap).unwrap();
        let back: Snapshot = serde_json::from_str(&text).unwrap();
        assert_eq!(back, snap);
    }
}
