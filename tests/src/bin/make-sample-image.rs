//! `make-sample-image OUTDIR`: builds the sample OS image the README demo
//! boots. Writes the payloads (`OUTDIR/payloads/system.erofs`,
//! `OUTDIR/payloads/kernel.efi`) and `OUTDIR/disk.raw`, a small raw disk in
//! Monogon's partition order holding them (served by qemu-storage-daemon
//! where `ocidisk serve` is not used).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ocidisk_tests::guest::Assets;
use ocidisk_tests::sample::{build_sample_payloads, build_sample_raw_disk};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("make-sample-image: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        anyhow::bail!("usage: make-sample-image OUTDIR");
    };
    let out = PathBuf::from(out);
    let payload_dir = out.join("payloads");
    std::fs::create_dir_all(&payload_dir)
        .with_context(|| format!("creating {}", payload_dir.display()))?;
    let assets = Assets::locate()?;
    let payloads = build_sample_payloads(&assets, &payload_dir)?;
    let disk = out.join("disk.raw");
    build_sample_raw_disk(&payloads, &disk)?;
    println!("system={}", payloads.system.display());
    println!("system_sha256={}", payloads.system_sha256);
    println!("kernel.efi={}", payloads.kernel_efi.display());
    println!("raw_disk={}", disk.display());
    Ok(())
}
