//! The page: where each panel goes, and how each is drawn from an
//! [`Aggregate`]. Every series is one SVG element with an `id` naming what
//! it shows (`scatter-read`, `mbps-write`, `latency-read-p99`, `depth`,
//! `sizes-read`, …; `-b` appended for the second run of a comparison), so
//! the picture can be checked by parsing it.

use super::super::SIZE_BOUNDS;
use super::aggregate::{lat_bucket_low, lat_quantile, Aggregate, KINDS, LAT_BUCKETS, LAT_MIN_LOG2};
use super::svg::{byte_ticks, esc, latency_label, n, nice_ticks, num_label, text, time_label};
use crate::metrics::{units, ReqKind};
use std::fmt::Write as _;

/// Left margin (y-axis labels), px.
const ML: f64 = 84.0;
/// Right margin, px.
const MR: f64 = 24.0;
/// Title, subtitle and legend, px.
const HEAD: f64 = 104.0;
/// Above each panel (its title), px.
const GAP_TOP: f64 = 26.0;
/// Below each panel (tick labels and axis title), px.
const GAP_BOTTOM: f64 = 40.0;
/// Offset-grid cell and heat-map column size, px.
pub const CELL: f64 = 2.0;
/// Pixels per time interval.
pub const BIN_PX: f64 = 4.0;

/// Colours per kind in [`KINDS`] order (colour-blind-safe Okabe–Ito).
const COLOURS: [&str; 5] = ["#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7"];

/// What a panel shows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Panel {
    /// Offset against time (run 0 = A, 1 = B).
    Offset(usize),
    /// MB/s per type.
    Throughput,
    /// IOPS per type.
    Iops,
    /// p50–p99 latency per type.
    Latency,
    /// Latency heat map (run 0 = A, 1 = B).
    Heatmap(usize),
    /// Mean requests in flight.
    Depth,
    /// Request-size histogram.
    Sizes,
}

impl Panel {
    fn weight(self) -> f64 {
        match self {
            Panel::Offset(_) => 3.0,
            Panel::Depth => 1.0,
            Panel::Latency | Panel::Heatmap(_) => 1.6,
            _ => 1.4,
        }
    }
}

/// Where a panel's plotting area is.
#[derive(Clone, Copy, Debug)]
pub struct Rect {
    /// Left.
    pub x: f64,
    /// Top.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

/// The page's panels and their places.
pub struct Page {
    /// Width, px.
    pub width: u32,
    /// Height, px.
    pub height: u32,
    /// The panels, top to bottom.
    pub panels: Vec<(Panel, Rect)>,
}

impl Page {
    /// Lays out a page of `width` × `height` px; `compare` adds the second
    /// run's offset panel and heat map.
    pub fn new(width: u32, height: u32, compare: bool) -> Page {
        let mut kinds = vec![Panel::Offset(0)];
        if compare {
            kinds.push(Panel::Offset(1));
        }
        kinds.extend([
            Panel::Throughput,
            Panel::Iops,
            Panel::Latency,
            Panel::Heatmap(0),
        ]);
        if compare {
            kinds.push(Panel::Heatmap(1));
        }
        kinds.extend([Panel::Depth, Panel::Sizes]);
        let total: f64 = kinds.iter().map(|p| p.weight()).sum();
        let gaps = kinds.len() as f64 * (GAP_TOP + GAP_BOTTOM);
        let avail = (f64::from(height) - HEAD - gaps - 10.0).max(kinds.len() as f64 * 20.0);
        let w = (f64::from(width) - ML - MR).max(40.0);
        let mut y = HEAD;
        let panels = kinds
            .into_iter()
            .map(|p| {
                let h = (avail * p.weight() / total).floor();
                let r = Rect {
                    x: ML,
                    y: y + GAP_TOP,
                    w,
                    h,
                };
                y += GAP_TOP + h + GAP_BOTTOM;
                (p, r)
            })
            .collect();
        Page {
            width,
            height,
            panels,
        }
    }

    /// The plotting area of `panel`.
    pub fn rect(&self, panel: Panel) -> Rect {
        self.panels
            .iter()
            .find(|(p, _)| *p == panel)
            .map(|(_, r)| *r)
            .unwrap_or(Rect {
                x: ML,
                y: HEAD,
                w: 100.0,
                h: 100.0,
            })
    }
}

/// Days since 1970-01-01 to a civil date (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2026-12-05 17:11:26 UTC`.
pub fn utc(unix_ns: u64) -> String {
    let s = (unix_ns / 1_000_000_000) as i64;
    let (y, m, d) = civil(s.div_euclid(86_400));
    let t = s.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// A one-line description of a run.
fn describe(a: &Aggregate) -> String {
    let h = &a.extent.header;
    let mut s = format!(
        "{}: {} requests over {:.3} s, {} queue(s), disk {}, started {}",
        a.path.display(),
        a.extent.requests,
        a.extent.span_ns as f64 / 1e9,
        h.num_queues,
        units::bytes(h.disk_size),
        utc(h.start_unix_ns)
    );
    if a.dropped > 0 {
        let _ = write!(s, "; {} requests dropped by the writer", a.dropped);
    }
    if let Some((at, len)) = a.truncated {
        let _ = write!(
            s,
            "; {len} bytes of an incomplete record at byte {at} ignored"
        );
    }
    s
}

/// Draws the page for `runs` (one run, or A and B of a comparison).
pub fn page(page: &Page, runs: &[&Aggregate], title: &str) -> String {
    let mut o = String::with_capacity(256 << 10);
    let (w, h) = (page.width, page.height);
    let _ = writeln!(
        o,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Verdana, Arial, sans-serif" font-size="12" fill="#222">
<rect id="background" x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>"##
    );
    text(
        &mut o,
        ML,
        28.0,
        "start",
        r#" id="title" font-size="20" font-weight="bold""#,
        title,
    );
    for (i, a) in runs.iter().enumerate() {
        let tag = if runs.len() > 1 {
            ["A (solid) ", "B (dashed) "][i]
        } else {
            ""
        };
        text(
            &mut o,
            ML,
            48.0 + 16.0 * i as f64,
            "start",
            &format!(r##" id="subtitle-{i}" fill="#555""##),
            &format!("{tag}{}", describe(a)),
        );
    }
    legend(&mut o, runs, 48.0 + 16.0 * runs.len() as f64 + 16.0);
    for &(panel, r) in &page.panels {
        match panel {
            Panel::Offset(i) => {
                if let Some(a) = runs.get(i) {
                    offset_panel(&mut o, r, a, i, runs.len());
                }
            }
            Panel::Throughput => rate_panel(&mut o, r, runs, true),
            Panel::Iops => rate_panel(&mut o, r, runs, false),
            Panel::Latency => latency_panel(&mut o, r, runs),
            Panel::Heatmap(i) => {
                if let Some(a) = runs.get(i) {
                    heatmap_panel(&mut o, r, a, i, runs.len());
                }
            }
            Panel::Depth => depth_panel(&mut o, r, runs),
            Panel::Sizes => sizes_panel(&mut o, r, runs),
        }
    }
    o.push_str("</svg>\n");
    o
}

fn suffix(run: usize) -> &'static str {
    if run == 0 {
        ""
    } else {
        "-b"
    }
}

fn dash(run: usize) -> &'static str {
    if run == 0 {
        ""
    } else {
        r#" stroke-dasharray="6 3""#
    }
}

/// Kinds any run has, as indexes into [`KINDS`].
fn present(runs: &[&Aggregate]) -> Vec<usize> {
    (0..KINDS.len())
        .filter(|&k| runs.iter().any(|a| a.has(k)))
        .collect()
}

fn legend(o: &mut String, runs: &[&Aggregate], y: f64) {
    let _ = writeln!(o, r#"<g id="legend">"#);
    let mut x = ML;
    for k in present(runs) {
        let _ = writeln!(
            o,
            r#"<rect class="legend-swatch" x="{}" y="{}" width="14" height="10" fill="{}"/>"#,
            n(x),
            n(y - 9.0),
            COLOURS[k]
        );
        text(o, x + 18.0, y, "start", "", KINDS[k].name());
        x += 30.0 + 8.0 * KINDS[k].name().len() as f64;
    }
    if runs.len() > 1 {
        for (i, label) in ["A", "B"].iter().enumerate() {
            let _ = writeln!(
                o,
                r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#222" stroke-width="2"{}/>"##,
                n(x),
                n(y - 4.0),
                n(x + 24.0),
                n(y - 4.0),
                dash(i)
            );
            text(o, x + 28.0, y, "start", "", label);
            x += 50.0;
        }
    }
    let _ = writeln!(o, "</g>");
}

/// The panel's frame: title, background, y-axis title, and (for time
/// panels) the time axis.
fn frame(o: &mut String, r: Rect, id: &str, title: &str, y_title: &str, span_s: Option<f64>) {
    let _ = writeln!(o, r#"<g id="panel-{id}">"#);
    text(
        o,
        r.x,
        r.y - 8.0,
        "start",
        r#" class="panel-title" font-size="14" font-weight="bold""#,
        title,
    );
    let _ = writeln!(
        o,
        r##"<rect class="plot-area" x="{}" y="{}" width="{}" height="{}" fill="#fbfbfb" stroke="#999"/>"##,
        n(r.x),
        n(r.y),
        n(r.w),
        n(r.h)
    );
    let (cx, cy) = (r.x - 62.0, r.y + r.h / 2.0);
    let _ = writeln!(
        o,
        r#"<text class="axis-title" x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
        n(cx),
        n(cy),
        n(cx),
        n(cy),
        esc(y_title)
    );
    if let Some(span) = span_s {
        let ticks = nice_ticks(span, ((r.w / 110.0) as usize).max(2));
        for t in ticks.iter().filter(|t| **t <= span * 1.0001) {
            let x = r.x + t / span * r.w;
            let _ = writeln!(
                o,
                r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#999"/>"##,
                n(x),
                n(r.y + r.h),
                n(r.y + r.h + 4.0)
            );
            text(o, x, r.y + r.h + 16.0, "middle", "", &time_label(*t));
        }
        text(
            o,
            r.x + r.w / 2.0,
            r.y + r.h + 32.0,
            "middle",
            r#" class="axis-title""#,
            "time since the first request (s)",
        );
    }
}

/// A y tick with a grid line.
fn y_tick(o: &mut String, r: Rect, y: f64, label: &str) {
    let _ = writeln!(
        o,
        r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#e2e2e2"/>"##,
        n(r.x),
        n(y),
        n(r.x + r.w)
    );
    text(o, r.x - 5.0, y + 4.0, "end", "", label);
}

fn span_s(runs: &[&Aggregate]) -> f64 {
    runs[0].res.span_ns as f64 / 1e9
}

/// Horizontal runs of cells as a path: `M x y h w v h h -w z` per run.
fn runs_path(
    cells: impl Iterator<Item = (usize, usize, usize)>,
    r: Rect,
    cw: f64,
    ch: f64,
) -> String {
    let mut d = String::new();
    for (row, c0, len) in cells {
        // Row 0 is offset (or latency) 0: at the bottom.
        let y = r.y + r.h - (row + 1) as f64 * ch;
        let _ = write!(
            d,
            "M{} {}h{}v{}h-{}z",
            n(r.x + c0 as f64 * cw),
            n(y),
            n(len as f64 * cw),
            n(ch),
            n(len as f64 * cw)
        );
    }
    d
}

/// (row, first column, length) of each horizontal run of cells where
/// `pick(row, col)` is true.
fn cell_runs(
    rows: usize,
    cols: usize,
    pick: impl Fn(usize, usize) -> bool,
) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for row in 0..rows {
        let mut col = 0;
        while col < cols {
            if pick(row, col) {
                let start = col;
                while col < cols && pick(row, col) {
                    col += 1;
                }
                out.push((row, start, col - start));
            } else {
                col += 1;
            }
        }
    }
    out
}

fn offset_panel(o: &mut String, r: Rect, a: &Aggregate, run: usize, nruns: usize) {
    let title = if nruns > 1 {
        format!("Offset against time, run {}", ["A", "B"][run])
    } else {
        "Offset against time (one dot per request, by type; flushes on top)".into()
    };
    let id = format!("offset{}", suffix(run));
    frame(o, r, &id, &title, "disk offset", Some(span_s(&[a])));
    let ext = a.disk_extent as f64;
    let y_of = |off: u64| r.y + r.h - off as f64 / ext * r.h;
    // Partition bands, named.
    let _ = writeln!(o, r#"<g id="partitions{}">"#, suffix(run));
    for (i, p) in a.extent.header.partitions.iter().enumerate() {
        let (top, bottom) = (
            y_of(p.end.min(a.disk_extent)),
            y_of(p.start.min(a.disk_extent)),
        );
        let fill = if i % 2 == 0 { "#e6eef7" } else { "#f1ece2" };
        let _ = writeln!(
            o,
            r#"<rect class="partition" data-name="{}" x="{}" y="{}" width="{}" height="{}" fill="{fill}"/>"#,
            esc(&p.name),
            n(r.x),
            n(top),
            n(r.w),
            n((bottom - top).max(0.5))
        );
        if bottom - top >= 11.0 {
            text(
                o,
                r.x + r.w - 4.0,
                bottom - 3.0,
                "end",
                r##" class="partition-label" font-size="10" fill="#556""##,
                &format!("{} {}", p.index, p.name),
            );
        }
    }
    let _ = writeln!(o, "</g>");
    for off in byte_ticks(a.disk_extent, ((r.h / 45.0) as usize).max(2)) {
        if off <= a.disk_extent {
            y_tick(o, r, y_of(off), &units::bytes(off));
        }
    }
    let (cols, rows) = (a.res.cols, a.res.rows);
    let (cw, ch) = (r.w / cols as f64, r.h / rows as f64);
    // Each cell takes the colour of the type with most requests in it.
    let dominant = |row: usize, col: usize| -> Option<usize> {
        let c = &a.grid[row * cols + col];
        let (k, &max) = c
            .iter()
            .enumerate()
            .max_by_key(|(i, v)| (**v, usize::MAX - i))?;
        (max > 0).then_some(k)
    };
    for (k, kind) in KINDS.iter().enumerate() {
        if *kind == ReqKind::Flush || !a.has(k) {
            continue;
        }
        let runs = cell_runs(rows, cols, |row, col| dominant(row, col) == Some(k));
        if runs.is_empty() {
            continue;
        }
        let _ = writeln!(
            o,
            r#"<path id="scatter-{}{}" class="series" fill="{}" d="{}"/>"#,
            kind.name(),
            suffix(run),
            COLOURS[k],
            runs_path(runs.into_iter(), r, cw, ch)
        );
    }
    let flush = KINDS.iter().position(|k| *k == ReqKind::Flush).unwrap_or(2);
    if a.has(flush) {
        let mut d = String::new();
        for (col, _) in a.flush_cols.iter().enumerate().filter(|(_, c)| **c > 0) {
            let _ = write!(d, "M{} {}v7", n(r.x + (col as f64 + 0.5) * cw), n(r.y));
        }
        let _ = writeln!(
            o,
            r#"<path id="scatter-flush{}" class="series" stroke="{}" stroke-width="{}" d="{d}"/>"#,
            suffix(run),
            COLOURS[flush],
            n(cw.max(1.0))
        );
    }
    let _ = writeln!(o, "</g>");
}

/// A polyline through `points` (x, y), split where `y` is `None`.
fn polyline(
    o: &mut String,
    id: &str,
    colour: &str,
    width: f64,
    extra: &str,
    points: &[(f64, Option<f64>)],
) {
    let mut d = String::new();
    let mut pen = false;
    for &(x, y) in points {
        match y {
            Some(y) => {
                let _ = write!(d, "{}{} {}", if pen { "L" } else { "M" }, n(x), n(y));
                pen = true;
            }
            None => pen = false,
        }
    }
    let _ = writeln!(
        o,
        r#"<path id="{id}" class="series" fill="none" stroke="{colour}" stroke-width="{}" stroke-linejoin="round"{extra} d="{d}"/>"#,
        n(width)
    );
}

fn bin_x(r: Rect, a: &Aggregate, i: usize) -> f64 {
    r.x + (i as f64 + 0.5) / a.res.bins as f64 * r.w
}

fn rate_panel(o: &mut String, r: Rect, runs: &[&Aggregate], mbps: bool) {
    let (id, title, y_title) = if mbps {
        ("throughput", "Throughput per type", "MB/s")
    } else {
        ("iops", "Requests per second per type", "IOPS")
    };
    frame(o, r, id, title, y_title, Some(span_s(runs)));
    let kinds: Vec<usize> = present(runs)
        .into_iter()
        .filter(|&k| !(mbps && KINDS[k] == ReqKind::Flush))
        .collect();
    let value = |a: &Aggregate, k: usize, i: usize| -> f64 {
        let secs = a.bin_ns() / 1e9;
        if mbps {
            a.kinds[k].bytes[i] as f64 / secs / 1e6
        } else {
            a.kinds[k].count[i] as f64 / secs
        }
    };
    let max = runs
        .iter()
        .flat_map(|a| {
            kinds
                .iter()
                .flat_map(move |&k| (0..a.res.bins).map(move |i| value(a, k, i)))
        })
        .fold(0.0, f64::max);
    let ticks = nice_ticks(max, ((r.h / 35.0) as usize).max(2));
    let top = ticks.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    for t in &ticks {
        y_tick(o, r, r.y + r.h - t / top * r.h, &num_label(*t));
    }
    for (run, a) in runs.iter().enumerate() {
        for &k in &kinds {
            if !a.has(k) {
                continue;
            }
            let pts: Vec<(f64, Option<f64>)> = (0..a.res.bins)
                .map(|i| (bin_x(r, a, i), Some(r.y + r.h - value(a, k, i) / top * r.h)))
                .collect();
            polyline(
                o,
                &format!(
                    "{id_}-{}{}",
                    KINDS[k].name(),
                    suffix(run),
                    id_ = if mbps { "mbps" } else { "iops" }
                ),
                COLOURS[k],
                1.5,
                dash(run),
                &pts,
            );
        }
    }
    let _ = writeln!(o, "</g>");
}

/// The latency range (ns) every latency panel shows: whole decades around
/// what the runs hold.
fn latency_range(runs: &[&Aggregate]) -> (f64, f64) {
    let (mut lo, mut hi) = (LAT_BUCKETS, 0);
    for a in runs {
        for (i, &c) in a.lat_all.iter().enumerate() {
            if c > 0 {
                let b = i % LAT_BUCKETS;
                lo = lo.min(b);
                hi = hi.max(b);
            }
        }
    }
    if lo > hi {
        return (1e3, 1e6);
    }
    let lo_ns = 10f64.powf(lat_bucket_low(lo).log10().floor());
    let hi_ns = 10f64.powf(lat_bucket_low(hi + 1).log10().ceil());
    (
        lo_ns.max(2f64.powi(LAT_MIN_LOG2 as i32) / 4.0),
        hi_ns.max(lo_ns * 10.0),
    )
}

fn log_y(r: Rect, (lo, hi): (f64, f64), ns: f64) -> f64 {
    let f = (ns.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10());
    r.y + r.h - f.clamp(0.0, 1.0) * r.h
}

fn log_ticks(o: &mut String, r: Rect, range: (f64, f64)) {
    let mut t = range.0;
    while t <= range.1 * 1.0001 {
        y_tick(o, r, log_y(r, range, t), &latency_label(t));
        t *= 10.0;
    }
}

fn latency_panel(o: &mut String, r: Rect, runs: &[&Aggregate]) {
    frame(
        o,
        r,
        "latency",
        "Latency per type: median (line) and 99th percentile (band's top), per interval",
        "latency (log)",
        Some(span_s(runs)),
    );
    let range = latency_range(runs);
    log_ticks(o, r, range);
    for (run, a) in runs.iter().enumerate() {
        for k in 0..KINDS.len() {
            if !a.has(k) {
                continue;
            }
            let row = |i: usize| &a.kinds[k].lat[i * LAT_BUCKETS..(i + 1) * LAT_BUCKETS];
            let q = |i: usize, q: f64| lat_quantile(row(i), q).map(|ns| log_y(r, range, ns));
            let p50: Vec<(f64, Option<f64>)> = (0..a.res.bins)
                .map(|i| (bin_x(r, a, i), q(i, 0.5)))
                .collect();
            let p99: Vec<(f64, Option<f64>)> = (0..a.res.bins)
                .map(|i| (bin_x(r, a, i), q(i, 0.99)))
                .collect();
            let name = KINDS[k].name();
            if run == 0 {
                // The band: up along p99, back along p50, one polygon per
                // stretch of intervals that have requests.
                let mut d = String::new();
                let mut i = 0;
                while i < a.res.bins {
                    if p50[i].1.is_none() {
                        i += 1;
                        continue;
                    }
                    let start = i;
                    while i < a.res.bins && p50[i].1.is_some() {
                        i += 1;
                    }
                    let seg = start..i;
                    let _ = write!(d, "M");
                    for j in seg.clone() {
                        let _ = write!(
                            d,
                            "{} {} ",
                            n(p99[j].0 - 0.5 * BIN_PX),
                            n(p99[j].1.unwrap_or(0.0))
                        );
                        let _ = write!(
                            d,
                            "{} {} ",
                            n(p99[j].0 + 0.5 * BIN_PX),
                            n(p99[j].1.unwrap_or(0.0))
                        );
                    }
                    for j in seg.rev() {
                        let _ = write!(
                            d,
                            "{} {} ",
                            n(p50[j].0 + 0.5 * BIN_PX),
                            n(p50[j].1.unwrap_or(0.0))
                        );
                        let _ = write!(
                            d,
                            "{} {} ",
                            n(p50[j].0 - 0.5 * BIN_PX),
                            n(p50[j].1.unwrap_or(0.0))
                        );
                    }
                    d.push('z');
                }
                let _ = writeln!(
                    o,
                    r#"<path id="latency-{name}-band" class="series" fill="{}" fill-opacity="0.25" d="{d}"/>"#,
                    COLOURS[k]
                );
            }
            polyline(
                o,
                &format!("latency-{name}-p50{}", suffix(run)),
                COLOURS[k],
                1.5,
                dash(run),
                &p50,
            );
            polyline(
                o,
                &format!("latency-{name}-p99{}", suffix(run)),
                COLOURS[k],
                0.8,
                if run == 0 {
                    ""
                } else {
                    r#" stroke-dasharray="2 2""#
                },
                &p99,
            );
        }
    }
    let _ = writeln!(o, "</g>");
}

/// Eight shades from pale yellow to dark blue (viridis-like).
const HEAT: [&str; 8] = [
    "#fde725", "#a0da39", "#4ac16d", "#1fa187", "#277f8e", "#365c8d", "#46327e", "#440154",
];

fn heatmap_panel(o: &mut String, r: Rect, a: &Aggregate, run: usize, nruns: usize) {
    let title = if nruns > 1 {
        format!(
            "Latency heat map, run {} (requests per interval and latency bucket)",
            ["A", "B"][run]
        )
    } else {
        "Latency heat map (requests per interval and latency bucket, all types)".into()
    };
    frame(
        o,
        r,
        &format!("heatmap{}", suffix(run)),
        &title,
        "latency (log)",
        Some(span_s(&[a])),
    );
    let range = latency_range(&[a]);
    log_ticks(o, r, range);
    let max = a.lat_all.iter().copied().max().unwrap_or(0);
    if max > 0 {
        let level = |c: u32| -> Option<usize> {
            (c > 0).then(|| {
                let f = (c as f64).ln() / (max as f64).ln().max(f64::MIN_POSITIVE);
                ((f * (HEAT.len() - 1) as f64).round() as usize).min(HEAT.len() - 1)
            })
        };
        let bins = a.res.bins;
        let cw = r.w / bins as f64;
        for (l, colour) in HEAT.iter().enumerate() {
            let cells = cell_runs(LAT_BUCKETS, bins, |row, col| {
                level(a.lat_all[col * LAT_BUCKETS + row]) == Some(l)
            });
            if cells.is_empty() {
                continue;
            }
            let mut d = String::new();
            for (row, c0, len) in cells {
                let (y1, y0) = (
                    log_y(r, range, lat_bucket_low(row + 1)),
                    log_y(r, range, lat_bucket_low(row)),
                );
                let _ = write!(
                    d,
                    "M{} {}h{}v{}h-{}z",
                    n(r.x + c0 as f64 * cw),
                    n(y1),
                    n(len as f64 * cw),
                    n((y0 - y1).max(0.5)),
                    n(len as f64 * cw)
                );
            }
            let _ = writeln!(
                o,
                r#"<path id="heatmap{}-level-{l}" class="series" fill="{colour}" d="{d}"/>"#,
                suffix(run)
            );
        }
        // Key: the shades and the counts they stand for.
        let kx = r.x + r.w - 8.0 * 22.0 - 150.0;
        text(o, kx, r.y - 8.0, "start", r#" font-size="10""#, "requests:");
        for (l, colour) in HEAT.iter().enumerate() {
            let x = kx + 54.0 + l as f64 * 22.0;
            let _ = writeln!(
                o,
                r#"<rect class="heat-key" x="{}" y="{}" width="20" height="10" fill="{colour}"/>"#,
                n(x),
                n(r.y - 18.0)
            );
        }
        text(
            o,
            kx + 54.0 + 8.0 * 22.0 + 4.0,
            r.y - 8.0,
            "start",
            r#" font-size="10""#,
            &format!("1 … {}", num_label(f64::from(max))),
        );
    }
    let _ = writeln!(o, "</g>");
}

fn depth_panel(o: &mut String, r: Rect, runs: &[&Aggregate]) {
    frame(
        o,
        r,
        "depth",
        "Queue depth (mean requests in flight per interval, all queues)",
        "in flight",
        Some(span_s(runs)),
    );
    let max = runs
        .iter()
        .flat_map(|a| a.depth.iter().copied())
        .fold(0.0, f64::max);
    let ticks = nice_ticks(max, ((r.h / 30.0) as usize).max(2));
    let top = ticks.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    for t in &ticks {
        y_tick(o, r, r.y + r.h - t / top * r.h, &num_label(*t));
    }
    for (run, a) in runs.iter().enumerate() {
        let pts: Vec<(f64, Option<f64>)> = a
            .depth
            .iter()
            .enumerate()
            .map(|(i, d)| (bin_x(r, a, i), Some(r.y + r.h - d / top * r.h)))
            .collect();
        polyline(
            o,
            &format!("depth{}", suffix(run)),
            "#333",
            1.5,
            dash(run),
            &pts,
        );
    }
    let _ = writeln!(o, "</g>");
}

fn size_label(i: usize) -> String {
    match SIZE_BOUNDS.get(i) {
        Some(b) => format!("≤{}", units::bytes(*b).replace(".0 ", " ")),
        None => format!(
            ">{}",
            units::bytes(SIZE_BOUNDS[SIZE_BOUNDS.len() - 1]).replace(".0 ", " ")
        ),
    }
}

fn sizes_panel(o: &mut String, r: Rect, runs: &[&Aggregate]) {
    frame(
        o,
        r,
        "sizes",
        "Request sizes (reads, writes, discards, write-zeroes)",
        "requests",
        None,
    );
    let kinds: Vec<usize> = present(runs)
        .into_iter()
        .filter(|&k| KINDS[k] != ReqKind::Flush)
        .collect();
    let buckets = SIZE_BOUNDS.len() + 1;
    let max = runs
        .iter()
        .flat_map(|a| kinds.iter().flat_map(move |&k| a.sizes[k].iter().copied()))
        .max()
        .unwrap_or(0);
    let ticks = nice_ticks(max as f64, ((r.h / 30.0) as usize).max(2));
    let top = ticks.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    for t in &ticks {
        y_tick(o, r, r.y + r.h - t / top * r.h, &num_label(*t));
    }
    let group = r.w / buckets as f64;
    let bars = (kinds.len() * runs.len()).max(1) as f64;
    let bw = (group * 0.8 / bars).max(1.0);
    for b in 0..buckets {
        text(
            o,
            r.x + (b as f64 + 0.5) * group,
            r.y + r.h + 16.0,
            "middle",
            "",
            &size_label(b),
        );
    }
    text(
        o,
        r.x + r.w / 2.0,
        r.y + r.h + 32.0,
        "middle",
        r#" class="axis-title""#,
        "request size",
    );
    for (run, a) in runs.iter().enumerate() {
        for (j, &k) in kinds.iter().enumerate() {
            let _ = writeln!(
                o,
                r#"<g id="sizes-{}{}" class="series" fill="{}"{}>"#,
                KINDS[k].name(),
                suffix(run),
                COLOURS[k],
                if run == 0 {
                    ""
                } else {
                    r##" fill-opacity="0.45" stroke="#222" stroke-dasharray="3 2""##
                }
            );
            for (b, &c) in a.sizes[k].iter().enumerate() {
                if c == 0 {
                    continue;
                }
                let slot = (j * runs.len() + run) as f64;
                let h = c as f64 / top * r.h;
                let _ = writeln!(
                    o,
                    r#"<rect x="{}" y="{}" width="{}" height="{}" data-count="{c}"/>"#,
                    n(r.x + b as f64 * group + group * 0.1 + slot * bw),
                    n(r.y + r.h - h),
                    n(bw),
                    n(h)
                );
            }
            let _ = writeln!(o, "</g>");
        }
    }
    let _ = writeln!(o, "</g>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // 2026-12-05 17:11:26 UTC
        assert_eq!(
            utc(1_796_490_686 * 1_000_000_000),
            "2026-12-05 17:11:26 UTC"
        );
        assert_eq!(utc(951_782_400 * 1_000_000_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn panels_fill_the_page_in_order() {
        let p = Page::new(1400, 2200, false);
        assert_eq!(p.panels.len(), 7);
        let last = p.panels.last().unwrap().1;
        assert!(last.y + last.h + GAP_BOTTOM <= 2200.0);
        assert!(p.panels.windows(2).all(|w| w[0].1.y < w[1].1.y));
        assert_eq!(Page::new(1400, 2200, true).panels.len(), 9);
    }
}
