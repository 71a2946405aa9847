//! The NAT router's nftables table as a pure function of what the router should do
//! ([`Rules`]), snapshot-tested below; [`super::NatRouter`] only loads it.
//!
//! The text replaces the table in one `nft -f` transaction (`table` + `delete table` +
//! the new table): loading it again with another kind or loss never leaves the router
//! without rules, and conntrack entries (existing mappings) are untouched.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::NatKind;

/// Everything the table depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules<'a> {
    /// The table's name (`ip` family), unique per run.
    pub table: &'a str,
    /// The WAN interface (towards the public namespace).
    pub wan: &'a str,
    /// The host behind the NAT (target of a full cone's `dnat`).
    pub host: Ipv4Addr,
    /// How the NAT maps and filters.
    pub kind: NatKind,
    /// Percentage (0-100) of forwarded packets dropped, both directions.
    pub loss: u8,
}

/// The `nft -f` input that creates or atomically replaces the table for `r`.
pub fn ruleset(r: &Rules<'_>) -> String {
    let (t, wan) = (r.table, r.wan);
    let mut s = format!("table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n");
    let mut chain = |name: &str, hook: &str, rules: &[String]| {
        let _ = writeln!(s, "\tchain {name} {{\n\t\t{hook}; policy accept;");
        for rule in rules {
            let _ = writeln!(s, "\t\t{rule}");
        }
        s.push_str("\t}\n");
    };
    let prerouting = match r.kind {
        NatKind::FullCone { port } => vec![format!(
            "iifname \"{wan}\" udp dport {port} dnat to {}:{port}",
            r.host
        )],
        _ => Vec::new(),
    };
    chain(
        "prerouting",
        "type nat hook prerouting priority dstnat",
        &prerouting,
    );
    let random = if r.kind == NatKind::Symmetric {
        " fully-random"
    } else {
        ""
    };
    chain(
        "postrouting",
        "type nat hook postrouting priority srcnat",
        &[format!("oifname \"{wan}\" masquerade{random}")],
    );
    let mut forward = Vec::new();
    match r.loss {
        0 => {}
        // nft takes `numgen random mod 100 < N` for N up to 99 only.
        100.. => forward.push("counter drop".to_owned()),
        n => forward.push(format!("numgen random mod 100 < {n} counter drop")),
    }
    if matches!(r.kind, NatKind::FullCone { .. }) {
        forward.push(format!(
            "iifname \"{wan}\" ct state new ct status dnat accept"
        ));
    }
    forward.push(format!("iifname \"{wan}\" ct state new counter drop"));
    chain(
        "forward",
        "type filter hook forward priority filter",
        &forward,
    );
    let input = match r.kind {
        NatKind::AcceptsInput => Vec::new(),
        _ => vec![format!("iifname \"{wan}\" ct state new counter drop")],
    };
    chain("input", "type filter hook input priority filter", &input);
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(kind: NatKind, loss: u8) -> String {
        ruleset(&Rules {
            table: "pdnat_42_7",
            wan: "pdn42w",
            host: Ipv4Addr::new(192, 168, 10, 2),
            kind,
            loss,
        })
    }

    const HEAD: &str =
        "table ip pdnat_42_7 {}\ndelete table ip pdnat_42_7\ntable ip pdnat_42_7 {\n";

    #[test]
    fn port_restricted() {
        let want = format!(
            "{HEAD}\tchain prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname \"pdn42w\" masquerade
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"pdn42w\" ct state new counter drop
\t}}
\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"pdn42w\" ct state new counter drop
\t}}
}}
"
        );
        assert_eq!(rules(NatKind::PortRestricted, 0), want);
    }

    #[test]
    fn full_cone_with_loss() {
        let want = format!(
            "{HEAD}\tchain prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tiifname \"pdn42w\" udp dport 40000 dnat to 192.168.10.2:40000
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname \"pdn42w\" masquerade
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tnumgen random mod 100 < 30 counter drop
\t\tiifname \"pdn42w\" ct state new ct status dnat accept
\t\tiifname \"pdn42w\" ct state new counter drop
\t}}
\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"pdn42w\" ct state new counter drop
\t}}
}}
"
        );
        assert_eq!(rules(NatKind::FullCone { port: 40000 }, 30), want);
    }

    #[test]
    fn symmetric_randomizes_and_accepts_input_opens_the_input_chain() {
        let sym = rules(NatKind::Symmetric, 0);
        assert!(sym.contains("\t\toifname \"pdn42w\" masquerade fully-random\n"));
        assert_eq!(sym.matches("ct state new counter drop").count(), 2);
        let open = rules(NatKind::AcceptsInput, 100);
        assert!(open.contains("\t\toifname \"pdn42w\" masquerade\n"));
        assert!(open.contains(
            "\t\ttype filter hook forward priority filter; policy accept;\n\t\tcounter drop\n"
        ));
        // Forwarding still drops new inbound flows; only the router's input accepts.
        assert!(open.ends_with(
            "\t\tiifname \"pdn42w\" ct state new counter drop\n\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t}
}
"
        ));
    }
}
