//! `ocidisk`: serves VM disks composed from OCI images over vhost-user-blk.
//!
//! The command line; everything it runs lives in the library.

use ocidisk::cmd::{cache, export, inspect, overlay, pull, serve, stats, trace};

use clap::{Parser, Subcommand};
use std::io::IsTerminal as _;
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
    /// Copy an image from a registry into an OCI image layout directory.
    Pull(pull::Args),
    /// List or prune the host's shared cache of registry blobs.
    #[command(subcommand)]
    Cache(cache::Command),
    /// Inspect or reset a per-VM overlay file.
    #[command(subcommand)]
    Overlay(overlay::Command),
    /// Show a served disk's guest I/O live, from its `--metrics` endpoint.
    Stats(stats::Args),
    /// Work with request traces written by `serve --trace`.
    #[command(subcommand)]
    Trace(trace::Command),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for people; launchers capture the log to files.
        .with_ansi(std::io::stderr().is_terminal())
        // A launcher may close the pipe it reads the log from: a log line
        // that cannot be written is dropped, never a reason to panic.
        .log_internal_errors(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Export(args) => export::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Pull(args) => pull::run(args),
        Command::Cache(cmd) => cache::run(cmd),
        Command::Overlay(cmd) => overlay::run(cmd),
        Command::Stats(args) => stats::run(args),
        Command::Trace(cmd) => trace::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `ocidisk inspect | head` is not an error.
        Err(err)
            if err
                .root_cause()
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            // The error and its causes on one line, joined with ": ". No
            // library error prints its own source, so each cause appears
            // once.
            eprintln!("ocidisk: {err:#}");
            ExitCode::FAILURE
        }
    }
}
