//! The `ocidisk` binary end to end, without a guest or a registry: served
//! over vhost-user to libblkio and to the tests' own raw frontend (hostile
//! and replayed VMM sequences), the CLI commands (inspect, export, overlay,
//! stats, trace), metrics scraped by Prometheus, overlays killed mid-write.
//!
//! One binary instead of one per file (one link; nextest still runs each
//! test in its own process). Each module was once its own binary; a test's
//! name is `<module>::<test>`, e.g.
//! `cargo nextest run -p ocidisk-tests --test serve -E 'test(/^blkio_serve::/)'`.

mod trace_support;

mod blkio_serve;
mod cli_inspect_export;
mod frontend_replay;
mod hostile_frontend;
mod metrics_cli;
mod overlay_cli;
mod overlay_kill;
mod prometheus_scrape;
mod serve_footprint;
mod trace_plot;
mod verify_lazy;
