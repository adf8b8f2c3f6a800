//! The one error type of the harness.

use std::fmt;
use std::time::Duration;

/// Everything that can go wrong while setting up or observing an end-to-end test.
#[derive(thiserror::Error)]
pub enum Error {
    /// An I/O operation of the harness itself failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A helper command (ip, nft, weft's admin CLI, curl) exited unsuccessfully.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the reader.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (and stdout, if stderr was empty).
        stderr: String,
    },
    /// A polled condition did not become true before its deadline.
    #[error("timed out after {after:?} waiting for {what}; last observation: {last}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long we waited.
        after: Duration,
        /// The last thing the probe saw, to explain the failure.
        last: String,
    },
    /// The machine lacks something the tests need (root, a tool, a binary).
    #[error("end-to-end environment: {0}")]
    Environment(String),
    /// Output that should have been JSON was not.
    #[error("parsing {what} as JSON: {source}")]
    Json {
        /// Whose output.
        what: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A check made by a test failed.
    #[error("{0}")]
    Check(String),
}

// Tests return `Result<(), Error>`; the test runner prints errors with `Debug`,
// so make that the readable form.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Result with the harness error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
