//! Shared setup for the criterion micro-benchmarks of `portdistrict-wg`
//! (`benches/wireguard.rs`).
//!
//! What flows through a benchmark, in order:
//!
//! 1. [`Pair::new`] configures two [`Device`]s that know each other, through the
//!    same UAPI text `wg(8)` would send;
//! 2. [`Pair::handshake`] runs a real Noise IK handshake between them: a tunnel
//!    packet on the initiator starts it, and [`deliver`] shuttles the initiation,
//!    the response and the confirming data message through [`CaptureIo`] sinks;
//! 3. the benchmark then feeds packets to one device and reads its outputs back
//!    from the [`CaptureIo`], which copies them into buffers allocated once, so the
//!    measurement contains no allocation of the harness.
//!
//! [`ipv4_packet`], [`random_v4_prefixes`] and [`lookup_addresses`] build the
//! inputs; [`SplitMix64`] makes them reproducible. [`fleet`] holds the fixture of
//! the scale benchmark: one responder with many peers and one device per peer.

pub mod fleet;

use portdistrict_wg::allowed_ips::AllowedIps;
use portdistrict_wg::config::ConfigChange;
use portdistrict_wg::constants::{REJECT_AFTER_TIME, REKEY_TIMEOUT};
use portdistrict_wg::device::{Device, Io, SendOutcome, MAX_PACKET};
use portdistrict_wg::peer::Endpoint;
use portdistrict_wg::stats::Stats;
use portdistrict_wg::uapi::{parse_request, Request, UapiError};
use portdistrict_wg::wire::DATA_MIN_LEN;
use portdistrict_wg::PrivateKey;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Largest datagram a device can emit: the largest packet plus header and tag.
pub const MAX_DATAGRAM: usize = MAX_PACKET + DATA_MIN_LEN;
/// Datagrams one [`CaptureIo`] holds between two [`CaptureIo::clear`] calls.
pub const CAPTURE_SLOTS: usize = 4;
/// Smallest IPv4 packet: a bare 20-byte header.
pub const IPV4_HEADER_LEN: usize = 20;
/// Clock advance between two [`Pair::handshake`] calls on the same pair.
///
/// A device starts a new handshake for a tunnel packet only when its session can
/// no longer send (`REJECT_AFTER_TIME`), and sends at most one initiation per
/// `REKEY_TIMEOUT`; the responder refuses timestamps that do not grow, and the
/// timestamp is the wall clock derived from `now`. Advancing `now` by more than
/// both makes every call a complete, accepted handshake.
pub const HANDSHAKE_STEP: Duration = REJECT_AFTER_TIME.saturating_add(REKEY_TIMEOUT);
/// Wall clock (time since the Unix epoch) the devices pair with their base instant.
const WALL_AT_BASE: Duration = Duration::from_secs(1_700_000_000);
/// Stats counters that record events rather than refusals.
const EVENT_COUNTERS: [&str; 9] = [
    "rx_keepalive",
    "rx_cookie_reply",
    "tx_handshake_initiation",
    "tx_handshake_response",
    "handshakes_completed",
    "rx_handshake",
    "admitted",
    "tx_probe",
    "tx_handshake_held",
];

/// Why a benchmark fixture could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// The requested IPv4 packet length is below the 20-byte header or above 65535.
    #[error("an IPv4 packet must be 20..=65535 bytes long, not {0}")]
    BadPacketLength(usize),
    /// The generated UAPI configuration did not parse.
    #[error("the benchmark's UAPI configuration was refused: {0}")]
    Config(#[from] UapiError),
    /// A [`fleet::Fleet`] was asked for zero initiators or more than [`fleet::MAX_FLEET`].
    #[error("a fleet has 1..={max} initiators, not {0}", max = fleet::MAX_FLEET)]
    BadFleetSize(usize),
    /// The generated UAPI configuration parsed as something other than `set=1`.
    #[error("the benchmark's UAPI configuration is not a set=1 request")]
    NotASet,
    /// A handshake did not complete on both sides; the counts are the devices'
    /// `handshakes_completed` after the attempt, and `refused` their refusals.
    #[error(
        "handshake did not complete: initiator completed {initiator}, responder {responder} \
         (refusals: {refused}); was the clock advanced by HANDSHAKE_STEP?"
    )]
    HandshakeIncomplete {
        /// Handshakes the initiator has completed.
        initiator: u64,
        /// Handshakes the responder has completed.
        responder: u64,
        /// Refusals counted by both devices together.
        refused: u64,
    },
}

/// A small, fast, seedable generator (SplitMix64) for reproducible inputs.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
}

/// The number of refusals (drops) in `stats`: every counter except the events.
pub fn refusals(stats: &Stats) -> u64 {
    stats
        .iter()
        .filter(|(name, _)| !EVENT_COUNTERS.contains(name))
        .map(|(_, v)| v)
        .sum()
}

/// An IPv4 packet of `len` bytes from `src` to `dst`: a valid header (UDP
/// protocol number, TTL 64, correct checksum) followed by a patterned payload.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Result<Vec<u8>, SetupError> {
    let total = u16::try_from(len)
        .ok()
        .filter(|&l| usize::from(l) >= IPV4_HEADER_LEN)
        .ok_or(SetupError::BadPacketLength(len))?;
    let mut p: Vec<u8> = (0..len).map(|i| i as u8).collect();
    p[..IPV4_HEADER_LEN].fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = ipv4_checksum(&p[..IPV4_HEADER_LEN]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    Ok(p)
}

/// The Internet checksum (RFC 1071) of an IPv4 header.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One captured output buffer.
struct Slot {
    to: Option<SocketAddr>,
    len: usize,
    buf: Box<[u8]>,
}

impl Slot {
    fn new() -> Self {
        Self {
            to: None,
            len: 0,
            buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
        }
    }

    fn fill(&mut self, to: Option<SocketAddr>, data: &[u8]) {
        self.to = to;
        self.len = data.len();
        self.buf[..data.len()].copy_from_slice(data);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// An [`Io`] that copies outputs into buffers allocated once: up to
/// [`CAPTURE_SLOTS`] datagrams and the last TUN packet since the last
/// [`CaptureIo::clear`]. A datagram beyond the slots is refused
/// ([`SendOutcome::Failed`]) and counted in [`CaptureIo::refused`].
pub struct CaptureIo {
    udp: Vec<Slot>,
    udp_used: usize,
    tun: Slot,
    /// Datagrams accepted since creation.
    pub sent: u64,
    /// Datagrams refused because every slot was full.
    pub refused: u64,
    /// TUN packets written since creation.
    pub tun_written: u64,
}

impl Default for CaptureIo {
    fn default() -> Self {
        Self::new()
    }
}

impl CaptureIo {
    /// An empty capture with its buffers allocated.
    pub fn new() -> Self {
        Self {
            udp: (0..CAPTURE_SLOTS).map(|_| Slot::new()).collect(),
            udp_used: 0,
            tun: Slot::new(),
            sent: 0,
            refused: 0,
            tun_written: 0,
        }
    }

    /// Forgets the captured datagrams and TUN packet (the totals stay).
    pub fn clear(&mut self) {
        self.udp_used = 0;
        self.tun.len = 0;
    }

    /// Datagrams captured since the last [`CaptureIo::clear`].
    pub fn datagram_count(&self) -> usize {
        self.udp_used
    }

    /// The `i`-th datagram captured since the last [`CaptureIo::clear`].
    pub fn datagram(&self, i: usize) -> Option<&[u8]> {
        self.udp[..self.udp_used].get(i).map(Slot::bytes)
    }

    /// Where the `i`-th captured datagram was sent.
    pub fn datagram_to(&self, i: usize) -> Option<SocketAddr> {
        self.udp[..self.udp_used].get(i).and_then(|s| s.to)
    }

    /// The last TUN packet written since the last [`CaptureIo::clear`] (empty if none).
    pub fn last_tun(&self) -> &[u8] {
        self.tun.bytes()
    }
}

impl Io for CaptureIo {
    fn send_udp(&mut self, to: &Endpoint, datagram: &[u8]) -> SendOutcome {
        match self.udp.get_mut(self.udp_used) {
            Some(slot) if datagram.len() <= slot.buf.len() => {
                slot.fill(Some(to.addr), datagram);
                self.udp_used += 1;
                self.sent += 1;
                SendOutcome::Sent
            }
            _ => {
                self.refused += 1;
                SendOutcome::Failed
            }
        }
    }

    fn write_tun(&mut self, packet: &[u8]) {
        // A device never writes more than MAX_PACKET bytes, which the slot holds.
        let len = packet.len().min(self.tun.buf.len());
        self.tun.fill(None, &packet[..len]);
        self.tun_written += 1;
    }
}

/// One side of a [`Pair`]: a device, its output sink and its addresses.
pub struct Node {
    /// The device.
    pub device: Device,
    /// Where the device's outputs land.
    pub io: CaptureIo,
    /// The device's UDP address (the peer's configured endpoint for it).
    pub addr: SocketAddr,
    /// The device's address inside the tunnel (the peer's AllowedIPs for it).
    pub tunnel_ip: Ipv4Addr,
}

impl Node {
    fn new(seed: u8, base: Instant, mtu: usize, addr: SocketAddr, tunnel_ip: Ipv4Addr) -> Self {
        Self {
            device: Device::new([seed; 32], (base, WALL_AT_BASE), mtu),
            io: CaptureIo::new(),
            addr,
            tunnel_ip,
        }
    }

    /// Sends `packet` into the tunnel at `now` and returns the first datagram the
    /// device emitted for it (the sealed data message when a session is up).
    pub fn seal(&mut self, now: Instant, packet: &[u8]) -> Option<&[u8]> {
        self.io.clear();
        self.device.handle_tun_packet(now, packet, &mut self.io);
        self.io.datagram(0)
    }
}

/// UAPI `set=1` text configuring `own` with one peer `peer`.
fn config_text(
    own: &PrivateKey,
    peer: &PrivateKey,
    endpoint: SocketAddr,
    allowed: Ipv4Addr,
) -> String {
    format!(
        "set=1\nprivate_key={}\npublic_key={}\nendpoint={endpoint}\nallowed_ip={allowed}/32\n\n",
        own.to_hex(),
        peer.public_key().to_hex()
    )
}

pub(crate) fn parse_set(text: &str) -> Result<ConfigChange, SetupError> {
    match parse_request(text)? {
        Request::Set(set) => Ok(set),
        Request::Get => Err(SetupError::NotASet),
    }
}

/// Delivers every datagram `from` captured to `to` (whose captured outputs are
/// cleared first), copying each through `scratch` since decryption is in place.
pub fn deliver(from: &Node, to: &mut Node, now: Instant, scratch: &mut [u8]) {
    to.io.clear();
    for i in 0..from.io.datagram_count() {
        let Some(d) = from.io.datagram(i) else { break };
        let Some(buf) = scratch.get_mut(..d.len()) else {
            continue;
        };
        buf.copy_from_slice(d);
        to.device
            .handle_datagram(now, from.addr, None, buf, &mut to.io);
    }
}

/// Two devices configured as each other's only peer, with a virtual clock.
pub struct Pair {
    /// The device that starts handshakes (its tunnel packets trigger them).
    pub initiator: Node,
    /// The device that answers them.
    pub responder: Node,
    /// The virtual clock passed to both devices.
    pub now: Instant,
    trigger: Vec<u8>,
    scratch: Box<[u8]>,
}

impl Pair {
    /// Two configured devices with tunnel MTU `mtu` and no session yet; `base` is
    /// their monotonic origin (any instant: the clock is virtual from there on).
    pub fn new(base: Instant, mtu: usize) -> Result<Self, SetupError> {
        let (key_i, key_r) = (
            PrivateKey::from_bytes([0x11; 32]),
            PrivateKey::from_bytes([0x22; 32]),
        );
        let addr_i = SocketAddr::from(([192, 0, 2, 1], 51820));
        let addr_r = SocketAddr::from(([192, 0, 2, 2], 51820));
        let mut initiator = Node::new(1, base, mtu, addr_i, Ipv4Addr::new(10, 9, 0, 1));
        let mut responder = Node::new(2, base, mtu, addr_r, Ipv4Addr::new(10, 9, 0, 2));
        let set_i = parse_set(&config_text(&key_i, &key_r, addr_r, responder.tunnel_ip))?;
        let set_r = parse_set(&config_text(&key_r, &key_i, addr_i, initiator.tunnel_ip))?;
        initiator.device.apply(base, &set_i, &mut initiator.io);
        responder.device.apply(base, &set_r, &mut responder.io);
        let trigger = ipv4_packet(initiator.tunnel_ip, responder.tunnel_ip, IPV4_HEADER_LEN)?;
        Ok(Self {
            initiator,
            responder,
            now: base,
            trigger,
            scratch: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
        })
    }

    /// [`Pair::new`] followed by one [`Pair::handshake`]: a pair with a confirmed
    /// session on both sides.
    pub fn established(base: Instant, mtu: usize) -> Result<Self, SetupError> {
        let mut pair = Self::new(base, mtu)?;
        pair.handshake()?;
        Ok(pair)
    }

    /// Moves the virtual clock forward.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// One complete handshake at the current clock: a 20-byte tunnel packet on the
    /// initiator -> initiation -> response -> the staged packet, sealed in the new
    /// session, which confirms it to the responder. Between two calls advance the
    /// clock by [`HANDSHAKE_STEP`], or the initiator just seals the packet.
    pub fn handshake(&mut self) -> Result<(), SetupError> {
        let before = self.completed();
        let now = self.now;
        self.initiator.io.clear();
        self.initiator
            .device
            .handle_tun_packet(now, &self.trigger, &mut self.initiator.io);
        deliver(&self.initiator, &mut self.responder, now, &mut self.scratch);
        deliver(&self.responder, &mut self.initiator, now, &mut self.scratch);
        deliver(&self.initiator, &mut self.responder, now, &mut self.scratch);
        let (initiator, responder) = self.completed();
        if initiator == before.0 + 1 && responder == before.1 + 1 {
            return Ok(());
        }
        let refused =
            refusals(&self.initiator.device.stats) + refusals(&self.responder.device.stats);
        Err(SetupError::HandshakeIncomplete {
            initiator,
            responder,
            refused,
        })
    }

    fn completed(&self) -> (u64, u64) {
        (
            self.initiator.device.stats.handshakes_completed,
            self.responder.device.stats.handshakes_completed,
        )
    }

    /// An IPv4 packet of `len` bytes from the initiator's tunnel address to the
    /// responder's (routable on the initiator, source-valid on the responder).
    pub fn packet(&self, len: usize) -> Result<Vec<u8>, SetupError> {
        ipv4_packet(self.initiator.tunnel_ip, self.responder.tunnel_ip, len)
    }
}

/// `n` random IPv4 prefixes of length /24 to /32 (duplicates possible, as in
/// a real table built from random input).
pub fn random_v4_prefixes(n: usize, rng: &mut SplitMix64) -> Vec<(Ipv4Addr, u8)> {
    (0..n)
        .map(|_| {
            let cidr = 24 + (rng.next_u32() % 9) as u8;
            (Ipv4Addr::from(rng.next_u32()), cidr)
        })
        .collect()
}

/// A routing table mapping each of `prefixes` to its index.
pub fn table_of(prefixes: &[(Ipv4Addr, u8)]) -> AllowedIps<u32> {
    let mut table = AllowedIps::new();
    for (i, &(addr, cidr)) in prefixes.iter().enumerate() {
        // cidr <= 32 by construction, so the insert cannot fail.
        let _ = table.insert(addr.into(), cidr, i as u32);
    }
    table
}

/// `count` lookup keys: even positions fall inside a random one of `prefixes`
/// (hits), odd positions are uniformly random (mostly misses).
pub fn lookup_addresses(
    prefixes: &[(Ipv4Addr, u8)],
    count: usize,
    rng: &mut SplitMix64,
) -> Vec<[u8; 4]> {
    (0..count)
        .map(|i| {
            let random = rng.next_u32();
            let pick = (rng.next_u64() % prefixes.len().max(1) as u64) as usize;
            match prefixes.get(pick) {
                Some(&(addr, cidr)) if i % 2 == 0 => {
                    let net_mask = u32::MAX.checked_shl(32 - u32::from(cidr)).unwrap_or(0);
                    ((u32::from(addr) & net_mask) | (random & !net_mask)).to_be_bytes()
                }
                _ => random.to_be_bytes(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    #[test]
    fn ipv4_packet_has_a_valid_header() {
        let p = ipv4_packet(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 100).unwrap();
        assert_eq!(p.len(), 100);
        assert_eq!(p[0], 0x45);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 100);
        assert_eq!(&p[12..16], &[10, 0, 0, 1]);
        assert_eq!(&p[16..20], &[10, 0, 0, 2]);
        assert_eq!(
            ipv4_checksum(&p[..20]),
            0,
            "a header with its checksum sums to zero"
        );
        assert_eq!(p[20], 20, "payload keeps its pattern");
        assert_eq!(
            ipv4_packet(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 19),
            Err(SetupError::BadPacketLength(19))
        );
        assert_eq!(
            ipv4_packet(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 65536),
            Err(SetupError::BadPacketLength(65536))
        );
    }

    #[test]
    fn established_pair_carries_packets_and_rejects_replays() {
        let mut pair = Pair::established(base(), 1420).unwrap();
        let packet = pair.packet(512).unwrap();
        let now = pair.now;
        let mut datagram = pair.initiator.seal(now, &packet).unwrap().to_vec();
        assert_eq!(pair.initiator.io.datagram_to(0), Some(pair.responder.addr));
        assert_eq!(datagram.len(), 512 + DATA_MIN_LEN);
        let copy = datagram.clone();
        let from = pair.initiator.addr;
        let responder = &mut pair.responder;
        responder.io.clear();
        responder
            .device
            .handle_datagram(now, from, None, &mut datagram, &mut responder.io);
        assert_eq!(responder.io.last_tun(), &packet[..]);
        let mut again = copy;
        responder
            .device
            .handle_datagram(now, from, None, &mut again, &mut responder.io);
        assert_eq!(responder.device.stats.rx_replay, 1);
        assert_eq!(refusals(&responder.device.stats), 1);
    }

    #[test]
    fn handshakes_repeat_only_when_the_clock_advances() {
        let mut pair = Pair::established(base(), 1420).unwrap();
        for _ in 0..3 {
            pair.advance(HANDSHAKE_STEP);
            pair.handshake().unwrap();
        }
        assert_eq!(pair.initiator.device.stats.handshakes_completed, 4);
        assert!(matches!(
            pair.handshake(),
            Err(SetupError::HandshakeIncomplete {
                initiator: 4,
                responder: 4,
                ..
            })
        ));
    }

    #[test]
    fn capture_refuses_beyond_its_slots() {
        let mut io = CaptureIo::new();
        let ep = Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            local: None,
        };
        for i in 0..CAPTURE_SLOTS {
            assert_eq!(io.send_udp(&ep, &[i as u8; 3]), SendOutcome::Sent);
        }
        assert_eq!(io.send_udp(&ep, &[9]), SendOutcome::Failed);
        assert_eq!(
            (io.sent, io.refused, io.datagram_count()),
            (CAPTURE_SLOTS as u64, 1, CAPTURE_SLOTS)
        );
        assert_eq!(io.datagram(1), Some(&[1u8, 1, 1][..]));
        io.clear();
        assert_eq!(io.datagram(0), None);
    }

    #[test]
    fn even_lookup_addresses_hit_the_table() {
        let mut rng = SplitMix64::new(7);
        let prefixes = random_v4_prefixes(1000, &mut rng);
        let table = table_of(&prefixes);
        let keys = lookup_addresses(&prefixes, 200, &mut rng);
        assert!(keys
            .iter()
            .step_by(2)
            .all(|k| table.lookup_v4(*k).is_some()));
        let misses = keys
            .iter()
            .skip(1)
            .step_by(2)
            .filter(|k| table.lookup_v4(**k).is_none())
            .count();
        assert!(
            misses > 90,
            "random addresses mostly miss 1000 small prefixes, got {misses} misses"
        );
    }
}
