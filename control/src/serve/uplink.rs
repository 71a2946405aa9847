//! What the provider's firewall needs to know of the machine: the uplink's
//! addresses and forwarding, IPv6, and the provider policy made of them.

use super::{ServeOptions, NEGOTIATION_PORT, PROVIDER_V4};
use anyhow::{bail, Context as _};
use portdistrict_exitnode::policy::{Cidr, ProviderPolicy};
use portdistrict_exitnode::store::Store;
use std::net::{IpAddr, Ipv6Addr};
use std::process::Command;

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

/// The prefixes of the uplink's addresses (IPv4 and IPv6, from `ip -j addr`), and
/// the peer prefixes of point-to-point addresses.
pub(super) fn uplink_prefixes(uplink: &str) -> anyhow::Result<Vec<Cidr>> {
    let out = Command::new("ip")
        .args(["-j", "addr", "show", "dev", uplink])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running ip -j addr")?;
    if !out.status.success() {
        bail!(
            "reading the uplink {uplink}'s addresses: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    prefixes_of(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("reading the uplink {uplink}'s addresses"))
}

/// The prefixes in an `ip -j addr` listing.
fn prefixes_of(json: &str) -> anyhow::Result<Vec<Cidr>> {
    let v: serde_json::Value = serde_json::from_str(json).context("unreadable ip -j output")?;
    let mut out = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let Some(len) = a["prefixlen"].as_u64().and_then(|l| u8::try_from(l).ok()) else {
                continue;
            };
            for key in ["local", "address"] {
                if let Some(ip) = a[key].as_str().and_then(|s| s.parse::<IpAddr>().ok()) {
                    let p = Cidr::containing(ip, len);
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
    }
    Ok(out)
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
    Command::new("ip")
        .args(["-6", "-o", "addr", "show", "dev", ifname, "scope", "global"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
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
        let json = r#"[{"ifindex":2,"ifname":"eth0","addr_info":[
            {"family":"inet","local":"10.77.42.1","prefixlen":24,"scope":"global"},
            {"family":"inet","local":"192.0.2.1","address":"198.51.100.9","prefixlen":32},
            {"family":"inet6","local":"2001:db8:5::1","prefixlen":64,"scope":"global"},
            {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]"#;
        let got: Vec<String> = prefixes_of(json)
            .unwrap()
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
        assert!(prefixes_of("[]").unwrap().is_empty());
        assert!(prefixes_of("not json").is_err());
    }
}
