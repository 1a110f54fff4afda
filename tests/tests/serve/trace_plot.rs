//! `ocidisk trace plot`, `trace compare` and `trace summarize` on traces
//! written by the real `ocidisk serve --trace` (driven by libblkio) and by
//! the real trace writer: the SVG parsed and checked series by series and
//! band by band, the PNG's size and pixels, a headless Chromium rendering
//! the SVG (screenshot kept under target/test-artefacts/trace_plot), known
//! ratios, and bad traces named by file and byte.
//!
//! Runs the `ocidisk` binary (built by `ocidisk_tests::cli::ocidisk_binary`).

use crate::trace_support;

// The binary's own metrics code, from its library.
use ocidisk::metrics;

use metrics::trace::{Record, TraceDisk, TracePartition, TraceWriter};
use metrics::ReqKind;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use trace_support::*;

/// The elements of a parsed SVG by id, with their attributes.
struct Svg {
    ids: BTreeMap<String, BTreeMap<String, String>>,
    partitions: Vec<(String, f64, f64)>,
    text: String,
}

fn parse_svg(file: &Path) -> Svg {
    let src = std::fs::read_to_string(file).expect("SVG");
    let doc = roxmltree::Document::parse(&src).expect("the SVG is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let mut ids = BTreeMap::new();
    let mut partitions = Vec::new();
    let mut text = String::new();
    for node in doc.descendants().filter(|n| n.is_element()) {
        let attrs: BTreeMap<String, String> = node
            .attributes()
            .map(|a| (a.name().to_string(), a.value().to_string()))
            .collect();
        if let Some(id) = node.attribute("id") {
            assert!(
                ids.insert(id.to_string(), attrs.clone()).is_none(),
                "duplicate id {id}"
            );
        }
        if node.attribute("class") == Some("partition")
            && node.parent_element().and_then(|p| p.attribute("id")) == Some("partitions")
        {
            let num = |k: &str| attrs[k].parse::<f64>().expect("number");
            partitions.push((
                attrs["data-name"].clone(),
                num("y"),
                num("y") + num("height"),
            ));
        }
        if node.tag_name().name() == "text" {
            text.push_str(node.text().unwrap_or(""));
            text.push('\n');
        }
    }
    Svg {
        ids,
        partitions,
        text,
    }
}

/// The (x, y) of every `M x y` in a path.
fn moves(d: &str) -> Vec<(f64, f64)> {
    d.split('M')
        .skip(1)
        .filter_map(|s| {
            let mut it = s.split(|c: char| c == ' ' || c.is_ascii_alphabetic());
            let x = it.next()?.parse().ok()?;
            let y = it.next()?.parse().ok()?;
            Some((x, y))
        })
        .collect()
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

/// Pixels of a PNG within a small distance of `rgb`.
fn pixels_near(file: &Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::fs::File::open(file).expect("png"));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let step = info.color_type.samples();
    assert!(step >= 3, "{:?}", info.color_type);
    buf[..info.buffer_size()]
        .chunks(step)
        .filter(|p| (0..3).all(|i| p[i].abs_diff(rgb[i]) <= 12))
        .count()
}

/// The read colour of the plots (#0072B2).
const READ_RGB: [u8; 3] = [0x00, 0x72, 0xb2];

/// Serves the disk, runs the workload for `secs`, and returns the trace.
fn served_trace(disk: &Disk, secs: f64) -> (PathBuf, Sent) {
    let trace = disk.dir.path().join("guest.trace");
    let server = disk.serve(&["--trace", path(&trace), "--serial", "node-9"]);
    let mut client = disk.connect();
    let sent = workload(
        &mut client,
        Duration::from_secs_f64(secs),
        Duration::from_millis(2),
    );
    drop(client);
    assert!(server.terminate().expect("terminate").success());
    (trace, sent)
}

#[test]
fn plot_of_a_served_disk_has_every_panel_series_and_partition_band() {
    let disk = Disk::new();
    let (trace, sent) = served_trace(&disk, 1.0);
    let out = artefact_dir("trace_plot");
    let svg_file = out.join("served.svg");
    ocidisk_ok(&["trace", "plot", path(&trace), "-o", path(&svg_file)]);
    let svg = parse_svg(&svg_file);

    // Title names the disk; every panel and the series of what was sent.
    assert!(
        svg.text.contains("Guest I/O: disk node-9 (guest.trace)"),
        "{}",
        svg.text
    );
    for id in [
        "title",
        "legend",
        "panel-offset",
        "panel-throughput",
        "panel-iops",
        "panel-latency",
        "panel-heatmap",
        "panel-depth",
        "panel-sizes",
        "scatter-read",
        "scatter-write",
        "scatter-discard",
        "scatter-flush",
        "mbps-read",
        "mbps-write",
        "mbps-discard",
        "iops-read",
        "iops-write",
        "iops-flush",
        "latency-read-band",
        "latency-read-p50",
        "latency-read-p99",
        "latency-write-p50",
        "depth",
        "sizes-read",
        "sizes-write",
        "sizes-discard",
    ] {
        assert!(svg.ids.contains_key(id), "no #{id} in the plot");
    }
    assert!(!svg.ids.contains_key("mbps-flush"), "flushes move no bytes");
    assert!(
        !svg.ids.contains_key("scatter-write_zeroes"),
        "none were sent"
    );
    assert!(svg.ids.keys().any(|k| k.starts_with("heatmap-level-")));
    for t in [
        "MB/s",
        "IOPS",
        "disk offset",
        "latency (log)",
        "in flight",
        "request size",
    ] {
        assert!(svg.text.contains(t), "axis title {t:?} missing");
    }

    // The partition table from the trace header, as named bands in disk
    // order (offset 0 at the bottom), and each type's dots in its band.
    let names: Vec<&str> = svg.partitions.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["boot", "system", "data"]);
    let band = |name: &str| {
        let p = svg.partitions.iter().find(|p| p.0 == name).expect("band");
        (p.1, p.2)
    };
    assert!(band("boot").0 > band("system").0 && band("system").0 > band("data").0);
    // A discard sits at its first segment's offset (TRACE.md), not at the
    // request header's sector, which is 0 for discards.
    for (series, part) in [
        ("scatter-read", "system"),
        ("scatter-write", "data"),
        ("scatter-discard", "data"),
    ] {
        let (top, bottom) = band(part);
        let cells = moves(&svg.ids[series]["d"]);
        assert!(!cells.is_empty(), "{series} is empty");
        for (_, y) in cells {
            assert!(
                y >= top - 2.5 && y <= bottom + 0.5,
                "{series} cell at y {y} outside {part} ({top}..{bottom})"
            );
        }
    }
    // Size histogram: every read in the 64 KiB bucket, every write in 4 KiB.
    let count = |id: &str| -> u64 {
        let src = std::fs::read_to_string(&svg_file).expect("svg");
        let doc = roxmltree::Document::parse(&src).expect("xml");
        let g = doc
            .descendants()
            .find(|n| n.attribute("id") == Some(id))
            .expect("group");
        g.children()
            .filter_map(|c| c.attribute("data-count"))
            .map(|c| c.parse::<u64>().expect("count"))
            .sum()
    };
    assert_eq!(count("sizes-read"), sent.reads);
    assert_eq!(count("sizes-write"), sent.writes);
    assert_eq!(count("sizes-discard"), sent.discards);

    // PNG of the requested size, with the read colour in it.
    let png_file = out.join("served.png");
    ocidisk_ok(&[
        "trace",
        "plot",
        path(&trace),
        "-o",
        path(&png_file),
        "--width",
        "900",
        "--height",
        "1300",
    ]);
    assert_eq!(
        png_size(&std::fs::read(&png_file).expect("png")),
        (900, 1300)
    );
    assert!(
        pixels_near(&png_file, READ_RGB) > 200,
        "no read series in the PNG"
    );

    // The summary names hot regions by the partitions in the header.
    let v: Value =
        serde_json::from_str(&ocidisk_ok(&["trace", "summarize", path(&trace), "--json"]))
            .expect("summary JSON");
    let hot = v["hot_regions"].as_array().expect("hot regions");
    assert!(!hot.is_empty());
    for r in hot {
        let off = r["offset"].as_u64().expect("offset");
        let want = if off < SYSTEM.1 { "system" } else { "data" };
        assert_eq!(r["partition"], want, "{r}");
    }
    let text = ocidisk_ok(&["trace", "summarize", path(&trace)]);
    assert!(text.contains("system") && text.contains("3 data"), "{text}");

    chromium_renders(&svg_file, &out.join("served-chromium.png"));
}

/// Headless Chromium renders the SVG; the screenshot is kept and must show
/// the read series.
fn chromium_renders(svg: &Path, shot: &Path) {
    let Some(chromium) = tool(
        &["chromium", "chromium-browser"],
        "the browser rendering check",
    ) else {
        return;
    };
    let profile = tempfile::tempdir().expect("profile dir");
    let _ = std::fs::remove_file(shot);
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            &format!("--user-data-dir={}", path(profile.path())),
            &format!("--screenshot={}", path(shot)),
            "--window-size=1400,2300",
            &format!("file://{}", path(svg)),
        ])
        .output()
        .expect("running chromium");
    assert!(
        out.status.success() && shot.is_file(),
        "chromium failed: {}",
        stderr(&out)
    );
    assert_eq!(
        png_size(&std::fs::read(shot).expect("screenshot")),
        (1400, 2300)
    );
    assert!(
        pixels_near(shot, READ_RGB) > 200,
        "the screenshot shows no read series"
    );
}

/// A trace of `n` requests of `kind` written by the real writer: one every
/// `gap_ns`, each `len` bytes taking `lat_ns`, sequential.
fn synthetic(file: &Path, n: u64, kind: ReqKind, len: u64, gap_ns: u64, lat_ns: u64) {
    let disk = TraceDisk {
        size: 1 << 30,
        label: "synthetic".into(),
        partitions: vec![TracePartition {
            index: 1,
            name: "all".into(),
            start: 1 << 20,
            end: (1 << 30) - (1 << 20),
        }],
    };
    let w = TraceWriter::create_for(file, 1, &disk).expect("trace");
    for i in 0..n {
        w.queue(0).record(&Record {
            time_ns: i * gap_ns,
            offset: (1 << 20) + i * len,
            len,
            latency_ns: lat_ns,
            queue: 0,
            kind: kind.code(),
            status: 0,
        });
    }
    assert_eq!(w.close().expect("close").dropped, 0);
}

#[test]
fn compare_gives_the_expected_ratios_and_plot_overlays_both_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.trace"), dir.path().join("b.trace"));
    // A: 2000 reads of 4 KiB, one per ms, 100 µs each.
    // B: 2000 reads of 8 KiB, one per 250 µs, 400 µs each.
    synthetic(&a, 2000, ReqKind::Read, 4096, 1_000_000, 100_000);
    synthetic(&b, 2000, ReqKind::Read, 8192, 250_000, 400_000);
    let v: Value = serde_json::from_str(&ocidisk_ok(&[
        "trace",
        "compare",
        path(&a),
        path(&b),
        "--json",
    ]))
    .expect("JSON");
    let (da, db) = (1.999 + 0.0001, 0.49975 + 0.0004);
    let ratio = &v["kinds"]["read"]["ratio"];
    let near = |key: &str, want: f64, tol: f64| {
        let got = ratio[key].as_f64().unwrap_or_else(|| panic!("{key}: {v}"));
        assert!((got - want).abs() <= tol * want, "{key}: {got} vs {want}");
    };
    near("iops", da / db, 1e-6);
    near("mb_per_s", 2.0 * da / db, 1e-6);
    near("p50", 4.0, 0.01);
    near("p99", 4.0, 0.01);
    near("mean", 4.0, 0.01);
    near("sequential_share", 1.0, 1e-9);
    assert_eq!(v["kinds"]["read"]["a"]["size_mix"][0]["max_bytes"], 4096);
    assert_eq!(v["kinds"]["read"]["b"]["size_mix"][0]["max_bytes"], 8192);
    assert_eq!(v["a"]["requests"], 2000);
    let text = ocidisk_ok(&["trace", "compare", path(&a), path(&b)]);
    for want in [
        "A: ",
        "B: ",
        "IOPS",
        "p99",
        "+300.0%",
        "sizes B: ≤8.0 KiB 100%",
    ] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }

    let out = artefact_dir("trace_plot").join("compare.svg");
    ocidisk_ok(&[
        "trace",
        "plot",
        path(&a),
        "--compare",
        path(&b),
        "-o",
        path(&out),
    ]);
    let svg = parse_svg(&out);
    for id in [
        "panel-offset",
        "panel-offset-b",
        "panel-heatmap-b",
        "scatter-read",
        "scatter-read-b",
        "mbps-read",
        "mbps-read-b",
        "iops-read-b",
        "latency-read-p50-b",
        "depth-b",
        "sizes-read-b",
    ] {
        assert!(svg.ids.contains_key(id), "no #{id} in the comparison");
    }
    assert!(svg.ids["mbps-read-b"].contains_key("stroke-dasharray"));
    assert!(svg.text.contains("a.trace") && svg.text.contains("b.trace"));
}

#[test]
fn version_1_traces_still_plot_without_bands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("v1.trace");
    // A version 1 file as the previous writer made it: 64-byte header.
    let mut bytes = vec![0u8; 64];
    bytes[..8].copy_from_slice(b"OCIDTRC\0");
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    bytes[12..16].copy_from_slice(&64u32.to_le_bytes());
    bytes[16..20].copy_from_slice(&32u32.to_le_bytes());
    bytes[20..22].copy_from_slice(&1u16.to_le_bytes());
    bytes[32..40].copy_from_slice(&(1u64 << 30).to_le_bytes());
    for i in 0..100u64 {
        bytes.extend_from_slice(
            &Record {
                time_ns: i * 1000,
                offset: i * 4096,
                len: 4096,
                latency_ns: 500,
                queue: 0,
                kind: ReqKind::Write.code(),
                status: 0,
            }
            .encode(),
        );
    }
    std::fs::write(&file, &bytes).expect("write");
    let out = dir.path().join("v1.svg");
    ocidisk_ok(&["trace", "plot", path(&file), "-o", path(&out)]);
    let svg = parse_svg(&out);
    assert!(svg.partitions.is_empty());
    assert!(svg.ids.contains_key("scatter-write"));
    let v: Value =
        serde_json::from_str(&ocidisk_ok(&["trace", "summarize", path(&file), "--json"]))
            .expect("JSON");
    assert_eq!(v["requests"], 100);
    assert_eq!(v["hot_regions"][0]["partition"], Value::Null);
}

#[test]
fn bad_traces_are_errors_naming_the_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.trace");
    synthetic(&good, 10, ReqKind::Read, 4096, 1000, 1000);
    let bytes = std::fs::read(&good).expect("read");
    // Header: 64 + label "synthetic" (9) + entry (22 + 3) = 98 -> 104.
    let header = 104;
    let case = |name: &str, b: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, b).expect("write");
        p
    };
    let junk = case("junk.trace", b"this is not a trace at all, not at all");
    let short = case("short.trace", &bytes[..20]);
    let cut_table = case("cut-table.trace", &bytes[..90]);
    let mut v9 = bytes.clone();
    v9[8] = 9;
    let v9 = case("v9.trace", &v9);
    let mut bad_part = bytes.clone();
    bad_part[73..81].copy_from_slice(&u64::MAX.to_le_bytes()); // start past end
    let bad_part = case("bad-part.trace", &bad_part);
    let missing = dir.path().join("missing.trace");
    let svg = dir.path().join("x.svg");

    for (file, want) in [
        (&junk, "bad magic".to_string()),
        (&short, "header truncated at byte 20 of 64".into()),
        (
            &cut_table,
            format!("header truncated at byte 90 of {header}"),
        ),
        (&v9, "at byte 8: format version 9".into()),
        (&bad_part, "at byte 73: partition 1: start".into()),
        (&missing, "No such file".into()),
    ] {
        let name = file.file_name().and_then(|f| f.to_str()).expect("name");
        for args in [
            vec!["trace", "plot", path(file), "-o", path(&svg)],
            vec!["trace", "summarize", path(file)],
            vec!["trace", "compare", path(&good), path(file)],
            vec![
                "trace",
                "plot",
                path(&good),
                "--compare",
                path(file),
                "-o",
                path(&svg),
            ],
        ] {
            let out = ocidisk(&args);
            let err = stderr(&out);
            assert!(!out.status.success(), "{args:?} succeeded");
            assert!(err.contains(name) && err.contains(&want), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }

    // A partial last record (a writer killed mid-write) is ignored and
    // reported with its offset; the rest plots.
    let mut cut = bytes.clone();
    cut.truncate(bytes.len() - 5);
    let cut = case("cut-record.trace", &cut);
    let at = header + 9 * 32;
    ocidisk_ok(&["trace", "plot", path(&cut), "-o", path(&svg)]);
    assert!(parse_svg(&svg).text.contains(&format!(
        "27 bytes of an incomplete record at byte {at} ignored"
    )));
    let text = ocidisk_ok(&["trace", "summarize", path(&cut)]);
    assert!(
        text.contains(&format!("27 bytes of an incomplete record at byte {at}")),
        "{text}"
    );

    // An output the plot cannot name a format for.
    let out = ocidisk(&["trace", "plot", path(&good), "-o", "plot.jpeg"]);
    assert!(
        !out.status.success()
            && stderr(&out).contains("plot.jpeg: the output's extension must be .svg or .png")
    );
}

#[test]
fn an_empty_trace_plots_its_frame_and_bands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("empty.trace");
    synthetic(&file, 0, ReqKind::Read, 0, 0, 0);
    let svg = dir.path().join("empty.svg");
    ocidisk_ok(&["trace", "plot", path(&file), "-o", path(&svg)]);
    let parsed = parse_svg(&svg);
    assert!(parsed.ids.contains_key("panel-latency") && parsed.ids.contains_key("depth"));
    assert!(!parsed.ids.keys().any(|k| k.starts_with("scatter-")));
    assert_eq!(parsed.partitions.len(), 1);
    let png = dir.path().join("empty.png");
    ocidisk_ok(&[
        "trace",
        "plot",
        path(&file),
        "-o",
        path(&png),
        "--width",
        "640",
        "--height",
        "900",
    ]);
    assert_eq!(png_size(&std::fs::read(&png).expect("png")), (640, 900));
}
