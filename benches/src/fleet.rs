//! The fixture of the scale benchmark (`benches/scale.rs`): one responder
//! [`Device`] configured with `n` peers, and one initiator [`Device`] per peer,
//! each configured with the responder, all on one virtual clock.
//!
//! What flows through one round, in order:
//!
//! 1. [`Fleet::initiate`]: every initiator gets a tunnel packet for the responder
//!    and emits a handshake initiation into [`Fleet::to_responder`];
//! 2. [`Fleet::flood`] (optional): an attacker replays an initiation of a key the
//!    responder does not know, whose MAC1 is still valid (it only needs the
//!    responder's public key), so the responder counts it towards its "under load"
//!    rate and may switch to cookie replies;
//! 3. [`Fleet::deliver_to_responder`]: the responder consumes everything in
//!    [`Fleet::to_responder`], the `k`-th datagram arriving `spread * k / len`
//!    after the given instant, and answers into [`Fleet::to_initiators`];
//!    the returned [`Tally`] says how many answers were responses and how many
//!    cookie replies;
//! 4. [`Fleet::deliver_to_initiators`]: each initiator consumes what was
//!    addressed to it (a response completes its handshake and releases the staged
//!    packet, which confirms the session; a cookie reply is stored for the retry);
//! 5. [`Fleet::retry`]: the initiators' timers run at a later instant, so those
//!    whose handshake is still pending send it again, with MAC2 if they hold a
//!    cookie.
//!
//! [`Outbox`] collects the datagrams of one direction into buffers that keep their
//! capacity, so a timed phase allocates nothing of the harness's own.

use crate::{ipv4_packet, parse_set, SetupError, IPV4_HEADER_LEN};
use portdistrict_wg::device::{Device, Io, SendOutcome};
use portdistrict_wg::peer::Endpoint;
use portdistrict_wg::PrivateKey;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// UDP port of every device of a fleet.
pub const FLEET_PORT: u16 = 51820;
/// Most initiators a fleet has: one per address of 198.18.0.0/15.
pub const MAX_FLEET: usize = 1 << 17;
/// First UDP address of the initiators (RFC 2544 benchmarking range).
const INITIATOR_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
/// First tunnel address of the initiators.
const TUNNEL_BASE: u32 = u32::from_be_bytes([10, 128, 0, 0]);
/// The responder's UDP address.
const RESPONDER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820);
/// The responder's tunnel address.
const RESPONDER_TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 127, 0, 1);
/// Where the flooding attacker sends from.
const ATTACKER_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)), 40000);
/// Wall clock (time since the Unix epoch) the devices pair with their base instant.
const WALL_AT_BASE: Duration = Duration::from_secs(1_700_000_000);
/// Message type bytes (first byte of every WireGuard message).
const TYPE_INITIATION: u8 = 1;
const TYPE_RESPONSE: u8 = 2;
const TYPE_COOKIE_REPLY: u8 = 3;

/// The UDP address of initiator `i`: 198.18.0.0 + `i`, port [`FLEET_PORT`].
pub fn initiator_addr(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::from(INITIATOR_BASE.wrapping_add(i as u32));
    SocketAddr::new(IpAddr::V4(ip), FLEET_PORT)
}

/// The initiator whose UDP address is `addr`, if it is one of a fleet's.
pub fn initiator_index(addr: SocketAddr) -> Option<usize> {
    let IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    let i = u32::from(ip).checked_sub(INITIATOR_BASE)? as usize;
    (i < MAX_FLEET && addr.port() == FLEET_PORT).then_some(i)
}

/// One datagram an [`Outbox`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The [`Outbox::set_sender`] value when it was sent.
    pub sender: usize,
    /// Its destination.
    pub to: SocketAddr,
    start: usize,
    len: usize,
}

/// An [`Io`] that keeps every datagram sent since the last [`Outbox::clear`], tagged
/// with the sender set by [`Outbox::set_sender`]. Its buffers keep their capacity
/// across clears.
#[derive(Debug, Default)]
pub struct Outbox {
    sender: usize,
    sent: Vec<Sent>,
    bytes: Vec<u8>,
    /// TUN packets written since creation.
    pub tun_written: u64,
}

impl Outbox {
    /// An empty outbox with room for `datagrams` handshake-sized datagrams.
    pub fn with_capacity(datagrams: usize) -> Self {
        Self {
            sent: Vec::with_capacity(datagrams),
            bytes: Vec::with_capacity(datagrams * 256),
            ..Self::default()
        }
    }

    /// Tags the datagrams sent from now on with `sender`.
    pub fn set_sender(&mut self, sender: usize) {
        self.sender = sender;
    }

    /// Forgets every datagram (capacity stays).
    pub fn clear(&mut self) {
        self.sent.clear();
        self.bytes.clear();
    }

    /// Datagrams held.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// Whether no datagram is held.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// The `i`-th datagram and where it goes.
    pub fn get(&self, i: usize) -> Option<(Sent, &[u8])> {
        let s = *self.sent.get(i)?;
        Some((s, &self.bytes[s.start..s.start + s.len]))
    }

    /// The `i`-th datagram, mutable (a device decrypts in place).
    pub fn get_mut(&mut self, i: usize) -> Option<(Sent, &mut [u8])> {
        let s = *self.sent.get(i)?;
        Some((s, &mut self.bytes[s.start..s.start + s.len]))
    }

    /// How many held datagrams have message type `kind` (1 initiation, 2 response,
    /// 3 cookie reply, 4 data).
    pub fn count_type(&self, kind: u8) -> usize {
        (0..self.len())
            .filter_map(|i| self.get(i))
            .filter(|(_, d)| d.first() == Some(&kind))
            .count()
    }
}

impl Io for Outbox {
    fn send_udp(&mut self, to: &Endpoint, datagram: &[u8]) -> SendOutcome {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(datagram);
        self.sent.push(Sent {
            sender: self.sender,
            to: to.addr,
            start,
            len: datagram.len(),
        });
        SendOutcome::Sent
    }

    fn write_tun(&mut self, _packet: &[u8]) {
        self.tun_written += 1;
    }
}

/// An [`Io`] that drops everything and counts it.
#[derive(Debug, Default)]
struct Discard {
    datagrams: u64,
}

impl Io for Discard {
    fn send_udp(&mut self, _to: &Endpoint, _datagram: &[u8]) -> SendOutcome {
        self.datagrams += 1;
        SendOutcome::Sent
    }

    fn write_tun(&mut self, _packet: &[u8]) {}
}

/// What the responder answered in one [`Fleet::deliver_to_responder`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Datagrams consumed.
    pub consumed: usize,
    /// Handshake responses sent.
    pub responses: usize,
    /// Cookie replies sent.
    pub cookie_replies: usize,
}

/// A responder with `n` peers and one initiator device per peer.
pub struct Fleet {
    /// The device every initiator shakes hands with.
    pub responder: Device,
    /// Initiator `i` has UDP address [`initiator_addr`]`(i)`.
    pub initiators: Vec<Device>,
    /// The virtual clock of the fleet's last round.
    pub now: Instant,
    /// Datagrams on their way to the responder, tagged with the initiator's index.
    pub to_responder: Outbox,
    /// Datagrams on their way to the initiators.
    pub to_initiators: Outbox,
    triggers: Vec<Vec<u8>>,
    stranger_initiation: Vec<u8>,
}

/// Deterministic private key number `i` of a fleet (distinct for distinct `i`).
fn fleet_key(i: usize) -> PrivateKey {
    // Bytes 1..9: clamping changes only the low bits of byte 0 and byte 31.
    let mut b = [0x5a; 32];
    b[1..9].copy_from_slice(&(i as u64).to_le_bytes());
    PrivateKey::from_bytes(b)
}

/// UAPI `set=1` text for the responder: its key and one peer per initiator
/// (endpoint and one /32 AllowedIP each).
fn responder_config(own: &PrivateKey, initiators: &[PrivateKey]) -> String {
    let mut text = format!("set=1\nprivate_key={}\n", own.to_hex());
    for (i, key) in initiators.iter().enumerate() {
        let tunnel = Ipv4Addr::from(TUNNEL_BASE + i as u32);
        // Writing to a String cannot fail.
        let _ = write!(
            text,
            "public_key={}\nendpoint={}\nallowed_ip={tunnel}/32\n",
            key.public_key().to_hex(),
            initiator_addr(i)
        );
    }
    text.push('\n');
    text
}

/// UAPI `set=1` text for an initiator: its key and the responder as its peer.
fn initiator_config(own: &PrivateKey, responder: &PrivateKey) -> String {
    format!(
        "set=1\nprivate_key={}\npublic_key={}\nendpoint={RESPONDER_ADDR}\nallowed_ip={RESPONDER_TUNNEL}/32\n\n",
        own.to_hex(),
        responder.public_key().to_hex()
    )
}

/// A device with `config` applied.
fn configured(seed: usize, base: Instant, mtu: usize, config: &str) -> Result<Device, SetupError> {
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&(seed as u64).to_le_bytes());
    let mut device = Device::new(seed_bytes, (base, WALL_AT_BASE), mtu);
    device.apply(base, &parse_set(config)?, &mut Discard::default());
    Ok(device)
}

impl Fleet {
    /// A responder with `n` peers (`1..=`[`MAX_FLEET`]) and their `n` initiators,
    /// with tunnel MTU `mtu`; `base` is the virtual clock's origin.
    pub fn new(base: Instant, n: usize, mtu: usize) -> Result<Self, SetupError> {
        if n == 0 || n > MAX_FLEET {
            return Err(SetupError::BadFleetSize(n));
        }
        let responder_key = fleet_key(0);
        let keys: Vec<PrivateKey> = (1..=n).map(fleet_key).collect();
        let responder = configured(0, base, mtu, &responder_config(&responder_key, &keys))?;
        let mut initiators = Vec::with_capacity(n);
        let mut triggers = Vec::with_capacity(n);
        for (i, key) in keys.iter().enumerate() {
            let config = initiator_config(key, &responder_key);
            initiators.push(configured(i + 1, base, mtu, &config)?);
            let tunnel = Ipv4Addr::from(TUNNEL_BASE + i as u32);
            triggers.push(ipv4_packet(tunnel, RESPONDER_TUNNEL, IPV4_HEADER_LEN)?);
        }
        let stranger_key = fleet_key(n + 1);
        let config = initiator_config(&stranger_key, &responder_key);
        let mut stranger = configured(n + 1, base, mtu, &config)?;
        let mut out = Outbox::with_capacity(1);
        let trigger = ipv4_packet(Ipv4Addr::new(10, 126, 0, 1), RESPONDER_TUNNEL, 20)?;
        stranger.handle_tun_packet(base, &trigger, &mut out);
        let stranger_initiation = out.get(0).map(|(_, d)| d.to_vec()).unwrap_or_default();
        Ok(Self {
            responder,
            initiators,
            now: base,
            to_responder: Outbox::with_capacity(2 * n),
            to_initiators: Outbox::with_capacity(2 * n),
            triggers,
            stranger_initiation,
        })
    }

    /// Every initiator handles its tunnel packet at [`Fleet::now`]; returns how many
    /// initiations they emitted into [`Fleet::to_responder`] (cleared first).
    pub fn initiate(&mut self) -> usize {
        self.to_responder.clear();
        let now = self.now;
        for (i, (device, trigger)) in self.initiators.iter_mut().zip(&self.triggers).enumerate() {
            self.to_responder.set_sender(i);
            device.handle_tun_packet(now, trigger, &mut self.to_responder);
        }
        self.to_responder.count_type(TYPE_INITIATION)
    }

    /// The responder receives `count` copies of an initiation from a key it does not
    /// know, at `at`, from one attacker address; its answers are discarded. Returns
    /// how many datagrams it answered with (cookie replies, once under load).
    pub fn flood(&mut self, at: Instant, count: usize) -> u64 {
        let mut sink = Discard::default();
        let mut buf = self.stranger_initiation.clone();
        for _ in 0..count {
            buf.copy_from_slice(&self.stranger_initiation);
            self.responder
                .handle_datagram(at, ATTACKER_ADDR, None, &mut buf, &mut sink);
        }
        sink.datagrams
    }

    /// The responder consumes every datagram of [`Fleet::to_responder`], the `k`-th
    /// of `len` at `at + spread * k / len`, answering into [`Fleet::to_initiators`]
    /// (cleared first).
    pub fn deliver_to_responder(&mut self, at: Instant, spread: Duration) -> Tally {
        self.to_initiators.clear();
        let len = self.to_responder.len();
        for k in 0..len {
            let Some((sent, buf)) = self.to_responder.get_mut(k) else {
                break;
            };
            let offset = spread.mul_f64(k as f64 / len as f64);
            self.responder.handle_datagram(
                at + offset,
                initiator_addr(sent.sender),
                None,
                buf,
                &mut self.to_initiators,
            );
        }
        Tally {
            consumed: len,
            responses: self.to_initiators.count_type(TYPE_RESPONSE),
            cookie_replies: self.to_initiators.count_type(TYPE_COOKIE_REPLY),
        }
    }

    /// Each initiator consumes, at `at`, the datagrams of [`Fleet::to_initiators`]
    /// addressed to it; what they send lands in [`Fleet::to_responder`] (cleared
    /// first). Returns the datagrams addressed to no initiator.
    pub fn deliver_to_initiators(&mut self, at: Instant) -> usize {
        self.to_responder.clear();
        let mut stray = 0;
        for k in 0..self.to_initiators.len() {
            let Some((sent, buf)) = self.to_initiators.get_mut(k) else {
                break;
            };
            let Some(device) = initiator_index(sent.to).and_then(|i| {
                self.to_responder.set_sender(i);
                self.initiators.get_mut(i)
            }) else {
                stray += 1;
                continue;
            };
            device.handle_datagram(at, RESPONDER_ADDR, None, buf, &mut self.to_responder);
        }
        stray
    }

    /// Every initiator runs its timers at `at`; a pending handshake is sent again
    /// (with MAC2 when a cookie was received). Returns the initiations emitted into
    /// [`Fleet::to_responder`] (cleared first).
    pub fn retry(&mut self, at: Instant) -> usize {
        self.to_responder.clear();
        for (i, device) in self.initiators.iter_mut().enumerate() {
            self.to_responder.set_sender(i);
            device.handle_timeout(at, &mut self.to_responder);
        }
        self.to_responder.count_type(TYPE_INITIATION)
    }

    /// Handshakes completed by all initiators together, and by the responder.
    pub fn completed(&self) -> (u64, u64) {
        let initiators = self
            .initiators
            .iter()
            .map(|d| d.stats.handshakes_completed)
            .sum();
        (initiators, self.responder.stats.handshakes_completed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portdistrict_wg::constants::{
        REJECT_AFTER_TIME, REKEY_TIMEOUT, UNDER_LOAD_HANDSHAKES_PER_SECOND,
    };

    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    const STEP: Duration = REJECT_AFTER_TIME.saturating_add(REKEY_TIMEOUT);
    #[test]
    fn initiator_addresses_round_trip() {
        for i in [0, 1, 255, 256, MAX_FLEET - 1] {
            assert_eq!(initiator_index(initiator_addr(i)), Some(i));
        }
        assert_eq!(initiator_index(RESPONDER_ADDR), None);
        assert_eq!(initiator_index(ATTACKER_ADDR), None);
        let other_port = SocketAddr::new(initiator_addr(3).ip(), 1);
        assert_eq!(initiator_index(other_port), None);
    }

    #[test]
    fn outbox_keeps_datagrams_and_senders() {
        let mut out = Outbox::with_capacity(2);
        let ep = Endpoint {
            addr: initiator_addr(7),
            local: None,
        };
        out.set_sender(4);
        out.send_udp(&ep, &[2, 0, 0, 0, 9]);
        out.set_sender(5);
        out.send_udp(&ep, &[3, 1]);
        assert_eq!(out.len(), 2);
        let (sent, bytes) = out.get(1).unwrap();
        assert_eq!(
            (sent.sender, sent.to, bytes),
            (5, initiator_addr(7), &[3u8, 1][..])
        );
        assert_eq!(out.get(0).unwrap().1, &[2, 0, 0, 0, 9]);
        assert_eq!(
            (out.count_type(2), out.count_type(3), out.count_type(1)),
            (1, 1, 0)
        );
        out.clear();
        assert!(out.is_empty() && out.get(0).is_none());
    }

    #[test]
    fn fleet_size_is_bounded() {
        assert!(matches!(
            Fleet::new(base(), 0, 1420),
            Err(SetupError::BadFleetSize(0))
        ));
    }

    #[test]
    fn a_burst_below_the_load_threshold_gets_direct_responses() {
        let n = 20;
        let mut fleet = Fleet::new(base(), n, 1420).unwrap();
        for round in 1..=2u64 {
            fleet.now += STEP;
            assert_eq!(fleet.initiate(), n);
            let tally = fleet.deliver_to_responder(fleet.now, Duration::from_millis(500));
            assert_eq!((tally.responses, tally.cookie_replies), (n, 0));
            assert_eq!(fleet.deliver_to_initiators(fleet.now), 0);
            fleet.deliver_to_responder(fleet.now, Duration::ZERO);
            let done = round * n as u64;
            assert_eq!(fleet.completed(), (done, done));
        }
    }

    #[test]
    fn under_load_the_cookie_round_trip_completes() {
        let n = 10;
        let flood = UNDER_LOAD_HANDSHAKES_PER_SECOND as usize + 1;
        let mut fleet = Fleet::new(base(), n, 1420).unwrap();
        fleet.now += STEP;
        assert_eq!(fleet.initiate(), n);
        let now = fleet.now;
        assert_eq!(
            fleet.flood(now, flood),
            1,
            "only the message over the limit gets a cookie"
        );
        let tally = fleet.deliver_to_responder(now, Duration::from_millis(500));
        assert_eq!((tally.responses, tally.cookie_replies), (0, n));
        fleet.deliver_to_initiators(now);
        assert_eq!(fleet.initiators[0].stats.rx_cookie_reply, 1);
        let at = now + REKEY_TIMEOUT + Duration::from_secs(1);
        assert_eq!(fleet.retry(at), n);
        fleet.flood(at, flood);
        let tally = fleet.deliver_to_responder(at, Duration::from_millis(500));
        assert_eq!(
            (tally.responses, tally.cookie_replies),
            (n, 0),
            "MAC2 admits the retries"
        );
        fleet.deliver_to_initiators(at);
        fleet.deliver_to_responder(at, Duration::ZERO);
        assert_eq!(fleet.completed(), (n as u64, n as u64));
    }
}
