//! The text format of WireGuard's cross-platform userspace API
//! (<https://www.wireguard.com/xplatform/>), as `wg(8)` speaks it over
//! `/var/run/wireguard/IFNAME.sock`.
//!
//! Pure parsing and formatting, matching wireguard-go's `device/uapi.go`:
//!
//! 1. the socket server cuts a request out of its input with a [`Framer`], which
//!    returns only complete requests within [`LINE_MAX`] and [`REQUEST_MAX`] (or a
//!    [`FrameError`] to answer with, applying nothing);
//! 2. [`parse_request`] turns it into a [`Request`]; a `set` is parsed completely
//!    before anything is returned, so a malformed request yields an error and
//!    no partial [`SetRequest`] (the caller then changes nothing);
//! 3. the caller applies a [`SetRequest`] to its device in order and answers with
//!    [`format_errno`], or answers a `get` with [`format_get`] of a
//!    [`DeviceSnapshot`];
//! 4. on a [`UapiError`] it answers `format_errno(out, err.errno())`, unless
//!    [`UapiError::closes_connection`] says wireguard-go would hang up instead.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::keys::{PresharedKey, PrivateKey, PublicKey};

mod format;
mod frame;
mod parse;
#[cfg(test)]
mod tests;

pub use format::{format_errno, format_get, format_set};
pub use frame::{FrameError, Framer, LINE_MAX, REQUEST_MAX};
pub use parse::{parse_request, parse_request_with, request_len};

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
    Set(SetRequest),
}

/// A parsed `set=1` request. Fields left `None`/`false`/empty were not sent.
///
/// Device keys are applied before the peers, and the peers in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetRequest {
    /// `private_key=`: `Some(None)` for the all-zero key, which removes the key.
    /// A non-zero key is clamped (as wireguard-go and the kernel do), so a later
    /// `get` shows the clamped key.
    pub private_key: Option<Option<PrivateKey>>,
    /// `listen_port=`: `Some(0)` asks for a random port.
    pub listen_port: Option<u16>,
    /// `fwmark=`: `Some(0)` removes the mark.
    pub fwmark: Option<u32>,
    /// `replace_peers=true`: remove every peer before adding [`Self::peers`].
    pub replace_peers: bool,
    /// One entry per `public_key=` line, in order. The same key may appear twice.
    pub peers: Vec<PeerChange>,
}

/// The changes to one peer: everything between its `public_key=` line and the next.
///
/// The caller must ignore a peer whose key equals the device's own public key
/// (wireguard-go treats it as a placeholder that is never created).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChange {
    /// `public_key=`: which peer; created unless [`Self::update_only`].
    pub public_key: PublicKey,
    /// `remove=true`: remove the peer; the other fields are then irrelevant.
    pub remove: bool,
    /// `update_only=true`: change the peer only if it already exists.
    pub update_only: bool,
    /// `preshared_key=`: an all-zero key removes the preshared key.
    pub preshared_key: Option<PresharedKey>,
    /// `endpoint=`.
    pub endpoint: Option<SocketAddr>,
    /// `persistent_keepalive_interval=` in seconds; `Some(0)` turns it off.
    pub persistent_keepalive_interval: Option<u16>,
    /// `replace_allowed_ips=true`: drop the peer's prefixes before applying
    /// [`Self::allowed_ips`]. Lines before it in the request are already dropped
    /// from [`Self::allowed_ips`], as wireguard-go applies lines in order.
    pub replace_allowed_ips: bool,
    /// `allowed_ip=` lines after the last `replace_allowed_ips=true`, in order.
    pub allowed_ips: Vec<AllowedIpChange>,
    /// `protocol_version=`: only `1` exists; accepted and otherwise meaningless.
    pub protocol_version: Option<u32>,
}

impl PeerChange {
    /// A change that only names the peer (what `public_key=` alone means:
    /// create it if missing).
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive_interval: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
            protocol_version: None,
        }
    }
}

/// One `allowed_ip=` line: `10.0.0.0/8` adds, `-10.0.0.0/8` removes (newer `wg`).
///
/// Host bits are kept as sent; the routing table masks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedIpChange {
    /// The prefix address.
    pub addr: IpAddr,
    /// The prefix length: at most 32 for IPv4, 128 for IPv6.
    pub cidr: u8,
    /// True for the `-` form: remove this prefix from the peer.
    pub remove: bool,
}

/// What a `get=1` reports about the device, gathered by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceSnapshot {
    /// The interface private key; `None` (or all-zero) is not printed.
    pub private_key: Option<PrivateKey>,
    /// The UDP port; 0 (not bound) is not printed.
    pub listen_port: u16,
    /// The socket mark; 0 is not printed.
    pub fwmark: u32,
    /// The peers, in the order to print them.
    pub peers: Vec<PeerSnapshot>,
}

/// What a `get=1` reports about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// The peer's static public key.
    pub public_key: PublicKey,
    /// The preshared key; all-zero when none (always printed).
    pub preshared_key: PresharedKey,
    /// The current endpoint, if known.
    pub endpoint: Option<SocketAddr>,
    /// Wall-clock time of the last completed handshake since the UNIX epoch;
    /// `None` (printed as 0/0) when there was none.
    pub last_handshake: Option<Duration>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Persistent keepalive interval in seconds, 0 when off.
    pub persistent_keepalive_interval: u16,
    /// The peer's AllowedIPs, in the order to print them.
    pub allowed_ips: Vec<(IpAddr, u8)>,
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
