//! `ocidisk trace plot TRACE -o OUT.svg|OUT.png`: one page of pictures of
//! what the guest did — offset against time with the partitions as named
//! bands, throughput and IOPS per type, latency (p50/p99 per interval and a
//! heat map), queue depth, and request sizes; `--compare B` overlays a
//! second run.
//!
//! The SVG is written directly rather than through a plotting crate: every
//! panel here is rectangles, paths and text, the output must stay small for
//! millions of requests (aggregated per pixel: runs of grid cells become one
//! path per type), and each series gets an `id` that tests and people can
//! find. `plotters` was the alternative; its bitmap backend needs its own
//! font loading for text, and its SVG gives no handle on element ids or on
//! merging cells. PNG is the same SVG rasterised by `resvg` (pure Rust; it
//! finds the system's fonts through fontdb, DejaVu Sans on Debian), so both
//! formats show exactly the same picture.
//!
//! Memory is bounded by the picture, not the trace: the trace is read twice
//! (span, then bins) and never held.

pub mod aggregate;
pub mod draw;
pub mod svg;

use aggregate::{aggregate, scan, Aggregate, Resolution};
use anyhow::{bail, Context as _};
use draw::{Page, Panel, BIN_PX, CELL};
use std::path::{Path, PathBuf};

/// Arguments of `ocidisk trace plot`.
#[derive(clap::Args)]
pub struct PlotArgs {
    /// The trace file.
    file: PathBuf,
    /// Where to write the picture: `.svg`, or `.png` for a bitmap.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// A second trace to overlay (dashed lines; its own offset panel and
    /// heat map).
    #[arg(long, value_name = "TRACE")]
    compare: Option<PathBuf>,
    /// Page width in pixels.
    #[arg(long, default_value_t = 1400, value_parser = clap::value_parser!(u32).range(400..=20000))]
    width: u32,
    /// Page height in pixels [default: 2300, 3000 with --compare].
    #[arg(long, value_parser = clap::value_parser!(u32).range(600..=40000))]
    height: Option<u32>,
    /// The title [default: names the disk and the trace].
    #[arg(long)]
    title: Option<String>,
}

/// The picture format, from the output's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Scalable vector graphics.
    Svg,
    /// A bitmap of the requested size.
    Png,
}

impl Format {
    /// The format `path`'s extension names.
    pub fn of(path: &Path) -> anyhow::Result<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            _ => bail!(
                "{}: the output's extension must be .svg or .png",
                path.display()
            ),
        }
    }
}

/// Runs `ocidisk trace plot`.
pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let format = Format::of(&args.output)?;
    let height = args
        .height
        .unwrap_or(if args.compare.is_some() { 3000 } else { 2300 });
    let svg = plot_files(
        &args.file,
        args.compare.as_deref(),
        args.width,
        height,
        args.title.as_deref(),
    )?;
    let bytes = match format {
        Format::Svg => svg.into_bytes(),
        Format::Png => rasterise(&svg, args.width, height)?,
    };
    std::fs::write(&args.output, bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(())
}

/// The SVG page for `file` (and `compare`), `width` × `height` px.
pub fn plot_files(
    file: &Path,
    compare: Option<&Path>,
    width: u32,
    height: u32,
    title: Option<&str>,
) -> anyhow::Result<String> {
    let page = Page::new(width, height, compare.is_some());
    let ea = scan(file)?;
    let eb = compare.map(scan).transpose()?;
    let span_ns = ea.span_ns.max(eb.as_ref().map_or(1, |e| e.span_ns));
    let offset = page.rect(Panel::Offset(0));
    let res = Resolution {
        bins: ((offset.w / BIN_PX) as usize).max(1),
        span_ns,
        cols: ((offset.w / CELL) as usize).max(1),
        rows: ((offset.h / CELL) as usize).max(1),
    };
    let a = aggregate(file, &ea, res)?;
    let b = match (compare, &eb) {
        (Some(path), Some(e)) => Some(aggregate(path, e, res)?),
        _ => None,
    };
    let mut runs: Vec<&Aggregate> = vec![&a];
    runs.extend(b.as_ref());
    let title = match title {
        Some(t) => t.to_owned(),
        None => default_title(&runs),
    };
    Ok(draw::page(&page, &runs, &title))
}

fn name_of(a: &Aggregate) -> String {
    let label = &a.extent.header.label;
    let file = a.path.file_name().map_or_else(
        || a.path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    if label.is_empty() {
        file
    } else {
        format!("disk {label} ({file})")
    }
}

fn default_title(runs: &[&Aggregate]) -> String {
    match runs {
        [a, b] => format!("Guest I/O: {} vs {}", name_of(a), name_of(b)),
        [a, ..] => format!("Guest I/O: {}", name_of(a)),
        [] => "Guest I/O".into(),
    }
}

/// The SVG as a PNG of `width` × `height` px.
pub fn rasterise(svg: &str, width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    let tree = usvg::Tree::from_str(svg, &opt).context("the plot's SVG does not parse")?;
    let mut pixmap = tiny_skia::Pixmap::new(width, height)
        .with_context(|| format!("cannot make a {width}×{height} bitmap"))?;
    let size = tree.size();
    let transform = tiny_skia::Transform::from_scale(
        width as f32 / size.width(),
        height as f32 / size.height(),
    );
    resvg::render(&tree, transform, &mut pixmap.as_mut());
    pixmap.encode_png().context("cannot encode the PNG")
}
