//! Deterministic simulation of two devices over an in-memory network: virtual clock,
//! seeded RNGs, every datagram delivered (or dropped, or replayed) by the test.

use super::*;
use crate::uapi::{parse_request, Request};
use std::collections::VecDeque;

mod nat;

#[derive(Default)]
struct Wire {
    sent: VecDeque<(Endpoint, Vec<u8>)>,
    /// Datagrams sent with [`Io::send_udp_ttl`]: destination, bytes, TTL.
    probes: VecDeque<(SocketAddr, Vec<u8>, u8)>,
    /// [`Io::send_udp_ttl`] fails (a sink that cannot set the TTL).
    no_ttl: bool,
    tun: Vec<Vec<u8>>,
    /// Indices announced through [`Io::index_added`].
    announced: Vec<u32>,
}

impl Io for Wire {
    fn send_udp(&mut self, to: &Endpoint, datagram: &[u8]) -> SendOutcome {
        // Every initiation and response names a sender index that was announced
        // before the message left (an XDP filter must know it before the answer).
        if matches!(datagram.first(), Some(1 | 2)) && datagram.len() >= 8 {
            let sender = u32::from_le_bytes(datagram[4..8].try_into().unwrap());
            assert!(
                self.announced.contains(&sender),
                "sender index {sender:#x} sent before it was announced"
            );
        }
        self.sent.push_back((*to, datagram.to_vec()));
        SendOutcome::Sent
    }
    fn send_udp_ttl(&mut self, to: SocketAddr, datagram: &[u8], ttl: u8) -> SendOutcome {
        if self.no_ttl {
            return SendOutcome::Failed;
        }
        let sender = u32::from_le_bytes(datagram[4..8].try_into().unwrap());
        assert!(
            self.announced.contains(&sender),
            "probe index announced first"
        );
        self.probes.push_back((to, datagram.to_vec(), ttl));
        SendOutcome::Sent
    }
    fn write_tun(&mut self, packet: &[u8]) {
        self.tun.push(packet.to_vec());
    }
    fn index_added(&mut self, index: u32) {
        self.announced.push(index);
    }
}

fn key(b: u8) -> PrivateKey {
    PrivateKey::from_bytes([b; 32])
}

fn set(dev: &mut Device, now: Instant, text: &str, io: &mut Wire) {
    let Ok(Request::Set(req)) = parse_request(text) else {
        panic!("bad test config {text}")
    };
    dev.apply(now, &req, io);
}

/// An IPv4 UDP-ish packet from `src` to `dst` with `len` total bytes.
fn ipv4(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    for (i, b) in p[20..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

const A_ADDR: &str = "192.0.2.1:51820";
const B_ADDR: &str = "192.0.2.2:51820";

struct Sim {
    now: Instant,
    a: Device,
    b: Device,
    wa: Wire,
    wb: Wire,
}

impl Sim {
    fn new(psk_a: &str, psk_b: &str) -> Sim {
        let now = crate::test_now();
        let epoch = (now, Duration::from_secs(1_700_000_000));
        let mut s = Sim {
            now,
            a: Device::new([1; 32], epoch, 1420),
            b: Device::new([2; 32], epoch, 1420),
            wa: Wire::default(),
            wb: Wire::default(),
        };
        let (ka, kb) = (key(1), key(2));
        let cfg_a = format!(
            "set=1\nprivate_key={}\npublic_key={}\n{psk_a}endpoint={B_ADDR}\nallowed_ip=10.0.0.2/32\nallowed_ip=fd00::2/128\n\n",
            ka.to_hex(),
            kb.public_key().to_hex()
        );
        let cfg_b = format!(
            "set=1\nprivate_key={}\npublic_key={}\n{psk_b}allowed_ip=10.0.0.1/32\n\n",
            kb.to_hex(),
            ka.public_key().to_hex()
        );
        set(&mut s.a, now, &cfg_a, &mut s.wa);
        set(&mut s.b, now, &cfg_b, &mut s.wb);
        s
    }

    /// Delivers everything both sides sent, until quiet. Returns datagrams delivered.
    fn pump(&mut self) -> usize {
        let mut n = 0;
        for _ in 0..100 {
            let mut moved = false;
            while let Some((_, mut d)) = self.wa.sent.pop_front() {
                self.b.handle_datagram(
                    self.now,
                    A_ADDR.parse().unwrap(),
                    None,
                    &mut d,
                    &mut self.wb,
                );
                moved = true;
                n += 1;
            }
            while let Some((_, mut d)) = self.wb.sent.pop_front() {
                self.a.handle_datagram(
                    self.now,
                    B_ADDR.parse().unwrap(),
                    None,
                    &mut d,
                    &mut self.wa,
                );
                moved = true;
                n += 1;
            }
            if !moved {
                break;
            }
        }
        n
    }

    /// Runs both devices' timers in 100 ms steps, delivering what they send.
    fn advance(&mut self, d: Duration) {
        self.advance_with(d, true);
    }

    /// Like `advance`, but leaves what is sent in the outboxes (a network that is down).
    fn advance_offline(&mut self, d: Duration) {
        self.advance_with(d, false);
    }

    fn advance_with(&mut self, d: Duration, deliver: bool) {
        let end = self.now + d;
        while self.now < end {
            self.now = (self.now + Duration::from_millis(100)).min(end);
            self.a.handle_timeout(self.now, &mut self.wa);
            self.b.handle_timeout(self.now, &mut self.wb);
            if deliver {
                self.pump();
            }
        }
    }

    fn a_to_b(&mut self, len: usize) -> Vec<u8> {
        let p = ipv4([10, 0, 0, 1], [10, 0, 0, 2], len);
        self.a.handle_tun_packet(self.now, &p, &mut self.wa);
        p
    }

    fn b_to_a(&mut self, len: usize) -> Vec<u8> {
        let p = ipv4([10, 0, 0, 2], [10, 0, 0, 1], len);
        self.b.handle_tun_packet(self.now, &p, &mut self.wb);
        p
    }
}

fn b_pub() -> PublicKey {
    key(2).public_key()
}
fn a_pub() -> PublicKey {
    key(1).public_key()
}

#[test]
fn handshake_then_data_both_ways_with_and_without_psk() {
    let psk = format!("preshared_key={}\n", "07".repeat(32));
    for (pa, pb) in [("", ""), (psk.as_str(), psk.as_str())] {
        let mut s = Sim::new(pa, pb);
        let p = s.a_to_b(100);
        assert_eq!(s.wa.sent.len(), 1, "the packet waits behind an initiation");
        assert_eq!(s.wa.sent[0].1.len(), wire::INITIATION_LEN);
        s.pump();
        assert_eq!(s.wb.tun, vec![p], "B received exactly the staged packet");
        let q = s.b_to_a(1000);
        s.pump();
        assert_eq!(s.wa.tun, vec![q]);
        assert_eq!(s.a.stats.handshakes_completed, 1);
        assert_eq!(s.b.stats.handshakes_completed, 1);
        assert!(s.a.peer(&b_pub()).unwrap().last_handshake.is_some());
        // B learned A's endpoint from the authenticated initiation.
        assert_eq!(
            s.b.peer(&a_pub()).unwrap().endpoint.unwrap().addr,
            A_ADDR.parse().unwrap()
        );
    }
}

#[test]
fn psk_mismatch_establishes_nothing() {
    let mut s = Sim::new(
        &format!("preshared_key={}\n", "01".repeat(32)),
        &format!("preshared_key={}\n", "02".repeat(32)),
    );
    s.a_to_b(100);
    s.pump();
    assert!(s.wb.tun.is_empty());
    assert_eq!(
        s.a.stats.rx_handshake_invalid, 1,
        "A cannot open B's response"
    );
    assert_eq!(s.a.stats.handshakes_completed, 0);
}

#[test]
fn wrong_peer_key_is_refused() {
    let mut s = Sim::new("", "");
    // B expects some other key than A's.
    let cfg = format!(
        "set=1\nreplace_peers=true\npublic_key={}\nallowed_ip=10.0.0.1/32\n\n",
        key(9).public_key().to_hex()
    );
    let now = s.now;
    set(&mut s.b, now, &cfg, &mut s.wb);
    s.a_to_b(100);
    s.pump();
    assert!(s.wb.tun.is_empty());
    assert_eq!(s.b.stats.rx_handshake_invalid, 1);
}

#[test]
fn source_outside_allowed_ips_is_dropped_and_counted() {
    let mut s = Sim::new("", "");
    s.a_to_b(100);
    s.pump();
    // B sends a packet claiming a source A did not allow for B.
    let spoof = ipv4([10, 0, 0, 77], [10, 0, 0, 1], 100);
    let cfg = "set=1\npublic_key=".to_string() + &a_pub().to_hex() + "\nallowed_ip=10.0.0.0/24\n\n";
    let now = s.now;
    set(&mut s.b, now, &cfg, &mut s.wb);
    s.b.handle_tun_packet(s.now, &spoof, &mut s.wb);
    s.pump();
    assert!(s.wa.tun.is_empty());
    assert_eq!(s.a.stats.rx_allowed_ips_violation, 1);
}

#[test]
fn more_specific_prefix_on_another_peer_takes_the_range() {
    let mut s = Sim::new("", "");
    s.a_to_b(100);
    s.pump();
    let now = s.now;
    // A gives B the whole /24, then peer 3 a single address inside it.
    set(
        &mut s.a,
        now,
        &format!(
            "set=1\npublic_key={}\nallowed_ip=10.0.0.0/24\n\n",
            b_pub().to_hex()
        ),
        &mut s.wa,
    );
    let p3 = key(3).public_key();
    set(
        &mut s.a,
        now,
        &format!(
            "set=1\npublic_key={}\nendpoint=192.0.2.9:1\nallowed_ip=10.0.0.5/32\n\n",
            p3.to_hex()
        ),
        &mut s.wa,
    );
    // Outbound: 10.0.0.5 goes to peer 3 (an initiation to its endpoint), 10.0.0.6 to B.
    s.a.handle_tun_packet(s.now, &ipv4([10, 0, 0, 1], [10, 0, 0, 5], 60), &mut s.wa);
    assert_eq!(s.wa.sent.len(), 1);
    assert_eq!(s.wa.sent[0].0.addr, "192.0.2.9:1".parse().unwrap());
    assert_eq!(s.wa.sent[0].1.len(), wire::INITIATION_LEN);
    s.wa.sent.clear();
    // Inbound: B may no longer use 10.0.0.5 as a source, but still 10.0.0.6.
    let now = s.now;
    set(
        &mut s.b,
        now,
        &format!(
            "set=1\npublic_key={}\nallowed_ip=10.0.0.0/24\n\n",
            a_pub().to_hex()
        ),
        &mut s.wb,
    );
    s.b.handle_tun_packet(s.now, &ipv4([10, 0, 0, 5], [10, 0, 0, 1], 60), &mut s.wb);
    let ok = ipv4([10, 0, 0, 6], [10, 0, 0, 1], 60);
    s.b.handle_tun_packet(s.now, &ok, &mut s.wb);
    s.pump();
    assert_eq!(s.wa.tun, vec![ok]);
    assert_eq!(s.a.stats.rx_allowed_ips_violation, 1);
}

#[test]
fn replayed_data_is_dropped() {
    let mut s = Sim::new("", "");
    s.a_to_b(100);
    s.pump();
    s.a_to_b(200);
    let (_, d) = s.wa.sent.pop_front().unwrap();
    let (mut d1, mut d2) = (d.clone(), d);
    let from = A_ADDR.parse().unwrap();
    s.b.handle_datagram(s.now, from, None, &mut d1, &mut s.wb);
    s.b.handle_datagram(s.now, from, None, &mut d2, &mut s.wb);
    assert_eq!(s.wb.tun.len(), 2);
    assert_eq!(s.b.stats.rx_replay, 1);
}

#[test]
fn roaming_follows_data_but_not_cookie_replies() {
    let mut s = Sim::new("", "");
    s.a_to_b(100);
    s.pump();
    s.b_to_a(100);
    let (_, mut d) = s.wb.sent.pop_front().unwrap();
    let new: SocketAddr = "198.51.100.7:4000".parse().unwrap();
    s.a.handle_datagram(s.now, new, None, &mut d, &mut s.wa);
    assert_eq!(s.a.peer(&b_pub()).unwrap().endpoint.unwrap().addr, new);
    // A forged datagram from elsewhere changes nothing.
    let mut junk = d.clone();
    junk[20] ^= 0xff;
    s.a.handle_datagram(
        s.now,
        "203.0.113.1:1".parse().unwrap(),
        None,
        &mut junk,
        &mut s.wa,
    );
    assert_eq!(s.a.peer(&b_pub()).unwrap().endpoint.unwrap().addr, new);
    assert!(s.a.stats.rx_decrypt_failed + s.a.stats.rx_replay >= 1);
}

#[test]
fn malformed_datagrams_never_panic_and_are_counted() {
    let mut s = Sim::new("", "");
    s.a_to_b(100);
    s.pump();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let from: SocketAddr = "203.0.113.9:9".parse().unwrap();
    let before = s.b.stats.clone();
    for i in 0..20_000usize {
        let len = (rng.next_u32() as usize) % 300;
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        if len >= 4 && i % 2 == 0 {
            d[0] = (i % 5) as u8;
            d[1..4].fill(0);
        }
        s.b.handle_datagram(s.now, from, None, &mut d, &mut s.wb);
    }
    let mut big = vec![4u8; 70_000];
    s.b.handle_datagram(s.now, from, None, &mut big, &mut s.wb);
    assert!(
        s.wb.tun.len() == 1,
        "nothing but the real packet reached the TUN"
    );
    let dropped: u64 =
        s.b.stats.iter().map(|(_, v)| v).sum::<u64>() - before.iter().map(|(_, v)| v).sum::<u64>();
    assert!(
        dropped >= 20_001,
        "every bad datagram counted, got {dropped}"
    );
    assert!(
        s.b.stats.rx_malformed > 0 && s.b.stats.rx_unknown_index > 0 && s.b.stats.rx_bad_mac1 > 0
    );
}

#[test]
fn rekey_after_time_and_reject_after_time() {
    let mut s = Sim::new("", "");
    s.a_to_b(100);
    s.pump();
    s.advance(REKEY_AFTER + Duration::from_secs(1));
    s.pump();
    let before = s.a.stats.tx_handshake_initiation;
    s.a_to_b(100);
    assert_eq!(
        s.a.stats.tx_handshake_initiation,
        before + 1,
        "initiator rekeys on send after 120 s"
    );
    s.pump();
    assert_eq!(s.a.stats.handshakes_completed, 2);

    // Without any handshake possible, a session is unusable after 180 s.
    let mut t = Sim::new("", "");
    t.a_to_b(100);
    t.pump();
    t.advance(crate::constants::REJECT_AFTER_TIME + Duration::from_secs(1));
    t.wa.sent.clear();
    t.wb.sent.clear();
    t.a_to_b(100);
    assert!(
        t.wa.sent
            .iter()
            .all(|(_, d)| d.len() == wire::INITIATION_LEN),
        "no data sealed with an expired session"
    );
    assert_eq!(t.a.peer(&b_pub()).unwrap().queue.len(), 1);
}
const REKEY_AFTER: Duration = crate::constants::REKEY_AFTER_TIME;

#[test]
fn passive_keepalive_after_receiving_data() {
    let mut s = Sim::new("", "");
    s.a_to_b(100);
    s.pump();
    s.a_to_b(100);
    s.pump();
    let ka_before = s.a.stats.rx_keepalive;
    s.advance(Duration::from_secs(11));
    assert_eq!(
        s.a.stats.rx_keepalive,
        ka_before + 1,
        "B answered A's data with a keepalive"
    );
    s.advance(Duration::from_secs(10));
    // Data arrived while the first keepalive was pending, so one more is owed
    // (wireguard-go's needAnotherKeepalive) — and then no more: no keepalive loop.
    assert_eq!(s.a.stats.rx_keepalive, ka_before + 2);
    s.advance(Duration::from_secs(120));
    assert_eq!(s.a.stats.rx_keepalive, ka_before + 2);
}

#[test]
fn persistent_keepalive_brings_the_tunnel_up_and_repeats() {
    let mut s = Sim::new("", "");
    let now = s.now;
    let cfg = format!(
        "set=1\npublic_key={}\npersistent_keepalive_interval=5\n\n",
        b_pub().to_hex()
    );
    set(&mut s.a, now, &cfg, &mut s.wa);
    s.pump();
    assert_eq!(
        s.a.stats.handshakes_completed, 1,
        "setting the interval starts a handshake"
    );
    let k0 = s.b.stats.rx_keepalive;
    s.advance(Duration::from_secs(16));
    s.pump();
    assert!(
        s.b.stats.rx_keepalive >= k0 + 3,
        "keepalives every 5 s: {}",
        s.b.stats.rx_keepalive - k0
    );
}

#[test]
fn handshake_retries_then_gives_up_after_rekey_attempt_time() {
    let mut s = Sim::new("", "");
    s.a_to_b(100);
    let mut sent = 0;
    for _ in 0..1200 {
        s.advance_offline(Duration::from_millis(100));
        sent += s.wa.sent.len();
        s.wa.sent.clear();
    }
    // The first initiation and 19 retries one per ~5 s (wireguard-go's count: retry
    // while attempts <= REKEY_ATTEMPT_TIME / REKEY_TIMEOUT), then silence.
    assert_eq!(s.a.stats.tx_handshake_initiation, 20);
    assert_eq!(sent, 20);
    assert!(s.a.peer(&b_pub()).unwrap().queue.is_empty());
    assert_eq!(s.a.stats.tx_queue_dropped, 1);
}

#[test]
fn under_load_initiations_get_cookie_replies_and_retry_with_mac2() {
    let mut s = Sim::new("", "");
    // Push B over the load threshold with junk initiations that carry a valid MAC1.
    let flood_src: SocketAddr = "203.0.113.50:7".parse().unwrap();
    let mut gen = crate::cookie::CookieGenerator::new(&b_pub());
    for i in 0..(UNDER_LOAD_HANDSHAKES_PER_SECOND + 10) {
        let mut m = [0u8; wire::INITIATION_LEN];
        let mut v = Initiation::new_unchecked(&mut m[..]);
        v.fill_header();
        v.set_sender(i);
        gen.add_macs(s.now, &mut m);
        s.b.handle_datagram(s.now, flood_src, None, &mut m, &mut s.wb);
    }
    assert!(s.b.stats.tx_cookie_reply > 0, "B is under load");
    s.wb.sent.clear();
    s.a_to_b(100);
    s.pump();
    assert!(
        s.a.stats.rx_cookie_reply >= 1,
        "A got a cookie for its own address and port"
    );
    assert!(
        s.wb.tun.is_empty(),
        "no handshake yet: A must retry with MAC2"
    );
    s.advance(Duration::from_secs(6));
    s.pump();
    assert_eq!(
        s.wb.tun.len(),
        1,
        "the retry carried MAC2 and went through under load"
    );
    // The flooding source was rate-limited without blocking A.
    assert!(s.b.stats.rx_handshake_invalid + s.b.stats.rx_rate_limited > 0);
}

#[test]
fn rate_limit_is_per_source() {
    let mut s = Sim::new("", "");
    let mut gen = crate::cookie::CookieGenerator::new(&b_pub());
    // Not under load: MAC1-valid junk goes to Noise and fails there; nothing global trips.
    for i in 0..50u32 {
        let mut m = [0u8; wire::INITIATION_LEN];
        let mut v = Initiation::new_unchecked(&mut m[..]);
        v.fill_header();
        v.set_sender(i);
        gen.add_macs(s.now, &mut m);
        s.b.handle_datagram(
            s.now,
            "203.0.113.60:1".parse().unwrap(),
            None,
            &mut m,
            &mut s.wb,
        );
    }
    s.a_to_b(100);
    s.pump();
    assert_eq!(s.wb.tun.len(), 1);
    assert_eq!(s.b.stats.tx_cookie_reply, 0);
}

#[test]
fn removing_a_peer_forgets_its_sessions_and_routes() {
    let mut s = Sim::new("", "");
    s.a_to_b(100);
    s.pump();
    let now = s.now;
    set(
        &mut s.a,
        now,
        &format!("set=1\npublic_key={}\nremove=true\n\n", b_pub().to_hex()),
        &mut s.wa,
    );
    assert_eq!(s.a.peer_count(), 0);
    s.a_to_b(100);
    assert_eq!(s.a.stats.tx_no_route, 1);
    s.b_to_a(100);
    s.pump();
    assert!(s.wa.tun.is_empty());
    assert_eq!(s.a.stats.rx_unknown_index, 1);
}

#[test]
fn ipv6_inner_packets_route_and_check() {
    let mut s = Sim::new("", "");
    let mut p = vec![0u8; 80];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 17;
    p[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
    p[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
    s.a.handle_tun_packet(s.now, &p, &mut s.wa);
    s.pump();
    // B's AllowedIPs for A has no v6: the packet is dropped as a spoofed source.
    assert!(s.wb.tun.is_empty());
    assert_eq!(s.b.stats.rx_allowed_ips_violation, 1);
    let now = s.now;
    set(
        &mut s.b,
        now,
        &format!(
            "set=1\npublic_key={}\nallowed_ip=fd00::1/128\n\n",
            a_pub().to_hex()
        ),
        &mut s.wb,
    );
    s.a.handle_tun_packet(s.now, &p, &mut s.wa);
    s.pump();
    assert_eq!(s.wb.tun, vec![p]);
}

#[test]
fn in_place_send_with_and_without_room() {
    let mut s = Sim::new("", "");
    s.a_to_b(100);
    s.pump();
    s.wb.tun.clear();
    // With room: the message is built around the packet where it lies.
    let p = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 300);
    let mut buf = vec![0u8; TUN_HEADROOM + p.len() + TUN_TAILROOM];
    buf[TUN_HEADROOM..TUN_HEADROOM + p.len()].copy_from_slice(&p);
    s.a.handle_tun_packet_in_place(s.now, &mut buf, p.len(), &mut s.wa);
    // Too little room behind it: copied, still sent.
    let q = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 301);
    let mut short = vec![0u8; TUN_HEADROOM + q.len() + 3];
    short[TUN_HEADROOM..TUN_HEADROOM + q.len()].copy_from_slice(&q);
    s.a.handle_tun_packet_in_place(s.now, &mut short, q.len(), &mut s.wa);
    // A length beyond the buffer is malformed, not a panic.
    let before = s.a.stats.tx_malformed;
    s.a.handle_tun_packet_in_place(s.now, &mut short, 5000, &mut s.wa);
    assert_eq!(s.a.stats.tx_malformed, before + 1);
    s.pump();
    assert_eq!(s.wb.tun, vec![p, q]);
}

#[test]
fn batched_receive_opens_out_of_order_and_finishes_in_order() {
    let mut s = Sim::new("", "");
    s.a_to_b(100);
    s.pump();
    s.wb.tun.clear();
    let packets: Vec<Vec<u8>> = (0..6).map(|i| s.a_to_b(200 + i)).collect();
    let mut msgs: Vec<Vec<u8>> = s.wa.sent.drain(..).map(|(_, d)| d).collect();
    // The same message twice in one batch: only one may get through.
    msgs.push(msgs[2].clone());
    let from: SocketAddr = A_ADDR.parse().unwrap();
    let tickets: Vec<_> = msgs
        .iter()
        .map(|m| s.b.begin_data(s.now, m).expect("admitted"))
        .collect();
    // Open in reverse order (as parallel workers might finish), then finish in order.
    let mut opened: Vec<_> = Vec::new();
    for (m, t) in msgs.iter_mut().zip(&tickets).rev() {
        opened.push(crate::session::open_with(t.key(), m));
    }
    opened.reverse();
    for ((m, t), o) in msgs.iter_mut().zip(tickets).zip(opened) {
        s.b.finish_data(s.now, from, None, m, t, o, &mut s.wb);
    }
    assert_eq!(s.wb.tun, packets);
    assert_eq!(s.b.stats.rx_replay, 1);
    // A failed open is counted and nothing is delivered.
    s.wb.tun.clear();
    s.a_to_b(64);
    let (_, mut m) = s.wa.sent.pop_front().unwrap();
    let t = s.b.begin_data(s.now, &m).unwrap();
    s.b.finish_data(
        s.now,
        from,
        None,
        &mut m,
        t,
        Err(SessionError::Decrypt),
        &mut s.wb,
    );
    assert_eq!(s.b.stats.rx_decrypt_failed, 1);
    assert!(s.wb.tun.is_empty());
    // Not data, or an unknown index: refused at the first step.
    assert!(s.b.begin_data(s.now, &[4, 0, 0, 0]).is_none());
    let mut unknown = m.clone();
    unknown[4..8].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
    assert!(s.b.begin_data(s.now, &unknown).is_none());
}

#[test]
fn a_new_private_key_handshakes_at_once() {
    let mut s = Sim::new("", "");
    s.a_to_b(100);
    s.pump();
    s.wa.sent.clear();
    // A switches identity (B knows the new key as the same peer's replacement
    // only in real life; here what matters is that A initiates right away).
    s.a.set_private_key(Some(key(9)));
    s.a_to_b(100);
    let initiations =
        s.wa.sent
            .iter()
            .filter(|(_, d)| wire::message_type(d) == Ok(MessageType::Initiation))
            .count();
    assert_eq!(initiations, 1, "no initiation right after the key change");
}

#[test]
fn initiate_handshake_sends_one_initiation_to_a_known_peer() {
    let mut s = Sim::new("", "");
    s.wa.sent.clear();
    assert!(s
        .a
        .initiate_handshake(s.now, &key(2).public_key(), &mut s.wa));
    let initiations = |w: &Wire| {
        w.sent
            .iter()
            .filter(|(_, d)| wire::message_type(d) == Ok(MessageType::Initiation))
            .count()
    };
    assert_eq!(initiations(&s.wa), 1);
    // Rate-limited like any initiation: a second request right away sends nothing.
    assert!(s
        .a
        .initiate_handshake(s.now, &key(2).public_key(), &mut s.wa));
    assert_eq!(initiations(&s.wa), 1);
    // The handshake completes.
    s.pump();
    assert!(s.a.snapshot(0, 0).peers[0].last_handshake.is_some());
    let stats = s.a.peer_stats();
    let snap = &s.a.snapshot(0, 0).peers[0];
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (
            stats[0].public_key,
            stats[0].last_handshake,
            stats[0].rx_bytes,
            stats[0].tx_bytes
        ),
        (
            snap.public_key,
            snap.last_handshake,
            snap.rx_bytes,
            snap.tx_bytes
        ),
        "peer_stats reports what the snapshot does"
    );
    assert!(
        !s.a.initiate_handshake(s.now, &key(7).public_key(), &mut s.wa),
        "unknown peer"
    );
}

#[test]
fn local_indices_follow_handshakes_and_peer_removal() {
    let mut s = Sim::new("", "");
    let (ga, gb) = (s.a.index_generation(), s.b.index_generation());
    assert_eq!(s.a.local_indices().count(), 0);
    s.a.handle_tun_packet(s.now, &ipv4([10, 0, 0, 1], [10, 0, 0, 2], 100), &mut s.wa);
    s.pump();
    assert_ne!(s.a.index_generation(), ga);
    assert_ne!(s.b.index_generation(), gb);
    // Each side holds exactly the indices it announced and that are still alive,
    // and every data message the other side sends names one of them.
    let a_held: Vec<u32> = s.a.local_indices().collect();
    let b_held: Vec<u32> = s.b.local_indices().collect();
    assert!(!a_held.is_empty() && !b_held.is_empty());
    assert!(a_held.iter().all(|i| s.wa.announced.contains(i)));
    assert!(b_held.iter().all(|i| s.wb.announced.contains(i)));
    s.a.handle_tun_packet(s.now, &ipv4([10, 0, 0, 1], [10, 0, 0, 2], 100), &mut s.wa);
    let (_, data) = s.wa.sent.back().cloned().unwrap();
    assert_eq!(data[0], 4);
    let receiver = u32::from_le_bytes(data[4..8].try_into().unwrap());
    assert!(b_held.contains(&receiver));
    let g = s.b.index_generation();
    assert!(s.b.remove_peer(&key(1).public_key()));
    assert_eq!(s.b.local_indices().count(), 0);
    assert_ne!(s.b.index_generation(), g);
}

/// The default [`Io::send_data`] is a hard drop for what it cannot seal: nothing
/// reaches [`Io::send_udp`] and no plaintext stays in the buffer (before, a message
/// whose header check failed went out unencrypted).
#[test]
fn send_data_never_sends_what_it_cannot_seal() {
    let mut w = Wire::default();
    let key = Arc::new(AeadKey::new(&[1u8; 32]));
    let to = Endpoint {
        addr: B_ADDR.parse().unwrap(),
        local: None,
    };
    let secret = b"inner packet, plaintext";
    // Not a data message (a handshake type), and a data message too short for a tag.
    for (kind, len) in [(1u8, 64usize), (4, 16 + 15)] {
        let mut msg = vec![0u8; len];
        msg[0] = kind;
        let room = (len - 16).min(secret.len());
        msg[16..16 + room].copy_from_slice(&secret[..room]);
        let outcome = w.send_data(&to, &mut msg, &key);
        assert_ne!(outcome, SendOutcome::Sent, "type {kind}, {len} bytes");
        assert!(w.sent.is_empty(), "sent: {:?}", w.sent);
        assert!(msg.iter().all(|&b| b == 0), "plaintext left in the buffer");
    }
}

#[test]
fn open_admission_makes_an_authenticated_initiator_a_peer_up_to_the_limit() {
    let mut s = Sim::new("", "");
    // b does not know a: without admission, a's initiations are refused.
    assert!(s.b.remove_peer(&a_pub()));
    s.a_to_b(100);
    s.pump();
    assert_eq!(s.b.stats.rx_handshake_invalid, 1);
    assert_eq!(s.b.peer_count(), 0);
    assert!(s.b.take_admitted().is_empty());
    // With admission, the next initiation makes a a peer and the handshake completes.
    s.b.set_admission(Some(1));
    s.advance(Duration::from_secs(6));
    assert_eq!(s.b.take_admitted(), vec![a_pub()]);
    assert_eq!(s.b.stats.admitted, 1);
    assert_eq!(s.a.stats.handshakes_completed, 1);
    assert!(s.b.take_admitted().is_empty(), "taken once");
    // It has no AllowedIPs until the shell gives it some: a's data is refused.
    let before = s.b.stats.rx_allowed_ips_violation;
    s.a_to_b(100);
    s.pump();
    assert!(s.wb.tun.is_empty());
    assert_eq!(s.b.stats.rx_allowed_ips_violation, before + 1);
    let allow = format!(
        "set=1\npublic_key={}\nallowed_ip=10.0.0.1/32\n\n",
        a_pub().to_hex()
    );
    set(&mut s.b, s.now, &allow, &mut s.wb);
    let p = s.a_to_b(100);
    s.pump();
    assert_eq!(s.wb.tun, vec![p]);

    // A third key is refused once the limit (1 peer) is reached, even though its
    // initiation is well-formed and addressed to b.
    let now = s.now;
    let epoch = (now, Duration::from_secs(1_700_000_100));
    let mut c = Device::new([3; 32], epoch, 1420);
    let mut wc = Wire::default();
    let cfg = format!(
        "set=1\nprivate_key={}\npublic_key={}\nendpoint={B_ADDR}\nallowed_ip=10.0.0.2/32\n\n",
        key(3).to_hex(),
        b_pub().to_hex()
    );
    set(&mut c, now, &cfg, &mut wc);
    assert!(c.initiate_handshake(now, &b_pub(), &mut wc));
    let invalid = s.b.stats.rx_handshake_invalid;
    let (_, mut init) = wc.sent.pop_front().unwrap();
    s.b.handle_datagram(
        now,
        "192.0.2.3:1".parse().unwrap(),
        None,
        &mut init,
        &mut s.wb,
    );
    assert_eq!(s.b.stats.rx_handshake_invalid, invalid + 1);
    assert_eq!(s.b.peer_count(), 1);
    assert!(s.b.take_admitted().is_empty());
}
