//! An exit-node provider: forwarding from the tunnel to the uplink for authorized
//! consumers only, masqueraded behind the uplink's address, and nothing else from the
//! tunnel.
//!
//! The table (`inet`, its own) holds the authorized consumers' inner addresses in two
//! sets, and the destinations consumers may not reach in two interval sets: the private,
//! link-local, loopback, shared (100.64/10, the tunnel's own), multicast and reserved
//! ranges ([`BLOCKED_V4`], [`BLOCKED_V6`]; the cloud metadata services 169.254.169.254
//! and fd00:ec2::254 are in them) and the uplink's own prefixes. Forward: tunnel ->
//! uplink from an authorized address to an `--allow-dest` exception, then every blocked
//! destination dropped, then tunnel -> uplink from an authorized address, replies back,
//! and every other packet entering or leaving through the tunnel dropped. The
//! forwarding the provider switched on for others (IPv4 arriving on the uplink when its
//! flag was off, all of IPv6 when `net.ipv6.conf.all.forwarding` was off) is dropped
//! too, so that the uplink's neighbours cannot route through the provider; forwarding
//! the host did before is left alone. Postrouting: masquerade authorized sources out of
//! the uplink. Input from the tunnel: DNS and the in-tunnel exit request port (a
//! granted consumer proving its tunnel carries its traffic) from authorized consumers
//! only, on the provider's tunnel address only; the tunnel addresses are not reachable
//! from other interfaces. (New consumers ask over the exit channel, TCP outside the
//! tunnel.)
//!
//! Forwarding is switched on for the tunnel and the uplink only (IPv4 honours the
//! per-interface flag of the receiving interface); IPv6 has only a global switch, so
//! with IPv6 the forward chain is what confines it, and the uplink keeps accepting
//! router advertisements (`accept_ra = 2`) so that forwarding does not cost it its
//! default route.

use super::cidr::{outermost, Cidr};
use super::ops::address_add;
use super::{check_ifname, Plan, PolicyError, Sysctl};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The nftables table of the provider (family `inet`).
pub const EXIT_TABLE: &str = "portdistrict_exit";

/// IPv4 destinations a consumer may not reach (besides the uplink's own prefixes):
/// this network, private, shared address space (100.64/10: carrier-grade NAT and the
/// tunnel's own addresses), loopback, link-local (cloud metadata), IETF protocol
/// assignments, benchmarking, multicast, reserved and broadcast.
pub const BLOCKED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// IPv6 destinations a consumer may not reach (besides the uplink's own prefixes):
/// unspecified and loopback, IPv4-mapped, local-use NAT64, unique local (fd00:ec2::254
/// is a cloud metadata service; the tunnel's own /64 is one), link-local, multicast.
pub const BLOCKED_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 127),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// What a provider serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPolicy {
    /// The tunnel interface.
    pub tunnel: String,
    /// The interface towards the internet.
    pub uplink: String,
    /// The provider's own IPv4 address in the tunnel (resolver and negotiation).
    pub provider_v4: Ipv4Addr,
    /// The provider's own IPv6 address in the tunnel (with IPv6 offered).
    pub provider_v6: Option<Ipv6Addr>,
    /// Authorized consumers' inner IPv4 addresses.
    pub consumers_v4: Vec<Ipv4Addr>,
    /// Authorized consumers' inner IPv6 addresses (empty: no IPv6 offered).
    pub consumers_v6: Vec<Ipv6Addr>,
    /// Offer IPv6 to consumers (forwarding and masquerading it).
    pub ipv6: bool,
    /// The UDP port of exit negotiation inside the tunnel.
    pub negotiation_port: u16,
    /// The uplink's own prefixes (its addresses with their prefix lengths): blocked
    /// like the private ranges.
    pub uplink_prefixes: Vec<Cidr>,
    /// Destinations consumers may reach although they are blocked (`--allow-dest`).
    pub allow_dest: Vec<Cidr>,
    /// The host forwarded IPv4 arriving on the uplink before the provider started
    /// (`net.ipv4.conf.UPLINK.forwarding` was 1): such forwarding is left alone.
    pub uplink_forwarded_v4: bool,
    /// The host forwarded IPv6 before the provider started
    /// (`net.ipv6.conf.all.forwarding` was 1): such forwarding is left alone.
    pub forwarded_v6: bool,
}

impl ProviderPolicy {
    /// Checks the policy and computes its plan.
    pub fn plan(&self) -> Result<Plan, PolicyError> {
        check_ifname(&self.tunnel)?;
        check_ifname(&self.uplink)?;
        if self.tunnel == self.uplink {
            return Err(PolicyError::SameInterface(self.tunnel.clone()));
        }
        let mut sysctls = vec![
            Sysctl::new(format!("net.ipv4.conf.{}.forwarding", self.tunnel), "1"),
            Sysctl::new(format!("net.ipv4.conf.{}.forwarding", self.uplink), "1"),
        ];
        if self.ipv6 {
            sysctls.push(Sysctl::new(
                format!("net.ipv6.conf.{}.accept_ra", self.uplink),
                "2",
            ));
            sysctls.push(Sysctl::new("net.ipv6.conf.all.forwarding", "1"));
        }
        // The tunnel's addresses: the provider's end of the whole consumer range.
        let mut ip = vec![address_add(&self.tunnel, IpAddr::V4(self.provider_v4), 10)];
        if let Some(v6) = self.provider_v6.filter(|_| self.ipv6) {
            ip.push(address_add(&self.tunnel, IpAddr::V6(v6), 64));
        }
        Ok(Plan {
            nft_table: EXIT_TABLE,
            nft: self.ruleset(),
            sysctls,
            ip,
        })
    }

    /// The blocked destinations of one family: the fixed ranges and the uplink's
    /// prefixes, without those inside another.
    fn blocked(&self, v4: bool) -> Vec<Cidr> {
        let fixed: Vec<Cidr> = if v4 {
            BLOCKED_V4
                .iter()
                .map(|&(a, l)| Cidr::containing(IpAddr::V4(a), l))
                .collect()
        } else {
            BLOCKED_V6
                .iter()
                .map(|&(a, l)| Cidr::containing(IpAddr::V6(a), l))
                .collect()
        };
        let mut all = fixed;
        all.extend(self.uplink_prefixes.iter().filter(|p| p.is_ipv4() == v4));
        outermost(&all)
    }

    fn allowed(&self, v4: bool) -> Vec<Cidr> {
        let list: Vec<Cidr> = self
            .allow_dest
            .iter()
            .filter(|p| p.is_ipv4() == v4)
            .copied()
            .collect();
        outermost(&list)
    }

    fn ruleset(&self) -> String {
        let (t, u) = (&self.tunnel, &self.uplink);
        let (allowed4, allowed6) = (self.allowed(true), self.allowed(false));
        let allowed6 = if self.ipv6 { allowed6 } else { Vec::new() };
        let mut s = String::new();
        let _ = writeln!(s, "table inet {EXIT_TABLE}");
        let _ = writeln!(s, "delete table inet {EXIT_TABLE}");
        let _ = writeln!(s, "table inet {EXIT_TABLE} {{");
        let _ = writeln!(s, "\tset consumers4 {{");
        let _ = writeln!(s, "\t\ttype ipv4_addr;");
        write_elements(&mut s, self.consumers_v4.iter());
        let _ = writeln!(s, "\t}}");
        let _ = writeln!(s, "\tset consumers6 {{");
        let _ = writeln!(s, "\t\ttype ipv6_addr;");
        if self.ipv6 {
            write_elements(&mut s, self.consumers_v6.iter());
        }
        let _ = writeln!(s, "\t}}");
        write_interval_set(&mut s, "blocked4", "ipv4_addr", &self.blocked(true));
        if self.ipv6 {
            write_interval_set(&mut s, "blocked6", "ipv6_addr", &self.blocked(false));
        }
        if !allowed4.is_empty() {
            write_interval_set(&mut s, "allowed4", "ipv4_addr", &allowed4);
        }
        if !allowed6.is_empty() {
            write_interval_set(&mut s, "allowed6", "ipv6_addr", &allowed6);
        }

        let _ = writeln!(s, "\tchain forward {{");
        let _ = writeln!(
            s,
            "\t\ttype filter hook forward priority filter; policy accept;"
        );
        if !allowed4.is_empty() {
            let _ = writeln!(
                s,
                "\t\tiifname \"{t}\" oifname \"{u}\" ip saddr @consumers4 ip daddr @allowed4 accept"
            );
        }
        if !allowed6.is_empty() {
            let _ = writeln!(
                s,
                "\t\tiifname \"{t}\" oifname \"{u}\" ip6 saddr @consumers6 ip6 daddr @allowed6 accept"
            );
        }
        let _ = writeln!(s, "\t\tiifname \"{t}\" ip daddr @blocked4 counter drop");
        if self.ipv6 {
            let _ = writeln!(s, "\t\tiifname \"{t}\" ip6 daddr @blocked6 counter drop");
        }
        let _ = writeln!(
            s,
            "\t\tiifname \"{t}\" oifname \"{u}\" ip saddr @consumers4 accept"
        );
        if self.ipv6 {
            let _ = writeln!(
                s,
                "\t\tiifname \"{t}\" oifname \"{u}\" ip6 saddr @consumers6 accept"
            );
        }
        let _ = writeln!(
            s,
            "\t\tiifname \"{u}\" oifname \"{t}\" ct state established,related accept"
        );
        let _ = writeln!(s, "\t\tiifname \"{t}\" counter drop");
        let _ = writeln!(s, "\t\toifname \"{t}\" counter drop");
        if !self.uplink_forwarded_v4 {
            let _ = writeln!(s, "\t\tiifname \"{u}\" meta nfproto ipv4 counter drop");
        }
        if self.ipv6 && !self.forwarded_v6 {
            let _ = writeln!(s, "\t\tmeta nfproto ipv6 counter drop");
        }
        let _ = writeln!(s, "\t}}");

        let _ = writeln!(s, "\tchain postrouting {{");
        let _ = writeln!(
            s,
            "\t\ttype nat hook postrouting priority srcnat; policy accept;"
        );
        let _ = writeln!(s, "\t\toifname \"{u}\" ip saddr @consumers4 masquerade");
        if self.ipv6 {
            let _ = writeln!(s, "\t\toifname \"{u}\" ip6 saddr @consumers6 masquerade");
        }
        let _ = writeln!(s, "\t}}");

        let (p4, p6) = (self.provider_v4, self.provider_v6.filter(|_| self.ipv6));
        let _ = writeln!(s, "\tchain input {{");
        let _ = writeln!(
            s,
            "\t\ttype filter hook input priority filter; policy accept;"
        );
        let _ = writeln!(
            s,
            "\t\tiifname != {{ \"{t}\", \"lo\" }} ip daddr {p4} counter drop"
        );
        if let Some(p6) = p6 {
            let _ = writeln!(
                s,
                "\t\tiifname != {{ \"{t}\", \"lo\" }} ip6 daddr {p6} counter drop"
            );
        }
        let _ = writeln!(s, "\t\tiifname != \"{t}\" accept");
        let _ = writeln!(s, "\t\tct state established,related accept");
        let _ = writeln!(
            s,
            "\t\tip daddr {p4} ip saddr @consumers4 udp dport {} accept",
            self.negotiation_port
        );
        let _ = writeln!(
            s,
            "\t\tip daddr {p4} ip saddr @consumers4 meta l4proto {{ tcp, udp }} th dport 53 accept"
        );
        if let Some(p6) = p6 {
            let _ = writeln!(
                s,
                "\t\tip6 daddr {p6} ip6 saddr @consumers6 meta l4proto {{ tcp, udp }} th dport 53 accept"
            );
        }
        let _ = writeln!(s, "\t\tcounter drop");
        let _ = writeln!(s, "\t}}");
        let _ = writeln!(s, "}}");
        s
    }
}

/// An interval set of prefixes (never empty: callers leave empty ones out).
fn write_interval_set(s: &mut String, name: &str, ty: &str, prefixes: &[Cidr]) {
    let _ = writeln!(s, "\tset {name} {{");
    let _ = writeln!(s, "\t\ttype {ty};");
    let _ = writeln!(s, "\t\tflags interval;");
    write_elements(s, prefixes.iter());
    let _ = writeln!(s, "\t}}");
}

/// `elements = { a, b };` for a non-empty set (an empty set has no elements line).
fn write_elements<T: std::fmt::Display>(s: &mut String, items: impl Iterator<Item = T>) {
    let list: Vec<String> = items.map(|a| a.to_string()).collect();
    if !list.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn example() -> ProviderPolicy {
        ProviderPolicy {
            tunnel: "pdexit".into(),
            uplink: "eth0".into(),
            provider_v4: "100.64.0.1".parse().unwrap(),
            provider_v6: Some("fd7a:115c:a1e0::1".parse().unwrap()),
            consumers_v4: vec!["100.64.0.2".parse().unwrap(), "100.64.0.3".parse().unwrap()],
            consumers_v6: vec!["fd7a:115c:a1e0::2".parse().unwrap()],
            ipv6: true,
            negotiation_port: 51821,
            uplink_prefixes: vec![
                "203.0.113.0/24".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
                "2001:db8:5::/64".parse().unwrap(),
            ],
            allow_dest: Vec::new(),
            uplink_forwarded_v4: false,
            forwarded_v6: false,
        }
    }

    /// The lines of chain `name`.
    fn chain<'a>(nft: &'a str, name: &str) -> Vec<&'a str> {
        let from = nft.find(&format!("chain {name} {{")).unwrap();
        nft[from..]
            .lines()
            .skip(2)
            .take_while(|l| l.trim() != "}")
            .map(str::trim)
            .collect()
    }

    fn pos(lines: &[&str], rule: &str) -> usize {
        lines
            .iter()
            .position(|l| *l == rule)
            .unwrap_or_else(|| panic!("no rule {rule:?} in {lines:#?}"))
    }

    #[test]
    fn only_authorized_sources_are_forwarded_and_masqueraded() {
        let plan = example().plan().unwrap();
        assert!(plan.nft.contains("elements = { 100.64.0.2, 100.64.0.3 }"));
        assert!(plan
            .nft
            .contains("oifname \"eth0\" ip saddr @consumers4 masquerade"));
        // Anything else from or to the tunnel is dropped after the accepts.
        let fwd = chain(&plan.nft, "forward");
        let accept = pos(
            &fwd,
            "iifname \"pdexit\" oifname \"eth0\" ip saddr @consumers4 accept",
        );
        assert!(accept < pos(&fwd, "iifname \"pdexit\" counter drop"));
    }

    #[test]
    fn private_ranges_metadata_and_the_uplinks_prefixes_are_blocked_before_the_accept() {
        let plan = example().plan().unwrap();
        // 10.1.0.0/16 lies in 10/8: an interval set must not hold both.
        assert!(
            plan.nft.contains(
                "elements = { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, \
             172.16.0.0/12, 192.0.0.0/24, 192.168.0.0/16, 198.18.0.0/15, 224.0.0.0/4, \
             240.0.0.0/4, 203.0.113.0/24 }"
            ),
            "{}",
            plan.nft
        );
        assert!(
            plan.nft.contains(
                "elements = { ::/127, ::ffff:0.0.0.0/96, 64:ff9b:1::/48, fc00::/7, fe80::/10, \
             ff00::/8, 2001:db8:5::/64 }"
            ),
            "{}",
            plan.nft
        );
        let fwd = chain(&plan.nft, "forward");
        let accept4 = pos(
            &fwd,
            "iifname \"pdexit\" oifname \"eth0\" ip saddr @consumers4 accept",
        );
        let accept6 = pos(
            &fwd,
            "iifname \"pdexit\" oifname \"eth0\" ip6 saddr @consumers6 accept",
        );
        assert!(pos(&fwd, "iifname \"pdexit\" ip daddr @blocked4 counter drop") < accept4);
        assert!(pos(&fwd, "iifname \"pdexit\" ip6 daddr @blocked6 counter drop") < accept6);
        assert!(!plan.nft.contains("allowed"));
        let metadata = Cidr::containing("169.254.169.254".parse().unwrap(), 32);
        assert!(example()
            .blocked(true)
            .iter()
            .any(|b| b.contains(&metadata)));
        let metadata6 = Cidr::containing("fd00:ec2::254".parse().unwrap(), 128);
        assert!(example()
            .blocked(false)
            .iter()
            .any(|b| b.contains(&metadata6)));
    }

    #[test]
    fn allow_dest_opens_exceptions_before_the_blocks() {
        let mut p = example();
        p.allow_dest = vec![
            "169.254.169.254/32".parse().unwrap(),
            "fd00:ec2::254/128".parse().unwrap(),
        ];
        let plan = p.plan().unwrap();
        assert!(plan.nft.contains("set allowed4 {\n\t\ttype ipv4_addr;\n\t\tflags interval;\n\t\telements = { 169.254.169.254/32 }"));
        assert!(plan.nft.contains("elements = { fd00:ec2::254/128 }"));
        let fwd = chain(&plan.nft, "forward");
        let allow = pos(
            &fwd,
            "iifname \"pdexit\" oifname \"eth0\" ip saddr @consumers4 ip daddr @allowed4 accept",
        );
        assert!(allow < pos(&fwd, "iifname \"pdexit\" ip daddr @blocked4 counter drop"));
        let allow6 = pos(
            &fwd,
            "iifname \"pdexit\" oifname \"eth0\" ip6 saddr @consumers6 ip6 daddr @allowed6 accept",
        );
        assert!(allow6 < pos(&fwd, "iifname \"pdexit\" ip6 daddr @blocked6 counter drop"));
        // Without IPv6 offered, an IPv6 exception opens nothing.
        p.ipv6 = false;
        assert!(!p.plan().unwrap().nft.contains("allowed6"));
    }

    #[test]
    fn forwarding_the_provider_switched_on_for_others_is_dropped() {
        let fwd_of = |p: &ProviderPolicy| {
            chain(&p.plan().unwrap().nft, "forward")
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
        };
        let v4 = "iifname \"eth0\" meta nfproto ipv4 counter drop".to_owned();
        let v6 = "meta nfproto ipv6 counter drop".to_owned();
        let mut p = example();
        let f = fwd_of(&p);
        assert_eq!(f[f.len() - 2..], [v4.clone(), v6.clone()]);
        // What the host forwarded before is not ours to stop.
        p.uplink_forwarded_v4 = true;
        p.forwarded_v6 = true;
        let f = fwd_of(&p);
        assert!(!f.contains(&v4) && !f.contains(&v6), "{f:#?}");
        // No IPv6 offered: the provider does not touch IPv6 forwarding.
        let mut p = example();
        p.ipv6 = false;
        assert!(!fwd_of(&p).contains(&v6));
    }

    #[test]
    fn input_from_the_tunnel_reaches_only_the_tunnel_address() {
        let plan = example().plan().unwrap();
        let input = chain(&plan.nft, "input");
        assert_eq!(
            input,
            [
                "iifname != { \"pdexit\", \"lo\" } ip daddr 100.64.0.1 counter drop",
                "iifname != { \"pdexit\", \"lo\" } ip6 daddr fd7a:115c:a1e0::1 counter drop",
                "iifname != \"pdexit\" accept",
                "ct state established,related accept",
                "ip daddr 100.64.0.1 ip saddr @consumers4 udp dport 51821 accept",
                "ip daddr 100.64.0.1 ip saddr @consumers4 meta l4proto { tcp, udp } th dport 53 accept",
                "ip6 daddr fd7a:115c:a1e0::1 ip6 saddr @consumers6 meta l4proto { tcp, udp } th dport 53 accept",
                "counter drop",
            ]
        );
    }

    #[test]
    fn no_consumers_no_elements_and_no_ipv6_when_not_offered() {
        let mut p = example();
        p.consumers_v4.clear();
        p.ipv6 = false;
        let plan = p.plan().unwrap();
        assert!(!plan.nft.contains("elements = { 100.64.0"));
        assert!(!plan.nft.contains("ip6 "));
        assert!(!plan.nft.contains("blocked6"));
        assert!(plan.sysctls.iter().all(|s| !s.name.starts_with("net.ipv6")));
    }

    #[test]
    fn forwarding_is_per_interface_and_ra_kept_with_ipv6() {
        let plan = example().plan().unwrap();
        let names: Vec<&str> = plan.sysctls.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "net.ipv4.conf.pdexit.forwarding",
                "net.ipv4.conf.eth0.forwarding",
                "net.ipv6.conf.eth0.accept_ra",
                "net.ipv6.conf.all.forwarding"
            ]
        );
        assert!(!names.contains(&"net.ipv4.ip_forward"));
    }

    #[test]
    fn bad_policies_are_refused() {
        let mut p = example();
        p.uplink = p.tunnel.clone();
        assert_eq!(p.plan(), Err(PolicyError::SameInterface("pdexit".into())));
        let mut p = example();
        p.uplink = "eth 0".into();
        assert_eq!(p.plan(), Err(PolicyError::InterfaceName("eth 0".into())));
    }
}
