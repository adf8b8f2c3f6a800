//! Running short helper commands (ip, nft, curl, weft's admin CLI) to completion.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::error::{io, Error, Result};

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` with `stdin` as its standard input; returns its output if it exited 0.
pub fn run_with_input(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Output> {
    let line = describe(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io(format!("spawning `{line}`")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .map_err(io(format!("writing stdin of `{line}`")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io(format!("waiting for `{line}`")))?;
    if out.status.success() {
        Ok(out)
    } else {
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if text.is_empty() {
            text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        Err(Error::Command {
            command: line,
            status: out.status.to_string(),
            stderr: text,
        })
    }
}

/// Runs `cmd` and returns its stdout (lossy UTF-8) if it exited 0.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = run_with_input(cmd, None)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args…` and returns its stdout if it exited 0.
pub fn run_args(program: &str, args: &[&str]) -> Result<String> {
    run(Command::new(program).args(args))
}
