//! A NAT lab in network namespaces, for NAT-traversal tests: two hosts, each behind
//! its own NAT router, and a "public" namespace routing between the NATs and holding
//! a service address where tests run their servers (facilitator, DNS, the UDP echo
//! here).
//!
//! ```text
//!   host A 192.168.10.2 ── .1 router A 198.51.100.10 ──┐
//!                                                      public (198.51.100.1, SERVICE 203.0.113.1)
//!   host B 192.168.20.2 ── .1 router B 198.51.100.20 ──┘
//! ```
//!
//! [`NatLab::new`] builds it, each router with a [`NatKind`] (nftables rules in one
//! table per router, named with the run's pid; see [`ruleset`]). Hosts route by
//! default via their router; routers via `public`, which forwards between the two WANs
//! and delivers [`SERVICE`] (and whatever [`NatLab::add_service_address`] adds)
//! locally; what `public` sends towards the NATs comes from [`SERVICE`] unless its
//! socket is bound to another address. IPv4 only. Everything lives in namespaces created here, named
//! `pd-<pid>-<n>-nat-...`; dropping the lab deletes them (their processes ended
//! first), and with them interfaces, tables and conntrack state.
//!
//! The namespace type is a parameter ([`LabNamespace`]): the testkit's own
//! [`Namespace`] by default, or a suite's wrapper (netns-tests' `Netns`) so that its
//! helpers (daemons, Knot, CLI machines) take the lab's namespaces directly. The lab
//! has public fields and no `Drop` of its own, so a test can move a host namespace out
//! (`let host = lab.a.host;`) while keeping the routers' knobs (`lab.a.router`).
//!
//! Knobs, at any time after creation, on [`NatRouter`]: [`NatRouter::set_kind`]
//! (relax a symmetric NAT to port-restricted, ...; the table is replaced atomically,
//! existing mappings stay), [`NatRouter::set_loss`] (a percentage of forwarded
//! packets dropped), [`NatRouter::set_udp_timeouts`] (the namespace's conntrack UDP
//! timeouts, for keepalive tests). Code runs inside a namespace with
//! [`LabNamespace::run_in`]; [`LabNamespace::udp_bind`] gives a socket living there
//! (usable from any thread), and [`UdpEcho`] answers each datagram with the source
//! address it saw (the reflexive address, [`reflexive`]).
//!
//! ```no_run
//! use portdistrict_testkit::nat::{reflexive, LabNamespace, NatKind, NatLab, UdpEcho, SERVICE};
//! # fn main() -> Result<(), portdistrict_testkit::Error> {
//! let mut lab: NatLab = NatLab::new(NatKind::PortRestricted, NatKind::Symmetric)?;
//! let echo = UdpEcho::start(&lab.public, (SERVICE, 3478).into())?;
//! let sock = lab.a.host.udp_bind(([0, 0, 0, 0], 40000).into())?;
//! let seen = reflexive(&sock, echo.addr(), std::time::Duration::from_secs(2))?;
//! assert_eq!(seen, Some(([198, 51, 100, 10], 40000).into()));
//! lab.b.router.set_kind(NatKind::PortRestricted)?; // relax B
//! # Ok(()) }
//! ```

mod echo;
mod ruleset;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

pub use echo::{reflexive, UdpEcho};
pub use ruleset::{ruleset, Rules};

use crate::names::{unique_ifname, unique_name};
use crate::netns::{self, Namespace};
use crate::process::{cmd, run, run_with_input, DEFAULT_GRACE};
use crate::Error;

/// The service address in `public` (on its loopback), reachable from both NATs.
pub const SERVICE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// `public`'s address on both WAN links (the routers' next hop).
pub const PUBLIC_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Prefix of the lab's namespace names (the netns suites sweep `pd-<dead pid>-...`).
pub const NAME_PREFIX: &str = "pd";
/// Bound for each command (`ip`, `nft`) the lab runs.
const LIMIT: Duration = Duration::from_secs(10);

/// How a NAT router maps and filters. Every kind masquerades on the WAN and drops new
/// inbound flows in `forward` (except a full cone's mapped port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// `masquerade` (endpoint-independent mapping, source port kept when free); new
    /// inbound flows dropped in `forward` and `input`: only the exact remote address
    /// and port a host sent to can answer.
    PortRestricted,
    /// [`NatKind::PortRestricted`] plus a `dnat` of WAN UDP `port` to the host's
    /// `port`: anyone can reach the host there. The host sends from `port` (kept by
    /// masquerade), so its mapping and the exposed port are the same.
    FullCone {
        /// The host's UDP port, exposed as the same port on the WAN address.
        port: u16,
    },
    /// `masquerade fully-random`: a new random port per destination; new inbound flows
    /// dropped in `forward` and `input`.
    Symmetric,
    /// `masquerade`, new inbound flows dropped in `forward` but the router's own
    /// `input` accepts them: an early packet from a peer creates a conntrack entry that
    /// clashes with the host's own mapping towards that peer (see the NAT lab notes).
    AcceptsInput,
}

/// One side of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// Router A (198.51.100.10), LAN 192.168.10.0/24.
    A,
    /// Router B (198.51.100.20), LAN 192.168.20.0/24.
    B,
}

impl Site {
    /// Both sites.
    pub const ALL: [Site; 2] = [Site::A, Site::B];

    fn number(self) -> u8 {
        match self {
            Site::A => 10,
            Site::B => 20,
        }
    }

    /// The router's public (WAN) address: 198.51.100.10 or .20.
    pub fn wan(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, self.number())
    }

    /// The router's LAN address: 192.168.10.1 or 192.168.20.1.
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, self.number(), 1)
    }

    /// The host's address: 192.168.10.2 or 192.168.20.2.
    pub fn host(self) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, self.number(), 2)
    }

    /// "a" or "b", for names.
    pub fn label(self) -> &'static str {
        match self {
            Site::A => "a",
            Site::B => "b",
        }
    }
}

/// A network namespace the lab can create and enter: the testkit's [`Namespace`], or
/// a suite's own wrapper of it.
pub trait LabNamespace: Sized {
    /// Creates a namespace with a unique name (containing the pid) for `role`, its
    /// loopback up, deleted on drop.
    fn create(role: &str) -> Result<Self, Error>;

    /// The namespace's name (`/run/netns/NAME`).
    fn name(&self) -> &str;

    /// Runs `f` on a thread inside the namespace ([`netns::run_in`]).
    fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        netns::run_in(self.name(), f)
    }

    /// A UDP socket bound to `addr` inside the namespace; it stays there whichever
    /// thread uses it.
    fn udp_bind(&self, addr: SocketAddr) -> Result<UdpSocket, Error> {
        self.run_in(|| UdpSocket::bind(addr))?
            .map_err(|source| Error::Socket {
                action: format!("binding UDP {addr} in network namespace {}", self.name()),
                source,
            })
    }

    /// Writes `value` to `/proc/sys/<key with dots as slashes>` inside the namespace.
    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let path = std::path::PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.run_in(|| std::fs::write(&path, value))?
            .map_err(|source| Error::Io {
                action: "cannot write",
                path,
                source,
            })
    }
}

impl LabNamespace for Namespace {
    fn create(role: &str) -> Result<Namespace, Error> {
        Namespace::create(&unique_name(NAME_PREFIX, role), DEFAULT_GRACE)
    }

    fn name(&self) -> &str {
        Namespace::name(self)
    }
}

/// The lab: `public` and two sites. No `Drop` of its own: each namespace deletes
/// itself, so fields can be moved out.
#[derive(Debug)]
pub struct NatLab<N = Namespace> {
    /// The internet: routes between the WANs, holds [`SERVICE`].
    pub public: N,
    /// Router A and host A.
    pub a: NatSite<N>,
    /// Router B and host B.
    pub b: NatSite<N>,
}

/// A NAT router and the host behind it.
#[derive(Debug)]
pub struct NatSite<N = Namespace> {
    /// The router (and its knobs).
    pub router: NatRouter<N>,
    /// The host, default route via the router.
    pub host: N,
}

/// A NAT router namespace: WAN veth to `public`, LAN veth to its host, forwarding on,
/// one nftables table.
#[derive(Debug)]
pub struct NatRouter<N = Namespace> {
    ns: N,
    site: Site,
    table: String,
    wan: String,
    lan: String,
    kind: NatKind,
    loss: u8,
}

impl<N: LabNamespace> NatLab<N> {
    /// Builds the topology with router A of kind `a` and router B of kind `b`. On
    /// error, what was created is deleted again.
    pub fn new(a: NatKind, b: NatKind) -> Result<NatLab<N>, Error> {
        let public = N::create("nat-public")?;
        let a = NatSite::create(Site::A, a)?;
        let b = NatSite::create(Site::B, b)?;
        ip(
            &public,
            &["addr", "add", &format!("{SERVICE}/32"), "dev", "lo"],
        )?;
        forwarding(&public)?;
        for site in [&a, &b] {
            site.wire(&public)?;
        }
        Ok(NatLab { public, a, b })
    }

    /// Site `site`.
    pub fn site(&self, site: Site) -> &NatSite<N> {
        match site {
            Site::A => &self.a,
            Site::B => &self.b,
        }
    }

    /// Site `site`, to turn its router's knobs.
    pub fn site_mut(&mut self, site: Site) -> &mut NatSite<N> {
        match site {
            Site::A => &mut self.a,
            Site::B => &mut self.b,
        }
    }

    /// Adds `addr` to `public`'s loopback: another service address both NATs reach.
    pub fn add_service_address(&self, addr: Ipv4Addr) -> Result<(), Error> {
        ip(
            &self.public,
            &["addr", "add", &format!("{addr}/32"), "dev", "lo"],
        )
    }
}

impl<N: LabNamespace> NatSite<N> {
    fn create(site: Site, kind: NatKind) -> Result<NatSite<N>, Error> {
        let l = site.label();
        let ns = N::create(&format!("nat-{l}-router"))?;
        let router = NatRouter {
            // The namespace's unique name (pid, counter) in nft's identifier alphabet.
            table: ns.name().replace('-', "_"),
            ns,
            site,
            wan: unique_ifname("pdn"),
            lan: unique_ifname("pdn"),
            kind,
            loss: 0,
        };
        let host = N::create(&format!("nat-{l}-host"))?;
        Ok(NatSite { router, host })
    }

    /// Creates and addresses both veths, routes, forwarding and the rules.
    fn wire(&self, public: &N) -> Result<(), Error> {
        let (r, site) = (&self.router, self.router.site);
        let (wan_pub, lan_host) = (format!("{}p", r.wan), format!("{}h", r.lan));
        veth(&r.ns, &r.wan, public, &wan_pub)?;
        veth(&r.ns, &r.lan, &self.host, &lan_host)?;
        let (wan, gw) = (site.wan().to_string(), PUBLIC_GATEWAY.to_string());
        ip(&r.ns, &["addr", "add", &format!("{wan}/32"), "dev", &r.wan])?;
        ip(&r.ns, &["route", "add", &format!("{gw}/32"), "dev", &r.wan])?;
        ip(
            &r.ns,
            &["route", "add", "default", "via", &gw, "dev", &r.wan],
        )?;
        let lan = format!("{}/24", site.gateway());
        ip(&r.ns, &["addr", "add", &lan, "dev", &r.lan])?;
        ip(
            public,
            &["addr", "add", &format!("{gw}/32"), "dev", &wan_pub],
        )?;
        ip(
            public,
            &["route", "add", &format!("{wan}/32"), "dev", &wan_pub],
        )?;
        let host = format!("{}/24", site.host());
        ip(&self.host, &["addr", "add", &host, "dev", &lan_host])?;
        let gw = site.gateway().to_string();
        ip(&self.host, &["route", "add", "default", "via", &gw])?;
        forwarding(&r.ns)?;
        r.apply(r.kind, r.loss)
    }
}

impl<N: LabNamespace> NatRouter<N> {
    /// The router's namespace.
    pub fn ns(&self) -> &N {
        &self.ns
    }

    /// Which site it is.
    pub fn site(&self) -> Site {
        self.site
    }

    /// Its public address ([`Site::wan`]).
    pub fn wan_addr(&self) -> Ipv4Addr {
        self.site.wan()
    }

    /// The current kind.
    pub fn kind(&self) -> NatKind {
        self.kind
    }

    /// The current loss percentage.
    pub fn loss(&self) -> u8 {
        self.loss
    }

    /// The WAN interface (in the router's namespace).
    pub fn wan_ifname(&self) -> &str {
        &self.wan
    }

    /// The LAN interface (in the router's namespace).
    pub fn lan_ifname(&self) -> &str {
        &self.lan
    }

    /// The nftables table's name (family `ip`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Makes the NAT behave as `kind` from now on, replacing its table atomically
    /// (conntrack entries, i.e. existing mappings, are kept). Unchanged on error.
    pub fn set_kind(&mut self, kind: NatKind) -> Result<(), Error> {
        self.apply(kind, self.loss)?;
        self.kind = kind;
        Ok(())
    }

    /// Drops `percent` (0-100) of forwarded packets, both directions, from now on
    /// (`numgen random mod 100 < percent`); 0 clears it. Panics above 100 (a bug in
    /// the caller). Unchanged on error.
    pub fn set_loss(&mut self, percent: u8) -> Result<(), Error> {
        assert!(percent <= 100, "loss {percent}% is above 100%");
        self.apply(self.kind, percent)?;
        self.loss = percent;
        Ok(())
    }

    /// Sets the namespace's conntrack UDP timeouts (whole seconds, at least 1):
    /// `unreplied` for flows that have not seen an answer
    /// (`nf_conntrack_udp_timeout`), `stream` for the others
    /// (`nf_conntrack_udp_timeout_stream`). They apply from each flow's next packet.
    pub fn set_udp_timeouts(&self, unreplied: Duration, stream: Duration) -> Result<(), Error> {
        let secs = |d: Duration| d.as_secs().max(1).to_string();
        let base = "net.netfilter.nf_conntrack_udp_timeout";
        self.ns.write_sysctl(base, &secs(unreplied))?;
        self.ns
            .write_sysctl(&format!("{base}_stream"), &secs(stream))
    }

    /// `nft list table` of the router's table (with the rules' counters), for
    /// messages.
    pub fn listing(&self) -> Result<String, Error> {
        let argv = ["nft", "list", "table", "ip", &self.table];
        run(&mut in_ns(&self.ns, &argv), LIMIT)
    }

    /// The router's conntrack table (`/proc/thread-self/net/nf_conntrack` read inside
    /// its namespace), for messages and for checking which mapping a flow got.
    pub fn conntrack(&self) -> Result<String, Error> {
        let path = std::path::PathBuf::from("/proc/thread-self/net/nf_conntrack");
        self.ns
            .run_in(|| std::fs::read_to_string(&path))?
            .map_err(|source| Error::Io {
                action: "cannot read",
                path,
                source,
            })
    }

    /// What the table holds for `kind` and `loss`.
    pub fn rules(&self, kind: NatKind, loss: u8) -> String {
        ruleset(&Rules {
            table: &self.table,
            wan: &self.wan,
            host: self.site.host(),
            kind,
            loss,
        })
    }

    fn apply(&self, kind: NatKind, loss: u8) -> Result<(), Error> {
        let rules = self.rules(kind, loss);
        run_with_input(&mut in_ns(&self.ns, &["nft", "-f", "-"]), &rules, LIMIT).map(drop)
    }
}

/// `ip netns exec NS argv...` with `LC_ALL=C`.
fn in_ns(ns: &impl LabNamespace, argv: &[&str]) -> std::process::Command {
    let mut c = cmd(&["ip", "netns", "exec", ns.name()]);
    c.args(argv).env("LC_ALL", "C");
    c
}

/// `ip -n NS args...`.
fn ip(ns: &impl LabNamespace, args: &[&str]) -> Result<(), Error> {
    let mut c = cmd(&["ip", "-n", ns.name()]);
    c.args(args).env("LC_ALL", "C");
    run(&mut c, LIMIT).map(drop)
}

/// A veth pair created directly in its two namespaces (nothing in the caller's), both
/// ends up.
fn veth(a: &impl LabNamespace, a_if: &str, b: &impl LabNamespace, b_if: &str) -> Result<(), Error> {
    run(
        &mut cmd(&[
            "ip",
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ]),
        LIMIT,
    )?;
    ip(a, &["link", "set", a_if, "up"])?;
    ip(b, &["link", "set", b_if, "up"])
}

fn forwarding(ns: &impl LabNamespace) -> Result<(), Error> {
    ns.write_sysctl("net.ipv4.ip_forward", "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_addresses() {
        assert_eq!(Site::A.wan(), Ipv4Addr::new(198, 51, 100, 10));
        assert_eq!(Site::B.wan(), Ipv4Addr::new(198, 51, 100, 20));
        assert_eq!(Site::A.host(), Ipv4Addr::new(192, 168, 10, 2));
        assert_eq!(Site::B.gateway(), Ipv4Addr::new(192, 168, 20, 1));
    }
}
