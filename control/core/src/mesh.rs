//! The daemon's connect plan: what the tunnel's peers and routes must become for the
//! verified devices of a view, as a pure function of what is connected now (no I/O;
//! `now` is an argument). The control shell (`portdistrictd`'s connect) applies it.
//!
//! A wanted device (verified, not switched off with `tunnel disconnect`) is *added*
//! when its key is not connected yet and *updated* (configured again: its endpoint may
//! have moved) when it is. A connected key no longer wanted is *kept* unchanged while
//! its /64 lies inside a kept prefix whose grace period runs, and *removed* (peer and
//! route) otherwise. Every list is in key order.

use crate::freshness::Kept;
use portdistrict_wg::PublicKey;
use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};

/// A verified device of a trusted peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDevice {
    /// The peer's namespace.
    pub namespace: String,
    /// The device name.
    pub device: String,
    /// Its WireGuard key.
    pub wg_key: [u8; 32],
    /// Its /64.
    pub prefix: Ipv6Addr,
    /// Its endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// The facilitator its record names (endpoint, WireGuard key).
    pub facilitator: Option<(SocketAddr, [u8; 32])>,
}

/// The persistent keepalive every peer gets (seconds).
pub const KEEPALIVE: u16 = 25;

/// A peer the tunnel must have: its key, AllowedIPs (its /64, also routed to the
/// tunnel) and endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    /// Its WireGuard key.
    pub key: PublicKey,
    /// `device.namespace`.
    pub name: String,
    /// Its /64: the one AllowedIP and the route.
    pub prefix: Ipv6Addr,
    /// The first endpoint its record gave.
    pub endpoint: Option<SocketAddr>,
}

/// A connected peer the plan leaves alone or takes away: its key and /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    /// Its WireGuard key.
    pub key: PublicKey,
    /// Its /64.
    pub prefix: Ipv6Addr,
}

/// The difference between the connected peers and a view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Wanted and not connected: configured, routed, logged as connected.
    pub add: Vec<PeerPlan>,
    /// Wanted and connected: configured and routed again.
    pub update: Vec<PeerPlan>,
    /// Not wanted, inside a kept prefix still in grace: left as they are.
    pub keep: Vec<Connected>,
    /// Not wanted and not kept: peer removed, route deleted.
    pub remove: Vec<Connected>,
}

impl Plan {
    /// Every wanted peer (added or updated), in key order.
    pub fn wanted(&self) -> Vec<&PeerPlan> {
        let mut all: Vec<&PeerPlan> = self.add.iter().chain(&self.update).collect();
        all.sort_by_key(|p| p.key);
        all
    }

    /// The wanted peer with `key`.
    pub fn get(&self, key: &PublicKey) -> Option<&PeerPlan> {
        self.add.iter().chain(&self.update).find(|p| p.key == *key)
    }

    /// What is connected once the plan is applied: wanted and kept peers.
    pub fn connected(&self) -> BTreeMap<PublicKey, Ipv6Addr> {
        self.add
            .iter()
            .chain(&self.update)
            .map(|p| (p.key, p.prefix))
            .chain(self.keep.iter().map(|c| (c.key, c.prefix)))
            .collect()
    }
}

/// The plan that makes `connected` (key -> its /64) the `devices` of a view, except
/// those named (`device.namespace`) in `off`, plus the connected ones inside a prefix
/// of `keep` whose grace period runs at `now`. Two devices with one key: the later
/// one wins.
pub fn plan(
    connected: &BTreeMap<PublicKey, Ipv6Addr>,
    devices: &[PeerDevice],
    off: &[String],
    keep: &[Kept],
    now: u64,
) -> Plan {
    let mut want: BTreeMap<PublicKey, PeerPlan> = BTreeMap::new();
    for d in devices {
        let name = format!("{}.{}", d.device, d.namespace);
        if off.contains(&name) {
            continue;
        }
        let key = PublicKey(d.wg_key);
        want.insert(
            key,
            PeerPlan {
                key,
                name,
                prefix: d.prefix,
                endpoint: d.endpoints.first().copied(),
            },
        );
    }
    let mut out = Plan::default();
    for (key, p) in want {
        if connected.contains_key(&key) {
            out.update.push(p);
        } else {
            out.add.push(p);
        }
    }
    for (&key, &prefix) in connected {
        if out.get(&key).is_some() {
            continue;
        }
        let c = Connected { key, prefix };
        if keep.iter().any(|k| now < k.until && k.contains(prefix)) {
            out.keep.push(c);
        } else {
            out.remove.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(n: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 1, 2, n, 0, 0, 0, 0)
    }

    fn device(key: u8, name: &str, n: u16) -> PeerDevice {
        PeerDevice {
            namespace: "alice.pd.test".into(),
            device: name.into(),
            wg_key: [key; 32],
            prefix: prefix(n),
            endpoints: vec![
                format!("192.0.2.{key}:51820").parse().unwrap(),
                "198.51.100.1:1".parse().unwrap(),
            ],
            facilitator: None,
        }
    }

    fn connected(peers: &[(u8, u16)]) -> BTreeMap<PublicKey, Ipv6Addr> {
        peers
            .iter()
            .map(|&(k, n)| (PublicKey([k; 32]), prefix(n)))
            .collect()
    }

    fn keys(peers: &[PeerPlan]) -> Vec<u8> {
        peers.iter().map(|p| p.key.0[0]).collect()
    }

    fn conn_keys(peers: &[Connected]) -> Vec<u8> {
        peers.iter().map(|p| p.key.0[0]).collect()
    }

    #[test]
    fn new_devices_are_added_with_their_first_endpoint_and_prefix() {
        let p = plan(&BTreeMap::new(), &[device(2, "b", 2)], &[], &[], 0);
        assert_eq!(
            p.add,
            vec![PeerPlan {
                key: PublicKey([2; 32]),
                name: "b.alice.pd.test".into(),
                prefix: prefix(2),
                endpoint: Some("192.0.2.2:51820".parse().unwrap()),
            }]
        );
        assert!(p.update.is_empty() && p.keep.is_empty() && p.remove.is_empty());
        assert_eq!(p.connected(), connected(&[(2, 2)]));
    }

    #[test]
    fn connected_devices_are_updated_and_unwanted_ones_removed() {
        let mut moved = device(1, "a", 1);
        moved.endpoints = Vec::new();
        let p = plan(
            &connected(&[(1, 1), (3, 3)]),
            &[moved, device(2, "b", 2)],
            &[],
            &[],
            0,
        );
        assert_eq!(keys(&p.add), [2]);
        assert_eq!(keys(&p.update), [1]);
        assert_eq!(
            p.update[0].endpoint, None,
            "the endpoint follows the record"
        );
        assert_eq!(
            p.remove,
            vec![Connected {
                key: PublicKey([3; 32]),
                prefix: prefix(3)
            }]
        );
        assert_eq!(p.connected(), connected(&[(1, 1), (2, 2)]));
    }

    #[test]
    fn nothing_changes_for_the_same_view() {
        let devices = [device(1, "a", 1), device(2, "b", 2)];
        let first = plan(&BTreeMap::new(), &devices, &[], &[], 0);
        let again = plan(&first.connected(), &devices, &[], &[], 0);
        assert!(again.add.is_empty() && again.remove.is_empty() && again.keep.is_empty());
        assert_eq!(again.update, first.add);
        assert_eq!(again.connected(), first.connected());
        let empty = plan(&BTreeMap::new(), &[], &[], &[], 0);
        assert_eq!(empty, Plan::default());
    }

    #[test]
    fn kept_prefixes_hold_their_peers_until_the_grace_ends() {
        let keep = [Kept {
            prefix: prefix(3),
            len: 64,
            until: 100,
        }];
        let now = connected(&[(3, 3), (4, 4)]);
        let p = plan(&now, &[], &[], &keep, 99);
        assert_eq!(conn_keys(&p.keep), [3]);
        assert_eq!(conn_keys(&p.remove), [4]);
        assert_eq!(p.connected(), connected(&[(3, 3)]));
        let p = plan(&now, &[], &[], &keep, 100);
        assert!(p.keep.is_empty(), "the grace period is over at `until`");
        assert_eq!(conn_keys(&p.remove), [3, 4]);
        // A /48 keeps every device under it; a wanted key is updated, not kept.
        let keep48 = [Kept {
            prefix: prefix(0),
            len: 48,
            until: 100,
        }];
        let p = plan(&now, &[device(4, "d", 4)], &[], &keep48, 0);
        assert_eq!(conn_keys(&p.keep), [3]);
        assert_eq!(keys(&p.update), [4]);
        assert!(p.remove.is_empty());
    }

    #[test]
    fn switched_off_devices_are_not_wanted() {
        let p = plan(
            &connected(&[(1, 1)]),
            &[device(1, "a", 1), device(2, "b", 2)],
            &["a.alice.pd.test".to_owned()],
            &[],
            0,
        );
        assert_eq!(keys(&p.add), [2]);
        assert!(p.update.is_empty());
        assert_eq!(conn_keys(&p.remove), [1]);
    }

    #[test]
    fn lists_are_in_key_order_and_the_later_duplicate_wins() {
        let p = plan(
            &connected(&[(9, 9), (5, 5), (7, 7)]),
            &[
                device(8, "h", 8),
                device(5, "e", 5),
                device(6, "f", 6),
                device(6, "f2", 16),
                device(7, "g", 7),
            ],
            &[],
            &[],
            0,
        );
        assert_eq!(keys(&p.add), [6, 8]);
        assert_eq!(p.add[0].name, "f2.alice.pd.test");
        assert_eq!(p.add[0].prefix, prefix(16));
        assert_eq!(keys(&p.update), [5, 7]);
        assert_eq!(conn_keys(&p.remove), [9]);
        let wanted: Vec<u8> = p.wanted().iter().map(|w| w.key.0[0]).collect();
        assert_eq!(wanted, [5, 6, 7, 8]);
    }

    #[test]
    fn a_failing_record_keeps_its_devices_until_the_last_good_expiry() {
        use crate::freshness::{Freshness, Grace};
        let bob48 = Ipv6Addr::new(0xfd12, 0x3456, 0x789a, 0, 0, 0, 0, 0);
        let bob = |n: u16| Ipv6Addr::new(0xfd12, 0x3456, 0x789a, n, 0, 0, 0, 0);
        let now: BTreeMap<PublicKey, Ipv6Addr> = [
            (PublicKey([1; 32]), bob(1)),
            (PublicKey([2; 32]), bob(2)),
            (PublicKey([3; 32]), prefix(3)),
        ]
        .into();
        let mut f = Freshness::default();
        f.accept("_portdistrict.bob.pd.test", 1000, 4600).unwrap();
        // Bob's master record fails; carol's device (key 3) still verifies.
        let at = |t: u64| {
            let keep: Vec<Kept> = match f.grace("_portdistrict.bob.pd.test", t) {
                Grace::Until(until) => vec![Kept {
                    prefix: bob48,
                    len: 48,
                    until,
                }],
                Grace::Expired(_) | Grace::Never => Vec::new(),
            };
            plan(&now, &[device(3, "carol", 3)], &[], &keep, t)
        };
        for t in [1010, 4599] {
            let p = at(t);
            assert_eq!(conn_keys(&p.keep), [1, 2], "inside the grace period");
            assert_eq!(keys(&p.update), [3]);
            assert!(p.remove.is_empty());
        }
        let p = at(4600);
        assert!(p.keep.is_empty(), "after the last good expiry: removed");
        assert_eq!(conn_keys(&p.remove), [1, 2]);
        assert_eq!(keys(&p.update), [3]);
    }
}
