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
//!    forgotten, gone from a roster) are removed. What changes is a pure plan
//!    ([`portdistrict_control_core::mesh`]) of the view and what is connected;
//!    [`connect`](Daemon::connect) applies it.

mod connect;
mod metrics;
mod options;
mod publish;
mod refresh;
mod traversal;

pub use options::{configured, DaemonArgs, DaemonOptions, DEFAULT_CONFIG};
pub use portdistrict_control_core::mesh::PeerDevice;
pub(crate) use publish::detect_addresses;

use crate::device::this_device;
use crate::freshness::{Freshness, Grace, Kept};
use crate::identity::{PublicIdentity, Seed};
use crate::node::unlock;
use crate::records::{master_name, subnet_of, DeviceKeys, MasterRecord};
use crate::Dirs;
use anyhow::{bail, Context as _};
use portdistrict_wg::PublicKey;
use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Peers the shared-memory region holds.
pub const SHM_PEERS: u32 = 1024;

/// How long a published record is valid, by default (`--record-lifetime`).
pub const RECORD_LIFETIME: u64 = 3600;

/// The shortest `--record-lifetime`.
pub const MIN_RECORD_LIFETIME: u64 = 10;

/// Everything a cycle needs, built once with every dependency.
pub struct Daemon {
    dirs: Dirs,
    o: DaemonOptions,
    identity: PublicIdentity,
    /// The identity's seed, when this machine holds it.
    seed: Option<Seed>,
    device: String,
    keys: DeviceKeys,
    /// Peer WireGuard key -> its /64, as last configured.
    connected: BTreeMap<PublicKey, Ipv6Addr>,
    /// The high-water marks and last good expiries of the records read (persisted).
    fresh: Freshness,
    /// What the cycle shares with the traversal thread.
    live: Arc<Mutex<Live>>,
    /// What the cycles did, for `--metrics-listen`.
    metrics: Arc<metrics::CycleMetrics>,
}

/// What the cycles and the traversal thread share: the dataplane client, each peer's
/// path, and what `tunnels.json` says. A cycle holds it only while it connects (never
/// while it waits for DNS), so a slow or lossy DNS server does not stall windows.
struct Live {
    /// The client of the tunnel's dataplane (its shared-memory region when we started
    /// it, else its UAPI socket), chosen at the first cycle that finds the tunnel.
    dataplane: Option<Box<dyn crate::dataplane::Dataplane + Send>>,
    /// NAT traversal: the facilitator link and each peer's path.
    traversal: traversal::Traversal,
    /// The endpoints this device published last (what it tells the facilitator).
    published: Vec<std::net::SocketAddr>,
    /// What `tunnels.json` said last, by key.
    last_tunnels: BTreeMap<PublicKey, crate::tunnels::Tunnel>,
    /// When the last cycle finished (Unix seconds), for `tunnels.json`; 0 before the
    /// first.
    last_cycle: u64,
}

impl Live {
    /// Locks `live`; a thread that panicked holding it left nothing half-written
    /// that the next tick or cycle does not redo, so a poisoned lock is taken as is.
    fn lock(live: &Mutex<Live>) -> MutexGuard<'_, Live> {
        live.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
            tracing::warn!(
                "--record-lifetime {}s is not longer than --interval {}s: this device's records will expire between cycles and peers will disconnect it",
                o.record_lifetime,
                o.interval.as_secs()
            );
        }
        let fresh = crate::freshness::load(&dirs.state)?;
        let traversal = traversal::Traversal::new(
            &o,
            portdistrict_wg::PrivateKey::from_bytes(keys.wireguard()),
        );
        Ok(Daemon {
            live: Arc::new(Mutex::new(Live {
                dataplane: None,
                traversal,
                published: Vec::new(),
                last_tunnels: BTreeMap::new(),
                last_cycle: 0,
            })),
            dirs,
            o,
            identity: rec.identity,
            seed,
            device,
            keys,
            connected: BTreeMap::new(),
            fresh,
            metrics: Arc::default(),
        })
    }

    fn own_prefix(&self) -> Ipv6Addr {
        self.identity.device_prefix(subnet_of(&self.device))
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
                    tracing::error!("{lost}: every peer is disconnected until they verify again");
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
        let m = &self.metrics;
        m.trusted
            .store(view.trusted.len() as u64, Ordering::Relaxed);
        m.verified
            .store(view.devices.len() as u64, Ordering::Relaxed);
        if let Err(e) = self.publish(now, &view) {
            self.metrics.publish_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!("publication failed: {e:#}");
        }
        self.connect(&view)?;
        let configured = self.connected.len() as u64;
        self.metrics.configured.store(configured, Ordering::Relaxed);
        Ok(view.devices.len())
    }

    /// Runs cycles until `term`, and NAT traversal on a thread of its own beside
    /// them (a tick every 100 ms: windows are timed to a fraction of a second, and a
    /// cycle may wait on DNS for many).
    pub fn run(&mut self, term: &AtomicBool) -> anyhow::Result<()> {
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
        if let (Some(addr), false) = (self.o.metrics_listen, self.o.once) {
            let listener = portdistrict_metrics::http::bind(addr)
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
            let scrape = metrics::scraper(Arc::clone(&self.metrics), Arc::clone(&self.live));
            portdistrict_metrics::http::spawn(listener, scrape)
                .context("starting the metrics thread")?;
            tracing::info!("metrics on http://{addr}/metrics");
        }
        if self.o.once {
            return self
                .cycle()
                .map(|_| ())
                .map_err(|e| e.context("the cycle failed"));
        }
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let live = Arc::clone(&self.live);
            let (dirs, ifname) = (self.dirs.clone(), self.o.interface.clone());
            let stop = &stop;
            std::thread::Builder::new()
                .name("traversal".into())
                .spawn_scoped(scope, move || {
                    while !term.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                        traverse(&live, &dirs, &ifname);
                        std::thread::sleep(TICK);
                    }
                })
                .context("starting the traversal thread")?;
            let r = self.cycles(term, ctl.as_ref());
            stop.store(true, Ordering::Relaxed);
            r
        })
    }

    /// Cycles until `term`: every interval, or at once when the control socket
    /// changed trust, a roster or the tunnels.
    fn cycles(
        &mut self,
        term: &AtomicBool,
        ctl: Option<&crate::ctl::Control>,
    ) -> anyhow::Result<()> {
        let mut first = true;
        loop {
            let result = self.cycle();
            self.metrics.cycle_done(result.is_ok(), crate::exit::now());
            let status = match result {
                Ok(n) => {
                    tracing::info!("cycle done: {n} peer devices connected");
                    format!("{n} peer devices connected on {}", self.o.interface)
                }
                Err(e) => {
                    tracing::error!("cycle failed: {e:#}");
                    format!(
                        "{} peer devices connected on {}; the last cycle failed: {e:#}",
                        self.connected.len(),
                        self.o.interface
                    )
                }
            };
            // Ready once the control socket listens and the first cycle has run
            // (a failed one included: the next retries, and the tunnel is up).
            match std::mem::take(&mut first) {
                true => portdistrict_logging::notify::ready(&status),
                false => portdistrict_logging::notify::status(&status),
            }
            // A change through the control socket (`peer trust`, `peer revoke`,
            // `device roster add|remove`, ...) republishes at once with the new key
            // slots and roster instead of waiting for the interval. Nothing else
            // writes those stores while the daemon runs, so there is no file to watch.
            let mut slept = Duration::ZERO;
            while slept < self.o.interval {
                if term.load(Ordering::Relaxed) {
                    // The tunnel stays (its dataplane runs on; a restarted daemon
                    // takes it up): stop and restart cannot be told apart here.
                    portdistrict_logging::notify::stopping();
                    return Ok(());
                }
                if ctl.is_some_and(|c| c.poll_holding(self.seed.as_ref())) {
                    tracing::info!("trust, roster or tunnels changed: republishing now");
                    break;
                }
                std::thread::sleep(TICK);
                slept += TICK;
            }
        }
    }
}

/// How often traversal ticks and the control socket is looked at.
const TICK: Duration = Duration::from_millis(100);

/// One tick of NAT traversal; `tunnels.json` is rewritten when a path changed (once a
/// cycle has written it).
fn traverse(live: &Mutex<Live>, dirs: &Dirs, ifname: &str) {
    let mut l = Live::lock(live);
    let l = &mut *l;
    let Some(dp) = l.dataplane.as_mut() else {
        return;
    };
    let changed = l
        .traversal
        .tick(std::time::Instant::now(), dp.as_mut(), &l.published);
    if changed && l.last_cycle != 0 {
        if let Err(e) = connect::write_tunnels(l, dirs, ifname.to_owned()) {
            tracing::warn!("{e:#}");
        }
    }
}
