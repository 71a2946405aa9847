//! The store made real: the dataplane's peers and the firewall's consumer sets
//! brought in line with it.

use super::uplink::{policy_of, uplink_prefixes, Host};
use super::ServeOptions;
use crate::dataplane::{Dataplane as _, UapiClient};
use portdistrict_exitnode::apply::apply_nft;
use portdistrict_exitnode::store::Store;
use portdistrict_wg::config::{AllowedIpChange, ConfigChange, PeerChange};
use portdistrict_wg::PublicKey;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn key_of(base64: &str) -> anyhow::Result<PublicKey> {
    PublicKey::from_base64(base64)
        .map_err(|e| anyhow::anyhow!("bad key {base64:?} in the store: {e}"))
}

fn host(addr: IpAddr) -> AllowedIpChange {
    AllowedIpChange {
        addr,
        cidr: if addr.is_ipv4() { 32 } else { 128 },
        remove: false,
    }
}

/// The peers the store implies: the authorized consumers with their inner addresses
/// (nobody else: a consumer asks for its grant over the exit channel, outside the
/// tunnel).
fn peers_of(store: &Store) -> anyhow::Result<Vec<PeerChange>> {
    let mut peers = Vec::new();
    for c in &store.consumers {
        let mut p = PeerChange::new(key_of(&c.wg_key)?);
        p.allowed_ips.push(host(IpAddr::V4(c.inner_v4)));
        if let Some(v6) = c.inner_v6 {
            p.allowed_ips.push(host(IpAddr::V6(v6)));
        }
        peers.push(p);
    }
    Ok(peers)
}

/// What the provider last gave the dataplane and the firewall.
pub(super) struct Applied {
    /// Peer key -> its allowed addresses.
    pub(super) peers: BTreeMap<String, Vec<IpAddr>>,
    pub(super) consumers: Vec<(Ipv4Addr, Option<Ipv6Addr>)>,
    /// The machine as the firewall knows it (the uplink's prefixes follow it).
    pub(super) host: Host,
}

impl Applied {
    /// The firewall went in with the store's consumers and `host`; no peers yet.
    pub(super) fn new(store: &Store, host: &Host) -> Applied {
        Applied {
            peers: BTreeMap::new(),
            consumers: store
                .consumers
                .iter()
                .map(|c| (c.inner_v4, c.inner_v6))
                .collect(),
            host: host.clone(),
        }
    }
}

/// Brings the dataplane's peers and the firewall's consumer sets in line with the
/// store: revoked consumers are removed at once. The uplink's prefixes are read again: when its addresses changed,
/// the firewall blocks the new ones (when they cannot be read, the last ones stay).
pub(super) fn sync(
    o: &ServeOptions,
    store: &Store,
    ipv6: bool,
    applied: &mut Applied,
) -> anyhow::Result<()> {
    let mut want = BTreeMap::new();
    for p in peers_of(store)? {
        want.insert(
            p.public_key.to_base64(),
            p.allowed_ips.iter().map(|a| a.addr).collect::<Vec<_>>(),
        );
    }
    let mut changes = Vec::new();
    for key in applied.peers.keys().filter(|k| !want.contains_key(*k)) {
        let mut p = PeerChange::new(key_of(key)?);
        p.remove = true;
        changes.push(p);
    }
    for (key, addrs) in &want {
        if applied.peers.get(key) != Some(addrs) {
            let mut p = PeerChange::new(key_of(key)?);
            p.replace_allowed_ips = true;
            p.allowed_ips = addrs.iter().map(|a| host(*a)).collect();
            changes.push(p);
        }
    }
    if !changes.is_empty() {
        UapiClient::new(&o.interface).apply(&ConfigChange {
            private_key: None,
            listen_port: None,
            fwmark: None,
            replace_peers: false,
            peers: changes,
        })?;
        applied.peers = want;
    }
    let consumers: Vec<_> = store
        .consumers
        .iter()
        .map(|c| (c.inner_v4, c.inner_v6))
        .collect();
    let mut host = applied.host.clone();
    match uplink_prefixes(&o.uplink) {
        Ok(p) => host.uplink_prefixes = p,
        Err(e) => tracing::warn!("{e:#}; the firewall keeps blocking the last ones"),
    }
    if consumers != applied.consumers || host != applied.host {
        apply_nft(&policy_of(o, store, ipv6, &host).plan()?)?;
        applied.consumers = consumers;
        applied.host = host;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portdistrict_wg::PrivateKey;

    #[test]
    fn peers_follow_the_store() {
        let mut s = Store::default();
        s.issue(&[1; 16], 1000, 1).unwrap();
        assert!(peers_of(&s).unwrap().is_empty(), "an invite is no peer");
        let consumer = PrivateKey::from_bytes([4; 32]).public_key().to_base64();
        s.authorize(10, &[1; 16], &consumer).unwrap();
        let peers = peers_of(&s).unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].public_key.to_base64(), consumer);
        assert_eq!(peers[0].allowed_ips[0].cidr, 32);
    }
}
