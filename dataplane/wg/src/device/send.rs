//! The send side of [`Device`]: TUN packets to data messages, handshake
//! initiations, keepalives, staged packets, and the timers that drive them.

use super::*;

/// Sends `datagram` to the peer's endpoint and counts it; forgets the sticky source
/// when the OS had to fall back to normal route selection.
pub(super) fn transmit(
    peer: &mut Peer,
    stats: &mut Stats,
    io: &mut impl Io,
    datagram: &[u8],
) -> bool {
    let Some(ep) = peer.endpoint else {
        stats.tx_no_endpoint += 1;
        return false;
    };
    let outcome = io.send_udp(&ep, datagram);
    account(peer, stats, outcome, datagram.len())
}

/// Counts what [`Io::send_udp`] or [`Io::send_data`] did with `len` bytes.
fn account(peer: &mut Peer, stats: &mut Stats, outcome: SendOutcome, len: usize) -> bool {
    match outcome {
        SendOutcome::Sent => {}
        SendOutcome::SentWithoutSource => peer.clear_source(),
        SendOutcome::Failed => {
            stats.tx_send_failed += 1;
            return false;
        }
        SendOutcome::NotSealed => {
            stats.tx_seal_dropped += 1;
            return false;
        }
    }
    peer.tx_bytes += len as u64;
    true
}

/// Destination address of an IP packet, if it is one.
pub(super) fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[16..20].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[24..40].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

impl Device {
    /// Routes one IP packet read from the TUN device to its peer and sends it
    /// encrypted, or stages it and starts a handshake.
    pub fn handle_tun_packet(&mut self, now: Instant, packet: &[u8], io: &mut impl Io) {
        if packet.len() > MAX_PACKET {
            self.stats.tx_malformed += 1;
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch[wire::DATA_HEADER_LEN..wire::DATA_HEADER_LEN + packet.len()]
            .copy_from_slice(packet);
        self.handle_tun_packet_in_place(now, &mut scratch, packet.len(), io);
        self.scratch = scratch;
    }

    /// [`Device::handle_tun_packet`] without a copy: the IP packet is at
    /// `buf[16..16 + len]`, and `buf` has [`TUN_TAILROOM`] bytes after it, so the
    /// data message is laid out around the packet where it lies.
    pub fn handle_tun_packet_in_place(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        len: usize,
        io: &mut impl Io,
    ) {
        let body = wire::DATA_HEADER_LEN..wire::DATA_HEADER_LEN + len;
        let Some(packet) = buf.get(body) else {
            self.stats.tx_malformed += 1;
            return;
        };
        let Some(dst) = destination(packet).filter(|_| len <= MAX_PACKET) else {
            self.stats.tx_malformed += 1;
            return;
        };
        let Some(id) = self.allowed_ips.lookup_cached(dst) else {
            self.stats.tx_no_route += 1;
            return;
        };
        let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            self.stats.tx_no_route += 1;
            return;
        };
        if peer.queue.is_empty() && peer.can_send(now) {
            if buf.len() >= wire::DATA_HEADER_LEN + len + TUN_TAILROOM {
                self.seal_and_send(id, now, buf, len, io);
            } else {
                // No room around the packet (a caller's short buffer): copy it.
                self.seal_and_send_copy(id, now, &buf[wire::DATA_HEADER_LEN..][..len], io);
            }
            if self
                .peer_by_id(id)
                .is_some_and(|p| p.wants_rekey_on_send(now))
            {
                self.send_handshake_initiation(id, now, false, io);
            }
        } else {
            if peer.stage(&buf[wire::DATA_HEADER_LEN..wire::DATA_HEADER_LEN + len]) {
                self.stats.tx_queue_dropped += 1;
            }
            self.flush_or_handshake(id, now, io);
        }
    }

    /// Seals the plaintext at `buf[16..16 + len]` (empty = keepalive) with the peer's
    /// current session, in place, and sends it. `buf` has room for padding and tag.
    fn seal_and_send(
        &mut self,
        id: PeerId,
        now: Instant,
        buf: &mut [u8],
        len: usize,
        io: &mut impl Io,
    ) -> bool {
        let mtu = self.mtu;
        let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return false;
        };
        let Some(session) = peer.sessions.current.as_mut() else {
            return false;
        };
        let Some(ep) = peer.endpoint else {
            self.stats.tx_no_endpoint += 1;
            return false;
        };
        let Ok(n) = session.prepare_seal(now, buf, len, mtu) else {
            return false;
        };
        let outcome = io.send_data(&ep, &mut buf[..n], session.send_key());
        if !account(peer, &mut self.stats, outcome, n) {
            return false;
        }
        peer.timers
            .on_authenticated_packet_traversal(now, peer.persistent_keepalive);
        peer.timers.on_authenticated_packet_sent();
        if len > 0 && !peer.timers.new_handshake_pending() {
            peer.timers
                .on_data_sent(now, super::jitter_from(&mut self.rng));
        }
        true
    }

    /// [`Device::seal_and_send`] of a packet elsewhere (staged, or a keepalive): copied
    /// into the scratch buffer first.
    fn seal_and_send_copy(&mut self, id: PeerId, now: Instant, packet: &[u8], io: &mut impl Io) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch[wire::DATA_HEADER_LEN..wire::DATA_HEADER_LEN + packet.len()]
            .copy_from_slice(packet);
        self.seal_and_send(id, now, &mut scratch, packet.len(), io);
        self.scratch = scratch;
    }

    /// Sends staged packets if a session allows it, else starts a handshake.
    pub(super) fn flush_or_handshake(&mut self, id: PeerId, now: Instant, io: &mut impl Io) {
        loop {
            let Some(peer) = self.peer_mut(id) else {
                return;
            };
            if !peer.can_send(now) {
                if !peer.queue.is_empty() {
                    self.send_handshake_initiation(id, now, false, io);
                }
                return;
            }
            let Some(pkt) = peer.queue.pop_front() else {
                break;
            };
            self.seal_and_send_copy(id, now, &pkt, io);
        }
        if self
            .peer_by_id(id)
            .is_some_and(|p| p.wants_rekey_on_send(now))
        {
            self.send_handshake_initiation(id, now, false, io);
        }
    }

    /// Sends a keepalive now (or stages one behind a handshake).
    pub(super) fn send_keepalive(&mut self, id: PeerId, now: Instant, io: &mut impl Io) {
        let Some(peer) = self.peer_mut(id) else {
            return;
        };
        if peer.queue.is_empty() {
            peer.stage(&[]);
        }
        self.flush_or_handshake(id, now, io);
    }

    /// Sends a handshake initiation, at most one per `REKEY_TIMEOUT`.
    pub(super) fn send_handshake_initiation(
        &mut self,
        id: PeerId,
        now: Instant,
        is_retry: bool,
        io: &mut impl Io,
    ) {
        let jitter = self.jitter();
        let ephemeral = self.fresh_ephemeral();
        let Some(peer) = self.peer_mut(id) else {
            return;
        };
        if !is_retry {
            peer.timers.handshake_attempts = 0;
        }
        if !peer.handshake_allowed(now) {
            return;
        }
        peer.last_sent_handshake = Some(now);
        if peer.held {
            peer.timers.on_handshake_initiated(now, jitter);
            self.stats.tx_handshake_held += 1;
            return;
        }
        let Some(buf) = self.new_initiation(id, now, ephemeral, io) else {
            return;
        };
        let Some(peer) = self.peers[id.0 as usize].as_mut() else {
            return;
        };
        transmit(peer, &mut self.stats, io, &buf);
        peer.timers
            .on_authenticated_packet_traversal(now, peer.persistent_keepalive);
        peer.timers.on_authenticated_packet_sent();
        peer.timers.on_handshake_initiated(now, jitter);
    }

    /// A new ephemeral private key.
    pub(super) fn fresh_ephemeral(&mut self) -> [u8; 32] {
        let mut ephemeral = [0u8; 32];
        self.rng.fill_bytes(&mut ephemeral);
        ephemeral
    }

    /// Makes a handshake initiation for `id` (MACs added) that replaces the one in
    /// flight: a new receiver index, announced through [`Io::index_added`] before the
    /// message exists. `None` without a private key or for a low-order peer key.
    pub(super) fn new_initiation(
        &mut self,
        id: PeerId,
        now: Instant,
        ephemeral: [u8; 32],
        io: &mut impl Io,
    ) -> Option<[u8; wire::INITIATION_LEN]> {
        let wall = self.wall(now);
        let timestamp = crate::crypto::tai64n(wall.as_secs(), wall.subsec_nanos());
        let old = self.peer_mut(id)?.handshake.take().map(|h| h.local_index);
        if let Some(old) = old {
            self.indices.remove(&old);
        }
        let index = self.new_index(id, IndexKind::Handshake);
        io.index_added(index);
        let (Some(identity), Some(peer)) =
            (self.identity.as_ref(), self.peers[id.0 as usize].as_mut())
        else {
            self.indices.remove(&index);
            return None;
        };
        let Some(ss) = peer.static_static else {
            self.indices.remove(&index);
            return None;
        };
        let mut buf = [0u8; wire::INITIATION_LEN];
        let state = handshake::create_initiation(
            identity,
            &peer.public_key,
            &ss,
            index,
            ephemeral,
            timestamp,
            &mut Initiation::new_unchecked(&mut buf[..]),
        );
        let Ok(state) = state else {
            self.indices.remove(&index);
            return None;
        };
        peer.handshake = Some(state);
        peer.cookie.add_macs(now, &mut buf);
        self.stats.tx_handshake_initiation += 1;
        Some(buf)
    }

    /// When [`Device::handle_timeout`] next needs to run, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .iter()
            .flatten()
            .filter_map(|p| p.timers.next_deadline())
            .min()
    }

    /// Runs every timer due at `now`: handshake retransmission, keepalives, rekeying,
    /// key erasure.
    pub fn handle_timeout(&mut self, now: Instant, io: &mut impl Io) {
        for slot in 0..self.peers.len() {
            let id = PeerId(slot as u32);
            while let Some(ev) = self.peer_mut(id).and_then(|p| p.timers.pop_expired(now)) {
                self.on_timer(id, ev, now, io);
            }
        }
        self.ratelimiter.gc(now);
    }

    fn on_timer(&mut self, id: PeerId, ev: TimerEvent, now: Instant, io: &mut impl Io) {
        match ev {
            TimerEvent::RetransmitHandshake => {
                let Some(peer) = self.peer_mut(id) else {
                    return;
                };
                if peer.timers.handshake_attempts > MAX_TIMER_HANDSHAKES {
                    peer.timers.on_handshake_gave_up(now);
                    let dropped = peer.queue.len() as u64;
                    peer.queue.clear();
                    self.stats.tx_queue_dropped += dropped;
                } else {
                    peer.timers.handshake_attempts += 1;
                    peer.clear_source();
                    self.send_handshake_initiation(id, now, true, io);
                }
            }
            TimerEvent::SendKeepalive => {
                self.send_keepalive(id, now, io);
                if let Some(p) = self.peer_mut(id) {
                    p.timers.rearm_keepalive_if_needed(now);
                }
            }
            TimerEvent::NewHandshake => {
                if let Some(p) = self.peer_mut(id) {
                    p.clear_source();
                }
                self.send_handshake_initiation(id, now, false, io);
            }
            TimerEvent::ZeroKeyMaterial => self.zero_key_material(id),
            TimerEvent::PersistentKeepalive => {
                if self
                    .peer_by_id(id)
                    .is_some_and(|p| p.persistent_keepalive > 0)
                {
                    self.send_keepalive(id, now, io);
                }
            }
        }
    }

    fn zero_key_material(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let freed: Vec<u32> = peer
            .sessions
            .indices()
            .chain(peer.handshake.as_ref().map(|h| h.local_index))
            .collect();
        peer.sessions = Default::default();
        peer.handshake = None;
        for i in freed {
            self.indices.remove(&i);
        }
    }

    /// Installs a new session for `id`: as `current` for the initiator (the old
    /// current becomes `previous`), as `next` for the responder until confirmed.
    pub(super) fn install_session(&mut self, id: PeerId, session: Session) {
        let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let s = &mut peer.sessions;
        let freed = if session.is_initiator {
            let old_prev = s.previous.take();
            if s.next.is_some() {
                // An unconfirmed responder session loses to our own new one.
                s.previous = s.next.take();
                let stale = s.current.take();
                s.current = Some(session);
                [old_prev, stale]
            } else {
                s.previous = s.current.take();
                s.current = Some(session);
                [old_prev, None]
            }
        } else {
            [s.next.replace(session), s.previous.take()]
        };
        for old in freed.into_iter().flatten() {
            self.indices.remove(&old.local_index);
        }
    }
}
