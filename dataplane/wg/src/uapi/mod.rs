//! The text format of WireGuard's cross-platform userspace API
//! (<https://www.wireguard.com/xplatform/>), as `wg(8)` speaks it over
//! `/var/run/wireguard/IFNAME.sock` ([`SOCKET_DIR`]).
//!
//! Pure parsing and formatting of the values of [`crate::config`], matching
//! wireguard-go's `device/uapi.go`:
//!
//! 1. the socket server cuts a request out of its input with a [`Framer`], which
//!    returns only complete requests within [`LINE_MAX`] and [`REQUEST_MAX`] (or a
//!    [`FrameError`] to answer with, applying nothing);
//! 2. [`parse_request`] turns it into a [`Request`]; a `set` is parsed completely
//!    before anything is returned, so a malformed request yields an error and
//!    no partial [`ConfigChange`](crate::config::ConfigChange) (the caller then changes nothing);
//! 3. the caller applies a [`ConfigChange`](crate::config::ConfigChange) to its device in order and answers with
//!    [`format_errno`], or answers a `get` with [`format_get`] of a
//!    [`DeviceSnapshot`](crate::config::DeviceSnapshot);
//! 4. on a [`UapiError`] it answers `format_errno(out, err.errno())`, unless
//!    [`UapiError::closes_connection`] says wireguard-go would hang up instead.
//!
//! A client goes the other way: [`format_set`] writes a request and [`parse_get`]
//! reads the answer to `get=1` back into a snapshot.

mod format;
mod frame;
mod get;
mod parse;
#[cfg(test)]
mod tests;

pub use format::{format_errno, format_get, format_set};
pub use frame::{FrameError, Framer, LINE_MAX, REQUEST_MAX};
pub use get::{parse_get, GetError};
pub use parse::{parse_request, parse_request_with, request_len};

/// Where userspace WireGuard implementations (wireguard-go, `wg(8)`, this
/// project's dataplane) put their sockets: `SOCKET_DIR/IFNAME.sock`.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// Linux `EINVAL`: wireguard-go's `ipc.IpcErrorInvalid` is `-EINVAL`.
const EINVAL: i32 = 22;
/// Linux `EPROTO`: wireguard-go's `ipc.IpcErrorProtocol` is `-EPROTO`.
const EPROTO: i32 = 71;

/// One UAPI request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get=1`: report the device configuration and peer statistics.
    Get,
    /// `set=1`: change the configuration.
    Set(crate::config::ConfigChange),
}

/// Why a UAPI request was rejected. [`UapiError::errno`] is what to send back.
///
/// Lines are numbered from 1, the operation line (`set=1`) being line 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UapiError {
    /// The request bytes are not valid UTF-8 (for callers that read bytes:
    /// `std::str::from_utf8(buf)?`).
    #[error("UAPI request is not valid UTF-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    /// The first line is not `get=1` or `set=1` ended by a newline; wireguard-go
    /// closes the connection without an answer.
    #[error("unknown UAPI operation {0:?}: expected \"get=1\" or \"set=1\" and a newline")]
    UnknownOperation(String),
    /// `get=1` is not followed by the blank line that ends the request.
    #[error("\"get=1\" must be followed by a blank line, not {0:?}")]
    GetNotTerminated(String),
    /// A line of a `set` has no `=`.
    #[error("line {line}: {text:?} is not of the form key=value")]
    MissingEquals {
        /// Line number.
        line: usize,
        /// The line (shortened if long).
        text: String,
    },
    /// A key that is not a device key appeared before the first `public_key=`.
    #[error("line {line}: {key:?} is not a device key (peer keys must follow a public_key= line)")]
    UnknownDeviceKey {
        /// Line number.
        line: usize,
        /// The key (shortened if long).
        key: String,
    },
    /// A key that is not a peer key appeared after a `public_key=`.
    #[error(
        "line {line}: {key:?} is not a peer key (device keys must come before the first public_key= line)"
    )]
    UnknownPeerKey {
        /// Line number.
        line: usize,
        /// The key (shortened if long).
        key: String,
    },
    /// A known key has a value that does not parse.
    #[error("line {line}: invalid {key} value {value:?}: {reason}")]
    InvalidValue {
        /// Line number.
        line: usize,
        /// The key.
        key: &'static str,
        /// The value (shortened if long; `<redacted>` for secret keys).
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
}

impl UapiError {
    /// The negative errno to answer with (`errno=N`), as wireguard-go would:
    /// `-EPROTO` for a line without `=`, `-EINVAL` for everything else.
    pub fn errno(&self) -> i32 {
        match self {
            Self::MissingEquals { .. } => -EPROTO,
            _ => -EINVAL,
        }
    }

    /// True when wireguard-go would close the connection instead of answering
    /// (an unknown operation line).
    pub fn closes_connection(&self) -> bool {
        matches!(self, Self::UnknownOperation(_))
    }
}
