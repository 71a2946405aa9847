//! Pure policy: what a consumer in system mode or an exit-node provider wants, turned
//! into the exact addresses, routes, rules, sysctls and nftables ruleset that realise
//! it (addresses, routes and rules as typed [`IpOp`]s with a verb). No
//! syscall, no process, no clock: a value in, a [`Plan`] out, snapshot-tested. The
//! shell that applies a plan (atomically, reading it back) lives elsewhere.
//!
//! Order matters in a plan and is part of its meaning: the nftables script comes
//! first (it blocks before any route points into the tunnel), then sysctls, then
//! the tunnel's addresses, then routes and rules.

mod cidr;
mod consumer;
mod lockdown;
mod ops;
mod provider;

pub use cidr::{Cidr, CidrError};
pub use consumer::{ConsumerPolicy, KILL_SWITCH_TABLE};
pub use lockdown::lockdown_plan;
pub use ops::{AddressOp, IpCommand, IpOp, Object, ParseError, RouteOp, RuleOp, Table, Verb};
pub use provider::{ProviderPolicy, BLOCKED_V4, BLOCKED_V6, EXIT_TABLE};

use std::fmt::Write as _;

/// Why a policy cannot be turned into rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// An interface name the kernel would refuse (1 to 15 bytes, no `/`, whitespace,
    /// quotes or control characters).
    #[error("interface name {0:?} is invalid: use 1-15 letters, digits or _=+.- (no wildcards such as '*', no '/', spaces or quotes)")]
    InterfaceName(String),
    /// The consumer's tunnel and uplink, or the provider's tunnel and uplink, are one.
    #[error("the tunnel and the uplink are the same interface {0:?}")]
    SameInterface(String),
    /// A firewall mark of 0 marks nothing.
    #[error("the firewall mark must not be 0")]
    ZeroMark,
    /// Routing tables 0, 253, 254 and 255 are the kernel's own.
    #[error("routing table {0} is reserved (0, 253 default, 254 main, 255 local): pick another")]
    ReservedTable(u32),
    /// System mode needs at least one provider endpoint to keep a direct path to.
    #[error("no provider endpoint: the invite carries none")]
    NoEndpoint,
    /// The tunnel resolver is IPv6 but the provider gave the consumer no IPv6 address.
    #[error("the tunnel resolver {0} is IPv6 but the provider offers no IPv6 in the tunnel")]
    ResolverFamily(std::net::IpAddr),
}

/// IP family of a rule or route.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Family {
    /// IPv4 (`ip -4`).
    V4,
    /// IPv6 (`ip -6`).
    V6,
}

impl Family {
    /// The `ip` flag.
    pub fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
}

/// One sysctl of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    /// Its name, dotted (`net.ipv4.conf.all.src_valid_mark`).
    pub name: String,
    /// The value to write.
    pub value: String,
}

impl Sysctl {
    fn new(name: impl Into<String>, value: &str) -> Sysctl {
        Sysctl {
            name: name.into(),
            value: value.to_owned(),
        }
    }

    /// Its path under `/proc/sys`: dots are directories, and a `/` in the name (an
    /// interface name with a dot, as `sysctl` writes it) is a dot.
    pub fn path(&self) -> String {
        sysctl_path(&self.name)
    }
}

/// The `/proc/sys` path of a dotted sysctl name (`.` and `/` swap, as `sysctl` does).
pub fn sysctl_path(name: &str) -> String {
    let swapped: String = name
        .chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect();
    format!("/proc/sys/{swapped}")
}

/// Everything a policy asks of the system, in the order it must be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The nftables table the plan owns (family `inet`); removing it undoes the
    /// firewall part.
    pub nft_table: &'static str,
    /// An `nft -f` script that replaces that table in one transaction.
    pub nft: String,
    /// Sysctls to set.
    pub sysctls: Vec<Sysctl>,
    /// Addresses, rules and routes to add, in order.
    pub ip: Vec<IpOp>,
}

impl Plan {
    /// The whole plan as text: what snapshot tests compare and `--dry-run` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# nftables (nft -f)\n");
        out.push_str(&self.nft);
        out.push_str("\n# sysctls\n");
        for s in &self.sysctls {
            let _ = writeln!(out, "{} = {}", s.name, s.value);
        }
        out.push_str("\n# ip\n");
        for op in &self.ip {
            let _ = writeln!(out, "{op}");
        }
        out
    }
}

/// Checks an interface name: what the kernel's `dev_valid_name` takes (1-15 bytes, not
/// `.` or `..`), narrowed to what wg-quick takes, letters, digits and `_=+.-`.
/// Anything else is refused:
/// besides `/`, `:` and whitespace (the kernel's own refusals) and quotes (which would
/// break an nftables string), `*` is a wildcard to nftables — `oifname "x*" accept`
/// matches every interface whose name starts with `x` — and `?`, `[`, `]` are
/// wildcards to some shells and tools.
pub fn check_ifname(name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'='));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::InterfaceName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for good in ["pd0", "eth0", "wg-exit", "enp0s31f6", "a23456789012345"] {
            assert_eq!(check_ifname(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "a\"b",
            "a234567890123456",
            "é",
            "a:1",
            "*",
            "x*",
            "pd*0",
            "a?",
            "a[0]",
            "a{b}",
            "a\\b",
            "a;b",
            "a\tb",
            "a#b",
            "a$b",
            "a@b",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sysctl_paths() {
        let s = Sysctl::new("net.ipv4.conf.all.src_valid_mark", "1");
        assert_eq!(s.path(), "/proc/sys/net/ipv4/conf/all/src_valid_mark");
        assert_eq!(
            sysctl_path("net.ipv6.conf.eth0/100.forwarding"),
            "/proc/sys/net/ipv6/conf/eth0.100/forwarding"
        );
    }
}
