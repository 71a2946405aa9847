//! `portdistrict facilitator serve` as a process on loopback, driven by two nodes
//! built from the same WireGuard core the dataplane runs (each a UDP socket and an
//! in-process device whose peer is the facilitator): admission by handshake, mutual
//! introductions with the mapped endpoints, relay allocation, forwarding only between
//! the bound sources, counted drops of garbage and floods, `facilitator show`.

use portdistrict_control::facilitator::inner;
use portdistrict_control_core::nat::addr;
use portdistrict_control_core::nat::relay::bind_datagram;
use portdistrict_control_core::nat::wire::Message;
use portdistrict_wg::config::{AllowedIpChange, ConfigChange, PeerChange};
use portdistrict_wg::device::{Device, Io, SendOutcome};
use portdistrict_wg::peer::Endpoint;
use portdistrict_wg::{PrivateKey, PublicKey};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Out<'a> {
    sock: &'a UdpSocket,
    inner: Vec<Vec<u8>>,
}

impl Io for Out<'_> {
    fn send_udp(&mut self, to: &Endpoint, d: &[u8]) -> SendOutcome {
        match self.sock.send_to(d, to.addr) {
            Ok(_) => SendOutcome::Sent,
            Err(_) => SendOutcome::Failed,
        }
    }
    fn write_tun(&mut self, p: &[u8]) {
        self.inner.push(p.to_vec());
    }
}

/// A node: its WireGuard key, its socket, a device whose one peer is the facilitator.
struct Node {
    key: PrivateKey,
    sock: UdpSocket,
    dev: Device,
    /// Messages received and not yet looked at.
    pending: std::collections::VecDeque<Message>,
    /// The last message looked at: introductions and relays come twice.
    last: Option<Message>,
}

impl Node {
    fn new(seed: u8, facilitator: SocketAddr, fkey: PublicKey) -> Node {
        let key = PrivateKey::from_bytes([seed; 32]);
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut dev = Device::new(
            [seed; 32],
            (Instant::now(), Duration::from_secs(1_800_000_000)),
            1420,
        );
        let mut out = Out {
            sock: &sock,
            inner: Vec::new(),
        };
        dev.apply(
            Instant::now(),
            &ConfigChange {
                private_key: Some(Some(key.clone())),
                peers: vec![PeerChange {
                    endpoint: Some(facilitator),
                    allowed_ips: vec![AllowedIpChange {
                        addr: IpAddr::V6(addr::FACILITATOR),
                        cidr: 128,
                        remove: false,
                    }],
                    ..PeerChange::new(fkey)
                }],
                ..ConfigChange::default()
            },
            &mut out,
        );
        Node {
            key,
            sock,
            dev,
            pending: Default::default(),
            last: None,
        }
    }

    fn public(&self) -> PublicKey {
        self.key.public_key()
    }

    fn mapped(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Sends `m` to the facilitator through the tunnel.
    fn ask(&mut self, m: &Message) {
        let p = inner::build(
            (addr::node(&self.public()), addr::PORT),
            (addr::FACILITATOR, addr::PORT),
            &m.emit(),
        );
        let mut out = Out {
            sock: &self.sock,
            inner: Vec::new(),
        };
        self.dev.handle_tun_packet(Instant::now(), &p, &mut out);
    }

    /// Runs the device until a facilitator message arrives or `limit` passes.
    fn answer(&mut self, limit: Duration) -> Option<Message> {
        let end = Instant::now() + limit;
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            let mut out = Out {
                sock: &self.sock,
                inner: Vec::new(),
            };
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                self.dev
                    .handle_datagram(Instant::now(), from, None, &mut buf[..n], &mut out);
            }
            self.dev.handle_timeout(Instant::now(), &mut out);
            for p in out.inner {
                let d = inner::parse(&p).expect("the facilitator sends IPv6/UDP");
                assert_eq!(d.src, (addr::FACILITATOR, addr::PORT));
                assert_eq!(d.dst, (addr::node(&self.public()), addr::PORT));
                self.pending
                    .push_back(Message::parse(d.payload).expect("a facilitator message"));
            }
            while let Some(m) = self.pending.pop_front() {
                if self.last.as_ref() == Some(&m) {
                    continue;
                }
                self.last = Some(m.clone());
                return Some(m);
            }
        }
        None
    }
}

struct Served {
    child: Child,
    dir: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portdistrict"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args(args)
        .output()
        .unwrap()
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn stats(dir: &Path) -> serde_json::Value {
    let path = dir.join("run/facilitator-stats.json");
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
        {
            return v;
        }
        assert!(Instant::now() < end, "no stats file");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) until the stats say `field` >= `want`.
fn stat_reaches(dir: &Path, field: &str, want: u64) -> u64 {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let v = stats(dir)[field].as_u64().unwrap_or(0);
        if v >= want || Instant::now() > end {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn facilitator_introduces_relays_and_drops_what_it_must() {
    let dir = std::env::temp_dir().join(format!("pd-facilitator-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Bad options are refused before anything starts.
    let bad = cli(
        &dir,
        &[
            "facilitator",
            "serve",
            "--listen",
            "127.0.0.1:7000",
            "--relay-ports",
            "7000-6000",
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--relay-ports 7000-6000"));
    let bad = cli(
        &dir,
        &[
            "facilitator",
            "serve",
            "--listen",
            "0.0.0.0:7000",
            "--relay-ports",
            "41000-41009",
        ],
    );
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("needs the public address"),
        "{bad:?}"
    );

    let port = free_port();
    let lo = 20_000 + (std::process::id() % 20_000) as u16;
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_portdistrict"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args(["facilitator", "serve", "--listen", &listen.to_string()])
        .args([
            "--relay-ports",
            &format!("{lo}-{}", lo + 9),
            "--relay-rate",
            "200000",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _served = Served {
        child,
        dir: dir.clone(),
    };
    stats(&dir);
    let show = cli(&dir, &["facilitator", "show", "--json"]);
    assert!(show.status.success(), "{show:?}");
    let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(show["listen"], listen.to_string());
    let fkey = PublicKey::from_base64(show["public_key"].as_str().unwrap()).unwrap();
    let key_mode = std::fs::metadata(dir.join("state/facilitator/key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );

    // `netcheck` completes a WireGuard handshake with it; with another key it cannot.
    let check = |key: &PublicKey| -> serde_json::Value {
        let spec = format!("{listen}:{}", key.to_base64());
        let out = cli(&dir, &["netcheck", "--facilitator", &spec, "--json"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["facilitator"].clone()
    };
    let good = check(&fkey);
    assert_eq!(good["reachable"], true, "{good}");
    assert!(good["rtt_ms"].as_f64().unwrap() < 1000.0, "{good}");
    let wrong = check(&PrivateKey::from_bytes([9; 32]).public_key());
    assert_eq!(wrong["reachable"], false, "{wrong}");
    assert!(
        wrong["error"]
            .as_str()
            .unwrap()
            .contains("another public key"),
        "{wrong}"
    );

    let mut a = Node::new(1, listen, fkey);
    let mut b = Node::new(2, listen, fkey);
    let (ka, kb) = (a.public(), b.public());
    let published: SocketAddr = "192.168.10.2:51820".parse().unwrap();

    // A asks first: it waits. Then B asks: both are introduced, each with the other's
    // mapped endpoint (the socket the facilitator saw) first.
    a.ask(&Message::Meet {
        peer: kb.0,
        published: vec![published],
    });
    assert_eq!(
        a.answer(Duration::from_secs(5)),
        Some(Message::Waiting { peer: kb.0 })
    );
    b.ask(&Message::Meet {
        peer: ka.0,
        published: vec![],
    });
    let got = b.answer(Duration::from_secs(5));
    let Some(Message::Introduce {
        peer,
        endpoints,
        start_in_ms,
        ..
    }) = got
    else {
        panic!("B is introduced to A: {got:?} {}", stats(&dir))
    };
    assert_eq!(
        (peer, endpoints, start_in_ms),
        (ka.0, vec![a.mapped(), published], 2000)
    );
    let Some(Message::Introduce {
        peer, endpoints, ..
    }) = a.answer(Duration::from_secs(5))
    else {
        panic!("A is introduced to B (pushed)")
    };
    assert_eq!((peer, endpoints), (kb.0, vec![b.mapped()]));

    // A third node asking for A learns nothing about it.
    let mut c = Node::new(3, listen, fkey);
    c.ask(&Message::Meet {
        peer: ka.0,
        published: vec![],
    });
    assert_eq!(
        c.answer(Duration::from_secs(5)),
        Some(Message::Waiting { peer: ka.0 })
    );

    // The relay: both ask, each gets its own port and token.
    a.ask(&Message::RelayAsk { peer: kb.0 });
    assert_eq!(
        a.answer(Duration::from_secs(5)),
        Some(Message::Waiting { peer: kb.0 })
    );
    b.ask(&Message::RelayAsk { peer: ka.0 });
    let Some(Message::Relay {
        relay: rb,
        token: tb,
        ..
    }) = b.answer(Duration::from_secs(5))
    else {
        panic!("B gets a relay")
    };
    let Some(Message::Relay {
        relay: ra,
        token: ta,
        ..
    }) = a.answer(Duration::from_secs(5))
    else {
        panic!("A gets a relay")
    };
    assert_ne!(ra, rb);
    assert!((lo..=lo + 9).contains(&ra.port()) && (lo..=lo + 9).contains(&rb.port()));
    // Bind both sources (from the nodes' own sockets), then datagrams go across
    // byte for byte, both ways.
    a.sock.send_to(&bind_datagram(&ta), ra).unwrap();
    b.sock.send_to(&bind_datagram(&tb), rb).unwrap();
    assert_eq!(stat_reaches(&dir, "relay_bound", 2), 2);
    let mut buf = [0u8; 2048];
    let payload = b"\x04\0\0\0 already encrypted bytes";
    a.sock.send_to(payload, ra).unwrap();
    let (n, from) = recv_skipping_wg(&b.sock, listen, &mut buf);
    assert_eq!((&buf[..n], from), (&payload[..], rb));
    b.sock.send_to(b"\x04\0\0\0back", rb).unwrap();
    let (n, from) = recv_skipping_wg(&a.sock, listen, &mut buf);
    assert_eq!((&buf[..n], from), (&b"\x04\0\0\0back"[..], ra));
    // An unregistered source (even with the wrong token) gets nothing through.
    let evil = UdpSocket::bind("127.0.0.1:0").unwrap();
    evil.send_to(&bind_datagram(&[0; 16]), ra).unwrap();
    evil.send_to(b"\x04\0\0\0inject", ra).unwrap();
    assert!(stat_reaches(&dir, "relay_unregistered", 2) >= 2);
    b.sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        recv_skipping_wg(&b.sock, listen, &mut buf).0 == 0,
        "an unregistered source's datagram was forwarded"
    );
    // The allocation's rate (200 kB/s) holds: a burst of 1 MB mostly drops.
    let big = [4u8; 1000];
    let before = stats(&dir)["relay_forwarded_bytes"].as_u64().unwrap();
    let start = Instant::now();
    for i in 0..1000 {
        let _ = a.sock.send_to(&big, ra);
        // Paced, so that the relay's socket buffer does not drop them first.
        if i % 20 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let limited = stat_reaches(&dir, "relay_rate_limited", 500);
    let forwarded = stats(&dir)["relay_forwarded_bytes"].as_u64().unwrap() - before;
    let allowed = 200_000 + (start.elapsed().as_secs_f64() * 200_000.0) as u64 + 2_000;
    assert!(limited >= 500, "only {limited} datagrams rate limited");
    assert!(
        forwarded <= allowed,
        "{forwarded} bytes forwarded, {allowed} allowed"
    );

    // Garbage on the WireGuard port and malformed requests through the tunnel are
    // counted; the facilitator answers the next request as before.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u8 {
        let _ = junk.send_to(&[i; 148], listen);
    }
    let p = inner::build(
        (addr::node(&ka), addr::PORT),
        (addr::FACILITATOR, addr::PORT),
        b"not a request",
    );
    let mut out = Out {
        sock: &a.sock,
        inner: Vec::new(),
    };
    a.dev.handle_tun_packet(Instant::now(), &p, &mut out);
    assert!(stat_reaches(&dir, "malformed", 1) >= 1);
    let wg = &stats(&dir)["wireguard"];
    assert!(
        wg["rx_malformed"].as_u64().unwrap() + wg["rx_bad_mac1"].as_u64().unwrap() >= 200,
        "{wg}"
    );
    a.ask(&Message::Meet {
        peer: kb.0,
        published: vec![],
    });
    let got = a.answer(Duration::from_secs(5));
    assert_eq!(
        got,
        Some(Message::Waiting { peer: kb.0 }),
        "{}",
        stats(&dir)
    );
    let s = stats(&dir);
    assert_eq!(s["introductions"], 1);
    assert_eq!(s["relays"], 1);
    // netcheck's throwaway key is one of them until its 30 s grace ends.
    assert_eq!(s["nodes"], 4);
}

/// The next datagram that does not come from the facilitator's WireGuard port (its
/// session with the node sends there too): (0, any) on timeout.
fn recv_skipping_wg(sock: &UdpSocket, listen: SocketAddr, buf: &mut [u8]) -> (usize, SocketAddr) {
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        match sock.recv_from(buf) {
            Ok((n, from)) if from != listen => return (n, from),
            Ok(_) => {}
            Err(_) => {}
        }
    }
    (0, "0.0.0.0:0".parse().unwrap())
}
