//! Issue 11: no guest and no frontend can crash, wedge or misuse the
//! backend.
//!
//! A raw vhost-user frontend of the tests' own
//! (`ocidisk_tests::vhost_frontend`) drives the real `ocidisk serve` with
//! malformed requests and malformed protocol messages. After every case the
//! backend must still run, must have answered or refused cleanly (an error
//! status, a non-zero REPLY_ACK, or a closed connection; never silence),
//! must still serve its other queue and the next frontend, must have
//! written no guest memory outside the buffers it was given (a canary
//! pattern fills the rest), must end within 5 s of SIGTERM, and must have
//! changed no blob of the image and no block of the overlay the case did
//! not write.
//!
//! Alone: `cargo nextest run -p ocidisk-tests --test serve
//! -E 'test(/^hostile_frontend::/)'`
//! (`OCIDISK_BIN=/path/to/ocidisk` tests another build).

use ocidisk_tests::vhost_frontend::backend::Backend;
use ocidisk_tests::vhost_frontend::conn::{self, feature, flags, req, Answer, Conn, RegionDesc};
use ocidisk_tests::vhost_frontend::fixture::{Fixture, DISK_SIZE, PART_START};
use ocidisk_tests::vhost_frontend::memory::{memfd, Region};
use ocidisk_tests::vhost_frontend::ring::{
    blk, eventfd, eventfd_flags, Desc, Queue, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE,
};
use ocidisk_tests::vhost_frontend::session::{
    standard_steps, BlkDone, Options, Seg, Session, Step, GPA,
};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Sectors on the disk.
const CAPACITY: u64 = DISK_SIZE / 512;
/// A sector inside the partition's pattern.
const SECTOR: u64 = PART_START / 512;

/// Two queues: hostile things happen on queue 0, queue 1 must keep serving.
fn two_queues() -> Options {
    Options {
        queues: 2,
        ..Options::default()
    }
}

/// A served disk with two queues, and the checks every case ends with.
struct Case {
    fx: Fixture,
    be: Backend,
}

impl Case {
    fn new() -> Self {
        Self::with(&[])
    }

    fn with(extra: &[&str]) -> Self {
        let mut args = vec!["--num-queues", "2"];
        args.extend_from_slice(extra);
        let (fx, be) = Fixture::start(&args);
        Self { fx, be }
    }

    fn read_only() -> Self {
        let (fx, be) = Fixture::start_read_only(&["--num-queues", "2"]);
        Self { fx, be }
    }

    fn session(&self) -> Session {
        self.session_with(two_queues())
    }

    fn session_with(&self, opts: Options) -> Session {
        Session::start(&self.fx.socket, opts)
            .unwrap_or_else(|e| panic!("setup failed: {e}\nlog:\n{}", self.be.log()))
    }

    /// Queue `q` of `s` still reads the disk correctly.
    fn check_queue(&self, s: &mut Session, q: usize) -> Result<(), String> {
        let got = s
            .read(q, PART_START, 4096)
            .map_err(|e| format!("queue {q} no longer serves: {e}"))?;
        if got != self.fx.expected(PART_START, 4096) {
            return Err(format!("queue {q} read wrong data"));
        }
        Ok(())
    }

    /// A new frontend is served: full setup, reads on both queues.
    fn check_next_frontend(&mut self) -> Result<(), String> {
        self.be.alive()?;
        let mut s = Session::start(&self.fx.socket, two_queues())
            .map_err(|e| format!("the next frontend cannot set up: {e}"))?;
        for q in 0..2 {
            self.check_queue(&mut s, q)
                .map_err(|e| format!("next frontend: {e}"))?;
        }
        let got = s.read(0, 0, 4096)?;
        if got != self.fx.expected(0, 4096) {
            return Err("next frontend: the first sectors read wrong".into());
        }
        s.mem.check().map_err(|e| format!("next frontend: {e}"))?;
        Ok(())
    }

    /// The end of a case: `s`'s other queue `other` still serves (if
    /// given), no guest memory outside the given buffers changed, the
    /// backend lives (and, with `idle`, does not spin), serves the next
    /// frontend, exits within 5 s of SIGTERM, and the blobs and overlay hold
    /// what they should.
    fn end(mut self, s: Option<Session>, other: Option<usize>, idle: bool) {
        let r = self.end_inner(s, other, idle);
        if let Err(e) = r {
            let log = self.be.log();
            let _ = self.be.terminate_within(Duration::from_secs(5));
            panic!("{e}\nbackend log:\n{log}");
        }
        let Case { fx, be } = self;
        if let Err(e) = fx.finish(be) {
            panic!("{e}");
        }
    }

    fn end_inner(
        &mut self,
        s: Option<Session>,
        other: Option<usize>,
        idle: bool,
    ) -> Result<(), String> {
        if let Some(mut s) = s {
            self.be.alive()?;
            if let Some(q) = other {
                self.check_queue(&mut s, q)?;
            }
            s.mem.check()?;
            if idle {
                self.be.assert_idle("with the hostile frontend connected")?;
            }
        }
        self.be.alive()?;
        self.check_next_frontend()?;
        if idle {
            self.be.assert_idle("after the next frontend")?;
        }
        Ok(())
    }
}

fn assert_status(done: &BlkDone, what: &str) {
    assert!(
        matches!(done.status, Some(blk::S_OK | blk::S_IOERR | blk::S_UNSUPP)),
        "{what}: no valid status written ({:?})",
        done.status
    );
}

/// A request that must fail: a status is written, and it is not OK.
fn assert_refused(done: &BlkDone, what: &str) {
    assert!(
        matches!(done.status, Some(blk::S_IOERR | blk::S_UNSUPP)),
        "{what}: expected an error status, got {:?}",
        done.status
    );
}

// ---------------------------------------------------------------------
// Request-level cases.
// ---------------------------------------------------------------------

/// The 16-byte header split across two descriptors at every offset, and
/// across 16 one-byte descriptors; data and status in one descriptor. The
/// device must not assume a framing (virtio 1.x, 2.7.4).
#[test]
fn header_split_across_descriptors_at_every_offset() {
    let c = Case::new();
    let mut s = c.session();
    let want = c.fx.expected(PART_START, 4096);
    for k in 1..16 {
        let h = blk::header(blk::T_IN, SECTOR);
        let done = s
            .run(
                0,
                &[
                    Seg::Out(h[..k].to_vec()),
                    Seg::Out(h[k..].to_vec()),
                    Seg::In(4096),
                    Seg::In(1),
                ],
            )
            .unwrap();
        assert_eq!(done.status, Some(blk::S_OK), "header split at {k}");
        assert!(done.data == want, "header split at {k}: wrong data");
    }
    let h = blk::header(blk::T_IN, SECTOR);
    let mut segs: Vec<Seg> = h.iter().map(|&b| Seg::Out(vec![b])).collect();
    segs.extend([Seg::In(4096), Seg::In(1)]);
    let done = s.run(0, &segs).unwrap();
    assert_eq!(
        done.status,
        Some(blk::S_OK),
        "16 one-byte header descriptors"
    );
    assert!(done.data == want);
    // Data and status in one descriptor.
    let done = s.run(0, &[Seg::Out(h.clone()), Seg::In(4097)]).unwrap();
    assert_eq!(
        done.status,
        Some(blk::S_OK),
        "data and status in one descriptor"
    );
    assert!(done.data == want);
    c.end(Some(s), Some(1), false);
}

/// The header in a device-writable descriptor; data-in in a device-readable
/// one (which the device must not write); write data in a device-writable
/// one (which must not reach the disk); the status in a readable one.
#[test]
fn wrong_descriptor_directions() {
    let c = Case::new();
    let mut s = c.session();
    // Header device-writable.
    let hdr = s.alloc.alloc(16);
    s.mem.write(hdr, &blk::header(blk::T_IN, SECTOR));
    s.mem.allow(hdr, 16);
    let done = s
        .run(0, &[Seg::Raw(hdr, 16, true), Seg::In(4096), Seg::In(1)])
        .unwrap();
    assert_status(&done, "header in a writable descriptor");
    // Data-in device-readable: must stay untouched (the canary check).
    let buf = s.alloc.alloc(4096);
    s.mem.write(buf, &[0x5a; 4096]);
    let done = s
        .run(
            0,
            &[
                Seg::Out(blk::header(blk::T_IN, SECTOR)),
                Seg::Raw(buf, 4096, false),
                Seg::In(1),
            ],
        )
        .unwrap();
    assert_status(&done, "data-in in a readable descriptor");
    // Write data device-writable: nothing may reach the disk.
    let buf = s.alloc.alloc(4096);
    s.mem.write(buf, &[0xab; 4096]);
    s.mem.allow(buf, 4096);
    let done = s
        .run(
            0,
            &[
                Seg::Out(blk::header(blk::T_OUT, SECTOR)),
                Seg::Raw(buf, 4096, true),
                Seg::In(1),
            ],
        )
        .unwrap();
    assert_status(&done, "write data in a writable descriptor");
    // The status byte device-readable: must stay untouched.
    let st = s.alloc.alloc(1);
    s.mem.write(st, &[0x77]);
    let parts = s.submit(
        0,
        &[
            Seg::Out(blk::header(blk::T_IN, SECTOR)),
            Seg::In(4096),
            Seg::Raw(st, 1, false),
        ],
    );
    let _ = parts;
    let _ = s.complete_within(0, 1, Duration::from_secs(2));
    s.mem.check().unwrap();
    // The queue still works.
    c.check_queue(&mut s, 0).unwrap();
    c.end(Some(s), Some(1), false);
}

/// Sectors at and past the end, and sectors whose byte offset wraps 2^64
/// (onto offset 0): an error status, and nothing written.
#[test]
fn out_of_range_and_wrapping_sectors() {
    let c = Case::new();
    let mut s = c.session();
    let cases: &[(u64, u32)] = &[
        (CAPACITY, 512),
        (CAPACITY - 1, 1024),
        (CAPACITY + 1000, 4096),
        (u64::MAX, 512),
        (u64::MAX - 1, 4096),
        (1 << 55, 512),            // 2^64 bytes: wraps to offset 0
        ((1 << 55) + SECTOR, 512), // wraps into the partition
        (u64::MAX / 512, 4096),
    ];
    for &(sector, len) in cases {
        let done = s.blk(0, blk::T_IN, sector, &[], len).unwrap();
        assert_refused(&done, &format!("read of {len} at sector {sector}"));
        let done = s
            .blk(0, blk::T_OUT, sector, &vec![0xab; len as usize], 0)
            .unwrap();
        assert_refused(&done, &format!("write of {len} at sector {sector}"));
        let seg = blk::segment(sector, len / 512, 0);
        let done = s.blk(0, blk::T_WRITE_ZEROES, 0, &seg, 0).unwrap();
        assert_refused(&done, &format!("write-zeroes at sector {sector}"));
        let done = s.blk(0, blk::T_DISCARD, 0, &seg, 0).unwrap();
        assert_refused(&done, &format!("discard at sector {sector}"));
    }
    // The last sector itself is fine.
    let done = s.blk(0, blk::T_IN, CAPACITY - 1, &[], 512).unwrap();
    assert_eq!(done.status, Some(blk::S_OK), "reading the last sector");
    c.end(Some(s), Some(1), false);
}

/// Zero-length and odd-length transfers: a status always; an odd write
/// either fails or lands exactly as asked.
#[test]
fn zero_and_odd_lengths() {
    let mut c = Case::new();
    let mut s = c.session();
    for ty in [
        blk::T_IN,
        blk::T_OUT,
        blk::T_FLUSH,
        blk::T_GET_ID,
        blk::T_DISCARD,
        blk::T_WRITE_ZEROES,
    ] {
        let done = s.blk(0, ty, SECTOR, &[], 0).unwrap();
        assert_status(&done, &format!("type {ty} without data"));
    }
    let done = s.blk(0, blk::T_IN, SECTOR, &[], 100).unwrap();
    assert_status(&done, "read of 100 bytes");
    let data = vec![0xcd; 100];
    let done = s.blk(0, blk::T_OUT, SECTOR, &data, 0).unwrap();
    assert_status(&done, "write of 100 bytes");
    if done.status == Some(blk::S_OK) {
        c.fx.record_write(PART_START, &data);
    }
    // A zero-length descriptor in the middle of a read.
    let done = s
        .run(
            0,
            &[
                Seg::Out(blk::header(blk::T_IN, SECTOR)),
                Seg::In(512),
                Seg::Raw(GPA, 0, true),
                Seg::In(512),
                Seg::In(1),
            ],
        )
        .unwrap();
    assert_status(&done, "read with a zero-length descriptor");
    c.end(Some(s), Some(1), false);
}

/// Data descriptors that overlap each other: a read fills the shared
/// memory once per descriptor, in order; a write sends the same memory
/// twice. The device never holds guest memory as a Rust slice, so the
/// aliasing is the guest's business; the request succeeds and the backend
/// serves on.
#[test]
fn overlapping_data_descriptors() {
    let mut c = Case::new();
    let mut s = c.session();
    let at = PART_START;
    let buf = s.alloc.alloc(8192);
    s.mem.allow(buf, 8192);
    let done = s
        .run(
            0,
            &[
                Seg::Out(blk::header(blk::T_IN, at / 512)),
                Seg::Raw(buf, 4096, true),
                Seg::Raw(buf + 2048, 4096, true),
                Seg::In(1),
            ],
        )
        .unwrap();
    assert_eq!(
        done.status,
        Some(blk::S_OK),
        "read into overlapping buffers"
    );
    // The second descriptor alone covers the last 2 KiB; the 2 KiB both
    // cover hold one of the two answers, and the first 2 KiB the first's.
    let expected = c.fx.expected(at, 8192);
    let got = s.mem.read(buf, 6144);
    assert_eq!(got[..2048], expected[..2048]);
    assert_eq!(got[4096..6144], expected[6144..8192]);
    assert!(
        got[2048..4096] == expected[2048..4096] || got[2048..4096] == expected[4096..6144],
        "the overlapping 2 KiB hold neither answer"
    );

    // One 4 KiB buffer in two descriptors: both sectors' ranges get it.
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let src = s.alloc.alloc(4096);
    s.mem.write(src, &data);
    let target = PART_START + (64 << 10);
    let done = s
        .run(
            0,
            &[
                Seg::Out(blk::header(blk::T_OUT, target / 512)),
                Seg::Raw(src, 4096, false),
                Seg::Raw(src, 4096, false),
                Seg::In(1),
            ],
        )
        .unwrap();
    assert_eq!(
        done.status,
        Some(blk::S_OK),
        "write from overlapping buffers"
    );
    c.fx.record_write(target, &data);
    c.fx.record_write(target + 4096, &data);
    let back = s.read(0, target, 8192).unwrap();
    assert_eq!(back[..4096], data[..]);
    assert_eq!(back[4096..], data[..]);
    c.end(Some(s), Some(1), true);
}

/// Descriptor lengths far beyond guest memory, and a chain whose lengths
/// add up past 4 GiB (a 0xffffffff data descriptor): the status byte is
/// still written.
#[test]
fn huge_lengths_and_chains_past_4gib() {
    let c = Case::new();
    let mut s = c.session();
    let buf = s.alloc.alloc(4096);
    for (ty, write) in [(blk::T_IN, true), (blk::T_OUT, false)] {
        for len in [0x7fff_f000u32, 0xffff_ffff] {
            if write {
                s.mem.allow(buf, u64::from(len));
            }
            let done = s
                .run(
                    0,
                    &[
                        Seg::Out(blk::header(ty, SECTOR)),
                        Seg::Raw(buf, len, write),
                        Seg::In(1),
                    ],
                )
                .unwrap();
            assert_refused(
                &done,
                &format!("type {ty} with a data descriptor of {len:#x} bytes"),
            );
        }
        // Two 0x80000000 descriptors, and 0xffffffff after real data.
        let segs = [
            Seg::Out(blk::header(ty, SECTOR)),
            Seg::Raw(buf, 0x8000_0000, write),
            Seg::Raw(buf, 0x8000_0000, write),
            Seg::In(1),
        ];
        let done = s.run(0, &segs).unwrap();
        assert_refused(&done, &format!("type {ty} with 2 x 2 GiB"));
        let segs = [
            Seg::Out(blk::header(ty, SECTOR)),
            if write {
                Seg::In(4096)
            } else {
                Seg::Out(vec![0xab; 4096])
            },
            Seg::Raw(buf, 0xffff_ffff, write),
            Seg::In(1),
        ];
        let done = s.run(0, &segs).unwrap();
        assert_refused(&done, &format!("type {ty} with 4 KiB then 0xffffffff"));
    }
    c.check_queue(&mut s, 0).unwrap();
    c.end(Some(s), Some(1), false);
}

/// Buffers outside guest memory, straddling its end, or wrapping the
/// address space: an error status, the queue keeps working.
#[test]
fn addresses_outside_or_straddling_guest_memory() {
    let c = Case::new();
    let mut s = c.session();
    let end = GPA + s.opts.mem_size as u64;
    let addrs = [
        0u64,
        GPA - 4096,
        GPA - 100,
        end,
        end - 100,
        end + (1 << 30),
        u64::MAX - 100,
        u64::MAX,
    ];
    for a in addrs {
        s.mem.allow(a, 4096);
        let done = s
            .run(
                0,
                &[
                    Seg::Out(blk::header(blk::T_IN, SECTOR)),
                    Seg::Raw(a, 4096, true),
                    Seg::In(1),
                ],
            )
            .unwrap();
        assert_refused(&done, &format!("read into {a:#x}"));
        let done = s
            .run(
                0,
                &[
                    Seg::Out(blk::header(blk::T_OUT, SECTOR)),
                    Seg::Raw(a, 4096, false),
                    Seg::In(1),
                ],
            )
            .unwrap();
        assert_refused(&done, &format!("write from {a:#x}"));
        // The header outside memory.
        let done = s
            .run(0, &[Seg::Raw(a, 16, false), Seg::In(4096), Seg::In(1)])
            .unwrap();
        assert_refused(&done, &format!("header at {a:#x}"));
    }
    // The status byte outside memory: no status can be written; the chain
    // should still come back, and the queue must go on.
    for a in [0u64, end, u64::MAX] {
        s.submit(
            0,
            &[
                Seg::Out(blk::header(blk::T_IN, SECTOR)),
                Seg::In(512),
                Seg::Raw(a, 1, true),
            ],
        );
        let back = s.complete_within(0, 1, Duration::from_secs(2));
        eprintln!("status at {a:#x}: chain returned: {}", back.is_ok());
        c.check_queue(&mut s, 0).unwrap();
    }
    c.end(Some(s), Some(1), false);
}

/// A descriptor chain that loops back on itself, and one that points past
/// the table: no hang, no spin; the other queue and the next frontend go
/// on.
#[test]
fn descriptor_loops_and_bad_next_indexes() {
    let c = Case::new();
    let mut s = c.session();
    let h = s.alloc.alloc(16);
    s.mem.write(h, &blk::header(blk::T_IN, SECTOR));
    let data = s.alloc.alloc(512);
    s.mem.allow(data, 512);
    let st = s.alloc.alloc(1);
    s.mem.allow(st, 1);
    let q = &mut s.queues[0];
    let b = q.take_descs(3);
    let (d0, d1, d2) = (b, (b + 1) % q.size, (b + 2) % q.size);
    // header -> data -> status -> header ...
    q.write_desc(
        &s.mem,
        d0,
        Desc {
            addr: h,
            len: 16,
            flags: DESC_F_NEXT,
            next: d1,
        },
    );
    q.write_desc(
        &s.mem,
        d1,
        Desc {
            addr: data,
            len: 512,
            flags: DESC_F_NEXT | DESC_F_WRITE,
            next: d2,
        },
    );
    q.write_desc(
        &s.mem,
        d2,
        Desc {
            addr: st,
            len: 1,
            flags: DESC_F_NEXT | DESC_F_WRITE,
            next: d0,
        },
    );
    q.publish(&s.mem, d0);
    // A descriptor that is its own next.
    let d3 = q.take_descs(1);
    q.write_desc(
        &s.mem,
        d3,
        Desc {
            addr: h,
            len: 16,
            flags: DESC_F_NEXT,
            next: d3,
        },
    );
    q.publish(&s.mem, d3);
    // next beyond the table.
    let d4 = q.take_descs(1);
    q.write_desc(
        &s.mem,
        d4,
        Desc {
            addr: h,
            len: 16,
            flags: DESC_F_NEXT,
            next: 300,
        },
    );
    q.publish(&s.mem, d4);
    let d5 = q.take_descs(1);
    q.write_desc(
        &s.mem,
        d5,
        Desc {
            addr: h,
            len: 16,
            flags: DESC_F_NEXT,
            next: u16::MAX,
        },
    );
    q.publish(&s.mem, d5);
    q.kick().unwrap();
    let back = s.complete_within(0, 4, Duration::from_secs(2));
    eprintln!("bad chains returned: {back:?}");
    c.end(Some(s), Some(1), true);
}

/// A chain longer than the ring (every descriptor of a 16-entry table,
/// linked in a circle) and a chain of exactly the ring's size.
#[test]
fn chains_longer_than_the_ring() {
    let c = Case::new();
    let opts = Options {
        queues: 2,
        queue_size: 16,
        ..Options::default()
    };
    let mut s = c.session_with(opts);
    let h = s.alloc.alloc(16);
    s.mem.write(h, &blk::header(blk::T_IN, SECTOR));
    let data = s.alloc.alloc(16 * 512);
    s.mem.allow(data, 16 * 512);
    let q = &mut s.queues[0];
    // All 16 descriptors, the last pointing back to the first.
    for i in 0..16u16 {
        let d = if i == 0 {
            Desc {
                addr: h,
                len: 16,
                flags: DESC_F_NEXT,
                next: 1,
            }
        } else {
            Desc {
                addr: data + 512 * u64::from(i),
                len: 512,
                flags: DESC_F_NEXT | DESC_F_WRITE,
                next: (i + 1) % 16,
            }
        };
        q.write_desc(&s.mem, i, d);
    }
    q.publish(&s.mem, 0);
    q.kick().unwrap();
    let back = s.complete_within(0, 1, Duration::from_secs(2));
    eprintln!("circular chain returned: {back:?}");
    c.end(Some(s), Some(1), true);
}

/// Indirect tables that are empty, not a multiple of 16 bytes, outside or
/// straddling memory, nested, combined with NEXT, with bad or looping next
/// indexes, or huge.
#[test]
fn bad_indirect_tables() {
    let c = Case::new();
    let mut s = c.session();
    assert!(
        s.acked & feature::RING_INDIRECT_DESC != 0,
        "INDIRECT_DESC is not offered"
    );
    let h = s.alloc.alloc(16);
    s.mem.write(h, &blk::header(blk::T_IN, SECTOR));
    let data = s.alloc.alloc(4096);
    s.mem.allow(data, 4096);
    let st = s.alloc.alloc(1);
    s.mem.allow(st, 1);
    let table_of = |descs: &[Desc]| -> Vec<u8> { descs.iter().flat_map(|d| d.bytes()).collect() };
    let good = [
        Desc {
            addr: h,
            len: 16,
            flags: DESC_F_NEXT,
            next: 1,
        },
        Desc {
            addr: data,
            len: 4096,
            flags: DESC_F_NEXT | DESC_F_WRITE,
            next: 2,
        },
        Desc {
            addr: st,
            len: 1,
            flags: DESC_F_WRITE,
            next: 0,
        },
    ];
    let end = GPA + s.opts.mem_size as u64;
    // A good indirect request works.
    {
        let t = s.alloc.alloc(48);
        s.mem.write(t, &table_of(&good));
        let q = &mut s.queues[0];
        let d = q.take_descs(1);
        q.write_desc(
            &s.mem,
            d,
            Desc {
                addr: t,
                len: 48,
                flags: DESC_F_INDIRECT,
                next: 0,
            },
        );
        q.publish(&s.mem, d);
        q.kick().unwrap();
        s.complete(0, 1).unwrap();
        assert_eq!(s.mem.read(st, 1)[0], blk::S_OK, "a good indirect request");
        assert!(s.mem.read(data, 4096) == c.fx.expected(PART_START, 4096));
    }
    let mut nested = good;
    nested[1].flags |= DESC_F_INDIRECT;
    let mut bad_next = good;
    bad_next[1].next = 7;
    let mut looped = good;
    looped[2].flags |= DESC_F_NEXT;
    looped[2].next = 0;
    let t = s.alloc.alloc(4096);
    let huge: Vec<Desc> = (0..256)
        .map(|i| Desc {
            addr: h,
            len: 16,
            flags: DESC_F_NEXT,
            next: (i + 1) % 256,
        })
        .collect();
    let t_huge = s.alloc.alloc(256 * 16);
    s.mem.write(t_huge, &table_of(&huge));
    // (what, table address, table length, head flags, table contents)
    type Variant<'a> = (&'a str, u64, u32, u16, Option<Vec<u8>>);
    let variants: Vec<Variant> = vec![
        ("empty table", t, 0, DESC_F_INDIRECT, Some(table_of(&good))),
        (
            "table of 17 bytes",
            t,
            17,
            DESC_F_INDIRECT,
            Some(table_of(&good)),
        ),
        (
            "table of 40 bytes",
            t,
            40,
            DESC_F_INDIRECT,
            Some(table_of(&good)),
        ),
        ("table outside memory", 0, 48, DESC_F_INDIRECT, None),
        (
            "table straddling the end",
            end - 16,
            48,
            DESC_F_INDIRECT,
            None,
        ),
        (
            "table at the top of the address space",
            u64::MAX - 15,
            48,
            DESC_F_INDIRECT,
            None,
        ),
        (
            "nested indirect",
            t,
            48,
            DESC_F_INDIRECT,
            Some(table_of(&nested)),
        ),
        (
            "INDIRECT with NEXT",
            t,
            48,
            DESC_F_INDIRECT | DESC_F_NEXT,
            Some(table_of(&good)),
        ),
        (
            "INDIRECT with WRITE",
            t,
            48,
            DESC_F_INDIRECT | DESC_F_WRITE,
            Some(table_of(&good)),
        ),
        (
            "next past the table",
            t,
            48,
            DESC_F_INDIRECT,
            Some(table_of(&bad_next)),
        ),
        (
            "loop in the table",
            t,
            48,
            DESC_F_INDIRECT,
            Some(table_of(&looped)),
        ),
        (
            "circular table of 256",
            t_huge,
            256 * 16,
            DESC_F_INDIRECT,
            None,
        ),
        (
            "table of 4 GiB",
            t,
            0xffff_fff0,
            DESC_F_INDIRECT,
            Some(table_of(&good)),
        ),
    ];
    for (what, addr, len, hflags, contents) in variants {
        if let Some(bytes) = contents {
            s.mem.write(t, &bytes);
        }
        s.mem.write(st, &[0xff]);
        let q = &mut s.queues[0];
        let d = q.take_descs(1);
        q.write_desc(
            &s.mem,
            d,
            Desc {
                addr,
                len,
                flags: hflags,
                next: (d + 1) % q.size,
            },
        );
        q.publish(&s.mem, d);
        q.kick().unwrap();
        let back = s.complete_within(0, 1, Duration::from_secs(2));
        eprintln!(
            "{what}: returned {back:?}, status byte {:#x}",
            s.mem.read(st, 1)[0]
        );
        c.be_alive_or_panic(what);
    }
    c.end(Some(s), Some(1), true);
}

impl Case {
    fn be_alive_or_panic(&self, what: &str) {
        // `alive` needs &mut; poll /proc instead.
        let pid = self.be.pid().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        assert!(
            !stat.is_empty() && state != "Z" && state != "X",
            "{what}: the backend died; log:\n{}",
            self.be.log()
        );
    }
}

/// The avail index jumps far ahead of the ring (EVENT_IDX negotiated): the
/// queue is broken, and the backend must say so once and stop it, not spin
/// (CPU time over 1 s, log volume); the other queue and the next frontend
/// go on.
#[test]
fn avail_index_jumps_ahead_with_event_idx() {
    avail_index_jump(true);
}

/// The same without EVENT_IDX.
#[test]
fn avail_index_jumps_ahead_without_event_idx() {
    avail_index_jump(false);
}

fn avail_index_jump(event_idx: bool) {
    let c = Case::new();
    let mut s = c.session_with(Options {
        event_idx,
        ..two_queues()
    });
    assert_eq!(s.acked & feature::RING_EVENT_IDX != 0, event_idx);
    // A good request first, then the jump.
    c.check_queue(&mut s, 0).unwrap();
    let q = &mut s.queues[0];
    let idx = q.avail_idx.wrapping_add(1000);
    q.set_avail_idx(&s.mem, idx);
    q.kick().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.end(Some(s), Some(1), true);
}

/// Avail ring entries naming descriptors past the table.
#[test]
fn bad_head_indexes() {
    let c = Case::new();
    let mut s = c.session();
    c.check_queue(&mut s, 0).unwrap();
    let q = &mut s.queues[0];
    for head in [256u16, 257, 1024, u16::MAX] {
        q.publish(&s.mem, head);
    }
    q.kick().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.end(Some(s), Some(1), true);
}

/// Discard and write-zeroes with bad segment lists: no segments, a partial
/// segment, too many, ranges past the end or wrapping, too many sectors,
/// unknown or forbidden flags. An error status, and nothing changes.
#[test]
fn discard_and_write_zeroes_segment_lists() {
    let mut c = Case::new();
    let mut s = c.session();
    let seg = blk::segment;
    let ok_seg = seg(SECTOR, 8, 0);
    let many: Vec<u8> = (0..33).flat_map(|i| seg(SECTOR + 8 * i, 8, 0)).collect();
    let invalid: Vec<(&str, Vec<u8>)> = vec![
        ("20 bytes", [ok_seg.clone(), vec![0; 4]].concat()),
        ("8 bytes", ok_seg[..8].to_vec()),
        ("33 segments (max_discard_seg is 32)", many),
        ("past the end", seg(CAPACITY - 8, 16, 0)),
        ("at the last sector + 1", seg(CAPACITY, 1, 0)),
        ("sector 2^64-1", seg(u64::MAX, 1, 0)),
        ("wrapping to sector 0", seg(1 << 55, 8, 0)),
        ("wrapping into the partition", seg((1 << 55) + SECTOR, 8, 0)),
        ("u32::MAX sectors", seg(SECTOR, u32::MAX, 0)),
        ("unknown flag bits", seg(SECTOR, 8, 0xffff_fffe)),
        ("flag bit 1", seg(SECTOR, 8, 2)),
    ];
    for ty in [blk::T_DISCARD, blk::T_WRITE_ZEROES] {
        for (what, body) in &invalid {
            let done = s.blk(0, ty, 0, body, 0).unwrap();
            assert_refused(&done, &format!("type {ty}: {what}"));
        }
        // No segments at all: any status, nothing changes.
        let done = s.blk(0, ty, 0, &[], 0).unwrap();
        assert_status(&done, &format!("type {ty} without segments"));
    }
    // Discard with the unmap flag is not allowed (virtio 1.2, 5.2.6.2).
    let done = s
        .blk(0, blk::T_DISCARD, 0, &seg(SECTOR, 8, blk::WZ_UNMAP), 0)
        .unwrap();
    assert_refused(&done, "discard with the unmap flag");
    // One good segment and one bad: whatever the device did, it did it
    // only inside the good segment.
    let good_at = PART_START + (256 << 10);
    let body = [seg(good_at / 512, 8, 0), seg(u64::MAX, 8, 0)].concat();
    let done = s.blk(0, blk::T_WRITE_ZEROES, 0, &body, 0).unwrap();
    assert_refused(&done, "a good and a bad write-zeroes segment");
    let now = s.read(1, good_at, 4096).unwrap();
    if now == vec![0; 4096] {
        eprintln!("the good segment of a failed write-zeroes was applied");
        c.fx.record_write(good_at, &now);
    } else {
        assert!(
            now == c.fx.expected(good_at, 4096),
            "a failed write-zeroes changed other data"
        );
    }
    // A valid write-zeroes works.
    let at = PART_START + (512 << 10);
    let done = s
        .blk(0, blk::T_WRITE_ZEROES, 0, &seg(at / 512, 8, 0), 0)
        .unwrap();
    assert_eq!(done.status, Some(blk::S_OK), "a valid write-zeroes");
    c.fx.record_write(at, &[0; 4096]);
    c.end(Some(s), Some(1), false);
}

/// GET_ID into buffers smaller and larger than the 20-byte serial: a
/// status, and no byte written outside the buffer.
#[test]
fn get_id_with_small_buffers() {
    let c = Case::with(&["--serial", "hostile-serial-12345"]);
    let mut s = c.session();
    for len in [1u32, 2, 10, 19, 20, 21, 64, 4096] {
        let done = s.blk(0, blk::T_GET_ID, 0, &[], len).unwrap();
        assert_status(&done, &format!("GET_ID into {len} bytes"));
        if done.status == Some(blk::S_OK) {
            let n = (len as usize).min(20);
            assert_eq!(
                &done.data[..n],
                &b"hostile-serial-12345"[..n],
                "GET_ID into {len} bytes"
            );
        }
    }
    // Two writable descriptors of 7 and 3 bytes.
    let done = s
        .run(
            0,
            &[
                Seg::Out(blk::header(blk::T_GET_ID, 0)),
                Seg::In(7),
                Seg::In(3),
                Seg::In(1),
            ],
        )
        .unwrap();
    assert_status(&done, "GET_ID into 7 + 3 bytes");
    s.mem.check().unwrap();
    c.end(Some(s), Some(1), false);
}

/// Unknown request types: UNSUPP.
#[test]
fn unknown_request_types() {
    let c = Case::new();
    let mut s = c.session();
    for ty in [2u32, 3, 5, 99, 0x8000_0000, u32::MAX] {
        let done = s.blk(0, ty, SECTOR, &[], 512).unwrap();
        assert_eq!(done.status, Some(blk::S_UNSUPP), "request type {ty}");
    }
    c.end(Some(s), Some(1), false);
}

/// A `--readonly` disk refuses writes, write-zeroes and discards (and
/// offers VIRTIO_BLK_F_RO); no blob changes and no overlay appears.
#[test]
fn writes_to_a_read_only_disk() {
    let c = Case::read_only();
    let mut s = c.session();
    assert!(
        s.offered & feature::BLK_RO != 0,
        "a read-only disk must offer VIRTIO_BLK_F_RO"
    );
    for (ty, body) in [
        (blk::T_OUT, vec![0xab; 4096]),
        (blk::T_WRITE_ZEROES, blk::segment(SECTOR, 8, 0)),
        (blk::T_WRITE_ZEROES, blk::segment(SECTOR, 8, blk::WZ_UNMAP)),
        (blk::T_DISCARD, blk::segment(SECTOR, 8, 0)),
    ] {
        let done = s.blk(0, ty, SECTOR, &body, 0).unwrap();
        assert_refused(&done, &format!("type {ty} on a read-only disk"));
    }
    let done = s.blk(0, blk::T_FLUSH, 0, &[], 0).unwrap();
    assert_status(&done, "flush on a read-only disk");
    c.check_queue(&mut s, 0).unwrap();
    c.end(Some(s), Some(1), false);
}

// ---------------------------------------------------------------------
// Protocol-level cases.
// ---------------------------------------------------------------------

/// A connection through protocol negotiation (REPLY_ACK on), so that every
/// later message is acknowledged or refused.
fn negotiated(c: &Case) -> Session {
    let mut s = Session::connect(&c.fx.socket, two_queues()).unwrap();
    for step in [
        Step::GetFeatures,
        Step::GetProtocolFeatures,
        Step::SetProtocolFeatures,
        Step::SetOwner,
        Step::SetFeatures,
    ] {
        let a = s.step(step);
        assert!(a.ok(), "{step:?}: {a:?}\nlog:\n{}", c.be.log());
    }
    assert!(s.conn.reply_ack, "the backend does not offer REPLY_ACK");
    s
}

/// A session set up to the point of SET_MEM_TABLE.
fn with_memory(c: &Case) -> Session {
    let s = negotiated(c);
    let a = s.set_mem_table();
    assert!(a.ok(), "SET_MEM_TABLE: {a:?}");
    s
}

/// Sets up queue `q` of `s` completely.
fn setup_queue(s: &mut Session, q: u16) {
    for step in [
        Step::VringNum(q),
        Step::VringBase(q),
        Step::VringAddr(q),
        Step::VringKick(q),
        Step::VringCall(q),
        Step::VringEnable(q),
    ] {
        let a = s.step(step);
        assert!(a.ok(), "{step:?}: {a:?}");
    }
}

/// Asserts that `a` is a clean refusal.
#[track_caller]
fn refused(a: &Answer, what: &str) {
    assert!(
        a.refused(),
        "{what}: expected a refusal (error ack or closed connection), got {a:?}"
    );
}

/// Messages with the wrong payload size for their request.
#[test]
fn messages_with_wrong_sizes() {
    let mut c = Case::new();
    let cases: Vec<(&str, u32, Vec<u8>)> = vec![
        ("SET_FEATURES of 4 bytes", req::SET_FEATURES, vec![0; 4]),
        ("SET_FEATURES of 16 bytes", req::SET_FEATURES, vec![0; 16]),
        (
            "SET_PROTOCOL_FEATURES of 0 bytes",
            req::SET_PROTOCOL_FEATURES,
            vec![],
        ),
        ("SET_VRING_NUM of 4 bytes", req::SET_VRING_NUM, vec![0; 4]),
        ("SET_VRING_NUM of 16 bytes", req::SET_VRING_NUM, vec![0; 16]),
        ("SET_VRING_BASE of 2 bytes", req::SET_VRING_BASE, vec![0; 2]),
        (
            "SET_VRING_ADDR of 20 bytes",
            req::SET_VRING_ADDR,
            vec![0; 20],
        ),
        (
            "SET_VRING_ADDR of 41 bytes",
            req::SET_VRING_ADDR,
            vec![0; 41],
        ),
        ("SET_VRING_ENABLE of 1 byte", req::SET_VRING_ENABLE, vec![1]),
        (
            "SET_MEM_TABLE of 4 bytes",
            req::SET_MEM_TABLE,
            vec![1, 0, 0, 0],
        ),
        (
            "SET_MEM_TABLE of one region, no body",
            req::SET_MEM_TABLE,
            conn::mem_table(1, &[]),
        ),
        (
            "SET_MEM_TABLE with a partial region",
            req::SET_MEM_TABLE,
            conn::mem_table(1, &[])
                .into_iter()
                .chain([0u8; 20])
                .collect(),
        ),
        ("GET_CONFIG of 8 bytes", req::GET_CONFIG, vec![0; 8]),
        (
            "GET_CONFIG with a short payload",
            req::GET_CONFIG,
            conn::config_body(0, 60, 0, &[0; 10]),
        ),
        (
            "SET_CONFIG of 12 bytes",
            req::SET_CONFIG,
            conn::config_body(32, 1, 0, &[]),
        ),
        ("ADD_MEM_REG of 8 bytes", req::ADD_MEM_REG, vec![0; 8]),
        ("REM_MEM_REG of 16 bytes", req::REM_MEM_REG, vec![0; 16]),
        (
            "SET_INFLIGHT_FD of 8 bytes",
            req::SET_INFLIGHT_FD,
            vec![0; 8],
        ),
        ("GET_FEATURES with a body", req::GET_FEATURES, vec![0; 8]),
        ("SET_OWNER with a body", req::SET_OWNER, vec![0; 8]),
    ];
    for (what, request, body) in cases {
        let s = negotiated(&c);
        let a = s.conn.call_ack(request, &body, &[]);
        refused(&a, what);
        drop(s);
        c.be.alive().unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    // A header announcing 2 GiB of payload that never comes, then a close.
    let s = negotiated(&c);
    s.conn
        .send_raw(
            &conn::header(
                req::SET_FEATURES,
                flags::VERSION | flags::NEED_REPLY,
                0x7fff_ffff,
            ),
            &[],
        )
        .unwrap();
    // The backend may refuse (close) at once: then this send fails.
    let _ = s.conn.send_raw(&[0; 64], &[]);
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    c.end(None, None, true);
}

/// Messages cut short, with the connection closed mid-header and
/// mid-payload; and SIGTERM while a frontend sits on half a message.
#[test]
fn truncated_messages() {
    let mut c = Case::new();
    let full = {
        let mut m =
            conn::header(req::SET_VRING_NUM, flags::VERSION | flags::NEED_REPLY, 8).to_vec();
        m.extend(conn::vring_state(0, 256));
        m
    };
    for cut in 1..full.len() {
        let s = negotiated(&c);
        s.conn.send_raw(&full[..cut], &[]).unwrap();
        drop(s);
        c.be.alive().unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
    }
    // Half a message, left hanging: the backend waits, without spinning.
    let s = negotiated(&c);
    s.conn.send_raw(&full[..15], &[]).unwrap();
    c.be.assert_idle("with half a message pending").unwrap();
    // SIGTERM must still end the process promptly.
    let Case { fx, be } = c;
    fx.finish(be).unwrap();
    drop(s);
}

/// Unknown request codes, bad protocol versions, and the reply flag on a
/// request.
#[test]
fn unknown_requests_and_bad_headers() {
    let mut c = Case::new();
    for code in [
        0u32,
        19,
        20,
        22,
        23,
        26,
        27,
        33,
        45,
        60,
        99,
        1000,
        0x8000_0001,
        u32::MAX,
    ] {
        let s = negotiated(&c);
        let a = s.conn.call_ack(code, &[0; 8], &[]);
        refused(&a, &format!("request code {code}"));
        drop(s);
        c.be.alive().unwrap_or_else(|e| panic!("code {code}: {e}"));
    }
    for (what, hflags) in [
        ("version 0", flags::NEED_REPLY),
        ("version 2", 2 | flags::NEED_REPLY),
        ("version 3", 3 | flags::NEED_REPLY),
    ] {
        let s = negotiated(&c);
        let a = s
            .conn
            .call_flags(req::SET_VRING_NUM, hflags, &conn::vring_state(0, 256), &[]);
        refused(&a, what);
        drop(s);
    }
    // The reply flag on a request: answered or refused, never silence.
    let s = negotiated(&c);
    let a = s
        .conn
        .call_flags(req::GET_FEATURES, flags::VERSION | flags::REPLY, &[], &[]);
    assert!(
        a.clean() || matches!(a, Answer::Timeout),
        "REPLY flag on a request: {a:?}"
    );
    drop(s);
    c.end(None, None, true);
}

/// SET_MEM_TABLE with no regions, more regions than the backend has slots
/// (or than the message carries), and overlapping regions.
#[test]
fn memory_tables_with_no_too_many_or_overlapping_regions() {
    let mut c = Case::new();
    let regions: Vec<Region> = (0..40)
        .map(|i| Region::new(GPA + i * (1 << 20), 64 << 10).unwrap())
        .collect();
    let descs: Vec<RegionDesc> = regions.iter().map(Region::desc).collect();
    let fds: Vec<RawFd> = regions.iter().map(|r| r.file.as_raw_fd()).collect();
    {
        let s = negotiated(&c);
        let a = s
            .conn
            .call_ack(req::SET_MEM_TABLE, &conn::mem_table(0, &[]), &[]);
        assert!(a.clean(), "no regions: {a:?}");
    }
    {
        // Claims 1000 regions, carries one.
        let s = negotiated(&c);
        let a = s.conn.call_ack(
            req::SET_MEM_TABLE,
            &conn::mem_table(1000, &descs[..1]),
            &fds[..1],
        );
        refused(&a, "1000 regions claimed, 1 sent");
    }
    {
        // Two regions, one fd.
        let s = negotiated(&c);
        let a = s.conn.call_ack(
            req::SET_MEM_TABLE,
            &conn::mem_table(2, &descs[..2]),
            &fds[..1],
        );
        refused(&a, "2 regions, 1 fd");
    }
    {
        // More regions than slots: the backend's own limit plus one (or 40).
        let s = negotiated(&c);
        let slots = match s.conn.call(req::GET_MAX_MEM_SLOTS, &[], &[]) {
            Answer::Reply(m) => m.u64().unwrap_or(8) as usize,
            _ => 8,
        };
        let n = (slots + 1).min(40);
        let a = s.conn.call_ack(
            req::SET_MEM_TABLE,
            &conn::mem_table(n as u32, &descs[..n]),
            &fds[..n],
        );
        if n > slots {
            refused(&a, &format!("{n} regions with {slots} slots"));
        } else {
            assert!(a.clean(), "{n} regions: {a:?}");
        }
    }
    {
        // Overlapping guest-physical ranges.
        let s = negotiated(&c);
        let mut d = [descs[0], descs[1]];
        d[1].gpa = d[0].gpa + 4096;
        let a = s
            .conn
            .call_ack(req::SET_MEM_TABLE, &conn::mem_table(2, &d), &fds[..2]);
        refused(&a, "overlapping regions");
        // A refusal may leave the connection open: hang up first.
        drop(s);
        // The same region twice.
        let s = negotiated(&c);
        let a = s.conn.call_ack(
            req::SET_MEM_TABLE,
            &conn::mem_table(2, &[descs[0], descs[0]]),
            &[fds[0], fds[0]],
        );
        refused(&a, "the same region twice");
    }
    c.be.alive().unwrap();
    drop(regions);
    c.end(None, None, false);
}

/// Regions that cannot be mapped: a pipe or a directory as the fd, zero or
/// enormous sizes, addresses that wrap.
#[test]
fn memory_tables_with_unmappable_regions() {
    let mut c = Case::new();
    let r = Region::new(GPA, 1 << 20).unwrap();
    let good = r.desc();
    let (pr, _pw) = pipe();
    let dir = std::fs::File::open("/").unwrap();
    let cases: Vec<(&str, RegionDesc, RawFd)> = vec![
        ("a pipe", good, pr.as_raw_fd()),
        ("a directory", good, dir.as_raw_fd()),
        ("size 0", RegionDesc { size: 0, ..good }, r.file.as_raw_fd()),
        (
            "size 2^64-4096",
            RegionDesc {
                size: u64::MAX - 4095,
                ..good
            },
            r.file.as_raw_fd(),
        ),
        (
            "gpa wrapping",
            RegionDesc {
                gpa: u64::MAX - 4095,
                ..good
            },
            r.file.as_raw_fd(),
        ),
        (
            "user address wrapping",
            RegionDesc {
                user_addr: u64::MAX - 4095,
                ..good
            },
            r.file.as_raw_fd(),
        ),
        (
            "offset wrapping",
            RegionDesc {
                mmap_offset: u64::MAX - 4095,
                ..good
            },
            r.file.as_raw_fd(),
        ),
        (
            "unaligned offset",
            RegionDesc {
                mmap_offset: 100,
                size: 4096,
                ..good
            },
            r.file.as_raw_fd(),
        ),
    ];
    for (what, d, fd) in cases {
        let s = negotiated(&c);
        let a = s
            .conn
            .call_ack(req::SET_MEM_TABLE, &conn::mem_table(1, &[d]), &[fd]);
        refused(&a, what);
        drop(s);
        c.be.alive().unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    c.end(None, None, false);
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    use std::os::fd::FromRawFd;
    // SAFETY: fresh fds from pipe2.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A region larger than its memfd, and one whose mmap_offset is past the
/// memfd's end: mapping them works, touching them SIGBUSes. The backend
/// must refuse them (check against the file size). If it accepts, the test
/// goes on to make it touch the missing part.
#[test]
fn memory_regions_larger_than_their_file() {
    for (what, file_len, desc_of) in [
        (
            "region of 8 MiB over a 1 MiB memfd",
            1u64 << 20,
            (|d: RegionDesc| RegionDesc { size: 8 << 20, ..d }) as fn(RegionDesc) -> RegionDesc,
        ),
        (
            "mmap_offset 16 MiB into a 1 MiB memfd",
            1 << 20,
            |d: RegionDesc| RegionDesc {
                size: 8 << 20,
                mmap_offset: 16 << 20,
                ..d
            },
        ),
        (
            "mmap_offset 512 KiB, 8 MiB, into a 1 MiB memfd",
            1 << 20,
            |d: RegionDesc| RegionDesc {
                size: 8 << 20,
                mmap_offset: 512 << 10,
                ..d
            },
        ),
    ] {
        let mut c = Case::new();
        let mut s = negotiated(&c);
        // The test's memory is 8 MiB; the backend is told of the same
        // region, but its file is cut to `file_len`.
        let desc = desc_of(s.mem.regions[0].desc());
        s.mem.regions[0].file.set_len(file_len).unwrap();
        let a = s.conn.call_ack(
            req::SET_MEM_TABLE,
            &conn::mem_table(1, &[desc]),
            &[s.mem.regions[0].file.as_raw_fd()],
        );
        if a.ok() {
            // Accepted: the rings (in the first MiB) and a buffer past the
            // file's end. Restore the file on our side so that only the
            // backend's view is short... it is one file: keep it short.
            eprintln!("{what}: accepted; touching the region past the file's end");
            let _ = s.step(Step::VringNum(0));
            let _ = s.step(Step::VringBase(0));
            let _ = s.step(Step::VringAddr(0));
            let _ = s.step(Step::VringKick(0));
            let _ = s.step(Step::VringCall(0));
            let _ = s.step(Step::VringEnable(0));
            // Our own mapping of the missing part would SIGBUS us too: the
            // header and status stay in the first MiB (past the rings), the
            // data goes where the file has nothing.
            let far = GPA + (4 << 20);
            let hdr = GPA + 0x8_0000;
            s.mem.write(hdr, &blk::header(blk::T_IN, SECTOR));
            let st = GPA + 0x8_1000;
            s.mem.write(st, &[0xff]);
            s.mem.allow(st, 1);
            let q = &mut s.queues[0];
            let head = q.add_chain(
                &s.mem,
                &[(hdr, 16, false), (far, 4096, true), (st, 1, true)],
            );
            q.publish(&s.mem, head);
            q.kick().unwrap();
            std::thread::sleep(Duration::from_millis(500));
        } else {
            refused(&a, what);
        }
        // Put our file back so that our own checks can read the memory.
        s.mem.regions[0].file.set_len(8 << 20).unwrap();
        drop(s);
        c.be.alive()
            .unwrap_or_else(|e| panic!("{what}: {e}\nlog:\n{}", c.be.log()));
        c.end(None, None, false);
    }
}

/// The memfd shrinks after SET_MEM_TABLE, under running queues, below a
/// request's data. The backend may die of SIGBUS (its own frontend did it),
/// but the overlay must stay intact: it reopens and holds exactly what
/// completed. (Observed with the io_uring engine: the kernel copies and
/// returns EFAULT, so the request fails with IOERR and the backend lives.)
#[test]
fn memfd_shrunk_below_a_buffer_after_mem_table() {
    memfd_shrunk(2 << 20, false);
}

/// The same, shrunk below queue 1's rings, then queue 1 kicked: the
/// backend's own accesses to the ring fault.
#[test]
fn memfd_shrunk_below_the_rings_after_mem_table() {
    memfd_shrunk(64 << 10, true);
}

fn memfd_shrunk(to: u64, kick_ring: bool) {
    let c = Case::new();
    let mut s = c.session();
    c.check_queue(&mut s, 0).unwrap();
    c.check_queue(&mut s, 1).unwrap();
    // Header and status in the first 64 KiB (past queue 0's rings), a write
    // from the part that goes away (the test does not touch it itself).
    let hdr = GPA + 0xc000;
    s.mem.write(hdr, &blk::header(blk::T_OUT, SECTOR));
    let st = GPA + 0xd000;
    s.mem.write(st, &[0xff]);
    s.mem.allow(st, 1);
    s.mem.regions[0].file.set_len(to).unwrap();
    let far = GPA + (6 << 20);
    let q = &mut s.queues[0];
    let head = q.add_chain(
        &s.mem,
        &[(hdr, 16, false), (far, 4096, false), (st, 1, true)],
    );
    q.publish(&s.mem, head);
    q.kick().unwrap();
    if kick_ring {
        s.queues[1].kick().unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let Case { fx, mut be } = c;
    let mut c = match be.alive() {
        Ok(()) => {
            eprintln!(
                "memfd shrunk to {to}: the backend survived; write status {:#x}",
                s.mem.read(st, 1)[0]
            );
            drop(s);
            Case { fx, be }
        }
        Err(e) => {
            eprintln!("memfd shrunk to {to}: {e} (a crash caused by its own frontend); checking the overlay");
            drop(s);
            drop(be);
            // The overlay reopens and serves, and holds no write.
            let be = fx.serve();
            Case { fx, be }
        }
    };
    c.check_next_frontend().unwrap();
    let Case { fx, be } = c;
    fx.finish(be).unwrap();
}

/// SET_VRING_NUM with 100 (not a power of two): refused, or else the device
/// must really use 100 entries. The rings are laid out for 100, canary
/// around them, and 150 requests wrap the ring.
#[test]
fn vring_num_not_a_power_of_two() {
    let c = Case::new();
    let mut s = with_memory(&c);
    let a = s.vring_num(0, 100);
    if a.refused() {
        drop(s);
        c.end(None, None, false);
        return;
    }
    assert!(a.ok(), "SET_VRING_NUM 100: {a:?}");
    // Lay queue 0 out for 100 entries, packed tightly (desc 1600 bytes,
    // avail 206, used 806), with canary right after each ring.
    let base = GPA + 0x8_0000;
    let q = Queue::at(&s.mem, 0, 100, base, base + 1600, base + 1600 + 208).unwrap();
    s.queues[0] = q;
    for step in [
        Step::VringBase(0),
        Step::VringAddr(0),
        Step::VringKick(0),
        Step::VringCall(0),
        Step::VringEnable(0),
    ] {
        let a = s.step(step);
        assert!(a.ok(), "{step:?}: {a:?}");
    }
    let want = c.fx.expected(PART_START, 512);
    for i in 0..150 {
        match s.blk(0, blk::T_IN, SECTOR, &[], 512) {
            Ok(done) => {
                assert_eq!(done.status, Some(blk::S_OK), "request {i} on a ring of 100");
                assert!(done.data == want, "request {i}: wrong data");
            }
            Err(e) => panic!("request {i} on a ring of 100: {e}\n{:?}", s.mem.check()),
        }
        s.mem
            .check()
            .unwrap_or_else(|e| panic!("after request {i} on a ring of 100: {e}"));
    }
    c.end(Some(s), None, false);
}

/// Ring sizes beyond the maximum (`--queue-size`, 256 by default) or zero.
#[test]
fn vring_num_beyond_the_maximum() {
    let mut c = Case::new();
    for num in [0u32, 512, 1024, 2048, 32768, 65535, 65536, u32::MAX] {
        let s = with_memory(&c);
        refused(&s.vring_num(0, num), &format!("SET_VRING_NUM {num}"));
        drop(s);
        c.be.alive().unwrap();
    }
    c.end(None, None, false);
}

/// Ring addresses outside guest memory, straddling its end, misaligned, or
/// with the log flag: refused, or the queue stops without a spin and
/// without writing outside memory the test gave.
#[test]
fn bad_vring_addresses() {
    let mut c = Case::new();
    type Fix = fn(&Session, u64, u64, u64) -> (u64, u64, u64, u32);
    let variants: Vec<(&str, Fix)> = vec![
        ("desc outside memory", |_, _, u, a| (0x1000, u, a, 0)),
        ("used outside memory", |_, d, _, a| (d, 0x1000, a, 0)),
        ("avail outside memory", |_, d, u, _| (d, u, 0x1000, 0)),
        ("desc straddling the end", |s, _, u, a| {
            (
                s.mem.user_addr(GPA) + s.opts.mem_size as u64 - 1024,
                u,
                a,
                0,
            )
        }),
        ("used straddling the end", |s, d, _, a| {
            (d, s.mem.user_addr(GPA) + s.opts.mem_size as u64 - 64, a, 0)
        }),
        ("avail straddling the end", |s, d, u, _| {
            (d, u, s.mem.user_addr(GPA) + s.opts.mem_size as u64 - 8, 0)
        }),
        ("desc misaligned", |_, d, u, a| (d + 8, u, a, 0)),
        ("used misaligned", |_, d, u, a| (d, u + 2, a, 0)),
        ("avail misaligned", |_, d, u, a| (d, u, a + 1, 0)),
        ("top of the address space", |_, _, _, _| {
            (u64::MAX - 15, u64::MAX - 7, u64::MAX - 3, 0)
        }),
        ("log flag without a log", |_, d, u, a| (d, u, a, 1)),
        ("unknown flags", |_, d, u, a| (d, u, a, 0xfffe)),
    ];
    for (what, fix) in variants {
        let mut s = with_memory(&c);
        setup_queue(&mut s, 1);
        let q = &s.queues[0];
        let (d, u, a) = (
            s.mem.user_addr(q.desc),
            s.mem.user_addr(q.used),
            s.mem.user_addr(q.avail),
        );
        let (d, u, a, f) = fix(&s, d, u, a);
        assert!(s.vring_num(0, 256).ok());
        assert!(s.vring_base(0, 0).ok());
        let ans = s.conn.call_ack(
            req::SET_VRING_ADDR,
            &conn::vring_addr(0, f, d, u, a, 0),
            &[],
        );
        if ans.ok() {
            // Accepted: start the queue and hand it a request.
            let _ = s.step(Step::VringKick(0));
            let _ = s.step(Step::VringCall(0));
            let _ = s.step(Step::VringEnable(0));
            s.submit(
                0,
                &[
                    Seg::Out(blk::header(blk::T_IN, SECTOR)),
                    Seg::In(512),
                    Seg::In(1),
                ],
            );
            std::thread::sleep(Duration::from_millis(200));
            c.be.alive()
                .unwrap_or_else(|e| panic!("{what}: {e}\nlog:\n{}", c.be.log()));
            if ans.ok() && !matches!(ans, Answer::Closed) {
                c.check_queue(&mut s, 1)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            s.mem.check().unwrap_or_else(|e| panic!("{what}: {e}"));
            c.be.assert_idle(what).unwrap();
        } else {
            refused(&ans, what);
        }
        drop(s);
        c.be.alive().unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    c.end(None, None, true);
}

/// SET_VRING_BASE ahead of the avail index (the ring then claims 65000
/// requests), or beyond 16 bits.
#[test]
fn bad_vring_bases() {
    let mut c = Case::new();
    for base in [300u32, 0x8000, 0x1_0000, u32::MAX] {
        let mut s = with_memory(&c);
        setup_queue(&mut s, 1);
        assert!(s.vring_num(0, 256).ok());
        let a = s.vring_base(0, base);
        if a.ok() {
            for step in [
                Step::VringAddr(0),
                Step::VringKick(0),
                Step::VringCall(0),
                Step::VringEnable(0),
            ] {
                let _ = s.step(step);
            }
            s.queues[0].kick().unwrap();
            std::thread::sleep(Duration::from_millis(200));
            c.be.alive().unwrap_or_else(|e| panic!("base {base}: {e}"));
            c.check_queue(&mut s, 1)
                .unwrap_or_else(|e| panic!("base {base}: {e}"));
            s.mem.check().unwrap_or_else(|e| panic!("base {base}: {e}"));
            c.be.assert_idle(&format!("SET_VRING_BASE {base}")).unwrap();
        } else {
            refused(&a, &format!("SET_VRING_BASE {base}"));
        }
        drop(s);
    }
    c.end(None, None, true);
}

/// Every per-queue message with a queue index the device does not have.
#[test]
fn out_of_range_queue_indexes() {
    let mut c = Case::new();
    let ev = eventfd().unwrap();
    for index in [2u32, 3, 63, 64, 255, 256, 0x1_0000, u32::MAX] {
        let s = with_memory(&c);
        let cases: Vec<(&str, u32, Vec<u8>, Vec<RawFd>)> = vec![
            (
                "SET_VRING_NUM",
                req::SET_VRING_NUM,
                conn::vring_state(index, 256),
                vec![],
            ),
            (
                "SET_VRING_BASE",
                req::SET_VRING_BASE,
                conn::vring_state(index, 0),
                vec![],
            ),
            (
                "SET_VRING_ADDR",
                req::SET_VRING_ADDR,
                conn::vring_addr(
                    index,
                    0,
                    s.mem.user_addr(GPA),
                    s.mem.user_addr(GPA + 0x5000),
                    s.mem.user_addr(GPA + 0x4000),
                    0,
                ),
                vec![],
            ),
            (
                "SET_VRING_ENABLE",
                req::SET_VRING_ENABLE,
                conn::vring_state(index, 1),
                vec![],
            ),
            (
                "SET_VRING_KICK",
                req::SET_VRING_KICK,
                conn::u64_body(u64::from(index)),
                vec![ev.as_raw_fd()],
            ),
            (
                "SET_VRING_CALL",
                req::SET_VRING_CALL,
                conn::u64_body(u64::from(index)),
                vec![ev.as_raw_fd()],
            ),
            (
                "SET_VRING_ERR",
                req::SET_VRING_ERR,
                conn::u64_body(u64::from(index)),
                vec![ev.as_raw_fd()],
            ),
            (
                "GET_VRING_BASE",
                req::GET_VRING_BASE,
                conn::vring_state(index, 0),
                vec![],
            ),
        ];
        drop(s);
        for (what, request, body, fds) in cases {
            // KICK/CALL/ERR carry the index in bits 0-7 (bit 8 is the
            // no-fd flag): only indexes that fit there are out of range.
            let vring_fd = matches!(
                request,
                req::SET_VRING_KICK | req::SET_VRING_CALL | req::SET_VRING_ERR
            );
            if vring_fd && index > 255 {
                continue;
            }
            let s = with_memory(&c);
            let a = s.conn.call_ack(request, &body, &fds);
            refused(&a, &format!("{what} for queue {index}"));
            drop(s);
            c.be.alive()
                .unwrap_or_else(|e| panic!("{what} {index}: {e}"));
        }
    }
    c.end(None, None, false);
}

/// GET_CONFIG and SET_CONFIG at offsets and sizes outside the config space,
/// wrapping, or over read-only fields: refused or harmless; the capacity
/// stays what it is.
#[test]
fn config_offsets_and_sizes() {
    let mut c = Case::new();
    let get = |s: &Session, off: u32, size: u32| {
        s.conn.call(
            req::GET_CONFIG,
            &conn::config_body(off, size, 0, &vec![0; size.min(4096) as usize]),
            &[],
        )
    };
    for (off, size) in [
        (0u32, 0u32),
        (0xffff_fff0, 0x20),
        (u32::MAX, 1),
        (0, 4097),
        (0x1000, 8),
        (200, 60),
        (59, 2),
    ] {
        let s = negotiated(&c);
        let a = get(&s, off, size);
        assert!(a.clean(), "GET_CONFIG {off:#x}+{size}: {a:?}");
        if let Answer::Reply(m) = &a {
            assert!(
                m.payload.len() >= 12,
                "GET_CONFIG {off:#x}+{size}: short reply"
            );
        }
        drop(s);
        c.be.alive()
            .unwrap_or_else(|e| panic!("GET_CONFIG {off:#x}+{size}: {e}"));
    }
    for (off, bytes) in [
        (0u32, vec![0xffu8; 8]),
        (32, vec![1, 1, 1, 1]),
        (0xffff_fffe, vec![0; 4]),
        (34, vec![9, 9]),
        (0, vec![0xff; 60]),
    ] {
        let s = negotiated(&c);
        let a = s.conn.call_ack(
            req::SET_CONFIG,
            &conn::config_body(off, bytes.len() as u32, 0, &bytes),
            &[],
        );
        assert!(a.clean(), "SET_CONFIG {off:#x}+{}: {a:?}", bytes.len());
        drop(s);
    }
    let s = negotiated(&c);
    let m = get(&s, 0, 60).reply("GET_CONFIG").unwrap();
    let capacity = u64::from_le_bytes(m.payload[12..20].try_into().unwrap());
    assert_eq!(capacity, CAPACITY, "SET_CONFIG changed the capacity");
    let nq = u16::from_le_bytes(m.payload[12 + 34..12 + 36].try_into().unwrap());
    assert_eq!(nq, 2, "SET_CONFIG changed num_queues");
    drop(s);
    c.end(None, None, false);
}

/// File descriptors attached to messages that take none, again and again:
/// answered as without them, and none of them kept open.
#[test]
fn file_descriptors_where_none_belong() {
    let c = Case::new();
    // A first session so that the backend's steady state is reached.
    drop(c.session());
    std::thread::sleep(Duration::from_millis(300));
    let before = c.be.fd_count().unwrap();
    let evs: Vec<OwnedFd> = (0..4).map(|_| eventfd().unwrap()).collect();
    let fds: Vec<RawFd> = evs.iter().map(|e| e.as_raw_fd()).collect();
    for _ in 0..50 {
        let s = negotiated(&c);
        for (request, body) in [
            (req::GET_FEATURES, vec![]),
            (req::SET_FEATURES, conn::u64_body(s.acked)),
            (req::GET_PROTOCOL_FEATURES, vec![]),
            (req::GET_QUEUE_NUM, vec![]),
            (req::SET_VRING_NUM, conn::vring_state(0, 256)),
            (req::SET_VRING_BASE, conn::vring_state(0, 0)),
            (req::GET_CONFIG, conn::config_body(0, 60, 0, &[0; 60])),
        ] {
            let a = s.conn.call_ack(request, &body, &fds);
            assert!(a.clean(), "request {request} with 4 fds: {a:?}");
            if matches!(a, Answer::Closed) {
                break;
            }
        }
        // SET_MEM_TABLE with one region and 4 fds.
        let d = s.mem.regions[0].desc();
        let mut more = vec![s.mem.regions[0].file.as_raw_fd()];
        more.extend(&fds);
        let a = s
            .conn
            .call_ack(req::SET_MEM_TABLE, &conn::mem_table(1, &[d]), &more);
        assert!(a.clean(), "SET_MEM_TABLE with extra fds: {a:?}");
        // A kick with the no-fd bit and an fd anyway.
        let a = s
            .conn
            .call_ack(req::SET_VRING_KICK, &conn::u64_body(1 << 8), &fds[..1]);
        assert!(
            a.clean(),
            "SET_VRING_KICK with the no-fd bit and an fd: {a:?}"
        );
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = c.be.fd_count().unwrap();
    assert!(
        after <= before + 4,
        "the backend's open fds grew from {before} to {after}: {}",
        c.be.fd_summary()
    );
    c.end(None, None, false);
}

/// A pipe, a socket or a memfd as the kick or call fd: refused (they are not
/// eventfds).
#[test]
fn kick_and_call_fds_that_are_not_eventfds() {
    let mut c = Case::new();
    let (pr, _pw) = pipe();
    let (sa, _sb) = std::os::unix::net::UnixStream::pair().unwrap();
    let mf = memfd("not-an-eventfd", 4096).unwrap();
    for (what, fd) in [
        ("a pipe", pr.as_raw_fd()),
        ("a socket", sa.as_raw_fd()),
        ("a memfd", mf.as_raw_fd()),
    ] {
        for (name, request) in [("kick", req::SET_VRING_KICK), ("call", req::SET_VRING_CALL)] {
            let mut s = with_memory(&c);
            setup_queue(&mut s, 1);
            let a = s.conn.call_ack(request, &conn::u64_body(0), &[fd]);
            refused(&a, &format!("{what} as the {name} fd"));
            if !matches!(a, Answer::Closed) {
                c.check_queue(&mut s, 1).unwrap();
            }
            drop(s);
            c.be.alive()
                .unwrap_or_else(|e| panic!("{what} as {name}: {e}"));
        }
    }
    c.end(None, None, true);
}

/// A blocking eventfd whose counter is saturated as the call fd: signalling
/// it would block forever. Refused, or used without blocking: the request
/// completes, the other queue works, and SIGTERM still ends the process.
#[test]
fn saturated_blocking_eventfd_as_call_fd() {
    let c = Case::new();
    let mut s = with_memory(&c);
    setup_queue(&mut s, 1);
    let call = eventfd_flags(libc::EFD_CLOEXEC).unwrap();
    ocidisk_tests::vhost_frontend::ring::eventfd_write(&call, u64::MAX - 1).unwrap();
    for step in [
        Step::VringNum(0),
        Step::VringBase(0),
        Step::VringAddr(0),
        Step::VringKick(0),
    ] {
        assert!(s.step(step).ok());
    }
    let a = s.vring_fd(req::SET_VRING_CALL, 0, Some(call.as_raw_fd()));
    if a.ok() {
        assert!(s.step(Step::VringEnable(0)).ok());
        // EVENT_IDX: ask for an interrupt on every completion.
        s.queues[0].set_used_event(&s.mem, 0);
        for i in 0..4 {
            let r = s.blk(0, blk::T_IN, SECTOR, &[], 512);
            assert!(
                matches!(&r, Ok(d) if d.status == Some(blk::S_OK)),
                "request {i} with a saturated blocking call fd: {r:?}"
            );
        }
        c.check_queue(&mut s, 1).unwrap();
    } else {
        refused(&a, "a saturated blocking call eventfd");
    }
    // SIGTERM with the frontend still connected.
    let Case { fx, be } = c;
    fx.finish(be).unwrap();
    drop(s);
    drop(call);
}

/// The connection cut after every step of the setup, and with requests in
/// flight: every time the next frontend is served.
#[test]
fn abrupt_disconnects_at_every_setup_step() {
    let mut c = Case::new();
    let steps = standard_steps(2);
    for k in 0..=steps.len() {
        let mut s = Session::connect(&c.fx.socket, two_queues()).unwrap();
        for &step in &steps[..k] {
            let a = s.step(step);
            assert!(a.ok(), "{step:?}: {a:?}");
        }
        drop(s);
        c.be.alive()
            .unwrap_or_else(|e| panic!("after {k} steps: {e}"));
    }
    // Requests in flight.
    for n in [1u16, 32, 200] {
        let mut s = c.session();
        for _ in 0..n {
            let segs = [
                Seg::Out(blk::header(blk::T_IN, SECTOR)),
                Seg::In(64 << 10),
                Seg::In(1),
            ];
            let parts = s.place(&segs);
            let triples: Vec<_> = parts.clone();
            let q = &mut s.queues[0];
            let head = q.add_chain(&s.mem, &triples);
            q.publish(&s.mem, head);
        }
        s.queues[0].kick().unwrap();
        drop(s);
    }
    // Writes in flight: each completes or not, but the disk holds either
    // the old or the new bytes of each, never anything else... so write
    // the pristine bytes back: the disk must read the same either way.
    {
        let mut s = c.session();
        let data = c.fx.expected(PART_START, 64 << 10);
        for _ in 0..32 {
            let segs = [
                Seg::Out(blk::header(blk::T_OUT, SECTOR)),
                Seg::Out(data.clone()),
                Seg::In(1),
            ];
            let parts = s.place(&segs);
            let q = &mut s.queues[0];
            let head = q.add_chain(&s.mem, &parts);
            q.publish(&s.mem, head);
        }
        s.queues[0].kick().unwrap();
        drop(s);
        c.fx.record_write(PART_START, &data);
    }
    c.end(None, None, true);
}

/// Three hundred frontends, each setting up two queues and going away, and
/// as many bare connections: the
/// backend's file descriptors and threads do not grow.
#[test]
fn hundreds_of_reconnects_do_not_leak() {
    let c = Case::new();
    drop(c.session());
    std::thread::sleep(Duration::from_millis(300));
    let fds0 = c.be.fd_count().unwrap();
    let threads0 = c.be.thread_count().unwrap();
    // A fixed count, not a time budget: a busy machine makes this slower,
    // never wrong. 300 is several times any per-connection leak's margin.
    let n = 300;
    let start = Instant::now();
    for _ in 0..n {
        drop(c.session());
        // Bare connections too.
        drop(Conn::connect(&c.fx.socket).unwrap());
    }
    eprintln!("{n} reconnects in {:?}", start.elapsed());
    // Let the last connection wind down.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut fds1 = c.be.fd_count().unwrap();
    while fds1 > fds0 + 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        fds1 = c.be.fd_count().unwrap();
    }
    let threads1 = c.be.thread_count().unwrap();
    assert!(
        fds1 <= fds0 + 4,
        "the backend's open fds grew from {fds0} to {fds1} over {n} connections: {}",
        c.be.fd_summary()
    );
    assert!(
        threads1 <= threads0 + 4,
        "the backend's threads grew from {threads0} to {threads1}"
    );
    c.end(None, None, false);
}

/// A frontend that floods messages and never reads the replies (the
/// backend's replies fill the socket): SIGTERM still ends the process
/// within 5 s.
#[test]
fn sigterm_while_the_frontend_does_not_read() {
    let c = Case::new();
    let s = negotiated(&c);
    s.conn.set_timeout(Duration::from_millis(200)).unwrap();
    let msg = conn::header(req::GET_FEATURES, flags::VERSION, 0);
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(3) {
        if s.conn.send_raw(&msg, &[]).is_err() {
            break;
        }
        sent += 1;
    }
    eprintln!("sent {sent} GET_FEATURES without reading");
    let Case { fx, be } = c;
    fx.finish(be).unwrap();
    drop(s);
}

/// SIGTERM while a queue's ring is broken and another frontend waits in
/// the backlog.
#[test]
fn sigterm_with_a_broken_ring_and_a_waiting_frontend() {
    let c = Case::new();
    let mut s = c.session();
    let q = &mut s.queues[0];
    let idx = q.avail_idx.wrapping_add(5000);
    q.set_avail_idx(&s.mem, idx);
    q.kick().unwrap();
    let waiting = Conn::connect(&c.fx.socket).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let Case { fx, be } = c;
    fx.finish(be).unwrap();
    drop((s, waiting));
}

/// A used-ring-sized check of the canary machinery itself: a normal session
/// with I/O on both queues leaves memory outside the buffers untouched, and
/// the disk holds exactly the writes.
#[test]
fn baseline_session_is_clean() {
    let mut c = Case::new();
    let mut s = c.session();
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    let at = PART_START + (2 << 20);
    s.write(0, at, &data).unwrap();
    c.fx.record_write(at, &data);
    assert!(s.read(1, at, 8192).unwrap() == data);
    let done = s.blk(1, blk::T_FLUSH, 0, &[], 0).unwrap();
    assert_eq!(done.status, Some(blk::S_OK));
    c.end(Some(s), Some(1), true);
}
