//! `deny-io-uring PROGRAM ARGS...`: runs PROGRAM where io_uring is filtered
//! out by seccomp, as container runtimes' default profiles do (Docker's
//! since 25.0): `io_uring_setup`, `io_uring_enter` and `io_uring_register`
//! fail with EPERM; everything else is allowed.
//!
//! The tests use it to check that `ocidisk serve --io-engine auto` falls
//! back to blocking calls, says so once, and serves correctly, on a kernel
//! whose io_uring works for every other process.

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: deny-io-uring PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    if let Err(err) = deny_io_uring() {
        eprintln!("deny-io-uring: cannot install the seccomp filter: {err}");
        return ExitCode::from(1);
    }
    // exec only returns on failure.
    let err = Command::new(&program).args(args).exec();
    eprintln!(
        "deny-io-uring: cannot run {}: {err}",
        program.to_string_lossy()
    );
    ExitCode::from(127)
}

fn deny_io_uring() -> Result<(), Box<dyn std::error::Error>> {
    let rules = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ]
    .into_iter()
    .map(|nr| (nr, Vec::new()))
    .collect::<BTreeMap<_, _>>();
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let program: BpfProgram = filter.try_into()?;
    // Sets no_new_privs, which an unprivileged process needs for seccomp.
    seccompiler::apply_filter(&program)?;
    Ok(())
}
