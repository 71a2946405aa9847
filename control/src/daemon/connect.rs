//! Connect: the tunnel's peers and routes made to match a view.

use super::{Daemon, Live, View, SHM_PEERS};
use crate::dataplane;
use crate::run_cmd;
use anyhow::Context as _;
use portdistrict_control_core::mesh::{plan, PeerPlan, Plan, KEEPALIVE};
use portdistrict_netlink as nl;
use portdistrict_wg::config::{AllowedIpChange, ConfigChange, PeerChange, PeerSnapshot};
use portdistrict_wg::{PrivateKey, PublicKey};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

/// The dataplane's peers: WireGuard key -> its first IPv6 /64 (unspecified when it
/// has none).
fn current_peers(peers: &BTreeMap<PublicKey, PeerSnapshot>) -> BTreeMap<PublicKey, Ipv6Addr> {
    peers
        .iter()
        .map(|(key, p)| {
            let prefix = p
                .allowed_ips
                .iter()
                .find_map(|(a, cidr)| match a {
                    IpAddr::V6(v6) if *cidr == 64 => Some(*v6),
                    _ => None,
                })
                .unwrap_or(Ipv6Addr::UNSPECIFIED);
            (*key, prefix)
        })
        .collect()
}

impl Daemon {
    /// Creates the tunnel if missing and makes its peers exactly `r.devices`, plus
    /// those already connected inside a kept prefix whose grace period runs.
    pub fn connect(&mut self, r: &View) -> anyhow::Result<()> {
        let off = crate::tunnels::disconnected(&self.dirs)?;
        let ifname = self.o.interface.clone();
        let live = std::sync::Arc::clone(&self.live);
        let mut l = Live::lock(&live);
        let l = &mut *l;
        self.start_dataplane(l, &ifname)?;
        if self.connected.is_empty() {
            self.learn_connected(l);
        }
        let plan = plan(&self.connected, &r.devices, &off, &r.keep, r.now);
        let wanted: Vec<_> = r
            .devices
            .iter()
            .filter(|d| plan.get(&PublicKey(d.wg_key)).is_some())
            .cloned()
            .collect();
        l.traversal.sync(std::time::Instant::now(), &wanted);
        self.apply_peers(l, &plan)?;
        self.apply_routes(l, &ifname, &plan)?;
        self.connected = plan.connected();
        self.save_tunnels(l, ifname, &plan)
    }

    /// Starts the dataplane when the tunnel is missing, or takes up the region of the
    /// one running.
    fn start_dataplane(&self, l: &mut Live, ifname: &str) -> anyhow::Result<()> {
        let shm_path = self.dirs.run.join(format!("{ifname}.shm"));
        if !Path::new("/sys/class/net").join(ifname).exists() {
            // A new dataplane, programmed through a new shared-memory region: a fresh
            // file, renamed over `shm_path` once the dataplane has mapped it. A file a
            // dataplane maps is never truncated or rewritten in place (one still
            // running, e.g. with its interface moved to another namespace, keeps its
            // own region; a region shrunk under it would kill it with SIGBUS).
            portdistrict_exitnode::state::private_dir(&self.dirs.run)
                .with_context(|| format!("creating {} (mode 0700)", self.dirs.run.display()))?;
            let fresh = self.dirs.run.join(format!(".{ifname}.shm.new"));
            let region = portdistrict_shm::Region::create(&fresh, SHM_PEERS)
                .with_context(|| format!("creating {}", fresh.display()))?;
            let bin = crate::serve::dataplane_binary();
            if let Err(e) = run_cmd(&[
                &bin.to_string_lossy(),
                "--shm",
                &fresh.to_string_lossy(),
                ifname,
            ]) {
                let _ = std::fs::remove_file(&fresh);
                return Err(e.context(format!("starting the dataplane {}", bin.display())));
            }
            std::fs::rename(&fresh, &shm_path).with_context(|| {
                format!("renaming {} to {}", fresh.display(), shm_path.display())
            })?;
            l.dataplane = Some(dataplane::client(ifname, Some(region)));
        } else if l.dataplane.is_none() {
            // A restarted daemon takes up the region its dataplane reads, if any; the
            // client is chosen once.
            let region = portdistrict_shm::Region::open(&shm_path)
                .map_err(|e| {
                    tracing::info!(
                        "{ifname}: no usable shared-memory region ({e}); programming it over UAPI"
                    );
                })
                .ok();
            l.dataplane = Some(dataplane::client(ifname, region));
        }
        Ok(())
    }

    /// A restarted daemon (or `--once`) learns what the tunnel has from it.
    fn learn_connected(&mut self, l: &mut Live) {
        let Some(dp) = &mut l.dataplane else {
            return;
        };
        match dp.peers() {
            Ok(mut peers) => {
                // The facilitator is a peer of the tunnel, not of the mesh.
                if let Some(f) = l.traversal.facilitator_key() {
                    peers.remove(&f);
                }
                self.connected = current_peers(&peers);
            }
            Err(e) => tracing::warn!(
                "{:#}; configuring the tunnel from scratch",
                anyhow::Error::from(e)
            ),
        }
    }

    /// Programs the dataplane's peers: the removed ones go, every wanted one is
    /// (re)configured, kept ones stay as they are. Over shared memory this returns
    /// once the dataplane reports it applied the change.
    fn apply_peers(&self, l: &mut Live, plan: &Plan) -> anyhow::Result<()> {
        let mut changes = Vec::new();
        for c in &plan.remove {
            let mut p = PeerChange::new(c.key);
            p.remove = true;
            changes.push(p);
        }
        for d in plan.wanted() {
            let mut c = peer_change(d);
            // A path that traversal pinned (direct or the relay) stays where it is:
            // configuring the record's endpoint would replace the pin.
            if let Some(ep) = l.traversal.endpoint_override(&d.key) {
                c.endpoint = Some(ep);
            }
            changes.push(c);
        }
        changes.extend(l.traversal.facilitator_peer());
        let dp = l
            .dataplane
            .as_mut()
            .context("no dataplane client (the tunnel was not started)")?;
        dp.apply(&ConfigChange {
            private_key: Some(Some(PrivateKey::from_bytes(self.keys.wireguard()))),
            listen_port: Some(self.o.listen_port),
            fwmark: None,
            replace_peers: false,
            peers: changes,
        })?;
        Ok(())
    }

    /// This device's address, the link up, a route per wanted peer, none for removed
    /// ones.
    fn apply_routes(&self, l: &mut Live, ifname: &str, plan: &Plan) -> anyhow::Result<()> {
        let own = Ipv6Addr::from(u128::from(self.own_prefix()) | 1);
        let mut h = nl::Handle::open().context("opening a netlink socket")?;
        let ifindex = h.link_index(ifname)?;
        let own_addr = nl::AddressSpec {
            ifindex,
            addr: IpAddr::V6(own),
            prefix_len: 64,
            nodad: true,
            deprecated: false,
        };
        h.address(nl::Verb::Replace, &own_addr)
            .with_context(|| format!("adding {own}/64 to {ifname}"))?;
        h.link_set_up(ifname, true)
            .with_context(|| format!("setting {ifname} up"))?;
        l.traversal.setup_link(&mut h, ifname, ifindex)?;
        let route_to = |prefix: Ipv6Addr| nl::Route {
            family: nl::Family::V6,
            dst: Some((IpAddr::V6(prefix), 64)),
            oif: Some(ifindex),
            table: 254,
            kind: nl::RouteKind::Unicast,
        };
        for d in plan.wanted() {
            h.route(nl::Verb::Replace, &route_to(d.prefix))
                .with_context(|| format!("a route to {}/64 via {ifname}", d.prefix))?;
        }
        for d in &plan.add {
            tracing::info!("connected {} ({}/64)", d.name, d.prefix);
        }
        for c in &plan.remove {
            let _ = h.route(nl::Verb::Del, &route_to(c.prefix));
            tracing::info!("disconnected {}/64", c.prefix);
        }
        Ok(())
    }

    /// Writes `tunnels.json`: every connected peer, in base64 key order (as the file
    /// always was), a kept one as the file said last.
    fn save_tunnels(&self, l: &mut Live, ifname: String, plan: &Plan) -> anyhow::Result<()> {
        let by_key: Vec<(PublicKey, crate::tunnels::Tunnel)> =
            self.connected
                .iter()
                .map(|(k, p)| {
                    let t = match plan.get(k) {
                        Some(d) => crate::tunnels::Tunnel {
                            name: d.name.clone(),
                            wg_key: k.to_base64(),
                            prefix: format!("{}/64", d.prefix),
                            endpoint: d.endpoint.map(|e| e.to_string()),
                            path: None,
                        },
                        None => l.last_tunnels.get(k).cloned().unwrap_or_else(|| {
                            crate::tunnels::Tunnel {
                                name: k.to_base64(),
                                wg_key: k.to_base64(),
                                prefix: format!("{p}/64"),
                                endpoint: None,
                                path: None,
                            }
                        }),
                    };
                    (*k, t)
                })
                .collect();
        l.last_tunnels = by_key.into_iter().collect();
        l.last_cycle = crate::exit::now();
        write_tunnels(l, &self.dirs, ifname)
    }
}

/// Writes `tunnels.json` from the last cycle's tunnels with every path as traversal
/// sees it now (also between cycles, when a path changes).
pub(super) fn write_tunnels(
    l: &mut Live,
    dirs: &crate::Dirs,
    ifname: String,
) -> anyhow::Result<()> {
    let now = std::time::Instant::now();
    for (k, t) in &mut l.last_tunnels {
        t.path = l.traversal.info(k, now);
    }
    let mut tunnels: Vec<_> = l.last_tunnels.values().cloned().collect();
    tunnels.sort_by(|a, b| a.wg_key.cmp(&b.wg_key));
    crate::tunnels::save(
        dirs,
        &crate::tunnels::TunnelsFile {
            interface: ifname,
            last_cycle: l.last_cycle,
            pid: std::process::id(),
            tunnels,
        },
    )
}

/// The change that configures a wanted peer: endpoint, keepalive, its /64 only.
fn peer_change(p: &PeerPlan) -> PeerChange {
    let mut c = PeerChange::new(p.key);
    c.endpoint = p.endpoint;
    c.persistent_keepalive_interval = Some(KEEPALIVE);
    c.replace_allowed_ips = true;
    c.allowed_ips = vec![AllowedIpChange {
        addr: IpAddr::V6(p.prefix),
        cidr: 64,
        remove: false,
    }];
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_peers_come_from_the_dataplane() {
        let k1 = PublicKey([1; 32]);
        let dump = format!(
            "listen_port=51820\npublic_key={}\nendpoint=10.0.0.1:51820\nallowed_ip=10.1.0.0/16\nallowed_ip=fd00:1:2:3::/64\npublic_key={}\nerrno=0\n\n",
            "01".repeat(32),
            "02".repeat(32)
        );
        let snap = portdistrict_wg::uapi::parse_get(&dump).unwrap();
        let got = current_peers(&snap.peers.into_iter().map(|p| (p.public_key, p)).collect());
        assert_eq!(got.len(), 2);
        assert_eq!(got[&k1], "fd00:1:2:3::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(got[&PublicKey([2; 32])], Ipv6Addr::UNSPECIFIED);
    }
}
