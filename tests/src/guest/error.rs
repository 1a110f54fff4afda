//! The harness's error type: every failure names what was being done, and a
//! failed boot carries the guest's console so the test log shows why.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What went wrong while preparing or booting a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel, modules or EFI stub are not where the tests look for them.
    #[error(
        "guest test assets missing: {missing} not found in {dir}; run .ci/install-deps \
         (or set OCIDISK_TEST_ASSETS to a directory it filled)"
    )]
    AssetsMissing {
        /// The assets directory searched.
        dir: PathBuf,
        /// The file or directory that is not there.
        missing: String,
    },
    /// A file system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An external tool could not be started (usually: not installed).
    #[error("cannot run {tool} (installed by .ci/install-deps): {source}")]
    ToolMissing {
        /// The program name.
        tool: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An external tool ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    ToolFailed {
        /// The command line, for the log.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A kernel module the guest needs is not in the modules tree.
    #[error("kernel module {name} not found in {modules_dep}")]
    ModuleNotFound {
        /// The module name as requested.
        name: String,
        /// The modules.dep searched.
        modules_dep: PathBuf,
    },
    /// A PE file (the EFI stub) is malformed or not what the UKI builder expects.
    #[error("{file}: {what}")]
    BadPe {
        /// The file parsed.
        file: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A process did not get ready or finish in time.
    #[error("{what} did not finish within {after:?}\n--- log ---\n{log}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The time limit.
        after: Duration,
        /// Its console or log, to tell why.
        log: String,
    },
    /// A process exited when it should not have, or with a failure status.
    #[error("{what}\n--- log ---\n{log}")]
    Failed {
        /// What happened.
        what: String,
        /// Its console or log.
        log: String,
    },
}

/// Results of the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with a description of the operation.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
