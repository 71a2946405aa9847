//! One configured peer: its keys and endpoint, its handshake in flight, its three
//! session slots (previous, current, next), its timers, its packet queue and its
//! counters, and the per-peer halves of the send path.
//!
//! Sending order: packets staged while no session exists are sent first, in order,
//! as soon as one does; a packet is only ever sealed with a session that
//! [`Session::can_send`]; the initiator of a session starts a new handshake when it
//! grows old (`REKEY_AFTER_TIME`) or has sent `REKEY_AFTER_MESSAGES`.

use crate::constants::{
    KEEPALIVE_TIMEOUT, MAX_QUEUED_PACKETS, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME, REKEY_TIMEOUT,
};
use crate::cookie::CookieGenerator;
use crate::handshake::InitiatorState;
use crate::keys::{PresharedKey, PublicKey};
use crate::session::Session;
use crate::timers::Timers;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Index of a peer in its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

/// The local address a peer last reached us on (reply-to-sender, "sticky" source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddr {
    /// Our address the datagram was sent to.
    pub ip: IpAddr,
    /// The interface it arrived on (needed for IPv6 link-local sources).
    pub ifindex: u32,
}

/// Where a peer is reached, and from which of our addresses we last heard it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The peer's UDP address.
    pub addr: SocketAddr,
    /// Our address to send from, if known.
    pub local: Option<LocalAddr>,
}

/// The three session slots of a peer.
#[derive(Default)]
pub struct Sessions {
    /// The session before `current`, kept to decrypt packets still in flight.
    pub previous: Option<Session>,
    /// The session used for sending.
    pub current: Option<Session>,
    /// A responder's session not yet confirmed by a data packet from the initiator.
    pub next: Option<Session>,
}

impl Sessions {
    /// Local indices of every session held (to free them in the index table).
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        [&self.previous, &self.current, &self.next]
            .into_iter()
            .flatten()
            .map(|s| s.local_index)
    }
}

/// A configured peer.
pub struct Peer {
    /// The peer's static public key.
    pub public_key: PublicKey,
    /// Mixed into every handshake with this peer (zero = none).
    pub preshared_key: PresharedKey,
    /// Where to send; learned from authenticated packets (roaming) unless pinned.
    pub endpoint: Option<Endpoint>,
    /// The endpoint is pinned ([`crate::device::Device::pin_endpoint`]):
    /// authenticated packets from another address do not move it.
    pub pinned: bool,
    /// NAT traversal holds this peer's own handshake initiations
    /// ([`crate::device::Device::hold_initiations`]): only probes go out.
    pub held: bool,
    /// Where the latest authenticated handshake message (initiation or response)
    /// from the peer came from, and when, whatever the endpoint is.
    pub handshake_source: Option<(SocketAddr, Instant)>,
    /// Persistent keepalive interval in seconds (0 = off).
    pub persistent_keepalive: u16,
    /// `DH(our static, peer static)`; `None` without a private key or for a low-order key.
    pub(crate) static_static: Option<[u8; 32]>,
    pub(crate) cookie: CookieGenerator,
    pub(crate) handshake: Option<InitiatorState>,
    /// The initiation the last probe sent, and when: probes within
    /// [`crate::constants::PROBE_ROUND`] of it send the same bytes.
    pub(crate) probe_initiation: Option<(Instant, [u8; crate::wire::INITIATION_LEN])>,
    pub(crate) last_sent_handshake: Option<Instant>,
    pub(crate) latest_timestamp: [u8; 12],
    pub(crate) last_initiation_consumed: Option<Instant>,
    /// The peer's sessions.
    pub sessions: Sessions,
    /// The peer's timers.
    pub timers: Timers,
    /// Packets waiting for a session (an empty packet is a keepalive).
    pub(crate) queue: VecDeque<Vec<u8>>,
    /// Bytes of authenticated datagrams received from this peer.
    pub rx_bytes: u64,
    /// Bytes of datagrams sent to this peer.
    pub tx_bytes: u64,
    /// When the last handshake completed.
    pub last_handshake: Option<Instant>,
}

impl Peer {
    /// A new peer with no endpoint, no sessions and no keepalive.
    pub fn new(public_key: PublicKey, static_static: Option<[u8; 32]>) -> Self {
        Self {
            cookie: CookieGenerator::new(&public_key),
            public_key,
            preshared_key: PresharedKey::default(),
            endpoint: None,
            pinned: false,
            held: false,
            handshake_source: None,
            probe_initiation: None,
            persistent_keepalive: 0,
            static_static,
            handshake: None,
            last_sent_handshake: None,
            latest_timestamp: [0; 12],
            last_initiation_consumed: None,
            sessions: Sessions::default(),
            timers: Timers::default(),
            queue: VecDeque::new(),
            rx_bytes: 0,
            tx_bytes: 0,
            last_handshake: None,
        }
    }

    /// True when the current session may seal a packet now.
    pub fn can_send(&self, now: Instant) -> bool {
        self.sessions
            .current
            .as_ref()
            .is_some_and(|s| s.can_send(now))
    }

    /// Stages a packet until a session exists; the oldest is dropped when full.
    /// Returns true when a packet had to be dropped.
    pub(crate) fn stage(&mut self, packet: &[u8]) -> bool {
        let dropped = self.queue.len() >= MAX_QUEUED_PACKETS;
        if dropped {
            self.queue.pop_front();
        }
        self.queue.push_back(packet.to_vec());
        dropped
    }

    /// True when a handshake initiation may be sent now (at most one per
    /// `REKEY_TIMEOUT`).
    pub(crate) fn handshake_allowed(&self, now: Instant) -> bool {
        self.last_sent_handshake
            .is_none_or(|t| now.saturating_duration_since(t) >= REKEY_TIMEOUT)
    }

    /// True when the initiator of the current session should rekey after sending.
    pub(crate) fn wants_rekey_on_send(&self, now: Instant) -> bool {
        self.sessions.current.as_ref().is_some_and(|s| {
            s.is_initiator
                && (s.send_counter() > REKEY_AFTER_MESSAGES
                    || now.saturating_duration_since(s.created) > REKEY_AFTER_TIME)
        })
    }

    /// True when the initiator of the current session should start its "last
    /// minute" handshake on receive (the session is about to be rejected).
    pub(crate) fn wants_rekey_on_receive(&self, now: Instant) -> bool {
        let limit = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
        !self.timers.sent_last_minute_handshake
            && self
                .sessions
                .current
                .as_ref()
                .is_some_and(|s| s.is_initiator && now.saturating_duration_since(s.created) > limit)
    }

    /// Roaming: an authenticated packet arrived from `from`, which becomes the
    /// endpoint, unless the endpoint is pinned to another address (then it stays; a
    /// packet from the pinned address itself still refreshes the sticky source).
    pub(crate) fn roam(&mut self, from: Endpoint) {
        match self.endpoint {
            Some(ep) if self.pinned && ep.addr != from.addr => {}
            _ => self.endpoint = Some(from),
        }
    }

    /// Forgets the sticky source address (after a failed handshake, as wireguard-go).
    pub(crate) fn clear_source(&mut self) {
        if let Some(ep) = self.endpoint.as_mut() {
            ep.local = None;
        }
    }

    /// Makes current sessions unusable for sending (private key changed), and lets a
    /// new handshake start at once (wireguard-go's `ExpireCurrentKeypairs` backdates
    /// the last initiation the same way): the old identity's initiation must not hold
    /// back the new one for `REKEY_TIMEOUT`.
    pub(crate) fn expire_sessions_for_sending(&mut self) {
        self.last_sent_handshake = None;
        self.handshake = None;
        self.sessions.current = None;
        self.sessions.next = None;
    }
}
