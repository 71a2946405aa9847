//! The shared-memory implementation of [`Dataplane`]: the region of a dataplane we
//! started with `--shm`. This client is the region's one producer: it keeps the
//! configuration it published, applies each [`ConfigChange`] to it
//! ([`apply_change`]), publishes the result and waits until the dataplane writes
//! that generation back as applied (at its next timer tick, 100 ms), at most
//! [`CONFIRM_WITHIN`].

use super::{Dataplane, DataplaneError, HandshakeSource};
use portdistrict_shm::{Command, Config, PeerConfig, RawPayload, Region};
use portdistrict_wg::config::{ConfigChange, PeerChange, PeerSnapshot};
use portdistrict_wg::{PresharedKey, PublicKey};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long [`Dataplane::apply`] waits for the dataplane to report a configuration
/// applied; past it the configuration stays published (the dataplane applies it
/// when it reads it) and a warning is logged.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(2);
/// How often the applied generation is read while waiting.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// The producer's side of one interface's region.
#[derive(Debug)]
pub struct ShmClient {
    ifname: String,
    region: Region,
    /// What was published last (or found in the region when taking it up).
    config: Config,
}

impl ShmClient {
    /// Takes up `region`, starting from the configuration it holds (a restarted
    /// daemon continues where it left); an unreadable one is logged and rewritten
    /// whole at the first change.
    pub fn new(ifname: &str, region: Region) -> ShmClient {
        let config = match region.read_config() {
            Ok((_, cfg)) => cfg,
            Err(e) => {
                tracing::warn!(
                    "{ifname}: the shared-memory region is unreadable ({e}); rewriting it"
                );
                Config::default()
            }
        };
        ShmClient {
            ifname: ifname.to_owned(),
            region,
            config,
        }
    }

    fn shm_error(&self, source: portdistrict_shm::ShmError) -> DataplaneError {
        DataplaneError::Shm {
            ifname: self.ifname.clone(),
            source,
        }
    }

    /// Waits until the region reports `generation` applied, at most `within`. Only
    /// that exact value counts: the field is written by another process, so a value
    /// ahead of what was written (or any other) is not taken as a confirmation.
    pub fn wait_applied(&self, generation: u64, within: Duration) -> Result<(), DataplaneError> {
        let start = Instant::now();
        loop {
            let reported = self
                .region
                .applied_generation()
                .map_err(|e| self.shm_error(e))?;
            if reported == generation {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= within {
                return Err(DataplaneError::NotApplied {
                    ifname: self.ifname.clone(),
                    generation,
                    reported,
                    waited,
                });
            }
            std::thread::sleep(POLL_EVERY.min(within - waited));
        }
    }
}

impl Dataplane for ShmClient {
    fn interface(&self) -> &str {
        &self.ifname
    }

    /// Publishes the configuration with `change` applied and waits for the
    /// dataplane to apply it ([`CONFIRM_WITHIN`]). It is published even when it equals
    /// the last one: that rewrites a region someone changed by hand (the dataplane
    /// applies only the difference to what it applied last, so nothing is lost).
    fn apply(&mut self, change: &ConfigChange) -> Result<(), DataplaneError> {
        let mut next = self.config.clone();
        apply_change(&mut next, change);
        let generation = self
            .region
            .write_config(&next)
            .map_err(|e| self.shm_error(e))?;
        self.config = next;
        match self.wait_applied(generation, CONFIRM_WITHIN) {
            Err(e @ DataplaneError::NotApplied { .. }) => {
                tracing::warn!("{e}; it stays published");
                Ok(())
            }
            other => other,
        }
    }

    /// The published peers, with the counters the dataplane wrote back last.
    fn peers(&mut self) -> Result<BTreeMap<PublicKey, PeerSnapshot>, DataplaneError> {
        let (_, cfg) = self.region.read_config().map_err(|e| self.shm_error(e))?;
        let stats = self.region.read_stats().map_err(|e| self.shm_error(e))?;
        Ok(cfg
            .peers
            .into_iter()
            .map(|p| {
                let s = stats.iter().find(|s| s.public_key == p.public_key);
                let key = PublicKey(p.public_key);
                let snap = PeerSnapshot {
                    public_key: key,
                    preshared_key: PresharedKey(p.preshared_key.unwrap_or([0; 32])),
                    endpoint: s.and_then(|s| s.endpoint).or(p.endpoint),
                    last_handshake: s
                        .map(|s| s.last_handshake)
                        .filter(|t| *t != 0)
                        .map(Duration::from_secs),
                    rx_bytes: s.map_or(0, |s| s.rx_bytes),
                    tx_bytes: s.map_or(0, |s| s.tx_bytes),
                    persistent_keepalive_interval: p.keepalive,
                    allowed_ips: p.allowed,
                };
                (key, snap)
            })
            .collect())
    }

    fn request_handshake(&mut self, peer: PublicKey) -> Result<(), DataplaneError> {
        self.push(Command::Handshake(peer.0))
    }

    fn probe(&mut self, peer: PublicKey, to: SocketAddr, ttl: u8) -> Result<(), DataplaneError> {
        self.push(Command::Probe {
            peer: peer.0,
            to,
            ttl,
        })
    }

    fn pin(&mut self, peer: PublicKey, to: Option<SocketAddr>) -> Result<(), DataplaneError> {
        self.push(Command::Pin { peer: peer.0, to })
    }

    fn hold(&mut self, peer: PublicKey, on: bool) -> Result<(), DataplaneError> {
        self.push(Command::Hold { peer: peer.0, on })
    }

    /// A payload over [`portdistrict_shm::MAX_RAW_PAYLOAD`] bytes is refused here
    /// ([`ShmError::PayloadTooLong`]), before anything is queued.
    fn send_raw(&mut self, to: SocketAddr, ttl: u8, payload: &[u8]) -> Result<(), DataplaneError> {
        let payload = RawPayload::new(payload).map_err(|e| self.shm_error(e))?;
        self.push(Command::Send { to, ttl, payload })
    }

    fn handshake_source(
        &mut self,
        peer: PublicKey,
    ) -> Result<Option<HandshakeSource>, DataplaneError> {
        let stats = self.region.read_stats().map_err(|e| self.shm_error(e))?;
        Ok(stats
            .iter()
            .find(|s| s.public_key == peer.0)
            .and_then(|s| s.handshake_source)
            .map(|h| HandshakeSource {
                addr: h.addr,
                at: Duration::from_millis(h.unix_millis),
            }))
    }
}

impl ShmClient {
    /// Queues `c` on the region's command ring (the dataplane runs it at its next
    /// timer tick, 100 ms at most).
    fn push(&self, c: Command) -> Result<(), DataplaneError> {
        self.region.push_command(c).map_err(|e| self.shm_error(e))
    }
}

/// Applies `change` to `cfg` as the dataplane's device applies it to itself (UAPI
/// `set` semantics): what the change leaves `None` stays; a peer is created unless
/// `update_only`; an AllowedIP added to one peer leaves every other peer.
pub fn apply_change(cfg: &mut Config, change: &ConfigChange) {
    if let Some(key) = &change.private_key {
        cfg.private_key = key.as_ref().map(|k| *k.as_bytes());
    }
    if let Some(port) = change.listen_port {
        cfg.listen_port = port;
    }
    if let Some(mark) = change.fwmark {
        cfg.fwmark = mark;
    }
    if change.replace_peers {
        cfg.peers.clear();
    }
    for p in &change.peers {
        apply_peer(cfg, p);
    }
}

fn apply_peer(cfg: &mut Config, change: &PeerChange) {
    let key = change.public_key.0;
    if change.remove {
        cfg.peers.retain(|p| p.public_key != key);
        return;
    }
    let i = match cfg.peers.iter().position(|p| p.public_key == key) {
        Some(i) => i,
        None if change.update_only => return,
        None => {
            cfg.peers.push(PeerConfig {
                public_key: key,
                preshared_key: None,
                endpoint: None,
                keepalive: 0,
                allowed: Vec::new(),
            });
            cfg.peers.len() - 1
        }
    };
    for a in change.allowed_ips.iter().filter(|a| !a.remove) {
        for (j, other) in cfg.peers.iter_mut().enumerate() {
            if j != i {
                other.allowed.retain(|x| *x != (a.addr, a.cidr));
            }
        }
    }
    let peer = &mut cfg.peers[i];
    if let Some(psk) = &change.preshared_key {
        peer.preshared_key = (psk.0 != [0; 32]).then_some(psk.0);
    }
    if let Some(e) = change.endpoint {
        peer.endpoint = Some(e);
    }
    if let Some(k) = change.persistent_keepalive_interval {
        peer.keepalive = k;
    }
    if change.replace_allowed_ips {
        peer.allowed.clear();
    }
    for a in &change.allowed_ips {
        let prefix = (a.addr, a.cidr);
        peer.allowed.retain(|x| *x != prefix);
        if !a.remove {
            peer.allowed.push(prefix);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portdistrict_wg::config::AllowedIpChange;
    use portdistrict_wg::PrivateKey;
    use std::net::IpAddr;

    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(tag: &str) -> TempFile {
            TempFile(
                std::env::temp_dir().join(format!("pd-shm-client-{tag}-{}", std::process::id())),
            )
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn add(addr: &str, cidr: u8) -> AllowedIpChange {
        AllowedIpChange {
            addr: ip(addr),
            cidr,
            remove: false,
        }
    }

    fn peer(k: u8, allowed: &[(&str, u8)]) -> PeerChange {
        let mut p = PeerChange::new(PublicKey([k; 32]));
        p.endpoint = Some(([192, 0, 2, k], 51820).into());
        p.persistent_keepalive_interval = Some(25);
        p.replace_allowed_ips = true;
        p.allowed_ips = allowed.iter().map(|(a, c)| add(a, *c)).collect();
        p
    }

    #[test]
    fn changes_apply_to_the_published_configuration_as_the_device_applies_them() {
        let mut cfg = Config::default();
        apply_change(
            &mut cfg,
            &ConfigChange {
                private_key: Some(Some(PrivateKey::from_bytes([7; 32]))),
                listen_port: Some(51820),
                peers: vec![peer(1, &[("fd00:1::", 64)]), peer(2, &[("fd00:2::", 64)])],
                ..ConfigChange::default()
            },
        );
        assert_eq!(cfg.private_key, Some([7; 32]));
        assert_eq!((cfg.listen_port, cfg.fwmark), (51820, 0));
        assert_eq!(cfg.peers.len(), 2);
        assert_eq!(cfg.peers[0].keepalive, 25);

        // A prefix moves to peer 2; peer 1 is removed; an update_only of an unknown
        // peer creates nothing; what a change leaves None stays.
        let mut moved = PeerChange::new(PublicKey([2; 32]));
        moved.allowed_ips = vec![add("10.0.0.1", 32)];
        let mut to_1 = PeerChange::new(PublicKey([1; 32]));
        to_1.allowed_ips = vec![add("10.0.0.1", 32)];
        let mut unknown = PeerChange::new(PublicKey([9; 32]));
        unknown.update_only = true;
        apply_change(
            &mut cfg,
            &ConfigChange {
                peers: vec![to_1, moved, unknown],
                ..ConfigChange::default()
            },
        );
        assert_eq!(cfg.peers[0].allowed, [(ip("fd00:1::"), 64)]);
        assert_eq!(
            cfg.peers[1].allowed,
            [(ip("fd00:2::"), 64), (ip("10.0.0.1"), 32)]
        );
        assert_eq!(cfg.peers[1].endpoint, Some(([192, 0, 2, 2], 51820).into()));
        let mut gone = PeerChange::new(PublicKey([1; 32]));
        gone.remove = true;
        let mut less = PeerChange::new(PublicKey([2; 32]));
        less.allowed_ips = vec![AllowedIpChange {
            remove: true,
            ..add("10.0.0.1", 32)
        }];
        less.preshared_key = Some(PresharedKey([5; 32]));
        apply_change(
            &mut cfg,
            &ConfigChange {
                private_key: Some(None),
                peers: vec![gone, less],
                ..ConfigChange::default()
            },
        );
        assert_eq!(cfg.private_key, None);
        assert_eq!(cfg.peers.len(), 1);
        assert_eq!(cfg.peers[0].allowed, [(ip("fd00:2::"), 64)]);
        assert_eq!(cfg.peers[0].preshared_key, Some([5; 32]));
        apply_change(
            &mut cfg,
            &ConfigChange {
                replace_peers: true,
                ..ConfigChange::default()
            },
        );
        assert!(cfg.peers.is_empty());
    }

    #[test]
    fn apply_waits_for_the_applied_generation_and_a_bogus_one_is_not_a_confirmation() {
        let f = TempFile::new("wait");
        let producer = Region::create(&f.0, 4).unwrap();
        let dataplane = Region::open(&f.0).unwrap();
        let mut client = ShmClient::new("t0", producer);
        let change = ConfigChange {
            listen_port: Some(51820),
            peers: vec![peer(1, &[("fd00:1::", 64)])],
            ..ConfigChange::default()
        };
        // A dataplane that applies at its next tick.
        std::thread::scope(|s| {
            s.spawn(|| loop {
                let (g, cfg) = dataplane.read_config().unwrap();
                if g != 0 {
                    assert_eq!(cfg.listen_port, 51820);
                    std::thread::sleep(Duration::from_millis(50));
                    dataplane.set_applied_generation(g).unwrap();
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            });
            let start = Instant::now();
            client.apply(&change).unwrap();
            assert!(start.elapsed() >= Duration::from_millis(50), "it waited");
        });
        let g = dataplane.read_config().unwrap().0;
        assert_eq!(client.wait_applied(g, Duration::ZERO).ok(), Some(()));

        // Bogus values (ahead, odd, all ones, an earlier one) never confirm what was
        // written: the wait ends at its bound with a typed error.
        for bogus in [g + 2, g + 1, u64::MAX, g - 2, 0] {
            dataplane.set_applied_generation(bogus).unwrap();
            let start = Instant::now();
            let e = client
                .wait_applied(g, Duration::from_millis(20))
                .unwrap_err();
            assert!(start.elapsed() < Duration::from_secs(1), "bounded");
            match e {
                DataplaneError::NotApplied {
                    generation,
                    reported,
                    ..
                } => assert_eq!((generation, reported), (g, bogus)),
                e => panic!("{e}"),
            }
        }
        // A dataplane that never confirms: apply publishes, warns, and goes on.
        let start = Instant::now();
        client
            .apply(&ConfigChange {
                listen_port: Some(1),
                ..ConfigChange::default()
            })
            .unwrap();
        assert!(start.elapsed() >= CONFIRM_WITHIN);
        assert_eq!(dataplane.read_config().unwrap().1.listen_port, 1);
    }

    #[test]
    fn peers_join_the_configuration_and_the_stats_and_handshakes_are_queued() {
        let f = TempFile::new("peers");
        let producer = Region::create(&f.0, 4).unwrap();
        let dataplane = Region::open(&f.0).unwrap();
        let mut cfg = Config::default();
        apply_change(
            &mut cfg,
            &ConfigChange {
                peers: vec![peer(1, &[("fd00:1::", 64)]), peer(2, &[])],
                ..ConfigChange::default()
            },
        );
        let g = producer.write_config(&cfg).unwrap();
        dataplane.set_applied_generation(g).unwrap();
        dataplane
            .write_stats(&[portdistrict_shm::PeerStats {
                public_key: [1; 32],
                rx_bytes: 5,
                tx_bytes: 7,
                last_handshake: 100,
                endpoint: Some(([198, 51, 100, 1], 4000).into()),
                handshake_source: Some(portdistrict_shm::HandshakeSource {
                    addr: ([198, 51, 100, 9], 4001).into(),
                    unix_millis: 100_250,
                }),
            }])
            .unwrap();
        // A restarted producer takes up what the region holds.
        let mut client = ShmClient::new("t0", producer);
        assert_eq!(client.config, cfg);
        let peers = client.peers().unwrap();
        let p1 = &peers[&PublicKey([1; 32])];
        assert_eq!((p1.rx_bytes, p1.tx_bytes), (5, 7));
        assert_eq!(p1.last_handshake, Some(Duration::from_secs(100)));
        assert_eq!(p1.endpoint, Some(([198, 51, 100, 1], 4000).into()));
        assert_eq!(p1.allowed_ips, [(ip("fd00:1::"), 64)]);
        let p2 = &peers[&PublicKey([2; 32])];
        assert_eq!((p2.last_handshake, p2.rx_bytes), (None, 0));
        assert_eq!(p2.endpoint, Some(([192, 0, 2, 2], 51820).into()));
        client.request_handshake(PublicKey([2; 32])).unwrap();
        assert_eq!(
            dataplane.pop_command().unwrap(),
            Some(Command::Handshake([2; 32]))
        );
        assert_eq!(
            client.handshake_source(PublicKey([1; 32])).unwrap(),
            Some(HandshakeSource {
                addr: ([198, 51, 100, 9], 4001).into(),
                at: Duration::from_millis(100_250),
            })
        );
        assert_eq!(client.handshake_source(PublicKey([2; 32])).unwrap(), None);
    }

    #[test]
    fn nat_commands_are_queued_and_an_oversized_datagram_is_refused_first() {
        let f = TempFile::new("nat");
        let producer = Region::create(&f.0, 4).unwrap();
        let dataplane = Region::open(&f.0).unwrap();
        let mut client = ShmClient::new("t0", producer);
        let to: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        client.probe(PublicKey([1; 32]), to, 1).unwrap();
        client.pin(PublicKey([1; 32]), Some(to)).unwrap();
        client.pin(PublicKey([1; 32]), None).unwrap();
        client.send_raw(to, 2, b"primer").unwrap();
        let e = client.send_raw(to, 2, &[0; 65]).unwrap_err();
        assert!(
            matches!(
                e,
                DataplaneError::Shm {
                    source: portdistrict_shm::ShmError::PayloadTooLong(65),
                    ..
                }
            ),
            "{e}"
        );
        let popped: Vec<_> = std::iter::from_fn(|| dataplane.pop_command().unwrap()).collect();
        assert_eq!(
            popped,
            [
                Command::Probe {
                    peer: [1; 32],
                    to,
                    ttl: 1
                },
                Command::Pin {
                    peer: [1; 32],
                    to: Some(to)
                },
                Command::Pin {
                    peer: [1; 32],
                    to: None
                },
                Command::Send {
                    to,
                    ttl: 2,
                    payload: RawPayload::new(b"primer").unwrap()
                },
            ]
        );
    }
}
