//! Running the external tools the harness drives (sgdisk, mtools, objcopy, …).

use std::process::{Command, Output, Stdio};

use super::error::{Error, Result};

/// Runs `cmd` to completion with stdin closed; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::ToolMissing {
            tool: program,
            source,
        })?;
    if !output.status.success() {
        return Err(Error::ToolFailed {
            command: describe(cmd),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_is_named() {
        let err = run(&mut Command::new("ocidisk-no-such-tool")).unwrap_err();
        assert!(err.to_string().contains("ocidisk-no-such-tool"), "{err}");
    }

    #[test]
    fn failing_tool_reports_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("boom") && msg.contains("sh -c"), "{msg}");
    }
}
