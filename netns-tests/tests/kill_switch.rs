//! The consumer kill switch of `exitnode`, applied with real nftables in a namespace
//! and judged by traffic. A consumer namespace has an uplink veth to an "internet"
//! namespace (where the provider's WireGuard endpoint is) and a second veth that
//! stands in for the tunnel interface, to a "provider" namespace holding the tunnel
//! resolver. The first test applies only the ruleset: what it lets out and in is the
//! question. The second applies the whole plan (ruleset, sysctl, fwmark rules and the
//! tunnel's default route), checks that traffic to a far address now takes the
//! tunnel, and that undoing it restores `ip rule`, every routing table, the nftables
//! ruleset and the sysctl exactly, as does a plan that fails half-way.

use portdistrict_exitnode::apply::{
    apply_nft, apply_plan, remove_nft, undo_plan, ApplyError, Undo,
};
use portdistrict_exitnode::policy::{ConsumerPolicy, KILL_SWITCH_TABLE};
use portdistrict_exitnode::policy::{IpOp, Object, RouteOp, Table, Verb};
use portdistrict_netns_tests::exit::network_snapshot;
use portdistrict_netns_tests::{assert_no_ping, assert_ping, wait_until, Family, Netns, Veth};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Stdio};
use std::time::Duration;

const MARK: u32 = 0xca6c;

/// Counts UDP datagrams arriving on `addr:port` for 1 s (the sender starts once it is
/// ready), then prints the count.
const UDP_COUNT: &str = r#"
import socket, sys, time
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, port))
print("ready", flush=True)
s.settimeout(0.2)
n, end = 0, time.time() + 1
while time.time() < end:
    try:
        s.recv(2048)
        n += 1
    except socket.timeout:
        pass
print(n, flush=True)
"#;

/// Sends 5 datagrams to `addr:port` with firewall mark `mark` (0: none), from source
/// port `argv[4]` when given; prints how many the kernel accepted (a netfilter drop
/// on output fails the send with EPERM).
const UDP_SEND: &str = r#"
import socket, sys
addr, port, mark = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
if len(sys.argv) > 4:
    s.bind(("::" if ":" in addr else "0.0.0.0", int(sys.argv[4])))
if mark:
    s.setsockopt(socket.SOL_SOCKET, 36, mark)  # SO_MARK
ok = 0
for _ in range(5):
    try:
        s.sendto(b"x" * 32, (addr, port))
        ok += 1
    except OSError:
        pass
print(ok)
"#;

/// A UDP counter running in a namespace; `count` ends it and returns its count.
struct Counter(Child);

impl Counter {
    fn start(ns: &Netns, addr: IpAddr, port: u16) -> Counter {
        let (a, p) = (addr.to_string(), port.to_string());
        let mut child = ns
            .command(&["python3", "-c", UDP_COUNT, &a, &p])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        let stdout = child.stdout.as_mut().expect("piped");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("counter output");
        assert_eq!(line.trim(), "ready", "UDP counter on {a}:{p} did not start");
        Counter(child)
    }

    fn count(mut self) -> u32 {
        let out = std::mem::replace(&mut self.0, spawn_true())
            .wait_with_output()
            .expect("counter");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("counter printed {out:?}"))
    }
}

fn spawn_true() -> Child {
    std::process::Command::new("true").spawn().expect("true")
}

impl Drop for Counter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends 5 datagrams from `from` to `to` with `mark`, and returns how many arrived.
fn udp(from: &Netns, to_ns: &Netns, to: SocketAddr, mark: u32) -> u32 {
    udp_from_port(from, to_ns, to, mark, None)
}

/// [`udp`], sent from source port `sport` when given.
fn udp_from_port(
    from: &Netns,
    to_ns: &Netns,
    to: SocketAddr,
    mark: u32,
    sport: Option<u16>,
) -> u32 {
    let counter = Counter::start(to_ns, to.ip(), to.port());
    let (a, p, m) = (to.ip().to_string(), to.port().to_string(), mark.to_string());
    let s = sport.map(|s| s.to_string()).unwrap_or_default();
    let mut argv = vec!["python3", "-c", UDP_SEND, &a, &p, &m];
    if sport.is_some() {
        argv.push(&s);
    }
    from.exec(&argv);
    counter.count()
}

#[test]
fn kill_switch_lets_out_only_the_tunnel_and_marked_wireguard() {
    let consumer = Netns::new("ks-consumer");
    let internet = Netns::new("ks-internet");
    let provider = Netns::new("ks-provider");
    let uplink = Veth::new(&consumer, &internet, 31);
    let tunnel = Veth::new(&consumer, &provider, 32);
    // A second address behind the "tunnel" that is not the resolver.
    let other = "10.77.32.3";
    provider.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{other}/24"),
        "dev",
        tunnel.b_name(),
    ]);

    let endpoint4 = SocketAddr::new(uplink.b_addr(Family::V4), 51820);
    let endpoint6 = SocketAddr::new(uplink.b_addr(Family::V6), 51820);
    let resolver = tunnel.b_addr(Family::V4);
    let policy = ConsumerPolicy {
        tunnel: tunnel.a_name().to_owned(),
        fwmark: MARK,
        table: 51820,
        endpoints: vec![endpoint4, endpoint6],
        channel_port: None,
        inner_v4: tunnel.v4(1),
        inner_v6: Some(tunnel.v6(1)),
        resolver,
        allow_lan: false,
    };
    let plan = policy.plan().expect("valid policy");
    // Applied from a thread inside the consumer's namespace.
    let inside = |f: &(dyn Fn() -> Result<(), ApplyError> + Sync)| {
        portdistrict_netlink::netns::run_in(consumer.name(), f).expect("entering the namespace")
    };

    // Before: the uplink is open.
    assert_ping(&consumer, uplink.b_addr(Family::V4), 1);
    assert_eq!(
        udp(
            &consumer,
            &internet,
            SocketAddr::new(uplink.b_addr(Family::V4), 53),
            0
        ),
        5
    );

    inside(&|| apply_nft(&plan)).expect("applying the kill switch");
    // Applying again replaces the table (idempotent) and still verifies.
    inside(&|| apply_nft(&plan)).expect("re-applying the kill switch");

    // Nothing but marked WireGuard to the endpoints leaves by the uplink.
    for family in Family::ALL {
        assert_no_ping(&consumer, None, uplink.b_addr(family), 2);
    }
    for ep in [endpoint4, endpoint6] {
        assert_eq!(udp(&consumer, &internet, ep, 0), 0, "unmarked UDP to {ep}");
        assert_eq!(
            udp(&consumer, &internet, ep, MARK),
            5,
            "marked WireGuard to {ep}"
        );
        let dns = SocketAddr::new(ep.ip(), 53);
        assert_eq!(
            udp(&consumer, &internet, dns, MARK),
            0,
            "marked DNS to {dns}"
        );
        let other_port = SocketAddr::new(ep.ip(), 51821);
        assert_eq!(
            udp(&consumer, &internet, other_port, MARK),
            0,
            "marked UDP to {other_port}"
        );
    }

    // The DHCP and DHCPv6 holes are no way out: from the client ports to a server port
    // at an address beyond the link (here: the other end of the uplink, unicast)
    // nothing leaves; only broadcasts / link-scope groups would.
    for (family, sport, dport) in [(Family::V4, 68, 67), (Family::V6, 546, 547)] {
        let to = SocketAddr::new(uplink.b_addr(family), dport);
        assert_eq!(
            udp_from_port(&consumer, &internet, to, 0, Some(sport)),
            0,
            "UDP from port {sport} to {to} left through the DHCP hole"
        );
    }

    // Through the tunnel: everything, but DNS only to the resolver.
    assert_ping(&consumer, resolver, 2);
    assert_eq!(
        udp(&consumer, &provider, SocketAddr::new(resolver, 53), 0),
        5
    );
    let other_ip: IpAddr = other.parse().unwrap();
    assert_eq!(
        udp(&consumer, &provider, SocketAddr::new(other_ip, 53), 0),
        0,
        "DNS elsewhere"
    );
    assert_eq!(
        udp(&consumer, &provider, SocketAddr::new(other_ip, 5000), 0),
        5
    );

    // CVE-2019-14899: the tunnel address probed through the uplink gets no answer.
    internet.exec(&[
        "ip",
        "route",
        "add",
        "10.77.32.0/24",
        "via",
        &uplink.a_addr(Family::V4).to_string(),
    ]);
    assert_no_ping(&internet, None, tunnel.a_addr(Family::V4), 2);

    // Removing the table opens the machine again (and proves it was the table).
    inside(&|| remove_nft(KILL_SWITCH_TABLE)).expect("removing the kill switch");
    inside(&|| remove_nft(KILL_SWITCH_TABLE)).expect("removing twice is no error");
    assert_ping(&consumer, uplink.b_addr(Family::V4), 1);
    assert_ping(&internet, tunnel.a_addr(Family::V4), 1);
}

/// Everything `use off` must put back exactly, read in the consumer namespace.
fn snapshot(ns: &Netns) -> String {
    network_snapshot(ns, &[])
}

#[test]
fn system_mode_routes_everything_into_the_tunnel_and_off_restores_exactly() {
    let consumer = Netns::new("sm-consumer");
    let internet = Netns::new("sm-internet");
    let provider = Netns::new("sm-provider");
    let uplink = Veth::new(&consumer, &internet, 33);
    let tunnel = Veth::new(&consumer, &provider, 34);
    // A far-away address: on the internet side (reached by the default route) and on
    // the provider side (what the tunnel leads to).
    let far = "198.18.0.1";
    for ns in [&internet, &provider] {
        ns.exec(&["ip", "addr", "add", &format!("{far}/32"), "dev", "lo"]);
    }
    let gw = uplink.b_addr(Family::V4).to_string();
    consumer.exec(&["ip", "route", "add", "default", "via", &gw]);
    provider.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &tunnel.a_addr(Family::V4).to_string(),
    ]);
    let far_ep = SocketAddr::new(far.parse().unwrap(), 7000);

    // Before: the far address is the internet's.
    assert_eq!(udp(&consumer, &internet, far_ep, 0), 5);
    // Link-local IPv6 addresses appear when DAD ends: let them settle first, or they
    // would show up as a difference that is not ours.
    let settled = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        [uplink.a_name(), tunnel.a_name()].iter().all(|dev| {
            let out = consumer.exec(&["ip", "-6", "addr", "show", "dev", dev, "scope", "link"]);
            out.contains("fe80::") && !out.contains("tentative")
        })
    });
    assert!(settled, "link-local addresses did not settle");
    let before = snapshot(&consumer);

    let policy = ConsumerPolicy {
        tunnel: tunnel.a_name().to_owned(),
        fwmark: MARK,
        table: 51820,
        endpoints: vec![SocketAddr::new(uplink.b_addr(Family::V4), 51820)],
        channel_port: None,
        inner_v4: tunnel.v4(1),
        inner_v6: None,
        resolver: tunnel.b_addr(Family::V4),
        allow_lan: false,
    };
    let plan = policy.plan().expect("valid policy");
    let inside = |f: &(dyn Fn() -> Result<Undo, ApplyError> + Sync)| {
        portdistrict_netlink::netns::run_in(consumer.name(), f).expect("entering the namespace")
    };
    let undo = inside(&|| apply_plan(&plan)).expect("system mode on");
    // The way back survives a round trip through its state-file form.
    let text = serde_json::to_string(&undo).unwrap();
    let undo: Undo = serde_json::from_str(&text).unwrap();
    assert_ne!(snapshot(&consumer), before);

    // Unmarked traffic to the far address goes into the tunnel, not out the uplink.
    assert_eq!(
        udp(&consumer, &internet, far_ep, 0),
        0,
        "leaked to the internet"
    );
    assert_eq!(
        udp(&consumer, &provider, far_ep, 0),
        5,
        "not through the tunnel"
    );
    // Marked WireGuard still takes the direct path to the provider's endpoint.
    let ep = SocketAddr::new(uplink.b_addr(Family::V4), 51820);
    assert_eq!(udp(&consumer, &internet, ep, MARK), 5);
    // IPv6 is not offered: blocked, not leaked.
    assert_no_ping(&consumer, None, uplink.b_addr(Family::V6), 2);

    // A plan that fails half-way (a route into a missing device) changes nothing.
    let mut bad = plan.clone();
    bad.ip.push(IpOp::new(
        Verb::Add,
        Object::Route(RouteOp {
            family: portdistrict_exitnode::policy::Family::V4,
            dst: Some("192.0.2.0/24".parse().unwrap()),
            dev: "pdnosuchdev".into(),
            table: Table::Id(51821),
        }),
    ));
    let applied = snapshot(&consumer);
    // Applying on top of itself: the rules already exist, so it fails and rolls back
    // only its own steps... which would remove ours too; use a second table instead.
    portdistrict_netlink::netns::run_in(consumer.name(), || undo_plan(&undo))
        .expect("entering the namespace")
        .expect("system mode off");
    assert_eq!(snapshot(&consumer), before, "use off must restore exactly");
    assert!(inside(&|| apply_plan(&bad)).is_err());
    assert_eq!(
        snapshot(&consumer),
        before,
        "a failed apply must change nothing"
    );
    assert_ne!(applied, before);

    // And traffic is back on the uplink.
    assert_eq!(udp(&consumer, &internet, far_ep, 0), 5);
}
