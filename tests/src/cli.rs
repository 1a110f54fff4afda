//! The `ocidisk` binary for the end-to-end tests: where it is, built fresh
//! ([`ocidisk_binary`]), and a [`Command`] for it to run with the testkit's
//! command helper: `ocidisk().args([...]).run_json()` panics, when the
//! command fails, with its command line, directory, status, stdout and
//! stderr.

use anyhow::{anyhow, bail, Context as _};
pub use ocidisk_testkit::cmd::{CommandExt, Ran};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A [`Command`] for this workspace's `ocidisk` binary (see
/// [`ocidisk_binary`]); panics, saying why, if there is none and it cannot
/// be built.
pub fn ocidisk() -> Command {
    match ocidisk_binary() {
        Ok(bin) => Command::new(bin),
        Err(e) => panic!("{e:#}"),
    }
}

/// The `ocidisk` binary of the profile the tests were built with, up to
/// date with the sources.
///
/// `OCIDISK_BIN` overrides (whoever sets it vouches for it). Otherwise it is
/// `target/<profile>/ocidisk`, next to the `deps` directory holding the test
/// executable, and it is first brought up to date with `cargo build -p
/// ocidisk --bin ocidisk` for that profile and target directory. Cargo sets
/// `CARGO_BIN_EXE_ocidisk` only for the binary's own package, and this one
/// is not it (see CONTRIBUTING.md, "Layout of tests"), so the build is done
/// here: `cargo test` and `cargo nextest run` work on a fresh clone and
/// never run a binary older than the code. The build runs once per process
/// and, under nextest (a process per test), once per run: a stamp beside
/// the binary holds the `NEXTEST_RUN_ID` it was built for. Concurrent test
/// processes wait on cargo's own lock; all but the first find nothing to do.
pub fn ocidisk_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("OCIDISK_BIN") {
        return Ok(path.into());
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_ocidisk().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Runs `cargo build` for the test's own profile and target directory,
/// unless this nextest run already did; returns the binary's path.
fn build_ocidisk() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    // target/<profile>/deps/<test>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))?;
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))?;
    let bin = profile_dir.join("ocidisk");
    let stamp = profile_dir.join("ocidisk.nextest-run");
    let run_id = std::env::var("NEXTEST_RUN_ID").ok();
    if let Some(id) = &run_id {
        if bin.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == *id) {
            return Ok(bin);
        }
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(&cargo);
    build
        .args(["build", "--quiet", "-p", "ocidisk", "--bin", "ocidisk"])
        // The test's own target directory, even if it came from
        // `--target-dir` rather than the environment.
        .env("CARGO_TARGET_DIR", target_dir);
    // The build must see the environment `cargo build -p ocidisk` sees in a
    // shell, not the one cargo and nextest give a test: some build scripts
    // (ring's) rerun when CARGO_MANIFEST_DIR changes, and the binary would
    // then be rebuilt here and again by the next build in a shell.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if set_for_tests(key) {
            build.env_remove(key);
        }
    }
    // The `dev` and `test` profiles build into `debug`; `bench` and
    // `release` into `release`; a custom profile into its own name.
    match profile {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let status = match build.status() {
        Ok(status) => status,
        // No cargo here (a test archive run elsewhere): the binary that
        // came with it is the one to test.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && bin.is_file() => {
            eprintln!(
                "warning: cannot run {} ({e}); testing {} as it is",
                cargo.to_string_lossy(),
                bin.display()
            );
            return Ok(bin);
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot run {} build -p ocidisk", cargo.to_string_lossy())
            })
        }
    };
    if !status.success() || !bin.is_file() {
        bail!(
            "`cargo build -p ocidisk` ({profile} profile, target directory {}) did not make {} \
             ({status}); fix the build, or set OCIDISK_BIN",
            target_dir.display(),
            bin.display()
        );
    }
    if let Some(id) = run_id {
        // Best effort: without the stamp the next test process only runs
        // a cargo build that finds nothing to do.
        let _ = std::fs::write(&stamp, id);
    }
    Ok(bin)
}

/// Whether cargo or nextest sets `key` for a test process (it then has no
/// place in a build's environment).
fn set_for_tests(key: &str) -> bool {
    const PREFIXES: [&str; 3] = ["CARGO_PKG_", "CARGO_BIN_EXE_", "NEXTEST_"];
    const NAMES: [&str; 8] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    PREFIXES.iter().any(|p| key.starts_with(p)) || NAMES.contains(&key)
}
