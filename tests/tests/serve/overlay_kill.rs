//! kill -9 of a process writing through a real overlay file: after reopening,
//! every write the process saw flushed is there, and every byte holds either
//! its value at that flush or a value some later write gave it.
//!
//! The child is this same test binary, re-run with `OCIDISK_KILL_CHILD` set:
//! it writes a seeded stream of requests and logs its progress to a file
//! (page-cache writes survive the kill), so the parent can replay the stream.

use blockio::IoBuf;
use overlay::{CreateOptions, OpenOptions, Overlay};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const SIZE: u64 = 4 << 20;
const BS: u64 = 4096;
const CHILD_ENV: &str = "OCIDISK_KILL_CHILD";

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn base() -> Vec<u8> {
    let mut rng = Rng(42);
    (0..SIZE).map(|_| rng.next() as u8).collect()
}

fn identity() -> blockio::BaseIdentity {
    blockio::BaseIdentity {
        manifest_digest: "sha256:kill".into(),
        layout_hash: [1; 32],
    }
}

enum Op {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    Discard(u64, u64),
    Flush,
}

/// The `i`-th request of round `round`'s stream (the same in both processes).
fn ops(round: u64) -> impl Iterator<Item = Op> {
    let mut rng = Rng(1000 + round);
    std::iter::from_fn(move || {
        let off = rng.below(SIZE);
        let mut len = rng.below((SIZE - off).min(64 * 1024)) + 1;
        let off = if rng.below(2) == 0 {
            len = (len.div_ceil(BS) * BS).min(SIZE - off / BS * BS);
            off / BS * BS
        } else {
            off
        };
        Some(match rng.below(20) {
            0..=14 => Op::Write(off, (0..len).map(|_| rng.next() as u8).collect()),
            15 => Op::Zero(off, len),
            16 => Op::Discard(off, len),
            _ => Op::Flush,
        })
    })
}

/// The child: applies round `round`'s stream until killed.
#[test]
fn kill_child_writer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // Only runs as the child of `flushed_writes_survive_kill_9`.
    };
    let (round, rest) = spec.split_once(':').unwrap();
    let round: u64 = round.parse().unwrap();
    let (path, log) = rest.split_once(':').unwrap();
    let writethrough = round % 2 == 1;
    let base = base();
    let opts = OpenOptions {
        writethrough,
        ..Default::default()
    };
    let ov = Overlay::open(Path::new(path), &identity(), SIZE, &opts).unwrap();
    let mut log = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    for (i, op) in ops(round).enumerate().take(1_000_000) {
        writeln!(log, "start {i}").unwrap();
        match &op {
            Op::Write(off, data) => ov.write(*off, &[IoBuf::new(data)], &base).unwrap(),
            Op::Zero(off, len) => ov.write_zeroes(*off, *len, &base).unwrap(),
            Op::Discard(off, len) => ov.discard(*off, *len, &base).unwrap(),
            Op::Flush => ov.flush().unwrap(),
        }
        if writethrough || matches!(op, Op::Flush) {
            writeln!(log, "durable {}", i + 1).unwrap();
        }
    }
}

fn whole_blocks(off: u64, len: u64) -> (u64, u64) {
    let end = off + len;
    let first = (off.div_ceil(BS) * BS).min(end);
    let last = if end == SIZE { end } else { end / BS * BS };
    (first, last.max(first))
}

#[test]
fn flushed_writes_survive_kill_9() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("vm.overlay");
    Overlay::create(
        &path,
        &CreateOptions {
            disk_size: SIZE,
            base: identity(),
        },
    )
    .unwrap();
    let base = base();
    let mut disk = base.clone();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(7);
    for round in 0..6u64 {
        let log = dir.path().join(format!("log{round}"));
        std::fs::write(&log, "").unwrap();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "overlay_kill::kill_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!("{round}:{}:{}", path.display(), log.display()),
            )
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a random moment after the child's first flush: on a busy
        // machine starting the child alone can take longer than any fixed
        // delay.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("durable ")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the child did not flush within 60 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.below(600)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            status.code().is_none(),
            "the child exited by itself: {status}"
        );

        let text = std::fs::read_to_string(&log).unwrap();
        let mut durable = 0usize;
        let mut started = 0usize;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("durable", n)) => durable = n.parse().unwrap_or(durable),
                Some(("start", n)) => {
                    started = n.parse::<usize>().map(|n| n + 1).unwrap_or(started)
                }
                _ => {}
            }
        }
        assert!(
            durable > 0,
            "round {round}: the child never flushed; raise the delay"
        );
        // The disk at the last durable point, and the values given since.
        let mut since: Vec<(u64, Vec<u8>)> = Vec::new();
        for (i, op) in ops(round).take(started).enumerate() {
            let (off, data) = match op {
                Op::Write(off, data) => (off, data),
                Op::Zero(off, len) => (off, vec![0; len as usize]),
                Op::Discard(off, len) => {
                    let (a, b) = whole_blocks(off, len);
                    (a, vec![0; (b - a) as usize])
                }
                Op::Flush => continue,
            };
            if i < durable {
                disk[off as usize..off as usize + data.len()].copy_from_slice(&data);
            } else {
                since.push((off, data));
            }
        }
        let ov = Overlay::open(
            &path,
            &identity(),
            SIZE,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut actual = vec![0u8; SIZE as usize];
        ov.read(0, &mut [blockio::IoBufMut::new(&mut actual)], &base)
            .unwrap();
        drop(ov);
        let mut bad = 0usize;
        for (i, (&a, &d)) in actual.iter().zip(&disk).enumerate() {
            if a == d {
                continue;
            }
            let i = i as u64;
            let ok = since.iter().any(|(off, data)| {
                i >= *off && i < off + data.len() as u64 && data[(i - off) as usize] == a
            });
            if !ok {
                bad += 1;
            }
        }
        assert_eq!(
            bad, 0,
            "round {round}: {bad} bytes lost a flushed write (durable {durable}, started {started})"
        );
        eprintln!("round {round}: {started} requests started, {durable} durable, all present");
        disk = actual;
    }
}
