//! The `ocidisk` command for the end-to-end tests, run with the testkit's
//! command helper: `ocidisk().args([...]).run_json()` panics, when the
//! command fails, with its command line, directory, status, stdout and
//! stderr.

pub use ocidisk_testkit::cmd::{CommandExt, Ran};
use std::process::Command;

/// A [`Command`] for this workspace's `ocidisk` binary (see
/// [`crate::blkio_client::ocidisk_binary`]); panics, saying why, if there is
/// none and it cannot be built.
pub fn ocidisk() -> Command {
    match crate::blkio_client::ocidisk_binary() {
        Ok(bin) => Command::new(bin),
        Err(e) => panic!("{e:#}"),
    }
}
