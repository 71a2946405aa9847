//! The NAT-traversal parts of the device on the two-device simulation: probes
//! (handshake initiations to an address other than the endpoint, with a TTL),
//! pinned endpoints, and the recorded source of authenticated handshake messages.

use super::*;
use crate::constants::HANDSHAKE_INITIATION_RATE;

/// Where B answers from when A probes it directly (not B's configured endpoint).
const DIRECT: &str = "198.51.100.2:40000";
/// A relay's address.
const RELAY: &str = "203.0.113.5:3478";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn endpoint(d: &Device, k: &PublicKey) -> SocketAddr {
    d.peer(k).unwrap().endpoint.unwrap().addr
}

/// A completed handshake (A initiated), and data both ways.
fn established() -> Sim {
    let mut s = Sim::new("", "");
    s.a_to_b(100);
    s.pump();
    s.b_to_a(100);
    s.pump();
    assert_eq!(s.a.stats.handshakes_completed, 1);
    s
}

/// Delivers what A's outbox holds to B as if A sent it from `from`.
fn a_to_b_from(s: &mut Sim, from: SocketAddr) {
    while let Some((_, mut d)) = s.wa.sent.pop_front() {
        s.b.handle_datagram(s.now, from, None, &mut d, &mut s.wb);
    }
}

#[test]
fn a_pinned_endpoint_does_not_roam_and_unpinned_it_does() {
    let mut s = established();
    let roamed = addr("192.0.2.99:6000");
    assert!(s.b.pin_endpoint(&a_pub(), Some(addr(A_ADDR))));
    // Authenticated data from another address: delivered, but the endpoint stays.
    let p = s.a_to_b(120);
    a_to_b_from(&mut s, roamed);
    assert_eq!(s.wb.tun.last(), Some(&p), "the packet itself is delivered");
    assert_eq!(endpoint(&s.b, &a_pub()), addr(A_ADDR));
    s.b_to_a(80);
    assert_eq!(
        s.wb.sent.back().unwrap().0.addr,
        addr(A_ADDR),
        "B answers X"
    );
    // A new handshake initiated from elsewhere does not move it either.
    s.advance_offline(REKEY_TIMEOUT);
    s.wb.sent.clear();
    assert!(s.a.initiate_handshake(s.now, &b_pub(), &mut s.wa));
    a_to_b_from(&mut s, roamed);
    assert_eq!(endpoint(&s.b, &a_pub()), addr(A_ADDR));
    let (to, response) = s.wb.sent.pop_front().unwrap();
    assert_eq!(wire::message_type(&response), Ok(MessageType::Response));
    assert_eq!(
        to.addr,
        addr(A_ADDR),
        "the response goes to the pinned address"
    );
    // Unpinned, the next authenticated packet from elsewhere moves it.
    assert!(s.b.pin_endpoint(&a_pub(), None));
    assert_eq!(
        endpoint(&s.b, &a_pub()),
        addr(A_ADDR),
        "unpinning moves nothing"
    );
    s.wb.sent.clear();
    s.a.handle_datagram(s.now, addr(B_ADDR), None, &mut response.clone(), &mut s.wa);
    a_to_b_from(&mut s, roamed);
    assert_eq!(endpoint(&s.b, &a_pub()), roamed);
    assert!(
        !s.b.pin_endpoint(&key(9).public_key(), None),
        "unknown peer"
    );
}

#[test]
fn pinning_sets_the_endpoint_now_and_configuration_replaces_the_pin() {
    let mut s = established();
    assert!(s.a.pin_endpoint(&b_pub(), Some(addr(RELAY))));
    assert_eq!(endpoint(&s.a, &b_pub()), addr(RELAY));
    s.a_to_b(60);
    assert_eq!(s.wa.sent.back().unwrap().0.addr, addr(RELAY));
    // Data from B's own address while pinned to the relay: the endpoint stays.
    s.b_to_a(60);
    s.pump();
    assert_eq!(endpoint(&s.a, &b_pub()), addr(RELAY));
    // An endpoint set by configuration is pinned in turn.
    let cfg = format!(
        "set=1\npublic_key={}\nendpoint={DIRECT}\n\n",
        b_pub().to_hex()
    );
    set(&mut s.a, s.now, &cfg, &mut s.wa);
    assert_eq!(endpoint(&s.a, &b_pub()), addr(DIRECT));
    s.b_to_a(60);
    s.pump();
    assert_eq!(endpoint(&s.a, &b_pub()), addr(DIRECT));
}

#[test]
fn a_probe_leaves_the_endpoint_and_its_response_completes_a_handshake() {
    let mut s = Sim::new("", "");
    s.wa.sent.clear();
    assert_eq!(
        s.a.probe(s.now, &b_pub(), addr(DIRECT), 1, &mut s.wa),
        Ok(())
    );
    assert!(s.wa.sent.is_empty(), "nothing goes to the endpoint");
    let (to, mut probe, ttl) = s.wa.probes.pop_front().unwrap();
    assert_eq!((to, ttl), (addr(DIRECT), 1));
    assert_eq!(probe.len(), wire::INITIATION_LEN);
    assert_eq!(wire::message_type(&probe), Ok(MessageType::Initiation));
    assert_eq!(endpoint(&s.a, &b_pub()), addr(B_ADDR), "endpoint unchanged");
    assert_eq!(s.a.stats.tx_probe, 1);
    assert!(s.a.poll_timeout().is_none(), "no retransmission armed");
    // A well-formed initiation: B (which has no endpoint for A) accepts it and
    // records where it came from.
    let a_public = addr("192.0.2.77:51820");
    s.b.handle_datagram(s.now, a_public, None, &mut probe, &mut s.wb);
    assert_eq!(s.b.stats.tx_handshake_response, 1);
    let bs = s.b.peer_stats();
    assert_eq!(
        bs[0].handshake_source,
        Some(HandshakeSource {
            addr: a_public,
            at: Duration::from_secs(1_700_000_000)
        })
    );
    // The response comes back from the probed address: the handshake completes.
    let (to_a, mut response) = s.wb.sent.pop_front().unwrap();
    assert_eq!(to_a.addr, a_public);
    s.now += Duration::from_millis(30);
    s.a.handle_datagram(s.now, addr(DIRECT), None, &mut response, &mut s.wa);
    assert_eq!(s.a.stats.handshakes_completed, 1);
    let stats = &s.a.peer_stats()[0];
    assert!(stats.last_handshake.is_some());
    assert_eq!(
        stats.handshake_source,
        Some(HandshakeSource {
            addr: addr(DIRECT),
            at: Duration::from_millis(1_700_000_000_030)
        })
    );
    // Not pinned: the answer moved the endpoint, and data flows there.
    assert_eq!(endpoint(&s.a, &b_pub()), addr(DIRECT));
    let p = s.a_to_b(100);
    let (to, mut d) = s.wa.sent.pop_back().unwrap();
    assert_eq!(to.addr, addr(DIRECT));
    s.b.handle_datagram(s.now, a_public, None, &mut d, &mut s.wb);
    assert_eq!(s.wb.tun.last(), Some(&p));
}

#[test]
fn a_probe_answered_while_pinned_to_a_relay_keeps_the_relay() {
    let mut s = Sim::new("", "");
    assert!(s.a.pin_endpoint(&b_pub(), Some(addr(RELAY))));
    s.a.probe(s.now, &b_pub(), addr(DIRECT), 0, &mut s.wa)
        .unwrap();
    let (_, mut probe, ttl) = s.wa.probes.pop_front().unwrap();
    assert_eq!(ttl, 0);
    s.b.handle_datagram(s.now, addr(A_ADDR), None, &mut probe, &mut s.wb);
    let (_, mut response) = s.wb.sent.pop_front().unwrap();
    s.a.handle_datagram(s.now, addr(DIRECT), None, &mut response, &mut s.wa);
    assert_eq!(s.a.stats.handshakes_completed, 1);
    assert_eq!(endpoint(&s.a, &b_pub()), addr(RELAY), "still the relay");
    assert_eq!(
        s.a.peer_stats()[0].handshake_source.map(|h| h.addr),
        Some(addr(DIRECT)),
        "but the direct answer is visible"
    );
    // The confirming keepalive went to the relay.
    assert_eq!(s.wa.sent.back().unwrap().0.addr, addr(RELAY));
}

#[test]
fn probes_are_not_rate_limited_and_the_latest_one_wins() {
    let mut s = Sim::new("", "");
    // Each a little later: the receiver takes an initiation only with a newer
    // timestamp than the last it accepted (whitened to about 16 ms).
    for ttl in [1, 2, 64] {
        s.a.probe(s.now, &b_pub(), addr(DIRECT), ttl, &mut s.wa)
            .unwrap();
        s.now += Duration::from_millis(30);
    }
    assert_eq!(s.wa.probes.len(), 3);
    let (_, mut first, _) = s.wa.probes.pop_front().unwrap();
    let (_, mut last, _) = s.wa.probes.pop_back().unwrap();
    // B answers the first; A has replaced that handshake: unknown index.
    s.b.handle_datagram(s.now, addr(A_ADDR), None, &mut first, &mut s.wb);
    let (_, mut stale) = s.wb.sent.pop_front().unwrap();
    s.a.handle_datagram(s.now, addr(DIRECT), None, &mut stale, &mut s.wa);
    assert_eq!(s.a.stats.handshakes_completed, 0);
    assert_eq!(s.a.stats.rx_unknown_index, 1);
    // The latest one completes (B accepts it past the initiation flood limit).
    s.now += HANDSHAKE_INITIATION_RATE + Duration::from_millis(1);
    s.b.handle_datagram(s.now, addr(A_ADDR), None, &mut last, &mut s.wb);
    let (_, mut fresh) = s.wb.sent.pop_front().unwrap();
    s.a.handle_datagram(s.now, addr(DIRECT), None, &mut fresh, &mut s.wa);
    assert_eq!(s.a.stats.handshakes_completed, 1);
}

#[test]
fn probes_of_one_round_share_one_initiation_so_any_answer_completes() {
    let mut s = Sim::new("", "");
    // One round: the same initiation to every candidate (the unreachable published
    // address first, the mapped one second).
    for to in ["192.168.20.2:51820", DIRECT] {
        s.a.probe(s.now, &b_pub(), addr(to), 0, &mut s.wa).unwrap();
    }
    let (_, first, _) = s.wa.probes.pop_front().unwrap();
    let (_, mut second, _) = s.wa.probes.pop_front().unwrap();
    assert_eq!(first, second, "one round, one initiation");
    assert_eq!(s.a.stats.tx_probe, 2);
    // The answer to the second address finds the handshake state.
    s.b.handle_datagram(s.now, addr(A_ADDR), None, &mut second, &mut s.wb);
    let (_, mut response) = s.wb.sent.pop_front().unwrap();
    s.a.handle_datagram(s.now, addr(DIRECT), None, &mut response, &mut s.wa);
    assert_eq!(s.a.stats.handshakes_completed, 1);
    assert_eq!(s.a.stats.rx_unknown_index, 0);
    // The next round (later than PROBE_ROUND) makes a fresh one.
    s.now += crate::constants::PROBE_ROUND;
    s.a.probe(s.now, &b_pub(), addr(DIRECT), 0, &mut s.wa)
        .unwrap();
    let (_, next, _) = s.wa.probes.pop_front().unwrap();
    assert_ne!(next, first);
}

#[test]
fn moved_to_a_relay_without_a_session_the_handshake_starts_there_at_once() {
    let mut s = Sim::new("", "");
    // A queued packet and an initiation to the configured endpoint that nobody
    // answers; then a probe (no retransmission armed).
    s.a_to_b(100);
    s.wa.sent.clear();
    s.a.probe(s.now, &b_pub(), addr(DIRECT), 0, &mut s.wa)
        .unwrap();
    let sent = s.a.stats.tx_handshake_initiation;
    s.now += Duration::from_millis(500);
    // Pinned to the relay: a fresh initiation goes there now (the 5 s limit since
    // the last one does not hold it back).
    assert!(s.a.pin_endpoint(&b_pub(), Some(addr(RELAY))));
    assert!(s.a.handshake_at_new_endpoint(s.now, &b_pub(), &mut s.wa));
    assert_eq!(s.a.stats.tx_handshake_initiation, sent + 1);
    let (to, _) = s.wa.sent.pop_back().unwrap();
    assert_eq!(to.addr, addr(RELAY));
    // With a session that can send, nothing is started.
    let mut s = established();
    assert!(s.a.pin_endpoint(&b_pub(), Some(addr(RELAY))));
    assert!(!s.a.handshake_at_new_endpoint(s.now, &b_pub(), &mut s.wa));
}

#[test]
fn a_held_peer_sends_only_probes_answers_initiations_and_a_pin_releases_it() {
    let mut s = Sim::new("", "");
    s.wa.sent.clear();
    assert!(s.a.hold_initiations(&b_pub(), true));
    assert!(
        !s.a.hold_initiations(&PublicKey([9; 32]), true),
        "unknown peer"
    );
    // Traffic for B would start a handshake: held, counted, nothing sent.
    s.a_to_b(100);
    assert!(s.wa.sent.is_empty(), "no initiation leaves a held peer");
    assert_eq!(s.a.stats.tx_handshake_held, 1);
    assert_eq!(s.a.stats.tx_handshake_initiation, 0);
    // Its retries are paced as if sent (REKEY_TIMEOUT), and held too.
    s.advance_offline(REKEY_TIMEOUT + Duration::from_millis(400));
    assert!(s.wa.sent.is_empty());
    assert_eq!(s.a.stats.tx_handshake_held, 2);
    // A probe still goes out.
    assert_eq!(
        s.a.probe(s.now, &b_pub(), addr(DIRECT), 0, &mut s.wa),
        Ok(())
    );
    assert_eq!(s.wa.probes.len(), 1);
    // B's own initiation is answered by the held A: a session comes up.
    s.wb.sent.clear();
    assert!(s.b.pin_endpoint(&a_pub(), Some(addr(A_ADDR))));
    assert!(s.b.initiate_handshake(s.now, &a_pub(), &mut s.wb));
    let (_, mut init) = s.wb.sent.pop_front().unwrap();
    s.a.handle_datagram(s.now, addr(B_ADDR), None, &mut init, &mut s.wa);
    assert_eq!(s.a.stats.tx_handshake_response, 1);
    // A pin to an address releases the hold: A's next initiation goes out (its
    // retry timer's, or one asked for).
    assert!(s.a.pin_endpoint(&b_pub(), Some(addr(DIRECT))));
    s.wa.sent.clear();
    let (sent, held) = (
        s.a.stats.tx_handshake_initiation,
        s.a.stats.tx_handshake_held,
    );
    s.advance_offline(REKEY_TIMEOUT);
    s.a.initiate_handshake(s.now, &b_pub(), &mut s.wa);
    assert!(s.a.stats.tx_handshake_initiation > sent);
    assert_eq!(s.a.stats.tx_handshake_held, held);
    assert!(s
        .wa
        .sent
        .iter()
        .any(|(to, d)| to.addr == addr(DIRECT)
            && wire::message_type(d) == Ok(MessageType::Initiation)));
}

#[test]
fn a_probe_that_cannot_be_made_or_sent_is_an_error() {
    let mut s = Sim::new("", "");
    assert_eq!(
        s.a.probe(s.now, &key(9).public_key(), addr(DIRECT), 1, &mut s.wa),
        Err(ProbeError::UnknownPeer)
    );
    s.wa.no_ttl = true;
    assert_eq!(
        s.a.probe(s.now, &b_pub(), addr(DIRECT), 1, &mut s.wa),
        Err(ProbeError::SendFailed)
    );
    assert_eq!(s.a.stats.tx_send_failed, 1);
    let mut keyless = Device::new([3; 32], (s.now, Duration::ZERO), 1420);
    keyless.add_peer(b_pub());
    assert_eq!(
        keyless.probe(s.now, &b_pub(), addr(DIRECT), 1, &mut Wire::default()),
        Err(ProbeError::NoHandshake)
    );
}

#[test]
fn the_handshake_source_follows_initiations_and_responses_not_data() {
    let mut s = established();
    let b_stats = s.b.peer_stats();
    assert_eq!(
        b_stats[0].handshake_source.map(|h| h.addr),
        Some(addr(A_ADDR)),
        "B: from A's initiation"
    );
    assert_eq!(
        s.a.peer_stats()[0].handshake_source.map(|h| h.addr),
        Some(addr(B_ADDR)),
        "A: from B's response"
    );
    // Data from elsewhere roams but is not a handshake message.
    s.a_to_b(50);
    a_to_b_from(&mut s, addr("192.0.2.50:7"));
    assert_eq!(endpoint(&s.b, &a_pub()), addr("192.0.2.50:7"));
    assert_eq!(
        s.b.peer_stats()[0].handshake_source.map(|h| h.addr),
        Some(addr(A_ADDR))
    );
}
