//! Publication: this identity's records, sealed to their readers.

use super::{Daemon, View};
use crate::dns;
use crate::records::{
    device_name, master_name, seal, subnet_of, to_txt, update_names, DeviceRecord,
};
use anyhow::bail;
use portdistrict_wg::PrivateKey;
use std::net::{IpAddr, SocketAddr};

/// Global addresses of this machine's interfaces (except `skip`), from `ip -o addr`.
pub(crate) fn detect_addresses(skip: &str) -> Vec<IpAddr> {
    let Ok(mut h) = portdistrict_netlink::Handle::open() else {
        return Vec::new();
    };
    let skip = h.link_index(skip).ok();
    h.addresses(None)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.is_usable_global() && Some(a.ifindex) != skip)
        .map(|a| a.local)
        .collect()
}

impl Daemon {
    /// Publishes this identity's records for `readers`: with the seed, the master
    /// record, the trust record (for own devices only) and this device's record;
    /// without it, this device's record.
    pub fn publish(&mut self, now: u64, view: &View) -> anyhow::Result<()> {
        let ns = &self.identity.namespace;
        let mut rng = rand_core::OsRng;
        let own_devices: Vec<[u8; 32]> = view.own.devices.iter().map(|d| d.device.ecdh).collect();
        let mut readers = view.readers.clone();
        readers.extend(own_devices.iter().copied());
        readers.sort_unstable();
        readers.dedup();
        // Only this device's own names: a per-device TSIG key (see docs/mesh.md) may update
        // nothing else.
        let own_names = update_names(ns, &self.device, self.seed.is_some());
        let publish = |name: &str, txt: &[Vec<String>]| {
            if !own_names.iter().any(|n| n == name) {
                bail!("refusing to publish at {name}: not one of this device's names");
            }
            dns::publish(&self.o.dns, name, txt, crate::exit::now)?;
            self.metrics
                .published
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        };
        if let Some(seed) = &self.seed {
            let name = master_name(ns);
            let env = seal(&view.own.sign(&seed.master())?, &name, &readers, &mut rng)?;
            publish(&name, &to_txt(&env))?;
            let trust = crate::records::TrustRecord {
                namespace: ns.clone(),
                issued: now,
                expires: now + self.o.record_lifetime,
                peers: view.trusted.clone(),
            };
            let tname = crate::records::trust_name(ns);
            let env = seal(&trust.sign(&seed.master())?, &tname, &own_devices, &mut rng)?;
            publish(&tname, &to_txt(&env))?;
        }
        let endpoints = if self.o.endpoints.is_empty() {
            detect_addresses(&self.o.interface)
                .into_iter()
                .filter(|a| !self.is_overlay(*a))
                .filter(|a| {
                    !matches!(a, std::net::IpAddr::V6(v6) if portdistrict_control_core::nat::addr::in_prefix(*v6))
                })
                .map(|a| SocketAddr::new(a, self.o.listen_port))
                .collect()
        } else {
            self.o.endpoints.clone()
        };
        if endpoints.is_empty() {
            tracing::warn!(
                "WARNING: publishing {}.{ns} with NO endpoint: no global address found on any interface; peers cannot reach this device until it has one (or pass --endpoint IP:PORT)",
                self.device
            );
        }
        let wg = PrivateKey::from_bytes(self.keys.wireguard()).public_key();
        let rec = DeviceRecord {
            namespace: ns.clone(),
            device: self.device.clone(),
            issued: now,
            expires: now + self.o.record_lifetime,
            wg_key: *wg.as_bytes(),
            subnet: subnet_of(&self.device),
            endpoints,
            facilitator: self.o.facilitator.map(|(ep, k)| (ep, k.0)),
        };
        super::Live::lock(&self.live)
            .published
            .clone_from(&rec.endpoints);
        let dname = device_name(ns, &self.device);
        let env = seal(&rec.sign(&self.keys.signing())?, &dname, &readers, &mut rng)?;
        publish(&dname, &to_txt(&env))?;
        tracing::info!(
            "published {}{dname} ({} endpoints) for {} readers",
            if self.seed.is_some() {
                format!(
                    "{} ({} devices), its trust record and ",
                    master_name(ns),
                    view.own.devices.len()
                )
            } else {
                String::new()
            },
            rec.endpoints.len(),
            readers.len()
        );
        Ok(())
    }

    fn is_overlay(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V6(v6) => v6.octets()[..6] == self.identity.overlay_prefix().octets()[..6],
            IpAddr::V4(_) => false,
        }
    }
}
