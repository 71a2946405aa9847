//! The error type of the netlink shell.

use std::io;

/// A netlink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed; `call` names it.
    #[error("`{call}` failed")]
    Syscall {
        /// The system call, e.g. `sendto(NETLINK_ROUTE)`.
        call: &'static str,
        /// The error the kernel returned.
        #[source]
        io: io::Error,
    },
    /// The kernel refused a request: `errno` is what it answered (`EEXIST`,
    /// `ENOENT`, `EPERM`, ...).
    #[error("{request} {target}: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The request, e.g. `RTM_NEWROUTE`.
        request: &'static str,
        /// What it was about, e.g. `default dev pd0 table 51820`.
        target: String,
        /// The positive errno of the kernel's answer.
        errno: i32,
    },
    /// No interface of that name in this network namespace.
    #[error("no interface {0:?} in this network namespace")]
    NoSuchLink(String),
    /// An interface name the kernel cannot take (empty, 16 bytes or more, or a NUL).
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    /// The kernel's answer could not be parsed.
    #[error("malformed netlink answer: {0}")]
    Malformed(&'static str),
    /// A network namespace could not be entered.
    #[error("entering network namespace {name}")]
    Netns {
        /// The namespace's name or path.
        name: String,
        /// Why it failed.
        #[source]
        io: io::Error,
    },
}

impl Error {
    /// The kernel's errno, for [`Error::Kernel`] (and the OS error of a failed call).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Syscall { io, .. } | Error::Netns { io, .. } => io.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the object of a delete was not there: the errno the kernel gives for a
    /// missing route (`ESRCH`), rule or address (`ENOENT`, `EADDRNOTAVAIL`), or link
    /// (`ENODEV`), or the interface named was not found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NoSuchLink(_))
            || matches!(
                self.errno(),
                Some(libc::ESRCH | libc::ENOENT | libc::ENODEV | libc::EADDRNOTAVAIL)
            ) && matches!(self, Error::Kernel { .. })
    }

    /// Whether an add found the object already there (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        matches!(self, Error::Kernel { errno, .. } if *errno == libc::EEXIST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_classes() {
        let k = |errno| Error::Kernel {
            request: "RTM_DELROUTE",
            target: "x".into(),
            errno,
        };
        assert!(k(libc::ESRCH).is_not_found());
        assert!(k(libc::ENOENT).is_not_found());
        assert!(!k(libc::EPERM).is_not_found());
        assert!(k(libc::EEXIST).is_exists());
        assert!(Error::NoSuchLink("x".into()).is_not_found());
        assert_eq!(k(libc::EPERM).errno(), Some(libc::EPERM));
        let text = k(libc::ESRCH).to_string();
        assert!(text.starts_with("RTM_DELROUTE x: "), "{text}");
    }
}
