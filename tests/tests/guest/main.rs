//! QEMU guests (TCG here: slow) booting from disks served over
//! vhost-user-blk: direct kernel boot, UEFI (OVMF) with a unified kernel
//! image, the README's sample image, images straight from a registry, and
//! guests whose disk server is killed and restarted under them.
//!
//! One binary instead of one per file (one link; nextest still runs each
//! test in its own process). Each module was once its own binary; a test's
//! name is `<module>::<test>`, e.g.
//! `cargo nextest run -p ocidisk-tests --test guest -E 'test(/^guest_uefi::/)'`.

mod guest_direct;
mod guest_ocidisk;
mod guest_registry;
mod guest_restart;
mod guest_sample;
mod guest_uefi;
