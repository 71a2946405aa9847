//! Lockdown: the consumer's kill switch with no tunnel at all. Nothing leaves or enters
//! the machine but loopback and what keeps its own network configured — DHCP to the
//! broadcast address, DHCPv6 to its multicast group, and neighbour/router discovery on
//! link-local and multicast addresses — until system mode replaces this table with its
//! own kill switch (which adds the provider's WireGuard and the tunnel).
//!
//! It lives in the kill switch's table (`inet portdistrict_killswitch`), so going from
//! lockdown to system mode and back is one atomic table replacement, never a gap.

use super::consumer::{chain, link_holes, Direction};
use super::{Plan, KILL_SWITCH_TABLE};
use std::fmt::Write as _;

/// The plan of lockdown: the blocking table only (no sysctl, no route).
pub fn lockdown_plan() -> Plan {
    let mut s = String::new();
    let _ = writeln!(s, "table inet {KILL_SWITCH_TABLE}");
    let _ = writeln!(s, "delete table inet {KILL_SWITCH_TABLE}");
    let _ = writeln!(s, "table inet {KILL_SWITCH_TABLE} {{");
    // The same link-scope holes as system mode's kill switch.
    let rules = |dir| {
        let mut r = vec![if matches!(dir, Direction::Out) {
            "oif \"lo\" accept"
        } else {
            "iif \"lo\" accept"
        }];
        r.extend_from_slice(link_holes(dir));
        r.push("counter drop");
        r
    };
    let (out, input) = (rules(Direction::Out), rules(Direction::In));
    for (hook, rules) in [
        ("output", &out[..]),
        ("input", &input[..]),
        ("forward", &[][..]),
    ] {
        chain(&mut s, hook, rules);
    }
    let _ = writeln!(s, "}}");
    Plan {
        nft_table: KILL_SWITCH_TABLE,
        nft: s,
        sysctls: Vec::new(),
        ip: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_allows_only_loopback_and_link_configuration() {
        let p = lockdown_plan();
        assert!(p.ip.is_empty() && p.sysctls.is_empty());
        assert_eq!(p.nft.matches("policy drop;").count(), 3);
        let accepts: Vec<&str> = p
            .nft
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with("accept"))
            .collect();
        // Every accept names loopback, or DHCP/DHCPv6/ND to link-scoped destinations.
        for a in &accepts {
            assert!(
                a.contains("\"lo\"")
                    || a.contains("255.255.255.255")
                    || a.contains("ff02::")
                    || a.contains("fe80::/10")
                    || a.contains("hoplimit 255")
                    || a.starts_with("udp sport 67 udp dport 68"),
                "{a}"
            );
        }
        assert!(!p.nft.contains("oifname"), "no tunnel in lockdown");
    }
}
