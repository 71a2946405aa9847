//! `portdistrictd`: publishes this identity's records, reads its trusted peers'
//! records and connects this device's tunnel to every trusted device, every interval
//! (or once, with `--once`), until SIGTERM.
//!
//! One cycle:
//! 1. **publish**: the master record (the roster) and this device's record (WireGuard
//!    key, endpoints, subnet), each sealed to the readers: TRUSTED peers' identity-ECDH
//!    keys and the roster's devices; a record with no endpoint is published with a loud
//!    warning;
//! 2. **refresh**: for every TRUSTED peer, its master record, then each of its devices'
//!    records, each checked (readable by us, signature, delegation, owner name,
//!    expiry); a record that fails is logged with the reason and ignored;
//! 3. **connect**: the tunnel gets this device's WireGuard key and overlay address,
//!    every verified peer device becomes a WireGuard peer (its key, first endpoint,
//!    AllowedIPs = its /64) with a route, and peers no longer wanted (revoked, demoted,
//!    forgotten, gone from a roster) are removed.

use crate::device::{roster, this_device};
use crate::dns::{self, DnsConfig};
use crate::freshness::{carried, Freshness, Grace, Kept};
use crate::identity::{PublicIdentity, Seed};
use crate::node::{load_peers, unlock, SecretOptions};
use crate::records::{
    device_name, from_txt, master_name, open, seal, subnet_of, to_txt, update_names, DeviceKeys,
    DeviceRecord, MasterRecord,
};
use crate::{run_cmd, uapi, Dirs};
use anyhow::{bail, Context as _};
use portdistrict_wg::uapi::{AllowedIpChange, PeerChange, SetRequest};
use portdistrict_wg::{PrivateKey, PublicKey};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// Peers the shared-memory region holds.
pub const SHM_PEERS: u32 = 1024;

/// How long a published record is valid, by default (`--record-lifetime`).
pub const RECORD_LIFETIME: u64 = 3600;
/// The longest `--record-lifetime` (thirty days).
const MAX_RECORD_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// The longest `--interval` between cycles.
const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// The shortest `--record-lifetime`.
pub const MIN_RECORD_LIFETIME: u64 = 10;

/// Options of `portdistrictd`.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// DNS settings.
    pub dns: DnsConfig,
    /// How to unlock the identity.
    pub secret: SecretOptions,
    /// The tunnel interface (created with the dataplane when missing).
    pub interface: String,
    /// This device's WireGuard port.
    pub listen_port: u16,
    /// Endpoints to publish instead of the detected ones.
    pub endpoints: Vec<SocketAddr>,
    /// Time between cycles.
    pub interval: Duration,
    /// How long the records this device publishes are valid (seconds). It also bounds
    /// how long peers keep this device's tunnels when its records fail.
    pub record_lifetime: u64,
    /// One cycle, then exit.
    pub once: bool,
    /// Who besides root may use the control socket (`--control-group`).
    pub control_group: Option<u32>,
}

fn parse_addr(v: &str, default_port: u16, flag: &str) -> anyhow::Result<SocketAddr> {
    v.parse::<SocketAddr>()
        .or_else(|_| {
            v.parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, default_port))
        })
        .map_err(|_| anyhow::anyhow!("{flag} {v}: expected IP or IP:PORT"))
}

impl DaemonOptions {
    /// Parses the flags; `--config FILE` reads `key = value` lines with the same
    /// names (without `--`) first, flags override them.
    pub fn parse(args: &[&str]) -> anyhow::Result<DaemonOptions> {
        let mut kv: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut flags = Vec::new();
        let mut it = args.iter();
        let mut once = false;
        while let Some(&a) = it.next() {
            if a == "--once" {
                once = true;
                continue;
            }
            let key = a
                .strip_prefix("--")
                .with_context(|| format!("unexpected argument {a:?}"))?;
            let v = *it.next().with_context(|| format!("{a} needs a value"))?;
            if key == "config" {
                let text = std::fs::read_to_string(v).with_context(|| format!("reading {v}"))?;
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let (k, val) = line
                        .split_once('=')
                        .with_context(|| format!("{v}:{}: expected key = value", n + 1))?;
                    kv.entry(k.trim().to_owned())
                        .or_default()
                        .push(val.trim().to_owned());
                }
            } else {
                flags.push((key.to_owned(), v.to_owned()));
            }
        }
        let mut seen_flag = std::collections::BTreeSet::new();
        for (k, v) in flags {
            if seen_flag.insert(k.clone()) {
                kv.insert(k.clone(), Vec::new());
            }
            kv.entry(k).or_default().push(v);
        }
        let one = |k: &str| kv.get(k).and_then(|v| v.last()).map(String::as_str);
        let need = |k: &str| {
            one(k)
                .with_context(|| format!("portdistrictd needs --{k} (or `{k} = ...` in --config)"))
        };
        let known = [
            "dns-server",
            "zone",
            "tsig-key",
            "tsig-secret-file",
            "resolver",
            "passphrase-file",
            "key-file",
            "interface",
            "listen-port",
            "endpoint",
            "interval",
            "record-lifetime",
            "control-group",
        ];
        if let Some(k) = kv.keys().find(|k| !known.contains(&k.as_str())) {
            bail!("portdistrictd: unknown option {k}");
        }
        let secret_file = need("tsig-secret-file")?;
        let secret_text = std::fs::read_to_string(secret_file)
            .with_context(|| format!("reading the TSIG secret {secret_file}"))?;
        use base64::Engine as _;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret_text.trim())
            .with_context(|| format!("{secret_file}: the TSIG secret must be base64 (as in the server's key definition)"))?;
        let server = parse_addr(need("dns-server")?, 53, "--dns-server")?;
        Ok(DaemonOptions {
            control_group: one("control-group")
                .map(crate::ctl::parse_group)
                .transpose()?,
            dns: DnsConfig {
                server,
                zone: need("zone")?.trim_end_matches('.').to_owned(),
                key_name: need("tsig-key")?.to_owned(),
                secret,
                resolver: match one("resolver") {
                    Some(r) => parse_addr(r, 53, "--resolver")?,
                    None => server,
                },
            },
            secret: SecretOptions {
                passphrase_file: one("passphrase-file").map(Into::into),
                key_file: None,
            },
            interface: crate::ifname("--interface", one("interface").unwrap_or("pd0"))?,
            listen_port: match one("listen-port") {
                Some(p) => p
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .with_context(|| format!("--listen-port {p}: 1 to 65535"))?,
                None => 51820,
            },
            endpoints: kv
                .get("endpoint")
                .into_iter()
                .flatten()
                .map(|e| {
                    e.parse()
                        .with_context(|| format!("--endpoint {e}: expected IP:PORT"))
                })
                .collect::<anyhow::Result<_>>()?,
            interval: match one("interval") {
                Some(i) => crate::parse_duration(i, MAX_INTERVAL).context("--interval")?,
                None => Duration::from_secs(30),
            },
            record_lifetime: match one("record-lifetime") {
                Some(l) => {
                    let secs = crate::parse_duration(l, MAX_RECORD_LIFETIME)
                        .context("--record-lifetime")?
                        .as_secs();
                    if secs < MIN_RECORD_LIFETIME {
                        bail!("--record-lifetime {l}: at least {MIN_RECORD_LIFETIME}s");
                    }
                    secs
                }
                None => RECORD_LIFETIME,
            },
            once,
        })
    }
}

/// Everything a cycle needs, built once with every dependency.
pub struct Daemon {
    dirs: Dirs,
    o: DaemonOptions,
    identity: PublicIdentity,
    /// The identity's seed, when this machine holds it.
    seed: Option<Seed>,
    device: String,
    keys: DeviceKeys,
    /// Peer WireGuard key (base64) -> its /64, as last configured.
    connected: BTreeMap<String, Ipv6Addr>,
    /// What `tunnels.json` said last, by key.
    last_tunnels: BTreeMap<String, crate::tunnels::Tunnel>,
    /// The shared-memory region the dataplane reads (None: UAPI).
    shm: Option<portdistrict_shm::Region>,
    /// The peers last written to the region, by key.
    peer_cfg: BTreeMap<String, portdistrict_shm::PeerConfig>,
    /// The high-water marks and last good expiries of the records read (persisted).
    fresh: Freshness,
}

/// What a refresh found.
#[derive(Debug, Clone)]
pub struct View {
    /// Verified devices of trusted peers and of this identity's other devices.
    pub devices: Vec<PeerDevice>,
    /// Prefixes (an identity's /48 when its master record failed, a device's /64
    /// when its device record failed) whose connected devices stay as they are until
    /// the last good record there expires.
    pub keep: Vec<Kept>,
    /// Who may read our records besides our own devices: trusted peers' identity keys
    /// and their devices' keys.
    pub readers: Vec<[u8; 32]>,
    /// The trusted peers.
    pub trusted: Vec<PublicIdentity>,
    /// This identity's roster.
    pub own: MasterRecord,
    /// When it was made (the grace periods in `keep` are checked against it).
    pub now: u64,
}

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
}

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

/// Global addresses of this machine's interfaces (except `skip`), from `ip -o addr`.
fn detect_addresses(skip: &str) -> Vec<IpAddr> {
    let out = std::process::Command::new("ip")
        .args(["-o", "addr", "show", "scope", "global"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("tentative") && !l.contains("deprecated"))
        .filter(|l| l.split_whitespace().nth(1) != Some(skip))
        .filter_map(|l| {
            let mut w = l
                .split_whitespace()
                .skip_while(|w| *w != "inet" && *w != "inet6");
            w.next()?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

impl Daemon {
    /// Loads the identity (unlocking its seed when this machine holds it) and this
    /// device.
    pub fn new(dirs: Dirs, o: DaemonOptions) -> anyhow::Result<Daemon> {
        let rec = crate::node::record(&dirs)?;
        let seed = match rec.secret {
            crate::node::SecretAt::Elsewhere => None,
            _ => Some(unlock(&dirs, &o.secret)?.1),
        };
        let (device, keys) = this_device(&dirs)?;
        let ns = &rec.identity.namespace;
        let zone = &o.dns.zone;
        if ns != zone && !ns.ends_with(&format!(".{zone}")) {
            bail!("the namespace {ns} is not inside the zone {zone}: records could not be published there");
        }
        if !o.once && o.record_lifetime <= o.interval.as_secs() {
            log::warn!(
                "--record-lifetime {}s is not longer than --interval {}s: this device's records will expire between cycles and peers will disconnect it",
                o.record_lifetime,
                o.interval.as_secs()
            );
        }
        let fresh = crate::freshness::load(&dirs.state)?;
        Ok(Daemon {
            dirs,
            o,
            identity: rec.identity,
            seed,
            device,
            keys,
            connected: BTreeMap::new(),
            last_tunnels: BTreeMap::new(),
            shm: None,
            peer_cfg: BTreeMap::new(),
            fresh,
        })
    }

    fn own_prefix(&self) -> Ipv6Addr {
        self.identity.device_prefix(subnet_of(&self.device))
    }

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

    /// Publishes this identity's records for `readers`: with the seed, the master
    /// record, the trust record (for own devices only) and this device's record;
    /// without it, this device's record.
    pub fn publish(&self, now: u64, view: &View) -> anyhow::Result<()> {
        let ns = &self.identity.namespace;
        let mut rng = rand_core::OsRng;
        let own_devices: Vec<[u8; 32]> = view.own.devices.iter().map(|d| d.device.ecdh).collect();
        let mut readers = view.readers.clone();
        readers.extend(own_devices.iter().copied());
        readers.sort_unstable();
        readers.dedup();
        // Only this device's own names: a per-device TSIG key (see the README) may update
        // nothing else.
        let own_names = update_names(ns, &self.device, self.seed.is_some());
        let publish = |name: &str, txt: &[Vec<String>]| {
            if !own_names.iter().any(|n| n == name) {
                bail!("refusing to publish at {name}: not one of this device's names");
            }
            dns::publish(&self.o.dns, name, txt, crate::exit::now)
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
                .map(|a| SocketAddr::new(a, self.o.listen_port))
                .collect()
        } else {
            self.o.endpoints.clone()
        };
        if endpoints.is_empty() {
            log::warn!(
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
        };
        let dname = device_name(ns, &self.device);
        let env = seal(&rec.sign(&self.keys.signing())?, &dname, &readers, &mut rng)?;
        publish(&dname, &to_txt(&env))?;
        log::info!(
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
                    log::warn!(
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
                }),
                Err(e) => {
                    let prefix = id.device_prefix(subnet_of(&d.device.name));
                    let what = self.hold(&dname, prefix, 64, now, keep);
                    log::warn!("{ns}: device record {dname} rejected: {e:#}; {what}");
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

    /// On a device without the seed, which of the identity's own master and trust
    /// records failed past the last good copy's expiry (None: both still in grace).
    fn own_records_lost(&self, now: u64) -> Option<String> {
        if self.seed.is_some() {
            return None;
        }
        let ns = &self.identity.namespace;
        [master_name(ns), crate::records::trust_name(ns)]
            .into_iter()
            .find_map(|name| match self.fresh.grace(&name, now) {
                Grace::Expired(at) => Some(format!(
                    "the last good copy of the identity's own record {name} expired at {at}"
                )),
                Grace::Until(_) | Grace::Never => None,
            })
    }

    /// One cycle: refresh (whom to publish for and connect to), publish, connect.
    /// Publication failures are logged (the peers' records are still connected).
    pub fn cycle(&mut self) -> anyhow::Result<usize> {
        let now = crate::exit::now();
        let view = match self.refresh(now) {
            Ok(v) => v,
            Err(e) => {
                // Without the seed, whom to connect to comes from the identity's own
                // records: when they fail past the last good one's expiry, nobody.
                if let Some(lost) = self.own_records_lost(now) {
                    log::error!("{lost}: every peer is disconnected until they verify again");
                    let view = View {
                        devices: Vec::new(),
                        keep: Vec::new(),
                        readers: Vec::new(),
                        trusted: Vec::new(),
                        own: MasterRecord {
                            namespace: self.identity.namespace.clone(),
                            issued: 0,
                            expires: 0,
                            devices: Vec::new(),
                        },
                        now,
                    };
                    self.connect(&view)?;
                }
                return Err(e);
            }
        };
        if let Err(e) = self.publish(now, &view) {
            log::error!("publication failed: {e:#}");
        }
        self.connect(&view)?;
        Ok(view.devices.len())
    }

    /// Runs cycles until `term`.
    pub fn run(&mut self, term: &std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering;
        let ctl = match self.o.once {
            true => None,
            false => Some(crate::ctl::Control::bind(
                &self.dirs,
                crate::ctl::Daemon::Control,
                crate::ctl::Access {
                    group: self.o.control_group,
                },
            )?),
        };
        loop {
            match self.cycle() {
                Ok(n) => log::info!("cycle done: {n} peer devices connected"),
                Err(e) if self.o.once => return Err(e.context("the cycle failed")),
                Err(e) => log::error!("cycle failed: {e:#}"),
            }
            if self.o.once {
                return Ok(());
            }
            // A trust change (`peer trust`, `peer revoke`, ... through the control
            // socket) republishes at once with the new key slots instead of waiting
            // for the interval; so does a roster change (`device roster add` and
            // `device join` need the identity's secret, which the CLI holds: they
            // write roster.json themselves).
            let stamp = |d: &Dirs| {
                ["roster.json"].map(|f| {
                    std::fs::metadata(d.state.join(f))
                        .and_then(|m| m.modified())
                        .ok()
                })
            };
            let before = stamp(&self.dirs);
            let mut slept = Duration::ZERO;
            while slept < self.o.interval {
                if term.load(Ordering::Relaxed) {
                    return Ok(());
                }
                if ctl.as_ref().is_some_and(crate::ctl::Control::poll) {
                    log::info!("trust, roster or tunnels changed: republishing now");
                    break;
                }
                if stamp(&self.dirs) != before {
                    log::info!("trust or roster changed: republishing now");
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                slept += Duration::from_millis(100);
            }
        }
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

    #[test]
    fn options_from_flags_and_config() {
        let dir = std::env::temp_dir().join(format!("pd-daemon-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "c2VjcmV0\n").unwrap();
        let conf = dir.join("conf");
        std::fs::write(
            &conf,
            format!("# settings\ndns-server = 192.0.2.53\nzone = pd.test.\ntsig-key = k\ntsig-secret-file = {}\ninterval = 10s\n", secret.display()),
        )
        .unwrap();
        let o = DaemonOptions::parse(&[
            "--config",
            &conf.to_string_lossy(),
            "--interval",
            "5s",
            "--once",
        ])
        .unwrap();
        assert_eq!(o.dns.server, "192.0.2.53:53".parse().unwrap());
        assert_eq!(o.dns.resolver, o.dns.server);
        assert_eq!(o.dns.zone, "pd.test");
        assert_eq!(o.dns.secret, b"secret");
        assert_eq!(o.interval, Duration::from_secs(5), "flags win");
        assert!(o.once);
        assert_eq!(o.record_lifetime, RECORD_LIFETIME);
        let c = conf.to_string_lossy();
        let o = DaemonOptions::parse(&["--config", &c, "--record-lifetime", "20s"]).unwrap();
        assert_eq!(o.record_lifetime, 20);
        let e = DaemonOptions::parse(&["--config", &c, "--record-lifetime", "5s"]).unwrap_err();
        assert!(
            e.to_string().contains("--record-lifetime 5s: at least 10s"),
            "{e}"
        );
        let e = DaemonOptions::parse(&["--config", &conf.to_string_lossy(), "--bogus", "1"])
            .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = DaemonOptions::parse(&[]).unwrap_err();
        assert!(e.to_string().contains("--tsig-secret-file"), "{e}");
        let c = conf.to_string_lossy();
        for (args, needle) in [
            (&["--config", &*c, "--interface", "pd*"][..], "wildcards"),
            (
                &["--config", &*c, "--interval", "99999999999999s"][..],
                "too long",
            ),
        ] {
            let e = DaemonOptions::parse(args).unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{args:?}: {e:#}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
