//! The whole interface as one sans-IO value: the static identity, the peers, the
//! index table, cryptokey routing, the cookie checker and rate limiter, and drop
//! counters.
//!
//! Inbound, [`Device::handle_datagram`]: parse the message type -> handshake
//! messages: MAC1, then under load MAC2 (else a cookie reply) and the per-source rate
//! limit, then Noise -> data messages: index lookup, replay pre-check, decrypt in
//! place, replay update, roaming, inner-source check against the peer's AllowedIPs
//! -> [`Io::write_tun`]. Outbound, [`Device::handle_tun_packet`]: destination lookup
//! in AllowedIPs -> seal with the peer's current session (or stage the packet and
//! start a handshake) -> [`Io::send_udp`]. Timers: [`Device::poll_timeout`] says when
//! to call [`Device::handle_timeout`].
//!
//! Outputs go to an [`Io`] sink rather than a returned buffer because one input can
//! produce several outputs (a response plus the packets staged behind a handshake);
//! the sink keeps that allocation-free.

use crate::allowed_ips::AllowedIps;
use crate::config::{ConfigChange, DeviceSnapshot, HandshakeSource, PeerSnapshot, PeerStats};
use crate::constants::{
    REKEY_ATTEMPT_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX, UNDER_LOAD_AFTER_TIME,
    UNDER_LOAD_HANDSHAKES_PER_SECOND,
};
use crate::cookie::CookieChecker;
use crate::crypto::AeadKey;
use crate::handshake::{self, StaticIdentity};
use crate::keys::{PrivateKey, PublicKey};
use crate::peer::{Endpoint, LocalAddr, Peer, PeerId};
use crate::ratelimit::RateLimiter;
use crate::session::{Session, SessionError};
use crate::stats::Stats;
use crate::timers::TimerEvent;
use crate::wire::{self, CookieReply, Data, Initiation, MessageType, Response};
use rand_core::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the device asks of the operating system.
pub trait Io {
    /// Sends one datagram to `to.addr`, from `to.local` when set.
    fn send_udp(&mut self, to: &Endpoint, datagram: &[u8]) -> SendOutcome;
    /// Sends a data message laid out by [`Session::prepare_seal`] (header, padded
    /// plaintext, room for the tag) after sealing it with `key`. A sink that batches
    /// may take a copy and seal it later, on any thread, before the batch leaves; the
    /// default seals in place now and sends it with [`Io::send_udp`]. A message that
    /// cannot be sealed is dropped, never sent: [`SendOutcome::NotSealed`] (a batching
    /// sink drops it from its batch and counts it there).
    fn send_data(&mut self, to: &Endpoint, msg: &mut [u8], key: &Arc<AeadKey>) -> SendOutcome {
        if crate::session::seal_prepared(key, msg).is_err() {
            return SendOutcome::NotSealed;
        }
        self.send_udp(to, msg)
    }
    /// Sends one datagram to `to` with IP TTL / IPv6 hop limit `ttl` on that datagram
    /// only (0: the socket's default), from the same socket as every other datagram
    /// (its NAT mapping is the one that matters), with normal source selection. Used
    /// for probes ([`Device::probe`]), which are rare: a sink may send it at once,
    /// outside its batches. Default: a sink that cannot set the TTL sends nothing.
    fn send_udp_ttl(&mut self, _to: SocketAddr, _datagram: &[u8], _ttl: u8) -> SendOutcome {
        SendOutcome::Failed
    }
    /// Writes one IP packet to the TUN device.
    fn write_tun(&mut self, packet: &[u8]);
    /// A receiver index was just allocated, before the message that announces it to
    /// the peer is handed to [`Io::send_udp`]: a sink that filters by receiver index
    /// (the XDP program) learns it before any answer can arrive. Indices that are
    /// freed are not announced: [`Device::index_generation`] changes and
    /// [`Device::local_indices`] lists the ones held. Default: nothing.
    fn index_added(&mut self, _index: u32) {}
}

/// Why [`Device::probe`] sent nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// No peer has this public key.
    #[error("no such peer")]
    UnknownPeer,
    /// No private key is set, or the peer's key is low-order: no initiation can be
    /// made.
    #[error("no handshake is possible with this peer (no private key, or a bad peer key)")]
    NoHandshake,
    /// The sink did not send the datagram.
    #[error("the probe could not be sent")]
    SendFailed,
}

/// The result of [`Io::send_udp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Sent as asked.
    Sent,
    /// The sticky source address was gone; sent with normal route selection. The
    /// device forgets the source.
    SentWithoutSource,
    /// Not sent (no route, buffer full...).
    Failed,
    /// Not sent: the data message could not be sealed (it was wiped instead; see
    /// [`crate::session::seal_prepared`]).
    NotSealed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum IndexKind {
    Handshake,
    Session,
}

/// Largest datagram or IP packet the device handles, plus room for the header/tag.
pub const MAX_PACKET: usize = 65535;
/// Bytes [`Device::handle_tun_packet_in_place`] needs after the packet: padding to 16
/// and the AEAD tag.
pub const TUN_TAILROOM: usize = 32;
/// Bytes it needs before the packet: the data message header.
pub const TUN_HEADROOM: usize = wire::DATA_HEADER_LEN;
const SCRATCH_LEN: usize = MAX_PACKET + wire::DATA_HEADER_LEN + wire::AEAD_TAG_LEN + 16;
/// Handshake retries before giving up (`REKEY_ATTEMPT_TIME / REKEY_TIMEOUT`).
const MAX_TIMER_HANDSHAKES: u32 = (REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs()) as u32;

/// The receiver indices the device holds, with a generation that changes whenever
/// one is added or removed.
#[derive(Default)]
struct IndexTable {
    map: HashMap<u32, (PeerId, IndexKind)>,
    generation: u64,
}

impl IndexTable {
    fn try_insert(&mut self, index: u32, v: (PeerId, IndexKind)) -> bool {
        match self.map.entry(index) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(v);
                self.generation += 1;
                true
            }
            std::collections::hash_map::Entry::Occupied(_) => false,
        }
    }

    fn insert(&mut self, index: u32, v: (PeerId, IndexKind)) {
        if self.map.insert(index, v).is_none() {
            self.generation += 1;
        }
    }

    fn remove(&mut self, index: &u32) {
        if self.map.remove(index).is_some() {
            self.generation += 1;
        }
    }

    fn get(&self, index: &u32) -> Option<&(PeerId, IndexKind)> {
        self.map.get(index)
    }

    fn retain(&mut self, f: impl FnMut(&u32, &mut (PeerId, IndexKind)) -> bool) {
        let before = self.map.len();
        self.map.retain(f);
        if self.map.len() != before {
            self.generation += 1;
        }
    }

    fn clear(&mut self) {
        if !self.map.is_empty() {
            self.generation += 1;
        }
        self.map.clear();
    }
}

/// Counts handshake messages per second to decide when the device is under load.
#[derive(Default)]
struct LoadMeter {
    window_start: Option<Instant>,
    count: u32,
    until: Option<Instant>,
}

impl LoadMeter {
    fn record(&mut self, now: Instant) -> bool {
        match self.window_start {
            Some(s) if now.saturating_duration_since(s) < Duration::from_secs(1) => self.count += 1,
            _ => {
                self.window_start = Some(now);
                self.count = 1;
            }
        }
        if self.count > UNDER_LOAD_HANDSHAKES_PER_SECOND {
            self.until = Some(now + UNDER_LOAD_AFTER_TIME);
        }
        self.until.is_some_and(|u| now < u)
    }

    fn under_load(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }
}

/// A random extra delay in `[0, REKEY_TIMEOUT_JITTER_MAX)` for handshake timers.
fn jitter_from(rng: &mut rand_chacha::ChaCha20Rng) -> Duration {
    let max = REKEY_TIMEOUT_JITTER_MAX.as_micros() as u64;
    Duration::from_micros(rng.next_u64() % max)
}

/// A WireGuard interface.
pub struct Device {
    identity: Option<StaticIdentity>,
    checker: Option<CookieChecker>,
    peers: Vec<Option<Peer>>,
    by_key: HashMap<PublicKey, PeerId>,
    allowed_ips: AllowedIps<PeerId>,
    indices: IndexTable,
    rng: rand_chacha::ChaCha20Rng,
    ratelimiter: RateLimiter,
    load: LoadMeter,
    mtu: usize,
    epoch: (Instant, Duration),
    scratch: Box<[u8]>,
    /// Initiations from keys that are not peers are accepted while fewer than this
    /// many peers exist (see [`Device::set_admission`]); `None`: never.
    admission: Option<usize>,
    /// Keys admitted since the last [`Device::take_admitted`].
    admitted: Vec<PublicKey>,
    /// Drop and event counters.
    pub stats: Stats,
}

impl Device {
    /// A device with no key and no peers. `seed` seeds its RNG (from the OS in
    /// production, fixed in tests); `epoch` pairs a monotonic instant with the wall
    /// clock (time since the Unix epoch) at that instant, for handshake timestamps.
    pub fn new(seed: [u8; 32], epoch: (Instant, Duration), mtu: usize) -> Self {
        Self {
            identity: None,
            checker: None,
            peers: Vec::new(),
            by_key: HashMap::new(),
            allowed_ips: AllowedIps::new(),
            indices: IndexTable::default(),
            rng: rand_chacha::ChaCha20Rng::from_seed(seed),
            ratelimiter: RateLimiter::new(),
            load: LoadMeter::default(),
            mtu,
            epoch,
            scratch: vec![0u8; SCRATCH_LEN].into_boxed_slice(),
            admission: None,
            admitted: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Open admission (for a server every node may reach, such as the NAT-traversal
    /// facilitator; never for a tunnel interface): an initiation from a key that is
    /// not a peer makes it one, with no AllowedIPs, once the initiation has been
    /// fully authenticated (its timestamp opens only under `DH(their static, our
    /// static)`, so the sender holds the key's private half) and while the device has
    /// fewer than `max_peers` peers. The shell learns the new peers from
    /// [`Device::take_admitted`] and gives them AllowedIPs (or removes them) itself.
    /// `None` (the default): initiations from unknown keys are dropped and counted.
    pub fn set_admission(&mut self, max_peers: Option<usize>) {
        self.admission = max_peers;
    }

    /// The keys admitted (see [`Device::set_admission`]) since the last call, oldest
    /// first.
    pub fn take_admitted(&mut self) -> Vec<PublicKey> {
        std::mem::take(&mut self.admitted)
    }

    /// Sets the tunnel MTU used for padding.
    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu.min(MAX_PACKET);
    }

    /// The tunnel MTU.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Our public key, if a private key is set.
    pub fn public_key(&self) -> Option<&PublicKey> {
        self.identity.as_ref().map(|i| i.public_key())
    }

    /// Number of peers.
    pub fn peer_count(&self) -> usize {
        self.by_key.len()
    }

    /// A peer by public key.
    pub fn peer(&self, key: &PublicKey) -> Option<&Peer> {
        self.by_key.get(key).and_then(|id| self.peer_by_id(*id))
    }

    fn peer_by_id(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(id.0 as usize).and_then(Option::as_ref)
    }

    fn wall(&self, at: Instant) -> Duration {
        self.epoch.1 + at.saturating_duration_since(self.epoch.0)
    }

    fn jitter(&mut self) -> Duration {
        jitter_from(&mut self.rng)
    }

    fn new_index(&mut self, peer: PeerId, kind: IndexKind) -> u32 {
        loop {
            let i = self.rng.next_u32();
            if self.indices.try_insert(i, (peer, kind)) {
                return i;
            }
        }
    }

    // ---- configuration -------------------------------------------------------

    /// Starts a handshake with the peer `key` now (the shared-memory command "handshake
    /// now"; still at most one initiation per `REKEY_TIMEOUT`). False if no such peer.
    pub fn initiate_handshake(&mut self, now: Instant, key: &PublicKey, io: &mut impl Io) -> bool {
        let Some(&id) = self.by_key.get(key) else {
            return false;
        };
        self.send_handshake_initiation(id, now, false, io);
        true
    }

    /// Sends a fresh handshake initiation for the peer `key` to `to`, with IP TTL /
    /// hop limit `ttl` (0: the socket's default), through [`Io::send_udp_ttl`] — a
    /// NAT-traversal probe. Unlike [`Device::initiate_handshake`] it is not
    /// rate-limited and goes to `to`, not the endpoint, which it does not change; it
    /// arms no retransmission (the caller decides when to probe again). The new
    /// initiation replaces any handshake in flight with the peer: a response to it,
    /// from wherever it comes, completes the handshake as usual (and roams, unless
    /// the endpoint is pinned).
    pub fn probe(
        &mut self,
        now: Instant,
        key: &PublicKey,
        to: SocketAddr,
        ttl: u8,
        io: &mut impl Io,
    ) -> Result<(), ProbeError> {
        let Some(&id) = self.by_key.get(key) else {
            return Err(ProbeError::UnknownPeer);
        };
        let same_round = self.peer(key).and_then(|p| {
            p.probe_initiation
                .filter(|(t, _)| now.saturating_duration_since(*t) < crate::constants::PROBE_ROUND)
                .filter(|_| p.handshake.is_some())
                .map(|(_, m)| m)
        });
        let msg = match same_round {
            Some(m) => m,
            None => {
                let ephemeral = self.fresh_ephemeral();
                let Some(msg) = self.new_initiation(id, now, ephemeral, io) else {
                    return Err(ProbeError::NoHandshake);
                };
                if let Some(p) = self.peer_mut(id) {
                    p.probe_initiation = Some((now, msg));
                }
                msg
            }
        };
        self.stats.tx_probe += 1;
        if io.send_udp_ttl(to, &msg, ttl) == SendOutcome::Failed {
            self.stats.tx_send_failed += 1;
            return Err(ProbeError::SendFailed);
        }
        if let Some(p) = self.peer_mut(id) {
            p.tx_bytes += msg.len() as u64;
        }
        Ok(())
    }

    /// After the endpoint of `key` moved by command (a pin to a relay): when the peer
    /// has no session that can send, a handshake starts at the new endpoint now,
    /// whatever the last initiation's age (it went to an address that did not answer,
    /// or was a probe, which arms no retransmission). True if one was sent.
    pub fn handshake_at_new_endpoint(
        &mut self,
        now: Instant,
        key: &PublicKey,
        io: &mut impl Io,
    ) -> bool {
        let Some(&id) = self.by_key.get(key) else {
            return false;
        };
        let Some(peer) = self.peer_mut(id) else {
            return false;
        };
        if peer.can_send(now) {
            return false;
        }
        peer.last_sent_handshake = None;
        let before = self.stats.tx_handshake_initiation;
        self.send_handshake_initiation(id, now, false, io);
        self.stats.tx_handshake_initiation > before
    }

    /// Pins the endpoint of the peer `key` to `to` (set now; authenticated packets
    /// from other addresses no longer move it), or unpins it (`None`: roaming again,
    /// the endpoint stays where it is until a packet moves it). An endpoint set by
    /// configuration while pinned replaces the pinned address and stays pinned.
    /// False if no such peer.
    pub fn pin_endpoint(&mut self, key: &PublicKey, to: Option<SocketAddr>) -> bool {
        let Some(peer) = self.peer_by_key_mut(key) else {
            return false;
        };
        peer.pinned = to.is_some();
        if to.is_some() {
            peer.held = false;
        }
        if let Some(addr) = to.filter(|a| peer.endpoint.is_none_or(|e| e.addr != *a)) {
            peer.endpoint = Some(Endpoint { addr, local: None });
        }
        true
    }

    /// Holds (`true`) or releases the peer's own handshake initiations: while held,
    /// timers and traffic that would start a handshake count it
    /// (`tx_handshake_held`) and pace their retries as if it had been sent, but
    /// nothing goes out; [`Device::probe`] still sends, and initiations from the peer
    /// are still answered. NAT traversal holds a peer it has no path to, so that
    /// retries to an endpoint behind a NAT do not keep a conntrack entry alive that
    /// would remap the peer's punch. A pin to an address releases it. False if no
    /// such peer.
    pub fn hold_initiations(&mut self, key: &PublicKey, on: bool) -> bool {
        let Some(peer) = self.peer_by_key_mut(key) else {
            return false;
        };
        peer.held = on;
        true
    }

    /// Sets or clears the private key. A peer whose public key equals the new public
    /// key is removed; sessions are expired so that new handshakes use the new key.
    pub fn set_private_key(&mut self, key: Option<PrivateKey>) {
        let key = key.filter(|k| !k.is_zero());
        if self.identity.as_ref().map(|i| i.private_key()) == key.as_ref() {
            return;
        }
        self.identity = key.map(StaticIdentity::new);
        self.checker = self
            .identity
            .as_ref()
            .map(|i| CookieChecker::new(i.public_key()));
        if let Some(own) = self.public_key().copied() {
            self.remove_peer(&own);
        }
        for slot in 0..self.peers.len() {
            let ss = match (&self.identity, &self.peers[slot]) {
                (Some(id), Some(p)) => id.static_static(&p.public_key),
                _ => None,
            };
            if let Some(p) = self.peers[slot].as_mut() {
                p.static_static = ss;
                let freed = [
                    p.handshake.as_ref().map(|h| h.local_index),
                    p.sessions.current.as_ref().map(|s| s.local_index),
                    p.sessions.next.as_ref().map(|s| s.local_index),
                ];
                p.expire_sessions_for_sending();
                for i in freed.into_iter().flatten() {
                    self.indices.remove(&i);
                }
            }
        }
    }

    /// The receiver indices held now (handshakes in flight and sessions): the only
    /// values a response, cookie reply or data message may name.
    pub fn local_indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.indices.map.keys().copied()
    }

    /// Changes whenever an index is added to or removed from
    /// [`Device::local_indices`].
    pub fn index_generation(&self) -> u64 {
        self.indices.generation
    }

    /// Whether the device is under load now: it answers handshake initiations that
    /// lack a valid MAC2 with cookie replies (more than
    /// [`UNDER_LOAD_HANDSHAKES_PER_SECOND`] handshake messages in a second, and for
    /// [`UNDER_LOAD_AFTER_TIME`] after).
    pub fn under_load(&self, now: Instant) -> bool {
        self.load.under_load(now)
    }

    /// Adds a peer (no-op when it exists or is our own key) and returns its id.
    pub fn add_peer(&mut self, key: PublicKey) -> Option<PeerId> {
        if self.public_key() == Some(&key) {
            return None;
        }
        if let Some(id) = self.by_key.get(&key) {
            return Some(*id);
        }
        let ss = self.identity.as_ref().and_then(|i| i.static_static(&key));
        let peer = Peer::new(key, ss);
        let id = match self.peers.iter().position(Option::is_none) {
            Some(free) => {
                self.peers[free] = Some(peer);
                PeerId(free as u32)
            }
            None => {
                self.peers.push(Some(peer));
                PeerId((self.peers.len() - 1) as u32)
            }
        };
        self.by_key.insert(key, id);
        Some(id)
    }

    /// Removes a peer, its AllowedIPs and its indices. Returns false if unknown.
    pub fn remove_peer(&mut self, key: &PublicKey) -> bool {
        let Some(id) = self.by_key.remove(key) else {
            return false;
        };
        self.allowed_ips.remove_value(id);
        self.indices.retain(|_, (p, _)| *p != id);
        self.peers[id.0 as usize] = None;
        true
    }

    /// Forgets the sticky source address of every peer whose endpoint is `addr` (the
    /// operating system refused it in a batched send: the address is gone).
    pub fn forget_source(&mut self, addr: SocketAddr) {
        for peer in self.peers.iter_mut().flatten() {
            if peer.endpoint.is_some_and(|e| e.addr == addr) {
                peer.clear_source();
            }
        }
    }

    /// Removes every peer.
    pub fn clear_peers(&mut self) {
        self.peers.clear();
        self.by_key.clear();
        self.allowed_ips.clear();
        self.indices.clear();
    }

    fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers.get_mut(id.0 as usize).and_then(Option::as_mut)
    }

    fn peer_by_key_mut(&mut self, key: &PublicKey) -> Option<&mut Peer> {
        let id = *self.by_key.get(key)?;
        self.peer_mut(id)
    }

    /// Applies the device and peer parts of a configuration change (listen port and
    /// fwmark are the caller's, who owns the sockets). Infallible: everything that
    /// can be wrong was rejected by the parser, so a request applies whole or not at all.
    pub fn apply(&mut self, now: Instant, req: &ConfigChange, io: &mut impl Io) {
        if let Some(key) = &req.private_key {
            self.set_private_key(key.clone());
        }
        if req.replace_peers {
            self.clear_peers();
        }
        for change in &req.peers {
            if change.remove {
                self.remove_peer(&change.public_key);
                continue;
            }
            let id = match self.by_key.get(&change.public_key) {
                Some(id) => *id,
                None if change.update_only => continue,
                None => match self.add_peer(change.public_key) {
                    Some(id) => id,
                    None => continue, // our own public key: ignored, as wireguard-go does
                },
            };
            if change.replace_allowed_ips {
                self.allowed_ips.remove_value(id);
            }
            for a in &change.allowed_ips {
                if a.remove {
                    // Only this peer's own entry is removed; another peer's stays.
                    if let Some(other) = self.allowed_ips.remove(a.addr, a.cidr) {
                        if other != id {
                            let _ = self.allowed_ips.insert(a.addr, a.cidr, other);
                        }
                    }
                } else {
                    // The parser bounds cidr, so insert cannot fail.
                    let _ = self.allowed_ips.insert(a.addr, a.cidr, id);
                }
            }
            let Some(peer) = self.peer_mut(id) else {
                continue;
            };
            if let Some(psk) = &change.preshared_key {
                peer.preshared_key = psk.clone();
            }
            if let Some(ep) = change.endpoint {
                // Also while pinned: the configured address is pinned from now on.
                peer.endpoint = Some(Endpoint {
                    addr: ep,
                    local: None,
                });
            }
            if let Some(ka) = change.persistent_keepalive_interval {
                let was = peer.persistent_keepalive;
                peer.persistent_keepalive = ka;
                if ka == 0 {
                    peer.timers.clear_persistent_keepalive();
                } else if was == 0 {
                    // Turning it on sends one at once, as wireguard-go does.
                    self.send_keepalive(id, now, io);
                }
            }
        }
        // Rebuild the lookup table now, on the configuration path, rather than in
        // the first packet routed after the change.
        self.allowed_ips.prepare_lookup();
    }

    /// The state `get=1` reports. `listen_port` and `fwmark` come from the caller.
    pub fn snapshot(&self, listen_port: u16, fwmark: u32) -> DeviceSnapshot {
        let mut ips: HashMap<PeerId, Vec<(IpAddr, u8)>> = HashMap::new();
        for (addr, cidr, id) in self.allowed_ips.iter() {
            ips.entry(id).or_default().push((addr, cidr));
        }
        let peers = self
            .peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (PeerId(i as u32), p)))
            .map(|(id, p)| PeerSnapshot {
                public_key: p.public_key,
                preshared_key: p.preshared_key.clone(),
                endpoint: p.endpoint.map(|e| e.addr),
                last_handshake: p.last_handshake.map(|t| self.wall(t)),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                persistent_keepalive_interval: p.persistent_keepalive,
                allowed_ips: ips.remove(&id).unwrap_or_default(),
            })
            .collect();
        DeviceSnapshot {
            private_key: self.identity.as_ref().map(|i| i.private_key().clone()),
            listen_port,
            fwmark,
            peers,
        }
    }

    /// Each peer's counters, endpoint and handshake time, without the configuration
    /// [`Self::snapshot`] also gathers (no AllowedIPs walk): what the statistics
    /// written back every second need.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        self.peers
            .iter()
            .flatten()
            .map(|p| PeerStats {
                public_key: p.public_key,
                endpoint: p.endpoint.map(|e| e.addr),
                last_handshake: p.last_handshake.map(|t| self.wall(t)),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                handshake_source: p.handshake_source.map(|(addr, t)| HandshakeSource {
                    addr,
                    at: self.wall(t),
                }),
            })
            .collect()
    }
}

mod recv;
mod send;
pub use recv::DataTicket;

#[cfg(test)]
mod tests;
