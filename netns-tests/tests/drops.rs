//! (d) What must not pass: a peer presenting the wrong key gets no session, and a
//! packet whose inner source is outside the sending peer's AllowedIPs is dropped.

use std::net::IpAddr;

use portdistrict_netns_tests::{
    assert_no_ping, assert_ping, run, Family, Keypair, Pair, PairOptions,
};

#[test]
fn wrong_key_gets_no_session() {
    let pair = Pair::new(&PairOptions::default());
    let (left, right) = (&pair.left, &pair.right);
    // Right presents a key left does not know (left keeps expecting right.keys).
    let impostor = Keypair::generate();
    let (l0, r0) = (left.daemon.stats(), right.daemon.stats());
    right.daemon.configure(&impostor, right.port, &[]);

    for family in Family::ALL {
        assert_no_ping(&right.ns, None, left.tunnel_addr(family), 5);
        assert_no_ping(&left.ns, None, right.tunnel_addr(family), 5);
    }
    let l = left.daemon.dump();
    let l = l.peer(&right.keys.public);
    let r = right.daemon.dump();
    let r = r.peer(&left.keys.public);
    assert_eq!(
        (l.latest_handshake, l.rx_bytes),
        (0, 0),
        "left must have no session: {l:?}"
    );
    assert_eq!(
        (r.latest_handshake, r.rx_bytes),
        (0, 0),
        "right must have no session: {r:?}"
    );

    // Both refusals were counted: left cannot place the impostor's static key, and
    // right (now the impostor) sees MAC1s made for the key it no longer has.
    let (l1, r1) = (left.daemon.stats(), right.daemon.stats());
    assert!(
        l1["rx_handshake_invalid"] > l0["rx_handshake_invalid"],
        "left: {l1:?}"
    );
    assert!(r1["rx_bad_mac1"] > r0["rx_bad_mac1"], "right: {r1:?}");

    // Control: with the right key back, the same setup works.
    right.daemon.configure(&right.keys, right.port, &[]);
    assert_ping(&right.ns, left.tunnel_addr(Family::V4), 3);
}

/// `rx_packets` of `ifname` in namespace `ns` (packets the daemon wrote to its TUN).
fn tun_rx_packets(ns: &str, ifname: &str) -> u64 {
    let json = run(&["ip", "-n", ns, "-s", "-j", "link", "show", "dev", ifname]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("ip -j output is JSON");
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rx packet counter in {json}"))
}

#[test]
fn inner_source_outside_allowed_ips_is_dropped() {
    let pair = Pair::new(&PairOptions::default());
    let (left, right) = (&pair.left, &pair.right);
    for family in Family::ALL {
        assert_ping(&right.ns, left.tunnel_addr(family), 3); // session up
    }
    // Right gets extra tunnel addresses; left allows only 10.99.0.2 and fd99::2 for it.
    right.daemon.add_address("10.99.0.3/24");
    right.daemon.add_address("fd99::3/64");
    let rx_wg_before = left.daemon.dump().peer(&right.keys.public).rx_bytes;
    let violations_before = left.daemon.stats()["rx_allowed_ips_violation"];
    let rx_tun_before = tun_rx_packets(left.daemon.link_ns(), left.daemon.ifname());

    let spoofed: [(IpAddr, IpAddr); 2] = [
        ("10.99.0.3".parse().unwrap(), left.tunnel_addr(Family::V4)),
        ("fd99::3".parse().unwrap(), left.tunnel_addr(Family::V6)),
    ];
    for (src, dst) in spoofed {
        assert_no_ping(&right.ns, Some(src), dst, 5);
    }

    // The packets did arrive (authenticated) but none reached left's TUN.
    let rx_wg_after = left.daemon.dump().peer(&right.keys.public).rx_bytes;
    let rx_tun_after = tun_rx_packets(left.daemon.link_ns(), left.daemon.ifname());
    assert!(
        rx_wg_after > rx_wg_before,
        "spoofed packets never reached left ({rx_wg_before} -> {rx_wg_after})"
    );
    assert_eq!(
        rx_tun_after, rx_tun_before,
        "packets with a disallowed source were delivered"
    );
    let violations = left.daemon.stats()["rx_allowed_ips_violation"] - violations_before;
    assert!(
        violations >= 10,
        "each spoofed ping counted as a violation: {violations}"
    );
    // And the allowed source still works.
    assert_ping(&right.ns, left.tunnel_addr(Family::V4), 3);
}
