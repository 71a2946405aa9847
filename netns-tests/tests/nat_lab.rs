//! The NAT lab (`portdistrict_testkit::nat`) behaves as each NAT kind is specified,
//! shown with plain UDP sockets bound inside the lab's namespaces:
//! - mappings as a reflector in `public` sees them (WAN address; port kept by the
//!   cone-like kinds; a new port per destination for the symmetric one) and inbound
//!   filtering (dropped by port-restricted and symmetric NATs, delivered by a full
//!   cone, answered by the router itself when its input accepts);
//! - the simultaneous-punch matrix of the NAT lab notes, by hosts that learnt each
//!   other's mapping from the reflector: port-restricted both sides succeeds; against
//!   a symmetric NAT it fails until that NAT is relaxed; two NATs whose input accepts
//!   fail with naive punching (0.3 s skew; the late side's router holds the stale
//!   inbound entry and gave its host another port) and succeed with a TTL=2 primer
//!   longer than the skew, not with a shorter one. A case that could be disturbed by
//!   an earlier one's conntrack entries runs in fresh namespaces, a repeat in the same
//!   lab on new ports (new flows);
//! - the loss knob (100 %: nothing passes; cleared: it passes) and the conntrack UDP
//!   timeout knob (an idle mapping is gone after the timeout, a kept-alive one stays).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portdistrict_netns_tests::{
    reflexive, require_root, LabNamespace, NatKind, NatLab, Netns, Site, UdpEcho, SERVICE,
};

/// The reflectors' ports on [`SERVICE`]: two destinations.
const ECHO_PORTS: [u16; 2] = [3478, 3479];
/// The hosts' UDP port (exposed by a full cone).
const HOST_PORT: u16 = 40000;
/// A port in `public` that no host has sent to: its packets are unsolicited.
const STRANGER_PORT: u16 = 5000;
/// How long to wait for something that must not come.
const QUIET: Duration = Duration::from_millis(600);
/// How long a punch that must fail is given.
const FAIL_WINDOW: Duration = Duration::from_secs(3);
/// How long a punch that must succeed is given.
const PUNCH_WINDOW: Duration = Duration::from_secs(4);
/// The start of one side's punch after the other's (the notes' clock skew).
const SKEW: Duration = Duration::from_millis(300);

/// A lab and the two reflectors in its `public` namespace (stopped first on drop).
struct Fixture {
    echoes: Vec<UdpEcho>,
    lab: NatLab,
}

impl Fixture {
    fn new(a: NatKind, b: NatKind) -> Fixture {
        require_root();
        let lab = NatLab::new(a, b).unwrap_or_else(|e| panic!("building the NAT lab: {e}"));
        let echoes = ECHO_PORTS
            .iter()
            .map(|&p| UdpEcho::start(&lab.public, (SERVICE, p).into()))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("starting the reflectors: {e}"));
        Fixture { echoes, lab }
    }

    fn echo(&self, i: usize) -> SocketAddr {
        self.echoes[i].addr()
    }

    /// The mapping of `sock` towards reflector `i`; panics if it does not answer.
    fn mapped(&self, sock: &UdpSocket, i: usize) -> SocketAddr {
        reflexive(sock, self.echo(i), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no answer from reflector {}", self.echo(i)))
    }

    /// Router `site`'s table and conntrack entries, for failure messages.
    fn state(&self, site: Site) -> String {
        let r = &self.lab.site(site).router;
        format!(
            "--- router {site:?} ({:?}) ---\n{}\n{}",
            r.kind(),
            r.listing().unwrap_or_else(|e| e.to_string()),
            r.conntrack().unwrap_or_else(|e| e.to_string())
        )
    }
}

/// A socket on `port` of every address of `ns`.
fn bind(ns: &Netns, port: u16) -> UdpSocket {
    bind_at(ns, ([0, 0, 0, 0], port).into())
}

fn bind_at(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    let sock = ns.udp_bind(addr).unwrap_or_else(|e| panic!("{e}"));
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    sock
}

/// The first datagram carrying `payload` that `sock` receives within `limit`, and
/// its source.
fn receive(sock: &UdpSocket, payload: &[u8], limit: Duration) -> Option<SocketAddr> {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if &buf[..n] == payload {
                return Some(from);
            }
        }
    }
    None
}

/// Mapping and unsolicited inbound for the host of `site` (its socket on
/// [`HOST_PORT`]), as the kind of its router says.
fn check_site(f: &Fixture, site: Site) {
    let kind = f.lab.site(site).router.kind();
    let sock = bind(&f.lab.site(site).host, HOST_PORT);
    let first = f.mapped(&sock, 0);
    let second = f.mapped(&sock, 1);
    eprintln!(
        "{site:?} ({kind:?}): mapped {first} towards one reflector, {second} towards the other"
    );
    assert_eq!(
        first.ip(),
        site.wan(),
        "{site:?}: source seen by the reflector"
    );
    assert_eq!(
        second.ip(),
        site.wan(),
        "{site:?}: source seen by the reflector"
    );
    if kind == NatKind::Symmetric {
        assert_ne!(
            first.port(),
            second.port(),
            "{site:?}: symmetric NAT reused a port"
        );
    } else {
        assert_eq!(first.port(), HOST_PORT, "{site:?}: port not kept");
        assert_eq!(
            second.port(),
            HOST_PORT,
            "{site:?}: mapping not endpoint-independent"
        );
    }

    let stranger = bind_at(&f.lab.public, (SERVICE, STRANGER_PORT).into());
    stranger.connect(first).expect("connect");
    stranger.send(b"unsolicited").expect("send");
    let delivered = receive(&sock, b"unsolicited", QUIET);
    let mut buf = [0u8; 64];
    let answer = stranger.recv(&mut buf).map_err(|e| e.kind());
    eprintln!("{site:?}: unsolicited from {SERVICE}:{STRANGER_PORT} delivered from {delivered:?}, stranger got {answer:?}");
    match kind {
        NatKind::FullCone { .. } => assert_eq!(
            delivered,
            Some((SERVICE, STRANGER_PORT).into()),
            "full cone did not deliver\n{}",
            f.state(site)
        ),
        _ => assert_eq!(delivered, None, "{kind:?} delivered\n{}", f.state(site)),
    }
    // The router's input: one that accepts answers with ICMP port unreachable (no
    // socket there), the others drop silently.
    if kind == NatKind::AcceptsInput {
        assert_eq!(answer, Err(std::io::ErrorKind::ConnectionRefused));
    } else {
        assert!(
            matches!(
                answer,
                Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
            ),
            "{kind:?}: the stranger got {answer:?}"
        );
    }
    // The solicited path still works.
    assert_eq!(f.mapped(&sock, 0), first, "{site:?}: mapping changed");
}

#[test]
fn port_restricted_and_symmetric_map_and_filter() {
    let f = Fixture::new(NatKind::PortRestricted, NatKind::Symmetric);
    check_site(&f, Site::A);
    check_site(&f, Site::B);
}

#[test]
fn full_cone_and_accepts_input_map_and_filter() {
    let f = Fixture::new(NatKind::FullCone { port: HOST_PORT }, NatKind::AcceptsInput);
    check_site(&f, Site::A);
    check_site(&f, Site::B);
}

/// How one side punches.
#[derive(Clone, Copy)]
struct Plan {
    /// When it starts, after the common start.
    delay: Duration,
    /// How long it first sends with TTL 2 (dies after the router's next hop).
    primer: Option<Duration>,
}

const NAIVE: Plan = Plan {
    delay: Duration::ZERO,
    primer: None,
};

/// What one side saw.
#[derive(Debug)]
struct Seen {
    /// When (since the common start) the first datagram from the peer's address came.
    first: Option<Duration>,
    /// Punch datagrams from any other source.
    strays: Vec<SocketAddr>,
}

/// Both sides send `punch` to the other's reflexive address every 20 ms (after their
/// delay and primer) until each has received one from the other or `window` ends.
fn punch(sides: [(&UdpSocket, SocketAddr, Plan); 2], window: Duration) -> [Seen; 2] {
    let start = Instant::now();
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let threads = sides.map(|(sock, peer, plan)| {
            let done = &done;
            s.spawn(move || punch_side(sock, peer, plan, start, window, done))
        });
        threads.map(|t| t.join().expect("punch thread"))
    })
}

fn punch_side(
    sock: &UdpSocket,
    peer: SocketAddr,
    plan: Plan,
    start: Instant,
    window: Duration,
    done: &AtomicUsize,
) -> Seen {
    let mut seen = Seen {
        first: None,
        strays: Vec::new(),
    };
    std::thread::sleep(plan.delay);
    let full_ttl_at = start + plan.delay + plan.primer.unwrap_or_default();
    sock.set_ttl(if plan.primer.is_some() { 2 } else { 64 })
        .expect("IP_TTL");
    let mut primed = plan.primer.is_none();
    let mut buf = [0u8; 64];
    while start.elapsed() < window && done.load(Ordering::SeqCst) < 2 {
        if !primed && Instant::now() >= full_ttl_at {
            sock.set_ttl(64).expect("IP_TTL");
            primed = true;
        }
        let _ = sock.send_to(b"punch", peer);
        // The read timeout (20 ms) paces the sending.
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == b"punch" && from == peer && seen.first.is_none() => {
                seen.first = Some(start.elapsed());
                done.fetch_add(1, Ordering::SeqCst);
            }
            Ok((n, from)) if &buf[..n] == b"punch" && from != peer => seen.strays.push(from),
            _ => {}
        }
    }
    seen
}

/// Hosts' sockets on `port` and their mappings towards reflector 0.
fn endpoints(f: &Fixture, port: u16) -> ([UdpSocket; 2], [SocketAddr; 2]) {
    let socks = Site::ALL.map(|s| bind(&f.lab.site(s).host, port));
    let mapped = [f.mapped(&socks[0], 0), f.mapped(&socks[1], 0)];
    (socks, mapped)
}

/// Punches between the hosts of `f` from `port` with `plans`; whether both sides got
/// through, and when.
fn punch_hosts(f: &Fixture, port: u16, plans: [Plan; 2], window: Duration) -> [Seen; 2] {
    let (socks, mapped) = endpoints(f, port);
    let seen = punch(
        [
            (&socks[0], mapped[1], plans[0]),
            (&socks[1], mapped[0], plans[1]),
        ],
        window,
    );
    eprintln!(
        "punch from {mapped:?} with skew {:?}: {seen:?}",
        plans[1].delay
    );
    seen
}

fn succeeded(seen: &[Seen; 2]) -> bool {
    seen.iter().all(|s| s.first.is_some())
}

#[test]
fn punch_port_restricted_both_sides_succeeds() {
    let f = Fixture::new(NatKind::PortRestricted, NatKind::PortRestricted);
    let seen = punch_hosts(&f, HOST_PORT, [NAIVE; 2], PUNCH_WINDOW);
    assert!(
        succeeded(&seen),
        "{seen:?}\n{}\n{}",
        f.state(Site::A),
        f.state(Site::B)
    );
    // With skew, on new ports (new flows): B's first packet opens the way.
    let skewed = Plan {
        delay: SKEW,
        primer: None,
    };
    let seen = punch_hosts(&f, HOST_PORT + 1, [NAIVE, skewed], PUNCH_WINDOW);
    assert!(
        succeeded(&seen),
        "{seen:?}\n{}\n{}",
        f.state(Site::A),
        f.state(Site::B)
    );
}

#[test]
fn punch_against_symmetric_fails_until_relaxed() {
    let mut f = Fixture::new(NatKind::PortRestricted, NatKind::Symmetric);
    let seen = punch_hosts(&f, HOST_PORT, [NAIVE; 2], FAIL_WINDOW);
    assert!(
        seen.iter().all(|s| s.first.is_none()),
        "punch through a symmetric NAT: {seen:?}\n{}",
        f.state(Site::B)
    );
    f.lab
        .b
        .router
        .set_kind(NatKind::PortRestricted)
        .expect("relax B");
    // New sockets: new flows, mapped by the relaxed rules (the old ones keep theirs).
    let seen = punch_hosts(&f, HOST_PORT + 1, [NAIVE; 2], PUNCH_WINDOW);
    assert!(
        succeeded(&seen),
        "after relaxing B: {seen:?}\n{}",
        f.state(Site::B)
    );
}

/// Two NATs whose input accepts: naive punching with one side 0.3 s late fails, and
/// the router of the late side shows why (an inbound entry holding the tuple its host
/// needed, so its host's flow got another port). Fresh namespaces per case, so no
/// conntrack entry leaks from one to the next.
#[test]
fn punch_accepts_input_needs_a_primer_longer_than_the_skew() {
    let late = |primer| Plan {
        delay: SKEW,
        primer,
    };
    let early = |primer| Plan {
        delay: Duration::ZERO,
        primer,
    };

    let f = Fixture::new(NatKind::AcceptsInput, NatKind::AcceptsInput);
    let seen = punch_hosts(&f, HOST_PORT, [early(None), late(None)], FAIL_WINDOW);
    let ct = f.lab.b.router.conntrack().expect("conntrack");
    assert!(
        seen.iter().all(|s| s.first.is_none()),
        "naive punch got through: {seen:?}\n{}",
        f.state(Site::B)
    );
    let (wa, wb) = (Site::A.wan(), Site::B.wan());
    let flows = conntrack_flows(&ct);
    let stale = Tuple::new(wa, wb, HOST_PORT, HOST_PORT);
    assert!(
        flows.iter().any(|(orig, _)| *orig == stale),
        "no inbound entry from A on router B:\n{ct}"
    );
    let own = Tuple::new(Site::B.host(), wa, HOST_PORT, HOST_PORT);
    let mapped = flows
        .iter()
        .find(|(orig, _)| *orig == own)
        .map(|(_, reply)| reply.dport);
    eprintln!(
        "router B: inbound entry {stale:?} holds B's tuple; B's own flow mapped to port {mapped:?}"
    );
    assert!(
        mapped.is_some_and(|p| p != HOST_PORT),
        "B's flow did not get another port:\n{ct}"
    );
    drop(f);

    let f = Fixture::new(NatKind::AcceptsInput, NatKind::AcceptsInput);
    let primer = Some(Duration::from_millis(500));
    let seen = punch_hosts(&f, HOST_PORT, [early(primer), late(primer)], PUNCH_WINDOW);
    assert!(
        succeeded(&seen),
        "primed punch failed: {seen:?}\n{}\n{}",
        f.state(Site::A),
        f.state(Site::B)
    );
    // Nothing crossed before full TTL: the primers died before the peer's NAT.
    assert!(
        seen.iter().all(|s| s.first >= primer),
        "through before the end of the primer: {seen:?}"
    );
    drop(f);

    let f = Fixture::new(NatKind::AcceptsInput, NatKind::AcceptsInput);
    let short = Some(Duration::from_millis(200));
    let seen = punch_hosts(&f, HOST_PORT, [early(short), late(short)], FAIL_WINDOW);
    assert!(
        seen.iter().all(|s| s.first.is_none()),
        "a primer shorter than the skew got through: {seen:?}"
    );
}

/// A conntrack tuple as `/proc/net/nf_conntrack` prints it.
#[derive(Debug, PartialEq, Eq)]
struct Tuple {
    src: String,
    dst: String,
    sport: u16,
    dport: u16,
}

impl Tuple {
    fn new(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Tuple {
        let (src, dst) = (src.to_string(), dst.to_string());
        Tuple {
            src,
            dst,
            sport,
            dport,
        }
    }
}

/// The (original, reply) tuples of each UDP entry.
fn conntrack_flows(listing: &str) -> Vec<(Tuple, Tuple)> {
    let tuple = |fields: &[(&str, &str)]| -> Option<Tuple> {
        let get = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        Some(Tuple {
            src: get("src")?.to_owned(),
            dst: get("dst")?.to_owned(),
            sport: get("sport")?.parse().ok()?,
            dport: get("dport")?.parse().ok()?,
        })
    };
    listing
        .lines()
        .filter(|l| l.contains(" udp "))
        .filter_map(|l| {
            let fields: Vec<(&str, &str)> = l
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .filter(|(k, _)| ["src", "dst", "sport", "dport"].contains(k))
                .collect();
            (fields.len() == 8).then(|| Some((tuple(&fields[..4])?, tuple(&fields[4..])?)))?
        })
        .collect()
}

#[test]
fn loss_and_conntrack_timeout_knobs() {
    let mut f = Fixture::new(NatKind::PortRestricted, NatKind::Symmetric);
    let sock = bind(&f.lab.a.host, HOST_PORT);
    f.mapped(&sock, 0);
    f.lab.a.router.set_loss(100).expect("loss 100");
    let lost = reflexive(&sock, f.echo(0), Duration::from_secs(1)).expect("ask");
    assert_eq!(lost, None, "an answer passed 100% loss");
    let b_sock = bind(&f.lab.b.host, HOST_PORT);
    f.mapped(&b_sock, 0); // the other NAT is not affected
    f.lab.a.router.set_loss(0).expect("loss 0");
    assert_eq!(
        f.mapped(&sock, 0).port(),
        HOST_PORT,
        "after clearing the loss"
    );

    check_timeouts(&f);
}

/// With 2 s UDP timeouts, an idle mapping is gone after 3.5 s (port-restricted: a
/// packet from the peer it was made for is dropped; symmetric: the host's next packet
/// gets a new port) while one kept alive every 0.5 s stays.
fn check_timeouts(f: &Fixture) {
    let timeout = Duration::from_secs(2);
    for site in Site::ALL {
        let r = &f.lab.site(site).router;
        r.set_udp_timeouts(timeout, timeout).expect("timeouts");
    }
    let peer_addr: SocketAddr = (SERVICE, STRANGER_PORT).into();
    let peer = bind_at(&f.lab.public, peer_addr);
    let mut from = |sock: &UdpSocket| {
        sock.send_to(b"hello", peer_addr).expect("send");
        receive(&peer, b"hello", Duration::from_secs(1)).expect("hello reaches the peer")
    };
    let [idle_a, keep_a] = [41001, 41002].map(|p| bind(&f.lab.a.host, p));
    let [idle_b, keep_b] = [41001, 41002].map(|p| bind(&f.lab.b.host, p));
    let mapped = [&idle_a, &keep_a, &idle_b, &keep_b].map(&mut from);
    // Control: before the timeout the peer reaches the idle port-restricted mapping.
    peer.send_to(b"probe", mapped[0]).expect("send");
    assert!(receive(&idle_a, b"probe", Duration::from_secs(1)).is_some());
    let idle_since = Instant::now();
    while idle_since.elapsed() < timeout + Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(from(&keep_a), mapped[1], "kept-alive mapping changed");
        assert_eq!(from(&keep_b), mapped[3], "kept-alive mapping changed");
    }
    for (to, sock) in [(mapped[0], &idle_a), (mapped[1], &keep_a)] {
        peer.send_to(b"probe", to).expect("send");
        let got = receive(sock, b"probe", QUIET);
        eprintln!("probe to {to} after the timeout: {got:?}");
        assert_eq!(
            got.is_some(),
            to == mapped[1],
            "probe to {to}\n{}",
            f.state(Site::A)
        );
    }
    let again = from(&idle_b);
    eprintln!("symmetric idle mapping {} became {again}", mapped[2]);
    assert_ne!(
        again,
        mapped[2],
        "the idle symmetric mapping survived\n{}",
        f.state(Site::B)
    );
}
