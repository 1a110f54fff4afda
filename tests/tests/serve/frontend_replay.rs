//! The vhost-user-blk message sequences of cloud-hypervisor and Firecracker,
//! replayed against the real `ocidisk serve` (neither VMM can boot a guest
//! here: no usable KVM), followed by I/O on split rings the test drives.
//!
//! The sequences follow the VMMs' sources:
//! - cloud-hypervisor `virtio-devices/src/vhost_user/vu_common_ctrl.rs`
//!   (`connect_vhost_user`: SET_OWNER, GET_FEATURES;
//!   `negotiate_features_vhost_user`: GET/SET_PROTOCOL_FEATURES, then
//!   NEED_REPLY on every message once REPLY_ACK is acked; `setup_vhost_user`:
//!   SET_FEATURES, SET_MEM_TABLE, SET_VRING_NUM for every queue, GET (first
//!   time only) and SET_INFLIGHT_FD, then per queue SET_VRING_ADDR,
//!   SET_VRING_BASE (the avail index), SET_VRING_CALL, SET_VRING_KICK, then
//!   SET_VRING_ENABLE for every queue; `reinitialize_vhost_user` after a
//!   reconnect: SET_OWNER, GET_FEATURES, SET_PROTOCOL_FEATURES without GET,
//!   then `setup_vhost_user` with the old inflight region), `blk.rs` (the
//!   protocol features it asks for, GET_QUEUE_NUM, GET_CONFIG of the
//!   60-byte `VirtioBlockConfig` with the WRITABLE flag) and
//!   `add_memory_region` (ADD_MEM_REG on memory hotplug; cloud-hypervisor
//!   never sends GET_MAX_MEM_SLOTS or REM_MEM_REG: those steps here follow
//!   QEMU, and say so).
//! - Firecracker `src/vmm/src/devices/virtio/vhost_user.rs` and
//!   `block/vhost_user/device.rs`: SET_OWNER, GET_FEATURES,
//!   GET/SET_PROTOCOL_FEATURES (CONFIG only, so no REPLY_ACK), GET_CONFIG of
//!   60 bytes (WRITABLE), then on activation SET_FEATURES, SET_MEM_TABLE,
//!   SET_VRING_NUM(0, 256), SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_CALL,
//!   SET_VRING_KICK, SET_VRING_ENABLE; GET_CONFIG again on a config update.
//!
//! Alone: `cargo nextest run -p ocidisk-tests --test serve
//! -E 'test(/^frontend_replay::/)'`.

use ocidisk_tests::vhost_frontend::backend::Backend;
use ocidisk_tests::vhost_frontend::conn::{self, feature, proto, req, Answer, Conn, Inflight};
use ocidisk_tests::vhost_frontend::fixture::{Fixture, PART_START};
use ocidisk_tests::vhost_frontend::memory::Region;
use ocidisk_tests::vhost_frontend::ring::blk;
use ocidisk_tests::vhost_frontend::session::{Options, Seg, Session, GPA};
use std::os::fd::{AsRawFd, OwnedFd};

/// The protocol features cloud-hypervisor's vhost-user-blk asks for.
const CH_PROTOCOL: u64 = proto::CONFIG
    | proto::MQ
    | proto::CONFIGURE_MEM_SLOTS
    | proto::REPLY_ACK
    | proto::INFLIGHT_SHMFD
    | proto::LOG_SHMFD
    | proto::DEVICE_STATE;

/// cloud-hypervisor's virtio features for vhost-user-blk (`blk.rs` plus
/// `DEFAULT_VIRTIO_FEATURES`); a Linux guest acks all of them that the
/// device offers.
const CH_FEATURES: u64 = feature::BLK_SIZE_MAX
    | feature::BLK_SEG_MAX
    | feature::BLK_GEOMETRY
    | feature::BLK_RO
    | feature::BLK_BLK_SIZE
    | feature::BLK_FLUSH
    | feature::BLK_TOPOLOGY
    | feature::BLK_CONFIG_WCE
    | feature::BLK_DISCARD
    | feature::BLK_WRITE_ZEROES
    | feature::BLK_MQ
    | feature::RING_INDIRECT_DESC
    | feature::RING_EVENT_IDX
    | feature::VERSION_1
    | feature::IN_ORDER
    | 1 << 36 // ORDER_PLATFORM
    | 1 << 38 // NOTIFICATION_DATA
    | feature::PROTOCOL_FEATURES
    | 1 << 26; // LOG_ALL

/// Firecracker's: VERSION_1, EVENT_IDX, PROTOCOL_FEATURES, RO, and FLUSH
/// with a writeback cache.
const FC_FEATURES: u64 = feature::VERSION_1
    | feature::RING_EVENT_IDX
    | feature::PROTOCOL_FEATURES
    | feature::BLK_RO
    | feature::BLK_FLUSH;

const CH_QUEUES: u16 = 2;
const CH_QUEUE_SIZE: u16 = 128;

/// Prints a note past the test harness's output capture, so that a
/// skipped part shows even when the test passes.
fn note(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

#[track_caller]
fn ok(a: Answer, what: &str, be: &Backend) -> Answer {
    assert!(a.ok(), "{what}: {a:?}\nbackend log:\n{}", be.log());
    a
}

/// GET_CONFIG of the whole 60-byte virtio_blk_config with the WRITABLE
/// flag, as both VMMs send it; checks the fields the disk fixes.
fn get_config_60(s: &Session, be: &Backend, queues: u16) -> Vec<u8> {
    let m = ok(
        s.conn
            .call(req::GET_CONFIG, &conn::config_body(0, 60, 1, &[0; 60]), &[]),
        "GET_CONFIG",
        be,
    )
    .reply("GET_CONFIG")
    .unwrap();
    assert_eq!(m.payload.len(), 12 + 60, "GET_CONFIG reply size");
    let c = m.payload[12..].to_vec();
    let u32_at = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap());
    assert_eq!(
        u64::from_le_bytes(c[0..8].try_into().unwrap()),
        (16 << 20) / 512,
        "capacity"
    );
    assert_eq!(u32_at(20), 512, "blk_size");
    assert_eq!(
        u16::from_le_bytes(c[34..36].try_into().unwrap()),
        queues,
        "num_queues"
    );
    c
}

/// Writes, reads back and flushes through queue `q`, recording the write.
fn io_round(s: &mut Session, fx: &mut Fixture, q: usize, at: u64, seed: u8) {
    let data: Vec<u8> = (0..65536u32)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect();
    s.write(q, at, &data).unwrap();
    fx.record_write(at, &data);
    assert!(
        s.read(q, at, data.len() as u32).unwrap() == data,
        "queue {q}: read back"
    );
    let done = s.blk(q, blk::T_FLUSH, 0, &[], 0).unwrap();
    assert_eq!(done.status, Some(blk::S_OK), "queue {q}: flush");
    s.mem.check().unwrap();
}

/// cloud-hypervisor's `reinitialize_vhost_user` after a reconnect: a new
/// connection, SET_OWNER, GET_FEATURES, SET_PROTOCOL_FEATURES without a
/// GET first, then the same setup on the same rings.
fn ch_reconnect(
    s: &mut Session,
    socket: &std::path::Path,
    be: &Backend,
    inflight: &mut Option<(Inflight, OwnedFd)>,
) {
    s.conn = Conn::connect(socket).unwrap();
    ok(
        s.conn.call(req::SET_OWNER, &[], &[]),
        "SET_OWNER (reconnect)",
        be,
    );
    ok(
        s.conn.call(req::GET_FEATURES, &[], &[]),
        "GET_FEATURES (reconnect)",
        be,
    );
    ok(
        s.conn
            .call(req::SET_PROTOCOL_FEATURES, &conn::u64_body(s.protocol), &[]),
        "SET_PROTOCOL_FEATURES without GET (reconnect)",
        be,
    );
    s.conn.reply_ack = s.protocol & proto::REPLY_ACK != 0;
    ch_setup(s, be, inflight);
}

/// The setup part of cloud-hypervisor's `setup_vhost_user`, from
/// SET_FEATURES on. `inflight` is the region to pass (GET_INFLIGHT_FD is
/// sent when it is None and the feature is acked).
fn ch_setup(s: &mut Session, be: &Backend, inflight: &mut Option<(Inflight, OwnedFd)>) {
    ok(
        s.conn
            .call(req::SET_FEATURES, &conn::u64_body(s.acked), &[]),
        "SET_FEATURES",
        be,
    );
    ok(s.set_mem_table(), "SET_MEM_TABLE", be);
    for q in 0..CH_QUEUES {
        ok(
            s.vring_num(q.into(), CH_QUEUE_SIZE.into()),
            "SET_VRING_NUM",
            be,
        );
    }
    if s.protocol & proto::INFLIGHT_SHMFD != 0 {
        if inflight.is_none() {
            let ask = Inflight {
                mmap_size: 0,
                mmap_offset: 0,
                num_queues: CH_QUEUES,
                queue_size: CH_QUEUE_SIZE,
            };
            let mut m = ok(
                s.conn.call(req::GET_INFLIGHT_FD, &ask.bytes(), &[]),
                "GET_INFLIGHT_FD",
                be,
            )
            .reply("GET_INFLIGHT_FD")
            .unwrap();
            let info = Inflight::parse(&m.payload).expect("GET_INFLIGHT_FD reply body");
            assert!(info.mmap_size > 0, "GET_INFLIGHT_FD: empty region {info:?}");
            assert_eq!(m.fds.len(), 1, "GET_INFLIGHT_FD: one fd");
            let fd = m.fds.pop().unwrap();
            let len = std::fs::File::from(fd.try_clone().unwrap())
                .metadata()
                .unwrap()
                .len();
            assert!(
                len >= info.mmap_offset + info.mmap_size,
                "the inflight fd is shorter than the region"
            );
            *inflight = Some((info, fd));
        }
        let (info, fd) = inflight.as_ref().unwrap();
        ok(
            s.conn
                .call(req::SET_INFLIGHT_FD, &info.bytes(), &[fd.as_raw_fd()]),
            "SET_INFLIGHT_FD",
            be,
        );
    }
    for q in 0..CH_QUEUES {
        let qi = usize::from(q);
        ok(s.vring_addr(q), "SET_VRING_ADDR", be);
        let base = s.queues[qi].avail_idx;
        ok(s.vring_base(q.into(), base.into()), "SET_VRING_BASE", be);
        let call = s.queues[qi].call.as_raw_fd();
        ok(
            s.vring_fd(req::SET_VRING_CALL, q.into(), Some(call)),
            "SET_VRING_CALL",
            be,
        );
        let kick = s.queues[qi].kick.as_raw_fd();
        ok(
            s.vring_fd(req::SET_VRING_KICK, q.into(), Some(kick)),
            "SET_VRING_KICK",
            be,
        );
    }
    for q in 0..CH_QUEUES {
        ok(s.vring_enable(q.into(), true), "SET_VRING_ENABLE", be);
    }
}

/// cloud-hypervisor: negotiation, queues, I/O on both queues, memory added
/// while the rings run (I/O into it), memory removed again (QEMU-style),
/// and a reconnect that replays the setup on the same rings.
#[test]
fn cloud_hypervisor_sequence() {
    let (mut fx, be) = Fixture::start(&["--num-queues", "2"]);
    let opts = Options {
        queues: CH_QUEUES,
        queue_size: CH_QUEUE_SIZE,
        protocol: CH_PROTOCOL,
        ..Options::default()
    };
    let mut s = Session::connect(&fx.socket, opts).unwrap();
    // connect_vhost_user
    ok(s.conn.call(req::SET_OWNER, &[], &[]), "SET_OWNER", &be);
    s.offered = ok(
        s.conn.call(req::GET_FEATURES, &[], &[]),
        "GET_FEATURES",
        &be,
    )
    .reply("GET_FEATURES")
    .unwrap()
    .u64()
    .unwrap();
    s.acked = CH_FEATURES & s.offered;
    assert!(s.acked & feature::PROTOCOL_FEATURES != 0);
    // negotiate_features_vhost_user
    s.offered_protocol = ok(
        s.conn.call(req::GET_PROTOCOL_FEATURES, &[], &[]),
        "GET_PROTOCOL_FEATURES",
        &be,
    )
    .reply("GET_PROTOCOL_FEATURES")
    .unwrap()
    .u64()
    .unwrap();
    s.protocol = CH_PROTOCOL & s.offered_protocol;
    ok(
        s.conn
            .call(req::SET_PROTOCOL_FEATURES, &conn::u64_body(s.protocol), &[]),
        "SET_PROTOCOL_FEATURES",
        &be,
    );
    s.conn.reply_ack = s.protocol & proto::REPLY_ACK != 0;
    for (bit, name) in [
        (proto::REPLY_ACK, "REPLY_ACK"),
        (proto::CONFIG, "CONFIG"),
        (proto::MQ, "MQ"),
        (proto::CONFIGURE_MEM_SLOTS, "CONFIGURE_MEM_SLOTS"),
    ] {
        assert!(s.protocol & bit != 0, "the backend does not offer {name}");
    }
    if s.protocol & proto::INFLIGHT_SHMFD == 0 {
        note(
            "NOTE: SKIPPED the GET_INFLIGHT_FD/SET_INFLIGHT_FD steps of the cloud-hypervisor \
             sequence: the backend does not offer VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD",
        );
    }
    // blk.rs
    let n = ok(
        s.conn.call(req::GET_QUEUE_NUM, &[], &[]),
        "GET_QUEUE_NUM",
        &be,
    )
    .reply("GET_QUEUE_NUM")
    .unwrap()
    .u64()
    .unwrap();
    assert!(n >= u64::from(CH_QUEUES), "GET_QUEUE_NUM {n}");
    get_config_60(&s, &be, CH_QUEUES);
    // activate → setup_vhost_user
    let mut inflight = None;
    ch_setup(&mut s, &be, &mut inflight);
    for q in 0..usize::from(CH_QUEUES) {
        io_round(&mut s, &mut fx, q, PART_START + (q as u64) * (1 << 20), 1);
    }

    // Memory hotplug: ADD_MEM_REG after the rings started. cloud-hypervisor
    // sends ADD_MEM_REG alone; QEMU asks GET_MAX_MEM_SLOTS first.
    let slots = ok(
        s.conn.call(req::GET_MAX_MEM_SLOTS, &[], &[]),
        "GET_MAX_MEM_SLOTS (QEMU-style)",
        &be,
    )
    .reply("GET_MAX_MEM_SLOTS")
    .unwrap()
    .u64()
    .unwrap();
    assert!(slots >= 2, "GET_MAX_MEM_SLOTS {slots}");
    let added_gpa = GPA + s.opts.mem_size as u64;
    s.mem.regions.push(Region::new(added_gpa, 4 << 20).unwrap());
    let added = s.mem.regions[1].desc();
    ok(
        s.conn.call(
            req::ADD_MEM_REG,
            &conn::single_region(&added),
            &[s.mem.regions[1].file.as_raw_fd()],
        ),
        "ADD_MEM_REG",
        &be,
    );
    // I/O with every buffer in the added region.
    let saved = (s.alloc.start, s.alloc.next, s.alloc.end);
    s.alloc = ocidisk_tests::vhost_frontend::ring::Alloc::new(added_gpa, added_gpa + (4 << 20));
    for q in 0..usize::from(CH_QUEUES) {
        io_round(
            &mut s,
            &mut fx,
            q,
            PART_START + (4 << 20) + (q as u64) * (1 << 20),
            2,
        );
    }
    // REM_MEM_REG (QEMU-style: cloud-hypervisor never removes memory).
    ok(
        s.conn
            .call(req::REM_MEM_REG, &conn::single_region(&added), &[]),
        "REM_MEM_REG (QEMU-style)",
        &be,
    );
    s.alloc = ocidisk_tests::vhost_frontend::ring::Alloc::new(saved.0, saved.2);
    s.alloc.next = saved.1;
    // A request into the removed region fails cleanly.
    let done = s
        .run(
            0,
            &[
                Seg::Out(blk::header(blk::T_OUT, PART_START / 512)),
                Seg::Raw(added_gpa, 4096, false),
                Seg::In(1),
            ],
        )
        .unwrap_or_else(|e| panic!("a write from removed memory: {e}\nlog:\n{}", be.log()));
    assert!(
        matches!(done.status, Some(blk::S_IOERR)),
        "a write from removed memory: {:?}",
        done.status
    );
    s.mem.regions.pop();
    for q in 0..usize::from(CH_QUEUES) {
        io_round(
            &mut s,
            &mut fx,
            q,
            PART_START + (8 << 20) + (q as u64) * (1 << 20),
            3,
        );
    }

    // Reconnect (the backend went away and came back, or the socket was
    // cut): a new connection, reinitialize_vhost_user on the same rings.
    ch_reconnect(&mut s, &fx.socket, &be, &mut inflight);
    for q in 0..usize::from(CH_QUEUES) {
        io_round(
            &mut s,
            &mut fx,
            q,
            PART_START + (10 << 20) + (q as u64) * (1 << 20),
            4,
        );
    }
    drop(s);
    fx.finish(be).unwrap();
}

/// cloud-hypervisor with INFLIGHT_SHMFD: the region from GET_INFLIGHT_FD
/// is handed back with SET_INFLIGHT_FD on a new connection (no second
/// GET), and I/O goes on on the same rings. Skipped, with a note, while
/// the backend does not offer the feature.
#[test]
fn cloud_hypervisor_inflight_region_across_reconnects() {
    let (mut fx, be) = Fixture::start(&["--num-queues", "2"]);
    let opts = Options {
        queues: CH_QUEUES,
        queue_size: CH_QUEUE_SIZE,
        protocol: CH_PROTOCOL,
        ..Options::default()
    };
    let mut s = Session::connect(&fx.socket, opts).unwrap();
    ok(s.conn.call(req::SET_OWNER, &[], &[]), "SET_OWNER", &be);
    s.offered = ok(
        s.conn.call(req::GET_FEATURES, &[], &[]),
        "GET_FEATURES",
        &be,
    )
    .reply("GET_FEATURES")
    .unwrap()
    .u64()
    .unwrap();
    s.acked = CH_FEATURES & s.offered;
    s.offered_protocol = ok(
        s.conn.call(req::GET_PROTOCOL_FEATURES, &[], &[]),
        "GET_PROTOCOL_FEATURES",
        &be,
    )
    .reply("GET_PROTOCOL_FEATURES")
    .unwrap()
    .u64()
    .unwrap();
    if s.offered_protocol & proto::INFLIGHT_SHMFD == 0 {
        note(&format!(
            "NOTE: SKIPPED cloud_hypervisor_inflight_region_across_reconnects: the backend does \
             not offer VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD (protocol features {:#x})",
            s.offered_protocol
        ));
        drop(s);
        fx.finish(be).unwrap();
        return;
    }
    s.protocol = CH_PROTOCOL & s.offered_protocol;
    ok(
        s.conn
            .call(req::SET_PROTOCOL_FEATURES, &conn::u64_body(s.protocol), &[]),
        "SET_PROTOCOL_FEATURES",
        &be,
    );
    s.conn.reply_ack = s.protocol & proto::REPLY_ACK != 0;
    ok(
        s.conn.call(req::GET_QUEUE_NUM, &[], &[]),
        "GET_QUEUE_NUM",
        &be,
    );
    get_config_60(&s, &be, CH_QUEUES);
    let mut inflight = None;
    ch_setup(&mut s, &be, &mut inflight);
    assert!(inflight.is_some());
    for round in 0..3u8 {
        for q in 0..usize::from(CH_QUEUES) {
            io_round(
                &mut s,
                &mut fx,
                q,
                PART_START + u64::from(round) * (2 << 20) + (q as u64) * (1 << 20),
                round,
            );
        }
        // Reconnect with the old region, without GET_INFLIGHT_FD.
        ch_reconnect(&mut s, &fx.socket, &be, &mut inflight);
    }
    for q in 0..usize::from(CH_QUEUES) {
        io_round(
            &mut s,
            &mut fx,
            q,
            PART_START + (8 << 20) + (q as u64) * (1 << 20),
            9,
        );
    }
    drop(s);
    fx.finish(be).unwrap();
}

/// Firecracker: CONFIG only (no REPLY_ACK, so nothing is acknowledged), one
/// queue of 256, the whole 60-byte config read; then I/O, and the config
/// read again as on a config update.
#[test]
fn firecracker_sequence() {
    let (mut fx, be) = Fixture::start(&[]);
    let opts = Options {
        queues: 1,
        queue_size: 256,
        protocol: proto::CONFIG,
        ..Options::default()
    };
    let mut s = Session::connect(&fx.socket, opts).unwrap();
    // VhostUserHandleImpl::new
    ok(s.conn.call(req::SET_OWNER, &[], &[]), "SET_OWNER", &be);
    // negotiate_features
    s.offered = ok(
        s.conn.call(req::GET_FEATURES, &[], &[]),
        "GET_FEATURES",
        &be,
    )
    .reply("GET_FEATURES")
    .unwrap()
    .u64()
    .unwrap();
    let acked = FC_FEATURES & s.offered;
    s.offered_protocol = ok(
        s.conn.call(req::GET_PROTOCOL_FEATURES, &[], &[]),
        "GET_PROTOCOL_FEATURES",
        &be,
    )
    .reply("GET_PROTOCOL_FEATURES")
    .unwrap()
    .u64()
    .unwrap();
    s.protocol = proto::CONFIG & s.offered_protocol;
    assert_eq!(
        s.protocol,
        proto::CONFIG,
        "the backend does not offer CONFIG"
    );
    ok(
        s.conn
            .call(req::SET_PROTOCOL_FEATURES, &conn::u64_body(s.protocol), &[]),
        "SET_PROTOCOL_FEATURES",
        &be,
    );
    assert!(!s.conn.reply_ack);
    get_config_60(&s, &be, 1);
    // activate: SET_FEATURES, then setup_backend.
    s.acked = acked;
    ok(
        s.conn.call(req::SET_FEATURES, &conn::u64_body(acked), &[]),
        "SET_FEATURES",
        &be,
    );
    ok(s.set_mem_table(), "SET_MEM_TABLE", &be);
    ok(s.vring_num(0, 256), "SET_VRING_NUM", &be);
    ok(s.vring_addr(0), "SET_VRING_ADDR", &be);
    ok(s.vring_base(0, 0), "SET_VRING_BASE", &be);
    let call = s.queues[0].call.as_raw_fd();
    ok(
        s.vring_fd(req::SET_VRING_CALL, 0, Some(call)),
        "SET_VRING_CALL",
        &be,
    );
    let kick = s.queues[0].kick.as_raw_fd();
    ok(
        s.vring_fd(req::SET_VRING_KICK, 0, Some(kick)),
        "SET_VRING_KICK",
        &be,
    );
    ok(s.vring_enable(0, true), "SET_VRING_ENABLE", &be);
    // Nothing was acknowledged: the connection must still be up.
    assert!(
        s.conn.ping().is_some(),
        "the backend closed the connection during setup:\n{}",
        be.log()
    );
    for i in 0..4u64 {
        io_round(&mut s, &mut fx, 0, PART_START + i * (1 << 20), i as u8);
    }
    // A config update reads the whole config again.
    get_config_60(&s, &be, 1);
    drop(s);
    fx.finish(be).unwrap();
}
