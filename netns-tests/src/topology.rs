//! The common two-node topology: namespaces `left` and `right` joined by a veth pair
//! (underlay `10.77.1.0/24`, `fd77:0:0:1::/64`), one WireGuard implementation in each,
//! peered with each other; tunnel addresses `10.99.0.1` / `fd99::1` (left) and
//! `10.99.0.2` / `fd99::2` (right).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::daemon::{Daemon, Implementation};
use crate::netns::{Netns, Veth};
use crate::wg::{genpsk, Keypair, Peer};
use crate::Family;

/// First three octets of the tunnel's IPv4 /24.
pub const TUNNEL_PREFIX_V4: [u8; 3] = [10, 99, 0];
/// First segment of the tunnel's IPv6 /64 (`fd99::/64`).
pub const TUNNEL_PREFIX_V6: u16 = 0xfd99;

/// Which side knows the other's endpoint (and so can initiate the first handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// Both sides.
    Both,
    /// Only left knows right: left must initiate.
    LeftKnowsRight,
    /// Only right knows left: right must initiate.
    RightKnowsLeft,
}

/// How to build a [`Pair`].
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// Implementation on the left.
    pub left: Implementation,
    /// Implementation on the right.
    pub right: Implementation,
    /// Underlay address family of the endpoints.
    pub outer: Family,
    /// Whether both sides use a (shared) preshared key.
    pub psk: bool,
    /// Who knows whose endpoint.
    pub endpoints: Endpoints,
    /// Extra environment for both daemons (`PD_XDP=off`, ...).
    pub env: Vec<(String, String)>,
}

impl Default for PairOptions {
    fn default() -> PairOptions {
        PairOptions {
            left: Implementation::Uut,
            right: Implementation::Uut,
            outer: Family::V4,
            psk: false,
            endpoints: Endpoints::Both,
            env: Vec::new(),
        }
    }
}

/// One node: its daemon (dropped first), its namespace, its keys and port.
#[derive(Debug)]
pub struct Side {
    /// The implementation process owning the tunnel interface.
    pub daemon: Daemon,
    /// The node's namespace.
    pub ns: Netns,
    /// The interface's key pair.
    pub keys: Keypair,
    /// UDP listen port.
    pub port: u16,
    /// 1 (left) or 2 (right): the host part of its underlay and tunnel addresses.
    pub index: u8,
}

impl Side {
    /// Creates the namespace, starts `implementation` in it, generates keys.
    pub fn start(role: &str, implementation: Implementation, index: u8) -> Side {
        Side::start_env(role, implementation, index, &[])
    }

    /// [`Side::start`] with extra environment for the daemon.
    pub fn start_env(
        role: &str,
        implementation: Implementation,
        index: u8,
        env: &[(String, String)],
    ) -> Side {
        let ns = Netns::new(role);
        let daemon = Daemon::start_env(&ns, implementation, env);
        Side {
            daemon,
            ns,
            keys: Keypair::generate(),
            port: 51819 + u16::from(index),
            index,
        }
    }

    /// This side's tunnel address of `family`.
    pub fn tunnel_addr(&self, family: Family) -> IpAddr {
        tunnel_addr(family, self.index)
    }

    /// The AllowedIPs a peer should hold for this side: its two tunnel host routes.
    pub fn allowed_ips(&self) -> Vec<String> {
        Family::ALL
            .iter()
            .map(|f| {
                let len = if *f == Family::V4 { 32 } else { 128 };
                format!("{}/{len}", self.tunnel_addr(*f))
            })
            .collect()
    }

    /// Adds both tunnel addresses (/24, /64) to the interface and sets it up.
    pub fn address_and_up(&self) {
        self.daemon
            .add_address(&format!("{}/24", self.tunnel_addr(Family::V4)));
        self.daemon
            .add_address(&format!("{}/64", self.tunnel_addr(Family::V6)));
        self.daemon.link_up();
    }
}

/// A tunnel address: `10.99.0.<host>` or `fd99::<host>`.
pub fn tunnel_addr(family: Family, host: u8) -> IpAddr {
    let [a, b, c] = TUNNEL_PREFIX_V4;
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(a, b, c, host)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(
            TUNNEL_PREFIX_V6,
            0,
            0,
            0,
            0,
            0,
            0,
            u16::from(host),
        )),
    }
}

/// Two peered nodes over one veth pair. Drops the veth, then left, then right.
#[derive(Debug)]
pub struct Pair {
    /// The underlay link (side a = left, side b = right).
    pub veth: Veth,
    /// Node 1.
    pub left: Side,
    /// Node 2.
    pub right: Side,
    /// The preshared key, if [`PairOptions::psk`].
    pub psk: Option<String>,
}

impl Pair {
    /// Builds, configures and brings up the topology (no traffic sent yet).
    pub fn new(opts: &PairOptions) -> Pair {
        let left = Side::start_env("left", opts.left, 1, &opts.env);
        let right = Side::start_env("right", opts.right, 2, &opts.env);
        let veth = Veth::new(&left.ns, &right.ns, 1);
        let pair = Pair {
            veth,
            left,
            right,
            psk: opts.psk.then(genpsk),
        };
        let left_knows = opts.endpoints != Endpoints::RightKnowsLeft;
        let right_knows = opts.endpoints != Endpoints::LeftKnowsRight;
        pair.peer(
            &pair.left,
            &pair.right,
            right_knows.then(|| pair.endpoint_of(&pair.left, opts.outer)),
        );
        pair.peer(
            &pair.right,
            &pair.left,
            left_knows.then(|| pair.endpoint_of(&pair.right, opts.outer)),
        );
        pair.left.address_and_up();
        pair.right.address_and_up();
        pair
    }

    /// `side`'s underlay endpoint in `family`.
    pub fn endpoint_of(&self, side: &Side, family: Family) -> SocketAddr {
        SocketAddr::new(self.veth.addr(family, side.index), side.port)
    }

    /// Configures `on` with its keys, port and `other` as its only peer.
    fn peer(&self, other: &Side, on: &Side, endpoint: Option<SocketAddr>) {
        let allowed = other.allowed_ips();
        let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
        let mut peer = Peer::new(&other.keys.public, &allowed);
        peer.endpoint = endpoint;
        peer.preshared_key = self.psk.clone();
        on.daemon.configure(&on.keys, on.port, &[peer]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_addresses() {
        assert_eq!(tunnel_addr(Family::V4, 2).to_string(), "10.99.0.2");
        assert_eq!(tunnel_addr(Family::V6, 1).to_string(), "fd99::1");
    }
}
