//! The dataplane's side of the shared-memory region (`--shm PATH`): on every timer
//! tick it checks the configuration's generation and, when it moved, reads a
//! consistent copy and applies the difference to the last one it applied (so an
//! unchanged peer keeps its sessions), then writes that generation back as the
//! applied one (what portdistrictd waits for after a write); it hands over queued
//! commands (handshake, probe, pin, raw send: `driver/commands.rs` runs them) and
//! writes the peers' statistics back once a second, with each peer's handshake
//! source. A corrupt region is logged once
//! per generation and counted (`shm_errors`); the last good configuration stays. A
//! region whose file shrank or was overwritten in place is not touched (the region
//! checks the file before every access): each refused access is counted, the failure
//! logged once, and the dataplane keeps forwarding with what it applied last.

use portdistrict_shm::{Command, Config, HandshakeSource, PeerStats, Region, ShmError};
use portdistrict_wg::config::{
    AllowedIpChange, ConfigChange, PeerChange, PeerStats as WgPeerStats,
};
use portdistrict_wg::{PresharedKey, PrivateKey, PublicKey};
use std::time::{Duration, Instant};

/// How often statistics are written back.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// The region and what was applied from it.
pub struct ShmLink {
    region: Region,
    applied_gen: u64,
    applied: Option<Config>,
    reported_gen: Option<u64>,
    /// The region is unusable and that was logged (until an access succeeds again).
    reported_unusable: bool,
    next_stats: Instant,
    /// The device's `rx_handshake` when the statistics were written last.
    handshakes_written: u64,
    /// Configurations applied.
    pub updates: u64,
    /// Corrupt reads and commands.
    pub errors: u64,
    /// Commands taken from the ring (valid ones).
    pub commands: u64,
    /// Commands that could not be carried out (unknown peer, a refused send).
    pub command_failures: u64,
}

impl ShmLink {
    /// Wraps an opened (validated) region.
    pub fn new(region: Region) -> ShmLink {
        ShmLink {
            region,
            applied_gen: 0,
            applied: None,
            reported_gen: None,
            reported_unusable: false,
            next_stats: Instant::now(),
            handshakes_written: 0,
            updates: 0,
            errors: 0,
            commands: 0,
            command_failures: 0,
        }
    }

    /// Counts an access the region refused as a whole (shrunk, reset, unreadable).
    fn unusable(&mut self, ifname: &str, e: &ShmError) {
        self.errors += 1;
        if !self.reported_unusable {
            self.reported_unusable = true;
            tracing::error!(
                "{ifname}: shared memory {}: {e}; forwarding goes on with the last good \
                 configuration",
                self.region.path().display()
            );
        }
    }

    /// If the producer published a new configuration, applies the difference with
    /// `apply` (which answers a negative errno when it refuses the change) and
    /// reports the generation applied. A refused configuration is reported too: it is
    /// not retried, and the producer's wait ends (the refusal is logged and counted).
    pub fn apply_config(
        &mut self,
        ifname: &str,
        apply: impl FnOnce(&ConfigChange) -> Result<(), i32>,
    ) {
        let Some((gen, change)) = self.poll_config(ifname) else {
            return;
        };
        match apply(&change) {
            Ok(()) => tracing::debug!("{ifname}: applied a shared-memory configuration"),
            Err(errno) => {
                self.errors += 1;
                tracing::error!(
                    "{ifname}: the shared-memory configuration was refused (errno {errno})"
                );
            }
        }
        if let Err(e) = self.region.set_applied_generation(gen) {
            self.unusable(ifname, &e);
        }
    }

    /// The generation and the change to apply, if the producer published a new
    /// configuration.
    fn poll_config(&mut self, ifname: &str) -> Option<(u64, ConfigChange)> {
        let gen = match self.region.config_generation() {
            Ok(g) => {
                self.reported_unusable = false;
                g
            }
            Err(e) => {
                self.unusable(ifname, &e);
                return None;
            }
        };
        if gen == self.applied_gen || gen % 2 == 1 {
            return None;
        }
        match self.region.read_config() {
            Ok((g, cfg)) => {
                let req = difference(self.applied.as_ref(), &cfg);
                self.applied_gen = g;
                self.applied = Some(cfg);
                self.updates += 1;
                Some((g, req))
            }
            Err(ShmError::Busy) => None,
            Err(e @ (ShmError::Shrunk { .. } | ShmError::Reset(_) | ShmError::Io { .. })) => {
                self.unusable(ifname, &e);
                None
            }
            Err(e) => {
                self.errors += 1;
                if self.reported_gen != Some(gen) {
                    self.reported_gen = Some(gen);
                    tracing::error!(
                        "{ifname}: shared memory: {e}; keeping the last good configuration"
                    );
                }
                None
            }
        }
    }

    /// The next queued command.
    pub fn next_command(&mut self, ifname: &str) -> Option<Command> {
        // A corrupt entry is skipped; a ring holds at most RING_CAPACITY of them.
        for _ in 0..=portdistrict_shm::RING_CAPACITY {
            match self.region.pop_command() {
                Ok(c) => return c,
                Err(e @ ShmError::Corrupt(_)) => {
                    self.errors += 1;
                    tracing::error!("{ifname}: shared memory command ring: {e}");
                }
                Err(e) => {
                    self.unusable(ifname, &e);
                    return None;
                }
            }
        }
        None
    }

    /// Whether the statistics are due: every [`STATS_EVERY`], and at once (the next
    /// tick) when a handshake message arrived since they were written, given the
    /// device's `rx_handshake` counter — the control daemon times NAT-traversal
    /// windows by where and when a peer's handshake came from.
    pub fn stats_due(&mut self, now: Instant, rx_handshake: u64) -> bool {
        if now < self.next_stats && rx_handshake == self.handshakes_written {
            return false;
        }
        self.next_stats = now + STATS_EVERY;
        self.handshakes_written = rx_handshake;
        true
    }

    /// Writes the peers' statistics back.
    pub fn write_stats(&mut self, ifname: &str, peers: &[WgPeerStats]) {
        let stats: Vec<PeerStats> = peers
            .iter()
            .map(|p| PeerStats {
                public_key: *p.public_key.as_bytes(),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                last_handshake: p.last_handshake.map_or(0, |d| d.as_secs()),
                endpoint: p.endpoint,
                handshake_source: p.handshake_source.map(|h| HandshakeSource {
                    addr: h.addr,
                    unix_millis: u64::try_from(h.at.as_millis()).unwrap_or(u64::MAX),
                }),
            })
            .collect();
        if let Err(e) = self.region.write_stats(&stats) {
            self.unusable(ifname, &e);
        }
    }
}

/// The UAPI-style change that turns `prev` into `cfg`: interface fields only when
/// they changed, removed peers removed, new or changed peers set whole.
pub fn difference(prev: Option<&Config>, cfg: &Config) -> ConfigChange {
    let mut peers = Vec::new();
    if let Some(prev) = prev {
        for old in &prev.peers {
            if !cfg.peers.iter().any(|p| p.public_key == old.public_key) {
                let mut c = PeerChange::new(PublicKey(old.public_key));
                c.remove = true;
                peers.push(c);
            }
        }
    }
    for p in &cfg.peers {
        if prev.is_some_and(|prev| prev.peers.iter().any(|o| o == p)) {
            continue;
        }
        let mut c = PeerChange::new(PublicKey(p.public_key));
        c.preshared_key = Some(PresharedKey(p.preshared_key.unwrap_or([0; 32])));
        c.endpoint = p.endpoint;
        c.persistent_keepalive_interval = Some(p.keepalive);
        c.replace_allowed_ips = true;
        c.allowed_ips = p
            .allowed
            .iter()
            .map(|(addr, cidr)| AllowedIpChange {
                addr: *addr,
                cidr: *cidr,
                remove: false,
            })
            .collect();
        peers.push(c);
    }
    ConfigChange {
        private_key: (prev.map(|p| p.private_key) != Some(cfg.private_key))
            .then(|| cfg.private_key.map(PrivateKey::from_bytes)),
        listen_port: (prev.map(|p| p.listen_port) != Some(cfg.listen_port))
            .then_some(cfg.listen_port),
        fwmark: (prev.map(|p| p.fwmark) != Some(cfg.fwmark)).then_some(cfg.fwmark),
        replace_peers: false,
        peers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portdistrict_shm::PeerConfig;

    fn peer(k: u8) -> PeerConfig {
        PeerConfig {
            public_key: [k; 32],
            preshared_key: None,
            endpoint: Some(([192, 0, 2, k], 51820).into()),
            keepalive: 25,
            allowed: vec![(std::net::IpAddr::from([10, 0, 0, k]), 32)],
        }
    }

    #[test]
    fn a_region_that_shrank_is_counted_and_the_last_configuration_stays() {
        let path = std::env::temp_dir().join(format!("pd-shm-link-{}", std::process::id()));
        let control = Region::create(&path, 4).unwrap();
        let cfg = Config {
            private_key: Some([1; 32]),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![peer(1)],
        };
        control.write_config(&cfg).unwrap();
        control.push_command(Command::Handshake([1; 32])).unwrap();
        let mut link = ShmLink::new(Region::open(&path).unwrap());
        let mut applied = None;
        link.apply_config("t0", |c| {
            applied = Some(c.clone());
            Ok(())
        });
        assert!(applied.is_some());
        assert_eq!(control.applied_generation().unwrap(), link.applied_gen);
        assert_eq!(link.next_command("t0"), Some(Command::Handshake([1; 32])));
        // Someone truncates the file: nothing is applied, nothing faults, every
        // refused access is counted, and the loop is not held (no endless retry).
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(link.poll_config("t0").is_none());
        assert_eq!(link.next_command("t0"), None);
        link.write_stats("t0", &[]);
        assert_eq!(link.errors, 3);
        assert_eq!(link.applied.as_ref(), Some(&cfg), "the last good one stays");
        assert_eq!(link.updates, 1);
    }

    #[test]
    fn statistics_are_due_every_second_and_at_once_after_a_handshake() {
        let path = std::env::temp_dir().join(format!("pd-shm-due-{}", std::process::id()));
        let _control = Region::create(&path, 4).unwrap();
        let mut link = ShmLink::new(Region::open(&path).unwrap());
        let _ = std::fs::remove_file(&path);
        let t0 = Instant::now();
        assert!(link.stats_due(t0, 0), "the first tick writes them");
        assert!(!link.stats_due(t0 + Duration::from_millis(100), 0));
        // A handshake arrived: written at the next tick, not a second later.
        assert!(link.stats_due(t0 + Duration::from_millis(200), 1));
        assert!(!link.stats_due(t0 + Duration::from_millis(300), 1));
        assert!(!link.stats_due(t0 + Duration::from_millis(1100), 1));
        assert!(link.stats_due(t0 + Duration::from_millis(1200), 1));
    }

    #[test]
    fn only_what_changed_is_applied() {
        let a = Config {
            private_key: Some([1; 32]),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![peer(1), peer(2)],
        };
        let first = difference(None, &a);
        assert!(first.private_key.is_some() && first.listen_port == Some(51820));
        assert_eq!(first.peers.len(), 2);
        let mut b = a.clone();
        b.peers[1].keepalive = 0;
        b.peers.remove(0);
        b.peers.push(peer(3));
        let d = difference(Some(&a), &b);
        assert_eq!(
            (d.private_key.is_none(), d.listen_port, d.fwmark),
            (true, None, None)
        );
        let removed: Vec<_> = d
            .peers
            .iter()
            .filter(|p| p.remove)
            .map(|p| p.public_key.0[0])
            .collect();
        let set: Vec<_> = d
            .peers
            .iter()
            .filter(|p| !p.remove)
            .map(|p| p.public_key.0[0])
            .collect();
        assert_eq!(removed, [1]);
        assert_eq!(set, [2, 3], "peer 2 changed, peer 3 is new");
        assert!(
            difference(Some(&b), &b).peers.is_empty(),
            "nothing changed, nothing applied"
        );
    }

    #[test]
    fn a_configuration_is_reported_applied_once_applied_or_refused() {
        let path = std::env::temp_dir().join(format!("pd-shm-applied-{}", std::process::id()));
        let control = Region::create(&path, 4).unwrap();
        let mut link = ShmLink::new(Region::open(&path).unwrap());
        let g1 = control.write_config(&Config::default()).unwrap();
        let mut calls = 0;
        link.apply_config("t0", |_| {
            calls += 1;
            // The generation is reported only after the change was applied.
            assert_eq!(control.applied_generation().unwrap(), 0);
            Ok(())
        });
        assert_eq!((calls, control.applied_generation().unwrap()), (1, g1));
        link.apply_config("t0", |_| panic!("nothing new to apply"));
        let g2 = control
            .write_config(&Config {
                listen_port: 1,
                ..Config::default()
            })
            .unwrap();
        link.apply_config("t0", |_| Err(-98));
        assert_eq!(control.applied_generation().unwrap(), g2);
        assert_eq!(link.errors, 1, "the refusal is counted");
        let _ = std::fs::remove_file(&path);
    }
}
