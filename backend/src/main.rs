//! `ocidisk`: serves VM disks composed from OCI images over vhost-user-blk.

mod export;
mod image_args;
mod inspect;
#[allow(dead_code, unused_imports)] // Until the device records into it and serve exposes it.
mod metrics;
mod overlay_cmd;
mod serve;
mod stats_cmd;
mod trace_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Serve VM disks straight from OCI images over vhost-user-blk.
#[derive(Parser)]
#[command(name = "ocidisk", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the partition table and extent summary of a composed disk.
    Inspect(inspect::Args),
    /// Write a composed disk (plus an overlay's writes) as a raw image.
    Export(export::Args),
    /// Serve a composed disk to a VM over a vhost-user-blk socket.
    Serve(serve::Args),
    /// Inspect or reset a per-VM overlay file.
    #[command(subcommand)]
    Overlay(overlay_cmd::Command),
    /// Show a served disk's guest I/O live, from its `--metrics` endpoint.
    Stats(stats_cmd::Args),
    /// Work with request traces written by `serve --trace`.
    #[command(subcommand)]
    Trace(trace_cmd::Command),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Export(args) => export::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Overlay(cmd) => overlay_cmd::run(cmd),
        Command::Stats(args) => stats_cmd::run(args),
        Command::Trace(cmd) => trace_cmd::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ocidisk: {err:#}");
            ExitCode::FAILURE
        }
    }
}
