//! The shared-memory commands NAT traversal needs, end to end: control's client
//! (`ShmClient`) -> the region's command ring -> `portdistrict-dataplane` -> the
//! WireGuard core -> the dataplane's own UDP socket. Two real dataplanes, each
//! started with `--shm` and programmed through the region, in namespaces `a` and `b`
//! with a router namespace between them (two hops: a TTL of 1 dies at the router).
//!
//! - (a) a probe with TTL 1 completes no handshake; with TTL 64 it does, while the
//!   endpoint stays where it was configured (a "relay" address): seen in the stats
//!   (last handshake, handshake source) and by a ping once the endpoint is unpinned;
//! - (b) a raw datagram arrives at a UDP listener behind the router with exactly its
//!   payload, from the dataplane's listen port and with the TTL asked for; with TTL 1
//!   it does not arrive;
//! - (c) a peer pinned to address X keeps X while authenticated traffic arrives from
//!   another address (the far side moved): its replies go to X and pings fail;
//!   unpinned, it roams and pings pass.

use portdistrict_control::dataplane::{Dataplane as _, HandshakeSource, ShmClient};
use portdistrict_netns_tests::{
    assert_no_ping, assert_ping, wait_until, ChildGuard, Daemon, Implementation, Netns, TempDir,
    Veth,
};
use portdistrict_shm::Region;
use portdistrict_wg::config::{AllowedIpChange, ConfigChange, PeerChange, PeerSnapshot};
use portdistrict_wg::{PrivateKey, PublicKey};
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

/// Both dataplanes listen here (each in its own namespace).
const PORT: u16 = 51820;
/// The raw datagrams' destination port in `b`.
const LISTENER_PORT: u16 = 7777;
/// Stats are written back once a second; commands run at the next 100 ms tick.
const SETTLE: Duration = Duration::from_millis(1500);
const WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);

/// One side: a namespace behind the router, a dataplane programmed through its
/// region. Fields drop in order: the client, the dataplane, the link, the namespace.
struct Side {
    client: ShmClient,
    dp: Daemon,
    link: Veth,
    ns: Netns,
    key: PrivateKey,
    tunnel: Ipv4Addr,
    _dir: TempDir,
}

impl Side {
    fn new(role: &str, router: &Netns, subnet: u8, key: u8, tunnel: Ipv4Addr) -> Side {
        let (ns, link) = Netns::behind(role, router, subnet);
        let dir = TempDir::new(role);
        let path = dir.path().join("region.shm");
        let region = Region::create(&path, 8).expect("create the region");
        let shm = path.to_str().expect("utf-8 path");
        let dp = Daemon::start_with(&ns, Implementation::Uut, &["--shm", shm], &[]);
        let client = ShmClient::new(dp.ifname(), region);
        dp.add_address(&format!("{tunnel}/24"));
        dp.link_up();
        Side {
            client,
            dp,
            link,
            ns,
            key: PrivateKey::from_bytes([key; 32]),
            tunnel,
            _dir: dir,
        }
    }

    fn public(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The underlay address the dataplane is reached at.
    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.link.v4(1).into(), PORT)
    }

    /// Key, port and the one peer `other` (no keepalive), through shared memory.
    fn program(&mut self, other: &Side, endpoint: Option<SocketAddr>) {
        let mut p = PeerChange::new(other.public());
        p.endpoint = endpoint;
        p.persistent_keepalive_interval = Some(0);
        p.replace_allowed_ips = true;
        p.allowed_ips = vec![AllowedIpChange {
            addr: other.tunnel.into(),
            cidr: 32,
            remove: false,
        }];
        self.client
            .apply(&ConfigChange {
                private_key: Some(Some(self.key.clone())),
                listen_port: Some(PORT),
                peers: vec![p],
                ..ConfigChange::default()
            })
            .expect("program the dataplane through shared memory");
    }

    /// The peer as the statistics written back show it.
    fn peer(&mut self, key: &PublicKey) -> PeerSnapshot {
        self.client.peers().expect("read the region")[key].clone()
    }

    fn source(&mut self, key: &PublicKey) -> Option<HandshakeSource> {
        self.client.handshake_source(*key).expect("read the stats")
    }

    fn counter(&self, name: &str) -> u64 {
        self.dp
            .stats()
            .get(name)
            .copied()
            .unwrap_or_else(|| panic!("no {name} in the dataplane's stats"))
    }

    /// Waits until the dataplane has taken `n` commands from the ring.
    fn wait_commands(&self, n: u64) {
        assert!(
            wait_until(WAIT, POLL, || self.counter("shm_commands") >= n),
            "the dataplane took {} commands, expected {n}; log:\n{}",
            self.counter("shm_commands"),
            self.dp.log()
        );
        assert_eq!(self.counter("shm_command_failures"), 0, "{}", self.dp.log());
        assert_eq!(self.counter("shm_errors"), 0, "{}", self.dp.log());
    }
}

struct Lab {
    a: Side,
    b: Side,
    _router: Netns,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let router = Netns::new(&format!("{tag}-r"));
        router.enable_forwarding();
        let a = Side::new(
            &format!("{tag}-a"),
            &router,
            81,
            0x11,
            [10, 99, 0, 1].into(),
        );
        let b = Side::new(
            &format!("{tag}-b"),
            &router,
            82,
            0x22,
            [10, 99, 0, 2].into(),
        );
        Lab {
            a,
            b,
            _router: router,
        }
    }
}

#[test]
fn a_probe_with_ttl_1_dies_at_the_router_and_with_ttl_64_completes_a_handshake() {
    let mut lab = Lab::new("natp");
    let (a_key, b_key) = (lab.a.public(), lab.b.public());
    // A's endpoint for B is a "relay" nobody answers at; B knows no endpoint for A.
    let relay = SocketAddr::new(lab.b.link.v4(9).into(), 3478);
    let b_direct = lab.b.addr();
    let a_direct = lab.a.addr();
    lab.a.program(&lab.b, Some(relay));
    lab.b.program(&lab.a, None);

    lab.a.client.probe(b_key, b_direct, 1).unwrap();
    lab.a.wait_commands(1);
    std::thread::sleep(SETTLE);
    assert_eq!(lab.a.counter("tx_probe"), 1, "the probe left");
    let a_view = lab.a.peer(&b_key);
    assert_eq!(a_view.last_handshake, None, "TTL 1 reached nobody");
    assert_eq!(a_view.endpoint, Some(relay), "a probe leaves the endpoint");
    assert_eq!(lab.a.source(&b_key), None);
    assert_eq!(lab.b.source(&a_key), None, "B never saw the probe");

    lab.a.client.probe(b_key, b_direct, 64).unwrap();
    let answered = wait_until(WAIT, POLL, || {
        lab.a.peer(&b_key).last_handshake.is_some()
            && lab.a.source(&b_key).map(|s| s.addr) == Some(b_direct)
    });
    assert!(
        answered,
        "no handshake after a TTL-64 probe: A sees {:?}, source {:?}; log:\n{}",
        lab.a.peer(&b_key),
        lab.a.source(&b_key),
        lab.a.dp.log()
    );
    // B writes its stats back on its own second.
    let seen = wait_until(WAIT, POLL, || {
        lab.b.source(&a_key).map(|s| s.addr) == Some(a_direct)
    });
    assert!(
        seen,
        "B did not take the initiation from A's socket: {:?}",
        lab.b.source(&a_key)
    );
    // Not pinned: the response from B's address moved A's endpoint there, and the
    // tunnel carries traffic both ways.
    assert_eq!(lab.a.peer(&b_key).endpoint, Some(b_direct));
    assert_ping(&lab.a.ns, lab.b.tunnel.into(), 3);
    assert_ping(&lab.b.ns, lab.a.tunnel.into(), 3);
}

#[test]
fn a_probe_answered_while_pinned_to_a_relay_keeps_the_relay_until_unpinned() {
    let mut lab = Lab::new("natr");
    let b_key = lab.b.public();
    let relay = SocketAddr::new(lab.b.link.v4(9).into(), 3478);
    let b_direct = lab.b.addr();
    lab.a.program(&lab.b, None);
    lab.b.program(&lab.a, None);
    lab.a.client.pin(b_key, Some(relay)).unwrap();
    lab.a.client.probe(b_key, b_direct, 64).unwrap();
    lab.a.wait_commands(2);
    assert!(
        wait_until(WAIT, POLL, || lab.a.source(&b_key).map(|s| s.addr)
            == Some(b_direct)),
        "the direct answer is not in the stats; log:\n{}",
        lab.a.dp.log()
    );
    assert!(lab.a.peer(&b_key).last_handshake.is_some());
    assert_eq!(lab.a.peer(&b_key).endpoint, Some(relay), "still the relay");
    // A's packets go to the relay, which does not exist: nothing gets through.
    assert_no_ping(&lab.a.ns, None, lab.b.tunnel.into(), 2);
    // Unpinned, B's next packet (a ping from B: B knows A's address from the
    // initiation) moves A's endpoint to B, and A's own pings pass.
    lab.a.client.pin(b_key, None).unwrap();
    lab.a.wait_commands(3);
    assert_ping(&lab.b.ns, lab.a.tunnel.into(), 3);
    assert_ping(&lab.a.ns, lab.b.tunnel.into(), 3);
    std::thread::sleep(SETTLE);
    assert_eq!(lab.a.peer(&b_key).endpoint, Some(b_direct));
}

/// Receives UDP on `0.0.0.0:port` for `secs` seconds; prints `ready`, then one line
/// `SRC_IP SRC_PORT TTL HEX` per datagram (TTL as received, IP_RECVTTL).
const LISTENER: &str = r#"
import select, socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL
s.bind(("0.0.0.0", port))
print("ready", flush=True)
end = time.time() + secs
while True:
    left = end - time.time()
    if left <= 0 or not select.select([s], [], [], left)[0]:
        break
    data, anc, _, src = s.recvmsg(256, socket.CMSG_SPACE(4))
    ttl = -1
    for level, kind, d in anc:
        if level == socket.IPPROTO_IP and kind == socket.IP_TTL:
            ttl = int.from_bytes(d[:4], sys.byteorder)
    print(src[0], src[1], ttl, data.hex(), flush=True)
"#;

/// One datagram the listener got.
#[derive(Debug, PartialEq, Eq)]
struct Got {
    from: SocketAddr,
    ttl: i32,
    payload: Vec<u8>,
}

/// Runs the listener in `ns` while `during` runs, and returns what it received.
fn listen(ns: &Netns, secs: u32, during: impl FnOnce()) -> Vec<Got> {
    let mut cmd = ns.command(&[
        "python3",
        "-c",
        LISTENER,
        &LISTENER_PORT.to_string(),
        &secs.to_string(),
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut guard = ChildGuard::spawn("UDP listener", &mut cmd);
    let mut stdout = guard.child_mut().stdout.take().expect("piped");
    let mut ready = [0u8; 6];
    stdout.read_exact(&mut ready).expect("listener output");
    assert_eq!(&ready, b"ready\n", "the listener did not start");
    during();
    guard.expect_success_within(Duration::from_secs(u64::from(secs) + 5));
    let mut out = String::new();
    stdout.read_to_string(&mut out).expect("listener output");
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() == 4 || f.len() == 3, "listener line {l:?}");
            Got {
                from: SocketAddr::new(f[0].parse().unwrap(), f[1].parse().unwrap()),
                ttl: f[2].parse().unwrap(),
                payload: f.get(3).map_or(Vec::new(), |h| hex(h)),
            }
        })
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_raw_datagram_leaves_the_dataplane_port_with_its_payload_and_ttl() {
    let mut lab = Lab::new("nats");
    lab.a.program(&lab.b, None);
    lab.b.program(&lab.a, None);
    let to = SocketAddr::new(lab.b.link.v4(1).into(), LISTENER_PORT);
    let full: Vec<u8> = (0..64).collect();
    let got = listen(&lab.b.ns, 3, || {
        let c = &mut lab.a.client;
        c.send_raw(to, 1, b"dies at the router").unwrap();
        c.send_raw(to, 2, b"one hop left").unwrap();
        c.send_raw(to, 0, &full).unwrap();
        assert!(c.send_raw(to, 0, &[0; 65]).is_err(), "65 bytes are refused");
    });
    let from = SocketAddr::new(IpAddr::V4(lab.a.link.v4(1)), PORT);
    assert_eq!(
        got,
        [
            Got {
                from,
                ttl: 1,
                payload: b"one hop left".to_vec()
            },
            Got {
                from,
                ttl: 63,
                payload: full
            },
        ],
        "TTL 1 dies at the router; TTL 2 arrives with 1 left; 0 is the default (64)"
    );
    lab.a.wait_commands(3);
}

#[test]
fn a_pinned_endpoint_stays_while_the_peer_moves_and_roams_once_unpinned() {
    let mut lab = Lab::new("natm");
    let a_key = lab.a.public();
    let a_old = lab.a.addr();
    let a_new = SocketAddr::new(lab.a.link.v4(3).into(), PORT);
    lab.a.program(&lab.b, Some(lab.b.addr()));
    lab.b.program(&lab.a, None);
    assert_ping(&lab.a.ns, lab.b.tunnel.into(), 2);
    std::thread::sleep(SETTLE);
    assert_eq!(lab.b.peer(&a_key).endpoint, Some(a_old));
    lab.b.client.pin(a_key, Some(a_old)).unwrap();
    lab.b.wait_commands(1);

    // A moves to a new address (delete first: a second address in the same /24
    // would be a secondary, removed with the primary).
    let veth = lab.a.link.a_name().to_owned();
    let router = lab.a.link.v4(2).to_string();
    let ns = &lab.a.ns;
    ns.exec(&[
        "ip",
        "addr",
        "del",
        &format!("{}/24", a_old.ip()),
        "dev",
        &veth,
    ]);
    ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", a_new.ip()),
        "dev",
        &veth,
    ]);
    ns.exec(&["ip", "route", "replace", "default", "via", &router]);

    // A's pings reach B from the new address, authenticated; B's replies go to the
    // pinned, now dead, address.
    let rx_before = lab.b.peer(&a_key).rx_bytes;
    assert_no_ping(&lab.a.ns, None, lab.b.tunnel.into(), 3);
    std::thread::sleep(SETTLE);
    let b_view = lab.b.peer(&a_key);
    assert!(
        b_view.rx_bytes > rx_before,
        "A's packets from {a_new} did not reach B ({} -> {} bytes)",
        rx_before,
        b_view.rx_bytes
    );
    assert_eq!(b_view.endpoint, Some(a_old), "pinned: no roaming");

    // Unpinned: the next packet from A moves B's endpoint, and pings pass.
    lab.b.client.pin(a_key, None).unwrap();
    lab.b.wait_commands(2);
    assert_ping(&lab.a.ns, lab.b.tunnel.into(), 3);
    std::thread::sleep(SETTLE);
    assert_eq!(lab.b.peer(&a_key).endpoint, Some(a_new), "roamed");
}
