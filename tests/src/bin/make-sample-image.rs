//! `make-sample-image OUTDIR`: builds the sample OS image the README demo
//! boots: the payloads (`OUTDIR/payloads/system.erofs`,
//! `OUTDIR/payloads/kernel.efi`), the Monogon-format OCI image layout holding
//! them (`OUTDIR/image`), and `OUTDIR/disk.raw`, a small raw disk in Monogon's
//! partition order with the same payloads (for qemu-storage-daemon, the peer
//! `ocidisk serve` is compared with).

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
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        anyhow::bail!("usage: make-sample-image OUTDIR");
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let assets = Assets::locate()?;
    let sample = build_sample_image(&assets, &out)?;
    let payloads = &sample.payloads;
    let disk = out.join("disk.raw");
    build_sample_raw_disk(payloads, &disk)?;
    println!("image={}", sample.image.display());
    println!("manifest={}", sample.manifest_digest);
    println!("system={}", payloads.system.display());
    println!("system_sha256={}", payloads.system_sha256);
    println!("kernel.efi={}", payloads.kernel_efi.display());
    println!("raw_disk={}", disk.display());
    Ok(())
}
