//! `ocidisk serve` driven by libblkio over a real vhost-user socket.
//!
//! Runs the `ocidisk` binary, brought up to date by
//! `ocidisk_tests::cli::ocidisk_binary`.

use blockio::IoBufMut;
use layout::oci::{Image, OpenOptions};
use layout::{ComposeOptions, LayoutSpec};
use ocidisk_tests::blkio_client::{BlkioClient, Op, Server};
use ocidisk_tests::cli::CommandExt as _;
use ocidisk_tests::oci_writer::{efi_image, ImageBuilder, OsImage, Payload};
use overlay::Overlay;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

const DISK_SIZE: u64 = 16 << 20;
const BUF: usize = 1 << 20;
/// The payload's size: it fills most of the one partition.
const PAYLOAD_SIZE: usize = 12 << 20;

/// Bytes that tell their position: the u32 at each 4-byte aligned offset is
/// that offset / 4, little-endian.
fn pattern(offset: u64, len: usize) -> Vec<u8> {
    assert_eq!(offset % 4, 0);
    (0..len / 4)
        .flat_map(|i| ((offset / 4) as u32 + i as u32).to_le_bytes())
        .collect()
}

/// A 16 MiB disk composed from a real image: the GPT, one partition that
/// holds the `system` payload (a position pattern) and zeros after it, and
/// a VM overlay.
struct Fixture {
    _dir: tempfile::TempDir,
    image: PathBuf,
    layout: PathBuf,
    overlay: PathBuf,
    socket: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        ImageBuilder::monogon(
            OsImage::new()
                .payload(Payload::new("kernel.efi", efi_image(64 << 10)))
                .payload(Payload::new("system", pattern(0, PAYLOAD_SIZE))),
        )
        .write(&image)
        .unwrap();
        let layout = dir.path().join("layout.toml");
        std::fs::write(
            &layout,
            r#"
            disk_size = "16MiB"
            [[partitions]]
            name = "system"
            type = "linux"
            size = "rest"
            content = "payload:system"
            "#,
        )
        .unwrap();
        Self {
            image,
            layout,
            overlay: dir.path().join("vm.overlay"),
            socket: dir.path().join("ocidisk.sock"),
            _dir: dir,
        }
    }

    fn image_args(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
        vec![
            "--image".into(),
            path(&self.image),
            "--layout".into(),
            path(&self.layout),
        ]
    }

    /// Serves the disk with the fixture's overlay (`--readonly` in `extra`
    /// serves it without).
    fn serve(&self, extra: &[&str]) -> Server {
        Server::start(&self.socket, &self.serve_args(extra)).unwrap()
    }

    fn serve_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = self.image_args();
        if !extra.contains(&"--readonly") {
            args.push("--overlay".into());
            args.push(self.overlay.to_str().unwrap().into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// [`serve_args`](Self::serve_args) over another image: the same layout
    /// over a different payload.
    fn serve_args_over_another_image(&self, extra: &[&str]) -> Vec<String> {
        let other = self._dir.path().join("other-image");
        ImageBuilder::monogon(
            OsImage::new()
                .payload(Payload::new("kernel.efi", efi_image(64 << 10)))
                .payload(Payload::new("system", vec![1; 4096])),
        )
        .write(&other)
        .unwrap();
        let mut args = self.serve_args(extra);
        // `image_args` starts with `--image DIR`.
        args[1] = other.to_str().unwrap().to_owned();
        args
    }

    fn connect(&self, queues: usize) -> BlkioClient {
        BlkioClient::connect(&self.socket, queues, BUF).unwrap()
    }

    /// The composed base disk the overlay belongs to (or, before an overlay
    /// exists, the one with the empty disk id `--readonly` uses).
    fn base(&self) -> layout::BlockMap {
        let disk_id = match Overlay::read_header(&self.overlay) {
            Ok(header) => header.disk_id.to_string(),
            Err(_) => String::new(),
        };
        let image = Image::open(&self.image, &OpenOptions::default()).unwrap();
        let spec = LayoutSpec::from_file(&self.layout, None).unwrap();
        layout::compose(&image, &spec, &ComposeOptions { disk_id })
            .unwrap()
            .map
    }

    /// The base disk's bytes: what a range reads before the guest writes it.
    fn base_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.base().read_at(offset, &mut buf).unwrap();
        buf
    }

    /// The disk as the overlay file holds it on disk (its last flushed map),
    /// read while the backend may still be serving it.
    fn disk_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let base = self.base();
        let overlay = Overlay::inspect(&self.overlay).unwrap();
        let mut buf = vec![0u8; len];
        overlay
            .read(offset, &mut [IoBufMut::new(&mut buf)], &base)
            .unwrap();
        buf
    }
}

fn errno(err: &io::Error) -> i32 {
    err.raw_os_error().unwrap_or(0)
}

#[test]
fn capacity_read_write_flush() {
    let f = Fixture::new();
    let server = f.serve(&[]);
    let mut client = f.connect(1);
    assert_eq!(client.capacity(), DISK_SIZE);
    assert!(!client.read_only());
    let q = client.queue();
    assert_eq!(q.read(0, 4096).unwrap(), f.base_bytes(0, 4096));
    assert_eq!(
        q.read(DISK_SIZE - 8192, 8192).unwrap(),
        f.base_bytes(DISK_SIZE - 8192, 8192)
    );
    // An unaligned, multi-page write, read back and found in the file.
    let data: Vec<u8> = (0..3 * 4096 + 512).map(|i| (i % 251) as u8).collect();
    let at = 5 * 4096 + 512;
    q.write(at, &data).unwrap();
    assert_eq!(q.read(at, data.len()).unwrap(), data);
    q.flush().unwrap();
    assert_eq!(f.disk_bytes(at, data.len()), data);
    // The neighbours are untouched.
    assert_eq!(q.read(at - 512, 512).unwrap(), f.base_bytes(at - 512, 512));
    let end = at + data.len() as u64;
    assert_eq!(q.read(end, 512).unwrap(), f.base_bytes(end, 512));
    drop(client);
    assert!(server.terminate().unwrap().success());
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeros() {
    let f = Fixture::new();
    let _server = f.serve(&[]);
    let mut client = f.connect(1);
    let q = client.queue();
    q.run(Op::Discard {
        offset: 1 << 20,
        len: 64 << 10,
    })
    .unwrap();
    assert_eq!(q.read(1 << 20, 64 << 10).unwrap(), vec![0; 64 << 10]);
    for (offset, unmap) in [(2u64 << 20, true), (3 << 20, false)] {
        q.run(Op::WriteZeroes {
            offset,
            len: 12 << 10,
            unmap,
        })
        .unwrap();
        assert_eq!(q.read(offset, 12 << 10).unwrap(), vec![0; 12 << 10]);
        let after = offset + (12 << 10);
        assert_eq!(q.read(after, 4096).unwrap(), f.base_bytes(after, 4096));
    }
}

#[test]
fn out_of_range_requests_fail_cleanly() {
    let f = Fixture::new();
    let mut server = f.serve(&[]);
    let mut client = f.connect(1);
    let q = client.queue();
    let cases = [
        Op::Read {
            offset: DISK_SIZE,
            buf: 0,
            len: 512,
        },
        Op::Read {
            offset: DISK_SIZE - 512,
            buf: 0,
            len: 1024,
        },
        Op::Write {
            offset: DISK_SIZE - 4096,
            buf: 0,
            len: 8192,
        },
        Op::Write {
            offset: 1 << 40,
            buf: 0,
            len: 512,
        },
        Op::Discard {
            offset: DISK_SIZE - 512,
            len: 4096,
        },
        Op::WriteZeroes {
            offset: DISK_SIZE,
            len: 512,
            unmap: false,
        },
    ];
    for op in cases {
        let err = q.run(op).expect_err(&format!("{op:?} succeeded"));
        assert_eq!(errno(&err), libc::EIO, "{op:?}: {err}");
    }
    // Nothing changed, and the backend still serves.
    assert_eq!(
        q.read(DISK_SIZE - 8192, 8192).unwrap(),
        f.base_bytes(DISK_SIZE - 8192, 8192)
    );
    assert!(server.is_running());
    q.flush().unwrap();
    assert_eq!(
        f.disk_bytes(DISK_SIZE - 8192, 8192),
        f.base_bytes(DISK_SIZE - 8192, 8192)
    );
}

#[test]
fn queues_run_in_parallel() {
    const QUEUES: usize = 4;
    let f = Fixture::new();
    let _server = f.serve(&["--num-queues", "4"]);
    let client = f.connect(QUEUES);
    assert_eq!(client.queues.len(), QUEUES);
    let mut client = client;
    let queues = std::mem::take(&mut client.queues);
    let threads: Vec<_> = queues
        .into_iter()
        .enumerate()
        .map(|(i, mut q)| {
            std::thread::spawn(move || {
                // Each queue owns a 1 MiB stripe and keeps 8 requests in
                // flight: writes of its own pattern, then reads back.
                let base = (i as u64) << 20;
                let chunk = 16 << 10;
                let fill: Vec<u8> = (0..BUF).map(|b| (b as u8) ^ (i as u8 * 37 + 1)).collect();
                q.buf().copy_from_slice(&fill);
                let mut out = Vec::new();
                for round in 0..(BUF / chunk / 8) {
                    for j in 0..8 {
                        let off = (round * 8 + j) * chunk;
                        q.submit(
                            Op::Write {
                                offset: base + off as u64,
                                buf: off,
                                len: chunk,
                            },
                            off,
                        );
                    }
                    q.reap(8, &mut out).unwrap();
                }
                assert!(out.iter().all(|(_, r)| r.is_ok()), "queue {i}: {out:?}");
                q.buf().fill(0);
                out.clear();
                for off in (0..BUF).step_by(chunk) {
                    q.submit(
                        Op::Read {
                            offset: base + off as u64,
                            buf: off,
                            len: chunk,
                        },
                        off,
                    );
                    if q.in_flight() == 8 {
                        q.reap(8, &mut out).unwrap();
                    }
                }
                let left = q.in_flight();
                q.reap(left, &mut out).unwrap();
                assert!(out.iter().all(|(_, r)| r.is_ok()), "queue {i}: {out:?}");
                assert!(q.buf() == &fill[..], "queue {i} read back other data");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_second_connection_sees_the_first_ones_flushed_writes() {
    let f = Fixture::new();
    let mut server = f.serve(&[]);
    let data = vec![0x5a; 8192];
    {
        let mut client = f.connect(1);
        client.queue().write(4096, &data).unwrap();
        client.queue().flush().unwrap();
    }
    // The backend notices the disconnect and listens again.
    let mut client = None;
    for _ in 0..100 {
        match BlkioClient::connect(&f.socket, 1, BUF) {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let mut client = client.expect("cannot reconnect");
    assert_eq!(client.queue().read(4096, 8192).unwrap(), data);
    assert_eq!(client.queue().read(0, 4096).unwrap(), f.base_bytes(0, 4096));
    drop(client);
    assert!(server.is_running());
    // One log line per connection event.
    let log = server.wait_for_log("frontend disconnected", 2, Duration::from_secs(10));
    let log = log.unwrap_or_else(|log| panic!("log:\n{log}"));
    assert_eq!(log.matches("frontend connected").count(), 2, "log:\n{log}");
}

#[test]
fn sigterm_while_connected_flushes_and_exits_zero() {
    let f = Fixture::new();
    let server = f.serve(&[]);
    let mut client = f.connect(1);
    client.queue().write(0, &[0xc3; 4096]).unwrap();
    // No flush from the client: the backend flushes on its way out.
    let status = server.terminate().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!f.socket.exists(), "the socket was left behind");
    assert_eq!(f.disk_bytes(0, 4096), vec![0xc3; 4096]);
    drop(client);
}

#[test]
fn sigterm_and_sigint_while_idle_exit_zero() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let f = Fixture::new();
        let mut server = f.serve(&[]);
        server.signal(signal).unwrap();
        let status = server.wait_exit(Duration::from_secs(30)).unwrap();
        assert!(status.success(), "signal {signal}: {status:?}");
        assert!(!f.socket.exists());
    }
}

#[test]
fn socket_mode_and_stale_socket() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let f = Fixture::new();
    // A socket file nobody accepts on, as a killed process leaves it.
    drop(UnixListener::bind(&f.socket).unwrap());
    assert!(UnixStream::connect(&f.socket).is_err());
    let server = f.serve(&["--socket-mode", "0640"]);
    let meta = std::fs::metadata(&f.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    let mut client = f.connect(1);
    assert_eq!(client.queue().read(0, 512).unwrap(), f.base_bytes(0, 512));
    drop(client);
    assert!(server.terminate().unwrap().success());
}

#[test]
fn a_live_socket_is_refused() {
    let f = Fixture::new();
    let mut first = f.serve(&[]);
    let err = Server::start(&f.socket, &f.serve_args(&[]))
        .err()
        .expect("a second server started on a live socket");
    let msg = format!("{err:#}");
    assert!(msg.contains("in use"), "{msg}");
    // The first one still serves.
    assert!(first.is_running());
    let mut client = BlkioClient::connect(&f.socket, 1, BUF).unwrap();
    assert_eq!(client.queue().read(0, 512).unwrap(), f.base_bytes(0, 512));
}

#[test]
fn a_regular_file_at_the_socket_path_is_left_alone() {
    let f = Fixture::new();
    std::fs::write(&f.socket, b"not a socket").unwrap();
    let err = Server::start(&f.socket, &f.serve_args(&[]))
        .err()
        .expect("started over a regular file");
    assert!(format!("{err:#}").contains("not a socket"), "{err:#}");
    assert_eq!(std::fs::read(&f.socket).unwrap(), b"not a socket");
}

#[test]
fn read_only_device() {
    let f = Fixture::new();
    let _server = f.serve(&["--readonly"]);
    // libblkio refuses a read-write connection to a read-only device.
    assert!(BlkioClient::connect(&f.socket, 1, BUF).is_err());
    let mut client = BlkioClient::connect_read_only(&f.socket, 1, BUF).unwrap();
    assert!(client.read_only());
    assert_eq!(client.queue().read(0, 4096).unwrap(), f.base_bytes(0, 4096));
    assert!(client.queue().write(0, &[1; 512]).is_err());
    // Nothing was written anywhere: no overlay was even made.
    assert!(!f.overlay.exists());
}

#[test]
fn kill_9_then_restart_keeps_every_flushed_write() {
    let f = Fixture::new();
    let server = f.serve(&[]);
    let mut client = f.connect(1);
    let flushed: Vec<(u64, Vec<u8>)> = (0..16u64)
        .map(|i| (i * 65536 + 4096, vec![i as u8 + 1; 8192]))
        .collect();
    for (offset, data) in &flushed {
        client.queue().write(*offset, data).unwrap();
    }
    client.queue().flush().unwrap();
    server.kill().unwrap();
    drop(client);
    // The killed process left its socket behind: the new one replaces it.
    assert!(f.socket.exists());
    let _server = f.serve(&[]);
    let mut client = f.connect(1);
    for (offset, data) in &flushed {
        assert_eq!(&client.queue().read(*offset, data.len()).unwrap(), data);
    }
    assert_eq!(client.queue().read(0, 4096).unwrap(), f.base_bytes(0, 4096));
}

/// Large requests, many in flight on one queue, are what the device hands
/// to its helper threads: every one must still land where it was asked to,
/// and one bad request among them must fail alone.
#[test]
fn large_requests_in_flight_together() {
    const LARGE: usize = 1 << 20;
    const N: usize = 8;
    let f = Fixture::new();
    for helpers in ["0", "2", "3"] {
        let server = f.serve(&["--helper-threads", helpers]);
        let mut client = BlkioClient::connect(&f.socket, 1, 2 * N * LARGE).unwrap();
        let q = client.queue();
        // Sector-aligned but not page-aligned on the disk, so the pieces of
        // a lone request are cut inside it.
        let at = |i: usize| (2 << 20) + 1536 + (i * LARGE) as u64;
        let fill: Vec<u8> = (0..N * LARGE)
            .map(|b| (b % 251) as u8 ^ helpers.as_bytes()[0])
            .collect();
        q.buf()[..N * LARGE].copy_from_slice(&fill);
        // Request i moves buffer slot i to or from at(i).
        let (buf, len) = (|i: usize| i * LARGE, LARGE);
        let mut out = Vec::new();
        for i in 0..N {
            let (offset, buf) = (at(i), buf(i));
            q.submit(Op::Write { offset, buf, len }, i);
        }
        q.reap(N, &mut out).unwrap();
        assert!(out.iter().all(|(_, r)| r.is_ok()), "{helpers}: {out:?}");

        // Read back the writes and the payload before them with every
        // request in flight at once, one of them past the end of the disk.
        out.clear();
        q.buf().fill(0);
        for i in 0..N {
            let (offset, buf) = (at(i), buf(i));
            q.submit(Op::Read { offset, buf, len }, i);
        }
        q.submit(
            Op::Read {
                offset: DISK_SIZE - (LARGE / 2) as u64,
                buf: N * LARGE,
                len: LARGE,
            },
            N,
        );
        let payload_at = (1u64 << 20) + 4096;
        q.submit(
            Op::Read {
                offset: payload_at,
                buf: (N + 1) * LARGE,
                len: LARGE / 2,
            },
            N + 1,
        );
        q.reap(N + 2, &mut out).unwrap();
        for (i, result) in &out {
            assert_eq!(
                result.is_err(),
                *i == N,
                "{helpers}: request {i}: {result:?}"
            );
        }
        let buf = q.buf();
        assert!(
            buf[..N * LARGE] == fill[..],
            "{helpers}: writes read back wrong"
        );
        assert!(
            buf[(N + 1) * LARGE..][..LARGE / 2] == pattern(4096, LARGE / 2)[..],
            "{helpers}: payload read back wrong"
        );
        drop(client);
        server.terminate().unwrap();
    }
}

#[test]
fn the_partition_reads_as_the_payload_then_zeros() {
    let f = Fixture::new();
    let _server = f.serve(&[]);
    let mut client = f.connect(1);
    let q = client.queue();
    // The primary GPT header, generated in memory.
    assert_eq!(&q.read(512, 512).unwrap()[..8], b"EFI PART");
    // The partition starts at 1 MiB and holds the payload straight from its
    // blob, then zeros to its end.
    let start = 1u64 << 20;
    for chunk in 0..(PAYLOAD_SIZE / BUF) as u64 {
        let at = chunk * BUF as u64;
        assert!(
            q.read(start + at, BUF).unwrap() == pattern(at, BUF),
            "payload bytes differ in MiB {chunk}"
        );
    }
    let after = start + PAYLOAD_SIZE as u64;
    assert_eq!(q.read(after, 64 << 10).unwrap(), vec![0; 64 << 10]);
}

#[test]
fn a_restarted_backend_reopens_the_overlay_with_the_same_guids() {
    let f = Fixture::new();
    let server = f.serve(&[]);
    let gpt = f.connect(1).queue().read(0, 34 * 512).unwrap();
    assert!(server.terminate().unwrap().success());
    let header = Overlay::read_header(&f.overlay).unwrap();

    let _server = f.serve(&[]);
    assert_eq!(f.connect(1).queue().read(0, 34 * 512).unwrap(), gpt);
    assert_eq!(
        Overlay::read_header(&f.overlay).unwrap().disk_id,
        header.disk_id
    );
}

#[test]
fn an_overlay_of_another_image_is_refused() {
    let f = Fixture::new();
    let server = f.serve(&[]);
    f.connect(1).queue().write(8192, &[7; 4096]).unwrap();
    assert!(server.terminate().unwrap().success());
    let before = std::fs::read(&f.overlay).unwrap();

    let args = f.serve_args_over_another_image(&[]);
    let err = Server::start(&f.socket, &args)
        .err()
        .expect("served an overlay over another image");
    let msg = format!("{err:#}");
    assert!(msg.contains("vm.overlay"), "{msg}");
    assert_eq!(
        std::fs::read(&f.overlay).unwrap(),
        before,
        "the overlay changed"
    );
}

#[test]
fn serve_rebase_keeps_the_writes_over_another_image() {
    let f = Fixture::new();
    let server = f.serve(&[]);
    f.connect(1).queue().write(8192, &[7; 4096]).unwrap();
    assert!(server.terminate().unwrap().success());
    let disk_id = Overlay::read_header(&f.overlay).unwrap().disk_id;

    let args = f.serve_args_over_another_image(&["--rebase"]);
    let server = Server::start(&f.socket, &args).unwrap();
    assert_eq!(
        f.connect(1).queue().read(8192, 4096).unwrap(),
        vec![7; 4096]
    );
    assert!(server.terminate().unwrap().success());
    let header = Overlay::read_header(&f.overlay).unwrap();
    assert_eq!((header.generation, header.disk_id), (2, disk_id));
}

#[test]
fn export_with_the_overlay_writes_the_vm_disk() {
    let f = Fixture::new();
    let server = f.serve(&[]);
    let mut client = f.connect(1);
    let q = client.queue();
    q.write(3 << 20, &[0x11; 3 * 4096 + 512]).unwrap();
    q.run(Op::WriteZeroes {
        offset: 5 << 20,
        len: 1 << 20,
        unmap: true,
    })
    .unwrap();
    let seen: Vec<u8> = (0..DISK_SIZE / BUF as u64)
        .flat_map(|i| q.read(i * BUF as u64, BUF).unwrap())
        .collect();
    drop(client);
    assert!(server.terminate().unwrap().success());

    let out = f._dir.path().join("vm.raw");
    ocidisk_tests::cli::ocidisk()
        .arg("export")
        .args(f.image_args())
        .arg("--overlay")
        .arg(&f.overlay)
        .arg("--output")
        .arg(&out)
        .run_ok();
    let exported = std::fs::read(&out).unwrap();
    assert_eq!(exported.len() as u64, DISK_SIZE);
    assert!(
        exported == seen,
        "the export differs from what the guest read"
    );
    assert_eq!(&exported[(5 << 20)..(6 << 20)], &vec![0u8; 1 << 20][..]);
    assert_eq!(exported[3 << 20], 0x11);
}

#[test]
fn metrics_count_what_the_guest_did() {
    let f = Fixture::new();
    let metrics_sock = f._dir.path().join("metrics.sock");
    let stats = f._dir.path().join("stats.json");
    let trace = f._dir.path().join("trace.bin");
    let server = f.serve(&[
        "--metrics",
        metrics_sock.to_str().unwrap(),
        "--stats-json",
        stats.to_str().unwrap(),
        "--trace",
        trace.to_str().unwrap(),
        "--serial",
        "node-7",
    ]);
    let mut client = f.connect(1);
    let q = client.queue();
    // Two reads of the payload (base), a write, a read of it (overlay), and
    // one request past the end.
    q.read(1 << 20, 8192).unwrap();
    q.read(2 << 20, 4096).unwrap();
    q.write(4 << 20, &[3; 4096]).unwrap();
    q.read(4 << 20, 4096).unwrap();
    q.flush().unwrap();
    assert!(q.read(DISK_SIZE, 512).is_err());

    // Live: the Prometheus endpoint and `ocidisk stats`.
    ocidisk_tests::cli::ocidisk()
        .args(["stats", metrics_sock.to_str().unwrap(), "--once", "--json"])
        .run_json();
    let prom = std::process::Command::new("curl")
        .args([
            "-sf",
            "--unix-socket",
            metrics_sock.to_str().unwrap(),
            "http://localhost/metrics",
        ])
        .output()
        .unwrap();
    assert!(prom.status.success());
    let prom = String::from_utf8(prom.stdout).unwrap();
    assert!(
        prom.lines()
            .any(|l| l.starts_with("ocidisk_requests_total{")
                && l.contains("serial=\"node-7\"")
                && l.contains("type=\"read\"")
                && l.ends_with(" 4")),
        "{prom}"
    );
    drop(client);
    assert!(server.terminate().unwrap().success());

    // At exit: the totals file.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let read = &report["totals"]["read"];
    assert_eq!(read["requests"], 4, "{report:#}");
    assert_eq!(read["errors"], 1);
    assert_eq!(read["bytes"], 8192 + 4096 + 4096);
    assert_eq!(report["totals"]["write"]["bytes"], 4096);
    assert_eq!(report["base_read_bytes"], 8192 + 4096);
    assert_eq!(report["overlay_read_bytes"], 4096);
    assert_eq!(report["serial"], "node-7");
    // And the trace has every request.
    let summary = ocidisk_tests::cli::ocidisk()
        .args(["trace", "summarize", trace.to_str().unwrap(), "--json"])
        .run_json();
    assert_eq!(summary["kinds"]["read"]["requests"], 4, "{summary:#}");
    assert_eq!(summary["kinds"]["write"]["requests"], 1, "{summary:#}");
    assert_eq!(summary["dropped"], 0);
}

/// Drops the page cache of every file under `dir` (the image's blobs, the
/// overlay), so that the next reads wait for the disk: what the io_uring
/// engine exists for. Works without root (`POSIX_FADV_DONTNEED` on each
/// file, after syncing it so that no dirty page stays behind).
fn drop_cache_under(dir: &std::path::Path) {
    use std::os::fd::AsRawFd;
    for entry in walk(dir) {
        let Ok(file) = std::fs::File::open(&entry) else {
            continue;
        };
        file.sync_all().unwrap();
        // SAFETY: plain system call on a descriptor we own.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0, "fadvise {}", entry.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(walk(&path));
        } else if meta.is_file() {
            out.push(path);
        }
    }
    out
}

/// Every engine, with the page cache emptied under it: a full queue of
/// reads of all sizes and alignments in flight at once reads the right
/// bytes, writes in flight together read back, and a bad request among
/// them fails alone.
#[test]
fn cold_reads_and_writes_at_full_depth_on_every_engine() {
    const DEPTH: usize = 128;
    const SLOT: usize = 64 << 10;
    for engine in [
        &["--io-engine", "uring"][..],
        &["--io-engine", "sync"],
        &["--io-engine", "uring", "--direct"],
    ] {
        let f = Fixture::new();
        let server = f.serve(&[engine, &["--queue-size", "256"]].concat());
        let mut client = BlkioClient::connect(&f.socket, 1, DEPTH * SLOT).unwrap();
        // Some written blocks, so that reads mix the overlay and the base.
        let written: Vec<(u64, Vec<u8>)> = (0..DEPTH as u64)
            .map(|i| {
                (
                    i * 81920 + 4096,
                    vec![(i % 250) as u8 + 1; 4096 * (1 + i as usize % 4)],
                )
            })
            .collect();
        let q = client.queue();
        for (i, (offset, data)) in written.iter().enumerate() {
            q.buf()[i * SLOT..][..data.len()].copy_from_slice(data);
            q.submit(
                Op::Write {
                    offset: *offset,
                    buf: i * SLOT,
                    len: data.len(),
                },
                i,
            );
        }
        let mut out = Vec::new();
        q.reap(DEPTH, &mut out).unwrap();
        assert!(out.iter().all(|(_, r)| r.is_ok()), "{engine:?}: {out:?}");
        q.flush().unwrap();
        let mut expected = f.base_bytes(0, DISK_SIZE as usize);
        for (offset, data) in &written {
            expected[*offset as usize..][..data.len()].copy_from_slice(data);
        }

        for round in 0..3 {
            drop_cache_under(f._dir.path());
            let mut seed = fastrand::Rng::with_seed(round);
            let mut reqs = Vec::new();
            for i in 0..DEPTH {
                let len = 512 * (1 + seed.usize(..SLOT / 512));
                let offset = 512 * seed.u64(..(DISK_SIZE - len as u64) / 512);
                reqs.push((offset, len));
                q.submit(
                    Op::Read {
                        offset,
                        buf: i * SLOT,
                        len,
                    },
                    i,
                );
            }
            // One read past the end, in the middle of the others.
            q.submit(
                Op::Read {
                    offset: DISK_SIZE - 512,
                    buf: 0,
                    len: 1024,
                },
                DEPTH,
            );
            out.clear();
            q.reap(DEPTH + 1, &mut out).unwrap();
            for (i, result) in &out {
                assert_eq!(
                    result.is_err(),
                    *i == DEPTH,
                    "{engine:?}: request {i}: {result:?}"
                );
            }
            let buf = q.buf().to_vec();
            for (i, (offset, len)) in reqs.iter().enumerate() {
                // Request 0's buffer was also the failed read's.
                if i == 0 {
                    continue;
                }
                assert!(
                    buf[i * SLOT..][..*len] == expected[*offset as usize..][..*len],
                    "{engine:?}: round {round}: read {i} of {len} bytes at {offset} is wrong"
                );
            }
        }
        drop(client);
        assert!(server.terminate().unwrap().success(), "{engine:?}");
    }
}

/// With the write cache off, a write completes only once it is durable:
/// 64 writes in flight together (sharing flushes) survive kill -9 of the
/// backend without any FLUSH from the driver.
#[test]
fn writethrough_writes_in_flight_together_are_durable_when_they_complete() {
    for engine in ["uring", "sync"] {
        let f = Fixture::new();
        let server = f.serve(&["--io-engine", engine, "--writethrough"]);
        let mut client = BlkioClient::connect(&f.socket, 1, 64 * 8192).unwrap();
        let q = client.queue();
        let mut out = Vec::new();
        for i in 0..64usize {
            q.buf()[i * 8192..][..8192].fill(i as u8 + 7);
            // Half of them partial blocks (copy-up), half whole blocks.
            let offset = (i as u64) * 3 * 8192 + if i % 2 == 0 { 0 } else { 512 };
            q.submit(
                Op::Write {
                    offset,
                    buf: i * 8192,
                    len: 8192,
                },
                i,
            );
        }
        q.reap(64, &mut out).unwrap();
        assert!(out.iter().all(|(_, r)| r.is_ok()), "{engine}: {out:?}");
        server.kill().unwrap();
        drop(client);
        for i in 0..64usize {
            let offset = (i as u64) * 3 * 8192 + if i % 2 == 0 { 0 } else { 512 };
            assert_eq!(
                f.disk_bytes(offset, 8192),
                vec![i as u8 + 7; 8192],
                "{engine}: write {i}"
            );
        }
    }
}

/// A blob that shrinks under a running backend makes the reads of what is
/// gone fail, each alone: every other read in flight with them succeeds,
/// and the backend keeps serving.
#[test]
fn io_errors_fail_only_their_requests() {
    for engine in ["uring", "sync"] {
        let f = Fixture::new();
        let mut server = f.serve(&["--io-engine", engine, "--readonly"]);
        let mut client = BlkioClient::connect_read_only(&f.socket, 1, 32 * 4096).unwrap();
        // The payload starts at 1 MiB on the disk (the first partition).
        let blob = walk(&f.image)
            .into_iter()
            .find(|p| std::fs::metadata(p).unwrap().len() == PAYLOAD_SIZE as u64)
            .expect("the system payload's blob");
        let keep = 4u64 << 20;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&blob)
            .unwrap()
            .set_len(keep)
            .unwrap();
        drop_cache_under(f._dir.path());
        let q = client.queue();
        let mut out = Vec::new();
        for i in 0..32usize {
            // Even requests within what is left, odd ones past it.
            let offset = (1 << 20)
                + if i % 2 == 0 {
                    (i as u64) * 4096
                } else {
                    keep + (i as u64) * 4096
                };
            q.submit(
                Op::Read {
                    offset,
                    buf: i * 4096,
                    len: 4096,
                },
                i,
            );
        }
        q.reap(32, &mut out).unwrap();
        for (i, result) in &out {
            assert_eq!(
                result.is_err(),
                i % 2 == 1,
                "{engine}: read {i}: {result:?}"
            );
            if let Err(err) = result {
                assert_eq!(errno(err), libc::EIO, "{engine}: read {i}");
            }
        }
        for i in (0..32usize).step_by(2) {
            assert_eq!(
                q.buf()[i * 4096..][..4096],
                pattern((i as u64) * 4096, 4096)[..],
                "{engine}: read {i}"
            );
        }
        assert!(server.is_running(), "{engine}");
        drop(client);
        assert!(server.terminate().unwrap().success(), "{engine}");
    }
}

/// kill -9 in the middle of a stream of writes (overwrites, which the
/// io_uring engine sends to the ring) with FLUSHes among them: after a
/// restart every block holds the last write a completed FLUSH covered, or
/// a write issued after it, never anything older.
#[test]
fn kill_9_during_a_stream_of_engine_writes_keeps_every_flushed_write() {
    const BLOCKS: u64 = 256;
    const DEPTH: usize = 32;
    const AT: u64 = 4 << 20;
    let f = Fixture::new();
    let block = |generation: u64, b: u64| -> Vec<u8> {
        (0..512u64)
            .flat_map(|i| (generation << 20 | b << 9 | i).to_le_bytes())
            .collect()
    };
    // Every other block written once and flushed, so the stream both
    // overwrites (on the ring) and writes blocks for the first time (which
    // changes the overlay's map).
    let server = f.serve(&["--io-engine", "uring"]);
    let mut client = BlkioClient::connect(&f.socket, 1, (DEPTH + 1) * 4096).unwrap();
    let q = client.queue();
    for b in (0..BLOCKS).step_by(2) {
        q.write(AT + b * 4096, &block(0, b)).unwrap();
    }
    q.flush().unwrap();
    // Per block: the generation a completed FLUSH made durable, and every
    // generation not known to be older on the disk (in flight, or completed
    // after the last FLUSH was sent): any of them may have reached it.
    let mut durable: Vec<u64> = vec![0; BLOCKS as usize];
    let mut since: Vec<Vec<u64>> = vec![Vec::new(); BLOCKS as usize];
    let mut completed: Vec<(u64, u64)> = Vec::new();
    let mut flushing: Option<Vec<(u64, u64)>> = None;
    let mut seed = fastrand::Rng::with_seed(7);
    let mut generation = 1u64;
    let mut slots: Vec<Option<(u64, u64)>> = vec![None; DEPTH];
    let mut out = Vec::new();
    let stop_after = seed.u64(2000..4000);
    // Writes a new generation of a random block from buffer `slot`.
    let mut issue = |q: &mut ocidisk_tests::blkio_client::ClientQueue,
                     slot: usize,
                     since: &mut Vec<Vec<u64>>,
                     slots: &mut Vec<Option<(u64, u64)>>| {
        let b = seed.u64(..BLOCKS);
        q.buf()[slot * 4096..][..4096].copy_from_slice(&block(generation, b));
        q.submit(
            Op::Write {
                offset: AT + b * 4096,
                buf: slot * 4096,
                len: 4096,
            },
            slot,
        );
        since[b as usize].push(generation);
        slots[slot] = Some((b, generation));
        generation += 1;
    };
    for slot in 0..DEPTH {
        issue(q, slot, &mut since, &mut slots);
    }
    let mut done = 0;
    while done < stop_after {
        out.clear();
        q.reap(1, &mut out).unwrap();
        for (slot, result) in out.drain(..) {
            result.unwrap();
            done += 1;
            if slot == DEPTH {
                // The FLUSH covers what had completed when it was sent; of
                // those, the last to complete on a block is what it holds.
                // Writes still in flight then may land later, in any order.
                for (b, g) in flushing.take().unwrap_or_default() {
                    durable[b as usize] = g;
                    since[b as usize].retain(|&x| x != g);
                }
                continue;
            }
            if let Some(write) = slots[slot].take() {
                completed.push(write);
            }
            if flushing.is_none() && completed.len() >= 64 {
                flushing = Some(std::mem::take(&mut completed));
                q.submit(Op::Flush, DEPTH);
            }
            issue(q, slot, &mut since, &mut slots);
        }
    }
    // Requests are in flight right now.
    server.kill().unwrap();
    drop(client);
    let _server = f.serve(&["--io-engine", "uring"]);
    let mut client = f.connect(1);
    let q = client.queue();
    for b in 0..BLOCKS {
        let got = q.read(AT + b * 4096, 4096).unwrap();
        if got == f.base_bytes(AT + b * 4096, 4096) {
            assert!(
                b % 2 == 1 && durable[b as usize] == 0,
                "block {b} lost its writes: a FLUSH made generation {} durable",
                durable[b as usize]
            );
            continue;
        }
        let g = u64::from_le_bytes(got[..8].try_into().unwrap()) >> 20;
        assert_eq!(got, block(g, b), "block {b} is torn or misplaced");
        assert!(
            g == durable[b as usize] || since[b as usize].contains(&g),
            "block {b} holds generation {g}; a FLUSH made {} durable",
            durable[b as usize]
        );
    }
}

/// Where a seccomp filter denies io_uring (as container runtimes' default
/// profiles do), `--io-engine auto` serves with blocking calls and says so
/// in one log line, and `--io-engine uring` refuses to start, naming why.
#[test]
fn where_seccomp_denies_io_uring_auto_falls_back_to_blocking_calls() {
    let f = Fixture::new();
    let wrapper = std::path::Path::new(env!("CARGO_BIN_EXE_deny-io-uring"));

    let refused = std::process::Command::new(wrapper)
        .arg(ocidisk_tests::blkio_client::ocidisk_binary().unwrap())
        .args(["serve", "--socket"])
        .arg(&f.socket)
        .args(f.serve_args(&["--io-engine", "uring"]))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "uring started: {stderr}");
    assert!(
        stderr.contains("cannot use io_uring (--io-engine uring)")
            && stderr.contains("Operation not permitted"),
        "{stderr}"
    );
    assert!(!f.socket.exists(), "a refused start left its socket");

    let server =
        Server::start_under(wrapper, &f.socket, &f.serve_args(&["--io-engine", "auto"])).unwrap();
    let mut client = f.connect(1);
    let data = pattern(7 << 20, 64 << 10);
    let q = client.queue();
    q.write(3 << 20, &data).unwrap();
    q.flush().unwrap();
    assert_eq!(q.read(3 << 20, data.len()).unwrap(), data);
    assert_eq!(
        q.read(1 << 20, 4096).unwrap(),
        pattern(0, 4096),
        "the payload reads through the blocking engine"
    );
    drop(client);
    let log = server.log();
    assert_eq!(
        log.matches("io_uring is not available").count(),
        1,
        "one line says why: {log}"
    );
    assert!(log.contains("Operation not permitted"), "{log}");
    assert!(log.contains("engine=\"blocking\""), "{log}");
    assert!(server.terminate().unwrap().success());
}
