//! Harness for the root-only netns integration suites.
//!
//! Every test builds its own network namespaces ([`Netns`]), joins them with veth pairs
//! ([`Veth`]), starts WireGuard implementations inside them ([`Daemon`]: the
//! implementation under test, `wireguard-go` or `boringtun-cli`), configures them with
//! `wg` ([`Peer`], [`Keypair`]) and validates by traffic: ping ([`assert_ping`]), TCP
//! payload transfers with sha256 on both ends ([`tcp_transfer`]) and iperf3
//! ([`iperf3_tcp`], [`iperf3_udp`]). The control plane's programs run on a
//! [`CliMachine`] (a namespace with its own state and run directories); a device
//! publishing to a DNS server is a [`ControlNode`]. NAT-traversal tests build a
//! [`NatLab`] (hosts behind NAT routers of chosen kinds, a "public" namespace).
//!
//! Conventions (STYLE.md §11):
//! - every resource is an RAII guard that cleans up on drop, also while panicking;
//! - names are unique per process and per run (`pd-<pid>-<n>-<role>` namespaces,
//!   `pdw<pid%10000><n>` interfaces), so tests can run in parallel;
//! - failures panic with context (command line, stdout, stderr, daemon log tail);
//! - every wait is bounded ([`wait_until`]);
//! - only addresses inside namespaces the test created are targeted: `10.77.x.y/24` and
//!   `fd77:0:0:x::/64` on veths, `10.99.0.0/24` and `fd99::/64` inside tunnels.
//!
//! The mechanics (unique names, temp dirs, namespace teardown, process guards, bounded
//! waits) are `portdistrict-testkit`'s, shared with xtask and pd-bench; this crate
//! adds the panicking, test-shaped layer on top.
//!
//! The implementation under test is the binary named by `PD_DATAPLANE` (default:
//! `<workspace>/target/release/portdistrict-dataplane`); see [`Implementation::Uut`].

mod cli;
mod cmd;
mod daemon;
pub mod exit;
mod iperf;
mod knot;
pub mod metrics;
mod names;
mod netns;
mod topology;
mod traffic;
mod wg;

pub use cli::{control_argv, control_binary, output_text, CliMachine, ControlNode};
pub use cmd::{next_notification, run, try_run, ChildGuard};
pub use daemon::{find_daemon_pids, uut_binary, Daemon, Detached, Implementation};
pub use iperf::{iperf3_tcp, iperf3_udp, IperfReport};
pub use knot::{Knot, UpdateKey};
pub use names::{unique_ifname, unique_name, TempDir};
pub use netns::{require_root, Netns, Veth};
pub use portdistrict_testkit::nat::{
    reflexive, LabNamespace, NatKind, Site, UdpEcho, PUBLIC_GATEWAY, SERVICE,
};
pub use portdistrict_testkit::wait_until;
pub use topology::{
    tunnel_addr, Endpoints, Pair, PairOptions, Side, TUNNEL_PREFIX_V4, TUNNEL_PREFIX_V6,
};
pub use traffic::{
    assert_no_ping, assert_ping, ping_fast, ping_received, tcp_reordering, tcp_transfer,
    TransferReport,
};
pub use wg::{genpsk, normalize_conf, Keypair, Peer, PeerStatus, WgDump};

/// The testkit's NAT lab ([`portdistrict_testkit::nat`]) over this harness's
/// namespaces: two hosts behind nftables NAT routers and a "public" namespace.
pub type NatLab = portdistrict_testkit::nat::NatLab<Netns>;
/// A site of a [`NatLab`]: its router and its host.
pub type NatSite = portdistrict_testkit::nat::NatSite<Netns>;
/// A NAT router of a [`NatLab`], with its knobs (kind, loss, conntrack timeouts).
pub type NatRouter = portdistrict_testkit::nat::NatRouter<Netns>;

/// Address family of an underlay or tunnel address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The `-4` / `-6` flag most tools accept.
    pub fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
}

#[cfg(test)]
mod socket_dir {
    /// The test tooling's spelling of the UAPI directory is the protocol core's.
    #[test]
    fn testkit_and_the_protocol_core_agree() {
        assert_eq!(
            portdistrict_testkit::netns::WIREGUARD_RUN_DIR,
            portdistrict_wg::uapi::SOCKET_DIR
        );
    }
}
