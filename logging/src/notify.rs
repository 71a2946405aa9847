//! The service manager's notification protocol (sd_notify(3)) without libsystemd: one
//! datagram of `KEY=VALUE` lines to the unix socket `$NOTIFY_SOCKET` names (a path,
//! or an abstract socket when it starts with `@`). `Type=notify` units wait for
//! `READY=1`; `STATUS=` is the line `systemctl status` shows; `STOPPING=1` says the
//! service is shutting down.
//!
//! [`take_from_env`] (called by [`crate::init`], before any thread starts) reads
//! `NOTIFY_SOCKET` once and removes it from the environment, so a child process (the
//! dataplane a daemon starts) never speaks for its parent's unit. Without the variable
//! every call does nothing: the binaries run the same outside systemd. A failed send
//! is logged at debug and otherwise ignored (the service works; only the manager's
//! view of it lags).

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A socket file.
    Path(PathBuf),
    /// An abstract socket (its name without the leading `@`).
    Abstract(Vec<u8>),
}

/// A sender of notifications to one target (or to none).
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<Target>,
}

impl Notifier {
    /// The notifier for a `NOTIFY_SOCKET` value: `None` or an empty value, nothing; `@`
    /// then a name, that abstract socket; an absolute path, that file. Anything else
    /// (e.g. `vsock:`) is refused with the reason, and the notifier does nothing.
    pub fn from_value(value: Option<&OsStr>) -> Result<Notifier, String> {
        use std::os::unix::ffi::OsStrExt as _;
        let Some(v) = value.map(OsStr::as_bytes).filter(|v| !v.is_empty()) else {
            return Ok(Notifier::default());
        };
        let target = match v {
            [b'@', name @ ..] if !name.is_empty() => Target::Abstract(name.to_vec()),
            [b'/', ..] => Target::Path(PathBuf::from(OsStr::from_bytes(v))),
            _ => {
                return Err(format!(
                    "NOTIFY_SOCKET={:?} is neither a path nor @abstract: not notifying the service manager",
                    String::from_utf8_lossy(v)
                ))
            }
        };
        Ok(Notifier {
            target: Some(target),
        })
    }

    /// Whether there is anyone to notify.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines) in one datagram; `Ok` and
    /// nothing sent without a target.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let sock = UnixDatagram::unbound()?;
        let sent = match target {
            Target::Path(p) => sock.send_to(state.as_bytes(), p)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                let addr = SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)?
            }
        };
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the notification was truncated",
            ));
        }
        Ok(())
    }
}

/// A `STATUS=` value on one line (a newline would start another assignment).
pub fn status_line(text: &str) -> String {
    format!("STATUS={}", text.replace(['\n', '\r'], " "))
}

static NOTIFIER: OnceLock<Notifier> = OnceLock::new();

/// Reads `NOTIFY_SOCKET` once and removes it from this process's environment (see the
/// module docs); later calls do nothing. Call it before any thread starts.
pub fn take_from_env() {
    let value = std::env::var_os("NOTIFY_SOCKET");
    if value.is_some() {
        // Edition 2021: safe, and no other thread exists yet to read the environment.
        std::env::remove_var("NOTIFY_SOCKET");
    }
    let notifier = Notifier::from_value(value.as_deref()).unwrap_or_else(|e| {
        tracing::warn!("{e}");
        Notifier::default()
    });
    let _ = NOTIFIER.set(notifier);
}

fn notify(state: &str) {
    if let Some(n) = NOTIFIER.get() {
        if let Err(e) = n.send(state) {
            tracing::debug!("notifying the service manager ({state:?}): {e}");
        }
    }
}

/// `READY=1` with a status line: the service serves.
pub fn ready(status: &str) {
    notify(&format!("READY=1\n{}", status_line(status)));
}

/// A status line (`systemctl status` shows the latest).
pub fn status(status: &str) {
    notify(&status_line(status));
}

/// `STOPPING=1`: the service is shutting down.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=stopping");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt as _;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn unset_or_empty_notifies_nobody() {
        for v in [None, Some(OsStr::new(""))] {
            let n = Notifier::from_value(v).unwrap();
            assert!(!n.is_active());
            n.send("READY=1").unwrap();
        }
    }

    #[test]
    fn other_forms_are_refused_with_the_value() {
        for v in ["vsock:2:1234", "relative/path", "@"] {
            let e = Notifier::from_value(Some(OsStr::new(v))).unwrap_err();
            assert!(e.contains(v), "{e}");
        }
    }

    #[test]
    fn a_path_socket_gets_the_datagram() {
        let dir = std::env::temp_dir().join(format!("pd-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_value(Some(path.as_os_str())).unwrap();
        assert_eq!(n.target, Some(Target::Path(path.clone())));
        n.send("READY=1\nSTATUS=up").unwrap();
        assert_eq!(recv(&sock), "READY=1\nSTATUS=up");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_abstract_socket_gets_the_datagram() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("pd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        let value = format!("@{name}");
        let n = Notifier::from_value(Some(OsStr::from_bytes(value.as_bytes()))).unwrap();
        assert_eq!(n.target, Some(Target::Abstract(name.into_bytes())));
        n.send("STOPPING=1").unwrap();
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let n = Notifier::from_value(Some(OsStr::new("/nonexistent/pd-notify.sock"))).unwrap();
        assert!(n.send("READY=1").is_err());
    }

    #[test]
    fn status_stays_on_one_line() {
        assert_eq!(status_line("a\nb\rc"), "STATUS=a b c");
    }
}
