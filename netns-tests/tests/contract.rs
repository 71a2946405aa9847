//! The rest of the process contract, each checked by traffic: bad datagrams on the
//! listen port are dropped and counted while the tunnel keeps working; listen-port
//! and fwmark changes at run time; the sticky source address is re-selected when it
//! disappears; a malformed UAPI request changes nothing; UAPI scales to 100k
//! AllowedIPs. Drop counters come from `portdistrict-dataplane --stats IFNAME`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use portdistrict_netns_tests::{
    assert_no_ping, assert_ping, wait_until, Daemon, Family, Pair, PairOptions,
};

fn stats(d: &Daemon) -> HashMap<String, u64> {
    d.stats()
}

fn uapi(d: &Daemon, request: &str) -> String {
    let mut s = UnixStream::connect(d.socket_path()).expect("connect to the UAPI socket");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write request");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read reply");
    out
}

/// Python that sends `count` datagrams shaped by `kind` to `addr`:`port`.
const JUNK: &str = r#"
import os, random, socket, sys
addr, port, kind, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
rnd = random.Random(1234)
for i in range(count):
    if kind == 'random':
        d = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 300)))
    elif kind == 'truncated':
        t = rnd.randint(1, 4)
        d = bytes([t, 0, 0, 0]) + os.urandom(rnd.randint(0, {1: 143, 2: 87, 3: 59, 4: 27}[t]))
    elif kind == 'oversized':
        d = bytes([1, 0, 0, 0]) + os.urandom(60000)
    elif kind == 'badmac':
        d = bytes([1, 0, 0, 0]) + os.urandom(144)
    s.sendto(d, (addr, port))
"#;

fn send_junk(pair: &Pair, kind: &str, count: u32) {
    let dst = pair.endpoint_of(&pair.right, Family::V4);
    let (addr, port) = (dst.ip().to_string(), dst.port().to_string());
    let n = count.to_string();
    pair.left
        .ns
        .exec(&["python3", "-c", JUNK, &addr, &port, kind, &n]);
}

/// Sends every kind of junk at the right node's port; returns the counters before
/// and after (once `expect` of them moved).
fn junk_run(
    xdp: &str,
    expect: impl Fn(&HashMap<String, u64>, &HashMap<String, u64>) -> bool,
) -> (Pair, HashMap<String, u64>, HashMap<String, u64>) {
    let pair = Pair::new(&PairOptions {
        env: vec![("PD_XDP".into(), xdp.into())],
        ..PairOptions::default()
    });
    assert_ping(&pair.left.ns, pair.right.tunnel_addr(Family::V4), 2);
    if xdp != "off" {
        let attached = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            pair.right
                .daemon
                .stats_text()
                .get("xdp_interfaces")
                .is_some_and(|s| !s.is_empty())
        });
        assert!(
            attached,
            "XDP not attached; log:\n{}",
            pair.right.daemon.log()
        );
    }
    let before = stats(&pair.right.daemon);
    for (kind, count) in [
        ("random", 2000),
        ("truncated", 2000),
        ("oversized", 50),
        ("badmac", 500),
    ] {
        send_junk(&pair, kind, count);
    }
    let ok = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        expect(&before, &stats(&pair.right.daemon))
    });
    let after = stats(&pair.right.daemon);
    assert!(ok, "junk not counted: before {before:?} after {after:?}");
    // The daemon survived and the tunnel still carries traffic, both ways.
    assert_ping(&pair.left.ns, pair.right.tunnel_addr(Family::V4), 3);
    assert_ping(&pair.right.ns, pair.left.tunnel_addr(Family::V6), 3);
    (pair, before, after)
}

fn moved(before: &HashMap<String, u64>, after: &HashMap<String, u64>, keys: &[&str]) -> u64 {
    keys.iter()
        .map(|k| after.get(*k).unwrap_or(&0) - before.get(*k).unwrap_or(&0))
        .sum()
}

#[test]
fn bad_datagrams_are_dropped_counted_and_harmless() {
    // Without the XDP program: the user-space receive path judges everything.
    let (_pair, before, after) = junk_run("off", |b, a| {
        moved(b, a, &["rx_malformed", "rx_bad_mac1", "rx_unknown_index"]) >= 4500
    });
    // Random, truncated and oversized datagrams fail framing; well-framed
    // initiations with a forged MAC1 fail MAC1. Each one is counted.
    assert!(
        moved(&before, &after, &["rx_malformed"]) >= 4000,
        "{after:?}"
    );
    assert!(moved(&before, &after, &["rx_bad_mac1"]) >= 500, "{after:?}");
}

const XDP_DROPS: [&str; 4] = [
    "xdp_drop_truncated",
    "xdp_drop_bad_type",
    "xdp_drop_bad_length",
    "xdp_drop_unknown_receiver",
];

#[test]
fn bad_datagrams_die_in_the_kernel_with_the_xdp_filter() {
    let (_pair, before, after) = junk_run("filter", |b, a| {
        moved(b, a, &XDP_DROPS) >= 4000 && moved(b, a, &["rx_bad_mac1"]) >= 500
    });
    // What is not WireGuard (random, truncated, the first fragment of an oversized
    // initiation) is dropped by the program and never reaches user space; the
    // well-framed initiations pass and fail MAC1 there.
    assert_eq!(moved(&before, &after, &["rx_malformed"]), 0, "{after:?}");
    assert!(moved(&before, &after, &XDP_DROPS) >= 4000, "{after:?}");
    assert!(
        moved(&before, &after, &["xdp_drop_bad_length"]) >= 50,
        "{after:?}"
    );
    assert!(moved(&before, &after, &["rx_bad_mac1"]) >= 500, "{after:?}");
}

#[test]
fn listen_port_changes_at_run_time() {
    let pair = Pair::new(&PairOptions::default());
    assert_ping(&pair.right.ns, pair.left.tunnel_addr(Family::V4), 2);
    pair.right.daemon.set(&["listen-port", "40123"]);
    assert_eq!(pair.right.daemon.show("listen-port").trim(), "40123");
    let bound = pair.right.ns.exec(&["ss", "-Hnul"]);
    assert!(bound.contains(":40123"), "new port not bound: {bound}");
    assert!(
        !bound.contains(&format!(":{} ", pair.right.port)),
        "old port still bound: {bound}"
    );
    // Right talks first from its new port; left follows it (roaming) and replies.
    assert_ping(&pair.right.ns, pair.left.tunnel_addr(Family::V4), 3);
    let eps = pair.left.daemon.show("endpoints");
    assert!(
        eps.contains(":40123"),
        "left did not follow the new port: {eps}"
    );
    assert_ping(&pair.left.ns, pair.right.tunnel_addr(Family::V6), 3);
}

#[test]
fn fwmark_applies_to_the_udp_sockets() {
    let pair = Pair::new(&PairOptions::default());
    assert_ping(&pair.right.ns, pair.left.tunnel_addr(Family::V4), 2);
    // Marked packets are routed into a blackhole table.
    let ns = &pair.right.ns;
    ns.exec(&[
        "ip",
        "route",
        "add",
        "blackhole",
        "default",
        "table",
        "4242",
    ]);
    ns.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "blackhole",
        "default",
        "table",
        "4242",
    ]);
    ns.exec(&["ip", "rule", "add", "fwmark", "0x4242", "lookup", "4242"]);
    ns.exec(&[
        "ip", "-6", "rule", "add", "fwmark", "0x4242", "lookup", "4242",
    ]);
    pair.right.daemon.set(&["fwmark", "0x4242"]);
    assert_eq!(pair.right.daemon.show("fwmark").trim(), "0x4242");
    assert_no_ping(ns, None, pair.left.tunnel_addr(Family::V4), 3);
    pair.right.daemon.set(&["fwmark", "0"]);
    assert_ping(ns, pair.left.tunnel_addr(Family::V4), 3);
}

#[test]
fn source_address_is_reselected_when_it_disappears() {
    let pair = Pair::new(&PairOptions::default());
    let right_veth = pair.veth.b_name().to_string();
    let extra = "10.77.1.3";
    pair.right.ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{extra}/24"),
        "dev",
        &right_veth,
    ]);
    // Left reaches right on the extra address: right's sticky source becomes it.
    let ep = format!("{extra}:{}", pair.right.port);
    pair.left
        .daemon
        .set(&["peer", &pair.right.keys.public, "endpoint", &ep]);
    assert_ping(&pair.left.ns, pair.right.tunnel_addr(Family::V4), 3);
    assert!(pair.left.daemon.show("endpoints").contains(&ep));
    // The address goes away; right must reply from its other address.
    pair.right.ns.exec(&[
        "ip",
        "addr",
        "del",
        &format!("{extra}/24"),
        "dev",
        &right_veth,
    ]);
    assert_ping(&pair.right.ns, pair.left.tunnel_addr(Family::V4), 3);
    let eps = pair.left.daemon.show("endpoints");
    assert!(
        eps.contains(&format!("10.77.1.2:{}", pair.right.port)),
        "left should see right's remaining address: {eps}"
    );
}

#[test]
fn malformed_uapi_request_changes_nothing() {
    let pair = Pair::new(&PairOptions::default());
    let d = &pair.right.daemon;
    let before = uapi(d, "get=1\n\n");
    assert!(before.ends_with("errno=0\n\n"), "{before}");
    // Valid lines first, then one bad value: nothing of it may be applied.
    let bad = format!(
        "set=1\nlisten_port=40999\nreplace_peers=true\npublic_key={}\nallowed_ip=10.1.0.0/16\nendpoint=not-an-endpoint\n\n",
        "11".repeat(32)
    );
    let reply = uapi(d, &bad);
    assert_eq!(reply, "errno=-22\n\n");
    assert_eq!(
        uapi(d, "get=1\n\n"),
        before,
        "a refused request changed the device"
    );
    assert_ping(&pair.left.ns, pair.right.tunnel_addr(Family::V4), 2);
}

#[test]
fn uapi_scales_to_100k_allowed_ips() {
    let pair = Pair::new(&PairOptions::default());
    let d = &pair.right.daemon;
    let mut conf = format!(
        "[Peer]\nPublicKey = {}\nAllowedIPs = 10.99.0.1/32, fd99::1/128\n",
        pair.left.keys.public
    );
    for i in 0..100_000u32 {
        conf.push_str(&format!(
            "AllowedIPs = 172.{}.{}.{}/32\n",
            16 + (i >> 16),
            (i >> 8) & 255,
            i & 255
        ));
    }
    let file = d.private_file("big.conf", &conf);
    let t = Instant::now();
    d.wg(&["addconf", d.ifname(), file.to_str().expect("utf-8 path")]);
    let set_time = t.elapsed();
    let t = Instant::now();
    let listed = d.show("allowed-ips");
    let get_time = t.elapsed();
    let n = listed
        .split_whitespace()
        .filter(|w| w.contains('/') && !w.ends_with('='))
        .count();
    eprintln!("100k AllowedIPs: set {set_time:?}, get {get_time:?}");
    assert_eq!(n, 100_002, "every prefix is answered back");
    assert!(set_time < Duration::from_secs(60) && get_time < Duration::from_secs(60));
    assert_ping(&pair.left.ns, pair.right.tunnel_addr(Family::V4), 2);
}
