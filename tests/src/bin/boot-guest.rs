//! `boot-guest --socket PATH [--workdir DIR] [--direct KERNEL INITRD]
//! [--num-queues N] [--timeout SECS]`: boots a VM on the vhost-user-blk disk at
//! PATH (through OVMF from the disk's ESP unless `--direct`), waits for it to
//! power off, and prints what the guest reported, one `key: value` per line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use ocidisk_tests::guest::VmConfig;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boot-guest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut socket = None;
    let mut workdir = None;
    let mut direct = None;
    let mut num_queues = 1u16;
    let mut timeout = 90u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value("--socket")?)),
            "--workdir" => workdir = Some(PathBuf::from(value("--workdir")?)),
            "--direct" => {
                let kernel = PathBuf::from(value("--direct")?);
                let initrd = PathBuf::from(value("--direct")?);
                direct = Some((kernel, initrd));
            }
            "--num-queues" => {
                num_queues = value("--num-queues")?
                    .parse()
                    .context("--num-queues: not a number")?
            }
            "--timeout" => {
                timeout = value("--timeout")?
                    .parse()
                    .context("--timeout: not a number of seconds")?
            }
            other => bail!("unknown argument {other}; usage: boot-guest --socket PATH [--workdir DIR] [--direct KERNEL INITRD] [--num-queues N] [--timeout SECS]"),
        }
    }
    let socket = socket.context("--socket PATH is required")?;
    let tmp;
    let workdir = match workdir {
        Some(w) => w,
        None => {
            tmp = tempfile::tempdir().context("creating a work directory")?;
            tmp.path().to_path_buf()
        }
    };
    let mut vm = match &direct {
        Some((kernel, initrd)) => VmConfig::direct(&socket, kernel, initrd),
        None => VmConfig::uefi(&socket),
    };
    vm.num_queues = num_queues;
    vm.timeout = Duration::from_secs(timeout);
    eprintln!(
        "boot-guest: booting ({}, {}) on {}",
        if direct.is_some() {
            "direct kernel boot"
        } else {
            "UEFI from the ESP"
        },
        vm.accel.as_str(),
        socket.display()
    );
    let run = vm.run(&workdir)?;
    eprintln!(
        "boot-guest: the guest powered off after {:.1} s",
        run.elapsed.as_secs_f64()
    );
    for (k, v) in &run.reports {
        println!("{k}: {v}");
    }
    Ok(())
}
