//! What can go wrong while setting up or running a test's processes and files.

use std::path::PathBuf;
use std::time::Duration;

/// A failure of a testkit operation; every variant names what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program could not be started at all.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why the OS refused.
        #[source]
        source: std::io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{stdout}{stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },
    /// A command did not finish within its bound (it was stopped).
    #[error("`{command}` did not finish within {limit:?} and was stopped")]
    Timeout {
        /// The command line.
        command: String,
        /// The bound.
        limit: Duration,
    },
    /// Creating, writing or reading a file or directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("creating", "writing", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Entering a network namespace (opening `/run/netns/NAME`, `setns`) failed.
    #[error("cannot enter network namespace {name}: {source}")]
    Netns {
        /// The namespace.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A socket operation failed.
    #[error("{action}: {source}")]
    Socket {
        /// What was being done ("binding UDP 203.0.113.1:7 in network namespace X").
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Ctrl-C (or SIGTERM/SIGHUP) was received while waiting.
    #[error("interrupted")]
    Interrupted,
}
