//! The harness's one error type: every variant says what failed and, where the user can
//! act, what to do.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can stop a measurement or the whole run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The command line could not be understood.
    #[error("{0}\n\n{usage}", usage = crate::usage::USAGE)]
    Usage(String),
    /// The process does not run as root.
    #[error(
        "pd-bench must run as root (it creates network namespaces, veth pairs and TUN \
         devices); effective uid is {0}. Try: sudo target/release/pd-bench"
    )]
    NotRoot(String),
    /// A program the harness needs is not installed.
    #[error("{program} not found on PATH or in ~/.cargo/bin: {hint}")]
    MissingProgram {
        /// The executable looked for.
        program: String,
        /// How to install it.
        hint: String,
    },
    /// A peer that `cargo xtask setup` fetches into the bench cache is not there.
    #[error(
        "{what} is not in the bench cache ({path} missing): `cargo xtask setup` fetches \
         it (it printed a WARNING if it could not)"
    )]
    NotCached {
        /// The peer, e.g. `wireguard-go (Debian 13)`.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Our dataplane binary is not where `--dataplane` (or the default) says.
    #[error(
        "portdistrict-dataplane not found at {0}: build it with \
         `cargo build --release -p portdistrict-dataplane` or pass --dataplane PATH"
    )]
    MissingDataplane(PathBuf),
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
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of its stdout and stderr.
        output: String,
    },
    /// A command or condition did not finish within its bound.
    #[error("{what} did not finish within {limit:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The bound.
        limit: Duration,
    },
    /// A WireGuard daemon exited or never became ready.
    #[error("{implementation} daemon for {ifname}: {problem}; its log:\n{log}")]
    Daemon {
        /// Which implementation.
        implementation: String,
        /// The interface it should own.
        ifname: String,
        /// What went wrong.
        problem: String,
        /// The tail of its output.
        log: String,
    },
    /// A tool's output could not be understood.
    #[error("cannot parse {what}: {problem}\n{text}")]
    Parse {
        /// Which output.
        what: String,
        /// What is wrong with it.
        problem: String,
        /// The output (tail).
        text: String,
    },
    /// A daemon's state after a command is not what the command asked for.
    #[error("{what}: expected {expected}, got {got}")]
    Unexpected {
        /// What was checked.
        what: String,
        /// What should be there.
        expected: String,
        /// What is there.
        got: String,
    },
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot write", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Ctrl-C (or SIGTERM/SIGHUP) was received.
    #[error("interrupted")]
    Interrupted,
}

/// How much of a command's output an error message shows.
const OUTPUT_TAIL: usize = 2000;

impl From<portdistrict_testkit::Error> for Error {
    fn from(e: portdistrict_testkit::Error) -> Error {
        use portdistrict_testkit::Error as T;
        match e {
            T::Spawn { command, source } => Error::Spawn { command, source },
            T::Failed {
                command,
                status,
                stdout,
                stderr,
            } => Error::CommandFailed {
                command,
                status: status.to_string(),
                output: tail(
                    &format!("{}\n{}", stdout.trim_end(), stderr.trim_end()),
                    OUTPUT_TAIL,
                ),
            },
            T::Timeout { command, limit } => Error::Timeout {
                what: format!("`{command}`"),
                limit,
            },
            T::Io {
                action,
                path,
                source,
            } => Error::Io {
                action,
                path,
                source,
            },
            T::Netns { name, source } => Error::Io {
                action: "cannot enter the network namespace",
                path: PathBuf::from("/run/netns").join(name),
                source,
            },
            T::Socket { action, source } => Error::Spawn {
                command: action,
                source,
            },
            T::Interrupted => Error::Interrupted,
        }
    }
}

/// The last `max` characters of `text` (at a char boundary), for error messages.
pub(crate) fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("short", 10), "short");
        assert_eq!(tail("abcdefghij", 3), "...hij");
        assert_eq!(tail("ééé", 3), "...é");
    }

    #[test]
    fn testkit_errors_keep_their_messages() {
        let e: Error = portdistrict_testkit::run(
            &mut portdistrict_testkit::cmd(&["sh", "-c", "echo boom; exit 1"]),
            Duration::from_secs(10),
        )
        .unwrap_err()
        .into();
        assert!(matches!(e, Error::CommandFailed { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("`sh -c echo boom; exit 1` failed (exit status: 1):\nboom"),
            "{e}"
        );
        let e: Error = portdistrict_testkit::Error::Timeout {
            command: "sleep 30".to_owned(),
            limit: Duration::from_secs(1),
        }
        .into();
        assert_eq!(e.to_string(), "`sleep 30` did not finish within 1s");
        let e: Error = portdistrict_testkit::Error::Interrupted.into();
        assert!(matches!(e, Error::Interrupted));
    }
}
