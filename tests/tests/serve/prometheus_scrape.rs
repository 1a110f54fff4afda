//! Debian's Prometheus server, started here on localhost with its own
//! config and data directory, scrapes a running `ocidisk serve --metrics`
//! driven by libblkio; its HTTP API must return the counters the client
//! sent and a `histogram_quantile` in the range the request trace shows.
//! `promtool check metrics` accepts the scrape, and every metric the
//! Grafana dashboard (dashboards/ocidisk.json) queries is in it; each of
//! the dashboard's queries also runs on the real server.
//!
//! Runs the `ocidisk` binary (built by `ocidisk_tests::cli::ocidisk_binary`).

use crate::trace_support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trace_support::*;

/// `GET url` with curl; the body.
fn get(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", url])
        .output()
        .expect("curl (installed by .ci/install-deps)");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Prometheus server that ends with the test.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(bin: &Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: ocidisk\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("config");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", path(&config)))
            .arg(format!(
                "--storage.tsdb.path={}",
                path(&dir.path().join("data"))
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(&format!("{}/-/ready", p.base)).is_none() {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query; the `data` of the answer.
    fn query(&self, q: &str) -> Value {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--get", "--data-urlencode"])
            .arg(format!("query={q}"))
            .arg(format!("{}/api/v1/query", self.base))
            .output()
            .expect("curl");
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{q}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"].clone()
    }

    /// The single value of a vector query.
    fn scalar(&self, q: &str) -> Option<f64> {
        let d = self.query(q);
        let r = d["result"].as_array()?;
        (r.len() == 1).then(|| r[0]["value"][1].as_str()?.parse().ok())?
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sample names in a Prometheus text scrape.
fn sample_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_string())
        .collect()
}

/// The `expr` of every target of every panel of the dashboard.
fn dashboard_exprs() -> Vec<String> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/ocidisk.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&file).expect("dashboard"))
        .expect("the dashboard is JSON");
    let panels = v["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    let mut exprs = Vec::new();
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} queries nothing", p["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    exprs
}

/// PromQL functions, keywords and aggregations (not metric names).
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "by",
    "without",
    "rate",
    "increase",
    "irate",
    "histogram_quantile",
    "le",
    "serial",
    "type",
    "queue",
    "socket",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "topk",
    "bottomk",
    "label_values",
    "e",
];

/// Metric names a PromQL expression selects: identifiers outside `{…}`,
/// quotes and `[…]` that are not functions, keywords or label names.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let (mut depth_brace, mut depth_bracket, mut quote) = (0, 0, false);
    let mut word = String::new();
    let flush = |word: &mut String, names: &mut Vec<String>, next: char| {
        if !word.is_empty()
            && next != '('
            && !word.starts_with(|c: char| c.is_ascii_digit())
            && !PROMQL_WORDS.contains(&word.as_str())
        {
            names.push(word.clone());
        }
        word.clear();
    };
    for c in expr.chars() {
        if quote {
            quote = c != '"';
            continue;
        }
        match c {
            '"' => quote = true,
            '{' => {
                flush(&mut word, &mut names, c);
                depth_brace += 1
            }
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            c if (c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && depth_brace == 0
                && depth_bracket == 0 =>
            {
                word.push(c)
            }
            c => flush(&mut word, &mut names, c),
        }
    }
    flush(&mut word, &mut names, ' ');
    names
}

#[test]
fn promql_metric_names_are_found() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.5, sum by (le) (rate(ocidisk_x_bucket{a="b{c}"}[$__rate_interval]))) / 1e6"#
        ),
        ["ocidisk_x_bucket"]
    );
    assert_eq!(metric_names("sum(a) + b"), ["a", "b"]);
}

#[test]
fn prometheus_scrapes_a_served_disk_and_the_dashboard_queries_it() {
    let Some(prometheus) = tool(&["prometheus"], "the Prometheus scrape test") else {
        return;
    };
    let disk = Disk::new();
    let trace = disk.dir.path().join("io.trace");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = disk.serve(&[
        "--metrics",
        &addr,
        "--trace",
        path(&trace),
        "--serial",
        "node-3",
    ]);
    let prom = Prometheus::start(&prometheus, &addr);
    // Prometheus applies new targets a few seconds after it starts: wait
    // for its first scrape, so that the load spans several.
    let deadline = Instant::now() + Duration::from_secs(30);
    while prom.scalar(r#"up{job="ocidisk"}"#) != Some(1.0) {
        assert!(Instant::now() < deadline, "never scraped: {}", prom.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut client = disk.connect();
    let sent = workload(
        &mut client,
        Duration::from_secs(4),
        Duration::from_millis(3),
    );
    let scrape = get(&format!("http://{addr}/metrics")).expect("scrape");

    // promtool accepts the exposition.
    if let Some(promtool) = tool(&["promtool"], "checking the exposition") {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(scrape.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Every metric the dashboard names is in the scrape.
    let names = sample_names(&scrape);
    let exprs = dashboard_exprs();
    for e in &exprs {
        let used = metric_names(e);
        assert!(!used.is_empty(), "no metric in {e}");
        for m in used {
            assert!(
                names.contains(&m),
                "dashboard queries {m}, which /metrics lacks ({e})"
            );
        }
    }

    // Prometheus has the final counters once it scrapes after the load.
    let reads = r#"sum(ocidisk_requests_total{serial="node-3",type="read"})"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if prom.scalar(reads) == Some(sent.reads as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never saw {} reads (has {:?}); its log:\n{}",
            sent.reads,
            prom.scalar(reads),
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let q = |e: &str| prom.scalar(e).unwrap_or_else(|| panic!("no value for {e}"));
    assert_eq!(
        q(r#"sum(ocidisk_requests_total{type="write"})"#),
        sent.writes as f64
    );
    assert_eq!(
        q(r#"sum(ocidisk_requests_total{type="flush"})"#),
        sent.flushes as f64
    );
    assert_eq!(
        q(r#"sum(ocidisk_requests_total{type="discard"})"#),
        sent.discards as f64
    );
    assert_eq!(
        q(r#"sum(ocidisk_request_bytes_total{type="read"})"#),
        sent.read_bytes as f64
    );
    assert_eq!(
        q(r#"sum(ocidisk_request_bytes_total{type="write"})"#),
        sent.write_bytes as f64
    );
    assert_eq!(q(r#"sum(ocidisk_request_errors_total)"#), 0.0);
    assert_eq!(q(r#"up{job="ocidisk"}"#), 1.0);
    // The rate is what the client did over the load.
    let samples = prom.query(r#"ocidisk_requests_total{queue="0",type="read"}[30s]"#);
    let n = samples["result"][0]["values"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(n >= 2, "{samples}");
    assert!(q(r#"sum(rate(ocidisk_requests_total{type="read"}[30s]))"#) > 0.0);

    // Every dashboard query runs on the real server, with Grafana's
    // variables as Grafana would fill them.
    for e in &exprs {
        let e = e
            .replace("$serial", ".*")
            .replace("$__rate_interval", "30s");
        let d = prom.query(&e);
        assert!(
            d["result"].as_array().is_some_and(|r| !r.is_empty()),
            "dashboard query returned nothing: {e}"
        );
    }

    // The median read latency Prometheus computes from the histogram lies
    // in the range the trace shows for reads: between the trace's fastest
    // half (p50 to within a bucket of the exported histogram) and its max.
    let p50_prom = q(
        r#"histogram_quantile(0.5, sum by (le) (ocidisk_request_duration_seconds_bucket{serial="node-3",type="read"}))"#,
    );
    drop(client);
    drop(prom);
    assert!(server.terminate().expect("terminate").success());
    let summary: Value =
        serde_json::from_str(&ocidisk_ok(&["trace", "summarize", path(&trace), "--json"]))
            .expect("summary");
    let read = &summary["kinds"]["read"];
    assert_eq!(read["requests"].as_u64(), Some(sent.reads));
    let ns = |k: &str| read["latency"][k].as_f64().expect("latency") / 1e9;
    // The exported buckets around the trace's median bound Prometheus's
    // interpolation.
    let mut les: Vec<f64> = scrape
        .lines()
        .filter(|l| {
            l.starts_with("ocidisk_request_duration_seconds_bucket{") && l.contains("type=\"read\"")
        })
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
        .map(|le| {
            if le == "+Inf" {
                Ok(f64::INFINITY)
            } else {
                le.parse()
            }
        })
        .collect::<Result<_, _>>()
        .expect("bucket bounds");
    les.sort_by(f64::total_cmp);
    les.dedup();
    let p50 = ns("p50_ns");
    let i = les
        .iter()
        .position(|&le| le >= p50)
        .expect("a bucket above the median");
    let lo = if i >= 2 { les[i - 2] } else { 0.0 };
    let hi = les.get(i + 1).copied().unwrap_or(f64::INFINITY);
    assert!(
        p50_prom >= lo && p50_prom <= hi && p50_prom <= ns("max_ns"),
        "prometheus p50 {p50_prom} s, trace p50 {p50} s (buckets {lo}..{hi}), max {}",
        ns("max_ns")
    );
}
