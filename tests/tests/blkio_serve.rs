//! `ocidisk serve` driven by libblkio over a real vhost-user socket.
//!
//! Needs the `ocidisk` binary: `cargo build -p ocidisk` first (see
//! `ocidisk_tests::blkio_client::ocidisk_binary`).

use ocidisk_tests::blkio_client::{BlkioClient, Op, Server};
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

const DISK_SIZE: u64 = 16 << 20;
const BUF: usize = 1 << 20;

/// A raw disk whose every byte tells its position: the u32 at each 4-byte
/// aligned offset is that offset / 4, little-endian.
fn pattern(offset: u64, len: usize) -> Vec<u8> {
    assert_eq!(offset % 4, 0);
    (0..len / 4)
        .flat_map(|i| ((offset / 4) as u32 + i as u32).to_le_bytes())
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    disk: PathBuf,
    socket: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.raw");
        std::fs::write(&disk, pattern(0, DISK_SIZE as usize)).unwrap();
        let socket = dir.path().join("ocidisk.sock");
        Self {
            _dir: dir,
            disk,
            socket,
        }
    }

    fn serve(&self, extra: &[&str]) -> Server {
        let mut args = vec!["--raw", self.disk.to_str().unwrap()];
        args.extend_from_slice(extra);
        Server::start(&self.socket, &args).unwrap()
    }

    fn connect(&self, queues: usize) -> BlkioClient {
        BlkioClient::connect(&self.socket, queues, BUF).unwrap()
    }

    fn disk_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let data = std::fs::read(&self.disk).unwrap();
        data[offset as usize..offset as usize + len].to_vec()
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
    assert_eq!(q.read(0, 4096).unwrap(), pattern(0, 4096));
    assert_eq!(
        q.read(DISK_SIZE - 8192, 8192).unwrap(),
        pattern(DISK_SIZE - 8192, 8192)
    );
    // An unaligned, multi-page write, read back and found in the file.
    let data: Vec<u8> = (0..3 * 4096 + 512).map(|i| (i % 251) as u8).collect();
    let at = 5 * 4096 + 512;
    q.write(at, &data).unwrap();
    assert_eq!(q.read(at, data.len()).unwrap(), data);
    q.flush().unwrap();
    assert_eq!(f.disk_bytes(at, data.len()), data);
    // The neighbours are untouched.
    assert_eq!(q.read(at - 512, 512).unwrap(), pattern(at - 512, 512));
    let end = at + data.len() as u64;
    assert_eq!(q.read(end, 512).unwrap(), pattern(end, 512));
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
        assert_eq!(q.read(after, 4096).unwrap(), pattern(after, 4096));
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
        pattern(DISK_SIZE - 8192, 8192)
    );
    assert!(server.is_running());
    q.flush().unwrap();
    assert_eq!(
        f.disk_bytes(DISK_SIZE - 8192, 8192),
        pattern(DISK_SIZE - 8192, 8192)
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
    assert_eq!(client.queue().read(0, 4096).unwrap(), pattern(0, 4096));
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
    assert_eq!(client.queue().read(0, 512).unwrap(), pattern(0, 512));
    drop(client);
    assert!(server.terminate().unwrap().success());
}

#[test]
fn a_live_socket_is_refused() {
    let f = Fixture::new();
    let mut first = f.serve(&[]);
    let err = Server::start(&f.socket, &["--raw", f.disk.to_str().unwrap()])
        .err()
        .expect("a second server started on a live socket");
    let msg = format!("{err:#}");
    assert!(msg.contains("in use"), "{msg}");
    // The first one still serves.
    assert!(first.is_running());
    let mut client = BlkioClient::connect(&f.socket, 1, BUF).unwrap();
    assert_eq!(client.queue().read(0, 512).unwrap(), pattern(0, 512));
}

#[test]
fn a_regular_file_at_the_socket_path_is_left_alone() {
    let f = Fixture::new();
    std::fs::write(&f.socket, b"not a socket").unwrap();
    let err = Server::start(&f.socket, &["--raw", f.disk.to_str().unwrap()])
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
    assert_eq!(client.queue().read(0, 4096).unwrap(), pattern(0, 4096));
    assert!(client.queue().write(0, &[1; 512]).is_err());
    assert_eq!(f.disk_bytes(0, 512), pattern(0, 512));
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
    assert_eq!(client.queue().read(0, 4096).unwrap(), pattern(0, 4096));
}
