//! Running a command from a test, in one place: when the command cannot
//! start, fails where it should succeed (or the reverse), or prints
//! something that is not JSON where JSON is expected, the panic or error
//! says everything needed to reproduce it by hand: the command line (with
//! the environment it was given), the working directory, the exit status,
//! stdout and stderr. (ripgrep's `tests/util.rs` is the model.)
//!
//! ```no_run
//! use ocidisk_testkit::cmd::CommandExt as _;
//! use std::process::Command;
//! let table = Command::new("sfdisk").arg("--json").arg("disk.raw").run_json();
//! let refused = Command::new("sgdisk").arg("-v").arg("missing.raw").run_err();
//! assert!(refused.stderr.contains("missing.raw"), "{refused}");
//! # let _ = table;
//! ```

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use std::ffi::OsStr;
use std::fmt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};

/// A command that ran to completion, with what it printed. Its `Display`
/// is the full report (command, directory, status, stdout, stderr), so
/// `assert!(cond, "{ran}")` says everything.
#[derive(Debug)]
pub struct Ran {
    /// The command line as a shell would take it, environment first.
    pub command: String,
    /// Where it ran.
    pub dir: PathBuf,
    /// How it ended.
    pub status: ExitStatus,
    /// stdout and stderr, lossily decoded (the tests compare text).
    pub stdout: String,
    /// See [`stdout`](Self::stdout).
    pub stderr: String,
}

impl Ran {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout parsed as JSON; panics with the report if it is not.
    pub fn json(&self) -> Value {
        self.try_json().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// stdout parsed as JSON; the error carries the report.
    pub fn try_json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("stdout is not JSON\n{self}"))
    }
}

impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.command)?;
        writeln!(f, "in:      {}", self.dir.display())?;
        writeln!(f, "status:  {}", self.status)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

/// Runs a [`Command`] the way tests want it: `run_ok`, `run_json` and
/// `run_err` panic with the report; the `try_` forms return it as an error
/// for tests that return `Result`. stdin is closed (as `output()` does).
pub trait CommandExt {
    /// Runs to completion; an error only if it cannot start.
    fn try_run(&mut self) -> Result<Ran>;

    /// Runs to completion, which must exit 0.
    fn try_run_ok(&mut self) -> Result<Ran> {
        let ran = self.try_run()?;
        if !ran.success() {
            bail!("command failed\n{ran}");
        }
        Ok(ran)
    }

    /// Runs to completion, which must exit 0, and parses stdout as JSON.
    fn try_run_json(&mut self) -> Result<Value> {
        self.try_run_ok()?.try_json()
    }

    /// Runs to completion, which must fail (any status but 0).
    fn try_run_err(&mut self) -> Result<Ran> {
        let ran = self.try_run()?;
        if ran.success() {
            bail!("command succeeded but should have failed\n{ran}");
        }
        Ok(ran)
    }

    /// [`CommandExt::try_run`], panicking if it cannot start.
    fn run(&mut self) -> Ran {
        self.try_run().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`CommandExt::try_run_ok`], panicking with the report.
    fn run_ok(&mut self) -> Ran {
        self.try_run_ok().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`CommandExt::try_run_json`], panicking with the report.
    fn run_json(&mut self) -> Value {
        self.try_run_json().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`CommandExt::try_run_err`], panicking with the report.
    fn run_err(&mut self) -> Ran {
        self.try_run_err().unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl CommandExt for Command {
    fn try_run(&mut self) -> Result<Ran> {
        let command = command_line(self);
        let dir = match self.get_current_dir() {
            Some(dir) => dir.to_owned(),
            None => std::env::current_dir().unwrap_or_default(),
        };
        let out = self
            .output()
            .with_context(|| format!("cannot run {command} (in {})", dir.display()))?;
        Ok(Ran {
            command,
            dir,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// `K=V … program args…`, each word quoted for a POSIX shell when it needs
/// it, so the line can be pasted into one.
pub fn command_line(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => words.push(format!("{}={}", quote(key), quote(value))),
            // Removed from the environment: `env -u` says so in shell terms.
            None => words.push(format!("env -u {}", quote(key))),
        }
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_reports_everything() {
        let err = Command::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .env("WHY", "a b")
            .current_dir("/")
            .try_run_ok()
            .unwrap_err();
        let report = format!("{err:#}");
        for needle in [
            "WHY='a b' sh -c 'echo out; echo err >&2; exit 3'",
            "in:      /\n",
            "exit status: 3",
            "--- stdout ---\nout\n",
            "--- stderr ---\nerr",
        ] {
            assert!(report.contains(needle), "{needle:?} not in:\n{report}");
        }
    }

    #[test]
    fn success_and_failure_are_checked_both_ways() {
        assert_eq!(Command::new("true").run_ok().stdout, "");
        assert!(Command::new("false").try_run_ok().is_err());
        assert!(Command::new("true").try_run_err().is_err());
        assert!(!Command::new("false").run_err().success());
        let missing = Command::new("/nonexistent/tool").try_run().unwrap_err();
        assert!(format!("{missing:#}").contains("/nonexistent/tool"));
    }

    #[test]
    fn json_is_parsed_or_the_output_shown() {
        let v = Command::new("echo").arg(r#"{"a": 1}"#).run_json();
        assert_eq!(v["a"], 1);
        let err = Command::new("echo")
            .arg("not json")
            .try_run_json()
            .unwrap_err();
        assert!(format!("{err:#}").contains("not json"), "{err:#}");
    }
}
