//! The device's configuration as values: a [`ConfigChange`] the device applies
//! ([`crate::device::Device::apply`]) and the [`DeviceSnapshot`] / [`PeerStats`] it
//! reports. Both producers of configuration make these values: the UAPI text codec
//! ([`crate::uapi`]) and the dataplane's shared-memory link. Nothing here parses or
//! formats text.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::keys::{PresharedKey, PrivateKey, PublicKey};

/// A change of the device's configuration (what a UAPI `set=1` carries, and what the
/// shared-memory link computes from two configurations). Fields left
/// `None`/`false`/empty do not change.
///
/// Device keys are applied before the peers, and the peers in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigChange {
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

/// One peer's counters and handshake time, without its configuration: what the
/// dataplane writes back to the shared-memory region every second
/// ([`crate::device::Device::peer_stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's static public key.
    pub public_key: PublicKey,
    /// The current endpoint, if known.
    pub endpoint: Option<SocketAddr>,
    /// Wall-clock time of the last completed handshake since the UNIX epoch.
    pub last_handshake: Option<Duration>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Where the latest authenticated handshake message from the peer came from.
    pub handshake_source: Option<HandshakeSource>,
}

/// The source of an authenticated handshake message (initiation or response) and
/// when it arrived: with the endpoint pinned elsewhere (a relay), it shows that a
/// probe to another address was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeSource {
    /// The peer's address the message came from.
    pub addr: SocketAddr,
    /// Wall-clock time it arrived, since the UNIX epoch.
    pub at: Duration,
}
