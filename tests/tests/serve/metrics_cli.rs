//! The metrics commands of the real `ocidisk` binary against the real
//! metrics endpoint: `ocidisk stats` reading a `serve_http` endpoint that
//! this test runs in-process (with requests recorded while it watches), curl
//! scraping `/metrics`, and `ocidisk trace summarize` on a trace written by
//! the real trace writer. (With `ocidisk serve` itself once the device
//! records into the metrics.)

// The binary's own metrics code, from its library.
use ocidisk::metrics;

use metrics::trace::TraceWriter;
use metrics::{serve_http, DiskMetrics, Done, Labels, ReqKind, Status};
use ocidisk_tests::cli::CommandExt as _;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `ocidisk` binary of this workspace, built if needed.
fn ocidisk() -> PathBuf {
    ocidisk_tests::blkio_client::ocidisk_binary().expect("the ocidisk binary")
}

fn run(args: &[&str]) -> Output {
    Command::new(ocidisk())
        .args(args)
        .output()
        .expect("running ocidisk")
}

/// Runs `ocidisk ARGS`, which must succeed; returns stdout.
fn run_ok(args: &[&str]) -> String {
    Command::new(ocidisk()).args(args).run_ok().stdout
}

/// Runs `ocidisk ARGS`, which must succeed and print JSON.
fn run_ok_json(args: &[&str]) -> Value {
    Command::new(ocidisk()).args(args).run_json()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Records requests on two queues until dropped: reads of 4 KiB that
/// succeed and took 1 ms, writes that fail, a flush now and then.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(m: &Arc<DiskMetrics>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|q| {
                let (m, stop) = (m.clone(), stop.clone());
                std::thread::spawn(move || {
                    let queue = m.queue(q);
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let at = Instant::now()
                            .checked_sub(Duration::from_millis(1))
                            .expect("clock past 1 ms");
                        let (kind, status) = match i % 10 {
                            9 => (ReqKind::Write, Status::IoErr),
                            5 => (ReqKind::Flush, Status::Ok),
                            _ => (ReqKind::Read, Status::Ok),
                        };
                        let s = queue.start_at(at);
                        queue.add_base_read(if kind == ReqKind::Read { 4096 } else { 0 });
                        queue.finish(
                            s,
                            Done {
                                kind,
                                offset: i * 4096,
                                len: 4096,
                                status,
                            },
                        );
                        i += 1;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn disk() -> Arc<DiskMetrics> {
    DiskMetrics::new(
        2,
        Labels {
            serial: "node-1".into(),
            socket: "/run/ocidisk/node-1.sock".into(),
        },
    )
}

/// Checks one `--json` sample against what `Load` records.
fn check_sample(v: &Value) {
    assert_eq!(v["serial"], "node-1");
    assert_eq!(v["socket"], "/run/ocidisk/node-1.sock");
    let secs = v["interval_s"].as_f64().expect("interval_s");
    assert!((0.3..5.0).contains(&secs), "interval {secs}");
    let read = &v["kinds"]["read"];
    let n = read["requests"].as_u64().expect("read requests");
    assert!(n > 10, "reads in the interval: {v}");
    // A snapshot may catch a queue between two counters of one request, so
    // allow one request per queue at each end of the interval.
    let near =
        |got: Option<u64>, want: u64, unit: u64| got.is_some_and(|g| g.abs_diff(want) <= 4 * unit);
    assert!(near(read["bytes"].as_u64(), n * 4096, 4096), "{v}");
    assert_eq!(read["errors"].as_u64(), Some(0));
    let iops = read["iops"].as_f64().expect("iops");
    assert!((iops - n as f64 / secs).abs() < 1e-6 * iops.max(1.0), "{v}");
    let mbs = read["mb_per_s"].as_f64().expect("mb_per_s");
    let bytes = read["bytes"].as_u64().expect("bytes") as f64;
    assert!((mbs - bytes / secs / 1e6).abs() < 1e-9 + 1e-6 * mbs, "{v}");
    // Every read took 1 ms plus the time to record it.
    let (p50, p99, max) = (
        read["p50_ns"].as_u64().expect("p50"),
        read["p99_ns"].as_u64().expect("p99"),
        read["max_ns"].as_u64().expect("max"),
    );
    assert!((1_000_000..1_200_000).contains(&p50), "p50 {p50}");
    assert!(p50 <= p99 && p99 <= max, "{p50} {p99} {max}");
    let write = &v["kinds"]["write"];
    assert!(write["requests"].as_u64() > Some(0));
    assert_eq!(write["bytes"].as_u64(), Some(0));
    let writes = write["requests"].as_u64().unwrap_or(0);
    assert!(near(write["errors"].as_u64(), writes, 1), "{v}");
    assert!(near(v["base_read_bytes"].as_u64(), n * 4096, 4096), "{v}");
    assert!(v["in_flight"].as_u64().is_some_and(|f| f <= 2));
    for kind in ["flush", "discard", "write_zeroes", "get_id", "unsupported"] {
        assert!(v["kinds"][kind].is_object(), "{kind} missing");
    }
}

#[test]
fn stats_once_json_over_tcp_reports_the_interval() {
    let m = disk();
    let server = serve_http("127.0.0.1:0", m.clone()).expect("serve_http");
    let addr = server.local_addr().to_string();
    let _load = Load::start(&m);
    let text = run_ok(&["stats", &addr, "--once", "--json", "--interval", "0.5"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    check_sample(&serde_json::from_str(lines[0]).expect("JSON sample"));
}

#[test]
fn stats_counts_samples_over_a_unix_socket_and_prints_a_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("metrics.sock");
    let m = disk();
    let _server = serve_http(&format!("unix:{}", sock.display()), m.clone()).expect("serve_http");
    let _load = Load::start(&m);
    let sock = sock.to_str().expect("UTF-8 path");

    let text = run_ok(&["stats", sock, "--json", "--count", "2", "--interval", "0.4"]);
    assert_eq!(text.lines().count(), 2, "{text}");
    for line in text.lines() {
        check_sample(&serde_json::from_str(line).expect("JSON sample"));
    }

    let text = run_ok(&[
        "stats",
        &format!("unix:{sock}"),
        "--once",
        "--interval",
        "0.3",
    ]);
    for want in ["node-1", "IOPS", "MB/s", "p99", "read ", "write ", "flush "] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }
    assert!(!text.contains("get_id"), "idle types are hidden:\n{text}");
}

#[test]
fn curl_scrapes_prometheus_text_over_tcp_and_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("m.sock");
    let m = disk();
    let tcp = serve_http("127.0.0.1:0", m.clone()).expect("tcp");
    let _unix = serve_http(sock.to_str().expect("path"), m.clone()).expect("unix");
    let load = Load::start(&m);
    std::thread::sleep(Duration::from_millis(100));
    drop(load);
    let url = format!("http://{}/metrics", tcp.local_addr());
    let outputs = [
        Command::new("curl").args(["-sS", "-i", &url]).output(),
        Command::new("curl")
            .args([
                "-sS",
                "-i",
                "--unix-socket",
                sock.to_str().expect("path"),
                "http://localhost/metrics",
            ])
            .output(),
    ];
    for out in outputs {
        let out = out.expect("curl (installed by .ci/install-deps) must be present");
        assert!(out.status.success(), "curl: {}", stderr(&out));
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(
            text.contains("Content-Type: text/plain; version=0.0.4"),
            "{text}"
        );
        assert!(text.contains("# TYPE ocidisk_request_duration_seconds histogram"));
        let reads = text
            .lines()
            .find(|l| {
                l.starts_with("ocidisk_requests_total{queue=\"0\",type=\"read\",serial=\"node-1\"")
            })
            .expect("read counter of queue 0");
        let n: u64 = reads
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("count");
        assert!(n > 0, "{reads}");
    }
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{}/x", tcp.local_addr()),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}

#[test]
fn stats_errors_name_the_problem() {
    // Nothing listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr").to_string();
    drop(free);
    let out = run(&["stats", &addr, "--once"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&addr), "{}", stderr(&out));

    // Something that is not an ocidisk endpoint.
    let imposter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = imposter.local_addr().expect("addr").to_string();
    let t = std::thread::spawn(move || {
        use std::io::{Read, Write};
        for _ in 0..1 {
            let (mut s, _) = imposter.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        }
    });
    let out = run(&["stats", &addr, "--once"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not an ocidisk metrics snapshot"),
        "{}",
        stderr(&out)
    );
    let _ = t.join();

    for bad in ["0", "-1", "nan", "100000"] {
        let out = run(&[
            "stats",
            "127.0.0.1:1",
            "--once",
            &format!("--interval={bad}"),
        ]);
        assert!(!out.status.success(), "--interval {bad}");
        assert!(stderr(&out).contains("--interval"), "{}", stderr(&out));
    }
}

#[test]
fn trace_summarize_reads_the_writers_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("io.trace");
    let layout = dir.path().join("layout.json");
    std::fs::write(
        &layout,
        r#"{"size": 1073741824, "partitions": [
            {"index": 1, "name": "ESP", "first_lba": 2048, "last_lba": 264191},
            {"index": 2, "name": "DATA", "first_lba": 264192, "last_lba": 2097118}]}"#,
    )
    .expect("layout");
    let m = DiskMetrics::with_trace(
        1,
        Labels::default(),
        TraceWriter::create(&trace, 1, 1 << 30).expect("trace"),
    );
    let q = m.queue(0);
    // 100 sequential 16 KiB reads from the start of DATA, then 10 writes
    // scattered over the ESP.
    let data = 264192 * 512;
    for i in 0..100 {
        let s = q.start();
        q.finish(
            s,
            Done {
                kind: ReqKind::Read,
                offset: data + i * 16384,
                len: 16384,
                status: Status::Ok,
            },
        );
    }
    for i in 0..10 {
        let s = q.start();
        q.finish(
            s,
            Done {
                kind: ReqKind::Write,
                offset: (2048 + i * 2000) * 512,
                len: 4096,
                status: Status::Ok,
            },
        );
    }
    let totals = m.close_trace().expect("close").expect("tracing");
    assert_eq!((totals.records, totals.dropped), (110, 0));

    let args = [
        "trace",
        "summarize",
        trace.to_str().expect("path"),
        "--layout-json",
        layout.to_str().expect("path"),
    ];
    let v = run_ok_json(&[&args[..], &["--json", "--top", "2"]].concat());
    assert_eq!(v["requests"], 110);
    assert_eq!(v["kinds"]["read"]["sequential_requests"], 99);
    assert_eq!(v["kinds"]["write"]["sequential_requests"], 0);
    assert_eq!(v["hot_regions"][0]["partition"], "DATA");
    assert_eq!(v["hot_regions"][0]["offset"].as_u64(), Some(data));
    assert_eq!(v["hot_regions"].as_array().map(Vec::len), Some(2));
    let parts = v["partitions"].as_array().expect("partitions");
    assert_eq!(parts[0]["name"], "ESP");
    assert_eq!(parts[0]["write_bytes"], 40960);
    assert_eq!(parts[1]["read_bytes"], 100 * 16384);

    let text = run_ok(&args);
    for want in ["110 requests", "DATA", "hot 1 MiB regions", "≤ 16.0 KiB"] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }

    // Bad input: not a trace, a missing file, a bad layout.
    std::fs::write(dir.path().join("junk"), b"junk junk junk").expect("junk");
    for (args, want) in [
        (vec!["trace", "summarize", "junk"], "bad magic"),
        (vec!["trace", "summarize", "missing.trace"], "missing.trace"),
        (
            vec!["trace", "summarize", "io.trace", "--layout-json", "junk"],
            "layout",
        ),
    ] {
        let out = Command::new(ocidisk())
            .args(&args)
            .current_dir(dir.path())
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
}
