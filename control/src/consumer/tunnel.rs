//! The tunnel interface itself: its one peer (the provider) and its addresses. Used by
//! the negotiation (negotiation address, provider reachable) and by the bring-up
//! (granted addresses, the full AllowedIPs).

use super::{netlink, FWMARK};
use crate::dataplane::{Dataplane as _, UapiClient};
use anyhow::Context as _;
use portdistrict_netlink as nl;
use portdistrict_wg::config::{AllowedIpChange, ConfigChange, PeerChange};
use portdistrict_wg::{PrivateKey, PublicKey};
use std::net::{IpAddr, SocketAddr};

/// The tunnel as `key` with the provider as its one peer for `allowed`.
pub(super) fn configure(
    ifname: &str,
    key: &PrivateKey,
    provider: &PublicKey,
    endpoint: SocketAddr,
    allowed: &[AllowedIpChange],
) -> anyhow::Result<()> {
    let mut p = PeerChange::new(*provider);
    p.endpoint = Some(endpoint);
    p.persistent_keepalive_interval = Some(25);
    p.replace_allowed_ips = true;
    p.allowed_ips = allowed.to_vec();
    Ok(UapiClient::new(ifname).apply(&ConfigChange {
        private_key: Some(Some(key.clone())),
        listen_port: None,
        fwmark: Some(FWMARK),
        replace_peers: true,
        peers: vec![p],
    })?)
}

/// The tunnel's addresses: `v4`/32 and `v6`/128 (no DAD) in place of any others, and
/// the link up.
pub(super) fn set_addresses(ifname: &str, v4: IpAddr, v6: Option<IpAddr>) -> anyhow::Result<()> {
    let mut nl = netlink()?;
    nl.address_flush(ifname)
        .with_context(|| format!("flushing the addresses of {ifname}"))?;
    let ifindex = nl.link_index(ifname)?;
    for (addr, prefix_len) in std::iter::once((v4, 32)).chain(v6.map(|a| (a, 128))) {
        let spec = nl::AddressSpec {
            ifindex,
            addr,
            prefix_len,
            nodad: addr.is_ipv6(),
            deprecated: false,
        };
        nl.address(nl::Verb::Add, &spec)
            .with_context(|| format!("adding {addr}/{prefix_len} to {ifname}"))?;
    }
    nl.link_set_up(ifname, true)
        .with_context(|| format!("setting {ifname} up"))?;
    Ok(())
}
