//! Refresh: the trusted peers' records and this identity's own, each verified and
//! checked against the high-water marks.

use super::{Daemon, PeerDevice, View};
use crate::device::roster;
use crate::dns;
use crate::freshness::{Grace, Kept};
use crate::identity::PublicIdentity;
use crate::node::load_peers;
use crate::records::{
    device_name, from_txt, master_name, open, subnet_of, DeviceRecord, MasterRecord,
};
use anyhow::Context as _;
use std::net::Ipv6Addr;

impl Daemon {
    /// The local roster as a master record (on the machine with the seed).
    fn local_roster(&self, now: u64) -> anyhow::Result<MasterRecord> {
        let devices = roster(&self.dirs)?
            .iter()
            .map(crate::device::RosterEntry::delegation)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(MasterRecord {
            namespace: self.identity.namespace.clone(),
            issued: now,
            expires: now + self.o.record_lifetime,
            devices,
        })
    }

    /// Whom this device trusts and its identity's roster: from the local stores with
    /// the seed; from the identity's own trust and master records (readable by its
    /// devices) without it, each refused when older than one already seen.
    fn own_view(&mut self, now: u64) -> anyhow::Result<(Vec<PublicIdentity>, MasterRecord)> {
        if self.seed.is_some() {
            let peers = load_peers(&self.dirs)?;
            return Ok((
                peers.trusted().map(|p| p.identity.clone()).collect(),
                self.local_roster(now)?,
            ));
        }
        let ns = self.identity.namespace.clone();
        let name = master_name(&ns);
        let own = MasterRecord::verify(&self.read(&name)?, &name, &self.identity.master, now)
            .with_context(|| format!("own master record {name}"))?;
        self.fresh
            .accept(&name, own.issued, own.expires)
            .with_context(|| format!("own master record {name}"))?;
        let tname = crate::records::trust_name(&ns);
        let trust = crate::records::TrustRecord::verify(
            &self.read(&tname)?,
            &tname,
            &self.identity.master,
            now,
        )
        .with_context(|| format!("own trust record {tname}"))?;
        self.fresh
            .accept(&tname, trust.issued, trust.expires)
            .with_context(|| format!("own trust record {tname}"))?;
        Ok((trust.peers, own))
    }

    /// After the record at `name` failed: keeps `prefix`/`len` (its devices) as
    /// connected until the last good record there expires, or lets them go; says which.
    fn hold(
        &self,
        name: &str,
        prefix: Ipv6Addr,
        len: u8,
        now: u64,
        keep: &mut Vec<Kept>,
    ) -> String {
        match self.fresh.grace(name, now) {
            Grace::Until(until) => {
                keep.push(Kept { prefix, len, until });
                format!(
                    "its devices ({prefix}/{len}) stay as they are until the last good record expires at {until} (in {} s)",
                    until - now
                )
            }
            Grace::Expired(at) => format!(
                "the last good record expired at {at}: its devices ({prefix}/{len}) are removed"
            ),
            Grace::Never => {
                format!("no good record seen yet: its devices ({prefix}/{len}) are not connected")
            }
        }
    }

    /// Reads every trusted peer's records and this identity's other devices'. A record
    /// that fails a check (altered, expired, unreachable, or older than one already
    /// seen there: a rollback) is logged with the reason and skipped; the devices
    /// behind it (the identity's /48 for a master record, the device's /64 for a device
    /// record) stay connected as they were only until the last record that verified
    /// there expires, and are removed after that. The high-water marks are saved when
    /// they moved.
    pub fn refresh(&mut self, now: u64) -> anyhow::Result<View> {
        let before = self.fresh.clone();
        let view = self.refresh_inner(now);
        if self.fresh != before {
            crate::freshness::save(&self.dirs.state, &self.fresh)?;
        }
        view
    }

    fn refresh_inner(&mut self, now: u64) -> anyhow::Result<View> {
        let (trusted, own) = self.own_view(now)?;
        let mut out = Vec::new();
        let mut keep = Vec::new();
        let mut readers = Vec::new();
        for p in &trusted {
            readers.push(p.ecdh);
            let ns = &p.namespace;
            let name = master_name(ns);
            let checked = self
                .read(&name)
                .and_then(|plain| Ok(MasterRecord::verify(&plain, &name, &p.master, now)?))
                .and_then(|r| {
                    self.fresh.accept(&name, r.issued, r.expires)?;
                    Ok(r)
                });
            let roster = match checked {
                Ok(r) => r,
                Err(e) => {
                    let what = self.hold(&name, p.overlay_prefix(), 48, now, &mut keep);
                    tracing::warn!(
                        "peer {} ({ns}): master record rejected: {e:#}; {what}",
                        p.node_id()
                    );
                    continue;
                }
            };
            readers.extend(roster.devices.iter().map(|d| d.device.ecdh));
            self.read_devices(p, &roster, now, None, &mut out, &mut keep);
        }
        // This identity's other devices.
        let me = self.identity.clone();
        let skip = self.device.clone();
        self.read_devices(&me, &own, now, Some(&skip), &mut out, &mut keep);
        Ok(View {
            devices: out,
            keep,
            readers,
            trusted,
            own,
            now,
        })
    }

    fn read_devices(
        &mut self,
        id: &PublicIdentity,
        roster: &MasterRecord,
        now: u64,
        skip: Option<&str>,
        out: &mut Vec<PeerDevice>,
        keep: &mut Vec<Kept>,
    ) {
        let ns = &id.namespace;
        for d in roster
            .devices
            .iter()
            .filter(|d| Some(d.device.name.as_str()) != skip)
        {
            let dname = device_name(ns, &d.device.name);
            let checked = self
                .read(&dname)
                .and_then(|plain| Ok(DeviceRecord::verify(&plain, &dname, roster, now)?))
                .and_then(|r| {
                    self.fresh.accept(&dname, r.issued, r.expires)?;
                    Ok(r)
                });
            match checked {
                Ok(r) => out.push(PeerDevice {
                    namespace: ns.clone(),
                    device: r.device.clone(),
                    wg_key: r.wg_key,
                    prefix: id.device_prefix(r.subnet),
                    endpoints: r.endpoints,
                    facilitator: r.facilitator,
                }),
                Err(e) => {
                    let prefix = id.device_prefix(subnet_of(&d.device.name));
                    let what = self.hold(&dname, prefix, 64, now, keep);
                    tracing::warn!("{ns}: device record {dname} rejected: {e:#}; {what}");
                }
            }
        }
    }

    /// Reads and opens the record at `name` with this device's key, or the identity's.
    fn read(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let txt = dns::resolve_txt(&self.o.dns, name)?
            .with_context(|| format!("no records at {name}"))?;
        let env = from_txt(&txt)?;
        match open(&env, name, &self.keys.ecdh()) {
            Ok(plain) => Ok(plain),
            Err(crate::records::RecordError::NotForUs) if self.seed.is_some() => {
                let seed = self.seed.as_ref().expect("checked");
                Ok(open(&env, name, &seed.ecdh())?)
            }
            Err(e) => Err(e.into()),
        }
    }
}
