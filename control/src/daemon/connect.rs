//! Connect: the tunnel's peers and routes made to match a view.

use super::{Daemon, PeerDevice, View, SHM_PEERS};
use crate::freshness::carried;
use crate::{run_cmd, uapi};
use anyhow::Context as _;
use portdistrict_wg::uapi::{AllowedIpChange, PeerChange, SetRequest};
use portdistrict_wg::{PrivateKey, PublicKey};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

/// The peers of a UAPI `get` dump: WireGuard key (base64) -> its first IPv6 /64.
fn current_peers(dump: &str) -> BTreeMap<String, Ipv6Addr> {
    let mut out = BTreeMap::new();
    let mut key: Option<String> = None;
    for line in dump.lines() {
        if let Some(hex) = line.strip_prefix("public_key=") {
            key = (0..32)
                .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(|b| PublicKey(b).to_base64());
            if let Some(k) = &key {
                out.insert(k.clone(), Ipv6Addr::UNSPECIFIED);
            }
        } else if let (Some(k), Some(ip)) = (&key, line.strip_prefix("allowed_ip=")) {
            if let Some(a) = ip
                .strip_suffix("/64")
                .and_then(|a| a.parse::<Ipv6Addr>().ok())
            {
                out.insert(k.clone(), a);
            }
        }
    }
    out
}

impl Daemon {
    /// Creates the tunnel if missing and makes its peers exactly `r.devices`, plus
    /// those already connected inside a kept prefix whose grace period runs.
    pub fn connect(&mut self, r: &View) -> anyhow::Result<()> {
        let off = crate::tunnels::disconnected(&self.dirs)?;
        let devices: Vec<&PeerDevice> = r
            .devices
            .iter()
            .filter(|d| !off.contains(&format!("{}.{}", d.device, d.namespace)))
            .collect();
        let ifname = self.o.interface.clone();
        let shm_path = self.dirs.run.join(format!("{ifname}.shm"));
        if !Path::new("/sys/class/net").join(&ifname).exists() {
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
                &ifname,
            ]) {
                let _ = std::fs::remove_file(&fresh);
                return Err(e.context(format!("starting the dataplane {}", bin.display())));
            }
            std::fs::rename(&fresh, &shm_path).with_context(|| {
                format!("renaming {} to {}", fresh.display(), shm_path.display())
            })?;
            self.shm = Some(region);
        } else if self.shm.is_none() {
            // A restarted daemon takes up the region its dataplane reads, if any.
            match portdistrict_shm::Region::open(&shm_path) {
                Ok(r) => self.shm = Some(r),
                Err(e) => log::info!(
                    "{ifname}: no usable shared-memory region ({e}); programming it over UAPI"
                ),
            }
        }
        if self.connected.is_empty() {
            // A restarted daemon (or `--once`) learns what the tunnel has from it.
            let from_region = match &self.shm {
                Some(r) => {
                    match r.read_config() {
                        Ok((_, cfg)) => Some(cfg),
                        Err(e) => {
                            log::warn!("{ifname}: the shared-memory region is unreadable ({e}); rewriting it");
                            None
                        }
                    }
                }
                None => None,
            };
            match from_region {
                Some(cfg) => {
                    for p in cfg.peers {
                        let key = PublicKey(p.public_key).to_base64();
                        let prefix = p
                            .allowed
                            .iter()
                            .find_map(|(a, _)| match a {
                                IpAddr::V6(v6) => Some(*v6),
                                IpAddr::V4(_) => None,
                            })
                            .unwrap_or(Ipv6Addr::UNSPECIFIED);
                        self.connected.insert(key.clone(), prefix);
                        self.peer_cfg.insert(key, p);
                    }
                }
                None => {
                    self.connected =
                        current_peers(&uapi::get(Path::new(uapi::SOCKET_DIR), &ifname)?);
                }
            }
        }
        let mut want: BTreeMap<String, &PeerDevice> = BTreeMap::new();
        for d in devices {
            want.insert(PublicKey(d.wg_key).to_base64(), d);
        }
        let carry: std::collections::BTreeSet<String> =
            carried(&self.connected, |k| want.contains_key(k), &r.keep, r.now)
                .into_iter()
                .map(str::to_owned)
                .collect();
        let peer_config = |d: &PeerDevice| portdistrict_shm::PeerConfig {
            public_key: d.wg_key,
            preshared_key: None,
            endpoint: d.endpoints.first().copied(),
            keepalive: 25,
            allowed: vec![(IpAddr::V6(d.prefix), 64)],
        };
        if let Some(region) = &self.shm {
            let mut peers: BTreeMap<String, portdistrict_shm::PeerConfig> = BTreeMap::new();
            for key in &carry {
                if let Some(p) = self.peer_cfg.get(key) {
                    peers.insert(key.clone(), p.clone());
                }
            }
            for (key, d) in &want {
                peers.insert(key.clone(), peer_config(d));
            }
            region.write_config(&portdistrict_shm::Config {
                private_key: Some(self.keys.wireguard()),
                listen_port: self.o.listen_port,
                fwmark: 0,
                peers: peers.values().cloned().collect(),
            })?;
            self.peer_cfg = peers;
            // The dataplane applies it at its next tick (100 ms).
            std::thread::sleep(Duration::from_millis(250));
        } else {
            let mut changes = Vec::new();
            for (key, _) in self
                .connected
                .iter()
                .filter(|(k, _)| !want.contains_key(*k) && !carry.contains(*k))
            {
                let mut p = PeerChange::new(
                    PublicKey::from_base64(key).map_err(|e| anyhow::anyhow!("{e}"))?,
                );
                p.remove = true;
                changes.push(p);
            }
            for d in want.values() {
                let mut p = PeerChange::new(PublicKey(d.wg_key));
                p.endpoint = d.endpoints.first().copied();
                p.persistent_keepalive_interval = Some(25);
                p.replace_allowed_ips = true;
                p.allowed_ips = vec![AllowedIpChange {
                    addr: IpAddr::V6(d.prefix),
                    cidr: 64,
                    remove: false,
                }];
                changes.push(p);
            }
            uapi::set(
                Path::new(uapi::SOCKET_DIR),
                &ifname,
                &SetRequest {
                    private_key: Some(Some(PrivateKey::from_bytes(self.keys.wireguard()))),
                    listen_port: Some(self.o.listen_port),
                    fwmark: None,
                    replace_peers: false,
                    peers: changes,
                },
            )?;
        }
        let own = Ipv6Addr::from(u128::from(self.own_prefix()) | 1);
        run_cmd(&[
            "ip",
            "-6",
            "addr",
            "replace",
            &format!("{own}/64"),
            "dev",
            &ifname,
            "nodad",
        ])?;
        run_cmd(&["ip", "link", "set", &ifname, "up"])?;
        for (key, d) in &want {
            run_cmd(&[
                "ip",
                "-6",
                "route",
                "replace",
                &format!("{}/64", d.prefix),
                "dev",
                &ifname,
            ])?;
            if !self.connected.contains_key(key) {
                log::info!("connected {}.{} ({}/64)", d.device, d.namespace, d.prefix);
            }
        }
        for (key, prefix) in &self.connected {
            if !want.contains_key(key) && !carry.contains(key) {
                let _ = run_cmd(&[
                    "ip",
                    "-6",
                    "route",
                    "del",
                    &format!("{prefix}/64"),
                    "dev",
                    &ifname,
                ]);
                log::info!("disconnected {prefix}/64");
            }
        }
        let kept_now: Vec<(String, Ipv6Addr)> = self
            .connected
            .iter()
            .filter(|(k, _)| carry.contains(*k))
            .map(|(k, p)| (k.clone(), *p))
            .collect();
        self.connected = want.iter().map(|(k, d)| (k.clone(), d.prefix)).collect();
        self.connected.extend(kept_now);
        let tunnels = self
            .connected
            .iter()
            .map(|(k, p)| match want.get(k) {
                Some(d) => crate::tunnels::Tunnel {
                    name: format!("{}.{}", d.device, d.namespace),
                    wg_key: k.clone(),
                    prefix: format!("{}/64", d.prefix),
                    endpoint: d.endpoints.first().map(ToString::to_string),
                },
                None => self
                    .last_tunnels
                    .get(k)
                    .cloned()
                    .unwrap_or(crate::tunnels::Tunnel {
                        name: k.clone(),
                        wg_key: k.clone(),
                        prefix: format!("{p}/64"),
                        endpoint: None,
                    }),
            })
            .collect::<Vec<_>>();
        self.last_tunnels = tunnels
            .iter()
            .map(|t| (t.wg_key.clone(), t.clone()))
            .collect();
        crate::tunnels::save(
            &self.dirs,
            &crate::tunnels::TunnelsFile {
                interface: ifname,
                last_cycle: crate::exit::now(),
                pid: std::process::id(),
                tunnels,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_peers_come_from_a_uapi_dump() {
        let k1 = PublicKey([1; 32]);
        let dump = format!(
            "private_key=00\nlisten_port=51820\npublic_key={}\nendpoint=10.0.0.1:51820\nallowed_ip=fd00:1:2:3::/64\npublic_key={}\nerrno=0\n\n",
            "01".repeat(32),
            "02".repeat(32)
        );
        let got = current_peers(&dump);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[&k1.to_base64()],
            "fd00:1:2:3::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(got[&PublicKey([2; 32]).to_base64()], Ipv6Addr::UNSPECIFIED);
    }
}
