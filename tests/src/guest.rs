//! A harness that boots a real Linux guest in QEMU on a vhost-user-blk disk.
//!
//! The pieces:
//! - [`Assets`]: Debian's kernel, its modules and systemd's EFI stub, unpacked
//!   by `.ci/install-deps`.
//! - [`InitramfsBuilder`]: a busybox initramfs whose `/init` loads the virtio
//!   and FAT modules, runs a test script and reports `OCIDISK key=value` lines
//!   on the serial console, then powers off.
//! - [`VhostUserServer`]: the disk's server as a child process
//!   (qemu-storage-daemon or `ocidisk serve`) that is waited on until ready.
//! - [`VmConfig`]: QEMU (`q35`, memfd shared memory, `vhost-user-blk-pci`),
//!   booted directly or through OVMF from the disk's ESP, with a hard time
//!   limit; [`GuestRun`] holds what the guest reported.
//! - [`rawdisk`]: raw GPT disk images built with sgdisk and mtools.
//! - [`crate::uki`]: unified kernel images for UEFI boot.

mod assets;
mod cpio;
mod error;
mod initramfs;
mod qemu;
pub mod rawdisk;
pub mod restart;
mod server;
mod tool;

pub use assets::{Assets, DEFAULT_ASSETS_DIR};
pub use cpio::CpioWriter;
pub use error::{Error, Result};
pub use initramfs::{InitramfsBuilder, ModulesDep, DEFAULT_MODULES};
pub use qemu::{
    parse_reports, Accel, Boot, GuestRun, VmConfig, DEFAULT_CMDLINE, OVMF_CODE, OVMF_VARS,
};
pub use server::{Readiness, VhostUserServer};
pub use tool::run as run_tool;
