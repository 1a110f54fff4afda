//! `make-sample-image [--no-raw-disk] OUTDIR`: builds the sample OS image the
//! README demo boots: the payloads (`OUTDIR/payloads/system.erofs`,
//! `OUTDIR/payloads/kernel.efi`), the Monogon-format OCI image layout holding
//! them (`OUTDIR/image`), and, unless `--no-raw-disk`, `OUTDIR/disk.raw`, a
//! small raw disk in Monogon's partition order with the same payloads (for
//! qemu-storage-daemon, the peer `ocidisk serve` is compared with).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ocidisk_tests::guest::Assets;
use ocidisk_tests::sample::{build_sample_image, build_sample_raw_disk};

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
    let usage = "usage: make-sample-image [--no-raw-disk] OUTDIR";
    let mut raw_disk = true;
    let mut out = None;
    for arg in std::env::args_os().skip(1) {
        if arg == "--no-raw-disk" {
            raw_disk = false;
        } else if arg.to_string_lossy().starts_with('-') || out.is_some() {
            anyhow::bail!("unexpected argument {}; {usage}", arg.to_string_lossy());
        } else {
            out = Some(arg);
        }
    }
    let out = out.context(usage)?;
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let assets = Assets::locate()?;
    let sample = build_sample_image(&assets, &out)?;
    let payloads = &sample.payloads;
    let disk = out.join("disk.raw");
    if raw_disk {
        build_sample_raw_disk(payloads, &disk)?;
    }
    println!("image={}", sample.image.display());
    println!("manifest={}", sample.manifest_digest);
    println!("system={}", payloads.system.display());
    println!("system_sha256={}", payloads.system_sha256);
    println!("kernel.efi={}", payloads.kernel_efi.display());
    if raw_disk {
        println!("raw_disk={}", disk.display());
    }
    Ok(())
}
