//! An exit-node provider: forwarding from the tunnel to the uplink for authorized
//! consumers only, masqueraded behind the uplink's address, and nothing else from the
//! tunnel.
//!
//! The table (`inet`, its own) holds the authorized consumers' inner addresses in two
//! sets. Forward: tunnel -> uplink from an authorized address, replies back, and every
//! other packet entering or leaving through the tunnel dropped; traffic between other
//! interfaces of the host is not this table's business (its policy is accept).
//! Postrouting: masquerade authorized sources out of the uplink. Input from the tunnel:
//! DNS from authorized consumers (the forwarder on the tunnel address), and the exit
//! negotiation port from any peer (a consumer that is not authorized yet).
//!
//! Forwarding is switched on for the tunnel and the uplink only (IPv4 honours the
//! per-interface flag of the receiving interface); IPv6 has only a global switch, so
//! with IPv6 the forward chain is what confines it, and the uplink keeps accepting
//! router advertisements (`accept_ra = 2`) so that forwarding does not cost it its
//! default route.

use super::{check_ifname, Plan, PolicyError, Sysctl};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The nftables table of the provider (family `inet`).
pub const EXIT_TABLE: &str = "portdistrict_exit";

/// What a provider serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPolicy {
    /// The tunnel interface.
    pub tunnel: String,
    /// The interface towards the internet.
    pub uplink: String,
    /// Authorized consumers' inner IPv4 addresses.
    pub consumers_v4: Vec<Ipv4Addr>,
    /// Authorized consumers' inner IPv6 addresses (empty: no IPv6 offered).
    pub consumers_v6: Vec<Ipv6Addr>,
    /// Offer IPv6 to consumers (forwarding and masquerading it).
    pub ipv6: bool,
    /// The UDP port of exit negotiation inside the tunnel.
    pub negotiation_port: u16,
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
        Ok(Plan {
            nft_table: EXIT_TABLE,
            nft: self.ruleset(),
            sysctls,
            ip: Vec::new(),
        })
    }

    fn ruleset(&self) -> String {
        let (t, u) = (&self.tunnel, &self.uplink);
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

        let _ = writeln!(s, "\tchain forward {{");
        let _ = writeln!(
            s,
            "\t\ttype filter hook forward priority filter; policy accept;"
        );
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

        let _ = writeln!(s, "\tchain input {{");
        let _ = writeln!(
            s,
            "\t\ttype filter hook input priority filter; policy accept;"
        );
        let _ = writeln!(s, "\t\tiifname != \"{t}\" accept");
        let _ = writeln!(s, "\t\tct state established,related accept");
        let _ = writeln!(s, "\t\tudp dport {} accept", self.negotiation_port);
        let _ = writeln!(
            s,
            "\t\tip saddr @consumers4 meta l4proto {{ tcp, udp }} th dport 53 accept"
        );
        if self.ipv6 {
            let _ = writeln!(
                s,
                "\t\tip6 saddr @consumers6 meta l4proto {{ tcp, udp }} th dport 53 accept"
            );
        }
        let _ = writeln!(s, "\t\tcounter drop");
        let _ = writeln!(s, "\t}}");
        let _ = writeln!(s, "}}");
        s
    }
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
            consumers_v4: vec!["100.64.0.2".parse().unwrap(), "100.64.0.3".parse().unwrap()],
            consumers_v6: vec!["fd7a:115c:a1e0::2".parse().unwrap()],
            ipv6: true,
            negotiation_port: 51821,
        }
    }

    #[test]
    fn only_authorized_sources_are_forwarded_and_masqueraded() {
        let plan = example().plan().unwrap();
        assert!(plan.nft.contains("elements = { 100.64.0.2, 100.64.0.3 }"));
        assert!(plan
            .nft
            .contains("iifname \"pdexit\" oifname \"eth0\" ip saddr @consumers4 accept"));
        assert!(plan
            .nft
            .contains("oifname \"eth0\" ip saddr @consumers4 masquerade"));
        // Anything else from or to the tunnel is dropped after the accepts.
        let fwd = &plan.nft[plan.nft.find("chain forward").unwrap()..];
        let accept = fwd.find("@consumers4 accept").unwrap();
        let drop = fwd.find("iifname \"pdexit\" counter drop").unwrap();
        assert!(accept < drop);
    }

    #[test]
    fn no_consumers_no_elements_and_no_ipv6_when_not_offered() {
        let mut p = example();
        p.consumers_v4.clear();
        p.ipv6 = false;
        let plan = p.plan().unwrap();
        assert!(!plan.nft.contains("elements"));
        assert!(!plan.nft.contains("ip6 saddr"));
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
