//! What the provider's firewall needs to know of the machine: the uplink's
//! addresses and forwarding, IPv6, and the provider policy made of them.

use super::{ServeOptions, NEGOTIATION_PORT, PROVIDER_V4};
use anyhow::{bail, Context as _};
use portdistrict_exitnode::policy::{Cidr, ProviderPolicy};
use portdistrict_exitnode::store::Store;
use portdistrict_netlink as nl;
use std::net::Ipv6Addr;

/// What the provider's firewall needs to know of the machine: the uplink's prefixes
/// (re-read at every sync) and the forwarding the host did before the provider
/// started (read once, before the plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Host {
    pub(super) uplink_prefixes: Vec<Cidr>,
    pub(super) uplink_forwarded_v4: bool,
    pub(super) forwarded_v6: bool,
}

impl Host {
    /// Reads it now (before the plan switches forwarding on).
    pub(super) fn read(uplink: &str) -> anyhow::Result<Host> {
        if uplink.is_empty() || uplink.contains('/') || uplink == "." || uplink == ".." {
            bail!("--uplink {uplink:?}: not an interface name");
        }
        let flag = |path: String| -> anyhow::Result<bool> {
            let v = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            Ok(v.trim() != "0")
        };
        Ok(Host {
            uplink_prefixes: uplink_prefixes(uplink)?,
            uplink_forwarded_v4: flag(format!("/proc/sys/net/ipv4/conf/{uplink}/forwarding"))?,
            forwarded_v6: flag("/proc/sys/net/ipv6/conf/all/forwarding".to_owned())
                .unwrap_or(false),
        })
    }
}

/// The prefixes of the uplink's addresses (IPv4 and IPv6, over netlink), and the peer
/// prefixes of point-to-point addresses.
pub(super) fn uplink_prefixes(uplink: &str) -> anyhow::Result<Vec<Cidr>> {
    let addrs = nl::Handle::open()
        .and_then(|mut h| h.link_addresses(uplink))
        .with_context(|| format!("reading the uplink {uplink}'s addresses"))?;
    Ok(prefixes_of(&addrs))
}

/// The prefixes of addresses (their local and peer addresses), each once, in order.
fn prefixes_of(addrs: &[nl::Address]) -> Vec<Cidr> {
    let mut out = Vec::new();
    for a in addrs {
        for ip in std::iter::once(a.local).chain(a.peer) {
            let p = Cidr::containing(ip, a.prefix_len);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

pub(super) fn policy_of(
    o: &ServeOptions,
    store: &Store,
    ipv6: bool,
    host: &Host,
) -> ProviderPolicy {
    ProviderPolicy {
        tunnel: o.interface.clone(),
        uplink: o.uplink.clone(),
        provider_v4: PROVIDER_V4,
        provider_v6: store.v6_prefix.filter(|_| ipv6).map(provider_v6),
        uplink_prefixes: host.uplink_prefixes.clone(),
        allow_dest: o.allow_dest.clone(),
        uplink_forwarded_v4: host.uplink_forwarded_v4,
        forwarded_v6: host.forwarded_v6,
        consumers_v4: store.consumers.iter().map(|c| c.inner_v4).collect(),
        consumers_v6: if ipv6 {
            store.consumers.iter().filter_map(|c| c.inner_v6).collect()
        } else {
            Vec::new()
        },
        ipv6,
        negotiation_port: NEGOTIATION_PORT,
    }
}

/// Whether `ifname` has an IPv6 address beyond link-local.
pub(super) fn has_global_v6(ifname: &str) -> bool {
    nl::Handle::open()
        .and_then(|mut h| h.link_addresses(ifname))
        .is_ok_and(|addrs| {
            addrs
                .iter()
                .any(|a| a.family == nl::Family::V6 && a.is_global())
        })
}

/// A random unique local /64 (RFC 4193: fd00::/8 + 40 random bits + subnet 0).
pub(super) fn random_ula() -> anyhow::Result<Ipv6Addr> {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b[1..6])
        .map_err(|_| anyhow::anyhow!("no randomness for the IPv6 prefix"))?;
    b[0] = 0xfd;
    Ok(Ipv6Addr::from(b))
}

/// The provider's own IPv6 address in the tunnel: the prefix's ::1.
pub(super) fn provider_v6(prefix: Ipv6Addr) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(prefix) | 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_prefixes_from_ip_json() {
        let addr = |local: &str, peer: Option<&str>, prefix_len| nl::Address {
            ifindex: 2,
            family: nl::Family::of(local.parse().unwrap()),
            prefix_len,
            local: local.parse().unwrap(),
            peer: peer.map(|p| p.parse().unwrap()),
            scope: 0,
            flags: 0,
        };
        let addrs = [
            addr("10.77.42.1", None, 24),
            addr("192.0.2.1", Some("198.51.100.9"), 32),
            addr("2001:db8:5::1", None, 64),
            addr("fe80::1", None, 64),
        ];
        let got: Vec<String> = prefixes_of(&addrs)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "10.77.42.0/24",
                "192.0.2.1/32",
                "198.51.100.9/32",
                "2001:db8:5::/64",
                "fe80::/64"
            ]
        );
        assert!(prefixes_of(&[]).is_empty());
    }
}
