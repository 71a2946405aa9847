//! A consumer in system mode: all IPv4 (and, when the provider offers it, IPv6)
//! traffic into the tunnel by fwmark policy routing (the wg-quick pattern), behind a
//! kill switch that drops everything else.
//!
//! The kill switch is one `inet` table with `policy drop` on output, input and forward.
//! Output allows, in this order: loopback; DNS only to the tunnel resolver through the
//! tunnel (every other DNS is dropped here, before any LAN allowance); the tunnel; the
//! marked WireGuard UDP to the provider's endpoints; DHCP, DHCPv6 and neighbour
//! discovery; the LAN ranges only with `allow_lan`. Input drops traffic for the tunnel
//! addresses arriving on any other interface (CVE-2019-14899) before anything else is
//! accepted. The table holds no reference to a process: when the dataplane or the CLI
//! dies the rules stay and the machine is blocked, not open.

use super::ops::address_add as address;
use super::{
    check_ifname, Family, IpOp, Object, Plan, PolicyError, RouteOp, RuleOp, Sysctl, Table, Verb,
};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The nftables table of the kill switch (family `inet`).
pub const KILL_SWITCH_TABLE: &str = "portdistrict_killswitch";

/// Rule priorities: looked up before `main` (32766), in this order.
const PRIO_SUPPRESS: u32 = 32760;
const PRIO_TUNNEL: u32 = 32761;

/// IPv4 ranges that count as the LAN with `allow_lan`.
const LAN_V4: &str = "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16";
/// IPv6 ranges that count as the LAN with `allow_lan` (link-local, ULA, multicast).
const LAN_V6: &str = "fe80::/10, fc00::/7, ff00::/8";

/// What a consumer in system mode asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerPolicy {
    /// The tunnel interface (the dataplane's TUN device).
    pub tunnel: String,
    /// The mark the dataplane puts on its own UDP socket (`fwmark`), which is also the
    /// routing table's selector.
    pub fwmark: u32,
    /// The routing table holding the default routes into the tunnel.
    pub table: u32,
    /// The provider's WireGuard endpoints: the only underlay traffic allowed out.
    pub endpoints: Vec<SocketAddr>,
    /// The TCP port of the provider's exit channel on the endpoints' addresses
    /// (marked, as WireGuard is), so that a repair can ask for its grant again
    /// behind the kill switch; `None` when the invite has no channel.
    pub channel_port: Option<u16>,
    /// Our IPv4 address inside the tunnel.
    pub inner_v4: Ipv4Addr,
    /// Our IPv6 address inside the tunnel; `None` when the provider offers no IPv6, and
    /// then IPv6 is blocked, never sent around the tunnel.
    pub inner_v6: Option<Ipv6Addr>,
    /// The DNS resolver reachable through the tunnel: the only DNS server allowed.
    pub resolver: IpAddr,
    /// Allow traffic to and from the LAN ranges (never DNS to them).
    pub allow_lan: bool,
}

impl ConsumerPolicy {
    /// Checks the policy and computes its plan.
    pub fn plan(&self) -> Result<Plan, PolicyError> {
        self.check()?;
        let mut ip = Vec::new();
        let mut families = vec![Family::V4];
        if self.inner_v6.is_some() {
            families.push(Family::V6);
        }
        ip.push(address(&self.tunnel, IpAddr::V4(self.inner_v4), 32));
        if let Some(v6) = self.inner_v6 {
            ip.push(address(&self.tunnel, IpAddr::V6(v6), 128));
        }
        let table = Table::Id(self.table);
        for family in families {
            ip.push(IpOp::new(
                Verb::Add,
                Object::Route(RouteOp {
                    family,
                    dst: None,
                    dev: self.tunnel.clone(),
                    table,
                }),
            ));
            ip.push(IpOp::new(
                Verb::Add,
                Object::Rule(RuleOp {
                    family,
                    priority: PRIO_TUNNEL,
                    not: true,
                    fwmark: Some(self.fwmark),
                    table,
                    suppress_prefixlength: None,
                }),
            ));
            ip.push(IpOp::new(
                Verb::Add,
                Object::Rule(RuleOp {
                    family,
                    priority: PRIO_SUPPRESS,
                    not: false,
                    fwmark: None,
                    table: Table::Main,
                    suppress_prefixlength: Some(0),
                }),
            ));
        }
        Ok(Plan {
            nft_table: KILL_SWITCH_TABLE,
            nft: self.ruleset(),
            // Replies to marked packets pass the reverse-path filter (as wg-quick does).
            sysctls: vec![Sysctl::new("net.ipv4.conf.all.src_valid_mark", "1")],
            ip,
        })
    }

    fn check(&self) -> Result<(), PolicyError> {
        check_ifname(&self.tunnel)?;
        if self.fwmark == 0 {
            return Err(PolicyError::ZeroMark);
        }
        if matches!(self.table, 0 | 253..=255) {
            return Err(PolicyError::ReservedTable(self.table));
        }
        if self.endpoints.is_empty() {
            return Err(PolicyError::NoEndpoint);
        }
        if self.resolver.is_ipv6() && self.inner_v6.is_none() {
            return Err(PolicyError::ResolverFamily(self.resolver));
        }
        Ok(())
    }

    /// The `nft -f` script: creates the table if missing, deletes it and defines it
    /// again, all in one transaction.
    fn ruleset(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "table inet {KILL_SWITCH_TABLE}");
        let _ = writeln!(s, "delete table inet {KILL_SWITCH_TABLE}");
        let _ = writeln!(s, "table inet {KILL_SWITCH_TABLE} {{");
        self.output_chain(&mut s);
        self.input_chain(&mut s);
        chain::<&str>(&mut s, "forward", &[]);
        let _ = writeln!(s, "}}");
        s
    }

    fn output_chain(&self, s: &mut String) {
        let t = &self.tunnel;
        let r = self.resolver;
        let mut rules = vec![
            "oif \"lo\" accept".to_owned(),
            format!(
                "meta l4proto {{ tcp, udp }} th dport 53 oifname \"{t}\" {} daddr {r} accept",
                ip_kw(r)
            ),
            "meta l4proto { tcp, udp } th dport 53 counter drop".to_owned(),
            format!("oifname \"{t}\" accept"),
        ];
        rules.extend(self.underlay_holes(Direction::Out));
        rules.push("counter drop".to_owned());
        chain(s, "output", &rules);
    }

    fn input_chain(&self, s: &mut String) {
        let t = &self.tunnel;
        let mut rules = vec![
            "iif \"lo\" accept".to_owned(),
            format!("iifname != \"{t}\" ip daddr {} drop", self.inner_v4),
        ];
        if let Some(v6) = self.inner_v6 {
            rules.push(format!("iifname != \"{t}\" ip6 daddr {v6} drop"));
        }
        rules.push("ct state established,related accept".to_owned());
        rules.extend(self.underlay_holes(Direction::In));
        rules.push("counter drop".to_owned());
        chain(s, "input", &rules);
    }

    /// What may cross the underlay in `dir`: WireGuard with the provider (marked on
    /// the way out), DHCP, DHCPv6, neighbour discovery, and the LAN with `allow_lan`.
    fn underlay_holes(&self, dir: Direction) -> Vec<String> {
        let (addr, port, mark) = match dir {
            Direction::Out => ("daddr", "dport", format!("meta mark {:#x} ", self.fwmark)),
            Direction::In => ("saddr", "sport", String::new()),
        };
        let mut rules: Vec<String> = self
            .endpoints
            .iter()
            .map(|ep| {
                let (kw, ip, p) = (ip_kw(ep.ip()), ep.ip(), ep.port());
                format!("{mark}{kw} {addr} {ip} udp {port} {p} accept")
            })
            .collect();
        // The exit channel out only: its replies are `ct state established` (no
        // stateless hole from the provider's address to our TCP ports).
        if let (Some(p), Direction::Out) = (self.channel_port, dir) {
            let mut seen = Vec::new();
            for ip in self.endpoints.iter().map(SocketAddr::ip) {
                if !seen.contains(&ip) {
                    seen.push(ip);
                    let kw = ip_kw(ip);
                    rules.push(format!("{mark}{kw} {addr} {ip} tcp {port} {p} accept"));
                }
            }
        }
        rules.extend(link_holes(dir).iter().map(|r| (*r).to_owned()));
        if self.allow_lan {
            rules.push(format!("ip {addr} {{ {LAN_V4} }} accept"));
            rules.push(format!("ip6 {addr} {{ {LAN_V6} }} accept"));
        }
        rules
    }
}

/// DHCP, DHCPv6 and neighbour discovery, each limited to what cannot leave the link
/// it is sent on, so that none of them can carry data off the machine's link:
/// DHCPv4 out only as a broadcast (a renewal that would go to the server's unicast
/// address waits for the broadcast of rebinding instead, as with Mullvad's), DHCPv6
/// only from a link-local address to the servers' link-scope group `ff02::1:2`,
/// replies only from link-local addresses, and neighbour discovery only with the hop
/// limit 255 that RFC 4861 requires (a receiver drops anything routed) and, on the
/// way out, to link-scope destinations. They hold on whichever interface is the
/// uplink at the time (ethernet, then Wi-Fi) rather than on one named interface,
/// which would cut DHCP on the next; a packet to a link-scope destination cannot
/// leave that link whatever the interface.
pub(super) fn link_holes(dir: Direction) -> &'static [&'static str] {
    match dir {
        Direction::Out => &[
            "ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept",
            "ip6 saddr fe80::/10 ip6 daddr ff02::1:2 udp sport 546 udp dport 547 accept",
            "ip6 daddr ff02::2 ip6 hoplimit 255 icmpv6 type nd-router-solicit accept",
            "ip6 daddr { fe80::/10, ff02::1:ff00:0/104 } ip6 hoplimit 255 icmpv6 type nd-neighbor-solicit accept",
            "ip6 daddr { fe80::/10, ff02::1 } ip6 hoplimit 255 icmpv6 type nd-neighbor-advert accept",
        ],
        Direction::In => &[
            "udp sport 67 udp dport 68 accept",
            "ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept",
            "ip6 saddr fe80::/10 ip6 hoplimit 255 icmpv6 type nd-router-advert accept",
            "ip6 hoplimit 255 icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept",
        ],
    }
}

/// Which way a rule looks at the underlay.
#[derive(Clone, Copy)]
pub(super) enum Direction {
    /// Leaving the machine.
    Out,
    /// Arriving.
    In,
}

/// A base chain with `policy drop` at `hook` (the chain's name) holding `rules`.
pub(super) fn chain<R: AsRef<str>>(s: &mut String, hook: &str, rules: &[R]) {
    let _ = writeln!(s, "\tchain {hook} {{");
    let _ = writeln!(
        s,
        "\t\ttype filter hook {hook} priority filter; policy drop;"
    );
    for r in rules {
        let _ = writeln!(s, "\t\t{}", r.as_ref());
    }
    let _ = writeln!(s, "\t}}");
}

/// The nftables address keyword for `addr`'s family.
fn ip_kw(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn example() -> ConsumerPolicy {
        ConsumerPolicy {
            tunnel: "pd0".into(),
            fwmark: 0xca6c,
            table: 51820,
            endpoints: vec!["203.0.113.5:51820".parse().unwrap()],
            channel_port: Some(51820),
            inner_v4: "100.64.0.2".parse().unwrap(),
            inner_v6: Some("fd7a:115c:a1e0::2".parse().unwrap()),
            resolver: "100.64.0.1".parse().unwrap(),
            allow_lan: false,
        }
    }

    fn output_chain(nft: &str) -> Vec<&str> {
        let start = nft.find("chain output").unwrap();
        let end = start + nft[start..].find("\t}").unwrap();
        nft[start..end].lines().map(str::trim).collect()
    }

    #[test]
    fn dns_is_decided_before_the_tunnel_and_the_lan() {
        let mut p = example();
        p.allow_lan = true;
        let plan = p.plan().unwrap();
        let out = output_chain(&plan.nft);
        let pos = |needle: &str| {
            out.iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle} missing in {out:#?}"))
        };
        let dns_ok = pos("th dport 53 oifname \"pd0\" ip daddr 100.64.0.1 accept");
        let dns_drop = pos("th dport 53 counter drop");
        assert!(dns_ok < dns_drop);
        assert!(dns_drop < pos("oifname \"pd0\" accept"));
        assert!(dns_drop < pos("ip daddr { 10.0.0.0/8"));
        assert_eq!(out.last(), Some(&"counter drop"));
    }

    #[test]
    fn lan_only_when_asked() {
        let plan = example().plan().unwrap();
        assert!(!plan.nft.contains("10.0.0.0/8"), "{}", plan.nft);
        assert!(!plan.nft.contains("{ fe80::/10, fc00::/7"));
        let mut p = example();
        p.allow_lan = true;
        let lan = p.plan().unwrap();
        assert!(lan.nft.contains("ip daddr { 10.0.0.0/8"));
        assert!(lan.nft.contains("ip6 saddr { fe80::/10"));
    }

    #[test]
    fn spoofed_tunnel_addresses_are_dropped_first_on_input() {
        let plan = example().plan().unwrap();
        let input: Vec<&str> = plan.nft[plan.nft.find("chain input").unwrap()..]
            .lines()
            .map(str::trim)
            .collect();
        let cve4 = input
            .iter()
            .position(|l| *l == "iifname != \"pd0\" ip daddr 100.64.0.2 drop")
            .unwrap();
        let cve6 = input
            .iter()
            .position(|l| *l == "iifname != \"pd0\" ip6 daddr fd7a:115c:a1e0::2 drop")
            .unwrap();
        let first_accept_after_lo = input
            .iter()
            .skip(3)
            .position(|l| l.ends_with("accept"))
            .unwrap()
            + 3;
        assert!(cve4 < first_accept_after_lo && cve6 < first_accept_after_lo);
    }

    #[test]
    fn without_provider_ipv6_no_v6_route_and_the_firewall_blocks_it() {
        let mut p = example();
        p.inner_v6 = None;
        let plan = p.plan().unwrap();
        assert!(plan.ip.iter().all(|c| c.family() == Family::V4));
        // Only marked WireGuard, DHCP and ND leave: no rule accepts other IPv6 out.
        let out = output_chain(&plan.nft);
        assert!(out
            .iter()
            .filter(|l| l.starts_with("ip6"))
            .all(|l| link_holes(Direction::Out).contains(l)));
        assert!(plan.nft.contains("policy drop;"));
    }

    #[test]
    fn dhcp_and_neighbour_discovery_holes_stay_on_the_link() {
        let plan = example().plan().unwrap();
        let out = output_chain(&plan.nft);
        let holes: Vec<&&str> = out
            .iter()
            .filter(|l| l.contains("dport 67") || l.contains("dport 547") || l.contains("icmpv6"))
            .collect();
        assert_eq!(holes.len(), 5, "{out:#?}");
        for h in holes {
            let link_scope = h.contains("ip daddr 255.255.255.255")
                || (h.contains("ip6 daddr ff02::") || h.contains("ip6 daddr {"))
                    && !h.contains("ip6 daddr { fe80::/10, fc00::/7");
            assert!(link_scope, "{h}: not limited to link-scope destinations");
            if h.contains("icmpv6") {
                assert!(h.contains("ip6 hoplimit 255"), "{h}");
            }
        }
        // No rule lets DHCP or DHCPv6 ports out on their own (the old holes).
        assert!(!out.contains(&"udp sport 68 udp dport 67 accept"));
        assert!(!out.contains(&"udp sport 546 udp dport 547 accept"));
    }

    #[test]
    fn every_endpoint_gets_a_marked_hole_and_nothing_else() {
        let mut p = example();
        p.endpoints.push("[2001:db8::5]:4500".parse().unwrap());
        let plan = p.plan().unwrap();
        assert!(plan
            .nft
            .contains("meta mark 0xca6c ip daddr 203.0.113.5 udp dport 51820 accept"));
        assert!(plan
            .nft
            .contains("meta mark 0xca6c ip6 daddr 2001:db8::5 udp dport 4500 accept"));
        assert!(plan
            .nft
            .contains("ip6 saddr 2001:db8::5 udp sport 4500 accept"));
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        type Breakage = fn(&mut ConsumerPolicy);
        let cases: [(Breakage, PolicyError); 5] = [
            (
                |p| p.tunnel = "bad name".into(),
                PolicyError::InterfaceName("bad name".into()),
            ),
            (|p| p.fwmark = 0, PolicyError::ZeroMark),
            (|p| p.table = 254, PolicyError::ReservedTable(254)),
            (|p| p.endpoints.clear(), PolicyError::NoEndpoint),
            (
                |p| {
                    p.inner_v6 = None;
                    p.resolver = "fd00::1".parse().unwrap();
                },
                PolicyError::ResolverFamily("fd00::1".parse().unwrap()),
            ),
        ];
        for (break_it, want) in cases {
            let mut p = example();
            break_it(&mut p);
            assert_eq!(p.plan(), Err(want.clone()));
            assert!(!want.to_string().is_empty());
        }
    }
}
