//! The receive side of [`Device`]: datagrams from the UDP socket to handshakes,
//! cookie replies and decrypted IP packets for the TUN device.

use super::send::transmit;
use super::*;
use crate::constants::HANDSHAKE_INITIATION_RATE;

/// Source address and true length of a decrypted IP packet, if it is one.
fn inner_source(packet: &[u8]) -> Option<(IpAddr, usize)> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            let src: [u8; 4] = packet[12..16].try_into().ok()?;
            (20..=packet.len())
                .contains(&total)
                .then_some((IpAddr::V4(Ipv4Addr::from(src)), total))
        }
        6 if packet.len() >= 40 => {
            let total = 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            let src: [u8; 16] = packet[8..24].try_into().ok()?;
            (total <= packet.len()).then_some((IpAddr::V6(Ipv6Addr::from(src)), total))
        }
        _ => None,
    }
}

impl Device {
    /// Handles one datagram received from `from` on our address `local`. `buf` is
    /// decrypted in place. Never panics, whatever `buf` holds; every refusal is counted.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local: Option<LocalAddr>,
        buf: &mut [u8],
        io: &mut impl Io,
    ) {
        let endpoint = Endpoint { addr: from, local };
        match wire::message_type(buf) {
            Err(_) => self.stats.rx_malformed += 1,
            Ok(MessageType::Initiation) | Ok(MessageType::Response) => {
                self.handle_handshake(now, endpoint, buf, io)
            }
            Ok(MessageType::CookieReply) => self.handle_cookie_reply(now, buf),
            Ok(MessageType::Data) => self.handle_data(now, endpoint, buf, io),
        }
    }

    /// MAC1, and under load MAC2 and the per-source rate limit. Returns false when
    /// the message must go no further (a cookie reply may have been sent).
    fn admit_handshake(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &[u8],
        io: &mut impl Io,
    ) -> bool {
        let Some(checker) = self.checker.as_mut() else {
            self.stats.rx_no_private_key += 1;
            return false;
        };
        if !checker.check_mac1(buf) {
            self.stats.rx_bad_mac1 += 1;
            return false;
        }
        if !self.load.record(now) {
            return true;
        }
        if !checker.check_mac2(now, buf, from) {
            // Bytes 4..8 are the sender index in both initiations and responses.
            let sender = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let mut reply = [0u8; wire::COOKIE_REPLY_LEN];
            checker.create_reply(
                now,
                &mut self.rng,
                buf,
                sender,
                from,
                &mut CookieReply::new_unchecked(&mut reply[..]),
            );
            let ep = Endpoint {
                addr: from,
                local: None,
            };
            if io.send_udp(&ep, &reply) == SendOutcome::Failed {
                self.stats.tx_send_failed += 1;
            }
            self.stats.tx_cookie_reply += 1;
            return false;
        }
        if !self.ratelimiter.allow(now, from.ip()) {
            self.stats.rx_rate_limited += 1;
            return false;
        }
        true
    }

    fn handle_handshake(&mut self, now: Instant, from: Endpoint, buf: &[u8], io: &mut impl Io) {
        if !self.admit_handshake(now, from.addr, buf, io) {
            return;
        }
        if buf.len() == wire::INITIATION_LEN {
            self.handle_initiation(now, from, buf, io);
        } else {
            self.handle_response(now, from, buf, io);
        }
    }

    fn handle_initiation(&mut self, now: Instant, from: Endpoint, buf: &[u8], io: &mut impl Io) {
        let Ok(msg) = Initiation::new_checked(buf) else {
            self.stats.rx_malformed += 1;
            return;
        };
        let Some(identity) = self.identity.as_ref() else {
            return;
        };
        let by_key = &self.by_key;
        let peers = &self.peers;
        let admit = self.admission.is_some_and(|max| self.by_key.len() < max);
        let mut unknown = false;
        let consumed = handshake::consume_initiation(identity, &msg, |k| match by_key.get(k) {
            Some(id) => peers.get(id.0 as usize)?.as_ref()?.static_static,
            None if admit => {
                unknown = true;
                identity.static_static(k)
            }
            None => None,
        });
        let Ok(consumed) = consumed else {
            self.stats.rx_handshake_invalid += 1;
            return;
        };
        if unknown {
            // Authenticated: the timestamp opened under the static-static secret.
            if self.add_peer(consumed.remote_static).is_none() {
                return;
            }
            self.admitted.push(consumed.remote_static);
            self.stats.admitted += 1;
        }
        let Some(&id) = self.by_key.get(&consumed.remote_static) else {
            return;
        };
        let Some(peer) = self.peers[id.0 as usize].as_mut() else {
            return;
        };
        let flood = peer
            .last_initiation_consumed
            .is_some_and(|t| now.saturating_duration_since(t) <= HANDSHAKE_INITIATION_RATE);
        if consumed.timestamp <= peer.latest_timestamp || flood {
            self.stats.rx_handshake_replay += 1;
            return;
        }
        peer.latest_timestamp = consumed.timestamp;
        peer.last_initiation_consumed = Some(now);
        peer.handshake_source = Some((from.addr, now));
        self.stats.rx_handshake += 1;
        peer.roam(from);
        peer.rx_bytes += buf.len() as u64;
        peer.timers
            .on_authenticated_packet_traversal(now, peer.persistent_keepalive);
        peer.timers.on_authenticated_packet_received();
        let psk = peer.preshared_key.clone();

        let mut ephemeral = [0u8; 32];
        self.rng.fill_bytes(&mut ephemeral);
        let index = self.new_index(id, IndexKind::Session);
        io.index_added(index);
        let mut out = [0u8; wire::RESPONSE_LEN];
        let keys = handshake::create_response(
            &consumed,
            &psk,
            index,
            ephemeral,
            &mut Response::new_unchecked(&mut out[..]),
        );
        let Ok(keys) = keys else {
            self.indices.remove(&index);
            self.stats.rx_handshake_invalid += 1;
            return;
        };
        self.install_session(id, Session::new(&keys, now));
        let Some(peer) = self.peers[id.0 as usize].as_mut() else {
            return;
        };
        peer.cookie.add_macs(now, &mut out);
        self.stats.tx_handshake_response += 1;
        if transmit(peer, &mut self.stats, io, &out) {
            peer.timers.on_session_derived(now);
            peer.timers
                .on_authenticated_packet_traversal(now, peer.persistent_keepalive);
            peer.timers.on_authenticated_packet_sent();
        }
    }

    fn handle_response(&mut self, now: Instant, from: Endpoint, buf: &[u8], io: &mut impl Io) {
        let Ok(msg) = Response::new_checked(buf) else {
            self.stats.rx_malformed += 1;
            return;
        };
        let Some(&(id, IndexKind::Handshake)) = self.indices.get(&msg.receiver()) else {
            self.stats.rx_unknown_index += 1;
            return;
        };
        let (Some(identity), Some(peer)) =
            (self.identity.as_ref(), self.peers[id.0 as usize].as_mut())
        else {
            return;
        };
        let Some(state) = peer
            .handshake
            .as_ref()
            .filter(|h| h.local_index == msg.receiver())
        else {
            self.stats.rx_unknown_index += 1;
            return;
        };
        let Ok(keys) = handshake::consume_response(identity, &peer.preshared_key, state, &msg)
        else {
            self.stats.rx_handshake_invalid += 1;
            return;
        };
        // The handshake's index now names the session.
        peer.handshake = None;
        self.indices
            .insert(keys.local_index, (id, IndexKind::Session));
        self.install_session(id, Session::new(&keys, now));
        let Some(peer) = self.peers[id.0 as usize].as_mut() else {
            return;
        };
        peer.handshake_source = Some((from.addr, now));
        self.stats.rx_handshake += 1;
        peer.roam(from);
        peer.rx_bytes += buf.len() as u64;
        peer.last_handshake = Some(now);
        peer.timers
            .on_authenticated_packet_traversal(now, peer.persistent_keepalive);
        peer.timers.on_authenticated_packet_received();
        peer.timers.on_handshake_complete();
        peer.timers.on_session_derived(now);
        self.stats.handshakes_completed += 1;
        // Confirm the session to the responder: staged packets, or a keepalive.
        self.send_keepalive(id, now, io);
    }

    fn handle_cookie_reply(&mut self, now: Instant, buf: &[u8]) {
        let Ok(msg) = CookieReply::new_checked(buf) else {
            self.stats.rx_malformed += 1;
            return;
        };
        let Some(&(id, _)) = self.indices.get(&msg.receiver()) else {
            self.stats.rx_unknown_index += 1;
            return;
        };
        let Some(peer) = self.peer_mut(id) else {
            return;
        };
        // A cookie reply is not authenticated traffic from the peer: no roaming, no timers.
        match peer.cookie.consume_reply(now, &msg) {
            Ok(()) => self.stats.rx_cookie_reply += 1,
            Err(_) => self.stats.rx_cookie_invalid += 1,
        }
    }

    fn handle_data(&mut self, now: Instant, from: Endpoint, buf: &mut [u8], io: &mut impl Io) {
        let Some(ticket) = self.begin_data(now, buf) else {
            return;
        };
        let opened = crate::session::open_with(ticket.key(), buf);
        self.finish_data(now, from.addr, from.local, buf, ticket, opened, io);
    }

    /// First step of receiving a data message in a batch: finds its session and
    /// checks the replay window. `None` when the message goes no further (counted).
    /// The message is then opened with [`DataTicket::key`] — on any thread, in
    /// parallel with others — and handed to [`Device::finish_data`] in arrival order.
    pub fn begin_data(&mut self, now: Instant, buf: &[u8]) -> Option<DataTicket> {
        let Ok((receiver, counter)) = Data::new_checked(buf).map(|d| (d.receiver(), d.counter()))
        else {
            self.stats.rx_malformed += 1;
            return None;
        };
        let Some(&(id, IndexKind::Session)) = self.indices.get(&receiver) else {
            self.stats.rx_unknown_index += 1;
            return None;
        };
        let Some(session) = self.session_by_index(id, receiver) else {
            self.stats.rx_unknown_index += 1;
            return None;
        };
        if !session.can_receive(now) {
            self.stats.rx_session_expired += 1;
            return None;
        }
        if !session.replay_would_accept(counter) {
            self.stats.rx_replay += 1;
            return None;
        }
        Some(DataTicket {
            key: Arc::clone(session.recv_key()),
            peer: id,
            receiver,
            counter,
        })
    }

    fn session_by_index(&self, id: PeerId, receiver: u32) -> Option<&Session> {
        let s = &self.peer_by_id(id)?.sessions;
        [&s.current, &s.previous, &s.next]
            .into_iter()
            .flatten()
            .find(|x| x.local_index == receiver)
    }

    /// Last step of receiving a data message: `opened` is the result of opening
    /// `buf` with the ticket's key. Updates the replay window, roams, runs the timers,
    /// checks the inner source against the peer's AllowedIPs and writes the packet to
    /// the TUN device.
    #[allow(clippy::too_many_arguments)]
    pub fn finish_data(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local: Option<LocalAddr>,
        buf: &mut [u8],
        ticket: DataTicket,
        opened: Result<usize, SessionError>,
        io: &mut impl Io,
    ) {
        let Ok(len) = opened else {
            self.stats.rx_decrypt_failed += 1;
            return;
        };
        let id = ticket.peer;
        let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            self.stats.rx_unknown_index += 1;
            return;
        };
        let s = &mut peer.sessions;
        let receiver = ticket.receiver;
        let (session, is_next) = match (&mut s.current, &mut s.previous, &mut s.next) {
            (Some(c), _, _) if c.local_index == receiver => (c, false),
            (_, Some(p), _) if p.local_index == receiver => (p, false),
            (_, _, Some(n)) if n.local_index == receiver => (n, true),
            _ => {
                // Replaced while the batch was being opened.
                self.stats.rx_unknown_index += 1;
                return;
            }
        };
        if !session.accept_counter(ticket.counter) {
            self.stats.rx_replay += 1;
            return;
        }
        peer.roam(Endpoint { addr: from, local });
        peer.rx_bytes += buf.len() as u64;
        peer.timers
            .on_authenticated_packet_traversal(now, peer.persistent_keepalive);
        peer.timers.on_authenticated_packet_received();
        if is_next {
            let s = &mut peer.sessions;
            let old = s.previous.take();
            s.previous = s.current.take();
            s.current = s.next.take();
            peer.last_handshake = Some(now);
            peer.timers.on_handshake_complete();
            self.stats.handshakes_completed += 1;
            if let Some(old) = old {
                self.indices.remove(&old.local_index);
            }
            self.flush_or_handshake(id, now, io);
        }
        if self
            .peer_by_id(id)
            .is_some_and(|p| p.wants_rekey_on_receive(now))
        {
            if let Some(p) = self.peer_mut(id) {
                p.timers.sent_last_minute_handshake = true;
            }
            self.send_handshake_initiation(id, now, false, io);
        }
        let plain = &buf[wire::DATA_HEADER_LEN..wire::DATA_HEADER_LEN + len];
        if plain.is_empty() {
            self.stats.rx_keepalive += 1;
            return;
        }
        let Some((src, inner_len)) = inner_source(plain) else {
            self.stats.rx_inner_malformed += 1;
            return;
        };
        if self.allowed_ips.lookup_cached(src) != Some(id) {
            self.stats.rx_allowed_ips_violation += 1;
            return;
        }
        if let Some(p) = self.peer_mut(id) {
            p.timers.on_data_received(now);
        }
        io.write_tun(&plain[..inner_len]);
    }
}

/// A data message admitted by [`Device::begin_data`]: the key that opens it and the
/// session its result goes back to.
pub struct DataTicket {
    key: Arc<AeadKey>,
    peer: PeerId,
    receiver: u32,
    counter: u64,
}

impl DataTicket {
    /// The key that opens the message ([`crate::session::open_with`]).
    pub fn key(&self) -> &Arc<AeadKey> {
        &self.key
    }
}
